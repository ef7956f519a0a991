// Main window (see MainWindow.h).
#include "ui/MainWindow.h"

#include <QAction>
#include <QApplication>
#include <QCloseEvent>
#include <QDateTime>
#include <QDir>
#include <QDockWidget>
#include <QDragEnterEvent>
#include <QDropEvent>
#include <QFileDialog>
#include <QFileInfo>
#include <QMenuBar>
#include <QMessageBox>
#include <QMimeData>
#include <QPalette>
#include <QScrollArea>
#include <QSettings>
#include <QStatusBar>
#include <QStyle>
#include <QStyleFactory>
#include <QTabWidget>
#include <QThread>

#include <QCheckBox>
#include <QComboBox>
#include <QDialog>
#include <QDialogButtonBox>
#include <QFormLayout>
#include <QHBoxLayout>
#include <QLineEdit>
#include <QProgressDialog>
#include <QPushButton>

#include <future>
#include <thread>

#include "core/data/corpus.h"
#include "core/export/export.h"
#include "core/io/model_check.h"
#include "core/io/model_summary.h"
#include "core/store/run_store.h"
#include "core/util/error.h"
#include "core/util/error_message.h"
#include "core/util/version.h"
#include "ui/CalibrationWorker.h"
#include "ui/CompareView.h"
#include "ui/ModelInfoPanel.h"
#include "ui/OutliersView.h"
#include "ui/ProgressView.h"
#include "ui/RunPanel.h"
#include "ui/RunsView.h"
#include "ui/StoreService.h"
#include "ui/SystemInfo.h"

namespace {

QString defaultDbPath() {
  const QString home = QString::fromStdString(respin::data_home());
  QDir().mkpath(home);
  return home + "/runs.db";
}

// A dock at least as wide as its content's size hint (plus a vertical scroll bar, for windows
// shorter than the content): a narrower dock would cut controls off (docs/testing.md, the run
// panel's geometry test).
QDockWidget* dock(const QString& title, const QString& name, QWidget* content, QMainWindow* w) {
  auto* d = new QDockWidget(title, w);
  d->setObjectName(name);
  auto* scroll = new QScrollArea;
  scroll->setWidget(content);
  scroll->setWidgetResizable(true);
  scroll->setFrameShape(QFrame::NoFrame);
  scroll->setHorizontalScrollBarPolicy(Qt::ScrollBarAlwaysOff);
  const int bar = scroll->style()->pixelMetric(QStyle::PM_ScrollBarExtent);
  scroll->setMinimumWidth(content->sizeHint().width() + bar + 2);
  d->setWidget(scroll);
  return d;
}

}  // namespace

MainWindow::MainWindow(QWidget* parent, const QString& dbPath)
    : QMainWindow(parent), db_(dbPath.isEmpty() ? defaultDbPath() : dbPath) {
  setWindowTitle("ReSpin Workbench");
  setAcceptDrops(true);
  modelPanel_ = new ModelInfoPanel;
  runPanel_ = new RunPanel;
  progress_ = new ProgressView;
  outliers_ = new OutliersView;
  runs_ = new RunsView;
  compare_ = new CompareView;
  for (auto* v : std::initializer_list<QWidget*>{progress_, outliers_, runs_, compare_}) v->setParent(this);
  outliers_->setStorePath(db_);
  runs_->setStorePath(db_);
  compare_->setStorePath(db_);

  tabs_ = new QTabWidget;
  tabs_->addTab(progress_, "Calibration");
  tabs_->addTab(outliers_, "Outliers");
  tabs_->addTab(runs_, "Runs");
  tabs_->addTab(compare_, "Compare");
  setCentralWidget(tabs_);
  QDockWidget* modelDock = dock("Model", "modelDock", modelPanel_, this);
  QDockWidget* runDock = dock("Run", "runDock", runPanel_, this);
  addDockWidget(Qt::LeftDockWidgetArea, modelDock);
  addDockWidget(Qt::LeftDockWidgetArea, runDock);
  tabifyDockWidget(modelDock, runDock);
  modelDock->raise();

  worker_ = new CalibrationWorker(db_, this);

  // ---- menus
  QMenu* file = menuBar()->addMenu("&File");
  file->addAction("&Open model folder…", QKeySequence::Open, this, &MainWindow::chooseModelFolder);
  recent_ = file->addMenu("Open &recent");
  rebuildRecentMenu();
  file->addSeparator();
  file->addAction("&Quit", QKeySequence::Quit, this, &QWidget::close);
  QMenu* run = menuBar()->addMenu("&Run");
  run->addAction("&Start calibration", QKeySequence(Qt::CTRL | Qt::Key_Return), this, [this] { startCalibration(); });
  run->addAction("&Cancel", QKeySequence(Qt::Key_Escape), this, [this] { worker_->cancel(); });
  QMenu* view = menuBar()->addMenu("&View");
  view->addAction(modelDock->toggleViewAction());
  view->addAction(runDock->toggleViewAction());
  view->addSeparator();
  const char* names[] = {"Calibration", "Outliers", "Runs", "Compare"};
  for (int i = 0; i < 4; ++i)
    view->addAction(names[i], QKeySequence(Qt::CTRL | (Qt::Key_1 + i)), this, [this, i] { tabs_->setCurrentIndex(i); });
  view->addSeparator();
  QAction* dark = view->addAction("&Dark theme");
  dark->setShortcut(QKeySequence(Qt::CTRL | Qt::SHIFT | Qt::Key_D));
  dark->setCheckable(true);
  connect(dark, &QAction::toggled, this, &MainWindow::setDarkTheme);
  QMenu* help = menuBar()->addMenu("&Help");
  help->addAction("&About ReSpin Workbench", this, &MainWindow::about);

  // ---- wiring
  connect(runPanel_, &RunPanel::startRequested, this, [this](const respin::CalibConfig&) { startCalibration(); });
  connect(progress_, &ProgressView::cancelRequested, worker_, &CalibrationWorker::cancel);
  connect(worker_, &CalibrationWorker::started, this, [this](int, qint64 id, QString dir) {
    currentRun_ = id;
    progress_->runStarted(QString::fromStdString(runPanel_->config().label()) + (id >= 0 ? QString(" (run %1)").arg(id) : ""),
                          dir);
    runs_->refresh();
  });
  connect(worker_, &CalibrationWorker::progress, this, [this](int, respin::CalibProgress p) {
    progress_->showProgress(p);
    statusBar()->showMessage(QString("%1 — %2%").arg(respin::phase_title(p.phase)).arg(int(100 * p.overall_fraction)));
  });
  connect(worker_, &CalibrationWorker::lossPoint, this, [this](int, qint64 s, double l) { progress_->addLoss(s, l); });
  connect(worker_, &CalibrationWorker::liveStats, this,
          [this](int, qint64 step, respin::SiteStats st) { progress_->showLive(step, st); });
  connect(progress_, &ProgressView::liveTargetChanged, worker_, &CalibrationWorker::setLiveTarget);
  worker_->setLiveTarget(progress_->chosenLayer(), progress_->chosenSite());
  connect(worker_, &CalibrationWorker::stats, this,
          [this](int, respin::StatsStage st, std::vector<respin::SiteStats> v) { progress_->showStats(st, v); });
  connect(worker_, &CalibrationWorker::ended, this,
          [this](int, qint64 id, QString status, QString msg, double ppl, QString storeError) {
    progress_->runEnded(status, msg, ppl, storeError);
    QString line = status == "failed" ? "Run failed: " + msg : "Run " + status;
    if (!storeError.isEmpty()) line += "; not recorded in the run store: " + storeError;
    statusBar()->showMessage(line);
    runs_->refresh();
    if (status == "finished" && id >= 0) outliers_->showRun(id);
  });
  connect(worker_, &CalibrationWorker::queueChanged, this, &MainWindow::refreshQueue);
  connect(runs_, &RunsView::runActivated, this, [this](qint64 id) {
    if (showRunOutliers(id)) tabs_->setCurrentWidget(outliers_);
  });
  connect(runs_, &RunsView::exportModelRequested, this, &MainWindow::askExportRunModel);
  connect(runs_, &RunsView::compareRequested, this, [this](qint64 a, qint64 b) {
    if (compareRuns(a, b)) tabs_->setCurrentWidget(compare_);
  });

  QSettings s;
  restoreGeometry(s.value("window/geometry").toByteArray());
  restoreState(s.value("window/state").toByteArray());
  if (s.value("window/dark", false).toBool()) dark->setChecked(true);
  if (!s.contains("window/geometry")) resize(1280, 820);
  statusBar()->showMessage("Open a Hugging Face model folder (File > Open, or drop it on the window)");
  refreshQueue();
}

MainWindow::~MainWindow() {
  // Folder readers still running (beginOpenModel) hold `this`: wait for them.
  for (QThread* t : findChildren<QThread*>(QString(), Qt::FindDirectChildrenOnly)) t->wait();
}

void MainWindow::closeEvent(QCloseEvent* e) {
  if (worker_->busy() &&
      QMessageBox::question(this, "Calibration running", "A calibration is running. Cancel it and quit?") !=
          QMessageBox::Yes) {
    e->ignore();
    return;
  }
  worker_->cancel();
  QSettings s;
  s.setValue("window/geometry", saveGeometry());
  s.setValue("window/state", saveState());
  e->accept();
}

void MainWindow::dragEnterEvent(QDragEnterEvent* e) {
  if (e->mimeData()->hasUrls() && e->mimeData()->urls().size() == 1 && QFileInfo(e->mimeData()->urls()[0].toLocalFile()).isDir())
    e->acceptProposedAction();
}

void MainWindow::dropEvent(QDropEvent* e) {
  beginOpenModel(e->mimeData()->urls()[0].toLocalFile());
}

struct MainWindow::OpenResult {
  QString dir;
  std::optional<respin::ModelSummary> summary;
  QString error;  // empty: the model can be calibrated
};

int MainWindow::beginOpenModel(const QString& dir) {
  const int serial = ++openSerial_;
  model_.reset();
  modelPanel_->showOpening(dir);
  runPanel_->clearModel("Reading " + dir + " and checking its weights…");
  statusBar()->showMessage("Opening " + dir + "…");
  // Off the GUI thread: tokenizer.json and the safetensors headers can be large, the disk slow.
  // The result comes back as a queued call; a window closed meanwhile waits for the thread
  // (~MainWindow), and Qt drops calls queued to a deleted object.
  QThread* reader = QThread::create([this, serial, dir] {
    OpenResult r;
    r.dir = dir;
    const std::string d = dir.toStdString();
    try {
      r.summary = respin::summarize_model(d);
      respin::check_model_loadable(d);
    } catch (const std::exception& e) {
      r.error = QString::fromStdString(respin::error_message(e));
    }
    QMetaObject::invokeMethod(this, [this, serial, r] { finishOpenModel(serial, r); }, Qt::QueuedConnection);
  });
  reader->setParent(this);
  connect(reader, &QThread::finished, reader, &QObject::deleteLater);
  reader->start();
  return serial;
}

void MainWindow::finishOpenModel(int serial, const OpenResult& r) {
  openFinished_ = std::max(openFinished_, serial);
  if (serial != openSerial_) return;  // superseded by a later open
  if (r.summary) modelPanel_->showSummary(*r.summary);
  const bool ok = r.summary && r.error.isEmpty();
  if (ok) {
    model_ = r.summary;
    runPanel_->setModel(*model_);
    rememberRecent(QString::fromStdString(model_->folder));
    setWindowTitle("ReSpin Workbench — " + QFileInfo(r.dir).fileName());
    statusBar()->showMessage("Opened " + r.dir + ": ready to calibrate");
  } else {
    model_.reset();
    modelPanel_->showError(r.error, r.summary.has_value());
    runPanel_->clearModel("This folder cannot be calibrated: " + r.error);
    statusBar()->showMessage((r.summary ? "Cannot calibrate this folder: " : "Could not open the folder: ") + r.error);
  }
  emit modelOpened(ok);
}

bool MainWindow::openModel(const QString& dir) {
  const int serial = beginOpenModel(dir);
  while (openFinished_ < serial) QApplication::processEvents(QEventLoop::AllEvents | QEventLoop::WaitForMoreEvents);
  return openSerial_ == serial && model_.has_value();
}

QString MainWindow::statusText() const { return statusBar()->currentMessage(); }

int MainWindow::startCalibration() {
  const QString problems = runPanel_->problems();
  if (!problems.isEmpty()) {
    statusBar()->showMessage("Cannot start: " + problems.section('\n', 0, 0));
    return -1;
  }
  respin::CalibConfig c = runPanel_->config();
  QString folder = runsFolder_;
  if (folder.isEmpty()) folder = QString::fromStdString(respin::data_home()) + "/runs";
  QDir().mkpath(folder);
  const QString name = QFileInfo(QString::fromStdString(c.model)).fileName() + "-" +
                       QString::fromStdString(respin::method_name(c.method)) + "-" +
                       QDateTime::currentDateTime().toString("yyyyMMdd-HHmmss-zzz");
  const int ticket = worker_->enqueue(c, folder + "/" + name);
  tabs_->setCurrentWidget(progress_);
  return ticket;
}

void MainWindow::refreshQueue() {
  QStringList waiting;
  for (const QueuedRun& r : worker_->queued()) waiting << QString::fromStdString(r.config.label()) + "  →  " + r.outDir;
  progress_->setQueue(waiting);
}

void MainWindow::showView(const QString& name) {
  if (name == "model" || name == "run") {
    for (QDockWidget* d : findChildren<QDockWidget*>())
      if (d->objectName() == (name == "model" ? "modelDock" : "runDock")) d->raise();
    tabs_->setCurrentWidget(progress_);
  } else if (name == "outliers") {
    tabs_->setCurrentWidget(outliers_);
  } else if (name == "runs") {
    runs_->refresh();
    tabs_->setCurrentWidget(runs_);
  } else if (name == "compare") {
    tabs_->setCurrentWidget(compare_);
  } else if (name == "calibration") {
    tabs_->setCurrentWidget(progress_);
  }
}

bool MainWindow::showRunOutliers(qint64 runId) { return outliers_->showRun(runId); }
bool MainWindow::compareRuns(qint64 a, qint64 b) { return compare_->compare(a, b); }

void MainWindow::chooseModelFolder() {
  const QString dir = QFileDialog::getExistingDirectory(this, "Open model folder");
  if (!dir.isEmpty()) beginOpenModel(dir);
}

void MainWindow::rememberRecent(const QString& dir) {
  QSettings s;
  QStringList r = s.value("recentModels").toStringList();
  r.removeAll(dir);
  r.prepend(dir);
  while (r.size() > 8) r.removeLast();
  s.setValue("recentModels", r);
  rebuildRecentMenu();
}

void MainWindow::rebuildRecentMenu() {
  recent_->clear();
  const QStringList r = QSettings().value("recentModels").toStringList();
  for (const QString& dir : r) recent_->addAction(dir, this, [this, dir] { beginOpenModel(dir); });
  recent_->setEnabled(!r.isEmpty());
}

void MainWindow::setDarkTheme(bool dark) {
  QSettings().setValue("window/dark", dark);
  qApp->setStyle(QStyleFactory::create("Fusion"));
  QPalette p;
  if (dark) {
    p.setColor(QPalette::Window, QColor(45, 45, 48));
    p.setColor(QPalette::WindowText, QColor(230, 230, 230));
    p.setColor(QPalette::Base, QColor(30, 30, 32));
    p.setColor(QPalette::AlternateBase, QColor(52, 52, 56));
    p.setColor(QPalette::Text, QColor(230, 230, 230));
    p.setColor(QPalette::Button, QColor(58, 58, 62));
    p.setColor(QPalette::ButtonText, QColor(230, 230, 230));
    p.setColor(QPalette::Highlight, QColor(42, 130, 218));
    p.setColor(QPalette::HighlightedText, Qt::white);
    p.setColor(QPalette::ToolTipBase, QColor(58, 58, 62));
    p.setColor(QPalette::ToolTipText, QColor(230, 230, 230));
    p.setColor(QPalette::PlaceholderText, QColor(150, 150, 150));
    p.setColor(QPalette::Disabled, QPalette::Text, QColor(120, 120, 120));
    p.setColor(QPalette::Disabled, QPalette::ButtonText, QColor(120, 120, 120));
    p.setColor(QPalette::Disabled, QPalette::WindowText, QColor(120, 120, 120));
  } else {
    p = qApp->style()->standardPalette();
  }
  qApp->setPalette(p);
}

bool MainWindow::exportRunModel(qint64 runId, const QString& outDir, const QString& format, const QString& dtype,
                                bool allowSidecar, QString* message) {
  QString msg;
  bool ok = false;
  try {
    QString storeError;
    const auto found = StoreService::shared().wait<std::optional<respin::RunDetail>>(
        db_, StoreService::Access::Read, [runId](respin::RunStore& s) { return s.get_run(runId); }, &storeError, this,
        [this](const QString& line) { statusBar()->showMessage(line); });
    if (!found) throw respin::Error(storeError.toStdString());
    const std::optional<respin::RunDetail>& run = *found;
    if (!run) throw respin::Error(db_.toStdString() + ": no run " + std::to_string(runId));
    if (run->summary.status != respin::RunStatus::Finished)
      throw respin::Error("run " + std::to_string(runId) + " is " + respin::run_status_name(run->summary.status) +
                          "; only finished runs have a model to export");
    respin::ExportOptions o;
    o.format = respin::export_format_from_name(format.toStdString());
    o.dtype = respin::export_dtype_from_name(dtype.toStdString());
    o.allow_sidecar = allowSidecar;
    const std::string dir = run->summary.run_dir, out = outDir.toStdString();
    // Export reads and writes hundreds of megabytes: off the GUI thread, with a live dialog.
    std::packaged_task<respin::ExportResult()> task([dir, out, o] { return respin::export_run(dir, out, o); });
    std::future<respin::ExportResult> result = task.get_future();
    std::thread worker(std::move(task));
    QProgressDialog progress(QString("Exporting run %1 as %2…").arg(runId).arg(format), QString(), 0, 0, this);
    progress.setWindowModality(Qt::WindowModal);
    progress.setMinimumDuration(300);
    while (result.wait_for(std::chrono::milliseconds(20)) != std::future_status::ready)
      QApplication::processEvents(QEventLoop::AllEvents, 20);
    worker.join();
    const respin::ExportResult r = result.get();
    msg = QString("Exported run %1 to %2 (%3 MB in %4 s)%5")
              .arg(runId)
              .arg(QString::fromStdString(r.dir))
              .arg(r.bytes / 1e6, 0, 'f', 1)
              .arg(r.seconds, 0, 'f', 2)
              .arg(r.sidecar ? "; with the online sidecar (respin_online.json)" : "");
    ok = true;
  } catch (const std::exception& e) {
    msg = QString::fromStdString(respin::error_message(e));
  }
  statusBar()->showMessage(msg);
  if (message) *message = msg;
  return ok;
}

void MainWindow::askExportRunModel(qint64 runId) {
  QDialog d(this);
  d.setWindowTitle(QString("Export the model of run %1").arg(runId));
  auto* form = new QFormLayout(&d);
  auto* format = new QComboBox;
  format->addItem("hf (Hugging Face folder + online sidecar)", "hf");
  format->addItem("compressed-tensors (packed integer weights)", "compressed-tensors");
  auto* dtype = new QComboBox;
  for (const char* t : {"f16", "bf16", "f32"}) dtype->addItem(t, t);
  auto* sidecar = new QCheckBox("Allow a sidecar for what compressed-tensors cannot express");
  auto* out = new QLineEdit;
  auto* browse = new QPushButton("Choose…");
  auto* row = new QHBoxLayout;
  row->addWidget(out, 1);
  row->addWidget(browse);
  form->addRow("Format:", format);
  form->addRow("Storage dtype:", dtype);
  form->addRow("", sidecar);
  form->addRow("New folder:", row);
  auto* buttons = new QDialogButtonBox(QDialogButtonBox::Ok | QDialogButtonBox::Cancel);
  form->addRow(buttons);
  connect(browse, &QPushButton::clicked, &d, [&] {
    const QString f = QFileDialog::getSaveFileName(&d, "Export into a new folder");
    if (!f.isEmpty()) out->setText(f);
  });
  connect(buttons, &QDialogButtonBox::accepted, &d, &QDialog::accept);
  connect(buttons, &QDialogButtonBox::rejected, &d, &QDialog::reject);
  if (d.exec() != QDialog::Accepted || out->text().isEmpty()) return;
  QString message;
  if (!exportRunModel(runId, out->text(), format->currentData().toString(), dtype->currentData().toString(),
                      sidecar->isChecked(), &message))
    QMessageBox::warning(this, "Export failed", message);
}

void MainWindow::about() {
  QMessageBox::about(this, "About ReSpin Workbench", system_info_html());
}
