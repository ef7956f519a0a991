// End-to-end: `respin export` and `respin eval --model` on the exported folders, as a user runs
// them, for a ReSpinQuant run calibrated here (through the library, on the calibration fixture).
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "core/calib/calibration.h"
#include "core/io/atomic_file.h"
#include "tests/calib_fixture.h"
#include "tests/cli_util.h"
#include "tests/test_util.h"

using namespace respin;
using namespace respin::test;
namespace fs = std::filesystem;

TEST(CliExport, ExportedFoldersEvaluateToTheRunsPerplexity) {
  TempDir dir;
  write_calibration_fixture(dir);
  CalibConfig c = small_calib_config(dir, "respin", 4);
  c.rank = 8;
  const CalibOutcome outcome = run_calibration(c, dir.file("run"));
  const double want = outcome.record.results.quantized_perplexity;
  const std::string protocol = " --text-file " + dir.file("eval.txt") + " --seq-len " +
                               std::to_string(outcome.record.results.eval_seq_len) + " --max-windows " +
                               std::to_string(outcome.record.results.eval_windows) + " --threads 1";

  // compressed-tensors cannot say the skip corrections: a one-line refusal, nothing written.
  Result r = run("export " + dir.file("run") + " --format compressed-tensors --out " + dir.file("ct"));
  EXPECT_EQ(r.code, 1);
  EXPECT_EQ(r.err.rfind("error: compressed-tensors cannot express this respin run: ", 0), 0u) << r.err;
  EXPECT_NE(r.err.find("rank-8 skip corrections"), std::string::npos) << r.err;
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  EXPECT_FALSE(fs::exists(dir.file("ct")));

  for (const char* format : {"hf", "compressed-tensors"}) {
    for (const char* dtype : {"f32", "bf16"}) {
      SCOPED_TRACE(std::string(format) + " " + dtype);
      const std::string out = dir.file(std::string(format) + "-" + dtype);
      r = run("export " + dir.file("run") + " --format " + format + " --dtype " + dtype + " --out " + out +
                  " --allow-sidecar --json");
      ASSERT_EQ(r.code, 0) << r.err;
      const auto j = nlohmann::json::parse(r.out);
      EXPECT_EQ(j["format"], format);
      EXPECT_TRUE(j["sidecar"].get<bool>());
      EXPECT_GT(j["bytes"].get<long long>(), 0);
      r = run("eval --json --model " + out + protocol);
      ASSERT_EQ(r.code, 0) << r.err;
      const auto e = nlohmann::json::parse(r.out);
      EXPECT_EQ(e["quantization"]["exported"], format);
      EXPECT_EQ(e["quantization"]["source_run"]["quantized_perplexity"].get<double>(), want);
      // f32 is the run; bf16 rounds what it stores (docs/export.md 3: measured figures).
      EXPECT_NEAR(e["perplexity"].get<double>() / want, 1.0, std::string(dtype) == "f32" ? 2e-6 : 0.05);
      // Human output says what was loaded and what the run measured.
      r = run("eval --model " + out + protocol);
      ASSERT_EQ(r.code, 0) << r.err;
      EXPECT_NE(r.out.find("quantized:   exported "), std::string::npos) << r.out;
      EXPECT_NE(r.out.find("respin_online.json (respin"), std::string::npos) << r.out;
    }
  }
  // An existing folder is refused and left alone; RTN flags do not apply to an exported model.
  r = run("export " + dir.file("run") + " --format hf --out " + dir.file("hf-f32"));
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("already exists"), std::string::npos) << r.err;
  r = run("eval --model " + dir.file("hf-f32") + protocol + " --wbits 4");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("carries its own quantization"), std::string::npos) << r.err;
  // Usage errors.
  EXPECT_EQ(run("export " + dir.file("run") + " --format gguf --out x").code, 2);
  EXPECT_EQ(run("export " + dir.file("run") + " --format hf").code, 2);  // --out missing
  EXPECT_EQ(run("export " + dir.file("run") + " --format hf --out x --dtype f64").code, 2);
}
