// Model folder checks before loading (see model_check.h): the one place of the rules load_model
// (core/model/weights.cpp) applies before it converts a tensor, and the workbench before Start.
#include "core/io/model_check.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>

#include <nlohmann/json.hpp>
#include <set>
#include <utility>
#include <vector>

#include "core/io/atomic_file.h"
#include "core/io/model_folder.h"
#include "core/util/error.h"
#include "core/util/fs.h"

namespace respin {

namespace {

std::string shape_string(const std::vector<int64_t>& s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

bool is_float(DType d) { return d == DType::F32 || d == DType::F16 || d == DType::BF16 || d == DType::F64; }

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

}  // namespace

std::vector<std::pair<std::string, std::vector<int64_t>>> expected_model_tensors(const ModelConfig& c) {
  const int64_t d = c.hidden_size, f = c.intermediate_size, q = c.q_dim(), kv = c.kv_dim();
  std::vector<std::pair<std::string, std::vector<int64_t>>> expect;
  expect.push_back({"model.embed_tokens.weight", {c.vocab_size, d}});
  expect.push_back({"model.norm.weight", {d}});
  const bool qkv_bias = c.attention_bias || c.qkv_bias;
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    expect.push_back({p + "input_layernorm.weight", {d}});
    expect.push_back({p + "post_attention_layernorm.weight", {d}});
    expect.push_back({p + "self_attn.q_proj.weight", {q, d}});
    expect.push_back({p + "self_attn.k_proj.weight", {kv, d}});
    expect.push_back({p + "self_attn.v_proj.weight", {kv, d}});
    expect.push_back({p + "self_attn.o_proj.weight", {d, q}});
    if (qkv_bias) {
      expect.push_back({p + "self_attn.q_proj.bias", {q}});
      expect.push_back({p + "self_attn.k_proj.bias", {kv}});
      expect.push_back({p + "self_attn.v_proj.bias", {kv}});
    }
    if (c.attention_bias) expect.push_back({p + "self_attn.o_proj.bias", {d}});
    expect.push_back({p + "mlp.gate_proj.weight", {f, d}});
    expect.push_back({p + "mlp.up_proj.weight", {f, d}});
    expect.push_back({p + "mlp.down_proj.weight", {d, f}});
    if (c.mlp_bias) {
      expect.push_back({p + "mlp.gate_proj.bias", {f}});
      expect.push_back({p + "mlp.up_proj.bias", {f}});
      expect.push_back({p + "mlp.down_proj.bias", {d}});
    }
  }
  if (!c.tie_word_embeddings) expect.push_back({"lm_head.weight", {c.vocab_size, d}});
  return expect;
}

void check_model_tensors(const ShardedSafetensors& st, const ModelConfig& c, const std::string& config_path,
                         const std::string& source) {
  if (const ShardedSafetensors::Entry* q = st.find("model.layers.0.self_attn.q_proj.weight")) {
    const std::vector<int64_t>& shape = q->info->shape;
    if (shape.size() == 2 && shape[0] != c.q_dim())
      throw Error(config_path + ": field 'head_dim' (" + std::to_string(c.head_dim) + ") x " +
                  std::to_string(c.num_attention_heads) + " heads = " + std::to_string(c.q_dim()) +
                  " contradicts tensor 'model.layers.0.self_attn.q_proj.weight' of shape " + shape_string(shape) +
                  " in " + q->file->path());
  }
  if (!c.tie_word_embeddings && !st.find("lm_head.weight"))
    throw Error(source + ": tensor 'lm_head.weight' is missing (config says tie_word_embeddings: false)");
  const std::vector<std::pair<std::string, std::vector<int64_t>>> expect = expected_model_tensors(c);
  std::set<std::string> used;
  for (const auto& [name, shape] : expect) {
    const ShardedSafetensors::Entry* e = st.find(name);
    if (!e) throw Error(source + ": tensor '" + name + "' is missing");
    used.insert(name);
    if (!is_float(e->info->dtype))
      throw Error(e->file->path() + ": tensor '" + name + "': dtype " + dtype_name(e->info->dtype) +
                  " is not a floating-point weight type");
  }
  for (const std::string& name : st.names()) {
    if (used.count(name) || ends_with(name, ".rotary_emb.inv_freq") || (c.tie_word_embeddings && name == "lm_head.weight"))
      continue;
    throw Error(st.find(name)->file->path() + ": tensor '" + name +
                "' is not part of the model that config.json describes (check num_hidden_layers, the biases, "
                "tie_word_embeddings)");
  }
  for (const auto& [name, shape] : expect) {
    const std::vector<int64_t>& got = st.find(name)->info->shape;
    if (got != shape)
      throw Error(source + ": weight '" + name + "' has shape " + shape_string(got) + ", config expects " +
                  shape_string(shape));
  }
}

void refuse_exported_model(const std::string& dir, const std::string& config_path) {
  struct stat sb {};
  if (::stat((dir + "/respin_online.json").c_str(), &sb) == 0)
    throw Error(dir + "/respin_online.json: an exported model whose online operations and quantizers are part "
                "of its function; evaluate it with `respin eval --model`, which applies them");
  const nlohmann::json raw = nlohmann::json::parse(read_text_file(config_path), nullptr, false);
  if (raw.is_object() && raw.contains("quantization_config") && !raw["quantization_config"].is_null())
    throw Error(config_path + ": field 'quantization_config': a quantized checkpoint (packed integer weights); "
                "respin reads it through `respin eval --model` only");
}

void check_model_loadable(const std::string& dir) {
  const ModelFolder folder = ModelFolder::open(dir);
  folder.require_tokenizer();
  const ModelConfig config = load_model_config(folder.config_path);
  refuse_exported_model(folder.dir, folder.config_path);
  const ShardedSafetensors st = ShardedSafetensors::open_folder(folder.dir);
  check_model_tensors(st, config, folder.config_path, folder.dir);
}

void write_placeholder_model(const std::string& dir, const ModelConfig& config, DType dtype,
                             const std::string& tokenizer_json) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (fs::symlink_status(dir, ec).type() != fs::file_type::not_found)
    throw Error(dir + ": already exists; a placeholder model is written as a new folder");
  const fs::path final_dir = fs::absolute(dir);
  std::string tmpl = (final_dir.parent_path() / (final_dir.filename().string() + ".partial-XXXXXX")).string();
  if (!::mkdtemp(tmpl.data())) throw Error(final_dir.parent_path().string() + ": cannot create a folder here: " + std::strerror(errno));
  try {
    std::vector<TensorView> views;
    for (const auto& [name, shape] : expected_model_tensors(config)) views.push_back(TensorView{name, dtype, shape, nullptr});
    write_safetensors_placeholder(tmpl + "/model.safetensors", views);
    ModelConfig saved = config;
    saved.torch_dtype = dtype == DType::F32 ? "float32" : dtype == DType::F16 ? "float16" : "bfloat16";
    write_file_atomically(tmpl + "/config.json", model_config_to_json(saved));
    if (!tokenizer_json.empty()) write_file_atomically(tmpl + "/tokenizer.json", read_text_file(tokenizer_json));
    if (::rename(tmpl.c_str(), final_dir.c_str()) != 0) throw Error(dir + ": cannot move the folder into place: " + std::strerror(errno));
  } catch (...) {
    remove_tree(tmpl);  // our own temporary folder (mkdtemp)
    throw;
  }
}

}  // namespace respin
