// Export of a calibration run into a folder that other tools load (docs/export.md):
//
//   hf                  a plain Hugging Face folder (config.json, model.safetensors in the chosen
//                       dtype with model.safetensors.index.json, tokenizer files,
//                       generation_config.json) with every offline rotation fused and the weights
//                       dequantized, plus respin_online.json and respin_online.tensors: the online
//                       operations a runtime must apply (docs/export.md section 2);
//   compressed-tensors  real packed integer weights ("pack-quantized", or "int-quantized" for W8A8)
//                       recovered exactly from the run's weight grids, a quantization_config in
//                       config.json and a transform_config for R4. What the format cannot say
//                       (compressed_tensors_gaps) makes export refuse, unless allow_sidecar adds
//                       the hf format's respin_online.json and respin_online.tensors.
//
// Every file a model loader opens as weights (each "*.safetensors", and the index naming them)
// holds only the architecture's tensors; the sidecar's tensors are in a file no loader opens.
//
// The folder is built under a unique temporary sibling (mkdtemp) and renamed into place at the
// end: a failure leaves nothing behind, and an existing folder is never written into. Free space
// is checked (statvfs) before anything is written.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/calib/run_record.h"
#include "core/io/safetensors.h"
#include "core/util/fs.h"

namespace respin {

enum class ExportFormat { Hf, CompressedTensors };
const char* export_format_name(ExportFormat f);  // "hf", "compressed-tensors"
// Throws respin::Error listing the valid names.
ExportFormat export_format_from_name(const std::string& name);
// "bf16" | "f16" | "f32" -> DType; throws respin::Error listing the valid names.
DType export_dtype_from_name(const std::string& name);

struct ExportOptions {
  ExportFormat format = ExportFormat::Hf;
  // Storage dtype of every floating-point tensor (hf: all weights; compressed-tensors: embeddings,
  // norms, lm_head, biases, transform matrices, and the weight scales when they are exact in it).
  DType dtype = DType::F16;  // F32, F16 or BF16 (f16 by default: 11 significant bits keep the run's perplexity)
  bool allow_sidecar = false;  // compressed-tensors: add respin_online.json for what it cannot say
};

struct ExportResult {
  std::string dir;                 // the folder written (absolute)
  std::string format;              // "hf" or "compressed-tensors"
  std::vector<std::string> files;  // file names in the folder, sorted
  uint64_t bytes = 0;              // their total size
  double seconds = 0;              // wall time of the export
  bool sidecar = false;            // respin_online.json written
  std::vector<std::string> gaps;   // compressed-tensors: what went to the sidecar (empty for hf)
  std::string ct_format;           // compressed-tensors: "pack-quantized" or "int-quantized"
  std::string scale_dtype;         // compressed-tensors: dtype name of the weight scales ("F32", "BF16", ...)
  std::vector<std::string> required_online;  // the operations a runtime must apply (sites), e.g. "down_proj_input: hadamard"
};

// Exports the run directory `run_dir` into the new folder `out_dir`. Throws respin::Error naming
// the problem (an existing out_dir, a weight off its grid, not enough space, what compressed-tensors
// cannot express, ...); nothing is left behind then.
ExportResult export_run(const std::string& run_dir, const std::string& out_dir, const ExportOptions& options = {});

// What compressed-tensors (and the runtimes that load it, docs/export.md 1.7/1.8) cannot express
// of a run, one human-readable item each; empty when the format says everything. `o_proj_group`
// is the run's (record.quantizers.o_proj_activation_group).
std::vector<std::string> compressed_tensors_gaps(const RunRecord& record);

// Free space and what files take on disk: available_bytes, allocation_unit, space_needed
// (core/util/fs.h).
// Throws respin::Error "<dir>: not enough free space for the export: needs N bytes (X MiB), N
// bytes (Y MiB) available" when needed > available.
void check_free_space(const std::string& dir, uint64_t needed, uint64_t available);

}  // namespace respin
