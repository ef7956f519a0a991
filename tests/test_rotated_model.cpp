// core/methods/rotated_model, methods and rotation_training: with every quantizer off the rotated
// models of QuaRot, SpinQuant and ReSpinQuant (exact transitions, or rank r = D) compute the same
// logits as the original; ReSpinQuant's rank-r skip correction differs by an amount that shrinks
// with r; learning rotations lowers the quantized loss and keeps them orthogonal.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "core/methods/methods.h"
#include "core/methods/rotation_training.h"
#include "core/quant/finite_checks.h"
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
    const int64_t reads0 = DeferredFiniteChecks::host_reads();
    RotationTrainingResult res = train_rotations(fused, init.rotations, windows, o, &control);
    // The quantizers' NaN/Inf checks (dozens per step here) are read back once per step, with
    // the loss: no host-device sync per quantizer call (docs/methods.md 2.3).
    EXPECT_EQ(DeferredFiniteChecks::host_reads() - reads0, 24);
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

TEST(RotationTraining, MicroBatchesEqualTheUnsplitStep) {
  // A 4-window step unsplit and as micro-batches of 1 and 3 (3 + 1): the same loss and the same
  // rotations after the update, to float rounding (W4A4KV4; without quantizers the loss does not
  // depend on the rotations at all). Compared over one step: from the next step on, a fake
  // quantizer's rounding turns float-rounding differences into different grid points. Micro-batches
  // of 4 (= the batch) are the unsplit run exactly, over three steps.
  at::manual_seed(15);
  LlamaModel m = small_model(false, 22);
  LlamaModel fused = fuse_rms_norms(m);
  at::Tensor windows = at::randint(80, {6, 24}, at::kLong);
  QuantConfig q;
  q.weight.bits = q.activation.bits = q.kv.bits = 4;
  for (Method method : {Method::SpinQuant, Method::ReSpin}) {
    auto run = [&](int64_t micro, int64_t steps, InitialRotations& init) {
      RotationTrainingOptions o;
      o.iterations = steps;
      o.lr = 1.0;
      o.batch = 4;
      o.micro_batch = micro;
      o.quant = q;
      o.online = method_online_transforms(method, q);
      o.o_proj_group = method_o_proj_group(method, m.config());
      return train_rotations(fused, init.rotations, windows, o);
    };
    auto max_diff = [&](const InitialRotations& a, const InitialRotations& b) {
      double d = (a.rotations.final_basis - b.rotations.final_basis).abs().max().item<double>();
      for (int i = 0; i < m.config().num_hidden_layers; ++i) {
        d = std::max(d, (a.rotations.attn_in[i] - b.rotations.attn_in[i]).abs().max().item<double>());
        d = std::max(d, (a.rotations.mlp_in[i] - b.rotations.mlp_in[i]).abs().max().item<double>());
        if (a.rotations.head[i].defined())
          d = std::max(d, (a.rotations.head[i] - b.rotations.head[i]).abs().max().item<double>());
      }
      return d;
    };
    const char* what = method_name(method);
    InitialRotations start = initial_rotations(method, m.config(), 3, at::kCPU);
    InitialRotations whole = initial_rotations(method, m.config(), 3, at::kCPU);
    const RotationTrainingResult ref = run(0, 1, whole);
    EXPECT_GT(max_diff(whole, start), 1e-3) << what;  // the step moves them far more than the tolerance
    for (int64_t micro : {int64_t{1}, int64_t{3}}) {
      InitialRotations split = initial_rotations(method, m.config(), 3, at::kCPU);
      const RotationTrainingResult got = run(micro, 1, split);
      EXPECT_EQ(got.tokens, ref.tokens);
      EXPECT_NEAR(got.loss.at(0), ref.loss.at(0), 1e-6 * ref.loss.at(0)) << what << " micro " << micro;
      EXPECT_LT(max_diff(split, whole), 1e-5) << what << " micro " << micro;
    }
    InitialRotations whole3 = initial_rotations(method, m.config(), 3, at::kCPU);
    InitialRotations four = initial_rotations(method, m.config(), 3, at::kCPU);
    const RotationTrainingResult ref3 = run(0, 3, whole3);
    EXPECT_EQ(run(4, 3, four).loss, ref3.loss) << what;
    EXPECT_EQ(max_diff(four, whole3), 0.0) << what;
  }
}

TEST(RotationTraining, CheckpointedStepsEqualTheUnsplitStep) {
  // Layer-by-layer learning (checkpoint_layers: each layer rebuilt from the rotations in the
  // backward pass, the loss in token pieces, the embedding rows rotated alone) against the
  // whole-graph step, alone and with micro-batches: the same loss and rotations after one W4A4KV4
  // step to float rounding (one step, as in MicroBatchesEqualTheUnsplitStep). Windows of 40 tokens
  // and an odd batch, the loss in pieces of 16 tokens (so a window's 39 predictions are three
  // pieces, the last one short); live statistics are collected in the checkpointed forward as in
  // the plain one.
  at::manual_seed(16);
  LlamaModel m = small_model(false, 23);
  LlamaModel fused = fuse_rms_norms(m);
  at::Tensor windows = at::randint(80, {5, 40}, at::kLong);
  QuantConfig q;
  q.weight.bits = q.activation.bits = q.kv.bits = 4;
  for (Method method : {Method::SpinQuant, Method::ReSpin}) {
    auto run = [&](bool checkpoint, int64_t micro, InitialRotations& init, int64_t* live) {
      RotationTrainingOptions o;
      o.iterations = 1;
      o.lr = 1.0;
      o.batch = 3;
      o.micro_batch = micro;
      o.checkpoint_layers = checkpoint;
      o.loss_chunk_tokens = 16;
      o.quant = q;
      o.online = method_online_transforms(method, q);
      o.o_proj_group = method_o_proj_group(method, m.config());
      o.live_site = [](int& layer, HookSite& site) {
        layer = 1;
        site = HookSite::MlpInput;
        return true;
      };
      o.on_live_stats = [live](int64_t, const SiteStats& st) { *live = st.count; };
      return train_rotations(fused, init.rotations, windows, o);
    };
    const char* what = method_name(method);
    InitialRotations whole = initial_rotations(method, m.config(), 4, at::kCPU);
    InitialRotations start = initial_rotations(method, m.config(), 4, at::kCPU);
    int64_t live_ref = 0;
    const RotationTrainingResult ref = run(false, 0, whole, &live_ref);
    EXPECT_EQ(live_ref, 3 * 40 * m.config().hidden_size);
    const double moved = (whole.rotations.attn_in[1] - start.rotations.attn_in[1]).abs().max().item<double>();
    EXPECT_GT(moved, 1e-3) << what;
    for (int64_t micro : {int64_t{0}, int64_t{2}}) {
      InitialRotations ck = initial_rotations(method, m.config(), 4, at::kCPU);
      int64_t live = 0;
      const RotationTrainingResult got = run(true, micro, ck, &live);
      EXPECT_EQ(live, live_ref) << what;
      EXPECT_NEAR(got.loss.at(0), ref.loss.at(0), 1e-6 * ref.loss.at(0)) << what << " micro " << micro;
      double diff = (ck.rotations.final_basis - whole.rotations.final_basis).abs().max().item<double>();
      for (int i = 0; i < m.config().num_hidden_layers; ++i) {
        diff = std::max(diff, (ck.rotations.attn_in[i] - whole.rotations.attn_in[i]).abs().max().item<double>());
        diff = std::max(diff, (ck.rotations.mlp_in[i] - whole.rotations.mlp_in[i]).abs().max().item<double>());
        if (ck.rotations.head[i].defined())
          diff = std::max(diff, (ck.rotations.head[i] - whole.rotations.head[i]).abs().max().item<double>());
      }
      EXPECT_LT(diff, 1e-5) << what << " micro " << micro;
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
