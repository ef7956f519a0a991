// Model folder <-> LlamaModel (see weights.h).
#include "core/model/weights.h"
#include <nlohmann/json.hpp>
#include <filesystem>

#include <ATen/ATen.h>
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
    if (!at::isfinite(out).all().item<bool>())
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

ModelWeights weights_from_safetensors(const ShardedSafetensors& st, const ModelConfig& c,
                                      at::ScalarType dtype, const std::string& source) {
  TensorReader r(st, dtype, source);
  ModelWeights w;
  w.embed_tokens = r.get("model.embed_tokens.weight");
  w.final_norm = r.get("model.norm.weight");
  const bool qkv_bias = c.attention_bias || c.qkv_bias;
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
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
    w.layers.push_back(std::move(L));
  }
  if (c.tie_word_embeddings) {
    w.lm_head = w.embed_tokens;
  } else {
    if (!r.has("lm_head.weight"))
      throw Error(source + ": tensor 'lm_head.weight' is missing (config says tie_word_embeddings: false)");
    w.lm_head = r.get("lm_head.weight");
  }
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

void save_model(const std::string& dir, const ModelConfig& config, const ModelWeights& w,
                const SaveOptions& options) {
  ensure_dir(dir);
  const at::ScalarType file_type = to_scalar(options.file_dtype, dir);
  std::vector<std::pair<std::string, at::Tensor>> named;
  auto add = [&](const std::string& name, const at::Tensor& t) {
    if (t.defined()) named.emplace_back(name, t.to(at::kCPU, file_type).contiguous());
  };
  add("model.embed_tokens.weight", w.embed_tokens);
  for (size_t i = 0; i < w.layers.size(); ++i) {
    const LayerWeights& L = w.layers[i];
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
  add("model.norm.weight", w.final_norm);
  if (!config.tie_word_embeddings) add("lm_head.weight", w.lm_head);

  std::vector<TensorView> views;
  for (const auto& [name, t] : named)
    views.push_back(TensorView{name, to_dtype(t.scalar_type()), t.sizes().vec(), t.data_ptr()});
  ModelConfig saved = config;
  saved.torch_dtype = options.file_dtype == DType::F32   ? "float32"
                      : options.file_dtype == DType::F16 ? "float16"
                                                         : "bfloat16";
  write_safetensors(dir + "/model.safetensors", views, {{"format", "pt"}});
  write_file_atomically(dir + "/config.json", model_config_to_json(saved));
  if (!options.tokenizer_json.empty())
    write_file_atomically(dir + "/tokenizer.json", read_text_file(options.tokenizer_json));
}

}  // namespace respin
