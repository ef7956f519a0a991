// The hot operations of calibration and quantized inference, behind one small interface: the
// linear layers, the online Hadamard transform, the activation/KV fake quantizers (with or
// without a straight-through gradient), ReSpinQuant's skip transitions (dense, and the rank-r
// residual correction) and the |x| histogram of the activation statistics.
// The methods (core/methods) and the statistics call only these, so device kernels (kernels/) can
// take over an op for a device without touching the methods. Today every op is a libtorch
// composition, which runs on the CPU and on CUDA through libtorch; the custom CUDA kernels are
// wired in here when they land.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

#include "core/quant/quantizer.h"
#include "core/rotation/hadamard_transform.h"
#include "core/rotation/residual_approx.h"

namespace respin::ops {

// x [..., in] -> x w^T (+ b): w [out, in] in x's dtype (PyTorch's Linear).
at::Tensor linear(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b = at::Tensor());
// x [..., n] -> x H / sqrt(n) (h.size() == n).
at::Tensor hadamard(const at::Tensor& x, const HadamardTransform& h);
// Per-token activation fake quantization (quantizer.h); ste: straight-through gradient.
at::Tensor fake_quantize_tokens(const at::Tensor& x, const QuantSpec& spec, bool ste = false);
// KV cache [B, heads, T, head_dim], per token per head.
at::Tensor fake_quantize_kv(const at::Tensor& x, const QuantSpec& spec, bool ste = false);
// h [..., D] -> h T for a dense D x D transition (cast to h's dtype): full-rank ReSpinQuant.
at::Tensor dense_transition(const at::Tensor& h, const at::Tensor& t);
// h + ((h Q) M) Q^T.
at::Tensor residual_correction(const at::Tensor& h, const ResidualCorrection& c);
// Counts of |x| over the fixed log-spaced bins of activation_stats.h (kHistogramBins entries);
// NaN/Inf are not counted.
std::vector<int64_t> abs_histogram(const at::Tensor& x);

}  // namespace respin::ops
