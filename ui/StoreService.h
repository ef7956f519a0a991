// The GUI's access to the run store: every read and write runs on one thread of its own, never on
// the GUI thread, so that a store locked by another process (a calibration writing, a
// `respin runs` command, a stuck writer) cannot freeze the window. docs/store.md describes the
// store and its locking; README.md ("The workbench") what the views show while it is locked.
//
// A call opens the store for the one job (read-only with or without the integrity check, or
// read-write), runs it, and hands the result back on the caller's thread. A job that finds the
// store locked is retried every kRetryMs until it is free or `patience` has passed; the caller is
// told once, with the line "<db>: locked by another process; retrying", so that its view can show
// it. Past the patience the RunStore error (locked / not writable / damaged) is the result.
//
// Two ways to call: post() returns at once and delivers the result to a callback on the caller's
// thread (dropped when the context object is gone); wait() returns the result, running the
// caller's event loop meanwhile (paint, timers, input all go on), for the views' synchronous
// functions. A view must not start a second store call while one of its own is waiting (each
// view keeps a busy flag).
#pragma once

#include <QObject>
#include <QString>
#include <atomic>
#include <functional>
#include <memory>
#include <optional>

namespace respin {
class RunStore;
}
class QThread;

class StoreService : public QObject {
  Q_OBJECT
 public:
  enum class Access { Read, QuickRead, Write };  // QuickRead: read-only without the integrity check
  static constexpr int kRetryMs = 150;
  static constexpr int kDefaultPatienceMs = 30000;

  // The one service of the application (created on first use, on the GUI thread; stopped when
  // the QCoreApplication goes).
  static StoreService& shared();

  explicit StoreService(QObject* parent = nullptr);
  ~StoreService() override;

  // How long a job waits for a locked store before failing (tests shorten it).
  void setPatience(int ms) { patience_ms_ = ms; }
  int patience() const { return patience_ms_; }

  // The line a view shows while the store is locked.
  static QString lockedText(const QString& db);
  // Whether a RunStore / SQLite error says the store was locked (past the busy timeout).
  static bool isLockedError(const QString& error);

  // Runs job(store) on the store thread; then done(error) on context's thread ("" on success).
  // onLocked(line) on context's thread the first time the job finds the store locked.
  void submit(const QString& db, Access access, std::function<void(respin::RunStore&)> job, QObject* context,
              std::function<void(const QString& error)> done, std::function<void(const QString& line)> onLocked = {});

  // The job's result, or nullopt with *error set; the caller's event loop runs while it waits.
  template <class R>
  std::optional<R> wait(const QString& db, Access access, std::function<R(respin::RunStore&)> job, QString* error,
                        QObject* context, std::function<void(const QString&)> onLocked = {}) {
    auto result = std::make_shared<std::optional<R>>();
    QString err;
    waitFor(db, access, [job, result](respin::RunStore& s) { *result = job(s); }, &err, context, std::move(onLocked));
    if (!err.isEmpty() || !*result) {
      if (error) *error = err.isEmpty() ? QStringLiteral("the store call did not finish") : err;
      return std::nullopt;
    }
    return std::move(*result);
  }

 private:
  void waitFor(const QString& db, Access access, std::function<void(respin::RunStore&)> job, QString* error,
               QObject* context, std::function<void(const QString&)> onLocked);

  QThread* thread_;
  QObject* worker_;  // lives on thread_: jobs are queued calls on it
  std::atomic<int> patience_ms_{kDefaultPatienceMs};
  std::shared_ptr<std::atomic<bool>> stopping_;
};
