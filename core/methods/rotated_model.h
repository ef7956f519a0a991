// The rotated model shared by QuaRot, SpinQuant and ReSpinQuant (docs/methods.md 1.3, 1.10, 2.1, 3.1),
// in the row-vector convention of the rest of core (y = x W^T, rotated residual h~ = h R).
//
// Offline part (rotate_weights): starting from a model whose RMSNorms are fused, every residual
// rotation, head rotation and the inverse of the online Hadamards is folded into the weights:
//   embed <- E A_0                      A_i = basis of the stream entering layer i's attention
//   q/k/v <- W A_i                      B_i = basis of the stream entering layer i's MLP
//   v rows of kv head h <- R_h^T W_v[h] (value heads rotated by R_h, the per-layer head rotation)
//   o_proj <- B_i^T W_o (Hn (x) R_h)    Hn = normalized Hadamard across heads (QuaRot) or I
//   gate/up <- W B_i
//   down  <- C_i^T W_down H_f           C_i = A_{i+1} (or F after the last layer), H_f = Hadamard
//                                        over the intermediate size when R4 is on, else I
//   lm_head <- W F
// QuaRot and SpinQuant use one global matrix (A_i = B_i = F = R1); ReSpinQuant learns them per layer,
// and then each residual add changes basis: the skip path must carry h~ T with T = A_i^T B_i after
// attention and T = B_i^T A_{i+1} after the MLP (exact, dense, during training; a rank-r
// correction I + Q M Q^T at inference, residual_approx.h).
//
// Online part (online_hook): at the hook sites of LlamaModel, in this order: the online transforms
// (Hadamard on Q/K after RoPE = R3, Hadamard before down_proj = R4, Hadamard across heads before
// o_proj), the skip-path transition, then an optional observer (activation statistics of what the
// quantizers see), then the activation / KV fake quantizers (with a straight-through gradient when
// training).
#pragma once

#include <ATen/core/Tensor.h>

#include <functional>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "core/methods/rtn.h"
#include "core/model/llama.h"
#include "core/rotation/hadamard_transform.h"
#include "core/rotation/residual_approx.h"

namespace respin {

// Row-form rotations. Residual ones are [hidden, hidden], head ones [head_dim, head_dim]. For a
// global rotation every residual entry holds the same tensor.
struct ResidualRotations {
  std::vector<at::Tensor> attn_in;  // A_i, per layer
  std::vector<at::Tensor> mlp_in;   // B_i, per layer
  at::Tensor final_basis;           // F
  std::vector<at::Tensor> head;     // R_h per layer; undefined = no head rotation

  static ResidualRotations global(const at::Tensor& r, std::vector<at::Tensor> head, int layers);
  // True when every residual basis is the same tensor (no skip-path transition needed).
  bool is_global() const;
  int layers() const { return static_cast<int>(attn_in.size()); }
  // The distinct tensors, in a fixed order (residual ones first); for optimizers.
  std::vector<at::Tensor> unique_tensors() const;
  // Detached copies converted to `options` (dtype and/or device). Each distinct tensor is
  // converted once, so entries that share a tensor (a global rotation) still share it.
  ResidualRotations to(const at::TensorOptions& options) const;
  // Throws respin::Error unless every defined rotation lives on `device` (`what` names the user).
  void check_device(at::Device device, const std::string& what) const;
};

// Online transforms that are not folded into the weights.
struct OnlineTransforms {
  bool qk_hadamard = false;     // R3: Hadamard over head_dim on Q and K after RoPE
  bool down_hadamard = false;   // R4: Hadamard over the intermediate size on down_proj's input
  bool heads_hadamard = false;  // QuaRot: Hadamard across heads on o_proj's input
};

// Weights of the rotated model. `fused` must come from fuse_rms_norms. The products are formed in
// the rotations' dtype (float64 for the final model; float32 with autograd while training, when
// gradients flow from the returned weights to the rotations) and cast to `out_dtype`.
// Throws respin::Error for wrong shapes, unfused norms, or Hadamard sizes with no construction.
// check_norms = false skips the norm check (one host read) for a caller that made it once with
// check_norms_fused, as rotation learning does before its steps.
ModelWeights rotate_weights(const LlamaModel& fused, const ResidualRotations& rotations,
                            const OnlineTransforms& online, at::ScalarType out_dtype, bool check_norms = true);
// The same, consuming `fused`: each weight is rotated in place of its fused one, so the model is
// never held twice (docs/methods.md 1.7); `fused` is left without weights.
ModelWeights rotate_weights(LlamaModel&& fused, const ResidualRotations& rotations, const OnlineTransforms& online,
                            at::ScalarType out_dtype);

// rotate_weights one tensor set at a time without autograd, for a model read a layer at a time
// (core/model/layer_stream.h): the same products in the rotations' dtype, stored as out_dtype.
// Keeps a reference to `rotations`.
class WeightRotation {
 public:
  WeightRotation(const ModelConfig& config, const ResidualRotations& rotations, const OnlineTransforms& online,
                 at::Device device, at::ScalarType out_dtype);
  at::Tensor embed_tokens(const at::Tensor& fused) const;  // E A_0
  at::Tensor lm_head(const at::Tensor& fused) const;       // W F
  LayerWeights layer(int i, LayerWeights fused) const;     // rotate_weights(...).layers[i]

 private:
  const ModelConfig config_;
  const ResidualRotations& rot_;
  OnlineTransforms online_;
  at::ScalarType out_dtype_;
  std::optional<HadamardTransform> down_h_;
  at::Tensor heads_dense_;
};

// rotate_weights one piece at a time, for learning that holds one rotated layer at a time
// (docs/methods.md 1.6, checkpointed steps): the same products as rotate_weights, with autograd
// to the rotations when they require it. Keeps references to `fused` and `rotations`.
class LayerRotator {
 public:
  LayerRotator(const LlamaModel& fused, const ResidualRotations& rotations, const OnlineTransforms& online,
               at::ScalarType out_dtype);
  LayerWeights layer(int i) const;                  // rotate_weights(...).layers[i]
  at::Tensor embed(const at::Tensor& ids) const;    // the embeddings of `ids` only: E[ids] A_0
  at::Tensor lm_head() const;                       // lm_head F
  // The exact skip transitions of layer i (dense_transitions' entries i): attention add, MLP add.
  std::pair<at::Tensor, at::Tensor> dense_skip(int i) const;

 private:
  const LlamaModel& fused_;
  const ResidualRotations& rot_;
  OnlineTransforms online_;
  at::ScalarType out_dtype_;
  std::optional<HadamardTransform> down_h_;
  at::Tensor heads_dense_;
};

// Throws respin::Error unless every RMSNorm weight of `fused` is 1 and the embeddings are untied
// (fuse_rms_norms has run). One host read.
void check_norms_fused(const LlamaModel& fused);

// What the skip path of each residual add carries. Empty vectors (or undefined entries / rank-0
// corrections) mean identity.
struct SkipTransitions {
  std::vector<at::Tensor> attn_dense, mlp_dense;                // exact T per layer (training)
  std::vector<ResidualCorrection> attn_rank_r, mlp_rank_r;      // rank-r corrections (inference)
  bool empty() const {
    return attn_dense.empty() && mlp_dense.empty() && attn_rank_r.empty() && mlp_rank_r.empty();
  }
};

// Exact transitions T_row (dense) for layer-wise rotations, in the rotations' dtype, keeping
// autograd: attention add A_i^T B_i, MLP add B_i^T A_{i+1} (F after the last layer).
SkipTransitions dense_transitions(const ResidualRotations& rotations);

// Rank-r corrections (float32 copies of Q and M are stored) for every residual add; rank >= hidden
// gives the exact transition. Also returns each add's spectral error through `errors` if non-null
// (attention adds then MLP adds interleaved per layer: layer 0 attn, layer 0 mlp, ...).
SkipTransitions rank_r_transitions(const ResidualRotations& rotations, int64_t rank,
                                   std::vector<double>* errors = nullptr);

struct OnlineHookOptions {
  OnlineTransforms online;
  SkipTransitions skip;
  QuantConfig quant;           // weight part ignored; activation and kv used (bits 16 = off)
  int64_t o_proj_group = 0;    // activation quantizer group size on o_proj's input (0 = per token)
  bool ste = false;            // straight-through gradients (rotation training)
  // The model's device: the online Hadamards' small cores are placed there once (activations on
  // another device still work, at the cost of a copy per call).
  at::Device device = at::kCPU;
  // Called with what each quantizer sees (after the online transforms, before quantization).
  ActivationHook observer;
};

// The hook for a model built by rotate_weights. Throws respin::Error if a Hadamard size has no
// construction.
ActivationHook online_hook(const ModelConfig& config, OnlineHookOptions options);

}  // namespace respin
