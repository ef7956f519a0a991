// Collects the outlier statistics of site_stats.h from a model's activations at its hook sites.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "core/model/llama.h"
#include "core/stats/site_stats.h"

namespace respin {

// Accumulates statistics over any number of forwards. Install with `model.set_hook(
// collector.hook())`; observes only (never modifies activations). Not thread-safe.
class ActivationStatsCollector {
 public:
  explicit ActivationStatsCollector(std::vector<HookSite> sites = {HookSite::AttnInput, HookSite::OProjInput,
                                                                   HookSite::MlpInput, HookSite::DownProjInput});
  // The inputs of every linear layer of a decoder layer plus the attention's Q/K/V:
  // {AttnInput, Query, Key, Value, OProjInput, MlpInput, DownProjInput}.
  static std::vector<HookSite> all_linear_and_qkv_sites();

  ActivationHook hook();
  // Channels are the last dimension: hidden/intermediate for [B, T, C] sites, head_dim for Q/K/V
  // ([B, H, T, d]). Any dtype (computed in float64); empty tensors are ignored; the channel count
  // must not change between calls for one (layer, site) (respin::Error).
  void observe(HookSite site, int layer, const at::Tensor& x);
  // Ordered by (layer, site).
  std::vector<SiteStats> results() const;

 private:
  std::vector<HookSite> sites_;
  std::map<std::pair<int, int>, SiteStats> stats_;
};

}  // namespace respin
