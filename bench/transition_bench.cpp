// ReSpinQuant skip-correction benchmark (docs/methods.md 1.5c): the time of one residual
// transition's rank-r correction, against the full-SVD recipe measured in the same run on the same
// matrices (an SVD of T - I, the polar factor of Q^T T Q, and the exact error's SVD).
//
// Usage: transition_bench [--sizes 512,1024,2048] [--rank 32] [--device cpu|cuda] [--reps R]
//                         [--threads N]
// Each row: D, the baseline's seconds, the correction's seconds with and without the exact error,
// full rank's seconds, and the ratios baseline / new.
#include <ATen/ATen.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <tuple>
#include <vector>

#include "core/rotation/residual_approx.h"
#include "core/util/threads.h"

using namespace respin;

namespace {

double seconds_of(const std::function<void()>& fn, int reps, bool cuda) {
  auto sync = [&] {
    if (cuda) at::zeros({1}, at::TensorOptions().device(at::kCUDA)).cpu();
  };
  fn();
  sync();
  double best = 1e30;
  for (int r = 0; r < reps; ++r) {
    auto t0 = std::chrono::steady_clock::now();
    fn();
    sync();
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  return best;
}

// Two rotations near a shared one, as learned layer-wise bases are (docs/methods.md 1.4).
std::pair<at::Tensor, at::Tensor> near_pair(int64_t d, at::Device device) {
  at::Generator gen = at::detail::createCPUGenerator(d);
  at::Tensor q, r;
  std::tie(q, r) = at::linalg_qr(at::randn({d, d}, gen, at::kDouble), "reduced");
  auto drift = [&] {
    const at::Tensor g = at::randn({d, d}, gen, at::kDouble) * (0.16 / std::sqrt(static_cast<double>(d)));
    return at::linalg_matrix_exp(g - g.t());
  };
  return {at::matmul(q, drift()).to(device), at::matmul(q, drift()).to(device)};
}

// The recipe of a full SVD, as the pipeline computed it before.
double svd_recipe(const at::Tensor& r_in, const at::Tensor& r_out, int64_t rank) {
  const at::Tensor t = at::matmul(r_in.t(), r_out);
  const at::Tensor eye = at::eye(t.size(0), t.options());
  at::Tensor u, s, vh, us, ss, vsh;
  std::tie(u, s, vh) = at::linalg_svd(t - eye, false, c10::nullopt);
  const at::Tensor q = u.narrow(1, 0, rank);
  std::tie(us, ss, vsh) = at::linalg_svd(at::matmul(at::matmul(q.t(), t), q), false, c10::nullopt);
  const at::Tensor th = eye + at::matmul(at::matmul(q, at::matmul(us, vsh) - at::eye(rank, t.options())), q.t());
  return at::linalg_svdvals(t - th).max().item<double>();
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<int64_t> sizes{512, 1024, 2048};
  int64_t rank = 32;
  int reps = 3, threads = 0;
  std::string device = "cpu";
  for (int i = 1; i < argc; ++i) {
    auto next = [&]() -> const char* {
      if (i + 1 >= argc) { std::fprintf(stderr, "error: %s needs a value\n", argv[i]); std::exit(2); }
      return argv[++i];
    };
    if (!std::strcmp(argv[i], "--sizes")) {
      sizes.clear();
      std::string list = next();
      for (size_t p = 0; p <= list.size();) {
        const size_t c = std::min(list.find(',', p), list.size());
        sizes.push_back(std::atoll(list.substr(p, c - p).c_str()));
        p = c + 1;
      }
    } else if (!std::strcmp(argv[i], "--rank")) rank = std::atoll(next());
    else if (!std::strcmp(argv[i], "--reps")) reps = std::atoi(next());
    else if (!std::strcmp(argv[i], "--threads")) threads = std::atoi(next());
    else if (!std::strcmp(argv[i], "--device")) device = next();
    else { std::fprintf(stderr, "usage: transition_bench [--sizes 512,1024] [--rank 32] [--device cpu|cuda] [--reps R] [--threads N]\n"); return 2; }
  }
  set_compute_threads(threads);
  const bool cuda = device == "cuda";
  const at::Device dev = cuda ? at::Device(at::kCUDA) : at::Device(at::kCPU);
  std::printf("device %s, rank %lld, float64, best of %d\n", device.c_str(), static_cast<long long>(rank), reps);
  std::printf("| D | full-SVD recipe s | eigh + exact error s | eigh, S[r] error s | full rank s | recipe / eigh(S[r]) | error diff |\n");
  std::printf("|---|---|---|---|---|---|---|\n");
  for (int64_t d : sizes) {
    const auto p = near_pair(d, dev);
    double base_err = 0, new_err = 0;
    const double base = seconds_of([&] { base_err = svd_recipe(p.first, p.second, rank); }, reps, cuda);
    TransitionOptions exact, cheap;
    cheap.exact_error = false;
    const double with_exact = seconds_of([&] { new_err = approximate_transition(p.first, p.second, rank, exact).spectral_error; }, reps, cuda);
    double cheap_err = 0;
    const double without = seconds_of([&] { cheap_err = approximate_transition(p.first, p.second, rank, cheap).spectral_error; }, reps, cuda);
    const double full = seconds_of([&] { approximate_transition(p.first, p.second, d, cheap); }, reps, cuda);
    std::printf("| %lld | %.3f | %.3f | %.3f | %.5f | %.2fx | %.1e / %.1e |\n", static_cast<long long>(d), base, with_exact,
                without, full, base / without, std::abs(new_err - base_err), std::abs(cheap_err - base_err));
  }
  return 0;
}
