// compressed-tensors packing and quantization_config (see pack.h and docs/export.md).
#include "core/export/pack.h"

#include <algorithm>
#include <set>

#include "core/util/error.h"

namespace respin {
namespace {

using nlohmann::json;

std::string str(int64_t v) { return std::to_string(v); }

// The code range of a width: signed for symmetric, unsigned for asymmetric.
void code_range(int bits, bool symmetric, int32_t* lo, int32_t* hi) {
  if (symmetric) {
    *lo = -(1 << (bits - 1));
    *hi = (1 << (bits - 1)) - 1;
  } else {
    *lo = 0;
    *hi = (1 << bits) - 1;
  }
}

std::string range_text(int bits, bool symmetric) {
  int32_t lo = 0, hi = 0;
  code_range(bits, symmetric, &lo, &hi);
  return std::to_string(bits) + "-bit " + (symmetric ? "symmetric" : "asymmetric") + " range [" +
         std::to_string(lo) + ", " + std::to_string(hi) + "]";
}

void check_sizes(const char* what, size_t have, int64_t rows, int64_t cols, const char* unit) {
  if (rows < 0 || cols < 0) throw Error(std::string(what) + ": negative size [" + str(rows) + ", " + str(cols) + "]");
  if (cols > 0 && rows > INT64_MAX / cols) throw Error(std::string(what) + ": size overflows");
  if (static_cast<int64_t>(have) != rows * cols)
    throw Error(std::string(what) + ": " + std::to_string(have) + " " + unit + " given, [" + str(rows) + ", " +
                str(cols) + "] needs " + str(rows * cols));
}

// The stored (unsigned, offset) value of a code.
uint32_t stored_value(int32_t code, int bits, bool symmetric) {
  return static_cast<uint32_t>(symmetric ? code + (1 << (bits - 1)) : code);
}
int32_t code_of_stored(uint32_t v, int bits, bool symmetric) {
  return symmetric ? static_cast<int32_t>(v) - (1 << (bits - 1)) : static_cast<int32_t>(v);
}

// Packs along the axis of length `n` of a row-major [n_outer, n] or [n, n_outer] array. For
// along_rows (packed_dim = 1) element (r, c) is at r * cols + c and codes run along c; otherwise
// (packed_dim = 0, zero points) codes run along r. Output is row-major in the same orientation.
std::vector<int32_t> pack_impl(const char* what, const std::vector<int32_t>& q, int64_t rows, int64_t cols, int bits,
                               bool symmetric, bool along_rows) {
  check_ct_pack_bits(bits);
  check_sizes(what, q.size(), rows, cols, "codes");
  int32_t lo = 0, hi = 0;
  code_range(bits, symmetric, &lo, &hi);
  const int64_t per = 32 / bits;
  const int64_t prows = along_rows ? rows : ct_packed_cols(rows, bits);
  const int64_t pcols = along_rows ? ct_packed_cols(cols, bits) : cols;
  std::vector<uint32_t> words(static_cast<size_t>(prows * pcols), 0u);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < cols; ++c) {
      const int32_t code = q[static_cast<size_t>(r * cols + c)];
      if (code < lo || code > hi)
        throw Error(std::string(what) + ": code " + std::to_string(code) + " at row " + str(r) + ", column " + str(c) +
                    " is outside the " + range_text(bits, symmetric));
      const int64_t i = along_rows ? c : r;  // position along the packed axis
      const int64_t word = along_rows ? r * pcols + i / per : (i / per) * pcols + c;
      words[static_cast<size_t>(word)] |= stored_value(code, bits, symmetric) << ((i % per) * bits);
    }
  }
  std::vector<int32_t> out(words.size());
  for (size_t i = 0; i < words.size(); ++i) out[i] = static_cast<int32_t>(words[i]);  // same 32 bits
  return out;
}

std::vector<int32_t> unpack_impl(const char* what, const std::vector<int32_t>& packed, int64_t rows, int64_t cols,
                                 int bits, bool symmetric, bool along_rows) {
  check_ct_pack_bits(bits);
  if (rows < 0 || cols < 0) throw Error(std::string(what) + ": negative size [" + str(rows) + ", " + str(cols) + "]");
  const int64_t per = 32 / bits;
  const int64_t prows = along_rows ? rows : ct_packed_cols(rows, bits);
  const int64_t pcols = along_rows ? ct_packed_cols(cols, bits) : cols;
  check_sizes(what, packed.size(), prows, pcols, "words");
  const uint32_t mask = (1u << bits) - 1u;
  std::vector<int32_t> q(static_cast<size_t>(rows * cols));
  std::vector<uint32_t> used(packed.size(), 0u);  // bits that hold codes, to check the padding
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < cols; ++c) {
      const int64_t i = along_rows ? c : r;
      const int64_t word = along_rows ? r * pcols + i / per : (i / per) * pcols + c;
      const int shift = static_cast<int>((i % per) * bits);
      const uint32_t w = static_cast<uint32_t>(packed[static_cast<size_t>(word)]);
      q[static_cast<size_t>(r * cols + c)] = code_of_stored((w >> shift) & mask, bits, symmetric);
      used[static_cast<size_t>(word)] |= mask << shift;
    }
  }
  for (size_t k = 0; k < packed.size(); ++k) {
    if ((static_cast<uint32_t>(packed[k]) & ~used[k]) != 0u) {
      const int64_t pr = static_cast<int64_t>(k) / std::max<int64_t>(pcols, 1);
      const int64_t pc = static_cast<int64_t>(k) % std::max<int64_t>(pcols, 1);
      throw Error(std::string(what) + ": packed word [" + str(pr) + ", " + str(pc) +
                  "] has non-zero padding bits (wrong shape or bit width?)");
    }
  }
  return q;
}

const std::set<std::string> kLocations = {"input", "output", "weight_input", "weight_output", "q_attn", "k_cache"};
const std::set<std::string> kTransformTypes = {"hadamard", "random-hadamard"};

// ---- parsing -------------------------------------------------------------------------------

class Reader {
 public:
  explicit Reader(std::string source) : source_(std::move(source)) {}

  [[noreturn]] void fail(const std::string& path, const std::string& what) const {
    throw Error(source_ + ": " + path + ": " + what);
  }

  const json& object(const json& j, const std::string& path) const {
    if (!j.is_object()) fail(path, "expected an object, got " + std::string(j.type_name()));
    return j;
  }

  // Every key of an object must be known.
  void only_keys(const json& j, const std::string& path, const std::set<std::string>& known) const {
    for (auto it = j.begin(); it != j.end(); ++it)
      if (!known.count(it.key())) fail(path + "." + it.key(), "unknown field (not understood by this reader)");
  }

  std::string string(const json& j, const std::string& path) const {
    if (!j.is_string()) fail(path, "expected a string, got " + std::string(j.type_name()));
    return j.get<std::string>();
  }
  bool boolean(const json& j, const std::string& path) const {
    if (!j.is_boolean()) fail(path, "expected true or false, got " + std::string(j.type_name()));
    return j.get<bool>();
  }
  int64_t integer(const json& j, const std::string& path) const {
    if (!j.is_number_integer()) fail(path, "expected an integer, got " + std::string(j.type_name()));
    return j.get<int64_t>();
  }
  std::vector<std::string> strings(const json& j, const std::string& path) const {
    if (j.is_string()) return {j.get<std::string>()};  // compressed-tensors wraps a single target
    if (!j.is_array()) fail(path, "expected a list of strings, got " + std::string(j.type_name()));
    std::vector<std::string> out;
    for (size_t i = 0; i < j.size(); ++i) out.push_back(string(j[i], path + "[" + std::to_string(i) + "]"));
    return out;
  }
  // A field that must be null (or absent, handled by the caller).
  void null_only(const json& j, const std::string& path, const std::string& why) const {
    if (!j.is_null()) fail(path, "must be null: " + why);
  }

 private:
  std::string source_;
};

bool has(const json& j, const char* key) { return j.contains(key); }

// One QuantizationArgs (weights or input_activations). The fields that matter are returned; the
// ones that do not change the stored tensors (observer, observer_kwargs) are accepted as given.
struct ParsedArgs {
  int num_bits = 8;
  bool symmetric = true;
  std::string strategy;
  int64_t group_size = 0;  // 0 = null / -1
  bool dynamic = false;
};

ParsedArgs parse_args(const Reader& rd, const json& j, const std::string& path) {
  rd.object(j, path);
  rd.only_keys(j, path,
               {"num_bits", "type", "symmetric", "group_size", "strategy", "block_structure", "dynamic", "actorder",
                "observer", "observer_kwargs", "scale_dtype", "zp_dtype"});
  ParsedArgs a;
  // compressed-tensors' defaults: num_bits 8, type int, symmetric true, dynamic false.
  if (has(j, "num_bits")) a.num_bits = static_cast<int>(rd.integer(j["num_bits"], path + ".num_bits"));
  if (has(j, "type")) {
    const std::string t = rd.string(j["type"], path + ".type");
    if (t != "int") rd.fail(path + ".type", "'" + t + "' is not supported (only \"int\")");
  }
  if (has(j, "symmetric")) a.symmetric = rd.boolean(j["symmetric"], path + ".symmetric");
  if (has(j, "dynamic")) {
    const json& d = j["dynamic"];
    if (!d.is_boolean()) rd.fail(path + ".dynamic", "'" + d.dump() + "' is not supported (only true or false)");
    a.dynamic = d.get<bool>();
  }
  if (has(j, "block_structure")) rd.null_only(j["block_structure"], path + ".block_structure", "block strategy is not supported");
  if (has(j, "actorder")) {
    const json& o = j["actorder"];
    const bool harmless = o.is_null() || (o.is_boolean() && !o.get<bool>()) ||
                          (o.is_string() && (o == "weight" || o == "static"));
    if (!harmless)
      rd.fail(path + ".actorder", "'" + o.dump() + "' is not supported (group activation ordering stores weight_g_idx)");
  }
  if (has(j, "scale_dtype")) rd.null_only(j["scale_dtype"], path + ".scale_dtype", "scales are stored in the model dtype");
  if (has(j, "zp_dtype")) {
    const json& z = j["zp_dtype"];
    if (!z.is_null() && !(z.is_string() && (z == "torch.int8" || z == "int8")))
      rd.fail(path + ".zp_dtype", "'" + z.dump() + "' is not supported (null or \"torch.int8\")");
  }
  if (has(j, "observer") && !j["observer"].is_null()) rd.string(j["observer"], path + ".observer");
  if (has(j, "observer_kwargs")) rd.object(j["observer_kwargs"], path + ".observer_kwargs");
  int64_t group = -2;  // absent
  if (has(j, "group_size") && !j["group_size"].is_null()) {
    group = rd.integer(j["group_size"], path + ".group_size");
    if (group == 0 || group < -1) rd.fail(path + ".group_size", std::to_string(group) + " is not valid (> 0, -1 or null)");
  }
  if (has(j, "strategy") && !j["strategy"].is_null()) {
    a.strategy = rd.string(j["strategy"], path + ".strategy");
  } else {  // compressed-tensors infers it from group_size
    a.strategy = group == -2 ? "tensor" : group == -1 ? "channel" : "group";
  }
  if (a.strategy == "group") {
    if (group <= 0) rd.fail(path + ".group_size", "strategy \"group\" needs a positive group_size");
    a.group_size = group;
  } else if (group > 0) {
    rd.fail(path + ".group_size", "group_size " + std::to_string(group) + " needs strategy \"group\", not \"" +
                                      a.strategy + "\"");
  }
  return a;
}

}  // namespace

// ---- packing ---------------------------------------------------------------------------------

void check_ct_pack_bits(int bits) {
  if (bits == 2 || bits == 4 || bits == 8) return;
  std::string msg = "compressed-tensors pack-quantized has no " + std::to_string(bits) + "-bit packing";
  if (bits == 3)
    msg += " (its 3-bit layout differs between compressed-tensors versions: 10 codes per int32 before "
           "vllm-project/compressed-tensors#732, densely packed across word boundaries after)";
  throw Error(msg + "; supported widths: 2, 4, 8");
}

int64_t ct_packed_cols(int64_t cols, int bits) {
  check_ct_pack_bits(bits);
  if (cols < 0) throw Error("negative column count " + str(cols));
  return (cols * bits + 31) / 32;
}

std::vector<int32_t> pack_int_rows(const std::vector<int32_t>& q, int64_t rows, int64_t cols, int bits,
                                   bool symmetric) {
  return pack_impl("pack_int_rows", q, rows, cols, bits, symmetric, true);
}

std::vector<int32_t> unpack_int_rows(const std::vector<int32_t>& packed, int64_t rows, int64_t cols, int bits,
                                     bool symmetric) {
  return unpack_impl("unpack_int_rows", packed, rows, cols, bits, symmetric, true);
}

std::vector<int32_t> pack_zero_points(const std::vector<int32_t>& zp, int64_t out_features, int64_t groups,
                                      int bits) {
  return pack_impl("pack_zero_points", zp, out_features, groups, bits, false, false);
}

std::vector<int32_t> unpack_zero_points(const std::vector<int32_t>& packed, int64_t out_features, int64_t groups,
                                        int bits) {
  return unpack_impl("unpack_zero_points", packed, out_features, groups, bits, false, false);
}

std::vector<int8_t> ct_int8_codes(const std::vector<int32_t>& q, int bits, bool symmetric) {
  if (bits < 2 || bits > 8) throw Error("int-quantized: " + std::to_string(bits) + "-bit codes are not supported (2..8)");
  int32_t lo = 0, hi = 0;
  code_range(bits, symmetric, &lo, &hi);
  const int32_t offset = symmetric ? 0 : (1 << (bits - 1));
  std::vector<int8_t> out(q.size());
  for (size_t i = 0; i < q.size(); ++i) {
    if (q[i] < lo || q[i] > hi)
      throw Error("int-quantized: code " + std::to_string(q[i]) + " at index " + std::to_string(i) +
                  " is outside the " + range_text(bits, symmetric));
    out[i] = static_cast<int8_t>(q[i] - offset);
  }
  return out;
}

std::vector<int32_t> ct_codes_from_int8(const std::vector<int8_t>& stored, int bits, bool symmetric) {
  if (bits < 2 || bits > 8) throw Error("int-quantized: " + std::to_string(bits) + "-bit codes are not supported (2..8)");
  const int32_t lo = -(1 << (bits - 1)), hi = (1 << (bits - 1)) - 1;
  const int32_t offset = symmetric ? 0 : (1 << (bits - 1));
  std::vector<int32_t> out(stored.size());
  for (size_t i = 0; i < stored.size(); ++i) {
    if (stored[i] < lo || stored[i] > hi)
      throw Error("int-quantized: stored value " + std::to_string(stored[i]) + " at index " + std::to_string(i) +
                  " is outside the signed " + std::to_string(bits) + "-bit range [" + std::to_string(lo) + ", " +
                  std::to_string(hi) + "]");
    out[i] = stored[i] + offset;
  }
  return out;
}

int64_t ct_num_groups(int64_t in_features, int64_t group_size) {
  if (in_features <= 0) throw Error("in_features " + str(in_features) + " must be positive");
  if (group_size < 0) throw Error("group_size " + str(group_size) + " must be >= 0");
  if (group_size == 0) return 1;
  if (in_features % group_size != 0)
    throw Error("group_size " + str(group_size) + " does not divide in_features " + str(in_features) +
                " (compressed-tensors would round the group count up, vLLM rounds it down)");
  return in_features / group_size;
}

// ---- scheme ------------------------------------------------------------------------------------

bool CtTransformArgs::operator==(const CtTransformArgs& o) const {
  return targets == o.targets && location == o.location && inverse == o.inverse && ignore == o.ignore;
}
bool CtTransform::operator==(const CtTransform& o) const {
  return name == o.name && type == o.type && head_dim == o.head_dim && apply == o.apply;
}
bool CtScheme::operator==(const CtScheme& o) const {
  return weight_bits == o.weight_bits && weight_symmetric == o.weight_symmetric && group_size == o.group_size &&
         activation_bits == o.activation_bits && activation_symmetric == o.activation_symmetric &&
         activation_dynamic == o.activation_dynamic && targets == o.targets && ignore == o.ignore &&
         transforms == o.transforms && format == o.format && version == o.version;
}

namespace {
std::string auto_format(const CtScheme& s) {
  return (s.weight_bits == 8 && s.activation_bits == 8 && s.group_size == 0 && s.weight_symmetric)
             ? "int-quantized"
             : "pack-quantized";
}
}  // namespace

std::string ct_format(const CtScheme& s) { return s.format.empty() ? auto_format(s) : s.format; }

void validate_ct_scheme(const CtScheme& s) {
  const std::string fmt = ct_format(s);
  if (fmt != "pack-quantized" && fmt != "int-quantized")
    throw Error("compressed-tensors scheme: format '" + fmt + "' is not supported (pack-quantized, int-quantized)");
  if (fmt == "pack-quantized") {
    check_ct_pack_bits(s.weight_bits);
  } else if (s.weight_bits < 2 || s.weight_bits > 8) {
    throw Error("compressed-tensors scheme: weight_bits " + std::to_string(s.weight_bits) + " is not supported (2..8)");
  }
  if (s.group_size < 0) throw Error("compressed-tensors scheme: group_size " + str(s.group_size) + " must be >= 0");
  if (s.activation_bits != 16 && (s.activation_bits < 2 || s.activation_bits > 8))
    throw Error("compressed-tensors scheme: activation_bits " + std::to_string(s.activation_bits) +
                " is not supported (2..8, or 16 for weight-only)");
  if (s.activation_bits != 16 && !s.activation_dynamic)
    throw Error("compressed-tensors scheme: static activation quantization is not supported (it needs calibrated "
                "input_scale tensors); activations are quantized dynamically per token");
  if (s.targets.empty()) throw Error("compressed-tensors scheme: targets is empty");
  for (const std::string& t : s.targets)
    if (t.empty()) throw Error("compressed-tensors scheme: an empty target");
  for (const std::string& t : s.ignore)
    if (t.empty()) throw Error("compressed-tensors scheme: an empty ignore entry");
  if (s.version.empty()) throw Error("compressed-tensors scheme: version is empty");
  std::set<std::string> names;
  for (const CtTransform& t : s.transforms) {
    const std::string what = "compressed-tensors transform '" + t.name + "'";
    if (t.name.empty()) throw Error("compressed-tensors transform: empty name");
    if (!names.insert(t.name).second) throw Error(what + ": name used twice");
    if (!kTransformTypes.count(t.type))
      throw Error(what + ": type '" + t.type + "' is not supported (hadamard, random-hadamard)");
    if (t.head_dim < 0) throw Error(what + ": head_dim " + str(t.head_dim) + " must be >= 0");
    if (t.apply.empty()) throw Error(what + ": apply is empty");
    for (const CtTransformArgs& a : t.apply) {
      if (!kLocations.count(a.location))
        throw Error(what + ": location '" + a.location +
                    "' is not one of input, output, weight_input, weight_output, q_attn, k_cache");
      if (a.targets.empty()) throw Error(what + ": an apply entry has no targets");
    }
  }
}

nlohmann::json compressed_tensors_quantization_config(const CtScheme& s) {
  validate_ct_scheme(s);
  json weights = {{"num_bits", s.weight_bits},
                  {"type", "int"},
                  {"symmetric", s.weight_symmetric},
                  {"group_size", s.group_size > 0 ? json(s.group_size) : json(nullptr)},
                  {"strategy", s.group_size > 0 ? "group" : "channel"},
                  {"block_structure", nullptr},
                  {"dynamic", false},
                  {"actorder", nullptr},
                  {"observer", "minmax"},
                  {"observer_kwargs", json::object()}};
  json inputs = nullptr;
  if (s.activation_bits != 16)
    inputs = {{"num_bits", s.activation_bits},
              {"type", "int"},
              {"symmetric", s.activation_symmetric},
              {"group_size", nullptr},
              {"strategy", "token"},
              {"block_structure", nullptr},
              {"dynamic", true},
              {"actorder", nullptr},
              {"observer", nullptr},
              {"observer_kwargs", json::object()}};
  // Every group names its storage format: without it compressed-tensors infers one per group from
  // the scheme, and declared activations make it infer int-quantized (docs/export.md 1.5).
  json group = {{"targets", s.targets},
                {"format", ct_format(s)},
                {"weights", weights},
                {"input_activations", inputs},
                {"output_activations", nullptr}};
  json transforms = json::object();
  if (!s.transforms.empty()) {
    json groups = json::object();
    for (const CtTransform& t : s.transforms) {
      json apply = json::array();
      for (const CtTransformArgs& a : t.apply)
        apply.push_back({{"targets", a.targets}, {"location", a.location}, {"inverse", a.inverse}, {"ignore", a.ignore}});
      groups[t.name] = {{"type", t.type},
                        {"apply", apply},
                        {"randomize", false},
                        {"requires_grad", false},
                        {"head_dim", t.head_dim > 0 ? json(t.head_dim) : json(nullptr)}};
    }
    transforms = {{"config_groups", groups}};
  }
  return {{"quant_method", "compressed-tensors"},
          {"format", ct_format(s)},
          {"quantization_status", "compressed"},
          {"version", s.version},
          {"global_compression_ratio", nullptr},
          {"config_groups", {{"group_0", group}}},
          {"ignore", s.ignore},
          {"kv_cache_scheme", nullptr},
          {"sparsity_config", json::object()},
          {"transform_config", transforms}};
}

CtScheme parse_compressed_tensors_config(const nlohmann::json& qc, const std::string& source) {
  const Reader rd(source);
  const std::string root = "quantization_config";
  rd.object(qc, root);
  rd.only_keys(qc, root,
               {"quant_method", "format", "quantization_status", "version", "global_compression_ratio",
                "config_groups", "ignore", "kv_cache_scheme", "sparsity_config", "transform_config"});
  CtScheme s;
  if (!has(qc, "quant_method")) rd.fail(root + ".quant_method", "missing");
  const std::string method = rd.string(qc["quant_method"], root + ".quant_method");
  if (method != "compressed-tensors") rd.fail(root + ".quant_method", "'" + method + "' is not \"compressed-tensors\"");
  if (!has(qc, "format")) rd.fail(root + ".format", "missing");
  const std::string format = rd.string(qc["format"], root + ".format");
  if (format != "pack-quantized" && format != "int-quantized")
    rd.fail(root + ".format", "'" + format + "' is not supported (pack-quantized, int-quantized)");
  if (!has(qc, "quantization_status")) rd.fail(root + ".quantization_status", "missing");
  const std::string status = rd.string(qc["quantization_status"], root + ".quantization_status");
  if (status != "compressed")
    rd.fail(root + ".quantization_status", "'" + status + "' is not \"compressed\" (the weights are not stored packed)");
  s.version = has(qc, "version") && !qc["version"].is_null() ? rd.string(qc["version"], root + ".version") : "";
  if (s.version.empty()) s.version = CtScheme().version;
  if (has(qc, "global_compression_ratio") && !qc["global_compression_ratio"].is_null() &&
      !qc["global_compression_ratio"].is_number())
    rd.fail(root + ".global_compression_ratio", "expected a number or null");
  if (has(qc, "kv_cache_scheme"))
    rd.null_only(qc["kv_cache_scheme"], root + ".kv_cache_scheme",
                 "KV-cache quantization is not part of this export (docs/export.md)");
  if (has(qc, "sparsity_config") && !qc["sparsity_config"].is_null() && !(qc["sparsity_config"].is_object() && qc["sparsity_config"].empty()))
    rd.fail(root + ".sparsity_config", "sparsity is not supported (must be {} or null)");
  s.ignore = has(qc, "ignore") && !qc["ignore"].is_null() ? rd.strings(qc["ignore"], root + ".ignore")
                                                            : std::vector<std::string>{};

  if (!has(qc, "config_groups")) rd.fail(root + ".config_groups", "missing");
  const json& groups = rd.object(qc["config_groups"], root + ".config_groups");
  if (groups.size() != 1)
    rd.fail(root + ".config_groups", std::to_string(groups.size()) + " groups; exactly one is supported");
  const std::string gpath = root + ".config_groups." + groups.begin().key();
  const json& g = rd.object(groups.begin().value(), gpath);
  rd.only_keys(g, gpath, {"targets", "weights", "input_activations", "output_activations", "format"});
  if (!has(g, "targets")) rd.fail(gpath + ".targets", "missing");
  s.targets = rd.strings(g["targets"], gpath + ".targets");
  if (s.targets.empty()) rd.fail(gpath + ".targets", "empty");
  if (has(g, "format") && !g["format"].is_null()) {
    const std::string gf = rd.string(g["format"], gpath + ".format");
    if (gf != format) rd.fail(gpath + ".format", "'" + gf + "' differs from the top-level format '" + format + "'");
  }
  if (has(g, "output_activations"))
    rd.null_only(g["output_activations"], gpath + ".output_activations", "output quantization is not supported");
  if (!has(g, "weights") || g["weights"].is_null()) rd.fail(gpath + ".weights", "missing (weight quantization is required)");
  const ParsedArgs w = parse_args(rd, g["weights"], gpath + ".weights");
  if (w.strategy != "channel" && w.strategy != "group")
    rd.fail(gpath + ".weights.strategy", "'" + w.strategy + "' is not supported for weights (channel, group)");
  if (w.dynamic) rd.fail(gpath + ".weights.dynamic", "dynamic weight quantization is not supported");
  s.weight_bits = w.num_bits;
  s.weight_symmetric = w.symmetric;
  s.group_size = w.group_size;
  if (format == "pack-quantized") {
    try {
      check_ct_pack_bits(w.num_bits);
    } catch (const Error& e) {
      rd.fail(gpath + ".weights.num_bits", e.what());
    }
  } else if (w.num_bits < 2 || w.num_bits > 8) {
    rd.fail(gpath + ".weights.num_bits", std::to_string(w.num_bits) + " is not supported (2..8)");
  }
  s.activation_bits = 16;
  if (has(g, "input_activations") && !g["input_activations"].is_null()) {
    const std::string apath = gpath + ".input_activations";
    const ParsedArgs a = parse_args(rd, g["input_activations"], apath);
    if (a.strategy != "token")
      rd.fail(apath + ".strategy", "'" + a.strategy + "' is not supported for activations (token)");
    if (!a.dynamic) rd.fail(apath + ".dynamic", "static activation quantization is not supported (dynamic per token only)");
    if (a.num_bits < 2 || a.num_bits > 8) rd.fail(apath + ".num_bits", std::to_string(a.num_bits) + " is not supported (2..8)");
    s.activation_bits = a.num_bits;
    s.activation_symmetric = a.symmetric;
    s.activation_dynamic = true;
  }

  if (has(qc, "transform_config") && !qc["transform_config"].is_null()) {
    const std::string tpath = root + ".transform_config";
    const json& tc = rd.object(qc["transform_config"], tpath);
    rd.only_keys(tc, tpath, {"config_groups"});
    if (has(tc, "config_groups")) {
      const json& tg = rd.object(tc["config_groups"], tpath + ".config_groups");
      for (auto it = tg.begin(); it != tg.end(); ++it) {
        const std::string p = tpath + ".config_groups." + it.key();
        const json& t = rd.object(it.value(), p);
        rd.only_keys(t, p, {"type", "apply", "randomize", "requires_grad", "head_dim", "precision"});
        CtTransform x;
        x.name = it.key();
        if (!has(t, "type")) rd.fail(p + ".type", "missing");
        x.type = rd.string(t["type"], p + ".type");
        if (!kTransformTypes.count(x.type))
          rd.fail(p + ".type", "'" + x.type + "' is not supported (hadamard, random-hadamard)");
        if (has(t, "randomize") && rd.boolean(t["randomize"], p + ".randomize"))
          rd.fail(p + ".randomize", "randomized (permuted) transforms are not supported");
        if (has(t, "requires_grad")) rd.boolean(t["requires_grad"], p + ".requires_grad");
        if (has(t, "precision") && !t["precision"].is_null()) rd.string(t["precision"], p + ".precision");
        if (has(t, "head_dim") && !t["head_dim"].is_null()) {
          x.head_dim = rd.integer(t["head_dim"], p + ".head_dim");
          if (x.head_dim <= 0) rd.fail(p + ".head_dim", "must be positive or null");
        }
        if (!has(t, "apply")) rd.fail(p + ".apply", "missing");
        if (!t["apply"].is_array()) rd.fail(p + ".apply", "expected a list");
        for (size_t i = 0; i < t["apply"].size(); ++i) {
          const std::string ap = p + ".apply[" + std::to_string(i) + "]";
          const json& a = rd.object(t["apply"][i], ap);
          rd.only_keys(a, ap, {"targets", "location", "inverse", "ignore"});
          CtTransformArgs args;
          if (!has(a, "targets")) rd.fail(ap + ".targets", "missing");
          args.targets = rd.strings(a["targets"], ap + ".targets");
          if (args.targets.empty()) rd.fail(ap + ".targets", "empty");
          if (!has(a, "location")) rd.fail(ap + ".location", "missing");
          args.location = rd.string(a["location"], ap + ".location");
          if (!kLocations.count(args.location))
            rd.fail(ap + ".location", "'" + args.location +
                                          "' is not one of input, output, weight_input, weight_output, q_attn, k_cache");
          if (has(a, "inverse")) args.inverse = rd.boolean(a["inverse"], ap + ".inverse");
          if (has(a, "ignore") && !a["ignore"].is_null()) args.ignore = rd.strings(a["ignore"], ap + ".ignore");
          x.apply.push_back(std::move(args));
        }
        if (x.apply.empty()) rd.fail(p + ".apply", "empty");
        s.transforms.push_back(std::move(x));
      }
    }
  }

  s.format = format == auto_format(s) ? "" : format;
  try {
    validate_ct_scheme(s);
  } catch (const Error& e) {
    rd.fail(root, e.what());
  }
  return s;
}

}  // namespace respin
