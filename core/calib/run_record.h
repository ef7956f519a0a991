// The typed record of one calibration run: every field is declared once here and serves the run
// directory's run.json (writer and reader), the run store (core/store) and export (core/export).
// Torch-free.
//
// run.json is run_record_to_json(record) (format "respin-run", format_version 2). Version 1 files
// (written before the record existed) have the same layout minus the identity, data and status
// fields, and read with those empty.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "core/calib/calib_config.h"
#include "core/util/sha256.h"

namespace respin {

constexpr int kRunFormatVersion = 2;

// One quantizer as the run applied it.
struct QuantizerRecord {
  int bits = 16;
  bool symmetric = true;
  int64_t group_size = 0;
  double clip_ratio = 1.0;
};

// A file the run read, identified by content.
struct DataIdentity {
  std::string source;  // "corpus training split", "corpus test split" or the file's absolute path
  int64_t bytes = 0;   // size of the text in bytes
  std::string sha256;  // of the text
};

struct ModelIdentity {
  std::string folder;  // absolute path of the Hugging Face folder
  std::string architecture;
  int64_t parameters = 0;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t layers = 0;
  int64_t heads = 0;
  int64_t kv_heads = 0;
  int64_t head_dim = 0;
  int64_t vocab_size = 0;
  // sha256 over config.json's bytes and every safetensors header (names, dtypes, shapes, offsets):
  // the same folder copied elsewhere has the same identity; changed weights of the same layout
  // are not detected (hashing gigabytes of weights would dominate short runs).
  std::string sha256;
};

struct QuantizersRecord {
  QuantizerRecord weight;
  bool weight_mse_clip = true;
  std::string weight_quantizer = "rtn";  // rtn | gptq
  QuantizerRecord activation;
  int64_t o_proj_activation_group = 0;   // group of o_proj's input quantizer (0 = per token)
  QuantizerRecord kv;
};

struct OnlineRecord {
  bool qk_hadamard = false;     // R3
  bool down_hadamard = false;   // R4
  bool heads_hadamard = false;  // QuaRot's Hadamard across heads before o_proj
  bool skip_correction = false; // ReSpinQuant's rank-r (Q, M) on every residual add
};

struct TrainingRecord {
  int64_t steps = 0;
  double lr = 0;
  int64_t batch = 0;
  int weight_bits_while_training = 16;
  int64_t tokens = 0;
  double seconds = 0;
  double max_orthogonality_error = 0;
  std::vector<double> loss;  // per step
};

struct GptqRecord {
  std::vector<double> layer_loss;
  int64_t dead_columns = 0;
  double seconds = 0;
};

struct MethodRecord {
  std::string residual_init;  // empty for rtn
  std::string head_init;
  std::string heads_hadamard_note;  // why QuaRot's head Hadamard was skipped, if it was
  int64_t rank = -1;                // ReSpinQuant's applied skip rank (-1: no skip corrections)
  std::vector<double> transition_spectral_error;  // layer 0 attn, layer 0 mlp, layer 1 attn, ...
  int64_t online_parameters = 0;       // extra parameters of the skip corrections (all layers)
  int64_t online_macs_per_token = 0;   // their MACs per token
  std::optional<TrainingRecord> training;  // spinquant, respin
  std::optional<GptqRecord> gptq;
  // A sweep derives several ranks from one set of learned rotations: the run that learned them
  // (its directory) and whether this run's corrections were rebuilt from them.
  std::string rotations_from;
};

struct CalibrationDataRecord {
  DataIdentity data;
  int64_t windows = 0;
  int64_t seq_len = 0;
};

struct ResultsRecord {
  DataIdentity eval_data;
  int64_t eval_windows = 0;
  int64_t eval_seq_len = 0;
  int64_t eval_tokens = 0;
  double fp_perplexity = 0;
  double quantized_perplexity = 0;
  double eval_tokens_per_s = 0;  // quantized evaluation throughput
};

struct TimingRecord {
  std::vector<std::pair<std::string, double>> phases_seconds;  // in order; a phase may repeat
  double calibration_seconds = 0;  // rotate + gptq + quantize
  double total_seconds = 0;
  int threads = 0;
  std::string device;  // "cpu", "cuda:0"
};

struct ComputeRecord {
  std::string weights_and_activations = "float32";
  std::string rotation_learning = "none";  // none | float32 | tf32
  std::string rotations = "float32";
  std::string weight_fusion = "float64";
  std::string gptq_hessian = "float64";
  std::string libtorch;
  std::string attention;  // attention_kernel() of the run's device
  // Per phase, in run order: the dtype its forward ran in (for rotate: the learning's, or the
  // fusion's when nothing is learned).
  std::vector<std::pair<std::string, std::string>> phases;
};

// The memory plan the run was made with beside what it measured (docs/methods.md 1.8). Bytes above
// the process's resident size before the run (baseline_rss_bytes); per phase, in run order.
struct MemoryRecord {
  std::string device;               // the plan's device, "cpu" or "cuda:N"
  int64_t capacity_bytes = 0;       // the budget the plan had to fit
  bool capacity_given = false;      // from --device-memory (else the device's memory)
  int64_t micro_batch = 0;          // as the learning ran
  bool checkpoint_layers = false;
  bool learning_chosen = false;     // chosen by the plan to fit the budget
  bool streamed = false;            // the phases ran a decoder layer at a time (docs/methods.md 1.7)
  int64_t baseline_rss_bytes = 0;
  // The plan's resident-memory peak of each phase (the host's on CUDA), comparable with measured_bytes.
  std::vector<std::pair<std::string, double>> predicted_bytes;
  std::vector<std::pair<std::string, double>> predicted_device_bytes;  // CUDA only: the device's
  // Peak resident memory of each phase above the baseline (the kernel's high-water mark, reset at
  // each phase start); empty where the kernel cannot reset it. On CUDA the host's, not the device's.
  std::vector<std::pair<std::string, double>> measured_bytes;
  // CUDA only, where the build reads libtorch's allocator: the peak bytes its tensors held in each
  // phase above what they held when the run began, comparable with predicted_device_bytes.
  std::vector<std::pair<std::string, double>> measured_device_bytes;
  // The plan's time estimate of each phase it models (seconds; compare timing.phases), and the
  // measured matmul rates it came from (FLOP/s in the run's precision and in float64).
  std::vector<std::pair<std::string, double>> predicted_seconds;
  double flops_per_second = 0, f64_flops_per_second = 0;
};

struct RunRecord {
  int format_version = kRunFormatVersion;
  std::string respin_version;
  std::string created;   // ISO 8601 UTC, when the run started
  std::string finished;  // ISO 8601 UTC
  CalibConfig config;
  std::string config_sha256;  // of calib_config_to_json(config)
  ModelIdentity model;
  QuantizersRecord quantizers;
  OnlineRecord online;
  MethodRecord method;
  CalibrationDataRecord calibration;
  ResultsRecord results;
  TimingRecord timing;
  ComputeRecord compute;
  int64_t peak_rss_bytes = 0;
  std::optional<int64_t> gpu_memory_in_use_bytes;
  MemoryRecord memory;
};

// ReSpinQuant's online cost at skip rank r (docs/methods.md): per decoder layer two residual adds,
// each with Q [hidden, r] and M [r, r]; applying one costs 2 hidden r + r^2 MACs per token.
int64_t skip_correction_parameters_per_layer(int64_t hidden, int64_t rank);
int64_t skip_correction_macs_per_token_per_layer(int64_t hidden, int64_t rank);
// Parameters (= MACs per token) of one decoder layer's seven linear layers, the base the online
// cost is a share of.
int64_t decoder_layer_linear_parameters(int64_t hidden, int64_t q_dim, int64_t kv_dim, int64_t intermediate);

nlohmann::json run_record_to_json(const RunRecord& r);
// Throws respin::Error naming `source` and the field for a missing required field, a wrong type,
// a format other than "respin-run" or a format_version newer than this build knows.
RunRecord run_record_from_json(const nlohmann::json& j, const std::string& source);

}  // namespace respin
