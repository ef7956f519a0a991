// core/stats: activation outlier statistics. The fixed |x| histogram bins (edges, lookup, exact
// agreement of the vectorized binning in observe() with histogram_bin() at every edge for float32
// and float64), hand-counted histograms, accumulation over calls and row slabs, moments against a
// float64 reference, kurtosis/max-median ratio on known distributions, NaN/Inf handling,
// percentile_abs, the JSON round trip and its validation, and that the hook only reads.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cfloat>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "core/stats/activation_stats.h"
#include "core/util/error.h"

namespace respin {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

// Histogram of |v| by the scalar reference histogram_bin().
std::vector<int64_t> scalar_histogram(const at::Tensor& t) {
  std::vector<int64_t> h(kHistogramBins, 0);
  const at::Tensor d = t.to(at::kDouble).contiguous().reshape({-1});
  const double* p = d.data_ptr<double>();
  for (int64_t i = 0; i < d.numel(); ++i) {
    const int b = histogram_bin(p[i]);
    if (b >= 0) ++h[b];
  }
  return h;
}

SiteStats observe_one(const at::Tensor& x, HookSite site = HookSite::AttnInput, int layer = 0) {
  ActivationStatsCollector c({site});
  c.observe(site, layer, x);
  const std::vector<SiteStats> r = c.results();
  EXPECT_EQ(r.size(), 1u);
  return r.at(0);
}

int64_t histogram_sum(const SiteStats& s) {
  int64_t n = 0;
  for (int64_t v : s.histogram) n += v;
  return n;
}

template <typename F>
void expect_error_containing(F&& f, const std::vector<std::string>& parts) {
  try {
    f();
    ADD_FAILURE() << "expected respin::Error";
  } catch (const Error& e) {
    const std::string msg = e.what();
    for (const std::string& p : parts) EXPECT_NE(msg.find(p), std::string::npos) << "'" << p << "' not in: " << msg;
  }
}

// ---------------------------------------------------------------------------------------------
// Bins

TEST(HistogramBins, LookupOfKnownValues) {
  const double lo = std::ldexp(1.0, -16);
  EXPECT_EQ(histogram_bin(0.0), 0);
  EXPECT_EQ(histogram_bin(-0.0), 0);
  EXPECT_EQ(histogram_bin(lo), 1);
  EXPECT_EQ(histogram_bin(std::nextafter(lo, 0.0)), 0);
  EXPECT_EQ(histogram_bin(1e-30), 0);
  EXPECT_EQ(histogram_bin(DBL_TRUE_MIN), 0);
  const int one = histogram_bin(1.0);
  EXPECT_EQ(one, 33);  // 2^0 = 2^(-16 + 32/2): lower edge of bin 33
  EXPECT_LE(histogram_bin_lower(one), 1.0);
  EXPECT_LT(1.0, histogram_bin_upper(one));
  EXPECT_EQ(histogram_bin(1.5), 34);  // [sqrt(2), 2)
  EXPECT_EQ(histogram_bin(2.0), 35);
  EXPECT_EQ(histogram_bin(3.0), 36);  // [2 sqrt(2), 4)
  EXPECT_EQ(histogram_bin(-3.0), 36);  // sign ignored
  EXPECT_EQ(histogram_bin(255.9), 48);
  EXPECT_EQ(histogram_bin(std::nextafter(256.0, 0.0)), 48);
  EXPECT_EQ(histogram_bin(256.0), 49);
  EXPECT_EQ(histogram_bin(1e30), 49);
  EXPECT_EQ(histogram_bin(DBL_MAX), 49);
  EXPECT_EQ(histogram_bin(kNaN), -1);
  EXPECT_EQ(histogram_bin(kInf), -1);
  EXPECT_EQ(histogram_bin(-kInf), -1);
}

TEST(HistogramBins, EdgesAreConsistent) {
  EXPECT_EQ(kHistogramBins, 50);
  EXPECT_EQ(histogram_bin_lower(0), 0.0);
  EXPECT_EQ(histogram_bin_upper(0), std::ldexp(1.0, -16));
  EXPECT_EQ(histogram_bin_lower(48), std::ldexp(1.0, 7) * std::sqrt(2.0));
  EXPECT_EQ(histogram_bin_upper(48), 256.0);
  EXPECT_EQ(histogram_bin_lower(49), 256.0);
  EXPECT_EQ(histogram_bin_upper(49), kInf);
  for (int k = 0; k < kHistogramBins; ++k) {
    SCOPED_TRACE("bin " + std::to_string(k));
    EXPECT_LT(histogram_bin_lower(k), histogram_bin_upper(k));
    if (k + 1 < kHistogramBins) {
      EXPECT_EQ(histogram_bin_upper(k), histogram_bin_lower(k + 1));
    }
    if (k >= 1) {
      EXPECT_NEAR(histogram_bin_lower(k) / std::pow(2.0, -16 + (k - 1) / 2.0), 1.0, 1e-15);
      EXPECT_EQ(histogram_bin(histogram_bin_lower(k)), k);
      EXPECT_EQ(histogram_bin(std::nextafter(histogram_bin_lower(k), 0.0)), k - 1);
    }
    if (k + 1 < kHistogramBins) {
      EXPECT_EQ(histogram_bin(std::nextafter(histogram_bin_upper(k), 0.0)), k);
      EXPECT_EQ(histogram_bin(0.5 * (histogram_bin_lower(k) + histogram_bin_upper(k))), k);
    }
  }
  const std::vector<double> edges = histogram_edges();
  ASSERT_EQ(edges.size(), size_t(kHistogramBins - 1));
  for (int k = 1; k < kHistogramBins; ++k) EXPECT_EQ(edges[k - 1], histogram_bin_lower(k));
  EXPECT_THROW(histogram_bin_lower(-1), Error);
  EXPECT_THROW(histogram_bin_upper(kHistogramBins), Error);
}

// The vectorized binning in observe() must agree with histogram_bin() exactly, including values
// one ulp either side of every edge, for float32 (edges rounded to float both ways) and float64.
TEST(Histogram, ObserveAgreesWithScalarBinsAtEveryEdge) {
  for (at::ScalarType dtype : {at::kFloat, at::kDouble}) {
    SCOPED_TRACE(std::string(c10::toString(dtype)));
    std::vector<double> v = {0.0, -0.0, DBL_TRUE_MIN, 1e-300, 1e30, -1e30, 1e-40, -1e-40};
    for (int k = 1; k < kHistogramBins; ++k) {
      const double e = histogram_bin_lower(k);
      if (dtype == at::kFloat) {
        const float f = float(e);
        for (float g : {std::nextafter(f, 0.f), f, std::nextafter(f, 1e30f)}) {
          v.push_back(g);
          v.push_back(-g);
        }
      } else {
        for (double g : {std::nextafter(e, 0.0), e, std::nextafter(e, 1e300)}) {
          v.push_back(g);
          v.push_back(-g);
        }
      }
    }
    at::Tensor x = at::tensor(v, at::kDouble).to(dtype).reshape({-1, 2});
    const SiteStats s = observe_one(x);
    EXPECT_EQ(s.histogram, scalar_histogram(x));
    EXPECT_EQ(histogram_sum(s), s.count);
    EXPECT_EQ(s.count, x.numel());
    EXPECT_EQ(s.nonfinite, 0);
  }
}

TEST(Histogram, HandCountedSmallTensor) {
  // |x|: 0, 0, 1e-6, 2^-16, 1, 1.5, 2, 3, 255.9, 300, 0.75 (in [2^-0.5, 1): bin 32), 1e-6
  const std::vector<float> v = {0.f, -0.f, 1e-6f, 1.f / 65536.f, 1.f, -1.5f, 2.f, 3.f, 255.9f, -300.f, 0.75f, -1e-6f};
  std::vector<int64_t> expected(kHistogramBins, 0);
  expected[0] = 4;
  expected[1] = 1;
  expected[32] = 1;
  expected[33] = 1;
  expected[34] = 1;
  expected[35] = 1;
  expected[36] = 1;
  expected[48] = 1;
  expected[49] = 1;
  at::Tensor x = at::tensor(v).reshape({3, 4});
  const SiteStats s = observe_one(x);
  EXPECT_EQ(s.histogram, expected);
  EXPECT_EQ(s.count, 12);
  EXPECT_EQ(histogram_sum(s), s.count);

  // Split across two calls (3 rows = 1 + 2): the same histogram, accumulated.
  ActivationStatsCollector c({HookSite::MlpInput});
  c.observe(HookSite::MlpInput, 2, x.narrow(0, 0, 1));
  c.observe(HookSite::MlpInput, 2, x.narrow(0, 1, 2));
  const SiteStats split = c.results().at(0);
  EXPECT_EQ(split.histogram, expected);
  EXPECT_EQ(split.count, 12);
  EXPECT_EQ(split.layer, 2);
  EXPECT_EQ(split.site, HookSite::MlpInput);
  // And observing again doubles every bin.
  c.observe(HookSite::MlpInput, 2, x);
  std::vector<int64_t> twice = expected;
  for (int64_t& n : twice) n *= 2;
  EXPECT_EQ(c.results().at(0).histogram, twice);
  EXPECT_EQ(c.results().at(0).count, 24);
}

// Several row slabs (observe() works in slabs of 2^20 values: 1048 rows of 1000 here, the last one
// uneven) and several calls: every statistic equals a direct float64 computation over all values.
TEST(Collector, MatchesFloat64ReferenceAcrossSlabsAndCalls) {
  at::manual_seed(1);
  const at::Tensor a = at::randn({3, 777, 1000}) * at::exp(at::randn({1000}) * 2);
  const at::Tensor b = at::randn({2, 5, 1000}, at::kDouble) * 0.01;
  ActivationStatsCollector c({HookSite::DownProjInput});
  c.observe(HookSite::DownProjInput, 5, a);
  c.observe(HookSite::DownProjInput, 5, b);
  const SiteStats s = c.results().at(0);

  const at::Tensor all = at::cat({a.to(at::kDouble).reshape({-1, 1000}), b.reshape({-1, 1000})});
  EXPECT_EQ(s.count, all.numel());
  EXPECT_EQ(s.nonfinite, 0);
  const double ref_sq = all.pow(2).sum().item<double>();
  const double ref_4th = all.pow(4).sum().item<double>();
  EXPECT_NEAR(s.sum_sq, ref_sq, 1e-12 * ref_sq);
  EXPECT_NEAR(s.sum_4th, ref_4th, 1e-12 * ref_4th);
  const at::Tensor ref_cmax = all.abs().amax(0).contiguous();
  ASSERT_EQ(s.channel_absmax.size(), 1000u);
  for (int64_t i = 0; i < 1000; ++i) EXPECT_EQ(s.channel_absmax[i], ref_cmax[i].item<double>()) << i;
  EXPECT_EQ(s.histogram, scalar_histogram(all));
  EXPECT_EQ(histogram_sum(s), s.count);

  // The channel count of a (layer, site) cannot change.
  EXPECT_THROW(c.observe(HookSite::DownProjInput, 5, at::ones({4, 999})), Error);
}

TEST(Collector, QkvChannelsAreHeadDim) {
  at::manual_seed(2);
  ActivationStatsCollector c(ActivationStatsCollector::all_linear_and_qkv_sites());
  at::Tensor q = at::randn({2, 4, 9, 16});  // [B, H, T, d]
  at::Tensor k = at::randn({2, 9, 2, 16}).transpose(1, 2);  // non-contiguous [B, KvH, T, d]
  ActivationHook hook = c.hook();
  hook(HookSite::Query, 0, q);
  hook(HookSite::Key, 0, k);
  hook(HookSite::LmHeadInput, -1, q);  // not a collected site
  const std::vector<SiteStats> r = c.results();
  ASSERT_EQ(r.size(), 2u);
  EXPECT_EQ(r[0].site, HookSite::Query);
  EXPECT_EQ(r[1].site, HookSite::Key);
  EXPECT_EQ(r[0].channel_absmax.size(), 16u);
  EXPECT_EQ(r[1].channel_absmax.size(), 16u);
  EXPECT_EQ(r[1].count, k.numel());
  EXPECT_DOUBLE_EQ(r[1].absmax(), k.abs().max().item<float>());

  const std::vector<HookSite> want = {HookSite::AttnInput,  HookSite::Query,    HookSite::Key,          HookSite::Value,
                                      HookSite::OProjInput, HookSite::MlpInput, HookSite::DownProjInput};
  EXPECT_EQ(ActivationStatsCollector::all_linear_and_qkv_sites(), want);
}

// ---------------------------------------------------------------------------------------------
// Outlier figures

TEST(OutlierStats, GaussianKurtosisIsThree) {
  at::manual_seed(3);
  const SiteStats s = observe_one(at::randn({1024, 1024}));
  EXPECT_NEAR(s.kurtosis(), 3.0, 0.1);
  EXPECT_NEAR(s.mean_square(), 1.0, 0.01);
}

TEST(OutlierStats, HeavyTailedKurtosis) {
  at::manual_seed(4);
  // Laplace(0, 1) by inverse CDF: kurtosis 6.
  const at::Tensor u = at::rand({1024, 1024}, at::kDouble) - 0.5;
  const at::Tensor laplace = -at::sign(u) * at::log1p(-2 * u.abs());
  const SiteStats s = observe_one(laplace);
  EXPECT_GT(s.kurtosis(), 5.0);
  EXPECT_NEAR(s.kurtosis(), 6.0, 0.5);
}

TEST(OutlierStats, MaxMedianRatioOfOneOutlierChannel) {
  at::manual_seed(5);
  at::Tensor x = at::randn({4, 128, 64}, at::kDouble);
  x = x / x.abs().amax({0, 1});  // every channel absmax exactly 1
  x.select(-1, 17).mul_(10);
  const SiteStats s = observe_one(x);
  EXPECT_DOUBLE_EQ(s.max_median_ratio(), 10.0);
  EXPECT_DOUBLE_EQ(s.absmax(), 10.0);
  EXPECT_DOUBLE_EQ(s.channel_absmax[17], 10.0);
  EXPECT_DOUBLE_EQ(s.channel_absmax[3], 1.0);
}

// ---------------------------------------------------------------------------------------------
// NaN / Inf

TEST(NonFinite, CountedAndExcludedSmall) {
  const float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
  const at::Tensor x = at::tensor(std::vector<float>{1.f, nan, -2.f, inf, 3.f, -inf, 0.5f, 4.f}).reshape({2, 4});
  const SiteStats s = observe_one(x);
  EXPECT_EQ(s.nonfinite, 3);
  EXPECT_EQ(s.count, 5);
  EXPECT_EQ(s.sum_sq, 1 + 4 + 9 + 0.25 + 16);
  EXPECT_EQ(s.sum_4th, 1 + 16 + 81 + 0.0625 + 256);
  // Columns: {1, 3}, {NaN, -Inf} (nothing finite: 0), {-2, 0.5}, {Inf, 4}.
  EXPECT_EQ(s.channel_absmax, (std::vector<double>{3, 0, 2, 4}));
  EXPECT_EQ(s.absmax(), 4.0);
  EXPECT_EQ(histogram_sum(s), 5);
  EXPECT_EQ(s.histogram[0], 0);
  EXPECT_EQ(s.histogram[histogram_bin(0.5)], 1);
  EXPECT_EQ(s.histogram[histogram_bin(1.0)], 1);
  EXPECT_EQ(s.histogram[histogram_bin(2.0)], 1);
  EXPECT_EQ(s.histogram[histogram_bin(3.0)], 1);
  EXPECT_EQ(s.histogram[histogram_bin(4.0)], 1);
  EXPECT_TRUE(std::isfinite(s.kurtosis()));
}

// Non-finite values in two of three row slabs (1024 rows of 1024 each): everything equals the stats
// of the same tensor with those values zeroed, less those zeros.
TEST(NonFinite, CountedAndExcludedAcrossSlabs) {
  at::manual_seed(6);
  at::Tensor x = at::randn({2500, 1024});
  at::Tensor zeroed = x.clone();
  x.index_put_({1500, 5}, std::numeric_limits<float>::quiet_NaN());
  x.index_put_({1501, 6}, std::numeric_limits<float>::infinity());
  x.index_put_({2499, 1023}, -std::numeric_limits<float>::infinity());
  zeroed.index_put_({1500, 5}, 0.f);
  zeroed.index_put_({1501, 6}, 0.f);
  zeroed.index_put_({2499, 1023}, 0.f);
  const SiteStats s = observe_one(x);
  const SiteStats z = observe_one(zeroed);
  EXPECT_EQ(s.nonfinite, 3);
  EXPECT_EQ(s.count, x.numel() - 3);
  EXPECT_EQ(s.sum_sq, z.sum_sq);
  EXPECT_EQ(s.sum_4th, z.sum_4th);
  EXPECT_EQ(s.channel_absmax, z.channel_absmax);
  std::vector<int64_t> h = z.histogram;
  h[0] -= 3;
  EXPECT_EQ(s.histogram, h);
  EXPECT_EQ(histogram_sum(s), s.count);
}

// ---------------------------------------------------------------------------------------------
// percentile_abs

TEST(Percentile, FromKnownHistogram) {
  SiteStats s;
  s.histogram[0] = 10;
  s.histogram[33] = 80;  // [1, sqrt 2)
  s.histogram[40] = 10;  // [2^3.5, 2^4)
  s.count = 100;
  EXPECT_EQ(s.percentile_abs(0.0), std::ldexp(1.0, -16));
  EXPECT_EQ(s.percentile_abs(0.05), std::ldexp(1.0, -16));
  EXPECT_EQ(s.percentile_abs(0.10), std::ldexp(1.0, -16));
  EXPECT_EQ(s.percentile_abs(0.11), histogram_bin_upper(33));
  EXPECT_DOUBLE_EQ(s.percentile_abs(0.5), std::sqrt(2.0));
  EXPECT_DOUBLE_EQ(s.percentile_abs(0.9), std::sqrt(2.0));
  EXPECT_EQ(s.percentile_abs(0.901), 16.0);
  EXPECT_EQ(s.percentile_abs(1.0), 16.0);
  s.histogram[49] = 1;
  s.count = 101;
  EXPECT_EQ(s.percentile_abs(1.0), kInf);
  EXPECT_THROW(s.percentile_abs(1.5), Error);
  EXPECT_THROW(s.percentile_abs(-0.1), Error);
  EXPECT_THROW(s.percentile_abs(kNaN), Error);
  EXPECT_EQ(SiteStats{}.percentile_abs(0.5), 0.0);
}

TEST(Percentile, OfObservedUniformValues) {
  // |x| = 1..1000 / 1000: the median 0.5 lies in [2^-1, 2^-0.5); 99% (0.99) in [2^-0.5, 1).
  const at::Tensor x = at::arange(1, 1001, at::kDouble) / 1000;
  const SiteStats s = observe_one(x.reshape({10, 100}));
  EXPECT_DOUBLE_EQ(s.percentile_abs(0.5), std::sqrt(0.5));
  EXPECT_EQ(s.percentile_abs(0.99), 1.0);
  EXPECT_EQ(s.percentile_abs(1.0), std::sqrt(2.0));  // the max, 1.0, is in [1, sqrt 2)
}

// ---------------------------------------------------------------------------------------------
// JSON

std::vector<SiteStats> sample_stats() {
  at::manual_seed(7);
  ActivationStatsCollector c({HookSite::AttnInput, HookSite::Value, HookSite::LmHeadInput});
  at::Tensor x = at::randn({2, 33, 48}) * 3.7;
  x.index_put_({0, 1, 2}, std::numeric_limits<float>::quiet_NaN());
  c.observe(HookSite::AttnInput, 0, x);
  c.observe(HookSite::AttnInput, 1, at::randn({1, 5, 48}, at::kDouble) / 3);
  c.observe(HookSite::Value, 1, at::randn({1, 2, 5, 8}).to(at::kBFloat16));
  c.observe(HookSite::LmHeadInput, -1, at::randn({1, 5, 48}) * 1000);
  return c.results();
}

void expect_same(const SiteStats& a, const SiteStats& b) {
  EXPECT_EQ(a.layer, b.layer);
  EXPECT_EQ(a.site, b.site);
  EXPECT_EQ(a.count, b.count);
  EXPECT_EQ(a.nonfinite, b.nonfinite);
  EXPECT_EQ(a.sum_sq, b.sum_sq);  // exact
  EXPECT_EQ(a.sum_4th, b.sum_4th);
  EXPECT_EQ(a.channel_absmax, b.channel_absmax);
  EXPECT_EQ(a.histogram, b.histogram);
}

TEST(Json, RoundTripIsExact) {
  const std::vector<SiteStats> v = sample_stats();
  ASSERT_EQ(v.size(), 4u);
  EXPECT_EQ(v[0].layer, -1);
  EXPECT_EQ(v[1].nonfinite, 1);
  const nlohmann::json j = stats_to_json(v);
  ASSERT_EQ(j.at("histogram_edges").size(), size_t(kHistogramBins - 1));
  for (const auto& e : j.at("histogram_edges")) EXPECT_TRUE(e.is_number_float() && std::isfinite(e.get<double>()));
  EXPECT_EQ(j.at("sites").at(1).at("site"), "attn_input");
  EXPECT_EQ(j.at("sites").at(1).at("kurtosis").get<double>(), v[1].kurtosis());
  EXPECT_EQ(j.at("sites").at(1).at("absmax").get<double>(), v[1].absmax());
  EXPECT_EQ(j.at("sites").at(1).at("max_median_ratio").get<double>(), v[1].max_median_ratio());

  const std::vector<SiteStats> back = stats_from_json(nlohmann::json::parse(j.dump()));
  ASSERT_EQ(back.size(), v.size());
  for (size_t i = 0; i < v.size(); ++i) {
    SCOPED_TRACE("site " + std::to_string(i));
    expect_same(back[i], v[i]);
  }
}

TEST(Json, HardDoublesRoundTripExactly) {
  SiteStats s;
  s.layer = 3;
  s.site = HookSite::MlpSkip;
  s.count = 2;
  s.histogram[7] = 2;
  s.sum_sq = 0.1 + 0.2;
  s.sum_4th = kInf;  // an overflowed sum
  s.channel_absmax = {1.0 / 3, DBL_TRUE_MIN, DBL_MIN, DBL_MAX, std::nextafter(1.0, 2.0), 0.0, 123456789.123456789};
  const SiteStats back = site_stats_from_json(nlohmann::json::parse(site_stats_to_json(s).dump()));
  expect_same(back, s);
}

TEST(Json, HookSiteNames) {
  for (HookSite s : {HookSite::AttnInput, HookSite::Query, HookSite::Key, HookSite::Value, HookSite::OProjInput,
                     HookSite::MlpInput, HookSite::DownProjInput, HookSite::LmHeadInput, HookSite::AttnSkip,
                     HookSite::MlpSkip})
    EXPECT_EQ(hook_site_from_name(hook_site_name(s)), s);
  expect_error_containing([] { hook_site_from_name("qq"); }, {"qq"});
}

TEST(Json, ValidationNamesTheField) {
  const nlohmann::json good = stats_to_json(sample_stats());
  {
    nlohmann::json j = good;
    j["sites"][3].erase("channel_absmax");
    expect_error_containing([&] { stats_from_json(j); }, {"stats: sites[3]: missing field 'channel_absmax'"});
  }
  {
    nlohmann::json j = good;
    j["sites"][1]["histogram"].erase(0);
    expect_error_containing([&] { stats_from_json(j); }, {"sites[1]", "'histogram'", "50", "49"});
  }
  {
    nlohmann::json j = good;
    j["sites"][0]["histogram"].push_back(0);
    expect_error_containing([&] { stats_from_json(j); }, {"sites[0]", "'histogram'"});
  }
  {
    nlohmann::json j = good;
    j["sites"][2]["site"] = "bogus";
    expect_error_containing([&] { stats_from_json(j); }, {"sites[2]", "site", "bogus"});
  }
  {
    nlohmann::json j = good;
    j["sites"][2]["count"] = "12";
    expect_error_containing([&] { stats_from_json(j); }, {"sites[2]", "'count'"});
  }
  {
    nlohmann::json j = good;
    j["sites"][2]["count"] = j["sites"][2]["count"].get<int64_t>() + 1;
    expect_error_containing([&] { stats_from_json(j); }, {"sites[2]", "'histogram'", "'count'"});
  }
  {
    nlohmann::json j = good;
    j["sites"][0]["channel_absmax"][2] = "x";
    expect_error_containing([&] { stats_from_json(j); }, {"sites[0]", "channel_absmax[2]"});
  }
  {
    nlohmann::json j = good;
    j.erase("histogram_edges");
    expect_error_containing([&] { stats_from_json(j); }, {"missing field 'histogram_edges'"});
  }
  {
    nlohmann::json j = good;
    j["histogram_edges"][5] = 1.0;
    expect_error_containing([&] { stats_from_json(j); }, {"histogram_edges"});
  }
  {
    nlohmann::json j = good["sites"][0];
    j.erase("nonfinite");
    expect_error_containing([&] { site_stats_from_json(j); }, {"missing field 'nonfinite'"});
  }
  // Derived fields are not required.
  nlohmann::json j = good;
  for (auto& s : j["sites"]) {
    s.erase("kurtosis");
    s.erase("absmax");
    s.erase("max_median_ratio");
  }
  EXPECT_EQ(stats_from_json(j).size(), 4u);
}

// ---------------------------------------------------------------------------------------------
// The hook only reads.

TEST(Collector, HookNeverModifiesItsInput) {
  at::manual_seed(8);
  ActivationStatsCollector c(ActivationStatsCollector::all_linear_and_qkv_sites());
  ActivationHook hook = c.hook();
  std::vector<at::Tensor> inputs = {at::randn({2, 70, 1024}), at::randn({2, 3, 5, 64}, at::kDouble),
                                    at::randn({2, 5, 64}).to(at::kHalf), at::randn({2, 5, 64}).to(at::kBFloat16),
                                    at::randn({64, 2, 5}).permute({1, 2, 0}), at::randn({3, 8}) * 1e6};
  inputs[1].index_put_({0, 0, 0, 0}, std::numeric_limits<double>::quiet_NaN());
  for (size_t i = 0; i < inputs.size(); ++i) {
    SCOPED_TRACE("input " + std::to_string(i));
    at::Tensor x = inputs[i];
    const at::Tensor before = x.clone();
    const void* ptr = x.data_ptr();
    const auto strides = x.strides().vec();
    hook(HookSite::AttnInput, int(i), x);
    EXPECT_EQ(x.data_ptr(), ptr);
    EXPECT_EQ(x.strides().vec(), strides);
    EXPECT_EQ(x.scalar_type(), before.scalar_type());
    EXPECT_TRUE(at::equal(x.nan_to_num(0), before.nan_to_num(0)));
    EXPECT_EQ(x.isnan().sum().item<int64_t>(), before.isnan().sum().item<int64_t>());
  }
  EXPECT_EQ(c.results().size(), inputs.size());
  EXPECT_EQ(c.results()[1].nonfinite, 1);
}

}  // namespace
}  // namespace respin

#include "core/ops/hot_ops.h"

namespace respin {

TEST(HotOps, HistogramAndQuantizersMatchTheModules) {
  at::manual_seed(31);
  at::Tensor x = at::randn({3, 17, 40}) * 5;
  ActivationStatsCollector c({HookSite::MlpInput});
  c.observe(HookSite::MlpInput, 0, x);
  EXPECT_EQ(ops::abs_histogram(x), c.results()[0].histogram);
  int64_t total = 0;
  for (int64_t v : ops::abs_histogram(x)) total += v;
  EXPECT_EQ(total, x.numel());
  QuantSpec spec{4, false, 0, 1.0};
  EXPECT_TRUE(at::equal(ops::fake_quantize_tokens(x, spec), fake_quantize_activation(x, spec)));
  at::Tensor xs = x.clone().requires_grad_(true);
  ops::fake_quantize_tokens(xs, spec, true).sum().backward();
  EXPECT_TRUE(at::equal(xs.grad(), at::ones_like(x)));  // straight through
  at::Tensor kv = at::randn({2, 2, 5, 8});
  EXPECT_TRUE(at::equal(ops::fake_quantize_kv(kv, spec), fake_quantize_kv(kv, spec)));
  HadamardTransform h = HadamardTransform::of_size(40);
  EXPECT_TRUE(at::allclose(ops::hadamard(x, h), at::matmul(x.to(at::kDouble), h.dense()).to(at::kFloat), 1e-5, 1e-5));
}

}  // namespace respin
