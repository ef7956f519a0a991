// core/eval: the perplexity protocol against a direct reference computed in the test
// (per-window loop, float64 log-sum-exp), window cutting, batching, progress, cancellation, errors.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>

#include "core/eval/perplexity.h"
#include "core/model/random_init.h"
#include "core/util/error.h"
#include "core/util/threads.h"

using namespace respin;

namespace {

ModelConfig eval_config() {
  return make_model_config("llama", 32, 64, 2, 4, 4, 40, 64);  // head_dim 8
}

LlamaModel eval_model() {
  RandomInitOptions o;
  o.seed = 3;
  o.std = 0.4;  // peaked predictions, so perplexity is far from the uniform 40
  ModelConfig c = eval_config();
  return LlamaModel(c, random_weights(c, o));
}

std::vector<int> token_stream(int n, int vocab) {
  std::vector<int> ids;
  for (int i = 0; i < n; ++i) ids.push_back((i * 11 + (i / 5) * 3) % vocab);
  return ids;
}

// Direct reference: each window separately, NLL by hand in float64.
double reference_ppl(const LlamaModel& m, const std::vector<int>& ids, int T, int windows) {
  double sum = 0;
  for (int w = 0; w < windows; ++w) {
    std::vector<int64_t> win(ids.begin() + w * T, ids.begin() + (w + 1) * T);
    at::Tensor logits = m.forward(at::tensor(win).view({1, T})).to(at::kDouble)[0];
    double nll = 0;
    for (int t = 0; t + 1 < T; ++t) {
      at::Tensor row = logits[t];
      double mx = row.max().item<double>();
      double lse = mx + std::log((row - mx).exp().sum().item<double>());
      nll += lse - row[win[t + 1]].item<double>();
    }
    sum += nll / (T - 1);
  }
  return std::exp(sum / windows);
}

}  // namespace

TEST(Perplexity, MatchesDirectReference) {
  set_compute_threads(0);
  LlamaModel m = eval_model();
  std::vector<int> ids = token_stream(16 * 5 + 7, 40);  // 5 full windows + a dropped tail
  PerplexityOptions o;
  o.seq_len = 16;
  PerplexityResult r = evaluate_perplexity(m, ids, o);
  EXPECT_EQ(r.windows, 5);
  EXPECT_EQ(r.tokens_total, 87);
  EXPECT_EQ(r.tokens_forward, 80);
  ASSERT_EQ(r.window_nll.size(), 5u);
  const double ref = reference_ppl(m, ids, 16, 5);
  EXPECT_NEAR(r.perplexity / ref, 1.0, 1e-5) << r.perplexity << " vs " << ref;
  EXPECT_NEAR(std::log(r.perplexity), r.mean_nll, 1e-12);
  EXPECT_GT(r.perplexity, 1.0);
  EXPECT_GT(r.tokens_per_s, 0.0);
  // PPL is exp of the mean of per-window means, not the pooled token mean: check the aggregation.
  double mean = 0;
  for (double v : r.window_nll) mean += v / 5;
  EXPECT_NEAR(r.mean_nll, mean, 1e-12);
}

TEST(Perplexity, BatchingAndMaxWindowsDoNotChangeTheWindows) {
  LlamaModel m = eval_model();
  std::vector<int> ids = token_stream(12 * 7, 40);
  PerplexityOptions o;
  o.seq_len = 12;
  PerplexityResult one = evaluate_perplexity(m, ids, o);
  o.batch_size = 3;
  PerplexityResult three = evaluate_perplexity(m, ids, o);
  ASSERT_EQ(one.windows, 7);
  ASSERT_EQ(three.windows, 7);
  for (int i = 0; i < 7; ++i) EXPECT_NEAR(one.window_nll[i], three.window_nll[i], 1e-5);
  o.max_windows = 2;
  PerplexityResult two = evaluate_perplexity(m, ids, o);
  EXPECT_EQ(two.windows, 2);
  EXPECT_NEAR(two.perplexity / reference_ppl(m, ids, 12, 2), 1.0, 1e-5);
}

TEST(Perplexity, ProgressAndCancellation) {
  LlamaModel m = eval_model();
  std::vector<int> ids = token_stream(8 * 10, 40);
  PerplexityOptions o;
  o.seq_len = 8;
  RunControl control;
  std::vector<ProgressEvent> events;
  control.set_progress_callback([&](const ProgressEvent& e) { events.push_back(e); }, 0);
  evaluate_perplexity(m, ids, o, &control);
  ASSERT_EQ(events.size(), 10u);
  EXPECT_EQ(events.back().done, 10);
  EXPECT_EQ(events.back().total, 10);
  EXPECT_EQ(events.front().phase, "eval");

  RunControl stopper;
  int calls = 0;
  stopper.set_progress_callback([&](const ProgressEvent&) { if (++calls == 3) stopper.request_stop(); }, 0);
  EXPECT_THROW(evaluate_perplexity(m, ids, o, &stopper), Cancelled);
  EXPECT_EQ(calls, 3);
}

TEST(Perplexity, Errors) {
  LlamaModel m = eval_model();
  PerplexityOptions o;
  o.seq_len = 32;
  try {
    evaluate_perplexity(m, token_stream(20, 40), o);
    ADD_FAILURE() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("fewer than one window"), std::string::npos) << e.what();
  }
  std::vector<int> ids = token_stream(64, 40);
  ids[5] = 40;
  try {
    evaluate_perplexity(m, ids, o);
    ADD_FAILURE() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("outside the model's vocabulary"), std::string::npos) << e.what();
  }
  // A NaN produced inside the forward (here injected through a hook) is reported, not averaged.
  m.set_hook([](HookSite site, int layer, at::Tensor& x) {
    if (site == HookSite::MlpInput && layer == 1) x = x.clone(), x[0][3][0] = NAN;
  });
  try {
    evaluate_perplexity(m, token_stream(64, 40), o);
    ADD_FAILURE() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("non-finite"), std::string::npos) << e.what();
  }
}
