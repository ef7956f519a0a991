// GPTQ (see gptq.h): SpinQuant's eval_utils/gptq_utils.py GPTQ.add_batch / fasterquant with
// act_order = False and static_groups = False, step for step, in float64.
//
// Layout: the weight is worked on transposed, Wt = W^T [in, out], so that a column of W (one
// input channel across all output rows) is a contiguous row of Wt; the per-column updates and the
// quantization then touch contiguous memory.
#include "core/quant/gptq.h"
#include "core/quant/finite_checks.h"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <tuple>

#include "core/util/error.h"
#include "core/util/tensor_text.h"

namespace respin {
namespace {


bool all_finite(const at::Tensor& t) { return t.numel() == 0 || finite_flag(t).item<bool>(); }

// Upper Cholesky factor U of (H + damp * I)^-1, i.e. U^T U = (H + damp I)^-1, as the reference
// computes it: cholesky -> cholesky_inverse -> cholesky(upper). Undefined when a factorization
// fails (H + damp I not numerically positive definite).
at::Tensor inverse_cholesky_upper(const at::Tensor& h, double damp) {
  at::Tensor hd = h.clone();
  hd.diagonal().add_(damp);
  at::Tensor lower, info;
  std::tie(lower, info) = at::linalg_cholesky_ex(hd, /*upper=*/false, /*check_errors=*/false);
  if (info.item<int64_t>() != 0) return {};
  const at::Tensor inverse = at::cholesky_inverse(lower, /*upper=*/false);
  at::Tensor upper;
  std::tie(upper, info) = at::linalg_cholesky_ex(inverse, /*upper=*/true, /*check_errors=*/false);
  if (info.item<int64_t>() != 0 || !all_finite(upper)) return {};
  return upper;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// HessianAccumulator

HessianAccumulator::HessianAccumulator(int64_t columns, at::Device device) : columns_(columns) {
  if (columns < 0)
    throw Error("Hessian accumulator: columns must be >= 0, got " + std::to_string(columns));
  hessian_ = at::zeros({columns, columns}, at::TensorOptions().dtype(at::kDouble).device(device));
}

void HessianAccumulator::add(const at::Tensor& x) {
  if (!x.defined()) throw Error("Hessian accumulator: input tensor is undefined");
  if (!at::isFloatingType(x.scalar_type()))
    throw Error("Hessian accumulator: expected floating-point inputs, got " +
                std::string(c10::toString(x.scalar_type())));
  if (x.dim() < 1 || x.size(-1) != columns_)
    throw Error("Hessian accumulator: expected inputs [..., " + std::to_string(columns_) +
                "] (the layer's input features), got " + shape_text(x));
  if (x.numel() == 0) return;
  if (!all_finite(x))
    throw Error("Hessian accumulator: input " + shape_text(x) +
                " contains NaN or Inf values; the Hessian would be unusable");
  c10::NoGradGuard no_grad;
  if (samples_ == 0 && hessian_.device() != x.device()) hessian_ = hessian_.to(x.device());
  const at::Tensor rows = x.detach().to(hessian_.device(), at::kDouble).reshape({-1, columns_});
  const int64_t n = rows.size(0);
  const int64_t total = samples_ + n;
  // H = H * n_old / n_new + (2 / n_new) X^T X in one addmm.
  hessian_.addmm_(rows.t(), rows, static_cast<double>(samples_) / static_cast<double>(total),
                  2.0 / static_cast<double>(total));
  samples_ = total;
}

// ---------------------------------------------------------------------------------------------
// gptq_quantize

GptqResult gptq_quantize(const at::Tensor& w, const at::Tensor& hessian, const QuantSpec& spec,
                         const GptqOptions& options) {
  validate_quant_spec(spec, "GPTQ weight");
  if (!(std::isfinite(options.damp) && options.damp >= 0))
    throw Error("GPTQ: damp must be finite and >= 0, got " + number_text(options.damp));
  if (options.block_size < 1)
    throw Error("GPTQ: block_size must be >= 1, got " + std::to_string(options.block_size));
  if (options.mse_clip && spec.clip_ratio != 1.0)
    throw Error("GPTQ: mse_clip searches the clip itself; clip_ratio must be 1, got " +
                number_text(spec.clip_ratio));
  if (!w.defined()) throw Error("GPTQ: weight is undefined");
  if (!at::isFloatingType(w.scalar_type()))
    throw Error("GPTQ: expected a floating-point weight, got " +
                std::string(c10::toString(w.scalar_type())));
  if (w.dim() != 2) throw Error("GPTQ: expected a 2-D [out, in] weight, got " + shape_text(w));
  const int64_t out = w.size(0), in = w.size(1);
  if (!hessian.defined()) throw Error("GPTQ: Hessian is undefined");
  if (!at::isFloatingType(hessian.scalar_type()))
    throw Error("GPTQ: expected a floating-point Hessian, got " +
                std::string(c10::toString(hessian.scalar_type())));
  if (hessian.dim() != 2 || hessian.size(0) != in || hessian.size(1) != in)
    throw Error("GPTQ: Hessian must be [" + std::to_string(in) + ", " + std::to_string(in) +
                "] for weight " + shape_text(w) + ", got " + shape_text(hessian));
  if (spec.group_size > 0 && in % spec.group_size != 0)
    throw Error("GPTQ: group_size " + std::to_string(spec.group_size) +
                " does not divide the weight's input dimension " + std::to_string(in));
  if (!all_finite(w)) throw Error("GPTQ: weight " + shape_text(w) + " contains NaN or Inf values");
  if (!all_finite(hessian))
    throw Error("GPTQ: Hessian " + shape_text(hessian) + " contains NaN or Inf values");

  GptqResult result;
  if (!spec.enabled() || w.numel() == 0) {
    result.weight = w;
    return result;
  }

  c10::NoGradGuard no_grad;
  at::Tensor wt = w.detach().to(at::kDouble).t().contiguous();  // [in, out]: row i = column i
  at::Tensor h = hessian.detach().to(w.device(), at::kDouble).clone();

  // Per-row grid first, from the weight as given (the reference calls find_params before it
  // zeroes dead columns).
  const int64_t groups = spec.group_size > 0 ? in / spec.group_size : 1;
  if (spec.group_size == 0) {
    result.params = compute_weight_params(wt.t(), spec, options.mse_clip);
  } else {
    const auto f32 = at::TensorOptions().dtype(at::kFloat).device(w.device());
    result.params.scale = at::empty({out, groups}, f32);
    result.params.zero = at::empty({out, groups}, f32);
  }

  // Dead inputs: H_ii = 1, W[:, i] = 0.
  const at::Tensor dead = h.diagonal() == 0;
  result.dead_columns = dead.sum().item<int64_t>();
  if (result.dead_columns > 0) {
    h.diagonal().masked_fill_(dead, 1.0);
    wt.masked_fill_(dead.unsqueeze(1), 0.0);
  }

  // Damped inverse; retried with more damping when H is (numerically) not positive definite.
  const double mean_diag = h.diagonal().mean().item<double>();
  double rel_damp = options.damp;
  at::Tensor hinv;  // upper Cholesky factor of H^-1
  constexpr int kRetries = 3;
  for (int attempt = 0; attempt <= kRetries; ++attempt) {
    if (attempt > 0) rel_damp = rel_damp > 0 ? rel_damp * 10 : 1e-4;
    hinv = inverse_cholesky_upper(h, rel_damp * mean_diag);
    if (hinv.defined()) break;
  }
  if (!hinv.defined())
    throw Error("GPTQ: the Hessian " + shape_text(h) +
                " is not positive definite even with damping " + number_text(rel_damp) +
                " x mean(diag H) (mean(diag H) = " + number_text(mean_diag) +
                "); check the calibration inputs");

  QuantSpec group_spec = spec;  // one group's columns are quantized as a per-row grid
  group_spec.group_size = 0;
  at::Tensor scale, zero;  // [out] float32: the grid of the current row/group
  if (spec.group_size == 0) {
    scale = result.params.scale.select(1, 0);
    zero = result.params.zero.select(1, 0);
  }
  const at::Tensor diag = hinv.diagonal().cpu().contiguous();
  const double* d_ptr = diag.data_ptr<double>();

  at::Tensor qt = at::empty_like(wt);             // [in, out]
  at::Tensor loss = at::zeros({}, wt.options());  // sum of err^2 / 2
  for (int64_t i1 = 0; i1 < in; i1 += options.block_size) {
    const int64_t i2 = std::min(i1 + options.block_size, in);
    const int64_t count = i2 - i1;
    at::Tensor w1 = wt.slice(0, i1, i2).clone();  // the block's working copy
    at::Tensor err1 = at::empty({count, out}, wt.options());
    const at::Tensor hinv1 = hinv.slice(0, i1, i2).slice(1, i1, i2);
    for (int64_t i = 0; i < count; ++i) {
      const int64_t col = i1 + i;
      if (spec.group_size > 0 && col % spec.group_size == 0) {
        // From wt, not w1: this block's earlier columns have not propagated there yet.
        const WeightQuantParams p = compute_weight_params(
            wt.slice(0, col, col + spec.group_size).t(), group_spec, options.mse_clip);
        const int64_t g = col / spec.group_size;
        result.params.scale.select(1, g).copy_(p.scale.select(1, 0));
        result.params.zero.select(1, g).copy_(p.zero.select(1, 0));
        scale = result.params.scale.select(1, g);
        zero = result.params.zero.select(1, g);
      }
      const at::Tensor wcol = w1.select(0, i);
      const at::Tensor q = fake_quantize_with_scale(wcol, scale, zero, spec);
      qt.select(0, col).copy_(q);
      at::Tensor e = err1.select(0, i);
      at::sub_out(e, wcol, q).div_(d_ptr[col]);
      if (i + 1 < count)  // W1[:, i+1:] -= err1 * Hinv1[i, i+1:]
        w1.slice(0, i + 1).addr_(hinv1.select(0, i).slice(0, i + 1), e, 1.0, -1.0);
    }
    loss.add_(err1.square().sum(), 0.5);
    if (i2 < in)  // W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]
      wt.slice(0, i2).addmm_(hinv.slice(0, i1, i2).slice(1, i2).t(), err1, 1.0, -1.0);
  }

  result.weight = qt.t().contiguous().to(w.scalar_type());
  result.loss = loss.item<double>();
  return result;
}

}  // namespace respin
