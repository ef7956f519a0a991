// Perplexity with the protocol of the QuaRot/SpinQuant papers: the text is joined and tokenized
// once (no BOS), cut into non-overlapping windows of seq_len tokens (the tail is dropped), each
// window is scored on its own (positions 0..T-2 predict 1..T-1, no context carried over), and
// PPL = exp(mean over windows of the per-window mean negative log-likelihood).
#pragma once

#include <cstdint>
#include <vector>

#include "core/model/llama.h"
#include "core/util/run_control.h"

namespace respin {

// Each window is its own forward pass: every matrix product sees that window's rows alone, so
// a window's loss is the same function of its tokens however many windows are scored or in what
// order. Batching windows into one product would let the BLAS pick another kernel for the taller
// shape (OpenBLAS does on AVX-512 CPUs) and move the 4-bit activation roundings with it: the
// evaluation of a run and of the same model reloaded would then differ by ~1e-3 (docs/testing.md).
struct PerplexityOptions {
  int64_t seq_len = 2048;   // capped by the caller at the model's max_position_embeddings
  int64_t max_windows = 0;  // 0 = all windows
};

struct PerplexityResult {
  double perplexity = 0;
  double mean_nll = 0;
  int64_t seq_len = 0;
  int64_t windows = 0;
  int64_t tokens_total = 0;     // tokens in the tokenized text
  int64_t tokens_forward = 0;   // windows * seq_len
  double seconds = 0;           // forward + loss time
  double tokens_per_s = 0;      // tokens_forward / seconds
  std::vector<double> window_nll;
};

// Progress events (phase "eval", done/total = windows, value = running perplexity) and
// cancellation through `control` (may be null). Throws respin::Error if the text is shorter
// than one window or the model produces non-finite logits; respin::Cancelled on stop.
PerplexityResult evaluate_perplexity(const LlamaModel& model, const std::vector<int>& token_ids,
                                     const PerplexityOptions& options, RunControl* control = nullptr);

class LayerStream;  // core/model/layer_stream.h

// The same protocol and the same numbers, one decoder layer at a time over all windows (the hidden
// states of the windows are the working set, kept on `hidden_on`): for a model read from its files
// (core/model/layer_stream.h). Progress: done/total = layers + the head; the perplexity arrives
// with the head.
PerplexityResult evaluate_perplexity_streamed(LayerStream& model, const std::vector<int>& token_ids,
                                              const PerplexityOptions& options, at::Device hidden_on,
                                              RunControl* control = nullptr);

// Mean negative log-likelihood of each window [B, T] given its logits [B, T, V] (float32 math).
std::vector<double> window_mean_nll(const at::Tensor& logits, const at::Tensor& ids);

}  // namespace respin
