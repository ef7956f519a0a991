// config.json of a Hugging Face LLaMA-family causal LM: LlamaForCausalLM (LLaMA-2, LLaMA-3,
// LLaMA-3.1/3.2 with llama3 rope scaling), MistralForCausalLM and Qwen2ForCausalLM (q/k/v bias).
// Both forms that transformers writes are read: 4.x (top-level rope_theta / rope_scaling,
// torch_dtype) and 5.x (rope_parameters, dtype, layer_types). Parsing validates every field the
// forward needs; a field that would change the numerics and is not understood (an unknown rope
// type, partial rotary embeddings, both forms present and disagreeing, ...) is an error naming
// the file and the field, never a silent default. docs/model-config.md lists the rules.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace respin {

struct RopeScaling {
  std::string type = "none";  // "none" (rope_type "default"), "linear" or "llama3"
  double factor = 1.0;
  double low_freq_factor = 1.0;    // llama3
  double high_freq_factor = 4.0;   // llama3
  int64_t original_max_position_embeddings = 8192;  // llama3
};

struct ModelConfig {
  std::string architecture;  // e.g. "LlamaForCausalLM"
  std::string model_type;    // e.g. "llama"
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t num_hidden_layers = 0;
  int64_t num_attention_heads = 0;
  int64_t num_key_value_heads = 0;
  int64_t head_dim = 0;
  int64_t vocab_size = 0;
  int64_t max_position_embeddings = 2048;
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  RopeScaling rope_scaling;
  bool tie_word_embeddings = false;
  bool attention_bias = false;  // bias on q/k/v/o (LLaMA attention_bias)
  bool qkv_bias = false;        // bias on q/k/v only (Qwen2)
  bool mlp_bias = false;
  // Sliding-window attention: the window size, and which layers use it. An empty layer_sliding
  // means every layer does (Mistral); Qwen2 slides from max_window_layers on (or as layer_types
  // says). A window only matters when it is shorter than the sequence.
  std::optional<int64_t> sliding_window;
  std::vector<bool> layer_sliding;
  std::string torch_dtype = "float32";  // "dtype" in transformers 5
  std::optional<int64_t> bos_token_id;
  std::vector<int64_t> eos_token_ids;

  int64_t kv_dim() const { return num_key_value_heads * head_dim; }
  int64_t q_dim() const { return num_attention_heads * head_dim; }
  int64_t parameter_count() const;  // including embeddings and (untied) lm_head
  // The attention window of a layer, if it slides.
  std::optional<int64_t> window_of_layer(int64_t layer) const;
};

// A config of the given family ("llama", "mistral" or "qwen2") and sizes with the defaults of the
// project's own models: head_dim = hidden / heads (0, i.e. invalid, when that does not divide),
// RMSNorm eps 1e-5, RoPE theta 10000, untied, float32. Throws respin::Error for other families.
ModelConfig make_model_config(const std::string& model_type, int64_t hidden_size, int64_t intermediate_size,
                              int64_t num_layers, int64_t num_heads, int64_t num_kv_heads, int64_t vocab_size,
                              int64_t max_position_embeddings);

// Parses config.json text; `source` is the file name used in error messages.
ModelConfig parse_model_config(const std::string& json_text, const std::string& source);
ModelConfig load_model_config(const std::string& path);

// Serializes in Hugging Face's 4.x layout (top-level rope_theta / rope_scaling, torch_dtype), which
// transformers 4.x and 5.x both read; Qwen2 also gets layer_types. Round-trips through
// parse_model_config.
std::string model_config_to_json(const ModelConfig& config);

}  // namespace respin
