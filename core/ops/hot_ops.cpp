// Hot operations (see hot_ops.h): libtorch compositions on every device for now.
#include "core/ops/hot_ops.h"

#include <ATen/ATen.h>

#include "core/stats/activation_stats.h"

namespace respin::ops {

at::Tensor linear(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b) {
  return b.defined() ? at::linear(x, w, b) : at::linear(x, w);
}

at::Tensor hadamard(const at::Tensor& x, const HadamardTransform& h) { return h.apply(x); }

at::Tensor fake_quantize_tokens(const at::Tensor& x, const QuantSpec& spec, bool ste) {
  return ste ? fake_quantize_activation_ste(x, spec) : fake_quantize_activation(x, spec);
}

at::Tensor fake_quantize_kv(const at::Tensor& x, const QuantSpec& spec, bool ste) {
  if (!ste) return respin::fake_quantize_kv(x, spec);
  return fake_quantize_ste(x, respin::fake_quantize_kv(x.detach(), spec));
}

at::Tensor dense_transition(const at::Tensor& h, const at::Tensor& t) { return at::matmul(h, t.to(h.scalar_type())); }

at::Tensor residual_correction(const at::Tensor& h, const ResidualCorrection& c) { return apply_correction(h, c); }

std::vector<int64_t> abs_histogram(const at::Tensor& x) {
  ActivationStatsCollector collector({HookSite::AttnInput});
  collector.observe(HookSite::AttnInput, 0, x);
  std::vector<SiteStats> r = collector.results();
  return r.empty() ? std::vector<int64_t>(kHistogramBins, 0) : r[0].histogram;
}

}  // namespace respin::ops
