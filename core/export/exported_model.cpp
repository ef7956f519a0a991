// Loading exported folders (see exported_model.h and docs/export.md).
#include "core/export/exported_model.h"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>

#include <filesystem>
#include <nlohmann/json.hpp>
#include <set>

#include "core/calib/calibrate.h"
#include "core/io/atomic_file.h"
#include "core/io/model_config.h"
#include "core/io/model_folder.h"
#include "core/util/error.h"
#include "core/util/tensor_text.h"

namespace fs = std::filesystem;

namespace respin {

namespace {

using nlohmann::json;

json read_config_json(const std::string& path) {
  try {
    return json::parse(read_text_file(path));
  } catch (const json::exception& e) {
    throw Error(path + ": not valid JSON (" + e.what() + ")");
  }
}

std::string shape_string(const std::vector<int64_t>& s) {
  std::string t = "[";
  for (size_t i = 0; i < s.size(); ++i) t += (i ? ", " : "") + std::to_string(s[i]);
  return t + "]";
}

// Tensor access with dtype/shape checks and a record of what was read.
class Tensors {
 public:
  Tensors(const ShardedSafetensors& st, std::string source) : st_(st), source_(std::move(source)) {}
  const ShardedSafetensors::Entry& entry(const std::string& name) const {
    const ShardedSafetensors::Entry* e = st_.find(name);
    if (!e) throw Error(source_ + ": tensor '" + name + "' is missing");
    used_.insert(name);
    return *e;
  }
  bool has(const std::string& name) const { return st_.find(name) != nullptr; }
  void expect(const ShardedSafetensors::Entry& e, const std::vector<DType>& dtypes, const std::vector<int64_t>& shape,
              const std::string& why = "") const {
    bool ok = false;
    for (DType d : dtypes) ok = ok || e.info->dtype == d;
    std::string want;
    for (DType d : dtypes) want += (want.empty() ? "" : " or ") + std::string(dtype_name(d));
    if (!ok || e.info->shape != shape)
      throw Error(e.file->path() + ": tensor '" + e.info->name + "' is " + dtype_name(e.info->dtype) + " " +
                  shape_string(e.info->shape) + ", expected " + want + " " + shape_string(shape) + why);
  }
  // A floating-point tensor converted to float32 (exact for F16/BF16/F32).
  at::Tensor floating(const std::string& name, const std::vector<int64_t>& shape) const {
    const ShardedSafetensors::Entry& e = entry(name);
    expect(e, {DType::F32, DType::BF16, DType::F16}, shape);
    const at::ScalarType st = e.info->dtype == DType::F32 ? at::kFloat : e.info->dtype == DType::BF16 ? at::kBFloat16 : at::kHalf;
    at::Tensor t = at::from_blob(const_cast<void*>(e.file->data(*e.info)), e.info->shape, st).to(at::kFloat, false, true);
    if (!at::isfinite(t).all().item<bool>()) throw Error(e.file->path() + ": tensor '" + name + "' contains NaN or infinite values");
    return t;
  }
  template <typename T>
  std::vector<T> ints(const std::string& name, DType dtype, const std::vector<int64_t>& shape) const {
    const ShardedSafetensors::Entry& e = entry(name);
    expect(e, {dtype}, shape);
    const T* p = static_cast<const T*>(e.file->data(*e.info));
    return std::vector<T>(p, p + e.info->numel());
  }
  void check_all_used(bool tied) const {
    for (const std::string& name : st_.names()) {
      if (used_.count(name)) continue;
      const std::string suffix = ".rotary_emb.inv_freq";
      const bool rope = name.size() >= suffix.size() && name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0;
      if (rope || (tied && name == "lm_head.weight")) continue;
      throw Error(st_.find(name)->file->path() + ": tensor '" + name +
                  "' is not part of the model that config.json and its quantization_config describe");
    }
  }
  void mark_used(const std::vector<std::string>& names) const { used_.insert(names.begin(), names.end()); }
  const std::string& source() const { return source_; }

 private:
  const ShardedSafetensors& st_;
  std::string source_;
  mutable std::set<std::string> used_;
};

const char* kLinearNames[] = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                              "mlp.gate_proj",    "mlp.up_proj",      "mlp.down_proj"};

std::pair<int64_t, int64_t> linear_shape(const ModelConfig& c, int index) {
  const int64_t d = c.hidden_size, f = c.intermediate_size;
  switch (index) {
    case 0: return {c.q_dim(), d};
    case 1:
    case 2: return {c.kv_dim(), d};
    case 3: return {d, c.q_dim()};
    case 4:
    case 5: return {f, d};
    default: return {d, f};
  }
}

// The transforms this loader applies: the R4 of export_run, nothing else.
void check_ct_transforms(const CtScheme& s, const ModelConfig& mc, const std::string& source) {
  for (const CtTransform& t : s.transforms) {
    const std::string p = source + ": quantization_config.transform_config.config_groups." + t.name;
    const bool pow2 = (mc.intermediate_size & (mc.intermediate_size - 1)) == 0;
    if (t.apply.size() != 1 || t.head_dim != 0)
      throw Error(p + ": only one online Hadamard on the down_proj input (R4, head_dim null) is supported by this loader");
    const CtTransformArgs& a = t.apply[0];
    if (a.location != "input" || a.inverse || !a.ignore.empty() || a.targets.size() != 1 ||
        (a.targets[0] != "re:.*mlp.down_proj$" && a.targets[0] != "re:.*down_proj$"))
      throw Error(p + ".apply[0]: only {targets: [\"re:.*mlp.down_proj$\"], location: \"input\", inverse: false} (R4) is "
                      "supported by this loader");
    if (t.type == "hadamard" && !pow2)
      throw Error(p + ".type: 'hadamard' (Sylvester) needs a power-of-two size; intermediate_size is " +
                  std::to_string(mc.intermediate_size));
  }
  if (s.transforms.size() > 1)
    throw Error(source + ": quantization_config.transform_config: " + std::to_string(s.transforms.size()) +
                " transforms; this loader supports one (R4)");
}

// With a model.safetensors.index.json, a loader sees only the tensors its weight_map names: every
// tensor of every file it names must be there (under that file), so that nothing is skipped.
void check_index_covers_files(const ShardedSafetensors& st, const std::string& dir) {
  std::set<const SafetensorsFile*> files;
  for (const std::string& name : st.names()) files.insert(st.find(name)->file);
  for (const SafetensorsFile* f : files)
    for (const TensorInfo& t : f->tensors()) {
      const ShardedSafetensors::Entry* e = st.find(t.name);
      if (!e || e->file != f)
        throw Error((fs::path(dir) / "model.safetensors.index.json").string() + ": weight_map does not map tensor '" +
                    t.name + "' to " + fs::path(f->path()).filename().string() + ", which holds it");
    }
}

}  // namespace

bool is_exported_model_folder(const std::string& dir) {
  if (fs::is_regular_file(fs::path(dir) / kOnlineSidecarJson)) return true;
  const fs::path cfg = fs::path(dir) / "config.json";
  if (!fs::is_regular_file(cfg)) return false;
  try {
    const json j = json::parse(read_text_file(cfg.string()));
    return j.is_object() && j.contains("quantization_config") && !j["quantization_config"].is_null();
  } catch (const std::exception&) {
    return false;  // load_model reports the damage
  }
}

CtScheme read_ct_scheme(const std::string& dir) {
  const std::string path = (fs::path(dir) / "config.json").string();
  const json j = read_config_json(path);
  if (!j.is_object() || !j.contains("quantization_config") || j["quantization_config"].is_null())
    throw Error(path + ": field 'quantization_config' is missing");
  const json& qc = j["quantization_config"];
  CtScheme s = parse_compressed_tensors_config(qc, path);
  std::string group = "group_0";
  if (qc.contains("config_groups") && qc["config_groups"].is_object() && !qc["config_groups"].empty())
    group = qc["config_groups"].begin().key();
  if (s.targets != std::vector<std::string>{"Linear"})
    throw Error(path + ": quantization_config.config_groups." + group +
                ".targets: only [\"Linear\"] (every decoder Linear) is supported by this loader");
  if (s.ignore != std::vector<std::string>{"lm_head"})
    throw Error(path + ": quantization_config.ignore: only [\"lm_head\"] is supported by this loader (lm_head in full "
                       "precision, every other Linear quantized)");
  return s;
}

CtLinear read_ct_linear(const ShardedSafetensors& st, const std::string& prefix, const CtScheme& s, int64_t out,
                        int64_t in, std::vector<std::string>* used) {
  Tensors t(st, prefix);
  CtLinear l;
  l.out = out;
  l.in = in;
  l.groups = ct_num_groups(in, s.group_size);
  const int bits = s.weight_bits;
  const std::string fmt = ct_format(s);
  auto note = [&](const std::string& n) {
    if (used) used->push_back(n);
    return n;
  };
  const ShardedSafetensors::Entry& se = t.entry(note(prefix + ".weight_scale"));
  t.expect(se, {DType::F32, DType::BF16, DType::F16}, {out, l.groups});
  l.scale_dtype = se.info->dtype;
  l.scale = t.floating(prefix + ".weight_scale", {out, l.groups});
  if (fmt == "pack-quantized") {
    const std::vector<int64_t> shape = t.ints<int64_t>(note(prefix + ".weight_shape"), DType::I64, {2});
    if (shape[0] != out || shape[1] != in)
      throw Error(t.entry(prefix + ".weight_shape").file->path() + ": tensor '" + prefix + ".weight_shape' is " +
                  shape_string(shape) + ", the model needs " + shape_string({out, in}));
    const std::vector<int32_t> packed =
        t.ints<int32_t>(note(prefix + ".weight_packed"), DType::I32, {out, ct_packed_cols(in, bits)});
    l.codes = unpack_int_rows(packed, out, in, bits, s.weight_symmetric);
    if (!s.weight_symmetric) {
      const std::vector<int32_t> zp =
          t.ints<int32_t>(note(prefix + ".weight_zero_point"), DType::I32, {ct_packed_cols(out, bits), l.groups});
      l.zero = unpack_zero_points(zp, out, l.groups, bits);
    }
  } else {
    const std::vector<int8_t> w = t.ints<int8_t>(note(prefix + ".weight"), DType::I8, {out, in});
    l.codes = ct_codes_from_int8(w, bits, s.weight_symmetric);
    if (!s.weight_symmetric) {
      const std::vector<int8_t> zp = t.ints<int8_t>(note(prefix + ".weight_zero_point"), DType::I8, {out, l.groups});
      l.zero = ct_codes_from_int8(zp, bits, false);
    }
  }
  if (!(l.scale > 0).all().item<bool>())
    throw Error(prefix + ".weight_scale: a scale is not positive");
  return l;
}

at::Tensor dequantize_ct_linear(const CtLinear& l) {
  c10::NoGradGuard no_grad;
  const at::Tensor q = at::from_blob(const_cast<int32_t*>(l.codes.data()), {l.out, l.groups, l.in / l.groups}, at::kInt)
                           .to(at::kFloat);
  const at::Tensor z = l.zero.empty() ? at::zeros({l.out, l.groups, 1}, at::kFloat)
                                      : at::from_blob(const_cast<int32_t*>(l.zero.data()), {l.out, l.groups, 1}, at::kInt)
                                            .to(at::kFloat);
  // The workbench's grid (core/quant/quantizer.cpp qdq): (u - z) * s in float32, u - z exact.
  return ((q - z) * l.scale.to(at::kFloat).unsqueeze(-1)).reshape({l.out, l.in}).contiguous();
}

std::string ExportedModel::description() const {
  std::string d;
  if (scheme) {
    d = "compressed-tensors " + ct_format(*scheme) + " W" + std::to_string(scheme->weight_bits) + " (" +
        (scheme->weight_symmetric ? "sym" : "asym") + ", " +
        (scheme->group_size > 0 ? "groups of " + std::to_string(scheme->group_size) : std::string("per channel")) + ")";
    if (scheme->activation_bits != 16)
      d += " A" + std::to_string(scheme->activation_bits) + (scheme->activation_symmetric ? " sym" : " asym") + " per token";
    for (const CtTransform& t : scheme->transforms) d += " + " + t.name;
  } else {
    d = "hf";
  }
  if (sidecar) {
    d += " + respin_online.json (" + sidecar->method;
    if (sidecar->source) d += ", run " + sidecar->source->label;
    d += ")";
  }
  return d;
}

ExportedModel load_exported_model(const std::string& dir, const LoadOptions& options) {
  c10::NoGradGuard no_grad;
  if (options.dtype != at::kFloat && options.dtype != at::kBFloat16)
    throw Error("compute dtype must be float32 or bfloat16");
  ModelFolder folder = ModelFolder::open(dir);
  const json cj = read_config_json(folder.config_path);
  const bool ct = cj.is_object() && cj.contains("quantization_config") && !cj["quantization_config"].is_null();
  const bool has_sidecar = fs::is_regular_file(fs::path(dir) / kOnlineSidecarJson);
  if (!ct && !has_sidecar)
    throw Error(dir + ": neither a quantization_config in config.json nor " + kOnlineSidecarJson +
                " (a plain model folder: load it as such)");
  ModelConfig mc = load_model_config(folder.config_path);
  ExportedModel em;
  em.dir = folder.dir;
  em.format = ct ? "compressed-tensors" : "hf";

  ModelWeights w;
  if (ct) {
    em.scheme = read_ct_scheme(dir);
    const CtScheme& s = *em.scheme;
    check_ct_transforms(s, mc, folder.config_path);
    ShardedSafetensors st = ShardedSafetensors::open_folder(folder.dir);
    check_index_covers_files(st, folder.dir);
    Tensors t(st, folder.dir);
    auto fl = [&](const std::string& name, const std::vector<int64_t>& shape) { return t.floating(name, shape); };
    auto opt = [&](bool present, const std::string& name, int64_t n) { return present ? fl(name, {n}) : at::Tensor(); };
    const int64_t D = mc.hidden_size, V = mc.vocab_size;
    const bool qkv_bias = mc.attention_bias || mc.qkv_bias;
    w.embed_tokens = fl("model.embed_tokens.weight", {V, D});
    w.final_norm = fl("model.norm.weight", {D});
    const at::Tensor r4 = s.transforms.empty() ? at::Tensor() : hadamard_dense_pm1(mc.intermediate_size);
    for (int64_t i = 0; i < mc.num_hidden_layers; ++i) {
      const std::string p = "model.layers." + std::to_string(i) + ".";
      LayerWeights L;
      L.input_norm = fl(p + "input_layernorm.weight", {D});
      L.post_attention_norm = fl(p + "post_attention_layernorm.weight", {D});
      std::vector<at::Tensor*> slots = linear_weights(L);
      for (int k = 0; k < 7; ++k) {
        const auto [out, in] = linear_shape(mc, k);
        std::vector<std::string> used;
        const CtLinear l = read_ct_linear(st, p + kLinearNames[k], s, out, in, &used);
        t.mark_used(used);
        *slots[static_cast<size_t>(k)] = dequantize_ct_linear(l);
      }
      L.q_bias = opt(qkv_bias, p + "self_attn.q_proj.bias", mc.q_dim());
      L.k_bias = opt(qkv_bias, p + "self_attn.k_proj.bias", mc.kv_dim());
      L.v_bias = opt(qkv_bias, p + "self_attn.v_proj.bias", mc.kv_dim());
      L.o_bias = opt(mc.attention_bias, p + "self_attn.o_proj.bias", D);
      L.gate_bias = opt(mc.mlp_bias, p + "mlp.gate_proj.bias", mc.intermediate_size);
      L.up_bias = opt(mc.mlp_bias, p + "mlp.up_proj.bias", mc.intermediate_size);
      L.down_bias = opt(mc.mlp_bias, p + "mlp.down_proj.bias", D);
      for (const CtTransform& tr : s.transforms) {
        const std::string name = p + "mlp.down_proj." + tr.name + "_input.weight";
        const at::Tensor h = fl(name, {mc.intermediate_size, mc.intermediate_size});
        if (!at::equal(h, r4))
          throw Error(folder.dir + ": tensor '" + name + "' is not the Hadamard matrix H_" +
                      std::to_string(mc.intermediate_size) + " of docs/export.md 2.3 (the one fused into down_proj)");
      }
      w.layers.push_back(std::move(L));
    }
    if (mc.tie_word_embeddings) {
      w.lm_head = w.embed_tokens;
    } else {
      if (!t.has("lm_head.weight"))
        throw Error(folder.dir + ": tensor 'lm_head.weight' is missing (config says tie_word_embeddings: false)");
      w.lm_head = fl("lm_head.weight", {V, D});
    }
    t.check_all_used(mc.tie_word_embeddings);
    if (options.dtype != at::kFloat) w = cast_weights(w, options.dtype);
    if (options.device != at::Device(at::kCPU)) w = move_weights(w, options.device);
    em.online = OnlineTransforms{false, !s.transforms.empty(), false};
    em.quant.weight.bits = 16;
    em.quant.activation = QuantSpec{s.activation_bits, s.activation_symmetric, 0, 1.0};
    em.quant.kv = QuantSpec{16, false, 0, 1.0};
  } else {
    check_index_covers_files(ShardedSafetensors::open_folder(folder.dir), folder.dir);
    LoadOptions plain = options;
    plain.caller_applies_export = true;
    w = load_model(folder.dir, plain).weights();
    em.quant.weight.bits = 16;
    em.quant.activation.bits = 16;
    em.quant.kv.bits = 16;
  }

  if (has_sidecar) {
    em.sidecar = read_online_sidecar(folder.dir, mc, options.device);
    const OnlineSidecar& sc = *em.sidecar;
    const std::string src = (fs::path(folder.dir) / kOnlineSidecarJson).string();
    if (sc.weight_storage != (ct ? "compressed-tensors" : "dequantized"))
      throw Error(src + ": field 'weights.storage' '" + sc.weight_storage + "' does not match the folder (" +
                  (ct ? "compressed-tensors weights" : "no quantization_config: dequantized weights") + ")");
    if (ct) {
      const CtScheme& s = *em.scheme;
      if (sc.weight.bits != s.weight_bits || sc.weight.symmetric != s.weight_symmetric || sc.weight.group_size != s.group_size)
        throw Error(src + ": field 'weights' disagrees with config.json's quantization_config weights");
      if (sc.online.down_hadamard != !s.transforms.empty())
        throw Error(src + ": field 'hadamards.down_proj' disagrees with config.json's transform_config (R4)");
      if (s.activation_bits != 16) {
        const QuantSpec& a = sc.quant.activation;
        if (a.bits != s.activation_bits || a.symmetric != s.activation_symmetric || a.group_size != 0 ||
            a.clip_ratio != 1.0 || sc.o_proj_group != 0)
          throw Error(src + ": field 'quantizers.activation' disagrees with config.json's quantization_config "
                            "input_activations");
      }
    }
    em.online = sc.online;
    em.quant.activation = sc.quant.activation;
    em.quant.kv = sc.quant.kv;
    em.o_proj_group = sc.o_proj_group;
    em.skip = sc.skip;
  }
  try {
    em.model.emplace(mc, std::move(w));
  } catch (const Error& e) {
    throw Error(folder.dir + ": " + e.what());
  }
  em.model->set_hook(run_hook(mc, options.device, em.online, em.skip, em.quant, em.o_proj_group));
  return em;
}

}  // namespace respin
