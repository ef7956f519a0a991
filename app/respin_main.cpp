// `respin` command line: argument parsing only; the verbs live in cli_commands.cpp.
// Exit codes: 0 success, 1 failure (one-line "error: ..." on stderr), 2 usage error, 130 cancelled.
#include <CLI/CLI.hpp>

#include <algorithm>
#include <map>
#include <string>
#include <tuple>
#include <vector>
#include <iostream>

#include "app/cli_commands.h"
#include "app/cli_export.h"
#include "core/calib/memory_plan.h"
#include "core/util/error.h"
#include "core/util/error_message.h"
#include "core/util/threads.h"
#include "core/util/version.h"

using namespace respin::cli;
using respin::CalibConfig;

namespace {

// Counts (windows, steps, ...) with bounds a person can read in a usage error; CLI11's
// NonNegativeNumber would print the largest double (309 digits).
const CLI::Range kCount(0LL, 1LL << 40);
const CLI::Range kPositiveCount(1LL, 1LL << 40);
// Run ids: a number too large for an id is refused, not clamped to the largest one.
const CLI::Range kRunId(1LL, 1LL << 53, "RUN_ID");

// Thread counts are bounded by the hardware: more threads than cores only oversubscribe, and a
// huge count would create that many threads before any work starts.
CLI::Range thread_range() {
  return CLI::Range(0, respin::default_thread_count(), "0 (all cores) to the " +
                                                           std::to_string(respin::default_thread_count()) +
                                                           " hardware threads");
}

// A CLI validator from a core parser: its message when `parse` throws on the text.
template <class Parse>
CLI::Validator parsed_by(Parse parse, const char* name) {
  return CLI::Validator(
      [parse](std::string& v) {
        try {
          parse(v);
          return std::string();
        } catch (const std::exception& e) {
          return std::string(e.what());
        }
      },
      name);
}

// --device: auto, cpu, cuda or cuda:N (respin::parse_device's message when not).
CLI::Validator device_check() { return parsed_by([](const std::string& v) { respin::parse_device(v); }, "DEVICE"); }

// --precision: a name of respin::Precision (precision_from_name's message when not).
CLI::Validator precision_check() {
  return parsed_by([](const std::string& v) { respin::precision_from_name(v); }, "PRECISION");
}

// --streaming: a name of respin::Streaming.
CLI::Validator streaming_check() {
  return parsed_by([](const std::string& v) { respin::streaming_from_name(v); }, "STREAMING");
}

// --device-memory: a size (respin::parse_byte_size's message when not).
CLI::Validator byte_size_check() {
  return parsed_by([](const std::string& v) { respin::parse_byte_size(v); }, "SIZE");
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"respin: rotation-based post-training quantization for LLaMA-family models"};
  app.set_version_flag("--version", std::string("respin ") + RESPIN_VERSION_STRING);
  app.require_subcommand(1);
  app.footer("Run 'respin VERB --help' for the options of a verb.");
  bool verbose = false;
  app.add_flag("--verbose", verbose,
               "On failure, print libtorch's C++ backtrace too (same as RESPIN_BACKTRACE=1)");
  app.fallthrough();  // --verbose may also follow the verb

  InfoArgs info;
  auto* c_info = app.add_subcommand("info", "Show a model folder's architecture, sizes and tokenizer");
  c_info->add_option("--model", info.model, "Hugging Face model folder")->required();
  c_info->add_flag("--json", info.json, "Machine-readable output");

  TokenizeArgs tok;
  auto* c_tok = app.add_subcommand("tokenize", "Print the token ids of a text, space separated");
  c_tok->add_option("--model", tok.model, "Model folder (its tokenizer.json is used)");
  c_tok->add_option("--tokenizer", tok.tokenizer, "A tokenizer.json file (instead of --model)");
  auto* t_text = c_tok->add_option("--text", tok.text, "Text to tokenize");
  auto* t_file = c_tok->add_option("--file", tok.file, "File whose contents to tokenize");
  t_text->excludes(t_file);
  c_tok->add_flag("--add-special-tokens", tok.add_special_tokens,
                  "Apply the tokenizer's post-processor (e.g. prepend BOS)");

  EvalArgs ev;
  auto* c_eval = app.add_subcommand("eval", "Perplexity and throughput of a model on a text file");
  auto* e_model = c_eval->add_option("--model", ev.model, "Hugging Face model folder");
  auto* e_run = c_eval->add_option("--run", ev.run,
                                   "Calibration run directory: evaluates its quantized model with its online "
                                   "rotations and quantizers (default text: the run's evaluation text)");
  e_model->excludes(e_run);
  c_eval->add_option("--rank", ev.rank,
                     "With --run of a respin run: rebuild the skip-path corrections at this rank from the stored "
                     "rotations (a rank sweep without re-learning; >= hidden = exact)")
      ->check(kCount);
  c_eval->add_option("--text-file", ev.text_file, "UTF-8 text file (required with --model)");
  auto* e_seq = c_eval->add_option("--seq-len", ev.seq_len,
                                   "Window length in tokens (capped at the model's maximum; default 2048, with "
                                   "--run the run's own)")
                    ->check(CLI::Range(2LL, 1LL << 20));
  // Older exports' README files print `--batch 4`; the option stays so that their commands run.
  long long ignored_batch = 1;
  auto* e_batch = c_eval->add_option("--batch", ignored_batch,
                                     "Ignored: every window is scored by its own forward, so the number does not "
                                     "depend on how windows are grouped")
                      ->check(CLI::Range(1LL, 1024LL));
  auto* e_windows = c_eval->add_option("--max-windows", ev.max_windows,
                                       "Evaluate at most this many windows (0 = all; with --run: the run's own)")
                        ->check(kCount);
  c_eval->add_option("--dtype", ev.dtype, "Compute dtype")
      ->capture_default_str()->check(CLI::IsMember({"f32", "bf16"}));
  c_eval->add_option("--device", ev.device, "Compute device: auto (CUDA when available), cpu, cuda or cuda:N")
      ->capture_default_str()->check(device_check());
  c_eval->add_option("--threads", ev.threads, "Compute threads (0 = all cores)")
      ->capture_default_str()->check(thread_range());
  c_eval->add_flag("--json", ev.json, "Machine-readable output");
  auto bits_check = CLI::IsMember({2, 3, 4, 5, 6, 7, 8, 16});
  c_eval->add_option("--wbits", ev.wbits, "RTN weight bits, per output channel with MSE clipping (16 = off)")
      ->capture_default_str()->check(bits_check);
  c_eval->add_option("--abits", ev.abits, "RTN activation bits, per token asymmetric (16 = off)")
      ->capture_default_str()->check(bits_check);
  c_eval->add_option("--kvbits", ev.kvbits, "RTN KV-cache bits, per token per head asymmetric (16 = off)")
      ->capture_default_str()->check(bits_check);

  CalibrateArgs cal;
  auto* c_cal = app.add_subcommand(
      "calibrate", "Quantize a model with a method (rtn, quarot, spinquant, respin); writes a run directory");
  // The options of one calibration, shared by calibrate, sweep and plan.
  auto add_config_options = [&](CLI::App* c, CalibConfig& config, bool& gptq) {
    c->add_option("--model", config.model, "Hugging Face model folder")->required();
    static const std::map<std::string, respin::Method> methods = {{"rtn", respin::Method::Rtn},
                                                           {"quarot", respin::Method::QuaRot},
                                                           {"spinquant", respin::Method::SpinQuant},
                                                           {"respin", respin::Method::ReSpin}};
    c->add_option("--method", config.method, "Quantization method (rtn, quarot, spinquant, respin)")
        ->transform(CLI::CheckedTransformer(methods))->default_str("respin");
    c->add_option("--wbits", config.wbits, "Weight bits (16 = off)")->capture_default_str()->check(bits_check);
    c->add_option("--abits", config.abits, "Activation bits (16 = off)")->capture_default_str()->check(bits_check);
    c->add_option("--kvbits", config.kvbits, "KV-cache bits (16 = off)")->capture_default_str()->check(bits_check);
    c->add_option("--rank", config.rank, "ReSpinQuant skip-path rank r (-1 = full)")
        ->capture_default_str()->check(CLI::Range(-1LL, 1LL << 20));
    c->add_flag("--gptq", gptq, "Quantize weights with GPTQ instead of RTN");
    c->add_option("--samples", config.samples, "Calibration windows")->capture_default_str()->check(kPositiveCount);
    c->add_option("--seq-len", config.seq_len, "Tokens per window (capped at the model's maximum)")
        ->capture_default_str()->check(CLI::Range(2LL, 1LL << 20));
    c->add_option("--iters", config.iters, "Rotation-learning steps (spinquant, respin)")
        ->capture_default_str()->check(kCount);
    c->add_option("--lr", config.lr, "Cayley SGD learning rate")->capture_default_str()->check(CLI::Range(1e-9, 1e3));
    c->add_option("--batch", config.batch, "Windows per rotation-learning step")
        ->capture_default_str()->check(kPositiveCount);
    c->add_option("--micro-batch", config.micro_batch,
                  "Windows per forward/backward inside a learning step; gradients accumulate over the step "
                  "(0 = the whole batch at once; less memory, the same step)")
        ->capture_default_str()->check(kCount);
    c->add_flag("--checkpoint-layers", config.checkpoint_layers,
                "Rotation learning keeps only each decoder layer's input and rebuilds one layer at a time in the "
                "backward pass (activation checkpointing: far less memory, about one more forward per step)");
    c->add_option("--seed", config.seed, "Seed of the random Hadamard rotations")->capture_default_str();
    c->add_option("--calib-text", config.calib_text, "Calibration text file (default: the corpus training split)");
    c->add_option("--eval-text", config.eval_text, "Evaluation text file (default: the corpus test split)");
    c->add_option("--eval-windows", config.eval_windows, "Evaluate at most this many windows (0 = all)")
        ->capture_default_str()->check(kCount);
    c->add_option("--stats-windows", config.stats_windows, "Windows for the activation statistics")
        ->capture_default_str()->check(kCount);
    c->add_option("--w-group", config.w_group, "Weight group size (0 = per output channel)")->capture_default_str();
    c->add_option("--a-group", config.a_group, "Activation group size (0 = per token, and on o_proj's input the method's default: per token, or per head for spinquant/respin)")->capture_default_str();
    c->add_option("--a-clip", config.a_clip, "Activation clip ratio")->capture_default_str();
    c->add_option("--kv-clip", config.kv_clip, "KV-cache clip ratio")->capture_default_str();
    c->add_option("--kv-group", config.kv_group, "KV-cache group size within a head (0 = whole head)")
        ->capture_default_str();
    c->add_flag("--a-sym", config.a_sym, "Symmetric activation quantizer (default asymmetric)");
    c->add_flag("--kv-sym", config.kv_sym, "Symmetric KV-cache quantizer (default asymmetric)");
    c->add_flag("--w-asym{false}", config.w_sym, "Asymmetric weight quantizer (default symmetric)");
    c->add_option_function<std::string>(
         "--device",
         [&config](const std::string& v) { std::tie(config.device, config.cuda_device) = respin::parse_device(v); },
         "Compute device: auto (CUDA when available), cpu, cuda or cuda:N")
        ->check(device_check())->default_str("auto");
    c->add_option_function<std::string>(
         "--precision", [&config](const std::string& v) { config.precision = respin::precision_from_name(v); },
         "Weights and forward in: auto (bfloat16 on CUDA for a bfloat16 model, else float32), float32 or "
         "bfloat16; rotations, Hessians and fusion stay float32/float64")
        ->check(precision_check())->default_str("auto");
    c->add_option_function<std::string>(
         "--streaming", [&config](const std::string& v) { config.streaming = respin::streaming_from_name(v); },
         "How the phases hold the model: whole, layers (one decoder layer at a time from the safetensors files; "
         "rtn, quarot, gptq, and rotations reused from another run) or auto (layers when the whole model does "
         "not fit the budget)")
        ->check(streaming_check())->default_str("auto");
    c->add_option("--threads", config.threads, "Compute threads (0 = all cores)")
        ->capture_default_str()->check(thread_range());
    c->add_option_function<std::string>(
         "--device-memory",
         [&config](const std::string& v) { config.device_memory = respin::parse_byte_size(v); },
         "Memory the run must fit in (e.g. 2GiB, 24GB; default: the device's own): the plan refuses a run that "
         "cannot fit and, when --micro-batch and --checkpoint-layers are not given, chooses them to fit")
        ->check(byte_size_check());
  };
  auto add_calib_options = [&](CLI::App* c, CalibrateArgs& a) {
    add_config_options(c, a.config, a.gptq);
    c->add_option("--db", a.db, "Run store to record into (default <data home>/runs.db)");
    c->add_flag("--no-store", a.no_store, "Do not record the run in the run store");
  };
  add_calib_options(c_cal, cal);
  c_cal->add_option("--out", cal.out, "Run directory to create (must not exist)")->required();
  c_cal->add_flag("--json", cal.json, "Print run.json instead of the summary");

  PlanArgs pl;
  auto* c_plan = app.add_subcommand(
      "plan", "What a calibration with these options will hold in memory, phase by phase, and whether it fits "
              "(reads config.json and the safetensors headers only; exit 1 when it does not fit)");
  add_config_options(c_plan, pl.config, pl.gptq);
  c_plan->add_flag("--json", pl.json, "Machine-readable output (figures in bytes)");

  SweepArgs sw;
  auto* c_sweep = app.add_subcommand(
      "sweep", "A group of calibrations stored as one sweep: ranks (respin) and/or bit widths; rotations are "
               "learned once per bit width and every rank derived from them");
  add_calib_options(c_sweep, sw.base);
  c_sweep->add_option("--out", sw.base.out, "Folder to create for the sweep's run directories")->required();
  c_sweep->add_option("--ranks", sw.ranks, "Skip ranks, comma separated (numbers or 'full'; respin only)")->delimiter(',');
  c_sweep->add_option("--bits", sw.bits, "Bit widths, comma separated: each run is W=A=KV=b")
      ->delimiter(',')->check(bits_check);

  RunsArgs rn;
  auto* c_runs = app.add_subcommand("runs", "The run store: list, show, compare, export, tag, note, delete, clean, import");
  c_runs->require_subcommand(1);
  c_runs->add_option("--db", rn.db, "Run store (default <data home>/runs.db)");
  c_runs->fallthrough();
  auto* r_list = c_runs->add_subcommand("list", "Runs, filtered");
  r_list->add_option("--model", rn.model, "Only runs of this model folder");
  r_list->add_option("--method", rn.method, "Only runs of this method")
      ->check(CLI::IsMember({"rtn", "quarot", "spinquant", "respin"}));
  r_list->add_option("--status", rn.status, "Only runs with this status")
      ->check(CLI::IsMember({"running", "finished", "cancelled", "failed", "interrupted"}));
  r_list->add_option("--tag", rn.tag, "Only runs with this tag");
  r_list->add_option("--sweep", rn.sweep, "Only the runs of this sweep")->check(kCount);
  r_list->add_flag("--json", rn.json, "Machine-readable output");
  auto* r_show = c_runs->add_subcommand("show", "One run in full");
  r_show->add_option("id", rn.id, "Run id")->required()->check(kRunId);
  r_show->add_flag("--json", rn.json, "Machine-readable output");
  auto* r_compare = c_runs->add_subcommand("compare", "Runs side by side: config differences and metrics; or a sweep's table");
  r_compare->add_option("ids", rn.ids, "Run ids")->check(kRunId);
  r_compare->add_option("--sweep", rn.sweep, "The rank/bits table of a sweep with each rank's online cost")->check(kCount);
  r_compare->add_flag("--json", rn.json, "Machine-readable output");
  auto* r_export = c_runs->add_subcommand("export", "Run data (config, metrics, loss curve, per-layer statistics)");
  r_export->add_option("ids", rn.ids, "Run ids")->required()->check(kRunId);
  r_export->add_option("--format", rn.format, "json (one file) or csv (F.csv, F.loss.csv, F.layers.csv)")
      ->check(CLI::IsMember({"json", "csv"}))->capture_default_str();
  r_export->add_option("--out", rn.out, "Output file")->required();
  auto* r_tag = c_runs->add_subcommand("tag", "Add (or --remove) a tag");
  r_tag->add_option("id", rn.id, "Run id")->required()->check(kRunId);
  r_tag->add_option("tag", rn.text, "Tag")->required();
  r_tag->add_flag("--remove", rn.remove, "Remove the tag instead");
  auto* r_note = c_runs->add_subcommand("note", "Set a run's free-text note");
  r_note->add_option("id", rn.id, "Run id")->required()->check(kRunId);
  r_note->add_option("text", rn.text, "Note (empty clears it)")->required();
  auto* r_delete = c_runs->add_subcommand("delete", "Delete runs, and the run directories that belong to them (asks first; all or none)");
  r_delete->add_option("ids", rn.ids, "Run ids")->required()->check(kRunId);
  r_delete->add_flag("--yes", rn.yes, "Do not ask");
  auto* r_clean = c_runs->add_subcommand("clean", "Mark runs whose writer died as interrupted and remove their temporary directories");
  r_clean->add_flag("--yes", rn.yes, "Do not ask");
  auto* r_import = c_runs->add_subcommand(
      "import", "Record a complete run directory (made elsewhere, or left unrecorded by a kill or a full disk)");
  r_import->add_option("run_dir", rn.text, "Run directory (with run.json)")->required();
  r_import->add_flag("--json", rn.json, "Print {id, repaired}");

  InitModelArgs im;
  auto* c_init = app.add_subcommand(
      "init-model", "Write a randomly initialised model folder (for tests and demos; untrained)");
  c_init->add_option("--out", im.out, "Folder to write")->required();
  c_init->add_option("--arch", im.arch, "Architecture")
      ->capture_default_str()->check(CLI::IsMember({"llama", "mistral", "qwen2"}));
  c_init->add_option("--tokenizer", im.tokenizer, "tokenizer.json to copy in (sets the vocabulary size)");
  c_init->add_option("--hidden", im.hidden, "hidden_size")->capture_default_str();
  c_init->add_option("--intermediate", im.intermediate, "intermediate_size")->capture_default_str();
  c_init->add_option("--layers", im.layers, "num_hidden_layers")->capture_default_str();
  c_init->add_option("--heads", im.heads, "num_attention_heads")->capture_default_str();
  c_init->add_option("--kv-heads", im.kv_heads, "num_key_value_heads")->capture_default_str();
  c_init->add_option("--vocab", im.vocab, "vocab_size (default: the tokenizer's, else 4096)");
  c_init->add_option("--max-positions", im.max_positions, "max_position_embeddings")->capture_default_str();
  c_init->add_flag("--tied", im.tied, "Tie lm_head to the embeddings");
  c_init->add_option("--seed", im.seed, "Random seed")->capture_default_str();
  c_init->add_option("--dtype", im.dtype, "Storage dtype")
      ->capture_default_str()->check(CLI::IsMember({"f32", "bf16"}));
  c_init->add_flag("--placeholder", im.placeholder,
                   "Write the weight file's header and a hole of its size instead of weights: a folder that "
                   "`respin plan` and `info` read (an 8B or 70B shape in no disk space) but that does not run");

  ForgeArgs fg;
  auto* c_forge = app.add_subcommand(
      "forge", "Train the project's own small LLaMA-architecture model on the public-domain corpus");
  c_forge->add_option("--preset", fg.preset, "micro, small, small-npot or base")->capture_default_str();
  c_forge->add_option("--out", fg.out, "Model folder to write")->required();
  c_forge->add_option("--corpus", fg.corpus, "Corpus folder (default: <data home>/corpus)");
  c_forge->add_option("--seed", fg.seed, "Random seed")->capture_default_str();
  c_forge->add_option("--compute", fg.compute, "Training matmul dtype")
      ->capture_default_str()->check(CLI::IsMember({"auto", "f32", "bf16"}));
  c_forge->add_option("--steps", fg.steps, "Training steps (default: the preset's)")->check(kPositiveCount);
  c_forge->add_option("--checkpoint-every", fg.checkpoint_every, "Steps between checkpoints (default: steps/10)")
      ->check(kPositiveCount);
  c_forge->add_option("--threads", fg.threads, "Compute threads (0 = all cores)")
      ->capture_default_str()->check(thread_range());
  c_forge->add_flag("--resume", fg.resume, "Continue from the folder's last checkpoint");
  c_forge->add_flag("--tied", fg.tied, "Tie lm_head to the embeddings");
  c_forge->add_flag("--save-f32", fg.save_f32, "Also write a float32 copy into OUT/f32");

  CorpusArgs cp;
  auto* c_corpus = app.add_subcommand("corpus", "Show where the training corpus is and its splits");
  c_corpus->add_option("--corpus", cp.corpus, "Corpus folder (default: <data home>/corpus)");
  c_corpus->add_flag("--json", cp.json, "Machine-readable output");
  c_corpus->add_option("--write", cp.write, "SPLIT FILE: write the text of a split (train, validation, test)")
      ->expected(2);

  GenerateArgs gn;
  auto* c_gen = app.add_subcommand("generate", "Continue a prompt (greedy, or sampled with --temperature/--top-p)");
  c_gen->add_option("--model", gn.model, "Hugging Face model folder")->required();
  c_gen->add_option("--prompt", gn.prompt, "Text to continue")->required();
  c_gen->add_option("--max-new-tokens", gn.max_new_tokens, "Tokens to generate")
      ->capture_default_str()->check(kPositiveCount);
  c_gen->add_option("--temperature", gn.temperature, "0 = greedy")->capture_default_str()->check(CLI::Range(0.0, 100.0));
  c_gen->add_option("--top-p", gn.top_p, "Nucleus mass when sampling")->capture_default_str()->check(CLI::Range(1e-6, 1.0));
  c_gen->add_option("--seed", gn.seed, "Sampling seed")->capture_default_str();
  c_gen->add_option("--dtype", gn.dtype, "Compute dtype")->capture_default_str()->check(CLI::IsMember({"f32", "bf16"}));
  c_gen->add_option("--threads", gn.threads, "Compute threads (0 = all cores)")
      ->capture_default_str()->check(thread_range());
  c_gen->add_option("--device", gn.device, "Compute device: auto (CUDA when available), cpu, cuda or cuda:N")
      ->capture_default_str()->check(device_check());

  ExportArgs ex;
  auto* c_export = app.add_subcommand(
      "export", "Export a calibration run for other tools: a Hugging Face folder with the online operations in a "
                "sidecar (hf), or packed integer weights (compressed-tensors); see docs/export.md");
  c_export->add_option("run", ex.run, "Calibration run directory")->required();
  c_export->add_option("--format", ex.format, "hf or compressed-tensors")
      ->required()->check(CLI::IsMember({"hf", "compressed-tensors"}));
  c_export->add_option("--out", ex.out, "Folder to create (must not exist)")->required();
  c_export->add_option("--dtype", ex.dtype, "Storage dtype of the floating-point tensors")
      ->capture_default_str()->check(CLI::IsMember({"bf16", "f16", "f32"}));
  c_export->add_flag("--allow-sidecar", ex.allow_sidecar,
                     "compressed-tensors: put what the format cannot express (skip corrections, KV and asymmetric or "
                     "clipped activation quantizers, QuaRot's head Hadamard, R3) into respin_online.json instead of "
                     "refusing");
  c_export->add_flag("--json", ex.json, "Machine-readable output");

  // A word that is neither an option nor a verb: say which (CLI11 would only ask for a subcommand).
  std::vector<std::string> verbs;
  for (const CLI::App* sub : app.get_subcommands([](CLI::App*) { return true; })) verbs.push_back(sub->get_name());
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a.empty() || a[0] == '-') continue;
    if (std::find(verbs.begin(), verbs.end(), a) == verbs.end()) {
      std::string list;
      for (const std::string& v : verbs) list += (list.empty() ? "" : ", ") + v;
      std::cerr << "error: unknown verb '" << a << "' (verbs: " << list << "; see 'respin --help')\n";
      return 2;
    }
    break;
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == 0) return app.exit(e);  // --help, --version
    std::cerr << "error: " << e.what() << "\n(see 'respin --help')\n";
    return 2;
  }
  if (c_tok->parsed() && tok.model.empty() == tok.tokenizer.empty()) {
    std::cerr << "error: tokenize needs exactly one of --model or --tokenizer\n";
    return 2;
  }
  if (c_eval->parsed() && ev.model.empty() == ev.run.empty()) {
    std::cerr << "error: eval needs --model (with --text-file) or --run\n";
    return 2;
  }
  if (c_eval->parsed() && !ev.model.empty() && ev.text_file.empty()) {
    std::cerr << "error: eval --model needs --text-file\n";
    return 2;
  }
  if (c_eval->parsed() && !ev.model.empty() && ev.rank >= 0) {
    std::cerr << "error: eval --rank rebuilds the corrections of a respin run: it needs --run, not --model\n";
    return 2;
  }
  ev.seq_len_given = e_seq->count() > 0;
  ev.max_windows_given = e_windows->count() > 0;
  ev.batch_given = e_batch->count() > 0;
  if (c_tok->parsed() && tok.text.empty() && tok.file.empty() && !t_text->count()) {
    std::cerr << "error: tokenize needs --text or --file\n";
    return 2;
  }

  if (verbose) respin::set_verbose_errors(true);
  install_stop_handlers();
  try {
    if (c_info->parsed()) return run_info(info);
    if (c_tok->parsed()) return run_tokenize(tok);
    if (c_eval->parsed()) return run_eval(ev);
    if (c_cal->parsed()) return run_calibrate(cal);
    if (c_plan->parsed()) return run_plan(pl);
    if (c_sweep->parsed()) return run_sweep(sw);
    if (r_list->parsed()) return run_runs_list(rn);
    if (r_show->parsed()) return run_runs_show(rn);
    if (r_compare->parsed()) return run_runs_compare(rn);
    if (r_export->parsed()) return run_runs_export(rn);
    if (r_tag->parsed()) return run_runs_tag(rn);
    if (r_note->parsed()) return run_runs_note(rn);
    if (r_delete->parsed()) return run_runs_delete(rn);
    if (r_clean->parsed()) return run_runs_clean(rn);
    if (r_import->parsed()) return run_runs_import(rn);
    if (c_init->parsed()) return run_init_model(im);
    if (c_forge->parsed()) return run_forge(fg);
    if (c_corpus->parsed()) return run_corpus(cp);
    if (c_gen->parsed()) return run_generate(gn);
    if (c_export->parsed()) return run_export(ex);
  } catch (const respin::Cancelled&) {
    std::cerr << "\ncancelled\n";
    return 130;
  } catch (const std::exception& e) {
    std::cerr << "error: " << respin::error_message(e) << "\n";
    return 1;
  }
  return 2;
}
