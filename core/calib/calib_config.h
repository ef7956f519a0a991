// The configuration of one calibration run: everything needed to reproduce it, serialized to JSON
// and stored in the run's run.json.
#pragma once

#include <cstdint>
#include <string>
#include <utility>

namespace respin {

struct QuantConfig;  // core/methods/rtn.h

// The four methods (docs/methods.md 1-3).
enum class Method { Rtn, QuaRot, SpinQuant, ReSpin };
const char* method_name(Method m);                 // "rtn", "quarot", "spinquant", "respin"
Method method_from_name(const std::string& name);  // throws respin::Error listing the valid names
bool method_rotates(Method m);                     // everything but rtn
bool method_learns(Method m);                      // spinquant, respin

enum class WeightQuantizer { Rtn, Gptq };
const char* weight_quantizer_name(WeightQuantizer w);  // "rtn", "gptq"
WeightQuantizer weight_quantizer_from_name(const std::string& name);

enum class DeviceChoice { Auto, Cpu, Cuda };
const char* device_choice_name(DeviceChoice d);  // "auto", "cpu", "cuda"
DeviceChoice device_choice_from_name(const std::string& name);
// "auto", "cpu", "cuda" or "cuda:N" (device N) as a choice and a CUDA device index; respin::Error
// naming the text otherwise.
std::pair<DeviceChoice, int> parse_device(const std::string& text);

// The dtype the model is held and run in (docs/methods.md 1.9): `auto` is bfloat16 on CUDA for a
// model stored in bfloat16 and float32 otherwise (the CPU path is the float32 reference).
enum class Precision { Auto, Float32, BFloat16 };
const char* precision_name(Precision p);  // "auto", "float32", "bfloat16"
Precision precision_from_name(const std::string& name);

// How the phases hold the model (docs/methods.md 1.7): `whole` in memory, `layers` read one
// decoder layer at a time from the safetensors files (the phases without end-to-end gradients:
// evaluation, statistics, QuaRot's rotation, RTN, GPTQ), `auto` layers when the whole plan does not
// fit the budget and the method learns no rotation.
enum class Streaming { Auto, Whole, Layers };
const char* streaming_name(Streaming s);  // "auto", "whole", "layers"
Streaming streaming_from_name(const std::string& name);

struct CalibConfig {
  std::string model;             // Hugging Face model folder
  Method method = Method::ReSpin;
  int wbits = 4, abits = 4, kvbits = 4;  // 2..8, 16 = off
  int64_t w_group = 0, a_group = 0, kv_group = 0;  // 0 = per channel / per token (per head for KV)
  bool w_sym = true, a_sym = false, kv_sym = false;
  bool w_mse_clip = true;        // MSE clip search for the weight grids
  double a_clip = 1.0, kv_clip = 1.0;
  int64_t rank = 32;             // ReSpinQuant skip-path rank; -1 (or >= hidden) = full
  WeightQuantizer weight_quantizer = WeightQuantizer::Rtn;
  std::string calib_text;        // text file; empty = the corpus training split
  std::string eval_text;         // text file; empty = the corpus test split
  int64_t samples = 128;         // calibration windows (rotation learning and GPTQ)
  int64_t seq_len = 512;         // tokens per window (calibration and evaluation)
  int64_t iters = 100;           // rotation-learning steps (spinquant, respin)
  double lr = 1.5;               // Cayley SGD learning rate
  int64_t batch = 1;             // windows per rotation-learning step
  int64_t micro_batch = 0;       // windows per forward/backward in a step; 0 = the whole batch
  bool checkpoint_layers = false;  // rotation learning rebuilds one decoder layer at a time
  // The memory the run's plan must fit (bytes; 0 = the device's own memory): with micro_batch 0
  // and checkpoint_layers false the plan chooses them to fit it (core/calib/memory_plan.h).
  int64_t device_memory = 0;
  int64_t eval_windows = 0;      // 0 = every window of the evaluation text
  int64_t stats_windows = 4;     // windows for the activation statistics
  uint64_t seed = 0;
  DeviceChoice device = DeviceChoice::Auto;
  Precision precision = Precision::Auto;  // weights and forward; rotations stay float32/float64
  Streaming streaming = Streaming::Auto;
  int cuda_device = 0;           // which CUDA device `cuda` (and `auto` on a GPU machine) uses
  int threads = 0;               // 0 = all cores (applied by the entry point, not the pipeline)
  std::string data_dir;          // corpus folder for the default texts; empty = default_corpus_dir()
  // A run directory whose rotations this run reuses instead of learning its own (a sweep learns
  // once and derives every rank from one set): its config must agree on everything the learning
  // saw (model, method, seed, bits, quantizers, samples, window length, steps, lr, batch, data).
  std::string rotations_from;

  // Throws respin::Error naming the field for any invalid value (including the quantizer
  // combinations the methods cannot run).
  void validate() const;
  // The method learns nothing through the whole model here (rtn, quarot, or rotations reused from
  // another run): its phases can run a layer at a time.
  bool can_stream() const;
  // "respin r=32 W4A4KV4" style label for tables and titles.
  std::string label() const;
  // The quantizers this config asks for.
  QuantConfig quant_config() const;
};

std::string calib_config_to_json(const CalibConfig& c);  // pretty-printed object
// Throws respin::Error naming `source` and the field: "model" and "method" are required, other
// fields default; unknown fields and wrong types are errors.
CalibConfig calib_config_from_json(const std::string& text, const std::string& source);

}  // namespace respin
