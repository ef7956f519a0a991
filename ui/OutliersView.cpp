// The outliers view (see OutliersView.h). Reads the store only; every value drawn is the stored
// one or computed here from it.
#include "ui/OutliersView.h"

#include <QCheckBox>
#include <QComboBox>
#include <QHBoxLayout>
#include <QLabel>
#include <QScrollArea>
#include <QSpinBox>
#include <QSplitter>
#include <QTextDocument>
#include <QLocale>
#include <QToolTip>
#include <QVBoxLayout>
#include <algorithm>
#include <array>
#include <cmath>
#include <limits>

#include "ui/PlotExport.h"
#include "ui/StoreService.h"

using respin::HookSite;
using respin::StatsStage;

namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
const QColor kBeforeColor(214, 96, 39);   // orange-red
const QColor kAfterColor(33, 102, 172);   // blue
const char* const kHint =
    "Hover for values · click a cell to inspect it · right-click a plot to export it (PNG, SVG, PDF) or its data (CSV)";

int stageIndex(StatsStage s) { return s == StatsStage::Before ? 0 : 1; }

QColor withAlpha(QColor c, int alpha) {
  c.setAlpha(alpha);
  return c;
}

// Five evenly spaced colour stops, 256 levels, NaN (no data) in light grey.
QCPColorGradient gradientThrough(const std::array<QColor, 5>& stops) {
  QCPColorGradient g;
  g.clearColorStops();
  for (size_t i = 0; i < stops.size(); ++i) g.setColorStopAt(0.25 * double(i), stops[i]);
  g.setColorInterpolation(QCPColorGradient::ciRGB);
  g.setLevelCount(256);
  g.setNanHandling(QCPColorGradient::nhNanColor);
  g.setNanColor(QColor(200, 200, 200));
  return g;
}

// Viridis-like: perceptually ordered, readable in grey.
QCPColorGradient sequentialGradient() {
  return gradientThrough({QColor(68, 1, 84), QColor(59, 82, 139), QColor(33, 145, 140), QColor(94, 201, 98),
                          QColor(253, 231, 37)});
}

// Blue (lower after rotation: better) - white (unchanged) - red (higher: worse).
QCPColorGradient divergingGradient() {
  return gradientThrough({QColor(33, 102, 172), QColor(103, 169, 207), QColor(247, 247, 247), QColor(239, 138, 98),
                          QColor(178, 24, 43)});
}

QCPTextElement* addTitle(QCustomPlot* plot, const QString& text) {
  plot->plotLayout()->insertRow(0);
  auto* t = new QCPTextElement(plot, text, QFont(plot->font().family(), 10, QFont::Bold));
  plot->plotLayout()->addElement(0, 0, t);
  return t;
}

void setLogAxis(QCPAxis* axis, bool log) {
  if (log) {
    axis->setScaleType(QCPAxis::stLogarithmic);
    QSharedPointer<QCPAxisTickerLog> t(new QCPAxisTickerLog);
    t->setLogBase(10);
    t->setSubTickCount(8);
    axis->setTicker(t);
    axis->setNumberFormat("gb");
    axis->setNumberPrecision(3);
  } else {
    axis->setScaleType(QCPAxis::stLinear);
    axis->setTicker(QSharedPointer<QCPAxisTicker>(new QCPAxisTicker));
    axis->setNumberFormat("gb");
    axis->setNumberPrecision(4);
  }
}

QString fmt(double v, int digits = 4) {
  if (std::isnan(v)) return QStringLiteral("—");
  if (std::isinf(v)) return v > 0 ? "∞" : "−∞";
  return QString::number(v, 'g', digits);
}

// Display edges of a histogram bin: bin 0 starts at 2^-17 and the open last bin ends at 512 on
// the log axis.
double shownLower(int bin) { return bin == 0 ? std::ldexp(1.0, respin::kHistogramMinExp2 - 1) : respin::histogram_bin_lower(bin); }
double shownUpper(int bin) {
  return bin == respin::kHistogramBins - 1 ? std::ldexp(1.0, respin::kHistogramMaxExp2 + 1) : respin::histogram_bin_upper(bin);
}

QString binText(int bin) {
  const QString lo = bin == 0 ? QStringLiteral("0") : fmt(respin::histogram_bin_lower(bin));
  const QString hi = bin == respin::kHistogramBins - 1 ? QStringLiteral("∞") : fmt(respin::histogram_bin_upper(bin));
  return "[" + lo + ", " + hi + ")";
}

}  // namespace

// ---------------------------------------------------------------------------------------------
namespace outliers {

const std::vector<HookSite>& gridSites() {
  static const std::vector<HookSite> sites = {HookSite::AttnInput, HookSite::OProjInput, HookSite::MlpInput,
                                              HookSite::DownProjInput, HookSite::Key,        HookSite::Value,
                                              HookSite::Query};
  return sites;
}

QString siteShortName(HookSite site) {
  switch (site) {
    case HookSite::AttnInput: return "q/k/v in";
    case HookSite::OProjInput: return "o_proj in";
    case HookSite::MlpInput: return "gate/up in";
    case HookSite::DownProjInput: return "down_proj in";
    case HookSite::Key: return "K";
    case HookSite::Value: return "V";
    case HookSite::Query: return "Q";
    default: return QString::fromLatin1(respin::hook_site_name(site));
  }
}

QString siteLongName(HookSite site) {
  switch (site) {
    case HookSite::AttnInput: return "q/k/v_proj input";
    case HookSite::OProjInput: return "o_proj input (attention output)";
    case HookSite::MlpInput: return "gate/up_proj input";
    case HookSite::DownProjInput: return "down_proj input (silu(gate)·up)";
    case HookSite::Key: return "K (after RoPE)";
    case HookSite::Value: return "V";
    case HookSite::Query: return "Q (after RoPE)";
    default: return QString::fromLatin1(respin::hook_site_name(site));
  }
}

double outlierChannelShare(const std::vector<double>& channel_absmax) {
  if (channel_absmax.empty()) return kNaN;
  std::vector<double> v = channel_absmax;
  std::nth_element(v.begin(), v.begin() + v.size() / 2, v.end());
  const double threshold = 3 * v[v.size() / 2];
  size_t n = 0;
  for (double x : channel_absmax) n += x > threshold;
  return static_cast<double>(n) / channel_absmax.size();
}

double histogramQuantMse(const std::vector<int64_t>& histogram, double absmax, int bits) {
  double total = 0, err = 0;
  const double qmax = std::ldexp(1.0, bits - 1) - 1;
  const double step = absmax > 0 && qmax > 0 ? absmax / qmax : 0;
  for (int k = 0; k < static_cast<int>(histogram.size()) && k < respin::kHistogramBins; ++k) {
    const double n = static_cast<double>(histogram[k]);
    if (n <= 0) continue;
    total += n;
    const double lo = respin::histogram_bin_lower(k);
    double hi = respin::histogram_bin_upper(k);
    if (std::isinf(hi)) hi = std::max(absmax, lo);
    hi = std::min(hi, std::max(absmax, lo));
    const double mid = 0.5 * (lo + hi);
    double q = 0;
    if (step > 0) q = std::min(std::nearbyint(mid / step), qmax) * step;
    err += n * (mid - q) * (mid - q);
  }
  return total > 0 ? err / total : kNaN;
}

}  // namespace outliers

using outliers::gridSites;

// ---------------------------------------------------------------------------------------------
OutliersView::OutliersView(QWidget* parent) : QWidget(parent) {
  auto* layout = new QVBoxLayout(this);
  layout->setContentsMargins(6, 6, 6, 6);

  // The run's label on a line of its own (wrapped): a long label must not widen the window
  // beyond 1280 pixels beside the run panel (tests/test_workbench.cpp checks the window's size).
  title_ = new QLabel("No run");
  title_->setStyleSheet("font-weight: bold");
  title_->setTextInteractionFlags(Qt::TextSelectableByMouse);
  title_->setWordWrap(true);
  title_->setSizePolicy(QSizePolicy::Ignored, QSizePolicy::Preferred);
  layout->addWidget(title_);
  auto* bar = new QHBoxLayout;
  bar->addWidget(new QLabel("Metric:"));
  metricBox_ = new QComboBox;
  metricBox_->addItem("Kurtosis", int(Metric::Kurtosis));
  metricBox_->addItem("Max / median channel", int(Metric::MaxMedianRatio));
  metricBox_->addItem("Outlier channels (%)", int(Metric::OutlierShare));
  metricBox_->addItem("b-bit quantization MSE", int(Metric::QuantMse));
  metricBox_->setToolTip(
      "Kurtosis: E[x⁴]/E[x²]² about zero (3 for a Gaussian).\n"
      "Max / median channel: largest channel absmax over the median channel absmax.\n"
      "Outlier channels: share of channels whose absmax exceeds 3× the median channel absmax.\n"
      "b-bit quantization MSE: expected error of per-tensor symmetric b-bit round-to-nearest,\n"
      "relative to E[x²], from the |x| histogram with every value at its bin's midpoint\n"
      "(an approximation).");
  bar->addWidget(metricBox_);
  bar->addWidget(new QLabel("bits:"));
  bitsBox_ = new QSpinBox;
  bitsBox_->setRange(2, 8);
  bitsBox_->setValue(bits_);
  bitsBox_->setToolTip("Bit width b of the quantization MSE metric");
  bitsBox_->setEnabled(false);
  bar->addWidget(bitsBox_);
  bar->addWidget(new QLabel("Show:"));
  modeBox_ = new QComboBox;
  modeBox_->addItem("Before rotation", int(Mode::Before));
  modeBox_->addItem("After rotation", int(Mode::After));
  modeBox_->addItem("Change", int(Mode::Change));
  modeBox_->setCurrentIndex(1);
  bar->addWidget(modeBox_);
  sortBox_ = new QCheckBox("Sort channels");
  sortBox_->setToolTip("Sort the per-channel maxima from largest to smallest");
  bar->addWidget(sortBox_);
  bar->addStretch(1);
  layout->addLayout(bar);

  message_ = new QLabel;
  message_->setWordWrap(true);
  message_->setStyleSheet("color: #b00020");
  message_->hide();
  layout->addWidget(message_);

  // The grid.
  grid_ = new ExportablePlot("outlier-grid");
  grid_->setMinimumWidth(300);
  gridTitle_ = addTitle(grid_, "Layer × site");
  map_ = new QCPColorMap(grid_->xAxis, grid_->yAxis);
  map_->setName("grid");
  map_->setInterpolate(false);
  map_->setTightBoundary(false);
  scale_ = new QCPColorScale(grid_);
  scale_->setType(QCPAxis::atRight);
  scale_->setBarWidth(12);
  grid_->plotLayout()->addElement(1, 1, scale_);
  map_->setColorScale(scale_);
  auto* group = new QCPMarginGroup(grid_);
  grid_->axisRect()->setMarginGroup(QCP::msBottom | QCP::msTop, group);
  scale_->setMarginGroup(QCP::msBottom | QCP::msTop, group);
  {
    QSharedPointer<QCPAxisTickerText> t(new QCPAxisTickerText);
    for (size_t i = 0; i < gridSites().size(); ++i) t->addTick(double(i), outliers::siteShortName(gridSites()[i]));
    grid_->xAxis->setTicker(t);
    grid_->xAxis->setTickLabelRotation(-40);
    grid_->xAxis->setSubTicks(false);
    grid_->xAxis->setTickLength(0, 3);
    grid_->xAxis->setRange(-0.5, gridSites().size() - 0.5);
    grid_->xAxis->grid()->setVisible(false);
    grid_->yAxis->grid()->setVisible(false);
    grid_->yAxis->setRangeReversed(true);
    grid_->yAxis->setLabel("layer");
    grid_->xAxis->setLabel("site");
  }
  selRect_ = new QCPItemRect(grid_);
  selRect_->setPen(QPen(Qt::black, 2));
  selRect_->setBrush(Qt::NoBrush);
  selRect_->setVisible(false);
  grid_->setCsvSource([this] { return gridCsv(); });

  // Histogram overlay.
  hist_ = new ExportablePlot("histogram");
  histTitle_ = addTitle(hist_, "|x| histogram");
  for (int s = 0; s < 2; ++s) {
    QCPGraph* g = hist_->addGraph();
    const QColor c = s == 0 ? kBeforeColor : kAfterColor;
    g->setName(s == 0 ? "before rotation" : "after rotation");
    g->setPen(QPen(c, 1.6));
    g->setBrush(withAlpha(c, 50));
    g->setLineStyle(QCPGraph::lsStepLeft);
  }
  setLogAxis(hist_->xAxis, true);
  hist_->xAxis->setNumberFormat("eb");
  hist_->xAxis->setNumberPrecision(0);
  setLogAxis(hist_->yAxis, true);
  hist_->yAxis->setNumberFormat("eb");
  hist_->yAxis->setNumberPrecision(0);
  hist_->xAxis->setLabel("|x|  (fixed half-octave bins)");
  hist_->yAxis->setLabel("count (log)");
  hist_->legend->setVisible(true);
  hist_->axisRect()->insetLayout()->setInsetAlignment(0, Qt::AlignTop | Qt::AlignLeft);
  hist_->setCsvSource([this] { return histogramCsv(); });

  // Channel maxima.
  channels_ = new ExportablePlot("channel-absmax");
  channelsTitle_ = addTitle(channels_, "Per-channel absmax");
  for (int s : {1, 0}) {  // after behind, before in front: its outlier channels stand out
    auto* b = new QCPBars(channels_->xAxis, channels_->yAxis);
    const QColor c = s == 0 ? kBeforeColor : kAfterColor;
    b->setName(s == 0 ? "before rotation" : "after rotation");
    b->setPen(QPen(withAlpha(c, s == 0 ? 200 : 160), 0));
    b->setBrush(withAlpha(c, s == 0 ? 200 : 160));
    b->setAntialiased(false);
    b->setAntialiasedFill(false);
    b->setWidth(1.0);
    channelBars_[s] = b;
  }
  channels_->legend->clearItems();  // legend in the usual order: before, then after
  channelBars_[0]->addToLegend();
  channelBars_[1]->addToLegend();
  channels_->xAxis->setLabel("channel");
  channels_->yAxis->setLabel("absmax |x|");
  channels_->legend->setVisible(true);
  channels_->axisRect()->insetLayout()->setInsetAlignment(0, Qt::AlignTop | Qt::AlignRight);
  channels_->setCsvSource([this] { return channelsCsv(); });

  // Across layers.
  layersPlot_ = new ExportablePlot("metric-per-layer");
  layersTitle_ = addTitle(layersPlot_, "Per layer");
  for (int s = 0; s < 2; ++s) {
    QCPGraph* g = layersPlot_->addGraph();
    const QColor c = s == 0 ? kBeforeColor : kAfterColor;
    g->setName(s == 0 ? "before rotation" : "after rotation");
    g->setPen(QPen(c, 1.6));
    g->setScatterStyle(QCPScatterStyle(QCPScatterStyle::ssCircle, c, c, 3.5));
  }
  layersPlot_->xAxis->setLabel("layer");
  layersPlot_->legend->setVisible(true);
  layersPlot_->axisRect()->insetLayout()->setInsetAlignment(0, Qt::AlignVCenter | Qt::AlignRight);
  layerMarker_ = new QCPItemStraightLine(layersPlot_);
  layerMarker_->setPen(QPen(QColor(80, 80, 80), 1, Qt::DashLine));
  layerMarker_->setVisible(false);
  layersPlot_->setCsvSource([this] { return layersCsv(); });

  numbers_ = new QLabel;
  numbers_->setTextFormat(Qt::RichText);
  numbers_->setWordWrap(true);
  numbers_->setAlignment(Qt::AlignTop | Qt::AlignLeft);
  numbers_->setTextInteractionFlags(Qt::TextSelectableByMouse);
  numbers_->setMargin(4);
  auto* numbersScroll = new QScrollArea;
  numbersScroll->setWidget(numbers_);
  numbersScroll->setWidgetResizable(true);
  numbersScroll->setFrameShape(QFrame::NoFrame);
  numbersScroll->setMinimumHeight(QFontMetrics(font()).height() * 13);

  // Explicit minimum widths (below the plots' own hints, which count every tick label): the view
  // fits beside the run panel in a 1280-pixel window (tests/test_workbench.cpp).
  hist_->setMinimumWidth(220);
  channels_->setMinimumWidth(220);
  auto* topRight = new QSplitter(Qt::Horizontal);
  topRight->addWidget(hist_);
  topRight->addWidget(channels_);
  auto* right = new QSplitter(Qt::Vertical);
  right->addWidget(topRight);
  right->addWidget(layersPlot_);
  right->addWidget(numbersScroll);
  right->setStretchFactor(0, 6);
  right->setStretchFactor(1, 4);
  right->setStretchFactor(2, 3);
  auto* split = new QSplitter(Qt::Horizontal);
  split->addWidget(grid_);
  split->addWidget(right);
  split->setStretchFactor(0, 2);
  split->setStretchFactor(1, 5);
  layout->addWidget(split, 1);

  hover_ = new QLabel(kHint);
  hover_->setForegroundRole(QPalette::PlaceholderText);  // follows the light/dark palette
  layout->addWidget(hover_);

  for (ExportablePlot* p : {grid_, hist_, channels_, layersPlot_}) {
    p->setMouseTracking(true);
    connect(p, &ExportablePlot::exportFinished, this, [this](bool ok, const QString& m) {
      if (ok) hover_->setText(m);
      else showMessage(m);
    });
  }
  connect(grid_, &QCustomPlot::mouseMove, this, &OutliersView::hoverGrid);
  connect(hist_, &QCustomPlot::mouseMove, this, &OutliersView::hoverHistogram);
  connect(channels_, &QCustomPlot::mouseMove, this, &OutliersView::hoverChannels);
  connect(layersPlot_, &QCustomPlot::mouseMove, this, &OutliersView::hoverLayers);
  connect(grid_, &QCustomPlot::mousePress, this, [this](QMouseEvent* e) {
    if (e->button() != Qt::LeftButton || cells_.empty()) return;
    if (!grid_->axisRect()->rect().contains(e->position().toPoint())) return;
    const int col = int(std::lround(grid_->xAxis->pixelToCoord(e->position().toPoint().x())));
    const int layer = int(std::lround(grid_->yAxis->pixelToCoord(e->position().toPoint().y())));
    if (col >= 0 && col < int(gridSites().size()) && layer >= 0 && layer < layers_) selectCell(layer, gridSites()[col]);
  });
  connect(layersPlot_, &QCustomPlot::mousePress, this, [this](QMouseEvent* e) {
    if (e->button() != Qt::LeftButton || cells_.empty() || selLayer_ < 0) return;
    if (!layersPlot_->axisRect()->rect().contains(e->position().toPoint())) return;
    const int layer = int(std::lround(layersPlot_->xAxis->pixelToCoord(e->position().toPoint().x())));
    if (layer >= 0 && layer < layers_) selectCell(layer, selSite_);
  });
  connect(metricBox_, &QComboBox::currentIndexChanged, this,
          [this](int i) { setMetric(Metric(metricBox_->itemData(i).toInt())); });
  connect(modeBox_, &QComboBox::currentIndexChanged, this, [this](int i) { setMode(Mode(modeBox_->itemData(i).toInt())); });
  connect(bitsBox_, &QSpinBox::valueChanged, this, [this](int b) { setBits(b); });
  connect(sortBox_, &QCheckBox::toggled, this, [this](bool s) { setSortedChannels(s); });

  clearRun(QString());
}

OutliersView::~OutliersView() = default;

void OutliersView::setStorePath(const QString& db) {
  if (db == db_) return;
  db_ = db;
  clearRun(QString());
}

void OutliersView::showMessage(const QString& text) {
  message_->setText(text);
  message_->setVisible(!text.isEmpty());
}

QString OutliersView::messageText() const { return message_->isHidden() ? QString() : message_->text(); }
QString OutliersView::hoverText() const { return hover_->text(); }

void OutliersView::clearRun(const QString& message) {
  runId_ = -1;
  layers_ = 0;
  cells_.clear();
  sel_ = Selected{};
  selLayer_ = -1;
  title_->setText("No run");
  showMessage(message);
  rebuildGrid();
  drawSelected();
}

bool OutliersView::showRun(qint64 runId) {
  QElapsedTimer timer;
  timer.start();
  if (db_.isEmpty()) {
    clearRun("No run store: set the store path first.");
    return false;
  }
  if (busy_) {
    showMessage(db_ + ": busy with another store read; try again");
    return false;
  }
  struct Read {
    std::optional<respin::RunDetail> detail;
    std::vector<respin::SiteSummary> before, after;
  };
  showMessage(QString("Loading run %1…").arg(runId));
  busy_ = true;
  QString error;
  std::optional<Read> got = StoreService::shared().wait<Read>(
      db_, StoreService::Access::Read,
      [runId](respin::RunStore& s) {
        Read r;
        r.detail = s.get_run(runId);
        if (r.detail) {
          r.before = s.layer_stats_summary(runId, StatsStage::Before);
          r.after = s.layer_stats_summary(runId, StatsStage::After);
        }
        return r;
      },
      &error, this, [this](const QString& line) { showMessage(line); });
  busy_ = false;
  if (!got) {
    clearRun(error);
    return false;
  }
  try {
    const std::optional<respin::RunDetail>& d = got->detail;
    if (!d) {
      clearRun(QString("%1: no run %2").arg(db_).arg(runId));
      return false;
    }
    const std::vector<respin::SiteSummary>& before = got->before;
    const std::vector<respin::SiteSummary>& after = got->after;
    const QString label = QString::fromStdString(d->config.label());
    int maxLayer = -1;
    for (const auto* v : {&before, &after})
      for (const respin::SiteSummary& s : *v)
        if (std::find(gridSites().begin(), gridSites().end(), s.site) != gridSites().end()) maxLayer = std::max(maxLayer, s.layer);
    if (maxLayer < 0) {
      clearRun(QString("Run %1 (%2) has no activation statistics: they are recorded while a calibration runs "
                       "(statistics windows > 0); this run has none in the store.")
                   .arg(runId)
                   .arg(label));
      return false;
    }
    runId_ = runId;
    runLabel_ = QString("Run %1 · %2 · %3").arg(runId).arg(label).arg(QString::fromStdString(d->model.folder).section('/', -1));
    layers_ = maxLayer + 1;
    cells_.assign(size_t(layers_) * gridSites().size(), Cell{});
    for (int st = 0; st < 2; ++st)
      for (const respin::SiteSummary& s : st == 0 ? before : after) {
        auto it = std::find(gridSites().begin(), gridSites().end(), s.site);
        if (it == gridSites().end() || s.layer < 0) continue;
        Cell& c = cells_[size_t(s.layer) * gridSites().size() + (it - gridSites().begin())];
        c.present[st] = true;
        c.sum[st] = s;
      }
    detailFailed_ = false;
    title_->setText(runLabel_);
    showMessage(QString());
    if (metricNeedsDetail()) ensureDetails();
    rebuildGrid();
    // Start on the cell with the largest value before rotation (for kurtosis: the worst outliers).
    int bestLayer = 0;
    HookSite bestSite = gridSites().front();
    double best = -1;
    for (int l = 0; l < layers_; ++l)
      for (HookSite s : gridSites()) {
        const double v = metricValue(l, s, StatsStage::Before);
        if (std::isfinite(v) && v > best) best = v, bestLayer = l, bestSite = s;
      }
    selectCell(bestLayer, bestSite);
  } catch (const std::exception& e) {
    clearRun(QString::fromStdString(e.what()));
    return false;
  }
  openSeconds_ = timer.nsecsElapsed() / 1e9;
  return true;
}

const OutliersView::Cell* OutliersView::cell(int layer, HookSite site) const {
  auto it = std::find(gridSites().begin(), gridSites().end(), site);
  if (layer < 0 || layer >= layers_ || it == gridSites().end()) return nullptr;
  return &cells_[size_t(layer) * gridSites().size() + (it - gridSites().begin())];
}

bool OutliersView::ensureDetails() {
  if (cells_.empty() || detailFailed_) return false;
  bool missing = false;
  for (const Cell& c : cells_)
    for (int st = 0; st < 2; ++st) missing |= c.present[st] && !c.detail[st];
  if (!missing) return true;
  QElapsedTimer timer;
  timer.start();
  if (busy_) return false;
  // On the store thread: the histogram and outlier share of every cell still missing them.
  struct Want {
    size_t index;
    int layer, stage;
    HookSite site;
  };
  struct Got {
    size_t index;
    int stage;
    std::vector<int64_t> hist;
    double share;
  };
  std::vector<Want> want;
  for (int l = 0; l < layers_; ++l)
    for (size_t col = 0; col < gridSites().size(); ++col) {
      const size_t index = size_t(l) * gridSites().size() + col;
      for (int st = 0; st < 2; ++st)
        if (cells_[index].present[st] && !cells_[index].detail[st]) want.push_back({index, l, st, gridSites()[col]});
    }
  const qint64 runId = runId_;
  busy_ = true;
  QString error;
  std::optional<std::vector<Got>> got = StoreService::shared().wait<std::vector<Got>>(
      db_, StoreService::Access::QuickRead,
      [want, runId](respin::RunStore& store) {
        std::vector<Got> out;
        for (const Want& w : want) {
          std::optional<respin::SiteStats> s = store.site_stats(runId, w.stage == 0 ? StatsStage::Before : StatsStage::After, w.layer, w.site);
          if (!s) continue;
          out.push_back({w.index, w.stage, std::move(s->histogram), outliers::outlierChannelShare(s->channel_absmax)});
        }
        return out;
      },
      &error, this, [this](const QString& line) { showMessage(line); });
  busy_ = false;
  if (!got) {
    detailFailed_ = true;
    showMessage("Could not load the cells' histograms and channel maxima: " + error);
    return false;
  }
  if (messageText() == StoreService::lockedText(db_)) showMessage(QString());
  if (runId != runId_) return false;  // another run was opened meanwhile
  for (Got& g : *got) {
    Cell& c = cells_[g.index];
    c.hist[g.stage] = std::move(g.hist);
    c.share[g.stage] = g.share;
    c.detail[g.stage] = true;
  }
  detailSeconds_ = timer.nsecsElapsed() / 1e9;
  return true;
}

double OutliersView::metricOf(const Cell& c, int st) const {
  if (!c.present[st]) return kNaN;
  const respin::SiteSummary& s = c.sum[st];
  switch (metric_) {
    case Metric::Kurtosis: return s.count > 0 && s.kurtosis > 0 ? s.kurtosis : kNaN;
    case Metric::MaxMedianRatio: return s.max_median_ratio > 0 ? s.max_median_ratio : kNaN;
    case Metric::OutlierShare: return c.detail[st] ? 100.0 * c.share[st] : kNaN;
    case Metric::QuantMse: {
      if (!c.detail[st] || !(s.mean_square > 0)) return kNaN;
      return outliers::histogramQuantMse(c.hist[st], s.absmax, bits_) / s.mean_square;
    }
  }
  return kNaN;
}

double OutliersView::changeOf(const Cell& c) const {
  const double b = metricOf(c, 0), a = metricOf(c, 1);
  if (metric_ == Metric::OutlierShare) return a - b;
  return b > 0 ? a / b : kNaN;
}

double OutliersView::metricValue(int layer, HookSite site, StatsStage stage) const {
  const Cell* c = cell(layer, site);
  return c ? metricOf(*c, stageIndex(stage)) : kNaN;
}

double OutliersView::cellValue(int layer, HookSite site) const {
  const Cell* c = cell(layer, site);
  if (!c) return kNaN;
  switch (mode_) {
    case Mode::Before: return metricOf(*c, 0);
    case Mode::After: return metricOf(*c, 1);
    case Mode::Change: return changeOf(*c);
  }
  return kNaN;
}

QColor OutliersView::cellColor(int layer, HookSite site) const {
  QCPColorGradient g = scale_->gradient();
  if (std::isnan(cellValue(layer, site))) return g.nanColor();
  const QRgb rgb = g.color(cellValue(layer, site), scale_->dataRange(), scale_->dataScaleType() == QCPAxis::stLogarithmic);
  return QColor::fromRgba(rgb);
}

QString OutliersView::metricName() const {
  switch (metric_) {
    case Metric::Kurtosis: return "kurtosis";
    case Metric::MaxMedianRatio: return "max / median channel absmax";
    case Metric::OutlierShare: return "outlier channels (%)";
    case Metric::QuantMse: return QString("%1-bit RTN MSE / E[x²]").arg(bits_);
  }
  return {};
}

QString OutliersView::formatMetric(double v) const {
  if (std::isnan(v)) return QStringLiteral("—");
  if (metric_ == Metric::OutlierShare) return QString::number(v, 'f', 2) + "%";
  return fmt(v);
}

QString OutliersView::cellToolTip(int layer, HookSite site) const {
  const Cell* c = cell(layer, site);
  if (!c) return {};
  QString t = QString("Layer %1 · %2\n").arg(layer).arg(outliers::siteLongName(site));
  if (!c->present[0] && !c->present[1]) return t + "no statistics recorded";
  const double b = metricOf(*c, 0), a = metricOf(*c, 1), ch = changeOf(*c);
  t += metricName() + ": before " + formatMetric(b) + ", after " + formatMetric(a);
  if (!std::isnan(ch))
    t += metric_ == Metric::OutlierShare ? QString(" (%1%2 points)").arg(ch >= 0 ? "+" : "").arg(ch, 0, 'f', 2)
                                         : QString(" (×%1)").arg(fmt(ch, 3));
  t += "\nabsmax: before " + (c->present[0] ? fmt(c->sum[0].absmax) : "—") + ", after " +
       (c->present[1] ? fmt(c->sum[1].absmax) : "—");
  return t;
}

void OutliersView::setMetric(Metric m) {
  const int idx = metricBox_->findData(int(m));
  if (metricBox_->currentIndex() != idx) {
    metricBox_->setCurrentIndex(idx);  // comes back here through the signal
    return;
  }
  metric_ = m;
  bitsBox_->setEnabled(m == Metric::QuantMse);
  if (metricNeedsDetail()) ensureDetails();
  rebuildGrid();
  drawLayers();
  fillNumbers();
}

void OutliersView::setMode(Mode m) {
  const int idx = modeBox_->findData(int(m));
  if (modeBox_->currentIndex() != idx) {
    modeBox_->setCurrentIndex(idx);
    return;
  }
  mode_ = m;
  rebuildGrid();
}

void OutliersView::setBits(int bits) {
  bits = std::clamp(bits, 2, 8);
  if (bitsBox_->value() != bits) {
    bitsBox_->setValue(bits);
    return;
  }
  bits_ = bits;
  if (metric_ == Metric::QuantMse) {
    rebuildGrid();
    drawLayers();
  }
  fillNumbers();
}

void OutliersView::setSortedChannels(bool sorted) {
  if (sortBox_->isChecked() != sorted) {
    sortBox_->setChecked(sorted);
    return;
  }
  drawChannels();
}

bool OutliersView::sortedChannels() const { return sortBox_->isChecked(); }

void OutliersView::rebuildGrid() {
  const int cols = int(gridSites().size());
  const int rows = std::max(layers_, 1);
  auto* data = new QCPColorMapData(cols, rows, QCPRange(0, cols - 1), QCPRange(0, rows - 1));
  data->fill(kNaN);
  const bool log = mode_ == Mode::Change ? metric_ != Metric::OutlierShare : metricIsLog();
  double lo = std::numeric_limits<double>::infinity(), hi = -lo;
  for (int l = 0; l < layers_; ++l)
    for (int col = 0; col < cols; ++col) {
      const double v = cellValue(l, gridSites()[col]);
      data->setCell(col, l, v);
      if (mode_ == Mode::Change) continue;
      // Before and after share one colour range so that switching between them compares.
      for (StatsStage st : {StatsStage::Before, StatsStage::After}) {
        const double x = metricValue(l, gridSites()[col], st);
        if (!std::isfinite(x) || (log && x <= 0)) continue;
        lo = std::min(lo, x);
        hi = std::max(hi, x);
      }
    }
  map_->setData(data, false);

  QCPRange range;
  if (mode_ == Mode::Change) {
    double m = 0;  // largest deviation from "unchanged" (log10 of the ratio, or points)
    for (int l = 0; l < layers_; ++l)
      for (int col = 0; col < cols; ++col) {
        const double v = cellValue(l, gridSites()[col]);
        if (!std::isfinite(v) || (log && v <= 0)) continue;
        m = std::max(m, log ? std::abs(std::log10(v)) : std::abs(v));
      }
    if (log) {
      m = std::max(m, std::log10(2.0));
      range = QCPRange(std::pow(10.0, -m), std::pow(10.0, m));
    } else {
      range = QCPRange(-std::max(m, 1.0), std::max(m, 1.0));
    }
    scale_->setGradient(divergingGradient());
  } else {
    if (!(lo <= hi)) lo = log ? 1 : 0, hi = log ? 10 : 1;
    if (log && hi / lo < 1.5) lo /= 1.25, hi *= 1.25;
    if (!log) {
      lo = std::min(lo, 0.0);
      if (hi - lo < 1e-9) hi = lo + 1;
    }
    range = QCPRange(lo, hi);
    scale_->setGradient(sequentialGradient());
  }
  scale_->setDataScaleType(log ? QCPAxis::stLogarithmic : QCPAxis::stLinear);
  setLogAxis(scale_->axis(), log);
  scale_->setDataRange(range);

  QString label = metricName();
  if (mode_ == Mode::Change)
    label = metric_ == Metric::OutlierShare ? "after − before (% points; blue: fewer)"
                                            : metricName() + ": after / before (blue: lower)";
  scale_->axis()->setLabel(label);
  const QString modeText = mode_ == Mode::Before ? "before rotation" : mode_ == Mode::After ? "after rotation" : "change";
  gridTitle_->setText(layers_ ? QString("%1 · %2").arg(metricName(), modeText) : QString("Layer × site (no run)"));

  grid_->yAxis->setRange(-0.5, rows - 0.5);
  {
    const double step = rows <= 16 ? 1 : rows <= 48 ? 4 : 10;
    QSharedPointer<QCPAxisTickerFixed> t(new QCPAxisTickerFixed);
    t->setTickStep(step);
    t->setScaleStrategy(QCPAxisTickerFixed::ssNone);
    grid_->yAxis->setTicker(t);
    grid_->yAxis->setSubTicks(false);
  }
  updateSelectionMarker();
  grid_->replot();
}

void OutliersView::updateSelectionMarker() {
  auto it = std::find(gridSites().begin(), gridSites().end(), selSite_);
  if (selLayer_ < 0 || it == gridSites().end() || selLayer_ >= layers_) {
    selRect_->setVisible(false);
    return;
  }
  const double col = double(it - gridSites().begin());
  selRect_->topLeft->setCoords(col - 0.5, selLayer_ - 0.5);
  selRect_->bottomRight->setCoords(col + 0.5, selLayer_ + 0.5);
  selRect_->setVisible(true);
}

void OutliersView::selectCell(int layer, HookSite site) {
  if (!cell(layer, site)) return;
  selLayer_ = layer;
  selSite_ = site;
  sel_ = Selected{};
  if (busy_) return;  // a click while a read waits: the click after it counts
  const qint64 runId = runId_;
  busy_ = true;
  QString error;
  std::optional<Selected> got = StoreService::shared().wait<Selected>(
      db_, StoreService::Access::QuickRead,
      [runId, layer, site](respin::RunStore& store) {
        Selected out;
        for (int st = 0; st < 2; ++st) {
          std::optional<respin::SiteStats> s = store.site_stats(runId, st == 0 ? StatsStage::Before : StatsStage::After, layer, site);
          if (s) {
            out.present[st] = true;
            out.stats[st] = std::move(*s);
          }
        }
        return out;
      },
      &error, this, [this](const QString& line) { showMessage(line); });
  busy_ = false;
  if (runId != runId_) return;  // another run was opened meanwhile
  if (got) {
    sel_ = std::move(*got);
    if (messageText() == StoreService::lockedText(db_)) showMessage(QString());
  } else {
    showMessage("Could not load layer " + QString::number(layer) + " " + outliers::siteShortName(site) + ": " + error);
  }
  updateSelectionMarker();
  grid_->replot();
  drawSelected();
  emit cellSelected(layer, site);
}

void OutliersView::drawSelected() {
  drawHistogram();
  drawChannels();
  drawLayers();
  fillNumbers();
}

std::vector<int64_t> OutliersView::shownHistogram(StatsStage stage) const {
  const int st = stageIndex(stage);
  return sel_.present[st] ? sel_.stats[st].histogram : std::vector<int64_t>{};
}

std::vector<double> OutliersView::shownChannelAbsmax(StatsStage stage) const {
  const int st = stageIndex(stage);
  return sel_.present[st] ? sel_.stats[st].channel_absmax : std::vector<double>{};
}

void OutliersView::drawHistogram() {
  int first = respin::kHistogramBins, last = -1;
  double top = 1;
  for (int st = 0; st < 2; ++st) {
    QCPGraph* g = hist_->graph(st);
    g->data()->clear();
    if (!sel_.present[st]) continue;
    const std::vector<int64_t>& h = sel_.stats[st].histogram;
    QVector<double> keys, values;
    for (int k = 0; k < respin::kHistogramBins && k < int(h.size()); ++k) {
      keys << shownLower(k);
      values << (h[k] > 0 ? double(h[k]) : 0.5);  // an empty bin drops below the axis (log scale)
      if (h[k] > 0) first = std::min(first, k), last = std::max(last, k), top = std::max(top, double(h[k]));
    }
    keys << shownUpper(respin::kHistogramBins - 1);
    values << values.back();
    g->setData(keys, values, true);
  }
  if (last >= 0) {
    hist_->xAxis->setRange(shownLower(std::max(first - 1, 0)), shownUpper(std::min(last + 1, respin::kHistogramBins - 1)));
    hist_->yAxis->setRange(0.8, top * 3);
    histTitle_->setText(QString("|x| histogram · layer %1 · %2").arg(selLayer_).arg(outliers::siteShortName(selSite_)));
  } else {
    hist_->xAxis->setRange(1e-3, 1e2);
    hist_->yAxis->setRange(0.8, 10);
    histTitle_->setText("|x| histogram (click a cell)");
  }
  hist_->replot();
}

void OutliersView::drawChannels() {
  const bool sorted = sortBox_->isChecked();
  double top = 0;
  int n = 0;
  for (int st = 0; st < 2; ++st) {
    QCPBars* bars = channelBars_[st];
    bars->data()->clear();
    if (!sel_.present[st]) continue;
    std::vector<double> v = sel_.stats[st].channel_absmax;
    if (sorted) std::sort(v.begin(), v.end(), std::greater<double>());
    QVector<double> keys(int(v.size())), values(int(v.size()));
    for (size_t i = 0; i < v.size(); ++i) {
      keys[int(i)] = double(i);
      values[int(i)] = std::isfinite(v[i]) ? v[i] : 0;
      top = std::max(top, values[int(i)]);
    }
    n = std::max(n, int(v.size()));
    bars->setData(keys, values, true);
  }
  channels_->xAxis->setLabel(sorted ? "channels, sorted by absmax" : "channel");
  channels_->xAxis->setRange(-0.5, std::max(n, 1) - 0.5);
  channels_->yAxis->setRange(0, top > 0 ? top * 1.08 : 1);
  channelsTitle_->setText(n ? QString("Per-channel absmax · %1 channels").arg(n) : QString("Per-channel absmax"));
  channels_->replot();
}

void OutliersView::drawLayers() {
  const bool log = metricIsLog();
  setLogAxis(layersPlot_->yAxis, log);
  double lo = std::numeric_limits<double>::infinity(), hi = -lo;
  for (int st = 0; st < 2; ++st) {
    QVector<double> keys, values;
    if (selLayer_ >= 0)
      for (int l = 0; l < layers_; ++l) {
        const double v = metricValue(l, selSite_, st == 0 ? StatsStage::Before : StatsStage::After);
        if (!std::isfinite(v) || (log && v <= 0)) continue;
        keys << l;
        values << v;
        lo = std::min(lo, v);
        hi = std::max(hi, v);
      }
    layersPlot_->graph(st)->setData(keys, values, true);
  }
  layersPlot_->yAxis->setLabel(metricName());
  if (lo <= hi) {
    if (log) layersPlot_->yAxis->setRange(lo / 1.5, hi * 1.5);
    else layersPlot_->yAxis->setRange(std::min(0.0, lo), hi > lo ? hi * 1.1 : lo + 1);
  } else {
    layersPlot_->yAxis->setRange(log ? 1 : 0, log ? 10 : 1);
  }
  layersPlot_->xAxis->setRange(-0.5, std::max(layers_, 1) - 0.5);
  if (selLayer_ >= 0) {
    layerMarker_->point1->setCoords(selLayer_, 1);
    layerMarker_->point2->setCoords(selLayer_, 2);
    layerMarker_->setVisible(true);
    layersTitle_->setText(QString("%1 per layer at %2 (dashed: layer %3)")
                              .arg(metricName().left(1).toUpper() + metricName().mid(1))
                              .arg(outliers::siteShortName(selSite_))
                              .arg(selLayer_));
  } else {
    layerMarker_->setVisible(false);
    layersTitle_->setText("Metric per layer");
  }
  layersPlot_->replot();
}

void OutliersView::changeEvent(QEvent* event) {
  QWidget::changeEvent(event);
  if (event->type() == QEvent::PaletteChange) fillNumbers();  // its HTML carries palette colours
}

void OutliersView::fillNumbers() {
  if (selLayer_ < 0 || (!sel_.present[0] && !sel_.present[1])) {
    numbers_->setText(runId_ < 0 ? "Open a run to see its statistics." : "Click a cell of the grid.");
    return;
  }
  struct Row {
    QString name;
    double v[2];
    bool percent;
    QString help;
  };
  double vals[6][2];
  for (int st = 0; st < 2; ++st) {
    const respin::SiteStats& s = sel_.stats[st];
    const bool p = sel_.present[st];
    vals[0][st] = p ? s.kurtosis() : kNaN;
    vals[1][st] = p ? s.max_median_ratio() : kNaN;
    vals[2][st] = p ? 100.0 * outliers::outlierChannelShare(s.channel_absmax) : kNaN;
    vals[3][st] = p && s.mean_square() > 0 ? outliers::histogramQuantMse(s.histogram, s.absmax(), bits_) / s.mean_square() : kNaN;
    vals[4][st] = p ? s.absmax() : kNaN;
    vals[5][st] = p ? s.mean_square() : kNaN;
  }
  const Row rows[] = {
      {"Kurtosis", {vals[0][0], vals[0][1]}, false,
       "E[x⁴]/E[x²]² about zero. 3 for a Gaussian; lower is easier to quantize, above ~10 means heavy tails."},
      {"Max / median channel", {vals[1][0], vals[1][1]}, false,
       "Largest channel absmax over the median one. Near 1–3 no channel dominates; ≫ 10 means outlier channels."},
      {"Outlier channels", {vals[2][0], vals[2][1]}, true,
       "Share of channels whose absmax exceeds 3× the median channel absmax. 0% is ideal."},
      {QString("%1-bit MSE / E[x²]").arg(bits_), {vals[3][0], vals[3][1]}, false,
       "Per-tensor symmetric round-to-nearest error over E[x²], values at their bin's midpoint (approximate). "
       "Lower is better; Gaussian data gives about 0.05 at 4 bits, 4× less per extra bit."},
      {"Absmax", {vals[4][0], vals[4][1]}, false,
       "Largest |x|: sets the per-tensor quantization step; smaller relative to the typical value is better."},
      {"Mean square E[x²]", {vals[5][0], vals[5][1]}, false,
       "Signal energy. An orthogonal rotation keeps it, so before ≈ after."},
  };
  QString html = QString("<b>Layer %1 · %2</b>").arg(selLayer_).arg(outliers::siteLongName(selSite_).toHtmlEscaped());
  const respin::SiteStats& any = sel_.present[1] ? sel_.stats[1] : sel_.stats[0];
  html += QString(" — %1 values, %2 channels").arg(QLocale().toString(qlonglong(any.count))).arg(any.channel_absmax.size());
  const int64_t nonfinite = (sel_.present[0] ? sel_.stats[0].nonfinite : 0) + (sel_.present[1] ? sel_.stats[1].nonfinite : 0);
  if (nonfinite) html += QString(", <span style='color:#b00020'>%1 NaN/Inf values</span>").arg(nonfinite);
  html += "<table cellspacing='0' cellpadding='3' style='margin-top:4px'>"
          "<tr><th align='left'>metric</th><th align='right'>before</th><th align='right'>after</th>"
          "<th align='right'>change</th><th align='left'>what it means</th></tr>";
  for (const Row& r : rows) {
    auto f = [&](double v) { return std::isnan(v) ? QString("—") : r.percent ? QString::number(v, 'f', 2) + "%" : fmt(v); };
    QString change = "—";
    if (std::isfinite(r.v[0]) && std::isfinite(r.v[1])) {
      if (r.percent) change = QString("%1%2 pt").arg(r.v[1] - r.v[0] >= 0 ? "+" : "").arg(r.v[1] - r.v[0], 0, 'f', 2);
      else if (r.v[0] > 0) change = "×" + fmt(r.v[1] / r.v[0], 3);
    }
    html += QString("<tr><td>%1</td><td align='right'>%2</td><td align='right'>%3</td><td align='right'>%4</td>"
                    "<td style='color:%6'>%5</td></tr>")
                .arg(r.name.toHtmlEscaped(), f(r.v[0]), f(r.v[1]), change, r.help.toHtmlEscaped(),
                     palette().color(QPalette::PlaceholderText).name());
  }
  html += "</table>";
  numbers_->setText(html);
}

QString OutliersView::numbersText() const {
  QTextDocument doc;
  doc.setHtml(numbers_->text());
  return doc.toPlainText();
}

// ---- Hover ----

void OutliersView::hoverGrid(QMouseEvent* e) {
  if (cells_.empty() || !grid_->axisRect()->rect().contains(e->position().toPoint())) return;
  const int col = int(std::lround(grid_->xAxis->pixelToCoord(e->position().toPoint().x())));
  const int layer = int(std::lround(grid_->yAxis->pixelToCoord(e->position().toPoint().y())));
  if (col < 0 || col >= int(gridSites().size()) || layer < 0 || layer >= layers_) return;
  const QString t = cellToolTip(layer, gridSites()[col]);
  hover_->setText(QString(t).replace('\n', " · "));
  QToolTip::showText(e->globalPosition().toPoint(), t, grid_);
}

void OutliersView::hoverHistogram(QMouseEvent* e) {
  if (!hist_->axisRect()->rect().contains(e->position().toPoint())) return;
  const double x = hist_->xAxis->pixelToCoord(e->position().toPoint().x());
  int bin = -1;
  for (int k = 0; k < respin::kHistogramBins; ++k)
    if (x >= shownLower(k) && x < shownUpper(k)) bin = k;
  if (bin < 0) return;
  QString t = "|x| in " + binText(bin) + ": ";
  for (int st = 0; st < 2; ++st) {
    t += st == 0 ? "before " : ", after ";
    t += sel_.present[st] ? QLocale().toString(qlonglong(sel_.stats[st].histogram[bin])) : QString("—");
  }
  hover_->setText(t);
  QToolTip::showText(e->globalPosition().toPoint(), t, hist_);
}

void OutliersView::hoverChannels(QMouseEvent* e) {
  if (!channels_->axisRect()->rect().contains(e->position().toPoint())) return;
  const long i = std::lround(channels_->xAxis->pixelToCoord(e->position().toPoint().x()));
  QString t = (sortBox_->isChecked() ? QString("rank %1: ") : QString("channel %1: ")).arg(i);
  bool any = false;
  for (int st = 0; st < 2; ++st) {
    QCPBars* bars = channelBars_[st];
    if (i < 0 || i >= bars->data()->size()) continue;
    t += QString("%1 %2 ").arg(st == 0 ? "before" : "after").arg(fmt((bars->data()->constBegin() + i)->value));
    any = true;
  }
  if (!any) return;
  hover_->setText(t);
  QToolTip::showText(e->globalPosition().toPoint(), t, channels_);
}

void OutliersView::hoverLayers(QMouseEvent* e) {
  if (selLayer_ < 0 || !layersPlot_->axisRect()->rect().contains(e->position().toPoint())) return;
  const int layer = int(std::lround(layersPlot_->xAxis->pixelToCoord(e->position().toPoint().x())));
  if (layer < 0 || layer >= layers_) return;
  const QString t = cellToolTip(layer, selSite_);
  hover_->setText(QString(t).replace('\n', " · "));
  QToolTip::showText(e->globalPosition().toPoint(), t, layersPlot_);
}

// ---- CSV ----

QString OutliersView::gridCsv() const {
  using plot_export::csvNumber;
  QString out = "layer,site,metric,before,after,change\n";
  const QString metric = plot_export::csvField(metricName());
  for (int l = 0; l < layers_; ++l)
    for (HookSite s : gridSites()) {
      const Cell* c = cell(l, s);
      out += QString::number(l) + ',' + respin::hook_site_name(s) + ',' + metric + ',' + csvNumber(metricOf(*c, 0)) + ',' +
             csvNumber(metricOf(*c, 1)) + ',' + csvNumber(changeOf(*c)) + '\n';
    }
  return out;
}

QString OutliersView::histogramCsv() const {
  using plot_export::csvNumber;
  QString out = "bin,lower,upper,before,after\n";
  if (selLayer_ < 0) return out;
  for (int k = 0; k < respin::kHistogramBins; ++k) {
    out += QString::number(k) + ',' + csvNumber(respin::histogram_bin_lower(k)) + ',' + csvNumber(respin::histogram_bin_upper(k));
    for (int st = 0; st < 2; ++st)
      out += ',' + (sel_.present[st] ? QString::number(sel_.stats[st].histogram[k]) : QString());
    out += '\n';
  }
  return out;
}

QString OutliersView::channelsCsv() const {
  using plot_export::csvNumber;
  const bool sorted = sortBox_->isChecked();
  QString out = sorted ? "rank,before,after\n" : "channel,before,after\n";
  std::vector<double> v[2];
  for (int st = 0; st < 2; ++st) {
    if (sel_.present[st]) v[st] = sel_.stats[st].channel_absmax;
    if (sorted) std::sort(v[st].begin(), v[st].end(), std::greater<double>());
  }
  const size_t n = std::max(v[0].size(), v[1].size());
  for (size_t i = 0; i < n; ++i)
    out += QString::number(i) + ',' + (i < v[0].size() ? csvNumber(v[0][i]) : QString()) + ',' +
           (i < v[1].size() ? csvNumber(v[1][i]) : QString()) + '\n';
  return out;
}

QString OutliersView::layersCsv() const {
  using plot_export::csvNumber;
  QString out = "layer,site,metric,before,after\n";
  if (selLayer_ < 0) return out;
  const QString metric = plot_export::csvField(metricName());
  for (int l = 0; l < layers_; ++l)
    out += QString::number(l) + ',' + respin::hook_site_name(selSite_) + ',' + metric + ',' +
           csvNumber(metricValue(l, selSite_, StatsStage::Before)) + ',' + csvNumber(metricValue(l, selSite_, StatsStage::After)) +
           '\n';
  return out;
}
