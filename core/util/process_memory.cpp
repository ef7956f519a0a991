// Resident memory from /proc (see process_memory.h).
#include "core/util/process_memory.h"

#include <malloc.h>

#include <fstream>
#include <string>

namespace respin {

namespace {

// The "<key>: <n> kB" line of a /proc file, in bytes; 0 when absent.
int64_t proc_kb(const char* path, const std::string& key) {
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line))
    if (line.compare(0, key.size(), key) == 0 && line.size() > key.size() && line[key.size()] == ':') {
      try {
        return static_cast<int64_t>(std::stoll(line.substr(key.size() + 1))) * 1024;
      } catch (...) {
        return 0;
      }
    }
  return 0;
}

}  // namespace

int64_t resident_bytes() { return proc_kb("/proc/self/status", "VmRSS"); }
int64_t peak_resident_bytes() { return proc_kb("/proc/self/status", "VmHWM"); }

bool reset_peak_resident() {
  std::ofstream out("/proc/self/clear_refs");
  if (!out) return false;
  out << "5";
  out.flush();
  return static_cast<bool>(out);
}

void release_free_memory() {
#if defined(__GLIBC__)
  malloc_trim(0);
#endif
}

int64_t host_memory_for_runs() {
  const int64_t available = proc_kb("/proc/meminfo", "MemAvailable");
  return available > 0 ? available + resident_bytes() : 0;
}

}  // namespace respin
