// The workbench's main flows with real widgets offscreen, a real micro model and a temporary run
// store: open a model, start a calibration and watch progress reach the end while the event loop
// stays responsive, see the run in the runs view and its outliers, cancel a run, compare two runs,
// render every view to PNG.
#include <gtest/gtest.h>

#include <QApplication>
#include <QElapsedTimer>
#include <QProgressBar>
#include <QPushButton>
#include <QSettings>
#include <QSignalSpy>
#include <QSlider>
#include <QSpinBox>
#include <QStandardPaths>
#include <QTimer>

#include <filesystem>

#include "core/store/run_store.h"
#include "core/util/fs.h"
#include "tests/calib_fixture.h"
#include "tests/test_util.h"
#include "ui/CalibrationWorker.h"
#include "ui/MainWindow.h"
#include "ui/ModelInfoPanel.h"
#include "ui/ProgressView.h"
#include "ui/RunPanel.h"

using namespace respin;
using respin::test::TempDir;
namespace fs = std::filesystem;

namespace {

class Workbench : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new TempDir;
    test::write_calibration_fixture(*dir_);
    // Settings of this test run only (recent models, per-model run settings, window state).
    QStandardPaths::setTestModeEnabled(true);
    QSettings().clear();
  }
  static void TearDownTestSuite() { delete dir_; }
  std::unique_ptr<MainWindow> window() {
    auto w = std::make_unique<MainWindow>(nullptr, QString::fromStdString(dir_->file("runs.db")));
    w->setRunsFolder(QString::fromStdString(runs_.path()));
    w->resize(1400, 900);
    w->show();
    return w;
  }
  // Fills the run panel with the fixture's fast settings.
  static void configure(MainWindow& w, const std::string& method) {
    CalibConfig c = test::small_calib_config(*dir_, method, 4);
    c.rank = 8;
    w.runPanel()->setConfig(c);
  }
  // Runs the event loop until `done` or the timeout; returns the longest gap between two timer
  // ticks (the event loop's longest stall) in ms.
  static double pump_until(const std::function<bool()>& done, int timeout_ms) {
    QElapsedTimer total, gap;
    total.start();
    gap.start();
    double worst = 0;
    QTimer tick;
    QObject::connect(&tick, &QTimer::timeout, [&] {
      worst = std::max(worst, double(gap.nsecsElapsed()) / 1e6);
      gap.restart();
    });
    tick.start(5);
    while (!done() && total.elapsed() < timeout_ms) QApplication::processEvents(QEventLoop::AllEvents, 20);
    return worst;
  }
  static TempDir* dir_;
  TempDir runs_;
};
TempDir* Workbench::dir_ = nullptr;

void save_shot(QWidget& w, const std::string& name) {
  fs::create_directories("screenshots");
  QImage img = w.grab().toImage();
  ASSERT_FALSE(img.isNull());
  // Not blank: many distinct grey levels (text, plots, frames).
  std::set<int> greys;
  for (int y = 0; y < img.height(); y += 3)
    for (int x = 0; x < img.width(); x += 3) greys.insert(qGray(img.pixel(x, y)));
  EXPECT_GT(greys.size(), 20u) << name;
  EXPECT_TRUE(img.save(QString::fromStdString("screenshots/" + name + ".png")));
}

}  // namespace

TEST_F(Workbench, CalibrationRunsOnAWorkerThreadAndTheWindowStaysResponsive) {
  auto w = window();
  ASSERT_TRUE(w->openModel(QString::fromStdString(dir_->file("model"))));
  EXPECT_EQ(w->modelPanel()->fieldText("Hadamard intermediate"), "96 = 12 x 8, Paley I(11) x Sylvester(8)");
  configure(*w, "respin");
  EXPECT_TRUE(w->runPanel()->problems().isEmpty()) << w->runPanel()->problems().toStdString();
  EXPECT_TRUE(w->runPanel()->costText().contains("rank 8")) << w->runPanel()->costText().toStdString();
  save_shot(*w, "run-panel");

  QSignalSpy ended(w->worker(), &CalibrationWorker::ended);
  QSignalSpy progress(w->worker(), &CalibrationWorker::progress);
  QSignalSpy live(w->worker(), &CalibrationWorker::liveStats);
  w->progressView()->choose(1, HookSite::DownProjInput);  // the live histogram's layer and site
  ASSERT_GT(w->startCalibration(), 0);
  // QSignalSpy records on the worker thread; the window's own slot runs when the queued signal
  // reaches the event loop: wait for what the user sees.
  bool sawLive = false;
  const double stall = pump_until(
      [&] {
        // (No screenshot here: a grab would count as a stall. The cancel test takes it.)
        sawLive = sawLive || w->progressView()->histogramLegendText().contains("learning, step");
        return ended.count() > 0 && !w->progressView()->cancelButton()->isEnabled() &&
               w->progressView()->statusText().startsWith("F");
      },
      300000);
  ASSERT_EQ(ended.count(), 1);
  const QList<QVariant> end = ended.takeFirst();
  EXPECT_EQ(end[2].toString(), "finished") << end[3].toString().toStdString();
  const qint64 id = end[1].toLongLong();
  EXPECT_GT(id, 0);
  std::printf("[ stall ] longest event-loop stall during a calibration: %.1f ms\n", stall);
  EXPECT_LT(stall, 100.0);
  EXPECT_GT(progress.count(), 5);
  EXPECT_EQ(w->progressView()->overallBar()->value(), 1000);
  EXPECT_EQ(w->progressView()->lossPoints(), 3);  // every learning step reached the plot
  // The live histogram: at least the first and last learning steps, of the site chosen, drawn
  // over the ghosted pre-rotation one while learning; the after-rotation one replaces it at the end.
  ASSERT_GE(live.count(), 2);
  const auto first = live.first()[2].value<respin::SiteStats>();
  EXPECT_EQ(first.layer, 1);
  EXPECT_EQ(first.site, HookSite::DownProjInput);
  EXPECT_EQ(live.first()[1].toLongLong(), 0);
  EXPECT_TRUE(sawLive);
  EXPECT_EQ(w->progressView()->histogramLegendText(), "before rotation | after rotation");
  save_shot(*w, "calibration");

  // The run is in the store, finished, with its statistics.
  RunStore store = RunStore::open_readonly(dir_->file("runs.db"));
  auto run = store.get_run(id);
  ASSERT_TRUE(run);
  EXPECT_EQ(run->summary.status, RunStatus::Finished);
  EXPECT_EQ(store.layer_stats_summary(id, StatsStage::After).size(), 14u);
  EXPECT_TRUE(w->showRunOutliers(id));
  w->showView("outliers");
  save_shot(*w, "outliers-after-run");

  // Export the run's model from the window (on a background thread), then the refusal of an
  // existing folder as one line.
  QString message;
  const QString out = QString::fromStdString(runs_.file("exported"));
  EXPECT_TRUE(w->exportRunModel(id, out, "hf", "f32", false, &message)) << message.toStdString();
  EXPECT_TRUE(fs::is_regular_file(runs_.file("exported") + "/respin_online.json"));
  EXPECT_TRUE(message.contains("with the online sidecar")) << message.toStdString();
  EXPECT_FALSE(w->exportRunModel(id, out, "hf", "f32", false, &message));
  EXPECT_TRUE(message.contains("already exists")) << message.toStdString();
  EXPECT_FALSE(w->exportRunModel(id, QString::fromStdString(runs_.file("ct")), "compressed-tensors", "f16", false, &message));
  EXPECT_TRUE(message.contains("--allow-sidecar") || message.contains("cannot")) << message.toStdString();
}

TEST_F(Workbench, CancelStopsWithinTwoSecondsAndTheStoreSaysCancelled) {
  auto w = window();
  ASSERT_TRUE(w->openModel(QString::fromStdString(dir_->file("model"))));
  configure(*w, "spinquant");
  CalibConfig c = w->runPanel()->config();
  c.iters = 100000;  // long enough to cancel mid-learning
  w->runPanel()->setConfig(c);
  QSignalSpy ended(w->worker(), &CalibrationWorker::ended);
  bool learning = false;
  QObject::connect(w->worker(), &CalibrationWorker::lossPoint, [&] { learning = true; });
  w->progressView()->choose(1, HookSite::DownProjInput);
  ASSERT_GT(w->startCalibration(), 0);
  pump_until([&] { return learning; }, 120000);
  ASSERT_TRUE(learning);
  // While learning: the live histogram over the ghosted pre-rotation one (the docs' screenshot).
  pump_until([&] { return w->progressView()->histogramLegendText().contains("learning, step"); }, 30000);
  EXPECT_TRUE(w->progressView()->histogramLegendText().startsWith("before rotation | learning, step"))
      << w->progressView()->histogramLegendText().toStdString();
  save_shot(*w, "calibration-live");
  QElapsedTimer t;
  t.start();
  w->progressView()->cancelButton()->click();
  pump_until([&] { return ended.count() > 0 && w->progressView()->statusText().startsWith("Cancelled"); }, 10000);
  ASSERT_EQ(ended.count(), 1);
  std::printf("[ cancel ] stopped %lld ms after Cancel\n", static_cast<long long>(t.elapsed()));
  EXPECT_LT(t.elapsed(), 2000);
  const QList<QVariant> end = ended.takeFirst();
  EXPECT_EQ(end[2].toString(), "cancelled");
  RunStore store = RunStore::open_readonly(dir_->file("runs.db"));
  auto run = store.get_run(end[1].toLongLong());
  ASSERT_TRUE(run);
  EXPECT_EQ(run->summary.status, RunStatus::Cancelled);
  EXPECT_TRUE(directory_is_empty(runs_.path()));  // nothing left behind
}

TEST_F(Workbench, InvalidSettingsAreExplainedBeforeStartAndRankSnapsToPowersOfTwo) {
  auto w = window();
  RunPanel* p = w->runPanel();
  EXPECT_FALSE(p->startButton()->isEnabled());  // no model yet
  ASSERT_TRUE(w->openModel(QString::fromStdString(dir_->file("model"))));
  configure(*w, "respin");
  EXPECT_TRUE(p->startButton()->isEnabled());
  CalibConfig c = p->config();
  c.a_group = 7;  // does not divide 64
  p->setConfig(c);
  EXPECT_FALSE(p->startButton()->isEnabled());
  EXPECT_TRUE(p->problemText().contains("Activation group 7 does not divide the hidden size (64)")) << p->problemText().toStdString();
  c.a_group = 0;
  p->setConfig(c);
  EXPECT_TRUE(p->startButton()->isEnabled());
  p->rankSlider()->setValue(5);  // 2^4
  EXPECT_EQ(p->rankBox()->value(), 16);
  EXPECT_EQ(p->config().rank, 16);
  p->rankSlider()->setValue(p->rankSlider()->maximum());  // the hidden size: full rank
  EXPECT_EQ(p->config().rank, -1);
  // A folder that is not a model: a message in the panel, no crash.
  EXPECT_FALSE(w->openModel(QString::fromStdString(dir_->file("calib.txt"))));
  EXPECT_FALSE(w->modelPanel()->errorText().isEmpty());
  EXPECT_FALSE(p->startButton()->isEnabled());
}

TEST_F(Workbench, ANewModelStartsFromTheDefaultSettingsAndTheUsersOverrides) {
  // resources/default-settings.ini is compiled in; a model opened for the first time gets its
  // [calibration] values (run.json field names), each overridden by the user's own setting.
  QSettings().setValue("calibration/iters", 7);
  QSettings().setValue("calibration/no_such_field", 1);
  auto w = window();
  ASSERT_TRUE(w->openModel(QString::fromStdString(dir_->file("model"))));
  RunPanel* p = w->runPanel();
  CalibConfig c = p->config();
  EXPECT_EQ(c.method, Method::ReSpin);
  EXPECT_EQ(c.wbits, 4);
  EXPECT_EQ(c.abits, 4);
  EXPECT_EQ(c.kvbits, 4);
  EXPECT_EQ(c.rank, 32);
  EXPECT_EQ(c.samples, 128);
  EXPECT_DOUBLE_EQ(c.lr, 1.5);
  EXPECT_EQ(c.iters, 7);  // the user's value
  EXPECT_EQ(c.seq_len, 64);  // 512 in the defaults, capped at the model's context
  EXPECT_EQ(p->applyDefaultSettings(), "no_such_field (unknown field)");
  QSettings().remove("calibration");
}

int main(int argc, char** argv) {
  setenv("QT_QPA_PLATFORM", "offscreen", 0);
  ::testing::InitGoogleTest(&argc, argv);
  QApplication app(argc, argv);
  QApplication::setOrganizationName("respin-tests");
  QApplication::setApplicationName("test_workbench");
  return RUN_ALL_TESTS();
}
