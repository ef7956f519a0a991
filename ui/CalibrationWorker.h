// Runs calibrations on a worker thread for the workbench: a queue of configs, one run at a time,
// each recorded into the run store. Core's observer is adapted to queued signals carrying plain
// copies, so no core callback ever touches a widget; cancel() asks the running calibration to stop
// at its next check (every window, learning step or GPTQ layer).
#pragma once

#include <QObject>
#include <QString>
#include <QVector>

#include <atomic>
#include <deque>
#include <memory>
#include <mutex>
#include <vector>

#include "core/calib/calibration.h"

class QThread;

// One calibration waiting or running.
struct QueuedRun {
  int ticket = 0;
  respin::CalibConfig config;
  QString outDir;
};
Q_DECLARE_METATYPE(respin::CalibProgress)
Q_DECLARE_METATYPE(std::vector<respin::SiteStats>)
Q_DECLARE_METATYPE(respin::StatsStage)
Q_DECLARE_METATYPE(respin::SiteStats)

class CalibrationWorker : public QObject {
  Q_OBJECT
 public:
  // `dbPath`: the run store every run records into.
  explicit CalibrationWorker(QString dbPath, QObject* parent = nullptr);
  ~CalibrationWorker() override;

  // Adds a run to the queue (it starts when the previous one ends); returns its ticket.
  int enqueue(const respin::CalibConfig& config, const QString& outDir);
  // Stops the running calibration (the store marks it cancelled); queued runs stay queued.
  void cancel();
  // Removes a queued run that has not started.
  bool dequeue(int ticket);
  QVector<QueuedRun> queued() const;
  bool busy() const { return busy_.load(); }
  // The (layer, site) whose statistics are sent live while rotations are learned (liveStats);
  // any thread, any time; layer < 0 turns it off.
  void setLiveTarget(int layer, respin::HookSite site);
  bool liveTarget(int& layer, respin::HookSite& site) const;
  const QString& dbPath() const { return db_; }

 signals:
  void started(int ticket, qint64 runId, QString runDir);
  void progress(int ticket, respin::CalibProgress p);
  void lossPoint(int ticket, qint64 step, double loss);
  void stats(int ticket, respin::StatsStage stage, std::vector<respin::SiteStats> stats);
  // About twice a second while rotations are learned: the live target's statistics at `step`.
  void liveStats(int ticket, qint64 step, respin::SiteStats stats);
  // status: "finished", "cancelled" or "failed"; message: the one-line error for failed;
  // storeError: why the run store could not record (part of) the run, empty when it did (the run
  // directory is written either way; runId is -1 when the store never saw the run).
  void ended(int ticket, qint64 runId, QString status, QString message, double quantizedPerplexity,
             QString storeError);
  void queueChanged();

 private:
  void runNext();  // on the worker thread
  QString db_;
  QThread* thread_;
  QObject* context_;  // lives on the worker thread; runs are invoked through it
  mutable std::mutex mutex_;
  std::deque<QueuedRun> queue_;
  std::atomic<bool> busy_{false};
  std::atomic<respin::RunControl*> control_{nullptr};
  std::atomic<int> liveLayer_{0};
  std::atomic<int> liveSite_{0};
  int nextTicket_ = 1;
};
