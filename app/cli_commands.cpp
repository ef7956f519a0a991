// The verbs of `respin` (see cli_commands.h): thin wiring of core calls and output formatting.
#include "app/cli_commands.h"

#include <ATen/ATen.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <csignal>
#include <filesystem>
#include <memory>
#include <optional>
#include <set>
#include <cstdio>
#include <iostream>
#include <nlohmann/json.hpp>

#include "core/calib/calibrate.h"
#include "core/store/recorder.h"
#include "core/store/run_store.h"
#include "core/data/corpus.h"
#include "core/eval/generate.h"
#include "core/eval/perplexity.h"
#include "core/export/exported_model.h"
#include "core/methods/rtn.h"
#include "core/train/forge.h"
#include "core/io/atomic_file.h"
#include "core/io/model_check.h"
#include "core/io/model_config.h"
#include "core/io/model_folder.h"
#include "core/io/model_summary.h"
#include "core/model/random_init.h"
#include "core/model/weights.h"
#include "core/tokenizer/tokenizer.h"
#include "core/util/error.h"
#include "core/util/error_message.h"
#include "core/util/run_control.h"
#include "core/util/threads.h"

namespace respin::cli {

namespace {

RunControl g_control;

void on_stop_signal(int) { g_control.request_stop(); }

// JSON for stdout. Paths are bytes and need not be UTF-8: such bytes print as U+FFFD instead of
// failing the whole command after its work is done.
std::string json_text(const nlohmann::json& j) {
  return j.dump(2, ' ', false, nlohmann::json::error_handler_t::replace);
}

std::string human_count(int64_t n) {
  char buf[32];
  if (n >= 1000000000) std::snprintf(buf, sizeof buf, "%.2fB", n / 1e9);
  else if (n >= 1000000) std::snprintf(buf, sizeof buf, "%.2fM", n / 1e6);
  else if (n >= 1000) std::snprintf(buf, sizeof buf, "%.1fK", n / 1e3);
  else std::snprintf(buf, sizeof buf, "%lld", static_cast<long long>(n));
  return buf;
}

std::string duration_text(double s) {
  char buf[32];
  if (s < 0) return "?";
  if (s < 120) std::snprintf(buf, sizeof buf, "%.0fs", s);
  else if (s < 7200) std::snprintf(buf, sizeof buf, "%.0fm%02.0fs", std::floor(s / 60), std::fmod(s, 60));
  else std::snprintf(buf, sizeof buf, "%.1fh", s / 3600);
  return buf;
}

// Progress on stderr: a redrawn bar on a terminal, otherwise one line every ~10 s per phase.
RunControl::ProgressFn progress_printer() {
  const bool tty = isatty(STDERR_FILENO);
  auto last_line = std::make_shared<std::chrono::steady_clock::time_point>();
  auto last_phase = std::make_shared<std::string>();
  return [=](const ProgressEvent& e) {
    const auto now = std::chrono::steady_clock::now();
    const bool done = e.total > 0 && e.done >= e.total;
    if (!tty && e.phase == *last_phase && !done && now - *last_line < std::chrono::seconds(10)) return;
    *last_line = now;
    *last_phase = e.phase;
    if (e.total == 0 && e.done == 0) {  // a phase starts
      if (tty) std::fprintf(stderr, "\r%-100s", (e.phase + "...").c_str());
      else std::fprintf(stderr, "%s...\n", e.phase.c_str());
      std::fflush(stderr);
      return;
    }
    std::string bar;
    if (e.total > 0) {
      const int width = 24, filled = static_cast<int>(width * double(e.done) / e.total);
      bar = "[" + std::string(filled, '#') + std::string(width - filled, '.') + "] ";
    }
    char line[256];
    std::snprintf(line, sizeof line, "%-9s %s%lld/%lld", e.phase.c_str(), bar.c_str(), e.done, e.total);
    std::string text = line;
    if (e.phase == "train" || e.phase == "rotate") std::snprintf(line, sizeof line, "  loss %.3f", e.value), text += line;
    if (e.phase == "gptq") std::snprintf(line, sizeof line, "  layer %d loss %.4g", e.layer, e.value), text += line;
    if (e.phase == "eval") std::snprintf(line, sizeof line, "  ppl %.3f", e.value), text += line;
    if (e.tokens_per_s > 0) std::snprintf(line, sizeof line, "  %.0f tokens/s", e.tokens_per_s), text += line;
    if (e.eta_s >= 0 && !done) text += "  ETA " + duration_text(e.eta_s);
    if (tty) std::fprintf(stderr, "\r%-100s%s", text.c_str(), done ? "\n" : "");
    else std::fprintf(stderr, "%s\n", text.c_str());
    std::fflush(stderr);
  };
}

}  // namespace

RunControl& stop_control() { return g_control; }

std::string store_path(const std::string& db_option) {
  if (!db_option.empty()) return db_option;
  if (const char* env = std::getenv("RESPIN_DB"); env && *env) return env;
  const std::string home = data_home();
  std::error_code ec;
  std::filesystem::create_directories(home, ec);
  return home + "/runs.db";
}

void install_stop_handlers() {
  std::signal(SIGINT, on_stop_signal);
  std::signal(SIGTERM, on_stop_signal);
}

int run_info(const InfoArgs& a) {
  const ModelSummary m = summarize_model(a.model);
  const ModelConfig& c = m.config;
  if (a.json) {
    nlohmann::json j = nlohmann::json::parse(model_config_to_json(c));
    j["parameter_count"] = m.parameters;
    j["folder"] = m.folder;
    j["sharded"] = m.sharded;
    j["weight_bytes"] = m.weight_bytes;
    if (m.tokenizer) {
      j["tokenizer"] = {{"kind", m.tokenizer->kind}, {"vocab_size", m.tokenizer->vocab_size}, {"merges", m.tokenizer->num_merges}};
    } else {
      j["tokenizer"] = nullptr;
    }
    nlohmann::json h = nlohmann::json::array();
    for (const HadamardSummary& x : m.hadamards)
      h.push_back({{"role", x.role}, {"order", x.order},
                   {"construction", x.construction.empty() ? nlohmann::json(nullptr) : nlohmann::json(x.construction)},
                   {"text", x.text}});
    j["hadamard"] = h;
    std::cout << json_text(j) << "\n";
    return 0;
  }
  std::printf("model:          %s\n", m.folder.c_str());
  std::printf("architecture:   %s (%s)\n", c.architecture.c_str(), c.model_type.c_str());
  std::printf("parameters:     %s (%lld), %.1f MB of weights%s\n", human_count(m.parameters).c_str(),
              static_cast<long long>(m.parameters), m.weight_bytes / 1e6, m.sharded ? " (sharded)" : "");
  std::printf("layers:         %lld\n", static_cast<long long>(c.num_hidden_layers));
  std::printf("hidden size:    %lld\n", static_cast<long long>(c.hidden_size));
  std::printf("intermediate:   %lld\n", static_cast<long long>(c.intermediate_size));
  std::printf("heads:          %lld query, %lld key/value (head_dim %lld)\n",
              static_cast<long long>(c.num_attention_heads),
              static_cast<long long>(c.num_key_value_heads), static_cast<long long>(c.head_dim));
  std::printf("vocabulary:     %lld\n", static_cast<long long>(c.vocab_size));
  std::printf("max positions:  %lld\n", static_cast<long long>(c.max_position_embeddings));
  std::printf("rope:           theta %g, scaling %s\n", c.rope_theta, c.rope_scaling.type.c_str());
  std::printf("embeddings:     %s\n", c.tie_word_embeddings ? "tied" : "untied");
  std::printf("dtype:          %s\n", c.torch_dtype.c_str());
  if (m.tokenizer) {
    std::printf("tokenizer:      %s, %d tokens, %d merges\n", m.tokenizer->kind.c_str(), m.tokenizer->vocab_size,
                m.tokenizer->num_merges);
  } else {
    std::printf("tokenizer:      none (no tokenizer.json)\n");
  }
  for (const HadamardSummary& h : m.hadamards) std::printf("hadamard:       %-40s %s\n", (h.role + ":").c_str(), h.text.c_str());
  return 0;
}

int run_tokenize(const TokenizeArgs& a) {
  const std::string path = a.tokenizer.empty() ? ModelFolder::open(a.model).require_tokenizer() : a.tokenizer;
  Tokenizer tok = Tokenizer::from_file(path);
  const std::string text = a.file.empty() ? a.text : read_text_file(a.file);
  std::vector<int> ids = tok.encode(text, a.add_special_tokens);
  std::string line;
  for (size_t i = 0; i < ids.size(); ++i) line += (i ? " " : "") + std::to_string(ids[i]);
  std::cout << line << "\n";
  return 0;
}

int run_eval(const EvalArgs& a) {
  set_compute_threads(a.threads);
  const at::Device device = resolve_device(a.device);
  std::optional<LoadedRun> run;
  std::string model_dir = a.model;
  if (!a.run.empty()) {
    run = load_run(a.run, a.rank, device);
    model_dir = a.run + "/model";
  }
  ModelFolder folder = ModelFolder::open(model_dir);
  Tokenizer tok = Tokenizer::from_file(folder.require_tokenizer());
  LoadOptions lo;
  lo.dtype = a.dtype == "bf16" ? at::kBFloat16 : at::kFloat;
  lo.device = device;
  // An exported folder (respin export: a quantization_config and/or respin_online.json) loads with
  // its integer weights dequantized and its online operations and quantizers installed.
  std::optional<ExportedModel> exported;
  if (!run && is_exported_model_folder(folder.dir)) exported = load_exported_model(folder.dir, lo);
  LlamaModel model = run ? run->model : exported ? *exported->model : load_model(folder.dir, lo);
  if (run && a.dtype != "f32") throw Error("eval --run computes in f32 (the fake-quantized grid is float32)");
  const bool quantized = a.wbits != 16 || a.abits != 16 || a.kvbits != 16;
  if (quantized && run) throw Error("eval --run uses the run's quantizers; --wbits/--abits/--kvbits apply to --model only");
  if (quantized && exported)
    throw Error(folder.dir + " is an exported quantized model (" + exported->description() +
                "): it carries its own quantization; --wbits/--abits/--kvbits apply to plain model folders only");
  if (quantized) {
    model = quantize_rtn(model, rtn_eval_config(a.wbits, a.abits, a.kvbits));
  }
  std::string text_source = a.text_file;
  std::string text;
  if (!a.text_file.empty()) {
    text = read_text_file(a.text_file);
  } else {
    EvalText t = eval_text_of(run ? run->config : CalibConfig{});
    text_source = t.source;
    text = std::move(t.text);
  }
  std::vector<int> ids = with_error_context(text_source, [&] { return tok.encode(text, /*add_special_tokens=*/false); });

  // A run is evaluated with its own protocol unless told otherwise, so the number can be compared
  // with the run's; a plain model with the options' defaults (2048-token windows, all of them).
  PerplexityOptions po;
  const int64_t want_seq = run && !a.seq_len_given ? run->eval_seq_len : a.seq_len;
  po.seq_len = std::min<int64_t>(want_seq, model.config().max_position_embeddings);
  if (po.seq_len < want_seq && (a.seq_len_given || run))
    std::fprintf(stderr, "note: --seq-len %lld capped at the model's max_position_embeddings %lld\n",
                 static_cast<long long>(want_seq), static_cast<long long>(po.seq_len));
  po.max_windows = run && !a.max_windows_given ? run->eval_windows : a.max_windows;
  if (a.batch_given)
    std::fprintf(stderr, "note: --batch is ignored: every window is scored by its own forward; a run that an earlier "
                         "respin scored in batches may differ in the last digits on AVX-512 CPUs\n");
  if (isatty(STDERR_FILENO)) g_control.set_progress_callback(progress_printer(), 100);
  PerplexityResult r = with_error_context("evaluating " + text_source + " (tokenized with " + folder.require_tokenizer() + ")",
                                          [&] { return evaluate_perplexity(model, ids, po, &g_control); });

  if (a.json) {
    nlohmann::json j = {{"model", folder.dir},
                        {"text_file", text_source},
                        {"dtype", a.dtype},
                        {"device", device.str()},
                        {"threads", compute_threads()},
                        {"seq_len", r.seq_len},
                        {"windows", r.windows},
                        {"tokens_total", r.tokens_total},
                        {"tokens_evaluated", r.tokens_forward},
                        {"perplexity", r.perplexity},
                        {"mean_nll", r.mean_nll},
                        {"seconds", r.seconds},
                        {"tokens_per_s", r.tokens_per_s},
                        {"window_nll", r.window_nll}};
    j["quantization"] = nullptr;
    if (run)
      j["quantization"] = {{"run", a.run},
                           {"rank_rebuilt", a.rank >= 0},
                           {"config", nlohmann::json::parse(calib_config_to_json(run->config))}};
    if (quantized)
      j["quantization"] = {{"method", "rtn"}, {"wbits", a.wbits}, {"abits", a.abits}, {"kvbits", a.kvbits}};
    if (exported) {
      j["quantization"] = {{"exported", exported->format}, {"description", exported->description()}};
      if (exported->sidecar && exported->sidecar->source) {
        const SourceRunInfo& src = *exported->sidecar->source;
        j["quantization"]["source_run"] = {{"run", src.run_dir},
                                           {"quantized_perplexity", src.quantized_perplexity},
                                           {"seq_len", src.eval_seq_len},
                                           {"windows", src.eval_windows}};
      }
    }
    std::cout << json_text(j) << "\n";
    return 0;
  }
  std::printf("model:       %s (%s, %s parameters)\n", folder.dir.c_str(),
              model.config().architecture.c_str(), human_count(model.config().parameter_count()).c_str());
  std::printf("text:        %s (%zu bytes, %lld tokens)\n", text_source.c_str(), text.size(),
              static_cast<long long>(r.tokens_total));
  std::printf("windows:     %lld x %lld tokens, %s on %s, %d threads\n", static_cast<long long>(r.windows),
              static_cast<long long>(r.seq_len), a.dtype.c_str(), device.str().c_str(), compute_threads());
  if (run)
    std::printf("quantized:   run %s: %s%s\n", a.run.c_str(), run->config.label().c_str(),
                a.rank >= 0 ? " (rank rebuilt)" : "");
  if (quantized)
    std::printf("quantized:   RTN W%dA%dKV%d (weights per channel sym + MSE clip; activations per token asym)\n",
                a.wbits, a.abits, a.kvbits);
  if (exported) {
    std::printf("quantized:   exported %s\n", exported->description().c_str());
    if (exported->sidecar && exported->sidecar->source) {
      const SourceRunInfo& src = *exported->sidecar->source;
      std::printf("run:         %s: quantized perplexity %.4f (--seq-len %lld --max-windows %lld)\n", src.run_dir.c_str(),
                  src.quantized_perplexity, static_cast<long long>(src.eval_seq_len),
                  static_cast<long long>(src.eval_windows));
    }
  }
  std::printf("perplexity:  %.4f\n", r.perplexity);
  std::printf("throughput:  %.1f tokens/s (%.2f s)\n", r.tokens_per_s, r.seconds);
  return 0;
}

// Progress of a calibration on stderr, through the same printer as the other verbs, with the
// run's overall fraction.
class CalibPrinter : public CalibObserver {
 public:
  CalibPrinter() : print_(progress_printer()) {}
  void on_progress(const CalibProgress& p) override {
    ProgressEvent e;
    e.phase = phase_name(p.phase);
    e.done = p.phase_started ? 0 : p.done;
    e.total = p.phase_started ? 0 : p.total;
    e.tokens_per_s = p.tokens_per_s;
    e.eta_s = p.eta_s;
    e.value = p.value;
    e.layer = p.layer;
    if (!p.phase_started && p.total == 0) return;  // uncounted work inside a phase
    print_(e);
  }

 private:
  RunControl::ProgressFn print_;
};

void print_calibration_summary(const CalibOutcome& r) {
  const RunRecord& rec = r.record;
  const CalibConfig& c = rec.config;
  std::printf("run:                  %s\n", r.run_dir.c_str());
  std::printf("method:               %s, weights %s\n", c.label().c_str(), weight_quantizer_name(c.weight_quantizer));
  std::printf("device:               %s (rotation learning: %s)\n", rec.timing.device.c_str(),
              rec.compute.rotation_learning.c_str());
  std::printf("held-out perplexity:  FP %.4f -> quantized %.4f (%lld windows x %lld tokens)\n",
              rec.results.fp_perplexity, rec.results.quantized_perplexity,
              static_cast<long long>(rec.results.eval_windows), static_cast<long long>(rec.results.eval_seq_len));
  if (rec.method.training && !rec.method.training->loss.empty())
    std::printf("rotation loss:        %.4f -> %.4f over %zu steps\n", rec.method.training->loss.front(),
                rec.method.training->loss.back(), rec.method.training->loss.size());
  std::printf("calibration time:     %s (total %s), peak memory %.0f MiB\n",
              duration_text(rec.timing.calibration_seconds).c_str(), duration_text(rec.timing.total_seconds).c_str(),
              rec.peak_rss_bytes / 1048576.0);
  // The plan's peak beside the measured one (above the process's size before the run).
  const MemoryRecord& m = rec.memory;
  double predicted = 0, measured = 0;
  for (const auto& [phase, v] : m.predicted_bytes) predicted = std::max(predicted, v);
  for (const auto& [phase, v] : m.measured_bytes) measured = std::max(measured, v);
  if (predicted > 0 && measured > 0)
    std::printf("memory above start:   planned %s, measured %s%s\n", format_bytes(static_cast<int64_t>(predicted)).c_str(),
                format_bytes(static_cast<int64_t>(measured)).c_str(),
                m.learning_chosen ? (", learning with --checkpoint-layers --micro-batch " + std::to_string(m.micro_batch) +
                                     " chosen to fit")
                                        .c_str()
                : m.streamed ? ", a decoder layer at a time"
                             : "");
  // The time estimate beside the measured time of the phases it models.
  double est = 0, took = 0;
  for (const auto& [phase, v] : m.predicted_seconds) {
    est += v;
    for (const auto& [p, sec] : rec.timing.phases_seconds) took += p == phase ? sec : 0;
  }
  if (est > 0 && took > 0)
    std::printf("time, estimated phases: planned %s, measured %s\n", format_duration(est).c_str(),
                format_duration(took).c_str());
}

// What the run store holds about a run, said once and as it is: "recorded as run N" only when
// the run's end reached the store (docs/store.md, "Recording a run").
void report_recording(const RunStore& store, const std::optional<int64_t>& id, const std::string& error,
                      bool end_recorded, const std::string& complete_dir, const char* ended) {
  if (!id) {
    if (!error.empty()) std::fprintf(stderr, "warning: the run store could not record this run: %s\n", error.c_str());
    return;
  }
  const long long n = static_cast<long long>(*id);
  if (end_recorded) {
    if (!error.empty())
      std::fprintf(stderr, "warning: the run store missed part of run %lld (loss curve or statistics): %s\n", n,
                   error.c_str());
    std::fprintf(stderr, "recorded as run %lld in %s (%s)\n", n, store.path().c_str(), ended);
    return;
  }
  std::fprintf(stderr, "warning: the run store could not record the end of run %lld: %s\n", n, error.c_str());
  if (!complete_dir.empty())
    std::fprintf(stderr,
                 "run %lld in %s reads interrupted; %s is complete: record it with `respin runs --db %s import %s`\n",
                 n, store.path().c_str(), complete_dir.c_str(), store.path().c_str(), complete_dir.c_str());
  else
    std::fprintf(stderr, "run %lld in %s reads interrupted (it %s)\n", n, store.path().c_str(), ended);
}

// One calibration recorded into `store`, and what the store ended up with said once
// (report_recording), also when it is cancelled or fails. `say_recorded`: say it when all was
// recorded too (a sweep says so only for what went wrong).
static CalibOutcome calibrate_reported(const CalibConfig& c, const std::string& out, RunStore& store, CalibObserver* printer,
                                std::optional<int64_t> sweep, bool say_recorded,
                                std::optional<int64_t>* run_id = nullptr) {
  std::optional<int64_t> id;
  std::string store_error;
  bool end_recorded = false;
  auto on_stop = [&](const char* ended) {
    std::fprintf(stderr, "\n");
    report_recording(store, id, store_error, end_recorded, "", ended);
  };
  std::optional<CalibOutcome> outcome;
  try {
    outcome = calibrate_and_record(c, out, store, &g_control, printer, sweep, &id, &store_error, &end_recorded);
  } catch (const Cancelled&) {
    on_stop("was cancelled");
    throw;
  } catch (...) {
    on_stop("failed");
    throw;
  }
  if (say_recorded || !store_error.empty() || !end_recorded)
    report_recording(store, id, store_error, end_recorded, outcome->run_dir, "finished");
  if (run_id) *run_id = id;
  return std::move(*outcome);
}

int run_plan(const PlanArgs& a) {
  CalibConfig c = a.config;
  if (a.gptq) c.weight_quantizer = WeightQuantizer::Gptq;
  const MemoryPlan plan = plan_calibration(c);
  if (a.json) {
    std::cout << json_text(memory_plan_to_json(plan)) << "\n";
  } else {
    std::printf("%s on %s: %s, the model %s as stored, %s as computed (%s)\n", c.label().c_str(),
                plan.target.device.c_str(), c.model.c_str(), format_bytes(plan.target.model_file_bytes).c_str(),
                format_bytes(plan.model_bytes).c_str(), precision_name(plan.target.precision));
    std::fputs(plan_table(plan).c_str(), stdout);
    std::printf("peak %s in %s, %s %s\n", format_bytes(plan.peak().device_bytes).c_str(), phase_name(plan.peak().phase),
                plan.target.capacity_given ? "budget" : "available", format_bytes(plan.target.capacity_bytes).c_str());
    if (method_learns(c.method))
      std::printf("learning: %s%s%s\n",
                  plan.micro_batch > 0 ? ("micro-batches of " + std::to_string(plan.micro_batch)).c_str()
                                       : "the whole batch at once",
                  plan.checkpoint_layers ? ", layers checkpointed" : "",
                  plan.learning_chosen ? " (chosen to fit)" : "");
    std::printf("streaming: %s\n", plan.streamed ? (plan.streaming_chosen ? "a decoder layer at a time (chosen to fit)"
                                                                          : "a decoder layer at a time")
                                                 : "the whole model in memory");
  }
  if (!plan.fits()) {
    std::fprintf(stderr, "error: %s\n", plan_refusal(plan).c_str());
    return 1;
  }
  return 0;
}

int run_calibrate(const CalibrateArgs& a) {
  CalibConfig c = a.config;
  if (a.gptq) c.weight_quantizer = WeightQuantizer::Gptq;
  set_compute_threads(c.threads);
  CalibPrinter printer;
  std::optional<CalibOutcome> outcome;
  if (a.no_store) {
    outcome = run_calibration(c, a.out, &g_control, &printer);
  } else {
    // A store that cannot record (read-only, locked, damaged) is refused here, before the work.
    RunStore store = RunStore::open(store_path(a.db));
    outcome = calibrate_reported(c, a.out, store, &printer, {}, /*say_recorded=*/true);
  }
  const CalibOutcome& r = *outcome;
  if (a.json) {
    std::cout << json_text(run_record_to_json(r.record)) << "\n";
    return 0;
  }
  print_calibration_summary(r);
  return 0;
}

int run_sweep(const SweepArgs& a) {
  CalibConfig base = a.base.config;
  if (a.base.gptq) base.weight_quantizer = WeightQuantizer::Gptq;
  set_compute_threads(base.threads);
  // The plan: per bit width, every rank (respin) or the one run (other methods).
  std::vector<int64_t> ranks;
  for (const std::string& r : a.ranks) {
    if (r == "full") {
      ranks.push_back(-1);
      continue;
    }
    try {
      size_t used = 0;
      const long long v = std::stoll(r, &used);
      if (used != r.size() || v < 0 || v > (1LL << 20)) throw Error("");
      ranks.push_back(v);
    } catch (const std::exception&) {
      throw Error("--ranks: '" + r + "' is not a rank (a number from 0 to 1048576, or 'full')");
    }
  }
  if (!ranks.empty() && base.method != Method::ReSpin)
    throw Error("--ranks applies to --method respin only (" + std::string(method_name(base.method)) + " has no skip rank)");
  if (ranks.empty()) ranks.push_back(base.rank);
  std::vector<int> bits = a.bits;
  if (bits.empty()) bits.push_back(-1);  // the base config's own bits
  struct Planned {
    CalibConfig config;
    std::string dir;
    bool learns;  // the first run of a bit width learns; the others reuse its rotations
  };
  std::vector<Planned> plan;
  namespace fs = std::filesystem;
  if (fs::symlink_status(a.base.out).type() != fs::file_type::not_found)
    throw Error(a.base.out + ": already exists; a sweep writes a new folder of runs");
  for (int b : bits) {
    for (size_t i = 0; i < ranks.size(); ++i) {
      CalibConfig c = base;
      if (b > 0) c.wbits = c.abits = c.kvbits = b;
      c.rank = ranks[i];
      std::string name = "w" + std::to_string(c.wbits) + "a" + std::to_string(c.abits) + "kv" + std::to_string(c.kvbits);
      if (c.method == Method::ReSpin) name += "-r" + (c.rank < 0 ? std::string("full") : std::to_string(c.rank));
      plan.push_back({c, (fs::path(a.base.out) / name).string(), i == 0});
      c.validate();
    }
  }
  std::set<std::string> names;
  for (const Planned& p : plan)
    if (!names.insert(p.dir).second) throw Error("the sweep would write " + p.dir + " twice (repeated rank or bits)");

  // The store first: one that cannot record (read-only, locked) is refused before anything is made.
  RunStore store = RunStore::open(store_path(a.base.db));
  fs::create_directories(a.base.out);
  std::string desc = std::string(method_name(base.method)) + " sweep: ";
  for (const Planned& p : plan) desc += p.config.label() + (&p == &plan.back() ? "" : "; ");
  const int64_t sweep = store.create_sweep(base.method == Method::ReSpin ? "rank" : "bits", fs::absolute(base.model).string(), desc);
  std::fprintf(stderr, "sweep %lld: %zu runs into %s (store %s)\n", static_cast<long long>(sweep), plan.size(),
               a.base.out.c_str(), store.path().c_str());
  std::string learned_dir;
  const auto t0 = std::chrono::steady_clock::now();
  double derived_seconds = 0;
  int derived = 0;
  for (size_t i = 0; i < plan.size(); ++i) {
    Planned& p = plan[i];
    if (!p.learns) p.config.rotations_from = learned_dir;
    // ETA: runs that learn cost what the first did; derived runs what the derived so far did.
    const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::string eta = "?";
    if (i > 0) {
      const double per_derived = derived ? derived_seconds / derived : elapsed / i;
      const double per_learning = (elapsed - derived_seconds) / std::max<size_t>(1, i - derived);
      double left = 0;
      for (size_t k = i; k < plan.size(); ++k) left += plan[k].learns ? per_learning : per_derived;
      eta = duration_text(left);
    }
    std::fprintf(stderr, "[sweep %zu/%zu] %s%s  (elapsed %s, ETA %s)\n", i + 1, plan.size(), p.config.label().c_str(),
                 p.learns ? "" : " (rotations of the first run)", duration_text(elapsed).c_str(), eta.c_str());
    CalibPrinter printer;
    const auto r0 = std::chrono::steady_clock::now();
    std::optional<int64_t> id;
    CalibOutcome r = calibrate_reported(p.config, p.dir, store, &printer, sweep, /*say_recorded=*/false, &id);
    if (p.learns) {
      learned_dir = r.run_dir;
    } else {
      derived_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - r0).count();
      ++derived;
    }
    std::printf("%-28s ppl %.4f (FP %.4f)  run %lld  %s\n", p.config.label().c_str(), r.record.results.quantized_perplexity,
                r.record.results.fp_perplexity, id ? static_cast<long long>(*id) : -1LL, r.run_dir.c_str());
  }
  std::printf("sweep %lld done: respin runs compare --sweep %lld\n", static_cast<long long>(sweep), static_cast<long long>(sweep));
  return 0;
}

int run_init_model(const InitModelArgs& a) {
  // Never write over a folder: it may hold a trained model (and its tokenizer, card, checkpoints).
  std::error_code ec;
  if (std::filesystem::symlink_status(a.out, ec).type() != std::filesystem::file_type::not_found)
    throw Error(a.out + ": already exists; init-model writes a new folder and never overwrites one");
  ModelConfig c = make_model_config(a.arch, a.hidden, a.intermediate, a.layers, a.heads, a.kv_heads, a.vocab,
                                    a.max_positions);
  c.tie_word_embeddings = a.tied;
  if (!a.tokenizer.empty()) {
    Tokenizer tok = Tokenizer::from_file(a.tokenizer);
    if (c.vocab_size == 0) c.vocab_size = tok.vocab_size();
    if (c.vocab_size < tok.vocab_size())
      throw Error("--vocab " + std::to_string(c.vocab_size) + " is smaller than the tokenizer's " +
                  std::to_string(tok.vocab_size()));
    if (auto bos = tok.info().bos_id) c.bos_token_id = *bos;
    if (auto eos = tok.info().eos_id) c.eos_token_ids = {*eos};
  }
  if (c.vocab_size == 0) c.vocab_size = 4096;
  // Round-trip through the parser so the same validation as for loaded configs applies.
  c = parse_model_config(model_config_to_json(c), "init-model options");
  if (a.placeholder) {
    write_placeholder_model(a.out, c, a.dtype == "f32" ? DType::F32 : DType::BF16, a.tokenizer);
    std::printf("wrote %s: %s, %s parameters, a placeholder (weights not written: the file is a hole of their size)\n",
                a.out.c_str(), c.architecture.c_str(), human_count(c.parameter_count()).c_str());
    return 0;
  }
  RandomInitOptions ro;
  ro.seed = a.seed;
  SaveOptions so;
  so.file_dtype = a.dtype == "f32" ? DType::F32 : DType::BF16;
  so.tokenizer_json = a.tokenizer;
  save_random_model(a.out, c, ro, so);  // a tensor at a time: an 8B or 70B shape needs no more memory than a tensor
  std::printf("wrote %s: %s, %s parameters, random initialisation (seed %llu, untrained)\n",
              a.out.c_str(), c.architecture.c_str(), human_count(c.parameter_count()).c_str(), a.seed);
  return 0;
}

int run_forge(const ForgeArgs& a) {
  set_compute_threads(a.threads);
  ForgeOptions o;
  o.preset = forge_preset(a.preset);
  if (a.steps > 0) o.preset = with_steps(o.preset, a.steps);
  if (a.tied) o.preset.tied = true;
  o.out_dir = a.out;
  o.corpus_dir = a.corpus;
  o.seed = a.seed;
  o.compute = a.compute;
  o.resume = a.resume;
  o.save_f32 = a.save_f32;
  o.checkpoint_every = a.checkpoint_every;
  g_control.set_progress_callback(progress_printer(), 100);
  std::fprintf(stderr, "forge: preset %s (%s), %d threads, output %s\n", o.preset.name.c_str(),
               o.preset.purpose.c_str(), compute_threads(), a.out.c_str());
  ForgeResult r;
  try {
    r = forge(o, &g_control);
  } catch (const Cancelled&) {
    std::fprintf(stderr, "\nstopped; the last checkpoint in %s/checkpoint is intact: continue with --resume\n",
                 a.out.c_str());
    throw;
  }
  std::printf("model:                 %s (%s parameters, %s compute)\n", r.out_dir.c_str(),
              human_count(r.config.parameter_count()).c_str(), r.compute.c_str());
  std::printf("training:              %lld steps, %s tokens, %s, %.0f tokens/s, final loss %.4f\n",
              static_cast<long long>(r.steps), human_count(r.tokens_seen).c_str(),
              duration_text(r.train_seconds).c_str(), r.tokens_per_s, r.final_train_loss);
  std::printf("validation perplexity: %.3f (unigram baseline %.3f, %lld tokens; not WikiText-2)\n",
              r.val_perplexity, r.unigram_val_perplexity, static_cast<long long>(r.val_tokens_scored));
  return 0;
}

int run_corpus(const CorpusArgs& a) {
  Corpus c = Corpus::load(a.corpus.empty() ? default_corpus_dir() : a.corpus);
  if (!a.write.empty()) {
    for (Split s : {Split::Train, Split::Validation, Split::Test})
      if (a.write[0] == split_name(s)) {
        write_file_atomically(a.write[1], c.text_of(s));
        return 0;
      }
    throw Error("unknown split '" + a.write[0] + "' (train, validation or test)");
  }
  nlohmann::json j = {{"dir", c.dir}, {"documents", c.documents.size()}};
  for (Split s : {Split::Train, Split::Validation, Split::Test}) {
    auto docs = c.documents_of(s);
    const std::string text = c.text_of(s);
    int64_t words = 0;
    bool in_word = false;
    for (unsigned char ch : text) {
      const bool space = std::isspace(ch);
      words += !space && !in_word;
      in_word = !space;
    }
    j["splits"][split_name(s)] = {{"documents", docs.size()}, {"bytes", text.size()}, {"words", words}};
  }
  if (a.json) {
    std::cout << json_text(j) << "\n";
    return 0;
  }
  std::printf("corpus: %s (%zu documents: State of the Union addresses 1790-2016, Moby Dick; CC0)\n",
              c.dir.c_str(), c.documents.size());
  for (const char* s : {"train", "validation", "test"}) {
    const auto& x = j["splits"][s];
    std::printf("  %-10s %4d documents  %9.2f MB  %9lld words\n", s, x["documents"].get<int>(),
                x["bytes"].get<double>() / 1e6, x["words"].get<long long>());
  }
  return 0;
}

int run_generate(const GenerateArgs& a) {
  set_compute_threads(a.threads);
  ModelFolder folder = ModelFolder::open(a.model);
  Tokenizer tok = Tokenizer::from_file(folder.require_tokenizer());
  LlamaModel model = load_model(folder.dir, {a.dtype == "bf16" ? at::kBFloat16 : at::kFloat,
                                             resolve_device(a.device)});
  GenerateOptions o;
  o.max_new_tokens = a.max_new_tokens;
  o.temperature = a.temperature;
  o.top_p = a.top_p;
  o.seed = a.seed;
  for (int64_t id : model.config().eos_token_ids) o.stop_ids.push_back(static_cast<int>(id));
  std::vector<int> prompt = tok.encode(a.prompt, /*add_special_tokens=*/true);
  std::vector<int> out = generate(model, prompt, o, &g_control);
  std::cout << a.prompt << tok.decode(out, /*skip_special_tokens=*/true) << "\n";
  return 0;
}

}  // namespace respin::cli
