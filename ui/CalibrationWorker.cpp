// Calibration queue on a worker thread (see CalibrationWorker.h).
#include "ui/CalibrationWorker.h"

#include <QMetaObject>
#include <QThread>

#include "core/store/recorder.h"
#include "core/store/run_store.h"
#include "core/util/error.h"
#include "core/util/error_message.h"
#include "core/util/threads.h"

namespace {

// Core's observer as queued signals: everything is copied into the signal's arguments on the
// calibration thread and delivered on the receiver's thread.
class SignalObserver : public respin::CalibObserver {
 public:
  SignalObserver(CalibrationWorker* w, int ticket) : w_(w), ticket_(ticket) {}
  void on_progress(const respin::CalibProgress& p) override { emit w_->progress(ticket_, p); }
  void on_loss(int64_t step, double loss) override { emit w_->lossPoint(ticket_, step, loss); }
  void on_stats(respin::StatsStage s, const std::vector<respin::SiteStats>& st) override {
    emit w_->stats(ticket_, s, st);
  }
  void on_started(const respin::RunRecord&, const std::string&, const std::string& dir) override {
    started_dir_ = QString::fromStdString(dir);
  }
  bool live_site(int& layer, respin::HookSite& site) override { return w_->liveTarget(layer, site); }
  void on_live_stats(int64_t step, const respin::SiteStats& st) override { emit w_->liveStats(ticket_, step, st); }
  QString started_dir_;

 private:
  CalibrationWorker* w_;
  int ticket_;
};

}  // namespace

CalibrationWorker::CalibrationWorker(QString dbPath, QObject* parent)
    : QObject(parent), db_(std::move(dbPath)), thread_(new QThread), context_(new QObject) {
  qRegisterMetaType<respin::CalibProgress>();
  qRegisterMetaType<std::vector<respin::SiteStats>>();
  qRegisterMetaType<respin::StatsStage>();
  qRegisterMetaType<respin::SiteStats>();
  context_->moveToThread(thread_);
  thread_->setObjectName("calibration");
  thread_->start();
}

void CalibrationWorker::setLiveTarget(int layer, respin::HookSite site) {
  liveSite_.store(static_cast<int>(site));
  liveLayer_.store(layer);
}

bool CalibrationWorker::liveTarget(int& layer, respin::HookSite& site) const {
  layer = liveLayer_.load();
  site = static_cast<respin::HookSite>(liveSite_.load());
  return layer >= 0;
}

CalibrationWorker::~CalibrationWorker() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    queue_.clear();
  }
  cancel();
  thread_->quit();
  thread_->wait();
  delete context_;
  delete thread_;
}

int CalibrationWorker::enqueue(const respin::CalibConfig& config, const QString& outDir) {
  int ticket;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    ticket = nextTicket_++;
    queue_.push_back({ticket, config, outDir});
  }
  emit queueChanged();
  QMetaObject::invokeMethod(context_, [this] { runNext(); }, Qt::QueuedConnection);
  return ticket;
}

void CalibrationWorker::cancel() {
  if (respin::RunControl* c = control_.load()) c->request_stop();
}

bool CalibrationWorker::dequeue(int ticket) {
  bool removed = false;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    for (auto it = queue_.begin(); it != queue_.end(); ++it)
      if (it->ticket == ticket) {
        queue_.erase(it);
        removed = true;
        break;
      }
  }
  if (removed) emit queueChanged();
  return removed;
}

QVector<QueuedRun> CalibrationWorker::queued() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return QVector<QueuedRun>(queue_.begin(), queue_.end());
}

void CalibrationWorker::runNext() {
  if (busy_.load()) return;  // one at a time; the end of this run starts the next
  QueuedRun run;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (queue_.empty()) return;
    run = queue_.front();
    queue_.pop_front();
  }
  busy_ = true;
  emit queueChanged();
  respin::RunControl control;
  control_ = &control;
  // The workbench is this run's entry point: it sets the compute threads the run asks for.
  respin::set_compute_threads(run.config.threads);
  SignalObserver observer(this, run.ticket);
  std::optional<int64_t> id;
  QString status = "finished", message, storeError;
  double ppl = 0;
  try {
    respin::RunStore store = respin::RunStore::open(db_.toStdString());
    // The recorder forwards every event to `forward`, which also announces the run's store id.
    struct Forward : respin::CalibObserver {
      SignalObserver* inner = nullptr;
      respin::StoreRecorder* recorder = nullptr;
      CalibrationWorker* w = nullptr;
      int ticket = 0;
      void on_started(const respin::RunRecord& r, const std::string& tmp, const std::string& dir) override {
        inner->on_started(r, tmp, dir);
        const std::optional<int64_t> id = recorder->run_id();
        emit w->started(ticket, id ? *id : -1, QString::fromStdString(dir));
      }
      void on_progress(const respin::CalibProgress& p) override { inner->on_progress(p); }
      void on_loss(int64_t s, double l) override { inner->on_loss(s, l); }
      void on_stats(respin::StatsStage s, const std::vector<respin::SiteStats>& st) override { inner->on_stats(s, st); }
      bool live_site(int& layer, respin::HookSite& site) override { return inner->live_site(layer, site); }
      void on_live_stats(int64_t step, const respin::SiteStats& st) override { inner->on_live_stats(step, st); }
    } forward;
    respin::StoreRecorder recorder(store, &forward);
    forward.inner = &observer;
    forward.recorder = &recorder;
    forward.w = this;
    forward.ticket = run.ticket;
    // Store failures while recording do not stop the run; they are reported with its end.
    auto report = [&] {
      id = recorder.run_id();
      storeError = QString::fromStdString(recorder.store_error());
    };
    try {
      respin::CalibOutcome out = respin::run_calibration(run.config, run.outDir.toStdString(), &control, &recorder);
      recorder.finished(out.record);
      ppl = out.record.results.quantized_perplexity;
    } catch (const respin::Cancelled&) {
      recorder.stopped(respin::RunStatus::Cancelled, "cancelled");
      report();
      throw;
    } catch (const std::exception& e) {
      recorder.stopped(respin::RunStatus::Failed, respin::error_message(e));
      report();
      throw;
    }
    report();
  } catch (const respin::Cancelled&) {
    status = "cancelled";
  } catch (const std::exception& e) {
    status = "failed";
    message = QString::fromStdString(respin::error_message(e));
  }
  control_ = nullptr;
  busy_ = false;
  emit ended(run.ticket, id ? *id : -1, status, message, ppl, storeError);
  emit queueChanged();
  QMetaObject::invokeMethod(context_, [this] { runNext(); }, Qt::QueuedConnection);
}
