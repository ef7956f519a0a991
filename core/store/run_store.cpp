// The run store (see run_store.h and docs/store.md).
#include "core/store/run_store.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <map>
#include <random>

#include <sqlite3.h>

#include "core/io/atomic_file.h"
#include "core/stats/site_stats.h"
#include "core/util/error.h"
#include "core/util/sha256.h"
#include "core/util/version.h"

namespace respin {

namespace fs = std::filesystem;
using nlohmann::json;
using sqlite::Database;
using sqlite::Statement;
using sqlite::Transaction;

namespace {

// ---- Small helpers ----

int64_t now_unix_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::string iso_utc(int64_t unix_ms) {
  const time_t s = static_cast<time_t>(unix_ms / 1000);
  tm t{};
  gmtime_r(&s, &t);
  char buf[80];  // sized for any int fields, which silences -Wformat-truncation
  std::snprintf(buf, sizeof buf, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", t.tm_year + 1900, t.tm_mon + 1, t.tm_mday,
                t.tm_hour, t.tm_min, t.tm_sec, static_cast<int>(unix_ms % 1000));
  return buf;
}

// Where a writer's pid can be asked about: the host name and the PID namespace ("pid:[inode]").
// Containers that share a host name but not a pid space get different identities, so a live
// writer in one is never judged dead by a kill(pid, 0) in the other; a row written without the
// namespace (older versions) is judged by its heartbeat alone.
std::string this_hostname() {
  char buf[256] = {};
  if (gethostname(buf, sizeof buf - 1) != 0) return "";
  std::string id = buf;
  char ns[64] = {};
  const ssize_t n = ::readlink("/proc/self/ns/pid", ns, sizeof ns - 1);
  if (n > 0) id += " " + std::string(ns, static_cast<size_t>(n));
  return id;
}

std::string random_uuid() {
  std::random_device rd;
  unsigned char b[16];
  for (int i = 0; i < 16; i += 4) {
    const uint32_t r = rd();
    std::memcpy(b + i, &r, 4);
  }
  b[6] = static_cast<unsigned char>((b[6] & 0x0f) | 0x40);  // version 4
  b[8] = static_cast<unsigned char>((b[8] & 0x3f) | 0x80);  // RFC 4122 variant
  char out[37];
  std::snprintf(out, sizeof out, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", b[0], b[1],
                b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]);
  return out;
}

// Tests make a writer die, or fail as on a full disk, inside one of its write transactions:
// RESPIN_STORE_FAULT=<operation>:kill or <operation>:full (docs/store.md, "Fault injection").
void fault_point(const std::string& path, const char* operation) {
  const char* env = std::getenv("RESPIN_STORE_FAULT");
  if (!env) return;
  const std::string v = env, op = operation;
  if (v == op + ":kill") ::raise(SIGKILL);
  if (v == op + ":full") throw Error(path + ": " + op + ": database or disk is full (RESPIN_STORE_FAULT)");
}

bool has_control_bytes(const std::string& s) {
  for (unsigned char c : s)
    if (c < 0x20 || c == 0x7f) return true;
  return false;
}

// "<path>: " stripped from an error that already names the file, so that a wrapper can say it once.
std::string without_path(const std::string& what, const std::string& path) {
  const std::string prefix = path + ": ";
  return what.compare(0, prefix.size(), prefix) == 0 ? what.substr(prefix.size()) : what;
}


// ---- Schema ----
//
// The schema is built by applying migrations from version 0 (an empty file), so a new file and an
// upgraded old one go through the same statements. The DDL of a released version never changes:
// files in the wild were made by it. docs/store.md shows the current (v2) schema.

// v1: runs with their phases, loss curve and statistics; no sweeps, tags, notes, heartbeats.
constexpr const char* kSchemaV1 = R"sql(
CREATE TABLE schema_version (version INTEGER NOT NULL);
CREATE TABLE runs (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  uuid TEXT NOT NULL UNIQUE,
  status TEXT NOT NULL CHECK (status IN ('running', 'finished', 'cancelled', 'failed')),
  message TEXT NOT NULL DEFAULT '',
  created TEXT NOT NULL,
  started TEXT,
  ended TEXT,
  config_json TEXT NOT NULL,
  config_sha256 TEXT NOT NULL,
  method TEXT NOT NULL,
  wbits INTEGER NOT NULL,
  abits INTEGER NOT NULL,
  kvbits INTEGER NOT NULL,
  rank INTEGER NOT NULL,
  applied_rank INTEGER,
  weight_quantizer TEXT NOT NULL,
  model_folder TEXT NOT NULL,
  model_architecture TEXT NOT NULL DEFAULT '',
  model_parameters INTEGER,
  model_hidden_size INTEGER,
  model_intermediate_size INTEGER,
  model_layers INTEGER,
  model_heads INTEGER,
  model_kv_heads INTEGER,
  model_head_dim INTEGER,
  model_vocab_size INTEGER,
  model_sha256 TEXT NOT NULL DEFAULT '',
  calib_source TEXT,
  calib_bytes INTEGER,
  calib_sha256 TEXT,
  eval_source TEXT,
  eval_bytes INTEGER,
  eval_sha256 TEXT,
  respin_version TEXT NOT NULL,
  device TEXT,
  compute_dtype TEXT,
  seed INTEGER NOT NULL,
  fp_perplexity REAL,
  quantized_perplexity REAL,
  eval_tokens_per_s REAL,
  calibration_seconds REAL,
  total_seconds REAL,
  peak_rss_bytes INTEGER,
  online_parameters INTEGER,
  online_macs_per_token INTEGER,
  record_json TEXT,
  run_dir TEXT NOT NULL
);
CREATE INDEX runs_model ON runs(model_folder);
CREATE TABLE run_phases (
  run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
  seq INTEGER NOT NULL,
  phase TEXT NOT NULL,
  seconds REAL NOT NULL,
  PRIMARY KEY (run_id, seq)
) WITHOUT ROWID;
CREATE TABLE run_loss (
  run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
  step INTEGER NOT NULL,
  loss REAL,
  PRIMARY KEY (run_id, step)
) WITHOUT ROWID;
CREATE TABLE site_stats (
  id INTEGER PRIMARY KEY,
  run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
  stage TEXT NOT NULL CHECK (stage IN ('before', 'after')),
  layer INTEGER NOT NULL,
  site TEXT NOT NULL,
  count INTEGER NOT NULL,
  nonfinite INTEGER NOT NULL,
  sum_sq REAL,
  sum_4th REAL,
  mean_square REAL,
  kurtosis REAL,
  absmax REAL,
  max_median_ratio REAL,
  channels INTEGER NOT NULL,
  histogram BLOB NOT NULL,
  channel_absmax BLOB NOT NULL,
  UNIQUE (run_id, stage, layer, site)
);
)sql";

// The runs columns v1 and v2 share (copied by the v1 -> v2 rebuild).
constexpr const char* kRunsV1Columns =
    "id, uuid, status, message, created, started, ended, config_json, config_sha256, method, wbits, abits, "
    "kvbits, rank, applied_rank, weight_quantizer, model_folder, model_architecture, model_parameters, "
    "model_hidden_size, model_intermediate_size, model_layers, model_heads, model_kv_heads, model_head_dim, "
    "model_vocab_size, model_sha256, calib_source, calib_bytes, calib_sha256, eval_source, eval_bytes, "
    "eval_sha256, respin_version, device, compute_dtype, seed, fp_perplexity, quantized_perplexity, "
    "eval_tokens_per_s, calibration_seconds, total_seconds, peak_rss_bytes, online_parameters, "
    "online_macs_per_token, record_json, run_dir";

// v2: sweeps, tags, notes, the writer's heartbeat/pid/host, the tmp dir and the stored
// 'interrupted' status. The status CHECK changes, which SQLite's ALTER TABLE cannot do, so runs
// is rebuilt (https://sqlite.org/lang_altertable.html#otheralter); its children keep their rows
// and their references by name.
constexpr const char* kMigrateV1ToV2 = R"sql(
CREATE TABLE sweeps (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  created TEXT NOT NULL,
  kind TEXT NOT NULL,
  model TEXT NOT NULL,
  description TEXT NOT NULL DEFAULT ''
);
CREATE TABLE runs_v2 (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  uuid TEXT NOT NULL UNIQUE,
  sweep_id INTEGER REFERENCES sweeps(id) ON DELETE SET NULL,
  status TEXT NOT NULL CHECK (status IN ('running', 'finished', 'cancelled', 'failed', 'interrupted')),
  message TEXT NOT NULL DEFAULT '',
  created TEXT NOT NULL,
  started TEXT,
  ended TEXT,
  heartbeat_ms INTEGER,
  pid INTEGER,
  hostname TEXT,
  config_json TEXT NOT NULL,
  config_sha256 TEXT NOT NULL,
  method TEXT NOT NULL,
  wbits INTEGER NOT NULL,
  abits INTEGER NOT NULL,
  kvbits INTEGER NOT NULL,
  rank INTEGER NOT NULL,
  applied_rank INTEGER,
  weight_quantizer TEXT NOT NULL,
  model_folder TEXT NOT NULL,
  model_architecture TEXT NOT NULL DEFAULT '',
  model_parameters INTEGER,
  model_hidden_size INTEGER,
  model_intermediate_size INTEGER,
  model_layers INTEGER,
  model_heads INTEGER,
  model_kv_heads INTEGER,
  model_head_dim INTEGER,
  model_vocab_size INTEGER,
  model_sha256 TEXT NOT NULL DEFAULT '',
  calib_source TEXT,
  calib_bytes INTEGER,
  calib_sha256 TEXT,
  eval_source TEXT,
  eval_bytes INTEGER,
  eval_sha256 TEXT,
  respin_version TEXT NOT NULL,
  device TEXT,
  compute_dtype TEXT,
  seed INTEGER NOT NULL,
  fp_perplexity REAL,
  quantized_perplexity REAL,
  eval_tokens_per_s REAL,
  calibration_seconds REAL,
  total_seconds REAL,
  peak_rss_bytes INTEGER,
  online_parameters INTEGER,
  online_macs_per_token INTEGER,
  record_json TEXT,
  run_dir TEXT NOT NULL,
  tmp_dir TEXT,
  note TEXT NOT NULL DEFAULT ''
);
INSERT INTO runs_v2 (%COLUMNS%) SELECT %COLUMNS% FROM runs;
DROP TABLE runs;
ALTER TABLE runs_v2 RENAME TO runs;
CREATE INDEX runs_model ON runs(model_folder);
CREATE INDEX runs_sweep ON runs(sweep_id);
CREATE INDEX runs_status ON runs(status);
CREATE TABLE run_tags (
  run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
  tag TEXT NOT NULL,
  PRIMARY KEY (run_id, tag)
) WITHOUT ROWID;
CREATE INDEX run_tags_tag ON run_tags(tag);
)sql";

void migrate_to_v1(Database& db) { db.exec(std::string("-- schema v1\n") + kSchemaV1); }

void migrate_to_v2(Database& db) {
  // AUTOINCREMENT promises that ids of deleted runs are never reused; dropping runs forgets its
  // high-water mark, so carry it over.
  const int64_t seq = db.query_int64("SELECT seq FROM sqlite_sequence WHERE name = 'runs'");
  std::string sql = std::string("-- schema v1 -> v2\n") + kMigrateV1ToV2;
  for (size_t at; (at = sql.find("%COLUMNS%")) != std::string::npos;) sql.replace(at, 9, kRunsV1Columns);
  db.exec(sql);
  db.exec("DELETE FROM sqlite_sequence WHERE name = 'runs'");
  Statement s = db.prepare(
      "INSERT INTO sqlite_sequence (name, seq) VALUES ('runs', max(:seq, (SELECT coalesce(max(id), 0) FROM runs)))");
  s.bind_int64(":seq", seq).run();
}

struct Migration {
  int to;
  void (*apply)(Database&);
};
constexpr Migration kMigrations[] = {{1, migrate_to_v1}, {2, migrate_to_v2}};
static_assert(sizeof(kMigrations) / sizeof(kMigrations[0]) == kRunStoreSchemaVersion, "one migration per version");

// 0 when the file has no schema_version table (a file being created).
int read_version(const Database& db) {
  if (db.query_int64("SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'") == 0)
    return 0;
  Statement s = db.prepare("SELECT version FROM schema_version");
  if (!s.step()) throw Error(db.path() + ": not a respin run store (schema_version is empty)");
  const int64_t v = s.column_int64(0);
  if (s.step()) throw Error(db.path() + ": not a respin run store (schema_version has several rows)");
  if (v < 1) throw Error(db.path() + ": not a respin run store (schema version " + std::to_string(v) + ")");
  return static_cast<int>(std::min<int64_t>(v, 1 << 30));
}

std::string newer_message(const std::string& path, int version) {
  return path + ": schema version " + std::to_string(version) + " is newer than this respin knows (" +
         std::to_string(kRunStoreSchemaVersion) + "); upgrade respin";
}

// Brings db to the current schema in one transaction; a no-op when another process got there
// first (the version is read again under the write lock).
void migrate(Database& db) {
  // Rebuilding a parent table must not fire its ON DELETE CASCADE, and foreign_keys cannot be
  // changed inside a transaction.
  db.exec("PRAGMA foreign_keys = OFF");
  struct RestoreForeignKeys {
    Database& db;
    ~RestoreForeignKeys() {
      try {
        db.exec("PRAGMA foreign_keys = ON");
      } catch (...) {
      }
    }
  } restore{db};
  Transaction t(db);  // rolled back (before foreign keys are restored) unless committed
  const int from = read_version(db);
  if (from > kRunStoreSchemaVersion) throw Error(newer_message(db.path(), from));
  if (from == kRunStoreSchemaVersion) return;
  for (const Migration& m : kMigrations)
    if (m.to > from) m.apply(db);
  Statement check = db.prepare("PRAGMA foreign_key_check");
  if (check.step())
    throw Error(db.path() + ": upgrading to schema version " + std::to_string(kRunStoreSchemaVersion) +
                " found rows of table " + check.column_text(0) + " referring to missing rows of " +
                check.column_text(2) + "; the file is unchanged");
  check.reset();
  db.exec("DELETE FROM schema_version");
  db.prepare("INSERT INTO schema_version (version) VALUES (:v)").bind_int64(":v", kRunStoreSchemaVersion).run();
  t.commit();
}

// ---- Validating a file before SQLite writes to it ----

uint32_t be16(const unsigned char* p) { return (uint32_t(p[0]) << 8) | p[1]; }
uint32_t be32(const unsigned char* p) {
  return (uint32_t(p[0]) << 24) | (uint32_t(p[1]) << 16) | (uint32_t(p[2]) << 8) | p[3];
}

// SQLite treats an empty file as an empty database and would happily write a schema into a file
// that is something else entirely; so look at the bytes first. The header fields used are from
// https://sqlite.org/fileformat2.html#the_database_header.
//
// stat() before opening (no descriptor), then the bytes through the connection's own file handle
// (Database::read_file_start): a descriptor of our own, once closed, would drop the POSIX locks
// of every connection this process already has on the file (the workbench's views and a run's
// heartbeat open the store beside the recorder) and let other processes corrupt it.
void check_path(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) throw Error(path + ": cannot open: " + std::strerror(errno));
  if (S_ISDIR(st.st_mode)) throw Error(path + ": is a directory, not a run store");
  if (st.st_size == 0) throw Error(path + ": empty file, not a run store (SQLite database)");
}

void check_header(const std::string& path, const Database& db) {
  int64_t size = 0;
  const std::string bytes = db.read_file_start(100, &size);
  const auto* h = reinterpret_cast<const unsigned char*>(bytes.data());
  const size_t n = bytes.size();
  if (size == 0) throw Error(path + ": empty file, not a run store (SQLite database)");
  if (n < 16 || std::memcmp(h, "SQLite format 3\0", 16) != 0)
    throw Error(path + ": not a run store (the file is not an SQLite database)");
  if (n < 100) throw Error(path + ": truncated SQLite database (" + std::to_string(n) + " bytes)");
  const uint32_t page = be16(h + 16) == 1 ? 65536 : be16(h + 16);
  if (page < 512 || page > 65536 || (page & (page - 1)) != 0)
    throw Error(path + ": damaged SQLite database (page size " + std::to_string(page) + " in its header)");
  // The in-header page count is valid when the version-valid-for number matches the change
  // counter. Without a live WAL file the main file must hold every page; with one, a checkpoint
  // may be half done and SQLite's own recovery decides.
  const uint32_t pages = be32(h + 28);
  std::error_code ec;
  const auto wal_size = std::filesystem::file_size(path + "-wal", ec);
  const bool live_wal = !ec && wal_size > 0;
  if (!live_wal && be32(h + 92) == be32(h + 24) && pages > 0 &&
      static_cast<uint64_t>(size) < uint64_t(pages) * page)
    throw Error(path + ": truncated SQLite database (its header counts " + std::to_string(pages) + " pages of " +
                std::to_string(page) + " bytes, the file has " + std::to_string(size) + " bytes)");
}

// The newest schema's file at `path`, made at a temporary name in the same directory and moved
// into place only when complete, so that another process never sees a half-made store (it would
// see an empty file). false when another process created `path` first.
bool create_new(const std::string& path, const RunStoreOptions& options) {
  namespace fs = std::filesystem;
  fs::path parent = fs::path(path).parent_path();
  if (parent.empty()) parent = ".";
  std::error_code ec;
  if (!fs::is_directory(parent, ec))
    throw Error(path + ": cannot create the run store: directory " + parent.string() + " does not exist");
  char suffix[40];
  std::snprintf(suffix, sizeof suffix, ".new-%d-%08x", static_cast<int>(getpid()), std::random_device{}());
  const std::string tmp = path + suffix;
  auto remove_tmp = [&] {
    for (const char* ext : {"", "-journal", "-wal", "-shm"}) ::unlink((tmp + ext).c_str());
  };
  try {
    Database db(tmp, Database::Mode::ReadWriteCreate, options.busy_timeout_ms);
    migrate(db);
    db.exec("PRAGMA journal_mode = WAL");  // persistent: recorded in the file header
  } catch (const Error& e) {
    remove_tmp();
    throw Error(path + ": cannot create the run store: " + without_path(e.what(), tmp));
  }
  // The connection is closed: the WAL is checkpointed and gone, the file stands alone.
  // link() fails with EEXIST instead of replacing, unlike rename().
  if (::link(tmp.c_str(), path.c_str()) != 0) {
    const int err = errno;
    if (err != EEXIST && (err == EPERM || err == ENOTSUP || err == EOPNOTSUPP || err == EMLINK)) {
      // No hard links on this file system: rename, accepting the small race.
      struct stat st {};
      if (::stat(path.c_str(), &st) == 0) {
        remove_tmp();
        return false;
      }
      if (::rename(tmp.c_str(), path.c_str()) != 0) {
        const int rerr = errno;
        remove_tmp();
        throw Error(path + ": cannot create the run store: " + std::strerror(rerr));
      }
      return true;
    }
    remove_tmp();
    if (err == EEXIST) return false;
    throw Error(path + ": cannot create the run store: " + std::strerror(err));
  }
  remove_tmp();
  return true;
}

std::string folder_of(const std::string& path) {
  const fs::path parent = fs::path(path).parent_path();
  return parent.empty() ? std::string(".") : parent.string();
}

// A store that cannot be read for a reason other than its content: locked by another process, or
// in a folder where SQLite cannot create its -wal and -shm files. nullopt: not such a case.
std::optional<Error> access_problem(const std::string& path, const Database& db, const RunStoreOptions& options) {
  const int code = sqlite3_extended_errcode(db.handle()) & 0xff;
  if (code == SQLITE_BUSY || code == SQLITE_LOCKED)
    return Error(path + ": locked by another process (it held the lock past the busy timeout of " +
                 std::to_string(options.busy_timeout_ms) + " ms); try again once it has finished");
  if (code == SQLITE_CANTOPEN || code == SQLITE_READONLY || code == SQLITE_IOERR || code == SQLITE_PERM) {
    const std::string folder = folder_of(path);
    if (::access(folder.c_str(), W_OK) != 0) {
      const std::string why = std::strerror(errno);
      const std::string name = fs::path(path).filename().string();
      return Error(path + ": the folder " + folder + " is not writable (" + why + "); SQLite needs to create " + name +
                   "-wal and " + name + "-shm beside the store (copy the store to a writable folder to read it)");
    }
  }
  return std::nullopt;
}

Database open_checked(const std::string& path, const RunStoreOptions& options, bool read_only);

// Opens an existing file after checking it; leaves it byte for byte as it was when refusing it.
Database open_existing(const std::string& path, const RunStoreOptions& options, bool read_only) {
  check_path(path);
  return open_checked(path, options, read_only);
}

Database open_checked(const std::string& path, const RunStoreOptions& options, bool read_only) {
  Database db(path, read_only ? Database::Mode::ReadOnly : Database::Mode::ReadWrite, options.busy_timeout_ms);
  check_header(path, db);
  // SQLite opens a file it may not write read-only without saying so; a writer would find out at
  // its first write (a calibration: after all its work).
  if (!read_only && sqlite3_db_readonly(db.handle(), "main") == 1) {
    const std::string why = ::access(path.c_str(), W_OK) != 0 ? std::strerror(errno) : "opened read-only";
    throw Error(path + ": the run store is read-only (" + why + "); nothing can be recorded in it (use another --db, "
                "or --no-store)");
  }
  // Closing the last connection of a WAL database checkpoints it into the main file; a file we
  // end up refusing should not be written even that way.
  sqlite3_db_config(db.handle(), SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, 1, nullptr);
  int version = 0;
  try {
    if (options.quick_check) {
      Statement s = db.prepare("PRAGMA quick_check");
      std::string first = s.step() ? s.column_text(0) : std::string("no result");
      if (first != "ok") {
        // The report is several lines ("*** in database main ***\nPage 3: ..."); keep the first
        // problem so the error stays one line.
        const std::string banner = "*** in database main ***\n";
        if (first.rfind(banner, 0) == 0) first = first.substr(banner.size());
        first = first.substr(0, first.find('\n'));
        throw Error(path + ": damaged database (integrity check: " + first + ")");
      }
    }
    version = read_version(db);
  } catch (const Error& e) {
    if (std::optional<Error> a = access_problem(path, db, options)) throw *a;
    const std::string what = without_path(e.what(), path);
    if (what.rfind("damaged", 0) == 0 || what.rfind("not a respin", 0) == 0) throw;
    throw Error(path + ": damaged or not a run store: " + what);
  }
  if (version == 0) throw Error(path + ": not a respin run store (an SQLite database without a schema_version table)");
  if (version > kRunStoreSchemaVersion) throw Error(newer_message(path, version));
  if (version < kRunStoreSchemaVersion) {
    if (read_only)
      throw Error(path + ": schema version " + std::to_string(version) + " is older than this respin's (" +
                  std::to_string(kRunStoreSchemaVersion) + "); open it once read-write to upgrade it");
    try {
      migrate(db);
    } catch (const Error&) {
      if (std::optional<Error> a = access_problem(path, db, options)) throw *a;
      throw;
    }
  }
  sqlite3_db_config(db.handle(), SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, 0, nullptr);
  try {
    if (read_only) {
      db.exec("PRAGMA query_only = ON");
    } else {
      // A journal mode change needs the write lock; skip it when it is already WAL so that opening
      // does not wait for another writer.
      if (db.query_text("PRAGMA journal_mode") != "wal") db.exec("PRAGMA journal_mode = WAL");
      // In WAL mode NORMAL cannot corrupt the file; a power cut may lose the last commits.
      db.exec("PRAGMA synchronous = NORMAL");
    }
    db.exec("PRAGMA foreign_keys = ON");
  } catch (const Error&) {
    if (std::optional<Error> a = access_problem(path, db, options)) throw *a;
    throw;
  }
  return db;
}

// ---- Row helpers ----

constexpr const char* kSummaryColumns =
    "id, uuid, sweep_id, status, message, created, started, ended, heartbeat_ms, pid, hostname, model_folder, "
    "model_architecture, method, wbits, abits, kvbits, rank, applied_rank, weight_quantizer, fp_perplexity, "
    "quantized_perplexity, calibration_seconds, total_seconds, run_dir, tmp_dir";
constexpr int kSummaryColumnCount = 26;

template <class F>
auto parse_field(const std::string& path, int64_t id, F&& f) -> decltype(f()) {
  try {
    return f();
  } catch (const Error& e) {
    throw Error(path + ": run " + std::to_string(id) + ": " + e.what());
  }
}

RunSummary read_summary(const Statement& s, const std::string& path) {
  RunSummary r;
  r.id = s.column_int64(0);
  r.uuid = s.column_text(1);
  r.sweep_id = s.column_int64_opt(2);
  r.status = parse_field(path, r.id, [&] { return run_status_from_name(s.column_text(3)); });
  r.message = s.column_text(4);
  r.created = s.column_text(5);
  r.started = s.column_text(6);
  r.ended = s.column_text(7);
  r.heartbeat_unix_ms = s.column_int64_opt(8);
  r.pid = s.column_int64(9);
  r.hostname = s.column_text(10);
  r.model_folder = s.column_text(11);
  r.model_architecture = s.column_text(12);
  r.method = parse_field(path, r.id, [&] { return method_from_name(s.column_text(13)); });
  r.wbits = static_cast<int>(s.column_int64(14));
  r.abits = static_cast<int>(s.column_int64(15));
  r.kvbits = static_cast<int>(s.column_int64(16));
  r.rank = s.column_int64(17);
  r.applied_rank = s.column_int64_opt(18);
  r.weight_quantizer = parse_field(path, r.id, [&] { return weight_quantizer_from_name(s.column_text(19)); });
  r.fp_perplexity = s.column_double_opt(20);
  r.quantized_perplexity = s.column_double_opt(21);
  r.calibration_seconds = s.column_double_opt(22);
  r.total_seconds = s.column_double_opt(23);
  r.run_dir = s.column_text(24);
  r.tmp_dir = s.column_text(25);
  return r;
}

void bind_config(Statement& s, const CalibConfig& c) {
  const std::string json = calib_config_to_json(c);
  s.bind_text(":config_json", json)
      .bind_text(":config_sha256", sha256_hex(json))
      .bind_text(":method", method_name(c.method))
      .bind_int64(":wbits", c.wbits)
      .bind_int64(":abits", c.abits)
      .bind_int64(":kvbits", c.kvbits)
      .bind_int64(":rank", c.rank)
      .bind_text(":weight_quantizer", weight_quantizer_name(c.weight_quantizer))
      // SQLite integers are signed: a seed >= 2^63 is stored as its two's complement bit pattern.
      .bind_int64(":seed", static_cast<int64_t>(c.seed));
}

void bind_model(Statement& s, const ModelIdentity& m) {
  s.bind_text(":model_folder", m.folder)
      .bind_text(":model_architecture", m.architecture)
      .bind_int64(":model_parameters", m.parameters)
      .bind_int64(":model_hidden_size", m.hidden_size)
      .bind_int64(":model_intermediate_size", m.intermediate_size)
      .bind_int64(":model_layers", m.layers)
      .bind_int64(":model_heads", m.heads)
      .bind_int64(":model_kv_heads", m.kv_heads)
      .bind_int64(":model_head_dim", m.head_dim)
      .bind_int64(":model_vocab_size", m.vocab_size)
      .bind_text(":model_sha256", m.sha256);
}

constexpr const char* kModelAssignments =
    "model_folder = :model_folder, model_architecture = :model_architecture, model_parameters = :model_parameters, "
    "model_hidden_size = :model_hidden_size, model_intermediate_size = :model_intermediate_size, "
    "model_layers = :model_layers, model_heads = :model_heads, model_kv_heads = :model_kv_heads, "
    "model_head_dim = :model_head_dim, model_vocab_size = :model_vocab_size, model_sha256 = :model_sha256";

bool is_live(RunStatus s) { return s == RunStatus::Running; }

}  // namespace

// ---- Names ----

const char* run_status_name(RunStatus s) {
  switch (s) {
    case RunStatus::Running: return "running";
    case RunStatus::Finished: return "finished";
    case RunStatus::Cancelled: return "cancelled";
    case RunStatus::Failed: return "failed";
    case RunStatus::Interrupted: return "interrupted";
  }
  return "?";
}

RunStatus run_status_from_name(const std::string& name) {
  for (RunStatus s : {RunStatus::Running, RunStatus::Finished, RunStatus::Cancelled, RunStatus::Failed,
                      RunStatus::Interrupted})
    if (name == run_status_name(s)) return s;
  throw Error("unknown run status '" + name + "' (running, finished, cancelled, failed, interrupted)");
}


// ---- Opening ----

RunStore RunStore::open(const std::string& path, const RunStoreOptions& options) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) {
    if (errno != ENOENT) throw Error(path + ": cannot open: " + std::strerror(errno));
    create_new(path, options);  // false: someone else made it meanwhile; open theirs
  }
  return RunStore(open_existing(path, options, false), options, false);
}

RunStore RunStore::open_readonly(const std::string& path, const RunStoreOptions& options) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) throw Error(path + ": cannot open the run store: " + std::strerror(errno));
  return RunStore(open_existing(path, options, true), options, true);
}

int RunStore::schema_version() const { return read_version(db_); }

void RunStore::require_writable(const char* what) const {
  if (read_only_) throw Error(path() + ": " + what + ": the run store was opened read-only");
}

void RunStore::no_run(int64_t id) const { throw Error(path() + ": no run " + std::to_string(id)); }

RunStatus RunStore::derive_status(RunStatus stored, std::optional<int64_t> heartbeat_ms, int64_t pid,
                                  const std::string& host) const {
  if (stored != RunStatus::Running) return stored;
  if (!heartbeat_ms || now_unix_ms() - *heartbeat_ms > options_.stale_after.count()) return RunStatus::Interrupted;
  // Only a pid on this machine can be asked; elsewhere the heartbeat alone decides. EPERM means
  // the process exists under another user.
  if (pid > 0 && host == this_hostname() && ::kill(static_cast<pid_t>(pid), 0) == -1 && errno == ESRCH)
    return RunStatus::Interrupted;
  return RunStatus::Running;
}

// ---- Writing a run ----

int64_t RunStore::begin_run(const RunStart& start) {
  require_writable("begin_run");
  Transaction t(db_);
  const int64_t id = insert_run(start, now_unix_ms());
  fault_point(path(), "begin_run");
  t.commit();
  return id;
}

int64_t RunStore::insert_run(const RunStart& start, int64_t now) {
  if (start.sweep_id) {
    Statement q = db_.prepare("SELECT 1 FROM sweeps WHERE id = :id");
    if (!q.bind_int64(":id", *start.sweep_id).step())
      throw Error(path() + ": begin_run: no sweep " + std::to_string(*start.sweep_id));
  }
  Statement s = db_.prepare(
      "INSERT INTO runs (uuid, sweep_id, status, created, started, heartbeat_ms, pid, hostname, config_json, "
      "config_sha256, method, wbits, abits, kvbits, rank, weight_quantizer, model_folder, model_architecture, "
      "model_parameters, model_hidden_size, model_intermediate_size, model_layers, model_heads, model_kv_heads, "
      "model_head_dim, model_vocab_size, model_sha256, respin_version, device, seed, run_dir, tmp_dir) VALUES "
      "(:uuid, :sweep_id, 'running', :created, :created, :heartbeat, :pid, :hostname, :config_json, "
      ":config_sha256, :method, :wbits, :abits, :kvbits, :rank, :weight_quantizer, :model_folder, "
      ":model_architecture, :model_parameters, :model_hidden_size, :model_intermediate_size, :model_layers, "
      ":model_heads, :model_kv_heads, :model_head_dim, :model_vocab_size, :model_sha256, :respin_version, "
      ":device, :seed, :run_dir, :tmp_dir)");
  s.bind_text(":uuid", start.uuid.empty() ? random_uuid() : start.uuid)
      .bind_int64(":sweep_id", start.sweep_id)
      .bind_text(":created", iso_utc(now))
      .bind_int64(":heartbeat", now)
      .bind_int64(":pid", start.pid ? start.pid : static_cast<int64_t>(getpid()))
      .bind_text(":hostname", start.hostname.empty() ? this_hostname() : start.hostname)
      .bind_text(":respin_version", RESPIN_VERSION_STRING)
      .bind_text(":device", device_choice_name(start.config.device))
      .bind_text(":run_dir", start.run_dir)
      .bind_text(":tmp_dir", start.tmp_dir.empty() ? std::nullopt : std::optional<std::string>(start.tmp_dir));
  bind_config(s, start.config);
  bind_model(s, start.model);
  s.run();
  return db_.last_insert_rowid();
}

void RunStore::heartbeat(int64_t id) {
  require_writable("heartbeat");
  Transaction t(db_);
  Statement s = db_.prepare("UPDATE runs SET heartbeat_ms = :now WHERE id = :id AND status = 'running'");
  s.bind_int64(":now", now_unix_ms()).bind_int64(":id", id).run();
  if (db_.changes() == 0) {
    // A run that ended meanwhile is not an error (the heartbeat thread may beat once more).
    Statement q = db_.prepare("SELECT 1 FROM runs WHERE id = :id");
    if (!q.bind_int64(":id", id).step()) no_run(id);
  }
  t.commit();
}

void RunStore::append_loss(int64_t id, int64_t first_step, const std::vector<double>& loss) {
  require_writable("append_loss");
  Transaction t(db_);
  if (!db_.prepare("SELECT 1 FROM runs WHERE id = :id").bind_int64(":id", id).step()) no_run(id);
  Statement s = db_.prepare("INSERT OR REPLACE INTO run_loss (run_id, step, loss) VALUES (:id, :step, :loss)");
  s.bind_int64(":id", id);
  for (size_t i = 0; i < loss.size(); ++i) {
    s.bind_int64(":step", first_step + static_cast<int64_t>(i)).bind_double(":loss", loss[i]).run();
  }
  fault_point(path(), "append_loss");
  t.commit();
}

void RunStore::put_stats(int64_t id, StatsStage stage, const std::vector<SiteStats>& stats) {
  require_writable("put_stats");
  for (const SiteStats& st : stats)
    if (st.histogram.size() != size_t(kHistogramBins))
      throw Error(path() + ": put_stats: layer " + std::to_string(st.layer) + " site " + hook_site_name(st.site) +
                  ": histogram has " + std::to_string(st.histogram.size()) + " bins, expected " +
                  std::to_string(kHistogramBins));
  Transaction t(db_);
  if (!db_.prepare("SELECT 1 FROM runs WHERE id = :id").bind_int64(":id", id).step()) no_run(id);
  write_stats(id, stage, stats);
  t.commit();
}

void RunStore::write_stats(int64_t id, StatsStage stage, const std::vector<SiteStats>& stats) {
  Statement s = db_.prepare(
      "INSERT OR REPLACE INTO site_stats (run_id, stage, layer, site, count, nonfinite, sum_sq, sum_4th, "
      "mean_square, kurtosis, absmax, max_median_ratio, channels, histogram, channel_absmax) VALUES (:id, :stage, "
      ":layer, :site, :count, :nonfinite, :sum_sq, :sum_4th, :mean_square, :kurtosis, :absmax, :mmr, :channels, "
      ":histogram, :channel_absmax)");
  s.bind_int64(":id", id).bind_text(":stage", stats_stage_name(stage));
  for (const SiteStats& st : stats) {
    const std::string hist = sqlite::encode_le_int64(st.histogram);
    const std::string absmax = sqlite::encode_le_float64(st.channel_absmax);
    s.bind_int64(":layer", st.layer)
        .bind_text(":site", hook_site_name(st.site))
        .bind_int64(":count", st.count)
        .bind_int64(":nonfinite", st.nonfinite)
        .bind_double(":sum_sq", st.sum_sq)
        .bind_double(":sum_4th", st.sum_4th)
        .bind_double(":mean_square", st.mean_square())
        .bind_double(":kurtosis", st.kurtosis())
        .bind_double(":absmax", st.absmax())
        .bind_double(":mmr", st.max_median_ratio())
        .bind_int64(":channels", static_cast<int64_t>(st.channel_absmax.size()))
        .bind_blob(":histogram", hist.data(), hist.size())
        .bind_blob(":channel_absmax", absmax.data(), absmax.size())
        .run();
  }
}

void RunStore::finish_run(int64_t id, const RunRecord& record) {
  require_writable("finish_run");
  Transaction t(db_);
  {
    Statement q = db_.prepare("SELECT status FROM runs WHERE id = :id");
    if (!q.bind_int64(":id", id).step()) no_run(id);
    const std::string status = q.column_text(0);
    if (status != "running" && status != "interrupted")
      throw Error(path() + ": finish_run: run " + std::to_string(id) + " is already " + status);
  }
  write_finished(id, record);
  fault_point(path(), "finish_run");
  t.commit();
}

void RunStore::write_finished(int64_t id, const RunRecord& record) {
  const std::string record_json = run_record_to_json(record).dump();
  const int64_t now = now_unix_ms();
  Statement s = db_.prepare(
      std::string("UPDATE runs SET status = 'finished', message = '', ended = :ended, heartbeat_ms = :now, "
                  "config_json = :config_json, config_sha256 = :config_sha256, method = :method, wbits = :wbits, "
                  "abits = :abits, kvbits = :kvbits, rank = :rank, applied_rank = :applied_rank, "
                  "weight_quantizer = :weight_quantizer, seed = :seed, ") +
      kModelAssignments +
      ", calib_source = :calib_source, calib_bytes = :calib_bytes, calib_sha256 = :calib_sha256, "
      "eval_source = :eval_source, eval_bytes = :eval_bytes, eval_sha256 = :eval_sha256, "
      "respin_version = :respin_version, device = :device, compute_dtype = :compute_dtype, "
      "fp_perplexity = :fp_ppl, quantized_perplexity = :q_ppl, eval_tokens_per_s = :tps, "
      "calibration_seconds = :calib_s, total_seconds = :total_s, peak_rss_bytes = :rss, "
      "online_parameters = :online_params, online_macs_per_token = :online_macs, record_json = :record_json, "
      "tmp_dir = NULL WHERE id = :id");
  bind_config(s, record.config);
  bind_model(s, record.model);
  const ResultsRecord& res = record.results;
  s.bind_int64(":id", id)
      .bind_text(":ended", iso_utc(now))
      .bind_int64(":now", now)
      .bind_int64(":applied_rank", record.method.rank)
      .bind_text(":calib_source", record.calibration.data.source)
      .bind_int64(":calib_bytes", record.calibration.data.bytes)
      .bind_text(":calib_sha256", record.calibration.data.sha256)
      .bind_text(":eval_source", res.eval_data.source)
      .bind_int64(":eval_bytes", res.eval_data.bytes)
      .bind_text(":eval_sha256", res.eval_data.sha256)
      .bind_text(":respin_version", record.respin_version)
      .bind_text(":device", record.timing.device)
      .bind_text(":compute_dtype", record.compute.weights_and_activations)
      .bind_double(":fp_ppl", res.fp_perplexity)
      .bind_double(":q_ppl", res.quantized_perplexity)
      .bind_double(":tps", res.eval_tokens_per_s)
      .bind_double(":calib_s", record.timing.calibration_seconds)
      .bind_double(":total_s", record.timing.total_seconds)
      .bind_int64(":rss", record.peak_rss_bytes)
      .bind_int64(":online_params", record.method.online_parameters)
      .bind_int64(":online_macs", record.method.online_macs_per_token)
      .bind_text(":record_json", record_json)
      .run();

  db_.prepare("DELETE FROM run_phases WHERE run_id = :id").bind_int64(":id", id).run();
  Statement ph = db_.prepare("INSERT INTO run_phases (run_id, seq, phase, seconds) VALUES (:id, :seq, :phase, :s)");
  ph.bind_int64(":id", id);
  for (size_t i = 0; i < record.timing.phases_seconds.size(); ++i) {
    const auto& [phase, seconds] = record.timing.phases_seconds[i];
    ph.bind_int64(":seq", static_cast<int64_t>(i)).bind_text(":phase", phase).bind_double(":s", seconds).run();
  }
  // The record's curve is the complete one; what was appended while running may have gaps.
  if (record.method.training && !record.method.training->loss.empty()) {
    db_.prepare("DELETE FROM run_loss WHERE run_id = :id").bind_int64(":id", id).run();
    Statement ls = db_.prepare("INSERT INTO run_loss (run_id, step, loss) VALUES (:id, :step, :loss)");
    ls.bind_int64(":id", id);
    const auto& loss = record.method.training->loss;
    for (size_t i = 0; i < loss.size(); ++i)
      ls.bind_int64(":step", static_cast<int64_t>(i)).bind_double(":loss", loss[i]).run();
  }
}

void RunStore::end_run(int64_t id, RunStatus status, const std::string& message) {
  require_writable("end_run");
  if (status != RunStatus::Cancelled && status != RunStatus::Failed)
    throw Error(path() + ": end_run: status must be cancelled or failed, not " + run_status_name(status));
  Transaction t(db_);
  Statement q = db_.prepare("SELECT status FROM runs WHERE id = :id");
  if (!q.bind_int64(":id", id).step()) no_run(id);
  const std::string stored = q.column_text(0);
  q.reset();
  if (stored != "running" && stored != "interrupted")
    throw Error(path() + ": end_run: run " + std::to_string(id) + " is already " + stored);
  db_.prepare("UPDATE runs SET status = :status, message = :message, ended = :ended WHERE id = :id")
      .bind_text(":status", run_status_name(status))
      .bind_text(":message", message)
      .bind_text(":ended", iso_utc(now_unix_ms()))
      .bind_int64(":id", id)
      .run();
  fault_point(path(), "end_run");
  t.commit();
}

void RunStore::write_run_marker(int64_t id, const std::string& dir) const {
  Statement q = db_.prepare("SELECT uuid FROM runs WHERE id = :id");
  if (!q.bind_int64(":id", id).step()) no_run(id);
  const json j = {{"run_id", id}, {"uuid", q.column_text(0)}, {"store", fs::absolute(path()).string()}};
  q.reset();
  write_file_atomically((fs::path(dir) / kRunMarkerName).string(),
                        j.dump(2, ' ', false, json::error_handler_t::replace) + "\n");
}

namespace {

std::string marker_uuid(const std::string& dir) {
  const std::string marker = (fs::path(dir) / kRunMarkerName).string();
  std::error_code ec;
  if (fs::symlink_status(marker, ec).type() == fs::file_type::not_found) return "";
  try {
    const json j = json::parse(read_text_file(marker));
    const std::string uuid = j.at("uuid").get<std::string>();
    if (uuid.empty()) throw Error("empty uuid");
    return uuid;
  } catch (const std::exception& e) {
    throw Error(marker + ": not a run marker (" + e.what() + ")");
  }
}

std::string normal_dir(const std::string& dir) {
  fs::path p = fs::absolute(dir).lexically_normal();
  if (!p.has_filename() && p.has_parent_path() && p != p.root_path()) p = p.parent_path();
  return p.string();
}

}  // namespace

DirOwnership run_dir_ownership(const std::string& dir, const std::string& uuid, const std::string& record_json) {
  std::error_code ec;
  const fs::file_type type = fs::symlink_status(dir, ec).type();
  if (type == fs::file_type::not_found) return {false, "it does not exist"};
  if (type != fs::file_type::directory) return {false, "it is not a directory"};
  std::string found;
  try {
    found = marker_uuid(dir);
  } catch (const Error&) {
    return {false, std::string("its ") + kRunMarkerName + " is unreadable"};
  }
  if (!found.empty()) {
    if (found == uuid) return {true, ""};
    return {false, std::string("its ") + kRunMarkerName + " names another run, " + found};
  }
  const std::string run_json = (fs::path(dir) / "run.json").string();
  if (!fs::is_regular_file(run_json, ec)) return {false, std::string("no ") + kRunMarkerName + " and no run.json"};
  if (record_json.empty())
    return {false, std::string("no ") + kRunMarkerName + ", and the store holds no record to compare its run.json with"};
  // Both sides through the same reader and writer, so that a record an older respin wrote (a
  // field it did not have yet, read with its default) compares equal to itself.
  json stored;
  try {
    stored = run_record_to_json(run_record_from_json(json::parse(record_json), "the stored record"));
  } catch (const std::exception&) {
    return {false, std::string("no ") + kRunMarkerName + ", and the store's record of the run is unreadable"};
  }
  try {
    const json disk = run_record_to_json(run_record_from_json(json::parse(read_text_file(run_json)), run_json));
    if (disk == stored) return {true, ""};
  } catch (const std::exception&) {
    return {false, "its run.json is unreadable"};
  }
  return {false, "its run.json records another run"};
}

ImportedRun RunStore::import_run(const std::string& dir_in) {
  require_writable("import_run");
  const std::string dir = normal_dir(dir_in);
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) throw Error(dir + ": no such run directory");
  const std::string run_json = dir + "/run.json";
  if (!fs::is_regular_file(run_json, ec)) throw Error(dir + ": not a run directory (no run.json)");
  json j;
  try {
    j = json::parse(read_text_file(run_json));
  } catch (const json::exception& e) {
    throw Error(run_json + ": not valid JSON (" + e.what() + ")");
  }
  const RunRecord record = run_record_from_json(j, run_json);
  if (!fs::is_regular_file(dir + "/model/config.json", ec))
    throw Error(dir + ": not a complete run directory (no model/config.json)");
  std::vector<SiteStats> before, after;
  const std::string stats_path = dir + "/stats.json";
  if (fs::is_regular_file(stats_path, ec)) {
    try {
      const json st = json::parse(read_text_file(stats_path));
      before = stats_from_json(st.at("before"));
      after = stats_from_json(st.at("after"));
    } catch (const std::exception& e) {
      throw Error(stats_path + ": " + e.what());
    }
  }
  const std::string uuid = marker_uuid(dir);

  Transaction t(db_);
  ImportedRun out;
  std::optional<int64_t> id;
  if (!uuid.empty()) {
    Statement q = db_.prepare("SELECT id, status, heartbeat_ms, pid, hostname, run_dir FROM runs WHERE uuid = :uuid");
    if (q.bind_text(":uuid", uuid).step()) {
      const int64_t found = q.column_int64(0);
      const RunStatus status =
          derive_status(parse_field(path(), found, [&] { return run_status_from_name(q.column_text(1)); }),
                        q.column_int64_opt(2), q.column_int64(3), q.column_text(4));
      const std::string recorded_dir = q.column_text(5);
      if (status == RunStatus::Finished)
        throw Error(dir + ": already recorded as run " + std::to_string(found) + " in " + path() +
                    (recorded_dir != dir ? " (at " + recorded_dir + ")" : std::string()));
      if (status == RunStatus::Running)
        throw Error(path() + ": run " + std::to_string(found) + " is still running (its writer heartbeats); import " +
                    dir + " once it has ended");
      id = found;
      out.repaired = true;
      out.previous = status;
    }
  }
  if (!id) {
    Statement q = db_.prepare("SELECT id FROM runs WHERE run_dir = :dir AND status = 'finished'");
    if (q.bind_text(":dir", dir).step())
      throw Error(dir + ": already recorded as run " + std::to_string(q.column_int64(0)) + " in " + path());
    q.reset();
    RunStart s;
    s.config = record.config;
    s.model = record.model;
    s.run_dir = dir;
    // A run made against another store (a GPU server's) keeps the identity its marker names, so
    // the folder belongs to the imported row here too and `runs delete` may remove it.
    s.uuid = uuid;
    id = insert_run(s, now_unix_ms());
  }
  write_finished(*id, record);
  db_.prepare("UPDATE runs SET run_dir = :dir, tmp_dir = NULL, message = :message WHERE id = :id")
      .bind_text(":dir", dir)
      .bind_text(":message", out.repaired ? std::string("recorded by import (it read ") + run_status_name(out.previous) + ")"
                                          : std::string("imported"))
      .bind_int64(":id", *id)
      .run();
  if (!before.empty()) write_stats(*id, StatsStage::Before, before);
  if (!after.empty()) write_stats(*id, StatsStage::After, after);
  t.commit();
  out.id = *id;
  return out;
}

// ---- Reading ----

namespace {

std::map<int64_t, std::vector<std::string>> load_tags(const Database& db) {
  std::map<int64_t, std::vector<std::string>> tags;
  Statement s = db.prepare("SELECT run_id, tag FROM run_tags ORDER BY run_id, tag");
  while (s.step()) tags[s.column_int64(0)].push_back(s.column_text(1));
  return tags;
}

}  // namespace

std::vector<RunSummary> RunStore::list_runs(const RunFilter& filter) const {
  std::string sql = std::string("SELECT ") + kSummaryColumns + " FROM runs WHERE 1";
  if (filter.model) sql += " AND model_folder = :model";
  if (filter.method) sql += " AND method = :method";
  if (filter.status) {
    // Running and interrupted are told apart after reading (derived), the rest by the column.
    const bool live = *filter.status == RunStatus::Running || *filter.status == RunStatus::Interrupted;
    sql += live ? " AND status IN ('running', 'interrupted')" : " AND status = :status";
  }
  if (filter.tag) sql += " AND EXISTS (SELECT 1 FROM run_tags t WHERE t.run_id = runs.id AND t.tag = :tag)";
  if (filter.sweep) sql += " AND sweep_id = :sweep";
  sql += " ORDER BY id";

  Transaction t(db_, Transaction::Kind::Deferred);  // one snapshot for runs and tags
  Statement s = db_.prepare(sql);
  if (filter.model) s.bind_text(":model", *filter.model);
  if (filter.method) s.bind_text(":method", method_name(*filter.method));
  if (filter.status && *filter.status != RunStatus::Running && *filter.status != RunStatus::Interrupted)
    s.bind_text(":status", run_status_name(*filter.status));
  if (filter.tag) s.bind_text(":tag", *filter.tag);
  if (filter.sweep) s.bind_int64(":sweep", *filter.sweep);
  std::vector<RunSummary> runs;
  while (s.step()) {
    RunSummary r = read_summary(s, path());
    r.status = derive_status(r.status, r.heartbeat_unix_ms, r.pid, r.hostname);
    if (filter.status && r.status != *filter.status) continue;
    runs.push_back(std::move(r));
  }
  const auto tags = load_tags(db_);
  t.commit();
  for (RunSummary& r : runs)
    if (auto it = tags.find(r.id); it != tags.end()) r.tags = it->second;
  return runs;
}

std::optional<RunDetail> RunStore::get_run(int64_t id) const {
  Transaction t(db_, Transaction::Kind::Deferred);
  Statement s = db_.prepare(std::string("SELECT ") + kSummaryColumns +
                            ", config_json, config_sha256, respin_version, record_json, note, model_parameters, "
                            "model_hidden_size, model_intermediate_size, model_layers, model_heads, model_kv_heads, "
                            "model_head_dim, model_vocab_size, model_sha256 FROM runs WHERE id = :id");
  if (!s.bind_int64(":id", id).step()) return std::nullopt;
  static_assert(kSummaryColumnCount == 26, "column indices below");
  RunDetail d;
  d.summary = read_summary(s, path());
  RunSummary& r = d.summary;
  r.status = derive_status(r.status, r.heartbeat_unix_ms, r.pid, r.hostname);
  const std::string source = path() + ": run " + std::to_string(id);
  d.config_json = s.column_text(26);
  d.config = calib_config_from_json(d.config_json, source + " config");
  d.config_sha256 = s.column_text(27);
  d.respin_version = s.column_text(28);
  if (!s.column_is_null(29)) {
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(s.column_text(29));
    } catch (const nlohmann::json::exception& e) {
      throw Error(source + ": stored run record is not JSON: " + e.what());
    }
    d.record = run_record_from_json(j, source + " record");
  }
  d.note = s.column_text(30);
  d.model.folder = r.model_folder;
  d.model.architecture = r.model_architecture;
  d.model.parameters = s.column_int64(31);
  d.model.hidden_size = s.column_int64(32);
  d.model.intermediate_size = s.column_int64(33);
  d.model.layers = s.column_int64(34);
  d.model.heads = s.column_int64(35);
  d.model.kv_heads = s.column_int64(36);
  d.model.head_dim = s.column_int64(37);
  d.model.vocab_size = s.column_int64(38);
  d.model.sha256 = s.column_text(39);

  Statement tg = db_.prepare("SELECT tag FROM run_tags WHERE run_id = :id ORDER BY tag");
  tg.bind_int64(":id", id);
  while (tg.step()) r.tags.push_back(tg.column_text(0));
  Statement ph = db_.prepare("SELECT phase, seconds FROM run_phases WHERE run_id = :id ORDER BY seq");
  ph.bind_int64(":id", id);
  while (ph.step()) d.phases_seconds.emplace_back(ph.column_text(0), ph.column_double_or_nan(1));
  Statement ls = db_.prepare("SELECT step, loss FROM run_loss WHERE run_id = :id ORDER BY step");
  ls.bind_int64(":id", id);
  while (ls.step()) d.loss.push_back({ls.column_int64(0), ls.column_double_or_nan(1)});
  t.commit();
  return d;
}

std::vector<SeriesPoint> RunStore::series(const SeriesQuery& query) const {
  // Column names come from these fixed tables, never from the caller.
  const char* x = "applied_rank";
  switch (query.x) {
    case SeriesX::Rank: x = "applied_rank"; break;
    case SeriesX::WBits: x = "wbits"; break;
    case SeriesX::ABits: x = "abits"; break;
    case SeriesX::KvBits: x = "kvbits"; break;
  }
  const char* y = "quantized_perplexity";
  switch (query.y) {
    case SeriesY::QuantizedPerplexity: y = "quantized_perplexity"; break;
    case SeriesY::FpPerplexity: y = "fp_perplexity"; break;
    case SeriesY::EvalTokensPerS: y = "eval_tokens_per_s"; break;
    case SeriesY::CalibrationSeconds: y = "calibration_seconds"; break;
    case SeriesY::TotalSeconds: y = "total_seconds"; break;
    case SeriesY::PeakRssBytes: y = "peak_rss_bytes"; break;
    case SeriesY::OnlineParameters: y = "online_parameters"; break;
    case SeriesY::OnlineMacsPerToken: y = "online_macs_per_token"; break;
  }
  std::string sql = std::string("SELECT id, ") + x + ", " + y + ", method, config_json FROM runs WHERE status = "
                    "'finished' AND " + x + " IS NOT NULL AND " + y + " IS NOT NULL";
  if (query.x == SeriesX::Rank) sql += " AND applied_rank >= 0";
  if (!query.ids.empty()) {
    sql += " AND id IN (";
    for (size_t i = 0; i < query.ids.size(); ++i) sql += (i ? ", " : "") + std::to_string(query.ids[i]);
    sql += ")";
  }
  if (query.sweep) sql += " AND sweep_id = :sweep";
  sql += std::string(" ORDER BY ") + x + ", id";
  Statement s = db_.prepare(sql);
  if (query.sweep) s.bind_int64(":sweep", *query.sweep);
  std::vector<SeriesPoint> points;
  while (s.step()) {
    SeriesPoint p;
    p.run_id = s.column_int64(0);
    p.x = s.column_double(1);
    p.y = s.column_double(2);
    p.method = parse_field(path(), p.run_id, [&] { return method_from_name(s.column_text(3)); });
    p.label = calib_config_from_json(s.column_text(4), path() + ": run " + std::to_string(p.run_id) + " config")
                  .label();
    points.push_back(std::move(p));
  }
  return points;
}

std::vector<SiteSummary> RunStore::layer_stats_summary(int64_t id, StatsStage stage) const {
  // The blobs are the last columns of the row, so these scalars are read without touching the
  // overflow pages that hold the channel maxima.
  Statement s = db_.prepare(
      "SELECT layer, site, count, nonfinite, channels, mean_square, kurtosis, absmax, max_median_ratio "
      "FROM site_stats WHERE run_id = :id AND stage = :stage");
  s.bind_int64(":id", id).bind_text(":stage", stats_stage_name(stage));
  std::vector<SiteSummary> out;
  while (s.step()) {
    SiteSummary c;
    c.layer = static_cast<int>(s.column_int64(0));
    c.site = parse_field(path(), id, [&] { return hook_site_from_name(s.column_text(1)); });
    c.count = s.column_int64(2);
    c.nonfinite = s.column_int64(3);
    c.channels = s.column_int64(4);
    c.mean_square = s.column_double_or_nan(5);
    c.kurtosis = s.column_double_or_nan(6);
    c.absmax = s.column_double_or_nan(7);
    c.max_median_ratio = s.column_double_or_nan(8);
    out.push_back(c);
  }
  std::sort(out.begin(), out.end(), [](const SiteSummary& a, const SiteSummary& b) {
    return a.layer != b.layer ? a.layer < b.layer : static_cast<int>(a.site) < static_cast<int>(b.site);
  });
  return out;
}

std::optional<SiteStats> RunStore::site_stats(int64_t id, StatsStage stage, int layer, HookSite site) const {
  Statement s = db_.prepare(
      "SELECT count, nonfinite, sum_sq, sum_4th, histogram, channel_absmax FROM site_stats "
      "WHERE run_id = :id AND stage = :stage AND layer = :layer AND site = :site");
  s.bind_int64(":id", id)
      .bind_text(":stage", stats_stage_name(stage))
      .bind_int64(":layer", layer)
      .bind_text(":site", hook_site_name(site));
  if (!s.step()) return std::nullopt;
  const std::string what = path() + ": run " + std::to_string(id) + " " + stats_stage_name(stage) + " layer " +
                           std::to_string(layer) + " " + hook_site_name(site);
  SiteStats st;
  st.layer = layer;
  st.site = site;
  st.count = s.column_int64(0);
  st.nonfinite = s.column_int64(1);
  st.sum_sq = s.column_double_or_nan(2);
  st.sum_4th = s.column_double_or_nan(3);
  st.histogram = sqlite::decode_le_int64(s.column_blob(4), what + " histogram");
  if (st.histogram.size() != size_t(kHistogramBins))
    throw Error(what + ": histogram has " + std::to_string(st.histogram.size()) + " bins, expected " +
                std::to_string(kHistogramBins));
  st.channel_absmax = sqlite::decode_le_float64(s.column_blob(5), what + " channel_absmax");
  return st;
}

std::vector<Sweep> RunStore::list_sweeps() const {
  Statement s = db_.prepare("SELECT id, created, kind, model, description FROM sweeps ORDER BY id");
  std::vector<Sweep> out;
  while (s.step()) out.push_back({s.column_int64(0), s.column_text(1), s.column_text(2), s.column_text(3), s.column_text(4)});
  return out;
}

// ---- Curating ----

void RunStore::add_tag(int64_t id, const std::string& tag) {
  require_writable("add_tag");
  if (tag.empty()) throw Error(path() + ": add_tag: empty tag");
  if (has_control_bytes(tag))
    throw Error(path() + ": add_tag: a tag is one line of printable text (this one holds a newline or control character)");
  Transaction t(db_);
  if (!db_.prepare("SELECT 1 FROM runs WHERE id = :id").bind_int64(":id", id).step()) no_run(id);
  db_.prepare("INSERT OR IGNORE INTO run_tags (run_id, tag) VALUES (:id, :tag)")
      .bind_int64(":id", id)
      .bind_text(":tag", tag)
      .run();
  t.commit();
}

void RunStore::remove_tag(int64_t id, const std::string& tag) {
  require_writable("remove_tag");
  Transaction t(db_);
  db_.prepare("DELETE FROM run_tags WHERE run_id = :id AND tag = :tag").bind_int64(":id", id).bind_text(":tag", tag).run();
  t.commit();
}

void RunStore::set_note(int64_t id, const std::string& note) {
  require_writable("set_note");
  Transaction t(db_);
  db_.prepare("UPDATE runs SET note = :note WHERE id = :id").bind_text(":note", note).bind_int64(":id", id).run();
  if (db_.changes() == 0) no_run(id);
  t.commit();
}

DeletedRun RunStore::delete_run(int64_t id) {
  require_writable("delete_run");
  Transaction t(db_);
  DeletedRun out = delete_one(id);
  t.commit();
  return out;
}

std::vector<DeletedRun> RunStore::delete_runs(const std::vector<int64_t>& ids) {
  require_writable("delete_run");
  Transaction t(db_);
  std::vector<DeletedRun> out;
  for (int64_t id : ids) out.push_back(delete_one(id));  // a throw rolls every deletion back
  t.commit();
  return out;
}

DeletedRun RunStore::delete_one(int64_t id) {
  Statement q = db_.prepare(
      "SELECT status, heartbeat_ms, pid, hostname, run_dir, tmp_dir, uuid, record_json FROM runs WHERE id = :id");
  if (!q.bind_int64(":id", id).step()) no_run(id);
  const RunStatus status = derive_status(parse_field(path(), id, [&] { return run_status_from_name(q.column_text(0)); }),
                                         q.column_int64_opt(1), q.column_int64(2), q.column_text(3));
  if (is_live(status))
    throw Error(path() + ": run " + std::to_string(id) + " is still running; cancel it before deleting it");
  const std::string run_dir = q.column_text(4), tmp_dir = q.column_text(5), uuid = q.column_text(6),
                    record_json = q.column_text(7);
  q.reset();
  // Only what provably belongs to this run is handed back for removal: the folder now at the
  // recorded path may be another run's (a later run with the same --out) or the user's.
  DeletedRun out;
  const std::pair<const std::string*, std::string*> dirs[] = {{&run_dir, &out.run_dir}, {&tmp_dir, &out.tmp_dir}};
  for (const auto& [dir, slot] : dirs) {
    std::error_code ec;
    if (dir->empty() || fs::symlink_status(*dir, ec).type() == fs::file_type::not_found) continue;
    const DirOwnership o = run_dir_ownership(*dir, uuid, record_json);
    if (o.owned) *slot = *dir;
    else out.kept.push_back("kept " + *dir + ": it does not belong to run " + std::to_string(id) + " (" + o.reason + ")");
  }
  db_.prepare("DELETE FROM runs WHERE id = :id").bind_int64(":id", id).run();
  return out;
}

int64_t RunStore::create_sweep(const std::string& kind, const std::string& model, const std::string& description) {
  require_writable("create_sweep");
  Transaction t(db_);
  db_.prepare("INSERT INTO sweeps (created, kind, model, description) VALUES (:created, :kind, :model, :description)")
      .bind_text(":created", iso_utc(now_unix_ms()))
      .bind_text(":kind", kind)
      .bind_text(":model", model)
      .bind_text(":description", description)
      .run();
  const int64_t id = db_.last_insert_rowid();
  t.commit();
  return id;
}

std::vector<RunSummary> RunStore::stale_runs() const {
  RunFilter f;
  f.status = RunStatus::Interrupted;
  return list_runs(f);
}

void RunStore::mark_interrupted(int64_t id) {
  require_writable("mark_interrupted");
  Transaction t(db_);
  Statement q = db_.prepare("SELECT status, heartbeat_ms, pid, hostname FROM runs WHERE id = :id");
  if (!q.bind_int64(":id", id).step()) no_run(id);
  const std::string stored = q.column_text(0);
  if (stored == "interrupted") return;  // already marked
  const std::optional<int64_t> hb = q.column_int64_opt(1);
  const int64_t pid = q.column_int64(2);
  const std::string host = q.column_text(3);
  q.reset();
  if (stored != "running")
    throw Error(path() + ": mark_interrupted: run " + std::to_string(id) + " is " + stored + ", not running");
  if (derive_status(RunStatus::Running, hb, pid, host) != RunStatus::Interrupted)
    throw Error(path() + ": mark_interrupted: run " + std::to_string(id) + " is still running (process " +
                std::to_string(pid) + " on " + host + " heartbeats)");
  const std::string message = hb ? "the writer stopped; last heartbeat " + iso_utc(*hb)
                                 : std::string("the writer stopped; no heartbeat recorded");
  db_.prepare("UPDATE runs SET status = 'interrupted', message = :message, ended = :ended WHERE id = :id")
      .bind_text(":message", message)
      .bind_text(":ended", iso_utc(now_unix_ms()))
      .bind_int64(":id", id)
      .run();
  t.commit();
}

void RunStore::clear_tmp_dir(int64_t id) {
  require_writable("clear_tmp_dir");
  Transaction t(db_);
  db_.prepare("UPDATE runs SET tmp_dir = NULL WHERE id = :id").bind_int64(":id", id).run();
  if (db_.changes() == 0) no_run(id);
  t.commit();
}

// ---- Heartbeat ----

namespace {
RunStoreOptions heartbeat_options(const RunStore& store) {
  if (store.read_only()) throw Error(store.path() + ": Heartbeat: the run store was opened read-only");
  RunStoreOptions o = store.options();
  o.quick_check = false;  // the writer's own connection already checked the file
  return o;
}
}  // namespace

Heartbeat::Heartbeat(const RunStore& store, int64_t id, std::chrono::milliseconds period)
    : store_(RunStore::open(store.path(), heartbeat_options(store))), id_(id), period_(period) {
  thread_ = std::thread([this] { loop(); });
}

Heartbeat::~Heartbeat() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

std::string Heartbeat::last_error() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return last_error_;
}

void Heartbeat::loop() {
  std::unique_lock<std::mutex> lock(mutex_);
  while (!stop_) {
    lock.unlock();
    std::string error;
    try {
      store_.heartbeat(id_);
    } catch (const std::exception& e) {
      error = e.what();
    }
    lock.lock();
    if (!error.empty()) last_error_ = error;
    cv_.wait_for(lock, period_, [this] { return stop_; });
  }
}

}  // namespace respin
