// respin_online.json + respin_online.tensors (see online_sidecar.h and docs/export.md section 2).
#include "core/export/online_sidecar.h"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>

#include <cmath>
#include <filesystem>
#include <set>

#include "core/calib/calib_config.h"
#include "core/io/atomic_file.h"
#include "core/io/safetensors.h"
#include "core/rotation/hadamard_matrix.h"
#include "core/rotation/hadamard_transform.h"
#include "core/util/error.h"

namespace fs = std::filesystem;

namespace respin {

namespace {

using nlohmann::json;

// The three online Hadamards: key in respin_online.json, the hook site(s), the axis.
constexpr const char* kQk = "qk";
constexpr const char* kDown = "down_proj";
constexpr const char* kHeads = "heads";

std::string core_tensor_name(const std::string& key) { return "hadamard." + key + ".core"; }

// K and M of H_n = H_K (x) S_M, chosen exactly as HadamardTransform::of_size chooses them.
void split_order(int64_t n, int64_t* k, int64_t* m) {
  if (n < 1) throw Error("Hadamard size " + std::to_string(n) + " is not positive");
  *m = n & -n;
  *k = n / *m;
  while (*k > 1 && !hadamard_constructible(static_cast<int>(*k)) && *m > 1) {
    *k *= 2;
    *m /= 2;
  }
}

at::Tensor sylvester_pm1(int64_t m) {
  std::vector<float> v(static_cast<size_t>(m * m));
  for (int64_t r = 0; r < m; ++r)
    for (int64_t c = 0; c < m; ++c) v[static_cast<size_t>(r * m + c)] = (__builtin_popcountll(r & c) & 1) ? -1.f : 1.f;
  return at::tensor(v).view({m, m});
}

OnlineHadamardSpec hadamard_spec(int64_t n, const std::string& key) {
  const HadamardTransform t = HadamardTransform::of_size(n);  // throws when there is no construction
  OnlineHadamardSpec s;
  s.size = n;
  s.construction = t.construction();
  split_order(n, &s.core_size, &s.sylvester_size);
  if (s.core_size > 1) s.core_tensor = core_tensor_name(key);
  return s;
}

// Why `name` cannot be the sidecar's tensor file ("" when it can): a plain file name in the folder
// whose name model loaders do not take for a weight file (they open every file ending in
// "safetensors", compressed-tensors' converter also .bin, .pt, .pth and .msgpack; docs/export.md 2.6).
std::string tensor_file_problem(const std::string& name) {
  if (name.empty() || name == "." || name == ".." || name.find('/') != std::string::npos ||
      name.find('\\') != std::string::npos)
    return "must be a plain file name in the folder";
  auto ends = [&](const std::string& suffix) {
    return name.size() >= suffix.size() && name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0;
  };
  for (const char* suffix : {"safetensors", ".bin", ".pt", ".pth", ".msgpack"})
    if (ends(suffix))
      return std::string("must not end in '") + suffix + "' (model loaders would open it as a weight file)";
  if (name == "respin_online.json" || name == "config.json") return "must not be " + name;
  return "";
}

json quantizer_json(const QuantSpec& q) {
  return {{"bits", q.bits}, {"symmetric", q.symmetric}, {"group_size", q.group_size}, {"clip_ratio", q.clip_ratio}};
}

json hadamard_json(const std::optional<OnlineHadamardSpec>& h) {
  if (!h) return nullptr;
  return {{"size", h->size},
          {"construction", h->construction},
          {"core_size", h->core_size},
          {"sylvester_size", h->sylvester_size},
          {"core_tensor", h->core_tensor.empty() ? json(nullptr) : json(h->core_tensor)}};
}

// ---- strict reading ----------------------------------------------------------------------------

class Reader {
 public:
  explicit Reader(std::string source) : source_(std::move(source)) {}
  [[noreturn]] void fail(const std::string& path, const std::string& what) const {
    throw Error(source_ + ": field '" + path + "' " + what);
  }
  const json& object(const json& j, const std::string& path) const {
    if (!j.is_object()) fail(path, "must be an object, got " + std::string(j.type_name()));
    return j;
  }
  // Every key must be known and every required one present.
  void keys(const json& j, const std::string& path, const std::set<std::string>& required,
            const std::set<std::string>& optional = {}) const {
    object(j, path);
    for (auto it = j.begin(); it != j.end(); ++it)
      if (!required.count(it.key()) && !optional.count(it.key()))
        fail(join(path, it.key()), "is not understood by this reader (respin_online.json format_version " +
                                       std::to_string(kOnlineSidecarVersion) + ")");
    for (const std::string& k : required)
      if (!j.contains(k)) fail(join(path, k), "is missing");
  }
  static std::string join(const std::string& path, const std::string& key) { return path.empty() ? key : path + "." + key; }
  const json& at(const json& j, const std::string& path, const std::string& key) const {
    if (!j.contains(key)) fail(join(path, key), "is missing");
    return j[key];
  }
  std::string string(const json& j, const std::string& path) const {
    if (!j.is_string()) fail(path, "must be a string");
    return j.get<std::string>();
  }
  bool boolean(const json& j, const std::string& path) const {
    if (!j.is_boolean()) fail(path, "must be true or false");
    return j.get<bool>();
  }
  int64_t integer(const json& j, const std::string& path) const {
    if (!j.is_number_integer()) fail(path, "must be an integer");
    return j.get<int64_t>();
  }
  double number(const json& j, const std::string& path) const {
    if (!j.is_number()) fail(path, "must be a number");
    return j.get<double>();
  }

 private:
  std::string source_;
};

QuantSpec parse_quantizer(const Reader& rd, const json& j, const std::string& path) {
  rd.keys(j, path, {"bits", "symmetric", "group_size", "clip_ratio"});
  QuantSpec q;
  q.bits = static_cast<int>(rd.integer(j["bits"], path + ".bits"));
  q.symmetric = rd.boolean(j["symmetric"], path + ".symmetric");
  q.group_size = rd.integer(j["group_size"], path + ".group_size");
  q.clip_ratio = rd.number(j["clip_ratio"], path + ".clip_ratio");
  try {
    validate_quant_spec(q, path.c_str());
  } catch (const Error& e) {
    rd.fail(path, std::string("is invalid: ") + e.what());
  }
  return q;
}

std::optional<OnlineHadamardSpec> parse_hadamard(const Reader& rd, const json& j, const std::string& path,
                                                 const std::string& key, int64_t expected_size) {
  if (j.is_null()) return std::nullopt;
  rd.keys(j, path, {"size", "construction", "core_size", "sylvester_size", "core_tensor"});
  OnlineHadamardSpec s;
  s.size = rd.integer(j["size"], path + ".size");
  if (s.size != expected_size)
    rd.fail(path + ".size", std::to_string(s.size) + " is not the model's " + std::to_string(expected_size));
  s.construction = rd.string(j["construction"], path + ".construction");
  s.core_size = rd.integer(j["core_size"], path + ".core_size");
  s.sylvester_size = rd.integer(j["sylvester_size"], path + ".sylvester_size");
  if (!j["core_tensor"].is_null()) s.core_tensor = rd.string(j["core_tensor"], path + ".core_tensor");
  OnlineHadamardSpec mine;
  try {
    mine = hadamard_spec(expected_size, key);
  } catch (const Error& e) {
    rd.fail(path, std::string("cannot be built here: ") + e.what());
  }
  if (s.construction != mine.construction || s.core_size != mine.core_size || s.sylvester_size != mine.sylvester_size)
    rd.fail(path, "describes H_" + std::to_string(s.size) + " as '" + s.construction + "' (core " +
                      std::to_string(s.core_size) + ", Sylvester " + std::to_string(s.sylvester_size) +
                      "); this reader builds '" + mine.construction + "' (core " + std::to_string(mine.core_size) +
                      ", Sylvester " + std::to_string(mine.sylvester_size) + ")");
  if (s.core_tensor != mine.core_tensor)
    rd.fail(path + ".core_tensor", "must be " + (mine.core_tensor.empty() ? std::string("null") : "'" + mine.core_tensor + "'"));
  return s;
}

}  // namespace

// ---------------------------------------------------------------------------------------------

at::Tensor hadamard_core_int8(int64_t n, int64_t* core_size) {
  int64_t k = 1, m = 1;
  split_order(n, &k, &m);
  if (core_size) *core_size = k;
  if (k == 1) return at::Tensor();
  std::optional<HadamardMatrix> h = k <= 32768 ? hadamard_matrix(static_cast<int>(k)) : std::nullopt;
  if (!h || h->n != k) throw Error("no Hadamard matrix of order " + std::to_string(n) + " is known");
  std::vector<int8_t> e(h->entries.begin(), h->entries.end());
  return at::from_blob(e.data(), {k, k}, at::kChar).clone();
}

at::Tensor hadamard_dense_pm1(int64_t n) {
  int64_t k = 1;
  at::Tensor core = hadamard_core_int8(n, &k);
  const at::Tensor s = sylvester_pm1(n / k);
  return k == 1 ? s : at::kron(core.to(at::kFloat), s);
}

OnlineSidecar make_online_sidecar(const ModelConfig& mc, const std::string& method, const OnlineTransforms& online,
                                  const QuantConfig& quant, int64_t o_proj_group) {
  OnlineSidecar s;
  s.method = method;
  s.architecture = mc.architecture;
  s.hidden_size = mc.hidden_size;
  s.intermediate_size = mc.intermediate_size;
  s.num_hidden_layers = mc.num_hidden_layers;
  s.num_attention_heads = mc.num_attention_heads;
  s.num_key_value_heads = mc.num_key_value_heads;
  s.head_dim = mc.head_dim;
  s.online = online;
  if (online.qk_hadamard) s.qk = hadamard_spec(mc.head_dim, kQk);
  if (online.down_hadamard) s.down_proj = hadamard_spec(mc.intermediate_size, kDown);
  if (online.heads_hadamard) s.heads = hadamard_spec(mc.num_attention_heads, kHeads);
  s.quant = quant;
  s.weight = quant.weight;
  s.o_proj_group = o_proj_group;
  return s;
}

json online_operations(const OnlineSidecar& s) {
  json ops = json::array();
  auto quantize = [&](const char* site, const char* quantizer, const QuantSpec& spec) {
    if (spec.enabled()) ops.push_back({{"site", site}, {"op", "quantize"}, {"quantizer", quantizer}, {"required", false}});
  };
  auto hadamard = [&](const char* site, const char* key, const char* axis, bool required) {
    ops.push_back({{"site", site}, {"op", "hadamard"}, {"hadamard", key}, {"axis", axis}, {"required", required}});
  };
  const bool skip = s.skip_rank >= 0;
  QuantSpec o_spec = s.quant.activation;
  o_spec.group_size = s.o_proj_group;
  quantize("attn_input", "activation", s.quant.activation);
  if (s.qk) {
    hadamard("q", kQk, "head_dim", false);
    hadamard("k", kQk, "head_dim", false);
  }
  quantize("k", "kv", s.quant.kv);
  quantize("v", "kv", s.quant.kv);
  if (s.heads) hadamard("o_proj_input", kHeads, "heads", true);
  quantize("o_proj_input", "o_proj_input", o_spec);
  if (skip) ops.push_back({{"site", "attn_skip"}, {"op", "skip_correction"}, {"add", "attn"}, {"required", true}});
  quantize("mlp_input", "activation", s.quant.activation);
  if (s.down_proj) hadamard("down_proj_input", kDown, "features", true);
  quantize("down_proj_input", "activation", s.quant.activation);
  if (skip) ops.push_back({{"site", "mlp_skip"}, {"op", "skip_correction"}, {"add", "mlp"}, {"required", true}});
  return ops;
}

json online_sidecar_to_json(const OnlineSidecar& s) {
  const std::string bad = tensor_file_problem(s.tensor_file);
  if (!bad.empty()) throw Error("respin_online.json: tensor file '" + s.tensor_file + "' " + bad);
  json j;
  j["format"] = kOnlineSidecarFormat;
  j["format_version"] = kOnlineSidecarVersion;
  j["tensors"] = s.tensor_file;
  j["method"] = s.method;
  j["model"] = {{"architecture", s.architecture},
                {"hidden_size", s.hidden_size},
                {"intermediate_size", s.intermediate_size},
                {"num_hidden_layers", s.num_hidden_layers},
                {"num_attention_heads", s.num_attention_heads},
                {"num_key_value_heads", s.num_key_value_heads},
                {"head_dim", s.head_dim}};
  j["weights"] = {{"storage", s.weight_storage},
                  {"quantizer", s.weight_quantizer},
                  {"bits", s.weight.bits},
                  {"symmetric", s.weight.symmetric},
                  {"group_size", s.weight.group_size}};
  j["hadamards"] = {{kQk, hadamard_json(s.qk)}, {kDown, hadamard_json(s.down_proj)}, {kHeads, hadamard_json(s.heads)}};
  if (s.skip_rank < 0) {
    j["skip_corrections"] = nullptr;
  } else {
    json layers = json::array();
    for (int64_t i = 0; i < s.num_hidden_layers; ++i) {
      auto pair = [&](const std::vector<std::string>& q, const std::vector<std::string>& m) -> json {
        if (i >= static_cast<int64_t>(q.size()) || q[i].empty()) return nullptr;
        return {{"q", q[i]}, {"m", m[i]}};
      };
      layers.push_back({{"attn", pair(s.attn_q, s.attn_m)}, {"mlp", pair(s.mlp_q, s.mlp_m)}});
    }
    j["skip_corrections"] = {{"rank", s.skip_rank}, {"dtype", "float32"}, {"layers", layers}};
  }
  QuantSpec o_spec = s.quant.activation;
  o_spec.group_size = s.o_proj_group;
  j["quantizers"] = {{"activation", quantizer_json(s.quant.activation)},
                     {"o_proj_input", quantizer_json(o_spec)},
                     {"kv", quantizer_json(s.quant.kv)}};
  j["operations"] = online_operations(s);
  if (s.source) {
    const SourceRunInfo& r = *s.source;
    j["source_run"] = {{"run", r.run_dir},
                       {"label", r.label},
                       {"fp_perplexity", r.fp_perplexity},
                       {"quantized_perplexity", r.quantized_perplexity},
                       {"eval", {{"seq_len", r.eval_seq_len},
                                 {"windows", r.eval_windows},
                                 {"batch", r.eval_batch},
                                 {"text", {{"source", r.eval_text_source},
                                           {"bytes", r.eval_text_bytes},
                                           {"sha256", r.eval_text_sha256}}}}}};
  }
  return j;
}

std::vector<std::pair<std::string, at::Tensor>> online_sidecar_tensors(const OnlineSidecar& s,
                                                                       const SkipTransitions& skip) {
  std::vector<std::pair<std::string, at::Tensor>> out;
  for (const std::optional<OnlineHadamardSpec>* h : {&s.qk, &s.down_proj, &s.heads})
    if (*h && !(*h)->core_tensor.empty()) out.emplace_back((*h)->core_tensor, hadamard_core_int8((*h)->size));
  if (s.skip_rank >= 0) {
    const std::pair<const std::vector<ResidualCorrection>*, const std::vector<std::string>*> adds[] = {
        {&skip.attn_rank_r, &s.attn_q}, {&skip.mlp_rank_r, &s.mlp_q}};
    for (int64_t i = 0; i < s.num_hidden_layers; ++i) {
      for (int a = 0; a < 2; ++a) {
        const std::vector<std::string>& names = *adds[a].second;
        if (i >= static_cast<int64_t>(names.size()) || names[i].empty()) continue;
        const ResidualCorrection& c = adds[a].first->at(static_cast<size_t>(i));
        const std::vector<std::string>& mnames = a == 0 ? s.attn_m : s.mlp_m;
        out.emplace_back(names[i], c.q.detach().to(at::kCPU, at::kFloat).contiguous());
        out.emplace_back(mnames[i], c.m.detach().to(at::kCPU, at::kFloat).contiguous());
      }
    }
  }
  return out;
}

OnlineSidecar parse_online_sidecar(const std::string& text, const ModelConfig& mc, const std::string& source) {
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {
    throw Error(source + ": not valid JSON (" + e.what() + ")");
  }
  Reader rd(source);
  rd.object(j, "");
  if (rd.string(rd.at(j, "", "format"), "format") != kOnlineSidecarFormat)
    rd.fail("format", "must be '" + std::string(kOnlineSidecarFormat) + "'");
  const int64_t version = rd.integer(rd.at(j, "", "format_version"), "format_version");
  if (version != 1 && version != kOnlineSidecarVersion)
    rd.fail("format_version", std::to_string(version) + " is not understood by this reader (it reads versions 1 to " +
                                  std::to_string(kOnlineSidecarVersion) + ")");
  // Version 2 names its tensor file; version 1 kept the tensors in online.safetensors.
  std::set<std::string> required = {"format", "format_version", "method", "model", "weights", "hadamards",
                                    "skip_corrections", "quantizers", "operations"};
  if (version >= 2) required.insert("tensors");
  rd.keys(j, "", required, {"source_run"});
  OnlineSidecar s;
  s.format_version = static_cast<int>(version);
  if (version >= 2) {
    s.tensor_file = rd.string(j["tensors"], "tensors");
    const std::string bad = tensor_file_problem(s.tensor_file);
    if (!bad.empty()) rd.fail("tensors", "'" + s.tensor_file + "' " + bad);
  } else {
    s.tensor_file = kOnlineSidecarTensorsV1;
  }
  s.method = rd.string(j["method"], "method");
  try {
    (void)method_from_name(s.method);
  } catch (const Error& e) {
    rd.fail("method", e.what());
  }

  const json& m = j["model"];
  rd.keys(m, "model", {"architecture", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                       "num_key_value_heads", "head_dim"});
  s.architecture = rd.string(m["architecture"], "model.architecture");
  const std::pair<const char*, std::pair<int64_t*, int64_t>> dims[] = {
      {"hidden_size", {&s.hidden_size, mc.hidden_size}},
      {"intermediate_size", {&s.intermediate_size, mc.intermediate_size}},
      {"num_hidden_layers", {&s.num_hidden_layers, mc.num_hidden_layers}},
      {"num_attention_heads", {&s.num_attention_heads, mc.num_attention_heads}},
      {"num_key_value_heads", {&s.num_key_value_heads, mc.num_key_value_heads}},
      {"head_dim", {&s.head_dim, mc.head_dim}}};
  for (const auto& [key, target] : dims) {
    *target.first = rd.integer(m[key], std::string("model.") + key);
    if (*target.first != target.second)
      rd.fail(std::string("model.") + key, std::to_string(*target.first) + " differs from config.json's " +
                                               std::to_string(target.second) + " (built for another model)");
  }
  if (s.architecture != mc.architecture)
    rd.fail("model.architecture", "'" + s.architecture + "' differs from config.json's '" + mc.architecture + "'");

  const json& w = j["weights"];
  rd.keys(w, "weights", {"storage", "quantizer", "bits", "symmetric", "group_size"});
  s.weight_storage = rd.string(w["storage"], "weights.storage");
  if (s.weight_storage != "dequantized" && s.weight_storage != "compressed-tensors")
    rd.fail("weights.storage", "'" + s.weight_storage + "' is not 'dequantized' or 'compressed-tensors'");
  s.weight_quantizer = rd.string(w["quantizer"], "weights.quantizer");
  if (s.weight_quantizer != "rtn" && s.weight_quantizer != "gptq")
    rd.fail("weights.quantizer", "'" + s.weight_quantizer + "' is not 'rtn' or 'gptq'");
  s.weight.bits = static_cast<int>(rd.integer(w["bits"], "weights.bits"));
  s.weight.symmetric = rd.boolean(w["symmetric"], "weights.symmetric");
  s.weight.group_size = rd.integer(w["group_size"], "weights.group_size");

  const json& h = j["hadamards"];
  rd.keys(h, "hadamards", {kQk, kDown, kHeads});
  s.qk = parse_hadamard(rd, h[kQk], std::string("hadamards.") + kQk, kQk, mc.head_dim);
  s.down_proj = parse_hadamard(rd, h[kDown], std::string("hadamards.") + kDown, kDown, mc.intermediate_size);
  s.heads = parse_hadamard(rd, h[kHeads], std::string("hadamards.") + kHeads, kHeads, mc.num_attention_heads);
  s.online = OnlineTransforms{s.qk.has_value(), s.down_proj.has_value(), s.heads.has_value()};

  const json& sc = j["skip_corrections"];
  if (!sc.is_null()) {
    rd.keys(sc, "skip_corrections", {"rank", "dtype", "layers"});
    s.skip_rank = rd.integer(sc["rank"], "skip_corrections.rank");
    if (s.skip_rank < 1 || s.skip_rank > mc.hidden_size)
      rd.fail("skip_corrections.rank", "must be in 1.." + std::to_string(mc.hidden_size));
    if (rd.string(sc["dtype"], "skip_corrections.dtype") != "float32")
      rd.fail("skip_corrections.dtype", "must be 'float32'");
    const json& layers = sc["layers"];
    if (!layers.is_array() || static_cast<int64_t>(layers.size()) != mc.num_hidden_layers)
      rd.fail("skip_corrections.layers", "must be a list of " + std::to_string(mc.num_hidden_layers) + " layers");
    for (int64_t i = 0; i < mc.num_hidden_layers; ++i) {
      const std::string lp = "skip_corrections.layers[" + std::to_string(i) + "]";
      const json& L = layers[static_cast<size_t>(i)];
      rd.keys(L, lp, {"attn", "mlp"});
      const std::pair<const char*, std::pair<std::vector<std::string>*, std::vector<std::string>*>> adds[] = {
          {"attn", {&s.attn_q, &s.attn_m}}, {"mlp", {&s.mlp_q, &s.mlp_m}}};
      for (const auto& [add, names] : adds) {
        const json& a = L[add];
        const std::string ap = lp + "." + add;
        if (a.is_null()) {
          names.first->push_back("");
          names.second->push_back("");
          continue;
        }
        rd.keys(a, ap, {"q", "m"});
        names.first->push_back(rd.string(a["q"], ap + ".q"));
        names.second->push_back(rd.string(a["m"], ap + ".m"));
      }
    }
  }

  const json& q = j["quantizers"];
  rd.keys(q, "quantizers", {"activation", "o_proj_input", "kv"});
  s.quant.activation = parse_quantizer(rd, q["activation"], "quantizers.activation");
  const QuantSpec o_spec = parse_quantizer(rd, q["o_proj_input"], "quantizers.o_proj_input");
  s.quant.kv = parse_quantizer(rd, q["kv"], "quantizers.kv");
  if (o_spec.bits != s.quant.activation.bits || o_spec.symmetric != s.quant.activation.symmetric ||
      o_spec.clip_ratio != s.quant.activation.clip_ratio)
    rd.fail("quantizers.o_proj_input", "must equal quantizers.activation except for group_size");
  s.o_proj_group = o_spec.group_size;
  auto divides = [&](int64_t g, int64_t n, const std::string& path) {
    if (g > 0 && n % g != 0) rd.fail(path, std::to_string(g) + " does not divide " + std::to_string(n));
  };
  if (s.quant.activation.enabled()) {
    divides(s.quant.activation.group_size, mc.hidden_size, "quantizers.activation.group_size");
    divides(s.quant.activation.group_size, mc.intermediate_size, "quantizers.activation.group_size");
    divides(s.o_proj_group, mc.q_dim(), "quantizers.o_proj_input.group_size");
  }
  if (s.quant.kv.enabled()) divides(s.quant.kv.group_size, mc.head_dim, "quantizers.kv.group_size");
  s.quant.weight = s.weight;
  s.quant.weight.bits = 16;  // the weights carry their grid; nothing is applied online

  const json expected = online_operations(s);
  const json& ops = j["operations"];
  if (!ops.is_array()) rd.fail("operations", "must be a list");
  for (size_t i = 0; i < std::max(ops.size(), expected.size()); ++i) {
    const std::string p = "operations[" + std::to_string(i) + "]";
    if (i >= ops.size()) rd.fail(p, "is missing: the settings above imply " + expected[i].dump());
    if (i >= expected.size() || ops[i] != expected[i])
      rd.fail(p, ops[i].dump() + " is not what the settings above imply (" +
                     (i < expected.size() ? expected[i].dump() : std::string("nothing")) +
                     "); this reader applies the operations of docs/export.md 2.2 in their fixed order");
  }

  if (j.contains("source_run")) {
    const json& r = j["source_run"];
    rd.keys(r, "source_run", {"run", "label", "fp_perplexity", "quantized_perplexity", "eval"});
    SourceRunInfo info;
    info.run_dir = rd.string(r["run"], "source_run.run");
    info.label = rd.string(r["label"], "source_run.label");
    info.fp_perplexity = rd.number(r["fp_perplexity"], "source_run.fp_perplexity");
    info.quantized_perplexity = rd.number(r["quantized_perplexity"], "source_run.quantized_perplexity");
    const json& e = r["eval"];
    rd.keys(e, "source_run.eval", {"seq_len", "windows", "batch", "text"});
    info.eval_seq_len = rd.integer(e["seq_len"], "source_run.eval.seq_len");
    info.eval_windows = rd.integer(e["windows"], "source_run.eval.windows");
    info.eval_batch = rd.integer(e["batch"], "source_run.eval.batch");
    const json& t = e["text"];
    rd.keys(t, "source_run.eval.text", {"source", "bytes", "sha256"});
    info.eval_text_source = rd.string(t["source"], "source_run.eval.text.source");
    info.eval_text_bytes = rd.integer(t["bytes"], "source_run.eval.text.bytes");
    info.eval_text_sha256 = rd.string(t["sha256"], "source_run.eval.text.sha256");
    s.source = info;
  }
  return s;
}

OnlineSidecar read_online_sidecar(const std::string& dir, const ModelConfig& mc, at::Device device) {
  const std::string json_path = (fs::path(dir) / kOnlineSidecarJson).string();
  OnlineSidecar s = parse_online_sidecar(read_text_file(json_path), mc, json_path);
  const std::string tpath = (fs::path(dir) / s.tensor_file).string();
  std::vector<std::string> wanted;
  for (const std::optional<OnlineHadamardSpec>* h : {&s.qk, &s.down_proj, &s.heads})
    if (*h && !(*h)->core_tensor.empty()) wanted.push_back((*h)->core_tensor);
  for (const std::vector<std::string>* v : {&s.attn_q, &s.attn_m, &s.mlp_q, &s.mlp_m})
    for (const std::string& n : *v)
      if (!n.empty()) wanted.push_back(n);
  if (!fs::exists(tpath)) {
    if (wanted.empty()) return s;
    throw Error(tpath + ": missing (" + json_path + " names tensor '" + wanted.front() + "')");
  }
  c10::NoGradGuard no_grad;
  SafetensorsFile f = SafetensorsFile::open(tpath);
  std::set<std::string> used;
  auto get = [&](const std::string& name, DType dtype, const std::vector<int64_t>& shape) {
    const TensorInfo* info = f.find(name);
    if (!info) throw Error(tpath + ": tensor '" + name + "' (named in " + json_path + ") is missing");
    if (info->dtype != dtype || info->shape != shape) {
      std::string want = std::string(dtype_name(dtype)) + " [";
      for (size_t i = 0; i < shape.size(); ++i) want += (i ? ", " : "") + std::to_string(shape[i]);
      throw Error(tpath + ": tensor '" + name + "' must be " + want + "]");
    }
    used.insert(name);
    const at::ScalarType st = dtype == DType::I8 ? at::kChar : at::kFloat;
    return at::from_blob(const_cast<void*>(f.data(*info)), shape, st).clone();
  };
  for (const std::optional<OnlineHadamardSpec>* h : {&s.qk, &s.down_proj, &s.heads}) {
    if (!*h || (*h)->core_tensor.empty()) continue;
    const int64_t k = (*h)->core_size;
    const at::Tensor stored = get((*h)->core_tensor, DType::I8, {k, k});
    if (!at::equal(stored, hadamard_core_int8((*h)->size)))
      throw Error(tpath + ": tensor '" + (*h)->core_tensor + "' is not the " + (*h)->construction +
                  " core this reader builds (the online Hadamard would differ from the one fused into the weights)");
  }
  if (s.skip_rank >= 0) {
    const int64_t D = mc.hidden_size, r = s.skip_rank;
    for (int64_t i = 0; i < mc.num_hidden_layers; ++i) {
      const std::pair<std::pair<const std::vector<std::string>*, const std::vector<std::string>*>,
                      std::vector<ResidualCorrection>*>
          adds[] = {{{&s.attn_q, &s.attn_m}, &s.skip.attn_rank_r}, {{&s.mlp_q, &s.mlp_m}, &s.skip.mlp_rank_r}};
      for (const auto& [names, vec] : adds) {
        ResidualCorrection c;
        const std::string& qn = (*names.first)[static_cast<size_t>(i)];
        if (!qn.empty()) {
          c.q = get(qn, DType::F32, {D, r}).to(device);
          c.m = get((*names.second)[static_cast<size_t>(i)], DType::F32, {r, r}).to(device);
          c.rank = r;
          if (!at::isfinite(c.q).all().item<bool>() || !at::isfinite(c.m).all().item<bool>())
            throw Error(tpath + ": correction '" + qn + "' contains NaN or infinite values");
        }
        vec->push_back(c);
      }
    }
  }
  for (const TensorInfo& t : f.tensors())
    if (!used.count(t.name))
      throw Error(tpath + ": tensor '" + t.name + "' is not named by " + json_path +
                  " (an operation this reader does not know about would be skipped)");
  return s;
}

}  // namespace respin
