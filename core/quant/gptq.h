// GPTQ weight quantization (Frantar et al., "GPTQ: Accurate Post-Training Quantization for
// Generative Pre-trained Transformers"), as SpinQuant / QuaRot run it in eval_utils/gptq_utils.py
// (docs/methods.md 2.5): a Linear layer's weight is quantized column by column on the grid of the
// per-channel weight quantizer (quantizer.h, with its MSE clip search), and each column's rounding
// error is spread over the not-yet-quantized columns through the inverse of the layer's input
// Hessian H = (2/n) sum x^T x, which minimizes ||X W^T - X Q^T||^2 far better than
// round-to-nearest when the inputs are correlated.
//
// Usage: feed the layer's inputs (calibration activations) to a HessianAccumulator, then call
// gptq_quantize(weight, accumulator.hessian(), spec). The reference's options are fixed here:
// act_order = false, static_groups = false.
//
// Numerics: the Hessian is accumulated in float64 and the GPTQ update (Cholesky factorizations,
// error propagation) runs in float64, where the reference uses float32 on the GPU; on the CPU the
// cost is modest and float64 keeps the Cholesky of a nearly singular H from failing or losing the
// small eigen-directions. The grids themselves (scale, zero, rounding) are float32, as in
// quantizer.h, so the quantized values are exactly the float32 grid points, cast to the weight's
// dtype at the end. Works on any device (the Hessian follows the weight).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

#include "core/quant/quantizer.h"

namespace respin {

// Running H = (2/n) sum over all rows seen of x^T x, [columns, columns] float64, updated as GPTQ's
// add_batch does: H *= n_old / n_new; H += (2 / n_new) X^T X. One difference in bookkeeping: n
// counts rows (tokens) here, while the reference counts sequences; H differs by a constant factor
// (the tokens per sequence), which leaves gptq_quantize's weights unchanged (its damping is
// relative to mean(diag H)) and scales only the reported loss.
class HessianAccumulator {
 public:
  // Throws respin::Error when columns < 0. H starts as zeros on `device` (the model's).
  explicit HessianAccumulator(int64_t columns, at::Device device = at::kCPU);

  // x [..., columns], any floating dtype and device, flattened to rows (a 1-D x is one row).
  // The first non-empty batch moves H to x's device; later batches are moved to H's device.
  // Throws respin::Error when the last dimension is not `columns`, x is not floating point, or
  // x contains NaN/Inf (which would poison H for good). An empty x is a no-op.
  void add(const at::Tensor& x);

  const at::Tensor& hessian() const { return hessian_; }  // zeros until the first add
  int64_t samples() const { return samples_; }            // rows accumulated
  int64_t columns() const { return columns_; }

 private:
  int64_t columns_;
  int64_t samples_ = 0;
  at::Tensor hessian_;
};

struct GptqOptions {
  // Dampening: damp * mean(diag H) is added to the diagonal of H (GPTQ's percdamp). If H is not
  // positive definite even then, the factorization is retried with 10x the damping up to 3 times
  // (from 1e-4 when damp is 0) before giving up with respin::Error.
  double damp = 0.01;
  // Columns per block (GPTQ's blocksize): the error spreads within a block column by column, and
  // to the later columns once per block. Affects only floating-point rounding, except that group
  // grids see the state at the start of their block (gptq_quantize).
  int64_t block_size = 128;
  // Grid per row/group from compute_weight_params(..., mse_clip) (SpinQuant's --w_clip); needs
  // spec.clip_ratio == 1.
  bool mse_clip = true;
};

struct GptqResult {
  at::Tensor weight;  // fake-quantized, the input's dtype, shape and device
  // GPTQ's Losses summed: sum over all entries of (w - q)^2 / d^2 / 2, where w is the
  // error-updated weight when its column is quantized and d the diagonal of the upper Cholesky
  // factor of H^-1 (same units as H: see HessianAccumulator).
  double loss = 0;
  int64_t dead_columns = 0;  // inputs that were always 0 (H_ii == 0): their weights are set to 0
  WeightQuantParams params;  // the grid used, [out, groups]; undefined for bits 16 or an empty w
};

// GPTQ on w [out, in] (PyTorch Linear layout) with hessian [in, in] (HessianAccumulator), as the
// reference's fasterquant:
//   - the per-row grid (spec.group_size == 0) comes from compute_weight_params on the whole
//     weight, computed once before anything else, i.e. before dead columns are zeroed;
//   - dead columns (H_ii == 0): H_ii = 1 and W[:, i] = 0 (their input is always 0);
//   - Hinv = upper Cholesky factor of (H + damp * mean(diag H) * I)^-1;
//   - for each block [i1, i2): for each column i: q = quantize(w_i), err = (w_i - q) / Hinv_ii,
//     W[:, i+1:i2] -= err * Hinv[i, i+1:i2]; then W[:, i2:] -= Err @ Hinv[i1:i2, i2:];
//   - spec.group_size > 0 (must divide in): the grid of group g is computed when the loop reaches
//     column g * group_size, from the columns [g*gs, (g+1)*gs) of W in the state the reference
//     reads them: with the errors of all earlier blocks applied, but not yet those of the earlier
//     columns of the current block (they live in the block's working copy until the block ends).
//     When group_size is a multiple of block_size (e.g. both 128) that is the fully updated state.
// Returns `w` itself (loss 0) when spec.bits == 16. Throws respin::Error for an invalid spec or
// options, a weight that is not 2-D floating point, a hessian that is not [in, in] floating point,
// NaN/Inf in either, a group size that does not divide in, or a Hessian that stays not positive
// definite after the damping retries.
GptqResult gptq_quantize(const at::Tensor& w, const at::Tensor& hessian, const QuantSpec& spec,
                         const GptqOptions& options = {});

}  // namespace respin
