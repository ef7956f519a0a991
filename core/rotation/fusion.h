// Offline weight transformations shared by the rotation methods (docs/methods.md 2.2, row-vector
// convention y = x W^T with PyTorch Linear weights [out, in]):
//  - fuse_rms_norms folds every RMSNorm weight into the linear layers it feeds (q/k/v, gate/up,
//    lm_head) and sets the norm weights to 1, untying lm_head from the embeddings first. With unit
//    weights RMSNorm commutes with any orthogonal rotation of the residual stream.
//  - rotate_residual rotates the residual stream by an orthogonal R (R1 of QuaRot/SpinQuant):
//    embeddings E R, readers W R (q/k/v, gate/up, lm_head), writers R^T W (o_proj, down_proj, and
//    their biases b R). The model computes the same function afterwards.
// All products are formed in float64 and cast back to the weights' dtype.
#pragma once

#include <ATen/core/Tensor.h>

#include "core/model/llama.h"

namespace respin {

struct FusionOptions {
  // QuaRot/SpinQuant also mean-centre the embedding rows; for RMSNorm models that changes the
  // full-precision model slightly, so it is off unless bit-comparable reproduction is wanted.
  bool center_embeddings = false;
};

LlamaModel fuse_rms_norms(const LlamaModel& model, const FusionOptions& options = {});
// The same, consuming `model`: each weight is replaced as it is fused, so the model is never held
// twice (the caller's model is left without weights).
LlamaModel fuse_rms_norms(LlamaModel&& model, const FusionOptions& options = {});

// fuse_rms_norms one piece at a time (the same values), for a model read a layer at a time
// (core/model/layer_stream.h): a layer's two norms folded into q/k/v and gate/up and set to 1;
// lm_head with the final norm folded in.
LayerWeights fuse_layer_norms(LayerWeights layer);
at::Tensor fuse_final_norm(const at::Tensor& lm_head, const at::Tensor& final_norm);

// `r`: [hidden, hidden] orthogonal (any float dtype). Throws respin::Error unless the norms are
// fused (all norm weights 1) and r has the right shape.
LlamaModel rotate_residual(const LlamaModel& fused, const at::Tensor& r);

}  // namespace respin
