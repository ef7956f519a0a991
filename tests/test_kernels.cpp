// kernels/ without a device: the parameter checks every kernel build shares. The kernels' CPU
// twins are core's reference ops, tested with core (test_rotation_torch: the Walsh-Hadamard
// transform against the explicit Sylvester matrix); test_kernels_cuda compares each kernel with
// its twin on a GPU.
#include <gtest/gtest.h>

#include <vector>

#include "kernels/hadamard.h"

using namespace respin::kernels;

TEST(KernelParams, PowersOfTwo) {
  EXPECT_FALSE(is_power_of_two(0));
  EXPECT_FALSE(is_power_of_two(-4));
  EXPECT_FALSE(is_power_of_two(12));
  EXPECT_FALSE(is_power_of_two(14336));
  EXPECT_TRUE(is_power_of_two(1));
  EXPECT_TRUE(is_power_of_two(4096));
  EXPECT_TRUE(is_power_of_two(int64_t{1} << 40));
}

TEST(KernelParams, WithoutADeviceTheKernelSaysSoAndTouchesNothing) {
  if (cuda_available()) GTEST_SKIP() << "a CUDA device is present: test_kernels_cuda runs the kernel";
  std::vector<float> x = {1, 2, 3, 4};
  const KernelStatus st = hadamard_cuda_host({x.data(), 1, 4, 0.5f});
  EXPECT_FALSE(st.ok());
  EXPECT_FALSE(st.message.empty());
  EXPECT_EQ(x, (std::vector<float>{1, 2, 3, 4}));
}
