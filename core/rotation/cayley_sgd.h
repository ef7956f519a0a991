// Cayley SGD on the Stiefel manifold: the optimizer SpinQuant and ReSpinQuant use to learn
// rotations (docs/methods.md 2.4). A port of SpinQuant's train_utils/optimizer.py::SGDG (stiefel=True
// branch, after Li et al., "Efficient Riemannian optimization on the Stiefel manifold via the
// Cayley transform") that keeps its exact arithmetic -- row normalization, norm-1 step cap,
// 5 fixed-point iterations instead of an inverse -- so that rotations trained here follow the
// same trajectory as the reference for the same gradients. Only the occasional QR
// re-orthonormalization differs: SGDG draws it at random (probability 1/101 per step); here it is
// deterministic (every qr_every-th step) so runs are reproducible.
//
// Row-vector convention: a parameter X [p, n] (p <= n, usually square) has orthonormal rows; the
// gradient G = dL/dX comes from autograd (or is set by hand in tests).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

namespace respin {

struct CayleySgdOptions {
  double lr = 1.5;        // SpinQuant's rotation-training learning rate (scripts: lr 1.5)
  double momentum = 0.0;  // SGDG default; cayley_sgd.cpp says how the buffer is kept
  // Re-orthonormalize (sign-fixed QR) the parameter before every qr_every-th step (1-based), as
  // SGDG does at random before a step; resets the accumulated defect. 0 = never; 101 matches
  // SGDG's expected rate.
  int64_t qr_every = 0;
  // SGDG's Cayley_loop count. The iteration converges to the exact (orthogonal) Cayley transform
  // but starts from X^T + alpha V with the raw, non-tangent V = -G^T; when G is largely normal to
  // the manifold (outlier-driven or Procrustes-like losses) or every step is at the norm-1 cap,
  // 5 iterations leave ||X X^T - I||_F at 1e-3..1e-1 after a few hundred steps (measured, toy
  // problems); 20 iterations bring it to float32 roundoff. See also retract().
  int fixed_point_iterations = 5;
};

class CayleySgd {
 public:
  // Each parameter: defined, floating point, 2-D [p, n] with p <= n, requires_grad. Parameters
  // are updated in place (their storage is shared with the model that owns them).
  // Throws respin::Error on invalid parameters or options.
  CayleySgd(std::vector<at::Tensor> params, CayleySgdOptions options = {});

  // One Cayley step for every parameter with a defined gradient (others are skipped, as in
  // SGDG). Runs without autograd recording.
  void step();
  // Replaces every parameter by its sign-fixed QR orthonormalization (SGDG's qr_retraction).
  // Call after the last step, before fusing a rotation into weights: the SGDG step is only
  // orthogonal up to its fixed-point truncation.
  void retract();
  // Drops all gradients (set to undefined, so a parameter without a new gradient is skipped).
  void zero_grad();

  const std::vector<at::Tensor>& params() const { return params_; }
  const CayleySgdOptions& options() const { return options_; }
  void set_lr(double lr);  // for schedules (SpinQuant anneals lr with a cosine schedule)
  int64_t step_count() const { return step_count_; }
  // Step size alpha = min(lr, 1 / (||W||_1 + 1e-8)) used per parameter in the last step
  // (0 for parameters skipped); shows when the norm-1 cap rather than lr sets the step. Reads
  // the caps back from the device (the step itself never does).
  std::vector<double> last_alpha() const;

 private:
  std::vector<at::Tensor> params_;
  std::vector<at::Tensor> momentum_;  // [n, p] per parameter, created on first step
  std::vector<at::Tensor> last_cap_;  // 1 / (||W||_1 + eps) per parameter, 0-dim, last step
  CayleySgdOptions options_;
  int64_t step_count_ = 0;
};

}  // namespace respin
