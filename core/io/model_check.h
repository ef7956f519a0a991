// Whether a model folder can be loaded for calibration, decided without converting any weight
// (torch-free, for the workbench before it enables Start): the checks load_model and the
// calibration make before computing, with their wording. Reads config.json, tokenizer.json's
// presence and the safetensors headers (the files are mapped, their tensor bytes are not read;
// non-finite values are found only by load_model, which reads every value).
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "core/io/model_config.h"
#include "core/io/safetensors.h"

namespace respin {

// Throws respin::Error naming the file and the problem: not a model folder, a config it refuses,
// an exported model (respin_online.json, quantization_config), no tokenizer.json, a safetensors
// header or size it refuses (a truncated file), a tensor missing, of a non-float dtype, of another
// shape than the config implies, or one the config does not use.
void check_model_loadable(const std::string& dir);

// Throws when the folder is an exported quantized model (respin_online.json, or a non-null
// quantization_config in config.json): plain model loading would drop its online operations or
// read packed integers as floats.
void refuse_exported_model(const std::string& dir, const std::string& config_path);

// The tensors a folder with this config holds, in save order (Hugging Face LLaMA/Mistral/Qwen2
// names; lm_head only when untied): the one table of the layout, for the checks and for
// placeholder folders.
std::vector<std::pair<std::string, std::vector<int64_t>>> expected_model_tensors(const ModelConfig& config);

// A model folder that plans but does not run: config.json, a model.safetensors whose header names
// every tensor (in `dtype`) and whose data is a hole of the full size (a sparse file: almost no
// disk), and the tokenizer when given. Written under a temporary name and renamed; an existing
// `dir` is refused. How 8B and 70B plans are made and tested without their weights.
void write_placeholder_model(const std::string& dir, const ModelConfig& config, DType dtype,
                             const std::string& tokenizer_json = "");

// The tensor checks alone, on already-opened weights (`source`: the folder, for messages).
void check_model_tensors(const ShardedSafetensors& st, const ModelConfig& config, const std::string& config_path,
                         const std::string& source);

}  // namespace respin
