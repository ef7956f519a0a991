// `respin plan` and `calibrate --device-memory` through the binary: the plan that `calibrate`
// follows, a refusal before any work, learning's checkpointing and micro-batches chosen to fit a
// budget (the same numbers as when given by hand), and run.json's plan beside its measured peaks.
#include <gtest/gtest.h>

#include <algorithm>
#include <nlohmann/json.hpp>

#include "core/util/fs.h"
#include "tests/cli_util.h"

using namespace respin::test;

namespace {

class CliPlan : public Cli {
 protected:
  void SetUp() override {
    Cli::SetUp();
    std::string text;
    for (int i = 0; i < 60; ++i) text += kText;
    write_bytes(dir.file("long.txt"), text);
    // A model whose learning graph outweighs the fixed terms: 8 windows of 128 tokens, 4 layers.
    model = dir.file("model-128");
    Result r = run("init-model --out " + model + " --tokenizer " + dir.file("tokenizer.json") +
                   " --hidden 128 --intermediate 256 --layers 4 --heads 4 --kv-heads 2 --max-positions 256 --dtype f32 --seed 9");
    ASSERT_EQ(r.code, 0) << r.err;
    common = " --model " + model + " --calib-text " + dir.file("long.txt") + " --eval-text " + dir.file("long.txt") +
             " --seq-len 128 --samples 8 --iters 2 --batch 8 --eval-windows 2 --stats-windows 1 --threads 1 --device cpu"
             " --method spinquant";
  }
  nlohmann::json plan(const std::string& extra) {
    Result r = run("plan --json" + common + extra);
    EXPECT_EQ(r.code, 0) << r.err;
    return nlohmann::json::parse(r.out);
  }
  static int64_t rotate_bytes(const nlohmann::json& p) {
    for (const auto& ph : p.at("phases"))
      if (ph.at("phase") == "rotate") return ph.at("device_bytes").get<int64_t>();
    return -1;
  }
  std::string common;
};

}  // namespace

TEST_F(CliPlan, PlanRefusesBeforeTheWorkAndCalibrateFollowsIt) {
  // The plan lists calibrate's phases; its human form says where the peak is.
  const nlohmann::json p = plan("");
  EXPECT_TRUE(p.at("fits").get<bool>());
  EXPECT_EQ(p.at("device"), "cpu");
  std::vector<std::string> phases;
  for (const auto& ph : p.at("phases")) phases.push_back(ph.at("phase"));
  EXPECT_EQ(phases, (std::vector<std::string>{"load", "eval-fp", "stats-before", "rotate", "stats-after", "quantize",
                                              "eval", "write"}));
  Result r = run("plan" + common);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("peak "), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("learning: the whole batch at once"), std::string::npos) << r.out;

  // A budget below the model: plan and calibrate refuse with one line, and calibrate leaves nothing.
  r = run("plan" + common + " --device-memory 1kB");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("error: the run needs about"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("--device-memory budget of 1.0 kB"), std::string::npos) << r.err;
  r = run("calibrate --no-store --out " + dir.file("refused") + common + " --device-memory 1kB");
  EXPECT_EQ(r.code, 1);
  const size_t at = r.err.rfind("error: ");
  ASSERT_NE(at, std::string::npos) << r.err;
  EXPECT_EQ(std::count(r.err.begin() + at, r.err.end(), '\n'), 1) << r.err;
  EXPECT_NE(r.err.find(model), std::string::npos) << r.err;
  EXPECT_EQ(r.err.find("eval-fp..."), std::string::npos) << "refused after work started: " << r.err;
  for (const respin::DirEntry& e : respin::list_directory(dir.path()))
    EXPECT_EQ(e.name.find("refused"), std::string::npos) << e.name;
  EXPECT_EQ(run("plan" + common + " --device-memory lots").code, 2);

  // A budget between the checkpointed step and the whole graph: the plan checkpoints, calibrate
  // runs so and records it, and the result is the run with the same options given by hand.
  const int64_t plain = rotate_bytes(p);
  const int64_t checkpointed = rotate_bytes(plan(" --checkpoint-layers"));
  ASSERT_GT(plain, checkpointed);
  const std::string budget = " --device-memory " + std::to_string((plain + checkpointed) / 2);
  const nlohmann::json chosen = plan(budget);
  EXPECT_TRUE(chosen.at("learning_chosen").get<bool>());
  EXPECT_TRUE(chosen.at("checkpoint_layers").get<bool>());
  EXPECT_EQ(chosen.at("micro_batch"), 0);
  r = run("calibrate --json --no-store --out " + dir.file("chosen") + common + budget);
  ASSERT_EQ(r.code, 0) << r.err;
  const nlohmann::json a = nlohmann::json::parse(r.out);
  EXPECT_TRUE(a.at("config").at("checkpoint_layers").get<bool>());
  EXPECT_TRUE(a.at("memory").at("learning_chosen").get<bool>());
  EXPECT_EQ(a.at("memory").at("capacity_given"), true);
  r = run("calibrate --json --no-store --out " + dir.file("by-hand") + common + " --checkpoint-layers");
  ASSERT_EQ(r.code, 0) << r.err;
  const nlohmann::json b = nlohmann::json::parse(r.out);
  EXPECT_FALSE(b.at("memory").at("learning_chosen").get<bool>());
  EXPECT_EQ(a.at("results").at("quantized_perplexity"), b.at("results").at("quantized_perplexity"));
  EXPECT_EQ(a.at("method").at("training").at("loss"), b.at("method").at("training").at("loss"));

  // run.json holds the plan beside the measured peaks, phase by phase, above the run's start.
  const nlohmann::json& m = b.at("memory");
  EXPECT_GT(m.at("baseline_rss_bytes").get<int64_t>(), 0);
  ASSERT_EQ(m.at("predicted_bytes").size(), 8u);
  if (m.at("measured_bytes").empty()) GTEST_SKIP() << "this kernel does not reset the peak RSS (/proc/self/clear_refs)";
  ASSERT_EQ(m.at("measured_bytes").size(), 8u);
  double predicted = 0, measured = 0;
  for (size_t i = 0; i < 8; ++i) {
    EXPECT_EQ(m.at("measured_bytes")[i][0], m.at("predicted_bytes")[i][0]);
    EXPECT_GE(m.at("measured_bytes")[i][1].get<double>(), 0);
    predicted = std::max(predicted, m.at("predicted_bytes")[i][1].get<double>());
    measured = std::max(measured, m.at("measured_bytes")[i][1].get<double>());
  }
  // A model this small is mostly the fixed terms (libraries, texts); the benchmark rows in
  // docs/results.md compare large models. The peak is still within a factor of two.
  EXPECT_GT(measured, 0);
  EXPECT_LT(predicted / measured, 2.0) << predicted << " vs " << measured;
  EXPECT_GT(predicted / measured, 0.5) << predicted << " vs " << measured;
  EXPECT_GE(b.at("peak_rss_bytes").get<double>(), measured);
}
