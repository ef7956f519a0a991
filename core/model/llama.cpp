// LLaMA-family forward (see llama.h).
#include "core/model/llama.h"

#include <ATen/ATen.h>
#include <torch/version.h>

#include <cmath>
#include <limits>

#include "core/ops/hot_ops.h"
#include "core/util/error.h"
#include "core/util/tensor_text.h"

// libtorch's fused attention (flash / memory-efficient kernels) with an explicit scale: 2.1 and
// later. Debian's 1.13 has none; there the blocked eager attention below runs everywhere.
#if defined(TORCH_VERSION_MAJOR) && (TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 1))
#define RESPIN_HAS_SDPA 1
#endif

namespace respin {

namespace {

constexpr int64_t kAttentionBlock = 256;  // query rows per attention block

at::Tensor rotate_half(const at::Tensor& x) {
  const int64_t half = x.size(-1) / 2;
  return at::cat({-x.narrow(-1, half, half), x.narrow(-1, 0, half)}, -1);
}

// [B, kv, T, d] -> [B, kv * n_rep, T, d]; query head h uses kv head h / n_rep.
at::Tensor repeat_kv(const at::Tensor& x, int64_t n_rep) {
  if (n_rep == 1) return x;
  const auto s = x.sizes();
  return x.unsqueeze(2).expand({s[0], s[1], n_rep, s[2], s[3]}).reshape({s[0], s[1] * n_rep, s[2], s[3]});
}

void check_shape(const at::Tensor& t, std::vector<int64_t> expect, const std::string& name) {
  if (!t.defined()) throw Error("weight '" + name + "' is missing");
  if (t.sizes().vec() != expect)
    throw Error("weight '" + name + "' has shape " + shape_text(t) + ", config expects " + shape_text(expect));
}

}  // namespace

std::vector<at::Tensor*> layer_tensors(LayerWeights& L) {
  return {&L.input_norm, &L.q_proj, &L.k_proj, &L.v_proj, &L.q_bias, &L.k_bias, &L.v_bias, &L.o_proj, &L.o_bias,
          &L.post_attention_norm, &L.gate_proj, &L.up_proj, &L.down_proj, &L.gate_bias, &L.up_bias, &L.down_bias};
}

std::vector<at::Tensor*> linear_weights(LayerWeights& L) {
  return {&L.q_proj, &L.k_proj, &L.v_proj, &L.o_proj, &L.gate_proj, &L.up_proj, &L.down_proj};
}

namespace {

// `convert` applied to every defined tensor; a tied lm_head stays the embeddings' tensor.
template <class Convert>
ModelWeights convert_weights(const ModelWeights& w, Convert convert) {
  auto apply = [&](at::Tensor& t) {
    if (t.defined()) t = convert(t);
  };
  const bool tied = w.lm_head.is_same(w.embed_tokens);
  ModelWeights c = w;
  apply(c.embed_tokens);
  apply(c.final_norm);
  c.lm_head = tied ? c.embed_tokens : convert(w.lm_head);
  for (LayerWeights& L : c.layers)
    for (at::Tensor* t : layer_tensors(L)) apply(*t);
  return c;
}

}  // namespace

ModelWeights cast_weights(const ModelWeights& w, at::ScalarType dtype) {
  return convert_weights(w, [&](const at::Tensor& t) { return t.to(dtype); });
}

ModelWeights move_weights(const ModelWeights& w, at::Device device) {
  return convert_weights(w, [&](const at::Tensor& t) { return t.to(device); });
}

at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps) {
  at::Tensor xf = x.to(at::kFloat);
  at::Tensor var = xf.pow(2).mean(-1, /*keepdim=*/true);
  // Where the float32 statistics overflow, Hugging Face's formula quietly gives 0 (x * rsqrt(inf))
  // and the model then predicts a uniform distribution; NaN instead makes the overflow reach the
  // loss, where it is reported (no device synchronisation here).
  at::Tensor inv = at::rsqrt(var + eps).masked_fill(at::isinf(var), std::numeric_limits<float>::quiet_NaN());
  return weight * (xf * inv).to(x.scalar_type());
}

at::Tensor rope_inv_freq(const ModelConfig& c) {
  const int64_t dim = c.head_dim;
  at::Tensor exponent = at::arange(0, dim, 2, at::kLong).to(at::kFloat) / static_cast<float>(dim);
  at::Tensor inv_freq = 1.0 / at::pow(c.rope_theta, exponent);
  const RopeScaling& rs = c.rope_scaling;
  if (rs.type == "linear") return inv_freq / rs.factor;
  if (rs.type != "llama3") return inv_freq;
  // Llama 3.1 frequency-dependent scaling: long wavelengths scaled by 1/factor, short ones kept,
  // a smooth interpolation in between.
  const double old_ctx = static_cast<double>(rs.original_max_position_embeddings);
  const double low_freq_wavelen = old_ctx / rs.low_freq_factor;
  const double high_freq_wavelen = old_ctx / rs.high_freq_factor;
  at::Tensor wavelen = 2 * M_PI / inv_freq;
  at::Tensor scaled = at::where(wavelen > low_freq_wavelen, inv_freq / rs.factor, inv_freq);
  at::Tensor smooth = (old_ctx / wavelen - rs.low_freq_factor) / (rs.high_freq_factor - rs.low_freq_factor);
  at::Tensor smoothed = (1 - smooth) * scaled / rs.factor + smooth * scaled;
  at::Tensor medium = (wavelen >= high_freq_wavelen).logical_and(wavelen <= low_freq_wavelen);
  return at::where(medium, smoothed, scaled);
}

void LlamaModel::check_layer(int i, const LayerWeights& L) const {
  const ModelConfig& c = config_;
  const int64_t d = c.hidden_size, q = c.q_dim(), kv = c.kv_dim(), f = c.intermediate_size;
  const bool qkv_bias = c.attention_bias || c.qkv_bias;
  const std::string p = "model.layers." + std::to_string(i) + ".";
  check_shape(L.input_norm, {d}, p + "input_layernorm.weight");
  check_shape(L.post_attention_norm, {d}, p + "post_attention_layernorm.weight");
  check_shape(L.q_proj, {q, d}, p + "self_attn.q_proj.weight");
  check_shape(L.k_proj, {kv, d}, p + "self_attn.k_proj.weight");
  check_shape(L.v_proj, {kv, d}, p + "self_attn.v_proj.weight");
  check_shape(L.o_proj, {d, q}, p + "self_attn.o_proj.weight");
  check_shape(L.gate_proj, {f, d}, p + "mlp.gate_proj.weight");
  check_shape(L.up_proj, {f, d}, p + "mlp.up_proj.weight");
  check_shape(L.down_proj, {d, f}, p + "mlp.down_proj.weight");
  if (qkv_bias) {
    check_shape(L.q_bias, {q}, p + "self_attn.q_proj.bias");
    check_shape(L.k_bias, {kv}, p + "self_attn.k_proj.bias");
    check_shape(L.v_bias, {kv}, p + "self_attn.v_proj.bias");
  }
  if (c.attention_bias) check_shape(L.o_bias, {d}, p + "self_attn.o_proj.bias");
  if (c.mlp_bias) {
    check_shape(L.gate_bias, {f}, p + "mlp.gate_proj.bias");
    check_shape(L.up_bias, {f}, p + "mlp.up_proj.bias");
    check_shape(L.down_bias, {d}, p + "mlp.down_proj.bias");
  }
}

void LlamaModel::set_layer(int layer, LayerWeights weights) {
  if (layer < 0 || layer >= config_.num_hidden_layers)
    throw Error("layer index " + std::to_string(layer) + " out of range");
  check_layer(layer, weights);
  for (at::Tensor* t : layer_tensors(weights))
    if (t->defined() && t->device() != device())
      throw Error("set_layer: layer " + std::to_string(layer) + "'s weights are on " + t->device().str() +
                  " but the model is on " + device().str());
  weights_.layers[layer] = std::move(weights);
}

void LlamaModel::set_embeddings(at::Tensor embed_tokens) {
  check_shape(embed_tokens, {config_.vocab_size, config_.hidden_size}, "model.embed_tokens.weight");
  if (embed_tokens.device() != device() || embed_tokens.scalar_type() != dtype())
    throw Error("set_embeddings: the embeddings are not on the model's device in its dtype");
  const bool tied = weights_.lm_head.is_same(weights_.embed_tokens);
  weights_.embed_tokens = std::move(embed_tokens);
  if (tied) weights_.lm_head = weights_.embed_tokens;
}

void LlamaModel::set_head(at::Tensor final_norm, at::Tensor lm_head) {
  check_shape(final_norm, {config_.hidden_size}, "model.norm.weight");
  check_shape(lm_head, {config_.vocab_size, config_.hidden_size}, "lm_head.weight");
  if (final_norm.device() != device() || lm_head.device() != device())
    throw Error("set_head: the head's weights are not on the model's device");
  weights_.final_norm = std::move(final_norm);
  weights_.lm_head = std::move(lm_head);
}

LlamaModel::LlamaModel(ModelConfig config, ModelWeights weights)
    : config_(std::move(config)), weights_(std::move(weights)) {
  const ModelConfig& c = config_;
  const int64_t d = c.hidden_size;
  check_shape(weights_.embed_tokens, {c.vocab_size, d}, "model.embed_tokens.weight");
  check_shape(weights_.final_norm, {d}, "model.norm.weight");
  check_shape(weights_.lm_head, {c.vocab_size, d}, "lm_head.weight");
  if (static_cast<int64_t>(weights_.layers.size()) != c.num_hidden_layers)
    throw Error("model has " + std::to_string(weights_.layers.size()) + " layers, config expects " +
                std::to_string(c.num_hidden_layers));
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) check_layer(static_cast<int>(i), weights_.layers[i]);
  // One device for the whole model: everything derived from it (contexts, rotations, quantizer
  // state, hooks) follows device().
  const at::Device dev = device();
  auto check_device = [&](const at::Tensor& t, const std::string& name) {
    if (t.defined() && t.device() != dev)
      throw Error("weight '" + name + "' is on " + t.device().str() + " but the embeddings are on " + dev.str() +
                  ": a model's tensors must all be on one device");
  };
  check_device(weights_.final_norm, "model.norm.weight");
  check_device(weights_.lm_head, "lm_head.weight");
  static const char* kSlotNames[] = {"input_layernorm.weight", "self_attn.q_proj.weight", "self_attn.k_proj.weight",
                                     "self_attn.v_proj.weight", "self_attn.q_proj.bias", "self_attn.k_proj.bias",
                                     "self_attn.v_proj.bias", "self_attn.o_proj.weight", "self_attn.o_proj.bias",
                                     "post_attention_layernorm.weight", "mlp.gate_proj.weight", "mlp.up_proj.weight",
                                     "mlp.down_proj.weight", "mlp.gate_proj.bias", "mlp.up_proj.bias",
                                     "mlp.down_proj.bias"};
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    const std::vector<at::Tensor*> slots = layer_tensors(weights_.layers[i]);
    for (size_t k = 0; k < slots.size(); ++k)
      check_device(*slots[k], "model.layers." + std::to_string(i) + "." + kSlotNames[k]);
  }
}

at::Device LlamaModel::device() const { return weights_.embed_tokens.device(); }

const char* attention_kernel(at::Device device) {
#ifdef RESPIN_HAS_SDPA
  if (device.is_cuda()) return "scaled_dot_product_attention";
#endif
  (void)device;
  return "eager, blocks of 256 query rows";
}

bool attention_is_fused(at::Device device) {
#ifdef RESPIN_HAS_SDPA
  return device.is_cuda();
#else
  (void)device;
  return false;
#endif
}

ForwardContext LlamaModel::make_context(int64_t seq_len) const {
  ForwardContext ctx;
  ctx.seq_len = seq_len;
  // cos/sin in float32 on the CPU (the same numbers on every device), then moved.
  at::Tensor pos = at::arange(seq_len, at::kLong).to(at::kFloat);
  at::Tensor freqs = at::outer(pos, rope_inv_freq(config_));  // [T, d/2]
  at::Tensor emb = at::cat({freqs, freqs}, -1);
  const at::Device dev = device();
  ctx.cos = emb.cos().to(dev, dtype());
  ctx.sin = emb.sin().to(dev, dtype());
  const auto index = at::TensorOptions().dtype(at::kLong).device(dev);
  at::Tensor i = at::arange(seq_len, index).unsqueeze(1);
  at::Tensor j = at::arange(seq_len, index).unsqueeze(0);
  ctx.blocked = j > i;
  if (config_.sliding_window && *config_.sliding_window < seq_len)
    ctx.blocked_sliding = ctx.blocked.logical_or(j <= i - *config_.sliding_window);
  return ctx;
}

at::Tensor LlamaModel::embed(const at::Tensor& ids) const {
  return at::embedding(weights_.embed_tokens, ids.to(weights_.embed_tokens.device()));
}

at::Tensor LlamaModel::attention(int layer, const at::Tensor& x_in, const ForwardContext& ctx) const {
  const LayerWeights& L = weights_.layers[layer];
  const int64_t B = x_in.size(0), T = x_in.size(1);
  const int64_t H = config_.num_attention_heads, KV = config_.num_key_value_heads,
                hd = config_.head_dim;
  at::Tensor x = x_in;
  run_hook(HookSite::AttnInput, layer, x);
  at::Tensor q = ops::linear(x, L.q_proj, L.q_bias).view({B, T, H, hd}).transpose(1, 2);
  at::Tensor k = ops::linear(x, L.k_proj, L.k_bias).view({B, T, KV, hd}).transpose(1, 2);
  at::Tensor v = ops::linear(x, L.v_proj, L.v_bias).view({B, T, KV, hd}).transpose(1, 2);
  q = q * ctx.cos + rotate_half(q) * ctx.sin;
  k = k * ctx.cos + rotate_half(k) * ctx.sin;
  run_hook(HookSite::Query, layer, q);
  run_hook(HookSite::Key, layer, k);
  run_hook(HookSite::Value, layer, v);
  k = repeat_kv(k, H / KV);
  v = repeat_kv(v, H / KV);
  // Causal attention in blocks of query rows: each block only multiplies against the keys it may
  // see, so the masked upper triangle is never computed and the score matrix stays cache-sized
  // (8x faster than one [T, T] score matrix at T = 2048 on CPU). Scores are formed in the model
  // dtype and normalized in float32, as Hugging Face's eager attention does.
  const double scale = 1.0 / std::sqrt(static_cast<double>(hd));
  const std::optional<int64_t> window = config_.window_of_layer(layer);
  const at::Tensor& blocked = ctx.blocked_for(config_, layer);
#ifdef RESPIN_HAS_SDPA
  // On CUDA the fused kernels: no score matrix is formed, forward or backward (docs/methods.md
  // 1.9). The CPU keeps the blocked form below, the reference every pipeline test compares with.
  if (q.is_cuda()) {
    at::Tensor fused = window ? at::scaled_dot_product_attention(q, k, v, blocked.logical_not(), 0.0, false, scale)
                              : at::scaled_dot_product_attention(q, k, v, {}, 0.0, /*is_causal=*/true, scale);
    at::Tensor out = fused.transpose(1, 2).reshape({B, T, H * hd});
    run_hook(HookSite::OProjInput, layer, out);
    return ops::linear(out, L.o_proj, L.o_bias);
  }
#endif
  const at::Tensor k_t = k.transpose(2, 3).contiguous();  // [B, H, hd, T]
  std::vector<at::Tensor> blocks;
  for (int64_t i0 = 0; i0 < T; i0 += kAttentionBlock) {
    const int64_t i1 = std::min(T, i0 + kAttentionBlock);
    int64_t k0 = 0;
    if (window) k0 = std::max<int64_t>(0, i0 - *window + 1);
    at::Tensor scores = at::matmul(q.narrow(2, i0, i1 - i0), k_t.narrow(3, k0, i1 - k0)) * scale;
    scores = scores.to(at::kFloat).masked_fill(blocked.narrow(0, i0, i1 - i0).narrow(1, k0, i1 - k0), -INFINITY);
    at::Tensor probs = at::softmax(scores, -1).to(q.scalar_type());
    blocks.push_back(at::matmul(probs, v.narrow(2, k0, i1 - k0)));
  }
  at::Tensor out = (blocks.size() == 1 ? blocks[0] : at::cat(blocks, 2)).transpose(1, 2).reshape({B, T, H * hd});
  run_hook(HookSite::OProjInput, layer, out);
  return ops::linear(out, L.o_proj, L.o_bias);
}

at::Tensor LlamaModel::mlp(int layer, const at::Tensor& x_in) const {
  const LayerWeights& L = weights_.layers[layer];
  at::Tensor x = x_in;
  run_hook(HookSite::MlpInput, layer, x);
  at::Tensor h = at::silu(ops::linear(x, L.gate_proj, L.gate_bias)) * ops::linear(x, L.up_proj, L.up_bias);
  run_hook(HookSite::DownProjInput, layer, h);
  return ops::linear(h, L.down_proj, L.down_bias);
}

at::Tensor LlamaModel::layer_forward(int layer, const at::Tensor& hidden,
                                     const ForwardContext& ctx) const {
  if (layer < 0 || layer >= config_.num_hidden_layers)
    throw Error("layer index " + std::to_string(layer) + " out of range");
  if (hidden.size(1) != ctx.seq_len) throw Error("forward context built for another sequence length");
  const LayerWeights& L = weights_.layers[layer];
  const double eps = config_.rms_norm_eps;
  at::Tensor attn_out = attention(layer, rms_norm(hidden, L.input_norm, eps), ctx);
  at::Tensor skip = hidden;
  run_hook(HookSite::AttnSkip, layer, skip);
  at::Tensor h = skip + attn_out;
  at::Tensor mlp_out = mlp(layer, rms_norm(h, L.post_attention_norm, eps));
  run_hook(HookSite::MlpSkip, layer, h);
  return h + mlp_out;
}

at::Tensor LlamaModel::head(const at::Tensor& hidden) const {
  at::Tensor x = rms_norm(hidden, weights_.final_norm, config_.rms_norm_eps);
  run_hook(HookSite::LmHeadInput, -1, x);
  return ops::linear(x, weights_.lm_head);
}

at::Tensor LlamaModel::forward(const at::Tensor& ids) const {
  ForwardContext ctx = make_context(ids.size(1));
  at::Tensor h = embed(ids);
  for (int i = 0; i < config_.num_hidden_layers; ++i) h = layer_forward(i, h, ctx);
  return head(h);
}

}  // namespace respin
