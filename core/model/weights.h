// Loading a LlamaModel from a Hugging Face model folder and saving one back in the same layout
// (config.json + model.safetensors, Hugging Face tensor names).
#pragma once

#include <ATen/core/Tensor.h>

#include <string>

#include "core/io/safetensors.h"
#include "core/model/llama.h"

namespace respin {

struct LoadOptions {
  at::ScalarType dtype = at::kFloat;  // compute dtype: kFloat or kBFloat16
  at::Device device = at::kCPU;       // where the model (and so everything computed with it) lives
  // An exported folder (a respin_online.json sidecar, or a quantization_config in config.json)
  // is not the float model its weights alone describe: refused unless the caller applies what it
  // says (core/export/exported_model.h does).
  bool caller_applies_export = false;
};

// Reads config.json and the safetensors file(s) of `dir` and converts every weight to
// options.dtype on options.device. Throws respin::Error naming the file and the tensor on any problem.
LlamaModel load_model(const std::string& dir, const LoadOptions& options = {});

// Weights from already-opened safetensors, converted to `dtype` (used by load_model, which first
// checks names, dtypes and shapes against `config` with check_model_tensors, core/io/model_check.h).
ModelWeights weights_from_safetensors(const ShardedSafetensors& st, const ModelConfig& config,
                                      at::ScalarType dtype, const std::string& source);

struct SaveOptions {
  DType file_dtype = DType::BF16;  // F32, F16 or BF16
  std::string tokenizer_json;      // if non-empty, copied into the folder as tokenizer.json
};

// Writes config.json and model.safetensors into `dir` (created if needed), each atomically.
void save_model(const std::string& dir, const ModelConfig& config, const ModelWeights& weights,
                const SaveOptions& options = {});

}  // namespace respin
