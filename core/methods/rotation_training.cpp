// Rotation learning with Cayley SGD (see rotation_training.h).
#include "core/methods/rotation_training.h"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <memory>
#include <tuple>

#include "core/ops/hot_ops.h"
#include "core/quant/finite_checks.h"
#include "core/quant/quantizer.h"
#include "core/stats/activation_stats.h"
#include "core/rotation/cayley_sgd.h"
#include "core/util/error.h"
#include "core/util/process_memory.h"

namespace respin {

namespace {

// One micro-batch `mb` [n, T] of a checkpointed step (docs/methods.md 1.6, "checkpointed steps").
// A forward without autograd keeps only each decoder layer's input (the rotated weights of one
// layer at a time, built from the rotations and dropped after the layer); then the loss in token
// pieces against the rotated lm_head, and the layers from the last to the first, each rebuilt
// from the rotations with autograd and back-propagated on its own; then the embedding rows. The
// gradients accumulate into the rotations; `share` weights this micro-batch's mean token loss in
// the step's. Returns that weighted loss (detached, on the device).
at::Tensor checkpointed_micro_batch(const LlamaModel& fused, const ResidualRotations& rot, const at::Tensor& mb,
                                    const RotationTrainingOptions& o, double share, const ActivationHook& observer) {
  const ModelConfig& c = fused.config();
  const int L = static_cast<int>(c.num_hidden_layers);
  const int64_t n = mb.size(0), T = mb.size(1);
  const bool layerwise = !rot.is_global();
  const LayerRotator rotator(fused, rot, o.online, fused.dtype());
  LlamaModel model(c, fused.weights());  // fused layers as placeholders, one rotated layer at a time
  auto rotated_layer = [&](int i) {
    LayerWeights w = rotator.layer(i);
    if (o.quant.weight.enabled())
      for (at::Tensor* t : linear_weights(w)) *t = fake_quantize_weight_ste(*t, o.quant.weight, /*mse_clip=*/false);
    return w;
  };
  auto hook_of_layer = [&](int i, const ActivationHook& obs) {
    OnlineHookOptions ho;
    ho.online = o.online;
    ho.quant = o.quant;
    ho.o_proj_group = o.o_proj_group;
    ho.ste = true;
    ho.device = fused.device();
    if (layerwise) {
      ho.skip.attn_dense.assign(L, at::Tensor());
      ho.skip.mlp_dense.assign(L, at::Tensor());
      std::tie(ho.skip.attn_dense[i], ho.skip.mlp_dense[i]) = rotator.dense_skip(i);
    }
    ho.observer = obs;
    return online_hook(c, std::move(ho));
  };
  const ForwardContext ctx = model.make_context(T);

  std::vector<at::Tensor> inputs;  // inputs[i]: the input of layer i; inputs[L]: the last output
  {
    c10::NoGradGuard no_grad;
    at::Tensor h = rotator.embed(mb);
    for (int i = 0; i < L; ++i) {
      inputs.push_back(h);
      model.set_layer(i, rotated_layer(i));
      model.set_hook(hook_of_layer(i, observer));
      h = model.layer_forward(i, h, ctx);
      model.set_layer(i, fused.weights().layers[i]);
      release_free_memory();  // the layer's rotated weights and activations (docs/methods.md 1.7)
    }
    inputs.push_back(h);
  }

  // The loss, piece by piece: sum of token losses / (n (T - 1)) times share. The rotated lm_head is
  // made once; its gradient is gathered on a detached copy and sent through lm_head F once.
  const at::Tensor x = inputs.back().requires_grad_(true);
  inputs.pop_back();
  const at::Tensor head_w = rotator.lm_head();
  const at::Tensor head_leaf = head_w.detach().requires_grad_(true);
  const double scale = share / static_cast<double>(n * (T - 1));
  const at::Tensor ids = mb.to(fused.device());
  at::Tensor loss_total;
  for (int64_t b = 0; b < n; ++b) {
    for (int64_t t0 = 0; t0 < T - 1; t0 += o.loss_chunk_tokens) {
      const int64_t len = std::min(o.loss_chunk_tokens, T - 1 - t0);
      const at::Tensor piece = rms_norm(x.select(0, b).narrow(0, t0, len), fused.weights().final_norm, c.rms_norm_eps);
      at::Tensor loss = at::cross_entropy_loss(ops::linear(piece, head_leaf).to(at::kFloat),
                                               ids.select(0, b).narrow(0, t0 + 1, len), {}, at::Reduction::Sum) *
                        scale;
      loss.backward();
      loss_total = loss_total.defined() ? loss_total + loss.detach() : loss.detach();
    }
  }
  head_w.backward(head_leaf.grad());
  at::Tensor g = x.grad();
  release_free_memory();

  for (int i = L - 1; i >= 0; --i) {
    const at::Tensor h_in = inputs[i].requires_grad_(true);
    inputs[i] = at::Tensor();
    model.set_layer(i, rotated_layer(i));
    model.set_hook(hook_of_layer(i, nullptr));
    model.layer_forward(i, h_in, ctx).backward(g);
    model.set_layer(i, fused.weights().layers[i]);
    g = h_in.grad();
    release_free_memory();
  }
  rotator.embed(mb).backward(g);
  return loss_total;
}

}  // namespace

RotationTrainingResult train_rotations(const LlamaModel& fused, ResidualRotations& rotations,
                                       const at::Tensor& windows, const RotationTrainingOptions& o,
                                       RunControl* control) {
  if (o.iterations < 0) throw Error("rotation training: iterations must be >= 0");
  if (o.batch < 1) throw Error("rotation training: batch must be >= 1");
  if (!(o.lr > 0)) throw Error("rotation training: learning rate must be > 0");
  if (o.loss_chunk_tokens < 1) throw Error("rotation training: loss_chunk_tokens must be >= 1");
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
  check_norms_fused(fused);  // once: the fused model does not change during learning
  for (int64_t step = 0; step < o.iterations; ++step) {
    if (control) control->check();
    opt.set_lr(o.lr * 0.5 * (1.0 + std::cos(M_PI * static_cast<double>(step) / o.iterations)));
    res.lr.push_back(opt.options().lr);
    std::vector<int64_t> idx;
    for (int64_t j = 0; j < o.batch; ++j) idx.push_back((step * o.batch + j) % n);
    at::Tensor ids = windows.index_select(0, at::tensor(idx, at::kLong).to(windows.device()));

    // The quantizers' NaN/Inf checks of this step are read back once, with the loss.
    DeferredFiniteChecks finite_checks;
    // Live statistics of one site from this step's forward (see live_site in the header).
    int live_layer = -1;
    HookSite live = HookSite::AttnInput;
    std::unique_ptr<ActivationStatsCollector> collector;
    ActivationHook observer;
    if (o.live_site && o.on_live_stats &&
        (step == 0 || step + 1 == o.iterations || elapsed() - last_live >= o.live_interval_s) &&
        o.live_site(live_layer, live) && live_layer >= 0 && live_layer < c.num_hidden_layers) {
      collector = std::make_unique<ActivationStatsCollector>(std::vector<HookSite>{live});
      observer = [&collector, live_layer, live](HookSite s, int layer, at::Tensor& x) {
        if (layer == live_layer && s == live) collector->observe(s, layer, x.detach());
      };
    }

    // The step's mean token loss, as micro-batches of `micro` windows: each contributes its own
    // mean times its share of the windows (all windows have T - 1 scored tokens), and its
    // backward runs before the next forward, so only one micro-batch's activations are alive.
    // One micro-batch is the unsplit step itself (no scaling, no retained graph).
    const int64_t micro = o.micro_batch > 0 ? std::min(o.micro_batch, o.batch) : o.batch;
    at::Tensor loss_sum;
    double lv = 0;
    auto check_loss = [&] {
      if (!std::isfinite(lv))
        throw Error("rotation training: the loss became " + std::to_string(lv) + " at step " + std::to_string(step));
    };
    if (o.checkpoint_layers) {
      for (int64_t s0 = 0; s0 < o.batch; s0 += micro) {
        const int64_t nb = std::min(micro, o.batch - s0);
        const at::Tensor l = checkpointed_micro_batch(fused, rotations, ids.narrow(0, s0, nb), o,
                                                      static_cast<double>(nb) / static_cast<double>(o.batch), observer);
        loss_sum = loss_sum.defined() ? loss_sum + l : l;
      }
      // Read once after the last micro-batch; a non-finite loss throws before the update.
      lv = finite_checks.read(loss_sum);
      check_loss();
    } else {
      ModelWeights w = rotate_weights(fused, rotations, o.online, fused.dtype(), /*check_norms=*/false);
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
      ho.observer = observer;
      model.set_hook(online_hook(c, std::move(ho)));
      for (int64_t s0 = 0; s0 < o.batch; s0 += micro) {
        const int64_t nb = std::min(micro, o.batch - s0);
        const bool last = s0 + nb >= o.batch;
        const at::Tensor mb = nb == o.batch ? ids : ids.narrow(0, s0, nb);
        at::Tensor logits = model.forward(mb);
        at::Tensor loss = at::cross_entropy_loss(
            logits.narrow(1, 0, T - 1).reshape({-1, c.vocab_size}).to(at::kFloat),
            mb.narrow(1, 1, T - 1).reshape({-1}));
        logits.reset();
        if (nb == o.batch) {
          // The step's one host read: its finite checks and its loss, before any gradient.
          lv = finite_checks.read(loss);
          check_loss();
        } else {
          loss = loss * (static_cast<double>(nb) / static_cast<double>(o.batch));
          loss_sum = loss_sum.defined() ? loss_sum + loss.detach() : loss.detach();
        }
        loss.backward({}, /*retain_graph=*/!last);
      }
      if (micro != o.batch) {
        // Read once after the last micro-batch; a non-finite loss throws before the update.
        lv = finite_checks.read(loss_sum);
        check_loss();
      }
    }
    if (collector) {
      for (const SiteStats& st : collector->results()) o.on_live_stats(step, st);
      last_live = elapsed();
    }
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
