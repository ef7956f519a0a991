// The run store through the `respin` binary: calibrate and sweep record into it, `runs` reads and
// curates it, a killed calibration reads as interrupted without damaging anything, a reader and a
// writer in two processes do not block each other, and a file that is not a store is never touched.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <thread>

#include "core/store/run_store.h"
#include "core/store/sqlite.h"
#include "core/util/sha256.h"
#include "tests/cli_util.h"

using namespace respin;
using namespace respin::test;
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

class CliRuns : public Cli {
 protected:
  void SetUp() override {
    Cli::SetUp();
    std::string text;
    for (int i = 0; i < 30; ++i) text += kText;
    write_bytes(dir.file("long.txt"), text);
    db = dir.file("runs.db");
  }
  std::string calib(const std::string& method, const std::string& out, const std::string& extra = "", int iters = 2) {
    const std::string t = dir.file("long.txt");
    return "calibrate --method " + method + " --model " + model + " --calib-text " + t + " --eval-text " + t +
           " --seq-len 16 --samples 4 --iters " + std::to_string(iters) + " --batch 2 --threads 1 --eval-windows 8 --db " +
           db + " --out " + out + " " + extra;
  }
  json runs_json(const std::string& args) {
    Result r = run("runs --db " + db + " " + args + " --json");
    EXPECT_EQ(r.code, 0) << r.err;
    return json::parse(r.out);
  }
  // Starts `respin ARGS` in the background with stderr to `err`.
  pid_t spawn(const std::string& args, const std::string& err) {
    pid_t pid = fork();
    if (pid == 0) {
      if (!freopen("/dev/null", "w", stdout) || !freopen(err.c_str(), "w", stderr)) _exit(126);
      const std::string cmd = std::string(RESPIN_BIN) + " " + args;
      execl("/bin/sh", "sh", "-c", ("exec " + cmd).c_str(), static_cast<char*>(nullptr));
      _exit(127);
    }
    return pid;
  }
  bool wait_for(const std::string& file, const std::string& text, int seconds) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(seconds);
    while (std::chrono::steady_clock::now() < deadline) {
      if (fs::exists(file) && read_bytes(file).find(text) != std::string::npos) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    return false;
  }
  std::string db;
};

}  // namespace

TEST_F(CliRuns, CalibrateRecordsAndRunsVerbsReadAndCurate) {
  Result a = run(calib("rtn", dir.file("a")));
  ASSERT_EQ(a.code, 0) << a.err;
  EXPECT_NE(a.err.find("recorded as run 1 in " + db), std::string::npos) << a.err;
  Result b = run(calib("respin", dir.file("b"), "--rank 4"));
  ASSERT_EQ(b.code, 0) << b.err;

  json list = runs_json("list");
  ASSERT_EQ(list.size(), 2u);
  EXPECT_EQ(list[0]["method"], "rtn");
  EXPECT_EQ(list[1]["method"], "respin");
  EXPECT_EQ(list[1]["applied_rank"], 4);
  EXPECT_EQ(list[1]["status"], "finished");
  // The store holds exactly what the run directory says.
  const json run_b = json::parse(read_bytes(dir.file("b") + "/run.json"));
  EXPECT_EQ(list[1]["quantized_perplexity"], run_b["results"]["quantized_perplexity"]);
  EXPECT_EQ(list[1]["run_dir"], fs::absolute(dir.file("b")).string());
  EXPECT_EQ(runs_json("list --method respin").size(), 1u);
  EXPECT_EQ(runs_json("list --model " + model).size(), 2u);
  EXPECT_EQ(runs_json("list --model " + dir.file("other")).size(), 0u);

  json show = runs_json("show 2");
  EXPECT_EQ(show["record"], run_b);
  EXPECT_EQ(show["loss"].size(), 2u);  // two learning steps, recorded while the run went on
  EXPECT_EQ(show["loss"][0], run_b["method"]["training"]["loss"][0]);

  // Tags and notes.
  ASSERT_EQ(run("runs --db " + db + " tag 2 keep").code, 0);
  ASSERT_EQ(run("runs --db " + db + " note 2 'rank 4, first try'").code, 0);
  EXPECT_EQ(runs_json("list --tag keep").size(), 1u);
  EXPECT_EQ(runs_json("show 2")["note"], "rank 4, first try");
  ASSERT_EQ(run("runs --db " + db + " tag 2 keep --remove").code, 0);
  EXPECT_EQ(runs_json("list --tag keep").size(), 0u);

  // Compare: only the differing config fields, metrics side by side.
  json cmp = runs_json("compare 1 2");
  EXPECT_EQ(cmp["config_differences"]["method"], json::array({"rtn", "respin"}));
  EXPECT_EQ(cmp["config_differences"]["rank"], json::array({32, 4}));
  EXPECT_FALSE(cmp["config_differences"].contains("wbits"));
  EXPECT_EQ(cmp["metrics"]["quantized_perplexity"][1], run_b["results"]["quantized_perplexity"]);
  Result text = run("runs --db " + db + " compare 1 2");
  EXPECT_NE(text.out.find("config differences"), std::string::npos) << text.out;

  // Run data export: JSON and CSV tables.
  ASSERT_EQ(run("runs --db " + db + " export 1 2 --format json --out " + dir.file("data.json")).code, 0);
  json data = json::parse(read_bytes(dir.file("data.json")));
  ASSERT_EQ(data.size(), 2u);
  EXPECT_EQ(data[1]["record"], run_b);
  EXPECT_EQ(data[1]["layer_stats"].size(), 2u * 2 * 7);  // before and after, 2 layers x 7 sites
  ASSERT_EQ(run("runs --db " + db + " export 1 2 --format csv --out " + dir.file("data.csv")).code, 0);
  const std::string loss_csv = read_bytes(dir.file("data.loss.csv"));
  EXPECT_EQ(loss_csv.rfind("run_id,step,loss\n", 0), 0u);
  EXPECT_EQ(std::count(loss_csv.begin(), loss_csv.end(), '\n'), 3);  // header + two steps of run 2
  const std::string layers_csv = read_bytes(dir.file("data.layers.csv"));
  EXPECT_EQ(std::count(layers_csv.begin(), layers_csv.end(), '\n'), 1 + 2 * 2 * 2 * 7);
  EXPECT_NE(read_bytes(dir.file("data.csv")).find("quantized_perplexity"), std::string::npos);

  // Delete asks first: without a terminal and without --yes nothing goes.
  Result no = run("runs --db " + db + " delete 1");
  EXPECT_EQ(no.code, 1);
  EXPECT_NE(no.err.find("refusing without --yes"), std::string::npos) << no.err;
  EXPECT_TRUE(fs::exists(dir.file("a")));
  ASSERT_EQ(run("runs --db " + db + " delete 1 --yes").code, 0);
  EXPECT_FALSE(fs::exists(dir.file("a")));
  EXPECT_EQ(runs_json("list").size(), 1u);
}

TEST_F(CliRuns, SweepDerivesEveryRankFromOneLearnedSetOfRotations) {
  Result s = run("sweep --method respin --ranks 0,4,full --model " + model + " --calib-text " + dir.file("long.txt") +
                 " --eval-text " + dir.file("long.txt") + " --seq-len 16 --samples 4 --iters 2 --batch 2 --threads 1" +
                 " --eval-windows 8 --db " + db + " --out " + dir.file("sweep"));
  ASSERT_EQ(s.code, 0) << s.err;
  EXPECT_NE(s.err.find("[sweep 3/3]"), std::string::npos) << s.err;
  EXPECT_NE(s.err.find("ETA"), std::string::npos) << s.err;
  json list = runs_json("list --sweep 1");
  ASSERT_EQ(list.size(), 3u);
  const json r0 = json::parse(read_bytes(dir.file("sweep/w4a4kv4-r0/run.json")));
  const json r4 = json::parse(read_bytes(dir.file("sweep/w4a4kv4-r4/run.json")));
  EXPECT_EQ(r0["method"]["rotations_from"], "");
  EXPECT_EQ(r4["method"]["rotations_from"], fs::absolute(dir.file("sweep/w4a4kv4-r0")).string());
  EXPECT_EQ(r4["method"]["training"], r0["method"]["training"]);
  // The same rotations, bit for bit.
  EXPECT_EQ(read_bytes(dir.file("sweep/w4a4kv4-r4/rotations.safetensors")),
            read_bytes(dir.file("sweep/w4a4kv4-r0/rotations.safetensors")));
  // A rank derived in the sweep equals the same rank learned on its own (same seed and data).
  Result alone = run(calib("respin", dir.file("alone"), "--rank 4"));
  ASSERT_EQ(alone.code, 0) << alone.err;
  EXPECT_EQ(json::parse(read_bytes(dir.file("alone/run.json")))["results"]["quantized_perplexity"],
            r4["results"]["quantized_perplexity"]);

  json table = runs_json("compare --sweep 1");
  ASSERT_EQ(table["runs"].size(), 3u);
  EXPECT_EQ(table["runs"][0]["rank"], 0);
  EXPECT_EQ(table["runs"][1]["rank"], 4);
  EXPECT_EQ(table["runs"][2]["rank"], 32);  // full = hidden size
  EXPECT_EQ(table["runs"][1]["online_parameters_per_layer"], 2 * (32 * 4 + 4 * 4));
  EXPECT_EQ(table["runs"][1]["online_macs_per_token_per_layer"], 2 * (2 * 32 * 4 + 4 * 4));

  // A sweep refuses ranks for a method without them, before any work.
  Result bad = run("sweep --method quarot --ranks 4 --model " + model + " --db " + db + " --out " + dir.file("s2"));
  EXPECT_EQ(bad.code, 1);
  EXPECT_NE(bad.err.find("--ranks applies to --method respin only"), std::string::npos) << bad.err;
  EXPECT_FALSE(fs::exists(dir.file("s2")));
}

TEST_F(CliRuns, KilledCalibrationReadsInterruptedAndCleansUp) {
  ASSERT_EQ(run(calib("rtn", dir.file("earlier"))).code, 0);
  const std::string before = read_bytes(db);
  (void)before;
  const std::string err = dir.file("err");
  pid_t pid = spawn(calib("spinquant", dir.file("killed"), "", 100000), err);
  ASSERT_GT(pid, 0);
  ASSERT_TRUE(wait_for(err, "rotate", 120)) << read_bytes(err);
  kill(pid, SIGKILL);
  int status = 0;
  waitpid(pid, &status, 0);
  ASSERT_TRUE(WIFSIGNALED(status));

  // The file is intact, the earlier run is intact, and the killed one reads interrupted at once
  // (its writer's pid is gone on this host).
  {
    sqlite::Database d(db, sqlite::Database::Mode::ReadOnly);
    EXPECT_EQ(d.query_text("PRAGMA integrity_check"), "ok");
  }
  json list = runs_json("list");
  ASSERT_EQ(list.size(), 2u);
  EXPECT_EQ(list[0]["status"], "finished");
  EXPECT_EQ(list[0]["quantized_perplexity"],
            json::parse(read_bytes(dir.file("earlier/run.json")))["results"]["quantized_perplexity"]);
  EXPECT_EQ(list[1]["status"], "interrupted");
  ASSERT_TRUE(list[1]["tmp_dir"].is_string());
  const std::string tmp = list[1]["tmp_dir"];
  EXPECT_TRUE(fs::is_directory(tmp)) << tmp;
  EXPECT_FALSE(fs::exists(dir.file("killed")));

  // One command reports and removes what it left.
  Result clean = run("runs --db " + db + " clean --yes");
  ASSERT_EQ(clean.code, 0) << clean.err;
  EXPECT_NE(clean.out.find(tmp), std::string::npos) << clean.out;
  EXPECT_FALSE(fs::exists(tmp));
  json after = runs_json("list --status interrupted");
  ASSERT_EQ(after.size(), 1u);
  EXPECT_TRUE(after[0]["tmp_dir"].is_null());
}

TEST_F(CliRuns, ReaderAndWriterInTwoProcessesDoNotBlockEachOther) {
  ASSERT_EQ(run(calib("rtn", dir.file("first"))).code, 0);
  const std::string err = dir.file("err");
  pid_t pid = spawn(calib("spinquant", dir.file("writer"), "", 40), err);
  ASSERT_GT(pid, 0);
  ASSERT_TRUE(wait_for(err, "rotate", 120)) << read_bytes(err);
  // While the writer records its loss curve and heartbeat, reads come back promptly.
  double slowest = 0;
  int reads = 0;
  for (int i = 0; i < 15; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    Result r = run("runs --db " + db + " list --json");
    slowest = std::max(slowest, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    ASSERT_EQ(r.code, 0) << r.err;
    EXPECT_EQ(json::parse(r.out).size(), 2u);
    ++reads;
  }
  // A write from a second process (a tag) goes through while the calibration writes too.
  Result tag = run("runs --db " + db + " tag 1 concurrent");
  EXPECT_EQ(tag.code, 0) << tag.err;
  int status = 0;
  waitpid(pid, &status, 0);
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << read_bytes(err);
  // Each read is a whole process start (libtorch's load included); the store's share is small.
  EXPECT_LT(slowest, 5.0) << reads << " reads";
  std::printf("[ reader ] slowest of %d `runs list` while calibrating: %.3f s\n", reads, slowest);
  json list = runs_json("list");
  EXPECT_EQ(list[1]["status"], "finished");
  EXPECT_EQ(list[0]["tags"], json::array({"concurrent"}));
}

TEST_F(CliRuns, AFileThatIsNotAStoreIsRefusedAndNeverModified) {
  for (const std::string& content : {std::string("this is a text file, not a database\n"), std::string(),
                                     std::string("SQLite format 3") + std::string(1, '\0') + std::string(50, 'x')}) {
    write_bytes(db, content);
    const std::string sum = sha256_hex(read_bytes(db));
    Result r = run(calib("rtn", dir.file("x")));
    EXPECT_EQ(r.code, 1);
    EXPECT_NE(r.err.find(db), std::string::npos) << r.err;
    EXPECT_FALSE(fs::exists(dir.file("x")));
    Result l = run("runs --db " + db + " list");
    EXPECT_EQ(l.code, 1);
    EXPECT_NE(l.err.find(db), std::string::npos) << l.err;
    EXPECT_EQ(sha256_hex(read_bytes(db)), sum);
  }
}
