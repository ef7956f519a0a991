// The verbs of the `respin` command line. Each fills its options from the parser and returns an
// exit code; failures are thrown as respin::Error and printed by main as "error: ...".
#pragma once

#include <string>
#include <vector>

#include "core/calib/calib_config.h"
#include "core/util/run_control.h"

namespace respin::cli {

struct InfoArgs {
  std::string model;
  bool json = false;
};
struct TokenizeArgs {
  std::string model;
  std::string tokenizer;
  std::string text;
  std::string file;
  bool add_special_tokens = false;
};
struct EvalArgs {
  std::string model;
  std::string text_file;
  long long seq_len = 2048;
  long long max_windows = 0;
  // Whether the options were given: with --run, those not given follow the run's own protocol.
  bool seq_len_given = false, max_windows_given = false, batch_given = false;
  std::string dtype = "f32";
  int threads = 0;
  bool json = false;
  int wbits = 16, abits = 16, kvbits = 16;  // RTN fake quantization (16 = off)
  std::string run;  // a calibration run directory (instead of --model)
  long long rank = -1;  // with --run (respin): rebuild the skip corrections at this rank
  std::string device = "auto";
};
struct InitModelArgs {
  std::string out;
  std::string arch = "llama";
  std::string tokenizer;
  long long hidden = 256, intermediate = 512, layers = 4, heads = 8, kv_heads = 4, vocab = 0;
  long long max_positions = 2048;
  bool tied = false;
  unsigned long long seed = 0;
  std::string dtype = "bf16";
  bool placeholder = false;  // header + sparse data only (core/io/model_check.h)
};

struct ForgeArgs {
  std::string preset = "small";
  std::string out;
  std::string corpus;
  unsigned long long seed = 0;
  std::string compute = "auto";
  long long steps = 0;  // 0 = the preset's
  long long checkpoint_every = 0;
  int threads = 0;
  bool resume = false;
  bool tied = false;
  bool save_f32 = false;
};
struct CorpusArgs {
  std::string corpus;
  bool json = false;
  std::vector<std::string> write;  // {split, file}: write that split's text to the file
};
struct GenerateArgs {
  std::string model;
  std::string prompt;
  long long max_new_tokens = 64;
  double temperature = 0;
  double top_p = 1.0;
  unsigned long long seed = 0;
  std::string dtype = "f32";
  int threads = 0;
  std::string device = "auto";
};

struct CalibrateArgs {
  CalibConfig config;
  std::string out;
  bool gptq = false;
  bool json = false;
  std::string db;         // the run store (default <data home>/runs.db)
  bool no_store = false;  // do not record the run in the store
};

// `respin plan`: the memory plan of a calibration with these options.
struct PlanArgs {
  CalibConfig config;
  bool gptq = false;
  bool json = false;
};

// `respin sweep`: a group of calibrations stored as one sweep.
struct SweepArgs {
  CalibrateArgs base;             // the calibrate options every run shares (base.out: the sweep's folder)
  std::vector<std::string> ranks;  // respin: "0", "8", ..., "full"
  std::vector<int> bits;           // W = A = KV bits per run; empty: the base config's
};

// `respin runs VERB`.
struct RunsArgs {
  std::string db;
  std::string model, method, status, tag;
  long long sweep = -1;
  bool json = false;
  std::vector<long long> ids;
  long long id = -1;           // show, tag, note
  std::string text;            // tag, note; import: the run directory
  bool remove = false;         // runs tag --remove
  std::string format = "json"; // runs export
  std::string out;
  bool yes = false;            // runs delete / clean without asking
};

// The store a verb uses: --db, else $RESPIN_DB, else <data home>/runs.db (its folder is created).
std::string store_path(const std::string& db_option);

int run_info(const InfoArgs& a);
int run_calibrate(const CalibrateArgs& a);
int run_plan(const PlanArgs& a);
int run_forge(const ForgeArgs& a);
int run_corpus(const CorpusArgs& a);
int run_generate(const GenerateArgs& a);
int run_tokenize(const TokenizeArgs& a);
int run_eval(const EvalArgs& a);
int run_init_model(const InitModelArgs& a);
int run_sweep(const SweepArgs& a);
int run_runs_list(const RunsArgs& a);
int run_runs_show(const RunsArgs& a);
int run_runs_compare(const RunsArgs& a);
int run_runs_export(const RunsArgs& a);
int run_runs_tag(const RunsArgs& a);
int run_runs_note(const RunsArgs& a);
int run_runs_delete(const RunsArgs& a);
int run_runs_clean(const RunsArgs& a);
int run_runs_import(const RunsArgs& a);

// The stop flag SIGINT/SIGTERM set (for verbs in other files).
RunControl& stop_control();

// Installs SIGINT/SIGTERM handlers that request a stop of the running command.
void install_stop_handlers();

}  // namespace respin::cli
