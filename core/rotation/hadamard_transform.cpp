// Online Hadamard transform for K * 2^m sizes (see hadamard_transform.h).
#include "core/rotation/hadamard_transform.h"

#include <ATen/ATen.h>

#include <cmath>

#include "core/rotation/hadamard_matrix.h"
#include "core/util/error.h"

namespace respin {

at::Tensor fwht(const at::Tensor& x) {
  const int64_t n = x.size(-1);
  if (n <= 0 || (n & (n - 1)) != 0) throw Error("fwht: size " + std::to_string(n) + " is not a power of two");
  const auto lead = x.sizes().slice(0, x.dim() - 1).vec();
  at::Tensor y = x.reshape({-1, n});
  for (int64_t h = 1; h < n; h *= 2) {
    at::Tensor v = y.view({y.size(0), n / (2 * h), 2, h});
    at::Tensor a = v.select(2, 0), b = v.select(2, 1);
    y = at::stack({a + b, a - b}, 2).reshape({-1, n});
  }
  std::vector<int64_t> shape = lead;
  shape.push_back(n);
  return y.reshape(shape);
}

HadamardTransform HadamardTransform::of_size(int64_t n) {
  if (n < 1 || n > (1 << 20)) throw Error("Hadamard transform size " + std::to_string(n) + " is out of range");
  HadamardTransform t;
  t.n_ = n;
  t.m_ = n & -n;  // largest power of two dividing n
  t.k_ = n / t.m_;
  // hadamard_construction puts the largest possible Sylvester factor last; if the odd part alone
  // has no construction, a core of order k * 2^j (j >= 1) is needed instead.
  while (t.k_ > 1 && !hadamard_constructible(static_cast<int>(t.k_)) && t.m_ > 1) {
    t.k_ *= 2;
    t.m_ /= 2;
  }
  if (t.k_ > 1) {
    std::optional<HadamardMatrix> h = t.k_ <= 32768 ? hadamard_matrix(static_cast<int>(t.k_)) : std::nullopt;
    if (!h) throw Error("no Hadamard matrix of order " + std::to_string(n) + " is known (odd part " +
                        std::to_string(n / (n & -n)) + ")");
    std::vector<float> entries(h->entries.begin(), h->entries.end());
    t.core_ = at::tensor(entries).view({t.k_, t.k_});
    t.construction_ = h->construction + (t.m_ > 1 ? " x sylvester(" + std::to_string(t.m_) + ")" : "");
  } else {
    t.construction_ = "sylvester(" + std::to_string(n) + ")";
  }
  return t;
}

HadamardTransform HadamardTransform::to(at::Device device) const {
  HadamardTransform t = *this;
  t.device_ = device;
  if (core_.defined()) t.core_ = core_.to(device);
  return t;
}

at::Tensor HadamardTransform::transform(const at::Tensor& x, bool inverse) const {
  if (x.size(-1) != n_)
    throw Error("Hadamard transform of size " + std::to_string(n_) + " applied to a last dimension of " +
                std::to_string(x.size(-1)));
  const at::ScalarType out_type = x.scalar_type();
  at::Tensor xf = (out_type == at::kDouble) ? x : x.to(at::kFloat);
  at::Tensor v = xf.reshape({-1, k_, m_});
  if (m_ > 1) v = fwht(v);  // the Sylvester factor is symmetric: same for the inverse
  if (k_ > 1) {
    // A no-op when the transform was placed on x's device (to()); otherwise a small copy.
    at::Tensor core = core_.to(v.device(), v.scalar_type());
    // Row-vector form: Y = H_K^T X (forward) or H_K X (inverse, H^T) on X = [k, m].
    v = at::matmul(inverse ? core : core.t(), v);
  }
  return (v.reshape(x.sizes()) / std::sqrt(static_cast<double>(n_))).to(out_type);
}

at::Tensor HadamardTransform::apply(const at::Tensor& x) const { return transform(x, false); }
at::Tensor HadamardTransform::apply_inverse(const at::Tensor& x) const { return transform(x, true); }

at::Tensor HadamardTransform::dense() const {
  return apply(at::eye(n_, at::TensorOptions().dtype(at::kDouble).device(device_)));
}

}  // namespace respin
