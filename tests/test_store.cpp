// The run store (core/store) on real SQLite files in temporary directories: lifecycle, exact
// round trips of records and statistics, queries, migration from v1, refusal of files it must not
// touch, derived interruption, and readers alongside a writer.
#include <gtest/gtest.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <csignal>
#include <functional>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <limits>
#include <random>
#include <thread>

#include "core/calib/run_record.h"
#include "core/store/run_store.h"
#include "core/store/sqlite.h"
#include "core/util/error.h"
#include "core/util/sha256.h"
#include "core/util/fs.h"
#include "tests/test_util.h"

namespace respin {
namespace {

using sqlite::Database;
using test::expect_error;
using test::TempDir;
using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

std::string file_hash(const std::string& path) { return sha256_hex(test::read_bytes(path)); }

CalibConfig make_config(Method method = Method::ReSpin, int wbits = 4, int64_t rank = 32,
                        const std::string& model = "/models/tiny-llama") {
  CalibConfig c;
  c.model = model;
  c.method = method;
  c.wbits = wbits;
  c.abits = 8;
  c.kvbits = 16;
  c.w_group = 128;
  c.a_sym = true;
  c.a_clip = 0.9;
  c.rank = rank;
  c.weight_quantizer = WeightQuantizer::Gptq;
  c.calib_text = "/data/calib.txt";
  c.samples = 16;
  c.seq_len = 256;
  c.iters = 7;
  c.lr = 0.125;
  c.seed = 0xfedcba9876543210ull;  // above 2^63: stored as its bit pattern
  c.device = DeviceChoice::Cpu;
  return c;
}

ModelIdentity make_model(const std::string& folder = "/models/tiny-llama") {
  ModelIdentity m;
  m.folder = folder;
  m.architecture = "LlamaForCausalLM";
  m.parameters = 123456789;
  m.hidden_size = 4096;
  m.intermediate_size = 11008;
  m.layers = 32;
  m.heads = 32;
  m.kv_heads = 8;
  m.head_dim = 128;
  m.vocab_size = 32000;
  m.sha256 = std::string(64, 'a');
  return m;
}

RunStart make_start(const TempDir& dir, const CalibConfig& c, const std::string& name) {
  RunStart s;
  s.config = c;
  s.model = make_model(c.model);
  s.run_dir = dir.file("runs/" + name);
  s.tmp_dir = dir.file("runs/.tmp-" + name);
  return s;
}

// Every field away from its default, with doubles that print awkwardly.
RunRecord make_record(const CalibConfig& c, int64_t applied_rank = 24, double qppl = 12.345678901234567) {
  RunRecord r;
  r.respin_version = "9.8.7";
  r.created = "2024-05-01T10:00:00Z";
  r.finished = "2024-05-01T10:05:00Z";
  r.config = c;
  r.config_sha256 = sha256_hex(calib_config_to_json(c));
  r.model = make_model(c.model);
  r.quantizers.weight = {4, false, 128, 0.95};
  r.quantizers.weight_mse_clip = false;
  r.quantizers.weight_quantizer = "gptq";
  r.quantizers.activation = {8, true, 0, 0.9};
  r.quantizers.o_proj_activation_group = 128;
  r.quantizers.kv = {16, false, 64, 1.0};
  r.online = {true, true, false, true};
  r.method.residual_init = "hadamard";
  r.method.head_init = "random";
  r.method.heads_hadamard_note = "heads not a power of two";
  r.method.rank = applied_rank;
  r.method.transition_spectral_error = {0.1, 1.0 / 3.0, 1e-300};
  r.method.online_parameters = 4242;
  r.method.online_macs_per_token = 8484;
  TrainingRecord t;
  t.steps = 5;
  t.lr = 1.5;
  t.batch = 2;
  t.weight_bits_while_training = 4;
  t.tokens = 2560;
  t.seconds = 3.25;
  t.max_orthogonality_error = 2.5e-7;
  t.loss = {5.5, 4.25, 3.125, 2.0625, 1.0 / 7.0};
  r.method.training = t;
  r.method.gptq = GptqRecord{{0.5, 0.25}, 3, 1.75};
  r.method.rotations_from = "/runs/learned";
  r.calibration = {{"/data/calib.txt", 1000, std::string(64, 'b')}, 16, 256};
  r.results.eval_data = {"corpus test split", 2000, std::string(64, 'c')};
  r.results.eval_windows = 9;
  r.results.eval_seq_len = 256;
  r.results.eval_tokens = 2304;
  r.results.fp_perplexity = 10.0 / 3.0;
  r.results.quantized_perplexity = qppl;
  r.results.eval_tokens_per_s = 987.5;
  r.timing.phases_seconds = {{"load", 1.5}, {"rotate", 2.25}, {"eval", 0.1}, {"rotate", 0.2}};
  r.timing.calibration_seconds = 2.45;
  r.timing.total_seconds = 4.05;
  r.timing.threads = 3;
  r.timing.device = "cuda:0";
  r.compute.weights_and_activations = "bfloat16";
  r.compute.rotation_learning = "tf32";
  r.compute.libtorch = "2.3.0";
  r.peak_rss_bytes = 1234567890;
  r.gpu_memory_in_use_bytes = 555;
  return r;
}

// channels of awkward magnitudes (subnormal, huge, exact zero, infinity) so that any rounding in
// storage would show.
SiteStats make_site(int layer, HookSite site, size_t channels, uint32_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> u(0.0, 10.0);
  SiteStats s;
  s.layer = layer;
  s.site = site;
  s.channel_absmax.resize(channels);
  for (double& v : s.channel_absmax) v = u(rng);
  if (channels > 4) {
    s.channel_absmax[0] = 5e-324;
    s.channel_absmax[1] = std::numeric_limits<double>::max();
    s.channel_absmax[2] = 0.0;
    s.channel_absmax[3] = 0.1;
  }
  for (int b = 0; b < kHistogramBins; ++b) s.histogram[b] = static_cast<int64_t>(rng() % 1000) + (int64_t(1) << 40) * (b % 3);
  s.count = 0;
  for (int64_t n : s.histogram) s.count += n;
  s.sum_sq = u(rng) * 1e6;
  s.sum_4th = u(rng) * 1e12;
  s.nonfinite = static_cast<int64_t>(seed % 5);
  return s;
}

bool same_bits(const std::vector<double>& a, const std::vector<double>& b) {
  return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(double)) == 0);
}

int64_t count_rows(const std::string& path, const std::string& table, int64_t run_id) {
  Database db(path, Database::Mode::ReadOnly);
  return db.query_int64("SELECT count(*) FROM " + table + " WHERE run_id = " + std::to_string(run_id));
}

// The v1 schema as respin 0.1 wrote it (frozen: it is what old files contain).
constexpr const char* kV1Ddl = R"sql(
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
INSERT INTO schema_version (version) VALUES (1);
)sql";

// The schema as sqlite_master holds it, for comparing a migrated file with a new one.
std::vector<std::string> schema_of(const std::string& path) {
  Database db(path, Database::Mode::ReadOnly);
  auto s = db.prepare("SELECT type || ' ' || name || ' ' || coalesce(sql, '') FROM sqlite_master ORDER BY type, name");
  std::vector<std::string> out;
  while (s.step()) {
    std::string row = s.column_text(0);
    // The rebuilt table is named by ALTER TABLE RENAME, which quotes it.
    for (size_t at; (at = row.find("\"runs\"")) != std::string::npos;) row.replace(at, 6, "runs");
    out.push_back(row);
  }
  return out;
}

// ---- Opening ----

TEST(Store, CreatesOpensAndReopens) {
  TempDir dir;
  const std::string path = dir.file("runs.db");
  {
    RunStore store = RunStore::open(path);
    EXPECT_EQ(store.schema_version(), kRunStoreSchemaVersion);
    EXPECT_FALSE(store.read_only());
    EXPECT_TRUE(store.list_runs().empty());
  }
  EXPECT_TRUE(std::filesystem::exists(path));
  // No temporary creation file left behind.
  EXPECT_EQ(list_directory(dir.path()).size(), 1u);
  {
    Database raw(path, Database::Mode::ReadOnly);
    EXPECT_EQ(raw.query_text("PRAGMA journal_mode"), "wal");
  }
  int64_t id = 0;
  {
    RunStore store = RunStore::open(path);
    id = store.begin_run(make_start(dir, make_config(), "a"));
  }
  RunStore again = RunStore::open(path);
  ASSERT_EQ(again.list_runs().size(), 1u);
  EXPECT_EQ(again.list_runs()[0].id, id);
  RunStore reader = RunStore::open_readonly(path);
  EXPECT_TRUE(reader.read_only());
  EXPECT_EQ(reader.list_runs().size(), 1u);

  const std::string missing_dir = dir.file("nope/runs.db");
  std::string msg = expect_error([&] { RunStore::open(missing_dir); });
  EXPECT_NE(msg.find(missing_dir), std::string::npos) << msg;
  EXPECT_NE(msg.find("does not exist"), std::string::npos) << msg;
  EXPECT_FALSE(std::filesystem::exists(dir.file("nope")));
  msg = expect_error([&] { RunStore::open_readonly(dir.file("absent.db")); });
  EXPECT_NE(msg.find("absent.db"), std::string::npos) << msg;
  EXPECT_FALSE(std::filesystem::exists(dir.file("absent.db")));
}

TEST(Store, ReadOnlyStoreRefusesWritesAndLeavesTheFile) {
  TempDir dir;
  const std::string path = dir.file("runs.db");
  int64_t id = 0;
  {
    RunStore store = RunStore::open(path);
    id = store.begin_run(make_start(dir, make_config(), "a"));
  }
  const std::string before = file_hash(path);
  {
    RunStore reader = RunStore::open_readonly(path);
    EXPECT_EQ(reader.list_runs().size(), 1u);
    EXPECT_TRUE(reader.get_run(id).has_value());
    const std::string msg = expect_error([&] { reader.set_note(id, "x"); });
    EXPECT_NE(msg.find("read-only"), std::string::npos) << msg;
    expect_error([&] { reader.begin_run(make_start(dir, make_config(), "b")); });
    expect_error([&] { Heartbeat hb(reader, id); });
  }
  EXPECT_EQ(file_hash(path), before);
}

// ---- Writing and reading a run ----

TEST(Store, RunLifecycleAndExactRecordRoundTrip) {
  TempDir dir;
  RunStore store = RunStore::open(dir.file("runs.db"));
  const CalibConfig config = make_config();
  RunStart start = make_start(dir, config, "a");
  start.uuid = "11111111-2222-4333-8444-555555555555";
  const int64_t id = store.begin_run(start);

  auto runs = store.list_runs();
  ASSERT_EQ(runs.size(), 1u);
  const RunSummary& s = runs[0];
  EXPECT_EQ(s.id, id);
  EXPECT_EQ(s.uuid, start.uuid);
  EXPECT_EQ(s.status, RunStatus::Running);
  EXPECT_EQ(s.pid, static_cast<int64_t>(getpid()));
  EXPECT_FALSE(s.hostname.empty());
  EXPECT_EQ(s.created.size(), std::string("2024-05-01T10:00:00.000Z").size()) << s.created;
  EXPECT_TRUE(s.ended.empty());
  EXPECT_EQ(s.model_folder, config.model);
  EXPECT_EQ(s.model_architecture, "LlamaForCausalLM");
  EXPECT_EQ(s.method, Method::ReSpin);
  EXPECT_EQ(s.wbits, 4);
  EXPECT_EQ(s.abits, 8);
  EXPECT_EQ(s.kvbits, 16);
  EXPECT_EQ(s.rank, 32);
  EXPECT_FALSE(s.applied_rank.has_value());
  EXPECT_EQ(s.weight_quantizer, WeightQuantizer::Gptq);
  EXPECT_FALSE(s.quantized_perplexity.has_value());
  EXPECT_EQ(s.run_dir, start.run_dir);
  EXPECT_EQ(s.tmp_dir, start.tmp_dir);
  ASSERT_TRUE(s.heartbeat_unix_ms.has_value());
  const int64_t first_beat = *s.heartbeat_unix_ms;

  std::this_thread::sleep_for(std::chrono::milliseconds(5));
  store.heartbeat(id);
  EXPECT_GT(*store.list_runs()[0].heartbeat_unix_ms, first_beat);

  const double nan = std::numeric_limits<double>::quiet_NaN();
  store.append_loss(id, 0, {3.0, 2.5});
  store.append_loss(id, 2, {nan, 1.25});
  store.append_loss(id, 1, {2.75});  // replaces step 1
  {
    auto d = store.get_run(id);
    ASSERT_TRUE(d.has_value());
    ASSERT_EQ(d->loss.size(), 4u);
    EXPECT_EQ(d->loss[0].step, 0);
    EXPECT_EQ(d->loss[0].loss, 3.0);
    EXPECT_EQ(d->loss[1].loss, 2.75);
    EXPECT_TRUE(std::isnan(d->loss[2].loss));
    EXPECT_EQ(d->loss[3].step, 3);
    EXPECT_FALSE(d->record.has_value());
    EXPECT_EQ(calib_config_to_json(d->config), calib_config_to_json(config));
    EXPECT_EQ(d->config.seed, config.seed);
    EXPECT_EQ(d->config_sha256, sha256_hex(calib_config_to_json(config)));
    EXPECT_EQ(d->model.hidden_size, 4096);
    EXPECT_EQ(d->model.kv_heads, 8);
    EXPECT_EQ(d->model.sha256, std::string(64, 'a'));
  }
  store.put_stats(id, StatsStage::Before, {make_site(0, HookSite::AttnInput, 16, 1)});

  const RunRecord record = make_record(config);
  store.finish_run(id, record);
  auto d = store.get_run(id);
  ASSERT_TRUE(d.has_value());
  EXPECT_EQ(d->summary.status, RunStatus::Finished);
  EXPECT_TRUE(d->summary.tmp_dir.empty());
  EXPECT_EQ(d->summary.run_dir, start.run_dir);
  EXPECT_FALSE(d->summary.ended.empty());
  EXPECT_EQ(d->summary.applied_rank, 24);
  EXPECT_EQ(d->summary.quantized_perplexity, record.results.quantized_perplexity);
  EXPECT_EQ(d->summary.fp_perplexity, record.results.fp_perplexity);
  EXPECT_EQ(d->summary.calibration_seconds, 2.45);
  EXPECT_EQ(d->summary.total_seconds, 4.05);
  EXPECT_EQ(d->respin_version, "9.8.7");
  ASSERT_TRUE(d->record.has_value());
  EXPECT_EQ(run_record_to_json(*d->record), run_record_to_json(record));
  EXPECT_EQ(d->record->results.quantized_perplexity, record.results.quantized_perplexity);
  EXPECT_EQ(d->record->method.transition_spectral_error, record.method.transition_spectral_error);
  EXPECT_EQ(d->record->config.seed, config.seed);
  EXPECT_EQ(d->phases_seconds, record.timing.phases_seconds);
  // The record's loss curve replaces what was appended.
  ASSERT_EQ(d->loss.size(), record.method.training->loss.size());
  for (size_t i = 0; i < d->loss.size(); ++i) {
    EXPECT_EQ(d->loss[i].step, static_cast<int64_t>(i));
    EXPECT_EQ(d->loss[i].loss, record.method.training->loss[i]);
  }
  // Statistics put while running stay.
  EXPECT_EQ(store.layer_stats_summary(id, StatsStage::Before).size(), 1u);
  {
    Database raw(store.path(), Database::Mode::ReadOnly);
    auto q = raw.prepare(
        "SELECT calib_sha256, eval_source, eval_bytes, device, compute_dtype, peak_rss_bytes, online_parameters, "
        "online_macs_per_token, eval_tokens_per_s, seed FROM runs WHERE id = :id");
    ASSERT_TRUE(q.bind_int64(":id", id).step());
    EXPECT_EQ(q.column_text(0), std::string(64, 'b'));
    EXPECT_EQ(q.column_text(1), "corpus test split");
    EXPECT_EQ(q.column_int64(2), 2000);
    EXPECT_EQ(q.column_text(3), "cuda:0");
    EXPECT_EQ(q.column_text(4), "bfloat16");
    EXPECT_EQ(q.column_int64(5), 1234567890);
    EXPECT_EQ(q.column_int64(6), 4242);
    EXPECT_EQ(q.column_int64(7), 8484);
    EXPECT_EQ(q.column_double(8), 987.5);
    EXPECT_EQ(static_cast<uint64_t>(q.column_int64(9)), config.seed);
  }

  std::string msg = expect_error([&] { store.finish_run(id, record); });
  EXPECT_NE(msg.find("already finished"), std::string::npos) << msg;
  msg = expect_error([&] { store.end_run(id, RunStatus::Failed, "x"); });
  EXPECT_NE(msg.find("already finished"), std::string::npos) << msg;
  msg = expect_error([&] { store.heartbeat(9999); });
  EXPECT_NE(msg.find("no run 9999"), std::string::npos) << msg;
  EXPECT_NE(msg.find(store.path()), std::string::npos) << msg;
  store.heartbeat(id);  // a late beat after the end is harmless
  EXPECT_FALSE(store.get_run(9999).has_value());
}

TEST(Store, EndRunRecordsCancelledAndFailed) {
  TempDir dir;
  RunStore store = RunStore::open(dir.file("runs.db"));
  const int64_t a = store.begin_run(make_start(dir, make_config(), "a"));
  const int64_t b = store.begin_run(make_start(dir, make_config(), "b"));
  store.end_run(a, RunStatus::Cancelled, "stopped by the user");
  store.end_run(b, RunStatus::Failed, "layer 3: non-finite loss");
  auto da = store.get_run(a);
  auto db = store.get_run(b);
  EXPECT_EQ(da->summary.status, RunStatus::Cancelled);
  EXPECT_EQ(da->summary.message, "stopped by the user");
  EXPECT_EQ(db->summary.status, RunStatus::Failed);
  EXPECT_EQ(db->summary.message, "layer 3: non-finite loss");
  EXPECT_FALSE(db->summary.ended.empty());
  EXPECT_EQ(db->summary.tmp_dir, dir.file("runs/.tmp-b"));  // kept for the caller to clean up
  const int64_t c = store.begin_run(make_start(dir, make_config(), "c"));
  expect_error([&] { store.end_run(c, RunStatus::Finished, ""); });
  expect_error([&] { store.end_run(c, RunStatus::Running, ""); });
  expect_error([&] { store.end_run(12345, RunStatus::Failed, ""); });
}

// ---- Queries ----

TEST(Store, ListRunsFilters) {
  TempDir dir;
  RunStore store = RunStore::open(dir.file("runs.db"));
  const int64_t sweep = store.create_sweep("rank", "/models/tiny-llama", "ranks 0..64");
  auto start = [&](Method m, const std::string& model, const std::string& name) {
    return make_start(dir, make_config(m, 4, 32, model), name);
  };
  RunStart sa = start(Method::ReSpin, "/models/a", "1");
  sa.sweep_id = sweep;
  const int64_t r1 = store.begin_run(sa);
  const int64_t r2 = store.begin_run(start(Method::QuaRot, "/models/a", "2"));
  const int64_t r3 = store.begin_run(start(Method::ReSpin, "/models/b", "3"));
  const int64_t r4 = store.begin_run(start(Method::Rtn, "/models/b", "4"));
  store.finish_run(r1, make_record(make_config(Method::ReSpin, 4, 32, "/models/a")));
  store.end_run(r2, RunStatus::Failed, "boom");
  store.add_tag(r1, "paper");
  store.add_tag(r3, "paper");
  store.add_tag(r3, "baseline");
  store.add_tag(r3, "paper");  // twice: once

  auto ids = [](const std::vector<RunSummary>& v) {
    std::vector<int64_t> out;
    for (const auto& r : v) out.push_back(r.id);
    return out;
  };
  EXPECT_EQ(ids(store.list_runs()), (std::vector<int64_t>{r1, r2, r3, r4}));
  RunFilter f;
  f.model = "/models/a";
  EXPECT_EQ(ids(store.list_runs(f)), (std::vector<int64_t>{r1, r2}));
  f = {};
  f.method = Method::ReSpin;
  EXPECT_EQ(ids(store.list_runs(f)), (std::vector<int64_t>{r1, r3}));
  f = {};
  f.status = RunStatus::Running;
  EXPECT_EQ(ids(store.list_runs(f)), (std::vector<int64_t>{r3, r4}));
  f.status = RunStatus::Failed;
  EXPECT_EQ(ids(store.list_runs(f)), (std::vector<int64_t>{r2}));
  f.status = RunStatus::Interrupted;
  EXPECT_TRUE(store.list_runs(f).empty());
  f = {};
  f.tag = "paper";
  EXPECT_EQ(ids(store.list_runs(f)), (std::vector<int64_t>{r1, r3}));
  f.method = Method::ReSpin;
  f.model = "/models/b";
  EXPECT_EQ(ids(store.list_runs(f)), (std::vector<int64_t>{r3}));
  f = {};
  f.sweep = sweep;
  auto in_sweep = store.list_runs(f);
  ASSERT_EQ(ids(in_sweep), (std::vector<int64_t>{r1}));
  EXPECT_EQ(in_sweep[0].sweep_id, sweep);
  EXPECT_EQ(in_sweep[0].tags, (std::vector<std::string>{"paper"}));
  auto all = store.list_runs();
  EXPECT_EQ(all[2].tags, (std::vector<std::string>{"baseline", "paper"}));
  EXPECT_EQ(all[1].message, "boom");

  auto sweeps = store.list_sweeps();
  ASSERT_EQ(sweeps.size(), 1u);
  EXPECT_EQ(sweeps[0].id, sweep);
  EXPECT_EQ(sweeps[0].kind, "rank");
  EXPECT_EQ(sweeps[0].model, "/models/tiny-llama");
  EXPECT_EQ(sweeps[0].description, "ranks 0..64");
  RunStart bad = start(Method::Rtn, "/models/a", "5");
  bad.sweep_id = 777;
  const std::string msg = expect_error([&] { store.begin_run(bad); });
  EXPECT_NE(msg.find("no sweep 777"), std::string::npos) << msg;
}

TEST(Store, SeriesOverSweepsAndIds) {
  TempDir dir;
  RunStore store = RunStore::open(dir.file("runs.db"));
  const int64_t sweep = store.create_sweep("rank", "/models/tiny-llama", "");
  struct P {
    int64_t rank;
    double ppl;
  };
  std::vector<int64_t> ids;
  for (P p : {P{64, 9.5}, P{0, 14.0}, P{16, 11.0}, P{-1, 20.0}}) {
    CalibConfig c = make_config(Method::ReSpin, 4, p.rank);
    RunStart s = make_start(dir, c, "r" + std::to_string(p.rank));
    s.sweep_id = sweep;
    const int64_t id = store.begin_run(s);
    store.finish_run(id, make_record(c, p.rank, p.ppl));
    ids.push_back(id);
  }
  // Not finished, or outside the sweep: left out.
  RunStart running = make_start(dir, make_config(), "running");
  running.sweep_id = sweep;
  store.begin_run(running);
  CalibConfig w3 = make_config(Method::QuaRot, 3, 32);
  const int64_t other = store.begin_run(make_start(dir, w3, "w3"));
  store.finish_run(other, make_record(w3, -1, 30.0));

  SeriesQuery q;
  q.sweep = sweep;
  auto pts = store.series(q);
  ASSERT_EQ(pts.size(), 3u);  // rank -1 (no corrections) has no x
  EXPECT_EQ(pts[0].x, 0);
  EXPECT_EQ(pts[0].y, 14.0);
  EXPECT_EQ(pts[0].run_id, ids[1]);
  EXPECT_EQ(pts[1].x, 16);
  EXPECT_EQ(pts[2].x, 64);
  EXPECT_EQ(pts[2].y, 9.5);
  EXPECT_EQ(pts[2].method, Method::ReSpin);
  EXPECT_EQ(pts[2].label, make_config(Method::ReSpin, 4, 64).label());

  q = {};
  q.ids = {ids[0], other};
  q.x = SeriesX::WBits;
  pts = store.series(q);
  ASSERT_EQ(pts.size(), 2u);
  EXPECT_EQ(pts[0].run_id, other);
  EXPECT_EQ(pts[0].x, 3);
  EXPECT_EQ(pts[0].y, 30.0);
  EXPECT_EQ(pts[1].x, 4);

  q.y = SeriesY::OnlineMacsPerToken;
  q.x = SeriesX::ABits;
  pts = store.series(q);
  ASSERT_EQ(pts.size(), 2u);
  EXPECT_EQ(pts[0].y, 8484);
  EXPECT_EQ(pts[0].x, 8);

  q = {};
  q.x = SeriesX::KvBits;
  q.y = SeriesY::FpPerplexity;
  EXPECT_EQ(store.series(q).size(), 5u);  // every finished run
}

TEST(Store, StatisticsRoundTripBitForBit) {
  TempDir dir;
  RunStore store = RunStore::open(dir.file("runs.db"));
  const int64_t id = store.begin_run(make_start(dir, make_config(), "a"));
  std::vector<SiteStats> before, after;
  const HookSite sites[] = {HookSite::MlpInput, HookSite::AttnInput, HookSite::DownProjInput};
  uint32_t seed = 1;
  for (int layer : {1, 0, -1})
    for (HookSite site : sites) {
      before.push_back(make_site(layer, site, 64, seed++));
      after.push_back(make_site(layer, site, 64, seed++));
    }
  // A site with an overflowed sum and no channels.
  before[0].sum_4th = std::numeric_limits<double>::infinity();
  before[1].channel_absmax.clear();
  before[2].sum_sq = std::numeric_limits<double>::quiet_NaN();
  store.put_stats(id, StatsStage::Before, before);
  store.put_stats(id, StatsStage::After, after);

  auto summary = store.layer_stats_summary(id, StatsStage::Before);
  ASSERT_EQ(summary.size(), before.size());
  for (size_t i = 1; i < summary.size(); ++i) {
    const auto& a = summary[i - 1];
    const auto& b = summary[i];
    EXPECT_TRUE(a.layer < b.layer || (a.layer == b.layer && int(a.site) < int(b.site)));
  }
  for (const SiteStats& s : before) {
    auto it = std::find_if(summary.begin(), summary.end(),
                           [&](const SiteSummary& c) { return c.layer == s.layer && c.site == s.site; });
    ASSERT_NE(it, summary.end());
    EXPECT_EQ(it->count, s.count);
    EXPECT_EQ(it->nonfinite, s.nonfinite);
    EXPECT_EQ(it->channels, static_cast<int64_t>(s.channel_absmax.size()));
    auto same = [](double a, double b) { return (std::isnan(a) && std::isnan(b)) || a == b; };
    EXPECT_TRUE(same(it->mean_square, s.mean_square()));
    EXPECT_TRUE(same(it->kurtosis, s.kurtosis())) << it->kurtosis << " vs " << s.kurtosis();
    EXPECT_EQ(it->absmax, s.absmax());
    EXPECT_EQ(it->max_median_ratio, s.max_median_ratio());

    auto got = store.site_stats(id, StatsStage::Before, s.layer, s.site);
    ASSERT_TRUE(got.has_value());
    EXPECT_EQ(got->layer, s.layer);
    EXPECT_EQ(got->site, s.site);
    EXPECT_EQ(got->count, s.count);
    EXPECT_EQ(got->nonfinite, s.nonfinite);
    EXPECT_EQ(got->histogram, s.histogram);
    EXPECT_TRUE(same_bits(got->channel_absmax, s.channel_absmax));
    EXPECT_TRUE(same(got->sum_sq, s.sum_sq));
    EXPECT_EQ(got->sum_4th, s.sum_4th);
  }
  for (const SiteStats& s : after) {
    auto got = store.site_stats(id, StatsStage::After, s.layer, s.site);
    ASSERT_TRUE(got.has_value());
    EXPECT_EQ(got->histogram, s.histogram);
    EXPECT_TRUE(same_bits(got->channel_absmax, s.channel_absmax));
    EXPECT_EQ(got->sum_sq, s.sum_sq);
  }
  EXPECT_FALSE(store.site_stats(id, StatsStage::Before, 5, HookSite::Query).has_value());
  EXPECT_TRUE(store.layer_stats_summary(id + 1, StatsStage::Before).empty());

  // A cell put again replaces the old one.
  SiteStats again = make_site(0, HookSite::AttnInput, 8, 999);
  store.put_stats(id, StatsStage::Before, {again});
  EXPECT_EQ(store.layer_stats_summary(id, StatsStage::Before).size(), before.size());
  EXPECT_TRUE(same_bits(store.site_stats(id, StatsStage::Before, 0, HookSite::AttnInput)->channel_absmax,
                        again.channel_absmax));

  SiteStats bad = make_site(2, HookSite::Key, 4, 5);
  bad.histogram.resize(10);
  const std::string msg = expect_error([&] { store.put_stats(id, StatsStage::Before, {bad}); });
  EXPECT_NE(msg.find("histogram has 10 bins"), std::string::npos) << msg;
  expect_error([&] { store.put_stats(id + 100, StatsStage::Before, {again}); });
}

// ---- Curating ----

TEST(Store, TagsNoteAndDeleteWithCascade) {
  TempDir dir;
  RunStore store = RunStore::open(dir.file("runs.db"));
  const int64_t id = store.begin_run(make_start(dir, make_config(), "a"));
  store.append_loss(id, 0, {1, 2, 3});
  store.put_stats(id, StatsStage::After, {make_site(0, HookSite::Value, 8, 3)});
  store.add_tag(id, "keep");
  store.add_tag(id, "w4");
  store.remove_tag(id, "keep");
  store.remove_tag(id, "never-there");
  store.set_note(id, "lr too high?\nsecond line");
  expect_error([&] { store.add_tag(id, ""); });
  expect_error([&] { store.add_tag(id + 50, "x"); });
  expect_error([&] { store.set_note(id + 50, "x"); });

  // A run whose writer is alive cannot be deleted.
  std::string msg = expect_error([&] { store.delete_run(id); });
  EXPECT_NE(msg.find("still running"), std::string::npos) << msg;

  store.finish_run(id, make_record(make_config()));
  auto d = store.get_run(id);
  EXPECT_EQ(d->note, "lr too high?\nsecond line");
  EXPECT_EQ(d->summary.tags, (std::vector<std::string>{"w4"}));
  EXPECT_GT(count_rows(store.path(), "run_phases", id), 0);

  const int64_t other = store.begin_run(make_start(dir, make_config(), "b"));
  store.end_run(other, RunStatus::Failed, "x");
  store.add_tag(other, "w4");
  // Directories that exist and carry the run's marker are handed back for removal.
  for (const char* d : {"runs/b", "runs/.tmp-b"}) {
    std::filesystem::create_directories(dir.file(d));
    store.write_run_marker(other, dir.file(d));
  }
  const DeletedRun gone = store.delete_run(other);
  EXPECT_EQ(gone.run_dir, dir.file("runs/b"));
  EXPECT_EQ(gone.tmp_dir, dir.file("runs/.tmp-b"));
  EXPECT_TRUE(gone.kept.empty());

  const DeletedRun deleted = store.delete_run(id);
  EXPECT_TRUE(deleted.run_dir.empty());  // runs/a was never written: nothing to remove
  EXPECT_TRUE(deleted.tmp_dir.empty());  // cleared by finish_run
  EXPECT_TRUE(deleted.kept.empty());
  EXPECT_FALSE(store.get_run(id).has_value());
  for (const char* table : {"run_loss", "run_phases", "site_stats", "run_tags"})
    EXPECT_EQ(count_rows(store.path(), table, id), 0) << table;
  msg = expect_error([&] { store.delete_run(id); });
  EXPECT_NE(msg.find("no run"), std::string::npos) << msg;
  // Ids are never reused.
  EXPECT_GT(store.begin_run(make_start(dir, make_config(), "c")), other);
}

// ---- Schema versions and files the store must not touch ----

TEST(Store, MigratesV1FileKeepingItsData) {
  TempDir dir;
  const std::string path = dir.file("old.db");
  const CalibConfig config = make_config(Method::SpinQuant, 4, 32);
  RunRecord record = make_record(config, -1, 7.5);
  const SiteStats site = make_site(3, HookSite::OProjInput, 32, 77);
  {
    Database db(path, Database::Mode::ReadWriteCreate);
    db.exec(kV1Ddl);
    auto ins = db.prepare(
        "INSERT INTO runs (id, uuid, status, message, created, started, ended, config_json, config_sha256, method, "
        "wbits, abits, kvbits, rank, applied_rank, weight_quantizer, model_folder, model_architecture, "
        "model_hidden_size, respin_version, seed, quantized_perplexity, fp_perplexity, record_json, run_dir) VALUES "
        "(:id, :uuid, :status, :message, '2023-01-01T00:00:00.000Z', '2023-01-01T00:00:00.000Z', :ended, :config, "
        "'abc', 'spinquant', 4, 8, 16, 32, -1, 'gptq', '/models/tiny-llama', 'LlamaForCausalLM', 4096, '0.0.9', 7, "
        ":qppl, 3.5, :record, :run_dir)");
    ins.bind_int64(":id", 5)
        .bind_text(":uuid", "u5")
        .bind_text(":status", "finished")
        .bind_text(":message", "")
        .bind_text(":ended", "2023-01-01T01:00:00.000Z")
        .bind_text(":config", calib_config_to_json(config))
        .bind_double(":qppl", 7.5)
        .bind_text(":record", run_record_to_json(record).dump())
        .bind_text(":run_dir", "/runs/old5")
        .run();
    ins.reset();
    ins.bind_int64(":id", 6).bind_text(":uuid", "u6").bind_text(":status", "failed").bind_text(":message", "oom");
    ins.bind_null(":record").bind_null(":qppl").bind_text(":run_dir", "/runs/old6").run();
    ins.reset();
    ins.bind_int64(":id", 9).bind_text(":uuid", "u9").bind_text(":status", "cancelled").bind_text(":run_dir", "/x").run();
    db.exec("DELETE FROM runs WHERE id = 9");  // the high-water mark is 9
    db.exec(
        "INSERT INTO run_phases VALUES (5, 0, 'load', 1.5), (5, 1, 'eval', 2.5);"
        "INSERT INTO run_loss VALUES (5, 0, 4.0), (5, 1, 3.0);");
    const std::string hist = sqlite::encode_le_int64(site.histogram);
    const std::string absmax = sqlite::encode_le_float64(site.channel_absmax);
    auto st = db.prepare(
        "INSERT INTO site_stats (run_id, stage, layer, site, count, nonfinite, sum_sq, sum_4th, mean_square, "
        "kurtosis, absmax, max_median_ratio, channels, histogram, channel_absmax) VALUES (5, 'after', 3, "
        "'o_proj_input', :count, :nonfinite, :sum_sq, :sum_4th, 1, 2, 3, 4, 32, :h, :a)");
    st.bind_int64(":count", site.count)
        .bind_int64(":nonfinite", site.nonfinite)
        .bind_double(":sum_sq", site.sum_sq)
        .bind_double(":sum_4th", site.sum_4th)
        .bind_blob(":h", hist.data(), hist.size())
        .bind_blob(":a", absmax.data(), absmax.size())
        .run();
  }

  RunStore store = RunStore::open(path);
  EXPECT_EQ(store.schema_version(), 2);
  auto runs = store.list_runs();
  ASSERT_EQ(runs.size(), 2u);
  EXPECT_EQ(runs[0].id, 5);
  EXPECT_EQ(runs[0].uuid, "u5");
  EXPECT_EQ(runs[0].status, RunStatus::Finished);
  EXPECT_EQ(runs[0].method, Method::SpinQuant);
  EXPECT_EQ(runs[0].quantized_perplexity, 7.5);
  EXPECT_EQ(runs[0].applied_rank, -1);
  EXPECT_FALSE(runs[0].sweep_id.has_value());
  EXPECT_TRUE(runs[0].tags.empty());
  EXPECT_EQ(runs[1].status, RunStatus::Failed);
  EXPECT_EQ(runs[1].message, "oom");
  auto d = store.get_run(5);
  ASSERT_TRUE(d.has_value());
  ASSERT_TRUE(d->record.has_value());
  EXPECT_EQ(run_record_to_json(*d->record), run_record_to_json(record));
  EXPECT_EQ(d->phases_seconds, (std::vector<std::pair<std::string, double>>{{"load", 1.5}, {"eval", 2.5}}));
  ASSERT_EQ(d->loss.size(), 2u);
  EXPECT_EQ(d->loss[1].loss, 3.0);
  EXPECT_EQ(d->note, "");
  auto got = store.site_stats(5, StatsStage::After, 3, HookSite::OProjInput);
  ASSERT_TRUE(got.has_value());
  EXPECT_TRUE(same_bits(got->channel_absmax, site.channel_absmax));
  EXPECT_EQ(got->histogram, site.histogram);

  // The new columns and tables work, foreign keys still cascade, ids continue after 9.
  store.add_tag(5, "old");
  store.set_note(5, "from v1");
  EXPECT_EQ(store.get_run(5)->summary.tags, (std::vector<std::string>{"old"}));
  EXPECT_GT(store.begin_run(make_start(dir, make_config(), "new")), 9);
  store.delete_run(5);
  EXPECT_EQ(count_rows(path, "site_stats", 5), 0);
  EXPECT_EQ(count_rows(path, "run_loss", 5), 0);
  // The migrated file has exactly the schema of a new one.
  RunStore::open(dir.file("new.db"));
  EXPECT_EQ(schema_of(path), schema_of(dir.file("new.db")));
  {
    Database raw(path, Database::Mode::ReadOnly);
    EXPECT_EQ(raw.query_text("PRAGMA journal_mode"), "wal");
    EXPECT_EQ(raw.query_int64("SELECT count(*) FROM schema_version"), 1);
  }
  // A v1 file cannot be upgraded by a reader.
  const std::string old2 = dir.file("old2.db");
  {
    Database db(old2, Database::Mode::ReadWriteCreate);
    db.exec(kV1Ddl);
  }
  const std::string h = file_hash(old2);
  const std::string msg = expect_error([&] { RunStore::open_readonly(old2); });
  EXPECT_NE(msg.find("schema version 1 is older"), std::string::npos) << msg;
  EXPECT_EQ(file_hash(old2), h);
}

TEST(Store, RefusesANewerSchemaAndLeavesTheFile) {
  TempDir dir;
  const std::string path = dir.file("runs.db");
  {
    RunStore store = RunStore::open(path);
    store.begin_run(make_start(dir, make_config(), "a"));
  }
  {
    Database raw(path, Database::Mode::ReadWrite);
    raw.exec("UPDATE schema_version SET version = 7");
  }
  const std::string before = file_hash(path);
  std::string msg = expect_error([&] { RunStore::open(path); });
  EXPECT_EQ(msg, path + ": schema version 7 is newer than this respin knows (2); upgrade respin");
  EXPECT_EQ(file_hash(path), before);
  msg = expect_error([&] { RunStore::open_readonly(path); });
  EXPECT_NE(msg.find("schema version 7 is newer"), std::string::npos) << msg;
  EXPECT_EQ(file_hash(path), before);
}

TEST(Store, RefusesFilesThatAreNotStoresAndLeavesThem) {
  TempDir dir;
  struct Case {
    std::string name;
    std::string bytes;
    std::string expect;
  };
  // A real store with some pages to damage.
  const std::string good = dir.file("good.db");
  {
    RunStore store = RunStore::open(good);
    const int64_t id = store.begin_run(make_start(dir, make_config(), "a"));
    std::vector<SiteStats> stats;
    for (int l = 0; l < 8; ++l) stats.push_back(make_site(l, HookSite::AttnInput, 512, l));
    store.put_stats(id, StatsStage::Before, stats);
  }
  const std::string full = test::read_bytes(good);
  ASSERT_GT(full.size(), 8u * 4096);
  std::string damaged = full;
  for (size_t i = 4096; i < 3 * 4096; ++i) damaged[i] = static_cast<char>(0xA5);  // pages 2 and 3

  std::vector<Case> cases = {
      {"text.db", "hello, this is not a database\n", "not an SQLite database"},
      {"empty.db", "", "empty file"},
      {"short.db", std::string("SQLite format 3\0", 16) + "xx", "truncated"},
      {"truncated.db", full.substr(0, 2 * 4096), "truncated"},
      {"damaged.db", damaged, "damaged"},
      {"model.safetensors", std::string("\x08\0\0\0\0\0\0\0{}      ", 16), "not an SQLite database"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    const std::string path = dir.file(c.name);
    test::write_bytes(path, c.bytes);
    const std::string before = file_hash(path);
    std::string msg = expect_error([&] { RunStore::open(path); });
    EXPECT_EQ(msg.rfind(path + ": ", 0), 0u) << msg;
    EXPECT_NE(msg.find(c.expect), std::string::npos) << msg;
    EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
    EXPECT_EQ(file_hash(path), before);
    msg = expect_error([&] { RunStore::open_readonly(path); });
    EXPECT_NE(msg.find(c.expect), std::string::npos) << msg;
    EXPECT_EQ(file_hash(path), before);
    EXPECT_EQ(test::read_bytes(path).size(), c.bytes.size());
  }
  // An SQLite database that is not a run store.
  const std::string foreign = dir.file("foreign.db");
  {
    Database db(foreign, Database::Mode::ReadWriteCreate);
    db.exec("CREATE TABLE t (x); INSERT INTO t VALUES (1);");
  }
  const std::string before = file_hash(foreign);
  const std::string msg = expect_error([&] { RunStore::open(foreign); });
  EXPECT_NE(msg.find("not a respin run store"), std::string::npos) << msg;
  EXPECT_EQ(file_hash(foreign), before);
  // A directory.
  EXPECT_NE(expect_error([&] { RunStore::open(dir.path()); }).find("directory"), std::string::npos);
}

// ---- Interrupted runs ----

TEST(Store, InterruptedFromAStaleHeartbeat) {
  TempDir dir;
  RunStoreOptions opt;
  opt.stale_after = std::chrono::milliseconds(600);  // generous: the machine may be busy
  RunStore store = RunStore::open(dir.file("runs.db"), opt);
  const int64_t id = store.begin_run(make_start(dir, make_config(), "a"));
  const int64_t done = store.begin_run(make_start(dir, make_config(), "b"));
  store.end_run(done, RunStatus::Cancelled, "");
  EXPECT_EQ(store.list_runs()[0].status, RunStatus::Running);
  std::string msg = expect_error([&] { store.mark_interrupted(id); });
  EXPECT_NE(msg.find("still running"), std::string::npos) << msg;
  EXPECT_TRUE(store.stale_runs().empty());

  std::this_thread::sleep_for(std::chrono::milliseconds(900));
  EXPECT_EQ(store.list_runs()[0].status, RunStatus::Interrupted);
  EXPECT_EQ(store.get_run(id)->summary.status, RunStatus::Interrupted);
  EXPECT_EQ(store.list_runs()[1].status, RunStatus::Cancelled);
  {
    // Readers derive it too, without writing.
    RunStore reader = RunStore::open_readonly(store.path(), opt);
    EXPECT_EQ(reader.list_runs()[0].status, RunStatus::Interrupted);
    reader.set_stale_after(std::chrono::hours(1));
    EXPECT_EQ(reader.list_runs()[0].status, RunStatus::Running);
  }
  store.heartbeat(id);  // the writer was only slow
  EXPECT_EQ(store.list_runs()[0].status, RunStatus::Running);

  std::this_thread::sleep_for(std::chrono::milliseconds(900));
  auto stale = store.stale_runs();
  ASSERT_EQ(stale.size(), 1u);
  EXPECT_EQ(stale[0].id, id);
  EXPECT_EQ(stale[0].tmp_dir, dir.file("runs/.tmp-a"));
  store.mark_interrupted(id);
  store.mark_interrupted(id);  // again: no-op
  store.set_stale_after(std::chrono::hours(1));
  auto d = store.get_run(id);
  EXPECT_EQ(d->summary.status, RunStatus::Interrupted);  // stored now
  EXPECT_NE(d->summary.message.find("last heartbeat"), std::string::npos) << d->summary.message;
  EXPECT_FALSE(d->summary.ended.empty());
  EXPECT_EQ(store.stale_runs().size(), 1u);
  store.clear_tmp_dir(id);
  EXPECT_TRUE(store.get_run(id)->summary.tmp_dir.empty());
  msg = expect_error([&] { store.mark_interrupted(done); });
  EXPECT_NE(msg.find("cancelled"), std::string::npos) << msg;
  // An interrupted run can be deleted (the GUI cleans up after it).
  EXPECT_TRUE(store.delete_run(id).kept.empty());
  EXPECT_FALSE(store.get_run(id).has_value());
}

TEST(Store, InterruptedFromADeadPid) {
  TempDir dir;
  RunStore store = RunStore::open(dir.file("runs.db"));  // default 30 s threshold
  const pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) _exit(0);
  int status = 0;
  ASSERT_EQ(waitpid(child, &status, 0), child);  // reaped: the pid names no process now

  RunStart dead = make_start(dir, make_config(), "dead");
  dead.pid = child;
  const int64_t id = store.begin_run(dead);
  EXPECT_EQ(store.get_run(id)->summary.status, RunStatus::Interrupted);
  // The same pid on another machine cannot be checked: the heartbeat decides.
  RunStart remote = make_start(dir, make_config(), "remote");
  remote.pid = child;
  remote.hostname = "some-other-host.invalid";
  const int64_t rid = store.begin_run(remote);
  EXPECT_EQ(store.get_run(rid)->summary.status, RunStatus::Running);
  // Nor can it from another PID namespace of this host (a container with the same host name):
  // a live writer there must not read interrupted because its pid means nothing here.
  char host[256] = {};
  ASSERT_EQ(gethostname(host, sizeof host - 1), 0);
  const std::string recorded = store.get_run(id)->summary.hostname;
  EXPECT_EQ(recorded.rfind(std::string(host) + " pid:[", 0), 0u) << recorded;
  RunStart contained = make_start(dir, make_config(), "contained");
  contained.pid = child;
  contained.hostname = std::string(host) + " pid:[1]";
  const int64_t cid = store.begin_run(contained);
  EXPECT_EQ(store.get_run(cid)->summary.status, RunStatus::Running);
  auto stale = store.stale_runs();
  ASSERT_EQ(stale.size(), 1u);
  EXPECT_EQ(stale[0].id, id);
  store.mark_interrupted(id);
  EXPECT_THROW(store.mark_interrupted(cid), Error);  // re-checked inside its transaction: still running
  EXPECT_EQ(store.get_run(cid)->summary.status, RunStatus::Running);
  EXPECT_NE(store.get_run(id)->summary.message.find("writer stopped"), std::string::npos);
}

TEST(Store, HeartbeatThreadKeepsARunAlive) {
  TempDir dir;
  RunStoreOptions opt;
  opt.stale_after = std::chrono::milliseconds(1000);
  RunStore store = RunStore::open(dir.file("runs.db"), opt);
  const int64_t id = store.begin_run(make_start(dir, make_config(), "a"));
  {
    Heartbeat beat(store, id, std::chrono::milliseconds(50));
    for (int i = 0; i < 4; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(400));  // longer than stale_after in total
      EXPECT_EQ(store.get_run(id)->summary.status, RunStatus::Running);
      // The writer keeps writing on its own connection meanwhile.
      store.append_loss(id, i, {1.0 * i});
    }
    EXPECT_EQ(beat.last_error(), "");
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(1500));
  EXPECT_EQ(store.get_run(id)->summary.status, RunStatus::Interrupted);
}

// ---- Concurrency ----

TEST(Store, ReadersAreNotBlockedByAnOpenWriteTransaction) {
  TempDir dir;
  const std::string path = dir.file("runs.db");
  int64_t id = 0;
  {
    RunStore store = RunStore::open(path);
    id = store.begin_run(make_start(dir, make_config(), "a"));
    store.put_stats(id, StatsStage::Before, {make_site(0, HookSite::AttnInput, 64, 1)});
  }
  Database writer(path, Database::Mode::ReadWrite);
  sqlite::Transaction t(writer);
  writer.exec("UPDATE runs SET note = 'uncommitted'");
  writer.exec("DELETE FROM site_stats");

  const auto t0 = Clock::now();
  {
    RunStore reader = RunStore::open_readonly(path);
    auto runs = reader.list_runs();
    ASSERT_EQ(runs.size(), 1u);
    EXPECT_EQ(reader.get_run(id)->note, "");  // the last committed state
    EXPECT_EQ(reader.layer_stats_summary(id, StatsStage::Before).size(), 1u);
    RunStore other = RunStore::open(path);  // a read-write open needs no write lock either
    EXPECT_EQ(other.list_runs().size(), 1u);
  }
  const double read_s = seconds_since(t0);
  EXPECT_LT(read_s, 1.0);

  // A second writer waits for the busy timeout, then fails naming the file.
  RunStoreOptions quick;
  quick.busy_timeout_ms = 200;
  RunStore second = RunStore::open(path, quick);
  const auto t1 = Clock::now();
  const std::string msg = expect_error([&] { second.add_tag(id, "x"); });
  const double waited = seconds_since(t1);
  EXPECT_NE(msg.find(path), std::string::npos) << msg;
  EXPECT_NE(msg.find("locked"), std::string::npos) << msg;
  EXPECT_GE(waited, 0.15);
  EXPECT_LT(waited, 2.0);
  t.commit();
  second.add_tag(id, "x");  // free again
  EXPECT_EQ(second.get_run(id)->note, "uncommitted");
}

// ---- Size and speed of a large model's statistics ----

TEST(Store, EightyLayerStatisticsGridOpensQuickly) {
  TempDir dir;
  const std::string path = dir.file("runs.db");
  const HookSite sites[] = {HookSite::AttnInput, HookSite::Query,      HookSite::Key,          HookSite::Value,
                            HookSite::OProjInput, HookSite::MlpInput, HookSite::DownProjInput};
  std::vector<SiteStats> stats;
  for (int layer = 0; layer < 80; ++layer)
    for (HookSite site : sites) stats.push_back(make_site(layer, site, 4096, static_cast<uint32_t>(layer * 7 + int(site))));
  int64_t id = 0;
  double put_s = 0;
  {
    RunStore store = RunStore::open(path);
    id = store.begin_run(make_start(dir, make_config(), "big"));
    const auto t0 = Clock::now();
    store.put_stats(id, StatsStage::Before, stats);
    store.put_stats(id, StatsStage::After, stats);
    put_s = seconds_since(t0);
  }
  const auto t1 = Clock::now();
  RunStore reader = RunStore::open_readonly(path);
  const double open_s = seconds_since(t1);
  const auto t2 = Clock::now();
  auto summary = reader.layer_stats_summary(id, StatsStage::After);
  const double summary_s = seconds_since(t2);
  const auto t3 = Clock::now();
  auto cell = reader.site_stats(id, StatsStage::Before, 79, HookSite::DownProjInput);
  const double cell_s = seconds_since(t3);
  ASSERT_EQ(summary.size(), 80u * 7);
  ASSERT_TRUE(cell.has_value());
  EXPECT_TRUE(same_bits(cell->channel_absmax, stats.back().channel_absmax));
  const auto bytes = std::filesystem::file_size(path);
  std::cout << "[ timing ] 80 layers x 7 sites x 4096 channels, before+after: put_stats " << put_s
            << " s, open_readonly (quick_check) " << open_s << " s, layer_stats_summary " << summary_s
            << " s, one site_stats " << cell_s << " s, file " << bytes / (1 << 20) << " MiB\n";
  RecordProperty("put_stats_s", std::to_string(put_s));
  RecordProperty("summary_s", std::to_string(summary_s));
  EXPECT_LT(summary_s, 1.0);
  EXPECT_LT(open_s + summary_s, 1.0);
}

// Whether another process sees a lock of this process on the SQLite lock bytes of `path` (the
// SHARED range every WAL connection holds for its lifetime). Asked from a forked child: POSIX
// locks are per process, so the process holding them cannot see its own.
bool another_process_sees_a_lock(const std::string& path) {
  const pid_t pid = fork();
  if (pid == 0) {
    const int fd = ::open(path.c_str(), O_RDWR);
    struct flock fl {};
    fl.l_type = F_WRLCK;
    fl.l_whence = SEEK_SET;
    fl.l_start = 0x40000000 + 2;  // SQLite's SHARED_FIRST (PENDING_BYTE + 2)
    fl.l_len = 510;               // SHARED_SIZE
    const bool locked = fd >= 0 && ::fcntl(fd, F_GETLK, &fl) == 0 && fl.l_type != F_UNLCK;
    _exit(locked ? 0 : 1);
  }
  int status = 0;
  waitpid(pid, &status, 0);
  return WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

TEST(Store, OpeningTheStoreAgainKeepsTheLocksOfTheConnectionsAlreadyOpen) {
  // A second descriptor on the database file closed by this process would drop every POSIX lock
  // the process holds on it, those of SQLite's open connections too (sqlite.org/howtocorrupt.html
  // 2.2): other processes could then checkpoint and reset the WAL under a live connection. Seen as
  // damaged indexes on a 16-core machine when the calibration's heartbeat opened its own connection.
  TempDir dir;
  const std::string path = dir.file("runs.db");
  RunStore writer = RunStore::open(path);
  writer.list_runs({});  // a read: the connection holds its lock
  ASSERT_TRUE(another_process_sees_a_lock(path)) << "the connection's lock is not visible to a second process";
  {
    RunStore reader = RunStore::open_readonly(path);
    RunStore again = RunStore::open(path);
    (void)reader;
    (void)again;
    EXPECT_TRUE(another_process_sees_a_lock(path)) << "opening the store again released the first connection's lock";
  }
  EXPECT_TRUE(another_process_sees_a_lock(path)) << "closing the other connections released the writer's lock";
}

}  // namespace
}  // namespace respin

namespace respin {
namespace {

namespace fs = std::filesystem;

// A complete-looking run directory: run.json and model/config.json.
void write_run_dir(const std::string& dir, const RunRecord& r) {
  fs::create_directories(dir + "/model");
  test::write_bytes(dir + "/model/config.json", "{}");
  test::write_bytes(dir + "/run.json", run_record_to_json(r).dump(2));
}

// What run_calibration and the recorder do: begin, marker in the temporary directory, the
// directory written and renamed into place.
int64_t begun_with_marker(RunStore& store, const RunStart& s) {
  const int64_t id = store.begin_run(s);
  fs::create_directories(s.tmp_dir);
  store.write_run_marker(id, s.tmp_dir);
  return id;
}

// ---- Which folders belong to a run ----

TEST(Store, DeleteHandsBackOnlyTheFoldersThatBelongToTheRun) {
  TempDir dir;
  RunStore store = RunStore::open(dir.file("runs.db"));
  const CalibConfig c = make_config();
  // Run a was cancelled; run b, with the same run directory, finished there.
  RunStart sa = make_start(dir, c, "x");
  const int64_t a = begun_with_marker(store, sa);
  store.end_run(a, RunStatus::Cancelled, "cancelled");
  remove_tree_or_throw(sa.tmp_dir);
  RunStart sb = make_start(dir, c, "x");
  sb.tmp_dir = dir.file("runs/.tmp-x2");
  const int64_t b = begun_with_marker(store, sb);
  write_run_dir(sb.tmp_dir, make_record(c));
  fs::rename(sb.tmp_dir, sb.run_dir);
  store.finish_run(b, make_record(c));

  const DeletedRun gone = store.delete_run(a);
  EXPECT_TRUE(gone.run_dir.empty());
  EXPECT_TRUE(gone.tmp_dir.empty());
  ASSERT_EQ(gone.kept.size(), 1u);
  EXPECT_NE(gone.kept[0].find("kept " + sb.run_dir + ": it does not belong to run " + std::to_string(a) + " (its " +
                              kRunMarkerName + " names another run"),
            std::string::npos)
      << gone.kept[0];
  const DeletedRun mine = store.delete_run(b);
  EXPECT_EQ(mine.run_dir, sb.run_dir);
  EXPECT_TRUE(mine.kept.empty());
}

TEST(Store, RunDirOwnershipNeedsTheMarkerOrTheStoredRecord) {
  TempDir dir;
  const CalibConfig c = make_config();
  const RunRecord rec = make_record(c);
  const std::string record_json = run_record_to_json(rec).dump();
  const std::string d = dir.file("run");
  EXPECT_FALSE(run_dir_ownership(d, "u1", record_json).owned);  // missing
  write_run_dir(d, rec);
  EXPECT_TRUE(run_dir_ownership(d, "u1", record_json).owned);   // no marker, the same record
  EXPECT_FALSE(run_dir_ownership(d, "u1", "").owned);           // no marker, nothing to compare
  EXPECT_FALSE(run_dir_ownership(d, "u1", run_record_to_json(make_record(c, 24, 99.0)).dump()).owned);
  test::write_bytes(d + "/" + kRunMarkerName, R"({"run_id": 4, "uuid": "u1"})");
  EXPECT_TRUE(run_dir_ownership(d, "u1", "").owned);
  const DirOwnership other = run_dir_ownership(d, "u2", record_json);  // the marker decides
  EXPECT_FALSE(other.owned);
  EXPECT_NE(other.reason.find("names another run, u1"), std::string::npos) << other.reason;
  test::write_bytes(d + "/" + kRunMarkerName, "not json");
  EXPECT_FALSE(run_dir_ownership(d, "u1", record_json).owned);
  fs::create_directory_symlink(d, dir.file("link"));
  EXPECT_FALSE(run_dir_ownership(dir.file("link"), "u1", record_json).owned);
}

// A record an older respin stored (without a field written today) still identifies its folder:
// both sides are read and written again before they are compared.
TEST(Store, RunDirOwnershipComparesRecordsAsTodaysReaderReadsThem) {
  TempDir dir;
  const RunRecord rec = make_record(make_config());
  const std::string d = dir.file("run");
  write_run_dir(d, rec);
  nlohmann::json older = run_record_to_json(rec);
  ASSERT_TRUE(older["config"].contains("cuda_device"));
  older["config"].erase("cuda_device");  // records before CUDA device choice had none
  EXPECT_TRUE(run_dir_ownership(d, "u1", older.dump()).owned) << run_dir_ownership(d, "u1", older.dump()).reason;
  older["results"]["quantized_perplexity"] = 1.5;  // but another run is still another run
  EXPECT_FALSE(run_dir_ownership(d, "u1", older.dump()).owned);
}

// A run directory made against another store (a GPU server's) keeps the identity its marker
// names when it is imported, so the folder belongs to the imported run and delete removes it.
TEST(Store, ImportOfAFolderMarkedByAnotherStoreOwnsTheFolder) {
  TempDir dir;
  const CalibConfig c = make_config();
  const RunRecord rec = make_record(c);
  RunStart s;
  {
    RunStore server = RunStore::open(dir.file("server.db"));
    s = make_start(dir, c, "made-there");
    const int64_t id = begun_with_marker(server, s);
    write_run_dir(s.tmp_dir, rec);
    fs::rename(s.tmp_dir, s.run_dir);
    server.finish_run(id, rec);
  }
  RunStore store = RunStore::open(dir.file("runs.db"));
  const ImportedRun i = store.import_run(s.run_dir);
  EXPECT_FALSE(i.repaired);
  const auto d = store.get_run(i.id);
  ASSERT_TRUE(d.has_value());
  EXPECT_TRUE(run_dir_ownership(s.run_dir, d->summary.uuid, "").owned);
  const DeletedRun gone = store.delete_run(i.id);
  EXPECT_EQ(gone.run_dir, s.run_dir);
  EXPECT_TRUE(gone.kept.empty());
}

TEST(Store, DeleteRunsIsAllOrNothing) {
  TempDir dir;
  RunStore store = RunStore::open(dir.file("runs.db"));
  const int64_t a = store.begin_run(make_start(dir, make_config(), "a"));
  store.end_run(a, RunStatus::Failed, "oom");
  const int64_t live = store.begin_run(make_start(dir, make_config(), "live"));
  EXPECT_NE(expect_error([&] { store.delete_runs({a, 999}); }).find("no run 999"), std::string::npos);
  EXPECT_NE(expect_error([&] { store.delete_runs({a, live}); }).find("still running"), std::string::npos);
  EXPECT_TRUE(store.get_run(a).has_value());
  EXPECT_EQ(store.delete_runs({a}).size(), 1u);
  EXPECT_FALSE(store.get_run(a).has_value());
  // A tag is one line of printable text.
  EXPECT_NE(expect_error([&] { store.add_tag(live, "two\nlines"); }).find("one line"), std::string::npos);
  EXPECT_NE(expect_error([&] { store.add_tag(live, "\x1b[31mred"); }).find("one line"), std::string::npos);
}

TEST(Store, ImportRecordsADirectoryOnceAndRepairsTheRunItsMarkerNames) {
  TempDir dir;
  RunStore store = RunStore::open(dir.file("runs.db"));
  const CalibConfig c = make_config();
  const RunRecord rec = make_record(c);
  // Made elsewhere (no marker): a new finished run.
  write_run_dir(dir.file("elsewhere"), rec);
  const ImportedRun i = store.import_run(dir.file("elsewhere") + "/");
  EXPECT_FALSE(i.repaired);
  auto d = store.get_run(i.id);
  ASSERT_TRUE(d.has_value());
  EXPECT_EQ(d->summary.status, RunStatus::Finished);
  EXPECT_EQ(d->summary.run_dir, dir.file("elsewhere"));
  ASSERT_TRUE(d->record.has_value());
  EXPECT_EQ(run_record_to_json(*d->record), run_record_to_json(rec));
  EXPECT_EQ(d->summary.quantized_perplexity, rec.results.quantized_perplexity);
  EXPECT_EQ(d->loss.size(), 5u);
  EXPECT_NE(expect_error([&] { store.import_run(dir.file("elsewhere")); }).find("already recorded as run " + std::to_string(i.id)),
            std::string::npos);
  // A writer that died after its directory was complete.
  const RunStart s = make_start(dir, c, "killed");
  const int64_t k = begun_with_marker(store, s);
  write_run_dir(s.tmp_dir, rec);
  fs::rename(s.tmp_dir, s.run_dir);
  EXPECT_NE(expect_error([&] { store.import_run(s.run_dir); }).find("is still running"), std::string::npos);
  store.set_stale_after(std::chrono::milliseconds(0));
  std::this_thread::sleep_for(std::chrono::milliseconds(5));
  const ImportedRun r = store.import_run(s.run_dir);
  EXPECT_TRUE(r.repaired);
  EXPECT_EQ(r.id, k);
  EXPECT_EQ(r.previous, RunStatus::Interrupted);
  d = store.get_run(k);
  EXPECT_EQ(d->summary.status, RunStatus::Finished);
  EXPECT_TRUE(d->summary.tmp_dir.empty());
  EXPECT_EQ(run_record_to_json(*d->record), run_record_to_json(rec));
  EXPECT_EQ(store.list_runs().size(), 2u);
  EXPECT_NE(expect_error([&] { store.import_run(dir.file("nothing")); }).find("no such run directory"), std::string::npos);
  fs::create_directories(dir.file("empty"));
  EXPECT_NE(expect_error([&] { store.import_run(dir.file("empty")); }).find("no run.json"), std::string::npos);
}

// ---- Stores that are fine but cannot be used as asked ----

TEST(Store, ALockedStoreIsReportedAsLockedNotDamaged) {
  TempDir dir;
  const std::string path = dir.file("runs.db");
  RunStore::open(path).begin_run(make_start(dir, make_config(), "a"));
  Database holder(path, Database::Mode::ReadWrite);
  holder.exec("PRAGMA locking_mode = EXCLUSIVE");
  holder.exec("BEGIN EXCLUSIVE");
  holder.exec("UPDATE runs SET note = 'held'");
  RunStoreOptions o;
  o.busy_timeout_ms = 100;
  for (bool read_only : {true, false}) {
    const std::string msg = expect_error([&] { read_only ? (void)RunStore::open_readonly(path, o) : (void)RunStore::open(path, o); });
    EXPECT_NE(msg.find(path + ": locked by another process"), std::string::npos) << msg;
    EXPECT_EQ(msg.find("damaged"), std::string::npos) << msg;
  }
  holder.exec("ROLLBACK");
}

// Runs `f` in a child process without root's powers over files (as user nobody when this is
// root); returns its error message, or "" when it did not throw.
std::string in_unprivileged_child(const std::function<void()>& f) {
  int fds[2];
  if (pipe(fds) != 0) return "pipe failed";
  const pid_t pid = fork();
  if (pid == 0) {
    close(fds[0]);
    std::string out;
    if (geteuid() == 0 && (setgid(65534) != 0 || setuid(65534) != 0)) out = "setuid failed";
    else {
      try {
        f();
      } catch (const std::exception& e) {
        out = e.what();
      }
    }
    if (write(fds[1], out.data(), out.size()) < 0) _exit(2);
    _exit(0);
  }
  close(fds[1]);
  std::string out;
  char buf[4096];
  for (ssize_t n; (n = read(fds[0], buf, sizeof buf)) > 0;) out.append(buf, static_cast<size_t>(n));
  close(fds[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  return out;
}

TEST(Store, AFolderWithoutWritePermissionAndAReadOnlyFileAreSaidForWhatTheyAre) {
  TempDir dir;
  chmod(dir.path().c_str(), 0755);
  // The folder cannot take runs.db-wal and runs.db-shm; the file itself is writable.
  const std::string folder = dir.file("ro"), db = folder + "/runs.db";
  fs::create_directories(folder);
  RunStore::open(db).begin_run(make_start(dir, make_config(), "a"));
  chmod(db.c_str(), 0666);
  chmod(folder.c_str(), 0555);
  for (bool read_only : {true, false}) {
    const std::string msg = in_unprivileged_child([&] { read_only ? (void)RunStore::open_readonly(db) : (void)RunStore::open(db); });
    EXPECT_NE(msg.find(db + ": the folder " + folder + " is not writable"), std::string::npos) << msg;
    EXPECT_EQ(msg.find("damaged"), std::string::npos) << msg;
  }
  chmod(folder.c_str(), 0755);
  // A file that cannot be written: refused on open, before any run would start.
  const std::string rf = dir.file("rf"), db2 = rf + "/runs.db";
  fs::create_directories(rf);
  chmod(rf.c_str(), 0777);
  RunStore::open(db2);
  chmod(db2.c_str(), 0444);
  const std::string h = file_hash(db2);
  const std::string msg = in_unprivileged_child([&] { RunStore::open(db2); });
  EXPECT_NE(msg.find(db2 + ": the run store is read-only"), std::string::npos) << msg;
  EXPECT_EQ(in_unprivileged_child([&] { RunStore::open_readonly(db2).list_runs(); }), "");
  EXPECT_EQ(file_hash(db2), h);
}

TEST(Store, AFullDiskFailsTheWriteAndLeavesTheStoreIntact) {
  TempDir dir;
  const std::string path = dir.file("runs.db");
  int64_t id = 0;
  {
    RunStore s = RunStore::open(path);
    id = s.begin_run(make_start(dir, make_config(), "a"));
    s.append_loss(id, 0, {2.0, 1.0});
  }
  std::vector<SiteStats> big;
  for (int layer = 0; layer < 28; ++layer)
    for (HookSite site : {HookSite::AttnInput, HookSite::OProjInput}) big.push_back(make_site(layer, site, 4096, layer + 1));
  const pid_t pid = fork();
  if (pid == 0) {
    // RLIMIT_FSIZE makes write() fail with EFBIG as a full disk fails with ENOSPC.
    RunStore s = RunStore::open(path);
    std::signal(SIGXFSZ, SIG_IGN);
    struct rlimit lim {};
    getrlimit(RLIMIT_FSIZE, &lim);
    lim.rlim_cur = fs::file_size(path) + (64 << 10);
    setrlimit(RLIMIT_FSIZE, &lim);
    try {
      s.put_stats(id, StatsStage::After, big);
    } catch (const Error& e) {
      _exit(std::string(e.what()).find(path + ": ") == 0 ? 0 : 4);
    }
    _exit(3);
  }
  int status = 0;
  waitpid(pid, &status, 0);
  ASSERT_TRUE(WIFEXITED(status)) << status;
  EXPECT_EQ(WEXITSTATUS(status), 0) << "3: the write did not fail; 4: its error did not name the store";
  {
    Database raw(path, Database::Mode::ReadOnly);
    EXPECT_EQ(raw.query_text("PRAGMA integrity_check"), "ok");
  }
  RunStore s = RunStore::open(path);
  EXPECT_TRUE(s.layer_stats_summary(id, StatsStage::After).empty());  // the transaction rolled back
  EXPECT_EQ(s.get_run(id)->loss.size(), 2u);
  s.put_stats(id, StatsStage::After, {make_site(0, HookSite::AttnInput, 8, 1)});
  s.finish_run(id, make_record(make_config()));
  EXPECT_EQ(s.get_run(id)->summary.status, RunStatus::Finished);
}

TEST(Store, TwoWriterProcessesBothRecordEverything) {
  TempDir dir;
  const std::string path = dir.file("runs.db");
  RunStore::open(path);
  const CalibConfig c = make_config();
  std::vector<pid_t> pids;
  for (int w = 0; w < 2; ++w) {
    const pid_t pid = fork();
    if (pid == 0) {
      try {
        RunStore s = RunStore::open(path);
        for (int i = 0; i < 12; ++i) {
          const int64_t id = s.begin_run(make_start(dir, c, "w" + std::to_string(w) + "-" + std::to_string(i)));
          s.append_loss(id, 0, {3.0, 2.0, 1.0});
          s.put_stats(id, StatsStage::Before, {make_site(0, HookSite::AttnInput, 16, static_cast<uint32_t>(id))});
          s.finish_run(id, make_record(c));
        }
      } catch (const std::exception& e) {
        std::fprintf(stderr, "writer %d: %s\n", w, e.what());
        _exit(1);
      }
      _exit(0);
    }
    pids.push_back(pid);
  }
  for (pid_t pid : pids) {
    int status = 0;
    waitpid(pid, &status, 0);
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  }
  RunStore s = RunStore::open(path);
  const auto runs = s.list_runs();
  ASSERT_EQ(runs.size(), 24u);
  for (const RunSummary& r : runs) {
    EXPECT_EQ(r.status, RunStatus::Finished);
    EXPECT_EQ(s.layer_stats_summary(r.id, StatsStage::Before).size(), 1u);
  }
  Database raw(path, Database::Mode::ReadOnly);
  EXPECT_EQ(raw.query_text("PRAGMA integrity_check"), "ok");
}

// tests/data/store_v1.db was written by respin's v1 schema (kSchemaV1, frozen) with the sqlite3
// shell: run 1 finished with its record, run 2 running (its writer never ended it), run 3 failed.
TEST(Store, MigratesACommittedV1FileWithARunningRun) {
  const std::string src = (fs::path(__FILE__).parent_path() / "data" / "store_v1.db").string();
  ASSERT_TRUE(fs::is_regular_file(src)) << src;
  TempDir dir;
  const std::string path = dir.file("runs.db");
  fs::copy_file(src, path);
  RunStore store = RunStore::open(path);
  EXPECT_EQ(store.schema_version(), kRunStoreSchemaVersion);
  const auto runs = store.list_runs();
  ASSERT_EQ(runs.size(), 3u);
  EXPECT_EQ(runs[0].status, RunStatus::Finished);
  ASSERT_TRUE(runs[0].quantized_perplexity.has_value());
  auto d = store.get_run(1);
  ASSERT_TRUE(d.has_value() && d->record.has_value());
  EXPECT_EQ(d->record->results.quantized_perplexity, *runs[0].quantized_perplexity);
  EXPECT_EQ(d->loss.size(), 2u);
  EXPECT_EQ(runs[1].status, RunStatus::Interrupted);  // no heartbeat in v1
  EXPECT_TRUE(runs[1].tmp_dir.empty());
  EXPECT_EQ(store.get_run(2)->loss.size(), 3u);
  EXPECT_EQ(runs[2].status, RunStatus::Failed);
  EXPECT_EQ(runs[2].message, "out of memory");
  EXPECT_EQ(store.stale_runs().size(), 1u);
  store.mark_interrupted(2);
  EXPECT_EQ(store.get_run(2)->summary.status, RunStatus::Interrupted);
  EXPECT_GT(store.begin_run(make_start(dir, make_config(), "new")), 3);
  Database raw(path, Database::Mode::ReadOnly);
  EXPECT_EQ(raw.query_text("PRAGMA integrity_check"), "ok");
}

}  // namespace
}  // namespace respin
