// Activation statistics collector (see activation_stats.h); the statistics themselves and their
// histogram bins are in site_stats.cpp.
#include "core/stats/activation_stats.h"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>

#include "core/util/error.h"

namespace respin {

namespace {
constexpr int kFirstOctave = 2 * kHistogramMinExp2;  // log2 of bin 1's lower edge, squared
// float64 biased exponent of x^2 for bin 0 (and below): exponent = biased - 1023.
constexpr int64_t kBiasedExpBin0 = 1023 + kFirstOctave - 1;
// Values per slab of the [N, C] activation in observe(): big enough for libtorch's intra-op
// threads, small enough that the two slab buffers (16 MiB) stay in a server's L3 cache.
constexpr int64_t kSlabElements = int64_t(1) << 20;
}  // namespace

// ---- Collector ----

ActivationStatsCollector::ActivationStatsCollector(std::vector<HookSite> sites) : sites_(std::move(sites)) {}

std::vector<HookSite> ActivationStatsCollector::all_linear_and_qkv_sites() {
  return {HookSite::AttnInput, HookSite::Query,    HookSite::Key,          HookSite::Value,
          HookSite::OProjInput, HookSite::MlpInput, HookSite::DownProjInput};
}

ActivationHook ActivationStatsCollector::hook() {
  return [this](HookSite site, int layer, at::Tensor& x) {
    if (std::find(sites_.begin(), sites_.end(), site) != sites_.end()) observe(site, layer, x);
  };
}

void ActivationStatsCollector::observe(HookSite site, int layer, const at::Tensor& x_in) {
  c10::NoGradGuard no_grad;
  if (x_in.numel() == 0) return;
  if (x_in.is_complex()) throw Error("activation stats: complex activations are not supported");
  // Channels are the last dimension for [B, T, C] sites; Q/K/V ([B, H, T, d]) use head_dim.
  const int64_t channels = x_in.dim() ? x_in.size(-1) : 1;
  const std::pair<int, int> key{layer, static_cast<int>(site)};
  if (auto it = stats_.find(key);
      it != stats_.end() && !it->second.channel_absmax.empty() && int64_t(it->second.channel_absmax.size()) != channels)
    throw Error(std::string("activation stats: ") + hook_site_name(site) + " of layer " + std::to_string(layer) +
                " has " + std::to_string(channels) + " channels, earlier calls had " +
                std::to_string(it->second.channel_absmax.size()));
  const at::Tensor x = x_in.detach().reshape({-1, channels});

  // Row slabs of about kSlabElements values, one after the other; the libtorch ops on a slab run
  // in parallel. Each slab is copied into a reused float64 buffer (so the caller's tensor is only
  // read), small enough to stay in cache across the passes below, whatever the activation's size.
  const int64_t rows = x.size(0);
  const int64_t rows_per_slab = std::max<int64_t>(1, kSlabElements / channels);
  const at::Tensor dbuf = at::empty({std::min(rows_per_slab, rows), channels}, at::kDouble);
  const at::Tensor bbuf = at::empty({dbuf.numel()}, at::kLong);
  double sum_sq = 0, sum_4th = 0;
  int64_t nonfinite = 0;
  std::array<int64_t, kHistogramBins> hist{};
  at::Tensor cmax;  // [C] float64
  for (int64_t r0 = 0; r0 < rows; r0 += rows_per_slab) {
    const int64_t n = std::min(rows_per_slab, rows - r0);
    at::Tensor d = dbuf.narrow(0, 0, n);
    d.copy_(x.narrow(0, r0, n));
    d.abs_();
    at::Tensor cm = d.amax(0);
    if (!cm.isfinite().all().item<bool>()) {  // NaN propagates through amax, Inf shows
      const at::Tensor bad = d.isfinite().logical_not_();
      const int64_t nf = bad.sum().item<int64_t>();
      nonfinite += nf;
      hist[0] -= nf;  // they are zeroed, so counted in bin 0 below
      d.masked_fill_(bad, 0.0);
      cm = d.amax(0);
    }
    cmax = cmax.defined() ? at::maximum(cmax, cm) : cm;
    d.square_();
    sum_sq += d.sum().item<double>();
    // Bin = biased float64 exponent of x^2 minus kBiasedExpBin0, clamped to [0, bins).
    at::Tensor bins = bbuf.narrow(0, 0, d.numel());
    at::bitwise_right_shift_out(bins, d.view(at::kLong).reshape({-1}), 52);
    bins.clamp_(kBiasedExpBin0, kBiasedExpBin0 + kHistogramBins - 1);
    const at::Tensor counts = at::bincount(bins, {}, kBiasedExpBin0 + kHistogramBins)
                                  .narrow(0, kBiasedExpBin0, kHistogramBins)
                                  .contiguous();
    const int64_t* cp = counts.data_ptr<int64_t>();
    for (int k = 0; k < kHistogramBins; ++k) hist[k] += cp[k];
    d.square_();
    sum_4th += d.sum().item<double>();
  }

  SiteStats& s = stats_[key];
  s.layer = layer;
  s.site = site;
  if (s.histogram.size() != size_t(kHistogramBins)) s.histogram.assign(kHistogramBins, 0);
  for (int k = 0; k < kHistogramBins; ++k) s.histogram[k] += hist[k];
  const at::Tensor cm = cmax.contiguous();
  const double* cmp = cm.data_ptr<double>();
  if (s.channel_absmax.empty()) s.channel_absmax.assign(cmp, cmp + channels);
  else
    for (int64_t i = 0; i < channels; ++i) s.channel_absmax[i] = std::max(s.channel_absmax[i], cmp[i]);
  s.sum_sq += sum_sq;
  s.sum_4th += sum_4th;
  s.nonfinite += nonfinite;
  s.count += x.numel() - nonfinite;
}

std::vector<SiteStats> ActivationStatsCollector::results() const {
  std::vector<SiteStats> out;
  for (const auto& [key, s] : stats_) out.push_back(s);
  return out;
}

}  // namespace respin
