// Fake quantizers (see quantizer.h); formulas from docs/methods.md 2.5 (SpinQuant/QuaRot
// quant_utils.py ActQuantizer and GPTQ's WeightQuantizer), kept operation for operation so the
// float32 results match the Python reference.
#include "core/quant/quantizer.h"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>

#include <cmath>
#include <algorithm>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "core/quant/finite_checks.h"
#include "core/util/error.h"
#include "core/util/tensor_text.h"

namespace respin {
namespace {


// Largest integer level: signed grid [-(maxq+1), maxq] when symmetric, [0, maxq] otherwise.
double max_level(const QuantSpec& spec) {
  return spec.symmetric ? std::ldexp(1.0, spec.bits - 1) - 1 : std::ldexp(1.0, spec.bits) - 1;
}

// Checks shared by every entry point; returns the group length along the last dimension.
int64_t check_input(const at::Tensor& x, const QuantSpec& spec, const std::string& what) {
  if (!x.defined()) throw Error(what + " quantizer: tensor is undefined");
  if (!at::isFloatingType(x.scalar_type()))
    throw Error(what + " quantizer: expected a floating-point tensor, got " +
                std::string(c10::toString(x.scalar_type())));
  if (x.dim() < 1) throw Error(what + " quantizer: expected at least 1 dimension, got a scalar");
  const int64_t n = x.size(-1);
  if (spec.group_size > 0 && n % spec.group_size != 0)
    throw Error(what + " quantizer: group_size " + std::to_string(spec.group_size) +
                " does not divide the last dimension (" + std::to_string(n) + ") of " +
                shape_text(x));
  return spec.group_size > 0 ? spec.group_size : n;
}

// Quantize-dequantize with broadcast scale/zero, as sym_quant_dequant / asym_quant_dequant:
//   sym:  scale * clamp(round(x / scale), -(maxq + 1), maxq)
//   asym: scale * (clamp(round(x / scale) + zero, 0, maxq) - zero)
// In place on one buffer (`out`, or a new one): fresh allocations per op dominate the cost on
// large weights, especially inside the 80-candidate MSE search.
at::Tensor qdq(const at::Tensor& x, const at::Tensor& scale, const at::Tensor& zero, double maxq,
               bool symmetric, at::Tensor out = {}) {
  at::Tensor q = out.defined() ? at::div_out(out, x, scale) : x / scale;
  q.round_();
  if (symmetric) return q.clamp_(-(maxq + 1), maxq).mul_(scale);
  return q.add_(zero).clamp_(0.0, maxq).sub_(zero).mul_(scale);
}

struct RowGrid {
  at::Tensor scale, zero;  // [rows, 1] float32
};

// ActQuantizer.find_params (include_zero) / find_params_per_token_groupwise (!include_zero) on
// the rows of a float32 [rows, n] tensor.
RowGrid activation_grid(const at::Tensor& rows, const QuantSpec& spec, bool include_zero) {
  const double maxq = max_level(spec);
  at::Tensor xmin = std::get<0>(rows.min(1, true));
  at::Tensor xmax = std::get<0>(rows.max(1, true));
  if (include_zero) {
    xmin = at::clamp_max(xmin, 0.0);
    xmax = at::clamp_min(xmax, 0.0);
  }
  xmin = xmin * spec.clip_ratio;
  xmax = xmax * spec.clip_ratio;
  RowGrid g;
  if (spec.symmetric) {
    xmax = at::maximum(xmin.abs(), xmax);
    // The reference sets scale = 1 where xmax == 0; testing the scale instead also covers rows so
    // tiny (|x| < ~1e-43) that xmax / maxq underflows to 0, which would otherwise divide by 0.
    g.scale = xmax / maxq;
    g.scale = at::where(g.scale == 0, at::ones_like(g.scale), g.scale);
    g.zero = at::zeros_like(g.scale);
    return g;
  }
  const at::Tensor both_zero = (xmin == 0).logical_and(xmax == 0);
  xmin = at::where(both_zero, at::full_like(xmin, -1), xmin);
  xmax = at::where(both_zero, at::full_like(xmax, 1), xmax);
  if (!include_zero) {
    // A constant nonzero group has zero range without 0 in it (the reference divides by zero
    // here and yields NaN). Widening it to include 0 puts the constant exactly on the grid's end.
    const at::Tensor flat = xmin == xmax;
    xmin = at::where(flat, at::clamp_max(xmin, 0.0), xmin);
    xmax = at::where(flat, at::clamp_min(xmax, 0.0), xmax);
  }
  g.scale = (xmax - xmin) / maxq;
  g.scale = at::where(g.scale == 0, at::ones_like(g.scale), g.scale);  // underflow only
  g.zero = at::round(-xmin / g.scale);
  return g;
}


// GPTQ WeightQuantizer.find_params (perchannel) on float32 [rows, n], plus its MSE clip search.
RowGrid weight_grid(const at::Tensor& rows, const QuantSpec& spec, bool mse_clip) {
  const double maxq = max_level(spec);
  at::Tensor xmin = at::clamp_max(std::get<0>(rows.min(1, true)), 0.0) * spec.clip_ratio;
  at::Tensor xmax = at::clamp_min(std::get<0>(rows.max(1, true)), 0.0) * spec.clip_ratio;
  // GPTQ clamps the range at 1e-5 rather than special-casing zero rows (sym) and additionally
  // maps all-zero rows to [-1, 1] (asym).
  constexpr double kMinRange = 1e-5;
  RowGrid g;
  if (spec.symmetric) {
    xmax = at::clamp_min(at::maximum(xmin.abs(), xmax), kMinRange);
    g.scale = xmax / maxq;
    g.zero = at::zeros_like(g.scale);
  } else {
    const at::Tensor both_zero = (xmin == 0).logical_and(xmax == 0);
    xmin = at::where(both_zero, at::full_like(xmin, -1), xmin);
    xmax = at::where(both_zero, at::full_like(xmax, 1), xmax);
    g.scale = at::clamp_min(xmax - xmin, kMinRange) / maxq;
    g.zero = at::round(-xmin / g.scale);
  }
  if (!mse_clip) return g;

  // grid = 100, maxshrink = 0.8, norm = 2.4: candidates p = 1, 0.99, ..., 0.21. p = 1 reproduces
  // the grid above exactly (the range clamp is applied to candidates too, which GPTQ omits; it
  // only matters for rows with range < 1e-5), and `err < best` is strict, so the chosen grid is
  // never worse than no clipping.
  constexpr int kGrid = 100;
  constexpr int kSteps = 80;  // int(maxshrink * grid)
  constexpr double kNorm = 2.4;
  at::Tensor best = at::full_like(g.scale, std::numeric_limits<float>::infinity());
  at::Tensor buf = at::empty_like(rows), err = at::empty_like(g.scale);
  for (int i = 0; i < kSteps; ++i) {
    const double p = 1.0 - static_cast<double>(i) / kGrid;
    const at::Tensor xmin1 = xmin * p, xmax1 = xmax * p;
    at::Tensor scale1, zero1;
    if (spec.symmetric) {
      scale1 = xmax1 / maxq;
      zero1 = at::zeros_like(scale1);
    } else {
      scale1 = at::clamp_min(xmax1 - xmin1, kMinRange) / maxq;
      zero1 = at::round(-xmin1 / scale1);
    }
    // |q - x|^2.4 as exp(2.4 log|q - x|): half the cost of pow on CPU, exact 0 for exact values.
    qdq(rows, scale1, zero1, maxq, spec.symmetric, buf).sub_(rows).abs_().log_().mul_(kNorm).exp_();
    at::sum_out(err, buf, 1, true);
    const at::Tensor better = err < best;
    best = at::where(better, err, best);
    g.scale = at::where(better, scale1, g.scale);
    g.zero = at::where(better, zero1, g.zero);
  }
  return g;
}

at::Tensor fake_quantize_rows(const at::Tensor& x, const QuantSpec& spec, const std::string& what) {
  validate_quant_spec(spec, what.c_str());
  if (!spec.enabled()) return x;
  const int64_t group = check_input(x, spec, what);
  if (x.numel() == 0) return x;
  check_finite(x, what);
  c10::NoGradGuard no_grad;
  const at::Tensor rows = x.detach().to(at::kFloat).contiguous().reshape({-1, group});
  const RowGrid g = activation_grid(rows, spec, /*include_zero=*/spec.group_size == 0);
  return qdq(rows, g.scale, g.zero, max_level(spec), spec.symmetric)
      .reshape(x.sizes())
      .to(x.scalar_type());
}

void check_weight(const at::Tensor& w, const QuantSpec& spec) {
  check_input(w, spec, "weight");
  if (w.dim() != 2)
    throw Error("weight quantizer: expected a 2-D [out, in] weight, got " + shape_text(w));
}

}  // namespace

std::vector<std::pair<int64_t, int64_t>> row_blocks(int64_t rows, int64_t width) {
  constexpr int64_t kElements = int64_t(1) << 22, kMinRows = 64;
  const int64_t target = std::max(kMinRows, kElements / std::max<int64_t>(width, 1));
  // At most `target` rows a block (rounded up), but never a block under kMinRows.
  const int64_t count = std::max<int64_t>(1, std::min((rows + target - 1) / target, rows / kMinRows));
  std::vector<std::pair<int64_t, int64_t>> blocks;
  for (int64_t b = 0, r = 0; b < count; ++b) {
    const int64_t n = rows / count + (b < rows % count ? 1 : 0);
    blocks.emplace_back(r, n);
    r += n;
  }
  return blocks;
}

void validate_quant_spec(const QuantSpec& spec, const char* what) {
  const std::string who = std::string(what) + " quantizer: ";
  if (!((spec.bits >= 2 && spec.bits <= 8) || spec.bits == 16))
    throw Error(who + "bits must be 2..8 or 16 (off), got " + std::to_string(spec.bits));
  if (!(spec.clip_ratio > 0 && spec.clip_ratio <= 1))  // also rejects NaN
    throw Error(who + "clip_ratio must be in (0, 1], got " + number_text(spec.clip_ratio));
  if (spec.group_size < 0)
    throw Error(who + "group_size must be >= 0 (0 = per row), got " +
                std::to_string(spec.group_size));
}

at::Tensor fake_quantize_activation(const at::Tensor& x, const QuantSpec& spec) {
  return fake_quantize_rows(x, spec, "activation");
}

at::Tensor fake_quantize_kv(const at::Tensor& x, const QuantSpec& spec) {
  if (x.defined() && x.dim() != 4)
    throw Error("KV cache quantizer: expected [batch, heads, tokens, head_dim], got " +
                shape_text(x));
  // The last dimension is head_dim, so per-row quantization is per token per head.
  return fake_quantize_rows(x, spec, "KV cache");
}

WeightQuantParams compute_weight_params(const at::Tensor& w, const QuantSpec& spec, bool mse_clip) {
  validate_quant_spec(spec, "weight");
  if (!spec.enabled())
    throw Error("weight quantizer: bits = 16 means unquantized; there are no parameters");
  if (mse_clip && spec.clip_ratio != 1.0)
    throw Error("weight quantizer: mse_clip searches the clip itself; clip_ratio must be 1, got " +
                number_text(spec.clip_ratio));
  check_weight(w, spec);
  check_finite(w, "weight");
  c10::NoGradGuard no_grad;
  const int64_t out = w.size(0), in = w.size(1);
  const int64_t group = spec.group_size > 0 ? spec.group_size : in;
  const int64_t groups = group > 0 ? in / group : 1;
  const at::Tensor all = w.detach().contiguous().reshape({out * groups, group});
  RowGrid g;
  if (all.numel() > 0) {
    // Each row's grid is its own: the search runs over blocks of rows, so its float32 copies and
    // candidates are a block's, not the weight's (an intermediate x hidden weight of a 70B model is
    // 235M elements).
    std::vector<at::Tensor> scales, zeros;
    for (const auto& [r, n] : row_blocks(all.size(0), group)) {
      RowGrid b = weight_grid(all.narrow(0, r, n).to(at::kFloat).contiguous(), spec, mse_clip);
      scales.push_back(b.scale);
      zeros.push_back(b.zero);
    }
    g.scale = scales.size() == 1 ? scales[0] : at::cat(scales);
    g.zero = zeros.size() == 1 ? zeros[0] : at::cat(zeros);
  } else {
    const auto f32 = at::TensorOptions().dtype(at::kFloat).device(w.device());
    g.scale = at::ones({out * groups, 1}, f32);
    g.zero = at::zeros({out * groups, 1}, f32);
  }
  return {g.scale.reshape({out, groups}), g.zero.reshape({out, groups})};
}

at::Tensor fake_quantize_weight_with(const at::Tensor& w, const WeightQuantParams& params,
                                     const QuantSpec& spec) {
  validate_quant_spec(spec, "weight");
  if (!spec.enabled()) return w;
  check_weight(w, spec);
  const int64_t out = w.size(0), in = w.size(1);
  const int64_t groups = spec.group_size > 0 ? in / spec.group_size : 1;
  for (const at::Tensor* t : {&params.scale, &params.zero})
    if (!t->defined() || t->dim() != 2 || t->size(0) != out || t->size(1) != groups)
      throw Error("weight quantizer: params must be [" + std::to_string(out) + ", " +
                  std::to_string(groups) + "] for weight " + shape_text(w) + ", got " +
                  (t->defined() ? shape_text(*t) : std::string("undefined")));
  if (w.numel() == 0) return w;
  c10::NoGradGuard no_grad;
  const at::Tensor scale = params.scale.to(w.device(), at::kFloat).unsqueeze(-1);
  const at::Tensor zero = params.zero.to(w.device(), at::kFloat).unsqueeze(-1);
  // Elementwise, a block of rows at a time (the float32 copy is a block's).
  at::Tensor result = at::empty(w.sizes(), w.options().requires_grad(false));
  const at::Tensor src = w.detach();
  for (const auto& [r, n] : row_blocks(out, in)) {
    const at::Tensor x = src.narrow(0, r, n).to(at::kFloat).reshape({n, groups, in / groups});
    result.narrow(0, r, n).copy_(
        qdq(x, scale.narrow(0, r, n), zero.narrow(0, r, n), max_level(spec), spec.symmetric).reshape({n, in}));
  }
  return result;
}

at::Tensor fake_quantize_weight(const at::Tensor& w, const QuantSpec& spec, bool mse_clip) {
  validate_quant_spec(spec, "weight");
  if (!spec.enabled()) return w;
  return fake_quantize_weight_with(w, compute_weight_params(w, spec, mse_clip), spec);
}

at::Tensor fake_quantize_with_scale(const at::Tensor& x, const at::Tensor& scale,
                                    const at::Tensor& zero, const QuantSpec& spec) {
  validate_quant_spec(spec, "quantizer");
  if (!spec.enabled()) return x;
  if (!x.defined() || !scale.defined() || !zero.defined())
    throw Error("fake_quantize_with_scale: undefined tensor");
  c10::NoGradGuard no_grad;
  const at::Tensor xf = x.detach().to(at::kFloat);
  return qdq(xf, scale.to(xf.device(), at::kFloat), zero.to(xf.device(), at::kFloat),
             max_level(spec), spec.symmetric)
      .to(x.scalar_type());
}

at::Tensor fake_quantize_ste(const at::Tensor& x, const at::Tensor& quantized) {
  if (!x.defined() || !quantized.defined() || !x.sizes().equals(quantized.sizes()))
    throw Error("fake_quantize_ste: quantized tensor must have the shape of x " +
                (x.defined() ? shape_text(x) : std::string("(undefined)")));
  return quantized.detach().to(x.scalar_type()) + (x - x.detach());
}

at::Tensor fake_quantize_activation_ste(const at::Tensor& x, const QuantSpec& spec) {
  const at::Tensor q = fake_quantize_activation(x, spec);
  return q.is_same(x) ? x : fake_quantize_ste(x, q);
}

at::Tensor fake_quantize_weight_ste(const at::Tensor& w, const QuantSpec& spec, bool mse_clip) {
  const at::Tensor q = fake_quantize_weight(w, spec, mse_clip);
  return q.is_same(w) ? w : fake_quantize_ste(w, q);
}

}  // namespace respin
