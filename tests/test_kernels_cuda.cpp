// kernels/ on the GPU: the CUDA Hadamard kernel against its CPU twin, core's HadamardTransform
// (the one Walsh-Hadamard reference), over sizes from 2 to the kernel's maximum and an odd row
// count. Reported as skipped (never as passed) without a device.
#include <gtest/gtest.h>

#include <ATen/ATen.h>

#include <cmath>
#include <vector>

#include "core/ops/hot_ops.h"
#include "kernels/hadamard.h"
#include "tests/kernel_test_util.h"

using namespace respin::kernels;
using respin::test::random_rows;

TEST(HadamardCuda, MatchesReference) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA device: " << cuda_device_description();
  for (int64_t n : {int64_t{2}, int64_t{32}, int64_t{512}, int64_t{4096}, kHadamardCudaMaxN}) {
    const int64_t rows = 37;
    std::vector<float> x = random_rows(rows, n, 11), dev = x;
    const at::Tensor ref =
        respin::ops::hadamard(at::from_blob(x.data(), {rows, n}, at::kFloat), respin::HadamardTransform::of_size(n))
            .contiguous();
    const float* r = ref.data_ptr<float>();
    KernelStatus st = hadamard_cuda_host({dev.data(), rows, n, 1.0f / std::sqrt(float(n))});
    ASSERT_TRUE(st.ok()) << st.message;
    for (int64_t i = 0; i < rows * n; ++i) ASSERT_NEAR(dev[i], r[i], 1e-4) << "n=" << n;
  }
  std::vector<float> x(12);
  EXPECT_EQ(hadamard_cuda_host({x.data(), 1, 12, 1.0f}).code, KernelStatus::Unsupported);
}
