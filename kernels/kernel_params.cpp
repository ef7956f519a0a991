// What the kernels' parameters may be (see hadamard.h). The CPU twin of each kernel is core's
// reference op (core/ops/hot_ops.h), not a second implementation here.
#include "kernels/hadamard.h"

namespace respin::kernels {

bool is_power_of_two(int64_t n) { return n > 0 && (n & (n - 1)) == 0; }

}  // namespace respin::kernels
