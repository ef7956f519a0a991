// The GUI's store thread (see StoreService.h).
#include "ui/StoreService.h"

#include <QCoreApplication>
#include <QElapsedTimer>
#include <QEventLoop>
#include <QPointer>
#include <QThread>
#include <chrono>
#include <exception>
#include <thread>

#include "core/store/run_store.h"

namespace {

// Each attempt waits this long for the lock (SQLite's busy timeout); the retry loop does the rest.
constexpr int kAttemptBusyTimeoutMs = 100;

}  // namespace

StoreService& StoreService::shared() {
  static QPointer<StoreService> service;
  if (!service) service = new StoreService(QCoreApplication::instance());
  return *service;
}

StoreService::StoreService(QObject* parent)
    : QObject(parent), thread_(new QThread), worker_(new QObject), stopping_(std::make_shared<std::atomic<bool>>(false)) {
  thread_->setObjectName("respin-store");
  worker_->moveToThread(thread_);
  connect(thread_, &QThread::finished, worker_, &QObject::deleteLater);
  thread_->start();
}

StoreService::~StoreService() {
  stopping_->store(true);  // a job retrying a locked store gives up at once
  thread_->quit();
  thread_->wait();
  delete thread_;
}

QString StoreService::lockedText(const QString& db) { return db + ": locked by another process; retrying"; }

bool StoreService::isLockedError(const QString& error) {
  return error.contains("locked by another process") || error.contains("database is locked") ||
         error.contains("past the busy timeout");
}

void StoreService::submit(const QString& db, Access access, std::function<void(respin::RunStore&)> job,
                          QObject* context, std::function<void(const QString&)> done,
                          std::function<void(const QString&)> onLocked) {
  const int patience = patience_ms_;
  std::shared_ptr<std::atomic<bool>> stopping = stopping_;
  QPointer<QObject> ctx(context);
  auto work = [db, access, job = std::move(job), ctx, done = std::move(done), onLocked = std::move(onLocked), patience,
               stopping]() mutable {
    QElapsedTimer since;
    since.start();
    bool told = false;
    QString error;
    for (;;) {
      try {
        respin::RunStoreOptions o;
        o.busy_timeout_ms = kAttemptBusyTimeoutMs;
        o.quick_check = access == Access::Read;
        const std::string path = db.toStdString();
        respin::RunStore s = access == Access::Write ? respin::RunStore::open(path, o) : respin::RunStore::open_readonly(path, o);
        job(s);
        error.clear();
        break;
      } catch (const std::exception& e) {
        error = QString::fromStdString(e.what());
        if (error.isEmpty()) error = db + ": unknown error";
      }
      if (!isLockedError(error) || since.elapsed() >= patience || stopping->load()) break;
      if (!told && onLocked && ctx) {
        told = true;
        QMetaObject::invokeMethod(ctx.data(), [onLocked, db] { onLocked(lockedText(db)); }, Qt::QueuedConnection);
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(kRetryMs));
    }
    if (ctx) QMetaObject::invokeMethod(ctx.data(), [done, error] { done(error); }, Qt::QueuedConnection);
  };
  QMetaObject::invokeMethod(worker_, std::move(work), Qt::QueuedConnection);
}

void StoreService::waitFor(const QString& db, Access access, std::function<void(respin::RunStore&)> job,
                           QString* error, QObject* context, std::function<void(const QString&)> onLocked) {
  // The result comes back to an object of this frame (the caller's context may go meanwhile).
  QObject receiver;
  QEventLoop loop;
  bool finished = false;
  QString err;
  QPointer<QObject> ctx(context);
  submit(db, access, std::move(job), &receiver,
         [&](const QString& e) {
           err = e;
           finished = true;
           loop.quit();
         },
         [ctx, onLocked](const QString& line) {
           if (ctx && onLocked) onLocked(line);
         });
  if (!finished) loop.exec();
  if (error) *error = err;
}
