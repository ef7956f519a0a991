// Calibration pipeline and run directories (see calibrate.h).
#include "core/calib/calibrate.h"

#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <torch/version.h>
#include <c10/core/GradMode.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <map>
#include <optional>

#include "core/data/corpus.h"
#include "core/eval/perplexity.h"
#include "core/io/atomic_file.h"
#include "core/io/model_folder.h"
#include "core/io/safetensors.h"
#include "core/methods/gptq_model.h"
#include "core/methods/methods.h"
#include "core/methods/rotation_training.h"
#include "core/model/weights.h"
#include "core/rotation/fusion.h"
#include "core/rotation/hadamard_transform.h"
#include "core/stats/activation_stats.h"
#include "core/tokenizer/tokenizer.h"
#include "core/util/error.h"
#include "core/util/error_message.h"
#include "core/util/threads.h"
#include "core/util/version.h"
#include "kernels/hadamard.h"

namespace fs = std::filesystem;

namespace respin {

namespace {

using Clock = std::chrono::steady_clock;

int64_t peak_rss_bytes() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  return static_cast<int64_t>(ru.ru_maxrss) * 1024;
}

std::string now_iso8601() {
  std::time_t t = std::time(nullptr);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&t));
  return buf;
}

// [N, T] windows of consecutive tokens (the tail is dropped).
at::Tensor windows_of(const std::vector<int>& ids, int64_t seq_len, int64_t max_windows, const std::string& what) {
  const int64_t available = static_cast<int64_t>(ids.size()) / seq_len;
  if (available < 1)
    throw Error(what + " has " + std::to_string(ids.size()) + " tokens, fewer than one window of " +
                std::to_string(seq_len));
  const int64_t n = max_windows > 0 ? std::min(available, max_windows) : available;
  std::vector<int64_t> v(ids.begin(), ids.begin() + n * seq_len);
  return at::tensor(v, at::kLong).view({n, seq_len});
}

void save_tensors(const std::string& path, const std::vector<std::pair<std::string, at::Tensor>>& tensors) {
  std::vector<at::Tensor> keep;
  std::vector<TensorView> views;
  for (const auto& [name, t] : tensors) {
    keep.push_back(t.detach().to(at::kCPU, at::kFloat).contiguous());
    views.push_back(TensorView{name, DType::F32, keep.back().sizes().vec(), keep.back().data_ptr()});
  }
  write_safetensors(path, views, {{"format", "pt"}});
}

std::map<std::string, at::Tensor> load_tensors(const std::string& path) {
  SafetensorsFile f = SafetensorsFile::open(path);
  std::map<std::string, at::Tensor> out;
  for (const TensorInfo& info : f.tensors()) {
    if (info.dtype != DType::F32) throw Error(path + ": tensor '" + info.name + "' is not F32");
    out[info.name] = at::from_blob(const_cast<void*>(f.data(info)), info.shape, at::kFloat).clone();
  }
  return out;
}

nlohmann::json spec_json(const QuantSpec& s) {
  return {{"bits", s.bits}, {"symmetric", s.symmetric}, {"group_size", s.group_size}, {"clip_ratio", s.clip_ratio}};
}

class PhaseTimer {
 public:
  // `current` names the running phase for error messages (it keeps the last phase after stop()).
  PhaseTimer(CalibResult& r, std::string& current) : r_(r), current_(current) {}
  void start(const std::string& phase, RunControl* control) {
    stop();
    phase_ = phase;
    current_ = phase;
    t0_ = Clock::now();
    if (control) {
      control->check();
      ProgressEvent ev;
      ev.phase = phase;
      control->report(ev, true);
    }
  }
  void stop() {
    if (phase_.empty()) return;
    r_.phase_seconds.emplace_back(phase_, std::chrono::duration<double>(Clock::now() - t0_).count());
    phase_.clear();
  }
  double seconds(const std::string& phase) const {
    double s = 0;
    for (const auto& [p, v] : r_.phase_seconds) s += p == phase ? v : 0;
    return s;
  }

 private:
  CalibResult& r_;
  std::string& current_;
  std::string phase_;
  Clock::time_point t0_;
};

// The hook for the final model: online transforms + quantizers, optionally observed.
ActivationHook final_hook(const ModelConfig& c, at::Device device, const OnlineTransforms& online,
                          const SkipTransitions& skip, const QuantConfig& quant, int64_t o_proj_group,
                          ActivationHook observer = {}) {
  OnlineHookOptions ho;
  ho.device = device;
  ho.online = online;
  ho.skip = skip;
  ho.quant = quant;
  ho.o_proj_group = o_proj_group;
  ho.observer = std::move(observer);
  return online_hook(c, std::move(ho));
}

QuantConfig without_activation_quant(QuantConfig q) {
  q.activation.bits = 16;
  q.kv.bits = 16;
  return q;
}

// TF32 tensor-core matmuls for float32 work on CUDA while alive (the previous setting is restored).
class Tf32Scope {
 public:
  explicit Tf32Scope(bool on) : previous_(at::globalContext().allowTF32CuBLAS()) {
    at::globalContext().setAllowTF32CuBLAS(on);
  }
  ~Tf32Scope() { at::globalContext().setAllowTF32CuBLAS(previous_); }
  Tf32Scope(const Tf32Scope&) = delete;
  Tf32Scope& operator=(const Tf32Scope&) = delete;

 private:
  bool previous_;
};

CalibResult calibrate_in_phases(const CalibConfig& cfg, const std::string& out_dir, RunControl* control,
                                std::string& phase);

}  // namespace

at::Device resolve_device(const std::string& name) {
  if (name == "cpu") return at::Device(at::kCPU);
  if (name != "cuda" && name != "auto")
    throw Error("device '" + name + "' is not supported (auto, cpu or cuda)");
  if (at::hasCUDA()) return at::Device(at::kCUDA);
  if (name == "auto") return at::Device(at::kCPU);
  throw Error("device cuda requested, but libtorch " TORCH_VERSION
              " has no usable CUDA device here (a CPU-only build, or no GPU or driver)");
}

CalibResult run_calibration(const CalibConfig& cfg, const std::string& out_dir, RunControl* control) {
  // Every failure leaves with the phase it happened in ("calibration (quarot), phase 'rotate':
  // ..."), on one line (see core/util/error_message.h).
  std::string phase = "setup";
  try {
    return calibrate_in_phases(cfg, out_dir, control, phase);
  } catch (...) {
    rethrow_with_context("calibration (" + cfg.method + "), phase '" + phase + "'");
  }
}

namespace {

// Valid UTF-8 by the rule that decides whether run.json can hold it (nlohmann::json's encoder).
bool valid_utf8(const std::string& s) {
  try {
    (void)nlohmann::json(s).dump();
    return true;
  } catch (const nlohmann::json::type_error&) {
    return false;
  }
}

// Bytes outside printable ASCII as \xNN, for messages about paths that are not UTF-8.
std::string escaped(const std::string& s) {
  std::string out;
  for (unsigned char c : s) {
    if (c >= 0x20 && c < 0x7F) {
      out += static_cast<char>(c);
    } else {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02X", c);
      out += buf;
    }
  }
  return out;
}

// Everything that would otherwise fail only when the run is written, after all the work: checked
// first. run.json records paths as JSON text (UTF-8) and absolute, so that a run directory can be
// evaluated again from anywhere.
CalibConfig checked_inputs(const CalibConfig& in, const std::string& out_dir) {
  in.validate();
  if (out_dir.empty()) throw Error("calibration: an output run directory is required");
  const std::pair<const char*, const std::string*> paths[] = {
      {"--model", &in.model}, {"--out", &out_dir}, {"--calib-text", &in.calib_text}, {"--eval-text", &in.eval_text}};
  for (const auto& [what, path] : paths)
    if (!valid_utf8(*path))
      throw Error(escaped(*path) + ": " + what + " path is not valid UTF-8 (run.json records paths as UTF-8 text)");
  if (fs::symlink_status(out_dir).type() != fs::file_type::not_found)
    throw Error(out_dir + ": already exists" + (fs::is_symlink(fs::symlink_status(out_dir)) ? " (a symbolic link)" : "") +
                "; choose a new run directory (runs are never overwritten)");
  const fs::path parent = fs::absolute(out_dir).parent_path();
  if (!fs::is_directory(parent)) throw Error(parent.string() + ": no such directory for the run");
  // Whether the run directory can be created at all (a read-only mount, a directory without write
  // permission): tried for real, since access() answers yes to root on a read-only file system.
  const fs::path probe = parent / (".respin-write-check-" + std::to_string(getpid()));
  if (::mkdir(probe.c_str(), 0755) != 0)
    throw Error(parent.string() + ": cannot create the run directory here: " + std::strerror(errno));
  ::rmdir(probe.c_str());
  CalibConfig out = in;
  for (std::string* p : {&out.model, &out.calib_text, &out.eval_text})
    if (!p->empty()) *p = fs::absolute(*p).lexically_normal().string();
  return out;
}

CalibResult calibrate_in_phases(const CalibConfig& requested, const std::string& out_dir, RunControl* control,
                                std::string& phase) {
  const CalibConfig cfg = checked_inputs(requested, out_dir);

  const auto t_start = Clock::now();
  CalibResult res;
  PhaseTimer timer(res, phase);
  const Method method = method_from_name(cfg.method);
  set_compute_threads(cfg.threads);
  const at::Device device = resolve_device(cfg.device);
  // Compute precision: float32 everywhere; on CUDA the rotation learning (the long, gradient-noisy
  // part) uses TF32 tensor-core matmuls, while the reported perplexities, statistics, GPTQ and the
  // final float64 weight fusion stay in full float32/float64. Rotations and their Cayley updates
  // are float32 tensors throughout. run.json records this.
  const bool tf32_learning = device.is_cuda();

  // ---- load
  timer.start("load", control);
  ModelFolder folder = ModelFolder::open(cfg.model);
  const std::string tokenizer_path = folder.require_tokenizer();
  Tokenizer tok = Tokenizer::from_file(tokenizer_path);
  LlamaModel original = load_model(folder.dir, {at::kFloat, device});
  const ModelConfig& mc = original.config();
  const int64_t seq_len = std::min<int64_t>(cfg.seq_len, mc.max_position_embeddings);
  std::optional<Corpus> corpus;
  auto corpus_text = [&](Split s) {
    if (!corpus) corpus = Corpus::load(default_corpus_dir());
    return corpus->text_of(s);
  };
  const std::string calib_src = cfg.calib_text.empty() ? "corpus training split" : cfg.calib_text;
  const std::string eval_src = cfg.eval_text.empty() ? "corpus test split" : cfg.eval_text;
  const at::Tensor calib = with_error_context(calib_src, [&] {
    return windows_of(tok.encode(cfg.calib_text.empty() ? corpus_text(Split::Train) : read_text_file(cfg.calib_text),
                                 false),
                      seq_len, 0, "calibration text (" + calib_src + ")");
  }).to(device);
  if (calib.size(0) < cfg.samples)
    throw Error("calibration text (" + calib_src + ") has " + std::to_string(calib.size(0)) + " windows of " +
                std::to_string(seq_len) + " tokens, fewer than --samples " + std::to_string(cfg.samples));
  const at::Tensor calib_windows = calib.narrow(0, 0, cfg.samples);
  const std::vector<int> eval_ids = with_error_context(eval_src, [&] {
    return tok.encode(cfg.eval_text.empty() ? corpus_text(Split::Test) : read_text_file(cfg.eval_text), false);
  });
  if (const int64_t top = calib.max().item<int64_t>(); top >= mc.vocab_size)
    throw Error(calib_src + ": token id " + std::to_string(top) + " from " + tokenizer_path +
                " is outside the model's vocab_size " + std::to_string(mc.vocab_size) + " (" + folder.config_path + ")");
  PerplexityOptions po;
  po.seq_len = seq_len;
  po.max_windows = cfg.eval_windows;
  po.batch_size = kRunEvalBatch;

  // ---- full-precision reference
  timer.start("eval-fp", control);
  PerplexityResult fp = with_error_context("evaluating " + eval_src + " (tokenized with " + tokenizer_path + ")",
                                           [&] { return evaluate_perplexity(original, eval_ids, po, control); });
  res.fp_perplexity = fp.perplexity;
  res.eval_windows = fp.windows;

  // ---- statistics of the original model
  timer.start("stats", control);
  const at::Tensor stats_windows = calib.narrow(0, 0, std::min<int64_t>(std::max<int64_t>(cfg.stats_windows, 1), calib.size(0)));
  auto collect = [&](const LlamaModel& m) {
    c10::NoGradGuard no_grad;
    for (int64_t b = 0; b < stats_windows.size(0); ++b) {
      if (control) control->check();
      m.forward(stats_windows.narrow(0, b, 1));
    }
  };
  ActivationStatsCollector before(ActivationStatsCollector::all_linear_and_qkv_sites());
  {
    LlamaModel m = original;
    m.set_hook(before.hook());
    if (cfg.stats_windows > 0) collect(m);
  }

  // ---- rotations
  const QuantConfig quant = cfg.quant_config();
  nlohmann::json details;
  OnlineTransforms online = method_online_transforms(method, quant);
  if (online.heads_hadamard) {
    try {
      HadamardTransform::of_size(mc.num_attention_heads);
    } catch (const Error&) {
      // QuaRot's Hadamard across heads needs a Hadamard of order num_heads; without one the o_proj
      // input keeps only the per-head rotation and is quantized per head instead.
      online.heads_hadamard = false;
      details["heads_hadamard"] = "skipped: no Hadamard matrix of order " + std::to_string(mc.num_attention_heads) +
                                  "; o_proj input quantized per head";
    }
  }
  int64_t o_group = method_o_proj_group(method, mc);
  if (method == Method::QuaRot && !online.heads_hadamard) o_group = mc.head_dim;
  // An explicit activation group size (--a-group) applies to o_proj's input too, as it does to
  // every other activation quantizer; the method's own choice (per token or per head) is the default.
  if (quant.activation.group_size > 0) o_group = quant.activation.group_size;
  SkipTransitions skip;
  std::optional<ResidualRotations> final_rot;
  LlamaModel rotated = original;  // full precision, in the method's basis
  if (method_rotates(method)) {
    timer.start("rotate", control);
    LlamaModel fused = fuse_rms_norms(original);
    InitialRotations init = initial_rotations(method, mc, cfg.seed, device);
    details["residual_init"] = init.residual_init;
    details["head_init"] = init.head_init;
    ResidualRotations rot = std::move(init.rotations);
    if (method_learns(method)) {
      RotationTrainingOptions to;
      to.iterations = cfg.iters;
      to.lr = cfg.lr;
      to.batch = cfg.batch;
      to.quant = quant;
      // SpinQuant's protocol: rotations for a GPTQ pipeline are learned with W16, for RTN with the
      // target weight bits.
      if (cfg.weight_quantizer == "gptq") to.quant.weight.bits = 16;
      to.online = online;
      to.o_proj_group = o_group;
      RotationTrainingResult tr;
      {
        Tf32Scope tf32(tf32_learning);
        tr = train_rotations(fused, rot, calib_windows, to, control);
      }
      res.loss_curve = tr.loss;
      details["training"] = {{"steps", cfg.iters},
                             {"lr", cfg.lr},
                             {"batch", cfg.batch},
                             {"weight_bits_while_training", to.quant.weight.bits},
                             {"tokens", tr.tokens},
                             {"seconds", tr.seconds},
                             {"max_orthogonality_error", tr.max_orthogonality_error},
                             {"loss", tr.loss}};
    }
    const ResidualRotations r64 = rot.to(at::TensorOptions().device(device).dtype(at::kDouble));
    rotated = LlamaModel(mc, rotate_weights(fused, r64, online, at::kFloat));
    if (!rot.is_global()) {
      std::vector<double> errors;
      const int64_t rank = cfg.rank < 0 ? mc.hidden_size : std::min<int64_t>(cfg.rank, mc.hidden_size);
      skip = rank_r_transitions(r64, rank, &errors);
      details["rank"] = rank;
      details["transition_spectral_error"] = errors;  // layer 0 attn, layer 0 mlp, layer 1 attn, ...
      // Q [D, r] and M [r, r] per residual add; applying one costs 2 D r + r^2 MACs per token.
      details["online_parameters"] = 2 * mc.num_hidden_layers * (mc.hidden_size * rank + rank * rank);
      details["online_macs_per_token"] = 2 * mc.num_hidden_layers * (2 * mc.hidden_size * rank + rank * rank);
    }
    final_rot = r64;
  }

  // ---- statistics of what the quantizers see after rotation (without rotation: the same as before)
  ActivationStatsCollector after(ActivationStatsCollector::all_linear_and_qkv_sites());
  if (method_rotates(method)) {
    timer.start("stats", control);
    LlamaModel m = rotated;
    ActivationHook observer = after.hook();
    m.set_hook(final_hook(mc, device, online, skip, without_activation_quant(quant), o_group, observer));
    if (cfg.stats_windows > 0) collect(m);
  }

  // ---- weight quantization
  ModelWeights qw = rotated.weights();
  if (quant.weight.enabled()) {
    if (cfg.weight_quantizer == "gptq") {
      timer.start("gptq", control);
      GptqModelOptions go;
      go.weight = quant.weight;
      go.gptq.mse_clip = quant.weight_mse_clip;
      GptqModelReport rep;
      qw = gptq_quantize_model(rotated, final_hook(mc, device, online, skip, without_activation_quant(quant), o_group),
                               calib_windows, go, control, &rep);
      details["gptq"] = {{"layer_loss", rep.layer_loss}, {"dead_columns", rep.dead_columns}, {"seconds", rep.seconds}};
    } else {
      timer.start("quantize", control);
      quantize_weights_rtn(qw, quant);
    }
  }
  timer.stop();
  res.calibration_seconds = timer.seconds("rotate") + timer.seconds("gptq") + timer.seconds("quantize");
  LlamaModel quantized(mc, qw);
  quantized.set_hook(final_hook(mc, device, online, skip, quant, o_group));

  // ---- evaluation
  timer.start("eval", control);
  PerplexityResult qr = evaluate_perplexity(quantized, eval_ids, po, control);
  res.quant_perplexity = qr.perplexity;

  bool has_correction = false;
  for (const auto* v : {&skip.attn_rank_r, &skip.mlp_rank_r})
    for (const ResidualCorrection& c : *v) has_correction |= c.rank > 0;

  // ---- run directory
  timer.start("write", control);
  const fs::path final_dir = fs::absolute(out_dir);
  const fs::path tmp = final_dir.parent_path() / (final_dir.filename().string() + ".partial-" + std::to_string(getpid()));
  fs::remove_all(tmp);
  try {
    fs::create_directories(tmp / "model");
    ModelConfig saved = mc;
    SaveOptions so;
    so.file_dtype = DType::F32;
    so.tokenizer_json = tokenizer_path;
    save_model((tmp / "model").string(), saved, move_weights(qw, at::Device(at::kCPU)), so);
    if (final_rot) {
      std::vector<std::pair<std::string, at::Tensor>> t;
      for (int i = 0; i < final_rot->layers(); ++i) {
        t.emplace_back("attn_in." + std::to_string(i), final_rot->attn_in[i]);
        t.emplace_back("mlp_in." + std::to_string(i), final_rot->mlp_in[i]);
        if (final_rot->head[i].defined()) t.emplace_back("head." + std::to_string(i), final_rot->head[i]);
      }
      t.emplace_back("final", final_rot->final_basis);
      save_tensors((tmp / "rotations.safetensors").string(), t);
    }
    {
      std::vector<std::pair<std::string, at::Tensor>> t;
      for (size_t i = 0; i < skip.attn_rank_r.size(); ++i) {
        const std::pair<const char*, const ResidualCorrection*> adds[] = {{"attn_skip.", &skip.attn_rank_r[i]},
                                                                            {"mlp_skip.", &skip.mlp_rank_r[i]}};
        for (const auto& [name, c] : adds) {
          if (c->rank == 0) continue;
          t.emplace_back(std::string(name) + std::to_string(i) + ".q", c->q);
          t.emplace_back(std::string(name) + std::to_string(i) + ".m", c->m);
        }
      }
      if (!t.empty()) save_tensors((tmp / "online.safetensors").string(), t);
    }
    nlohmann::json stats = {{"before", stats_to_json(before.results())},
                            {"after", stats_to_json(method_rotates(method) ? after.results() : before.results())},
                            {"windows", stats_windows.size(0)},
                            {"seq_len", seq_len}};
    write_file_atomically((tmp / "stats.json").string(), stats.dump());

    timer.stop();
    res.total_seconds = std::chrono::duration<double>(Clock::now() - t_start).count();
    res.peak_rss_bytes = peak_rss_bytes();
    nlohmann::json phases = nlohmann::json::object();
    for (const auto& [p, s] : res.phase_seconds) phases[p] = phases.value(p, 0.0) + s;
    nlohmann::json run = {
        {"format", "respin-run"},
        {"format_version", 1},
        {"respin_version", RESPIN_VERSION_STRING},
        {"created", now_iso8601()},
        {"config", nlohmann::json::parse(calib_config_to_json(cfg))},
        {"model", {{"folder", folder.dir},
                   {"architecture", mc.architecture},
                   {"parameters", mc.parameter_count()},
                   {"hidden_size", mc.hidden_size},
                   {"layers", mc.num_hidden_layers}}},
        {"quantizers", {{"weight", spec_json(quant.weight)},
                        {"weight_mse_clip", quant.weight_mse_clip},
                        {"weight_quantizer", cfg.weight_quantizer},
                        {"activation", spec_json(quant.activation)},
                        {"o_proj_activation_group", o_group},
                        {"kv", spec_json(quant.kv)}}},
        {"online", {{"qk_hadamard", online.qk_hadamard},
                    {"down_hadamard", online.down_hadamard},
                    {"heads_hadamard", online.heads_hadamard},
                    {"skip_correction", has_correction}}},
        {"method", details},
        {"calibration", {{"source", calib_src}, {"windows", calib_windows.size(0)}, {"seq_len", seq_len}}},
        {"results", {{"eval_source", eval_src},
                     {"eval_windows", qr.windows},
                     {"eval_seq_len", qr.seq_len},
                     {"eval_tokens", qr.tokens_forward},
                     {"fp_perplexity", fp.perplexity},
                     {"quantized_perplexity", qr.perplexity}}},
        {"timing", {{"phases_seconds", phases},
                    {"calibration_seconds", res.calibration_seconds},
                    {"total_seconds", res.total_seconds},
                    {"threads", compute_threads()},
                    {"device", device.str()}}},
        {"compute", {{"weights_and_activations", "float32"},
                     {"rotation_learning", !method_learns(method) ? "none" : tf32_learning ? "tf32" : "float32"},
                     {"rotations", "float32"},
                     {"weight_fusion", "float64"},
                     {"gptq_hessian", "float64"},
                     {"libtorch", TORCH_VERSION}}},
        {"peak_rss_bytes", res.peak_rss_bytes},
        {"gpu_memory_in_use_bytes", device.is_cuda() ? nlohmann::json(kernels::cuda_memory_in_use_bytes())
                                                     : nlohmann::json(nullptr)}};
    write_file_atomically((tmp / "run.json").string(), run.dump(2));
    if (control) control->check();
    fs::rename(tmp, final_dir);
    res.run = std::move(run);
  } catch (...) {
    std::error_code ec;
    fs::remove_all(tmp, ec);
    throw;
  }
  res.run_dir = final_dir.string();
  return res;
}

}  // namespace

bool is_run_dir(const std::string& dir) { return fs::is_regular_file(fs::path(dir) / "run.json"); }

namespace {
LoadedRun load_run_checked(const std::string& dir, int64_t rank, at::Device device);
}  // namespace

LoadedRun load_run(const std::string& dir, int64_t rank, at::Device device) {
  // A field of the wrong JSON type anywhere in run.json names the file, like every other damage.
  try {
    return load_run_checked(dir, rank, device);
  } catch (const nlohmann::json::exception& e) {
    throw Error((fs::path(dir) / "run.json").string() + ": " + e.what());
  }
}

namespace {

LoadedRun load_run_checked(const std::string& dir, int64_t rank, at::Device device) {
  const std::string run_path = (fs::path(dir) / "run.json").string();
  if (!fs::is_regular_file(run_path)) throw Error(dir + ": not a run directory (no run.json)");
  nlohmann::json run;
  try {
    run = nlohmann::json::parse(read_text_file(run_path));
  } catch (const nlohmann::json::exception& e) {
    throw Error(run_path + ": not valid JSON (" + e.what() + ")");
  }
  auto need = [&](const nlohmann::json& j, const char* key, const std::string& where) -> const nlohmann::json& {
    if (!j.is_object() || !j.contains(key)) throw Error(run_path + ": missing field '" + where + key + "'");
    return j.at(key);
  };
  if (run.value("format", "") != "respin-run") throw Error(run_path + ": not a respin run (field 'format')");
  CalibConfig cfg = calib_config_from_json(need(run, "config", "").dump(), run_path + " config");
  const Method method = method_from_name(cfg.method);
  const nlohmann::json& on = need(run, "online", "");
  const nlohmann::json& qz = need(run, "quantizers", "");
  OnlineTransforms online;
  int64_t o_group = 0;
  try {
    online.qk_hadamard = need(on, "qk_hadamard", "online.").get<bool>();
    online.down_hadamard = need(on, "down_hadamard", "online.").get<bool>();
    online.heads_hadamard = need(on, "heads_hadamard", "online.").get<bool>();
    o_group = need(qz, "o_proj_activation_group", "quantizers.").get<int64_t>();
  } catch (const nlohmann::json::exception& e) {
    throw Error(run_path + ": bad online/quantizer fields (" + e.what() + ")");
  }
  LlamaModel model = load_model((fs::path(dir) / "model").string(), {at::kFloat, device});
  const ModelConfig& mc = model.config();
  SkipTransitions skip;
  if (rank >= 0) {
    if (method != Method::ReSpin) throw Error("a rank applies to respin runs only; " + run_path + " is a " + cfg.method + " run");
    const std::string path = (fs::path(dir) / "rotations.safetensors").string();
    std::map<std::string, at::Tensor> t = load_tensors(path);
    auto get = [&](const std::string& name) {
      auto it = t.find(name);
      if (it == t.end()) throw Error(path + ": missing tensor '" + name + "'");
      if (it->second.dim() != 2 || it->second.size(0) != mc.hidden_size || it->second.size(1) != mc.hidden_size)
        throw Error(path + ": tensor '" + name + "' is not [hidden, hidden]");
      return it->second.to(device, at::kDouble);
    };
    ResidualRotations rot;
    for (int i = 0; i < mc.num_hidden_layers; ++i) {
      rot.attn_in.push_back(get("attn_in." + std::to_string(i)));
      rot.mlp_in.push_back(get("mlp_in." + std::to_string(i)));
      rot.head.emplace_back();
    }
    rot.final_basis = get("final");
    skip = rank_r_transitions(rot, std::min<int64_t>(rank, mc.hidden_size));
    cfg.rank = std::min<int64_t>(rank, mc.hidden_size);
  } else if (on.value("skip_correction", false)) {
    const std::string path = (fs::path(dir) / "online.safetensors").string();
    std::map<std::string, at::Tensor> t = load_tensors(path);
    for (int i = 0; i < mc.num_hidden_layers; ++i) {
      const std::pair<std::string, std::vector<ResidualCorrection>*> adds[] = {{"attn_skip.", &skip.attn_rank_r},
                                                                               {"mlp_skip.", &skip.mlp_rank_r}};
      for (const auto& [prefix, vec] : adds) {
        // A correction is stored for every residual add of a run that has them: a missing one is
        // damage, not an identity.
        auto stored = [&](const std::string& name) -> const at::Tensor& {
          auto it = t.find(name);
          if (it == t.end()) throw Error(path + ": tensor '" + name + "' is missing");
          return it->second;
        };
        const std::string add = prefix + std::to_string(i);
        const at::Tensor &q = stored(add + ".q"), &m = stored(add + ".m");
        if (q.dim() != 2 || q.size(0) != mc.hidden_size || m.dim() != 2 || m.size(0) != q.size(1) ||
            m.size(1) != q.size(1))
          throw Error(path + ": correction " + add + " has inconsistent shapes");
        ResidualCorrection c;
        c.q = q.to(device);
        c.m = m.to(device);
        c.rank = c.q.size(1);
        vec->push_back(c);
      }
    }
  }
  model.set_hook(final_hook(mc, device, online, skip, cfg.quant_config(), o_group));
  LoadedRun out{dir, cfg, run, std::move(model)};
  try {
    const nlohmann::json& res = need(run, "results", "");
    out.eval_seq_len = need(res, "eval_seq_len", "results.").get<int64_t>();
    out.eval_windows = need(res, "eval_windows", "results.").get<int64_t>();
  } catch (const nlohmann::json::exception& e) {
    throw Error(run_path + ": bad results fields (" + e.what() + ")");
  }
  return out;
}

}  // namespace

}  // namespace respin
