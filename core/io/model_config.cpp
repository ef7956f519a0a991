// config.json parsing and writing for the supported LLaMA-family architectures.
#include "core/io/model_config.h"

#include <nlohmann/json.hpp>

#include "core/io/atomic_file.h"
#include "core/util/error.h"

namespace respin {

namespace {

using nlohmann::json;

struct ArchRow {
  const char* architecture;
  const char* model_type;
};
constexpr ArchRow kSupported[] = {
    {"LlamaForCausalLM", "llama"},
    {"MistralForCausalLM", "mistral"},
    {"Qwen2ForCausalLM", "qwen2"},
};

class Fields {
 public:
  Fields(const json& j, std::string source) : j_(j), source_(std::move(source)) {}

  Error error(const std::string& field, const std::string& what) const {
    return Error(source_ + ": field '" + field + "' " + what);
  }
  bool has(const char* f) const { return j_.contains(f) && !j_[f].is_null(); }
  int64_t positive_int(const char* f) const {
    if (!has(f)) throw error(f, "is missing");
    if (!j_[f].is_number_integer()) throw error(f, "must be an integer");
    int64_t v = j_[f].get<int64_t>();
    if (v <= 0) throw error(f, "must be positive, got " + std::to_string(v));
    return v;
  }
  int64_t positive_int_or(const char* f, int64_t def) const { return has(f) ? positive_int(f) : def; }
  double positive_number_or(const char* f, double def) const {
    if (!has(f)) return def;
    if (!j_[f].is_number()) throw error(f, "must be a number");
    double v = j_[f].get<double>();
    if (!(v > 0)) throw error(f, "must be positive");
    return v;
  }
  bool bool_or(const char* f, bool def) const {
    if (!has(f)) return def;
    if (!j_[f].is_boolean()) throw error(f, "must be true or false");
    return j_[f].get<bool>();
  }
  std::string string_or(const char* f, const std::string& def) const {
    if (!has(f)) return def;
    if (!j_[f].is_string()) throw error(f, "must be a string");
    return j_[f].get<std::string>();
  }
  const json& raw(const char* f) const { return j_[f]; }

 private:
  const json& j_;
  std::string source_;
};

RopeScaling parse_rope_scaling(const Fields& f, const json& rs) {
  RopeScaling out;
  if (rs.is_null()) return out;
  if (!rs.is_object()) throw f.error("rope_scaling", "must be an object or null");
  std::string type;
  if (rs.contains("rope_type") && rs["rope_type"].is_string()) type = rs["rope_type"];
  else if (rs.contains("type") && rs["type"].is_string()) type = rs["type"];
  else throw f.error("rope_scaling.rope_type", "is missing");
  Fields r(rs, "");
  auto num = [&](const char* key, double def) {
    if (!rs.contains(key)) return def;
    if (!rs[key].is_number()) throw f.error(std::string("rope_scaling.") + key, "must be a number");
    return rs[key].get<double>();
  };
  if (type == "default") return out;
  out.type = type;
  out.factor = num("factor", 1.0);
  if (!(out.factor >= 1.0)) throw f.error("rope_scaling.factor", "must be >= 1");
  if (type == "linear") return out;
  if (type == "llama3") {
    out.low_freq_factor = num("low_freq_factor", 1.0);
    out.high_freq_factor = num("high_freq_factor", 4.0);
    if (!rs.contains("original_max_position_embeddings"))
      throw f.error("rope_scaling.original_max_position_embeddings", "is missing");
    out.original_max_position_embeddings =
        static_cast<int64_t>(num("original_max_position_embeddings", 8192));
    if (!(out.high_freq_factor > out.low_freq_factor))
      throw f.error("rope_scaling.high_freq_factor", "must exceed low_freq_factor");
    return out;
  }
  throw f.error("rope_scaling.rope_type",
                "'" + type + "' is not supported (supported: default, linear, llama3)");
}

}  // namespace

int64_t ModelConfig::parameter_count() const {
  const int64_t d = hidden_size;
  int64_t attn = d * q_dim() + 2 * d * kv_dim() + q_dim() * d;
  if (attention_bias) attn += q_dim() + 2 * kv_dim() + d;
  else if (qkv_bias) attn += q_dim() + 2 * kv_dim();
  int64_t mlp = 3 * d * intermediate_size;
  if (mlp_bias) mlp += 2 * intermediate_size + d;
  int64_t per_layer = attn + mlp + 2 * d;
  int64_t embed = vocab_size * d;
  return embed + num_hidden_layers * per_layer + d + (tie_word_embeddings ? 0 : embed);
}

ModelConfig make_model_config(const std::string& model_type, int64_t hidden_size, int64_t intermediate_size,
                              int64_t num_layers, int64_t num_heads, int64_t num_kv_heads, int64_t vocab_size,
                              int64_t max_position_embeddings) {
  ModelConfig c;
  for (const auto& r : kSupported)
    if (model_type == r.model_type) c.architecture = r.architecture;
  if (c.architecture.empty()) throw Error("model family '" + model_type + "' is not supported (llama, mistral, qwen2)");
  c.model_type = model_type;
  c.qkv_bias = model_type == "qwen2";
  c.hidden_size = hidden_size;
  c.intermediate_size = intermediate_size;
  c.num_hidden_layers = num_layers;
  c.num_attention_heads = num_heads;
  c.num_key_value_heads = num_kv_heads;
  c.head_dim = num_heads > 0 && hidden_size % num_heads == 0 ? hidden_size / num_heads : 0;
  c.vocab_size = vocab_size;
  c.max_position_embeddings = max_position_embeddings;
  c.rms_norm_eps = 1e-5;
  c.rope_theta = 10000;
  return c;
}

ModelConfig parse_model_config(const std::string& text, const std::string& source) {
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {
    throw Error(source + ": not valid JSON: " + e.what());
  }
  if (!j.is_object()) throw Error(source + ": top level is not a JSON object");
  Fields f(j, source);
  ModelConfig c;

  if (f.has("architectures")) {
    const json& a = f.raw("architectures");
    if (!a.is_array() || a.empty() || !a[0].is_string())
      throw f.error("architectures", "must be a non-empty list of strings");
    c.architecture = a[0].get<std::string>();
  }
  c.model_type = f.string_or("model_type", "");
  const ArchRow* arch = nullptr;
  for (const auto& r : kSupported)
    if (c.architecture == r.architecture || (c.architecture.empty() && c.model_type == r.model_type))
      arch = &r;
  if (!arch) {
    std::string what = c.architecture.empty() ? "model_type '" + c.model_type + "'"
                                              : "architecture '" + c.architecture + "'";
    if (c.architecture.empty() && c.model_type.empty())
      throw f.error("architectures", "is missing (and no model_type)");
    throw Error(source + ": " + what +
                " is not supported (supported: LlamaForCausalLM, MistralForCausalLM, "
                "Qwen2ForCausalLM)");
  }
  c.architecture = arch->architecture;
  c.model_type = arch->model_type;
  const bool qwen2 = c.model_type == std::string("qwen2");

  c.hidden_size = f.positive_int("hidden_size");
  c.intermediate_size = f.positive_int("intermediate_size");
  c.num_hidden_layers = f.positive_int("num_hidden_layers");
  c.num_attention_heads = f.positive_int("num_attention_heads");
  c.num_key_value_heads = f.positive_int_or("num_key_value_heads", c.num_attention_heads);
  c.vocab_size = f.positive_int("vocab_size");
  if (c.num_attention_heads % c.num_key_value_heads != 0)
    throw f.error("num_key_value_heads", "must divide num_attention_heads (" +
                                             std::to_string(c.num_attention_heads) + ")");
  if (!f.has("head_dim") && c.hidden_size % c.num_attention_heads != 0)
    throw f.error("num_attention_heads", "must divide hidden_size when head_dim is absent");
  c.head_dim = f.positive_int_or("head_dim", c.hidden_size / c.num_attention_heads);
  if (c.head_dim % 2 != 0) throw f.error("head_dim", "must be even for rotary embeddings");
  c.max_position_embeddings = f.positive_int_or("max_position_embeddings", 2048);
  c.rms_norm_eps = f.positive_number_or("rms_norm_eps", 1e-6);
  c.rope_theta = f.positive_number_or("rope_theta", 10000.0);
  if (f.has("rope_scaling")) c.rope_scaling = parse_rope_scaling(f, f.raw("rope_scaling"));
  c.tie_word_embeddings = f.bool_or("tie_word_embeddings", false);
  c.attention_bias = f.bool_or("attention_bias", false);
  c.qkv_bias = qwen2;  // Qwen2 always has q/k/v bias and no o bias
  c.mlp_bias = f.bool_or("mlp_bias", false);
  const std::string act = f.string_or("hidden_act", "silu");
  if (act != "silu") throw f.error("hidden_act", "'" + act + "' is not supported (only silu)");
  c.torch_dtype = f.string_or("torch_dtype", f.string_or("dtype", "float32"));
  if (c.torch_dtype != "float32" && c.torch_dtype != "float16" && c.torch_dtype != "bfloat16")
    throw f.error("torch_dtype", "'" + c.torch_dtype + "' is not supported");
  const bool window_on = qwen2 ? f.bool_or("use_sliding_window", false) : true;
  if (window_on && f.has("sliding_window")) c.sliding_window = f.positive_int("sliding_window");
  if (f.has("bos_token_id")) {
    if (!f.raw("bos_token_id").is_number_integer()) throw f.error("bos_token_id", "must be an integer");
    c.bos_token_id = f.raw("bos_token_id").get<int64_t>();
  }
  if (f.has("eos_token_id")) {
    const json& e = f.raw("eos_token_id");
    if (e.is_number_integer()) c.eos_token_ids.push_back(e.get<int64_t>());
    else if (e.is_array())
      for (const auto& v : e) {
        if (!v.is_number_integer()) throw f.error("eos_token_id", "must hold integers");
        c.eos_token_ids.push_back(v.get<int64_t>());
      }
    else throw f.error("eos_token_id", "must be an integer or a list of integers");
  }
  return c;
}

ModelConfig load_model_config(const std::string& path) {
  return parse_model_config(read_text_file(path), path);
}

std::string model_config_to_json(const ModelConfig& c) {
  json j;
  j["architectures"] = {c.architecture};
  j["model_type"] = c.model_type;
  j["hidden_size"] = c.hidden_size;
  j["intermediate_size"] = c.intermediate_size;
  j["num_hidden_layers"] = c.num_hidden_layers;
  j["num_attention_heads"] = c.num_attention_heads;
  if (c.num_key_value_heads > 0) j["num_key_value_heads"] = c.num_key_value_heads;
  if (c.head_dim > 0) j["head_dim"] = c.head_dim;
  j["vocab_size"] = c.vocab_size;
  j["max_position_embeddings"] = c.max_position_embeddings;
  j["rms_norm_eps"] = c.rms_norm_eps;
  j["rope_theta"] = c.rope_theta;
  if (c.rope_scaling.type == "none") {
    j["rope_scaling"] = nullptr;
  } else {
    json rs = {{"rope_type", c.rope_scaling.type}, {"factor", c.rope_scaling.factor}};
    if (c.rope_scaling.type == "llama3") {
      rs["low_freq_factor"] = c.rope_scaling.low_freq_factor;
      rs["high_freq_factor"] = c.rope_scaling.high_freq_factor;
      rs["original_max_position_embeddings"] = c.rope_scaling.original_max_position_embeddings;
    }
    j["rope_scaling"] = rs;
  }
  j["tie_word_embeddings"] = c.tie_word_embeddings;
  if (c.model_type != "qwen2") j["attention_bias"] = c.attention_bias;
  j["mlp_bias"] = c.mlp_bias;
  j["hidden_act"] = "silu";
  j["torch_dtype"] = c.torch_dtype;
  if (c.sliding_window) {
    j["sliding_window"] = *c.sliding_window;
    if (c.model_type == "qwen2") j["use_sliding_window"] = true;
  }
  if (c.bos_token_id) j["bos_token_id"] = *c.bos_token_id;
  if (c.eos_token_ids.size() == 1) j["eos_token_id"] = c.eos_token_ids[0];
  else if (!c.eos_token_ids.empty()) j["eos_token_id"] = c.eos_token_ids;
  return j.dump(2) + "\n";
}

}  // namespace respin
