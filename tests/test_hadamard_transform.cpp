// core/rotation/hadamard_transform: the factored online transform equals x @ (H / sqrt(n)) with
// the dense matrix built independently from hadamard_matrix(), is orthogonal, inverts, keeps the
// dtype, and flattens an outlier channel (the reason rotations help quantization).
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>

#include "core/rotation/hadamard_matrix.h"
#include "core/rotation/hadamard_transform.h"
#include "core/util/error.h"

using namespace respin;

namespace {
at::Tensor dense_from_matrix(int n) {
  HadamardMatrix h = *hadamard_matrix(n);
  std::vector<double> v(h.entries.begin(), h.entries.end());
  return at::tensor(v).view({n, n}) / std::sqrt(double(n));
}
}  // namespace

TEST(HadamardTransform, MatchesDenseMatrixForMixedSizes) {
  for (int n : {1, 2, 64, 12, 12 * 16, 20 * 8, 28 * 4, 40 * 2, 172 * 2, 156, 108 * 4}) {
    HadamardTransform t = HadamardTransform::of_size(n);
    at::Tensor x = at::randn({3, 5, n}, at::kDouble);
    at::Tensor expect = at::matmul(x, dense_from_matrix(n));
    EXPECT_LT((t.apply(x) - expect).abs().max().item<double>(), 1e-10) << n << " " << t.construction();
    EXPECT_LT((t.apply_inverse(t.apply(x)) - x).abs().max().item<double>(), 1e-10) << n;
    at::Tensor d = t.dense();
    EXPECT_LT((at::matmul(d, d.t()) - at::eye(n, at::kDouble)).abs().max().item<double>(), 1e-12) << n;
  }
}

TEST(HadamardTransform, KeepsDtypeAndNorm) {
  HadamardTransform t = HadamardTransform::of_size(20 * 16);
  at::Tensor x = at::randn({4, 320}).to(at::kBFloat16);
  at::Tensor y = t.apply(x);
  EXPECT_EQ(y.scalar_type(), at::kBFloat16);
  at::Tensor nx = x.to(at::kFloat).norm(2, -1), ny = y.to(at::kFloat).norm(2, -1);
  EXPECT_LT(((nx - ny).abs() / nx).max().item<double>(), 0.01);
}

TEST(HadamardTransform, SpreadsAnOutlierChannel) {
  at::Tensor x = at::randn({64, 256});
  x.select(1, 17).mul_(100);  // one massive channel
  at::Tensor y = HadamardTransform::of_size(256).apply(x);
  const double before = (x.abs().amax(1) / x.abs().mean(1)).mean().item<double>();
  const double after = (y.abs().amax(1) / y.abs().mean(1)).mean().item<double>();
  EXPECT_GT(before, 50);
  EXPECT_LT(after, 4);  // max/mean per token close to a Gaussian's
}

TEST(HadamardTransform, Errors) {
  EXPECT_THROW(HadamardTransform::of_size(6), Error);
  EXPECT_THROW(HadamardTransform::of_size(116), Error);
  HadamardTransform t = HadamardTransform::of_size(8);
  EXPECT_THROW(t.apply(at::randn({2, 16})), Error);
  EXPECT_THROW(fwht(at::randn({2, 12})), Error);
}
