// RTN baseline (see rtn.h).
#include "core/methods/rtn.h"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>

#include "core/ops/hot_ops.h"
#include "core/util/process_memory.h"

namespace respin {

void QuantConfig::validate() const {
  validate_quant_spec(weight, "weight quantizer");
  validate_quant_spec(activation, "activation quantizer");
  validate_quant_spec(kv, "KV-cache quantizer");
}

ActivationHook activation_quant_hook(const QuantConfig& config) {
  return [config](HookSite site, int, at::Tensor& x) {
    switch (site) {
      case HookSite::AttnInput:
      case HookSite::OProjInput:
      case HookSite::MlpInput:
      case HookSite::DownProjInput:
        if (config.activation.enabled()) x = ops::fake_quantize_tokens(x, config.activation);
        break;
      case HookSite::Key:
      case HookSite::Value:
        if (config.kv.enabled()) x = ops::fake_quantize_kv(x, config.kv);
        break;
      default:  // queries, skip paths and the lm_head input stay in full precision
        break;
    }
  };
}

void quantize_weights_rtn(ModelWeights& weights, const QuantConfig& config,
                          std::vector<std::vector<WeightQuantParams>>* grids) {
  if (grids) grids->clear();
  if (!config.weight.enabled()) return;
  for (LayerWeights& L : weights.layers) {
    if (grids) grids->emplace_back();
    quantize_layer_rtn(L, config, grids ? &grids->back() : nullptr);
    release_free_memory();  // the layer's grid searches, before the next layer's
  }
}

void quantize_layer_rtn(LayerWeights& L, const QuantConfig& config, std::vector<WeightQuantParams>* grids) {
  if (grids) grids->clear();
  if (!config.weight.enabled()) return;
  c10::NoGradGuard no_grad;
  for (at::Tensor* t : linear_weights(L)) {
    WeightQuantParams p = compute_weight_params(*t, config.weight, config.weight_mse_clip);
    *t = fake_quantize_weight_with(*t, p, config.weight);
    if (grids) grids->push_back(std::move(p));
  }
}

QuantConfig rtn_eval_config(int wbits, int abits, int kvbits) {
  QuantConfig qc;
  qc.weight.bits = wbits;
  qc.activation.bits = abits;
  qc.kv.bits = kvbits;
  return qc;
}

LlamaModel quantize_rtn(const LlamaModel& model, const QuantConfig& config) {
  config.validate();
  ModelWeights w = model.weights();
  quantize_weights_rtn(w, config);
  LlamaModel q(model.config(), std::move(w));
  q.set_hook(activation_quant_hook(config));
  return q;
}

}  // namespace respin
