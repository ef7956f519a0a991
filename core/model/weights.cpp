// Model folder <-> LlamaModel (see weights.h).
#include "core/model/weights.h"
#include <nlohmann/json.hpp>
#include <filesystem>

#include <ATen/ATen.h>

#include <cmath>
#include <sys/stat.h>

#include <cerrno>
#include <cstring>
#include <set>

#include "core/io/atomic_file.h"
#include "core/io/model_check.h"
#include "core/io/model_folder.h"
#include "core/util/error.h"
#include "core/util/tensor_text.h"

namespace respin {

namespace {

at::ScalarType to_scalar(DType d, const std::string& what) {
  switch (d) {
    case DType::F32: return at::kFloat;
    case DType::F16: return at::kHalf;
    case DType::BF16: return at::kBFloat16;
    case DType::F64: return at::kDouble;
    default: throw Error(what + ": dtype " + dtype_name(d) + " is not a floating-point weight type");
  }
}

DType to_dtype(at::ScalarType s) {
  switch (s) {
    case at::kFloat: return DType::F32;
    case at::kHalf: return DType::F16;
    case at::kBFloat16: return DType::BF16;
    case at::kDouble: return DType::F64;
    default: throw Error("unsupported tensor dtype for saving");
  }
}

class TensorReader {
 public:
  TensorReader(const ShardedSafetensors& st, at::ScalarType dtype, std::string source)
      : st_(st), dtype_(dtype), source_(std::move(source)) {}

  bool has(const std::string& name) const { return st_.find(name) != nullptr; }

  at::Tensor get(const std::string& name) const {
    const ShardedSafetensors::Entry* e = st_.find(name);
    if (!e) throw Error(source_ + ": tensor '" + name + "' is missing");
    const std::string what = e->file->path() + ": tensor '" + name + "'";
    at::ScalarType src = to_scalar(e->info->dtype, what);
    // from_blob views the read-only mapping; the forced copy below never writes to it.
    at::Tensor view = at::from_blob(const_cast<void*>(e->file->data(*e->info)), e->info->shape,
                                    at::TensorOptions().dtype(src));
    at::Tensor out = view.to(dtype_, /*non_blocking=*/false, /*copy=*/true);
    e->file->release(*e->info);
    // min and max propagate NaN and hold an infinity: finite iff both are, with no tensor-sized
    // temporary (isfinite's abs and masks would be two more copies of a 2 GB embedding).
    if (out.numel() > 0 &&
        !(std::isfinite(out.min().item<double>()) && std::isfinite(out.max().item<double>())))
      throw Error(what + ": contains NaN or infinite values");
    return out;
  }
  at::Tensor get_if(bool present, const std::string& name) const {
    return present ? get(name) : at::Tensor();
  }

 private:
  const ShardedSafetensors& st_;
  at::ScalarType dtype_;
  std::string source_;
};

void ensure_dir(const std::string& dir) {
  struct stat st {};
  if (::stat(dir.c_str(), &st) == 0) {
    if (!S_ISDIR(st.st_mode)) throw Error(dir + ": exists and is not a directory");
    return;
  }
  if (::mkdir(dir.c_str(), 0755) != 0) throw Error(dir + ": cannot create: " + std::strerror(errno));
}

}  // namespace

at::Tensor tensor_from_safetensors(const ShardedSafetensors& st, const std::string& name, at::ScalarType dtype,
                                   const std::string& source) {
  return TensorReader(st, dtype, source).get(name);
}

LayerWeights layer_from_safetensors(const ShardedSafetensors& st, const ModelConfig& c, int i, at::ScalarType dtype,
                                    const std::string& source) {
  TensorReader r(st, dtype, source);
  const bool qkv_bias = c.attention_bias || c.qkv_bias;
  const std::string p = "model.layers." + std::to_string(i) + ".";
  LayerWeights L;
  L.input_norm = r.get(p + "input_layernorm.weight");
  L.post_attention_norm = r.get(p + "post_attention_layernorm.weight");
  L.q_proj = r.get(p + "self_attn.q_proj.weight");
  L.k_proj = r.get(p + "self_attn.k_proj.weight");
  L.v_proj = r.get(p + "self_attn.v_proj.weight");
  L.o_proj = r.get(p + "self_attn.o_proj.weight");
  L.q_bias = r.get_if(qkv_bias, p + "self_attn.q_proj.bias");
  L.k_bias = r.get_if(qkv_bias, p + "self_attn.k_proj.bias");
  L.v_bias = r.get_if(qkv_bias, p + "self_attn.v_proj.bias");
  L.o_bias = r.get_if(c.attention_bias, p + "self_attn.o_proj.bias");
  L.gate_proj = r.get(p + "mlp.gate_proj.weight");
  L.up_proj = r.get(p + "mlp.up_proj.weight");
  L.down_proj = r.get(p + "mlp.down_proj.weight");
  L.gate_bias = r.get_if(c.mlp_bias, p + "mlp.gate_proj.bias");
  L.up_bias = r.get_if(c.mlp_bias, p + "mlp.up_proj.bias");
  L.down_bias = r.get_if(c.mlp_bias, p + "mlp.down_proj.bias");
  return L;
}

ModelWeights weights_from_safetensors(const ShardedSafetensors& st, const ModelConfig& c,
                                      at::ScalarType dtype, const std::string& source) {
  TensorReader r(st, dtype, source);
  ModelWeights w;
  w.embed_tokens = r.get("model.embed_tokens.weight");
  w.final_norm = r.get("model.norm.weight");
  for (int64_t i = 0; i < c.num_hidden_layers; ++i)
    w.layers.push_back(layer_from_safetensors(st, c, static_cast<int>(i), dtype, source));
  if (c.tie_word_embeddings) {
    w.lm_head = w.embed_tokens;
  } else {
    if (!r.has("lm_head.weight"))
      throw Error(source + ": tensor 'lm_head.weight' is missing (config says tie_word_embeddings: false)");
    w.lm_head = r.get("lm_head.weight");
  }
  return w;
}

namespace {

at::Tensor placeholder(std::vector<int64_t> shape, at::ScalarType dtype, at::Device device) {
  return at::zeros({1}, at::TensorOptions().dtype(dtype).device(device)).expand(shape);
}

}  // namespace

LayerWeights placeholder_layer(const ModelConfig& c, at::ScalarType dtype, at::Device device) {
  const int64_t d = c.hidden_size, q = c.q_dim(), kv = c.kv_dim(), f = c.intermediate_size;
  const bool qkv_bias = c.attention_bias || c.qkv_bias;
  auto p = [&](std::vector<int64_t> shape) { return placeholder(std::move(shape), dtype, device); };
  LayerWeights L;
  L.input_norm = p({d});
  L.post_attention_norm = p({d});
  L.q_proj = p({q, d});
  L.k_proj = p({kv, d});
  L.v_proj = p({kv, d});
  L.o_proj = p({d, q});
  L.gate_proj = p({f, d});
  L.up_proj = p({f, d});
  L.down_proj = p({d, f});
  if (qkv_bias) L.q_bias = p({q}), L.k_bias = p({kv}), L.v_bias = p({kv});
  if (c.attention_bias) L.o_bias = p({d});
  if (c.mlp_bias) L.gate_bias = p({f}), L.up_bias = p({f}), L.down_bias = p({d});
  return L;
}

ModelWeights placeholder_weights(const ModelConfig& c, at::ScalarType dtype, at::Device device) {
  ModelWeights w;
  w.embed_tokens = placeholder({c.vocab_size, c.hidden_size}, dtype, device);
  w.final_norm = placeholder({c.hidden_size}, dtype, device);
  w.lm_head = c.tie_word_embeddings ? w.embed_tokens : placeholder({c.vocab_size, c.hidden_size}, dtype, device);
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) w.layers.push_back(placeholder_layer(c, dtype, device));
  return w;
}

LlamaModel load_model(const std::string& dir, const LoadOptions& options) {
  if (options.dtype != at::kFloat && options.dtype != at::kBFloat16)
    throw Error("compute dtype must be float32 or bfloat16");
  ModelFolder folder = ModelFolder::open(dir);
  ModelConfig config = load_model_config(folder.config_path);
  if (!options.caller_applies_export) refuse_exported_model(folder.dir, folder.config_path);
  ShardedSafetensors st = ShardedSafetensors::open_folder(folder.dir);
  // Names, dtypes and shapes against the config, before any tensor is converted: the same rules
  // and words as the workbench's check before Start (core/io/model_check.h).
  check_model_tensors(st, config, folder.config_path, folder.dir);
  ModelWeights w = weights_from_safetensors(st, config, options.dtype, folder.dir);
  if (options.device != at::Device(at::kCPU)) w = move_weights(w, options.device);
  try {
    return LlamaModel(std::move(config), std::move(w));
  } catch (const Error& e) {
    throw Error(folder.dir + ": " + e.what());
  }
}

std::vector<TensorView> model_file_layout(const ModelConfig& c, DType file_dtype) {
  ModelWeights frame = placeholder_weights(c, at::kFloat, at::kCPU);
  std::vector<TensorView> views;
  auto add = [&](const std::string& name, const at::Tensor& t) {
    if (t.defined()) views.push_back(TensorView{name, file_dtype, t.sizes().vec(), nullptr});
  };
  add("model.embed_tokens.weight", frame.embed_tokens);
  for (size_t i = 0; i < frame.layers.size(); ++i) {
    const LayerWeights& L = frame.layers[i];
    const std::string p = "model.layers." + std::to_string(i) + ".";
    add(p + "input_layernorm.weight", L.input_norm);
    add(p + "self_attn.q_proj.weight", L.q_proj);
    add(p + "self_attn.q_proj.bias", L.q_bias);
    add(p + "self_attn.k_proj.weight", L.k_proj);
    add(p + "self_attn.k_proj.bias", L.k_bias);
    add(p + "self_attn.v_proj.weight", L.v_proj);
    add(p + "self_attn.v_proj.bias", L.v_bias);
    add(p + "self_attn.o_proj.weight", L.o_proj);
    add(p + "self_attn.o_proj.bias", L.o_bias);
    add(p + "post_attention_layernorm.weight", L.post_attention_norm);
    add(p + "mlp.gate_proj.weight", L.gate_proj);
    add(p + "mlp.gate_proj.bias", L.gate_bias);
    add(p + "mlp.up_proj.weight", L.up_proj);
    add(p + "mlp.up_proj.bias", L.up_bias);
    add(p + "mlp.down_proj.weight", L.down_proj);
    add(p + "mlp.down_proj.bias", L.down_bias);
  }
  add("model.norm.weight", frame.final_norm);
  if (!c.tie_word_embeddings) add("lm_head.weight", frame.lm_head);
  return views;
}

void save_model_metadata(const std::string& dir, const ModelConfig& config, const SaveOptions& options) {
  ensure_dir(dir);
  ModelConfig saved = config;
  saved.torch_dtype = options.file_dtype == DType::F32   ? "float32"
                      : options.file_dtype == DType::F16 ? "float16"
                                                         : "bfloat16";
  write_file_atomically(dir + "/config.json", model_config_to_json(saved));
  if (!options.tokenizer_json.empty())
    write_file_atomically(dir + "/tokenizer.json", read_text_file(options.tokenizer_json));
}

namespace {

}  // namespace

const at::Tensor& layer_tensor_named(const LayerWeights& L, const std::string& part) {
  static const std::pair<const char*, at::Tensor LayerWeights::*> parts[] = {
      {"input_layernorm.weight", &LayerWeights::input_norm},
      {"post_attention_layernorm.weight", &LayerWeights::post_attention_norm},
      {"self_attn.q_proj.weight", &LayerWeights::q_proj},
      {"self_attn.k_proj.weight", &LayerWeights::k_proj},
      {"self_attn.v_proj.weight", &LayerWeights::v_proj},
      {"self_attn.o_proj.weight", &LayerWeights::o_proj},
      {"self_attn.q_proj.bias", &LayerWeights::q_bias},
      {"self_attn.k_proj.bias", &LayerWeights::k_bias},
      {"self_attn.v_proj.bias", &LayerWeights::v_bias},
      {"self_attn.o_proj.bias", &LayerWeights::o_bias},
      {"mlp.gate_proj.weight", &LayerWeights::gate_proj},
      {"mlp.up_proj.weight", &LayerWeights::up_proj},
      {"mlp.down_proj.weight", &LayerWeights::down_proj},
      {"mlp.gate_proj.bias", &LayerWeights::gate_bias},
      {"mlp.up_proj.bias", &LayerWeights::up_bias},
      {"mlp.down_proj.bias", &LayerWeights::down_bias}};
  for (const auto& [n, member] : parts)
    if (part == n) return L.*member;
  throw Error("no layer weight named '" + part + "'");
}

int layer_of_tensor(const std::string& name, std::string* part) {
  const std::string prefix = "model.layers.";
  if (name.compare(0, prefix.size(), prefix) != 0) return -1;
  const size_t dot = name.find('.', prefix.size());
  if (dot == std::string::npos) return -1;
  if (part) *part = name.substr(dot + 1);
  return std::stoi(name.substr(prefix.size(), dot - prefix.size()));
}

at::Tensor& layer_tensor_named(LayerWeights& layer, const std::string& part) {
  return const_cast<at::Tensor&>(layer_tensor_named(static_cast<const LayerWeights&>(layer), part));
}

const at::Tensor& model_tensor_named(const ModelWeights& w, const std::string& name) {
  if (name == "model.embed_tokens.weight") return w.embed_tokens;
  if (name == "model.norm.weight") return w.final_norm;
  if (name == "lm_head.weight") return w.lm_head;
  std::string part;
  const int layer = layer_of_tensor(name, &part);
  if (layer < 0 || static_cast<size_t>(layer) >= w.layers.size()) throw Error("no weight named '" + name + "'");
  return layer_tensor_named(w.layers[static_cast<size_t>(layer)], part);
}

at::Tensor& model_tensor_named(ModelWeights& w, const std::string& name) {
  return const_cast<at::Tensor&>(model_tensor_named(static_cast<const ModelWeights&>(w), name));
}

void save_model(const std::string& dir, const ModelConfig& config, const ModelWeights& w,
                const SaveOptions& options) {
  ensure_dir(dir);
  const at::ScalarType file_type = to_scalar(options.file_dtype, dir);
  std::vector<TensorView> views = model_file_layout(config, options.file_dtype);
  std::vector<at::Tensor> keep;
  for (TensorView& v : views) {
    const at::Tensor& t = model_tensor_named(w, v.name);
    if (!t.defined()) throw Error(dir + ": weight '" + v.name + "' is missing");
    keep.push_back(t.to(at::kCPU, file_type).contiguous());
    v.data = keep.back().data_ptr();
  }
  write_safetensors(dir + "/model.safetensors", views, {{"format", "pt"}});
  save_model_metadata(dir, config, options);
}

}  // namespace respin
