// core/methods/rotated_model, methods and rotation_training: with every quantizer off the rotated
// models of QuaRot, SpinQuant and ReSpinQuant (exact transitions, or rank r = D) compute the same
// logits as the original; ReSpinQuant's rank-r skip correction differs by an amount that shrinks
// with r; learning rotations lowers the quantized loss and keeps them orthogonal.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "core/methods/methods.h"
#include "core/methods/rotation_training.h"
#include "core/model/random_init.h"
#include "core/rotation/fusion.h"
#include "core/util/error.h"

using namespace respin;

namespace {

// hidden 64, head_dim 16 (4 heads, 2 KV heads), intermediate 96 = 12 * 8: the down_proj Hadamard
// needs a non-power-of-two construction.
LlamaModel small_model(bool biases = false, uint64_t seed = 3) {
  ModelConfig c = make_model_config(biases ? "qwen2" : "llama", 64, 96, 3, 4, 2, 80, 64);
  c.rms_norm_eps = 1e-6;
  RandomInitOptions o;
  o.seed = seed;
  o.std = 0.15;
  o.norm_jitter = 0.3;
  return LlamaModel(c, random_weights(c, o));
}

double rel(const at::Tensor& a, const at::Tensor& b) {
  return ((a.to(at::kDouble) - b.to(at::kDouble)).abs().max() / b.to(at::kDouble).abs().max()).item<double>();
}

QuantConfig all_off() {
  QuantConfig q;
  q.weight.bits = q.activation.bits = q.kv.bits = 16;
  return q;
}

LlamaModel rotated(const LlamaModel& fused, const ResidualRotations& r, const OnlineTransforms& online,
                   SkipTransitions skip, int64_t o_proj_group = 0) {
  LlamaModel m(fused.config(), rotate_weights(fused, r, online, at::kFloat));
  OnlineHookOptions ho;
  ho.online = online;
  ho.skip = std::move(skip);
  ho.quant = all_off();
  ho.o_proj_group = o_proj_group;
  m.set_hook(online_hook(fused.config(), ho));
  return m;
}

// Rotations near a common Hadamard H: R = H expm(eps S) with a random skew S per matrix.
at::Tensor near(const at::Tensor& h, double eps, uint64_t seed) {
  at::Tensor s = random_orthogonal(h.size(0), seed) - at::eye(h.size(0), at::kDouble);
  s = (s - s.t()) * eps;
  return at::matmul(h, at::linalg_matrix_exp(s));
}

}  // namespace

TEST(RotatedModel, QuaRotAndSpinQuantKeepTheFunction) {
  at::manual_seed(11);
  at::Tensor ids = at::randint(80, {2, 24}, at::kLong);
  for (bool biases : {false, true}) {
    LlamaModel m = small_model(biases);
    at::Tensor ref = m.forward(ids);
    LlamaModel fused = fuse_rms_norms(m);
    for (Method method : {Method::QuaRot, Method::SpinQuant}) {
      QuantConfig q = all_off();
      q.kv.bits = 4;  // only to switch R3 on; the hook below runs with every quantizer off
      OnlineTransforms online = method_online_transforms(method, q);
      EXPECT_TRUE(online.qk_hadamard && online.down_hadamard);
      EXPECT_EQ(online.heads_hadamard, method == Method::QuaRot);
      InitialRotations init = initial_rotations(method, m.config(), 5, at::kCPU);
      EXPECT_TRUE(init.rotations.is_global());
      LlamaModel r = rotated(fused, init.rotations.to(at::kDouble), online, {}, method_o_proj_group(method, m.config()));
      EXPECT_LT(rel(r.forward(ids), ref), 1e-5) << method_name(method) << biases;
      EXPECT_GT((r.weights().layers[1].o_proj - fused.weights().layers[1].o_proj).abs().max().item<double>(), 1e-2);
    }
  }
}

TEST(RotatedModel, RandomHadamardIsOrthogonalAndSeeded) {
  for (int64_t n : {64, 96, 48}) {
    at::Tensor h = random_hadamard(n, 1);
    EXPECT_LT((at::matmul(h, h.t()) - at::eye(n, at::kDouble)).abs().max().item<double>(), 1e-12);
    EXPECT_TRUE(at::equal(h, random_hadamard(n, 1)));
    EXPECT_FALSE(at::equal(h, random_hadamard(n, 2)));
    // Entries are +-1/sqrt(n).
    EXPECT_LT((h.abs() - 1 / std::sqrt(double(n))).abs().max().item<double>(), 1e-12);
  }
  EXPECT_THROW(random_hadamard(116, 0), Error);
  at::Tensor q = random_orthogonal(37, 4);
  EXPECT_LT((at::matmul(q, q.t()) - at::eye(37, at::kDouble)).abs().max().item<double>(), 1e-12);
}

TEST(RotatedModel, InitialRotationsFollowTheMethods) {
  LlamaModel m = small_model();
  InitialRotations re = initial_rotations(Method::ReSpin, m.config(), 7, at::kCPU);
  EXPECT_FALSE(re.rotations.is_global());
  // ReSpinQuant: every residual basis starts from the same matrix, as separate parameters.
  EXPECT_TRUE(at::equal(re.rotations.attn_in[0], re.rotations.mlp_in[2]));
  EXPECT_TRUE(at::equal(re.rotations.attn_in[1], re.rotations.final_basis));
  EXPECT_FALSE(re.rotations.attn_in[0].is_same(re.rotations.mlp_in[0]));
  EXPECT_EQ(re.rotations.unique_tensors().size(), 2u * 3 + 1 + 3);
  // Head rotations are independent random Hadamards for the learned methods, plain for QuaRot.
  EXPECT_FALSE(at::equal(re.rotations.head[0], re.rotations.head[1]));
  InitialRotations qr = initial_rotations(Method::QuaRot, m.config(), 7, at::kCPU);
  EXPECT_TRUE(at::equal(qr.rotations.head[0], qr.rotations.head[2]));
  EXPECT_EQ(qr.rotations.unique_tensors().size(), 1u + 3);  // one residual, one head matrix per layer
  EXPECT_THROW(initial_rotations(Method::Rtn, m.config(), 7, at::kCPU), Error);
  // A hidden size without a Hadamard construction falls back to a recorded random orthogonal.
  ModelConfig c = make_model_config("llama", 116, 96, 1, 4, 2, 80, 64);
  c.head_dim = 29;
  EXPECT_THROW(initial_rotations(Method::QuaRot, c, 0, at::kCPU), Error);  // head_dim 29: no Hadamard
  c = make_model_config("llama", 116 * 2, 96, 1, 4, 2, 80, 64);  // 232 has none, head_dim 58 neither
  c.head_dim = 64;
  InitialRotations fb = initial_rotations(Method::SpinQuant, c, 0, at::kCPU);
  EXPECT_NE(fb.residual_init.find("random orthogonal"), std::string::npos) << fb.residual_init;
}

TEST(RotatedModel, ReSpinExactTransitionsKeepTheFunction) {
  at::manual_seed(12);
  at::Tensor ids = at::randint(80, {2, 24}, at::kLong);
  LlamaModel m = small_model();
  at::Tensor ref = m.forward(ids);
  LlamaModel fused = fuse_rms_norms(m);
  // Unrelated per-layer rotations: the skip path must change basis at every add.
  ResidualRotations r;
  for (int i = 0; i < 3; ++i) {
    r.attn_in.push_back(random_orthogonal(64, 100 + i));
    r.mlp_in.push_back(random_orthogonal(64, 200 + i));
    r.head.push_back(random_orthogonal(16, 300 + i));
  }
  r.final_basis = random_orthogonal(64, 400);
  OnlineTransforms online{true, true, false};
  EXPECT_LT(rel(rotated(fused, r, online, dense_transitions(r)).forward(ids), ref), 1e-5);
  EXPECT_LT(rel(rotated(fused, r, online, rank_r_transitions(r, 64)).forward(ids), ref), 1e-5);
  // Without the transitions the model is wrong.
  EXPECT_GT(rel(rotated(fused, r, online, {}).forward(ids), ref), 0.1);
}

TEST(RotatedModel, ReSpinRankRErrorShrinksWithRank) {
  at::manual_seed(13);
  at::Tensor ids = at::randint(80, {2, 24}, at::kLong);
  LlamaModel m = small_model();
  at::Tensor ref = m.forward(ids);
  LlamaModel fused = fuse_rms_norms(m);
  const at::Tensor h = random_hadamard(64, 9);
  ResidualRotations r;
  for (int i = 0; i < 3; ++i) {
    r.attn_in.push_back(near(h, 0.05, 10 + i));
    r.mlp_in.push_back(near(h, 0.05, 20 + i));
    r.head.push_back(at::Tensor());
  }
  r.final_basis = near(h, 0.05, 30);
  OnlineTransforms online{false, true, false};
  std::vector<double> diffs;
  for (int64_t rank : {0, 8, 32, 64}) {
    std::vector<double> errors;
    SkipTransitions s = rank_r_transitions(r, rank, &errors);
    ASSERT_EQ(errors.size(), 6u);
    diffs.push_back(rel(rotated(fused, r, online, std::move(s)).forward(ids), ref));
  }
  EXPECT_GT(diffs[0], 1e-3);
  EXPECT_GT(diffs[0], diffs[1]);
  EXPECT_GT(diffs[1], diffs[2]);
  EXPECT_GT(diffs[2], diffs[3]);
  EXPECT_LT(diffs[3], 1e-5);
}

TEST(RotatedModel, RotateWeightsRefusesMisuse) {
  LlamaModel m = small_model();
  InitialRotations init = initial_rotations(Method::QuaRot, m.config(), 1, at::kCPU);
  EXPECT_THROW(rotate_weights(m, init.rotations, {}, at::kFloat), Error);  // norms not fused
  LlamaModel fused = fuse_rms_norms(m);
  ResidualRotations bad = init.rotations;
  bad.attn_in.pop_back();
  EXPECT_THROW(rotate_weights(fused, bad, {}, at::kFloat), Error);
  bad = init.rotations;
  bad.head[1] = at::eye(8);
  EXPECT_THROW(rotate_weights(fused, bad, {}, at::kFloat), Error);
}

TEST(RotationTraining, LossFallsAndRotationsStayOrthogonal) {
  at::manual_seed(14);
  LlamaModel m = small_model(false, 21);
  LlamaModel fused = fuse_rms_norms(m);
  at::Tensor windows = at::randint(80, {2, 32}, at::kLong);
  for (Method method : {Method::SpinQuant, Method::ReSpin}) {
    QuantConfig q;
    q.weight.bits = 16;
    q.activation.bits = 3;
    q.kv.bits = 3;
    InitialRotations init = initial_rotations(method, m.config(), 2, at::kCPU);
    at::Tensor before = init.rotations.attn_in[1].clone();
    RotationTrainingOptions o;
    o.iterations = 24;
    o.lr = 1.0;
    o.batch = 2;  // the same two windows every step
    o.quant = q;
    o.online = method_online_transforms(method, q);
    o.o_proj_group = method_o_proj_group(method, m.config());
    RunControl control;
    int events = 0;
    control.set_progress_callback([&](const ProgressEvent& e) { events += e.phase == "rotate"; }, 0);
    RotationTrainingResult res = train_rotations(fused, init.rotations, windows, o, &control);
    ASSERT_EQ(res.loss.size(), 24u);
    EXPECT_GT(events, 0);
    const double first = (res.loss[0] + res.loss[1]) / 2, last = (res.loss[22] + res.loss[23]) / 2;
    EXPECT_LT(last, first - 0.01) << method_name(method) << " " << first << " -> " << last;
    EXPECT_LT(res.max_orthogonality_error, 1e-4);
    EXPECT_GT((init.rotations.attn_in[1] - before).abs().max().item<double>(), 1e-4);
    EXPECT_FALSE(init.rotations.attn_in[1].requires_grad());
    if (method == Method::ReSpin) {
      // Layer-wise bases moved apart from their common init.
      EXPECT_GT((init.rotations.attn_in[1] - init.rotations.mlp_in[1]).abs().max().item<double>(), 1e-4);
    }
  }
}

TEST(RotationTraining, StopsWhenCancelled) {
  LlamaModel m = small_model();
  LlamaModel fused = fuse_rms_norms(m);
  InitialRotations init = initial_rotations(Method::SpinQuant, m.config(), 2, at::kCPU);
  RotationTrainingOptions o;
  o.iterations = 5;
  RunControl control;
  control.request_stop();
  EXPECT_THROW(train_rotations(fused, init.rotations, at::zeros({1, 8}, at::kLong), o, &control), Cancelled);
}
