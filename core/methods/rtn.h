// RTN: round-to-nearest quantization without any rotation, the baseline every rotation method is
// compared against. Linear weights (not the embeddings or lm_head) are fake-quantized per output
// channel; a hook fake-quantizes every linear layer's input (not lm_head's, following the papers'
// protocol) and the KV cache (K after RoPE, V), per token.
#pragma once

#include <vector>

#include "core/model/llama.h"
#include "core/quant/quantizer.h"

namespace respin {

struct QuantConfig {
  QuantSpec weight{4, true, 0, 1.0};       // per output channel, symmetric
  bool weight_mse_clip = true;             // MSE clip search (docs/methods.md 2.5)
  QuantSpec activation{4, false, 0, 1.0};  // per token, asymmetric
  QuantSpec kv{4, false, 0, 1.0};          // per token per head, asymmetric
  void validate() const;
};

// The hook that fake-quantizes linear inputs and K/V according to `config` (no-op for 16 bits).
ActivationHook activation_quant_hook(const QuantConfig& config);

// Fake-quantizes every decoder layer's linear weights in place (round-to-nearest on the grid of
// config.weight, with the MSE clip search if config.weight_mse_clip); embeddings and lm_head stay.
// `grids` (optional) receives each weight's grid: [layer][linear in linear_weights() order].
void quantize_weights_rtn(ModelWeights& weights, const QuantConfig& config,
                          std::vector<std::vector<WeightQuantParams>>* grids = nullptr);

// The same for one decoder layer (`grids`, optional, gets its seven grids).
void quantize_layer_rtn(LayerWeights& layer, const QuantConfig& config, std::vector<WeightQuantParams>* grids = nullptr);
// The RTN setting `respin eval --wbits/--abits/--kvbits` applies to a plain model: weights per
// output channel symmetric with the MSE clip search, activations per token and KV per head,
// asymmetric (the QuantConfig defaults at those widths).
QuantConfig rtn_eval_config(int wbits, int abits, int kvbits);

// A copy of `model` with fake-quantized weights and the activation hook installed.
LlamaModel quantize_rtn(const LlamaModel& model, const QuantConfig& config);

}  // namespace respin
