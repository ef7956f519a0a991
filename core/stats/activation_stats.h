// Outlier statistics of activations at the model's hook sites: for each (layer, site) the value
// kurtosis about zero, E[x^4] / E[x^2]^2 (3 for a zero-mean Gaussian; heavy tails give much more;
// taken about zero because symmetric quantization grids are centred there), the per-channel absolute
// maximum, and the ratio of the largest to the median channel absmax (how much a few channels
// dominate, which is what makes per-token activation quantization hard).
#pragma once

#include <ATen/core/Tensor.h>

#include <map>
#include <string>
#include <vector>

#include "core/model/llama.h"

namespace respin {

struct SiteStats {
  int layer = 0;
  HookSite site = HookSite::AttnInput;
  int64_t count = 0;   // values seen
  double sum_sq = 0;   // sum of x^2 (float64)
  double sum_4th = 0;  // sum of x^4 (float64)
  std::vector<double> channel_absmax;

  double mean_square() const { return count ? sum_sq / count : 0; }
  double kurtosis() const;          // E[x^4] / E[x^2]^2
  double absmax() const;
  double max_median_ratio() const;  // max channel absmax / median channel absmax
};

// Accumulates statistics over any number of forwards. Install with `model.set_hook(
// collector.hook())`; observes only (never modifies activations). Not thread-safe.
class ActivationStatsCollector {
 public:
  explicit ActivationStatsCollector(std::vector<HookSite> sites = {HookSite::AttnInput, HookSite::OProjInput,
                                                                   HookSite::MlpInput, HookSite::DownProjInput});
  ActivationHook hook();
  void observe(HookSite site, int layer, const at::Tensor& x);
  // Ordered by (layer, site).
  std::vector<SiteStats> results() const;

 private:
  std::vector<HookSite> sites_;
  std::map<std::pair<int, int>, SiteStats> stats_;
};

}  // namespace respin
