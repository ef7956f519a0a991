// One-line error messages (see error_message.h).
#include "core/util/error_message.h"

#include <c10/util/Exception.h>

#include <atomic>
#include <cstdlib>
#include <sstream>

#include "core/util/error.h"

namespace respin {

namespace {

bool env_verbose() {
  const char* v = std::getenv("RESPIN_BACKTRACE");
  return v && *v && std::string(v) != "0";
}

std::atomic<bool>& verbose_flag() {
  static std::atomic<bool> flag{env_verbose()};
  return flag;
}

// Lines of a libtorch message that are not the message: the source location and backtrace.
bool is_trace_line(const std::string& line) {
  for (const char* prefix : {"Exception raised from", "frame #", "Exception raised in"})
    if (line.rfind(prefix, 0) == 0) return true;
  return false;
}

std::string fold_lines(const std::string& text) {
  std::istringstream in(text);
  std::string line, out;
  while (std::getline(in, line)) {
    const size_t b = line.find_first_not_of(" \t\r");
    if (b == std::string::npos) continue;
    line = line.substr(b, line.find_last_not_of(" \t\r") - b + 1);
    if (is_trace_line(line)) continue;
    out += (out.empty() ? "" : "; ") + line;
  }
  return out;
}

}  // namespace

void set_verbose_errors(bool on) { verbose_flag() = on; }
bool verbose_errors() { return verbose_flag(); }

std::string error_message(const std::exception& e) {
  if (const auto* c = dynamic_cast<const c10::Error*>(&e)) {
    if (verbose_errors()) return c->what();
    return fold_lines(c->what_without_backtrace());
  }
  return verbose_errors() ? std::string(e.what()) : fold_lines(e.what());
}

void rethrow_with_context(const std::string& context) {
  try {
    throw;
  } catch (const Cancelled&) {
    throw;
  } catch (const std::exception& e) {
    throw Error(context + ": " + error_message(e));
  } catch (...) {
    throw Error(context + ": unknown error");
  }
}

}  // namespace respin
