// GPTQ over a whole model, layer by layer with bounded memory (docs/methods.md 2.5): the calibration
// windows are embedded once; for each layer the Hessians of its linear inputs are accumulated in
// GPTQ's sequential groups -- [q, k, v], then o_proj, then [gate, up], then down_proj, each group
// seeing the inputs produced by the already-quantized groups before it -- and the layer's output
// (from its quantized weights) becomes the next layer's input. The online part of a rotated model
// (Hadamards, skip transitions) is active through `online`; activation quantizers are not (GPTQ
// sees full-precision activations, as in QuaRot and SpinQuant). Memory: the hidden states of the
// calibration set plus one layer's Hessians.
#pragma once

#include <ATen/core/Tensor.h>

#include <functional>
#include <vector>

#include "core/model/llama.h"
#include "core/quant/gptq.h"
#include "core/util/run_control.h"

namespace respin {

struct GptqModelOptions {
  QuantSpec weight{4, true, 0, 1.0};
  GptqOptions gptq;
  int64_t batch = 4;  // windows per layer forward
};

struct GptqModelReport {
  std::vector<double> layer_loss;  // sum of GPTQ losses of each layer's seven linears
  int64_t dead_columns = 0;
  double seconds = 0;
  // The grid of every quantized weight: [layer][linear in linear_weights() order].
  std::vector<std::vector<WeightQuantParams>> grids;
};

struct GptqLayerResult {
  double loss = 0;  // the sum of the seven linears' GPTQ losses
  int64_t dead_columns = 0;
  std::vector<WeightQuantParams> grids;  // in linear_weights() order
};

// One decoder layer of it (what gptq_quantize_model does to layer i): `layer` is quantized in place
// and `hidden` (the layer's inputs, [windows, T, hidden] pieces) becomes its outputs from the
// quantized weights. `frame` is the model around the layer (its other layers may be placeholders:
// only layer i runs); its layer i and hook are replaced. Throws respin::Cancelled on stop.
GptqLayerResult gptq_quantize_layer(LlamaModel& frame, int i, LayerWeights& layer, std::vector<at::Tensor>& hidden,
                                    const ForwardContext& ctx, const ActivationHook& online,
                                    const GptqModelOptions& options, RunControl* control = nullptr);

// The loop over the decoder layers both the whole and the streamed GPTQ run: for i = 0..L-1,
// `take(i)` gives layer i (shared with the caller's weights or read from a file), which is
// quantized in place (gptq_quantize_layer, `frame` a model of placeholder layers), then handed to
// `give(i, layer)`; the frame's layer i is a placeholder again after it. The report gathers the
// losses, dead columns and grids; progress: phase "gptq", done/total = layers, with an ETA.
// Throws respin::Cancelled on stop.
GptqModelReport gptq_layers(LlamaModel& frame, std::vector<at::Tensor>& hidden, const ForwardContext& ctx,
                            const ActivationHook& online, const GptqModelOptions& options, RunControl* control,
                            const std::function<LayerWeights(int)>& take,
                            const std::function<void(int, LayerWeights&&)>& give);

// Returns the model's weights with every linear layer of every decoder layer GPTQ-quantized
// (embeddings and lm_head untouched). `online` may be empty. windows: [N, T] int64.
// Progress: phase "gptq", done/total = layers. Throws respin::Cancelled on stop.
ModelWeights gptq_quantize_model(const LlamaModel& model, const ActivationHook& online, const at::Tensor& windows,
                                 const GptqModelOptions& options, RunControl* control = nullptr,
                                 GptqModelReport* report = nullptr);
// The same, consuming `model`: each weight is replaced by its quantized one as GPTQ reaches it,
// so the model is never held twice (docs/methods.md 1.7); `model` is left without weights.
ModelWeights gptq_quantize_model(LlamaModel&& model, const ActivationHook& online, const at::Tensor& windows,
                                 const GptqModelOptions& options, RunControl* control = nullptr,
                                 GptqModelReport* report = nullptr);

}  // namespace respin
