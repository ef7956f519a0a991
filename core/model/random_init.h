// Randomly initialised weights for a config: used by tests and by `respin init-model` to make
// small Hugging Face-layout model folders without any download.
#pragma once

#include <cstdint>

#include <string>

#include "core/model/llama.h"
#include "core/model/weights.h"

namespace respin {

struct RandomInitOptions {
  uint64_t seed = 0;
  double std = 0.02;        // Hugging Face initializer_range
  double norm_jitter = 0.1;  // norm weights are 1 + jitter * N(0,1), so they are not no-ops
  double bias_std = 0.02;
};

ModelWeights random_weights(const ModelConfig& config, const RandomInitOptions& options = {});

// save_model(dir, config, random_weights(config, options), save) with the same bytes, a tensor at a
// time: the model is never in memory (an 8B or 70B-shaped test folder on a machine smaller than it).
void save_random_model(const std::string& dir, const ModelConfig& config, const RandomInitOptions& options,
                       const SaveOptions& save);

}  // namespace respin
