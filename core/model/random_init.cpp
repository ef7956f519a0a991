// Random weights for a config (see random_init.h).
#include "core/model/random_init.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include <filesystem>
#include <functional>

#include "core/io/safetensors.h"
#include "core/util/error.h"
#include "core/model/weights.h"

namespace respin {

namespace {

// Every tensor of the model in the generator's order, by its safetensors name (a tied model has no
// lm_head of its own).
void generate(const ModelConfig& c, const RandomInitOptions& o,
              const std::function<void(const std::string&, at::Tensor)>& put) {
  at::Generator gen = at::detail::createCPUGenerator(o.seed);
  auto normal = [&](std::vector<int64_t> shape, double std) {
    return at::normal(0.0, std, shape, gen, at::TensorOptions().dtype(at::kFloat));
  };
  auto norm_weight = [&](int64_t n) { return 1.0 + normal({n}, o.norm_jitter); };
  const int64_t d = c.hidden_size, q = c.q_dim(), kv = c.kv_dim(), f = c.intermediate_size;
  const bool qkv_bias = c.attention_bias || c.qkv_bias;
  put("model.embed_tokens.weight", normal({c.vocab_size, d}, o.std));
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    put(p + "input_layernorm.weight", norm_weight(d));
    put(p + "self_attn.q_proj.weight", normal({q, d}, o.std));
    put(p + "self_attn.k_proj.weight", normal({kv, d}, o.std));
    put(p + "self_attn.v_proj.weight", normal({kv, d}, o.std));
    put(p + "self_attn.o_proj.weight", normal({d, q}, o.std));
    if (qkv_bias) {
      put(p + "self_attn.q_proj.bias", normal({q}, o.bias_std));
      put(p + "self_attn.k_proj.bias", normal({kv}, o.bias_std));
      put(p + "self_attn.v_proj.bias", normal({kv}, o.bias_std));
    }
    if (c.attention_bias) put(p + "self_attn.o_proj.bias", normal({d}, o.bias_std));
    put(p + "post_attention_layernorm.weight", norm_weight(d));
    put(p + "mlp.gate_proj.weight", normal({f, d}, o.std));
    put(p + "mlp.up_proj.weight", normal({f, d}, o.std));
    put(p + "mlp.down_proj.weight", normal({d, f}, o.std));
    if (c.mlp_bias) {
      put(p + "mlp.gate_proj.bias", normal({f}, o.bias_std));
      put(p + "mlp.up_proj.bias", normal({f}, o.bias_std));
      put(p + "mlp.down_proj.bias", normal({d}, o.bias_std));
    }
  }
  put("model.norm.weight", norm_weight(d));
  if (!c.tie_word_embeddings) put("lm_head.weight", normal({c.vocab_size, d}, o.std));
}

}  // namespace

ModelWeights random_weights(const ModelConfig& c, const RandomInitOptions& o) {
  ModelWeights w;
  w.layers.resize(static_cast<size_t>(c.num_hidden_layers));
  generate(c, o, [&](const std::string& name, at::Tensor t) { model_tensor_named(w, name) = std::move(t); });
  if (c.tie_word_embeddings) w.lm_head = w.embed_tokens;
  return w;
}

void save_random_model(const std::string& dir, const ModelConfig& c, const RandomInitOptions& o,
                       const SaveOptions& so) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) throw Error(dir + ": cannot create: " + ec.message());
  const at::ScalarType file_type = so.file_dtype == DType::F32   ? at::kFloat
                                   : so.file_dtype == DType::F16 ? at::kHalf
                                                                 : at::kBFloat16;
  SafetensorsWriter out(dir + "/model.safetensors", model_file_layout(c, so.file_dtype), {{"format", "pt"}});
  generate(c, o, [&](const std::string& name, at::Tensor t) {
    const at::Tensor stored = t.to(file_type).contiguous();
    out.write(name, stored.data_ptr(), static_cast<uint64_t>(stored.nbytes()));
  });
  out.commit();
  save_model_metadata(dir, c, so);
}

}  // namespace respin
