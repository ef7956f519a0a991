// Text generation from a LlamaModel: greedy decoding, or sampling with temperature and nucleus
// (top-p) truncation. The whole context is re-run for each new token (no KV cache): simple and
// exact, and fast enough for the small models and short continuations it is used for.
#pragma once

#include <cstdint>
#include <vector>

#include "core/model/llama.h"
#include "core/util/run_control.h"

namespace respin {

struct GenerateOptions {
  int64_t max_new_tokens = 64;
  double temperature = 0;  // 0 = greedy
  double top_p = 1.0;      // nucleus mass kept when sampling
  uint64_t seed = 0;
  std::vector<int> stop_ids;  // generation ends after emitting one of these
};

// Returns only the new ids. The context is truncated from the left to max_position_embeddings.
std::vector<int> generate(const LlamaModel& model, const std::vector<int>& prompt, const GenerateOptions& options,
                          RunControl* control = nullptr);

// The id chosen from one logits row [vocab] (float32) by the options' rule; exposed for tests.
int choose_token(const at::Tensor& logits, const GenerateOptions& options, at::Generator& gen);

}  // namespace respin
