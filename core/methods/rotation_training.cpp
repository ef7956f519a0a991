// Rotation learning with Cayley SGD (see rotation_training.h).
#include "core/methods/rotation_training.h"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>

#include <chrono>
#include <cmath>
#include <memory>

#include "core/quant/quantizer.h"
#include "core/stats/activation_stats.h"
#include "core/rotation/cayley_sgd.h"
#include "core/util/error.h"

namespace respin {

RotationTrainingResult train_rotations(const LlamaModel& fused, ResidualRotations& rotations,
                                       const at::Tensor& windows, const RotationTrainingOptions& o,
                                       RunControl* control) {
  if (o.iterations < 0) throw Error("rotation training: iterations must be >= 0");
  if (o.batch < 1) throw Error("rotation training: batch must be >= 1");
  if (!(o.lr > 0)) throw Error("rotation training: learning rate must be > 0");
  if (windows.dim() != 2 || windows.size(0) < 1 || windows.size(1) < 2)
    throw Error("rotation training needs calibration windows [N, T] with T >= 2");
  o.quant.validate();
  const ModelConfig& c = fused.config();
  rotations.check_device(fused.device(), "rotation training");
  std::vector<at::Tensor> params = rotations.unique_tensors();
  for (at::Tensor& p : params) {
    if (p.scalar_type() != at::kFloat) throw Error("rotation training needs float32 rotations");
    p.requires_grad_(true);
  }
  CayleySgdOptions so;
  so.lr = o.lr;
  CayleySgd opt(params, so);

  RotationTrainingResult res;
  const int64_t n = windows.size(0), T = windows.size(1);
  const auto t0 = std::chrono::steady_clock::now();
  auto elapsed = [&] { return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(); };
  const bool layerwise = !rotations.is_global();
  double last_live = -1e30;
  for (int64_t step = 0; step < o.iterations; ++step) {
    if (control) control->check();
    opt.set_lr(o.lr * 0.5 * (1.0 + std::cos(M_PI * static_cast<double>(step) / o.iterations)));
    res.lr.push_back(opt.options().lr);
    std::vector<int64_t> idx;
    for (int64_t j = 0; j < o.batch; ++j) idx.push_back((step * o.batch + j) % n);
    at::Tensor ids = windows.index_select(0, at::tensor(idx, at::kLong).to(windows.device()));

    ModelWeights w = rotate_weights(fused, rotations, o.online, at::kFloat);
    if (o.quant.weight.enabled())
      for (LayerWeights& l : w.layers)
        for (at::Tensor* t : linear_weights(l))
          *t = fake_quantize_weight_ste(*t, o.quant.weight, /*mse_clip=*/false);
    LlamaModel model(c, std::move(w));
    OnlineHookOptions ho;
    ho.online = o.online;
    if (layerwise) ho.skip = dense_transitions(rotations);
    ho.quant = o.quant;
    ho.o_proj_group = o.o_proj_group;
    ho.ste = true;
    ho.device = fused.device();
    // Live statistics of one site from this step's forward (see live_site in the header).
    int live_layer = -1;
    HookSite live = HookSite::AttnInput;
    std::unique_ptr<ActivationStatsCollector> collector;
    if (o.live_site && o.on_live_stats &&
        (step == 0 || step + 1 == o.iterations || elapsed() - last_live >= o.live_interval_s) &&
        o.live_site(live_layer, live) && live_layer >= 0 && live_layer < c.num_hidden_layers) {
      collector = std::make_unique<ActivationStatsCollector>(std::vector<HookSite>{live});
      ho.observer = [&collector, live_layer, live](HookSite s, int layer, at::Tensor& x) {
        if (layer == live_layer && s == live) collector->observe(s, layer, x.detach());
      };
    }
    model.set_hook(online_hook(c, std::move(ho)));

    at::Tensor logits = model.forward(ids);
    if (collector) {
      for (const SiteStats& st : collector->results()) o.on_live_stats(step, st);
      last_live = elapsed();
    }
    at::Tensor loss = at::cross_entropy_loss(
        logits.narrow(1, 0, T - 1).reshape({-1, c.vocab_size}).to(at::kFloat),
        ids.narrow(1, 1, T - 1).reshape({-1}));
    const double lv = loss.item<double>();
    if (!std::isfinite(lv))
      throw Error("rotation training: the loss became " + std::to_string(lv) + " at step " + std::to_string(step));
    loss.backward();
    opt.step();
    opt.zero_grad();
    res.loss.push_back(lv);
    res.tokens += ids.numel();
    if (control) {
      ProgressEvent ev;
      ev.phase = "rotate";
      ev.done = step + 1;
      ev.total = o.iterations;
      ev.value = lv;
      const double s = elapsed();
      ev.tokens_per_s = res.tokens / std::max(s, 1e-9);
      ev.eta_s = s / (step + 1) * (o.iterations - step - 1);
      control->report(ev, step + 1 == o.iterations);
    }
  }
  opt.retract();
  c10::NoGradGuard no_grad;
  for (at::Tensor& p : params) {
    p.requires_grad_(false);
    const at::Tensor p64 = p.to(at::kDouble);
    at::Tensor e = at::matmul(p64, p64.t()) - at::eye(p.size(0), p64.options());
    res.max_orthogonality_error = std::max(res.max_orthogonality_error, e.norm().item<double>());
  }
  res.seconds = elapsed();
  return res;
}

}  // namespace respin
