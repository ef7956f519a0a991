// ui/: the run-store views under the offscreen platform, on a real temporary run store written
// with RunStore (synthetic runs, statistics and records; no mocks): the outliers grid of an
// 80-layer run (open time measured), the histogram overlay of a picked cell, metric and mode
// switches; the runs table (sort, filter, sweep groups, tag, note, delete), the rank-vs-perplexity
// plot with its Pareto front and knee, clicking a point; the diff of two runs; plot export; the
// views while another connection holds the store's lock (no event-loop stall, the locked line,
// then the data) and a delete that keeps a folder the run does not own. Each
// view is also rendered to a PNG under RESPIN_SCREENSHOT_DIR for a human to look at.
#include <gtest/gtest.h>

#include <QApplication>
#include <QDir>
#include <QElapsedTimer>
#include <QFile>
#include <QHeaderView>
#include <QPushButton>
#include <QSignalSpy>
#include <QSortFilterProxyModel>
#include <QTableView>
#include <QTest>
#include <QTimer>
#include <QTreeView>
#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <functional>
#include <iostream>
#include <nlohmann/json.hpp>
#include <random>

#include "core/store/run_store.h"
#include "core/store/sqlite.h"
#include "core/util/sha256.h"
#include "tests/test_util.h"
#include "ui/CompareView.h"
#include "ui/OutliersView.h"
#include "ui/PlotExport.h"
#include "ui/RunsView.h"
#include "ui/StoreService.h"

namespace {

using respin::HookSite;
using respin::Method;
using respin::RunDetail;
using respin::RunStore;
using respin::SiteStats;
using respin::StatsStage;
using respin::test::TempDir;
using Clock = std::chrono::steady_clock;

double secondsSince(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

// ---- A synthetic store ----

respin::CalibConfig makeConfig(Method method, int wbits = 4, int abits = 4, int kvbits = 4, int64_t rank = 32,
                               const std::string& model = "/models/llama-synthetic") {
  respin::CalibConfig c;
  c.model = model;
  c.method = method;
  c.wbits = wbits;
  c.abits = abits;
  c.kvbits = kvbits;
  c.rank = rank;
  c.samples = 16;
  c.seq_len = 256;
  return c;
}

respin::ModelIdentity makeModel(const std::string& folder, int64_t layers, int64_t hidden) {
  respin::ModelIdentity m;
  m.folder = folder;
  m.architecture = "LlamaForCausalLM";
  m.parameters = 12 * layers * hidden * hidden;
  m.hidden_size = hidden;
  m.intermediate_size = hidden * 8 / 3;
  m.layers = layers;
  m.heads = hidden / 128;
  m.kv_heads = hidden / 128;
  m.head_dim = 128;
  m.vocab_size = 32000;
  m.sha256 = std::string(64, 'a');
  return m;
}

struct RunSpec {
  respin::CalibConfig config;
  int64_t appliedRank = -1;
  double fpPpl = 5.47, qPpl = 6.0;
  int64_t layers = 32, hidden = 4096;
  std::optional<int64_t> sweep;
  std::string name;
};

int64_t addFinishedRun(RunStore& store, const TempDir& dir, const RunSpec& spec) {
  respin::RunStart start;
  start.config = spec.config;
  start.model = makeModel(spec.config.model, spec.layers, spec.hidden);
  start.run_dir = dir.file("runs/" + spec.name);
  std::filesystem::create_directories(start.run_dir);
  respin::test::write_bytes(start.run_dir + "/run.json", "{}");
  start.sweep_id = spec.sweep;
  const int64_t id = store.begin_run(start);
  store.write_run_marker(id, start.run_dir);  // as the recorder does: the folder is this run's
  respin::RunRecord r;
  r.respin_version = "0.3.0";
  r.created = "2024-05-01T10:00:00Z";
  r.finished = "2024-05-01T10:05:00Z";
  r.config = spec.config;
  r.config_sha256 = respin::sha256_hex(respin::calib_config_to_json(spec.config));
  r.model = start.model;
  r.method.rank = spec.appliedRank;
  if (spec.appliedRank >= 0) {
    const int64_t D = spec.hidden, k = spec.appliedRank;
    r.method.online_parameters = spec.layers * 2 * (D * k + k * k);
    r.method.online_macs_per_token = spec.layers * 2 * (2 * D * k + k * k);
  }
  r.results.fp_perplexity = spec.fpPpl;
  r.results.quantized_perplexity = spec.qPpl;
  r.results.eval_tokens_per_s = 1234.5;
  r.timing.calibration_seconds = 60 + spec.appliedRank;
  r.timing.total_seconds = 75 + spec.appliedRank;
  r.timing.device = "cpu";
  // The plan's peak and the measured one: within 5%, but for rank 128 (30% above the plan).
  const double planned = 1e9 * (1 + std::max<int64_t>(spec.appliedRank, 0) / 32.0);
  r.memory.predicted_bytes = {{"load", 0.5e9}, {"rotate", planned}};
  r.memory.measured_bytes = {{"load", 0.4e9}, {"rotate", planned * (spec.appliedRank == 128 ? 1.3 : 1.05)}};
  store.finish_run(id, r);
  return id;
}

// |x| of a zero-mean Gaussian mixture (weights w, standard deviations s) binned exactly into the
// fixed bins; count = the histogram's sum; sums of x^2 and x^4 from the mixture's moments.
SiteStats mixtureSite(int layer, HookSite site, int64_t n, const std::vector<double>& w, const std::vector<double>& s,
                      std::vector<double> channels) {
  SiteStats st;
  st.layer = layer;
  st.site = site;
  double m2 = 0, m4 = 0;
  for (size_t i = 0; i < w.size(); ++i) m2 += w[i] * s[i] * s[i], m4 += 3 * w[i] * std::pow(s[i], 4);
  st.count = 0;
  for (int k = 0; k < respin::kHistogramBins; ++k) {
    const double lo = respin::histogram_bin_lower(k), hi = respin::histogram_bin_upper(k);
    double p = 0;
    for (size_t i = 0; i < w.size(); ++i) {
      const double a = std::erf(lo / (s[i] * std::sqrt(2.0)));
      const double b = std::isinf(hi) ? 1.0 : std::erf(hi / (s[i] * std::sqrt(2.0)));
      p += w[i] * (b - a);
    }
    st.histogram[k] = static_cast<int64_t>(std::llround(p * double(n)));
    st.count += st.histogram[k];
  }
  st.sum_sq = m2 * double(st.count);
  st.sum_4th = m4 * double(st.count);
  st.channel_absmax = std::move(channels);
  return st;
}

// One cell before or after rotation: before, heavy tails from a few outlier channels (massive ones
// in the down_proj input of the first and last layers); after, close to Gaussian.
SiteStats syntheticSite(int layer, int layers, HookSite site, StatsStage stage, int channels, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<double> u(0.0, 1.0);
  const double sigma = 0.05 * (1 + layer / 20.0) * (site == HookSite::DownProjInput ? 0.6 : 1.0);
  const bool massive = site == HookSite::DownProjInput && (layer == 1 || layer >= layers - 2);
  double outScale = site == HookSite::DownProjInput ? 40 : site == HookSite::Key || site == HookSite::Query ? 12 : 18;
  if (massive) outScale *= 6;
  if (site == HookSite::Value) outScale = 5;
  const double pOut = 0.002 + 0.001 * (layer % 5);
  const int64_t tokens = 2048;
  std::vector<double> ch(static_cast<size_t>(channels));
  if (stage == StatsStage::Before) {
    const int nOut = std::max(1, channels / 100);
    for (int c = 0; c < channels; ++c) ch[size_t(c)] = 4.2 * sigma * (0.8 + 0.4 * u(rng));
    for (int i = 0; i < nOut; ++i) ch[size_t((i * 7919 + layer * 31) % channels)] = 4.2 * sigma * outScale * (0.6 + 0.4 * u(rng));
    return mixtureSite(layer, site, tokens * channels, {1 - pOut, pOut}, {sigma, sigma * outScale}, std::move(ch));
  }
  // After: the same energy, nearly Gaussian (V keeps more of its shape: no online rotation).
  const double energy = (1 - pOut) * sigma * sigma + pOut * std::pow(sigma * outScale, 2);
  const double keep = site == HookSite::Value ? 0.5 : 0.02;
  const double p2 = pOut * keep, s2 = std::sqrt(energy);
  const double sMain = std::sqrt(std::max(energy - p2 * 4 * energy, 1e-12) / (1 - p2));
  for (int c = 0; c < channels; ++c) ch[size_t(c)] = 4.6 * s2 * (0.85 + 0.3 * u(rng));
  return mixtureSite(layer, site, tokens * channels, {1 - p2, p2}, {sMain, 2 * s2}, std::move(ch));
}

void putSyntheticStats(RunStore& store, int64_t id, int layers, int channels, uint32_t seed, double afterFactor = 1.0) {
  for (StatsStage stage : {StatsStage::Before, StatsStage::After}) {
    std::vector<SiteStats> cells;
    for (int l = 0; l < layers; ++l)
      for (HookSite s : outliers::gridSites()) {
        SiteStats st = syntheticSite(l, layers, s, stage, channels, seed + uint32_t(l * 16 + int(s)) + (stage == StatsStage::After ? 7777 : 0));
        if (stage == StatsStage::After && afterFactor != 1.0 && (l + int(s)) % 3 == 0) {
          st.sum_4th *= afterFactor;  // another method: some cells keep heavier tails
          for (double& c : st.channel_absmax) c *= std::sqrt(afterFactor);
        }
        cells.push_back(std::move(st));
      }
    store.put_stats(id, stage, cells);
  }
}

// The rank sweep of the tests: ranks and perplexities chosen so that rank 128 is dominated
// (rank 64 is cheaper and better) and the knee of the front is rank 32.
const std::vector<std::pair<int64_t, double>> kSweep = {{0, 9.8}, {8, 8.1}, {16, 7.2}, {32, 6.6}, {64, 6.5}, {128, 6.55}, {256, 6.45}};

struct Fixture {
  TempDir dir;
  std::string db;
  int64_t sweep = 0;
  std::vector<int64_t> sweepRuns;  // in kSweep's order
  int64_t rtn = 0, quarot = 0, spinquant = 0, failed = 0, bits3 = 0, bits8 = 0;
  int64_t big = 0;  // the 80-layer run with statistics
};

// `withBig`: also an 80-layer x 7-site run with 4096 channels per cell (both stages).
std::unique_ptr<Fixture> makeStore(bool withBig, int bigLayers = 80, int channels = 4096) {
  auto f = std::make_unique<Fixture>();
  f->db = f->dir.file("runs.db");
  RunStore s = RunStore::open(f->db);
  f->rtn = addFinishedRun(s, f->dir, {makeConfig(Method::Rtn), -1, 5.47, 812.0, 32, 4096, {}, "rtn"});
  f->quarot = addFinishedRun(s, f->dir, {makeConfig(Method::QuaRot), -1, 5.47, 6.9, 32, 4096, {}, "quarot"});
  f->spinquant = addFinishedRun(s, f->dir, {makeConfig(Method::SpinQuant), -1, 5.47, 6.3, 32, 4096, {}, "spinquant"});
  f->sweep = s.create_sweep("rank", "/models/llama-synthetic", "W4A4KV4, ranks 0-256");
  for (const auto& [rank, ppl] : kSweep)
    f->sweepRuns.push_back(addFinishedRun(
        s, f->dir, {makeConfig(Method::ReSpin, 4, 4, 4, rank), rank, 5.47, ppl, 32, 4096, f->sweep, "r" + std::to_string(rank)}));
  f->bits3 = addFinishedRun(s, f->dir, {makeConfig(Method::ReSpin, 3, 4, 4, 32), 32, 5.47, 9.4, 32, 4096, {}, "w3"});
  f->bits8 = addFinishedRun(s, f->dir, {makeConfig(Method::ReSpin, 8, 8, 8, 32), 32, 5.47, 5.52, 32, 4096, {}, "w8"});
  {
    respin::RunStart st;
    st.config = makeConfig(Method::ReSpin, 2, 4, 4, 32);
    st.model = makeModel(st.config.model, 32, 4096);
    st.run_dir = f->dir.file("runs/failed");
    f->failed = s.begin_run(st);
    s.end_run(f->failed, respin::RunStatus::Failed, "out of memory");
  }
  if (withBig) {
    RunSpec big{makeConfig(Method::ReSpin, 4, 4, 4, 64, "/models/llama-80l-synthetic"), 64, 3.1, 3.4, bigLayers, 8192, {}, "big"};
    f->big = addFinishedRun(s, f->dir, big);
    putSyntheticStats(s, f->big, bigLayers, channels, 11);
  }
  return f;
}

QString screenshotPath(const QString& name) {
  QDir().mkpath(RESPIN_SCREENSHOT_DIR);
  return QString(RESPIN_SCREENSHOT_DIR) + "/" + name;
}

// The view really renders: a share of its pixels is much darker than the background, as glyphs are.
void expectRendered(QWidget& w, const QString& file) {
  QApplication::processEvents();
  QImage img = w.grab().toImage();
  ASSERT_EQ(img.size(), w.size());
  EXPECT_TRUE(img.save(screenshotPath(file)));
  int64_t dark = 0;
  for (int y = 0; y < img.height(); y += 2)
    for (int x = 0; x < img.width(); x += 2) dark += qGray(img.pixel(x, y)) < 110;
  const double share = double(dark) / ((img.width() / 2) * (img.height() / 2));
  EXPECT_GT(share, 0.004) << file.toStdString();
  EXPECT_LT(share, 0.6) << file.toStdString();
}

QStringList csvLines(const QString& path) {
  QFile f(path);
  EXPECT_TRUE(f.open(QIODevice::ReadOnly));
  return QString::fromUtf8(f.readAll()).split('\n', Qt::SkipEmptyParts);
}

// One CSV line's fields (RFC 4180 quoting, as core/store/run_data.cpp writes them).
QStringList csvFields(const QString& line) {
  QStringList out;
  QString cur;
  bool quoted = false;
  for (int i = 0; i < line.size(); ++i) {
    const QChar ch = line[i];
    if (quoted && ch == '"' && i + 1 < line.size() && line[i + 1] == '"') {
      cur += '"';
      ++i;
    } else if (ch == '"') {
      quoted = !quoted;
    } else if (ch == ',' && !quoted) {
      out << cur;
      cur.clear();
    } else {
      cur += ch;
    }
  }
  out << cur;
  return out;
}

QCPBars* barsNamed(QCustomPlot* plot, const QString& name) {
  for (int i = 0; i < plot->plottableCount(); ++i)
    if (plot->plottable(i)->name() == name) return qobject_cast<QCPBars*>(plot->plottable(i));
  return nullptr;
}

// ---- Plot export ----

TEST(PlotExport, WritesPngSvgPdfAndCsv) {
  TempDir dir;
  ExportablePlot plot("test");
  plot.resize(640, 400);
  QCPGraph* g = plot.addGraph();
  g->setName("squares, of x");
  for (int i = 0; i < 10; ++i) g->addData(i, i * i);
  plot.xAxis->setLabel("x");
  plot.rescaleAxes();
  plot.replot();
  for (const char* ext : {"png", "svg", "pdf"}) {
    const QString path = QString::fromStdString(dir.file(std::string("plot.") + ext));
    QString error;
    ASSERT_TRUE(plot.exportTo(path, &error)) << error.toStdString();
    QFile f(path);
    ASSERT_TRUE(f.open(QIODevice::ReadOnly));
    const QByteArray head = f.read(4096);
    EXPECT_GT(QFileInfo(path).size(), 500) << ext;
    if (QString(ext) == "png") {
      EXPECT_TRUE(head.startsWith("\x89PNG"));
    }
    if (QString(ext) == "pdf") {
      EXPECT_TRUE(head.startsWith("%PDF"));
    }
    if (QString(ext) == "svg") {
      EXPECT_TRUE(head.contains("<svg"));
    }
  }
  const QString csv = QString::fromStdString(dir.file("plot.csv"));
  ASSERT_TRUE(plot.exportTo(csv));
  const QStringList lines = csvLines(csv);
  ASSERT_EQ(lines.size(), 11);
  EXPECT_EQ(lines[0], "series,x,y");
  EXPECT_EQ(lines[4], "\"squares, of x\",3,9");
  QString error;
  EXPECT_FALSE(plot.exportTo(QString::fromStdString(dir.file("plot.gif")), &error));
  EXPECT_TRUE(error.contains("unknown export format"));
  EXPECT_FALSE(plot.exportTo(QString::fromStdString(dir.file("no/such/dir/plot.csv")), &error));
  EXPECT_FALSE(error.isEmpty());
}

// ---- Outliers ----

TEST(PlotExport, PlotsFollowTheLightAndDarkPalette) {
  ExportablePlot plot("palette");
  plot.resize(400, 300);
  plot.xAxis->setLabel("x");
  plot.plotLayout()->insertRow(0);
  auto* title = new QCPTextElement(&plot, "title");
  plot.plotLayout()->addElement(0, 0, title);
  auto* frame = new QCPItemRect(&plot);
  frame->setPen(QPen(Qt::black, 2));
  auto* marked = new QCPItemRect(&plot);
  marked->setPen(QPen(QColor(200, 0, 0), 2));  // a colour of the view's own: kept
  QPalette dark = plot.palette();
  dark.setColor(QPalette::Base, QColor(30, 30, 32));
  dark.setColor(QPalette::Text, QColor(230, 230, 230));
  plot.setPalette(dark);  // what the application's palette change sends to every widget
  EXPECT_EQ(plot.xAxis->labelColor(), QColor(230, 230, 230));
  EXPECT_EQ(plot.xAxis->tickLabelColor(), QColor(230, 230, 230));
  EXPECT_EQ(plot.xAxis->basePen().color(), QColor(230, 230, 230));
  EXPECT_EQ(title->textColor(), QColor(230, 230, 230));
  EXPECT_EQ(frame->pen().color(), QColor(230, 230, 230));
  EXPECT_EQ(marked->pen().color(), QColor(200, 0, 0));
  const QImage img = plot.toPixmap(400, 300).toImage();
  EXPECT_LT(qGray(img.pixel(2, 2)), 60) << "background not dark";
  // And back to light.
  QPalette light = dark;
  light.setColor(QPalette::Base, Qt::white);
  light.setColor(QPalette::Text, Qt::black);
  plot.setPalette(light);
  EXPECT_EQ(plot.xAxis->labelColor(), QColor(Qt::black));
  EXPECT_EQ(frame->pen().color(), QColor(Qt::black));
  EXPECT_GT(qGray(plot.toPixmap(400, 300).toImage().pixel(2, 2)), 200);
}

TEST(Outliers, MetricHelpers) {
  EXPECT_DOUBLE_EQ(outliers::outlierChannelShare({1, 1, 1, 10}), 0.25);  // median (element 2) 1: 10 > 3
  EXPECT_DOUBLE_EQ(outliers::outlierChannelShare({1, 2, 3}), 0.0);
  EXPECT_TRUE(std::isnan(outliers::outlierChannelShare({})));
  // Every value in bin 40 ([2^3.5, 2^4)), absmax 2^4 = 16: 4 bits -> step 16/7.
  std::vector<int64_t> h(respin::kHistogramBins, 0);
  h[40] = 100;
  const double mid = 0.5 * (respin::histogram_bin_lower(40) + respin::histogram_bin_upper(40));
  const double step = 16.0 / 7;
  const double q = std::nearbyint(mid / step) * step;
  EXPECT_NEAR(outliers::histogramQuantMse(h, 16.0, 4), (mid - q) * (mid - q), 1e-12);
  // More bits, smaller error; an empty histogram has none.
  EXPECT_LT(outliers::histogramQuantMse(h, 16.0, 8), outliers::histogramQuantMse(h, 16.0, 3) + 1e-15);
  EXPECT_TRUE(std::isnan(outliers::histogramQuantMse(std::vector<int64_t>(respin::kHistogramBins, 0), 1.0, 4)));
}

TEST(Outliers, EightyLayerGridOpensUnderOneSecond) {
  auto t0 = Clock::now();
  auto f = makeStore(true);
  const double build_s = secondsSince(t0);
  OutliersView v;
  v.resize(1400, 900);
  v.show();
  v.setStorePath(QString::fromStdString(f->db));
  t0 = Clock::now();
  ASSERT_TRUE(v.showRun(f->big)) << v.messageText().toStdString();
  QApplication::processEvents();
  const double open_s = secondsSince(t0);
  EXPECT_EQ(v.layers(), 80);
  EXPECT_TRUE(v.messageText().isEmpty());
  // The grid is the store's: every cell's kurtosis after rotation as stored.
  RunStore s = RunStore::open_readonly(f->db);
  const auto after = s.layer_stats_summary(f->big, StatsStage::After);
  ASSERT_EQ(after.size(), 80u * 7);
  for (const respin::SiteSummary& c : after) ASSERT_DOUBLE_EQ(v.cellValue(c.layer, c.site), c.kurtosis);
  auto* map = qobject_cast<QCPColorMap*>(v.gridPlot()->plottable(0));
  ASSERT_NE(map, nullptr);
  EXPECT_EQ(map->data()->keySize(), 7);
  EXPECT_EQ(map->data()->valueSize(), 80);
  // The outlier share and the MSE need every cell's channels / histogram: loaded when chosen.
  t0 = Clock::now();
  v.setMetric(OutliersView::Metric::OutlierShare);
  QApplication::processEvents();
  const double share_s = secondsSince(t0);
  t0 = Clock::now();
  v.setMetric(OutliersView::Metric::QuantMse);
  QApplication::processEvents();
  const double mse_s = secondsSince(t0);
  std::cout << "[ timing ] 80 layers x 7 sites x 4096 channels: store written in " << build_s << " s; grid open (store open, "
            << "summaries, grid, first cell drawn) " << open_s << " s (view's own count " << v.lastOpenSeconds()
            << " s); outlier-share metric (loads 1120 cells) " << share_s << " s (load " << v.lastDetailLoadSeconds()
            << " s); switch to MSE " << mse_s << " s\n";
  RecordProperty("grid_open_s", std::to_string(open_s));
  RecordProperty("share_metric_s", std::to_string(share_s));
  EXPECT_LT(open_s, 1.0);
  EXPECT_LT(share_s, 5.0);
  EXPECT_LT(mse_s, 0.5);  // the histograms are cached
}

struct OutliersFixture : ::testing::Test {
  static void SetUpTestSuite() { store = makeStore(true, 12, 512).release(); }
  static void TearDownTestSuite() {
    delete store;
    store = nullptr;
  }
  static Fixture* store;
};
Fixture* OutliersFixture::store = nullptr;

TEST_F(OutliersFixture, PickingACellFillsTheHistogramOverlay) {
  OutliersView v;
  v.resize(1400, 900);
  v.show();
  v.setStorePath(QString::fromStdString(store->db));
  ASSERT_TRUE(v.showRun(store->big));
  QApplication::processEvents();
  // Starts on the cell with the largest kurtosis before rotation: a massive down_proj input.
  EXPECT_EQ(v.selectedSite(), HookSite::DownProjInput);
  QSignalSpy spy(&v, &OutliersView::cellSelected);
  v.selectCell(5, HookSite::MlpInput);
  ASSERT_EQ(spy.count(), 1);
  RunStore s = RunStore::open_readonly(store->db);
  for (StatsStage st : {StatsStage::Before, StatsStage::After}) {
    const auto stored = s.site_stats(store->big, st, 5, HookSite::MlpInput);
    ASSERT_TRUE(stored.has_value());
    EXPECT_EQ(v.shownHistogram(st), stored->histogram);
    EXPECT_EQ(v.shownChannelAbsmax(st), stored->channel_absmax);
    // The drawn steps are the stored counts, bin by bin (an empty bin is drawn below the axis).
    QCPGraph* g = v.histogramPlot()->graph(st == StatsStage::Before ? 0 : 1);
    ASSERT_EQ(g->dataCount(), respin::kHistogramBins + 1);
    for (int k = 1; k < respin::kHistogramBins; ++k) {
      auto it = g->data()->constBegin() + k;
      EXPECT_DOUBLE_EQ(it->key, respin::histogram_bin_lower(k));
      if (stored->histogram[k] > 0) {
        EXPECT_DOUBLE_EQ(it->value, double(stored->histogram[k]));
      } else {
        EXPECT_LT(it->value, 1.0);
      }
    }
    QCPBars* bars = barsNamed(v.channelPlot(), st == StatsStage::Before ? "before rotation" : "after rotation");
    ASSERT_NE(bars, nullptr);
    EXPECT_EQ(bars->dataCount(), 512);
  }
  EXPECT_TRUE(v.histogramPlot()->yAxis->scaleType() == QCPAxis::stLogarithmic);
  const QString numbers = v.numbersText();
  for (const char* word : {"Kurtosis", "Max / median channel", "Outlier channels", "4-bit MSE", "Gaussian", "Layer 5"})
    EXPECT_TRUE(numbers.contains(word)) << word << "\n" << numbers.toStdString();
  const auto before = s.site_stats(store->big, StatsStage::Before, 5, HookSite::MlpInput);
  EXPECT_TRUE(numbers.contains(QString::number(before->kurtosis(), 'g', 4))) << numbers.toStdString();
  // The histogram's CSV: one row per bin with both stages' counts.
  TempDir dir;
  const QString csv = QString::fromStdString(dir.file("h.csv"));
  ASSERT_TRUE(v.histogramPlot()->exportTo(csv));
  const QStringList lines = csvLines(csv);
  ASSERT_EQ(lines.size(), respin::kHistogramBins + 1);
  EXPECT_EQ(lines[0], "bin,lower,upper,before,after");
  EXPECT_EQ(lines[30].split(',')[3], QString::number(before->histogram[29]));
  // Sorted channels: largest first.
  v.setSortedChannels(true);
  QCPBars* bars = barsNamed(v.channelPlot(), "before rotation");
  EXPECT_DOUBLE_EQ(bars->data()->constBegin()->value, before->absmax());
  // Hover text of a cell names it and its values.
  const QString tip = v.cellToolTip(5, HookSite::MlpInput);
  EXPECT_TRUE(tip.contains("Layer 5")) << tip.toStdString();
  EXPECT_TRUE(tip.contains("gate/up")) << tip.toStdString();
  EXPECT_TRUE(tip.contains("kurtosis: before")) << tip.toStdString();
  // A real click on the grid picks the cell under the mouse.
  ExportablePlot* grid = v.gridPlot();
  const int col = 3;  // down_proj in
  ASSERT_EQ(outliers::gridSites()[col], HookSite::DownProjInput);
  const QPoint at(int(grid->xAxis->coordToPixel(col)), int(grid->yAxis->coordToPixel(7)));
  QTest::mouseClick(grid, Qt::LeftButton, Qt::NoModifier, at);
  EXPECT_EQ(v.selectedLayer(), 7);
  // Hovering a cell shows its values.
  const QPoint over(int(grid->xAxis->coordToPixel(1)), int(grid->yAxis->coordToPixel(9)));
  QTest::mouseMove(grid, over);
  EXPECT_TRUE(v.hoverText().contains("Layer 9 · o_proj input")) << v.hoverText().toStdString();
  EXPECT_TRUE(v.hoverText().contains("kurtosis: before")) << v.hoverText().toStdString();
  QTest::mouseMove(v.histogramPlot(), QPoint(int(v.histogramPlot()->xAxis->coordToPixel(0.05)),
                                             int(v.histogramPlot()->yAxis->coordToPixel(10))));
  EXPECT_TRUE(v.hoverText().startsWith("|x| in [")) << v.hoverText().toStdString();
  EXPECT_EQ(v.selectedSite(), HookSite::DownProjInput);
  // Across layers: one point per layer and stage.
  EXPECT_EQ(v.layersPlot()->graph(0)->dataCount(), 12);
  EXPECT_EQ(v.layersPlot()->graph(1)->dataCount(), 12);
}

TEST_F(OutliersFixture, MetricSwitchChangesColoursAndValues) {
  OutliersView v;
  v.resize(1400, 900);
  v.show();
  v.setStorePath(QString::fromStdString(store->db));
  ASSERT_TRUE(v.showRun(store->big));
  v.setMode(OutliersView::Mode::Before);
  auto colours = [&] {
    QVector<QRgb> c;
    for (int l = 0; l < v.layers(); ++l)
      for (HookSite s : outliers::gridSites()) c << v.cellColor(l, s).rgb();
    return c;
  };
  const QVector<QRgb> kurt = colours();
  const QString kurtName = v.metricName();
  v.setMetric(OutliersView::Metric::MaxMedianRatio);
  const QVector<QRgb> ratio = colours();
  EXPECT_NE(kurt, ratio);
  EXPECT_NE(v.metricName(), kurtName);
  RunStore s = RunStore::open_readonly(store->db);
  for (const respin::SiteSummary& c : s.layer_stats_summary(store->big, StatsStage::Before))
    ASSERT_DOUBLE_EQ(v.cellValue(c.layer, c.site), c.max_median_ratio);
  // The outlier share and the MSE: computed from each cell's stored channels and histogram.
  v.setMetric(OutliersView::Metric::OutlierShare);
  EXPECT_NE(colours(), ratio);
  const auto cell = s.site_stats(store->big, StatsStage::Before, 3, HookSite::OProjInput);
  EXPECT_DOUBLE_EQ(v.cellValue(3, HookSite::OProjInput), 100 * outliers::outlierChannelShare(cell->channel_absmax));
  EXPECT_GT(v.cellValue(3, HookSite::OProjInput), 0);
  v.setMetric(OutliersView::Metric::QuantMse);
  EXPECT_EQ(v.bits(), 4);
  const double mse4 = v.cellValue(3, HookSite::OProjInput);
  EXPECT_DOUBLE_EQ(mse4, outliers::histogramQuantMse(cell->histogram, cell->absmax(), 4) / cell->mean_square());
  v.setBits(8);
  EXPECT_LT(v.cellValue(3, HookSite::OProjInput), mse4);
  EXPECT_TRUE(v.metricName().startsWith("8-bit"));
  // The legend (colour scale) names the metric.
  auto* scale = qobject_cast<QCPColorScale*>(v.gridPlot()->plotLayout()->element(1, 1));
  ASSERT_NE(scale, nullptr);
  EXPECT_TRUE(scale->axis()->label().contains("MSE")) << scale->axis()->label().toStdString();
}

TEST_F(OutliersFixture, BeforeAfterAndChangeModes) {
  OutliersView v;
  v.resize(1400, 900);
  v.show();
  v.setStorePath(QString::fromStdString(store->db));
  ASSERT_TRUE(v.showRun(store->big));
  const int l = 1;
  const HookSite site = HookSite::DownProjInput;  // massive outliers before, Gaussian after
  const double b = v.metricValue(l, site, StatsStage::Before), a = v.metricValue(l, site, StatsStage::After);
  ASSERT_GT(b, 10 * a);
  v.setMode(OutliersView::Mode::Before);
  EXPECT_DOUBLE_EQ(v.cellValue(l, site), b);
  const QColor before = v.cellColor(l, site);
  v.setMode(OutliersView::Mode::After);
  EXPECT_DOUBLE_EQ(v.cellValue(l, site), a);
  const QColor after = v.cellColor(l, site);
  EXPECT_NE(before, after);
  // Before and after share one colour range: the heavier tail is the brighter (viridis) colour.
  EXPECT_GT(before.lightness(), after.lightness());
  v.setMode(OutliersView::Mode::Change);
  EXPECT_DOUBLE_EQ(v.cellValue(l, site), a / b);
  const QColor change = v.cellColor(l, site);
  EXPECT_GT(change.blue(), change.red());  // lower after rotation: blue
  auto* scale = qobject_cast<QCPColorScale*>(v.gridPlot()->plotLayout()->element(1, 1));
  EXPECT_TRUE(scale->axis()->label().contains("after / before"));
  // The grid's CSV: one row per cell with before, after and the change.
  TempDir dir;
  const QString csv = QString::fromStdString(dir.file("grid.csv"));
  ASSERT_TRUE(v.gridPlot()->exportTo(csv));
  const QStringList lines = csvLines(csv);
  ASSERT_EQ(lines.size(), 1 + 12 * 7);
  EXPECT_EQ(lines[0], "layer,site,metric,before,after,change");
  for (const char* ext : {"png", "svg", "pdf"}) {
    const QString path = QString::fromStdString(dir.file(std::string("grid.") + ext));
    ASSERT_TRUE(v.gridPlot()->exportTo(path));
    EXPECT_GT(QFileInfo(path).size(), 1000);
  }
}

TEST_F(OutliersFixture, RunWithoutStatisticsOrMissingShowsWhy) {
  OutliersView v;
  v.setStorePath(QString::fromStdString(store->db));
  EXPECT_FALSE(v.showRun(store->quarot));
  EXPECT_TRUE(v.messageText().contains("no activation statistics")) << v.messageText().toStdString();
  EXPECT_EQ(v.layers(), 0);
  EXPECT_FALSE(v.showRun(9999));
  EXPECT_TRUE(v.messageText().contains("no run 9999")) << v.messageText().toStdString();
  OutliersView w;
  w.setStorePath(QString::fromStdString(store->dir.file("missing.db")));
  EXPECT_FALSE(w.showRun(1));
  EXPECT_FALSE(w.messageText().isEmpty());
}

// ---- Runs ----

struct RunsFixture : ::testing::Test {
  void SetUp() override { f = makeStore(false); }
  std::unique_ptr<Fixture> f;
};

TEST(RunsPlot, ParetoFrontAndKnee) {
  QVector<QPointF> pts;
  for (const auto& [r, p] : kSweep) pts << QPointF(double(r), p);
  const QVector<int> front = runs_plot::paretoFront(pts);
  EXPECT_EQ(front, (QVector<int>{0, 1, 2, 3, 4, 6}));  // rank 128 is dominated by rank 64
  EXPECT_EQ(runs_plot::kneeOf(pts, front), 3);         // rank 32
  EXPECT_EQ(runs_plot::kneeOf(pts, {0, 6}), -1);
  EXPECT_EQ(runs_plot::paretoFront({QPointF(1, 2), QPointF(1, 2), QPointF(2, 2)}), (QVector<int>{0}));
  EXPECT_EQ(runs_plot::kneeOf({QPointF(0, 2), QPointF(1, 1), QPointF(2, 0)}, {0, 1, 2}), -1);  // straight line
}

TEST_F(RunsFixture, TableGroupsSweepsSortsAndFilters) {
  RunsView v;
  v.resize(1200, 850);
  v.show();
  v.setStorePath(QString::fromStdString(f->db));
  QAbstractItemModel* m = v.proxy();
  // Top level: 3 single runs + 2 bits runs + the failed run + one sweep group holding its 7 runs.
  ASSERT_EQ(m->rowCount(), 7);
  int groups = 0;
  for (int r = 0; r < m->rowCount(); ++r) {
    const QModelIndex idx = m->index(r, 0);
    if (m->rowCount(idx) > 0) {
      ++groups;
      EXPECT_EQ(idx.data().toString(), QString("Sweep %1").arg(f->sweep));
      EXPECT_EQ(m->rowCount(idx), int(kSweep.size()));
    }
  }
  EXPECT_EQ(groups, 1);
  EXPECT_EQ(v.shownRunsInOrder().size(), 13);
  // Sort by perplexity, best first; the failed run (no perplexity) last.
  v.table()->sortByColumn(RunsView::ColPpl, Qt::AscendingOrder);
  QList<qint64> top;
  for (int r = 0; r < m->rowCount(); ++r) top << m->index(r, 0).data(Qt::UserRole + 2).toLongLong();
  EXPECT_EQ(top.front(), f->bits8);  // 5.52
  EXPECT_EQ(top.back(), f->failed);
  const QModelIndex group = m->index(top.indexOf(-1), 0);
  EXPECT_EQ(m->index(0, RunsView::ColPpl, group).data().toString(), "6.450");  // inside the sweep too
  EXPECT_EQ(m->index(int(kSweep.size()) - 1, RunsView::ColPpl, group).data().toString(), "9.800");
  v.table()->sortByColumn(RunsView::ColPpl, Qt::DescendingOrder);
  EXPECT_EQ(m->index(0, 0).data(Qt::UserRole + 2).toLongLong(), f->rtn);  // 812
  // Filter by words, status and method.
  v.setFilterText("quarot");
  EXPECT_EQ(v.shownRunsInOrder(), QList<qint64>{f->quarot});
  v.setFilterText("r=32 w4");
  EXPECT_EQ(v.shownRunsInOrder().size(), 1);  // the sweep's rank-32 run (W4A4KV4)
  v.setFilterText("");
  v.setStatusFilter("failed");
  EXPECT_EQ(v.shownRunsInOrder(), QList<qint64>{f->failed});
  v.setStatusFilter("");
  v.setMethodFilter("respin");
  EXPECT_EQ(v.shownRunsInOrder().size(), int(kSweep.size()) + 3);
  v.setMethodFilter("");
  // Multi-select; selecting the sweep row selects its runs.
  v.selectRun(f->quarot);
  EXPECT_EQ(v.selectedRuns(), QList<qint64>{f->quarot});
  QModelIndex sweepRow;
  for (int r = 0; r < m->rowCount(); ++r)
    if (m->rowCount(m->index(r, 0)) > 0) sweepRow = m->index(r, 0);
  v.table()->selectionModel()->select(sweepRow, QItemSelectionModel::ClearAndSelect | QItemSelectionModel::Rows);
  QList<qint64> expect(f->sweepRuns.begin(), f->sweepRuns.end());
  EXPECT_EQ(v.selectedRuns(), expect);
  // Enter on a run activates it; two selected runs can be compared.
  QSignalSpy activated(&v, &RunsView::runActivated);
  v.selectRun(f->spinquant);
  v.table()->setFocus();
  QTest::keyClick(v.table(), Qt::Key_Return);
  ASSERT_EQ(activated.count(), 1);
  EXPECT_EQ(activated.front().front().toLongLong(), f->spinquant);
  QSignalSpy compare(&v, &RunsView::compareRequested);
  v.selectRun(f->quarot);
  const QModelIndexList hits = m->match(m->index(0, 0), Qt::UserRole + 2, qint64(f->spinquant), 1, Qt::MatchExactly | Qt::MatchRecursive);
  v.table()->selectionModel()->select(hits.front(), QItemSelectionModel::Select | QItemSelectionModel::Rows);
  EXPECT_EQ(v.selectedRuns().size(), 2);
  for (QPushButton* b : v.findChildren<QPushButton*>())
    if (b->text() == "Compare") b->click();
  ASSERT_EQ(compare.count(), 1);
}

TEST_F(RunsFixture, TagAndNoteThroughTheView) {
  RunsView v;
  v.show();
  v.setStorePath(QString::fromStdString(f->db));
  ASSERT_TRUE(v.addTag({f->quarot, f->spinquant}, "baseline"));
  {
    RunStore s = RunStore::open_readonly(f->db);
    EXPECT_EQ(s.get_run(f->quarot)->summary.tags, std::vector<std::string>{"baseline"});
    EXPECT_EQ(s.get_run(f->spinquant)->summary.tags, std::vector<std::string>{"baseline"});
  }
  v.setFilterText("#baseline");
  EXPECT_EQ(v.shownRunsInOrder(), (QList<qint64>{f->quarot, f->spinquant}));
  const QModelIndex first = v.proxy()->index(0, RunsView::ColTags);
  EXPECT_EQ(first.data().toString(), "#baseline");
  ASSERT_TRUE(v.removeTag({f->quarot}, "baseline"));
  EXPECT_EQ(v.shownRunsInOrder(), QList<qint64>{f->spinquant});
  v.setFilterText("");
  ASSERT_TRUE(v.setNote(f->rtn, "W4A4 without rotation: outliers\nruin it"));
  EXPECT_EQ(RunStore::open_readonly(f->db).get_run(f->rtn)->note, "W4A4 without rotation: outliers\nruin it");
  EXPECT_EQ(v.selectedRuns(), QList<qint64>{f->rtn});
  EXPECT_TRUE(v.noteShown().contains("Note: W4A4 without rotation")) << v.noteShown().toStdString();
  // A store error shows in the view instead of throwing.
  EXPECT_FALSE(v.setNote(9999, "x"));
  EXPECT_TRUE(v.messageText().contains("no run 9999")) << v.messageText().toStdString();
}

TEST_F(RunsFixture, ExportsRunDataAsJsonAndCsv) {
  // A run with a loss curve and statistics of both stages (2 layers x the grid's sites), so that
  // every table has rows whose values can be compared with the store's.
  const std::vector<double> curve = {5.25, 4.5, 4.125, std::nan("")};
  {
    RunStore s = RunStore::open(f->db);
    s.append_loss(f->spinquant, 0, curve);
    putSyntheticStats(s, f->spinquant, 2, 64, 5);
  }
  RunsView v;
  v.setStorePath(QString::fromStdString(f->db));
  respin::test::TempDir out;
  const RunStore store = RunStore::open_readonly(f->db);
  const RunDetail sq = *store.get_run(f->spinquant);
  ASSERT_EQ(sq.loss.size(), curve.size());
  std::vector<respin::SiteSummary> cells;
  for (StatsStage stage : {StatsStage::Before, StatsStage::After})
    for (const respin::SiteSummary& c : store.layer_stats_summary(f->spinquant, stage)) cells.push_back(c);
  const size_t sites = outliers::gridSites().size();
  ASSERT_EQ(cells.size(), 2 * 2 * sites);
  // JSON: one file, one object per run, with the loss curve and the per-layer statistics.
  const QString json = QString::fromStdString(out.file("runs.json"));
  ASSERT_TRUE(v.exportRunData({f->quarot, f->spinquant}, json, false)) << v.messageText().toStdString();
  EXPECT_TRUE(v.messageText().contains("runs.json")) << v.messageText().toStdString();
  const nlohmann::json j = nlohmann::json::parse(respin::test::read_bytes(out.file("runs.json")));
  ASSERT_EQ(j.size(), 2u);
  EXPECT_EQ(j[0]["id"], f->quarot);
  EXPECT_EQ(j[1]["id"], f->spinquant);
  EXPECT_EQ(j[1]["method"], "spinquant");
  EXPECT_EQ(j[0]["loss"].size(), 0u);
  EXPECT_EQ(j[0]["layer_stats"].size(), 0u);
  ASSERT_EQ(j[1]["loss"].size(), curve.size());
  for (size_t i = 0; i < curve.size(); ++i) {
    EXPECT_EQ(j[1]["loss"][i]["step"], int64_t(i));
    if (std::isnan(curve[i])) EXPECT_EQ(j[1]["loss"][i]["loss"], "nan");
    else EXPECT_EQ(j[1]["loss"][i]["loss"].get<double>(), curve[i]);
  }
  ASSERT_EQ(j[1]["layer_stats"].size(), cells.size());
  for (size_t i = 0; i < cells.size(); ++i) {
    const nlohmann::json& e = j[1]["layer_stats"][i];
    EXPECT_EQ(e["stage"], i < cells.size() / 2 ? "before" : "after") << i;
    EXPECT_EQ(e["layer"], cells[i].layer) << i;
    EXPECT_EQ(e["site"], respin::hook_site_name(cells[i].site)) << i;
    EXPECT_EQ(e["count"], cells[i].count) << i;
    EXPECT_EQ(e["channels"], cells[i].channels) << i;
    EXPECT_EQ(e["kurtosis"].get<double>(), cells[i].kurtosis) << i;
    EXPECT_EQ(e["absmax"].get<double>(), cells[i].absmax) << i;
    EXPECT_EQ(e["max_median_ratio"].get<double>(), cells[i].max_median_ratio) << i;
    EXPECT_EQ(e["mean_square"].get<double>(), cells[i].mean_square) << i;
  }
  ASSERT_TRUE(sq.record.has_value());
  EXPECT_DOUBLE_EQ(j[1]["record"]["results"]["quantized_perplexity"].get<double>(),
                   sq.record->results.quantized_perplexity);
  // CSV: three files from the chosen name, one row per run / loss step / (stage, layer, site).
  ASSERT_TRUE(v.exportRunData({f->spinquant}, QString::fromStdString(out.file("sq.csv")), true))
      << v.messageText().toStdString();
  const QStringList runs = csvLines(QString::fromStdString(out.file("sq.csv")));
  const QStringList loss = csvLines(QString::fromStdString(out.file("sq.loss.csv")));
  const QStringList layers = csvLines(QString::fromStdString(out.file("sq.layers.csv")));
  ASSERT_EQ(runs.size(), 2);  // header + one run
  const QStringList head = csvFields(runs[0]), row = csvFields(runs[1]);
  ASSERT_EQ(head.size(), row.size());
  EXPECT_EQ(row[head.indexOf("id")].toLongLong(), f->spinquant);
  EXPECT_EQ(row[head.indexOf("method")], "spinquant");
  EXPECT_EQ(row[head.indexOf("results.quantized_perplexity")].toDouble(), sq.record->results.quantized_perplexity);
  ASSERT_EQ(loss.size(), int(curve.size()) + 1);
  EXPECT_EQ(loss[0], "run_id,step,loss");
  for (size_t i = 0; i < curve.size(); ++i) {
    const QStringList l = loss[int(i) + 1].split(',');
    ASSERT_EQ(l.size(), 3);
    EXPECT_EQ(l[0].toLongLong(), f->spinquant);
    EXPECT_EQ(l[1].toLongLong(), int64_t(i));
    if (std::isnan(curve[i])) EXPECT_EQ(l[2].toLower(), "nan");
    else EXPECT_EQ(l[2].toDouble(), curve[i]) << l[2].toStdString();
  }
  ASSERT_EQ(layers.size(), int(cells.size()) + 1);
  EXPECT_EQ(layers[0], "run_id,stage,layer,site,count,channels,kurtosis,absmax,max_median_ratio,mean_square,nonfinite");
  for (size_t i = 0; i < cells.size(); ++i) {
    const QStringList c = layers[int(i) + 1].split(',');
    ASSERT_EQ(c.size(), 11) << layers[int(i) + 1].toStdString();
    EXPECT_EQ(c[0].toLongLong(), f->spinquant);
    EXPECT_EQ(c[1], i < cells.size() / 2 ? "before" : "after");
    EXPECT_EQ(c[2].toInt(), cells[i].layer);
    EXPECT_EQ(c[3], respin::hook_site_name(cells[i].site));
    EXPECT_EQ(c[4].toLongLong(), cells[i].count);
    EXPECT_EQ(c[5].toLongLong(), cells[i].channels);
    EXPECT_EQ(c[6].toDouble(), cells[i].kurtosis);  // %.17g: the double back exactly
    EXPECT_EQ(c[7].toDouble(), cells[i].absmax);
    EXPECT_EQ(c[8].toDouble(), cells[i].max_median_ratio);
    EXPECT_EQ(c[9].toDouble(), cells[i].mean_square);
    EXPECT_EQ(c[10].toLongLong(), cells[i].nonfinite);
  }
  // An unknown run is a one-line message and writes nothing.
  EXPECT_FALSE(v.exportRunData({9999}, QString::fromStdString(out.file("none.json")), false));
  EXPECT_TRUE(v.messageText().contains("no run 9999")) << v.messageText().toStdString();
  EXPECT_FALSE(std::filesystem::exists(out.file("none.json")));
}

TEST_F(RunsFixture, CompareDefaultsToThePreviousRunOfTheSameModel) {
  // `--screenshot --view compare --run ID` without --run2 (app/workbench_main.cpp).
  QString why;
  // The sweep's third run: the previous finished run of the same model is the sweep's second.
  EXPECT_EQ(CompareView::previousRunOfSameModel(QString::fromStdString(f->db), f->sweepRuns[2], &why), f->sweepRuns[1]);
  // A run the store does not have.
  EXPECT_EQ(CompareView::previousRunOfSameModel(QString::fromStdString(f->db), f->failed + 1000, &why), -1);
  EXPECT_EQ(why, QString::fromStdString(f->db) + ": no run " + QString::number(f->failed + 1000));
  RunStore s = RunStore::open(f->db);
  RunSpec other{makeConfig(Method::QuaRot, 4, 4, 4, 0, "/models/other"), -1, 5.0, 6.0, 32, 4096, {}, "other"};
  const int64_t first = addFinishedRun(s, f->dir, other);
  const int64_t second = addFinishedRun(s, f->dir, {makeConfig(Method::Rtn, 4, 4, 4, 0, "/models/other"), -1, 5.0, 9.0, 32, 4096, {}, "other2"});
  EXPECT_EQ(CompareView::previousRunOfSameModel(QString::fromStdString(f->db), second, &why), first);
  // The first run of a model: the option to give is named.
  EXPECT_EQ(CompareView::previousRunOfSameModel(QString::fromStdString(f->db), first, &why), -1);
  EXPECT_EQ(why, QString("run %1 is the first run of /models/other in %2: name the run to compare it with (--run2 ID)")
                     .arg(first).arg(QString::fromStdString(f->db)));
  // Run 1 is the store's first: the case that used to compare "runs 0 and 1".
  EXPECT_EQ(CompareView::previousRunOfSameModel(QString::fromStdString(f->db), f->rtn, &why), -1);
  EXPECT_TRUE(why.contains("--run2")) << why.toStdString();
  const int64_t after = addFinishedRun(s, f->dir, {makeConfig(Method::Rtn), -1, 5.47, 800.0, 32, 4096, {}, "rtn2"});
  EXPECT_EQ(CompareView::previousRunOfSameModel(QString::fromStdString(f->db), after, &why), f->bits8);  // not the failed run
}

TEST_F(RunsFixture, DeleteRemovesTheRunAndItsDirectory) {
  RunsView v;
  v.setConfirmDeletes(false);
  v.setStorePath(QString::fromStdString(f->db));
  const std::string dir = RunStore::open_readonly(f->db).get_run(f->quarot)->summary.run_dir;
  ASSERT_TRUE(std::filesystem::exists(dir));
  ASSERT_TRUE(v.deleteRuns({f->quarot}));
  EXPECT_FALSE(RunStore::open_readonly(f->db).get_run(f->quarot).has_value());
  EXPECT_FALSE(std::filesystem::exists(dir));
  EXPECT_FALSE(v.shownRunsInOrder().contains(f->quarot));
  EXPECT_TRUE(v.messageText().contains("Deleted 1 run"));
}

TEST_F(RunsFixture, RankPlotHasParetoFrontKneeAndCostAxis) {
  RunsView v;
  v.resize(1200, 850);
  v.show();
  v.setStorePath(QString::fromStdString(f->db));  // the latest sweep is plotted by default
  QApplication::processEvents();
  const QVector<RunsView::PlotPoint> pts = v.plotPoints();
  ASSERT_EQ(pts.size(), int(kSweep.size()));
  for (int i = 0; i < pts.size(); ++i) {
    EXPECT_EQ(pts[i].id, f->sweepRuns[size_t(i)]);
    EXPECT_EQ(pts[i].x, double(kSweep[size_t(i)].first));
    EXPECT_DOUBLE_EQ(pts[i].y, kSweep[size_t(i)].second);
  }
  QList<qint64> front;
  for (size_t i : {0, 1, 2, 3, 4, 6}) front << f->sweepRuns[i];
  EXPECT_EQ(v.paretoRuns(), front);
  EXPECT_FALSE(pts[5].pareto);
  EXPECT_EQ(v.kneeRun(), f->sweepRuns[3]);  // rank 32
  // Online MACs per token on the second axis: grows with the rank.
  EXPECT_TRUE(v.plot()->yAxis2->visible());
  EXPECT_EQ(pts[0].cost, 0);
  EXPECT_EQ(pts[3].cost, 32.0 * 2 * (2 * 4096 * 32 + 32 * 32));
  v.setCostAxis(RunsView::CostAxis::Parameters);
  EXPECT_EQ(v.plotPoints()[3].cost, 32.0 * 2 * (4096 * 32 + 32 * 32));
  // The plot's CSV: one row per run, the front and knee flagged.
  TempDir dir;
  const QString csv = QString::fromStdString(dir.file("rank.csv"));
  ASSERT_TRUE(v.plot()->exportTo(csv));
  const QStringList lines = csvLines(csv);
  ASSERT_EQ(lines.size(), 1 + int(kSweep.size()));
  EXPECT_EQ(lines[0], "run_id,label,rank,perplexity,online_parameters,pareto,knee");
  EXPECT_TRUE(lines[4].endsWith(",1,1")) << lines[4].toStdString();  // rank 32: front and knee
  EXPECT_TRUE(lines[6].endsWith(",0,0")) << lines[6].toStdString();  // rank 128: dominated
  for (const char* ext : {"png", "svg", "pdf"}) {
    const QString path = QString::fromStdString(dir.file(std::string("rank.") + ext));
    ASSERT_TRUE(v.plot()->exportTo(path));
    EXPECT_GT(QFileInfo(path).size(), 1000);
  }
  // Bits and method against perplexity, over a selection and over the whole table.
  v.plotRuns({f->bits3, f->sweepRuns[3], f->bits8});
  v.setPlotX(RunsView::PlotX::WBits);
  ASSERT_EQ(v.plotPoints().size(), 3);
  EXPECT_EQ(v.plotPoints()[0].x, 3);
  EXPECT_EQ(v.plotPoints()[2].x, 8);
  EXPECT_EQ(v.paretoRuns(), (QList<qint64>{f->bits3, f->sweepRuns[3], f->bits8}));
  v.plotShownRuns();
  v.setPlotX(RunsView::PlotX::Method);
  QSet<double> methods;
  for (const RunsView::PlotPoint& p : v.plotPoints()) methods.insert(p.x);
  EXPECT_EQ(methods.size(), 4);
  EXPECT_EQ(v.paretoRuns().front(), f->rtn);  // the cheapest method is on the front by definition
}

TEST_F(RunsFixture, MemoryPlotsEachRunsMeasuredPeakAgainstItsPlan) {
  RunsView v;
  v.resize(1200, 850);
  v.show();
  v.setStorePath(QString::fromStdString(f->db));  // the latest sweep
  QApplication::processEvents();
  v.setPlotX(RunsView::PlotX::Memory);
  const QVector<RunsView::PlotPoint> pts = v.plotPoints();
  ASSERT_EQ(pts.size(), int(kSweep.size()));
  int off = -1;
  for (int i = 0; i < pts.size(); ++i) {
    EXPECT_EQ(pts[i].id, f->sweepRuns[size_t(i)]);
    const double planned = 1 + std::max<int64_t>(kSweep[size_t(i)].first, 0) / 32.0;  // GB, the largest phase's
    EXPECT_DOUBLE_EQ(pts[i].x, planned);
    EXPECT_NEAR(pts[i].y / pts[i].x, kSweep[size_t(i)].first == 128 ? 1.3 : 1.05, 1e-12);
    if (kSweep[size_t(i)].first == 128) off = i;
  }
  ASSERT_GE(off, 0);
  EXPECT_TRUE(v.paretoRuns().isEmpty());  // no front or knee: they are perplexity's
  EXPECT_EQ(v.kneeRun(), -1);
  EXPECT_FALSE(v.plot()->yAxis2->visible());
  auto* title = qobject_cast<QCPTextElement*>(v.plot()->plotLayout()->element(0, 0));
  ASSERT_NE(title, nullptr);
  EXPECT_TRUE(title->text().contains(QString("%1 runs, %2 within 15%").arg(pts.size()).arg(pts.size() - 1)))
      << title->text().toStdString();
  EXPECT_EQ(v.plot()->itemCount(), 3);  // the diagonal and the 15% band
  TempDir dir;
  const QString csv = QString::fromStdString(dir.file("memory.csv"));
  ASSERT_TRUE(v.plot()->exportTo(csv));
  const QStringList lines = csvLines(csv);
  ASSERT_EQ(lines.size(), 1 + int(kSweep.size()));
  EXPECT_EQ(lines[0], "run_id,label,planned_peak_gb,measured_peak_gb");
  // Back to perplexity: the front returns.
  v.setPlotX(RunsView::PlotX::Rank);
  EXPECT_FALSE(v.paretoRuns().isEmpty());
}

TEST_F(RunsFixture, ClickingAPointSelectsItsRun) {
  RunsView v;
  v.resize(1200, 850);
  v.show();
  v.setStorePath(QString::fromStdString(f->db));
  QApplication::processEvents();
  ASSERT_EQ(v.plotPoints().size(), int(kSweep.size()));
  QSignalSpy changed(&v, &RunsView::selectionChanged);
  const QPointF at = v.pointPixel(5);  // rank 128
  QTest::mouseClick(v.plot(), Qt::LeftButton, Qt::NoModifier, at.toPoint());
  EXPECT_EQ(v.selectedRuns(), QList<qint64>{f->sweepRuns[5]});
  ASSERT_GE(changed.count(), 1);
  EXPECT_EQ(changed.back().front().value<QList<qint64>>(), QList<qint64>{f->sweepRuns[5]});
  // The table's current row is that run, and the plot rings it.
  const QModelIndex cur = v.table()->currentIndex();
  EXPECT_EQ(cur.sibling(cur.row(), 0).data(Qt::UserRole + 2).toLongLong(), f->sweepRuns[5]);
  EXPECT_EQ(v.plot()->graph(4)->dataCount(), 1);
  // A click on a run hidden by the filter clears the filter so that the selection shows.
  v.setFilterText("quarot");
  QTest::mouseClick(v.plot(), Qt::LeftButton, Qt::NoModifier, v.pointPixel(3).toPoint());
  EXPECT_EQ(v.selectedRuns(), QList<qint64>{f->sweepRuns[3]});
}

// ---- Compare ----

TEST(Compare, ListsPerSiteChangesSortedByLargestChangeAndConfigDifferences) {
  TempDir dir;
  const std::string db = dir.file("runs.db");
  int64_t a = 0, b = 0;
  {
    RunStore s = RunStore::open(db);
    a = addFinishedRun(s, dir, {makeConfig(Method::QuaRot), -1, 5.47, 6.9, 6, 1024, {}, "a"});
    b = addFinishedRun(s, dir, {makeConfig(Method::ReSpin, 4, 4, 4, 32), 32, 5.47, 6.4, 6, 1024, {}, "b"});
    putSyntheticStats(s, a, 6, 256, 5, 40.0);  // QuaRot: some cells keep heavy tails
    putSyntheticStats(s, b, 6, 256, 5);
  }
  CompareView v;
  v.resize(1200, 850);
  v.show();
  v.setStorePath(QString::fromStdString(db));
  ASSERT_TRUE(v.compare(a, b)) << v.messageText().toStdString();
  // Differences only: method, rank and results differ; the seed does not.
  ASSERT_TRUE(v.differencesOnly());
  QStringList keys = v.visibleConfigKeys();
  EXPECT_TRUE(keys.contains("config.method"));
  EXPECT_TRUE(keys.contains("perplexity (quantized)"));
  EXPECT_TRUE(keys.contains("applied rank"));
  EXPECT_FALSE(keys.contains("config.seed"));
  EXPECT_FALSE(keys.contains("config.wbits"));
  EXPECT_EQ(v.configValue("config.method", 0), "quarot");
  EXPECT_EQ(v.configValue("config.method", 1), "respin");
  v.setDifferencesOnly(false);
  keys = v.visibleConfigKeys();
  EXPECT_TRUE(keys.contains("config.seed"));
  EXPECT_TRUE(keys.contains("config.wbits"));
  v.setDifferencesOnly(true);
  // Per layer and site after rotation, the largest kurtosis change first.
  const auto rows = v.layerRowsInOrder();
  ASSERT_EQ(rows.size(), 6 * 7);
  RunStore s = RunStore::open_readonly(db);
  std::map<std::pair<int, int>, double> ka, kb;
  for (const auto& c : s.layer_stats_summary(a, StatsStage::After)) ka[{c.layer, int(c.site)}] = c.kurtosis;
  for (const auto& c : s.layer_stats_summary(b, StatsStage::After)) kb[{c.layer, int(c.site)}] = c.kurtosis;
  double prev = 1e300;
  for (int r = 0; r < rows.size(); ++r) {
    const std::pair<int, int> key{rows[r].first, int(rows[r].second)};
    const double change = std::abs(std::log(kb[key] / ka[key]));
    EXPECT_NEAR(v.layerChange(r, CompareView::Metric::Kurtosis), change, 1e-12);
    EXPECT_LE(change, prev + 1e-12);
    prev = change;
  }
  EXPECT_GT(v.layerChange(0, CompareView::Metric::Kurtosis), 1.0);  // a heavy-tailed QuaRot cell leads
  // Sort by another metric; the CSV lists every row.
  v.sortByLargestChange(CompareView::Metric::Absmax);
  for (int r = 1; r < rows.size(); ++r)
    EXPECT_LE(v.layerChange(r, CompareView::Metric::Absmax), v.layerChange(r - 1, CompareView::Metric::Absmax) + 1e-12);
  const QString csv = QString::fromStdString(dir.file("diff.csv"));
  ASSERT_TRUE(v.exportLayerCsv(csv));
  const QStringList lines = csvLines(csv);
  ASSERT_EQ(lines.size(), 1 + 6 * 7);
  EXPECT_TRUE(lines[0].startsWith("layer,site,kurtosis_a,kurtosis_b,kurtosis_b_over_a"));
  // Before rotation the two runs saw the same model: no change anywhere.
  v.setStage(StatsStage::Before);
  EXPECT_EQ(v.layerRowsInOrder().size(), 6 * 7);
  EXPECT_NEAR(v.layerChange(0, CompareView::Metric::Kurtosis), 0.0, 1e-12);
  // A missing run is reported, not thrown.
  EXPECT_FALSE(v.compare(a, 9999));
  EXPECT_TRUE(v.messageText().contains("no run 9999"));
}

// ---- Screenshots: each view rendered offscreen, for a human to check readability ----

// ---- A store locked by another process ----
// The views read and write through StoreService: the event loop goes on while the store is
// locked, the view says so in one line, and shows the data once the lock is gone.

// Another connection holding the store's lock the way a writer in exclusive locking mode does:
// readers are refused too (a plain BEGIN IMMEDIATE in WAL mode lets them read). Closing the
// connection releases it.
struct StoreLock {
  explicit StoreLock(const std::string& path) {
    db.emplace(path, respin::sqlite::Database::Mode::ReadWrite);
    db->exec("PRAGMA locking_mode=EXCLUSIVE");
    db->exec("BEGIN EXCLUSIVE");
  }
  void release() { db.reset(); }
  std::optional<respin::sqlite::Database> db;
};

// Runs `action` (which runs the event loop while it waits on the store) with a 5 ms timer
// ticking; `poll` is called on each tick. Returns the longest gap between two ticks, in ms: how
// long the event loop stalled.
double longestStall(const std::function<void()>& action, const std::function<void()>& poll) {
  QElapsedTimer gap;
  double worst = 0;
  QTimer tick;
  QObject::connect(&tick, &QTimer::timeout, [&] {
    worst = std::max(worst, double(gap.nsecsElapsed()) / 1e6);
    gap.restart();
    poll();
  });
  gap.start();
  tick.start(5);
  action();
  worst = std::max(worst, double(gap.nsecsElapsed()) / 1e6);
  return worst;
}

// Releases `lock` 400 ms after `shown()` first says the store is locked; `seen` tells whether it did.
struct ReleaseWhenShown {
  StoreLock& lock;
  std::function<QString()> shown;
  QString expected;
  bool seen = false;
  QElapsedTimer since;
  void operator()() {
    if (!seen && shown() == expected) {
      seen = true;
      since.start();
    }
    if (seen && lock.db && since.elapsed() > 400) lock.release();
  }
};

struct LockedStore : ::testing::Test {
  void SetUp() override {
    f = makeStore(true, 4, 64);
    db = QString::fromStdString(f->db);
    StoreService::shared().setPatience(20000);
  }
  void TearDown() override { StoreService::shared().setPatience(StoreService::kDefaultPatienceMs); }
  std::unique_ptr<Fixture> f;
  QString db;
};

TEST_F(LockedStore, RunsViewSaysLockedWithoutFreezingThenShowsTheRuns) {
  RunsView v;
  v.resize(1200, 850);
  v.show();
  v.setStorePath(db);
  const QList<qint64> all = v.shownRunsInOrder();
  ASSERT_FALSE(all.isEmpty()) << v.messageText().toStdString();
  StoreLock lock(f->db);
  ReleaseWhenShown release{lock, [&] { return v.messageText(); }, StoreService::lockedText(db)};
  QElapsedTimer took;
  took.start();
  const double stall = longestStall([&] { v.refresh(); }, [&] { release(); });
  std::printf("[ stall ] runs view, store locked for %.0f ms: longest event-loop stall %.1f ms\n", double(took.elapsed()), stall);
  EXPECT_TRUE(release.seen) << "the view never said the store was locked";
  EXPECT_FALSE(lock.db.has_value());
  EXPECT_LT(stall, 100.0);
  EXPECT_EQ(v.shownRunsInOrder(), all);
  EXPECT_TRUE(v.messageText().isEmpty()) << v.messageText().toStdString();
}

TEST_F(LockedStore, RunsViewPastThePatienceShowsTheStoreErrorAndRefreshRetries) {
  RunsView v;
  v.show();
  v.setStorePath(db);
  const QList<qint64> all = v.shownRunsInOrder();
  StoreService::shared().setPatience(300);
  StoreLock lock(f->db);
  const double stall = longestStall([&] { v.refresh(); }, [] {});
  EXPECT_LT(stall, 100.0);
  // RunStore's own line (locked, not "damaged"), and what to do.
  EXPECT_TRUE(v.messageText().startsWith(db + ": locked by another process")) << v.messageText().toStdString();
  EXPECT_TRUE(v.messageText().endsWith("(Refresh to try again)")) << v.messageText().toStdString();
  EXPECT_TRUE(v.shownRunsInOrder().isEmpty());
  lock.release();
  v.refresh();
  EXPECT_EQ(v.shownRunsInOrder(), all);
  EXPECT_TRUE(v.messageText().isEmpty()) << v.messageText().toStdString();
}

TEST_F(LockedStore, CompareViewSaysLockedWithoutFreezingThenShowsTheRuns) {
  CompareView v;
  v.resize(1200, 850);
  v.show();
  v.setStorePath(db);
  StoreLock lock(f->db);
  ReleaseWhenShown release{lock, [&] { return v.messageText(); }, StoreService::lockedText(db)};
  bool ok = false;
  const double stall = longestStall([&] { ok = v.compare(f->quarot, f->spinquant); }, [&] { release(); });
  std::printf("[ stall ] compare view, store locked: longest event-loop stall %.1f ms\n", stall);
  EXPECT_TRUE(release.seen);
  EXPECT_LT(stall, 100.0);
  ASSERT_TRUE(ok) << v.messageText().toStdString();
  EXPECT_EQ(v.configValue("config.method", 0), "quarot");
  EXPECT_EQ(v.configValue("config.method", 1), "spinquant");
  EXPECT_EQ(v.runA(), f->quarot);
}

TEST_F(LockedStore, OutliersViewSaysLockedWithoutFreezingThenShowsTheGrid) {
  OutliersView v;
  v.resize(1400, 900);
  v.show();
  v.setStorePath(db);
  StoreLock lock(f->db);
  ReleaseWhenShown release{lock, [&] { return v.messageText(); }, StoreService::lockedText(db)};
  bool ok = false;
  const double stall = longestStall([&] { ok = v.showRun(f->big); }, [&] { release(); });
  std::printf("[ stall ] outliers view, store locked: longest event-loop stall %.1f ms\n", stall);
  EXPECT_TRUE(release.seen);
  EXPECT_LT(stall, 100.0);
  ASSERT_TRUE(ok) << v.messageText().toStdString();
  EXPECT_EQ(v.layers(), 4);
  EXPECT_TRUE(v.messageText().isEmpty()) << v.messageText().toStdString();
  const auto after = RunStore::open_readonly(f->db).layer_stats_summary(f->big, StatsStage::After);
  ASSERT_FALSE(after.empty());
  EXPECT_DOUBLE_EQ(v.cellValue(after[0].layer, after[0].site), after[0].kurtosis);
  // A cell picked while the store is locked again: its histogram once the lock is gone.
  StoreLock again(f->db);
  ReleaseWhenShown release2{again, [&] { return v.messageText(); }, StoreService::lockedText(db)};
  const double stall2 = longestStall([&] { v.selectCell(after[0].layer, after[0].site); }, [&] { release2(); });
  EXPECT_TRUE(release2.seen);
  EXPECT_LT(stall2, 100.0);
  const auto stored = RunStore::open_readonly(f->db).site_stats(f->big, StatsStage::After, after[0].layer, after[0].site);
  ASSERT_TRUE(stored.has_value());
  EXPECT_EQ(v.shownHistogram(StatsStage::After), std::vector<int64_t>(stored->histogram.begin(), stored->histogram.end()));
}

TEST_F(LockedStore, DeletingARunWhoseFolderItDoesNotOwnSaysItKeptIt) {
  // The run's folder lost its marker and holds another run.json: not provably the run's.
  const std::string dir = RunStore::open_readonly(f->db).get_run(f->quarot)->summary.run_dir;
  std::filesystem::remove(dir + "/" + respin::kRunMarkerName);
  respin::test::write_bytes(dir + "/run.json", "{\"someone\": \"else\"}");
  RunsView v;
  v.setConfirmDeletes(false);
  v.setStorePath(db);
  ASSERT_TRUE(v.deleteRuns({f->quarot})) << v.messageText().toStdString();
  EXPECT_FALSE(RunStore::open_readonly(f->db).get_run(f->quarot).has_value());
  EXPECT_TRUE(std::filesystem::exists(dir + "/run.json"));  // left on disk
  const QStringList lines = v.messageText().split('\n');
  ASSERT_EQ(lines.size(), 2) << v.messageText().toStdString();
  EXPECT_EQ(lines[0], "Deleted 1 run");
  EXPECT_TRUE(lines[1].startsWith("kept " + QString::fromStdString(dir) + ": it does not belong to run " +
                                  QString::number(f->quarot)))
      << lines[1].toStdString();
}

TEST(Screenshots, EachViewRendersReadably) {
  auto f = makeStore(true, 80, 1024);
  {
    RunStore s = RunStore::open(f->db);
    s.add_tag(f->sweepRuns[3], "knee");
    s.add_tag(f->quarot, "baseline");
    s.set_note(f->sweepRuns[3], "rank 32: the knee of the sweep");
  }
  OutliersView o;
  o.resize(1500, 950);
  o.show();
  o.setStorePath(QString::fromStdString(f->db));
  ASSERT_TRUE(o.showRun(f->big));
  o.selectCell(1, HookSite::DownProjInput);
  o.setMode(OutliersView::Mode::Before);
  expectRendered(o, "outliers.png");
  o.setMode(OutliersView::Mode::Change);
  expectRendered(o, "outliers-change.png");

  RunsView r;
  r.resize(1300, 900);
  r.show();
  r.setStorePath(QString::fromStdString(f->db));
  r.selectRun(f->sweepRuns[3]);
  expectRendered(r, "runs.png");
  r.setPlotX(RunsView::PlotX::Memory);
  expectRendered(r, "runs-memory.png");
  r.setPlotX(RunsView::PlotX::Rank);

  // The diff: an 80-layer run against a QuaRot-like run of the same model.
  int64_t other = 0;
  {
    RunStore s = RunStore::open(f->db);
    other = addFinishedRun(s, f->dir,
                           {makeConfig(Method::QuaRot, 4, 4, 4, 32, "/models/llama-80l-synthetic"), -1, 3.1, 3.9, 80, 8192, {}, "q80"});
    putSyntheticStats(s, other, 80, 256, 11, 40.0);
  }
  CompareView c;
  c.resize(1300, 900);
  c.show();
  c.setStorePath(QString::fromStdString(f->db));
  ASSERT_TRUE(c.compare(other, f->big));
  expectRendered(c, "compare.png");
  std::cout << "[ screenshots ] " << RESPIN_SCREENSHOT_DIR << "/{outliers,outliers-change,runs,compare}.png\n";
}

}  // namespace

int main(int argc, char** argv) {
  setenv("QT_QPA_PLATFORM", "offscreen", 0);
  ::testing::InitGoogleTest(&argc, argv);
  QApplication app(argc, argv);
  qRegisterMetaType<QList<qint64>>();
  return RUN_ALL_TESTS();
}
