// Recording a calibration into the run store (see recorder.h).
#include "core/store/recorder.h"

#include "core/util/error.h"
#include "core/util/error_message.h"

namespace respin {

StoreRecorder::StoreRecorder(RunStore& store, CalibObserver* next, std::optional<int64_t> sweep,
                             std::chrono::milliseconds heartbeat_period)
    : store_(store), next_(next), sweep_(sweep), period_(heartbeat_period) {}

StoreRecorder::~StoreRecorder() = default;

template <class F> std::string StoreRecorder::guarded(F&& f) {
  try {
    f();
  } catch (const std::exception& e) {
    const std::string what = error_message(e);
    if (error_.empty()) error_ = what;
    return what;
  }
  return "";
}

void StoreRecorder::on_started(const RunRecord& partial, const std::string& temp_dir, const std::string& run_dir) {
  guarded([&] {
    RunStart s;
    s.config = partial.config;
    s.model = partial.model;
    s.run_dir = run_dir;
    s.tmp_dir = temp_dir;
    s.sweep_id = sweep_;
    id_ = store_.begin_run(s);
    heartbeat_ = std::make_unique<Heartbeat>(store_, *id_, period_);
  });
  // Without its marker the directory cannot later be proven to be this run's: `runs delete` and
  // `runs clean` would keep it (docs/store.md, "Which folders belong to a run").
  if (id_ && !temp_dir.empty()) guarded([&] { store_.write_run_marker(*id_, temp_dir); });
  if (next_) next_->on_started(partial, temp_dir, run_dir);
}

void StoreRecorder::on_progress(const CalibProgress& p) {
  if (next_) next_->on_progress(p);
}

void StoreRecorder::on_loss(int64_t step, double loss) {
  if (pending_loss_.empty()) pending_first_ = step;
  pending_loss_.push_back(loss);
  // In batches: a reader plotting the curve live sees it at most about a second late.
  if (std::chrono::steady_clock::now() - last_flush_ > std::chrono::seconds(1)) flush_loss();
  if (next_) next_->on_loss(step, loss);
}

void StoreRecorder::flush_loss() {
  last_flush_ = std::chrono::steady_clock::now();
  if (!id_ || pending_loss_.empty()) return;
  guarded([&] { store_.append_loss(*id_, pending_first_, pending_loss_); });
  pending_loss_.clear();
}

void StoreRecorder::on_stats(StatsStage stage, const std::vector<SiteStats>& stats) {
  if (id_) guarded([&] { store_.put_stats(*id_, stage, stats); });
  if (next_) next_->on_stats(stage, stats);
}

void StoreRecorder::finished(const RunRecord& record) {
  flush_loss();
  heartbeat_.reset();
  if (id_) end_error_ = guarded([&] {
    store_.finish_run(*id_, record);
    end_recorded_ = true;
  });
}

void StoreRecorder::stopped(RunStatus status, const std::string& message) {
  flush_loss();
  heartbeat_.reset();
  if (id_) end_error_ = guarded([&] {
    store_.end_run(*id_, status, message);
    end_recorded_ = true;
  });
}

CalibOutcome calibrate_and_record(const CalibConfig& config, const std::string& out_dir, RunStore& store,
                                  RunControl* control, CalibObserver* observer, std::optional<int64_t> sweep,
                                  std::optional<int64_t>* run_id, std::string* store_error, bool* end_recorded) {
  StoreRecorder rec(store, observer, sweep);
  auto report = [&] {
    if (run_id) *run_id = rec.run_id();
    // The failure that matters most: the one that kept the run's end out of the store.
    if (store_error) *store_error = rec.end_recorded() || rec.end_error().empty() ? rec.store_error() : rec.end_error();
    if (end_recorded) *end_recorded = rec.end_recorded();
  };
  try {
    CalibOutcome out = run_calibration(config, out_dir, control, &rec);
    rec.finished(out.record);
    report();
    return out;
  } catch (const Cancelled&) {
    rec.stopped(RunStatus::Cancelled, "cancelled");
    report();
    throw;
  } catch (const std::exception& e) {
    rec.stopped(RunStatus::Failed, error_message(e));
    report();
    throw;
  }
}

}  // namespace respin
