// Method definitions (see methods.h).
#include "core/methods/methods.h"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>

#include <random>

#include "core/rotation/hadamard_transform.h"
#include "core/util/error.h"

namespace respin {

at::Tensor random_hadamard(int64_t n, uint64_t seed) {
  HadamardTransform h = HadamardTransform::of_size(n);
  std::mt19937_64 gen(seed);
  std::vector<double> s(n);
  for (auto& v : s) v = (gen() >> 63) ? 1.0 : -1.0;
  return h.apply(at::diag(at::tensor(s, at::kDouble)));
}

at::Tensor random_orthogonal(int64_t n, uint64_t seed) {
  std::mt19937_64 gen(seed);
  std::normal_distribution<double> normal;
  std::vector<double> g(n * n);
  for (auto& v : g) v = normal(gen);
  auto [q, r] = at::linalg_qr(at::tensor(g, at::kDouble).view({n, n}));
  return q * at::sign(at::diagonal(r)).unsqueeze(0);
}

namespace {

// Seeds of the individual matrices, derived from the run seed.
uint64_t sub_seed(uint64_t seed, uint64_t k) { return seed * 0x9E3779B97F4A7C15ull + 0x632BE59BD9B4E019ull * (k + 1); }

}  // namespace

InitialRotations initial_rotations(Method m, const ModelConfig& c, uint64_t seed, at::Device device) {
  if (!method_rotates(m)) throw Error(std::string("method ") + method_name(m) + " has no rotations");
  c10::NoGradGuard no_grad;
  InitialRotations out;
  const int L = static_cast<int>(c.num_hidden_layers);
  at::Tensor r1;
  try {
    r1 = random_hadamard(c.hidden_size, sub_seed(seed, 0));
    out.residual_init = "random hadamard (" + HadamardTransform::of_size(c.hidden_size).construction() + ")";
  } catch (const Error&) {
    r1 = random_orthogonal(c.hidden_size, sub_seed(seed, 0));
    out.residual_init = "random orthogonal (no Hadamard matrix of order " + std::to_string(c.hidden_size) +
                        " is known)";
  }
  r1 = r1.to(device, at::kFloat);
  std::vector<at::Tensor> heads(L);
  const HadamardTransform head_h = HadamardTransform::of_size(c.head_dim);
  const std::string hc = head_h.construction();
  for (int i = 0; i < L; ++i) {
    if (m == Method::QuaRot) heads[i] = head_h.dense().to(device, at::kFloat);
    else heads[i] = random_hadamard(c.head_dim, sub_seed(seed, 1 + i)).to(device, at::kFloat);
  }
  out.head_init = (m == Method::QuaRot ? "hadamard (" : "random hadamard per layer (") + hc + ")";
  if (m == Method::ReSpin) {
    // Every residual basis starts from the same matrix (docs/methods.md 1.4) but is its own parameter.
    ResidualRotations r;
    for (int i = 0; i < L; ++i) r.attn_in.push_back(r1.clone()), r.mlp_in.push_back(r1.clone());
    r.final_basis = r1.clone();
    r.head = std::move(heads);
    out.rotations = std::move(r);
  } else {
    out.rotations = ResidualRotations::global(r1, std::move(heads), L);
  }
  return out;
}

OnlineTransforms method_online_transforms(Method m, const QuantConfig& quant) {
  OnlineTransforms t;
  if (!method_rotates(m)) return t;
  t.qk_hadamard = quant.kv.enabled();
  t.down_hadamard = true;
  t.heads_hadamard = m == Method::QuaRot;
  return t;
}

int64_t method_o_proj_group(Method m, const ModelConfig& c) {
  return (m == Method::SpinQuant || m == Method::ReSpin) ? c.head_dim : 0;
}

}  // namespace respin
