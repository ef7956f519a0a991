// A model read one decoder layer at a time from its safetensors files (docs/methods.md 1.7): the
// phases that need no end-to-end gradient (evaluation, statistics, QuaRot's fusion and rotation,
// RTN, GPTQ) carry the hidden states of all their windows from layer to layer, and only the layer
// in flight (or the embeddings, or the head) is resident beside them. The weights come from the
// memory-mapped files, tensor by tensor, converted to the run's dtype on its device, and the
// mapping's pages are given back as each tensor is copied.
//
// Each window runs through each layer on its own, as LlamaModel::forward would run it: a window's
// numbers are the same as in a forward of the whole model.
#pragma once

#include <ATen/core/Tensor.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "core/io/safetensors.h"
#include "core/model/llama.h"

namespace respin {

class LayerStream {
 public:
  // `weights`: the model as stored (`source` names it in messages).
  LayerStream(ModelConfig config, std::shared_ptr<const ShardedSafetensors> weights, std::string source,
              at::ScalarType dtype, at::Device device);

  const ModelConfig& config() const { return frame_.config(); }
  at::ScalarType dtype() const { return dtype_; }
  at::Device device() const { return device_; }
  void set_hook(ActivationHook hook) { frame_.set_hook(std::move(hook)); }
  ForwardContext make_context(int64_t seq_len) const { return frame_.make_context(seq_len); }

  // A tensor as stored, converted to the dtype, on the device (finite-checked).
  at::Tensor read(const std::string& name) const;
  LayerWeights read_layer(int layer) const;
  // lm_head.weight, or the embeddings where they are tied.
  at::Tensor read_lm_head() const;

  // The windows of `ids` [N, T] embedded, `per` windows to a tensor, kept on `keep_on` (the
  // device, or the host when the hidden states do not fit beside a layer on the device).
  std::vector<at::Tensor> embed(const at::Tensor& ids, int64_t per, at::Device keep_on) const;
  // Every hidden state through decoder layer `layer`, read for the purpose and dropped after.
  void forward_layer(int layer, std::vector<at::Tensor>& hidden, const ForwardContext& ctx);
  // The same with weights the caller made (a layer quantized in the stream, say).
  void forward_layer_with(int layer, LayerWeights weights, std::vector<at::Tensor>& hidden, const ForwardContext& ctx);
  // The final norm and lm_head over each hidden state in turn: `use(k, logits)`.
  void head(const std::vector<at::Tensor>& hidden, const std::function<void(size_t, const at::Tensor&)>& use);

 private:
  std::shared_ptr<const ShardedSafetensors> weights_;
  std::string source_;
  at::ScalarType dtype_;
  at::Device device_;
  LlamaModel frame_;  // placeholders but for the part in use
};

}  // namespace respin
