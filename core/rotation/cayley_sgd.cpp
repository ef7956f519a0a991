// Cayley SGD (SpinQuant's SGDG, stiefel branch); see cayley_sgd.h and docs/methods.md 2.4.
#include "core/rotation/cayley_sgd.h"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>

#include <algorithm>
#include <string>
#include <tuple>
#include <utility>

#include "core/util/error.h"

namespace respin {
namespace {

constexpr double kEpsilon = 1e-8;  // SGDG's `episilon` and unit()'s eps

// SGDG qr_retraction on X [p, n]: QR of X^T, columns sign-fixed by diag(R) so the result is the
// unique orthonormalization continuous in X (a plain QR could flip row signs and jump).
at::Tensor qr_retraction(const at::Tensor& x) {
  at::Tensor q, r;
  std::tie(q, r) = at::linalg_qr(x.t(), "reduced");
  q = q * at::sign(at::diagonal(r)).unsqueeze(0);
  return q.t();
}

}  // namespace

CayleySgd::CayleySgd(std::vector<at::Tensor> params, CayleySgdOptions options)
    : params_(std::move(params)), options_(options) {
  if (!(options_.lr > 0.0)) throw Error("CayleySgd: lr must be > 0");
  if (!(options_.momentum >= 0.0 && options_.momentum < 1.0))
    throw Error("CayleySgd: momentum must be in [0, 1)");
  if (options_.qr_every < 0) throw Error("CayleySgd: qr_every must be >= 0");
  if (options_.fixed_point_iterations < 1)
    throw Error("CayleySgd: fixed_point_iterations must be >= 1");
  for (size_t i = 0; i < params_.size(); ++i) {
    const at::Tensor& p = params_[i];
    const std::string name = "CayleySgd: parameter " + std::to_string(i);
    if (!p.defined()) throw Error(name + " is undefined");
    if (!at::isFloatingType(p.scalar_type())) throw Error(name + " must be floating point");
    // SGDG falls back to plain SGD for anything that is not a [p, n], p <= n matrix; here that
    // is a usage error, since only rotations belong in this optimizer.
    if (p.dim() != 2 || p.size(0) > p.size(1))
      throw Error(name + " must be a 2-D [p, n] matrix with p <= n");
    // Without requires_grad autograd never fills grad() and step() would silently skip it.
    if (!p.requires_grad()) throw Error(name + " must have requires_grad set");
  }
  momentum_.resize(params_.size());
  last_cap_.assign(params_.size(), at::Tensor());
}

std::vector<double> CayleySgd::last_alpha() const {
  std::vector<double> out;
  for (const at::Tensor& cap : last_cap_)
    out.push_back(cap.defined() ? std::min(cap.item<double>(), options_.lr) : 0.0);
  return out;
}

void CayleySgd::set_lr(double lr) {
  if (!(lr > 0.0)) throw Error("CayleySgd: lr must be > 0");
  options_.lr = lr;
}

void CayleySgd::zero_grad() {
  for (at::Tensor& p : params_) p.mutable_grad().reset();
}

void CayleySgd::retract() {
  c10::NoGradGuard no_grad;
  for (at::Tensor& p : params_) p.detach().copy_(qr_retraction(p.detach()));
}

void CayleySgd::step() {
  c10::NoGradGuard no_grad;
  ++step_count_;
  const bool retract = options_.qr_every > 0 && step_count_ % options_.qr_every == 0;
  for (size_t i = 0; i < params_.size(); ++i) {
    at::Tensor& p = params_[i];
    last_cap_[i] = at::Tensor();
    const at::Tensor& g = p.grad();
    if (!g.defined()) continue;
    if (!g.sizes().equals(p.sizes()))
      throw Error("CayleySgd: gradient of parameter " + std::to_string(i) + " has wrong shape");

    // Everything below is SGDG line by line, in the parameter's dtype. X has orthonormal rows.
    // Row normalization is a no-op for an exact rotation but is written back (as in SGDG),
    // which keeps the row norms from drifting.
    at::Tensor x = p.detach() / (p.detach().norm(2, /*dim=*/1, /*keepdim=*/true) + kEpsilon);
    if (retract) x = qr_retraction(x);

    at::Tensor& buffer = momentum_[i];
    if (!buffer.defined()) buffer = at::zeros({p.size(1), p.size(0)}, p.options());
    // V = momentum * V - G^T: a descent direction in the transposed (column) layout SGDG uses.
    const at::Tensor v = buffer * options_.momentum - g.t();
    const at::Tensor mx = at::matmul(v, x);                        // [n, n]
    const at::Tensor xxmx = at::matmul(x.t(), at::matmul(x, mx));  // [n, n]
    const at::Tensor w_hat = mx - 0.5 * xxmx;
    const at::Tensor w = w_hat - w_hat.t();  // skew-symmetric generator of the Cayley transform
    // Step cap: alpha ||W||_1 <= 1 keeps ||alpha W / 2||_2 <= 1/2, so the fixed-point iteration
    // below contracts (SGDG computes t = 0.5 * 2 / (||W||_1 + eps) in the parameter dtype).
    // Kept on the device (a 0-dim tensor, no host read in the step); last_alpha() reads it.
    const at::Tensor cap = 1.0 / (w.abs().sum(0).max() + kEpsilon);
    const at::Tensor alpha = at::clamp_max(cap, options_.lr);
    last_cap_[i] = cap;

    // Cayley transform Y = (I - alpha/2 W)^{-1} (I + alpha/2 W) X^T by fixed-point iteration
    // (no inverse): Y <- X^T + alpha W (X^T + Y) / 2. SGDG starts from X^T + alpha V with the
    // raw V, not its tangent part W X^T; the limit is the same, but 5 iterations then leave a
    // defect when V is mostly normal to the manifold (see fixed_point_iterations, retract()).
    const at::Tensor xt = x.t();
    at::Tensor y = xt + alpha * v;
    for (int it = 0; it < options_.fixed_point_iterations; ++it)
      y = xt + alpha * at::matmul(w, 0.5 * (xt + y));
    p.detach().copy_(y.t());

    // SGDG intends V_new = W X^T as the momentum buffer, but its Python rebinds V before
    // `V.copy_(V_new)`, so the stored buffer stays zero and momentum never acts there. We keep
    // the intended buffer; with the default momentum 0 both give identical steps.
    buffer = at::matmul(w, xt);
  }
}

}  // namespace respin
