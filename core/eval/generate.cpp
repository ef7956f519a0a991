// Greedy and nucleus sampling generation (see generate.h).
#include "core/eval/generate.h"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>
#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>

#include "core/util/error.h"

namespace respin {

int choose_token(const at::Tensor& logits_in, const GenerateOptions& o, at::Generator& gen) {
  // Sampling runs on the CPU with a CPU generator: the same tokens for a seed on every device.
  at::Tensor logits = logits_in.to(at::kCPU, at::kFloat);
  if (o.temperature <= 0) return static_cast<int>(logits.argmax().item<int64_t>());
  at::Tensor probs = at::softmax(logits / o.temperature, -1);
  if (o.top_p < 1.0) {
    auto [sorted, order] = probs.sort(-1, /*descending=*/true);
    at::Tensor cumulative = sorted.cumsum(-1);
    // Keep the smallest prefix whose mass reaches top_p (always at least the top token).
    at::Tensor drop = (cumulative - sorted) >= o.top_p;
    sorted = sorted.masked_fill(drop, 0);
    probs = at::zeros_like(probs).scatter(-1, order, sorted);
  }
  return static_cast<int>(at::multinomial(probs, 1, /*replacement=*/false, gen).item<int64_t>());
}

std::vector<int> generate(const LlamaModel& model, const std::vector<int>& prompt, const GenerateOptions& o,
                          RunControl* control) {
  if (prompt.empty()) throw Error("generation needs a non-empty prompt");
  if (!(o.top_p > 0 && o.top_p <= 1)) throw Error("top-p must be in (0, 1]");
  c10::NoGradGuard no_grad;
  at::Generator gen = at::detail::createCPUGenerator(o.seed);
  const int64_t max_ctx = model.config().max_position_embeddings;
  std::vector<int64_t> ids(prompt.begin(), prompt.end());
  std::vector<int> out;
  for (int64_t i = 0; i < o.max_new_tokens; ++i) {
    if (control) control->check();
    const int64_t start = std::max<int64_t>(0, static_cast<int64_t>(ids.size()) - max_ctx);
    std::vector<int64_t> ctx(ids.begin() + start, ids.end());
    at::Tensor logits = model.forward(at::tensor(ctx).view({1, static_cast<int64_t>(ctx.size())}));
    const int next = choose_token(logits[0][static_cast<int64_t>(ctx.size()) - 1], o, gen);
    out.push_back(next);
    ids.push_back(next);
    if (std::find(o.stop_ids.begin(), o.stop_ids.end(), next) != o.stop_ids.end()) break;
  }
  return out;
}

}  // namespace respin
