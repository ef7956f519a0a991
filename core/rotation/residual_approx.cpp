// Rank-r residual transition approximation (see residual_approx.h and docs/methods.md 1.5/1.5b).
#include "core/rotation/residual_approx.h"

#include <ATen/ATen.h>

#include <cmath>
#include <string>
#include <tuple>

#include "core/util/error.h"
#include "core/util/tensor_text.h"

namespace respin {
namespace {

void check_rotation(const at::Tensor& r, const char* name) {
  if (!r.defined()) throw Error(std::string(name) + " is undefined");
  if (r.dim() != 2 || r.size(0) != r.size(1))
    throw Error(std::string(name) + " must be a square [D, D] matrix, got " + shape_text(r));
  if (!at::isFloatingType(r.scalar_type()))
    throw Error(std::string(name) + " must be a floating-point tensor");
}

// Lower estimate of ||A||_2 for symmetric A by power iteration from a fixed, non-special start
// vector (deterministic, so split_pair is reproducible). Only used to widen the tie tolerance by
// the input's orthogonality defect, where a factor-of-2 underestimate is harmless. The iterate is
// normalised on the device; one value is read back at the end (no sync per iteration).
double symmetric_norm_estimate(const at::Tensor& a) {
  const int64_t n = a.size(0);
  at::Tensor v = at::sin(at::arange(1, n + 1, a.options()) * 0.7071) + 0.1;
  v = v / v.norm();
  at::Tensor estimate = at::zeros({}, a.options());
  for (int it = 0; it < 30; ++it) {
    const at::Tensor w = at::matmul(a, v);
    estimate = w.norm();
    // A zero matrix leaves v at zero: its norm estimate is 0, as it should be.
    v = w / at::clamp_min(estimate, 1e-300);
  }
  return estimate.item<double>();
}

}  // namespace

at::Tensor transition_matrix(const at::Tensor& r_in, const at::Tensor& r_out) {
  check_rotation(r_in, "residual transition: r_in");
  check_rotation(r_out, "residual transition: r_out");
  if (r_in.size(0) != r_out.size(0))
    throw Error("residual transition: r_in " + shape_text(r_in) + " and r_out " +
                shape_text(r_out) + " differ in size");
  const at::Tensor a = r_in.to(at::kDouble);
  const at::Tensor b = r_out.to(a.device(), at::kDouble);
  // Row form: h~_in = h R_in, h~_out = h R_out, so h~_out = h~_in R_in^T R_out.
  return at::matmul(a.t(), b);
}

// Everything runs in float64 on r_in's device (docs/methods.md 1.5c):
//  - rank D: T_hat = T, so no decomposition at all (q = I, m = T - I; the error is 0 by
//    construction).
//  - 0 <= rank < D: the left singular vectors of A = T - I are the eigenvectors of the symmetric
//    A A^T (one symmetric eigendecomposition, several times cheaper than an SVD and on the
//    device); the singular values are read as ||A^T u_k|| (accurate also for tiny angles, where
//    sqrt of an eigenvalue of A A^T would lose half the digits). T_hat depends only on span(Q),
//    so this gives today's correction whenever the cut is not inside a tie.
ResidualCorrection approximate_transition(const at::Tensor& r_in, const at::Tensor& r_out,
                                          int64_t rank, const TransitionOptions& options) {
  const at::Tensor t = transition_matrix(r_in, r_out);
  const int64_t d = t.size(0);
  if (rank < 0 || rank > d)
    throw Error("approximate_transition: rank " + std::to_string(rank) + " outside [0, " +
                std::to_string(d) + "]");
  if (!(options.tie_tolerance >= 0.0))
    throw Error("approximate_transition: tie_tolerance must be >= 0");

  const at::Tensor eye = at::eye(d, t.options());
  ResidualCorrection out;
  out.rank = rank;
  if (rank == d) {
    out.q = eye;
    out.m = t - eye;
    out.spectral_error = 0.0;
    return out;
  }

  const at::Tensor a = t - eye;
  at::Tensor lambda, vectors;
  std::tie(lambda, vectors) = at::linalg_eigh(at::matmul(a, a.t()), "L");  // ascending
  const at::Tensor u = vectors.flip({1});                                   // descending
  // ||A^T u_k||: the k-th singular value; sorted again so ties computed in a different order
  // than the eigenvalues still read descending.
  at::Tensor s, order;
  std::tie(s, order) = at::matmul(a.t(), u).norm(2, {0}).sort(/*dim=*/0, /*descending=*/true);
  const at::Tensor q_all = u.index_select(1, order);
  out.singular_values = s;
  out.q = q_all.narrow(1, 0, rank).contiguous();
  if (rank > 0) {
    const at::Tensor t_sub = at::matmul(at::matmul(out.q.t(), t), out.q);
    // For orthogonal T and an untied cut, t_sub is already orthogonal; the polar factor removes
    // float noise and, for a split pair or a non-orthogonal input, gives the closest rotation so
    // T_hat stays exactly orthogonal (the skip path must not scale the residual).
    at::Tensor us, ss, vsh;
    std::tie(us, ss, vsh) = at::linalg_svd(t_sub, /*full_matrices=*/false, c10::nullopt);
    out.m = at::matmul(us, vsh) - at::eye(rank, t.options());
  } else {
    out.m = at::zeros({0, 0}, t.options());
  }

  // The values the decisions below need, read back once.
  const at::Tensor cut = s.narrow(0, std::max<int64_t>(rank - 1, 0), rank > 0 ? 2 : 1).to(at::kCPU);
  if (rank > 0) {
    // A real matrix's eigenvalues come in exact conjugate pairs, but the singular values of
    // T - I equal |lambda - 1| (and so tie exactly) only for orthogonal T. Float32-trained
    // rotations are orthogonal to ~1e-7, which moves singular values by up to ||T^T T - I||_2
    // (Weyl), far beyond a 1e-9 relative gap; widen the tolerance by that much so the flag
    // still fires for them.
    const double defect = symmetric_norm_estimate(at::matmul(t.t(), t) - eye);
    const double above = cut[0].item<double>();
    const double below = cut[1].item<double>();
    const double slack = 4.0 * defect;
    // Cuts among (numerically) zero angles discard nothing, so they are not reported.
    const bool zero_cluster = above <= slack + 1e-12;
    out.split_pair = !zero_cluster && (above - below) <= options.tie_tolerance * above + slack;
  }

  if (options.exact_error) {
    const at::Tensor residual = t - dense_transition(out);
    out.spectral_error = at::linalg_svdvals(residual).max().item<double>();
  } else {
    out.spectral_error = cut[rank > 0 ? 1 : 0].item<double>();
  }
  return out;
}

at::Tensor apply_correction(const at::Tensor& h, const ResidualCorrection& correction) {
  if (!correction.q.defined() || !correction.m.defined())
    throw Error("apply_correction: correction has no q/m (not built by approximate_transition)");
  if (correction.q.dim() != 2 || correction.m.dim() != 2 ||
      correction.m.size(0) != correction.q.size(1) || correction.m.size(1) != correction.q.size(1))
    throw Error("apply_correction: q must be [D, r] and m [r, r]");
  const int64_t d = correction.q.size(0);
  const int64_t r = correction.q.size(1);
  if (!h.defined() || h.dim() < 1 || h.size(-1) != d)
    throw Error("apply_correction: expected h [..., " + std::to_string(d) + "], got " +
                (h.defined() ? shape_text(h) : std::string("undefined")));
  if (!at::isFloatingType(h.scalar_type()))
    throw Error("apply_correction: h must be a floating-point tensor");
  if (r == 0) return h;
  // Low-precision activations: do the two thin matmuls and the add in float32 and round once,
  // so the skip path (kept in full precision by all these methods) loses no more than one cast.
  const at::ScalarType work = c10::elementSize(h.scalar_type()) >= 4 ? h.scalar_type() : at::kFloat;
  const at::Tensor x = h.to(work);
  const at::Tensor q = correction.q.to(h.device(), work);
  const at::Tensor m = correction.m.to(h.device(), work);
  // Never materialize D x D: [.., D] x [D, r] -> x [r, r] -> x [r, D].
  const at::Tensor z = at::matmul(at::matmul(x, q), m);
  return at::addmm(x.reshape({-1, d}), z.reshape({-1, r}), q.t())
      .reshape(h.sizes())
      .to(h.scalar_type());
}

at::Tensor dense_transition(const ResidualCorrection& correction) {
  if (!correction.q.defined() || !correction.m.defined())
    throw Error("dense_transition: correction has no q/m (not built by approximate_transition)");
  const at::Tensor q = correction.q.to(at::kDouble);
  const at::Tensor m = correction.m.to(q.device(), at::kDouble);
  return at::eye(q.size(0), q.options()) + at::matmul(at::matmul(q, m), q.t());
}

}  // namespace respin
