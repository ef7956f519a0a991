// The LLaMA-family decoder (LLaMA-2/3/3.x, Mistral, Qwen2) in libtorch, numerically following
// Hugging Face transformers' eager implementation: RMSNorm in float32 then cast, RoPE with the
// rotate-half convention (cos/sin computed in float32), GQA by repeating KV heads, softmax in
// float32, SwiGLU MLP, optional tied embeddings and q/k/v bias.
//
// Layer-by-layer execution: embed() -> layer_forward(i) for each layer -> head(). forward() is
// exactly that composition, so a caller may run one layer over many batches at a time to bound
// memory. Hook points let callers observe or replace (e.g. fake-quantize) every linear layer's
// input, Q/K/V and the skip path of each residual add without touching the forward.
//
// Threading: a const LlamaModel may run forward on several threads at once if the hook allows it.
#pragma once

#include <ATen/core/Tensor.h>

#include <functional>
#include <string>
#include <vector>

#include "core/io/model_config.h"
#include "core/model/hook_site.h"

namespace respin {


// Called on the forward's thread. May replace `x` (same shape and dtype) or only read it.
using ActivationHook = std::function<void(HookSite site, int layer, at::Tensor& x)>;

struct LayerWeights {
  at::Tensor input_norm;                // [hidden]
  at::Tensor q_proj, k_proj, v_proj;    // [out, in] (PyTorch Linear layout)
  at::Tensor q_bias, k_bias, v_bias;    // undefined when absent
  at::Tensor o_proj, o_bias;            // o_bias undefined when absent
  at::Tensor post_attention_norm;       // [hidden]
  at::Tensor gate_proj, up_proj, down_proj;
  at::Tensor gate_bias, up_bias, down_bias;  // undefined when absent
};

// Every tensor slot of a layer (defined or not), in a fixed order: for code that treats all
// weights alike (casting, collecting parameters).
std::vector<at::Tensor*> layer_tensors(LayerWeights& layer);
// The seven linear weights of a layer (q, k, v, o, gate, up, down): what quantizers act on.
std::vector<at::Tensor*> linear_weights(LayerWeights& layer);

struct ModelWeights {
  at::Tensor embed_tokens;  // [vocab, hidden]
  std::vector<LayerWeights> layers;
  at::Tensor final_norm;    // [hidden]
  at::Tensor lm_head;       // [vocab, hidden]; the same tensor as embed_tokens when tied
};

// Per-sequence-length tensors shared by all layers of one forward.
struct ForwardContext {
  int64_t seq_len = 0;
  at::Tensor cos, sin;  // [T, head_dim] in the model dtype
  at::Tensor blocked;          // [T, T] bool, true where causal attention is not allowed
  at::Tensor blocked_sliding;  // the same within the sliding window; undefined when no layer slides
  const at::Tensor& blocked_for(const ModelConfig& c, int64_t layer) const {
    return c.window_of_layer(layer) && blocked_sliding.defined() ? blocked_sliding : blocked;
  }
};

class LlamaModel {
 public:
  // Validates every tensor's shape against the config; throws respin::Error.
  LlamaModel(ModelConfig config, ModelWeights weights);

  const ModelConfig& config() const { return config_; }
  const ModelWeights& weights() const { return weights_; }
  // Moves the weights out (the model keeps only its config): how a phase that replaces every
  // tensor (fusion, rotation, quantization) works in place, each old tensor freed as its
  // successor is made, instead of holding a second copy of the model (docs/methods.md 1.7).
  ModelWeights take_weights() && { return std::move(weights_); }
  at::ScalarType dtype() const { return weights_.embed_tokens.scalar_type(); }
  // Where every weight lives (the constructor checks that they agree): the device that the
  // model's activations, rotations and quantizer state follow.
  at::Device device() const;
  void set_hook(ActivationHook hook) { hook_ = std::move(hook); }
  // Replaces one decoder layer's weights (shapes checked as the constructor does, same device):
  // how checkpointed rotation learning runs one rotated layer at a time over fused placeholders.
  void set_layer(int layer, LayerWeights weights);
  // Replaces the embeddings, or the final norm and lm_head (shapes and device checked): how a
  // layer-streamed model holds only the part in use.
  void set_embeddings(at::Tensor embed_tokens);
  void set_head(at::Tensor final_norm, at::Tensor lm_head);
  const ActivationHook& hook() const { return hook_; }

  ForwardContext make_context(int64_t seq_len) const;
  at::Tensor embed(const at::Tensor& ids) const;  // [B, T] int64 -> [B, T, hidden]
  at::Tensor layer_forward(int layer, const at::Tensor& hidden, const ForwardContext& ctx) const;
  at::Tensor head(const at::Tensor& hidden) const;  // final norm + lm_head -> logits [B, T, vocab]
  at::Tensor forward(const at::Tensor& ids) const;  // logits in the model dtype

 private:
  void run_hook(HookSite site, int layer, at::Tensor& x) const {
    if (hook_) hook_(site, layer, x);
  }
  at::Tensor attention(int layer, const at::Tensor& x, const ForwardContext& ctx) const;
  at::Tensor mlp(int layer, const at::Tensor& x) const;
  void check_layer(int layer, const LayerWeights& weights) const;

  ModelConfig config_;
  ModelWeights weights_;
  ActivationHook hook_;
};

// A copy of `weights` in `dtype`; a tied lm_head stays the same tensor as the embeddings.
ModelWeights cast_weights(const ModelWeights& weights, at::ScalarType dtype);
// A copy of `weights` on `device`, likewise keeping a tied lm_head tied.
ModelWeights move_weights(const ModelWeights& weights, at::Device device);

// How attention runs on `device`: libtorch's fused scaled_dot_product_attention on CUDA where
// libtorch has it (2.1 and later), else the eager form in blocks of query rows.
const char* attention_kernel(at::Device device);
// Whether attention on `device` runs fused (no score matrix formed, forward or backward).
bool attention_is_fused(at::Device device);

// RoPE inverse frequencies [head_dim/2] (float32) including rope_scaling (linear, llama3).
at::Tensor rope_inv_freq(const ModelConfig& config);

// RMSNorm as Hugging Face computes it (float32 statistics, result in x's dtype times weight).
at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps);

}  // namespace respin
