// One-line error messages for everything that reaches a user (CLI, workbench), and context for
// errors raised deep inside libtorch. A c10::Error carries a C++ backtrace of twenty-odd lines;
// users get its message only, unless verbose errors are on (`respin --verbose`, or the
// environment variable RESPIN_BACKTRACE=1).
#pragma once

#include <exception>
#include <string>

namespace respin {

// Verbose errors keep libtorch's backtrace. Initially on when RESPIN_BACKTRACE is set to a value
// other than "0" or "".
void set_verbose_errors(bool on);
bool verbose_errors();

// The message of `e` on one line: a libtorch error without its backtrace and source location
// (unless verbose), line breaks folded into "; ".
std::string error_message(const std::exception& e);

// Call inside a catch block: rethrows the current exception as respin::Error("<context>: <one-line
// message>"). respin::Cancelled passes through unchanged, so cancellation stays cancellation.
[[noreturn]] void rethrow_with_context(const std::string& context);

// Runs f(); any exception leaves it with `context` prefixed (see rethrow_with_context).
template <class F>
decltype(auto) with_error_context(const std::string& context, F&& f) {
  try {
    return f();
  } catch (...) {
    rethrow_with_context(context);
  }
}

}  // namespace respin
