// Calibration pipeline and run directories (see calibration.h and calibrate.h).
#include "core/calib/calibrate.h"

#include <ATen/ATen.h>
#include <torch/cuda.h>
#include <ATen/Context.h>
#include <torch/version.h>
#include <c10/core/GradMode.h>
#include <fcntl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <functional>
#include <map>
#include <mutex>
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
#include "core/util/sha256.h"
#include "core/util/threads.h"
#include "core/util/version.h"
#include "kernels/hadamard.h"
#include "core/util/fs.h"
#include "core/util/process_memory.h"
#include "core/util/device_memory.h"
#include "core/io/model_check.h"
#include "core/calib/precision.h"
#include "core/model/layer_stream.h"
#include "core/methods/rtn.h"

namespace fs = std::filesystem;

namespace respin {

// ---------------------------------------------------------------------------------------------
// Phases

const char* phase_name(Phase p) {
  switch (p) {
    case Phase::Load: return "load";
    case Phase::EvalFp: return "eval-fp";
    case Phase::StatsBefore: return "stats-before";
    case Phase::Rotate: return "rotate";
    case Phase::StatsAfter: return "stats-after";
    case Phase::Gptq: return "gptq";
    case Phase::Quantize: return "quantize";
    case Phase::EvalQuant: return "eval";
    case Phase::Write: return "write";
  }
  return "?";
}

const char* phase_title(Phase p) {
  switch (p) {
    case Phase::Load: return "Loading model and texts";
    case Phase::EvalFp: return "Evaluating full precision";
    case Phase::StatsBefore: return "Activation statistics before rotation";
    case Phase::Rotate: return "Rotations";
    case Phase::StatsAfter: return "Activation statistics after rotation";
    case Phase::Gptq: return "GPTQ weight quantization";
    case Phase::Quantize: return "Round-to-nearest weight quantization";
    case Phase::EvalQuant: return "Evaluating the quantized model";
    case Phase::Write: return "Writing the run";
  }
  return "?";
}


std::vector<Phase> phases_of(const CalibConfig& c) {
  std::vector<Phase> p = {Phase::Load, Phase::EvalFp, Phase::StatsBefore};
  if (method_rotates(c.method)) p.insert(p.end(), {Phase::Rotate, Phase::StatsAfter});
  if (c.wbits != 16) p.push_back(c.weight_quantizer == WeightQuantizer::Gptq ? Phase::Gptq : Phase::Quantize);
  p.insert(p.end(), {Phase::EvalQuant, Phase::Write});
  return p;
}

namespace {

// Expected share of a run's time per phase (relative), for the overall progress fraction.
double phase_weight(Phase p, const CalibConfig& c) {
  switch (p) {
    case Phase::Load: return 0.02;
    case Phase::EvalFp: return 0.12;
    case Phase::StatsBefore: return 0.03;
    case Phase::Rotate: return method_learns(c.method) ? 0.45 : 0.03;
    case Phase::StatsAfter: return 0.03;
    case Phase::Gptq: return 0.25;
    case Phase::Quantize: return 0.03;
    case Phase::EvalQuant: return 0.12;
    case Phase::Write: return 0.02;
  }
  return 0;
}

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

// Float32 copies of `tensors` written as one safetensors file. A tensor listed under several
// names (one shared residual rotation under every layer's name) is converted once.
void save_tensors(const std::string& path, const std::vector<std::pair<std::string, at::Tensor>>& tensors) {
  std::vector<at::Tensor> keep;
  std::vector<TensorView> views;
  std::vector<at::Tensor> sources;  // keep[i] is sources[i] converted
  for (const auto& [name, t] : tensors) {
    size_t i = 0;
    while (i < sources.size() && !(sources[i].data_ptr() == t.data_ptr() && sources[i].sizes().equals(t.sizes()) &&
                                   sources[i].strides().equals(t.strides()) && sources[i].scalar_type() == t.scalar_type()))
      ++i;
    if (i == sources.size()) {
      sources.push_back(t);
      keep.push_back(t.detach().to(at::kCPU, at::kFloat).contiguous());
    }
    const at::Tensor& k = keep[i];
    views.push_back(TensorView{name, DType::F32, k.sizes().vec(), k.data_ptr()});
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

QuantizerRecord quantizer_record(const QuantSpec& s) { return {s.bits, s.symmetric, s.group_size, s.clip_ratio}; }
QuantSpec quant_spec(const QuantizerRecord& r) { return QuantSpec{r.bits, r.symmetric, r.group_size, r.clip_ratio}; }

QuantConfig without_activation_quant(QuantConfig q) {
  q.activation.bits = 16;
  q.kv.bits = 16;
  return q;
}

// The tensor dtype of a resolved precision (core/calib/precision.h).
at::ScalarType compute_type(Precision resolved) { return resolved == Precision::BFloat16 ? at::kBFloat16 : at::kFloat; }

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

// The tensor names of a run directory, spelled once.
std::string rotation_tensor(const char* kind, int layer) { return std::string(kind) + "." + std::to_string(layer); }
std::string correction_tensor(const char* add, int layer, const char* part) {
  return std::string(add) + "_skip." + std::to_string(layer) + "." + part;
}

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
  const std::pair<const char*, const std::string*> paths[] = {{"--model", &in.model},
                                                               {"--out", &out_dir},
                                                               {"--calib-text", &in.calib_text},
                                                               {"--eval-text", &in.eval_text},
                                                               {"data folder", &in.data_dir}};
  for (const auto& [what, path] : paths)
    if (!valid_utf8(*path))
      throw Error(escaped(*path) + ": " + what + " path is not valid UTF-8 (run.json records paths as UTF-8 text)");
  if (fs::symlink_status(out_dir).type() != fs::file_type::not_found)
    throw Error(out_dir + ": already exists" + (fs::is_symlink(fs::symlink_status(out_dir)) ? " (a symbolic link)" : "") +
                "; choose a new run directory (runs are never overwritten)");
  const fs::path parent = fs::absolute(out_dir).parent_path();
  if (!fs::is_directory(parent)) throw Error(parent.string() + ": no such directory for the run");
  // Not inside another run's directory: deleting that run removes its whole folder, and this run
  // would go with it (docs/store.md, "Which folders belong to a run").
  for (fs::path p = parent.lexically_normal(); !p.empty(); p = p.parent_path()) {
    std::error_code ec;
    if (fs::is_regular_file(p / "run.json", ec) || fs::is_regular_file(p / ".respin-run.json", ec))
      throw Error(out_dir + ": inside the run directory " + p.string() +
                  "; choose a run directory outside any other run's");
    if (p == p.parent_path()) break;
  }
  // Whether the run directory can be created at all (a read-only mount, a directory without write
  // permission): tried for real, since access() answers yes to root on a read-only file system.
  std::string probe = (parent / ".respin-write-check-XXXXXX").string();
  if (!::mkdtemp(probe.data()))
    throw Error(parent.string() + ": cannot create the run directory here: " + std::strerror(errno));
  ::rmdir(probe.c_str());
  CalibConfig out = in;
  for (std::string* p : {&out.model, &out.calib_text, &out.eval_text, &out.data_dir})
    if (!p->empty()) *p = fs::absolute(*p).lexically_normal().string();
  return out;
}

// A unique temporary sibling of `final_dir`: <name>.partial-XXXXXX (mkdtemp), so that two runs
// in one process, or two processes, never share one.
fs::path make_temp_dir(const fs::path& final_dir) {
  std::string tmpl = (final_dir.parent_path() / (final_dir.filename().string() + ".partial-XXXXXX")).string();
  if (!::mkdtemp(tmpl.data()))
    throw Error(final_dir.parent_path().string() + ": cannot create a temporary run directory: " + std::strerror(errno));
  return tmpl;
}

DataIdentity data_identity(const std::string& source, const std::string& text) {
  return {source, static_cast<int64_t>(text.size()), sha256_hex(text)};
}

// ---------------------------------------------------------------------------------------------
// The pipeline: one object per run, one member per step.

class Pipeline {
 public:
  Pipeline(const CalibConfig& requested, const std::string& out_dir, RunControl* control, CalibObserver* observer)
      : requested_(requested), out_dir_(out_dir), outer_(control), steps_(control), observer_(observer) {
    steps_.set_progress_callback([this](const ProgressEvent& e) { on_step_event(e); }, 0);
  }
  // A run that did not reach its rename (failed, cancelled) leaves nothing behind.
  ~Pipeline() {
    if (tmp_.empty() || committed_) return;
    remove_tree(tmp_);
  }
  Pipeline(const Pipeline&) = delete;
  Pipeline& operator=(const Pipeline&) = delete;

  CalibOutcome run(std::string& phase_name_out) {
    phase_out_ = &phase_name_out;
    baseline_rss_ = resident_bytes();
    cfg_ = checked_inputs(requested_, out_dir_);
    t_start_ = Clock::now();
    for (Phase p : phases_of(cfg_)) total_weight_ += phase_weight(p, cfg_);
    load_inputs();
    evaluate_full_precision();
    statistics_before();
    plan_ = plan_method(cfg_, mc(), device_);
    if (method_rotates(cfg_.method)) {
      rotations();
      statistics_after();
    }
    quantize_weights();
    evaluate_quantized();
    return record();
  }

 private:
  const ModelConfig& mc() const { return config_; }

  // ---- progress
  void begin(Phase p) {
    end_phase();
    if (outer_) outer_->check();
    phase_ = p;
    *phase_out_ = phase_name(p);
    phase_t0_ = Clock::now();
    phase_active_ = true;
    hwm_resets_ = reset_peak_resident();
    if (device_.is_cuda()) reset_device_peak(device_);
    CalibProgress ev = progress(0, 0);
    ev.phase_started = true;
    emit(ev, true);
  }
  void end_phase() {
    if (!phase_active_) return;
    const double s = std::chrono::duration<double>(Clock::now() - phase_t0_).count();
    timing_.phases_seconds.emplace_back(phase_name(phase_), s);
    // The phase's own peak: the high-water mark was reset when it began. What the phase freed
    // goes back to the system before the next one starts.
    const int64_t hwm = peak_resident_bytes();
    release_free_memory();
    peak_seen_ = std::max(peak_seen_, hwm);
    if (hwm_resets_ && hwm > 0)
      rec_.memory.measured_bytes.emplace_back(phase_name(phase_), static_cast<double>(std::max<int64_t>(0, hwm - baseline_rss_)));
    if (const int64_t dev = device_peak_allocated_bytes(device_); dev >= 0)
      rec_.memory.measured_device_bytes.emplace_back(phase_name(phase_),
                                                     static_cast<double>(std::max<int64_t>(0, dev - baseline_device_)));
    done_weight_ += phase_weight(phase_, cfg_);
    phase_active_ = false;
  }
  double seconds_of(Phase p) const {
    double s = 0;
    for (const auto& [name, v] : timing_.phases_seconds) s += name == phase_name(p) ? v : 0;
    return s;
  }
  CalibProgress progress(int64_t done, int64_t total) const {
    CalibProgress ev;
    ev.phase = phase_;
    ev.done = done;
    ev.total = total;
    ev.phase_fraction = total > 0 ? std::min(1.0, double(done) / total) : 0;
    ev.overall_fraction = total_weight_ > 0
                              ? std::min(1.0, (done_weight_ + phase_weight(phase_, cfg_) * ev.phase_fraction) / total_weight_)
                              : 0;
    ev.elapsed_s = std::chrono::duration<double>(Clock::now() - t_start_).count();
    return ev;
  }
  void emit(const CalibProgress& ev, bool force) {
    if (!observer_) return;
    const auto now = Clock::now();
    if (!force && now - last_emit_ < std::chrono::milliseconds(100)) return;
    last_emit_ = now;
    observer_->on_progress(ev);
  }
  // Events of the steps (evaluation windows, learning steps, GPTQ layers) in the run's terms.
  void on_step_event(const ProgressEvent& e) {
    CalibProgress ev = progress(e.done, e.total);
    ev.tokens_per_s = e.tokens_per_s;
    ev.eta_s = e.eta_s;
    ev.value = e.value;
    ev.layer = e.layer;
    if (phase_ == Phase::Rotate && observer_ && e.done > 0) observer_->on_loss(e.done - 1, e.value);
    emit(ev, e.total > 0 && e.done >= e.total);
  }

  // ---- load inputs
  void load_inputs() {
    begin(Phase::Load);
    device_ = resolve_device(cfg_.device, cfg_.cuda_device);
    if (device_.is_cuda()) {  // the load phase's device peak starts here
      reset_device_peak(device_);
      baseline_device_ = std::max<int64_t>(0, device_allocated_bytes(device_));
    }
    folder_ = ModelFolder::open(cfg_.model);
    plan_memory_use();
    tokenizer_path_ = folder_.require_tokenizer();
    Tokenizer tok = Tokenizer::from_file(tokenizer_path_);
    // The texts first and the model after them: the corpus and its tokenization are gone before
    // the weights arrive, so the phase's peak is the larger of the two, not their sum.
    config_ = load_model_config(folder_.config_path);
    seq_len_ = std::min<int64_t>(cfg_.seq_len, mc().max_position_embeddings);
    std::optional<Corpus> corpus;
    auto corpus_text = [&](Split s) {
      if (!corpus) corpus = Corpus::load(cfg_.data_dir.empty() ? default_corpus_dir() : cfg_.data_dir);
      return corpus->text_of(s);
    };
    calib_src_ = cfg_.calib_text.empty() ? "corpus training split" : cfg_.calib_text;
    eval_src_ = cfg_.eval_text.empty() ? "corpus test split" : cfg_.eval_text;
    std::string calib_text = with_error_context(calib_src_, [&] {
      return cfg_.calib_text.empty() ? corpus_text(Split::Train) : read_text_file(cfg_.calib_text);
    });
    calib_ = with_error_context(calib_src_, [&] {
               // Only the windows the run uses (learning and GPTQ, statistics) are kept.
               return windows_of(tok.encode(calib_text, false), seq_len_, std::max<int64_t>(cfg_.samples, cfg_.stats_windows),
                                 "calibration text (" + calib_src_ + ")");
             }).to(device_);
    if (calib_.size(0) < cfg_.samples)
      throw Error("calibration text (" + calib_src_ + ") has " + std::to_string(calib_.size(0)) + " windows of " +
                  std::to_string(seq_len_) + " tokens, fewer than --samples " + std::to_string(cfg_.samples));
    calib_windows_ = calib_.narrow(0, 0, cfg_.samples);
    std::string eval_text = with_error_context(eval_src_, [&] {
      return cfg_.eval_text.empty() ? corpus_text(Split::Test) : read_text_file(cfg_.eval_text);
    });
    eval_ids_ = with_error_context(eval_src_, [&] { return tok.encode(eval_text, false); });
    if (const int64_t top = calib_.max().item<int64_t>(); top >= mc().vocab_size)
      throw Error(calib_src_ + ": token id " + std::to_string(top) + " from " + tokenizer_path_ +
                  " is outside the model's vocab_size " + std::to_string(mc().vocab_size) + " (" + folder_.config_path + ")");
    po_.seq_len = seq_len_;
    po_.max_windows = cfg_.eval_windows;
    rec_.calibration.data = data_identity(calib_src_, calib_text);
    rec_.results.eval_data = data_identity(eval_src_, eval_text);
    corpus.reset();
    std::string().swap(calib_text);
    std::string().swap(eval_text);
    release_free_memory();
    if (streamed_) {
      // The weights stay in their files: each phase reads a layer at a time (docs/methods.md 1.7).
      refuse_exported_model(folder_.dir, folder_.config_path);
      auto st = std::make_shared<ShardedSafetensors>(ShardedSafetensors::open_folder(folder_.dir));
      check_model_tensors(*st, config_, folder_.config_path, folder_.dir);
      source_st_ = std::move(st);
      source_config_ = config_;
    } else {
      original_.emplace(load_model(folder_.dir, {dtype(), device_}));
      config_ = original_->config();
    }

    // What the run is, as soon as it is known.
    rec_.respin_version = RESPIN_VERSION_STRING;
    rec_.created = now_iso8601();
    rec_.config = cfg_;
    rec_.config_sha256 = sha256_hex(calib_config_to_json(cfg_));
    const ModelConfig& c = mc();
    rec_.model = {fs::absolute(folder_.dir).lexically_normal().string(), c.architecture, c.parameter_count(), c.hidden_size,
                  c.intermediate_size, c.num_hidden_layers, c.num_attention_heads, c.num_key_value_heads, c.head_dim,
                  c.vocab_size, folder_.identity_sha256()};
    rec_.calibration.windows = calib_windows_.size(0);
    rec_.calibration.seq_len = seq_len_;
    rec_.timing.device = device_.str();
    rec_.timing.threads = compute_threads();
    final_dir_ = fs::absolute(out_dir_);
    check_free_space();
    tmp_ = make_temp_dir(final_dir_);
    if (observer_) observer_->on_started(rec_, tmp_.string(), final_dir_.string());
  }

  // ---- the memory plan: refuse what cannot fit before any weight is read; learning's
  // micro-batch and checkpointing chosen by the plan when the options leave them free
  void plan_memory_use() {
    const MemoryPlan plan = plan_calibration(cfg_);
    if (!plan.fits()) throw Error(cfg_.model + ": " + plan_refusal(plan));
    // The precision the plan was made for is the one the run computes in (docs/methods.md 1.9).
    precision_ = plan.target.precision;
    if (plan.learning_chosen) {
      cfg_.micro_batch = plan.micro_batch;
      cfg_.checkpoint_layers = plan.checkpoint_layers;
    }
    streamed_ = plan.streamed;
    MemoryRecord& m = rec_.memory;
    m.device = plan.target.device;
    m.capacity_bytes = plan.target.capacity_bytes;
    m.capacity_given = plan.target.capacity_given;
    m.micro_batch = plan.micro_batch;
    m.checkpoint_layers = plan.checkpoint_layers;
    m.learning_chosen = plan.learning_chosen;
    m.streamed = plan.streamed;
    m.baseline_rss_bytes = baseline_rss_;
    const bool cuda = plan.target.device != "cpu";
    for (const PhaseMemory& p : plan.phases) {
      m.predicted_bytes.emplace_back(phase_name(p.phase), static_cast<double>(cuda ? p.host_bytes : p.device_bytes));
      if (cuda) m.predicted_device_bytes.emplace_back(phase_name(p.phase), static_cast<double>(p.device_bytes));
      if (p.seconds >= 0) m.predicted_seconds.emplace_back(phase_name(p.phase), p.seconds);
    }
    m.flops_per_second = plan.target.flops_per_second;
    m.f64_flops_per_second = plan.target.f64_flops_per_second;
  }

  // ---- a run whose rotations come from another (sweeps)
  const RunRecord* rotations_source() {
    if (cfg_.rotations_from.empty()) return nullptr;
    if (!source_) {
      const std::string path = (fs::path(cfg_.rotations_from) / "run.json").string();
      if (!fs::is_regular_file(path)) throw Error(cfg_.rotations_from + ": not a run directory (no run.json)");
      RunRecord r = run_record_from_json(nlohmann::json::parse(read_text_file(path)), path);
      // Everything the learned rotations depend on must agree.
      const CalibConfig &a = r.config, &b = cfg_;
      std::vector<std::string> differ;
      auto same = [&](bool eq, const char* what) {
        if (!eq) differ.push_back(what);
      };
      same(r.model.sha256 == rec_.model.sha256, "model");
      same(a.method == b.method, "method");
      same(a.seed == b.seed, "seed");
      same(a.wbits == b.wbits && a.abits == b.abits && a.kvbits == b.kvbits, "bits");
      same(a.w_group == b.w_group && a.a_group == b.a_group && a.kv_group == b.kv_group, "group sizes");
      same(a.w_sym == b.w_sym && a.a_sym == b.a_sym && a.kv_sym == b.kv_sym, "symmetry");
      same(a.a_clip == b.a_clip && a.kv_clip == b.kv_clip && a.w_mse_clip == b.w_mse_clip, "clipping");
      same(a.weight_quantizer == b.weight_quantizer, "weight quantizer");
      same(a.samples == b.samples && r.calibration.seq_len == seq_len_, "calibration windows");
      same(a.iters == b.iters && a.lr == b.lr && a.batch == b.batch, "learning steps, lr or batch");
      same(r.calibration.data.sha256 == rec_.calibration.data.sha256, "calibration text");
      if (!differ.empty()) {
        std::string list;
        for (const std::string& d : differ) list += (list.empty() ? "" : ", ") + d;
        throw Error(path + ": its rotations were learned with another " + list + " than this run's");
      }
      source_ = std::move(r);
    }
    return &*source_;
  }

  // ---- evaluations
  void evaluate_full_precision() {
    begin(Phase::EvalFp);
    // The same model on the same text with the same windows: the source run's number is this one.
    if (const RunRecord* src = rotations_source();
        src && src->results.eval_data.sha256 == rec_.results.eval_data.sha256 && src->results.eval_seq_len == seq_len_ &&
        src->config.eval_windows == cfg_.eval_windows && src->results.fp_perplexity > 0) {
      fp_.perplexity = src->results.fp_perplexity;
      return;
    }
    fp_ = with_error_context("evaluating " + eval_src_ + " (tokenized with " + tokenizer_path_ + ")", [&] {
      if (!streamed_) return evaluate_perplexity(*original_, eval_ids_, po_, &steps_);
      LayerStream m = source_stream();
      return evaluate_perplexity_streamed(m, eval_ids_, po_, device_, &steps_);
    });
  }
  void evaluate_quantized() {
    begin(Phase::EvalQuant);
    if (streamed_) {
      LayerStream m = written_stream();
      m.set_hook(run_hook(mc(), device_, plan_.online, skip_, plan_.quant, plan_.o_proj_group));
      q_ = evaluate_perplexity_streamed(m, eval_ids_, po_, device_, &steps_);
      return;
    }
    LlamaModel quantized(mc(), qw_);
    quantized.set_hook(run_hook(mc(), device_, plan_.online, skip_, plan_.quant, plan_.o_proj_group));
    q_ = evaluate_perplexity(quantized, eval_ids_, po_, &steps_);
  }

  // ---- statistics
  at::Tensor stats_windows() const {
    return calib_.narrow(0, 0, std::min<int64_t>(std::max<int64_t>(cfg_.stats_windows, 1), calib_.size(0)));
  }
  void collect(const LlamaModel& m) {
    c10::NoGradGuard no_grad;
    const at::Tensor w = stats_windows();
    for (int64_t b = 0; cfg_.stats_windows > 0 && b < w.size(0); ++b) {
      if (outer_) outer_->check();
      m.forward(w.narrow(0, b, 1));
      CalibProgress ev = progress(b + 1, w.size(0));
      emit(ev, b + 1 == w.size(0));
    }
  }
  // The same windows a layer at a time: each (layer, site) sees the windows in the same order.
  void collect_streamed(LayerStream& m) {
    c10::NoGradGuard no_grad;
    if (cfg_.stats_windows <= 0) return;
    const at::Tensor w = stats_windows();
    std::vector<at::Tensor> hidden = m.embed(w, 1, device_);
    const ForwardContext ctx = m.make_context(w.size(1));
    const int L = static_cast<int>(mc().num_hidden_layers);
    for (int i = 0; i < L; ++i) {
      if (outer_) outer_->check();
      m.forward_layer(i, hidden, ctx);
      emit(progress(i + 1, L), i + 1 == L);
    }
  }
  void statistics_before() {
    begin(Phase::StatsBefore);
    ActivationStatsCollector before(ActivationStatsCollector::all_linear_and_qkv_sites());
    if (streamed_) {
      LayerStream m = source_stream();
      m.set_hook(before.hook());
      collect_streamed(m);
    } else {
      LlamaModel m = *original_;
      m.set_hook(before.hook());
      collect(m);
    }
    stats_before_ = before.results();
    stats_after_ = stats_before_;  // without rotation, the quantizers see the original activations
    if (observer_) observer_->on_stats(StatsStage::Before, stats_before_);
    // Without rotation the quantizers see the original activations: "after" is "before".
    if (observer_ && !method_rotates(cfg_.method)) observer_->on_stats(StatsStage::After, stats_after_);
  }
  void statistics_after() {
    begin(Phase::StatsAfter);
    ActivationStatsCollector after(ActivationStatsCollector::all_linear_and_qkv_sites());
    const ActivationHook hook = run_hook(mc(), device_, plan_.online, skip_, without_activation_quant(plan_.quant),
                                         plan_.o_proj_group, after.hook());
    if (streamed_) {
      LayerStream m = written_stream();
      m.set_hook(hook);
      collect_streamed(m);
    } else {
      LlamaModel m = *rotated_;
      m.set_hook(hook);
      collect(m);
    }
    stats_after_ = after.results();
    if (observer_) observer_->on_stats(StatsStage::After, stats_after_);
  }

  // ---- rotations: learn (spinquant, respin) or fix (quarot), fuse, skip corrections
  void rotations() {
    begin(Phase::Rotate);
    // The original model is not needed after this (its perplexity and statistics are taken):
    // it is fused, then rotated, in place (docs/methods.md 1.7). Streamed, each piece is read,
    // fused and rotated on its own and written into the run's model file.
    std::optional<LlamaModel> fused;
    if (!streamed_) {
      fused.emplace(fuse_rms_norms(std::move(*original_)));
      original_.reset();
      config_ = fused->config();  // fusion unties a tied lm_head
    } else {
      config_.tie_word_embeddings = false;  // as fuse_rms_norms: lm_head gets the final norm
    }
    ResidualRotations rot;
    if (const RunRecord* src = rotations_source()) {
      rot = load_rotations(cfg_.rotations_from, mc(), device_);
      // One residual rotation for every layer (all but ReSpinQuant): shared again, as learned.
      if (cfg_.method != Method::ReSpin) rot = ResidualRotations::global(rot.final_basis, rot.head, mc().num_hidden_layers);
      rec_.method.residual_init = src->method.residual_init;
      rec_.method.head_init = src->method.head_init;
      rec_.method.training = src->method.training;
      rec_.method.rotations_from = fs::absolute(cfg_.rotations_from).lexically_normal().string();
    } else {
      InitialRotations init = initial_rotations(cfg_.method, mc(), cfg_.seed, device_);
      rec_.method.residual_init = init.residual_init;
      rec_.method.head_init = init.head_init;
      rot = std::move(init.rotations);
    }
    if (method_learns(cfg_.method) && !rotations_source()) {
      RotationTrainingOptions to;
      to.iterations = cfg_.iters;
      to.lr = cfg_.lr;
      to.batch = cfg_.batch;
      to.micro_batch = cfg_.micro_batch;
      to.checkpoint_layers = cfg_.checkpoint_layers;
      to.quant = plan_.training_quant;
      to.online = plan_.online;
      to.o_proj_group = plan_.o_proj_group;
      if (observer_) {
        to.live_site = [this](int& layer, HookSite& site) { return observer_->live_site(layer, site); };
        to.on_live_stats = [this](int64_t step, const SiteStats& st) { observer_->on_live_stats(step, st); };
      }
      RotationTrainingResult tr;
      {
        Tf32Scope tf32(plan_.tf32_learning && dtype() == at::kFloat);
        tr = train_rotations(*fused, rot, calib_windows_, to, &steps_);
      }
      rec_.method.training = TrainingRecord{cfg_.iters,  cfg_.lr,     cfg_.batch,
                                            to.quant.weight.bits, tr.tokens, tr.seconds,
                                            tr.max_orthogonality_error, tr.loss};
    }
    const ResidualRotations r64 = rot.to(at::TensorOptions().device(device_).dtype(at::kDouble));
    release_free_memory();  // the rotations' construction and the learning's graph
    if (streamed_) rotate_streamed(r64);
    else rotated_.emplace(mc(), rotate_weights(std::move(*fused), r64, plan_.online, dtype()));
    if (!rot.is_global()) {
      std::vector<double> errors;
      skip_ = rank_r_transitions(r64, plan_.rank, &errors);
      const int64_t D = mc().hidden_size, r = plan_.rank, L = mc().num_hidden_layers;
      rec_.method.rank = r;
      rec_.method.transition_spectral_error = errors;
      rec_.method.online_parameters = L * skip_correction_parameters_per_layer(D, r);
      rec_.method.online_macs_per_token = L * skip_correction_macs_per_token_per_layer(D, r);
    }
    final_rot_ = r64;
  }

  // ---- weights
  GptqModelOptions gptq_options() const {
    GptqModelOptions go;
    go.weight = plan_.quant.weight;
    go.gptq.mse_clip = plan_.quant.weight_mse_clip;
    return go;
  }
  // GPTQ sees the layers' inputs with the online transforms and skip corrections, quantizers off.
  ActivationHook gptq_hook() const {
    return run_hook(mc(), device_, plan_.online, skip_, without_activation_quant(plan_.quant), plan_.o_proj_group);
  }
  void quantize_weights() {
    if (streamed_) return quantize_streamed();
    // The model the weights come from is consumed: quantized in place, never held twice
    // (docs/methods.md 1.7).
    std::optional<LlamaModel>& source = rotated_ ? rotated_ : original_;
    if (!plan_.quant.weight.enabled()) {
      qw_ = std::move(*source).take_weights();
    } else if (cfg_.weight_quantizer == WeightQuantizer::Gptq) {
      begin(Phase::Gptq);
      GptqModelReport rep;
      qw_ = gptq_quantize_model(std::move(*source), gptq_hook(), calib_windows_, gptq_options(), &steps_, &rep);
      grids_ = rep.grids;
      rec_.method.gptq = GptqRecord{rep.layer_loss, rep.dead_columns, rep.seconds};
    } else {
      begin(Phase::Quantize);
      qw_ = std::move(*source).take_weights();
      quantize_weights_rtn(qw_, plan_.quant, &grids_);
    }
    source.reset();
  }

  // ---- layer streaming (docs/methods.md 1.7): the phases read the model a piece at a time from
  // its files, and the run's model file is written a tensor at a time as the pieces are made
  DType file_dtype() const { return precision_ == Precision::BFloat16 ? DType::BF16 : DType::F32; }
  LayerStream source_stream() const { return LayerStream(source_config_, source_st_, folder_.dir, dtype(), device_); }
  // The run's model as written so far (the rotated, then the quantized weights); before anything is
  // written (no rotation), the source.
  LayerStream written_stream() {
    if (!out_) return source_stream();
    auto st = std::make_shared<ShardedSafetensors>(ShardedSafetensors::open_file(out_->partial_path()));
    return LayerStream(mc(), std::move(st), (tmp_ / "model").string(), dtype(), device_);
  }
  SafetensorsWriter& writer() {
    if (!out_) {
      fs::create_directories(tmp_ / "model");
      out_ = std::make_unique<SafetensorsWriter>((tmp_ / "model" / "model.safetensors").string(),
                                                 model_file_layout(mc(), file_dtype()),
                                                 std::map<std::string, std::string>{{"format", "pt"}});
    }
    return *out_;
  }
  // As save_model stores it: in the file's dtype (the run's), on the host, contiguous.
  void put(const std::string& name, const at::Tensor& t) {
    const at::Tensor host = t.to(at::kCPU, dtype()).contiguous();
    writer().write(name, host.data_ptr(), static_cast<uint64_t>(host.nbytes()));
  }
  void put_layer(int i, const LayerWeights& l) {
    for (const TensorView& v : model_file_layout(mc(), file_dtype())) {
      std::string part;
      if (layer_of_tensor(v.name, &part) == i) put(v.name, layer_tensor_named(l, part));
    }
  }
  // What no phase rewrote (the embeddings, norms and head of a run without rotation; every tensor
  // of one without weight quantization), from the source as the whole run would hold it;
  // `layers` false: only what belongs to no decoder layer.
  void copy_unwritten(bool layers = true) {
    const LayerStream src = source_stream();
    for (const TensorView& v : model_file_layout(mc(), file_dtype()))
      if (!out_->written(v.name) && (layers || layer_of_tensor(v.name) < 0)) {
        if (outer_) outer_->check();
        put(v.name, src.read(v.name));
        release_free_memory();
      }
  }
  void layer_progress(int done, int total, double value = 0) {
    CalibProgress ev = progress(done, total);
    ev.value = value;
    emit(ev, done == total);
  }
  void rotate_streamed(const ResidualRotations& r64) {
    c10::NoGradGuard no_grad;
    const LayerStream src = source_stream();
    const WeightRotation wr(mc(), r64, plan_.online, device_, dtype());
    const int L = static_cast<int>(mc().num_hidden_layers);
    put("model.embed_tokens.weight", wr.embed_tokens(src.read("model.embed_tokens.weight")));
    release_free_memory();
    for (int i = 0; i < L; ++i) {
      if (outer_) outer_->check();
      put_layer(i, wr.layer(i, fuse_layer_norms(src.read_layer(i))));
      release_free_memory();
      layer_progress(i + 1, L + 1);
    }
    const at::Tensor norm = src.read("model.norm.weight");
    put("lm_head.weight", wr.lm_head(fuse_final_norm(src.read_lm_head(), norm)));
    put("model.norm.weight", at::ones_like(norm));
    release_free_memory();
    layer_progress(L + 1, L + 1);
  }
  void quantize_streamed() {
    if (!plan_.quant.weight.enabled()) return;  // copied as it is when the run is written
    c10::NoGradGuard no_grad;
    const int L = static_cast<int>(mc().num_hidden_layers);
    const bool gptq = cfg_.weight_quantizer == WeightQuantizer::Gptq;
    begin(gptq ? Phase::Gptq : Phase::Quantize);
    LayerStream src = written_stream();
    writer();
    // The embeddings, norms and head of a run without rotation first, for the evaluation that
    // reads this file next: one vocabulary matrix in memory before the layers, not beside what
    // the layers' quantization leaves in the allocator.
    copy_unwritten(/*layers=*/false);
    if (gptq) {
      const GptqModelOptions go = gptq_options();
      std::vector<at::Tensor> hidden = src.embed(calib_windows_, go.batch, device_);
      LlamaModel frame(mc(), placeholder_weights(mc(), dtype(), device_));
      const ForwardContext ctx = frame.make_context(calib_windows_.size(1));
      GptqModelReport rep = gptq_layers(
          frame, hidden, ctx, gptq_hook(), go, &steps_, [&](int i) { return src.read_layer(i); },
          [&](int i, LayerWeights&& layer) { put_layer(i, layer); });
      grids_ = std::move(rep.grids);
      rec_.method.gptq = GptqRecord{rep.layer_loss, rep.dead_columns, rep.seconds};
    } else {
      for (int i = 0; i < L; ++i) {
        if (outer_) outer_->check();
        LayerWeights layer = src.read_layer(i);
        std::vector<WeightQuantParams> grids;
        quantize_layer_rtn(layer, plan_.quant, &grids);
        put_layer(i, layer);
        grids_.push_back(std::move(grids));
        release_free_memory();
        layer_progress(i + 1, L);
      }
    }
  }

  // ---- the record and the run directory
  CalibOutcome record() {
    begin(Phase::Write);
    bool has_correction = false;
    for (const auto* v : {&skip_.attn_rank_r, &skip_.mlp_rank_r})
      for (const ResidualCorrection& c : *v) has_correction |= c.rank > 0;
    const QuantConfig& quant = plan_.quant;
    rec_.quantizers = {quantizer_record(quant.weight), quant.weight_mse_clip,
                       weight_quantizer_name(cfg_.weight_quantizer), quantizer_record(quant.activation),
                       plan_.o_proj_group, quantizer_record(quant.kv)};
    rec_.online = {plan_.online.qk_hadamard, plan_.online.down_hadamard, plan_.online.heads_hadamard, has_correction};
    rec_.method.heads_hadamard_note = plan_.heads_hadamard_note;
    rec_.results.eval_windows = q_.windows;
    rec_.results.eval_seq_len = q_.seq_len;
    rec_.results.eval_tokens = q_.tokens_forward;
    rec_.results.fp_perplexity = fp_.perplexity;
    rec_.results.quantized_perplexity = q_.perplexity;
    rec_.results.eval_tokens_per_s = q_.tokens_per_s;
    const std::string dt = precision_name(precision_);
    rec_.compute.weights_and_activations = dt;
    rec_.compute.rotation_learning = !method_learns(cfg_.method)                   ? "none"
                                     : precision_ == Precision::BFloat16          ? dt
                                     : plan_.tf32_learning                         ? "tf32"
                                                                                   : "float32";
    // Each phase's forward (or, for the rotations of a method that learns none, the fusion's)
    // dtype, in run order.
    rec_.compute.phases.clear();
    for (Phase p : phases_of(cfg_))
      rec_.compute.phases.emplace_back(phase_name(p), p != Phase::Rotate           ? dt
                                                      : method_learns(cfg_.method) ? rec_.compute.rotation_learning
                                                                                   : rec_.compute.weight_fusion);
    rec_.compute.libtorch = TORCH_VERSION;
    rec_.compute.attention = attention_kernel(device_);
    rec_.gpu_memory_in_use_bytes.reset();
    if (device_.is_cuda()) rec_.gpu_memory_in_use_bytes = kernels::cuda_memory_in_use_bytes(cfg_.cuda_device);
    write_directory();
    return {final_dir_.string(), rec_, stats_before_, stats_after_};
  }

  void write_directory() {
    fs::create_directories(tmp_ / "model");
    SaveOptions so;
    // The model as it was evaluated: float32, or bfloat16 for a bfloat16 run.
    so.file_dtype = file_dtype();
    so.tokenizer_json = tokenizer_path_;
    if (streamed_) {
      writer();  // a run without rotation or weight quantization has not opened it yet
      copy_unwritten();
      out_->commit();
      out_.reset();
      save_model_metadata((tmp_ / "model").string(), mc(), so);
    } else {
      save_model((tmp_ / "model").string(), mc(), move_weights(qw_, at::Device(at::kCPU)), so);
    }
    if (!grids_.empty()) {
      std::vector<std::pair<std::string, at::Tensor>> t;
      for (size_t i = 0; i < grids_.size(); ++i) {
        const std::vector<std::string> names = linear_weight_names(static_cast<int>(i));
        for (size_t k = 0; k < grids_[i].size(); ++k) {
          t.emplace_back(names[k] + ".scale", grids_[i][k].scale);
          t.emplace_back(names[k] + ".zero", grids_[i][k].zero);
        }
      }
      save_tensors((tmp_ / "weight_grids.safetensors").string(), t);
    }
    if (final_rot_) {
      std::vector<std::pair<std::string, at::Tensor>> t;
      for (int i = 0; i < final_rot_->layers(); ++i) {
        t.emplace_back(rotation_tensor("attn_in", i), final_rot_->attn_in[i]);
        t.emplace_back(rotation_tensor("mlp_in", i), final_rot_->mlp_in[i]);
        if (final_rot_->head[i].defined()) t.emplace_back(rotation_tensor("head", i), final_rot_->head[i]);
      }
      t.emplace_back("final", final_rot_->final_basis);
      save_tensors((tmp_ / "rotations.safetensors").string(), t);
    }
    {
      std::vector<std::pair<std::string, at::Tensor>> t;
      for (size_t i = 0; i < skip_.attn_rank_r.size(); ++i) {
        const std::pair<const char*, const ResidualCorrection*> adds[] = {{"attn", &skip_.attn_rank_r[i]},
                                                                            {"mlp", &skip_.mlp_rank_r[i]}};
        for (const auto& [name, c] : adds) {
          if (c->rank == 0) continue;
          t.emplace_back(correction_tensor(name, static_cast<int>(i), "q"), c->q);
          t.emplace_back(correction_tensor(name, static_cast<int>(i), "m"), c->m);
        }
      }
      if (!t.empty()) save_tensors((tmp_ / "online.safetensors").string(), t);
    }
    nlohmann::json stats = {{"before", stats_to_json(stats_before_)},
                            {"after", stats_to_json(stats_after_)},
                            {"windows", stats_windows().size(0)},
                            {"seq_len", seq_len_}};
    write_file_atomically((tmp_ / "stats.json").string(), stats.dump());

    end_phase();
    rec_.timing.calibration_seconds = seconds_of(Phase::Rotate) + seconds_of(Phase::Gptq) + seconds_of(Phase::Quantize);
    rec_.timing.total_seconds = std::chrono::duration<double>(Clock::now() - t_start_).count();
    // The high-water mark was reset at each phase: the run's peak is the largest seen.
    rec_.peak_rss_bytes = std::max(peak_rss_bytes(), peak_seen_);
    if (!hwm_resets_) rec_.memory.measured_bytes.clear();
    rec_.finished = now_iso8601();
    write_file_atomically((tmp_ / "run.json").string(), run_record_to_json(rec_).dump(2));
    if (outer_) outer_->check();
    move_into_place();
    if (observer_) {
      CalibProgress ev = progress(1, 1);
      ev.overall_fraction = 1;
      emit(ev, true);
    }
  }

  // About what write_directory() writes (float32 model, grids, rotations, corrections, JSON),
  // checked against the free space before the work rather than found missing after it.
  void check_free_space() const {
    const ModelConfig& c = mc();
    const uint64_t params = static_cast<uint64_t>(c.parameter_count()), h = c.hidden_size, layers = c.num_hidden_layers;
    uint64_t bytes = params * static_cast<uint64_t>(element_bytes(precision_)) + (256 << 10);
    std::error_code ec;
    if (!tokenizer_path_.empty()) bytes += fs::file_size(tokenizer_path_, ec);
    if (cfg_.wbits < 16) bytes += params * 8 / static_cast<uint64_t>(cfg_.w_group > 0 ? cfg_.w_group : 64);
    if (method_rotates(cfg_.method)) bytes += (2 * layers + 1) * h * h * 4 + layers * c.head_dim * c.head_dim * 4;
    if (cfg_.method == Method::ReSpin) {
      const uint64_t r = cfg_.rank < 0 ? h : std::min<uint64_t>(static_cast<uint64_t>(cfg_.rank), h);
      bytes += 2 * layers * (h * r + r * r) * 4;
    }
    const fs::path parent = final_dir_.parent_path();
    uint64_t free = 0;
    try {
      free = available_bytes(parent.string());
    } catch (const Error&) {
      return;  // unknown: the writes will say
    }
    if (free < bytes) {
      char msg[160];
      std::snprintf(msg, sizeof msg, ": not enough free space for the run directory (about %.2f MB needed, %.2f MB free)",
                    bytes / 1e6, free / 1e6);
      throw Error(parent.string() + msg);
    }
  }

  // The finished run into place. An --out that appeared meanwhile is never replaced (rename(2)
  // would replace an empty directory), and when the move fails the complete run is kept.
  void move_into_place() {
    int rc = ::renameat2(AT_FDCWD, tmp_.c_str(), AT_FDCWD, final_dir_.c_str(), RENAME_NOREPLACE);
    if (rc != 0 && (errno == EINVAL || errno == ENOSYS)) {  // a file system without RENAME_NOREPLACE
      // Claim the name with an empty directory of our own (mkdir fails if anything is there), then
      // rename over it: rename(2) replaces only that empty directory, never one that appeared.
      rc = ::mkdir(final_dir_.c_str(), 0755);
      if (rc == 0) {
        rc = ::rename(tmp_.c_str(), final_dir_.c_str());
        if (rc != 0) {
          const int e = errno;
          ::rmdir(final_dir_.c_str());
          errno = e;
        }
      }
    }
    committed_ = true;  // from here on the temporary directory is never removed
    if (rc != 0) {
      const std::string why = std::strerror(errno);
      throw Error(final_dir_.string() + ": cannot move the finished run into place (" + why +
                  "); the complete run is kept in " + tmp_.string() + " (rename it, or record it with `respin runs import " +
                  tmp_.string() + "`)");
    }
  }

  const CalibConfig requested_;
  const std::string out_dir_;
  RunControl* outer_;
  RunControl steps_;
  CalibObserver* observer_;
  std::string* phase_out_ = nullptr;
  bool committed_ = false;

  CalibConfig cfg_;
  RunRecord rec_;
  TimingRecord& timing_ = rec_.timing;
  Clock::time_point t_start_, phase_t0_, last_emit_{};
  Phase phase_ = Phase::Load;
  bool phase_active_ = false;
  int64_t baseline_rss_ = 0, peak_seen_ = 0;
  int64_t baseline_device_ = 0;  // bytes libtorch held on the CUDA device when the run began
  bool hwm_resets_ = false;
  double total_weight_ = 0, done_weight_ = 0;

  at::Device device_ = at::kCPU;
  Precision precision_ = Precision::Float32;  // resolved by the plan
  at::ScalarType dtype() const { return compute_type(precision_); }  // the weights' and the forward's
  ModelFolder folder_;
  std::string tokenizer_path_, calib_src_, eval_src_;
  ModelConfig config_;
  std::optional<LlamaModel> original_;
  bool streamed_ = false;  // the plan's choice: the phases a decoder layer at a time
  std::shared_ptr<const ShardedSafetensors> source_st_;
  ModelConfig source_config_;
  std::unique_ptr<SafetensorsWriter> out_;  // tmp_/model/model.safetensors as it is made (streamed)
  int64_t seq_len_ = 0;
  at::Tensor calib_, calib_windows_;
  std::vector<int> eval_ids_;
  PerplexityOptions po_;
  PerplexityResult fp_, q_;
  std::vector<SiteStats> stats_before_, stats_after_;
  MethodPlan plan_;
  std::optional<LlamaModel> rotated_;
  SkipTransitions skip_;
  std::optional<ResidualRotations> final_rot_;
  ModelWeights qw_;
  ModelWeightGrids grids_;
  std::optional<RunRecord> source_;
  fs::path final_dir_, tmp_;
};

}  // namespace

// ---------------------------------------------------------------------------------------------

namespace {

// Matmul rates of `device` (FLOP/s), measured once per device, dtype and shape in a process (about
// 0.1 s each, each product repeated for at least 50 ms after a warm-up): in `dtype` on the model's
// own MLP shape (512 tokens x hidden x intermediate, what the forward spends its time on; hidden
// at most 2048, intermediate at most 8192), and in float64 on hidden x hidden (the rotations'
// folding; at most 1024 on a CPU).
std::pair<double, double> matmul_rates(at::Device device, at::ScalarType dtype, int64_t hidden, int64_t intermediate) {
  static std::mutex mutex;
  static std::map<std::string, std::pair<double, double>> cache;
  // Capped so that a 70B shape measures in a fraction of a second on a CPU as well.
  const int64_t D = std::clamp<int64_t>(hidden, 64, 2048), I = std::clamp<int64_t>(intermediate, 64, 8192);
  const std::string key = device.str() + "/" + c10::toString(dtype) + "/" + std::to_string(D) + "x" + std::to_string(I);
  {
    std::lock_guard<std::mutex> lock(mutex);
    if (auto it = cache.find(key); it != cache.end()) return it->second;
  }
  c10::NoGradGuard no_grad;
  auto rate = [&](at::ScalarType t, int64_t m, int64_t k, int64_t n) {
    const at::Tensor a = at::randn({m, k}, at::TensorOptions().dtype(at::kFloat)).to(device, t);
    const at::Tensor b = at::randn({k, n}, at::TensorOptions().dtype(at::kFloat)).to(device, t);
    (void)at::matmul(a, b).sum().item<double>();  // warm-up (kernels chosen, buffers touched)
    int reps = 0;
    double seconds = 0;
    const auto t0 = Clock::now();
    at::Tensor c;
    do {
      c = at::matmul(a, b);
      ++reps;
      if (reps % 4 == 0 || device.is_cpu()) (void)c.sum().item<double>();  // waits for the device
      seconds = std::chrono::duration<double>(Clock::now() - t0).count();
    } while (seconds < 0.05 && reps < 1000);
    (void)c.sum().item<double>();
    seconds = std::chrono::duration<double>(Clock::now() - t0).count();
    return 2.0 * static_cast<double>(m) * k * n * reps / seconds;
  };
  const int64_t d64 = std::min<int64_t>(D, device.is_cuda() ? 4096 : 1024);
  const std::pair<double, double> r{rate(dtype, 512, D, I), rate(at::kDouble, d64, d64, d64)};
  std::lock_guard<std::mutex> lock(mutex);
  cache[key] = r;
  return r;
}

// Bytes of a text file (0 when it cannot be read: the run itself will say why).
int64_t file_bytes(const std::string& path) {
  std::error_code ec;
  const uintmax_t n = path.empty() ? 0 : fs::file_size(path, ec);
  return ec ? 0 : static_cast<int64_t>(n);
}

// Bytes of the corpus folder's files, when the run reads the corpus for a text it was not given
// (a missing or unreadable folder counts nothing).
int64_t corpus_bytes(const CalibConfig& c) {
  if (!c.calib_text.empty() && !c.eval_text.empty()) return 0;
  int64_t total = 0;
  std::function<void(const std::string&, int)> add_folder = [&](const std::string& dir, int depth) {
    try {
      for (const DirEntry& e : list_directory(dir)) {
        if (e.is_regular_file) total += static_cast<int64_t>(e.size);
        else if (e.is_directory && depth < 2) add_folder(dir + "/" + e.name, depth + 1);
      }
    } catch (const Error&) {
    }
  };
  add_folder(c.data_dir.empty() ? default_corpus_dir() : c.data_dir, 0);
  return total;
}

}  // namespace

namespace {

// The target of `cfg` with the model's config and safetensors headers already read.
PlanTarget plan_target_of(const CalibConfig& cfg, const ModelConfig& mc, const ShardedSafetensors& st) {
  PlanTarget t;
  std::optional<at::Device> device;
  try {
    device = resolve_device(cfg.device, cfg.cuda_device);
  } catch (const Error&) {
    // Planning for a GPU this machine does not have: only with a budget to plan for.
    if (cfg.device != DeviceChoice::Cuda || cfg.device_memory <= 0) throw;
  }
  t.device = device ? (device->is_cuda() ? "cuda:" + std::to_string(std::max<int>(device->index(), 0)) : "cpu")
                    : "cuda:" + std::to_string(cfg.cuda_device);
  for (const std::string& name : st.names()) t.model_file_bytes += static_cast<int64_t>(st.find(name)->info->nbytes());
  // The dtype the model is stored in: its embeddings' (a checkpoint may keep its norms in float32
  // beside bfloat16 matrices; the matrices are what the precision is about).
  const ShardedSafetensors::Entry* embed = st.find("model.embed_tokens.weight");
  t.precision = resolve_precision(cfg.precision, t.device != "cpu", embed ? embed->info->dtype : DType::F32);
  // The texts the run reads: the given files, or the corpus (whose test split is one document in
  // 20, core/data/corpus.h) for a text not given.
  const int64_t corpus = corpus_bytes(cfg);
  t.texts_bytes = file_bytes(cfg.calib_text) + file_bytes(cfg.eval_text) + corpus;
  t.eval_text_bytes = cfg.eval_text.empty() ? corpus / 20 : file_bytes(cfg.eval_text);
  // The device's own matmul rates for the time estimate (a device this machine lacks: none).
  if (device) {
    const auto [rate, rate64] = matmul_rates(*device, compute_type(t.precision), mc.hidden_size, mc.intermediate_size);
    t.flops_per_second = rate;
    t.f64_flops_per_second = rate64;
  }
  if (cfg.device_memory > 0) {
    t.capacity_bytes = cfg.device_memory;
    t.capacity_given = true;
  } else if (device && device->is_cuda()) {
    t.capacity_bytes = kernels::cuda_memory_total_bytes(std::max<int>(device->index(), 0));
  } else {
    t.capacity_bytes = host_memory_for_runs();
  }
  return t;
}

}  // namespace

MemoryPlan plan_calibration(const CalibConfig& cfg) {
  cfg.validate();
  const ModelFolder folder = ModelFolder::open(cfg.model);
  const ModelConfig mc = load_model_config(folder.config_path);
  const ShardedSafetensors st = ShardedSafetensors::open_folder(folder.dir);
  check_model_tensors(st, mc, folder.config_path, folder.dir);
  return plan_memory(cfg, mc, plan_target_of(cfg, mc, st));
}

PlanTarget plan_target(const CalibConfig& cfg) {
  const ModelFolder folder = ModelFolder::open(cfg.model);
  return plan_target_of(cfg, load_model_config(folder.config_path), ShardedSafetensors::open_folder(folder.dir));
}

at::Device resolve_device(DeviceChoice choice, int cuda_device) {
  if (choice == DeviceChoice::Cpu) return at::Device(at::kCPU);
  if (at::hasCUDA()) {
    const int present = static_cast<int>(torch::cuda::device_count());
    if (cuda_device < 0 || cuda_device >= present)
      throw Error("CUDA device " + std::to_string(cuda_device) + " requested, but " + std::to_string(present) +
                  (present == 1 ? " device is" : " devices are") + " present (0.." + std::to_string(present - 1) + ")");
    // Device 0 stays the unindexed "cuda" (the current device) that run records have always named.
    return cuda_device == 0 ? at::Device(at::kCUDA) : at::Device(at::kCUDA, static_cast<c10::DeviceIndex>(cuda_device));
  }
  if (choice == DeviceChoice::Auto) return at::Device(at::kCPU);
  throw Error(std::string("device cuda") + (cuda_device > 0 ? ":" + std::to_string(cuda_device) : "") +
              " requested, but libtorch " TORCH_VERSION
              " has no usable CUDA device here (a CPU-only build, or no GPU or driver)");
}

at::Device resolve_device(const std::string& text) {
  const auto [choice, cuda_device] = parse_device(text);
  return resolve_device(choice, cuda_device);
}

QuantConfig CalibConfig::quant_config() const {
  QuantConfig q;
  q.weight = QuantSpec{wbits, w_sym, w_group, 1.0};
  q.weight_mse_clip = w_mse_clip;
  q.activation = QuantSpec{abits, a_sym, a_group, a_clip};
  q.kv = QuantSpec{kvbits, kv_sym, kv_group, kv_clip};
  return q;
}

MethodPlan plan_method(const CalibConfig& cfg, const ModelConfig& mc, at::Device device) {
  MethodPlan p;
  p.method = cfg.method;
  p.quant = cfg.quant_config();
  p.quant.validate();
  p.online = method_online_transforms(cfg.method, p.quant);
  if (p.online.heads_hadamard) {
    try {
      HadamardTransform::of_size(mc.num_attention_heads);
    } catch (const Error&) {
      // QuaRot's Hadamard across heads needs a Hadamard of order num_heads; without one the o_proj
      // input keeps only the per-head rotation and is quantized per head instead.
      p.online.heads_hadamard = false;
      p.heads_hadamard_note = "skipped: no Hadamard matrix of order " + std::to_string(mc.num_attention_heads) +
                              "; o_proj input quantized per head";
    }
  }
  p.o_proj_group = method_o_proj_group(cfg.method, mc);
  if (cfg.method == Method::QuaRot && !p.online.heads_hadamard) p.o_proj_group = mc.head_dim;
  // An explicit activation group size (--a-group) applies to o_proj's input too, as it does to
  // every other activation quantizer; the method's own choice (per token or per head) is the default.
  if (p.quant.activation.group_size > 0) p.o_proj_group = p.quant.activation.group_size;
  // SpinQuant's protocol: rotations for a GPTQ pipeline are learned with W16, for RTN with the
  // target weight bits.
  p.training_quant = p.quant;
  if (cfg.weight_quantizer == WeightQuantizer::Gptq) p.training_quant.weight.bits = 16;
  // Compute precision: float32 everywhere; on CUDA the rotation learning (the long, gradient-noisy
  // part) uses TF32 tensor-core matmuls, while the reported perplexities, statistics, GPTQ and the
  // final float64 weight fusion stay in full float32/float64 (run.json's "compute" records it).
  p.tf32_learning = device.is_cuda() && method_learns(cfg.method);
  if (cfg.method == Method::ReSpin)
    p.rank = cfg.rank < 0 ? mc.hidden_size : std::min<int64_t>(cfg.rank, mc.hidden_size);
  return p;
}

std::vector<std::string> linear_weight_names(int layer) {
  const std::string p = "model.layers." + std::to_string(layer) + ".";
  return {p + "self_attn.q_proj.weight", p + "self_attn.k_proj.weight", p + "self_attn.v_proj.weight",
          p + "self_attn.o_proj.weight", p + "mlp.gate_proj.weight",    p + "mlp.up_proj.weight",
          p + "mlp.down_proj.weight"};
}

ActivationHook run_hook(const ModelConfig& c, at::Device device, const OnlineTransforms& online,
                        const SkipTransitions& skip, const QuantConfig& quant, int64_t o_proj_group,
                        ActivationHook observer) {
  OnlineHookOptions ho;
  ho.device = device;
  ho.online = online;
  ho.skip = skip;
  ho.quant = quant;
  ho.o_proj_group = o_proj_group;
  ho.observer = std::move(observer);
  return online_hook(c, std::move(ho));
}

const char* libtorch_version() { return TORCH_VERSION; }

EvalText eval_text_of(const CalibConfig& c) {
  if (!c.eval_text.empty()) return {c.eval_text, read_text_file(c.eval_text)};
  return {"corpus test split", Corpus::load(c.data_dir.empty() ? default_corpus_dir() : c.data_dir).text_of(Split::Test)};
}

CalibOutcome run_calibration(const CalibConfig& cfg, const std::string& out_dir, RunControl* control,
                             CalibObserver* observer) {
  // Every failure leaves with the phase it happened in ("calibration (quarot), phase 'rotate':
  // ..."), on one line (see core/util/error_message.h).
  std::string phase = "setup";
  try {
    Pipeline p(cfg, out_dir, control, observer);
    return p.run(phase);
  } catch (...) {
    rethrow_with_context("calibration (" + std::string(method_name(cfg.method)) + "), phase '" + phase + "'");
  }
}

// ---------------------------------------------------------------------------------------------
// Reading a run directory back

bool is_run_dir(const std::string& dir) { return fs::is_regular_file(fs::path(dir) / "run.json"); }

ResidualRotations load_rotations(const std::string& dir, const ModelConfig& mc, at::Device device) {
  const std::string path = (fs::path(dir) / "rotations.safetensors").string();
  if (!fs::is_regular_file(path)) throw Error(path + ": missing (a run without rotations)");
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
    rot.attn_in.push_back(get(rotation_tensor("attn_in", i)));
    rot.mlp_in.push_back(get(rotation_tensor("mlp_in", i)));
    auto h = t.find(rotation_tensor("head", i));
    rot.head.push_back(h == t.end() ? at::Tensor() : h->second.to(device, at::kDouble));
  }
  rot.final_basis = get("final");
  return rot;
}

ModelWeightGrids load_weight_grids(const std::string& dir, const ModelConfig& mc) {
  const std::string path = (fs::path(dir) / "weight_grids.safetensors").string();
  if (!fs::is_regular_file(path)) return {};
  std::map<std::string, at::Tensor> t = load_tensors(path);
  ModelWeightGrids grids(mc.num_hidden_layers);
  for (int i = 0; i < mc.num_hidden_layers; ++i)
    for (const std::string& name : linear_weight_names(i)) {
      auto s = t.find(name + ".scale"), z = t.find(name + ".zero");
      if (s == t.end() || z == t.end()) throw Error(path + ": missing the grid of '" + name + "'");
      grids[i].push_back(WeightQuantParams{s->second, z->second});
    }
  return grids;
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
  RunRecord rec = run_record_from_json(run, run_path);
  for (const char* key : {"quantizers", "online"})
    if (!run.contains(key)) throw Error(run_path + ": missing field '" + std::string(key) + "'");
  if (!run["quantizers"].contains("o_proj_activation_group"))
    throw Error(run_path + ": missing field 'quantizers.o_proj_activation_group'");
  CalibConfig cfg = rec.config;
  OnlineTransforms online{rec.online.qk_hadamard, rec.online.down_hadamard, rec.online.heads_hadamard};
  const int64_t o_group = rec.quantizers.o_proj_activation_group;
  // In the precision the run computed in, so that its numbers are reproduced (docs/methods.md 1.9).
  const at::ScalarType dtype = compute_type(rec.compute.weights_and_activations == precision_name(Precision::BFloat16)
                                                ? Precision::BFloat16
                                                : Precision::Float32);
  LlamaModel model = load_model((fs::path(dir) / "model").string(), {dtype, device});
  const ModelConfig& mc = model.config();
  SkipTransitions skip;
  if (rank >= 0) {
    if (cfg.method != Method::ReSpin)
      throw Error("a rank applies to respin runs only; " + run_path + " is a " + method_name(cfg.method) + " run");
    skip = rank_r_transitions(load_rotations(dir, mc, device), std::min<int64_t>(rank, mc.hidden_size));
    cfg.rank = std::min<int64_t>(rank, mc.hidden_size);
  } else if (rec.online.skip_correction) {
    const std::string path = (fs::path(dir) / "online.safetensors").string();
    std::map<std::string, at::Tensor> t = load_tensors(path);
    for (int i = 0; i < mc.num_hidden_layers; ++i) {
      const std::pair<const char*, std::vector<ResidualCorrection>*> adds[] = {{"attn", &skip.attn_rank_r},
                                                                               {"mlp", &skip.mlp_rank_r}};
      for (const auto& [add, vec] : adds) {
        // A correction is stored for every residual add of a run that has them: a missing one is
        // damage, not an identity.
        auto stored = [&](const std::string& name) -> const at::Tensor& {
          auto it = t.find(name);
          if (it == t.end()) throw Error(path + ": tensor '" + name + "' is missing");
          return it->second;
        };
        const at::Tensor &q = stored(correction_tensor(add, i, "q")), &m = stored(correction_tensor(add, i, "m"));
        if (q.dim() != 2 || q.size(0) != mc.hidden_size || m.dim() != 2 || m.size(0) != q.size(1) ||
            m.size(1) != q.size(1))
          throw Error(path + ": correction " + std::string(add) + "_skip." + std::to_string(i) +
                      " has inconsistent shapes");
        ResidualCorrection c;
        c.q = q.to(device);
        c.m = m.to(device);
        c.rank = c.q.size(1);
        vec->push_back(c);
      }
    }
  }
  QuantConfig quant;
  quant.weight = quant_spec(rec.quantizers.weight);
  quant.weight_mse_clip = rec.quantizers.weight_mse_clip;
  quant.activation = quant_spec(rec.quantizers.activation);
  quant.kv = quant_spec(rec.quantizers.kv);
  model.set_hook(run_hook(mc, device, online, skip, quant, o_group));
  if (rec.results.eval_seq_len <= 0 || rec.results.eval_windows <= 0)
    throw Error(run_path + ": bad results fields (eval_seq_len and eval_windows must be positive)");
  LoadedRun out{dir, rec, cfg, std::move(model), online, skip, o_group};
  out.eval_seq_len = rec.results.eval_seq_len;
  out.eval_windows = rec.results.eval_windows;
  return out;
}

}  // namespace

LoadedRun load_run(const std::string& dir, int64_t rank, at::Device device) {
  // A field of the wrong JSON type anywhere in run.json names the file, like every other damage.
  try {
    return load_run_checked(dir, rank, device);
  } catch (const nlohmann::json::exception& e) {
    throw Error((fs::path(dir) / "run.json").string() + ": " + e.what());
  }
}

}  // namespace respin
