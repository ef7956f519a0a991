// core/eval: the perplexity protocol against a direct reference computed in the test
// (per-window loop, float64 log-sum-exp), window cutting, one forward per window, progress, cancellation, errors.
#include <ATen/ATen.h>
#include <ATen/record_function.h>
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <string>

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

// Every matrix product issued while `fn` runs on this thread, with the rows it multiplies: for
// mm/addmm the rows of the left matrix, for bmm/baddbmm the number of matrices in the batch.
struct GemmCall {
  std::string op;
  int64_t rows = 0;
};
std::vector<GemmCall>* g_gemms = nullptr;

std::unique_ptr<at::ObserverContext> record_gemm(const at::RecordFunction& fn) {
  const std::string name = fn.name();
  const bool plain = name == "aten::mm" || name == "aten::bmm";
  const bool with_bias = name == "aten::addmm" || name == "aten::baddbmm";
  if (g_gemms && (plain || with_bias)) {
    const auto inputs = fn.inputs();
    const size_t i = with_bias ? 1 : 0;
    if (inputs.size() > i && inputs[i].isTensor()) g_gemms->push_back({name, inputs[i].toTensor().size(0)});
  }
  return nullptr;
}

std::vector<GemmCall> gemms_of(const std::function<void()>& fn) {
  std::vector<GemmCall> calls;
  struct Probe {  // removed however fn ends
    explicit Probe(std::vector<GemmCall>* c)
        : handle(at::addThreadLocalCallback(at::RecordFunctionCallback(record_gemm).needsInputs(true))) {
      g_gemms = c;
    }
    ~Probe() {
      at::removeCallback(handle);
      g_gemms = nullptr;
    }
    at::CallbackHandle handle;
  } probe(&calls);
  fn();
  return calls;
}

// A window's loss is a function of its own tokens: each window is its own forward, so no matrix
// product spans two windows (a taller product lets the BLAS choose another kernel, and on AVX-512
// CPUs it does, which moved a 4-bit run's perplexity by 1.3e-3 between batchings).
TEST(Perplexity, EachWindowIsScoredByItsOwnForward) {
  set_compute_threads(0);
  LlamaModel m = eval_model();
  const int T = 12, windows = 7;
  std::vector<int> ids = token_stream(T * windows, 40);
  PerplexityOptions o;
  o.seq_len = T;
  PerplexityResult all;
  const std::vector<GemmCall> calls = gemms_of([&] { all = evaluate_perplexity(m, ids, o); });
  ASSERT_EQ(all.windows, windows);
  ASSERT_FALSE(calls.empty());  // the probe sees the model's products
  const int64_t heads = m.config().num_attention_heads;
  for (const GemmCall& c : calls) {
    if (c.op == "aten::mm" || c.op == "aten::addmm") EXPECT_LE(c.rows, T) << c.op;
    else EXPECT_LE(c.rows, heads) << c.op;  // [1 window x heads] matrices of at most T rows
  }
  // The same numbers as each window scored alone, bit for bit, wherever it sits in the text.
  // (Not across thread counts: no BLAS promises the same bits for another thread split.)
  for (int w = 0; w < windows; ++w) {
    std::vector<int> one(ids.begin() + w * T, ids.begin() + (w + 1) * T);
    EXPECT_EQ(evaluate_perplexity(m, one, o).window_nll.at(0), all.window_nll[w]) << "window " << w;
  }
}

TEST(Perplexity, MaxWindowsCutsTheText) {
  LlamaModel m = eval_model();
  std::vector<int> ids = token_stream(12 * 7, 40);
  PerplexityOptions o;
  o.seq_len = 12;
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
