// core/quant/gptq: the Hessian accumulator against a direct (2/n) X^T X, GPTQ against an
// independent unblocked float64 reference written here as plain loops (per-row and groupwise
// grids, sym/asym), the diagonal-Hessian case (= round-to-nearest), the output error on
// correlated inputs vs round-to-nearest, grid membership, dead inputs, Hessian scale invariance,
// damping retries, dtypes, and error reporting.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "core/quant/gptq.h"
#include "core/quant/quantizer.h"
#include "core/util/error.h"

namespace respin {
namespace {

QuantSpec spec_of(int bits, bool symmetric, int64_t group_size = 0) {
  QuantSpec s;
  s.bits = bits;
  s.symmetric = symmetric;
  s.group_size = group_size;
  return s;
}

double max_abs_diff(const at::Tensor& a, const at::Tensor& b) {
  return (a.to(at::kDouble) - b.to(at::kDouble)).abs().max().item<double>();
}

// Correlated calibration inputs: X = Z A with a random mixing A, plus per-channel scales.
at::Tensor correlated_inputs(int64_t rows, int64_t cols, uint64_t seed) {
  at::manual_seed(seed);
  const at::Tensor z = at::randn({rows, cols});
  const at::Tensor a = at::randn({cols, cols}) / std::sqrt(static_cast<double>(cols));
  const at::Tensor channel_scale = at::rand({1, cols}) * 2 + 0.2;
  return z.matmul(a) * channel_scale;
}

at::Tensor hessian_of(const at::Tensor& x) {
  HessianAccumulator acc(x.size(-1));
  acc.add(x);
  return acc.hessian();
}

// ||X W^T - X Q^T||_F^2 in float64.
double output_error(const at::Tensor& x, const at::Tensor& w, const at::Tensor& q) {
  const at::Tensor xd = x.to(at::kDouble);
  return (xd.matmul((w.to(at::kDouble) - q.to(at::kDouble)).t())).square().sum().item<double>();
}

struct RefResult {
  at::Tensor weight;  // float64 [out, in]
  double loss = 0;
};

// Straightforward GPTQ, one column at a time without blocking, on plain float64 arrays.
// Hinv = upper Cholesky factor of the damped inverse, computed as the transpose of the lower
// Cholesky factor of at::inverse (a different route from the library's cholesky_inverse).
// Group grids are taken, as in the reference implementation, from the weight's state at the
// start of the `block_size` block containing the group's first column.
RefResult reference_gptq(const at::Tensor& w_in, const at::Tensor& h_in, const QuantSpec& spec,
                         bool mse_clip, double damp, int64_t block_size) {
  const int64_t out = w_in.size(0), in = w_in.size(1);
  at::Tensor w = w_in.to(at::kDouble).contiguous().clone();
  at::Tensor h = h_in.to(at::kDouble).contiguous().clone();
  WeightQuantParams row_grid;
  if (spec.group_size == 0) row_grid = compute_weight_params(w, spec, mse_clip);
  double* W = w.data_ptr<double>();
  double* H = h.data_ptr<double>();
  double mean = 0;
  for (int64_t i = 0; i < in; ++i) {
    if (H[i * in + i] == 0) {
      H[i * in + i] = 1;
      for (int64_t r = 0; r < out; ++r) W[r * in + i] = 0;
    }
    mean += H[i * in + i] / static_cast<double>(in);
  }
  for (int64_t i = 0; i < in; ++i) H[i * in + i] += damp * mean;
  const at::Tensor u_t = at::linalg_cholesky(at::inverse(h)).t().contiguous();
  const double* U = u_t.data_ptr<double>();

  QuantSpec group_spec = spec;
  group_spec.group_size = 0;
  at::Tensor scale, zero, snapshot;
  if (spec.group_size == 0) {
    scale = row_grid.scale.select(1, 0);
    zero = row_grid.zero.select(1, 0);
  }
  at::Tensor q_all = at::zeros({out, in}, at::kDouble);
  RefResult r;
  for (int64_t i = 0; i < in; ++i) {
    if (i % block_size == 0) snapshot = w.clone();
    if (spec.group_size > 0 && i % spec.group_size == 0) {
      const WeightQuantParams p =
          compute_weight_params(snapshot.slice(1, i, i + spec.group_size), group_spec, mse_clip);
      scale = p.scale.select(1, 0);
      zero = p.zero.select(1, 0);
    }
    const at::Tensor col = w.select(1, i).clone();
    const at::Tensor q = fake_quantize_with_scale(col, scale, zero, spec).contiguous();
    const double* Q = q.data_ptr<double>();
    const double d = U[i * in + i];
    for (int64_t row = 0; row < out; ++row) {
      const double err = (W[row * in + i] - Q[row]) / d;
      r.loss += err * err / 2;
      for (int64_t j = i + 1; j < in; ++j) W[row * in + j] -= err * U[i * in + j];
    }
    q_all.select(1, i).copy_(q);
  }
  r.weight = q_all;
  return r;
}

// Every entry q of row r, group g satisfies q / scale + zero = integer level in the grid's range.
void expect_on_grid(const at::Tensor& q, const WeightQuantParams& params, const QuantSpec& spec) {
  const int64_t out = q.size(0), in = q.size(1);
  const int64_t gs = spec.group_size > 0 ? spec.group_size : in;
  ASSERT_EQ(params.scale.size(0), out);
  ASSERT_EQ(params.scale.size(1), in / gs);
  const at::Tensor qd = q.to(at::kDouble).contiguous();
  const at::Tensor sd = params.scale.to(at::kDouble).contiguous();
  const at::Tensor zd = params.zero.to(at::kDouble).contiguous();
  const double lo = spec.symmetric ? -std::ldexp(1.0, spec.bits - 1) : 0.0;
  const double hi =
      spec.symmetric ? std::ldexp(1.0, spec.bits - 1) - 1 : std::ldexp(1.0, spec.bits) - 1;
  const auto Q = qd.accessor<double, 2>();
  const auto S = sd.accessor<double, 2>();
  const auto Z = zd.accessor<double, 2>();
  int bad = 0;
  for (int64_t r = 0; r < out; ++r)
    for (int64_t c = 0; c < in; ++c) {
      const double level = Q[r][c] / S[r][c / gs] + Z[r][c / gs];
      if (std::abs(level - std::round(level)) > 1e-4 || level < lo - 1e-4 || level > hi + 1e-4)
        ++bad;
      if (!spec.symmetric) continue;
      if (Z[r][c / gs] != 0) ++bad;
    }
  EXPECT_EQ(bad, 0);
}

// ---------------------------------------------------------------------------------------------
// HessianAccumulator

TEST(HessianAccumulator, MatchesDirectSumOverChunks) {
  at::manual_seed(11);
  const int64_t cols = 24;
  // Chunks of different sizes, shapes and dtypes; the direct sum sees the same (rounded) values.
  std::vector<at::Tensor> chunks = {at::randn({2, 5, cols}), at::randn({17, cols}),
                                    at::randn({cols}) * 3, at::randn({3, 1, 4, cols}).to(at::kHalf),
                                    at::randn({40, cols}).to(at::kDouble) + 0.5};
  HessianAccumulator acc(cols);
  EXPECT_EQ(acc.samples(), 0);
  EXPECT_EQ(acc.hessian().sum().item<double>(), 0.0);
  std::vector<at::Tensor> rows;
  for (const at::Tensor& c : chunks) {
    acc.add(c);
    rows.push_back(c.to(at::kDouble).reshape({-1, cols}));
  }
  acc.add(at::empty({0, cols}));  // no-op
  const at::Tensor x = at::cat(rows, 0);
  ASSERT_EQ(x.size(0), 10 + 17 + 1 + 12 + 40);
  EXPECT_EQ(acc.samples(), x.size(0));
  ASSERT_EQ(acc.hessian().scalar_type(), at::kDouble);
  const at::Tensor direct = x.t().matmul(x) * (2.0 / static_cast<double>(x.size(0)));
  const double rel = max_abs_diff(acc.hessian(), direct) / direct.abs().max().item<double>();
  EXPECT_LT(rel, 1e-12);
}

TEST(HessianAccumulator, RejectsBadInput) {
  HessianAccumulator acc(8);
  EXPECT_THROW(acc.add(at::zeros({4, 7})), Error);
  EXPECT_THROW(acc.add(at::zeros({4, 8}, at::kInt)), Error);
  at::Tensor nan = at::zeros({4, 8});
  nan[2][3] = std::nan("");
  EXPECT_THROW(acc.add(nan), Error);
  at::Tensor inf = at::zeros({4, 8});
  inf[0][0] = INFINITY;
  EXPECT_THROW(acc.add(inf), Error);
  EXPECT_EQ(acc.samples(), 0);
  EXPECT_THROW(HessianAccumulator(-1), Error);
  try {
    acc.add(at::zeros({4, 7}));
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("8"), std::string::npos) << e.what();
  }
}

// ---------------------------------------------------------------------------------------------
// gptq_quantize

TEST(Gptq, DiagonalHessianEqualsRoundToNearest) {
  at::manual_seed(21);
  const at::Tensor w = at::randn({32, 64});
  const at::Tensor h = at::diag(at::rand({64}, at::kDouble) + 0.1);
  for (const QuantSpec& spec :
       {spec_of(4, true), spec_of(3, false), spec_of(4, true, 16), spec_of(3, false, 32)}) {
    for (bool mse : {true, false}) {
      GptqOptions opt;
      opt.mse_clip = mse;
      opt.block_size = 24;  // groups straddle blocks: still no propagation with a diagonal H
      const GptqResult r = gptq_quantize(w, h, spec, opt);
      const at::Tensor rtn = fake_quantize_weight(w, spec, mse);
      EXPECT_EQ(max_abs_diff(r.weight, rtn), 0.0)
          << "bits " << spec.bits << " sym " << spec.symmetric << " gs " << spec.group_size
          << " mse " << mse;
      EXPECT_GT(max_abs_diff(r.weight, w), 0.0);
      EXPECT_EQ(r.dead_columns, 0);
      // Loss = sum (w - q)^2 / d^2 / 2 with d^2 = 1 / (H_ii + damp).
      const double damp = 0.01 * h.diagonal().mean().item<double>();
      const double expected =
          ((w.to(at::kDouble) - rtn.to(at::kDouble)).square() * (h.diagonal() + damp))
              .sum()
              .item<double>() /
          2;
      EXPECT_NEAR(r.loss, expected, 1e-9 * expected);
    }
  }
}

TEST(Gptq, BeatsRoundToNearestOnCorrelatedInputs) {
  const at::Tensor x = correlated_inputs(2048, 64, 31);
  at::manual_seed(32);
  const at::Tensor w = at::randn({48, 64});
  const at::Tensor h = hessian_of(x);
  for (int bits : {3, 4}) {
    for (bool sym : {true, false}) {
      const QuantSpec spec = spec_of(bits, sym);
      const GptqResult r = gptq_quantize(w, h, spec);
      const double gptq_err = output_error(x, w, r.weight);
      const double rtn_err = output_error(x, w, fake_quantize_weight(w, spec, true));
      EXPECT_LT(gptq_err, 0.8 * rtn_err) << "bits " << bits << " sym " << sym;
      EXPECT_TRUE(std::isfinite(r.loss));
      EXPECT_GT(r.loss, 0.0);
      // The loss tracks the output error: ||X dW^T||^2 = (n/2) tr(dW H dW^T), and GPTQ's loss
      // is (1/2) tr(dW H dW^T) plus the damping term (measured: 1.05..1.06 x err / n).
      const double n = static_cast<double>(x.size(0));
      EXPECT_GT(r.loss, 0.95 * gptq_err / n);
      EXPECT_LT(r.loss, 1.2 * gptq_err / n);
    }
  }
  // More bits, smaller error.
  const double e3 = output_error(x, w, gptq_quantize(w, h, spec_of(3, true)).weight);
  const double e4 = output_error(x, w, gptq_quantize(w, h, spec_of(4, true)).weight);
  EXPECT_LT(e4, 0.5 * e3);
}

TEST(Gptq, BlockedMatchesUnblockedReference) {
  const at::Tensor x = correlated_inputs(512, 70, 41);
  at::manual_seed(42);
  const at::Tensor w = at::randn({40, 70});
  const at::Tensor h = hessian_of(x);
  for (const QuantSpec& spec : {spec_of(4, true), spec_of(3, false)}) {
    for (bool mse : {true, false}) {
      GptqOptions opt;
      opt.block_size = 16;  // 70 = 4 * 16 + 6: a partial last block
      opt.mse_clip = mse;
      const GptqResult r = gptq_quantize(w, h, spec, opt);
      const RefResult ref = reference_gptq(w, h, spec, mse, opt.damp, opt.block_size);
      EXPECT_LT(max_abs_diff(r.weight, ref.weight), 1e-5)
          << "bits " << spec.bits << " sym " << spec.symmetric << " mse " << mse;
      EXPECT_NEAR(r.loss, ref.loss, 1e-9 * ref.loss);
      // One block covering everything and one column per block give the same weights.
      for (int64_t bs : {int64_t{1}, int64_t{128}}) {
        opt.block_size = bs;
        EXPECT_LT(max_abs_diff(gptq_quantize(w, h, spec, opt).weight, ref.weight), 1e-5)
            << "block_size " << bs;
      }
      // GPTQ actually moved weights away from round-to-nearest.
      EXPECT_GT(max_abs_diff(r.weight, fake_quantize_weight(w, spec, mse)), 0.0);
    }
  }
}

TEST(Gptq, GroupGridsMatchReference) {
  const at::Tensor x = correlated_inputs(512, 64, 51);
  at::manual_seed(52);
  const at::Tensor w = at::randn({40, 64});
  const at::Tensor h = hessian_of(x);
  // gs 8 < block 16: groups starting mid-block take their grid from the block-start state;
  // gs 32 = 2 blocks: every group starts a block, the fully updated state.
  for (int64_t gs : {8, 32}) {
    for (bool sym : {true, false}) {
      const QuantSpec spec = spec_of(4, sym, gs);
      GptqOptions opt;
      opt.block_size = 16;
      const GptqResult r = gptq_quantize(w, h, spec, opt);
      const RefResult ref = reference_gptq(w, h, spec, true, opt.damp, opt.block_size);
      EXPECT_LT(max_abs_diff(r.weight, ref.weight), 1e-5) << "gs " << gs << " sym " << sym;
      EXPECT_NEAR(r.loss, ref.loss, 1e-9 * ref.loss);
      ASSERT_EQ(r.params.scale.size(1), 64 / gs);
      expect_on_grid(r.weight, r.params, spec);
      // Groups beat one grid per row at equal bits.
      const double err_group = output_error(x, w, r.weight);
      const double err_row = output_error(x, w, gptq_quantize(w, h, spec_of(4, sym), opt).weight);
      EXPECT_LT(err_group, err_row) << "gs " << gs << " sym " << sym;
    }
  }
}

TEST(Gptq, DeadColumnIsZeroed) {
  at::Tensor x = correlated_inputs(256, 32, 61);
  x.select(1, 5).zero_();
  at::manual_seed(62);
  const at::Tensor w = at::randn({16, 32});
  const at::Tensor h = hessian_of(x);
  ASSERT_EQ(h[5][5].item<double>(), 0.0);
  for (const QuantSpec& spec : {spec_of(4, true), spec_of(4, false, 8)}) {
    const GptqResult r = gptq_quantize(w, h, spec);
    EXPECT_EQ(r.dead_columns, 1);
    EXPECT_EQ(r.weight.select(1, 5).abs().max().item<double>(), 0.0);
    EXPECT_GT(r.weight.select(1, 6).abs().max().item<double>(), 0.0);
    const RefResult ref = reference_gptq(w, h, spec, true, 0.01, 128);
    EXPECT_LT(max_abs_diff(r.weight, ref.weight), 1e-5);
    EXPECT_TRUE(std::isfinite(r.loss));
  }
  // Every input dead: H = 0 -> all weights 0.
  const GptqResult all_dead = gptq_quantize(w, at::zeros({32, 32}), spec_of(4, true));
  EXPECT_EQ(all_dead.dead_columns, 32);
  EXPECT_EQ(all_dead.weight.abs().max().item<double>(), 0.0);
}

TEST(Gptq, OutputLiesOnGrid) {
  const at::Tensor x = correlated_inputs(512, 64, 71);
  at::manual_seed(72);
  const at::Tensor w = at::randn({24, 64}) * 0.05;
  const at::Tensor h = hessian_of(x);
  for (const QuantSpec& spec :
       {spec_of(2, true), spec_of(3, false), spec_of(4, true, 16), spec_of(8, false, 32)}) {
    for (bool mse : {true, false}) {
      GptqOptions opt;
      opt.mse_clip = mse;
      opt.block_size = 20;
      const GptqResult r = gptq_quantize(w, h, spec, opt);
      SCOPED_TRACE("bits " + std::to_string(spec.bits) + " gs " + std::to_string(spec.group_size));
      expect_on_grid(r.weight, r.params, spec);
      // At most 2^bits distinct values per row (per group).
      const int64_t gs = spec.group_size > 0 ? spec.group_size : 64;
      const at::Tensor first_group = r.weight.slice(1, 0, gs);
      for (int64_t row = 0; row < 3; ++row)
        EXPECT_LE(std::get<0>(at::_unique(first_group.select(0, row))).numel(),
                  int64_t{1} << spec.bits);
    }
  }
  // Per-row grid = round-to-nearest's grid (computed once from the whole weight).
  const WeightQuantParams p = compute_weight_params(w, spec_of(3, false), true);
  const GptqResult r = gptq_quantize(w, h, spec_of(3, false));
  EXPECT_EQ(max_abs_diff(r.params.scale, p.scale), 0.0);
  EXPECT_EQ(max_abs_diff(r.params.zero, p.zero), 0.0);
}

TEST(Gptq, HessianScaleLeavesWeightsUnchanged) {
  const at::Tensor x = correlated_inputs(512, 48, 81);
  at::manual_seed(82);
  const at::Tensor w = at::randn({20, 48});
  const at::Tensor h = hessian_of(x);
  const GptqResult a = gptq_quantize(w, h, spec_of(3, true));
  const GptqResult b = gptq_quantize(w, h * 2048.0, spec_of(3, true));
  EXPECT_LT(max_abs_diff(a.weight, b.weight), 1e-6);
  EXPECT_NEAR(b.loss, 2048.0 * a.loss, 1e-8 * b.loss);
}

TEST(Gptq, DampingRetriesOnSingularHessian) {
  at::manual_seed(91);
  const at::Tensor w = at::randn({8, 16});
  // Rank one: the Cholesky of H without damping fails exactly (second pivot 1 - 1 = 0).
  const at::Tensor ones = at::ones({16, 16}, at::kDouble);
  GptqOptions no_damp;
  no_damp.damp = 0;
  const GptqResult r = gptq_quantize(w, ones, spec_of(4, true), no_damp);
  EXPECT_TRUE(at::isfinite(r.weight).all().item<bool>());
  EXPECT_TRUE(std::isfinite(r.loss));
  expect_on_grid(r.weight, r.params, spec_of(4, true));
  // Negative definite: no damping helps.
  try {
    gptq_quantize(w, -at::eye(16), spec_of(4, true));
    ADD_FAILURE() << "expected respin::Error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("positive definite"), std::string::npos) << e.what();
  }
}

TEST(Gptq, KeepsDtypeAndShape) {
  const at::Tensor x = correlated_inputs(256, 32, 101);
  at::manual_seed(102);
  const at::Tensor w = at::randn({12, 32});
  const at::Tensor h = hessian_of(x).to(at::kFloat);  // a float32 Hessian is accepted too
  for (at::ScalarType t : {at::kFloat, at::kDouble, at::kBFloat16, at::kHalf}) {
    const GptqResult r = gptq_quantize(w.to(t), h, spec_of(4, true));
    EXPECT_EQ(r.weight.scalar_type(), t);
    EXPECT_EQ(r.weight.sizes(), w.sizes());
    // The same as quantizing the dtype-rounded weight in float32 and casting the result.
    const at::Tensor expected = gptq_quantize(w.to(t).to(at::kFloat), h, spec_of(4, true)).weight;
    EXPECT_EQ(max_abs_diff(r.weight, expected.to(t)), 0.0) << t;
    EXPECT_GT(max_abs_diff(r.weight, w), 0.0);
  }
}

TEST(Gptq, Bits16ReturnsInput) {
  at::manual_seed(111);
  const at::Tensor w = at::randn({6, 10});
  const GptqResult r = gptq_quantize(w, at::eye(10), QuantSpec{});
  EXPECT_TRUE(r.weight.is_same(w));
  EXPECT_EQ(r.loss, 0.0);
  EXPECT_EQ(r.dead_columns, 0);
  EXPECT_FALSE(r.params.scale.defined());
}

TEST(Gptq, RejectsBadInput) {
  at::manual_seed(121);
  const at::Tensor w = at::randn({6, 10});
  const at::Tensor h = at::eye(10);
  const QuantSpec s4 = spec_of(4, true);
  EXPECT_THROW(gptq_quantize(w, at::eye(9), s4), Error);      // wrong hessian shape
  EXPECT_THROW(gptq_quantize(w, at::ones({10}), s4), Error);  // 1-D hessian
  EXPECT_THROW(gptq_quantize(w.flatten(), h, s4), Error);     // 1-D weight
  EXPECT_THROW(gptq_quantize(w.to(at::kInt), h, s4), Error);  // integer weight
  at::Tensor nan_w = w.clone();
  nan_w[1][2] = std::nan("");
  EXPECT_THROW(gptq_quantize(nan_w, h, s4), Error);
  at::Tensor inf_h = h.clone();
  inf_h[3][3] = INFINITY;
  EXPECT_THROW(gptq_quantize(w, inf_h, s4), Error);
  EXPECT_THROW(gptq_quantize(w, h, spec_of(4, true, 4)), Error);  // 4 does not divide 10
  EXPECT_THROW(gptq_quantize(w, h, spec_of(9, true)), Error);     // invalid bits
  GptqOptions bad;
  bad.block_size = 0;
  EXPECT_THROW(gptq_quantize(w, h, s4, bad), Error);
  bad = GptqOptions{};
  bad.damp = -1;
  EXPECT_THROW(gptq_quantize(w, h, s4, bad), Error);
  QuantSpec clipped = s4;
  clipped.clip_ratio = 0.9;
  EXPECT_THROW(gptq_quantize(w, h, clipped), Error);  // mse_clip needs clip_ratio 1
  GptqOptions no_mse;
  no_mse.mse_clip = false;
  EXPECT_NO_THROW(gptq_quantize(w, h, clipped, no_mse));
  try {
    gptq_quantize(w, at::eye(9), s4);
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("[10, 10]"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace respin
