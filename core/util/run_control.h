// Progress reporting and cancellation for long core operations.
//
// One RunControl is shared between the thread doing the work and whoever watches it (CLI, GUI).
// request_stop() may be called from any thread (or a signal handler: it only stores an atomic).
// The progress callback is invoked on the working thread, at most once per min_interval_ms
// (plus always for the final event), and must not block.
#pragma once

#include <atomic>
#include <chrono>
#include <functional>
#include <string>

#include "core/util/error.h"

namespace respin {

struct ProgressEvent {
  std::string phase;        // e.g. "eval"
  long long done = 0;       // units completed
  long long total = 0;      // total units (0 if unknown)
  double tokens_per_s = 0;  // throughput so far, 0 if not meaningful
  double eta_s = -1;        // estimated seconds left, -1 if unknown
  double value = 0;         // phase-specific running figure (running perplexity, step loss)
  int layer = -1;           // layer being processed, -1 when not layer-wise
};

class RunControl {
 public:
  // A child control sees its parent's stop requests (a pipeline hands a child with its own
  // progress callback to the steps it runs).
  explicit RunControl(const RunControl* parent = nullptr) : parent_(parent) {}
  RunControl(const RunControl&) = delete;
  RunControl& operator=(const RunControl&) = delete;

  using ProgressFn = std::function<void(const ProgressEvent&)>;

  void set_progress_callback(ProgressFn fn, int min_interval_ms = 50) {
    progress_ = std::move(fn);
    min_interval_ = std::chrono::milliseconds(min_interval_ms);
  }
  void request_stop() noexcept { stop_.store(true, std::memory_order_relaxed); }
  bool stop_requested() const noexcept {
    return stop_.load(std::memory_order_relaxed) || (parent_ && parent_->stop_requested());
  }
  // Throws Cancelled when a stop was requested; call between units of work.
  void check() const {
    if (stop_requested()) throw Cancelled();
  }
  // Rate-limited progress; `force` bypasses the limit (use for the last event of a phase).
  void report(const ProgressEvent& ev, bool force = false) {
    if (!progress_) return;
    auto now = std::chrono::steady_clock::now();
    if (!force && now - last_report_ < min_interval_) return;
    last_report_ = now;
    progress_(ev);
  }

 private:
  const RunControl* parent_ = nullptr;
  std::atomic<bool> stop_{false};
  ProgressFn progress_;
  std::chrono::milliseconds min_interval_{50};
  std::chrono::steady_clock::time_point last_report_{};
};

}  // namespace respin
