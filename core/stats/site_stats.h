// Outlier statistics (torch-free: the run record, the run store and the GUI read them) of activations at the model's hook sites: for each (layer, site) the value
// kurtosis about zero, E[x^4] / E[x^2]^2 (3 for a zero-mean Gaussian; heavy tails give much more;
// taken about zero because symmetric quantization grids are centred there), the per-channel absolute
// maximum, the ratio of the largest to the median channel absmax (how much a few channels
// dominate, which is what makes per-token activation quantization hard), and a histogram of |x|
// over fixed, log-spaced bins (so that histograms compare across layers, runs, and before/after
// rotation).
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/model/hook_site.h"

namespace respin {

// Statistics of the original model (Before) or of what the quantizers see after rotation (After).
enum class StatsStage { Before, After };
const char* stats_stage_name(StatsStage s);  // "before", "after"

// ---- Fixed |x| histogram bins ----
// kHistogramBins bins with fixed edges, the same for every site, layer and run:
//   bin 0        [0, 2^-16)                                   (exact zeros land here)
//   bin k=1..48  [2^(-16 + (k-1)/2), 2^(-16 + k/2))           (half-octave bins; bin 48 ends at 256)
//   bin 49       [256, +inf)
// The irrational half-octave edges are the doubles ldexp(M_SQRT2, j) (M_SQRT2 correctly rounded);
// binning is exact with respect to these double edges for every input dtype.
constexpr int kHistogramBins = 50;
constexpr int kHistogramMinExp2 = -16;  // lower edge of bin 1 is 2^kHistogramMinExp2
constexpr int kHistogramMaxExp2 = 8;    // lower edge of the last bin is 2^kHistogramMaxExp2

// Edges of `bin` (0 <= bin < kHistogramBins, else respin::Error). histogram_bin_lower(0) == 0,
// histogram_bin_upper(kHistogramBins - 1) == +inf, and upper(k) == lower(k + 1).
double histogram_bin_lower(int bin);
double histogram_bin_upper(int bin);
// The bin holding |abs_value| (the sign is ignored); -1 for NaN and +-inf, which observe() counts
// in SiteStats::nonfinite instead of binning.
int histogram_bin(double abs_value);
// The kHistogramBins - 1 finite interior edges, lower(1) .. lower(kHistogramBins - 1).
std::vector<double> histogram_edges();

struct SiteStats {
  int layer = 0;
  HookSite site = HookSite::AttnInput;
  int64_t count = 0;      // finite values seen (NaN/Inf are in `nonfinite`, excluded from all else)
  double sum_sq = 0;      // sum of x^2 (float64)
  double sum_4th = 0;     // sum of x^4 (float64)
  std::vector<double> channel_absmax;
  std::vector<int64_t> histogram = std::vector<int64_t>(kHistogramBins, 0);  // |x| counts; sums to count
  int64_t nonfinite = 0;  // NaN/Inf values seen

  double mean_square() const { return count ? sum_sq / count : 0; }
  double kurtosis() const;          // E[x^4] / E[x^2]^2
  double absmax() const;
  double max_median_ratio() const;  // max channel absmax / median channel absmax
  // Bin-edge estimate of the q-quantile of |x| (0 <= q <= 1, else respin::Error): the upper edge
  // of the first non-empty bin at which the cumulative count reaches q * (sum of the histogram).
  // The true quantile lies at or below the returned edge (within one half-octave bin); +inf when
  // that bin is the last one; 0 for an empty histogram.
  double percentile_abs(double q) const;
};


// ---- JSON ----
// One site: {"layer", "site" (hook_site_name), "count", "nonfinite", "sum_sq", "sum_4th",
// "channel_absmax", "histogram", plus derived "kurtosis", "absmax", "max_median_ratio" for readers
// (ignored when reading)}. Doubles are JSON numbers and round-trip exactly; a non-finite double
// (e.g. a sum that overflowed) is written as the string "inf", "-inf" or "nan".
nlohmann::json site_stats_to_json(const SiteStats& s);
// Validates and throws respin::Error naming the field ("site stats: missing field 'count'").
// "histogram" must have kHistogramBins non-negative entries summing to "count".
SiteStats site_stats_from_json(const nlohmann::json& j);
// {"histogram_edges": histogram_edges(), "sites": [site_stats_to_json(...), ...]}
nlohmann::json stats_to_json(const std::vector<SiteStats>& stats);
// Validates ("stats: sites[3]: missing field 'channel_absmax'"); "histogram_edges" must equal
// this build's histogram_edges().
std::vector<SiteStats> stats_from_json(const nlohmann::json& j);

}  // namespace respin
