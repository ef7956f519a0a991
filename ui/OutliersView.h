// The outliers view: per-layer activation statistics of one run, before and after rotation, read
// from the run store (read-only, through StoreService: off the GUI thread; while the store is
// locked by another process the message line says so and the read is retried, see RunsView.h).
//
// - A layer x site grid (rows: layers; columns: q/k/v input, o_proj input, gate/up input,
//   down_proj input, K, V, Q) coloured by a metric (kurtosis, max/median channel ratio, share of
//   outlier channels, b-bit quantization MSE) before, after, or the change, with a colour legend.
//   Kurtosis and the max/median ratio come from the store's per-cell scalars
//   (layer_stats_summary: the 80-layer grid opens in a few tens of milliseconds); the outlier share
//   and the MSE need each cell's channel maxima / histogram and are loaded (all cells, once per
//   run) only when one of them is chosen.
// - Clicking a cell shows the |x| histograms before and after overlaid (log count axis, the fixed
//   bins of core/stats), the per-channel absmax before and after as bars (optionally sorted), and
//   the numbers with a one-line explanation each. Hovering a cell or a bin shows its values.
// - Across layers: the chosen metric per layer at the selected cell's site, before and after.
// Every plot exports as PNG/SVG/PDF and CSV (right-click; ExportablePlot).
#pragma once

#include <QElapsedTimer>
#include <QString>
#include <QVector>
#include <QWidget>
#include <cstdint>
#include <memory>
#include <vector>

#include "core/model/hook_site.h"
#include "core/stats/site_stats.h"
#include "core/store/run_store.h"

class ExportablePlot;
class QCheckBox;
class QComboBox;
class QCPBars;
class QCPColorMap;
class QCPColorScale;
class QCPItemRect;
class QCPItemStraightLine;
class QCPTextElement;
class QLabel;
class QSpinBox;

namespace outliers {

// The grid's columns, in order, and their short and long names.
const std::vector<respin::HookSite>& gridSites();
QString siteShortName(respin::HookSite site);  // "down_proj in"
QString siteLongName(respin::HookSite site);   // "down_proj input (silu(gate)·up)"

// Share (0..1) of channels whose absmax exceeds 3x the median channel absmax (the median as
// SiteStats::max_median_ratio takes it: element n/2 of the sorted maxima). NaN when empty.
double outlierChannelShare(const std::vector<double>& channel_absmax);

// Expected squared error per value of per-tensor symmetric b-bit round-to-nearest quantization
// (step absmax / (2^(b-1) - 1)), from the |x| histogram with every value at its bin's midpoint
// (the last, open bin: midway between 256 and absmax; a bin cut by absmax: midway to absmax). An
// approximation: values are not spread inside a bin. NaN for an empty histogram.
double histogramQuantMse(const std::vector<int64_t>& histogram, double absmax, int bits);

}  // namespace outliers

class OutliersView : public QWidget {
  Q_OBJECT
 public:
  enum class Metric { Kurtosis, MaxMedianRatio, OutlierShare, QuantMse };
  enum class Mode { Before, After, Change };

  explicit OutliersView(QWidget* parent = nullptr);
  ~OutliersView() override;

  void setStorePath(const QString& db);
  const QString& storePath() const { return db_; }
  // Loads the run's statistics and draws the grid (selecting the cell with the largest value
  // before rotation). False, with the reason in the view, when the run is missing or has none.
  bool showRun(qint64 runId);
  void selectCell(int layer, respin::HookSite site);

  void setMetric(Metric m);
  Metric metric() const { return metric_; }
  void setMode(Mode m);
  Mode mode() const { return mode_; }
  void setBits(int bits);  // for the MSE metric, 2..8
  int bits() const { return bits_; }
  void setSortedChannels(bool sorted);
  bool sortedChannels() const;

  // ---- For tests and the main window ----
  qint64 runId() const { return runId_; }
  int layers() const { return layers_; }
  int selectedLayer() const { return selLayer_; }
  respin::HookSite selectedSite() const { return selSite_; }
  // The metric of one cell at one stage (NaN where the store has no such cell), and what the
  // grid shows under the current mode (the change: after / before, or after - before in
  // percentage points for the outlier share).
  double metricValue(int layer, respin::HookSite site, respin::StatsStage stage) const;
  double cellValue(int layer, respin::HookSite site) const;
  QColor cellColor(int layer, respin::HookSite site) const;  // the colour the grid draws
  QString cellToolTip(int layer, respin::HookSite site) const;
  QString metricName() const;  // of the current metric, as the legend says
  // The histogram counts drawn for the selected cell (the stored ones) and the channel maxima.
  std::vector<int64_t> shownHistogram(respin::StatsStage stage) const;
  std::vector<double> shownChannelAbsmax(respin::StatsStage stage) const;
  QString numbersText() const;  // the numbers panel as plain text
  QString messageText() const;  // empty when all is well
  bool storeBusy() const { return busy_; }  // a store read is in flight
  QString hoverText() const;    // the status line: what the mouse is over
  double lastOpenSeconds() const { return openSeconds_; }        // showRun, store open to drawn
  double lastDetailLoadSeconds() const { return detailSeconds_; }  // cells' histograms/channels
  ExportablePlot* gridPlot() const { return grid_; }
  ExportablePlot* histogramPlot() const { return hist_; }
  ExportablePlot* channelPlot() const { return channels_; }
  ExportablePlot* layersPlot() const { return layersPlot_; }

 signals:
  void cellSelected(int layer, respin::HookSite site);

 protected:
  void changeEvent(QEvent* event) override;

 private:
  struct Cell {
    bool present[2] = {false, false};
    respin::SiteSummary sum[2];
    bool detail[2] = {false, false};  // histogram and share loaded
    std::vector<int64_t> hist[2];
    double share[2] = {0, 0};
  };
  struct Selected {
    bool present[2] = {false, false};
    respin::SiteStats stats[2];
  };

  const Cell* cell(int layer, respin::HookSite site) const;
  double metricOf(const Cell& c, int stage) const;
  double changeOf(const Cell& c) const;
  bool metricNeedsDetail() const { return metric_ == Metric::OutlierShare || metric_ == Metric::QuantMse; }
  bool metricIsLog() const { return metric_ != Metric::OutlierShare; }
  bool ensureDetails();
  void clearRun(const QString& message);
  void showMessage(const QString& text);
  void rebuildGrid();
  void updateSelectionMarker();
  void drawSelected();
  void drawHistogram();
  void drawChannels();
  void drawLayers();
  void fillNumbers();
  QString gridCsv() const;
  QString histogramCsv() const;
  QString channelsCsv() const;
  QString layersCsv() const;
  void hoverGrid(QMouseEvent* e);
  void hoverHistogram(QMouseEvent* e);
  void hoverChannels(QMouseEvent* e);
  void hoverLayers(QMouseEvent* e);
  QString formatMetric(double v) const;

  QString db_;
  bool busy_ = false;
  qint64 runId_ = -1;
  QString runLabel_;
  int layers_ = 0;
  std::vector<Cell> cells_;  // layer * gridSites().size() + column
  Selected sel_;
  int selLayer_ = -1;
  respin::HookSite selSite_ = respin::HookSite::AttnInput;
  Metric metric_ = Metric::Kurtosis;
  Mode mode_ = Mode::After;
  int bits_ = 4;
  double openSeconds_ = 0, detailSeconds_ = 0;
  bool detailFailed_ = false;

  QLabel* title_;
  QComboBox* metricBox_;
  QSpinBox* bitsBox_;
  QComboBox* modeBox_;
  QCheckBox* sortBox_;
  QLabel* message_;
  QLabel* hover_;
  QLabel* numbers_;
  ExportablePlot* grid_;
  QCPColorMap* map_;
  QCPColorScale* scale_;
  QCPTextElement* gridTitle_;
  QCPItemRect* selRect_;
  ExportablePlot* hist_;
  QCPTextElement* histTitle_;
  ExportablePlot* channels_;
  QCPBars* channelBars_[2] = {nullptr, nullptr};  // before, after
  QCPTextElement* channelsTitle_;
  ExportablePlot* layersPlot_;
  QCPTextElement* layersTitle_;
  QCPItemStraightLine* layerMarker_;
};
