// The calibration pipeline's libtorch side: the method plan, the run directory, and loading a run
// back (core/calib/calibration.h is the torch-free API callers drive).
//
// A run directory holds:
//   run.json            the RunRecord (core/calib/run_record.h)
//   model/              the quantized (fake-quant, float32) rotated model in Hugging Face layout
//                       (config.json, model.safetensors, tokenizer.json); it is only equivalent to
//                       the original together with the online part below
//   weight_grids.safetensors  the weight quantization grid of every quantized linear layer:
//                       <weight name>.scale and .zero, float32 [out, groups] (absent at 16 bits);
//                       model/ holds (q - zero) * scale exactly, so the integers are recoverable
//   rotations.safetensors  the learned/fixed rotations (float32): attn_in.<i>, mlp_in.<i>, final,
//                       head.<i> (absent for rtn)
//   online.safetensors  rank-r skip corrections attn_skip.<i>.q/.m, mlp_skip.<i>.q/.m (respin only)
//   stats.json          {"before": ..., "after": ...} activation statistics (site_stats.h)
// It is written into a unique temporary sibling directory and renamed into place at the end, so a
// failed or cancelled run leaves nothing behind, and an existing directory is never overwritten
// (not even one that appeared while the run computed): when that final rename fails, the complete
// run stays in the temporary directory and the error names it. The free space the directory
// needs is checked before the work.
#pragma once

#include <c10/core/Device.h>

#include <map>
#include <string>
#include <vector>

#include "core/calib/calibration.h"
#include "core/calib/memory_plan.h"
#include "core/methods/rotated_model.h"
#include "core/methods/rtn.h"
#include "core/model/llama.h"

namespace respin {

// The method's rules for one model, in one place: which online transforms, how o_proj's input is
// quantized, what the rotation learning sees. Recorded in run.json and read back by load_run.
struct MethodPlan {
  Method method = Method::Rtn;
  QuantConfig quant;
  OnlineTransforms online;
  int64_t o_proj_group = 0;
  std::string heads_hadamard_note;  // why QuaRot's Hadamard across heads was dropped, if it was
  QuantConfig training_quant;       // what the rotation learning trains through
  bool tf32_learning = false;       // TF32 matmuls while learning (CUDA)
  int64_t rank = -1;                // respin: the applied skip rank (hidden = exact); -1 otherwise
};
MethodPlan plan_method(const CalibConfig& config, const ModelConfig& model, at::Device device);

// The weight grids of a quantized model: [layer][linear in linear_weights() order].
using ModelWeightGrids = std::vector<std::vector<WeightQuantParams>>;
// "model.layers.<i>.self_attn.q_proj.weight", ... in linear_weights() order.
std::vector<std::string> linear_weight_names(int layer);

struct LoadedRun {
  std::string dir;
  RunRecord record;
  CalibConfig config;  // record.config, with rank replaced when the corrections were rebuilt
  LlamaModel model;    // quantized weights with the online hook (rotations, quantizers) installed
  OnlineTransforms online;
  SkipTransitions skip;
  int64_t o_proj_group = 0;
  // The run's evaluation protocol as run.json records it (window length, window count), so that
  // evaluating the stored model again reproduces the run's number.
  int64_t eval_seq_len = 0;
  int64_t eval_windows = 0;
};

bool is_run_dir(const std::string& dir);  // has a run.json
// Throws respin::Error naming the file and the problem. `rank` >= 0 (ReSpinQuant runs only)
// rebuilds the skip-path corrections at that rank from the stored rotations instead of using the
// stored ones (rank >= hidden = exact transitions): a rank sweep without re-learning. The weights
// stay those of the run (with GPTQ they were calibrated with the run's own rank).
// The model, its corrections and the hook's state go to `device`.
LoadedRun load_run(const std::string& dir, int64_t rank = -1, at::Device device = at::kCPU);
// The grids of weight_grids.safetensors (empty when the run kept 16-bit weights).
ModelWeightGrids load_weight_grids(const std::string& dir, const ModelConfig& model);
// The rotations of rotations.safetensors, float64 on `device` (respin::Error for rtn runs).
ResidualRotations load_rotations(const std::string& dir, const ModelConfig& model, at::Device device);

// The memory plan of a calibration, from config.json, the safetensors headers and the texts' sizes
// (no weight is read: a folder whose weight file is sparse plans). The budget is
// config.device_memory, else the device's memory (the host's available memory on the CPU). With
// --device cuda and a budget, a machine without a GPU plans for one (`respin plan` for another
// machine). Throws respin::Error for a folder that does not load.
MemoryPlan plan_calibration(const CalibConfig& config);
// What plan_calibration plans for, without the model's config.json check: the device as the run
// resolves it, the budget, the weight files' data size (from their headers) and the texts' sizes.
// Touches the disk (headers, file sizes): the workbench computes it off the GUI thread and plans
// with plan_memory as the options change.
PlanTarget plan_target(const CalibConfig& config);

// auto | cpu | cuda -> a device. Throws respin::Error for cuda without a usable device.
// `cuda_device`: which CUDA device (an error naming the devices present when it is not one).
at::Device resolve_device(DeviceChoice choice, int cuda_device = 0);
// The same from a --device text ("auto", "cpu", "cuda", "cuda:N"; see parse_device).
at::Device resolve_device(const std::string& text);

// The hook for a run's final model: online transforms + quantizers (+ an observer before them).
ActivationHook run_hook(const ModelConfig& model, at::Device device, const OnlineTransforms& online,
                        const SkipTransitions& skip, const QuantConfig& quant, int64_t o_proj_group,
                        ActivationHook observer = {});

}  // namespace respin
