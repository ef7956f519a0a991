// The workbench's main window: docks for the model and the run settings, and views for the
// running calibration, outliers, runs and comparison; menus, recent models, drag and drop of a
// model folder, layout and geometry kept in QSettings, light and dark palettes. It assembles; the
// panels and views do the work, and core is reached only through its public, torch-free API.
#pragma once

#include <QMainWindow>
#include <QString>

#include <optional>

#include "core/calib/calibration.h"
#include "core/io/model_summary.h"

class CalibrationWorker;
class CompareView;
class ModelInfoPanel;
class OutliersView;
class ProgressView;
class QMenu;
class QTabWidget;
class RunPanel;
class RunsView;

class MainWindow : public QMainWindow {
  Q_OBJECT
 public:
  // `dbPath`: the run store (empty: the default <data home>/runs.db).
  explicit MainWindow(QWidget* parent = nullptr, const QString& dbPath = QString());
  ~MainWindow() override;

  // Reads the folder (summary, then core's load checks: core/io/model_check.h) on a thread of its
  // own and shows the result; the run panel's Start stays disabled until the checks pass. Returns
  // the open's serial number. A later open supersedes one still reading.
  int beginOpenModel(const QString& dir);
  // beginOpenModel, then runs the event loop until it is done (the window stays live); whether the
  // model can be calibrated (false: the model panel says why).
  bool openModel(const QString& dir);
  // Queues a calibration of the open model with the run panel's settings (as Start does).
  int startCalibration();
  void showView(const QString& name);
  // The text of the status bar (tests).
  QString statusText() const;  // "model", "run", "outliers", "runs", "compare"
  bool showRunOutliers(qint64 runId);
  bool compareRuns(qint64 a, qint64 b);
  void setDarkTheme(bool dark);
  // Exports a stored run's model (core/export) on a background thread while a progress dialog
  // keeps the window live; false with the one-line error in `message` on failure.
  bool exportRunModel(qint64 runId, const QString& outDir, const QString& format, const QString& dtype,
                      bool allowSidecar, QString* message = nullptr);

  ModelInfoPanel* modelPanel() const { return modelPanel_; }
  RunPanel* runPanel() const { return runPanel_; }
  ProgressView* progressView() const { return progress_; }
  OutliersView* outliersView() const { return outliers_; }
  RunsView* runsView() const { return runs_; }
  CompareView* compareView() const { return compare_; }
  CalibrationWorker* worker() const { return worker_; }
  const QString& dbPath() const { return db_; }
  // Where the next calibration's run directory goes (default <data home>/runs/<model>-<time>).
  void setRunsFolder(const QString& dir) { runsFolder_ = dir; }

 signals:
  void modelOpened(bool ok);

 protected:
  void closeEvent(QCloseEvent* e) override;
  void dragEnterEvent(QDragEnterEvent* e) override;
  void dropEvent(QDropEvent* e) override;

 private:
  void chooseModelFolder();
  void rememberRecent(const QString& dir);
  void rebuildRecentMenu();
  void about();
  void refreshQueue();
  void askExportRunModel(qint64 runId);
  struct OpenResult;
  void finishOpenModel(int serial, const OpenResult& r);

  QString db_;
  QString runsFolder_;
  ModelInfoPanel* modelPanel_;
  RunPanel* runPanel_;
  ProgressView* progress_;
  OutliersView* outliers_;
  RunsView* runs_;
  CompareView* compare_;
  QTabWidget* tabs_;
  QMenu* recent_;
  CalibrationWorker* worker_;
  std::optional<respin::ModelSummary> model_;
  qint64 currentRun_ = -1;
  int openSerial_ = 0;      // of the latest beginOpenModel
  int openFinished_ = 0;    // the latest serial whose reading ended
};
