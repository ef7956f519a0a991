// Loading exported folders back (docs/export.md): a compressed-tensors folder (its packed integer
// weights dequantized on load to exactly (q - zero) * scale in float32) and/or a folder with the
// online sidecar (respin_online.json + respin_online.tensors: online Hadamards, skip corrections,
// activation and KV quantizers, installed with the same online_hook options load_run uses).
//
// Nothing is guessed: a quantization_config or a sidecar field this loader does not understand,
// a tensor it does not expect, a transform it cannot apply, or a sidecar that contradicts the
// quantization_config is a respin::Error naming the file and the field.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "core/export/online_sidecar.h"
#include "core/export/pack.h"
#include "core/io/safetensors.h"
#include "core/model/llama.h"
#include "core/model/weights.h"

namespace respin {

// True when `dir` holds a config.json with a (non-null) "quantization_config", or a
// respin_online.json: such a folder must be loaded with load_exported_model, not load_model.
bool is_exported_model_folder(const std::string& dir);

struct ExportedModel {
  std::string dir;
  std::string format;                      // "compressed-tensors" or "hf"
  std::optional<CtScheme> scheme;          // compressed-tensors: the parsed quantization_config
  std::optional<OnlineSidecar> sidecar;    // respin_online.json, when present
  OnlineTransforms online;                 // what the hook applies
  QuantConfig quant;                       // activation and kv quantizers the hook applies
  int64_t o_proj_group = 0;
  SkipTransitions skip;
  std::optional<LlamaModel> model;         // dequantized weights with the hook installed
  // One line for people, e.g. "compressed-tensors pack-quantized W4 (sym, per channel) + R4 +
  // respin_online.json (respin)".
  std::string description() const;
};

// Throws respin::Error (see above). options.dtype is the compute dtype (dequantization itself is
// float32); options.device where the model and the hook's state go.
ExportedModel load_exported_model(const std::string& dir, const LoadOptions& options = {});

// ---- compressed-tensors pieces (used by the loader, exposed for tests and tools) ----------------

// config.json's quantization_config of `dir`, parsed and checked against what this loader can run
// (targets ["Linear"], ignore ["lm_head"], only the R4 transform export writes).
CtScheme read_ct_scheme(const std::string& dir);

// One Linear of a compressed-tensors checkpoint, unpacked to the workbench's codes (signed for
// symmetric, unsigned for asymmetric grids, core/export/pack.h).
struct CtLinear {
  int64_t out = 0, in = 0, groups = 0;
  std::vector<int32_t> codes;  // out * in
  std::vector<int32_t> zero;   // out * groups unsigned zero points; empty when symmetric
  at::Tensor scale;            // [out, groups] float32 (exact conversion of the stored scale)
  DType scale_dtype = DType::F32;
};
// Reads `<prefix>.weight_packed` / `.weight_scale` / `.weight_zero_point` / `.weight_shape`
// (pack-quantized) or `<prefix>.weight` int8 / ... (int-quantized), checking dtypes and shapes
// against [out, in]. `used` (optional) collects the tensor names read.
CtLinear read_ct_linear(const ShardedSafetensors& st, const std::string& prefix, const CtScheme& scheme, int64_t out,
                        int64_t in, std::vector<std::string>* used = nullptr);
// (codes - zero) * scale in float32, [out, in]: bit for bit the workbench's fake-quantized weight.
at::Tensor dequantize_ct_linear(const CtLinear& l);

}  // namespace respin
