// Activation outlier statistics (see activation_stats.h).
#include "core/stats/activation_stats.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>

namespace respin {

double SiteStats::kurtosis() const {
  const double ms = mean_square();
  return ms > 0 ? (sum_4th / count) / (ms * ms) : 0;
}

double SiteStats::absmax() const {
  return channel_absmax.empty() ? 0 : *std::max_element(channel_absmax.begin(), channel_absmax.end());
}

double SiteStats::max_median_ratio() const {
  if (channel_absmax.empty()) return 0;
  std::vector<double> v = channel_absmax;
  std::nth_element(v.begin(), v.begin() + v.size() / 2, v.end());
  const double median = v[v.size() / 2];
  return median > 0 ? absmax() / median : 0;
}

ActivationStatsCollector::ActivationStatsCollector(std::vector<HookSite> sites) : sites_(std::move(sites)) {}

ActivationHook ActivationStatsCollector::hook() {
  return [this](HookSite site, int layer, at::Tensor& x) {
    if (std::find(sites_.begin(), sites_.end(), site) != sites_.end()) observe(site, layer, x);
  };
}

void ActivationStatsCollector::observe(HookSite site, int layer, const at::Tensor& x_in) {
  at::NoGradGuard no_grad;
  // Channels are the last dimension for [B, T, C] sites; Q/K/V ([B, H, T, d]) use head_dim.
  at::Tensor x = x_in.detach().to(at::kDouble).reshape({-1, x_in.size(-1)});
  SiteStats& s = stats_[{layer, static_cast<int>(site)}];
  s.layer = layer;
  s.site = site;
  s.count += x.numel();
  s.sum_sq += x.pow(2).sum().item<double>();
  s.sum_4th += x.pow(4).sum().item<double>();
  at::Tensor cmax = x.abs().amax(0).contiguous();
  const double* p = cmax.data_ptr<double>();
  if (s.channel_absmax.empty()) s.channel_absmax.assign(p, p + cmax.numel());
  else
    for (int64_t i = 0; i < cmax.numel(); ++i) s.channel_absmax[i] = std::max(s.channel_absmax[i], p[i]);
}

std::vector<SiteStats> ActivationStatsCollector::results() const {
  std::vector<SiteStats> out;
  for (const auto& [key, s] : stats_) out.push_back(s);
  return out;
}

}  // namespace respin
