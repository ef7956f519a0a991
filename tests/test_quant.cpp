// core/quant: the fake quantizers against an independent float64 reference written as plain loops
// over the formulas of docs/methods.md 2.5 (per-token sym/asym, groupwise, per-channel and
// groupwise weights, the MSE clip search), hand-computed small cases, grid properties (level
// counts, identity at 16 bits, zero-range rows, clipping, error vs bits), the KV-cache wrapper,
// dtypes, the straight-through estimator, and error reporting.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <functional>
#include <limits>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "core/quant/finite_checks.h"
#include "core/quant/quantizer.h"
#include "core/util/error.h"

namespace respin {
namespace {

// ---------------------------------------------------------------------------------------------
// Inputs

// Gaussian values with a few large outliers, like LLM activations; deterministic (std::mt19937).
at::Tensor random_tensor(std::vector<int64_t> shape, unsigned seed, double outlier_rate = 0.02) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.f, 1.f);
  std::uniform_real_distribution<float> uniform(0.f, 1.f);
  int64_t n = 1;
  for (int64_t s : shape) n *= s;
  std::vector<float> v(static_cast<size_t>(n));
  for (float& f : v) {
    f = normal(rng);
    if (uniform(rng) < outlier_rate) f *= 20.f;
  }
  return at::from_blob(v.data(), shape, at::kFloat).clone();
}

// Heavy-tailed rows (Student-t with 2 degrees of freedom): a few huge values dominate the range.
at::Tensor heavy_tailed(int64_t rows, int64_t cols, unsigned seed) {
  std::mt19937 rng(seed);
  std::student_t_distribution<float> t(2.f);
  std::vector<float> v(static_cast<size_t>(rows * cols));
  for (float& f : v) f = t(rng);
  return at::from_blob(v.data(), {rows, cols}, at::kFloat).clone();
}

at::Tensor row(std::vector<float> v) {
  return at::from_blob(v.data(), {1, static_cast<int64_t>(v.size())}, at::kFloat).clone();
}

std::vector<double> values(const at::Tensor& t) {
  const at::Tensor c = t.detach().to(at::kDouble).contiguous();
  return std::vector<double>(c.data_ptr<double>(), c.data_ptr<double>() + c.numel());
}

// ---------------------------------------------------------------------------------------------
// Float64 reference, one group (a row, or group_size contiguous values of a row) at a time.

enum class Rule {
  ActivationRow,    // per token: range includes 0, scale = 1 when the range is 0
  ActivationGroup,  // groupwise: raw amin/amax; constant groups widened to include 0
  Weight,           // GPTQ: range includes 0, clamped at 1e-5
};

struct RefGroup {
  std::vector<double> out;
  std::vector<bool> near_tie;  // x/scale within 1e-4 of k + 0.5: float32 may round the other way
  double scale = 0;
  bool zero_near_tie = false;  // the zero point itself is ambiguous: skip the group
};

bool near_half(double t) { return std::fabs(t - std::floor(t) - 0.5) < 1e-4; }

// `shrink` is the MSE candidate p (1 = plain); only meaningful for Rule::Weight.
RefGroup ref_group(const std::vector<double>& x, int bits, bool sym, double clip, Rule rule,
                   double shrink = 1.0) {
  const double maxq = sym ? std::pow(2.0, bits - 1) - 1 : std::pow(2.0, bits) - 1;
  double lo = x[0], hi = x[0];
  for (double v : x) {
    lo = std::min(lo, v);
    hi = std::max(hi, v);
  }
  if (rule != Rule::ActivationGroup) {
    lo = std::min(lo, 0.0);
    hi = std::max(hi, 0.0);
  }
  lo *= clip;
  hi *= clip;
  RefGroup r;
  double zero = 0;
  if (sym) {
    double m = std::max(std::fabs(lo), hi);
    if (rule == Rule::Weight) m = std::max(m, 1e-5) * shrink;
    r.scale = m / maxq;
    if (r.scale == 0) r.scale = 1;
  } else {
    if (lo == 0 && hi == 0) {
      lo = -1;
      hi = 1;
    }
    if (rule == Rule::ActivationGroup && lo == hi) {
      lo = std::min(lo, 0.0);
      hi = std::max(hi, 0.0);
    }
    double range = hi - lo;
    if (rule == Rule::Weight) {
      lo *= shrink;
      range = std::max(range * shrink, 1e-5);
    }
    r.scale = range / maxq;
    r.zero_near_tie = near_half(-lo / r.scale);
    zero = std::nearbyint(-lo / r.scale);  // round half to even, as torch.round
  }
  for (double v : x) {
    const double t = v / r.scale;
    r.near_tie.push_back(near_half(t));
    double q = std::nearbyint(t);
    if (sym) {
      q = std::min(std::max(q, -(maxq + 1)), maxq);
      r.out.push_back(r.scale * q);
    } else {
      q = std::min(std::max(q + zero, 0.0), maxq);
      r.out.push_back(r.scale * (q - zero));
    }
  }
  return r;
}

// Compares `got` (any shape, last dim split into groups of `group`) with the reference. Values
// must agree to float32 rounding; where x/scale sits on a rounding tie (float32 vs float64
// division) one step of difference is allowed. Ambiguous cases must stay rare.
::testing::AssertionResult matches_reference(const at::Tensor& x, const at::Tensor& got,
                                             int64_t group, int bits, bool sym, double clip,
                                             Rule rule) {
  if (!got.sizes().equals(x.sizes())) return ::testing::AssertionFailure() << "shape changed";
  const std::vector<double> xv = values(x), gv = values(got);
  int64_t ambiguous = 0;
  for (size_t g0 = 0; g0 < xv.size(); g0 += group) {
    const std::vector<double> xs(xv.begin() + g0, xv.begin() + g0 + group);
    const RefGroup ref = ref_group(xs, bits, sym, clip, rule);
    if (ref.zero_near_tie) {
      ambiguous += group;
      continue;
    }
    for (int64_t i = 0; i < group; ++i) {
      const double want = ref.out[i], have = gv[g0 + i];
      const double tol = 8 * FLT_EPSILON * std::max(std::fabs(want), ref.scale);
      const double diff = std::fabs(have - want);
      if (diff <= tol) continue;
      if (ref.near_tie[i] && std::fabs(diff - ref.scale) <= tol) {
        ++ambiguous;
        continue;
      }
      return ::testing::AssertionFailure()
             << "element " << g0 + i << ": x = " << xv[g0 + i] << ", got " << have << ", want "
             << want << " (scale " << ref.scale << ", bits " << bits << (sym ? " sym" : " asym")
             << ", group " << group << ", clip " << clip << ")";
    }
  }
  if (ambiguous * 100 > static_cast<int64_t>(xv.size()))
    return ::testing::AssertionFailure() << ambiguous << " ambiguous elements of " << xv.size();
  return ::testing::AssertionSuccess();
}

QuantSpec spec(int bits, bool sym, int64_t group = 0, double clip = 1.0) {
  return QuantSpec{bits, sym, group, clip};
}

// Throws respin::Error whose message contains every one of `parts`.
::testing::AssertionResult throws_error(const std::function<void()>& f,
                                        std::vector<std::string> parts) {
  try {
    f();
  } catch (const Error& e) {
    const std::string what = e.what();
    for (const std::string& p : parts)
      if (what.find(p) == std::string::npos)
        return ::testing::AssertionFailure() << "message \"" << what << "\" lacks \"" << p << "\"";
    return ::testing::AssertionSuccess();
  } catch (const std::exception& e) {
    return ::testing::AssertionFailure() << "threw a non-respin exception: " << e.what();
  }
  return ::testing::AssertionFailure() << "did not throw";
}

void expect_values(const at::Tensor& got, std::vector<float> want) {
  const std::vector<double> g = values(got);
  ASSERT_EQ(g.size(), want.size());
  for (size_t i = 0; i < g.size(); ++i) EXPECT_FLOAT_EQ(static_cast<float>(g[i]), want[i]) << i;
}

double sum_pow_err(const at::Tensor& q, const at::Tensor& x, int64_t r) {
  const std::vector<double> qv = values(q[r]), xv = values(x[r]);
  double e = 0;
  for (size_t i = 0; i < qv.size(); ++i) e += std::pow(std::fabs(qv[i] - xv[i]), 2.4);
  return e;
}

// ---------------------------------------------------------------------------------------------
// Against the float64 reference

const int kBits[] = {2, 3, 4, 8};

TEST(QuantReference, PerTokenActivation) {
  const at::Tensor x = random_tensor({3, 5, 64}, 1);
  for (int bits : kBits)
    for (bool sym : {true, false})
      for (double clip : {1.0, 0.9}) {
        const at::Tensor q = fake_quantize_activation(x, spec(bits, sym, 0, clip));
        EXPECT_TRUE(matches_reference(x, q, 64, bits, sym, clip, Rule::ActivationRow));
      }
}

TEST(QuantReference, GroupwiseActivation) {
  at::Tensor x = random_tensor({4, 7, 96}, 2);
  x.slice(2, 0, 32).abs_();   // all-positive groups: the raw range differs from the 0-forced one
  x.slice(2, 32, 48).neg_();  // mixed
  for (int bits : kBits)
    for (bool sym : {true, false})
      for (int64_t group : {16, 32}) {
        const at::Tensor q = fake_quantize_activation(x, spec(bits, sym, group, 0.95));
        EXPECT_TRUE(matches_reference(x, q, group, bits, sym, 0.95, Rule::ActivationGroup));
      }
}

TEST(QuantReference, PerChannelAndGroupwiseWeight) {
  at::Tensor w = random_tensor({24, 128}, 3) * 0.02;
  w[5].abs_();  // a one-signed channel
  for (int bits : kBits)
    for (bool sym : {true, false})
      for (int64_t group : {0, 32}) {
        const at::Tensor q = fake_quantize_weight(w, spec(bits, sym, group));
        EXPECT_TRUE(matches_reference(w, q, group ? group : 128, bits, sym, 1.0, Rule::Weight));
      }
}

// The MSE search picks, per row/group, a candidate whose float64 error is the minimum over the
// 80 candidates (up to float32 accumulation noise in the search's own error sums).
TEST(QuantReference, MseClipSearch) {
  const at::Tensor w = heavy_tailed(16, 64, 4);
  for (int bits : {2, 3, 4})
    for (bool sym : {true, false})
      for (int64_t group : {0, 16}) {
        const QuantSpec s = spec(bits, sym, group);
        const at::Tensor q = fake_quantize_weight(w, s, /*mse_clip=*/true);
        const int64_t g = group ? group : 64;
        const std::vector<double> wv = values(w), qv = values(q);
        for (size_t g0 = 0; g0 < wv.size(); g0 += g) {
          const std::vector<double> xs(wv.begin() + g0, wv.begin() + g0 + g);
          double best = INFINITY;
          for (int i = 0; i < 80; ++i) {
            const RefGroup r = ref_group(xs, bits, sym, 1.0, Rule::Weight, 1.0 - i / 100.0);
            double e = 0;
            for (int64_t k = 0; k < g; ++k) e += std::pow(std::fabs(r.out[k] - xs[k]), 2.4);
            best = std::min(best, e);
          }
          double got = 0;
          for (int64_t k = 0; k < g; ++k) got += std::pow(std::fabs(qv[g0 + k] - xs[k]), 2.4);
          EXPECT_LE(got, best * (1 + 1e-4) + 1e-9)
              << "group at " << g0 << ", bits " << bits << (sym ? " sym" : " asym");
        }
      }
}

// ---------------------------------------------------------------------------------------------
// Small cases by hand (round half to even, as torch.round)

TEST(QuantByHand, SymmetricActivation) {
  // 4 bits: maxq = 7, scale = 7 / 7 = 1; 0.5 rounds to 0 (half to even).
  expect_values(fake_quantize_activation(row({1, -2, 0.5, 7}), spec(4, true)), {1, -2, 0, 7});
  // 3 bits: maxq = 3, scale = 6 / 3 = 2; -0.95 -> -1, 1.45 -> 1, 0.3 -> 0.
  expect_values(fake_quantize_activation(row({6, -1.9f, 2.9f, 0.6f}), spec(3, true)),
                {6, -2, 2, 0});
}

TEST(QuantByHand, AsymmetricActivation) {
  // 4 bits: maxq = 15, range [-2, 7], scale = 0.6, zero = round(3.33) = 3.
  expect_values(fake_quantize_activation(row({1, -2, 0.5, 7}), spec(4, false)),
                {1.2f, -1.8f, 0.6f, 7.2f});
  // 2 bits, per token: range [-1, 5] (0 forced in), scale 2, zero = round(0.5) = 0;
  // 5/2 = 2.5 -> 2, -1/2 = -0.5 -> -0.
  expect_values(fake_quantize_activation(row({2, 5, -1, -1}), spec(2, false)), {2, 4, 0, 0});
  // Same values in groups of 2: [2, 5] keeps its raw range (scale 1, zero -2, reproduced exactly);
  // the constant group [-1, -1] is widened to [-1, 0] and lands on the grid's end.
  expect_values(fake_quantize_activation(row({2, 5, -1, -1}), spec(2, false, 2)), {2, 5, -1, -1});
  expect_values(fake_quantize_activation(row({2, 5, -1.3f, -1.3f}), spec(2, false, 2)),
                {2, 5, -1.3f, -1.3f});
}

TEST(QuantByHand, SymmetricGroupwiseActivation) {
  // Groups of 2, 3 bits: [1, 3] -> scale 1; [-6, 2] -> absmax 6, scale 2.
  expect_values(fake_quantize_activation(row({1, 3, -6, 2.9f}), spec(3, true, 2)), {1, 3, -6, 2});
}

TEST(QuantByHand, ClipRatio) {
  // 4 bits sym, clip 0.5: absmax 8 -> 4, scale 4/7; 8/scale = 14 saturates at 7, -14 at -8.
  expect_values(fake_quantize_activation(row({8, -8, 1, 3}), spec(4, true, 0, 0.5)),
                {4, -32.f / 7, 8.f / 7, 20.f / 7});
}

TEST(QuantByHand, Weight) {
  // Asym 2 bits: range [-0.1, 3], scale 3.1/3, zero = round(0.097) = 0.
  const at::Tensor w = row({3, 0, 1.4f, -0.1f});
  expect_values(fake_quantize_weight(w, spec(2, false)), {3.1f, 0, 3.1f / 3, 0});
  const WeightQuantParams p = compute_weight_params(w, spec(2, false));
  ASSERT_EQ(p.scale.sizes(), (std::vector<int64_t>{1, 1}));
  EXPECT_FLOAT_EQ(p.scale.item<float>(), 3.1f / 3);
  EXPECT_EQ(p.zero.item<float>(), 0.f);
  // Sym 4 bits in groups of 2: [7, 1] -> scale 1; [-0.5, 0.3] -> scale 0.5/7, 0.3 -> 4.2 -> 4.
  const at::Tensor w2 = row({7, 1, -0.5f, 0.3f});
  expect_values(fake_quantize_weight(w2, spec(4, true, 2)), {7, 1, -0.5f, 2.f / 7});
  const WeightQuantParams p2 = compute_weight_params(w2, spec(4, true, 2));
  expect_values(p2.scale, {1, 0.5f / 7});
  expect_values(p2.zero, {0, 0});
}

// ---------------------------------------------------------------------------------------------
// Properties

TEST(QuantProperties, LevelsPerRowAtMostTwoToTheBits) {
  const at::Tensor x = random_tensor({32, 256}, 5, 0.0);
  for (int bits : kBits)
    for (bool sym : {true, false}) {
      const int64_t limit = int64_t{1} << bits;
      const at::Tensor a = fake_quantize_activation(x, spec(bits, sym));
      const at::Tensor w = fake_quantize_weight(x, spec(bits, sym), true);
      const at::Tensor g = fake_quantize_activation(x, spec(bits, sym, 64)).reshape({-1, 64});
      for (const at::Tensor* t : {&a, &w, &g})
        for (int64_t r = 0; r < t->size(0); ++r) {
          const std::vector<double> v = values((*t)[r]);
          const std::set<double> levels(v.begin(), v.end());
          EXPECT_LE(static_cast<int64_t>(levels.size()), limit) << "bits " << bits << " row " << r;
          if (bits == 8) {
            EXPECT_GT(levels.size(), 16u);  // more than 4 bits could give: the grid is used
          }
        }
    }
}

TEST(QuantProperties, WeightValuesLieOnTheIntegerGrid) {
  const at::Tensor w = random_tensor({8, 64}, 6);
  for (bool sym : {true, false}) {
    const QuantSpec s = spec(3, sym, 16);
    const WeightQuantParams p = compute_weight_params(w, s, true);
    const at::Tensor q = fake_quantize_weight(w, s, true);
    const at::Tensor levels = q.reshape({8, 4, 16}) / p.scale.unsqueeze(-1) + p.zero.unsqueeze(-1);
    EXPECT_LT((levels - levels.round()).abs().max().item<float>(), 1e-4);
    EXPECT_GE(levels.round().min().item<float>(), sym ? -4 : 0);
    EXPECT_LE(levels.round().max().item<float>(), sym ? 3 : 7);
  }
}

TEST(QuantProperties, SixteenBitsIsIdentity) {
  const at::Tensor x = random_tensor({2, 3, 8}, 7);
  for (bool sym : {true, false}) {
    EXPECT_TRUE(fake_quantize_activation(x, spec(16, sym)).is_same(x));
    EXPECT_TRUE(
        fake_quantize_kv(x.reshape({1, 2, 3, 8}), spec(16, sym)).equal(x.reshape({1, 2, 3, 8})));
    const at::Tensor w = x[0];
    EXPECT_TRUE(fake_quantize_weight(w, spec(16, sym), true).is_same(w));
    EXPECT_TRUE(fake_quantize_activation_ste(x, spec(16, sym)).is_same(x));
  }
  // Even a group size that does not divide is irrelevant when quantization is off.
  EXPECT_TRUE(fake_quantize_activation(x, spec(16, true, 5)).is_same(x));
}

TEST(QuantProperties, ZeroRangeRowsDoNotDivideByZero) {
  // Rows: all zero, constant positive, constant negative, and two constant groups of 2.
  // Non-integer constants: a scale of 1 with zero = round(-c) would not reproduce them.
  const at::Tensor x = at::tensor({0.f, 0.f, 0.f, 0.f, 0.3f, 0.3f, 0.3f, 0.3f, -2.7f, -2.7f, -2.7f,
                                   -2.7f, 2.5f, 2.5f, -0.4f, -0.4f})
                           .reshape({4, 4});
  for (int bits : kBits)
    for (bool sym : {true, false})
      for (int64_t group : {0, 2}) {
        const at::Tensor xs = x.slice(0, 0, group ? 4 : 3);  // the last row is constant per group
        const at::Tensor a = fake_quantize_activation(xs, spec(bits, sym, group));
        const at::Tensor w = fake_quantize_weight(xs, spec(bits, sym, group), true);
        for (const at::Tensor* t : {&a, &w}) {
          ASSERT_TRUE(at::isfinite(*t).all().item<bool>()) << bits << " " << sym << " " << group;
          EXPECT_TRUE(at::allclose(*t, xs, 1e-6, 1e-6)) << *t;
        }
      }
}

TEST(QuantProperties, DenormalRowsDoNotDivideByZero) {
  // The range is nonzero but range / maxq underflows to 0 in float32.
  const float tiny = std::numeric_limits<float>::denorm_min();
  const at::Tensor x = row({tiny, 0, -tiny, 2 * tiny});
  for (int bits : kBits)
    for (bool sym : {true, false})
      for (int64_t group : {0, 2}) {
        const at::Tensor a = fake_quantize_activation(x, spec(bits, sym, group));
        EXPECT_TRUE(at::isfinite(a).all().item<bool>()) << a;
        EXPECT_LE(a.abs().max().item<float>(), 2 * tiny);
      }
}

TEST(QuantProperties, ClipRatioClipsTheExtremes) {
  const at::Tensor x = random_tensor({16, 128}, 8, 0.05);
  const std::vector<double> xv = values(x);
  for (bool sym : {true, false}) {
    const std::vector<double> full = values(fake_quantize_activation(x, spec(4, sym)));
    const std::vector<double> clipped = values(fake_quantize_activation(x, spec(4, sym, 0, 0.8)));
    for (int64_t r = 0; r < 16; ++r) {
      const auto b = xv.begin() + r * 128;
      const double lo = std::min(*std::min_element(b, b + 128), 0.0);
      const double hi = std::max(*std::max_element(b, b + 128), 0.0);
      const double absmax = std::max(-lo, hi);
      const auto fb = full.begin() + r * 128, cb = clipped.begin() + r * 128;
      const double full_lo = *std::min_element(fb, fb + 128),
                   full_hi = *std::max_element(fb, fb + 128);
      const double clip_lo = *std::min_element(cb, cb + 128),
                   clip_hi = *std::max_element(cb, cb + 128);
      // Grid ends of the shrunk range: sym [-8, 7] * 0.8 * absmax / 7; asym [0.8 lo, 0.8 hi]
      // shifted by at most half a step by the rounded zero point.
      const double eps = 1e-5 * absmax;
      if (sym) {
        EXPECT_LE(clip_hi, 0.8 * absmax + eps) << r;
        EXPECT_GE(clip_lo, -0.8 * absmax * 8 / 7 - eps) << r;
        EXPECT_NEAR(std::max(-full_lo, full_hi), absmax, eps) << r;  // unclipped reaches it
      } else {
        const double half_step = 0.8 * (hi - lo) / 15 / 2;
        EXPECT_LE(clip_hi, 0.8 * hi + half_step + eps) << r;
        EXPECT_GE(clip_lo, 0.8 * lo - half_step - eps) << r;
        EXPECT_NEAR(full_hi, hi, (hi - lo) / 15 / 2 + eps) << r;
        EXPECT_NEAR(full_lo, lo, (hi - lo) / 15 / 2 + eps) << r;
      }
      EXPECT_LT(std::max(-clip_lo, clip_hi), 0.95 * absmax) << r;
    }
  }
}

TEST(QuantProperties, MseClipNeverWorseAndBetterOnHeavyTails) {
  const at::Tensor gauss = random_tensor({32, 256}, 9, 0.0);
  const at::Tensor heavy = heavy_tailed(32, 256, 10);
  for (int bits : {3, 4})
    for (bool sym : {true, false})
      for (int64_t group : {0, 64})
        for (const at::Tensor* w : {&gauss, &heavy}) {
          const at::Tensor plain = fake_quantize_weight(*w, spec(bits, sym, group));
          const at::Tensor mse = fake_quantize_weight(*w, spec(bits, sym, group), true);
          const int64_t g = group ? group : 256;
          const at::Tensor wr = w->reshape({-1, g}), pr = plain.reshape({-1, g}),
                           mr = mse.reshape({-1, g});
          double total_plain = 0, total_mse = 0;
          for (int64_t r = 0; r < wr.size(0); ++r) {
            const double e_plain = sum_pow_err(pr, wr, r), e_mse = sum_pow_err(mr, wr, r);
            total_plain += e_plain;
            total_mse += e_mse;
            EXPECT_LE(e_mse, e_plain * (1 + 1e-5)) << "row " << r;
            // A 256-wide Student-t row always has an extreme worth clipping; a 64-wide group
            // sometimes does not (e.g. asym with the outlier alone on one side).
            if (w == &heavy && group == 0) {
              EXPECT_LT(e_mse, e_plain) << "heavy row " << r;
            }
          }
          // Strictly better overall (measured: 0.70..0.95 of the unclipped error).
          EXPECT_LT(total_mse, 0.98 * total_plain)
              << "bits " << bits << (sym ? " sym" : " asym") << " group " << group;
        }
}

TEST(QuantProperties, ErrorShrinksWithBits) {
  const at::Tensor x = random_tensor({64, 256}, 11, 0.0);
  for (bool sym : {true, false}) {
    std::vector<double> act, wgt;
    for (int bits : kBits) {
      act.push_back(
          (fake_quantize_activation(x, spec(bits, sym)) - x).pow(2).mean().item<double>());
      wgt.push_back(
          (fake_quantize_weight(x, spec(bits, sym), true) - x).pow(2).mean().item<double>());
    }
    for (const std::vector<double>* e : {&act, &wgt}) {
      EXPECT_GT((*e)[0], (*e)[1]);
      EXPECT_GT((*e)[1], (*e)[2]);
      EXPECT_GT((*e)[2], (*e)[3]);
      EXPECT_LT((*e)[3], (*e)[2] / 100);  // 4 more bits: ~256x smaller squared error
      EXPECT_GT((*e)[3], 0);
    }
  }
}

TEST(QuantProperties, RowsAreIndependent) {
  at::Tensor x = random_tensor({4, 32}, 12);
  const at::Tensor q = fake_quantize_activation(x, spec(4, false));
  at::Tensor y = x.clone();
  y[2].mul_(100);
  const at::Tensor qy = fake_quantize_activation(y, spec(4, false));
  for (int64_t r : {0, 1, 3}) EXPECT_TRUE(qy[r].equal(q[r]));
  EXPECT_TRUE(at::allclose(qy[2], q[2] * 100, 1e-5, 1e-4));
}

// ---------------------------------------------------------------------------------------------
// KV cache

TEST(QuantKv, PerTokenPerHead) {
  at::Tensor k = random_tensor({2, 3, 5, 16}, 13);
  k.select(1, 1).abs_();  // head 1 one-signed: per-row (0 in range) vs groupwise differ there
  const at::Tensor q = fake_quantize_kv(k, kv_cache_spec(4));
  EXPECT_TRUE(matches_reference(k, q, 16, 4, false, 1.0, Rule::ActivationRow));
  const at::Tensor qg = fake_quantize_kv(k, spec(4, false, 16));
  EXPECT_TRUE(matches_reference(k, qg, 16, 4, false, 1.0, Rule::ActivationGroup));
  EXPECT_FALSE(q.select(1, 1).equal(qg.select(1, 1)));
  // Scaling one head leaves the others untouched.
  at::Tensor k2 = k.clone();
  k2.select(1, 0).mul_(50);
  const at::Tensor q2 = fake_quantize_kv(k2, kv_cache_spec(4));
  EXPECT_TRUE(q2.select(1, 1).equal(q.select(1, 1)));
  EXPECT_TRUE(q2.select(1, 2).equal(q.select(1, 2)));
}

// ---------------------------------------------------------------------------------------------
// Dtypes: float32 math, result in the input's dtype

TEST(QuantDtype, LowAndHighPrecisionInputs) {
  const at::Tensor x = random_tensor({4, 64}, 14);
  for (at::ScalarType dt : {at::kBFloat16, at::kHalf, at::kDouble}) {
    const at::Tensor xd = x.to(dt);
    for (bool sym : {true, false}) {
      const at::Tensor a = fake_quantize_activation(xd, spec(4, sym, 16));
      ASSERT_EQ(a.scalar_type(), dt);
      EXPECT_TRUE(a.equal(fake_quantize_activation(xd.to(at::kFloat), spec(4, sym, 16)).to(dt)));
      const at::Tensor w = fake_quantize_weight(xd, spec(4, sym), true);
      ASSERT_EQ(w.scalar_type(), dt);
      EXPECT_TRUE(w.equal(fake_quantize_weight(xd.to(at::kFloat), spec(4, sym), true).to(dt)));
      const at::Tensor kv = fake_quantize_kv(xd.reshape({1, 4, 4, 16}), kv_cache_spec(3));
      ASSERT_EQ(kv.scalar_type(), dt);
    }
  }
}

TEST(QuantWeight, ColumnWiseWithParamsMatchesWholeMatrix) {
  // GPTQ quantizes one column at a time with the group's scale/zero.
  const at::Tensor w = random_tensor({12, 48}, 15);
  for (bool sym : {true, false}) {
    const QuantSpec s = spec(3, sym, 16);
    const WeightQuantParams p = compute_weight_params(w, s, true);
    ASSERT_EQ(p.scale.sizes(), (std::vector<int64_t>{12, 3}));
    const at::Tensor whole = fake_quantize_weight(w, s, true);
    EXPECT_TRUE(fake_quantize_weight_with(w, p, s).equal(whole));
    for (int64_t j = 0; j < 48; j += 7) {
      const at::Tensor col =
          fake_quantize_with_scale(w.slice(1, j, j + 1), p.scale.slice(1, j / 16, j / 16 + 1),
                                   p.zero.slice(1, j / 16, j / 16 + 1), s);
      EXPECT_TRUE(col.equal(whole.slice(1, j, j + 1))) << "column " << j;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Straight-through estimator

TEST(QuantSte, GradientIsIdentityAndForwardUnchanged) {
  const at::Tensor base = random_tensor({6, 32}, 16);
  const at::Tensor weights = random_tensor({6, 32}, 17);
  for (bool sym : {true, false}) {
    for (int which = 0; which < 3; ++which) {
      at::Tensor x = base.clone().set_requires_grad(true);
      const QuantSpec s = spec(3, sym, which == 1 ? 8 : 0);
      const at::Tensor y =
          which == 2 ? fake_quantize_weight_ste(x, s, true) : fake_quantize_activation_ste(x, s);
      const at::Tensor plain =
          which == 2 ? fake_quantize_weight(base, s, true) : fake_quantize_activation(base, s);
      EXPECT_TRUE(y.detach().equal(plain)) << "forward differs, case " << which;
      EXPECT_FALSE(plain.equal(base));  // quantization really happened
      y.sum().backward();
      EXPECT_TRUE(x.grad().equal(at::ones_like(base))) << "case " << which;
      x.grad().zero_();
      (fake_quantize_activation_ste(x, s) * weights).sum().backward();
      EXPECT_TRUE(x.grad().equal(weights));
    }
  }
  // The generic form with a caller-supplied quantized tensor.
  at::Tensor x = base.clone().set_requires_grad(true);
  const at::Tensor q = base.round();
  const at::Tensor y = fake_quantize_ste(x, q);
  EXPECT_TRUE(y.detach().equal(q));
  y.sum().backward();
  EXPECT_TRUE(x.grad().equal(at::ones_like(base)));
}

// ---------------------------------------------------------------------------------------------
// Errors

TEST(QuantErrors, InvalidSpecs) {
  const at::Tensor x = random_tensor({2, 100}, 18);
  for (int bits : {0, 1, 9, 12, 17, 32})
    EXPECT_TRUE(throws_error([&] { fake_quantize_activation(x, spec(bits, true)); },
                             {"bits", std::to_string(bits)}));
  for (double clip : {0.0, -0.5, 1.5, std::nan("")})
    EXPECT_TRUE(throws_error([&] { fake_quantize_weight(x, spec(4, true, 0, clip)); },
                             {"weight", "clip_ratio"}));
  EXPECT_TRUE(throws_error([&] { fake_quantize_activation(x, spec(4, true, 48)); },
                           {"activation", "group_size 48", "100"}));
  EXPECT_TRUE(throws_error([&] { fake_quantize_weight(x, spec(4, false, 30)); },
                           {"weight", "group_size 30", "100"}));
  EXPECT_TRUE(
      throws_error([&] { fake_quantize_activation(x, spec(4, true, -4)); }, {"group_size", "-4"}));
  EXPECT_TRUE(throws_error([&] { validate_quant_spec(spec(5, true, 0, 2.0), "KV"); },
                           {"KV", "clip_ratio", "2"}));
  EXPECT_NO_THROW(validate_quant_spec(spec(5, false, 64, 0.9)));
  EXPECT_TRUE(throws_error([&] { fake_quantize_weight(x, spec(4, true, 0, 0.9), true); },
                           {"mse_clip", "clip_ratio"}));
  EXPECT_TRUE(throws_error([&] { compute_weight_params(x, spec(16, true)); }, {"16"}));
  EXPECT_TRUE(throws_error(
      [&] {
        fake_quantize_weight(x.reshape({2, 10, 10}), spec(4, true));
      },
      {"2-D", "[2, 10, 10]"}));
  EXPECT_TRUE(throws_error([&] { fake_quantize_kv(x, spec(4, false)); }, {"head_dim", "[2, 100]"}));
  EXPECT_TRUE(
      throws_error([&] { fake_quantize_activation(x.to(at::kInt), spec(4, true)); }, {"floating"}));
  const WeightQuantParams p = compute_weight_params(x, spec(4, true));
  EXPECT_TRUE(throws_error([&] { fake_quantize_weight_with(x, p, spec(4, true, 10)); },
                           {"params", "[2, 10]", "[2, 1]"}));
  EXPECT_TRUE(throws_error([&] { fake_quantize_ste(x, x[0]); }, {"shape"}));
}

TEST(QuantErrors, NanAndInfInputs) {
  for (float bad : {NAN, INFINITY, -INFINITY}) {
    at::Tensor x = random_tensor({2, 3, 16}, 19);
    x[1][2][5] = bad;
    EXPECT_TRUE(throws_error([&] { fake_quantize_activation(x, spec(4, false)); },
                             {"activation contains NaN", "[2, 3, 16]"}));
    EXPECT_TRUE(
        throws_error([&] { fake_quantize_activation(x.to(at::kBFloat16), spec(8, true, 4)); },
                     {"activation contains NaN"}));
    EXPECT_TRUE(throws_error([&] { fake_quantize_kv(x.unsqueeze(0), kv_cache_spec(4)); },
                             {"KV cache contains NaN"}));
    EXPECT_TRUE(throws_error([&] { fake_quantize_weight(x[1], spec(4, true), true); },
                             {"weight contains NaN"}));
    EXPECT_TRUE(throws_error([&] { fake_quantize_weight_ste(x[1], spec(4, true)); },
                             {"weight contains NaN"}));
  }
}

TEST(QuantErrors, DeferredChecksReadOnceAndThrowTheFirstFailure) {
  at::Tensor good = random_tensor({2, 3, 16}, 23);
  at::Tensor bad = good.clone();
  bad[0][1][2] = NAN;
  const int64_t reads0 = DeferredFiniteChecks::host_reads();
  {
    DeferredFiniteChecks checks;
    // Nothing is read back while queued: the NaN passes the quantizer for now.
    fake_quantize_activation(good, spec(4, false));
    fake_quantize_weight_ste(good[1], spec(4, true));
    fake_quantize_kv(bad.unsqueeze(0), kv_cache_spec(4));
    fake_quantize_activation(bad, spec(4, false));
    EXPECT_EQ(checks.pending(), 4u);
    EXPECT_EQ(DeferredFiniteChecks::host_reads(), reads0);
    // One read: the first failed check's message, as the immediate check words it.
    EXPECT_TRUE(throws_error([&] { checks.read(at::full({}, 2.5)); }, {"KV cache contains NaN", "[1, 2, 3, 16]"}));
    EXPECT_EQ(DeferredFiniteChecks::host_reads(), reads0 + 1);
    EXPECT_EQ(checks.pending(), 0u);
    fake_quantize_activation(good, spec(4, false));
    EXPECT_EQ(checks.read(at::full({1}, 2.5, at::kFloat)), 2.5);
    EXPECT_EQ(checks.read(), 0.0);  // nothing queued, no value: no read
    EXPECT_EQ(DeferredFiniteChecks::host_reads(), reads0 + 2);
  }
  // Out of the scope, checks are immediate again.
  EXPECT_TRUE(throws_error([&] { fake_quantize_activation(bad, spec(4, false)); }, {"activation contains NaN"}));
  EXPECT_EQ(DeferredFiniteChecks::host_reads(), reads0 + 3);
}

}  // namespace

// The weight grid search and the fake quantization run over blocks of rows (about 4M elements):
// a row's grid and quantized values are the same whatever rows it is computed with.
TEST(WeightQuant, RowBlocksGiveEachRowItsOwnResult) {
  at::manual_seed(5);
  const at::Tensor w = at::randn({300, 32768}) * at::rand({300, 1});  // three blocks of 100 rows
  QuantSpec spec{4, true, 0, 1.0};
  const WeightQuantParams all = compute_weight_params(w, spec, /*mse_clip=*/true);
  const WeightQuantParams a = compute_weight_params(w.narrow(0, 0, 100), spec, true);
  const WeightQuantParams b = compute_weight_params(w.narrow(0, 100, 200), spec, true);
  EXPECT_TRUE(at::equal(all.scale, at::cat({a.scale, b.scale})));
  EXPECT_TRUE(at::equal(all.zero, at::cat({a.zero, b.zero})));
  // The clip search did choose clips below the full range for some rows.
  const at::Tensor full = std::get<0>(w.abs().max(1, true)) / 7;
  EXPECT_TRUE((all.scale < full * 0.999).any().item<bool>());
  // Quantized a block at a time: the elementwise formula over the whole weight, in its dtype.
  for (at::ScalarType t : {at::kFloat, at::kBFloat16}) {
    const at::Tensor wt = w.to(t);
    const at::Tensor q = fake_quantize_weight_with(wt, all, spec);
    EXPECT_EQ(q.scalar_type(), t);
    EXPECT_TRUE(at::equal(q, fake_quantize_with_scale(wt, all.scale, all.zero, spec)));
  }
}

}  // namespace respin

