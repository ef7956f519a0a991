// Compute runtime settings, applied once by every entry point (CLI verbs, benchmarks, tests):
// thread counts (libtorch defaults to one thread on some machines, and OpenBLAS keeps its own
// pool: both are set explicitly) and the heap policy (see set_compute_threads).
#pragma once

namespace respin {

int default_thread_count();          // hardware concurrency (at least 1)
// n <= 0 means default_thread_count(). Also keeps freed memory in the process heap instead of
// returning large blocks to the kernel: tensors of tens of MB are allocated and freed every
// layer, and re-faulting their pages each time made elementwise ops 10-40x slower.
void set_compute_threads(int n);
int compute_threads();               // what libtorch currently uses

}  // namespace respin
