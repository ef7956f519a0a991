// Recording a calibration into the run store while it runs (torch-free header; the pipeline
// itself is core/calib/calibration.h).
//
// The store sees the run as soon as its inputs are loaded (status running, with its temporary
// directory), a heartbeat every two seconds from a thread of its own, the loss curve in batches as
// rotations are learned, the statistics before and after rotation as they are taken, and at the
// end the whole record (finished) or the reason it stopped (cancelled, failed). A process that
// dies without any of that (SIGKILL, power loss) leaves a running run whose heartbeat goes stale:
// readers show it as interrupted, with its leftover temporary directory. As soon as the run is
// begun, the recorder writes the run's marker (kRunMarkerName) into the temporary directory, so
// that the directory, once renamed into place, provably belongs to that run (docs/store.md).
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "core/calib/calibration.h"
#include "core/store/run_store.h"

namespace respin {

class StoreRecorder : public CalibObserver {
 public:
  // `next` (optional) receives every event too (a progress printer, the GUI's adapter).
  StoreRecorder(RunStore& store, CalibObserver* next = nullptr, std::optional<int64_t> sweep = {},
                std::chrono::milliseconds heartbeat_period = std::chrono::milliseconds(2000));
  ~StoreRecorder() override;

  void on_started(const RunRecord& partial, const std::string& temp_dir, const std::string& run_dir) override;
  void on_progress(const CalibProgress& p) override;
  void on_loss(int64_t step, double loss) override;
  void on_stats(StatsStage stage, const std::vector<SiteStats>& stats) override;
  // Live statistics are the next observer's business (a display); the store keeps before/after.
  bool live_site(int& layer, HookSite& site) override { return next_ && next_->live_site(layer, site); }
  void on_live_stats(int64_t step, const SiteStats& stats) override {
    if (next_) next_->on_live_stats(step, stats);
  }

  // After run_calibration returned / threw (calibrate_and_record calls these).
  void finished(const RunRecord& record);
  void stopped(RunStatus status, const std::string& message);  // cancelled or failed

  std::optional<int64_t> run_id() const { return id_; }
  // Store failures while recording do not stop the calibration (its run directory is still
  // written); the first one is kept here for the caller to report.
  const std::string& store_error() const { return error_; }
  // Whether the run's end (finished, or cancelled / failed) reached the store. When it did not,
  // the store still says running (read as interrupted) for run_id().
  bool end_recorded() const { return end_recorded_; }
  const std::string& end_error() const { return end_error_; }  // why it did not

 private:
  void flush_loss();
  template <class F> std::string guarded(F&& f);  // the failure's message, or ""

  RunStore& store_;
  CalibObserver* next_;
  std::optional<int64_t> sweep_;
  std::chrono::milliseconds period_;
  std::optional<int64_t> id_;
  std::unique_ptr<Heartbeat> heartbeat_;
  std::vector<double> pending_loss_;
  int64_t pending_first_ = 0;
  std::chrono::steady_clock::time_point last_flush_{};
  std::string error_;
  bool end_recorded_ = false;
  std::string end_error_;
};

// run_calibration with a StoreRecorder: the run lands in `store` whatever happens. Returns the
// outcome; `run_id` (optional) receives the store's id even when the run throws, `store_error`
// the first store failure and `end_recorded` whether the run's end reached the store.
CalibOutcome calibrate_and_record(const CalibConfig& config, const std::string& out_dir, RunStore& store,
                                  RunControl* control = nullptr, CalibObserver* observer = nullptr,
                                  std::optional<int64_t> sweep = {}, std::optional<int64_t>* run_id = nullptr,
                                  std::string* store_error = nullptr, bool* end_recorded = nullptr);

}  // namespace respin
