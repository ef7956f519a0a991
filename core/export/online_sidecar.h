// The online part of an exported model (docs/export.md section 2): respin_online.json, which says
// what a runtime must do besides the Linear layers (online Hadamards, ReSpinQuant's skip
// corrections, the activation and KV fake quantizers, in application order), and
// respin_online.tensors, which holds the tensors those operations need in the safetensors layout.
// Its name does not end in "safetensors" so that no model loader takes it for a shard of the
// model's weights (docs/export.md 2.6). Written by export_run for the hf format (and for
// compressed-tensors with --allow-sidecar), read back by load_exported_model. Folders written with
// format_version 1 (tensors in online.safetensors) are still read. The reader is strict: an
// unknown field, a missing one, a version it does not know, an operation list that is not the one
// its settings imply, or dimensions that are not the model's are errors naming the file and the
// field, never silently ignored.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "core/io/model_config.h"
#include "core/methods/rotated_model.h"
#include "core/methods/rtn.h"

namespace respin {

constexpr const char* kOnlineSidecarJson = "respin_online.json";
constexpr const char* kOnlineSidecarTensors = "respin_online.tensors";
// Where format_version 1 kept them (beside the weights, where loaders open every *.safetensors).
constexpr const char* kOnlineSidecarTensorsV1 = "online.safetensors";
constexpr const char* kOnlineSidecarFormat = "respin-online";
constexpr int kOnlineSidecarVersion = 2;

// One online Hadamard as respin_online.json describes it: H_n = H_core (x) S_sylvester (2.3).
struct OnlineHadamardSpec {
  int64_t size = 0;            // n
  std::string construction;    // HadamardTransform::construction(), e.g. "paley1(11) x sylvester(8)"
  int64_t core_size = 1;       // K
  int64_t sylvester_size = 0;  // M = n / K, a power of two
  std::string core_tensor;     // name in the tensor file of the K x K int8 core ("" when K == 1)
};

// What the run that was exported measured, so that a reader can check it reproduces the number.
struct SourceRunInfo {
  std::string run_dir;
  std::string label;              // CalibConfig::label()
  double fp_perplexity = 0;
  double quantized_perplexity = 0;
  int64_t eval_seq_len = 0;
  int64_t eval_windows = 0;
  int64_t eval_batch = 0;
  std::string eval_text_source;
  int64_t eval_text_bytes = 0;
  std::string eval_text_sha256;
};

// Everything respin_online.json holds, plus the tensors of its tensor file once loaded.
struct OnlineSidecar {
  int format_version = kOnlineSidecarVersion;  // as read (1 or 2); written: always the current one
  // The tensor file, a plain file name in the folder: "tensors" in respin_online.json
  // (kOnlineSidecarTensors), kOnlineSidecarTensorsV1 for format_version 1.
  std::string tensor_file = kOnlineSidecarTensors;
  std::string method;            // rtn | quarot | spinquant | respin
  std::string weight_quantizer;  // rtn | gptq (informational)
  QuantSpec weight;              // the weights' grid (informational: it is in the weights)
  std::string weight_storage;    // "dequantized" (hf) or "compressed-tensors"
  // The model it was built for (a runtime refuses a mismatch).
  std::string architecture;
  int64_t hidden_size = 0, intermediate_size = 0, num_hidden_layers = 0, num_attention_heads = 0,
          num_key_value_heads = 0, head_dim = 0;
  OnlineTransforms online;
  std::optional<OnlineHadamardSpec> qk, down_proj, heads;  // present exactly when the flag is on
  // ReSpinQuant's skip corrections: rank (-1 = none) and per layer the tensor names (empty =
  // identity for that add).
  int64_t skip_rank = -1;
  std::vector<std::string> attn_q, attn_m, mlp_q, mlp_m;
  QuantConfig quant;  // activation and kv are applied online; weight = `weight`
  int64_t o_proj_group = 0;
  std::optional<SourceRunInfo> source;

  // Filled by read_online_sidecar from the tensor file (float32 on the requested device).
  SkipTransitions skip;
};

// The sidecar of a model with these settings. `model` gives the dimensions; the Hadamard specs are
// derived from them (respin::Error when a size has no construction).
OnlineSidecar make_online_sidecar(const ModelConfig& model, const std::string& method, const OnlineTransforms& online,
                                  const QuantConfig& quant, int64_t o_proj_group);

// The ordered list of operations its settings imply ("operations" in respin_online.json).
nlohmann::json online_operations(const OnlineSidecar& s);
nlohmann::json online_sidecar_to_json(const OnlineSidecar& s);

// The tensors of the tensor file for `s`: every Hadamard core (int8, +-1) and the skip
// corrections `skip` (float32) under the names `s` lists. Returns name -> tensor on the CPU.
std::vector<std::pair<std::string, at::Tensor>> online_sidecar_tensors(const OnlineSidecar& s,
                                                                       const SkipTransitions& skip);
// The +-1 core of H_n as an int8 [K, K] tensor (undefined when K == 1), and the dense +-1 matrix
// H_n = core (x) S_M as a float32 [n, n] tensor (x -> x H_n / sqrt(n) is HadamardTransform::apply).
at::Tensor hadamard_core_int8(int64_t n, int64_t* core_size = nullptr);
at::Tensor hadamard_dense_pm1(int64_t n);

// Parses respin_online.json (the text) against the model's config; `source` names the file in
// errors. Does not load tensors.
OnlineSidecar parse_online_sidecar(const std::string& json_text, const ModelConfig& model, const std::string& source);
// parse_online_sidecar + the tensor file it names in `dir`: checks every tensor (names, shapes,
// dtypes, Hadamard cores equal to the workbench's own construction, no stray tensors) and loads
// the skip corrections to `device`. A missing tensor file is an error naming it whenever the JSON
// names a tensor.
OnlineSidecar read_online_sidecar(const std::string& dir, const ModelConfig& model, at::Device device);

}  // namespace respin
