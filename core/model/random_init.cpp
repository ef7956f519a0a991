// Random weights for a config (see random_init.h).
#include "core/model/random_init.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

namespace respin {

ModelWeights random_weights(const ModelConfig& c, const RandomInitOptions& o) {
  at::Generator gen = at::detail::createCPUGenerator(o.seed);
  auto normal = [&](std::vector<int64_t> shape, double std) {
    return at::normal(0.0, std, shape, gen, at::TensorOptions().dtype(at::kFloat));
  };
  auto norm_weight = [&](int64_t n) { return 1.0 + normal({n}, o.norm_jitter); };
  const int64_t d = c.hidden_size, q = c.q_dim(), kv = c.kv_dim(), f = c.intermediate_size;
  const bool qkv_bias = c.attention_bias || c.qkv_bias;
  ModelWeights w;
  w.embed_tokens = normal({c.vocab_size, d}, o.std);
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    LayerWeights L;
    L.input_norm = norm_weight(d);
    L.q_proj = normal({q, d}, o.std);
    L.k_proj = normal({kv, d}, o.std);
    L.v_proj = normal({kv, d}, o.std);
    L.o_proj = normal({d, q}, o.std);
    if (qkv_bias) {
      L.q_bias = normal({q}, o.bias_std);
      L.k_bias = normal({kv}, o.bias_std);
      L.v_bias = normal({kv}, o.bias_std);
    }
    if (c.attention_bias) L.o_bias = normal({d}, o.bias_std);
    L.post_attention_norm = norm_weight(d);
    L.gate_proj = normal({f, d}, o.std);
    L.up_proj = normal({f, d}, o.std);
    L.down_proj = normal({d, f}, o.std);
    if (c.mlp_bias) {
      L.gate_bias = normal({f}, o.bias_std);
      L.up_bias = normal({f}, o.bias_std);
      L.down_bias = normal({d}, o.bias_std);
    }
    w.layers.push_back(std::move(L));
  }
  w.final_norm = norm_weight(d);
  w.lm_head = c.tie_word_embeddings ? w.embed_tokens : normal({c.vocab_size, d}, o.std);
  return w;
}

}  // namespace respin
