// Fake quantizers (quantize, then dequantize back to floating point) following SpinQuant /
// QuaRot utils/quant_utils.py (docs/methods.md 2.5): per-token activation quantizer (optionally
// groupwise), per-head KV-cache quantizer, per-output-channel weight quantizer (GPTQ's
// WeightQuantizer, with its MSE clip search), and straight-through-estimator (STE) variants for
// learning rotations through quantized layers. They simulate integer inference in floating point,
// which is how rotation methods are evaluated; no integer kernels here.
//
// Numerics: all quantization math runs in float32 whatever the input dtype (as the reference
// implementations do on the GPU in fp32 for the statistics), and the result is cast back to the
// input's dtype. Rounding is round-half-to-even (torch.round). Works on any device.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <utility>
#include <vector>

namespace respin {

// One quantizer configuration. bits 2..8 quantize; 16 means "off" (the functions return the input).
struct QuantSpec {
  int bits = 16;
  // Symmetric: signed grid [-(2^(b-1)), 2^(b-1)-1] * scale. Asymmetric: unsigned grid [0, 2^b-1]
  // with an integer zero point.
  bool symmetric = true;
  // 0: one range per row (activations: per token over the last dim; weights: per output channel).
  // > 0: one range per group of `group_size` contiguous elements of the last dim; must divide it.
  int64_t group_size = 0;
  // Range multiplier in (0, 1]; values beyond the shrunk range saturate.
  double clip_ratio = 1.0;

  bool enabled() const { return bits != 16; }
};

// Throws respin::Error unless bits is 2..8 or 16, clip_ratio is in (0, 1] and group_size >= 0.
// `what` names the quantizer in the message (e.g. "activation", "weight").
void validate_quant_spec(const QuantSpec& spec, const char* what = "quantizer");

// SpinQuant's KV-cache protocol: asymmetric, one range per token per head (clip 1.0).
inline QuantSpec kv_cache_spec(int bits) { return QuantSpec{bits, false, 0, 1.0}; }

// ---------------------------------------------------------------------------------------------
// Activations: per token, i.e. per row of the last dimension (any leading shape).
//   group_size == 0: the range always includes 0 (xmin = min(min x, 0), xmax = max(max x, 0)).
//   group_size  > 0: per group of contiguous channels from the raw amin/amax (0 not forced), as
//                    SpinQuant's find_params_per_token_groupwise does.
// The result carries no gradient (rounding has none); use the _ste variants to train through it.
// Returns `x` itself when bits == 16. Throws respin::Error for an invalid spec, a group size that
// does not divide the last dimension, a non-floating tensor, or NaN/Inf in x.
at::Tensor fake_quantize_activation(const at::Tensor& x, const QuantSpec& spec);

// KV cache, x = [B, heads, T, head_dim] (the Key/Value hook sites): the activation quantizer
// applied per token per head over head_dim. group_size 0 quantizes each head row with the
// per-token rule (0 in the range: SpinQuant's K quantizer); group_size = head_dim (or a divisor)
// uses the groupwise rule (raw min/max: SpinQuant's V quantizer on v_proj's output).
at::Tensor fake_quantize_kv(const at::Tensor& x, const QuantSpec& spec);

// ---------------------------------------------------------------------------------------------
// Weights: PyTorch Linear layout [out, in]; one range per output channel (row), or per group of
// `group_size` input columns. The range always includes 0 (GPTQ's WeightQuantizer); clip_ratio
// shrinks it. With mse_clip, each row/group instead takes the shrink p = 1 - i/100, i = 0..79,
// minimizing sum |q - w|^2.4 (GPTQ's grid=100, maxshrink=0.8, norm=2.4); p = 1 is the first
// candidate and only a strictly smaller error replaces it, so the search never does worse than
// no clipping. mse_clip requires clip_ratio == 1 (the search chooses the clip itself).
struct WeightQuantParams {
  at::Tensor scale;  // [out, groups] float32, groups = in / group_size (1 when group_size == 0)
  at::Tensor zero;   // [out, groups] float32 integer-valued zero point (all 0 when symmetric)
};

// The blocks [first row, rows] a [rows, width] weight's grid search and fake quantization run over:
// at most about 4M elements each and at least 64 rows, so that a block's reductions split over rows,
// never within one (each row's result is the same whatever the blocking), balanced so that no block
// is much smaller than another. The memory plan counts the largest of them.
std::vector<std::pair<int64_t, int64_t>> row_blocks(int64_t rows, int64_t width);

// The quantization grid per row/group. Throws respin::Error when bits == 16 (nothing to compute),
// for an invalid spec, or for a weight that is not 2-D floating point or contains NaN/Inf.
WeightQuantParams compute_weight_params(const at::Tensor& w, const QuantSpec& spec,
                                        bool mse_clip = false);

// Quantize-dequantize w [out, in] on the grid of `params` (from compute_weight_params with the
// same spec); columns [g*group_size, (g+1)*group_size) use group g.
at::Tensor fake_quantize_weight_with(const at::Tensor& w, const WeightQuantParams& params,
                                     const QuantSpec& spec);

// compute_weight_params + fake_quantize_weight_with. Returns `w` itself when bits == 16.
at::Tensor fake_quantize_weight(const at::Tensor& w, const QuantSpec& spec, bool mse_clip = false);

// Element-wise quantize-dequantize of x with a given scale/zero broadcast against it, e.g. one
// weight column [out, 1] against params.scale.slice(1, g, g + 1) as GPTQ quantizes column by
// column. spec supplies bits and symmetric only. Float32 math, result in x's dtype.
at::Tensor fake_quantize_with_scale(const at::Tensor& x, const at::Tensor& scale,
                                    const at::Tensor& zero, const QuantSpec& spec);

// ---------------------------------------------------------------------------------------------
// Straight-through estimator: forward value is `quantized`, gradient w.r.t. x is the identity.
// Computed as quantized.detach() + (x - x.detach()), the same as x + (quantized - x).detach() but
// bit-exact in the forward (x - x.detach() is exactly 0 for finite x).
at::Tensor fake_quantize_ste(const at::Tensor& x, const at::Tensor& quantized);

// The STE variants used when learning rotations through quantized layers: forward equals the
// non-STE function, gradient flows to x (or w) as the identity. Quantization parameters (scale,
// zero, MSE clip choice) are computed without gradient, as in SpinQuant's training.
at::Tensor fake_quantize_activation_ste(const at::Tensor& x, const QuantSpec& spec);
at::Tensor fake_quantize_weight_ste(const at::Tensor& w, const QuantSpec& spec,
                                    bool mse_clip = false);

}  // namespace respin
