// Shared inputs for the kernel tests: reproducible Gaussian rows.
#pragma once

#include <cstdint>
#include <random>
#include <vector>

namespace respin::test {

inline std::vector<float> random_rows(int64_t rows, int64_t n, unsigned seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist;
  std::vector<float> x(rows * n);
  for (auto& v : x) v = dist(rng);
  return x;
}

}  // namespace respin::test
