// Export of a calibration run (see export.h and docs/export.md).
#include "core/export/export.h"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>
#include <fcntl.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstring>
#include <algorithm>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/calib/calibrate.h"
#include "core/export/online_sidecar.h"
#include "core/export/pack.h"
#include "core/io/atomic_file.h"
#include "core/io/model_config.h"
#include "core/io/model_folder.h"
#include "core/util/error.h"
#include "core/util/version.h"
#include "core/util/fs.h"

namespace fs = std::filesystem;

namespace respin {

namespace {

using nlohmann::json;

at::ScalarType scalar_of(DType d) {
  switch (d) {
    case DType::F32: return at::kFloat;
    case DType::F16: return at::kHalf;
    case DType::BF16: return at::kBFloat16;
    case DType::I32: return at::kInt;
    case DType::I64: return at::kLong;
    case DType::I8: return at::kChar;
    default: throw Error(std::string("export: unsupported tensor dtype ") + dtype_name(d));
  }
}

constexpr const char* kModelIndexFile = "model.safetensors.index.json";

const char* torch_dtype_name(DType d) {
  return d == DType::F32 ? "float32" : d == DType::F16 ? "float16" : "bfloat16";
}

std::string mib(uint64_t bytes) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f MiB", bytes / 1048576.0);
  return buf;
}

std::string number_text(double v) {
  std::ostringstream s;
  s << v;
  return s.str();
}

std::string quantizer_text(const QuantizerRecord& q) {
  std::string t = std::to_string(q.bits) + "-bit " + (q.symmetric ? "symmetric" : "asymmetric");
  if (q.group_size > 0) t += ", groups of " + std::to_string(q.group_size);
  if (q.clip_ratio != 1.0) t += ", clip " + number_text(q.clip_ratio);
  return t;
}

// One file of the export: either text or a safetensors file of named tensors.
struct TensorFile {
  std::string name;
  std::vector<std::pair<std::string, at::Tensor>> tensors;  // CPU, contiguous, in their file dtype
  std::map<std::string, std::string> metadata{{"format", "pt"}};
  uint64_t bytes() const {
    uint64_t n = 8 + 64;  // header length + "__metadata__"
    for (const auto& [name, t] : tensors) n += static_cast<uint64_t>(t.numel()) * t.element_size() + name.size() + 96;
    return n;
  }
};
struct TextFile {
  std::string name;
  std::string contents;
};

DType dtype_of(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat: return DType::F32;
    case at::kHalf: return DType::F16;
    case at::kBFloat16: return DType::BF16;
    case at::kInt: return DType::I32;
    case at::kLong: return DType::I64;
    case at::kChar: return DType::I8;
    default: throw Error("export: unexpected tensor dtype");
  }
}

void write_tensor_file(const fs::path& dir, const TensorFile& f) {
  std::vector<TensorView> views;
  for (const auto& [name, t] : f.tensors) views.push_back(TensorView{name, dtype_of(t), t.sizes().vec(), t.data_ptr()});
  write_safetensors((dir / f.name).string(), views, f.metadata);
}

// A floating-point tensor in the file dtype; one that overflows it (float16) is an error.
at::Tensor in_file_dtype(const at::Tensor& t, DType dtype, const std::string& name) {
  at::Tensor out = t.detach().to(at::kCPU, scalar_of(dtype)).contiguous();
  if (dtype != DType::F32 && !at::isfinite(out).all().item<bool>())
    throw Error("tensor '" + name + "' does not fit " + torch_dtype_name(dtype) + " (overflows to infinity); export with --dtype bf16 or f32");
  return out;
}

// The unquantized tensors of a model in save_model's order; `linear` is called for every decoder
// Linear weight instead of storing it (it appends what the format stores for it).
void model_tensors(const ModelConfig& c, const ModelWeights& w, DType dtype, TensorFile& out,
                   const std::function<void(int layer, int index, const std::string& prefix, const at::Tensor&)>& linear) {
  auto add = [&](const std::string& name, const at::Tensor& t) {
    if (t.defined()) out.tensors.emplace_back(name, in_file_dtype(t, dtype, name));
  };
  add("model.embed_tokens.weight", w.embed_tokens);
  for (size_t i = 0; i < w.layers.size(); ++i) {
    const LayerWeights& L = w.layers[i];
    const std::string p = "model.layers." + std::to_string(i) + ".";
    const int li = static_cast<int>(i);
    add(p + "input_layernorm.weight", L.input_norm);
    linear(li, 0, p + "self_attn.q_proj", L.q_proj);
    add(p + "self_attn.q_proj.bias", L.q_bias);
    linear(li, 1, p + "self_attn.k_proj", L.k_proj);
    add(p + "self_attn.k_proj.bias", L.k_bias);
    linear(li, 2, p + "self_attn.v_proj", L.v_proj);
    add(p + "self_attn.v_proj.bias", L.v_bias);
    linear(li, 3, p + "self_attn.o_proj", L.o_proj);
    add(p + "self_attn.o_proj.bias", L.o_bias);
    add(p + "post_attention_layernorm.weight", L.post_attention_norm);
    linear(li, 4, p + "mlp.gate_proj", L.gate_proj);
    add(p + "mlp.gate_proj.bias", L.gate_bias);
    linear(li, 5, p + "mlp.up_proj", L.up_proj);
    add(p + "mlp.up_proj.bias", L.up_bias);
    linear(li, 6, p + "mlp.down_proj", L.down_proj);
    add(p + "mlp.down_proj.bias", L.down_bias);
  }
  add("model.norm.weight", w.final_norm);
  if (!c.tie_word_embeddings) add("lm_head.weight", w.lm_head);
}

// ---- weight codes ----------------------------------------------------------------------------

struct LinearCodes {
  at::Tensor codes;  // int32 [out, in]: signed (symmetric) or unsigned (asymmetric) codes
  at::Tensor zero;   // int32 [out, G]: asymmetric zero points (all 0 when symmetric)
};

// q = round(w / scale) + zero, checked: w / scale + zero is within 1e-3 of q (plus, for a weight
// stored in 16 bits, that dtype's rounding of (q - zero) * scale: a bfloat16 run holds its
// fake-quantized weights in bfloat16, docs/methods.md 1.9), q and zero lie in the grid's range,
// and (q - zero) * scale, rounded to the stored dtype, gives w back bit for bit.
LinearCodes recover_codes(const at::Tensor& w_in, const WeightQuantParams& grid, const QuantizerRecord& spec,
                          DType stored, const std::string& name, const std::string& source) {
  const at::Tensor w = w_in.detach().to(at::kCPU, at::kFloat).contiguous();
  // Unit roundoff of the stored dtype: |stored - exact| <= u |exact|, and exact / scale = q - zero.
  const double u = stored == DType::BF16 ? std::ldexp(1.0, -8) : stored == DType::F16 ? std::ldexp(1.0, -11) : 0.0;
  const at::ScalarType stored_type = scalar_of(stored);
  const double widest_code = std::ldexp(1.0, spec.bits) - 1;
  if (u * widest_code >= 0.5 - 1e-3)
    throw Error("weight '" + name + "' in " + source + ": " + std::to_string(spec.bits) + "-bit codes are not recoverable from a " +
                dtype_name(stored) + " weight (its rounding can move w / scale by half a step); calibrate with " +
                "--precision float32 to export them");
  const int64_t out = w.size(0), in = w.size(1);
  const at::Tensor scale = grid.scale.to(at::kCPU, at::kFloat).contiguous();
  const at::Tensor zero = grid.zero.to(at::kCPU, at::kFloat).contiguous();
  const int64_t G = scale.size(1);
  if (scale.dim() != 2 || scale.size(0) != out || G < 1 || in % G != 0 || !zero.sizes().equals(scale.sizes()))
    throw Error(source + ": the grid of '" + name + "' does not fit its weight [" + std::to_string(out) + ", " +
                std::to_string(in) + "]");
  if (spec.group_size > 0 ? G != in / spec.group_size : G != 1)
    throw Error(source + ": the grid of '" + name + "' has " + std::to_string(G) + " groups; the run's weight group size " +
                std::to_string(spec.group_size) + " implies " + std::to_string(spec.group_size > 0 ? in / spec.group_size : 1));
  if (!(scale > 0).all().item<bool>() || !at::isfinite(scale).all().item<bool>())
    throw Error(source + ": the grid of '" + name + "' has a scale that is not a positive finite number");
  const double lo = spec.symmetric ? -std::ldexp(1.0, spec.bits - 1) : 0.0;
  const double hi = spec.symmetric ? std::ldexp(1.0, spec.bits - 1) - 1 : std::ldexp(1.0, spec.bits) - 1;
  if (!at::equal(zero, at::round(zero)) || (spec.symmetric ? !(zero == 0).all().item<bool>()
                                                            : !((zero >= 0) & (zero <= hi)).all().item<bool>()))
    throw Error(source + ": the zero points of '" + name + "' are not integers in the " + std::to_string(spec.bits) +
                "-bit " + (spec.symmetric ? "symmetric grid (all 0)" : "asymmetric range [0, " + number_text(hi) + "]"));
  const at::Tensor s3 = scale.unsqueeze(-1), z3 = zero.unsqueeze(-1);
  const at::Tensor x = w.reshape({out, G, in / G}) / s3 + z3;
  const at::Tensor q = at::round(x);
  auto where = [&](const at::Tensor& bad) {
    const int64_t flat = bad.reshape({-1}).to(at::kInt).argmax().item<int64_t>();
    return "row " + std::to_string(flat / in) + ", column " + std::to_string(flat % in);
  };
  const at::Tensor off = (x - q).abs();
  const at::Tensor allowed = 1e-3 + u * (q - z3).abs();
  if ((off > allowed).any().item<bool>())
    throw Error("weight '" + name + "' in " + source + " is not on its grid from weight_grids.safetensors: w / scale + zero is " +
                number_text(off.max().item<double>()) + " away from an integer at " + where(off > allowed) +
                " (model/ and the grids do not belong together)");
  const at::Tensor outside = (q < lo) | (q > hi);
  if (outside.any().item<bool>())
    throw Error("weight '" + name + "' in " + source + ": code outside the " + std::to_string(spec.bits) + "-bit range [" +
                number_text(lo) + ", " + number_text(hi) + "] at " + where(outside));
  const at::Tensor back = ((q - z3) * s3).reshape({out, in}).to(stored_type).to(at::kFloat);
  if (!at::equal(back, w))
    throw Error("weight '" + name + "' in " + source + ": (q - zero) * scale does not give the stored weight back bit for bit at " +
                where(back != w));
  return {q.reshape({out, in}).to(at::kInt).contiguous(), zero.to(at::kInt).contiguous()};
}

std::vector<int32_t> to_vector(const at::Tensor& t) {
  const at::Tensor c = t.to(at::kInt).contiguous();
  return std::vector<int32_t>(c.data_ptr<int32_t>(), c.data_ptr<int32_t>() + c.numel());
}
template <typename T>
at::Tensor from_vector(const std::vector<T>& v, std::vector<int64_t> shape, at::ScalarType st) {
  return at::from_blob(const_cast<T*>(v.data()), shape, st).clone();
}

// ---- what goes where ----------------------------------------------------------------------------

QuantConfig run_quant(const RunRecord& r) {
  QuantConfig q;
  const auto spec = [](const QuantizerRecord& x) { return QuantSpec{x.bits, x.symmetric, x.group_size, x.clip_ratio}; };
  q.weight = spec(r.quantizers.weight);
  q.weight_mse_clip = r.quantizers.weight_mse_clip;
  q.activation = spec(r.quantizers.activation);
  q.kv = spec(r.quantizers.kv);
  return q;
}

// The compressed-tensors scheme of a run's weights (and of its activations when `activations`).
CtScheme ct_scheme(const RunRecord& r, bool activations) {
  CtScheme s;
  s.weight_bits = r.quantizers.weight.bits;
  s.weight_symmetric = r.quantizers.weight.symmetric;
  s.group_size = r.quantizers.weight.group_size;
  if (activations && r.quantizers.activation.bits != 16) {
    s.activation_bits = r.quantizers.activation.bits;
    s.activation_symmetric = r.quantizers.activation.symmetric;
  }
  return s;
}

// Whether quantization_config can state the activation quantizer exactly (per token, dynamic,
// no clip, the same on o_proj's input, and symmetric unless the int8 W8A8 path takes asymmetric).
bool activations_expressible(const RunRecord& r) {
  const QuantizerRecord& a = r.quantizers.activation;
  if (a.bits == 16) return true;
  CtScheme probe = ct_scheme(r, true);
  probe.activation_symmetric = true;
  const bool int8_path = ct_format(probe) == "int-quantized";
  return a.group_size == 0 && a.clip_ratio == 1.0 && r.quantizers.o_proj_activation_group == 0 &&
         (a.symmetric || int8_path);
}

// Hard refusals: what compressed-tensors cannot hold at all (no sidecar helps).
void check_ct_weights(const RunRecord& r) {
  const QuantizerRecord& w = r.quantizers.weight;
  if (w.bits == 16)
    throw Error("compressed-tensors export needs quantized weights; this run kept 16-bit weights (use --format hf)");
  const CtScheme s = ct_scheme(r, true);
  if (ct_format(s) == "pack-quantized") {
    try {
      check_ct_pack_bits(w.bits);
    } catch (const Error& e) {
      throw Error(std::string(e.what()) + "; this run's weights are " + std::to_string(w.bits) + "-bit (use --format hf)");
    }
  }
}

std::string readme_text(const RunRecord& rec, const std::string& run_dir, const ExportResult& res, const OnlineSidecar& side,
                        bool sidecar) {
  const json ops = online_operations(side);
  std::vector<std::string> required, optional;
  for (const json& op : ops)
    (op["required"].get<bool>() ? required : optional)
        .push_back(op["site"].get<std::string>() + ": " + op["op"].get<std::string>() +
                   (op.contains("quantizer") ? " (" + op["quantizer"].get<std::string>() + ")" : ""));
  std::ostringstream o;
  o << "# " << rec.config.label() << " (" << res.format << ")\n\n";
  o << "Exported by respin " << RESPIN_VERSION_STRING << " from the calibration run `" << run_dir << "` (method `"
    << method_name(rec.config.method) << "`, weights by " << rec.quantizers.weight_quantizer << ", model `"
    << rec.model.folder << "`).\n";
  o << "Run's perplexity: full precision " << rec.results.fp_perplexity << ", quantized " << rec.results.quantized_perplexity
    << " (" << rec.results.eval_windows << " windows x " << rec.results.eval_seq_len << " tokens of "
    << rec.results.eval_data.source << ").\n\n";
  o << "The format is described in the workbench's docs/export.md.\n\n";
  if (res.format == "hf") {
    o << "## Files\n\n"
      << "- `config.json`, `model.safetensors` (with `model.safetensors.index.json`), `generation_config.json`, "
         "tokenizer files: an ordinary `"
      << rec.model.architecture << "` folder (every offline rotation fused, weights dequantized from their grid).\n"
      << "- `respin_online.json`, `" << kOnlineSidecarTensors
      << "`: the online operations and their tensors (docs/export.md section 2); model loaders do not open them.\n\n";
  } else {
    o << "## Files\n\n"
      << "- `config.json` with a compressed-tensors `quantization_config` (`" << res.ct_format
      << "`), `model.safetensors` (with `model.safetensors.index.json`) with packed integer weights; weight scales "
         "stored as " << res.scale_dtype << ".\n";
    if (sidecar)
      o << "- `respin_online.json`, `" << kOnlineSidecarTensors
        << "`: what compressed-tensors cannot express (docs/export.md section 2); model loaders do not open them.\n";
    o << "\n";
  }
  o << "## Which runtimes can run it\n\n";
  o << "- The workbench: `respin eval --model <this folder> --text-file F --seq-len " << rec.results.eval_seq_len
    << " --max-windows " << rec.results.eval_windows
    << "` (F: the run's evaluation text) applies everything and reproduces the run's quantized perplexity (exactly with "
       "--dtype f32; bf16 rounds the stored floating-point tensors).\n";
  if (res.format == "hf") {
    if (required.empty())
      o << "- Hugging Face transformers (and any runtime that loads the architecture) computes the same float function "
           "from `model.safetensors` alone. Without the activation/KV quantizers of `respin_online.json` it is the "
           "weight-quantized model, not the fully quantized model the run evaluated.\n";
    else
      o << "- Hugging Face transformers loads `model.safetensors`, but **without the required online operations it "
           "computes a different function** (wrong outputs). A runtime must implement `respin_online.json` "
           "(docs/export.md section 2) to run this model.\n";
  } else if (!sidecar) {
    o << "- vLLM (compressed-tensors; see docs/export.md 1.7 for which schemes a vLLM version runs) and transformers "
         "with compressed-tensors: everything the run computed is in `quantization_config`.\n";
  } else if (!required.empty()) {
    o << "- **Not runnable correctly by vLLM or transformers**: they read `quantization_config` but ignore "
         "`respin_online.json`, and its required operations change the float function. Only runtimes that implement "
         "docs/export.md section 2 (the workbench) run this folder.\n";
  } else {
    o << "- vLLM / transformers with compressed-tensors load the weights and `quantization_config` and compute the "
         "right float function, but ignore `respin_online.json`: the quantizers listed below are not applied "
         "(or applied with the runtime's own rules), so it is not the quantized model the run evaluated.\n";
  }
  if (sidecar) {
    o << "\n## Online operations (`respin_online.json`)\n\n";
    o << "Required (the float function changes without them):" << (required.empty() ? " none" : "") << "\n\n";
    for (const std::string& s : required) o << "- " << s << "\n";
    o << "\nOptional (they define the quantized model the run evaluated):" << (optional.empty() ? " none" : "") << "\n\n";
    for (const std::string& s : optional) o << "- " << s << "\n";
  }
  if (!res.gaps.empty()) {
    o << "\n## What compressed-tensors cannot express (in the sidecar)\n\n";
    for (const std::string& g : res.gaps) o << "- " << g << "\n";
  }
  return o.str();
}

// A unique temporary sibling, removed with its contents unless committed.
class TempFolder {
 public:
  explicit TempFolder(const fs::path& final_dir) {
    std::string tmpl = (final_dir.parent_path() / ("." + final_dir.filename().string() + ".partial-XXXXXX")).string();
    if (!::mkdtemp(tmpl.data()))
      throw Error(final_dir.parent_path().string() + ": cannot create a temporary folder for the export: " +
                  std::strerror(errno));
    path_ = tmpl;
    ::chmod(path_.c_str(), 0755);
  }
  ~TempFolder() {
    if (committed_) return;
    remove_tree(path_.string());
  }
  TempFolder(const TempFolder&) = delete;
  TempFolder& operator=(const TempFolder&) = delete;
  const fs::path& path() const { return path_; }
  // Renames into place; never replaces an existing path (not even an empty folder).
  void commit(const fs::path& final_dir) {
#ifdef RENAME_NOREPLACE
    if (::renameat2(AT_FDCWD, path_.c_str(), AT_FDCWD, final_dir.c_str(), RENAME_NOREPLACE) == 0) {
      committed_ = true;
      return;
    }
    if (errno != EINVAL && errno != ENOSYS)
      throw Error(final_dir.string() + ": cannot move the export into place: " + std::strerror(errno));
#endif
    std::error_code ec;
    if (fs::symlink_status(final_dir, ec).type() != fs::file_type::not_found)
      throw Error(final_dir.string() + ": appeared while exporting; not replaced");
    if (::rename(path_.c_str(), final_dir.c_str()) != 0)
      throw Error(final_dir.string() + ": cannot move the export into place: " + std::strerror(errno));
    committed_ = true;
  }

 private:
  fs::path path_;
  bool committed_ = false;
};

// Extra tokenizer and generation files of the original model folder, when it is still the model
// the run was made from (same identity) and its tokenizer.json is the run's.
std::vector<TextFile> original_extras(const RunRecord& rec, const std::string& run_tokenizer) {
  std::vector<TextFile> out;
  try {
    if (rec.model.folder.empty() || !fs::is_directory(rec.model.folder)) return out;
    ModelFolder f = ModelFolder::open(rec.model.folder);
    if (f.identity_sha256() != rec.model.sha256 || f.tokenizer_path.empty() ||
        read_text_file(f.tokenizer_path) != run_tokenizer)
      return out;
    for (const char* name : {"tokenizer_config.json", "special_tokens_map.json", "tokenizer.model", "generation_config.json"}) {
      const fs::path p = fs::path(f.dir) / name;
      if (fs::is_regular_file(p)) out.push_back({name, read_text_file(p.string())});
    }
  } catch (const Error&) {
    out.clear();  // the original is gone or damaged: the export does without its extras
  }
  return out;
}

}  // namespace

// ---------------------------------------------------------------------------------------------

const char* export_format_name(ExportFormat f) { return f == ExportFormat::Hf ? "hf" : "compressed-tensors"; }

ExportFormat export_format_from_name(const std::string& name) {
  if (name == "hf") return ExportFormat::Hf;
  if (name == "compressed-tensors") return ExportFormat::CompressedTensors;
  throw Error("unknown export format '" + name + "' (hf, compressed-tensors)");
}

DType export_dtype_from_name(const std::string& name) {
  if (name == "bf16") return DType::BF16;
  if (name == "f16") return DType::F16;
  if (name == "f32") return DType::F32;
  throw Error("unknown export dtype '" + name + "' (bf16, f16, f32)");
}

std::vector<std::string> compressed_tensors_gaps(const RunRecord& r) {
  std::vector<std::string> gaps;
  if (r.online.skip_correction)
    gaps.push_back("ReSpinQuant's rank-" + std::to_string(r.method.rank) +
                   " skip corrections (Q, M) on both residual adds of every layer");
  if (r.online.heads_hadamard) gaps.push_back("QuaRot's online Hadamard across heads on the o_proj input");
  if (r.online.qk_hadamard) gaps.push_back("R3, the online Hadamard on queries and keys after RoPE");
  if (r.quantizers.kv.bits != 16)
    gaps.push_back("KV-cache quantization (" + quantizer_text(r.quantizers.kv) + ", per token per head)");
  const QuantizerRecord& a = r.quantizers.activation;
  if (a.bits != 16) {
    CtScheme probe = ct_scheme(r, true);
    probe.activation_symmetric = true;
    if (!a.symmetric && ct_format(probe) != "int-quantized")
      gaps.push_back("asymmetric " + std::to_string(a.bits) + "-bit activations (runnable only on the int8 W8A8 path)");
    if (a.clip_ratio != 1.0) gaps.push_back("activation clip ratio " + number_text(a.clip_ratio));
    if (a.group_size > 0)
      gaps.push_back("activations quantized per group of " + std::to_string(a.group_size) + " channels");
    else if (r.quantizers.o_proj_activation_group > 0)
      gaps.push_back("o_proj input quantized per group of " + std::to_string(r.quantizers.o_proj_activation_group) +
                     " channels (per head)");
  }
  return gaps;
}

void check_free_space(const std::string& dir, uint64_t needed, uint64_t available) {
  if (needed <= available) return;
  throw Error(dir + ": not enough free space for the export: needs " + std::to_string(needed) + " bytes (" + mib(needed) +
              "), " + std::to_string(available) + " bytes (" + mib(available) + ") available");
}

ExportResult export_run(const std::string& run_dir, const std::string& out_dir, const ExportOptions& o) {
  const auto t0 = std::chrono::steady_clock::now();
  c10::NoGradGuard no_grad;
  if (o.dtype != DType::F32 && o.dtype != DType::F16 && o.dtype != DType::BF16)
    throw Error(std::string("export dtype must be f32, f16 or bf16, not ") + dtype_name(o.dtype));
  if (out_dir.empty()) throw Error("export: an output folder is required");
  std::error_code ec;
  if (fs::symlink_status(out_dir, ec).type() != fs::file_type::not_found)
    throw Error(out_dir + ": already exists; export writes a new folder and never writes into an existing one");
  fs::path final_dir = fs::absolute(out_dir).lexically_normal();
  if (final_dir.filename().empty()) final_dir = final_dir.parent_path();  // "out/"
  const fs::path parent = final_dir.parent_path();
  if (!fs::is_directory(parent)) throw Error(parent.string() + ": no such directory for the export");
  if (!is_run_dir(run_dir)) throw Error(run_dir + ": not a run directory (no run.json)");

  // What the run is, and whether the format can say it, before any heavy work.
  const bool ct = o.format == ExportFormat::CompressedTensors;
  RunRecord rec;
  {
    const std::string run_json = (fs::path(run_dir) / "run.json").string();
    json j;
    try {
      j = json::parse(read_text_file(run_json));
    } catch (const json::exception& e) {
      throw Error(run_json + ": not valid JSON (" + e.what() + ")");
    }
    rec = run_record_from_json(j, run_json);
  }
  ExportResult res;
  res.format = export_format_name(o.format);
  res.dir = final_dir.string();
  if (ct) {
    check_ct_weights(rec);
    res.gaps = compressed_tensors_gaps(rec);
    if (!res.gaps.empty() && !o.allow_sidecar) {
      std::string list;
      for (const std::string& g : res.gaps) list += (list.empty() ? "" : "; ") + g;
      throw Error("compressed-tensors cannot express this " + std::string(method_name(rec.config.method)) + " run: " + list +
                  " (--allow-sidecar adds them as respin_online.json, which only runtimes implementing docs/export.md "
                  "section 2 apply; or use --format hf)");
    }
  }
  const bool sidecar = !ct || !res.gaps.empty();

  LoadedRun run = load_run(run_dir);
  const ModelConfig& mc = run.model.config();
  const ModelWeights& w = run.model.weights();
  const std::string model_file = (fs::path(run_dir) / "model" / "model.safetensors").string();
  // What each weight is stored as (float32, or bfloat16 for a bfloat16 run).
  std::map<std::string, DType> stored;
  {
    const SafetensorsFile file = SafetensorsFile::open(model_file);
    for (const TensorInfo& info : file.tensors()) stored[info.name] = info.dtype;
  }

  // The online part.
  OnlineSidecar side =
      make_online_sidecar(mc, method_name(rec.config.method), run.online, run_quant(rec), run.o_proj_group);
  side.weight_quantizer = rec.quantizers.weight_quantizer;
  side.weight_storage = ct ? "compressed-tensors" : "dequantized";
  const std::pair<const std::vector<ResidualCorrection>*, std::pair<std::vector<std::string>*, std::vector<std::string>*>>
      adds[] = {{&run.skip.attn_rank_r, {&side.attn_q, &side.attn_m}}, {&run.skip.mlp_rank_r, {&side.mlp_q, &side.mlp_m}}};
  for (int a = 0; a < 2; ++a) {
    const char* add = a == 0 ? "attn" : "mlp";
    const std::vector<ResidualCorrection>& v = *adds[a].first;
    for (int64_t i = 0; i < static_cast<int64_t>(v.size()); ++i) {
      const bool on = v[static_cast<size_t>(i)].rank > 0;
      if (on) {
        if (side.skip_rank >= 0 && side.skip_rank != v[static_cast<size_t>(i)].rank)
          throw Error(run_dir + ": skip corrections of different ranks; the export format has one rank");
        side.skip_rank = v[static_cast<size_t>(i)].rank;
      }
      adds[a].second.first->push_back(on ? std::string(add) + "_skip." + std::to_string(i) + ".q" : "");
      adds[a].second.second->push_back(on ? std::string(add) + "_skip." + std::to_string(i) + ".m" : "");
    }
  }
  if (side.skip_rank < 0) side.attn_q = side.attn_m = side.mlp_q = side.mlp_m = {};
  side.source = SourceRunInfo{fs::absolute(run_dir).lexically_normal().string(),
                              rec.config.label(),
                              rec.results.fp_perplexity,
                              rec.results.quantized_perplexity,
                              run.eval_seq_len,
                              run.eval_windows,
                              1,  // windows per forward: always one (core/eval/perplexity.h)
                              rec.results.eval_data.source,
                              rec.results.eval_data.bytes,
                              rec.results.eval_data.sha256};
  for (const json& op : online_operations(side))
    if (op["required"].get<bool>())
      res.required_online.push_back(op["site"].get<std::string>() + ": " + op["op"].get<std::string>());

  // The files.
  std::vector<TensorFile> tensor_files;
  std::vector<TextFile> text_files;
  ModelConfig saved = mc;
  saved.torch_dtype = torch_dtype_name(o.dtype);
  json config = json::parse(model_config_to_json(saved));

  TensorFile model;
  model.name = "model.safetensors";
  if (!ct) {
    model_tensors(mc, w, o.dtype, model, [&](int, int, const std::string& prefix, const at::Tensor& t) {
      model.tensors.emplace_back(prefix + ".weight", in_file_dtype(t, o.dtype, prefix + ".weight"));
    });
  } else {
    const ModelWeightGrids grids = load_weight_grids(run_dir, mc);
    if (grids.empty()) throw Error(run_dir + ": weight_grids.safetensors is missing (needed for compressed-tensors)");
    CtScheme scheme = ct_scheme(rec, activations_expressible(rec));
    const std::string fmt = ct_format(scheme);
    res.ct_format = fmt;
    // Scales in the file dtype only where every one of them is exact there.
    bool scales_exact = true;
    const at::ScalarType fst = scalar_of(o.dtype);
    for (const auto& layer : grids)
      for (const WeightQuantParams& g : layer)
        scales_exact = scales_exact && at::equal(g.scale.to(fst).to(at::kFloat), g.scale.to(at::kFloat));
    const at::ScalarType scale_type = scales_exact ? fst : at::kFloat;
    res.scale_dtype = dtype_name(scales_exact ? o.dtype : DType::F32);
    const QuantizerRecord& wq = rec.quantizers.weight;
    model_tensors(mc, w, o.dtype, model, [&](int layer, int index, const std::string& prefix, const at::Tensor& t) {
      const WeightQuantParams& g = grids[static_cast<size_t>(layer)][static_cast<size_t>(index)];
      const auto st = stored.find(prefix + ".weight");
      const LinearCodes c = recover_codes(t, g, wq, st == stored.end() ? DType::F32 : st->second, prefix + ".weight", model_file);
      const int64_t out = t.size(0), in = t.size(1), G = g.scale.size(1);
      const std::vector<int32_t> codes = to_vector(c.codes), zero = to_vector(c.zero);
      const at::Tensor scale = g.scale.to(at::kCPU, at::kFloat).to(scale_type).contiguous();
      if (fmt == "pack-quantized") {
        const std::vector<int32_t> packed = pack_int_rows(codes, out, in, wq.bits, wq.symmetric);
        model.tensors.emplace_back(prefix + ".weight_packed",
                                   from_vector(packed, {out, ct_packed_cols(in, wq.bits)}, at::kInt));
        model.tensors.emplace_back(prefix + ".weight_scale", scale);
        if (!wq.symmetric) {
          const std::vector<int32_t> zp = pack_zero_points(zero, out, G, wq.bits);
          model.tensors.emplace_back(prefix + ".weight_zero_point",
                                     from_vector(zp, {ct_packed_cols(out, wq.bits), G}, at::kInt));
        }
        model.tensors.emplace_back(prefix + ".weight_shape", from_vector(std::vector<int64_t>{out, in}, {2}, at::kLong));
      } else {
        model.tensors.emplace_back(prefix + ".weight", from_vector(ct_int8_codes(codes, wq.bits, wq.symmetric), {out, in}, at::kChar));
        model.tensors.emplace_back(prefix + ".weight_scale", scale);
        if (!wq.symmetric)
          model.tensors.emplace_back(prefix + ".weight_zero_point",
                                     from_vector(ct_int8_codes(zero, wq.bits, false), {out, G}, at::kChar));
      }
    });
    if (run.online.down_hadamard) {
      const int64_t F = mc.intermediate_size;
      CtTransform r4;
      r4.name = "R4";
      r4.type = (F & (F - 1)) == 0 ? "hadamard" : "random-hadamard";
      CtTransformArgs args;
      args.targets = {"re:.*mlp.down_proj$"};
      args.location = "input";
      r4.apply = {args};
      scheme.transforms = {r4};
      const at::Tensor h = in_file_dtype(hadamard_dense_pm1(F), o.dtype, "R4");
      for (int64_t i = 0; i < mc.num_hidden_layers; ++i)
        model.tensors.emplace_back("model.layers." + std::to_string(i) + ".mlp.down_proj.R4_input.weight", h);
    }
    config["quantization_config"] = compressed_tensors_quantization_config(scheme);
  }
  // model.safetensors.index.json: loaders that find one open exactly the files it names (and
  // compressed-tensors' converter needs every shard in it); docs/export.md 1.1.
  {
    json weight_map = json::object();
    uint64_t total = 0;
    for (const auto& [name, t] : model.tensors) {
      weight_map[name] = model.name;
      total += static_cast<uint64_t>(t.numel()) * static_cast<uint64_t>(t.element_size());
    }
    const json index = {{"metadata", {{"total_size", total}}}, {"weight_map", weight_map}};
    text_files.push_back({kModelIndexFile, index.dump(2) + "\n"});
  }
  tensor_files.push_back(std::move(model));
  text_files.push_back({"config.json", config.dump(2) + "\n"});

  // Tokenizer and generation config.
  const std::string run_tokenizer_path = (fs::path(run_dir) / "model" / "tokenizer.json").string();
  if (!fs::is_regular_file(run_tokenizer_path)) throw Error(run_tokenizer_path + ": missing (the run's tokenizer)");
  const std::string tokenizer = read_text_file(run_tokenizer_path);
  text_files.push_back({"tokenizer.json", tokenizer});
  bool have_generation = false;
  for (TextFile& f : original_extras(rec, tokenizer)) {
    have_generation = have_generation || f.name == "generation_config.json";
    text_files.push_back(std::move(f));
  }
  if (!have_generation) {
    json g = {{"_from_model_config", true}};
    if (mc.bos_token_id) g["bos_token_id"] = *mc.bos_token_id;
    if (mc.eos_token_ids.size() == 1) g["eos_token_id"] = mc.eos_token_ids[0];
    else if (!mc.eos_token_ids.empty()) g["eos_token_id"] = mc.eos_token_ids;
    text_files.push_back({"generation_config.json", g.dump(2) + "\n"});
  }

  if (sidecar) {
    text_files.push_back({kOnlineSidecarJson, online_sidecar_to_json(side).dump(2) + "\n"});
    TensorFile t;
    t.name = side.tensor_file;
    t.tensors = online_sidecar_tensors(side, run.skip);
    tensor_files.push_back(std::move(t));
  }
  res.sidecar = sidecar;
  text_files.push_back({"README.md", readme_text(rec, side.source->run_dir, res, side, sidecar)});

  // Space, then the folder.
  std::vector<uint64_t> sizes;
  for (const TensorFile& f : tensor_files) sizes.push_back(f.bytes());
  for (const TextFile& f : text_files) sizes.push_back(f.contents.size());
  check_free_space(parent.string(), space_needed(sizes, allocation_unit(parent.string())),
                   available_bytes(parent.string()));

  TempFolder tmp(final_dir);
  for (const TensorFile& f : tensor_files) write_tensor_file(tmp.path(), f);
  for (const TextFile& f : text_files) write_file_atomically((tmp.path() / f.name).string(), f.contents);
  tmp.commit(final_dir);

  for (const DirEntry& e : list_directory(final_dir.string())) {
    res.files.push_back(e.name);
    res.bytes += e.size;
  }
  std::sort(res.files.begin(), res.files.end());
  res.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return res;
}

}  // namespace respin
