// Activation outlier statistics (see activation_stats.h).
#include "core/stats/site_stats.h"


#include <algorithm>
#include <array>
#include <cmath>
#include <limits>

#include "core/util/error.h"
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace respin {

// ---- Histogram bins ----
//
// Bin k >= 1 of |x| is [2^(m + (k-1)/2), 2^(m + k/2)) with m = kHistogramMinExp2, i.e. x^2 lies in
// the octave [2^(2m + k - 1), 2^(2m + k)): the bin is floor(log2(x^2)) - 2m + 1, read exactly from
// the binary exponent of x^2 in float64. For float32/float16/bfloat16 inputs x^2 is exact in
// float64. For float64 inputs the rounding of x^2 is monotonic and does not move a value across an
// edge: at the power-of-two edges x^2 is exact, and for the half-octave edges ldexp(M_SQRT2, j)
// (M_SQRT2 > sqrt(2)) the square of the edge rounds to >= 2^(2j+1) while the square of the double
// just below it rounds to < 2^(2j+1). So binning agrees exactly with histogram_bin_lower().

namespace {

constexpr int kFirstOctave = 2 * kHistogramMinExp2;  // log2 of bin 1's lower edge, squared
static_assert(kHistogramBins == 2 * (kHistogramMaxExp2 - kHistogramMinExp2) + 2, "bin layout");
constexpr double kSqrt2 = 1.41421356237309504880;  // rounds to the double nearest sqrt(2) (M_SQRT2)

void check_bin(int bin) {
  if (bin < 0 || bin >= kHistogramBins)
    throw Error("histogram bin " + std::to_string(bin) + " out of range [0, " + std::to_string(kHistogramBins) +
                ")");
}


}  // namespace

double histogram_bin_lower(int bin) {
  check_bin(bin);
  if (bin == 0) return 0;
  const int m = bin - 1;
  return std::ldexp(m % 2 ? kSqrt2 : 1.0, kHistogramMinExp2 + m / 2);
}

double histogram_bin_upper(int bin) {
  check_bin(bin);
  return bin == kHistogramBins - 1 ? std::numeric_limits<double>::infinity() : histogram_bin_lower(bin + 1);
}

int histogram_bin(double abs_value) {
  if (!std::isfinite(abs_value)) return -1;
  const double a = std::fabs(abs_value);
  if (a < std::ldexp(1.0, kHistogramMinExp2)) return 0;
  if (a >= std::ldexp(1.0, kHistogramMaxExp2)) return kHistogramBins - 1;
  return std::ilogb(a * a) - kFirstOctave + 1;
}

std::vector<double> histogram_edges() {
  std::vector<double> e;
  for (int k = 1; k < kHistogramBins; ++k) e.push_back(histogram_bin_lower(k));
  return e;
}

// ---- SiteStats ----

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

double SiteStats::percentile_abs(double q) const {
  if (!(q >= 0 && q <= 1)) throw Error("percentile_abs: q must be in [0, 1], got " + std::to_string(q));
  if (histogram.size() != size_t(kHistogramBins))
    throw Error("percentile_abs: histogram has " + std::to_string(histogram.size()) + " bins, expected " +
                std::to_string(kHistogramBins));
  int64_t total = 0;
  for (int64_t n : histogram) total += n;
  if (total == 0) return 0;
  const double target = q * double(total);
  int64_t cum = 0;
  for (int k = 0; k < kHistogramBins; ++k) {
    cum += histogram[k];
    if (cum > 0 && double(cum) >= target) return histogram_bin_upper(k);
  }
  return histogram_bin_upper(kHistogramBins - 1);
}


// ---- JSON ----

namespace {

using nlohmann::json;

json number(double v) {
  if (std::isfinite(v)) return v;
  if (std::isnan(v)) return "nan";
  return v > 0 ? "inf" : "-inf";
}

const json& field(const json& j, const char* name, const std::string& ctx) {
  if (!j.is_object()) throw Error(ctx + ": expected a JSON object");
  auto it = j.find(name);
  if (it == j.end()) throw Error(ctx + ": missing field '" + name + "'");
  return *it;
}

int64_t as_int(const json& v, const std::string& what, const std::string& ctx) {
  if (!v.is_number_integer() ||
      (v.is_number_unsigned() && v.get<uint64_t>() > uint64_t(std::numeric_limits<int64_t>::max())))
    throw Error(ctx + ": field '" + what + "' must be an integer");
  return v.get<int64_t>();
}

int64_t as_count(const json& v, const std::string& what, const std::string& ctx) {
  const int64_t n = as_int(v, what, ctx);
  if (n < 0) throw Error(ctx + ": field '" + what + "' must not be negative");
  return n;
}

double as_double(const json& v, const std::string& what, const std::string& ctx) {
  if (v.is_number()) return v.get<double>();
  if (v.is_string()) {
    const std::string& s = v.get_ref<const std::string&>();
    if (s == "inf") return std::numeric_limits<double>::infinity();
    if (s == "-inf") return -std::numeric_limits<double>::infinity();
    if (s == "nan") return std::numeric_limits<double>::quiet_NaN();
  }
  throw Error(ctx + ": field '" + what + "' must be a number");
}

const json& as_array(const json& v, const std::string& what, const std::string& ctx) {
  if (!v.is_array()) throw Error(ctx + ": field '" + what + "' must be an array");
  return v;
}

SiteStats parse_site(const json& j, const std::string& ctx) {
  SiteStats s;
  const int64_t layer = as_int(field(j, "layer", ctx), "layer", ctx);
  if (layer < std::numeric_limits<int>::min() || layer > std::numeric_limits<int>::max())
    throw Error(ctx + ": field 'layer' out of range");
  s.layer = int(layer);
  const json& site = field(j, "site", ctx);
  if (!site.is_string()) throw Error(ctx + ": field 'site' must be a string");
  try {
    s.site = hook_site_from_name(site.get<std::string>());
  } catch (const Error& e) {
    throw Error(ctx + ": field 'site': " + e.what());
  }
  s.count = as_count(field(j, "count", ctx), "count", ctx);
  s.nonfinite = as_count(field(j, "nonfinite", ctx), "nonfinite", ctx);
  s.sum_sq = as_double(field(j, "sum_sq", ctx), "sum_sq", ctx);
  s.sum_4th = as_double(field(j, "sum_4th", ctx), "sum_4th", ctx);

  const json& cm = as_array(field(j, "channel_absmax", ctx), "channel_absmax", ctx);
  s.channel_absmax.clear();
  for (size_t i = 0; i < cm.size(); ++i)
    s.channel_absmax.push_back(as_double(cm[i], "channel_absmax[" + std::to_string(i) + "]", ctx));

  const json& h = as_array(field(j, "histogram", ctx), "histogram", ctx);
  if (h.size() != size_t(kHistogramBins))
    throw Error(ctx + ": field 'histogram' must have " + std::to_string(kHistogramBins) + " entries, got " +
                std::to_string(h.size()));
  int64_t total = 0;
  for (int k = 0; k < kHistogramBins; ++k) {
    s.histogram[k] = as_count(h[k], "histogram[" + std::to_string(k) + "]", ctx);
    total += s.histogram[k];
  }
  if (total != s.count)
    throw Error(ctx + ": field 'histogram' sums to " + std::to_string(total) + " but 'count' is " +
                std::to_string(s.count));
  return s;
}

}  // namespace

nlohmann::json site_stats_to_json(const SiteStats& s) {
  json cm = json::array();
  for (double v : s.channel_absmax) cm.push_back(number(v));
  return json{
      {"layer", s.layer},
      {"site", hook_site_name(s.site)},
      {"count", s.count},
      {"nonfinite", s.nonfinite},
      {"sum_sq", number(s.sum_sq)},
      {"sum_4th", number(s.sum_4th)},
      {"channel_absmax", std::move(cm)},
      {"histogram", s.histogram},
      // Derived, for readers; ignored by site_stats_from_json.
      {"kurtosis", number(s.kurtosis())},
      {"absmax", number(s.absmax())},
      {"max_median_ratio", number(s.max_median_ratio())},
  };
}

SiteStats site_stats_from_json(const nlohmann::json& j) { return parse_site(j, "site stats"); }

nlohmann::json stats_to_json(const std::vector<SiteStats>& stats) {
  json sites = json::array();
  for (const SiteStats& s : stats) sites.push_back(site_stats_to_json(s));
  return json{{"histogram_edges", histogram_edges()}, {"sites", std::move(sites)}};
}

std::vector<SiteStats> stats_from_json(const nlohmann::json& j) {
  const std::string ctx = "stats";
  const json& edges = as_array(field(j, "histogram_edges", ctx), "histogram_edges", ctx);
  const std::vector<double> expected = histogram_edges();
  bool same = edges.size() == expected.size();
  for (size_t i = 0; same && i < edges.size(); ++i)
    same = as_double(edges[i], "histogram_edges[" + std::to_string(i) + "]", ctx) == expected[i];
  if (!same) throw Error(ctx + ": field 'histogram_edges' does not match this build's fixed histogram bins");
  const json& sites = as_array(field(j, "sites", ctx), "sites", ctx);
  std::vector<SiteStats> out;
  for (size_t i = 0; i < sites.size(); ++i) out.push_back(parse_site(sites[i], ctx + ": sites[" + std::to_string(i) + "]"));
  return out;
}

const char* stats_stage_name(StatsStage s) { return s == StatsStage::Before ? "before" : "after"; }

}  // namespace respin
