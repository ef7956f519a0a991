// The normalized Hadamard transform x -> x H / sqrt(n) over the last dimension of a tensor, for
// n = K * 2^m (H = H_K (x) H_2^m from hadamard_matrix.h). It is applied as Y = H_K^T X H_2^m on
// X = x reshaped to [..., K, 2^m]: a fast Walsh-Hadamard transform over the 2^m part (log2 passes,
// no n x n matrix) and a small K x K product, so its cost is O(n (log n + K)) per row. This is
// QuaRot's/SpinQuant's online rotation (R3 on Q/K, R4 before down_proj) and the residual init.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

#include <cstdint>
#include <string>

namespace respin {

class HadamardTransform {
 public:
  // Throws respin::Error naming n when no Hadamard construction of order n is known. The
  // transform starts on the CPU; to() places its small K x K core on the device it will run on.
  static HadamardTransform of_size(int64_t n);
  HadamardTransform to(at::Device device) const;
  at::Device device() const { return device_; }

  int64_t size() const { return n_; }
  const std::string& construction() const { return construction_; }
  // x [..., n] -> x H / sqrt(n), same dtype (computed in float32 for reduced precision inputs).
  at::Tensor apply(const at::Tensor& x) const;
  // The inverse, x -> x H^T / sqrt(n) (H is orthogonal after normalization).
  at::Tensor apply_inverse(const at::Tensor& x) const;
  // The dense normalized n x n matrix (float64) on device(), for fusing into weights and tests.
  at::Tensor dense() const;

 private:
  at::Tensor transform(const at::Tensor& x, bool inverse) const;
  int64_t n_ = 0, k_ = 1, m_ = 1;  // n = k_ * m_, m_ a power of two
  at::Tensor core_;                // [k, k] float32 entries +-1 (undefined when k == 1)
  at::Device device_ = at::kCPU;
  std::string construction_;
};

// Fast Walsh-Hadamard transform (unnormalized, Sylvester order) over the last dimension, whose
// size must be a power of two.
at::Tensor fwht(const at::Tensor& x);

}  // namespace respin
