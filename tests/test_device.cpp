// The device rule: a model lives on one device and everything computed with it follows. The
// guards that make the rule hold by construction refuse mixed devices by name; they are exercised
// with libtorch's "meta" device, which every build has (test_calib_cuda runs the real thing on a
// GPU).
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>

#include "core/calib/calibrate.h"
#include "core/methods/methods.h"
#include "core/model/random_init.h"
#include "core/rotation/fusion.h"
#include "core/rotation/hadamard_transform.h"
#include "core/util/error.h"
#include "tests/test_util.h"

using namespace respin;
using respin::test::expect_error;

namespace {

LlamaModel small_model() {
  ModelConfig c = make_model_config("llama", 32, 48, 2, 4, 2, 50, 64);
  RandomInitOptions ro;
  ro.seed = 3;
  return LlamaModel(c, random_weights(c, ro));
}

}  // namespace

TEST(DeviceRule, ModelRefusesWeightsOnTwoDevicesNamingTheTensor) {
  LlamaModel m = small_model();
  ModelWeights w = m.weights();
  w.layers[1].up_proj = w.layers[1].up_proj.to(at::kMeta);
  const std::string msg = expect_error([&] { LlamaModel(m.config(), w); });
  EXPECT_NE(msg.find("model.layers.1.mlp.up_proj.weight"), std::string::npos) << msg;
  EXPECT_NE(msg.find("meta"), std::string::npos) << msg;
  EXPECT_EQ(m.device(), at::Device(at::kCPU));
  EXPECT_EQ(LlamaModel(m.config(), move_weights(m.weights(), at::kMeta)).device(), at::Device(at::kMeta));
}

TEST(DeviceRule, RotationsOnAnotherDeviceAreRefused) {
  LlamaModel fused = fuse_rms_norms(small_model());
  InitialRotations init = initial_rotations(Method::QuaRot, fused.config(), 0, at::kMeta);
  for (const at::Tensor& t : init.rotations.unique_tensors()) EXPECT_EQ(t.device(), at::Device(at::kMeta));
  const std::string msg = expect_error([&] { rotate_weights(fused, init.rotations, {}, at::kFloat); });
  EXPECT_NE(msg.find("rotations are on meta but the model is on cpu"), std::string::npos) << msg;
  // On the model's device they are accepted.
  InitialRotations cpu = initial_rotations(Method::QuaRot, fused.config(), 0, at::kCPU);
  EXPECT_NO_THROW(rotate_weights(fused, cpu.rotations, {}, at::kFloat));
}

TEST(DeviceRule, HadamardTransformAndSkipCorrectionsFollowTheirDevice) {
  EXPECT_EQ(HadamardTransform::of_size(12).to(at::kMeta).device(), at::Device(at::kMeta));
  EXPECT_EQ(HadamardTransform::of_size(12).dense().device(), at::Device(at::kCPU));
  // The decomposition runs on the CPU and the results return to the rotations' device (checked
  // here for the CPU; the gpu suite runs it on CUDA).
  InitialRotations init = initial_rotations(Method::ReSpin, small_model().config(), 0, at::kCPU);
  ResidualRotations r = init.rotations.to(at::kDouble);
  r.attn_in[1] = r.attn_in[1].flip({0});
  SkipTransitions s = rank_r_transitions(r, 4);
  EXPECT_EQ(s.attn_rank_r[0].q.device(), at::Device(at::kCPU));
  EXPECT_EQ(s.attn_rank_r[0].q.scalar_type(), at::kFloat);
}

TEST(DeviceRule, DeviceNamesResolve) {
  EXPECT_EQ(resolve_device(DeviceChoice::Cpu), at::Device(at::kCPU));
  EXPECT_EQ(resolve_device(DeviceChoice::Auto), at::hasCUDA() ? at::Device(at::kCUDA) : at::Device(at::kCPU));
  if (!at::hasCUDA()) {
    const std::string msg = expect_error([] { resolve_device(DeviceChoice::Cuda); });
    EXPECT_NE(msg.find("no usable CUDA device"), std::string::npos) << msg;
  }
  EXPECT_NE(expect_error([] { device_choice_from_name("tpu"); }).find("'tpu' is not supported"), std::string::npos);
  // Which CUDA device: "cuda:N"; a device that is not present is an error naming what is.
  EXPECT_EQ(parse_device("cuda:3"), std::make_pair(DeviceChoice::Cuda, 3));
  EXPECT_EQ(parse_device("cuda"), std::make_pair(DeviceChoice::Cuda, 0));
  EXPECT_EQ(parse_device("auto"), std::make_pair(DeviceChoice::Auto, 0));
  for (const char* bad : {"cuda:", "cuda:-1", "cuda:x", "gpu", "cuda:12345"})
    EXPECT_NE(expect_error([&] { parse_device(bad); }).find(std::string("device '") + bad + "'"), std::string::npos) << bad;
  const std::string msg = expect_error([] { resolve_device(DeviceChoice::Cuda, 99); });
  EXPECT_NE(msg.find(at::hasCUDA() ? "CUDA device 99 requested" : "no usable CUDA device"), std::string::npos) << msg;
}
