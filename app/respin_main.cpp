// `respin` command line: argument parsing only; the verbs live in cli_commands.cpp.
// Exit codes: 0 success, 1 failure (one-line "error: ..." on stderr), 2 usage error, 130 cancelled.
#include <CLI/CLI.hpp>

#include <algorithm>
#include <map>
#include <string>
#include <vector>
#include <iostream>

#include "app/cli_commands.h"
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

// Thread counts are bounded by the hardware: more threads than cores only oversubscribe, and a
// huge count would create that many threads before any work starts.
CLI::Range thread_range() {
  return CLI::Range(0, respin::default_thread_count(), "0 (all cores) to the " +
                                                           std::to_string(respin::default_thread_count()) +
                                                           " hardware threads");
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
  auto* e_windows = c_eval->add_option("--max-windows", ev.max_windows,
                                       "Evaluate at most this many windows (0 = all; with --run: the run's own)")
                        ->check(kCount);
  auto* e_batch = c_eval->add_option("--batch", ev.batch, "Windows per forward pass (default 1, with --run the run's)")
                      ->check(CLI::Range(1LL, 1024LL));
  c_eval->add_option("--dtype", ev.dtype, "Compute dtype")
      ->capture_default_str()->check(CLI::IsMember({"f32", "bf16"}));
  c_eval->add_option("--device", ev.device, "Compute device (auto: CUDA when available)")
      ->capture_default_str()->check(CLI::IsMember({"auto", "cpu", "cuda"}));
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
  CalibConfig& cc = cal.config;
  auto* c_cal = app.add_subcommand(
      "calibrate", "Quantize a model with a method (rtn, quarot, spinquant, respin); writes a run directory");
  c_cal->add_option("--model", cc.model, "Hugging Face model folder")->required();
  const std::map<std::string, respin::Method> methods = {{"rtn", respin::Method::Rtn},
                                                         {"quarot", respin::Method::QuaRot},
                                                         {"spinquant", respin::Method::SpinQuant},
                                                         {"respin", respin::Method::ReSpin}};
  c_cal->add_option("--method", cc.method, "Quantization method (rtn, quarot, spinquant, respin)")
      ->transform(CLI::CheckedTransformer(methods))->default_str("respin");
  c_cal->add_option("--out", cal.out, "Run directory to create (must not exist)")->required();
  c_cal->add_option("--wbits", cc.wbits, "Weight bits (16 = off)")->capture_default_str()->check(bits_check);
  c_cal->add_option("--abits", cc.abits, "Activation bits (16 = off)")->capture_default_str()->check(bits_check);
  c_cal->add_option("--kvbits", cc.kvbits, "KV-cache bits (16 = off)")->capture_default_str()->check(bits_check);
  c_cal->add_option("--rank", cc.rank, "ReSpinQuant skip-path rank r (-1 = full)")
      ->capture_default_str()->check(CLI::Range(-1LL, 1LL << 20));
  c_cal->add_flag("--gptq", cal.gptq, "Quantize weights with GPTQ instead of RTN");
  c_cal->add_option("--samples", cc.samples, "Calibration windows")->capture_default_str()->check(kPositiveCount);
  c_cal->add_option("--seq-len", cc.seq_len, "Tokens per window (capped at the model's maximum)")
      ->capture_default_str()->check(CLI::Range(2LL, 1LL << 20));
  c_cal->add_option("--iters", cc.iters, "Rotation-learning steps (spinquant, respin)")
      ->capture_default_str()->check(kCount);
  c_cal->add_option("--lr", cc.lr, "Cayley SGD learning rate")->capture_default_str()->check(CLI::Range(1e-9, 1e3));
  c_cal->add_option("--batch", cc.batch, "Windows per rotation-learning step")
      ->capture_default_str()->check(kPositiveCount);
  c_cal->add_option("--seed", cc.seed, "Seed of the random Hadamard rotations")->capture_default_str();
  c_cal->add_option("--calib-text", cc.calib_text, "Calibration text file (default: the corpus training split)");
  c_cal->add_option("--eval-text", cc.eval_text, "Evaluation text file (default: the corpus test split)");
  c_cal->add_option("--eval-windows", cc.eval_windows, "Evaluate at most this many windows (0 = all)")
      ->capture_default_str()->check(kCount);
  c_cal->add_option("--stats-windows", cc.stats_windows, "Windows for the activation statistics")
      ->capture_default_str()->check(kCount);
  c_cal->add_option("--w-group", cc.w_group, "Weight group size (0 = per output channel)")->capture_default_str();
  c_cal->add_option("--a-group", cc.a_group, "Activation group size (0 = per token, and on o_proj's input the method's default: per token, or per head for spinquant/respin)")->capture_default_str();
  c_cal->add_option("--a-clip", cc.a_clip, "Activation clip ratio")->capture_default_str();
  c_cal->add_option("--kv-clip", cc.kv_clip, "KV-cache clip ratio")->capture_default_str();
  c_cal->add_option("--kv-group", cc.kv_group, "KV-cache group size within a head (0 = whole head)")
      ->capture_default_str();
  c_cal->add_flag("--a-sym", cc.a_sym, "Symmetric activation quantizer (default asymmetric)");
  c_cal->add_flag("--kv-sym", cc.kv_sym, "Symmetric KV-cache quantizer (default asymmetric)");
  c_cal->add_flag("--w-asym{false}", cc.w_sym, "Asymmetric weight quantizer (default symmetric)");
  const std::map<std::string, respin::DeviceChoice> devices = {
      {"auto", respin::DeviceChoice::Auto}, {"cpu", respin::DeviceChoice::Cpu}, {"cuda", respin::DeviceChoice::Cuda}};
  c_cal->add_option("--device", cc.device, "Compute device (auto, cpu, cuda)")
      ->transform(CLI::CheckedTransformer(devices))->default_str("auto");
  c_cal->add_option("--threads", cc.threads, "Compute threads (0 = all cores)")
      ->capture_default_str()->check(thread_range());
  c_cal->add_flag("--json", cal.json, "Print run.json instead of the summary");

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
  c_gen->add_option("--device", gn.device, "Compute device (auto: CUDA when available)")
      ->capture_default_str()->check(CLI::IsMember({"auto", "cpu", "cuda"}));

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
    if (c_init->parsed()) return run_init_model(im);
    if (c_forge->parsed()) return run_forge(fg);
    if (c_corpus->parsed()) return run_corpus(cp);
    if (c_gen->parsed()) return run_generate(gn);
  } catch (const respin::Cancelled&) {
    std::cerr << "\ncancelled\n";
    return 130;
  } catch (const std::exception& e) {
    std::cerr << "error: " << respin::error_message(e) << "\n";
    return 1;
  }
  return 2;
}
