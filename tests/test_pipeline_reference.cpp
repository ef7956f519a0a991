// The composed methods against definitions that each test computes itself (not by calling the
// production path it checks): where the quantizers sit relative to the online rotations, the
// rank-r skip corrections of ReSpinQuant, the Hessians of the layer-by-layer GPTQ pipeline, and
// the benefit of a rotation on an activation outlier. Each would fail on the bug it names (see the
// comments), e.g. a quantizer moved before its Hadamard, or GPTQ fed the unquantized layer's inputs.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <nlohmann/json.hpp>

#include "core/calib/calibrate.h"
#include "core/io/atomic_file.h"
#include "core/io/safetensors.h"
#include "core/methods/gptq_model.h"
#include "core/methods/methods.h"
#include "core/methods/rotation_training.h"
#include "core/model/random_init.h"
#include "core/model/weights.h"
#include "core/quant/gptq.h"
#include "core/quant/quantizer.h"
#include "core/rotation/fusion.h"
#include "tests/calib_fixture.h"

using namespace respin;
using respin::test::TempDir;

namespace {

// Normalized Sylvester Hadamard matrix of order n (a power of two), by its recursive definition.
at::Tensor sylvester(int64_t n) {
  at::Tensor h = at::ones({1, 1}, at::kDouble);
  while (h.size(0) < n) h = at::cat({at::cat({h, h}, 1), at::cat({h, -h}, 1)}, 0);
  return h / std::sqrt(static_cast<double>(n));
}

double rel_diff(const at::Tensor& a, const at::Tensor& b) {
  return (a.to(at::kDouble) - b.to(at::kDouble)).abs().max().item<double>() /
         std::max(b.to(at::kDouble).abs().max().item<double>(), 1e-30);
}

std::map<std::string, at::Tensor> read_tensors(const std::string& path) {
  SafetensorsFile f = SafetensorsFile::open(path);
  std::map<std::string, at::Tensor> out;
  for (const TensorInfo& t : f.tensors())
    out[t.name] = at::from_blob(const_cast<void*>(f.data(t)), t.shape, at::kFloat).to(at::kDouble);
  return out;
}

class PipelineReference : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new TempDir();
    test::write_calibration_fixture(*dir_);
  }
  static void TearDownTestSuite() { delete dir_; }
  static TempDir* dir_;
  TempDir runs_;
};
TempDir* PipelineReference::dir_ = nullptr;

// A tiny model whose sizes are all powers of two, so the test's Sylvester matrices are exactly
// the online Hadamards (head_dim 8, 4 heads, intermediate 64).
LlamaModel pow2_model(uint64_t seed) {
  ModelConfig c = make_model_config("llama", 32, 64, 2, 4, 2, 60, 64);
  RandomInitOptions ro;
  ro.seed = seed;
  ro.std = 0.2;
  return LlamaModel(c, random_weights(c, ro));
}

}  // namespace

// Bug it catches: a quantizer applied before its online Hadamard (or the wrong group/transform).
TEST_F(PipelineReference, QuantizersSeeTheRotatedActivations) {
  LlamaModel m = pow2_model(1);
  const ModelConfig& c = m.config();
  QuantConfig q;
  q.activation = {4, false, 0, 1.0};
  q.kv = {4, false, 0, 1.0};
  const at::Tensor h_hd = sylvester(c.head_dim), h_f = sylvester(c.intermediate_size),
                   h_heads = sylvester(c.num_attention_heads);
  for (Method method : {Method::QuaRot, Method::SpinQuant}) {
    OnlineHookOptions ho;
    ho.online = method_online_transforms(method, q);
    ho.quant = q;
    ho.o_proj_group = method_o_proj_group(method, c);
    ASSERT_TRUE(ho.online.qk_hadamard && ho.online.down_hadamard);
    const ActivationHook online = online_hook(c, ho);
    int checked = 0;
    LlamaModel spy(c, m.weights());
    spy.set_hook([&](HookSite site, int layer, at::Tensor& x) {
      const at::Tensor in = x.to(at::kDouble);
      online(site, layer, x);
      at::Tensor want;
      QuantSpec per_head = q.activation;
      per_head.group_size = c.head_dim;
      switch (site) {
        case HookSite::AttnInput:
        case HookSite::MlpInput: want = fake_quantize_activation(in.to(at::kFloat), q.activation); break;
        case HookSite::DownProjInput:  // R4, then per-token quantization
          want = fake_quantize_activation(at::matmul(in, h_f).to(at::kFloat), q.activation);
          break;
        case HookSite::OProjInput:
          if (method == Method::QuaRot) {  // Hadamard across heads, then per token
            const auto s = in.sizes().vec();
            at::Tensor v = in.reshape({-1, c.num_attention_heads, c.head_dim});
            at::Tensor mixed = at::einsum("nhe,hg->nge", {v, h_heads}).reshape(s);
            want = fake_quantize_activation(mixed.to(at::kFloat), q.activation);
          } else {  // per head
            want = fake_quantize_activation(in.to(at::kFloat), per_head);
          }
          break;
        case HookSite::Query: want = at::matmul(in, h_hd).to(at::kFloat); break;  // R3, not quantized
        case HookSite::Key: want = fake_quantize_kv(at::matmul(in, h_hd).to(at::kFloat), q.kv); break;
        case HookSite::Value: want = fake_quantize_kv(in.to(at::kFloat), q.kv); break;
        default: return;
      }
      // Float32 rounding of the Hadamard can move a value across a grid boundary: allow one grid
      // step on a handful of elements, no more.
      const at::Tensor diff = (x.to(at::kDouble) - want.to(at::kDouble)).abs();
      const double tol = 1e-4 * std::max(1.0, want.abs().max().item<double>());
      EXPECT_LE((diff > tol).sum().item<int64_t>(), std::max<int64_t>(2, x.numel() / 1000))
          << method_name(method) << " " << hook_site_name(site) << " layer " << layer;
      ++checked;
    });
    spy.forward(at::randint(0, c.vocab_size, {2, 24}, at::kLong));
    EXPECT_EQ(checked, 7 * c.num_hidden_layers) << method_name(method);
  }
}

// Bug it catches: a correction built from the wrong pair of bases, the wrong subspace, or a
// spectral error in run.json that is not the error of the correction actually applied.
TEST_F(PipelineReference, ReSpinPartialRankMatchesItsDefinition) {
  CalibConfig cfg = test::small_calib_config(*dir_, "respin", 4);
  cfg.abits = cfg.kvbits = 16;  // weights only: the comparison below is free of activation rounding
  cfg.iters = 8;
  cfg.lr = 2.0;
  cfg.rank = 6;
  const std::string out = runs_.file("respin");
  CalibOutcome res = run_calibration(cfg, out);
  const std::map<std::string, at::Tensor> rot = read_tensors(out + "/rotations.safetensors");
  const int L = 2;
  const int64_t D = 64, r = 6;
  const std::vector<double>& errors = res.record.method.transition_spectral_error;
  ASSERT_EQ(errors.size(), 2u * L);
  SkipTransitions dense;
  const at::Tensor eye = at::eye(D, at::kDouble);
  double largest_error = 0;
  for (int i = 0; i < L; ++i) {
    const at::Tensor A = rot.at("attn_in." + std::to_string(i)), B = rot.at("mlp_in." + std::to_string(i));
    const at::Tensor C = i + 1 < L ? rot.at("attn_in." + std::to_string(i + 1)) : rot.at("final");
    for (int add = 0; add < 2; ++add) {
      const at::Tensor T = add == 0 ? at::matmul(A.t(), B) : at::matmul(B.t(), C);  // h~_out = h~_in T
      at::Tensor u, s, vh;
      std::tie(u, s, vh) = at::linalg_svd(T - eye, false, c10::nullopt);
      const at::Tensor Q = u.narrow(1, 0, r);
      at::Tensor pu, ps, pvh;
      std::tie(pu, ps, pvh) = at::linalg_svd(at::matmul(at::matmul(Q.t(), T), Q), false, c10::nullopt);
      const at::Tensor T_hat = eye + at::matmul(at::matmul(Q, at::matmul(pu, pvh) - at::eye(r, at::kDouble)), Q.t());
      const double err = at::linalg_svdvals(T - T_hat).max().item<double>();
      largest_error = std::max(largest_error, err);
      EXPECT_NEAR(errors[2 * i + add], err, 1e-6 + 1e-4 * err) << "layer " << i << " add " << add;
      (add == 0 ? dense.attn_dense : dense.mlp_dense).push_back(T_hat.to(at::kFloat));
    }
  }
  EXPECT_GT(largest_error, 1e-4);  // the rotations did separate: the rank cut is not trivial

  // The stored model with its rank-r corrections equals the same weights with T_hat applied densely.
  LoadedRun lr = load_run(out);
  LlamaModel with_dense(lr.model.config(), lr.model.weights());
  OnlineHookOptions ho;
  ho.online.qk_hadamard = run_record_to_json(lr.record)["online"]["qk_hadamard"].get<bool>();
  ho.online.down_hadamard = run_record_to_json(lr.record)["online"]["down_hadamard"].get<bool>();
  ho.online.heads_hadamard = run_record_to_json(lr.record)["online"]["heads_hadamard"].get<bool>();
  ho.quant = cfg.quant_config();
  ho.o_proj_group = run_record_to_json(lr.record)["quantizers"]["o_proj_activation_group"].get<int64_t>();
  ho.skip = dense;
  with_dense.set_hook(online_hook(lr.model.config(), ho));
  const at::Tensor ids = at::randint(0, lr.model.config().vocab_size, {2, 32}, at::kLong);
  EXPECT_LT(rel_diff(lr.model.forward(ids), with_dense.forward(ids)), 1e-5);
}

// Bug it catches: a layer's Hessian taken from the unquantized model, from inputs before the
// online Hadamard, or from the wrong group of the sequential order.
TEST_F(PipelineReference, GptqPipelineUsesTheHessiansOfTheQuantizedModel) {
  LlamaModel m = pow2_model(2);
  const ModelConfig& c = m.config();
  QuantConfig q;
  q.activation.bits = q.kv.bits = 16;
  OnlineHookOptions ho;
  ho.online.down_hadamard = true;  // R4 on the down_proj input
  ho.quant = q;
  const ActivationHook online = online_hook(c, ho);
  const at::Tensor windows = at::randint(0, c.vocab_size, {6, 20}, at::kLong);
  GptqModelOptions go;
  go.weight = {3, true, 0, 1.0};
  go.gptq.mse_clip = false;
  go.batch = 6;  // one batch: the test's Hessian sums the same rows
  const ModelWeights qw = gptq_quantize_model(m, online, windows, go);

  // Layer 1's down_proj: its inputs come from layer 0 fully quantized and layer 1's q/k/v/o/
  // gate/up already quantized (GPTQ's sequential order), seen after the R4 Hadamard.
  ModelWeights partial = m.weights();
  partial.layers[0] = qw.layers[0];
  for (auto member : {&LayerWeights::q_proj, &LayerWeights::k_proj, &LayerWeights::v_proj, &LayerWeights::o_proj,
                      &LayerWeights::gate_proj, &LayerWeights::up_proj})
    partial.layers[1].*member = qw.layers[1].*member;
  LlamaModel observed(c, partial);
  at::Tensor xs;
  const at::Tensor h_f = sylvester(c.intermediate_size);
  observed.set_hook([&](HookSite site, int layer, at::Tensor& x) {
    if (site == HookSite::DownProjInput && layer == 1) {
      xs = at::matmul(x.to(at::kDouble), h_f).reshape({-1, c.intermediate_size});  // R4 by definition
      online(site, layer, x);
    } else {
      online(site, layer, x);
    }
  });
  observed.forward(windows);
  ASSERT_TRUE(xs.defined());
  const at::Tensor H = 2.0 * at::matmul(xs.t(), xs) / static_cast<double>(xs.size(0));
  GptqOptions opt = go.gptq;
  const at::Tensor want = gptq_quantize(m.weights().layers[1].down_proj, H, go.weight, opt).weight;
  const at::Tensor got = qw.layers[1].down_proj;
  // Equal up to a handful of rounding ties from the Hessian's summation order.
  EXPECT_LE((got != want).sum().item<int64_t>(), got.numel() / 500) << rel_diff(got, want);
  // With layer 0 unquantized the Hessian differs, and so do the weights: the check has teeth.
  ModelWeights unq = partial;
  unq.layers[0] = m.weights().layers[0];
  LlamaModel wrong(c, unq);
  at::Tensor xw;
  wrong.set_hook([&](HookSite site, int layer, at::Tensor& x) {
    if (site == HookSite::DownProjInput && layer == 1) xw = at::matmul(x.to(at::kDouble), h_f).reshape({-1, c.intermediate_size});
    online(site, layer, x);
  });
  wrong.forward(windows);
  const at::Tensor Hw = 2.0 * at::matmul(xw.t(), xw) / static_cast<double>(xw.size(0));
  EXPECT_GT((gptq_quantize(m.weights().layers[1].down_proj, Hw, go.weight, opt).weight != got).sum().item<int64_t>(),
            got.numel() / 50);
}

// Bug it catches: rotations that do not reach the quantizer that needs them. One huge channel at
// the down_proj input ruins per-token 4-bit activations for plain RTN; QuaRot's R4 spreads it.
TEST_F(PipelineReference, QuaRotTamesAnActivationOutlierThatRtnCannot) {
  // The fixture model with channel 5 of every layer's down_proj input made 50x larger (up_proj row)
  // and down_proj's column 5 as much smaller: the same function in full precision, with one huge
  // channel where the 4-bit activation quantizer sits.
  LlamaModel base = load_model(dir_->file("model"));
  ModelWeights w = base.weights();
  for (LayerWeights& L : w.layers) {
    L.up_proj[5].mul_(50.0);
    L.down_proj.select(1, 5).div_(50.0);
  }
  SaveOptions so;
  so.file_dtype = DType::F32;
  so.tokenizer_json = dir_->file("tokenizer.json");
  save_model(runs_.file("outlier"), base.config(), w, so);
  // Output error against the full-precision model (the same function for both folders): the
  // logits of each stored quantized model (weights 16-bit, activations 4-bit) relative to the
  // original's, with and without the outlier. 4-bit activations cost something everywhere; what
  // the outlier adds is what a rotation must remove.
  at::manual_seed(0);
  const at::Tensor ids = at::randint(0, base.config().vocab_size, {4, 32}, at::kLong);
  const at::Tensor fp = base.forward(ids).to(at::kDouble);
  std::map<std::string, double> error;
  nlohmann::json stats;
  for (const std::string folder : {"clean", "outlier"})
    for (const std::string method : {"rtn", "quarot"}) {
      CalibConfig cfg = test::small_calib_config(*dir_, method, 16);
      cfg.model = folder == "clean" ? dir_->file("model") : runs_.file("outlier");
      cfg.abits = 4;  // W16A4
      const std::string run = runs_.file(folder + "-" + method);
      run_calibration(cfg, run);
      const at::Tensor q = load_run(run).model.forward(ids).to(at::kDouble);
      error[folder + "-" + method] = (q - fp).norm().item<double>() / (fp - fp.mean(-1, true)).norm().item<double>();
      if (folder == "outlier" && method == "quarot")
        stats = nlohmann::json::parse(read_text_file(run + "/stats.json"));
    }
  const double rtn_cost = error["outlier-rtn"] - error["clean-rtn"];
  const double quarot_cost = error["outlier-quarot"] - error["clean-quarot"];
  // Measured: RTN 0.29 -> 0.43, QuaRot 0.25 -> 0.29 (R4 over 96 channels divides a 50x outlier by
  // sqrt(96) only; in a real model n is 11008 or more).
  const std::string all = "rtn " + std::to_string(error["clean-rtn"]) + " -> " + std::to_string(error["outlier-rtn"]) +
                          ", quarot " + std::to_string(error["clean-quarot"]) + " -> " +
                          std::to_string(error["outlier-quarot"]);
  EXPECT_GT(rtn_cost, 0.1) << all;
  EXPECT_LT(quarot_cost, rtn_cost / 2) << all;
  EXPECT_LT(error["outlier-quarot"], 0.75 * error["outlier-rtn"]) << all;
  // The recorded statistics of that site: heavy-tailed before, flattened by R4 after.
  auto site = [](const nlohmann::json& s, const char* when) {
    for (const auto& e : s[when]["sites"])
      if (e["layer"] == 0 && e["site"] == "down_proj_input") return e;
    return nlohmann::json();
  };
  const nlohmann::json before = site(stats, "before"), after = site(stats, "after");
  ASSERT_FALSE(before.is_null());
  ASSERT_FALSE(after.is_null());
  EXPECT_LT(after["kurtosis"].get<double>(), before["kurtosis"].get<double>() / 3);
  EXPECT_LT(after["max_median_ratio"].get<double>(), before["max_median_ratio"].get<double>() / 3);
}

// Bug it catches: a schedule that is not SpinQuant's cosine annealing from --lr.
TEST_F(PipelineReference, RotationLearningFollowsTheCosineSchedule) {
  LlamaModel fused = fuse_rms_norms(pow2_model(3));
  InitialRotations init = initial_rotations(Method::SpinQuant, fused.config(), 0, at::kCPU);
  RotationTrainingOptions o;
  o.iterations = 6;
  o.lr = 1.5;
  o.batch = 1;
  o.quant.weight.bits = 16;
  o.quant.activation.bits = o.quant.kv.bits = 16;
  const at::Tensor windows = at::randint(0, fused.config().vocab_size, {3, 16}, at::kLong);
  RotationTrainingResult r = train_rotations(fused, init.rotations, windows, o);
  ASSERT_EQ(r.lr.size(), 6u);
  for (int k = 0; k < 6; ++k) EXPECT_DOUBLE_EQ(r.lr[k], 1.5 * 0.5 * (1 + std::cos(M_PI * k / 6.0))) << k;
}

// Spies on a stored run's hook: what each site receives and what the hook makes of it.
struct HookSpy {
  std::map<HookSite, std::pair<at::Tensor, at::Tensor>> seen;  // layer 0: (input, output)
  void attach(LlamaModel& m) {
    ActivationHook inner = m.hook();
    m.set_hook([this, inner](HookSite site, int layer, at::Tensor& x) {
      const at::Tensor in = x.clone();
      inner(site, layer, x);
      if (layer == 0) seen[site] = {in, x.clone()};
    });
  }
};

// Bug it catches: group and clip options (or R3) that reach run.json but not the quantizers.
TEST_F(PipelineReference, GroupClipAndR3OptionsReachTheQuantizers) {
  CalibConfig cfg = test::small_calib_config(*dir_, "spinquant", 4);
  cfg.iters = 1;
  cfg.a_group = 8;  // finer than SpinQuant's per-head default on o_proj (head_dim 16)
  cfg.a_clip = 0.9;
  cfg.a_sym = true;
  cfg.kv_group = 4;
  cfg.kv_clip = 0.8;
  CalibOutcome r = run_calibration(cfg, runs_.file("opts"));
  EXPECT_EQ(run_record_to_json(r.record)["quantizers"]["activation"]["group_size"], 8);
  EXPECT_EQ(run_record_to_json(r.record)["quantizers"]["o_proj_activation_group"], 8);
  EXPECT_EQ(run_record_to_json(r.record)["quantizers"]["kv"]["clip_ratio"], 0.8);
  EXPECT_TRUE(run_record_to_json(r.record)["online"]["qk_hadamard"].get<bool>());
  LoadedRun lr = load_run(runs_.file("opts"));
  HookSpy spy;
  spy.attach(lr.model);
  lr.model.forward(at::randint(0, lr.model.config().vocab_size, {1, 32}, at::kLong));
  const QuantSpec act{4, true, 8, 0.9}, kv{4, false, 4, 0.8};
  for (HookSite site : {HookSite::MlpInput, HookSite::OProjInput}) {
    const auto& [a_in, a_out] = spy.seen.at(site);
    EXPECT_TRUE(at::allclose(a_out, fake_quantize_activation(a_in, act), 1e-6, 1e-6)) << hook_site_name(site);
  }
  const auto& [v_in, v_out] = spy.seen.at(HookSite::Value);
  EXPECT_TRUE(at::allclose(v_out, fake_quantize_kv(v_in, kv), 1e-6, 1e-6));
  const auto& [k_in, k_out] = spy.seen.at(HookSite::Key);
  const at::Tensor k_rot = at::matmul(k_in.to(at::kDouble), sylvester(16)).to(at::kFloat);  // head_dim 16
  EXPECT_LT(rel_diff(k_out, fake_quantize_kv(k_rot, kv)), 1e-5);

  // R3 is on only when the KV cache is quantized: with 16-bit KV, K and Q pass untouched.
  cfg.kvbits = 16;
  CalibOutcome r16 = run_calibration(cfg, runs_.file("kv16"));
  EXPECT_FALSE(run_record_to_json(r16.record)["online"]["qk_hadamard"].get<bool>());
  LoadedRun lr16 = load_run(runs_.file("kv16"));
  HookSpy spy16;
  spy16.attach(lr16.model);
  lr16.model.forward(at::randint(0, lr16.model.config().vocab_size, {1, 32}, at::kLong));
  for (HookSite s : {HookSite::Query, HookSite::Key, HookSite::Value})
    EXPECT_TRUE(at::equal(spy16.seen.at(s).first, spy16.seen.at(s).second)) << hook_site_name(s);
}
