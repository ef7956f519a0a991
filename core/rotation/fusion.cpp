// RMSNorm fusion and residual rotation (see fusion.h).
#include "core/rotation/fusion.h"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>

#include <algorithm>

#include "core/util/error.h"
#include "core/util/process_memory.h"

namespace respin {

namespace {

// W * diag(gamma): scales input columns, in float64, back to W's dtype; 512 rows at a time, so
// that no float64 copy of a whole matrix is alive (elementwise: the same values as at once).
at::Tensor scale_columns(const at::Tensor& w, const at::Tensor& gamma) {
  constexpr int64_t kRows = 512;
  const at::Tensor g = gamma.to(at::kDouble).unsqueeze(0);
  at::Tensor out = at::empty_like(w);
  for (int64_t r = 0; r < w.size(0); r += kRows) {
    const int64_t n = std::min(kRows, w.size(0) - r);
    out.narrow(0, r, n).copy_(w.narrow(0, r, n).to(at::kDouble) * g);
  }
  return out;
}

at::Tensor times(const at::Tensor& a, const at::Tensor& b, at::ScalarType out) {
  return at::matmul(a.to(at::kDouble), b.to(at::kDouble)).to(out);
}

bool all_ones(const at::Tensor& t) { return at::equal(t, at::ones_like(t)); }

}  // namespace

LayerWeights fuse_layer_norms(LayerWeights L) {
  c10::NoGradGuard no_grad;
  for (at::Tensor* t : {&L.q_proj, &L.k_proj, &L.v_proj}) *t = scale_columns(*t, L.input_norm);
  for (at::Tensor* t : {&L.gate_proj, &L.up_proj}) *t = scale_columns(*t, L.post_attention_norm);
  L.input_norm = at::ones_like(L.input_norm);
  L.post_attention_norm = at::ones_like(L.post_attention_norm);
  return L;
}

at::Tensor fuse_final_norm(const at::Tensor& lm_head, const at::Tensor& final_norm) {
  c10::NoGradGuard no_grad;
  return scale_columns(lm_head, final_norm);
}

namespace {

// `w` shares tensors with the caller's model (a copy is made) or owns them (fused in place: each
// old tensor is freed when its fused successor replaces it).
LlamaModel fuse_weights(ModelConfig c, ModelWeights w, const FusionOptions& options) {
  c10::NoGradGuard no_grad;
  // Untie: lm_head gets the final norm folded in, embeddings do not (scale_columns below makes
  // lm_head a tensor of its own).
  c.tie_word_embeddings = false;
  if (options.center_embeddings) {
    at::Tensor e = w.embed_tokens.to(at::kDouble);
    w.embed_tokens = (e - e.mean(-1, /*keepdim=*/true)).to(w.embed_tokens.scalar_type());
  }
  for (LayerWeights& L : w.layers) {
    L = fuse_layer_norms(std::move(L));
    release_free_memory();  // the layer's float64 products, before the next layer's
  }
  w.lm_head = fuse_final_norm(w.lm_head, w.final_norm);
  w.final_norm = at::ones_like(w.final_norm);
  release_free_memory();
  return LlamaModel(c, std::move(w));
}

}  // namespace

LlamaModel fuse_rms_norms(const LlamaModel& model, const FusionOptions& options) {
  return fuse_weights(model.config(), model.weights(), options);
}

LlamaModel fuse_rms_norms(LlamaModel&& model, const FusionOptions& options) {
  ModelConfig c = model.config();
  return fuse_weights(std::move(c), std::move(model).take_weights(), options);
}

LlamaModel rotate_residual(const LlamaModel& fused, const at::Tensor& r) {
  c10::NoGradGuard no_grad;
  const ModelConfig& c = fused.config();
  const int64_t d = c.hidden_size;
  if (r.dim() != 2 || r.size(0) != d || r.size(1) != d)
    throw Error("residual rotation must be [" + std::to_string(d) + ", " + std::to_string(d) + "]");
  if (r.device() != fused.device())
    throw Error("rotate_residual: the rotation is on " + r.device().str() + " but the model is on " +
                fused.device().str());
  ModelWeights w = fused.weights();
  if (c.tie_word_embeddings || !all_ones(w.final_norm))
    throw Error("rotate_residual needs a model whose RMSNorms are fused (fuse_rms_norms)");
  const at::Tensor R = r.to(at::kDouble), Rt = R.t();
  const at::ScalarType dt = w.embed_tokens.scalar_type();
  w.embed_tokens = times(w.embed_tokens, R, dt);
  w.lm_head = times(w.lm_head, R, dt);
  for (LayerWeights& L : w.layers) {
    if (!all_ones(L.input_norm) || !all_ones(L.post_attention_norm))
      throw Error("rotate_residual needs a model whose RMSNorms are fused (fuse_rms_norms)");
    for (at::Tensor* t : {&L.q_proj, &L.k_proj, &L.v_proj, &L.gate_proj, &L.up_proj}) *t = times(*t, R, dt);
    L.o_proj = times(Rt, L.o_proj, dt);
    L.down_proj = times(Rt, L.down_proj, dt);
    if (L.o_bias.defined()) L.o_bias = times(L.o_bias.unsqueeze(0), R, dt).squeeze(0);
    if (L.down_bias.defined()) L.down_bias = times(L.down_bias.unsqueeze(0), R, dt).squeeze(0);
  }
  return LlamaModel(c, std::move(w));
}

}  // namespace respin
