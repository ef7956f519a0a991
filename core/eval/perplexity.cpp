// Perplexity protocol (see perplexity.h).
#include "core/eval/perplexity.h"

#include <ATen/ATen.h>

#include <chrono>
#include <cmath>

#include <c10/core/GradMode.h>

#include "core/model/layer_stream.h"
#include "core/util/error.h"

namespace respin {

std::vector<double> window_mean_nll(const at::Tensor& logits, const at::Tensor& ids) {
  const int64_t T = ids.size(1);
  at::Tensor lp = at::log_softmax(logits.narrow(1, 0, T - 1).to(at::kFloat), -1);
  at::Tensor target = ids.narrow(1, 1, T - 1).unsqueeze(-1).to(lp.device());
  at::Tensor nll = -lp.gather(-1, target).squeeze(-1).to(at::kCPU, at::kDouble).mean(1).contiguous();  // [B]
  std::vector<double> out(nll.data_ptr<double>(), nll.data_ptr<double>() + nll.numel());
  return out;
}

namespace {

// The windows the protocol scores, [windows, seq_len], checked against the vocabulary; r's text
// fields filled.
at::Tensor scored_windows(const std::vector<int>& token_ids, const PerplexityOptions& o, int64_t vocab,
                          PerplexityResult& r) {
  if (o.seq_len < 2) throw Error("seq_len must be at least 2");
  r.seq_len = o.seq_len;
  r.tokens_total = static_cast<int64_t>(token_ids.size());
  int64_t windows = r.tokens_total / o.seq_len;
  if (windows == 0)
    throw Error("text has " + std::to_string(r.tokens_total) + " tokens, fewer than one window of " +
                std::to_string(o.seq_len));
  if (o.max_windows > 0 && windows > o.max_windows) windows = o.max_windows;
  for (int64_t i = 0; i < windows * o.seq_len; ++i)
    if (token_ids[i] < 0 || token_ids[i] >= vocab)
      throw Error("token id " + std::to_string(token_ids[i]) + " is outside the model's vocabulary (" +
                  std::to_string(vocab) + ")");
  return at::tensor(std::vector<int64_t>(token_ids.begin(), token_ids.begin() + windows * o.seq_len))
      .view({windows, o.seq_len});
}

void add_window_loss(PerplexityResult& r, double v, double& nll_sum) {
  if (!std::isfinite(v))
    throw Error("window " + std::to_string(r.window_nll.size()) +
                " has a non-finite loss: NaN or Inf in the model's "
                "activations or output (overflowing weights or inputs)");
  r.window_nll.push_back(v);
  nll_sum += v;
}

void finish(PerplexityResult& r, int64_t windows, double nll_sum, double seconds) {
  r.seconds = seconds;
  r.windows = windows;
  r.tokens_forward = windows * r.seq_len;
  r.mean_nll = nll_sum / windows;
  r.perplexity = std::exp(r.mean_nll);
  r.tokens_per_s = r.seconds > 0 ? r.tokens_forward / r.seconds : 0;
}

}  // namespace

PerplexityResult evaluate_perplexity(const LlamaModel& model, const std::vector<int>& token_ids,
                                     const PerplexityOptions& o, RunControl* control) {
  PerplexityResult r;
  const at::Tensor all = scored_windows(token_ids, o, model.config().vocab_size, r);
  const int64_t windows = all.size(0);
  const auto start = std::chrono::steady_clock::now();
  ForwardContext ctx = model.make_context(o.seq_len);
  double nll_sum = 0;
  for (int64_t w = 0; w < windows; ++w) {
    if (control) control->check();
    at::Tensor ids = all.narrow(0, w, 1);  // one window per forward (see PerplexityOptions)
    at::Tensor h = model.embed(ids);
    for (int i = 0; i < model.config().num_hidden_layers; ++i) h = model.layer_forward(i, h, ctx);
    std::vector<double> nll = window_mean_nll(model.head(h), ids);
    for (double v : nll) add_window_loss(r, v, nll_sum);
    if (control) {
      const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      const int64_t done = static_cast<int64_t>(r.window_nll.size());
      ProgressEvent ev;
      ev.phase = "eval";
      ev.done = done;
      ev.total = windows;
      ev.tokens_per_s = secs > 0 ? done * o.seq_len / secs : 0;
      ev.eta_s = secs / done * (windows - done);
      ev.value = std::exp(nll_sum / done);
      control->report(ev, done == windows);
    }
  }
  finish(r, windows, nll_sum, std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  return r;
}

PerplexityResult evaluate_perplexity_streamed(LayerStream& model, const std::vector<int>& token_ids,
                                              const PerplexityOptions& o, at::Device hidden_on, RunControl* control) {
  c10::NoGradGuard no_grad;
  PerplexityResult r;
  const at::Tensor all = scored_windows(token_ids, o, model.config().vocab_size, r);
  const int64_t windows = all.size(0);
  const int layers = static_cast<int>(model.config().num_hidden_layers);
  const auto start = std::chrono::steady_clock::now();
  auto report = [&](int done, double value) {
    if (!control) return;
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    ProgressEvent ev;
    ev.phase = "eval";
    ev.done = done;
    ev.total = layers + 1;
    ev.layer = done <= layers ? done - 1 : -1;
    ev.tokens_per_s = secs > 0 ? done * windows * o.seq_len / secs / (layers + 1) : 0;
    ev.eta_s = done > 0 ? secs / done * (layers + 1 - done) : 0;
    ev.value = value;
    control->report(ev, done == layers + 1);
  };
  const ForwardContext ctx = model.make_context(o.seq_len);
  std::vector<at::Tensor> hidden = model.embed(all, 1, hidden_on);  // one window per forward
  for (int i = 0; i < layers; ++i) {
    if (control) control->check();
    model.forward_layer(i, hidden, ctx);
    report(i + 1, 0);
  }
  double nll_sum = 0;
  model.head(hidden, [&](size_t w, const at::Tensor& logits) {
    for (double v : window_mean_nll(logits, all.narrow(0, static_cast<int64_t>(w), 1))) add_window_loss(r, v, nll_sum);
  });
  finish(r, windows, nll_sum, std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  report(layers + 1, r.perplexity);
  return r;
}

}  // namespace respin
