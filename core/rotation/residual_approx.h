// Rank-r approximation of ReSpinQuant's residual transition (docs/methods.md 1.5/1.5b), row-vector form.
//
// With layer-wise residual rotations the skip path of each residual add has to change basis:
// h~_out = h~_in T_row with T_row = R_in^T R_out (rotations act from the right, y = x W^T). A dense
// D x D product per token costs as much as a linear layer, so T_row is replaced by an orthogonal
// matrix that rotates only an r-dimensional subspace and is the identity elsewhere:
//   T_hat = I + Q M Q^T,   Q = top-r left singular vectors of (T_row - I),
//                          M = polar(Q^T T_row Q) - I_r,
// applied online as h + ((h Q) M) Q^T for 2 r D + r^2 MACs per token. Everything offline is done
// in float64 because the quantities of interest (T_row - I) are small differences of O(1) numbers.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace respin {

struct ResidualCorrection {
  at::Tensor q;  // [D, r] float64, orthonormal columns spanning the rotated subspace
  at::Tensor m;  // [r, r] float64, R_sub - I_r
  int64_t rank = 0;
  // ||T_row - T_hat||_2 (largest singular value of the residual; exact when computed, see
  // TransitionOptions::exact_error).
  double spectral_error = 0.0;
  // True when the rank cuts through a tie of singular values of T_row - I (relative gap below
  // TransitionOptions::tie_tolerance, widened by how far T_row is from orthogonal). For orthogonal
  // T_row the eigenvalues e^{+-i theta} give equal singular values |e^{i theta} - 1| in pairs, so
  // an odd rank usually splits a pair: span(Q) is then not invariant under T_row and T_hat is a
  // worse approximation than rank - 1 would suggest. Reported, never "fixed" by changing the rank.
  bool split_pair = false;
  // All D singular values of T_row - I, descending (float64); the predicted error of rank k is
  // singular_values[k], so callers can pick a rank without recomputing the decomposition.
  // Undefined at rank D, where no decomposition is made (T_hat = T).
  at::Tensor singular_values;
};

struct TransitionOptions {
  // Relative gap (s[r-1] - s[r]) / s[r-1] below which two singular values count as tied.
  double tie_tolerance = 1e-9;
  // true: spectral_error = ||T_row - T_hat||_2 from an extra SVD (O(D^3), seconds at D = 4096;
  // 0 at rank D without one, T_hat being T).
  // false: use singular_values[rank], which equals the true error when span(Q) is an invariant
  // subspace (docs/methods.md 1.5b) -- i.e. T_row orthogonal and no split pair.
  bool exact_error = true;
};

// r_in, r_out: [D, D] rotations (any floating dtype/device; converted to float64 and computed on
// r_in's device: docs/methods.md 1.5, 1.5c). rank in [0, D]; rank D makes no decomposition.
// Throws respin::Error on bad shapes or rank.
ResidualCorrection approximate_transition(const at::Tensor& r_in, const at::Tensor& r_out,
                                          int64_t rank, const TransitionOptions& options = {});

// T_row = R_in^T R_out in float64 (the exact skip-path transition, for tests and analysis).
at::Tensor transition_matrix(const at::Tensor& r_in, const at::Tensor& r_out);

// h [..., D] -> h + ((h Q) M) Q^T = h T_hat, returned in h's dtype and on h's device. Half and
// bfloat16 inputs are corrected in float32 and rounded once at the end. Rank 0 returns h itself.
// q/m are converted to the working dtype/device on every call (a no-op when they already match):
// for a hot loop, store the correction pre-cast, e.g. q = q.to(device, at::kFloat).
at::Tensor apply_correction(const at::Tensor& h, const ResidualCorrection& correction);

// T_hat = I + Q M Q^T as a dense [D, D] float64 matrix (tests/analysis; never needed online).
at::Tensor dense_transition(const ResidualCorrection& correction);

}  // namespace respin
