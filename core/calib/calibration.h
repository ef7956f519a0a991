// The calibration pipeline as its callers (the `respin` CLI, the workbench) drive it. Torch-free:
// include this, not calibrate.h, from code that has no business with tensors.
//
//   load inputs -> full-precision evaluation -> statistics before rotation -> plan the method
//   -> learn (spinquant, respin) or fix (quarot) rotations, fuse them -> statistics after rotation
//   -> quantize weights (RTN or GPTQ) -> quantized evaluation -> record (the run directory)
//
// The steps are named in Phase. Progress, loss points and statistics reach a CalibObserver while
// the run goes on; cancellation goes through a RunControl. The pipeline has no process-wide side
// effects: it does not set thread counts (the entry point does: core/util/threads.h), and its
// temporary directory has a unique name, so several runs can go on in one process.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/calib/calib_config.h"
#include "core/calib/run_record.h"
#include "core/stats/site_stats.h"
#include "core/util/run_control.h"

namespace respin {

enum class Phase { Load, EvalFp, StatsBefore, Rotate, StatsAfter, Gptq, Quantize, EvalQuant, Write };
constexpr int kPhaseCount = 9;
// "load", "eval-fp", "stats-before", "rotate", "stats-after", "gptq", "quantize", "eval", "write".
const char* phase_name(Phase p);
// "Loading model and texts", "Evaluating full precision", ...: for progress displays.
const char* phase_title(Phase p);
// The phases a config runs, in order (rtn has no rotate/stats-after; 16-bit weights no gptq/quantize).
std::vector<Phase> phases_of(const CalibConfig& config);

struct CalibProgress {
  Phase phase = Phase::Load;
  bool phase_started = false;  // the first event of a phase (done = 0)
  int64_t done = 0;            // units of the phase (windows, steps, layers); 0 when not counted
  int64_t total = 0;
  double phase_fraction = 0;    // done / total, 0..1
  double overall_fraction = 0;  // 0..1 over the whole run: phases weighted by their expected cost
  double elapsed_s = 0;         // since the run started
  double tokens_per_s = 0;      // phase throughput, 0 when not meaningful
  double eta_s = -1;            // seconds left in the phase, -1 if unknown
  double value = 0;             // running perplexity (evaluations), step loss (rotate), layer loss (gptq)
  int layer = -1;               // layer being processed (gptq), -1 otherwise
};

// StatsStage: core/stats/site_stats.h.

// Everything an observer is told happens on the calibration's thread, in order; callbacks must
// return quickly (queue the data for another thread) and must not throw.
class CalibObserver {
 public:
  virtual ~CalibObserver() = default;
  // After the inputs are loaded: what the run is (config with absolute paths, model and data
  // identities), where it writes in the meantime and where it lands.
  virtual void on_started(const RunRecord& /*partial*/, const std::string& /*temp_dir*/,
                          const std::string& /*run_dir*/) {}
  // Rate-limited (about 10 per second), plus the first and last event of each phase.
  virtual void on_progress(const CalibProgress& /*progress*/) {}
  // Every rotation-learning step, unthrottled.
  virtual void on_loss(int64_t /*step*/, double /*loss*/) {}
  // Statistics of the original model (Before) and of what the quantizers see after rotation
  // (After; for rtn the same as Before).
  virtual void on_stats(StatsStage /*stage*/, const std::vector<SiteStats>& /*stats*/) {}
  // While rotations are learned (SpinQuant, ReSpinQuant), about twice a second and at the first
  // and last step: which (layer, site) to summarize live (return false for none). The observer may
  // change its answer at any time (a GUI's layer/site choice); read it from atomics.
  virtual bool live_site(int& /*layer*/, HookSite& /*site*/) { return false; }
  // What the quantizers see at that site in the learning step's own forward, over the step's batch
  // (so its counts differ from on_stats', which cover the statistics windows).
  virtual void on_live_stats(int64_t /*step*/, const SiteStats& /*stats*/) {}
};

struct CalibOutcome {
  std::string run_dir;  // absolute
  RunRecord record;     // what run.json holds
  std::vector<SiteStats> stats_before, stats_after;
};

// The libtorch version core was built with (for About boxes and reports).
const char* libtorch_version();

// The evaluation text a run uses: config.eval_text, else the corpus test split of
// config.data_dir (else default_corpus_dir()). Throws respin::Error naming the file.
struct EvalText {
  std::string source;  // the file, or "corpus test split"
  std::string text;
};
EvalText eval_text_of(const CalibConfig& config);

// Runs the pipeline and writes the run directory `out_dir` (which must not exist; written under a
// unique temporary sibling name and renamed at the end, so a failed or cancelled run leaves
// nothing behind). Throws respin::Error (one line naming the phase and the problem) or
// respin::Cancelled (not an Error) when `control` asked to stop.
CalibOutcome run_calibration(const CalibConfig& config, const std::string& out_dir, RunControl* control = nullptr,
                             CalibObserver* observer = nullptr);

}  // namespace respin
