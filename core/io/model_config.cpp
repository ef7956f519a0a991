// config.json parsing and writing for the supported LLaMA-family architectures.
#include "core/io/model_config.h"

#include <algorithm>
#include <cmath>
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
  const json& j() const { return j_; }

 private:
  const json& j_;
  std::string source_;
};

// What one RoPE object (4.x rope_scaling or 5.x rope_parameters) says.
struct RopeObject {
  std::optional<double> theta;  // rope_theta inside the object (5.x)
  RopeScaling scaling;
};

// Reads a rope_scaling / rope_parameters object. `name` is the field's name for messages. Every key
// must be understood for the object's rope_type: transformers ignores stray keys with a warning,
// but a key that belongs to another scaling type means the file is not what it seems.
RopeObject parse_rope_object(const Fields& f, const json& rs, const std::string& name,
                             std::optional<int64_t> top_level_original_max) {
  RopeObject out;
  if (rs.is_null()) return out;
  if (!rs.is_object()) throw f.error(name, "must be an object or null");
  auto key = [&](const std::string& k) { return name + "." + k; };
  std::string type;
  for (const char* k : {"rope_type", "type"}) {
    if (!rs.contains(k)) continue;
    if (!rs[k].is_string()) throw f.error(key(k), "must be a string");
    const std::string t = rs[k].get<std::string>();
    if (!type.empty() && t != type) throw f.error(key("type"), "'" + t + "' disagrees with rope_type '" + type + "'");
    type = t;
  }
  if (type.empty()) throw f.error(key("rope_type"), "is missing");
  auto num = [&](const char* k) -> std::optional<double> {
    if (!rs.contains(k) || rs[k].is_null()) return std::nullopt;
    if (!rs[k].is_number()) throw f.error(key(k), "must be a number");
    return rs[k].get<double>();
  };
  auto need = [&](const char* k) {
    auto v = num(k);
    if (!v) throw f.error(key(k), "is missing (rope_type '" + type + "' needs it)");
    return *v;
  };
  if (type == "dynamic" || type == "yarn" || type == "longrope")
    throw f.error(key("rope_type"), "'" + type +
                                        "' is not supported (supported: default, linear, llama3); the model "
                                        "would compute different positions than transformers");
  std::vector<std::string> allowed = {"rope_type", "type", "rope_theta", "partial_rotary_factor"};
  if (type == "linear" || type == "llama3") allowed.push_back("factor");
  if (type == "llama3")
    for (const char* k : {"low_freq_factor", "high_freq_factor", "original_max_position_embeddings"}) allowed.push_back(k);
  if (type != "default" && type != "linear" && type != "llama3")
    throw f.error(key("rope_type"), "'" + type + "' is not supported (supported: default, linear, llama3)");
  for (const auto& [k, v] : rs.items())
    if (std::find(allowed.begin(), allowed.end(), k) == allowed.end())
      throw f.error(key(k), "is not understood for rope_type '" + type + "'");
  if (auto p = num("partial_rotary_factor"); p && *p != 1.0)
    throw f.error(key("partial_rotary_factor"), "is not supported (only rotary embeddings over the whole head)");
  if (auto t = num("rope_theta")) {
    if (!(*t > 0)) throw f.error(key("rope_theta"), "must be positive");
    out.theta = *t;
  }
  if (type == "default") return out;
  out.scaling.type = type;
  out.scaling.factor = need("factor");
  if (!(out.scaling.factor >= 1.0)) throw f.error(key("factor"), "must be >= 1");
  if (type == "linear") return out;
  out.scaling.low_freq_factor = need("low_freq_factor");
  out.scaling.high_freq_factor = need("high_freq_factor");
  if (!(out.scaling.high_freq_factor > out.scaling.low_freq_factor) || !(out.scaling.low_freq_factor > 0))
    throw f.error(key("high_freq_factor"), "must exceed low_freq_factor (> 0)");
  // transformers 5 lets a top-level original_max_position_embeddings override the object's.
  std::optional<double> omp = num("original_max_position_embeddings");
  if (omp && top_level_original_max && *omp != static_cast<double>(*top_level_original_max))
    throw f.error(key("original_max_position_embeddings"), "disagrees with the top-level original_max_position_embeddings");
  if (!omp && top_level_original_max) omp = static_cast<double>(*top_level_original_max);
  if (!omp) throw f.error(key("original_max_position_embeddings"), "is missing (rope_type 'llama3' needs it)");
  if (!(*omp >= 1) || *omp != std::floor(*omp))
    throw f.error(key("original_max_position_embeddings"), "must be a positive integer");
  out.scaling.original_max_position_embeddings = static_cast<int64_t>(*omp);
  return out;
}

bool same_scaling(const RopeScaling& a, const RopeScaling& b) {
  return a.type == b.type && (a.type == "none" || a.factor == b.factor) &&
         (a.type != "llama3" || (a.low_freq_factor == b.low_freq_factor && a.high_freq_factor == b.high_freq_factor &&
                                 a.original_max_position_embeddings == b.original_max_position_embeddings));
}

// RoPE from either form. 4.x: top-level rope_theta + rope_scaling. 5.x: rope_parameters holding
// rope_type, rope_theta and the scaling fields. Both present must agree. Without any theta the
// transformers default for these models, 10000, applies.
void parse_rope(const Fields& f, ModelConfig& c) {
  std::optional<int64_t> top_omp;
  if (f.has("original_max_position_embeddings")) top_omp = f.positive_int("original_max_position_embeddings");
  if (f.has("partial_rotary_factor")) {
    if (!f.raw("partial_rotary_factor").is_number()) throw f.error("partial_rotary_factor", "must be a number");
    if (f.raw("partial_rotary_factor").get<double>() != 1.0)
      throw f.error("partial_rotary_factor", "is not supported (only rotary embeddings over the whole head)");
  }
  std::optional<double> legacy_theta;
  if (f.has("rope_theta")) legacy_theta = f.positive_number_or("rope_theta", 0);
  // An explicit "rope_scaling": null claims "no scaling" and must agree with rope_parameters.
  const bool has_legacy_scaling = f.j().contains("rope_scaling");
  RopeObject legacy = parse_rope_object(f, f.has("rope_scaling") ? f.raw("rope_scaling") : json(), "rope_scaling", top_omp);
  if (legacy.theta && legacy_theta && *legacy.theta != *legacy_theta)
    throw f.error("rope_scaling.rope_theta", "disagrees with the top-level rope_theta");
  if (!legacy_theta) legacy_theta = legacy.theta;

  if (!f.has("rope_parameters")) {
    c.rope_theta = legacy_theta.value_or(10000.0);
    c.rope_scaling = legacy.scaling;
    return;
  }
  const json& rp = f.raw("rope_parameters");
  if (rp.is_object() && !rp.contains("rope_type") && !rp.contains("type") && !rp.empty() &&
      rp.begin().value().is_object())
    throw f.error("rope_parameters", "holds one entry per layer type ('" + rp.begin().key() +
                                         "', ...); this architecture uses a single RoPE for every layer");
  RopeObject modern = parse_rope_object(f, rp, "rope_parameters", top_omp);
  if (rp.is_null()) modern.scaling = RopeScaling{};
  const double theta = modern.theta.value_or(legacy_theta.value_or(10000.0));
  if (legacy_theta && *legacy_theta != theta)
    throw f.error("rope_theta", "(" + std::to_string(*legacy_theta) + ") disagrees with rope_parameters.rope_theta (" +
                                    std::to_string(theta) + ")");
  if (has_legacy_scaling && !same_scaling(legacy.scaling, modern.scaling))
    throw f.error("rope_scaling", "disagrees with rope_parameters ('" + legacy.scaling.type + "' vs '" +
                                      modern.scaling.type + "' or different factors)");
  c.rope_theta = theta;
  c.rope_scaling = modern.scaling;
}

// Which layers attend within a sliding window (see ModelConfig::layer_sliding).
void parse_sliding_window(const Fields& f, ModelConfig& c) {
  const int64_t L = c.num_hidden_layers;
  std::vector<bool> from_types;
  const bool has_types = f.has("layer_types");
  if (has_types) {
    const json& lt = f.raw("layer_types");
    if (!lt.is_array() || static_cast<int64_t>(lt.size()) != L)
      throw f.error("layer_types", "must list one entry per layer (" + std::to_string(L) + ")");
    for (const auto& v : lt) {
      const std::string t = v.is_string() ? v.get<std::string>() : "";
      if (t != "full_attention" && t != "sliding_attention")
        throw f.error("layer_types", "entry '" + v.dump() + "' is not understood (full_attention or sliding_attention)");
      from_types.push_back(t == "sliding_attention");
    }
  }
  auto window = [&]() -> std::optional<int64_t> {
    if (!f.has("sliding_window")) return std::nullopt;
    return f.positive_int("sliding_window");
  };
  if (c.model_type == "qwen2") {
    // transformers: the window is used only with use_sliding_window, by the layers that
    // layer_types marks (or, without layer_types, layers max_window_layers and up).
    if (!f.bool_or("use_sliding_window", false)) return;
    c.sliding_window = window();
    if (!c.sliding_window) return;
    if (has_types) {
      c.layer_sliding = from_types;
    } else {
      int64_t first = 28;  // transformers' default
      if (f.has("max_window_layers")) {
        if (!f.raw("max_window_layers").is_number_integer() || f.raw("max_window_layers").get<int64_t>() < 0)
          throw f.error("max_window_layers", "must be a non-negative integer");
        first = f.raw("max_window_layers").get<int64_t>();
      }
      for (int64_t i = 0; i < L; ++i) c.layer_sliding.push_back(i >= first);
    }
    if (std::find(c.layer_sliding.begin(), c.layer_sliding.end(), true) == c.layer_sliding.end()) {
      c.sliding_window.reset();
      c.layer_sliding.clear();
    }
    return;
  }
  if (c.model_type == "mistral") {
    // transformers' Mistral applies sliding_window to every layer (class default 4096 when the
    // key is absent; null = full attention) and does not read layer_types.
    c.sliding_window = f.j().contains("sliding_window") ? window() : std::optional<int64_t>(4096);
    if (has_types)
      for (int64_t i = 0; i < L; ++i)
        if (from_types[i] != c.sliding_window.has_value())
          throw f.error("layer_types", "says layer " + std::to_string(i) + " is " +
                                           (from_types[i] ? "sliding" : "full") +
                                           " attention, but MistralForCausalLM uses sliding_window for every layer");
    return;
  }
  // Llama has no sliding-window attention in transformers.
  if (has_types && std::find(from_types.begin(), from_types.end(), true) != from_types.end())
    throw f.error("layer_types", "marks sliding_attention layers, which LlamaForCausalLM does not have");
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

std::optional<int64_t> ModelConfig::window_of_layer(int64_t layer) const {
  if (!sliding_window) return std::nullopt;
  if (!layer_sliding.empty() && !layer_sliding.at(static_cast<size_t>(layer))) return std::nullopt;
  return sliding_window;
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
  if (f.has("pretraining_tp") && f.positive_int("pretraining_tp") < 1) throw f.error("pretraining_tp", "must be >= 1");
  c.max_position_embeddings = f.positive_int_or("max_position_embeddings", 2048);
  c.rms_norm_eps = f.positive_number_or("rms_norm_eps", 1e-6);
  parse_rope(f, c);
  c.tie_word_embeddings = f.bool_or("tie_word_embeddings", false);
  // attention_bias (q/k/v/o) and mlp_bias (gate/up/down) exist on Llama only; transformers'
  // Qwen2 always has q/k/v bias and nothing else, Mistral none.
  if (c.model_type == "llama") {
    c.attention_bias = f.bool_or("attention_bias", false);
    c.mlp_bias = f.bool_or("mlp_bias", false);
  }
  c.qkv_bias = qwen2;
  const std::string act = f.string_or("hidden_act", "silu");
  if (act != "silu") throw f.error("hidden_act", "'" + act + "' is not supported (only silu)");
  const std::string dtype_4x = f.string_or("torch_dtype", ""), dtype_5x = f.string_or("dtype", "");
  if (!dtype_4x.empty() && !dtype_5x.empty() && dtype_4x != dtype_5x)
    throw f.error("dtype", "'" + dtype_5x + "' disagrees with torch_dtype '" + dtype_4x + "'");
  c.torch_dtype = !dtype_5x.empty() ? dtype_5x : !dtype_4x.empty() ? dtype_4x : "float32";
  if (c.torch_dtype != "float32" && c.torch_dtype != "float16" && c.torch_dtype != "bfloat16")
    throw f.error(dtype_5x.empty() ? "torch_dtype" : "dtype", "'" + c.torch_dtype + "' is not supported");
  parse_sliding_window(f, c);
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
  if (c.model_type == "mistral") j["sliding_window"] = c.sliding_window ? json(*c.sliding_window) : json(nullptr);
  if (c.model_type == "qwen2") {
    j["use_sliding_window"] = c.sliding_window.has_value();
    j["sliding_window"] = c.sliding_window ? json(*c.sliding_window) : json(nullptr);
    if (c.sliding_window) {
      json types = json::array();
      for (int64_t i = 0; i < c.num_hidden_layers; ++i)
        types.push_back(c.window_of_layer(i) ? "sliding_attention" : "full_attention");
      j["layer_types"] = types;
      // Readers before layer_types (transformers < 4.53) slide from max_window_layers on.
      int64_t first = c.num_hidden_layers;
      while (first > 0 && c.window_of_layer(first - 1)) --first;
      j["max_window_layers"] = first;
    }
  }
  if (c.bos_token_id) j["bos_token_id"] = *c.bos_token_id;
  if (c.eos_token_ids.size() == 1) j["eos_token_id"] = c.eos_token_ids[0];
  else if (!c.eos_token_ids.empty()) j["eos_token_id"] = c.eos_token_ids;
  return j.dump(2) + "\n";
}

}  // namespace respin
