// Loading a LlamaModel from a Hugging Face model folder and saving one back in the same layout
// (config.json + model.safetensors, Hugging Face tensor names).
#pragma once

#include <ATen/core/Tensor.h>

#include <string>
#include <vector>

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

// One tensor of `st`, converted to `dtype` (on the CPU), checked finite; its mapped pages are
// released after the copy. Throws respin::Error naming the file and the tensor.
at::Tensor tensor_from_safetensors(const ShardedSafetensors& st, const std::string& name, at::ScalarType dtype,
                                   const std::string& source);
// Decoder layer `layer` of `st`, likewise: what weights_from_safetensors reads for that layer.
LayerWeights layer_from_safetensors(const ShardedSafetensors& st, const ModelConfig& config, int layer,
                                    at::ScalarType dtype, const std::string& source);

// Weights of `config`'s shapes that hold no memory (each a zero-stride view of one element): the
// frame of a model whose layers are read one at a time (core/model/layer_stream.h).
ModelWeights placeholder_weights(const ModelConfig& config, at::ScalarType dtype, at::Device device);
LayerWeights placeholder_layer(const ModelConfig& config, at::ScalarType dtype, at::Device device);

struct SaveOptions {
  DType file_dtype = DType::BF16;  // F32, F16 or BF16
  std::string tokenizer_json;      // if non-empty, copied into the folder as tokenizer.json
};

// The tensors model.safetensors holds for `config` in `file_dtype`, in the order save_model writes
// them (names, dtypes, shapes; no data): the layout of a file written a tensor at a time.
std::vector<TensorView> model_file_layout(const ModelConfig& config, DType file_dtype);
// A decoder layer's tensor by its name within the layer ("self_attn.q_proj.weight"); throws
// respin::Error for a name no layer has.
const at::Tensor& layer_tensor_named(const LayerWeights& layer, const std::string& part);
at::Tensor& layer_tensor_named(LayerWeights& layer, const std::string& part);
// A model's tensor by its safetensors name ("model.embed_tokens.weight", "lm_head.weight",
// "model.layers.3.mlp.up_proj.weight"); throws respin::Error for a name the model has no place for.
const at::Tensor& model_tensor_named(const ModelWeights& weights, const std::string& name);
at::Tensor& model_tensor_named(ModelWeights& weights, const std::string& name);
// The layer a tensor name belongs to ("model.layers.3.mlp.up_proj.weight" -> 3, `part` the rest),
// -1 for the embeddings, the final norm and lm_head.
int layer_of_tensor(const std::string& name, std::string* part = nullptr);
// config.json (torch_dtype from options.file_dtype) and the tokenizer of a model folder whose
// weights are written otherwise (`dir` created if needed).
void save_model_metadata(const std::string& dir, const ModelConfig& config, const SaveOptions& options);

// Writes config.json and model.safetensors into `dir` (created if needed), each atomically.
void save_model(const std::string& dir, const ModelConfig& config, const ModelWeights& weights,
                const SaveOptions& options = {});

}  // namespace respin
