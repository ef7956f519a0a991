// The process's resident memory as the kernel counts it (/proc/self/status), for the memory plan's
// measured side (docs/methods.md 1.8).
#pragma once

#include <cstdint>

namespace respin {

int64_t resident_bytes();       // VmRSS; 0 when it cannot be read
int64_t peak_resident_bytes();  // VmHWM, the high-water mark since start or the last reset; 0 when unknown
// Resets the high-water mark to the current resident size (Linux: "5" into /proc/self/clear_refs);
// false where the kernel does not allow it.
bool reset_peak_resident();
// Returns the allocator's free memory to the system (glibc: malloc_trim), so that what a phase
// freed is not counted, or held, as the process's: called between the layers of the in-place
// phases and at each phase's end (docs/methods.md 1.7).
void release_free_memory();

// MemAvailable of /proc/meminfo plus this process's resident size: what a run in this process can
// hold before the host swaps; 0 when unknown.
int64_t host_memory_for_runs();

}  // namespace respin
