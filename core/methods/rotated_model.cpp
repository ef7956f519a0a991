// Rotated model: offline fusion of residual/head rotations and the online hook (see rotated_model.h).
#include "core/methods/rotated_model.h"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>

#include <algorithm>
#include <memory>
#include <optional>

#include "core/ops/hot_ops.h"
#include "core/quant/quantizer.h"
#include "core/rotation/hadamard_transform.h"
#include "core/util/error.h"
#include "core/util/process_memory.h"

namespace respin {

ResidualRotations ResidualRotations::global(const at::Tensor& r, std::vector<at::Tensor> head, int layers) {
  ResidualRotations out;
  out.attn_in.assign(layers, r);
  out.mlp_in.assign(layers, r);
  out.final_basis = r;
  out.head = std::move(head);
  if (out.head.empty()) out.head.resize(layers);
  return out;
}

bool ResidualRotations::is_global() const {
  auto same = [&](const at::Tensor& t) { return t.is_same(final_basis); };
  return std::all_of(attn_in.begin(), attn_in.end(), same) && std::all_of(mlp_in.begin(), mlp_in.end(), same);
}

std::vector<at::Tensor> ResidualRotations::unique_tensors() const {
  std::vector<at::Tensor> out;
  auto add = [&](const at::Tensor& t) {
    if (!t.defined()) return;
    for (const at::Tensor& u : out)
      if (u.is_same(t)) return;
    out.push_back(t);
  };
  for (int i = 0; i < layers(); ++i) add(attn_in[i]), add(mlp_in[i]);
  add(final_basis);
  for (const at::Tensor& h : head) add(h);
  return out;
}

ResidualRotations ResidualRotations::to(const at::TensorOptions& options) const {
  std::vector<std::pair<at::Tensor, at::Tensor>> converted;
  auto convert = [&](const at::Tensor& t) {
    if (!t.defined()) return t;
    for (const auto& [from, into] : converted)
      if (from.is_same(t)) return into;
    converted.emplace_back(t, t.detach().to(options));
    return converted.back().second;
  };
  ResidualRotations out;
  for (const at::Tensor& t : attn_in) out.attn_in.push_back(convert(t));
  for (const at::Tensor& t : mlp_in) out.mlp_in.push_back(convert(t));
  out.final_basis = convert(final_basis);
  for (const at::Tensor& t : head) out.head.push_back(convert(t));
  return out;
}

void ResidualRotations::check_device(at::Device device, const std::string& what) const {
  for (const at::Tensor& t : unique_tensors())
    if (t.device() != device)
      throw Error(what + ": the rotations are on " + t.device().str() + " but the model is on " + device.str());
}

namespace {


void check_square(const at::Tensor& t, int64_t n, const std::string& what) {
  if (!t.defined() || t.dim() != 2 || t.size(0) != n || t.size(1) != n)
    throw Error(what + " must be a [" + std::to_string(n) + ", " + std::to_string(n) + "] matrix");
}

// The basis the output of layer i's MLP is written in.
const at::Tensor& mlp_out_basis(const ResidualRotations& r, int i) {
  return i + 1 < r.layers() ? r.attn_in[i + 1] : r.final_basis;
}

}  // namespace

void check_norms_fused(const LlamaModel& fused) {
  const ModelWeights& w = fused.weights();
  // All norm weights compared with 1 on the device and read back once.
  std::vector<at::Tensor> ones{(w.final_norm == 1).all()};
  for (const LayerWeights& l : w.layers) {
    ones.push_back((l.input_norm == 1).all());
    ones.push_back((l.post_attention_norm == 1).all());
  }
  if (fused.config().tie_word_embeddings || !at::stack(ones).all().item<bool>())
    throw Error("rotating a model needs its RMSNorms fused first (fuse_rms_norms)");
}

namespace {

void check_rotations(const ModelConfig& c, const ResidualRotations& rot) {
  const int L = static_cast<int>(c.num_hidden_layers);
  const int64_t D = c.hidden_size, hd = c.head_dim;
  if (rot.layers() != L || static_cast<int>(rot.mlp_in.size()) != L || static_cast<int>(rot.head.size()) != L)
    throw Error("rotations cover " + std::to_string(rot.layers()) + " layers, the model has " + std::to_string(L));
  check_square(rot.final_basis, D, "final residual rotation");
  for (int i = 0; i < L; ++i) {
    check_square(rot.attn_in[i], D, "attention-input rotation of layer " + std::to_string(i));
    check_square(rot.mlp_in[i], D, "MLP-input rotation of layer " + std::to_string(i));
    if (rot.head[i].defined()) check_square(rot.head[i], hd, "head rotation of layer " + std::to_string(i));
  }
}

// The inverses of the online Hadamards that are folded into the weights.
struct Folded {
  std::optional<HadamardTransform> down_h;
  at::Tensor heads_dense;
};

Folded folded_transforms(const ModelConfig& c, const OnlineTransforms& online, at::Device device, at::ScalarType ct) {
  Folded f;
  if (online.heads_hadamard) f.heads_dense = HadamardTransform::of_size(c.num_attention_heads).to(device).dense().to(ct);
  if (online.down_hadamard) f.down_h = HadamardTransform::of_size(c.intermediate_size).to(device);
  return f;
}

bool recording(const at::Tensor& a, const at::Tensor& b = at::Tensor()) {
  return at::GradMode::is_enabled() && (a.requires_grad() || (b.defined() && b.requires_grad()));
}

// f, a transform that acts on each row of x alone, written over x (which the caller owns) `rows`
// rows at a time: only one block's temporaries are alive and no second matrix (the same values
// as at once). Not for tensors autograd records.
template <class F>
at::Tensor over_rows(at::Tensor x, int64_t rows, F f) {
  for (int64_t r = 0; r < x.size(0); r += rows) {
    const int64_t n = std::min(rows, x.size(0) - r);
    x.narrow(0, r, n).copy_(f(x.narrow(0, r, n)));
  }
  return x;
}

// h.apply(x) on each row of x; without autograd over x, a block of rows at a time.
at::Tensor hadamard_by_rows(const HadamardTransform& h, at::Tensor x) {
  constexpr int64_t kRows = 128;
  if (recording(x) || x.size(0) <= kRows) return h.apply(x);
  return over_rows(std::move(x), kRows, [&](const at::Tensor& block) { return h.apply(block); });
}

// a @ b computed in `ct` and stored as `out_dtype`. Without autograd, kRows rows of the result at
// a time: a's rows are converted a block at a time and only one block's product is alive beside
// the result, instead of a's converted copy, the whole product and its cast (docs/methods.md 1.9:
// a bfloat16 model's rotation would otherwise hold 12 bytes per weight entry at once).
at::Tensor product(const at::Tensor& a, const at::Tensor& b, at::ScalarType ct, at::ScalarType out_dtype) {
  constexpr int64_t kRows = 512;
  if (recording(a, b) || a.dim() != 2 || a.size(0) <= kRows) return at::matmul(a.to(ct), b.to(ct)).to(out_dtype);
  const at::Tensor bc = b.to(ct);
  at::Tensor result = at::empty({a.size(0), b.size(1)}, a.options().dtype(out_dtype));
  for (int64_t r = 0; r < a.size(0); r += kRows) {
    const int64_t n = std::min(kRows, a.size(0) - r);
    result.narrow(0, r, n).copy_(at::matmul(a.narrow(0, r, n).to(ct), bc));
  }
  return result;
}

// Layer i of the fused model, rotated (docs/methods.md 1.3): products in ct, stored as out_dtype.
LayerWeights rotate_layer(const ModelConfig& c, LayerWeights l, const ResidualRotations& rot, int i,
                          const OnlineTransforms& online, const Folded& f, at::ScalarType ct, at::ScalarType out_dtype) {
  const int64_t D = c.hidden_size, hd = c.head_dim, nh = c.num_attention_heads, nkv = c.num_key_value_heads;
  auto in = [&](const at::Tensor& t) { return t.to(ct); };
  auto out = [&](const at::Tensor& t) { return t.to(out_dtype); };
  const at::Tensor &A = rot.attn_in[i], &B = rot.mlp_in[i], &C = mlp_out_basis(rot, i), &Rh = rot.head[i];
  l.q_proj = product(l.q_proj, A, ct, out_dtype);
  l.k_proj = product(l.k_proj, A, ct, out_dtype);
  at::Tensor v = at::matmul(in(l.v_proj), A);
  if (Rh.defined()) {
    v = at::matmul(Rh.t(), v.view({nkv, hd, D})).reshape({nkv * hd, D});
    if (l.v_bias.defined()) l.v_bias = out(at::matmul(in(l.v_bias).view({nkv, hd}), Rh).reshape({nkv * hd}));
  }
  l.v_proj = out(v);
  // o_proj's columns: each head's value rotation, then the Hadamard across heads. Each row on its
  // own, so without autograd a block of rows at a time over a copy of its own.
  auto heads_of = [&](const at::Tensor& rows) {  // [n, nh * hd]
    const int64_t n = rows.size(0);
    at::Tensor x = rows;
    if (Rh.defined()) x = at::matmul(x.view({n, nh, hd}), Rh).reshape({n, nh * hd});
    if (online.heads_hadamard)
      x = at::matmul(x.view({n, nh, hd}).transpose(1, 2), f.heads_dense).transpose(1, 2).reshape({n, nh * hd});
    return x;
  };
  at::Tensor o = recording(l.o_proj, Rh) ? heads_of(in(l.o_proj))
                                         : over_rows(l.o_proj.to(ct, /*non_blocking=*/false, /*copy=*/true), 512, heads_of);
  l.o_proj = at::Tensor();
  l.o_proj = product(B.t(), o, ct, out_dtype);
  o = at::Tensor();
  if (l.o_bias.defined()) l.o_bias = out(at::matmul(in(l.o_bias).unsqueeze(0), B).squeeze(0));
  l.gate_proj = product(l.gate_proj, B, ct, out_dtype);
  l.up_proj = product(l.up_proj, B, ct, out_dtype);
  // [D, F], a copy of its own: the Hadamard is applied over it.
  at::Tensor d = recording(l.down_proj) ? in(l.down_proj) : l.down_proj.to(ct, /*non_blocking=*/false, /*copy=*/true);
  if (f.down_h) d = hadamard_by_rows(*f.down_h, std::move(d));

  l.down_proj = at::Tensor();
  l.down_proj = product(C.t(), d, ct, out_dtype);
  if (l.down_bias.defined()) l.down_bias = out(at::matmul(in(l.down_bias).unsqueeze(0), C).squeeze(0));
  return l;
}

// `w` shares its tensors with the caller's fused model (the rotated weights are a new copy) or
// owns them (rotated in place: each fused tensor is freed as its rotated successor replaces it).
ModelWeights rotate_weight_set(const ModelConfig& c, at::Device device, ModelWeights w, const ResidualRotations& rot,
                               const OnlineTransforms& online, at::ScalarType out_dtype) {
  const at::ScalarType ct = rot.final_basis.scalar_type();
  const Folded f = folded_transforms(c, online, device, ct);
  w.embed_tokens = product(w.embed_tokens, rot.attn_in[0], ct, out_dtype);
  release_free_memory();
  w.lm_head = product(w.lm_head, rot.final_basis, ct, out_dtype);
  release_free_memory();
  for (int i = 0; i < static_cast<int>(c.num_hidden_layers); ++i) {
    w.layers[i] = rotate_layer(c, std::move(w.layers[i]), rot, i, online, f, ct, out_dtype);
    release_free_memory();  // the layer's float64 products, before the next layer's
  }
  return w;
}

}  // namespace

ModelWeights rotate_weights(const LlamaModel& fused, const ResidualRotations& rot,
                            const OnlineTransforms& online, at::ScalarType out_dtype, bool check_norms) {
  check_rotations(fused.config(), rot);
  if (check_norms) check_norms_fused(fused);
  rot.check_device(fused.device(), "rotate_weights");
  return rotate_weight_set(fused.config(), fused.device(), fused.weights(), rot, online, out_dtype);
}

ModelWeights rotate_weights(LlamaModel&& fused, const ResidualRotations& rot, const OnlineTransforms& online,
                            at::ScalarType out_dtype) {
  check_rotations(fused.config(), rot);
  check_norms_fused(fused);
  rot.check_device(fused.device(), "rotate_weights");
  const ModelConfig c = fused.config();
  const at::Device device = fused.device();
  return rotate_weight_set(c, device, std::move(fused).take_weights(), rot, online, out_dtype);
}

WeightRotation::WeightRotation(const ModelConfig& config, const ResidualRotations& rotations,
                               const OnlineTransforms& online, at::Device device, at::ScalarType out_dtype)
    : config_(config), rot_(rotations), online_(online), out_dtype_(out_dtype) {
  check_rotations(config, rotations);
  rotations.check_device(device, "rotate_weights");
  const Folded f = folded_transforms(config, online, device, rotations.final_basis.scalar_type());
  down_h_ = f.down_h;
  heads_dense_ = f.heads_dense;
}

at::Tensor WeightRotation::embed_tokens(const at::Tensor& fused) const {
  c10::NoGradGuard no_grad;
  return product(fused, rot_.attn_in[0], rot_.final_basis.scalar_type(), out_dtype_);
}

at::Tensor WeightRotation::lm_head(const at::Tensor& fused) const {
  c10::NoGradGuard no_grad;
  return product(fused, rot_.final_basis, rot_.final_basis.scalar_type(), out_dtype_);
}

LayerWeights WeightRotation::layer(int i, LayerWeights fused) const {
  c10::NoGradGuard no_grad;
  if (i < 0 || i >= static_cast<int>(config_.num_hidden_layers))
    throw Error("layer index " + std::to_string(i) + " out of range");
  Folded f;
  f.down_h = down_h_;
  f.heads_dense = heads_dense_;
  return rotate_layer(config_, std::move(fused), rot_, i, online_, f, rot_.final_basis.scalar_type(), out_dtype_);
}

LayerRotator::LayerRotator(const LlamaModel& fused, const ResidualRotations& rotations, const OnlineTransforms& online,
                           at::ScalarType out_dtype)
    : fused_(fused), rot_(rotations), online_(online), out_dtype_(out_dtype) {
  check_rotations(fused.config(), rotations);
  rotations.check_device(fused.device(), "rotate_weights");
  const Folded f = folded_transforms(fused.config(), online, fused.device(), rotations.final_basis.scalar_type());
  down_h_ = f.down_h;
  heads_dense_ = f.heads_dense;
}

LayerWeights LayerRotator::layer(int i) const {
  if (i < 0 || i >= static_cast<int>(fused_.config().num_hidden_layers))
    throw Error("layer index " + std::to_string(i) + " out of range");
  Folded f;
  f.down_h = down_h_;
  f.heads_dense = heads_dense_;
  return rotate_layer(fused_.config(), fused_.weights().layers[i], rot_, i, online_, f, rot_.final_basis.scalar_type(),
                      out_dtype_);
}

at::Tensor LayerRotator::embed(const at::Tensor& ids) const {
  const at::ScalarType ct = rot_.final_basis.scalar_type();
  const at::Tensor rows = at::embedding(fused_.weights().embed_tokens, ids.to(fused_.device()));
  return at::matmul(rows.to(ct), rot_.attn_in[0]).to(out_dtype_);
}

at::Tensor LayerRotator::lm_head() const {
  const at::ScalarType ct = rot_.final_basis.scalar_type();
  return at::matmul(fused_.weights().lm_head.to(ct), rot_.final_basis).to(out_dtype_);
}

std::pair<at::Tensor, at::Tensor> LayerRotator::dense_skip(int i) const {
  return {at::matmul(rot_.attn_in[i].t(), rot_.mlp_in[i]), at::matmul(rot_.mlp_in[i].t(), mlp_out_basis(rot_, i))};
}

SkipTransitions dense_transitions(const ResidualRotations& rot) {
  SkipTransitions s;
  for (int i = 0; i < rot.layers(); ++i) {
    s.attn_dense.push_back(at::matmul(rot.attn_in[i].t(), rot.mlp_in[i]));
    s.mlp_dense.push_back(at::matmul(rot.mlp_in[i].t(), mlp_out_basis(rot, i)));
  }
  return s;
}

SkipTransitions rank_r_transitions(const ResidualRotations& rot, int64_t rank, std::vector<double>* errors) {
  c10::NoGradGuard no_grad;
  SkipTransitions s;
  const int64_t D = rot.final_basis.size(0);
  const int64_t r = std::clamp<int64_t>(rank, 0, D);
  TransitionOptions opt;
  opt.exact_error = D <= 1024;
  auto make = [&](const at::Tensor& a, const at::Tensor& b) {
    ResidualCorrection c = approximate_transition(a.detach(), b.detach(), r, opt);
    if (errors) errors->push_back(c.spectral_error);
    c.q = c.q.to(at::kFloat);
    c.m = c.m.to(at::kFloat);
    return c;
  };
  for (int i = 0; i < rot.layers(); ++i) {
    s.attn_rank_r.push_back(make(rot.attn_in[i], rot.mlp_in[i]));
    s.mlp_rank_r.push_back(make(rot.mlp_in[i], mlp_out_basis(rot, i)));
  }
  return s;
}

ActivationHook online_hook(const ModelConfig& config, OnlineHookOptions o) {
  o.quant.validate();
  struct State {
    OnlineHookOptions o;
    std::optional<HadamardTransform> qk, down, heads;
    QuantSpec o_proj_spec;
    int64_t nh = 0, hd = 0;
  };
  auto st = std::make_shared<State>();
  st->nh = config.num_attention_heads;
  st->hd = config.head_dim;
  if (o.online.qk_hadamard) st->qk = HadamardTransform::of_size(config.head_dim).to(o.device);
  if (o.online.down_hadamard) st->down = HadamardTransform::of_size(config.intermediate_size).to(o.device);
  if (o.online.heads_hadamard) st->heads = HadamardTransform::of_size(config.num_attention_heads).to(o.device);
  st->o_proj_spec = o.quant.activation;
  st->o_proj_spec.group_size = o.o_proj_group;
  st->o = std::move(o);

  return [st](HookSite site, int layer, at::Tensor& x) {
    const OnlineHookOptions& o = st->o;
    auto act = [&](const QuantSpec& spec) {
      if (o.observer) o.observer(site, layer, x);
      if (!spec.enabled()) return;
      x = ops::fake_quantize_tokens(x, spec, o.ste);
    };
    auto kv = [&]() {
      if (o.observer) o.observer(site, layer, x);
      if (!o.quant.kv.enabled()) return;
      x = ops::fake_quantize_kv(x, o.quant.kv, o.ste);
    };
    auto skip = [&](const std::vector<at::Tensor>& dense, const std::vector<ResidualCorrection>& rr) {
      if (layer < static_cast<int>(dense.size()) && dense[layer].defined())
        x = ops::dense_transition(x, dense[layer]);
      else if (layer < static_cast<int>(rr.size()) && rr[layer].rank > 0)
        x = ops::residual_correction(x, rr[layer]);
    };
    switch (site) {
      case HookSite::AttnInput:
      case HookSite::MlpInput: act(o.quant.activation); break;
      case HookSite::DownProjInput:
        if (st->down) x = ops::hadamard(x, *st->down);
        act(o.quant.activation);
        break;
      case HookSite::OProjInput:
        if (st->heads) {
          const auto shape = x.sizes().vec();
          at::Tensor v = x.reshape({-1, st->nh, st->hd}).transpose(1, 2);  // [N, hd, nh]
          x = ops::hadamard(v, *st->heads).transpose(1, 2).reshape(shape);
        }
        act(st->o_proj_spec);
        break;
      case HookSite::Query:
        if (st->qk) x = ops::hadamard(x, *st->qk);
        if (o.observer) o.observer(site, layer, x);
        break;
      case HookSite::Key:
        if (st->qk) x = ops::hadamard(x, *st->qk);
        kv();
        break;
      case HookSite::Value: kv(); break;
      case HookSite::AttnSkip: skip(o.skip.attn_dense, o.skip.attn_rank_r); break;
      case HookSite::MlpSkip: skip(o.skip.mlp_dense, o.skip.mlp_rank_r); break;
      case HookSite::LmHeadInput: break;
    }
  };
}

}  // namespace respin
