// The runs view: the store's runs in a sortable, filterable table (a sweep shows as a group of its
// runs), with tag / note / delete, and below it accuracy against cost for a sweep or a selection:
// perplexity against the applied skip rank (or W/A/KV bits, or the method), optionally with the
// online cost (MACs per token or extra parameters) on a second axis, the Pareto front drawn and
// its knee marked. Clicking a point selects its run in the table.
//
// Every store call goes through StoreService (its own thread; the GUI never waits on the store's
// lock): the functions below return once the call is done, the event loop running meanwhile. While
// the store is locked by another process the message line says "<db>: locked by another process;
// retrying"; a call still locked past the service's patience shows the RunStore error (Refresh
// tries again). Errors show in the view's message line.
#pragma once

#include <QList>
#include <QPointF>
#include <QString>
#include <QVector>
#include <QWidget>
#include <functional>
#include <optional>
#include <vector>

#include "core/store/run_store.h"
#include "ui/StoreService.h"

class ExportablePlot;
class QCPGraph;
class QComboBox;
class QLabel;
class QLineEdit;
class QPushButton;
class QSortFilterProxyModel;
class QStandardItem;
class QStandardItemModel;
class QTreeView;
class RunsFilterProxy;

namespace runs_plot {

// Indices of the Pareto-optimal points when both x (cost) and y (perplexity) are minimized: no
// other point is at most as large in both and smaller in one. In increasing x. Points with a
// non-finite coordinate are ignored; of identical points the first counts.
QVector<int> paretoFront(const QVector<QPointF>& points);
// The knee of a front (indices into `points`, in increasing x): the point farthest from the
// straight line through the front's two ends, both axes scaled to [0, 1] over the front; -1 when
// the front has fewer than three points or is a straight line.
int kneeOf(const QVector<QPointF>& points, const QVector<int>& front);

}  // namespace runs_plot

class RunsView : public QWidget {
  Q_OBJECT
 public:
  enum Column { ColId, ColModel, ColMethod, ColBits, ColRank, ColStatus, ColPpl, ColFpPpl, ColTime, ColCreated, ColTags, ColCount };
  // Memory: each finished run's measured peak against its plan's (run.json `memory`).
  enum class PlotX { Rank, WBits, ABits, KvBits, Method, Memory };
  enum class CostAxis { None, MacsPerToken, Parameters };
  struct PlotPoint {
    qint64 id = 0;
    double x = 0, y = 0;  // the plotted cost (rank, bits or method index) and perplexity
    double cost = 0;      // online MACs per token or extra parameters (second axis), NaN if none
    QString label;
    bool pareto = false;
  };

  explicit RunsView(QWidget* parent = nullptr);

  void setStorePath(const QString& db);
  const QString& storePath() const { return db_; }
  void refresh();
  QList<qint64> selectedRuns() const;  // ids of the selected runs (a selected sweep: its runs)
  void selectRun(qint64 id);           // selects and shows the run's row (expanding its sweep)

  // ---- Curating (also the toolbar's actions; true on success, else the reason is shown) ----
  bool addTag(const QList<qint64>& ids, const QString& tag);
  bool removeTag(const QList<qint64>& ids, const QString& tag);
  bool setNote(qint64 id, const QString& note);
  // Deletes the runs and their run (and temporary) directories, like `respin runs delete`; asks
  // first unless setConfirmDeletes(false) (tests).
  bool deleteRuns(const QList<qint64>& ids);
  void setConfirmDeletes(bool confirm) { confirmDeletes_ = confirm; }
  // The runs' data (summary, config, record, loss curve, per-layer statistics) for other tools,
  // like `respin runs export`: one JSON file, or three CSV files from `path` (BASE.csv,
  // BASE.loss.csv, BASE.layers.csv). The message line lists the files written.
  bool exportRunData(const QList<qint64>& ids, const QString& path, bool csv);

  // ---- Filtering (the toolbar's fields) ----
  void setFilterText(const QString& text);  // every word must occur in the row (tags too)
  void setStatusFilter(const QString& status);  // "" = any, else a status name
  void setMethodFilter(const QString& method);  // "" = any, else a method name

  // ---- The accuracy plot ----
  void setPlotX(PlotX x);
  PlotX plotX() const { return plotX_; }
  void setCostAxis(CostAxis c);
  CostAxis costAxis() const { return cost_; }
  void plotSweep(qint64 sweepId);
  void plotRuns(const QList<qint64>& ids);  // a fixed selection
  void plotShownRuns();                     // every run the table shows
  QVector<PlotPoint> plotPoints() const { return points_; }
  QList<qint64> paretoRuns() const;  // in increasing x
  qint64 kneeRun() const { return knee_ >= 0 ? points_[knee_].id : -1; }
  // Where point `i` of plotPoints() is drawn, in the plot widget's pixels (for clicks).
  QPointF pointPixel(int i) const;

  // ---- For tests ----
  QTreeView* table() const { return view_; }
  QSortFilterProxyModel* proxy() const;
  QList<qint64> shownRunsInOrder() const;  // run rows as the table shows them, groups expanded
  QString noteShown() const;               // the note line of the current run
  QString messageText() const;
  bool storeBusy() const { return busy_; }  // a store call is in flight
  ExportablePlot* plot() const { return plot_; }

 signals:
  void runActivated(qint64 id);
  void compareRequested(qint64 a, qint64 b);
  void exportModelRequested(qint64 id);
  void selectionChanged(QList<qint64> ids);

 private:
  void showMessage(const QString& text, bool error = true);
  void fillTable();
  void redrawPlot();
  void updateButtons();
  void onSelectionChanged();
  void onPointClicked(int index);
  void highlightSelected();
  void askTag(bool remove);
  void askNote();
  void askDelete();
  void showContextMenu(const QPoint& pos);
  QString plotCsv() const;
  qint64 currentRun() const;
  void fillSourceBox();

  // Runs job on the store thread and returns its result (nullopt: *error says why); shows the
  // locked line meanwhile. Refuses (nullopt, *error set) while another call of this view waits.
  template <class R>
  std::optional<R> callStore(StoreService::Access access, std::function<R(respin::RunStore&)> job, QString* error);
  void afterStoreCall();

  enum class Source { All, Sweep, Selection };
  QString db_;
  bool busy_ = false;
  bool refreshAgain_ = false, redrawAgain_ = false;
  std::vector<respin::Sweep> sweeps_;  // as of the last refresh
  qint64 noteFor_ = -1;
  bool confirmDeletes_ = true;
  bool clicking_ = false;
  PlotX plotX_ = PlotX::Rank;
  CostAxis cost_ = CostAxis::MacsPerToken;
  Source source_ = Source::All;
  qint64 sourceSweep_ = -1;
  QList<qint64> sourceIds_;
  bool sourceChosen_ = false;
  QVector<PlotPoint> points_;
  int knee_ = -1;

  QLineEdit* filter_;
  QComboBox* statusBox_;
  QComboBox* methodBox_;
  QPushButton* tagButton_;
  QPushButton* untagButton_;
  QPushButton* noteButton_;
  QPushButton* deleteButton_;
  QPushButton* compareButton_;
  QPushButton* exportButton_;
  QPushButton* exportDataButton_;
  void askExportData();
  bool changeTag(const QList<qint64>& ids, const QString& tag, bool remove);
  QLabel* message_;
  QLabel* note_;
  QTreeView* view_;
  QStandardItemModel* model_;
  RunsFilterProxy* proxy_;
  QComboBox* xBox_;
  QComboBox* costBox_;
  QComboBox* sourceBox_;
  QPushButton* plotSelectionButton_;
  ExportablePlot* plot_;
  QCPGraph* pointsGraph_ = nullptr;
  QCPGraph* frontGraph_ = nullptr;
  QCPGraph* kneeGraph_ = nullptr;
  QCPGraph* costGraph_ = nullptr;
  QCPGraph* selectedGraph_ = nullptr;
};
