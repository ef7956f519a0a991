// The calibration pipeline behind `respin calibrate` (and, later, the workbench's worker thread):
//
//   load model + tokenizer -> calibration windows (training split) and evaluation text (test split)
//   -> full-precision perplexity -> activation statistics of the original model
//   -> method: rtn | quarot (fixed random Hadamard) | spinquant / respin (rotations learned with
//      Cayley SGD through the fake quantizers) -> fuse everything offline, rank-r skip corrections
//   -> activation statistics of what the quantizers see after rotation
//   -> weight quantization (RTN with MSE clip search, or GPTQ layer by layer)
//   -> quantized perplexity -> run directory.
//
// A run directory holds:
//   run.json            config, method details (inits, online transforms, training loss curve,
//                       transition errors per residual add), results, time per phase, peak memory
//   model/              the quantized (fake-quant, float32) rotated model in Hugging Face layout
//                       (config.json, model.safetensors, tokenizer.json); it is only equivalent to
//                       the original together with the online part below
//   rotations.safetensors  the learned/fixed rotations (float32): attn_in.<i>, mlp_in.<i>, final,
//                       head.<i> (absent for rtn)
//   online.safetensors  rank-r skip corrections attn_skip.<i>.q/.m, mlp_skip.<i>.q/.m (respin only)
//   stats.json          {"before": ..., "after": ...} activation statistics (activation_stats.h)
// It is written into a temporary sibling directory and renamed into place at the end, so a failed
// or cancelled run leaves nothing behind, and an existing directory is never overwritten.
#pragma once

#include <nlohmann/json.hpp>

#include <string>
#include <utility>
#include <vector>

#include "core/calib/calib_config.h"
#include "core/model/llama.h"
#include "core/util/run_control.h"

namespace respin {

struct CalibResult {
  std::string run_dir;
  double fp_perplexity = 0;
  double quant_perplexity = 0;
  int64_t eval_windows = 0;
  std::vector<double> loss_curve;  // rotation learning, per step (empty for rtn/quarot)
  std::vector<std::pair<std::string, double>> phase_seconds;
  double calibration_seconds = 0;  // phases rotate + gptq + quantize (what the method costs)
  double total_seconds = 0;
  int64_t peak_rss_bytes = 0;
  nlohmann::json run;  // the content of run.json
};

// Runs everything and writes `out_dir` (which must not exist). Progress phases: "load",
// "eval-fp", "stats", "rotate", "gptq", "quantize", "eval", "write". Throws respin::Error (bad
// config, model, text, or an existing out_dir) or respin::Cancelled; nothing is left on disk then.
CalibResult run_calibration(const CalibConfig& config, const std::string& out_dir, RunControl* control = nullptr);

// Windows per forward pass of a run's evaluations.
constexpr int64_t kRunEvalBatch = 4;

struct LoadedRun {
  std::string dir;
  CalibConfig config;
  nlohmann::json run;
  LlamaModel model;  // quantized weights with the online hook (rotations, quantizers) installed
  // The run's evaluation protocol as run.json records it (window length, window count, batch),
  // so that evaluating the stored model again reproduces the run's number.
  int64_t eval_seq_len = 0;
  int64_t eval_windows = 0;
  int64_t eval_batch = kRunEvalBatch;
};

bool is_run_dir(const std::string& dir);  // has a run.json
// Throws respin::Error naming the file and the problem. `rank` >= 0 (ReSpinQuant runs only)
// rebuilds the skip-path corrections at that rank from the stored rotations instead of using the
// stored ones (rank >= hidden = exact transitions): a rank sweep without re-learning. The weights
// stay those of the run (with GPTQ they were calibrated with the run's own rank).
// The model, its corrections and the hook's state go to `device`.
LoadedRun load_run(const std::string& dir, int64_t rank = -1, at::Device device = at::kCPU);

// "cpu", "cuda" or "auto" (CUDA when libtorch has a usable device) -> a device. Throws
// respin::Error for cuda without a usable device, and for other names.
at::Device resolve_device(const std::string& name);

}  // namespace respin
