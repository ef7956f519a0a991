// The workbench's main flows with real widgets offscreen, a real micro model and a temporary run
// store: open a model, start a calibration and watch progress reach the end while the event loop
// stays responsive (what the window shows equals what the store holds), see the run in the runs
// view and its outliers, export its model (loaded back and evaluated), cancel a run, a store that
// cannot record, folders the CLI would refuse, the run and model panels fully visible at 1280x800,
// render every view to PNG.
#include <gtest/gtest.h>

#include <QAbstractButton>
#include <QAbstractSpinBox>
#include <QApplication>
#include <QComboBox>
#include <QDockWidget>
#include <QElapsedTimer>
#include <QLabel>
#include <QLineEdit>
#include <QScrollArea>
#include <QProcess>
#include <QProgressBar>
#include <QPushButton>
#include <QSettings>
#include <QSignalSpy>
#include <QSlider>
#include <QSpinBox>
#include <QStandardPaths>
#include <QTimer>

#include <sys/resource.h>

#include <csignal>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <qcustomplot.h>

#include "core/calib/calibrate.h"
#include "core/eval/perplexity.h"
#include "core/export/export.h"
#include "core/export/exported_model.h"
#include "core/io/atomic_file.h"
#include "core/model/weights.h"
#include "core/store/run_store.h"
#include "core/store/sqlite.h"
#include "core/tokenizer/tokenizer.h"
#include "core/util/error_message.h"
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
  // The window at the screenshot's default size (app/workbench_main.cpp), or another.
  std::unique_ptr<MainWindow> window(int width = 1400, int height = 900, const std::string& db = "") {
    auto w = std::make_unique<MainWindow>(nullptr, QString::fromStdString(db.empty() ? dir_->file("runs.db") : db));
    w->setRunsFolder(QString::fromStdString(runs_.path()));
    w->resize(width, height);
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

// The message of what `f` throws ("" if nothing).
template <class F> std::string error_of(F&& f) {
  try {
    f();
  } catch (const std::exception& e) {
    return error_message(e);
  }
  return "";
}

// A copy of the fixture's model folder, for breaking.
std::string copy_model(const TempDir& from, const TempDir& to, const std::string& name) {
  const std::string dir = to.file(name);
  fs::create_directories(dir);
  for (const char* f : {"config.json", "model.safetensors", "tokenizer.json"})
    test::write_bytes(dir + "/" + f, test::read_bytes(from.file(std::string("model/") + f)));
  return dir;
}

// Every control and label of `panel` (a dock's content) lies inside the visible part of its
// dock's scroll area, inside the window, and is as wide as its text needs (a combo box, check box
// or label narrower than its size hint cuts its text; a wrapped label is as tall as its text).
// Returns how many were checked.
int expect_fully_visible(QMainWindow& w, QWidget* panel, const char* what) {
  QApplication::processEvents();
  // A label whose text just changed (the plan arrives from its thread) has posted a layout
  // request: the layout as the user sees it is the one after that request.
  QApplication::sendPostedEvents(nullptr, QEvent::LayoutRequest);
  QApplication::processEvents();
  auto* scroll = qobject_cast<QScrollArea*>(panel->parentWidget() ? panel->parentWidget()->parentWidget() : nullptr);
  EXPECT_TRUE(scroll) << what;
  if (!scroll) return 0;
  EXPECT_TRUE(panel->isVisible()) << what << ": its dock is not the one shown";
  QWidget* vp = scroll->viewport();
  const QRect view(vp->mapTo(&w, QPoint(0, 0)), vp->size());
  EXPECT_TRUE(w.rect().contains(view)) << what;
  int checked = 0;
  for (QWidget* c : panel->findChildren<QWidget*>()) {
    if (!c->isVisibleTo(panel)) continue;
    // Parts of composite controls (a spin box's line edit) are the composite's business.
    bool part = false;
    for (QWidget* p = c->parentWidget(); p && p != panel; p = p->parentWidget())
      part = part || qobject_cast<QAbstractSpinBox*>(p) || qobject_cast<QComboBox*>(p);
    if (part) continue;
    auto* label = qobject_cast<QLabel*>(c);
    const bool control = qobject_cast<QAbstractButton*>(c) || qobject_cast<QComboBox*>(c) ||
                         qobject_cast<QAbstractSpinBox*>(c) || qobject_cast<QLineEdit*>(c) || qobject_cast<QSlider*>(c);
    if (!control && !(label && !label->text().isEmpty())) continue;
    const QRect r(c->mapTo(&w, QPoint(0, 0)), c->size());
    const std::string name = c->metaObject()->className() + std::string(" '") +
                             (label ? label->text() : c->objectName()).toStdString() + "'";
    EXPECT_TRUE(view.contains(r)) << what << ": " << name << " at " << r.x() << "," << r.y() << " " << r.width() << "x"
                                  << r.height() << " outside the visible " << view.x() << "," << view.y() << " "
                                  << view.width() << "x" << view.height();
    if (label && label->wordWrap())
      EXPECT_GE(c->height(), label->heightForWidth(c->width())) << what << ": " << name << " cut at the bottom";
    else if (label || qobject_cast<QComboBox*>(c) || qobject_cast<QAbstractButton*>(c) || qobject_cast<QAbstractSpinBox*>(c))
      EXPECT_GE(c->width(), c->sizeHint().width()) << what << ": " << name << " narrower than its text";
    ++checked;
  }
  return checked;
}

}  // namespace

TEST_F(Workbench, CalibrationRunsOnAWorkerThreadAndTheWindowStaysResponsive) {
  auto w = window();
  ASSERT_TRUE(w->openModel(QString::fromStdString(dir_->file("model"))));
  EXPECT_EQ(w->modelPanel()->fieldText("Hadamard intermediate"), "96 = 12 x 8, Paley I(11) x Sylvester(8)");
  configure(*w, "respin");
  EXPECT_TRUE(w->runPanel()->problems().isEmpty()) << w->runPanel()->problems().toStdString();
  EXPECT_TRUE(w->runPanel()->costText().contains("rank 8")) << w->runPanel()->costText().toStdString();
  w->showView("run");
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
        const QString st = w->progressView()->statusText();
        return ended.count() > 0 && !w->progressView()->cancelButton()->isEnabled() &&
               (st.startsWith("Finished: ") || st.startsWith("Failed: "));
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

  // The run is in the store, finished, with its statistics; the perplexity the window shows and
  // the loss curve it plotted are the store's.
  RunStore store = RunStore::open_readonly(dir_->file("runs.db"));
  auto run = store.get_run(id);
  ASSERT_TRUE(run);
  EXPECT_EQ(run->summary.status, RunStatus::Finished);
  ASSERT_TRUE(run->summary.quantized_perplexity);
  const double ppl = *run->summary.quantized_perplexity;
  EXPECT_EQ(w->progressView()->statusText(), QString("Finished: quantized perplexity %1").arg(ppl, 0, 'f', 4));
  EXPECT_EQ(end[4].toDouble(), ppl);
  EXPECT_TRUE(end[5].toString().isEmpty()) << end[5].toString().toStdString();  // recorded without a store error
  const QCPGraph* loss = w->progressView()->lossPlot()->graph(0);
  ASSERT_EQ(loss->dataCount(), static_cast<int>(run->loss.size()));
  ASSERT_EQ(run->loss.size(), 3u);
  for (int i = 0; i < loss->dataCount(); ++i) {
    EXPECT_EQ(loss->data()->at(i)->key, static_cast<double>(run->loss[size_t(i)].step)) << i;
    EXPECT_EQ(loss->data()->at(i)->value, run->loss[size_t(i)].loss) << i;
  }
  EXPECT_EQ(store.layer_stats_summary(id, StatsStage::After).size(), 14u);
  EXPECT_TRUE(w->showRunOutliers(id));
  w->showView("outliers");
  save_shot(*w, "outliers-after-run");
  // With a run in every view, none makes the window wider than 1280 pixels beside the run panel.
  ASSERT_TRUE(w->compareRuns(id, id));
  w->resize(1280, 800);
  for (const char* view : {"outliers", "runs", "compare", "calibration"}) {
    w->showView(view);
    QApplication::processEvents();
    EXPECT_EQ(w->size(), QSize(1280, 800)) << view << ": " << w->width() << "x" << w->height();
  }
  w->resize(1400, 900);

  // Export the run's model from the window (on a background thread): the folder loads as an
  // exported model and evaluates to the run's perplexity (f32 storage: to 2e-6, as
  // tests/test_cli_export.cpp); then the refusals, each the one line core gives.
  QString message;
  const std::string outDir = runs_.file("exported");
  const QString out = QString::fromStdString(outDir);
  ASSERT_TRUE(w->exportRunModel(id, out, "hf", "f32", false, &message)) << message.toStdString();
  EXPECT_TRUE(message.startsWith(QString("Exported run %1 to %2 (").arg(id).arg(out))) << message.toStdString();
  EXPECT_TRUE(message.endsWith("; with the online sidecar (respin_online.json)")) << message.toStdString();
  {
    ASSERT_TRUE(run->record);
    const ExportedModel em = load_exported_model(outDir);
    ASSERT_TRUE(em.model);
    ASSERT_TRUE(em.sidecar);
    const Tokenizer tok = Tokenizer::from_file(dir_->file("tokenizer.json"));
    PerplexityOptions po;
    po.seq_len = run->record->results.eval_seq_len;
    po.max_windows = run->record->results.eval_windows;
    const double got = evaluate_perplexity(*em.model, tok.encode(read_text_file(dir_->file("eval.txt")), false), po).perplexity;
    EXPECT_NEAR(got / ppl, 1.0, 2e-6) << got << " vs the run's " << ppl;
  }
  EXPECT_FALSE(w->exportRunModel(id, out, "hf", "f32", false, &message));
  EXPECT_EQ(message, out + ": already exists; export writes a new folder and never writes into an existing one");
  EXPECT_EQ(w->statusText(), message);
  const std::string ct = runs_.file("ct");
  EXPECT_FALSE(w->exportRunModel(id, QString::fromStdString(ct), "compressed-tensors", "f16", false, &message));
  ExportOptions cto;
  cto.format = ExportFormat::CompressedTensors;
  cto.dtype = DType::F16;
  const std::string core_says = error_of([&] { export_run(run->summary.run_dir, ct + "-core", cto); });
  EXPECT_EQ(message.toStdString(), core_says);
  EXPECT_EQ(message.toStdString().rfind("compressed-tensors cannot express this respin run: ", 0), 0u) << message.toStdString();
  EXPECT_FALSE(message.contains('\n'));
  EXPECT_FALSE(fs::exists(ct));

  // Under a file size limit (write() fails with EFBIG as a full disk fails with ENOSPC) a real
  // export from the window fails with one line and leaves nothing behind.
  const std::vector<DirEntry> before = list_directory(runs_.path());
  const std::string limited = runs_.file("limited");
  struct rlimit old {};
  ASSERT_EQ(getrlimit(RLIMIT_FSIZE, &old), 0);
  auto old_handler = std::signal(SIGXFSZ, SIG_IGN);
  struct rlimit lim = old;
  lim.rlim_cur = 64 * 1024;  // the f32 model.safetensors alone is ~0.4 MB
  ASSERT_EQ(setrlimit(RLIMIT_FSIZE, &lim), 0);
  const bool limitedOk = w->exportRunModel(id, QString::fromStdString(limited), "hf", "f32", false, &message);
  setrlimit(RLIMIT_FSIZE, &old);
  std::signal(SIGXFSZ, old_handler);
  EXPECT_FALSE(limitedOk);
  std::printf("[ export ] under a 64 KiB file size limit: %s\n", message.toStdString().c_str());
  EXPECT_FALSE(message.contains('\n'));
  EXPECT_FALSE(message.isEmpty());
  EXPECT_FALSE(fs::exists(limited));
  const std::vector<DirEntry> after = list_directory(runs_.path());
  EXPECT_EQ(after.size(), before.size()) << "something was left behind beside " << limited;

  // `--screenshot --view compare --run ID` without --run2 on the model's first run: the option
  // that is missing is named (there is no run before it to compare with).
  QProcess shot;
  QProcessEnvironment env = QProcessEnvironment::systemEnvironment();
  env.insert("QT_QPA_PLATFORM", "offscreen");
  env.insert("XDG_CONFIG_HOME", QString::fromStdString(runs_.file("config")));
  shot.setProcessEnvironment(env);
  const QString db = QString::fromStdString(dir_->file("runs.db"));
  shot.start(RESPIN_WORKBENCH_BIN, {"--screenshot", QString::fromStdString(runs_.file("c.png")), "--view", "compare",
                                    "--run", QString::number(id), "--db", db});
  ASSERT_TRUE(shot.waitForFinished(120000));
  EXPECT_EQ(shot.exitCode(), 1);
  const QString err = QString::fromUtf8(shot.readAllStandardError());
  EXPECT_TRUE(err.endsWith(QString("error: run %1 is the first run of %2 in %3: name the run to compare it with (--run2 ID)\n")
                               .arg(id).arg(QString::fromStdString(run->summary.model_folder), db)))
      << err.toStdString();
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

TEST_F(Workbench, TheRunPanelShowsTheMemoryPlanTheRunWillUseAndRefusesWhatCannotFit) {
  auto w = window();
  ASSERT_TRUE(w->openModel(QString::fromStdString(dir_->file("model"))));
  configure(*w, "spinquant");
  RunPanel* p = w->runPanel();
  // The device and the file sizes are read off the GUI thread; then the plan follows the options.
  pump_until([&] { return p->plan().has_value(); }, 10000);
  ASSERT_TRUE(p->plan().has_value()) << p->planText().toStdString();
  // The panel's plan is the one calibrate makes (core's plan_calibration for the same options).
  const respin::MemoryPlan core_plan = respin::plan_calibration(p->config());
  EXPECT_EQ(p->plan()->peak().device_bytes, core_plan.peak().device_bytes);
  EXPECT_EQ(p->plan()->phases.size(), core_plan.phases.size());
  EXPECT_TRUE(p->planText().startsWith("Peak ")) << p->planText().toStdString();
  EXPECT_TRUE(p->planText().contains("learning the whole batch at once")) << p->planText().toStdString();
  EXPECT_TRUE(p->planText().contains(", ~")) << p->planText().toStdString();  // the time estimate
  EXPECT_TRUE(p->startButton()->isEnabled());
  // A budget too small: the refusal is the panel's problem, and Start waits.
  p->memoryBudget()->setText("1kB");
  EXPECT_FALSE(p->plan()->fits());
  EXPECT_FALSE(p->startButton()->isEnabled());
  EXPECT_TRUE(p->problemText().contains("more than the --device-memory budget of 1.0 kB")) << p->problemText().toStdString();
  EXPECT_TRUE(p->planText().contains("budget")) << p->planText().toStdString();
  p->memoryBudget()->setText("a lot");
  EXPECT_TRUE(p->problemText().startsWith("Memory budget: 'a lot' is not a size")) << p->problemText().toStdString();
  EXPECT_FALSE(p->startButton()->isEnabled());
  // Learning's options reach the plan (the plan's own choice to fit is tested through the CLI,
  // tests/test_cli_plan.cpp, on a model whose learning graph outweighs the fixed terms).
  p->memoryBudget()->clear();
  CalibConfig c = p->config();
  c.checkpoint_layers = true;
  c.micro_batch = 1;
  p->setConfig(c);
  EXPECT_TRUE(p->planText().contains("learning in micro-batches of 1, layers checkpointed")) << p->planText().toStdString();
  EXPECT_EQ(p->plan()->peak().device_bytes, respin::plan_calibration(p->config()).peak().device_bytes);
  p->memoryBudget()->clear();
  EXPECT_TRUE(p->startButton()->isEnabled());
  EXPECT_EQ(p->config().device_memory, 0);
  // The precision reaches the plan (read again off the GUI thread: it decides the plan's target).
  const int64_t f32_model = p->plan()->model_bytes;
  EXPECT_TRUE(p->planText().contains("(float32)")) << p->planText().toStdString();
  c = p->config();
  c.precision = respin::Precision::BFloat16;
  p->setConfig(c);
  EXPECT_EQ(p->config().precision, respin::Precision::BFloat16);
  pump_until([&] { return p->plan() && p->plan()->target.precision == respin::Precision::BFloat16; }, 10000);
  ASSERT_TRUE(p->plan().has_value());
  EXPECT_EQ(p->plan()->target.precision, respin::Precision::BFloat16);
  EXPECT_EQ(2 * p->plan()->model_bytes, f32_model);
  EXPECT_EQ(p->plan()->peak().device_bytes, respin::plan_calibration(p->config()).peak().device_bytes);
  EXPECT_TRUE(p->planText().contains("(bfloat16)")) << p->planText().toStdString();
  // Streaming: SpinQuant learns through the whole model, so 'layers' is a problem before Start;
  // QuaRot streams, and the plan says so and holds no model.
  QComboBox* streaming = p->streamingBox();
  streaming->setCurrentIndex(streaming->findText("layers"));
  EXPECT_EQ(p->config().streaming, respin::Streaming::Layers);
  EXPECT_FALSE(p->startButton()->isEnabled());
  EXPECT_TRUE(p->problemText().contains("streaming 'layers'")) << p->problemText().toStdString();
  const int64_t whole_peak = respin::plan_calibration([&] {
                               CalibConfig q = p->config();
                               q.method = Method::QuaRot;
                               q.streaming = respin::Streaming::Whole;
                               return q;
                             }()).peak().device_bytes;
  c = p->config();
  c.method = Method::QuaRot;
  p->setConfig(c);
  EXPECT_EQ(streaming->currentText(), "layers");  // setConfig keeps it
  EXPECT_TRUE(p->startButton()->isEnabled()) << p->problemText().toStdString();
  ASSERT_TRUE(p->plan().has_value());
  EXPECT_TRUE(p->plan()->streamed);
  EXPECT_TRUE(p->planText().contains("; a layer at a time")) << p->planText().toStdString();
  EXPECT_LT(p->plan()->peak().device_bytes, whole_peak);
  EXPECT_EQ(p->plan()->peak().device_bytes, respin::plan_calibration(p->config()).peak().device_bytes);
  streaming->setCurrentIndex(streaming->findText("whole"));
  EXPECT_FALSE(p->plan()->streamed);
  EXPECT_EQ(p->plan()->peak().device_bytes, whole_peak);
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

TEST_F(Workbench, RunAndModelPanelsAreFullyVisibleAt1280x800) {
  // The run panel is the primary control: whole, without scrolling or moving a splitter, at the
  // smallest supported window and at the screenshot's default size; with a problem shown too.
  for (const QSize size : {QSize(1280, 800), QSize(1400, 900)}) {
    SCOPED_TRACE(std::to_string(size.width()) + "x" + std::to_string(size.height()));
    auto w = window(size.width(), size.height());
    ASSERT_TRUE(w->openModel(QString::fromStdString(dir_->file("model"))));
    w->showView("run");
    // With the plan shown (read off the GUI thread), as the user sees the panel once it is ready.
    pump_until([&] { return w->runPanel()->plan().has_value(); }, 10000);
    QApplication::processEvents();
    // The window keeps the size asked for (minimum sizes of docks and views do not force it wider).
    EXPECT_EQ(w->size(), size) << w->width() << "x" << w->height() << "; central widget at least "
                               << w->centralWidget()->minimumSizeHint().width() << " wide";
    EXPECT_GT(expect_fully_visible(*w, w->runPanel(), "run panel"), 40);
    EXPECT_TRUE(w->runPanel()->startButton()->isEnabled());
    CalibConfig c = w->runPanel()->config();
    c.a_group = 7;
    c.kv_group = 3;
    w->runPanel()->setConfig(c);
    ASSERT_FALSE(w->runPanel()->problemText().isEmpty());
    expect_fully_visible(*w, w->runPanel(), "run panel with problems");
    if (size.width() == 1280) save_shot(*w, "run-panel-1280x800");
    w->showView("model");
    EXPECT_GT(expect_fully_visible(*w, w->modelPanel(), "model panel"), 30);
  }
}

TEST_F(Workbench, FoldersTheCliRefusesCannotBeStarted) {
  // The model panel checks what load_model and the calibration check before computing (on a
  // thread of its own): a truncated weights file and a config claiming a hidden size of 2^40
  // are refused with the CLI's own message, and Start stays disabled.
  TempDir broken;
  const std::string truncated = copy_model(*dir_, broken, "truncated");
  const std::string weights = test::read_bytes(truncated + "/model.safetensors");
  test::write_bytes(truncated + "/model.safetensors", weights.substr(0, weights.size() / 2));
  const std::string huge = copy_model(*dir_, broken, "huge");
  nlohmann::json cfg = nlohmann::json::parse(test::read_bytes(huge + "/config.json"));
  cfg["hidden_size"] = int64_t(1) << 40;
  test::write_bytes(huge + "/config.json", cfg.dump(2));
  auto w = window();
  for (const std::string& dir : {truncated, huge}) {
    SCOPED_TRACE(dir);
    const std::string cli = error_of([&] { load_model(dir); });
    ASSERT_FALSE(cli.empty()) << "load_model accepts " << dir;
    std::printf("[ refused ] %s\n", cli.c_str());
    QSignalSpy opened(w.get(), &MainWindow::modelOpened);
    EXPECT_FALSE(w->openModel(QString::fromStdString(dir)));
    ASSERT_EQ(opened.count(), 1);
    EXPECT_FALSE(opened.front().front().toBool());
    EXPECT_EQ(w->modelPanel()->errorText().toStdString(), cli);
    EXPECT_FALSE(w->runPanel()->startButton()->isEnabled());
    EXPECT_EQ(w->runPanel()->problemText().toStdString(), "This folder cannot be calibrated: " + cli);
    EXPECT_FALSE(w->statusText().contains("ready to calibrate")) << w->statusText().toStdString();
    EXPECT_EQ(w->startCalibration(), -1);
  }
  // What was read still shows (the claimed hidden size), and a good folder afterwards is ready.
  EXPECT_EQ(w->modelPanel()->fieldText("Hidden size"), "1099511627776");
  ASSERT_TRUE(w->openModel(QString::fromStdString(dir_->file("model"))));
  EXPECT_TRUE(w->modelPanel()->errorText().isEmpty());
  EXPECT_TRUE(w->runPanel()->startButton()->isEnabled());
  EXPECT_TRUE(w->statusText().endsWith(": ready to calibrate")) << w->statusText().toStdString();
}

TEST_F(Workbench, ARunTheStoreCouldNotRecordSaysSoInTheWindow) {
  // Another connection holds the store's write lock for the whole run: the calibration goes on
  // (its run directory is written), the store never sees it, and the window says so.
  TempDir storeDir;
  const std::string db = storeDir.file("runs.db");
  { RunStore::open(db); }
  sqlite::Database lock(db, sqlite::Database::Mode::ReadWrite);
  lock.exec("BEGIN IMMEDIATE");
  auto w = window(1400, 900, db);
  ASSERT_TRUE(w->openModel(QString::fromStdString(dir_->file("model"))));
  configure(*w, "quarot");
  QSignalSpy ended(w->worker(), &CalibrationWorker::ended);
  ASSERT_GT(w->startCalibration(), 0);
  pump_until([&] { return ended.count() > 0 && !w->progressView()->cancelButton()->isEnabled() &&
                          !w->progressView()->statusText().startsWith("Run directory"); }, 300000);
  ASSERT_EQ(ended.count(), 1);
  const QList<QVariant> end = ended.takeFirst();
  EXPECT_EQ(end[2].toString(), "finished") << end[3].toString().toStdString();
  EXPECT_EQ(end[1].toLongLong(), -1);
  const QString storeError = end[5].toString();
  EXPECT_TRUE(storeError.contains("locked")) << storeError.toStdString();
  EXPECT_EQ(w->progressView()->statusText(), QString("Finished: quantized perplexity %1").arg(end[4].toDouble(), 0, 'f', 4));
  const QString shown = w->progressView()->storeWarningText();
  // The run directory is written all the same: the one folder in the runs folder, with its run.json.
  const std::vector<DirEntry> dirs = list_directory(runs_.path());
  ASSERT_EQ(dirs.size(), 1u);
  const std::string runDir = runs_.file(dirs[0].name);
  EXPECT_TRUE(fs::is_regular_file(runDir + "/run.json"));
  EXPECT_EQ(shown, "Not recorded in the run store: " + storeError + " (the run directory " +
                       QString::fromStdString(runDir) + " has the results)");
  EXPECT_TRUE(w->statusText().contains("not recorded in the run store: " + storeError)) << w->statusText().toStdString();
  QApplication::processEvents();
  save_shot(*w, "calibration-not-recorded");
  lock.exec("ROLLBACK");
  EXPECT_TRUE(RunStore::open_readonly(db).list_runs().empty());
}

int main(int argc, char** argv) {
  setenv("QT_QPA_PLATFORM", "offscreen", 0);
  ::testing::InitGoogleTest(&argc, argv);
  QApplication app(argc, argv);
  QApplication::setOrganizationName("respin-tests");
  QApplication::setApplicationName("test_workbench");
  return RUN_ALL_TESTS();
}
