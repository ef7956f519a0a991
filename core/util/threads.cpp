// Thread count for libtorch intra-op work and OpenBLAS (see threads.h).
#include "core/util/threads.h"

#include <ATen/Parallel.h>
#include <dlfcn.h>
#include <malloc.h>

#include <climits>
#include <thread>

namespace respin {

int default_thread_count() {
  unsigned n = std::thread::hardware_concurrency();
  return n == 0 ? 1 : static_cast<int>(n);
}

void set_compute_threads(int n) {
  if (n <= 0) n = default_thread_count();
  ::mallopt(M_MMAP_MAX, 0);                    // large blocks come from the heap too...
  ::mallopt(M_TRIM_THRESHOLD, INT_MAX);         // ...and stay there for reuse
  at::set_num_threads(n);
  // OpenBLAS (when it is the BLAS behind libtorch) has its own pool; it is looked up at run time
  // because which BLAS is loaded is a property of the installation, not of the build.
  using SetFn = void (*)(int);
  if (auto fn = reinterpret_cast<SetFn>(::dlsym(RTLD_DEFAULT, "openblas_set_num_threads"))) fn(n);
}

int compute_threads() { return at::get_num_threads(); }

}  // namespace respin
