// The run store: one SQLite database (conventionally runs.db) holding every calibration run:
// its configuration, model and data identity, status, metrics, phase timings, loss curve,
// per-layer per-site activation statistics before and after rotation, tags and a note. The
// calibration writer records a run as it goes; the GUI reads the store for its runs table, plots,
// statistics grid and run diff. Torch-free, no Qt. Schema, statuses, the heartbeat rule and
// migrations: docs/store.md.
//
// One RunStore is one connection, used by one thread at a time. Several processes may open the
// same file: WAL mode lets readers proceed while a writer writes, and a writer that finds another
// writer waits up to the busy timeout. Every error is a respin::Error naming the database file.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "core/calib/calib_config.h"
#include "core/calib/run_record.h"
#include "core/model/hook_site.h"
#include "core/stats/site_stats.h"
#include "core/store/sqlite.h"

namespace respin {

constexpr int kRunStoreSchemaVersion = 2;

// Stored statuses are running, finished, cancelled, failed and interrupted (by mark_interrupted).
// Interrupted is also derived when reading: a running run whose writer is gone (see
// RunStoreOptions::stale_after and docs/store.md), without writing anything.
enum class RunStatus { Running, Finished, Cancelled, Failed, Interrupted };
const char* run_status_name(RunStatus s);  // "running", ...
RunStatus run_status_from_name(const std::string& name);  // respin::Error if unknown

// Statistics are taken on the model as loaded (before) and after rotation/fusion (after).
// StatsStage: core/stats/site_stats.h.

struct RunStoreOptions {
  int busy_timeout_ms = 5000;
  // A running run whose heartbeat is older than this reads as interrupted. Writers heartbeat
  // every few seconds (Heartbeat's default period is 5 s); keep this several periods longer.
  std::chrono::milliseconds stale_after{30000};
  // PRAGMA quick_check on open (reads the whole file once; on by default so that a damaged file
  // is reported on open rather than halfway through a query).
  bool quick_check = true;
};

// What begin_run records before the run computes anything.
struct RunStart {
  CalibConfig config;
  ModelIdentity model;
  std::string run_dir;  // the final run directory (absolute)
  std::string tmp_dir;  // where the run writes while running; empty if none
  std::optional<int64_t> sweep_id;
  int64_t pid = 0;       // of the writer; 0: this process
  std::string hostname;  // of the writer; empty: this host
  std::string uuid;      // empty: a random UUID v4
};

struct RunFilter {
  std::optional<std::string> model;  // exact model folder
  std::optional<Method> method;
  std::optional<RunStatus> status;   // derived status (running and interrupted as read now)
  std::optional<std::string> tag;
  std::optional<int64_t> sweep;
};

struct RunSummary {
  int64_t id = 0;
  std::string uuid;
  std::optional<int64_t> sweep_id;
  RunStatus status = RunStatus::Running;  // derived: interrupted if the writer is gone
  std::string message;                    // why it failed / was cancelled / was interrupted
  std::string created, started, ended;    // ISO 8601 UTC with milliseconds; ended empty while running
  std::optional<int64_t> heartbeat_unix_ms;
  int64_t pid = 0;
  std::string hostname;
  std::string model_folder, model_architecture;
  Method method = Method::Rtn;
  int wbits = 16, abits = 16, kvbits = 16;
  int64_t rank = 0;                      // as configured
  std::optional<int64_t> applied_rank;   // from the record (-1: no skip corrections)
  WeightQuantizer weight_quantizer = WeightQuantizer::Rtn;
  std::optional<double> fp_perplexity, quantized_perplexity, calibration_seconds, total_seconds;
  std::vector<std::string> tags;  // sorted
  std::string run_dir;
  std::string tmp_dir;  // empty once finished (or cleared)
};

struct LossPoint {
  int64_t step = 0;
  double loss = 0;  // NaN stays NaN
};

struct RunDetail {
  RunSummary summary;
  CalibConfig config;
  std::string config_json, config_sha256;
  ModelIdentity model;
  std::string respin_version;
  std::optional<RunRecord> record;  // present once finished
  std::string note;
  std::vector<std::pair<std::string, double>> phases_seconds;  // in order
  std::vector<LossPoint> loss;                                 // by step
};

enum class SeriesX { Rank, WBits, ABits, KvBits };
enum class SeriesY {
  QuantizedPerplexity, FpPerplexity, EvalTokensPerS, CalibrationSeconds, TotalSeconds, PeakRssBytes,
  OnlineParameters, OnlineMacsPerToken,
};

struct SeriesQuery {
  std::vector<int64_t> ids;      // these runs, or
  std::optional<int64_t> sweep;  // the runs of a sweep (both empty: every run)
  SeriesX x = SeriesX::Rank;
  SeriesY y = SeriesY::QuantizedPerplexity;
};

// One finished run with both values present, ordered by x then id. For x = Rank the run's
// applied rank; runs without skip corrections (applied rank -1) are left out.
struct SeriesPoint {
  int64_t run_id = 0;
  double x = 0, y = 0;
  Method method = Method::Rtn;
  std::string label;  // CalibConfig::label()
};

// The scalars of one (layer, site) cell, without the histogram and channel maxima.
struct SiteSummary {
  int layer = 0;
  HookSite site = HookSite::AttnInput;
  int64_t count = 0, nonfinite = 0, channels = 0;
  double mean_square = 0, kurtosis = 0, absmax = 0, max_median_ratio = 0;
};

struct Sweep {
  int64_t id = 0;
  std::string created, kind, model, description;
};

// The file a recorded run keeps in its directory (written into the temporary directory before
// the run is renamed into place): {"run_id", "uuid", "store"}. It is what proves that a folder
// belongs to a run; docs/store.md ("Which folders belong to a run").
constexpr const char* kRunMarkerName = ".respin-run.json";

// Whether a folder provably belongs to a run: its marker names the run's uuid, or it has no
// marker and its run.json holds exactly the record stored for the run (runs recorded before
// markers existed, runs brought in by import_run). `reason` says why not.
struct DirOwnership {
  bool owned = false;
  std::string reason;
};
DirOwnership run_dir_ownership(const std::string& dir, const std::string& uuid, const std::string& record_json);

// What delete_run removed from the store. run_dir and tmp_dir are the directories that belong to
// the run (see run_dir_ownership), for the caller to remove; a recorded directory that does not
// belong to it is left out and explained in `kept`.
struct DeletedRun {
  std::string run_dir;            // empty: none, missing, or not the run's
  std::string tmp_dir;            // likewise
  std::vector<std::string> kept;  // "kept DIR: it does not belong to run N (reason)"
};

// What import_run did.
struct ImportedRun {
  int64_t id = 0;
  bool repaired = false;          // an existing row (named by the directory's marker) was completed
  RunStatus previous = RunStatus::Finished;  // its status before (repaired only)
};

class RunStore {
 public:
  // Creates the file when absent (its directory must exist) at the current schema; upgrades an
  // older schema in one transaction; refuses a newer schema, a file that is not SQLite, an empty
  // file and a damaged one, leaving their bytes untouched.
  static RunStore open(const std::string& path, const RunStoreOptions& options = {});
  // For readers that must not write: the file must exist at the current schema; every writing
  // method throws.
  static RunStore open_readonly(const std::string& path, const RunStoreOptions& options = {});

  RunStore(RunStore&&) noexcept = default;
  RunStore& operator=(RunStore&&) noexcept = default;

  const std::string& path() const { return db_.path(); }
  bool read_only() const { return read_only_; }
  const RunStoreOptions& options() const { return options_; }
  void set_stale_after(std::chrono::milliseconds d) { options_.stale_after = d; }
  int schema_version() const;

  // ---- Writing a run ----
  int64_t begin_run(const RunStart& start);  // status running, heartbeat now
  void heartbeat(int64_t id);
  // Steps first_step, first_step + 1, ... (0-based, like TrainingRecord::loss); a step already
  // stored is replaced.
  void append_loss(int64_t id, int64_t first_step, const std::vector<double>& loss);
  // Replaces the stored cells with the same (layer, site). Each histogram must have
  // kHistogramBins bins.
  void put_stats(int64_t id, StatsStage stage, const std::vector<SiteStats>& stats);
  // Status finished; metrics, identities, phases (and the loss curve, when the record has one)
  // from the record; run_dir = the record's final directory given at begin_run; tmp dir cleared.
  void finish_run(int64_t id, const RunRecord& record);
  // Status cancelled or failed (anything else is an error) with a message; the tmp dir stays
  // recorded until clear_tmp_dir or delete_run.
  void end_run(int64_t id, RunStatus status, const std::string& message);
  // Writes kRunMarkerName for run `id` into `dir` (atomically). The recorder calls it on the
  // temporary directory as soon as the run is begun.
  void write_run_marker(int64_t id, const std::string& dir) const;
  // A complete run directory (its run.json, and stats.json when present) as a finished run.
  // When the directory's marker names a run of this store that did not finish (interrupted by a
  // kill or a full disk after its directory was complete, failed on its final rename) that run
  // is completed and its run_dir set to `dir`; otherwise a new finished run is inserted. Refuses
  // a directory already recorded as a finished run, and a run that is still running.
  ImportedRun import_run(const std::string& dir);

  // ---- Reading ----
  std::vector<RunSummary> list_runs(const RunFilter& filter = {}) const;  // by id
  std::optional<RunDetail> get_run(int64_t id) const;
  std::vector<SeriesPoint> series(const SeriesQuery& query) const;
  std::vector<SiteSummary> layer_stats_summary(int64_t id, StatsStage stage) const;  // by layer, site
  std::optional<SiteStats> site_stats(int64_t id, StatsStage stage, int layer, HookSite site) const;
  std::vector<Sweep> list_sweeps() const;

  // ---- Curating ----
  void add_tag(int64_t id, const std::string& tag);
  void remove_tag(int64_t id, const std::string& tag);
  void set_note(int64_t id, const std::string& note);
  // Refuses a run that is running (and not interrupted). Children rows go with it. Returns the
  // directories that belong to the run (see DeletedRun); the store itself only deletes rows.
  DeletedRun delete_run(int64_t id);
  // delete_run of every id in one transaction: all of them, or (an unknown or running id) none.
  std::vector<DeletedRun> delete_runs(const std::vector<int64_t>& ids);
  int64_t create_sweep(const std::string& kind, const std::string& model, const std::string& description);

  // Runs that read as interrupted (derived or marked); tmp_dir is the leftover temporary
  // directory (empty once cleared).
  std::vector<RunSummary> stale_runs() const;
  // Stores the derived interrupted status; refuses a run that still reads as running.
  void mark_interrupted(int64_t id);
  void clear_tmp_dir(int64_t id);

 private:
  RunStore(sqlite::Database db, RunStoreOptions options, bool read_only)
      : db_(std::move(db)), options_(options), read_only_(read_only) {}
  void require_writable(const char* what) const;
  int64_t insert_run(const RunStart& start, int64_t now_ms);
  void write_finished(int64_t id, const RunRecord& record);
  void write_stats(int64_t id, StatsStage stage, const std::vector<SiteStats>& stats);
  DeletedRun delete_one(int64_t id);
  [[noreturn]] void no_run(int64_t id) const;
  RunStatus derive_status(RunStatus stored, std::optional<int64_t> heartbeat_ms, int64_t pid,
                          const std::string& host) const;

  mutable sqlite::Database db_;  // mutable: reads open a (read) transaction for one snapshot
  RunStoreOptions options_;
  bool read_only_ = false;
};

// Calls heartbeat(id) every `period` on a connection of its own from a background thread,
// until destroyed. Opening the connection is the only thing that throws; a failing heartbeat
// (the database locked past the busy timeout, the disk full) is retried next period and the
// last failure kept in last_error().
class Heartbeat {
 public:
  Heartbeat(const RunStore& store, int64_t id, std::chrono::milliseconds period = std::chrono::milliseconds(5000));
  ~Heartbeat();
  Heartbeat(const Heartbeat&) = delete;
  Heartbeat& operator=(const Heartbeat&) = delete;
  std::string last_error() const;

 private:
  void loop();

  RunStore store_;
  int64_t id_;
  std::chrono::milliseconds period_;
  mutable std::mutex mutex_;
  std::condition_variable cv_;
  bool stop_ = false;
  std::string last_error_;
  std::thread thread_;
};

}  // namespace respin
