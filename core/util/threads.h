// Compute thread settings. libtorch defaults to one thread on some machines, and OpenBLAS keeps
// its own pool: set both explicitly.
#pragma once

namespace respin {

int default_thread_count();          // hardware concurrency (at least 1)
void set_compute_threads(int n);     // n <= 0 means default_thread_count()
int compute_threads();               // what libtorch currently uses

}  // namespace respin
