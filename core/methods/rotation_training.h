// Learning rotations with Cayley SGD (SpinQuant, ReSpinQuant; docs/methods.md 1.6, 2.3).
//
// Each step rebuilds the rotated weights from the (frozen) fused model and the current rotations
// with autograd (rotate_weights in float32), runs the model with the online transforms and the
// fake quantizers active (straight-through gradients), and minimizes next-token cross-entropy on
// calibration windows. Layer-wise rotations (ReSpinQuant) carry the exact dense transition on every
// skip path while training; the rank-r approximation is applied only afterwards. The learning rate
// follows a cosine schedule from `lr` to 0, as the SpinQuant scripts do. The rotations are
// re-orthonormalized (CayleySgd::retract) at the end.
#pragma once

#include <ATen/core/Tensor.h>

#include <functional>
#include <vector>

#include "core/methods/rotated_model.h"
#include "core/stats/site_stats.h"
#include "core/util/run_control.h"

namespace respin {

struct RotationTrainingOptions {
  int64_t iterations = 100;
  double lr = 1.5;
  int64_t batch = 1;  // windows per step; windows are taken in order, cycling
  // Windows per forward/backward inside a step (0 or >= batch: the whole batch at once). A step
  // of several micro-batches accumulates their gradients before its one Cayley update, so the
  // step is the same as unsplit up to float rounding while autograd holds the activations of one
  // micro-batch at a time. The rotated weights are built once per step and their graph kept
  // across the micro-batches' backward passes.
  int64_t micro_batch = 0;
  // Activation checkpointing per decoder layer (docs/methods.md 1.6, "checkpointed steps"): the
  // forward keeps only each layer's input, each layer's rotated weights exist only while it runs,
  // and the backward rebuilds one layer at a time; the loss is taken in token pieces. About one
  // more forward per step; the same step as without it up to float rounding.
  bool checkpoint_layers = false;
  // Tokens per piece of the checkpointed loss: the logits of this many tokens (times the
  // vocabulary, float32) and their gradient are the largest tensors the loss makes.
  int64_t loss_chunk_tokens = 1024;
  // Quantizers active while learning. The weight quantizer, if enabled, is plain round-to-nearest
  // with a straight-through gradient (no MSE clip search, which would dominate the step time).
  QuantConfig quant;
  OnlineTransforms online;
  int64_t o_proj_group = 0;
  // Live statistics while learning (the workbench's live histogram). At the first step, the last
  // step and at most every `live_interval_s` seconds between them, `live_site` is asked which
  // (layer, site) to summarize (false: none this time); the activations the quantizers see there in
  // that step's own forward (after the online transforms, before the fake quantizers; no extra
  // forward) are summarized as in site_stats.h over the step's batch and handed to `on_live_stats`.
  // Both run on the learning thread and must return quickly.
  std::function<bool(int& layer, HookSite& site)> live_site;
  std::function<void(int64_t step, const SiteStats& stats)> on_live_stats;
  double live_interval_s = 0.5;
};

struct RotationTrainingResult {
  std::vector<double> loss;      // per step
  std::vector<double> lr;        // learning rate of each step (the cosine schedule from options.lr)
  double seconds = 0;
  int64_t tokens = 0;            // tokens forwarded (and back-propagated)
  double max_orthogonality_error = 0;  // max ||R R^T - I||_F after retraction
};

// `rotations` must hold float32 leaf tensors (as initial_rotations returns); they are updated in
// place. `windows`: [N, T] int64 token ids. Progress: phase "rotate", done/total = steps,
// value = loss of the step. Throws respin::Cancelled on stop (rotations are then partly trained;
// the caller discards them) and respin::Error on a non-finite loss.
RotationTrainingResult train_rotations(const LlamaModel& fused, ResidualRotations& rotations,
                                       const at::Tensor& windows, const RotationTrainingOptions& options,
                                       RunControl* control = nullptr);

}  // namespace respin
