// core/rotation torch parts: the rank-r residual-transition approximation (docs/methods.md 1.5/1.5b)
// checked against the dense transition and against the eigen-angle error formula on
// near-Hadamard rotations, and Cayley SGD (docs/methods.md 2.4) checked against a hand-written float64
// application of SGDG's formulas plus three toy problems (orthogonality under large steps,
// Procrustes fit, outlier spreading).
#include <ATen/ATen.h>
#include <c10/core/GradMode.h>
#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <vector>

#include "core/rotation/cayley_sgd.h"
#include "core/rotation/residual_approx.h"
#include "core/util/error.h"

using namespace respin;

namespace {

at::Tensor sylvester_hadamard(int64_t n) {  // normalized, n a power of two
  at::Tensor h = at::ones({1, 1}, at::kDouble);
  while (h.size(0) < n) h = at::cat({at::cat({h, h}, 1), at::cat({h, -h}, 1)}, 0);
  return h / std::sqrt(static_cast<double>(n));
}

at::Tensor random_skew(int64_t n, double scale, at::Generator& gen) {
  const at::Tensor g = at::randn({n, n}, gen, at::kDouble);
  return (g - g.t()) * (scale / std::sqrt(2.0));
}

// A random rotation (det +1) from the sign-fixed QR of a Gaussian.
at::Tensor random_rotation(int64_t n, at::Generator& gen) {
  at::Tensor q, r;
  std::tie(q, r) = at::linalg_qr(at::randn({n, n}, gen, at::kDouble), "reduced");
  q = q * at::sign(at::diagonal(r)).unsqueeze(0);
  if (at::linalg_det(q).item<double>() < 0) q.select(1, 0).neg_();
  return q;
}

// The setting of docs/methods.md 1.4: both bases start at the same Hadamard and drift a little.
struct RotationPair {
  at::Tensor r_in, r_out;
};
RotationPair near_hadamard_pair(int64_t d, double scale, uint64_t seed) {
  at::Generator gen = at::detail::createCPUGenerator(seed);
  const at::Tensor h = sylvester_hadamard(d);
  return {at::matmul(h, at::linalg_matrix_exp(random_skew(d, scale, gen))),
          at::matmul(h, at::linalg_matrix_exp(random_skew(d, scale, gen)))};
}

double max_abs(const at::Tensor& t) { return t.abs().max().item<double>(); }
double spectral_norm(const at::Tensor& t) { return at::linalg_svdvals(t).max().item<double>(); }

constexpr int64_t kD = 64;
constexpr double kScale = 0.02;  // rotation angles up to ~0.3 rad at D = 64

}  // namespace

// ---------------------------------------------------------------- residual approximation

TEST(ResidualApprox, FullRankReproducesDenseTransition) {
  const RotationPair p = near_hadamard_pair(kD, kScale, 1);
  const at::Tensor t = at::matmul(p.r_in.t(), p.r_out);
  const ResidualCorrection c = approximate_transition(p.r_in, p.r_out, kD);
  EXPECT_EQ(c.rank, kD);
  EXPECT_EQ(c.q.sizes(), (std::vector<int64_t>{kD, kD}));
  EXPECT_EQ(c.q.scalar_type(), at::kDouble);
  EXPECT_LT(c.spectral_error, 1e-12);
  EXPECT_FALSE(c.split_pair);
  EXPECT_LT(max_abs(dense_transition(c) - t), 1e-12);
  EXPECT_LT(max_abs(transition_matrix(p.r_in, p.r_out) - t), 1e-15);

  at::Generator gen = at::detail::createCPUGenerator(7);
  const at::Tensor h = at::randn({3, 5, kD}, gen, at::kDouble);
  const at::Tensor got = apply_correction(h, c);
  EXPECT_EQ(got.sizes(), h.sizes());
  EXPECT_LT(max_abs(got - at::matmul(h, t)), 1e-10);
}

TEST(ResidualApprox, ErrorFallsMonotonicallyWithRank) {
  const RotationPair p = near_hadamard_pair(kD, kScale, 2);
  const at::Tensor t = at::matmul(p.r_in.t(), p.r_out);
  const double full = spectral_norm(t - at::eye(kD, at::kDouble));
  double previous = 1e300;
  std::printf("  D=%lld scale=%.3g  ||T-I||_2=%.4g  ||T-I||_F=%.4g\n  rank : spectral_error\n",
              static_cast<long long>(kD), kScale, full,
              (t - at::eye(kD, at::kDouble)).norm().item<double>());
  for (int64_t r = 0; r <= kD; r += 2) {
    const ResidualCorrection c = approximate_transition(p.r_in, p.r_out, r);
    if (r % 8 == 0) std::printf("  %4lld : %.4e\n", static_cast<long long>(r), c.spectral_error);
    EXPECT_LE(c.spectral_error, previous + 1e-12) << "rank " << r;
    EXPECT_FALSE(c.split_pair) << "rank " << r;
    // The cheap estimate (singular value just past the cut) is the exact error here.
    if (r < kD) {
      EXPECT_NEAR(c.spectral_error, c.singular_values[r].item<double>(), 1e-10);
    }
    previous = c.spectral_error;
    if (r == 0) {
      EXPECT_NEAR(c.spectral_error, full, 1e-12);
    }
  }
  EXPECT_LT(previous, 1e-12);
  EXPECT_LT(approximate_transition(p.r_in, p.r_out, 32).spectral_error, 0.5 * full);
}

TEST(ResidualApprox, ApproximationIsOrthogonalAtEveryRank) {
  const RotationPair p = near_hadamard_pair(kD, kScale, 3);
  const at::Tensor eye = at::eye(kD, at::kDouble);
  for (int64_t r : {1, 2, 7, 16, 31, 32, 33, 63, 64}) {
    const at::Tensor th = dense_transition(approximate_transition(p.r_in, p.r_out, r));
    EXPECT_LT((at::matmul(th, th.t()) - eye).norm().item<double>(), 1e-10) << "rank " << r;
  }
}

TEST(ResidualApprox, RankZeroIsIdentity) {
  const RotationPair p = near_hadamard_pair(kD, kScale, 4);
  const ResidualCorrection c = approximate_transition(p.r_in, p.r_out, 0);
  EXPECT_EQ(c.q.sizes(), (std::vector<int64_t>{kD, 0}));
  EXPECT_EQ(c.m.sizes(), (std::vector<int64_t>{0, 0}));
  EXPECT_FALSE(c.split_pair);
  EXPECT_TRUE(at::equal(dense_transition(c), at::eye(kD, at::kDouble)));
  const at::Tensor h = at::randn({2, 3, kD});
  EXPECT_TRUE(at::equal(apply_correction(h, c), h));
  const at::Tensor t = at::matmul(p.r_in.t(), p.r_out);
  EXPECT_NEAR(c.spectral_error, spectral_norm(t - at::eye(kD, at::kDouble)), 1e-12);
}

TEST(ResidualApprox, SpectralErrorIsLargestDiscardedEigenAngle) {
  // docs/methods.md 1.5b: ||T - T_hat||_2 = max over discarded eigenvalues e^{i theta} of
  // |e^{i theta} - 1| = 2 sin(|theta| / 2); compute the angles independently with eigvals.
  const RotationPair p = near_hadamard_pair(kD, 0.05, 5);
  const at::Tensor t = at::matmul(p.r_in.t(), p.r_out);
  const at::Tensor lambda = at::linalg_eigvals(t);
  EXPECT_LT(max_abs(at::abs(lambda) - 1.0), 1e-12);
  const at::Tensor theta = at::angle(lambda).abs();
  const at::Tensor chord =
      std::get<0>(at::sort(2.0 * at::sin(theta / 2.0), 0, /*descending=*/true));
  EXPECT_LT(max_abs(at::abs(lambda - 1.0) - 2.0 * at::sin(theta / 2.0)), 1e-12);
  for (int64_t r = 0; r < kD; r += 2) {
    const ResidualCorrection c = approximate_transition(p.r_in, p.r_out, r);
    EXPECT_NEAR(c.spectral_error, chord[r].item<double>(), 1e-10) << "rank " << r;
  }
  const ResidualCorrection c = approximate_transition(p.r_in, p.r_out, 8);
  EXPECT_LT(max_abs(c.singular_values - chord), 1e-10);
}

TEST(ResidualApprox, MatchesTheFullSvdOfTToday) {
  // docs/methods.md 1.5c: the eigendecomposition of (T - I)(T - I)^T must give what the recipe of
  // 1.5 gives from a float64 SVD of T - I (computed here independently): the same T_hat, the same
  // singular values and the same exact errors. Exactly orthogonal bases (float64) and float32
  // bases, whose T is orthogonal only to ~1e-7; D = 64 and a non-power-of-two D = 48.
  for (int64_t d : {int64_t{64}, int64_t{48}}) {
    at::Generator gen = at::detail::createCPUGenerator(21 + d);
    const at::Tensor base = random_rotation(d, gen);
    const at::Tensor r_in64 = at::matmul(base, at::linalg_matrix_exp(random_skew(d, kScale, gen)));
    const at::Tensor r_out64 = at::matmul(base, at::linalg_matrix_exp(random_skew(d, kScale, gen)));
    for (bool f32 : {false, true}) {
      const at::Tensor r_in = f32 ? r_in64.to(at::kFloat) : r_in64;
      const at::Tensor r_out = f32 ? r_out64.to(at::kFloat) : r_out64;
      const at::Tensor t = at::matmul(r_in.to(at::kDouble).t(), r_out.to(at::kDouble));
      const at::Tensor eye = at::eye(d, at::kDouble);
      at::Tensor u, s, vh;
      std::tie(u, s, vh) = at::linalg_svd(t - eye, false, c10::nullopt);
      for (int64_t r : {int64_t{0}, int64_t{2}, int64_t{8}, int64_t{16}, int64_t{32}, d - 2}) {
        const ResidualCorrection c = approximate_transition(r_in, r_out, r);
        ASSERT_FALSE(c.split_pair) << "d " << d << " rank " << r << " f32 " << f32;
        EXPECT_LT(max_abs(c.singular_values - s), 1e-12) << "d " << d << " rank " << r;
        // Today's Q from the SVD, and its T_hat.
        const at::Tensor q = u.narrow(1, 0, r);
        at::Tensor want = eye;
        if (r > 0) {
          at::Tensor us, ss, vsh;
          std::tie(us, ss, vsh) = at::linalg_svd(at::matmul(at::matmul(q.t(), t), q), false, c10::nullopt);
          want = eye + at::matmul(at::matmul(q, at::matmul(us, vsh) - at::eye(r, at::kDouble)), q.t());
        }
        const at::Tensor got = dense_transition(c);
        EXPECT_LT(max_abs(got - want), 1e-10) << "d " << d << " rank " << r << " f32 " << f32;
        // span(Q) equals the SVD's: the projectors agree.
        EXPECT_LT(max_abs(at::matmul(c.q, c.q.t()) - at::matmul(q, q.t())), 1e-9) << "d " << d << " rank " << r;
        EXPECT_NEAR(c.spectral_error, at::linalg_svdvals(t - want).max().item<double>(), 1e-12)
            << "d " << d << " rank " << r << " f32 " << f32;
        // The cheap error is the first discarded singular value, to the orthogonality defect.
        TransitionOptions cheap;
        cheap.exact_error = false;
        const ResidualCorrection e = approximate_transition(r_in, r_out, r, cheap);
        EXPECT_EQ(e.spectral_error, e.singular_values[r].item<double>());
        EXPECT_NEAR(e.spectral_error, c.spectral_error, f32 ? 1e-6 : 1e-12) << "d " << d << " rank " << r;
      }
      // Full rank: no decomposition, T_hat is T itself and the error 0.
      const ResidualCorrection full = approximate_transition(r_in, r_out, d);
      EXPECT_FALSE(full.singular_values.defined());
      EXPECT_TRUE(at::equal(full.q, eye));
      EXPECT_LT(max_abs(dense_transition(full) - t), 1e-15);
      EXPECT_EQ(full.spectral_error, 0.0);
    }
  }
}

TEST(ResidualApprox, ReportsSplitConjugatePairs) {
  // Eigenvalues come in pairs e^{+-i theta} with equal singular values of T - I: an odd rank cuts
  // a pair. Also for float32 inputs, whose T is orthogonal only to ~1e-7.
  const RotationPair p = near_hadamard_pair(kD, kScale, 6);
  for (bool f32 : {false, true}) {
    const at::Tensor a = f32 ? p.r_in.to(at::kFloat) : p.r_in;
    const at::Tensor b = f32 ? p.r_out.to(at::kFloat) : p.r_out;
    for (int64_t r : {1, 5, 31, 33}) {
      const ResidualCorrection c = approximate_transition(a, b, r);
      EXPECT_TRUE(c.split_pair) << "rank " << r << " f32 " << f32;
      EXPECT_EQ(c.rank, r);  // reported, not changed
      // Splitting a pair makes the cut no better than the rank below it.
      EXPECT_GE(c.spectral_error, c.singular_values[r - 1].item<double>() * (1 - 1e-6));
    }
    for (int64_t r : {2, 6, 32}) {
      const ResidualCorrection c = approximate_transition(a, b, r);
      EXPECT_FALSE(c.split_pair) << "rank " << r << " f32 " << f32;
    }
  }
  // T = I: every singular value is zero, nothing to split.
  const ResidualCorrection same = approximate_transition(p.r_in, p.r_in, 3);
  EXPECT_FALSE(same.split_pair);
  EXPECT_LT(same.spectral_error, 1e-12);
}

TEST(ResidualApprox, ApplyMatchesDenseForBatchedFloat32) {
  const RotationPair p = near_hadamard_pair(kD, kScale, 8);
  const ResidualCorrection c =
      approximate_transition(p.r_in.to(at::kFloat), p.r_out.to(at::kFloat), 32);
  at::Generator gen = at::detail::createCPUGenerator(9);
  const at::Tensor h = at::randn({4, 7, kD}, gen, at::kFloat) * 3.0;
  const at::Tensor got = apply_correction(h, c);
  ASSERT_EQ(got.scalar_type(), at::kFloat);
  ASSERT_EQ(got.sizes(), h.sizes());
  const at::Tensor want = at::matmul(h.to(at::kDouble), dense_transition(c));
  EXPECT_LT(max_abs(got.to(at::kDouble) - want), 1e-5 * max_abs(want));

  // Non-contiguous input and bfloat16 (corrected in float32, rounded once).
  const at::Tensor ht = h.transpose(0, 1);
  EXPECT_LT(max_abs(apply_correction(ht, c) - apply_correction(ht.contiguous(), c)), 1e-6);
  const at::Tensor hb = h.to(at::kBFloat16);
  const at::Tensor gb = apply_correction(hb, c);
  EXPECT_EQ(gb.scalar_type(), at::kBFloat16);
  const at::Tensor wb = at::matmul(hb.to(at::kDouble), dense_transition(c));
  EXPECT_LT(max_abs(gb.to(at::kDouble) - wb), 1e-2 * max_abs(wb));
}

TEST(ResidualApprox, RejectsBadInput) {
  const at::Tensor r = at::eye(8, at::kDouble);
  EXPECT_THROW(approximate_transition(r, at::eye(4, at::kDouble), 2), Error);
  EXPECT_THROW(approximate_transition(r, at::zeros({8, 4}, at::kDouble), 2), Error);
  EXPECT_THROW(approximate_transition(r, r, -1), Error);
  EXPECT_THROW(approximate_transition(r, r, 9), Error);
  EXPECT_THROW(approximate_transition(r, at::eye(8, at::kLong), 2), Error);
  EXPECT_THROW(approximate_transition(at::Tensor(), r, 2), Error);
  const ResidualCorrection c = approximate_transition(r, r, 2);
  EXPECT_THROW(apply_correction(at::zeros({3, 7}), c), Error);
  EXPECT_THROW(apply_correction(at::zeros({3, 8}, at::kLong), c), Error);
  EXPECT_THROW(dense_transition(ResidualCorrection{}), Error);
}

// ---------------------------------------------------------------- Cayley SGD

namespace {

// Plain row-major matrices for the hand-written reference (no ATen in the arithmetic).
using Mat = std::vector<std::vector<double>>;
Mat to_mat(const at::Tensor& t) {
  const at::Tensor c = t.to(at::kDouble).contiguous();
  Mat m(c.size(0), std::vector<double>(c.size(1)));
  for (int64_t i = 0; i < c.size(0); ++i)
    for (int64_t j = 0; j < c.size(1); ++j) m[i][j] = c[i][j].item<double>();
  return m;
}
Mat mm(const Mat& a, const Mat& b) {
  Mat c(a.size(), std::vector<double>(b[0].size(), 0.0));
  for (size_t i = 0; i < a.size(); ++i)
    for (size_t k = 0; k < b.size(); ++k)
      for (size_t j = 0; j < b[0].size(); ++j) c[i][j] += a[i][k] * b[k][j];
  return c;
}
Mat tr(const Mat& a) {
  Mat c(a[0].size(), std::vector<double>(a.size()));
  for (size_t i = 0; i < a.size(); ++i)
    for (size_t j = 0; j < a[0].size(); ++j) c[j][i] = a[i][j];
  return c;
}
Mat lin(double s, const Mat& a, double u, const Mat& b) {  // s a + u b
  Mat c = a;
  for (size_t i = 0; i < a.size(); ++i)
    for (size_t j = 0; j < a[0].size(); ++j) c[i][j] = s * a[i][j] + u * b[i][j];
  return c;
}

// One SGDG step (stiefel branch, no QR), transcribed from docs/methods.md 2.4 / optimizer.py.
// Returns the new X; updates the momentum buffer v_buf ([n, p]) and reports alpha.
Mat sgdg_reference(Mat x, const Mat& g, double lr, double momentum, Mat& v_buf, double& alpha) {
  for (auto& row : x) {  // unit(): rows divided by (norm + 1e-8)
    double s = 0;
    for (double e : row) s += e * e;
    for (double& e : row) e /= std::sqrt(s) + 1e-8;
  }
  const Mat v = lin(momentum, v_buf, -1.0, tr(g));
  const Mat mx = mm(v, x);
  const Mat xxmx = mm(tr(x), mm(x, mx));
  const Mat w_hat = lin(1.0, mx, -0.5, xxmx);
  const Mat w = lin(1.0, w_hat, -1.0, tr(w_hat));
  double norm1 = 0;  // max column abs sum
  for (size_t j = 0; j < w[0].size(); ++j) {
    double s = 0;
    for (size_t i = 0; i < w.size(); ++i) s += std::fabs(w[i][j]);
    norm1 = std::max(norm1, s);
  }
  alpha = std::min(0.5 * 2 / (norm1 + 1e-8), lr);
  const Mat xt = tr(x);
  Mat y = lin(1.0, xt, alpha, v);
  for (int i = 0; i < 5; ++i) y = lin(1.0, xt, alpha, mm(w, lin(0.5, xt, 0.5, y)));
  v_buf = mm(w, xt);
  return tr(y);
}

double mat_max_diff(const at::Tensor& t, const Mat& m) {
  double d = 0;
  const Mat a = to_mat(t);
  for (size_t i = 0; i < m.size(); ++i)
    for (size_t j = 0; j < m[0].size(); ++j) d = std::max(d, std::fabs(a[i][j] - m[i][j]));
  return d;
}

double orthogonality_defect(const at::Tensor& r) {
  const at::Tensor rd = r.detach().to(at::kDouble);
  return (at::matmul(rd, rd.t()) - at::eye(r.size(0), at::kDouble)).norm().item<double>();
}

at::Tensor leaf(const at::Tensor& t) {
  at::Tensor p = t.detach().clone();
  p.set_requires_grad(true);
  return p;
}

}  // namespace

TEST(CayleySgd, OneStepMatchesHandComputedSgdg) {
  at::Generator gen = at::detail::createCPUGenerator(11);
  // Rows scaled by 1.01 so the row normalization is exercised, not a no-op.
  const at::Tensor x0 = random_rotation(4, gen) * 1.01;
  const at::Tensor g1 = at::randn({4, 4}, gen, at::kDouble);
  const at::Tensor g2 = at::randn({4, 4}, gen, at::kDouble);
  // lr 0.05: alpha = lr; lr 100: alpha = the norm-1 cap. Momentum 0.9 exercises the buffer.
  for (double lr : {0.05, 100.0}) {
    for (double momentum : {0.0, 0.9}) {
      at::Tensor p = leaf(x0);
      CayleySgd opt({p}, {lr, momentum});
      Mat x = to_mat(x0), v_buf(4, std::vector<double>(4, 0.0));
      double alpha = 0;
      for (const at::Tensor& g : {g1, g2}) {
        p.mutable_grad() = g.clone();
        opt.step();
        x = sgdg_reference(x, to_mat(g), lr, momentum, v_buf, alpha);
        EXPECT_LT(mat_max_diff(p.detach(), x), 1e-13) << "lr " << lr << " momentum " << momentum;
        EXPECT_NEAR(opt.last_alpha()[0], alpha, 1e-15);
      }
      if (lr == 100.0) {
        EXPECT_LT(alpha, lr);  // the cap is what limited the step
      }
    }
  }
}

TEST(CayleySgd, FixedPointApproachesExactCayleyTransform) {
  // Paper form: X_new^T = (I - a/2 W)^{-1} (I + a/2 W) X^T. With a small step the 5 fixed-point
  // iterations agree to ~(a ||W|| / 2)^5.
  at::Generator gen = at::detail::createCPUGenerator(12);
  const at::Tensor x0 = random_rotation(4, gen);
  const at::Tensor g = at::randn({4, 4}, gen, at::kDouble);
  at::Tensor p = leaf(x0);
  CayleySgd opt({p}, {0.05});
  p.mutable_grad() = g.clone();
  opt.step();
  const double a = opt.last_alpha()[0];
  const at::Tensor mx = at::matmul(-g.t(), x0);
  const at::Tensor w_hat = mx - 0.5 * at::matmul(x0.t(), at::matmul(x0, mx));
  const at::Tensor w = w_hat - w_hat.t();
  const at::Tensor eye = at::eye(4, at::kDouble);
  const at::Tensor exact =
      at::matmul(at::linalg_inv(eye - 0.5 * a * w), at::matmul(eye + 0.5 * a * w, x0.t())).t();
  EXPECT_LT(max_abs(p.detach() - exact), 1e-7);
  EXPECT_LT(orthogonality_defect(p), 1e-7);
}

TEST(CayleySgd, StaysOrthogonalUnderLargeSteps) {
  // 200 steps of lr 10 on a quartic loss of Gaussian activations, float32, no QR. `scale`
  // multiplies the loss: at 1 the cap binds on a few steps, at 128 on every step (alpha ||W||_1
  // = 1, the largest step SGDG takes). There, SGDG's 5 fixed-point iterations, started from the
  // raw gradient, leave a ~1e-2 defect; iterating to convergence keeps rows orthonormal.
  const int64_t d = 128;
  at::Generator gen = at::detail::createCPUGenerator(13);
  const at::Tensor x = at::randn({512, d}, gen, at::kFloat);
  const at::Tensor r0 = random_rotation(d, gen).to(at::kFloat);
  struct Case {
    double scale;
    int iterations;
    double bound;
  };
  for (const Case& c : {Case{1.0, 5, 1e-4}, Case{128.0, 5, 5e-2}, Case{128.0, 20, 1e-4}}) {
    at::Tensor r = leaf(r0);
    CayleySgdOptions o;
    o.lr = 10.0;
    o.fixed_point_iterations = c.iterations;
    CayleySgd opt({r}, o);
    int capped = 0;
    for (int step = 0; step < 200; ++step) {
      opt.zero_grad();
      (at::matmul(x, r).pow(4).mean() * c.scale).backward();
      opt.step();
      capped += opt.last_alpha()[0] < o.lr;
    }
    std::printf(
        "  d=%lld lr=10 loss x%g, %d iterations: %3d/200 steps capped, "
        "||R R^T - I||_F = %.3g\n",
        static_cast<long long>(d), c.scale, c.iterations, capped, orthogonality_defect(r));
    EXPECT_LT(orthogonality_defect(r), c.bound) << "scale " << c.scale;
    if (c.scale > 1.0) {
      EXPECT_EQ(capped, 200);
    }
  }
}

TEST(CayleySgd, TruncatedFixedPointDriftIsRemovable) {
  // SGDG starts the fixed-point iteration from the raw gradient; when the gradient is mostly
  // normal to the manifold (here: a few outlier channels dominate), 5 iterations leave a visible
  // orthogonality defect. More iterations converge to the exact Cayley transform; retract()
  // removes the defect after the fact.
  const int64_t d = 64;
  at::Generator gen = at::detail::createCPUGenerator(17);
  at::Tensor x = at::randn({512, d}, gen, at::kFloat);
  x.select(1, 3).mul_(20.0);
  const at::Tensor r0 = random_rotation(d, gen).to(at::kFloat);
  for (int iterations : {5, 20}) {
    at::Tensor r = leaf(r0);
    CayleySgdOptions o;
    o.fixed_point_iterations = iterations;
    CayleySgd opt({r}, o);
    for (int step = 0; step < 200; ++step) {
      opt.zero_grad();
      const at::Tensor z = at::matmul(x, r);
      (z.pow(4).mean() / z.pow(2).mean().pow(2)).backward();
      opt.step();
    }
    const double before = orthogonality_defect(r);
    opt.retract();
    std::printf("  outlier loss, %d fixed-point iterations: defect %.3g, after retract %.3g\n",
                iterations, before, orthogonality_defect(r));
    if (iterations == 20) {
      EXPECT_LT(before, 1e-4);
    }
    EXPECT_LT(orthogonality_defect(r), 1e-5);
  }
}

TEST(CayleySgd, LearnsProcrustesRotation) {
  // min ||X R - X R_true||^2 from R = I; R_true a random rotation (det +1, reachable in SO(n)).
  const int64_t d = 16;
  at::Generator gen = at::detail::createCPUGenerator(14);
  const at::Tensor x = at::randn({256, d}, gen, at::kFloat);
  const at::Tensor y = at::matmul(x, random_rotation(d, gen).to(at::kFloat));
  at::Tensor r = leaf(at::eye(d, at::kFloat));
  // lr 0.5: the loss curvature here is ~2, so SpinQuant's 1.5 (tuned for a CE loss)
  // oscillates and stalls at a ~180x reduction.
  CayleySgd opt({r}, {0.5});
  auto loss_of = [&] { return (at::matmul(x, r) - y).pow(2).sum(1).mean(); };
  const double first = loss_of().item<double>();
  for (int step = 0; step < 100; ++step) {
    opt.zero_grad();
    loss_of().backward();
    opt.step();
  }
  const double drift = orthogonality_defect(r);
  opt.retract();
  const double last = loss_of().item<double>();
  std::printf("  Procrustes d=%lld: loss %.4g -> %.4g (x%.3g), defect %.3g before retract\n",
              static_cast<long long>(d), first, last, first / last, drift);
  EXPECT_LT(last, first / 1e4);
  EXPECT_LT(orthogonality_defect(r), 1e-5);
}

TEST(CayleySgd, SpreadsOutlierChannels) {
  // Activations with a few outlier channels: minimizing the kurtosis of X R (its 4th moment,
  // as orthogonality fixes the 2nd) spreads them over all channels and lowers max |X R|.
  const int64_t d = 32;
  at::Generator gen = at::detail::createCPUGenerator(15);
  at::Tensor x = at::randn({512, d}, gen, at::kFloat);
  x.select(1, 3).mul_(20.0);
  x.select(1, 17).mul_(12.0);
  at::Tensor r = leaf(at::eye(d, at::kFloat));
  CayleySgd opt({r}, {1.5, 0.0, 101});
  auto kurtosis = [&] {
    const at::Tensor z = at::matmul(x, r);
    return z.pow(4).mean() / z.pow(2).mean().pow(2);
  };
  const double max0 = max_abs(x), kurt0 = kurtosis().item<double>();
  for (int step = 0; step < 200; ++step) {
    opt.zero_grad();
    kurtosis().backward();
    opt.step();
  }
  opt.retract();
  c10::NoGradGuard no_grad;
  const double max1 = max_abs(at::matmul(x, r)), kurt1 = kurtosis().item<double>();
  std::printf("  outliers d=%lld: max|XR| %.4g -> %.4g, kurtosis %.4g -> %.4g\n",
              static_cast<long long>(d), max0, max1, kurt0, kurt1);
  EXPECT_LT(max1, 0.5 * max0);
  EXPECT_LT(kurt1, 0.5 * kurt0);
  EXPECT_LT(orthogonality_defect(r), 1e-5);
}

TEST(CayleySgd, SkipsParametersWithoutGradientAndValidates) {
  at::Tensor a = leaf(at::eye(4));
  at::Tensor b = leaf(at::eye(4));
  CayleySgd opt({a, b}, {0.1});
  a.mutable_grad() = at::randn({4, 4});
  opt.step();
  EXPECT_FALSE(at::equal(a.detach(), at::eye(4)));
  EXPECT_TRUE(at::equal(b.detach(), at::eye(4)));
  EXPECT_EQ(opt.last_alpha()[1], 0.0);
  EXPECT_EQ(opt.step_count(), 1);
  opt.zero_grad();
  EXPECT_FALSE(a.grad().defined());

  // Stiefel [p, n], p < n: rows stay orthonormal.
  at::Generator gen = at::detail::createCPUGenerator(16);
  at::Tensor s = leaf(random_rotation(8, gen).narrow(0, 0, 3).contiguous());
  CayleySgdOptions converged;  // iterate to the exact Cayley transform: orthonormal to 1e-15
  converged.lr = 0.5;
  converged.fixed_point_iterations = 60;
  CayleySgd rect({s}, converged);
  for (int i = 0; i < 20; ++i) {
    rect.zero_grad();
    at::matmul(at::randn({10, 3}, gen, at::kDouble), s).pow(4).sum().backward();
    rect.step();
  }
  // SGDG's unit() divides rows by (norm + 1e-8): in float64 that leaves row norms at 1 - 1e-8,
  // i.e. a defect floor of 2e-8 sqrt(p) (invisible in float32).
  EXPECT_LT(orthogonality_defect(s), 1e-7);

  EXPECT_THROW(CayleySgd({at::eye(4)}), Error);  // no requires_grad
  EXPECT_THROW(CayleySgd({leaf(at::zeros({4, 3}))}), Error);
  EXPECT_THROW(CayleySgd({leaf(at::zeros({4}))}), Error);
  EXPECT_THROW(CayleySgd({leaf(at::eye(4))}, {0.0}), Error);
  EXPECT_THROW(CayleySgd({leaf(at::eye(4))}, {1.0, 1.0}), Error);
  EXPECT_THROW(CayleySgd({leaf(at::eye(4))}, {1.0, 0.0, -1}), Error);
  EXPECT_THROW(opt.set_lr(-1.0), Error);
}
