// The diff of two runs: their configurations and results side by side (with a "differences only"
// toggle), and layer by layer, per site, the activation statistics of both runs (before or after
// rotation) and the change, sortable by the largest change. Reads the store read-only, through
// StoreService (off the GUI thread; while the store is locked by another process the message line
// says so and the read is retried, see RunsView.h).
#pragma once

#include <QList>
#include <QPair>
#include <QString>
#include <QStringList>
#include <QWidget>

#include "core/model/hook_site.h"
#include "core/stats/site_stats.h"

class QCheckBox;
class QComboBox;
class QLabel;
class QSortFilterProxyModel;
class QStandardItemModel;
class QTableView;
class QTableWidget;

class CompareView : public QWidget {
  Q_OBJECT
 public:
  // The per-site metrics of the layer table, in column order (each: A, B, change).
  enum class Metric { Kurtosis, MaxMedianRatio, Absmax, MeanSquare };
  static constexpr int kMetrics = 4;

  explicit CompareView(QWidget* parent = nullptr);

  void setStorePath(const QString& db);
  const QString& storePath() const { return db_; }
  // Loads both runs; false (with the reason shown) when either is missing or the store fails.
  bool compare(qint64 a, qint64 b);
  // The run to compare `id` with when none is named: the latest earlier finished run of the same
  // model (else the latest earlier run of it in any status); -1 with the reason in `why` (the
  // store cannot be read, no run `id`, or it is that model's first run).
  static qint64 previousRunOfSameModel(const QString& db, qint64 id, QString* why);
  qint64 runA() const { return a_; }
  qint64 runB() const { return b_; }

  void setDifferencesOnly(bool on);
  bool differencesOnly() const;
  void setStage(respin::StatsStage stage);
  respin::StatsStage stage() const { return stage_; }
  // Sorts the layer table by the largest change (|ln(B / A)|) of a metric, largest first.
  void sortByLargestChange(Metric m);
  // Writes the layer table as CSV (every row, in the order shown).
  bool exportLayerCsv(const QString& path, QString* error = nullptr) const;

  // ---- For tests ----
  QTableWidget* configTable() const { return config_; }
  QTableView* layerTable() const { return layers_; }
  QStringList visibleConfigKeys() const;  // the fields of the rows shown
  QString configValue(const QString& key, int run) const;  // run 0 = A, 1 = B
  QList<QPair<int, respin::HookSite>> layerRowsInOrder() const;
  double layerChange(int row, Metric m) const;  // the sort key shown in that row (|ln(B/A)|)
  QString messageText() const;
  bool storeBusy() const { return busy_; }  // a store read is in flight
  static int columnOf(Metric m, int which);  // which: 0 = A, 1 = B, 2 = change

 private:
  void showMessage(const QString& text);
  void fillLayers();
  void applyDifferencesOnly();

  QString db_;
  bool busy_ = false;
  qint64 a_ = -1, b_ = -1;
  respin::StatsStage stage_ = respin::StatsStage::After;

  QLabel* header_;
  QLabel* message_;
  QCheckBox* diffOnly_;
  QTableWidget* config_;
  QComboBox* stageBox_;
  QComboBox* sortBox_;
  QTableView* layers_;
  QStandardItemModel* model_;
  QSortFilterProxyModel* proxy_;
};
