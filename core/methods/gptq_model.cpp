// Layer-by-layer GPTQ (see gptq_model.h).
#include "core/methods/gptq_model.h"

#include <algorithm>

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>

#include <chrono>

#include "core/model/weights.h"
#include "core/util/error.h"
#include "core/util/error_message.h"
#include "core/util/process_memory.h"

namespace respin {

namespace {

struct Group {
  HookSite site;
  std::vector<at::Tensor LayerWeights::*> members;
};

// `w` shares its tensors with the caller's model (the result is a new copy) or owns them
// (quantized in place: each weight is freed as its quantized successor replaces it). `hidden`
// holds the embedded windows, the working set carried from layer to layer.
ModelWeights gptq_weight_set(const ModelConfig& c, ModelWeights w, std::vector<at::Tensor> hidden,
                             const ForwardContext& ctx, const ActivationHook& online,
                             const GptqModelOptions& o, RunControl* control, GptqModelReport* report) {
  const at::Tensor& like = w.embed_tokens;
  LlamaModel frame(c, placeholder_weights(c, like.scalar_type(), like.device()));
  GptqModelReport rep = gptq_layers(
      frame, hidden, ctx, online, o, control, [&](int i) { return std::move(w.layers[i]); },
      [&](int i, LayerWeights&& layer) { w.layers[i] = std::move(layer); });
  if (report) *report = std::move(rep);
  return w;
}

}  // namespace

GptqLayerResult gptq_quantize_layer(LlamaModel& frame, int i, LayerWeights& layer, std::vector<at::Tensor>& hidden,
                                    const ForwardContext& ctx, const ActivationHook& online,
                                    const GptqModelOptions& o, RunControl* control) try {
  c10::NoGradGuard no_grad;
  const ModelConfig& c = frame.config();
  static const std::vector<Group> groups = {
      {HookSite::AttnInput, {&LayerWeights::q_proj, &LayerWeights::k_proj, &LayerWeights::v_proj}},
      {HookSite::OProjInput, {&LayerWeights::o_proj}},
      {HookSite::MlpInput, {&LayerWeights::gate_proj, &LayerWeights::up_proj}},
      {HookSite::DownProjInput, {&LayerWeights::down_proj}},
  };
  GptqLayerResult out;
  out.grids.resize(7);
  const std::vector<at::Tensor*> order = linear_weights(layer);
  for (const Group& g : groups) {
    if (control) control->check();
    frame.set_layer(i, layer);
    HessianAccumulator acc(g.site == HookSite::OProjInput      ? c.num_attention_heads * c.head_dim
                           : g.site == HookSite::DownProjInput ? c.intermediate_size
                                                               : c.hidden_size,
                           frame.device());
    frame.set_hook([&](HookSite site, int l, at::Tensor& x) {
      if (online) online(site, l, x);
      if (l == i && site == g.site) acc.add(x);
    });
    for (const at::Tensor& h : hidden) frame.layer_forward(i, h, ctx);
    for (auto member : g.members) {
      at::Tensor& t = layer.*member;
      GptqResult r = gptq_quantize(t, acc.hessian(), o.weight, o.gptq);
      t = r.weight;
      out.grids[std::find(order.begin(), order.end(), &t) - order.begin()] = r.params;
      out.loss += r.loss;
      out.dead_columns += r.dead_columns;
    }
  }
  frame.set_layer(i, layer);
  frame.set_hook(online);
  for (at::Tensor& h : hidden) h = frame.layer_forward(i, h, ctx);
  return out;
} catch (...) {
  rethrow_with_context("GPTQ, layer " + std::to_string(i));
}

namespace {

void check_gptq_inputs(const at::Tensor& windows, const GptqModelOptions& o) {
  if (windows.dim() != 2 || windows.size(0) < 1) throw Error("GPTQ needs calibration windows [N, T]");
  if (o.batch < 1) throw Error("GPTQ: batch must be >= 1");
  validate_quant_spec(o.weight, "weight quantizer");
}

std::vector<at::Tensor> embedded_windows(const LlamaModel& model, const at::Tensor& windows, int64_t batch) {
  std::vector<at::Tensor> hidden;
  for (int64_t b = 0; b < windows.size(0); b += batch)
    hidden.push_back(model.embed(windows.narrow(0, b, std::min(batch, windows.size(0) - b))));
  return hidden;
}

}  // namespace

GptqModelReport gptq_layers(LlamaModel& frame, std::vector<at::Tensor>& hidden, const ForwardContext& ctx,
                            const ActivationHook& online, const GptqModelOptions& o, RunControl* control,
                            const std::function<LayerWeights(int)>& take,
                            const std::function<void(int, LayerWeights&&)>& give) {
  const auto t0 = std::chrono::steady_clock::now();
  const ModelConfig& c = frame.config();
  const int L = static_cast<int>(c.num_hidden_layers);
  GptqModelReport rep;
  for (int i = 0; i < L; ++i) {
    LayerWeights layer = take(i);
    GptqLayerResult r = gptq_quantize_layer(frame, i, layer, hidden, ctx, online, o, control);
    frame.set_layer(i, placeholder_layer(c, layer.q_proj.scalar_type(), layer.q_proj.device()));
    give(i, std::move(layer));
    rep.layer_loss.push_back(r.loss);
    rep.dead_columns += r.dead_columns;
    rep.grids.push_back(std::move(r.grids));
    release_free_memory();  // the layer's Hessians and float64 weights, before the next layer's
    if (control) {
      ProgressEvent ev;
      ev.phase = "gptq";
      ev.done = i + 1;
      ev.total = L;
      ev.layer = i;
      ev.value = r.loss;
      const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      ev.eta_s = s / (i + 1) * (L - i - 1);
      control->report(ev, i + 1 == L);
    }
  }
  rep.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return rep;
}

ModelWeights gptq_quantize_model(const LlamaModel& model, const ActivationHook& online, const at::Tensor& windows,
                                 const GptqModelOptions& o, RunControl* control, GptqModelReport* report) {
  c10::NoGradGuard no_grad;
  check_gptq_inputs(windows, o);
  if (!o.weight.enabled()) return model.weights();
  return gptq_weight_set(model.config(), model.weights(), embedded_windows(model, windows, o.batch),
                         model.make_context(windows.size(1)), online, o, control, report);
}

ModelWeights gptq_quantize_model(LlamaModel&& model, const ActivationHook& online, const at::Tensor& windows,
                                 const GptqModelOptions& o, RunControl* control, GptqModelReport* report) {
  c10::NoGradGuard no_grad;
  check_gptq_inputs(windows, o);
  if (!o.weight.enabled()) return std::move(model).take_weights();
  std::vector<at::Tensor> hidden = embedded_windows(model, windows, o.batch);
  const ForwardContext ctx = model.make_context(windows.size(1));
  const ModelConfig c = model.config();
  return gptq_weight_set(c, std::move(model).take_weights(), std::move(hidden), ctx, online, o, control, report);
}

}  // namespace respin
