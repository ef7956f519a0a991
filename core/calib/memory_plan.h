// What a calibration will hold, phase by phase, predicted before it starts from config.json, the
// safetensors headers and the options alone (docs/methods.md 1.8): the model, the transients of
// each phase, the learning step's autograd graph, and the micro-batch and checkpointing that make
// learning fit a memory budget. `respin plan`, `calibrate` (which refuses what cannot fit) and the
// run panel all use plan_memory; run.json records the plan beside the measured peaks.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "core/calib/calib_config.h"
#include "core/calib/calibration.h"
#include "core/io/model_config.h"

namespace respin {

// Where the plan must fit.
struct PlanTarget {
  std::string device = "cpu";      // "cpu" or "cuda:N"
  int64_t capacity_bytes = 0;      // the budget: --device-memory, else what the device has
  bool capacity_given = false;     // --device-memory (else the device's own memory)
  int64_t model_file_bytes = 0;    // the safetensors data, as stored
  int64_t texts_bytes = 0;         // calibration and evaluation texts as read (0 = unknown)
  // The run's precision, resolved (core/calib/precision.h): what the weights and the
  // activations are held in.
  Precision precision = Precision::Float32;
  // For the time estimate: matmul rates measured on the device (a short benchmark, not a table
  // of card names) in the run's precision and in float64; 0 = not measured (no estimate).
  double flops_per_second = 0;
  double f64_flops_per_second = 0;
  int64_t eval_text_bytes = 0;  // the evaluation text's size (0 = unknown)
};

struct PhaseMemory {
  Phase phase = Phase::Load;
  // Peak above the process's footprint before the run (its libraries, the run store): on the CPU
  // the host's resident memory, on CUDA the device's allocations.
  int64_t device_bytes = 0;
  int64_t host_bytes = 0;  // on CUDA: the host's own peak in the phase (0 on the CPU: it is device_bytes)
  std::string detail;      // the terms, in words
  // Estimated seconds of the phase from its FLOPs and the measured rates; -1 where there is no
  // estimate (no rates, or a phase the estimate does not model: load, RTN's grid search, write).
  double seconds = -1;
};

struct MemoryPlan {
  PlanTarget target;
  int64_t model_bytes = 0;         // the model as computed (in target.precision)
  int64_t micro_batch = 0;         // the learning step's, as it will run (0 = the whole batch)
  bool checkpoint_layers = false;
  bool learning_chosen = false;    // the plan chose micro_batch / checkpoint_layers to fit the budget
  bool streamed = false;           // the phases run a decoder layer at a time (Streaming::Layers)
  bool streaming_chosen = false;   // Streaming::Auto chose it: the whole model did not fit
  std::vector<PhaseMemory> phases; // in run order (phases_of)

  const PhaseMemory& peak() const;  // the phase with the largest device_bytes
  int64_t peak_host_bytes() const;  // CPU: the peak; CUDA: the largest host_bytes
  bool fits() const { return peak().device_bytes <= target.capacity_bytes; }
  double estimated_seconds() const;  // the phases' estimates summed (-1 when none has one)
};

// The plan of `config` (options as given; `micro_batch` 0 and `checkpoint_layers` false leave the
// plan free to choose them when learning would not fit the budget otherwise; the choice is the
// first of: as given, checkpointed, checkpointed with micro-batches of batch/2, batch/4, ..., 1).
MemoryPlan plan_memory(const CalibConfig& config, const ModelConfig& model, const PlanTarget& target);

// One line for a plan that does not fit: the phase, what it needs, what the budget is, and what to
// change.
std::string plan_refusal(const MemoryPlan& plan);

// Text table, one row per phase.
std::string plan_table(const MemoryPlan& plan);
// Figures in bytes.
nlohmann::json memory_plan_to_json(const MemoryPlan& plan);

// "2GiB", "1.5 GB", "512MiB", "800M", "123456" (bytes); respin::Error naming the text otherwise.
int64_t parse_byte_size(const std::string& text);
// "1.62 GB" style (decimal units, as `ls -h --si` and the plan's tables print).
std::string format_bytes(int64_t bytes);
// "8.2 s", "42 s", "3.5 min", "1.2 h".
std::string format_duration(double seconds);

}  // namespace respin
