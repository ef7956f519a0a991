// CPU reference of the fast Walsh-Hadamard transform (see hadamard.h).
#include <stdexcept>

#include "kernels/hadamard.h"

namespace respin::kernels {

bool is_power_of_two(int64_t n) { return n > 0 && (n & (n - 1)) == 0; }

void hadamard_ref(const HadamardParams& p) {
  if (!p.data && p.rows > 0) throw std::invalid_argument("hadamard_ref: null data");
  if (!is_power_of_two(p.n)) throw std::invalid_argument("hadamard_ref: n must be a power of two");
  for (int64_t r = 0; r < p.rows; ++r) {
    float* x = p.data + r * p.n;
    for (int64_t h = 1; h < p.n; h *= 2)
      for (int64_t i = 0; i < p.n; i += 2 * h)
        for (int64_t j = i; j < i + h; ++j) {
          const float a = x[j], b = x[j + h];
          x[j] = a + b;
          x[j + h] = a - b;
        }
    for (int64_t j = 0; j < p.n; ++j) x[j] *= p.scale;
  }
}

}  // namespace respin::kernels
