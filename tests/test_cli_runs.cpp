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
#include "core/util/fs.h"
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
  // The same rotations, bit for bit (read_bytes of a missing file is "", so both must exist).
  const std::string rot4 = read_bytes(dir.file("sweep/w4a4kv4-r4/rotations.safetensors"));
  const std::string rot0 = read_bytes(dir.file("sweep/w4a4kv4-r0/rotations.safetensors"));
  ASSERT_TRUE(fs::is_regular_file(dir.file("sweep/w4a4kv4-r4/rotations.safetensors")));
  ASSERT_TRUE(fs::is_regular_file(dir.file("sweep/w4a4kv4-r0/rotations.safetensors")));
  EXPECT_GT(rot0.size(), 1000u);
  EXPECT_EQ(rot4, rot0);
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
  // A rank calibrate refuses is refused by the sweep too, before any work.
  Result huge = run("sweep --method respin --ranks 4,1048577 --model " + model + " --db " + db + " --out " + dir.file("s3"));
  EXPECT_EQ(huge.code, 1);
  EXPECT_NE(huge.err.find("'1048577' is not a rank"), std::string::npos) << huge.err;
  EXPECT_FALSE(fs::exists(dir.file("s3")));
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
  // More steps than the reads need on any machine; stopped with Ctrl-C once they are done.
  pid_t pid = spawn(calib("spinquant", dir.file("writer"), "", 100000), err);
  ASSERT_GT(pid, 0);
  ASSERT_TRUE(wait_for(err, "rotate", 120)) << read_bytes(err);
  // While the writer records its loss curve and heartbeat, reads come back promptly, and they
  // see it running with its loss curve growing.
  double slowest = 0;
  int reads = 0;
  size_t first_running_loss = 0;
  bool saw_running = false, saw_growth = false;
  for (int i = 0; i < 15; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    Result r = run("runs --db " + db + " list --json");
    slowest = std::max(slowest, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    ASSERT_EQ(r.code, 0) << r.err;
    EXPECT_EQ(json::parse(r.out).size(), 2u);
    ++reads;
    Result show = run("runs --db " + db + " show 2 --json");
    ASSERT_EQ(show.code, 0) << show.err;
    const json j = json::parse(show.out);
    if (j["status"] == "running") {
      const size_t n = j["loss"].size();
      if (!saw_running) first_running_loss = n;
      else if (n > first_running_loss) saw_growth = true;
      saw_running = true;
    }
    if (saw_growth && i >= 4) break;
  }
  EXPECT_TRUE(saw_running && saw_growth) << "no read saw the writer running with a growing loss curve";
  // A write from a second process (a tag) goes through while the calibration writes too.
  Result tag = run("runs --db " + db + " tag 1 concurrent");
  EXPECT_EQ(tag.code, 0) << tag.err;
  int status = 0;
  ASSERT_EQ(kill(pid, SIGINT), 0);
  waitpid(pid, &status, 0);
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 130) << read_bytes(err);
  // Each read is a whole process start (libtorch's load included); the store's share is small.
  EXPECT_LT(slowest, 5.0) << reads << " reads";
  std::printf("[ reader ] slowest of %d `runs list` while calibrating: %.3f s\n", reads, slowest);
  json list = runs_json("list");
  EXPECT_EQ(list[1]["status"], "cancelled");
  EXPECT_EQ(list[0]["tags"], json::array({"concurrent"}));
}

// ---- Which folders belong to a run (docs/store.md) ----

TEST_F(CliRuns, DeletingACancelledRunKeepsTheFolderALaterRunWroteAtTheSameOut) {
  const std::string out = dir.file("x"), err = dir.file("err");
  pid_t pid = spawn(calib("spinquant", out, "", 100000), err);
  ASSERT_GT(pid, 0);
  ASSERT_TRUE(wait_for(err, "rotate", 120)) << read_bytes(err);
  kill(pid, SIGINT);
  int status = 0;
  waitpid(pid, &status, 0);
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 130) << read_bytes(err);
  EXPECT_NE(read_bytes(err).find("recorded as run 1 in " + db + " (was cancelled)"), std::string::npos) << read_bytes(err);
  ASSERT_FALSE(fs::exists(out));
  Result again = run(calib("rtn", out));
  ASSERT_EQ(again.code, 0) << again.err;
  const std::string run_json = read_bytes(out + "/run.json");
  ASSERT_FALSE(run_json.empty());

  Result del = run("runs --db " + db + " delete 1 --yes");
  ASSERT_EQ(del.code, 0) << del.err;
  EXPECT_NE(del.err.find("kept " + fs::absolute(out).string() + ": it does not belong to run 1"), std::string::npos) << del.err;
  EXPECT_EQ(read_bytes(out + "/run.json"), run_json);
  json list = runs_json("list");
  ASSERT_EQ(list.size(), 1u);
  EXPECT_EQ(list[0]["id"], 2);
  EXPECT_EQ(list[0]["status"], "finished");
  // Its own run deletes its folder.
  ASSERT_EQ(run("runs --db " + db + " delete 2 --yes").code, 0);
  EXPECT_FALSE(fs::exists(out));
}

TEST_F(CliRuns, DeletingAMovedRunKeepsTheFolderNowAtItsOldPath) {
  ASSERT_EQ(run(calib("rtn", dir.file("a"))).code, 0);
  ASSERT_EQ(run(calib("rtn", dir.file("b"))).code, 0);
  fs::rename(dir.file("a"), dir.file("moved"));
  fs::create_directories(dir.file("a"));
  write_bytes(dir.file("a/mine.txt"), "the user's");
  Result del = run("runs --db " + db + " delete 1 --yes");
  ASSERT_EQ(del.code, 0) << del.err;
  EXPECT_NE(del.err.find("kept " + fs::absolute(dir.file("a")).string() + ": it does not belong to run 1"),
            std::string::npos) << del.err;
  EXPECT_EQ(read_bytes(dir.file("a/mine.txt")), "the user's");
  EXPECT_TRUE(fs::is_regular_file(dir.file("moved/run.json")));
  // A run directory without its marker (recorded before markers, or imported) is still the
  // run's when its run.json is the record the store holds.
  fs::remove(dir.file("b/.respin-run.json"));
  ASSERT_EQ(run("runs --db " + db + " delete 2 --yes").code, 0);
  EXPECT_FALSE(fs::exists(dir.file("b")));
  EXPECT_EQ(runs_json("list").size(), 0u);
}

TEST_F(CliRuns, KilledInsideAppendLossLeavesNoHalfWrittenRowsAndCleanKeepsWhatIsNotItsOwn) {
  ASSERT_EQ(run(calib("rtn", dir.file("earlier"))).code, 0);
  const json before = runs_json("show 1");
  setenv("RESPIN_STORE_FAULT", "append_loss:kill", 1);
  Result killed = run(calib("spinquant", dir.file("killed"), "", 50));
  unsetenv("RESPIN_STORE_FAULT");
  EXPECT_NE(killed.code, 0);
  EXPECT_EQ(killed.err.find("recorded as run"), std::string::npos) << killed.err;
  {
    sqlite::Database d(db, sqlite::Database::Mode::ReadOnly);
    EXPECT_EQ(d.query_text("PRAGMA integrity_check"), "ok");
    EXPECT_EQ(d.query_int64("SELECT count(*) FROM run_loss WHERE run_id = 2"), 0);  // the batch died with it
  }
  EXPECT_EQ(runs_json("show 1"), before);
  json list = runs_json("list");
  ASSERT_EQ(list.size(), 2u);
  EXPECT_EQ(list[1]["status"], "interrupted");
  const std::string tmp = list[1]["tmp_dir"];
  ASSERT_TRUE(fs::is_regular_file(tmp + "/.respin-run.json")) << tmp;

  // Something else now at the temporary path is kept.
  remove_tree(tmp);
  fs::create_directories(tmp);
  write_bytes(tmp + "/other.txt", "not the run's");
  Result clean = run("runs --db " + db + " clean --yes");
  ASSERT_EQ(clean.code, 0) << clean.err;
  EXPECT_NE(clean.out.find("kept " + tmp + ": it does not belong to run 2"), std::string::npos) << clean.out;
  EXPECT_EQ(read_bytes(tmp + "/other.txt"), "not the run's");
}

TEST_F(CliRuns, AFullDiskAtTheFinalRecordIsReportedOnceAndImportRecordsTheRun) {
  const std::string out = dir.file("x");
  setenv("RESPIN_STORE_FAULT", "finish_run:full", 1);
  Result r = run(calib("rtn", out));
  unsetenv("RESPIN_STORE_FAULT");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.err.find("could not record the end of run 1"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("runs --db " + db + " import " + fs::absolute(out).string()), std::string::npos) << r.err;
  EXPECT_EQ(r.err.find("recorded as run"), std::string::npos) << r.err;
  json list = runs_json("list");
  ASSERT_EQ(list.size(), 1u);
  EXPECT_EQ(list[0]["status"], "interrupted");
  EXPECT_TRUE(list[0]["quantized_perplexity"].is_null());

  Result imp = run("runs --db " + db + " import " + out);
  ASSERT_EQ(imp.code, 0) << imp.err;
  EXPECT_NE(imp.err.find("recorded run 1 (it read interrupted) as finished"), std::string::npos) << imp.err;
  list = runs_json("list");
  ASSERT_EQ(list.size(), 1u);
  EXPECT_EQ(list[0]["status"], "finished");
  EXPECT_TRUE(list[0]["tmp_dir"].is_null());
  const json record = json::parse(read_bytes(out + "/run.json"));
  EXPECT_EQ(list[0]["quantized_perplexity"], record["results"]["quantized_perplexity"]);
  EXPECT_EQ(runs_json("show 1")["record"], record);
  Result twice = run("runs --db " + db + " import " + out + "/");
  EXPECT_EQ(twice.code, 1);
  EXPECT_NE(twice.err.find("already recorded as run 1"), std::string::npos) << twice.err;
}

TEST_F(CliRuns, KilledJustAfterTheFinalRenameImportRepairsTheRow) {
  ASSERT_EQ(run(calib("rtn", dir.file("earlier"))).code, 0);
  const json before = runs_json("show 1");
  const std::string out = dir.file("x");
  setenv("RESPIN_STORE_FAULT", "finish_run:kill", 1);
  Result r = run(calib("rtn", out));
  unsetenv("RESPIN_STORE_FAULT");
  EXPECT_NE(r.code, 0);
  EXPECT_EQ(r.err.find("recorded as run"), std::string::npos) << r.err;
  ASSERT_TRUE(fs::is_regular_file(out + "/run.json"));
  {
    sqlite::Database d(db, sqlite::Database::Mode::ReadOnly);
    EXPECT_EQ(d.query_text("PRAGMA integrity_check"), "ok");
    EXPECT_EQ(d.query_int64("SELECT count(*) FROM run_phases WHERE run_id = 2"), 0);  // finish_run rolled back
  }
  EXPECT_EQ(runs_json("show 1"), before);
  json show = runs_json("show 2");
  EXPECT_EQ(show["status"], "interrupted");
  EXPECT_TRUE(show["record"].is_null());
  Result clean = run("runs --db " + db + " clean --yes");
  ASSERT_EQ(clean.code, 0) << clean.err;
  EXPECT_NE(clean.out.find("is complete; record it with `respin runs --db " + db + " import"), std::string::npos) << clean.out;
  EXPECT_TRUE(fs::is_regular_file(out + "/run.json"));
  Result imp = run("runs --db " + db + " import " + out);
  ASSERT_EQ(imp.code, 0) << imp.err;
  show = runs_json("show 2");
  EXPECT_EQ(show["status"], "finished");
  EXPECT_EQ(show["record"], json::parse(read_bytes(out + "/run.json")));
  EXPECT_EQ(show["layer_stats"].is_null(), true);
}

// A folder that appears at --out while the run works is neither replaced nor the reason the
// finished result is lost: the run fails naming the folder, keeps the complete run in its
// temporary directory, `runs clean` leaves that alone, and `runs import` records it.
TEST_F(CliRuns, AnOutFolderThatAppearsMidRunKeepsTheFinishedRun) {
  const std::string out = dir.file("late");
  const pid_t pid = spawn(calib("spinquant", out, "", 40), dir.file("late.err"));
  // The temporary sibling exists from the first phase to the last; make --out as soon as it does.
  std::string tmp;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
  while (tmp.empty() && std::chrono::steady_clock::now() < deadline) {
    for (const DirEntry& e : list_directory(dir.path()))
      if (e.name.rfind("late.partial-", 0) == 0) tmp = dir.file(e.name);
    if (tmp.empty()) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  ASSERT_FALSE(tmp.empty()) << "the run never made its temporary directory";
  // Held still while the folder appears, so the run cannot have finished in between.
  ASSERT_EQ(kill(pid, SIGSTOP), 0);
  ASSERT_TRUE(fs::is_directory(tmp)) << "the run finished before it could be stopped";
  fs::create_directories(out);
  write_bytes(out + "/mine.txt", "someone else's");
  ASSERT_EQ(kill(pid, SIGCONT), 0);
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status));
  const std::string err = read_bytes(dir.file("late.err"));
  EXPECT_EQ(WEXITSTATUS(status), 1) << err;
  EXPECT_NE(err.find(out + ": cannot move the finished run into place"), std::string::npos) << err;
  EXPECT_NE(err.find("the complete run is kept in " + tmp), std::string::npos) << err;
  EXPECT_EQ(err.find("recorded as run 1 in " + db + " (finished)"), std::string::npos) << err;
  // The folder that appeared is untouched; the complete run is where the message says.
  EXPECT_EQ(read_bytes(out + "/mine.txt"), "someone else's");
  EXPECT_FALSE(fs::exists(out + "/run.json"));
  ASSERT_TRUE(fs::is_regular_file(tmp + "/run.json"));
  ASSERT_TRUE(fs::is_regular_file(tmp + "/model/model.safetensors"));
  Result clean = run("runs --db " + db + " clean --yes");
  ASSERT_EQ(clean.code, 0) << clean.err;
  EXPECT_TRUE(fs::is_regular_file(tmp + "/run.json")) << clean.out;
  Result imp = run("runs --db " + db + " import " + tmp);
  ASSERT_EQ(imp.code, 0) << imp.err;
  json show = runs_json("show 1");
  EXPECT_EQ(show["status"], "finished");
  EXPECT_EQ(show["record"], json::parse(read_bytes(tmp + "/run.json")));
}

// `runs clean` keeps a temporary directory that already holds a whole run (its writer died
// between the last write and the rename into place) and says how to record it; a run directory
// is never made inside another run's.
TEST_F(CliRuns, CleanKeepsACompleteTemporaryRunAndRunsAreNotNested) {
  ASSERT_EQ(run(calib("rtn", dir.file("done"))).code, 0);
  Result nested = run(calib("rtn", dir.file("done/inner")));
  EXPECT_EQ(nested.code, 1);
  EXPECT_NE(nested.err.find("inside the run directory " + dir.file("done")), std::string::npos) << nested.err;
  EXPECT_FALSE(fs::exists(dir.file("done/inner")));

  // A writer that is gone (a reaped child's pid), its temporary directory complete.
  const pid_t child = fork();
  if (child == 0) _exit(0);
  ASSERT_EQ(waitpid(child, nullptr, 0), child);
  const std::string tmp = dir.file("late.partial-abc123");
  int64_t id = 0;
  {
    RunStore st = RunStore::open(db);
    RunStart s;
    s.config = st.get_run(1)->record->config;
    s.model = st.get_run(1)->record->model;
    s.run_dir = dir.file("late");
    s.tmp_dir = tmp;
    s.pid = child;
    id = st.begin_run(s);
    fs::create_directories(tmp);
    st.write_run_marker(id, tmp);
  }
  fs::copy(dir.file("done/model"), tmp + "/model", fs::copy_options::recursive);
  fs::copy_file(dir.file("done/run.json"), tmp + "/run.json");
  Result clean = run("runs --db " + db + " clean --yes");
  ASSERT_EQ(clean.code, 0) << clean.err;
  EXPECT_NE(clean.out.find(tmp + " is a complete run directory; kept"), std::string::npos) << clean.out;
  EXPECT_TRUE(fs::is_regular_file(tmp + "/run.json"));
  EXPECT_TRUE(fs::is_regular_file(tmp + "/model/config.json"));
}

TEST_F(CliRuns, ImportBringsInARunDirectoryMadeWithoutTheStore) {
  const std::string out = dir.file("elsewhere");
  Result r = run(calib("rtn", out, "--no-store"));
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_FALSE(fs::exists(out + "/.respin-run.json"));
  Result imp = run("runs --db " + db + " import " + out + " --json");
  ASSERT_EQ(imp.code, 0) << imp.err;
  EXPECT_EQ(json::parse(imp.out)["id"], 1);
  EXPECT_NE(imp.err.find("imported " + out + " as run 1"), std::string::npos) << imp.err;
  json list = runs_json("list");
  ASSERT_EQ(list.size(), 1u);
  EXPECT_EQ(list[0]["status"], "finished");
  EXPECT_EQ(list[0]["run_dir"], fs::absolute(out).string());
  // Its statistics come from stats.json.
  ASSERT_EQ(run("runs --db " + db + " export 1 --format json --out " + dir.file("d.json")).code, 0);
  EXPECT_EQ(json::parse(read_bytes(dir.file("d.json")))[0]["layer_stats"].size(), 2u * 2 * 7);
  Result twice = run("runs --db " + db + " import " + out);
  EXPECT_EQ(twice.code, 1);
  EXPECT_NE(twice.err.find("already recorded as run 1"), std::string::npos) << twice.err;
  Result none = run("runs --db " + db + " import " + dir.file("nothing"));
  EXPECT_EQ(none.code, 1);
  EXPECT_NE(none.err.find("no such run directory"), std::string::npos) << none.err;
  // The imported folder is the run's (its run.json is the stored record): delete removes it.
  ASSERT_EQ(run("runs --db " + db + " delete 1 --yes").code, 0);
  EXPECT_FALSE(fs::exists(out));
}

TEST_F(CliRuns, ExportRefusesExistingFilesAndSmallVerbsRefuseBadInput) {
  ASSERT_EQ(run(calib("rtn", dir.file("a"))).code, 0);
  write_bytes(dir.file("d.json"), "mine");
  Result j = run("runs --db " + db + " export 1 --format json --out " + dir.file("d.json"));
  EXPECT_EQ(j.code, 1);
  EXPECT_NE(j.err.find(dir.file("d.json") + ": already exists"), std::string::npos) << j.err;
  EXPECT_EQ(read_bytes(dir.file("d.json")), "mine");
  write_bytes(dir.file("t.loss.csv"), "mine");
  Result c = run("runs --db " + db + " export 1 --format csv --out " + dir.file("t.csv"));
  EXPECT_EQ(c.code, 1);
  EXPECT_NE(c.err.find(dir.file("t.loss.csv") + ": already exists"), std::string::npos) << c.err;
  EXPECT_EQ(read_bytes(dir.file("t.loss.csv")), "mine");
  EXPECT_FALSE(fs::exists(dir.file("t.csv")));

  // Delete is all or nothing.
  Result del = run("runs --db " + db + " delete 1 999 --yes");
  EXPECT_EQ(del.code, 1);
  EXPECT_NE(del.err.find("no run 999"), std::string::npos) << del.err;
  EXPECT_EQ(runs_json("list").size(), 1u);
  EXPECT_TRUE(fs::exists(dir.file("a")));
  // An id too large is refused, not clamped to the largest id.
  Result huge = run("runs --db " + db + " delete 99999999999999999999999 --yes");
  EXPECT_NE(huge.code, 0);
  EXPECT_EQ(runs_json("list").size(), 1u);
  EXPECT_NE(run("runs --db " + db + " show 99999999999999999999999").code, 0);
  // A tag is one line; a note's control characters never reach the terminal.
  Result tag = run("runs --db " + db + " tag 1 \"$(printf 'two\\nlines')\"");
  EXPECT_EQ(tag.code, 1) << tag.err;
  EXPECT_NE(tag.err.find("one line"), std::string::npos) << tag.err;
  ASSERT_EQ(run("runs --db " + db + " note 1 \"$(printf 'red \\033[31m text')\"").code, 0);
  Result show = run("runs --db " + db + " show 1");
  ASSERT_EQ(show.code, 0) << show.err;
  EXPECT_EQ(show.out.find('\x1b'), std::string::npos) << show.out;
  EXPECT_NE(show.out.find("red \\x1B[31m text"), std::string::npos) << show.out;
  // --model with a trailing slash names the same folder.
  EXPECT_EQ(runs_json("list --model " + model + "/").size(), 1u);
}

TEST_F(CliRuns, CalibrateChecksTheStoreAndTheDiskBeforeTheWork) {
  // A store on a read-only mount: refused at the start, nothing written.
  const std::string mnt = dir.file("mnt");
  fs::create_directories(mnt);
  if (std::system(("mount -t tmpfs -o size=4m tmpfs " + mnt + " 2>/dev/null").c_str()) != 0)
    GTEST_SKIP() << "cannot mount a tmpfs here (needs root)";
  struct Unmount {
    std::string m;
    ~Unmount() { (void)std::system(("umount " + m + " 2>/dev/null").c_str()); }
  } unmount{mnt};
  const std::string ro_db = mnt + "/runs.db", own_db = db;
  db = ro_db;
  ASSERT_EQ(run(calib("rtn", dir.file("a"))).code, 0);
  if (std::system(("mount -o remount,ro " + mnt + " 2>/dev/null").c_str()) != 0)
    GTEST_SKIP() << "cannot remount the tmpfs read-only here";
  const auto t0 = std::chrono::steady_clock::now();
  Result r = run(calib("rtn", dir.file("b")));
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find(ro_db + ": the run store is read-only"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(dir.file("b")));
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), 10.0);
  // A reader of that store is told what it is, not that it is damaged.
  Result l = run("runs --db " + ro_db + " list");
  EXPECT_EQ(l.err.find("damaged"), std::string::npos) << l.err;
  db = own_db;

  // Too little free space for the run directory: refused before the work.
  ASSERT_EQ(std::system(("umount " + mnt + " && mount -t tmpfs -o size=64k tmpfs " + mnt).c_str()), 0);
  Result full = run(calib("rtn", mnt + "/run"));
  EXPECT_EQ(full.code, 1);
  EXPECT_NE(full.err.find(mnt + ": not enough free space for the run directory"), std::string::npos) << full.err;
  EXPECT_FALSE(fs::exists(mnt + "/run"));
  EXPECT_EQ(runs_json("list").size(), 0u);
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
