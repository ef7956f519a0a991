// kernels/: the Hadamard transform's CPU reference against the explicit Sylvester matrix
// (a slow, obviously-correct product), norm preservation and involution.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "kernels/hadamard.h"
#include "tests/kernel_test_util.h"

using namespace respin::kernels;
using respin::test::random_rows;

namespace {

// Sylvester Hadamard entry H[i][j] = (-1)^popcount(i & j).
float sylvester(int64_t i, int64_t j) { return __builtin_popcountll(i & j) % 2 ? -1.0f : 1.0f; }


}  // namespace

TEST(HadamardRef, MatchesExplicitMatrixProduct) {
  for (int64_t n : {1, 2, 4, 8, 64, 256}) {
    const int64_t rows = 3;
    std::vector<float> x = random_rows(rows, n, 7), y = x;
    hadamard_ref({y.data(), rows, n, 1.0f / std::sqrt(float(n))});
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t j = 0; j < n; ++j) {
        double expect = 0;
        for (int64_t i = 0; i < n; ++i) expect += double(x[r * n + i]) * sylvester(i, j);
        expect /= std::sqrt(double(n));
        ASSERT_NEAR(y[r * n + j], expect, 1e-4) << "n=" << n << " r=" << r << " j=" << j;
      }
  }
}

TEST(HadamardRef, OrthonormalIsAnInvolution) {
  const int64_t n = 1024;
  std::vector<float> x = random_rows(2, n, 3), y = x;
  const float s = 1.0f / std::sqrt(float(n));
  hadamard_ref({y.data(), 2, n, s});
  double norm_x = 0, norm_y = 0;
  for (int64_t i = 0; i < 2 * n; ++i) norm_x += x[i] * x[i], norm_y += y[i] * y[i];
  EXPECT_NEAR(norm_y / norm_x, 1.0, 1e-5);  // norm preserved
  hadamard_ref({y.data(), 2, n, s});
  for (int64_t i = 0; i < 2 * n; ++i) ASSERT_NEAR(y[i], x[i], 1e-4);
}

TEST(HadamardRef, RejectsNonPowerOfTwo) {
  std::vector<float> x(12);
  EXPECT_THROW(hadamard_ref({x.data(), 1, 12, 1.0f}), std::invalid_argument);
  EXPECT_FALSE(is_power_of_two(0));
  EXPECT_TRUE(is_power_of_two(4096));
}
