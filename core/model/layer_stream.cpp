// Layer-streamed model (see layer_stream.h).
#include "core/model/layer_stream.h"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>

#include "core/model/weights.h"
#include "core/util/error.h"
#include "core/util/process_memory.h"

namespace respin {

LayerStream::LayerStream(ModelConfig config, std::shared_ptr<const ShardedSafetensors> weights, std::string source,
                         at::ScalarType dtype, at::Device device)
    : weights_(std::move(weights)),
      source_(std::move(source)),
      dtype_(dtype),
      device_(device),
      frame_(config, placeholder_weights(config, dtype, device)) {
  if (!weights_) throw Error("LayerStream: no weights");
}

at::Tensor LayerStream::read(const std::string& name) const {
  return tensor_from_safetensors(*weights_, name, dtype_, source_).to(device_);
}

LayerWeights LayerStream::read_layer(int layer) const {
  LayerWeights w = layer_from_safetensors(*weights_, config(), layer, dtype_, source_);
  if (!device_.is_cpu())
    for (at::Tensor* t : layer_tensors(w))
      if (t->defined()) *t = t->to(device_);
  return w;
}

at::Tensor LayerStream::read_lm_head() const {
  return read(config().tie_word_embeddings ? "model.embed_tokens.weight" : "lm_head.weight");
}

std::vector<at::Tensor> LayerStream::embed(const at::Tensor& ids, int64_t per, at::Device keep_on) const {
  if (per < 1) throw Error("LayerStream::embed: windows per piece must be >= 1");
  c10::NoGradGuard no_grad;
  const at::Tensor e = read("model.embed_tokens.weight");
  std::vector<at::Tensor> hidden;
  for (int64_t b = 0; b < ids.size(0); b += per)
    hidden.push_back(at::embedding(e, ids.narrow(0, b, std::min(per, ids.size(0) - b)).to(device_)).to(keep_on));
  return hidden;
}

void LayerStream::forward_layer(int layer, std::vector<at::Tensor>& hidden, const ForwardContext& ctx) {
  forward_layer_with(layer, read_layer(layer), hidden, ctx);
}

void LayerStream::forward_layer_with(int layer, LayerWeights weights, std::vector<at::Tensor>& hidden,
                                     const ForwardContext& ctx) {
  c10::NoGradGuard no_grad;
  frame_.set_layer(layer, std::move(weights));
  try {
    for (at::Tensor& h : hidden) {
      const at::Device keep = h.device();
      h = frame_.layer_forward(layer, h.to(device_), ctx).to(keep);
    }
  } catch (...) {
    frame_.set_layer(layer, placeholder_layer(config(), dtype_, device_));
    throw;
  }
  frame_.set_layer(layer, placeholder_layer(config(), dtype_, device_));
  release_free_memory();  // the layer, before the next one is read
}

void LayerStream::head(const std::vector<at::Tensor>& hidden,
                       const std::function<void(size_t, const at::Tensor&)>& use) {
  c10::NoGradGuard no_grad;
  const ModelWeights& w = frame_.weights();
  const at::Tensor norm0 = w.final_norm, head0 = w.lm_head;
  frame_.set_head(read("model.norm.weight"), read_lm_head());
  try {
    for (size_t k = 0; k < hidden.size(); ++k) use(k, frame_.head(hidden[k].to(device_)));
  } catch (...) {
    frame_.set_head(norm0, head0);
    throw;
  }
  frame_.set_head(norm0, head0);
  release_free_memory();
}

}  // namespace respin
