// Whether a model folder can be loaded for calibration, decided without converting any weight
// (torch-free, for the workbench before it enables Start): the checks load_model and the
// calibration make before computing, with their wording. Reads config.json, tokenizer.json's
// presence and the safetensors headers (the files are mapped, their tensor bytes are not read;
// non-finite values are found only by load_model, which reads every value).
#pragma once

#include <string>

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

// The tensor checks alone, on already-opened weights (`source`: the folder, for messages).
void check_model_tensors(const ShardedSafetensors& st, const ModelConfig& config, const std::string& config_path,
                         const std::string& source);

}  // namespace respin
