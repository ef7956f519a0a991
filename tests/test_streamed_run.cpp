// A calibration run a decoder layer at a time (--streaming layers, docs/methods.md 1.7) against
// the same run with the whole model in memory: the same perplexities, statistics, grids and
// model file, byte for byte, for every method that streams, with and without rotation, RTN and
// GPTQ weights, float32 and bfloat16, a tied model, and rotations reused from a learned run.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>

#include "core/calib/calibrate.h"
#include "core/calib/memory_plan.h"
#include "core/io/atomic_file.h"
#include "core/model/random_init.h"
#include "core/model/weights.h"
#include "core/util/error.h"
#include "core/util/fs.h"
#include "tests/calib_fixture.h"
#include "tests/test_util.h"

using namespace respin;
using respin::test::TempDir;
namespace fs = std::filesystem;

namespace {

std::string bytes_of(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  EXPECT_TRUE(f.good()) << path;
  return std::string(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
}

class StreamedRun : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new TempDir();
    test::write_calibration_fixture(*dir_);
    // The same shapes with tied embeddings and a final norm far from 1: fusion must untie lm_head.
    test::write_fixture_model(*dir_, "tied", 320, 9, true);
  }
  static void TearDownTestSuite() { delete dir_; }

  static CalibConfig config(const std::string& method, int bits) {
    CalibConfig c = test::small_calib_config(*dir_, method, bits);
    c.stats_windows = 3;
    return c;
  }
  std::string out(const std::string& name) const { return runs_.file(name); }

  // Runs `c` whole and streamed and compares everything they wrote.
  void expect_same_run(CalibConfig c, const std::string& name) {
    c.streaming = Streaming::Whole;
    const CalibOutcome whole = run_calibration(c, out(name + "-whole"));
    c.streaming = Streaming::Layers;
    const CalibOutcome layers = run_calibration(c, out(name + "-layers"));
    EXPECT_FALSE(whole.record.memory.streamed) << name;
    EXPECT_TRUE(layers.record.memory.streamed) << name;
    EXPECT_EQ(whole.record.results.fp_perplexity, layers.record.results.fp_perplexity) << name;
    EXPECT_EQ(whole.record.results.quantized_perplexity, layers.record.results.quantized_perplexity) << name;
    EXPECT_GT(layers.record.results.quantized_perplexity, 1) << name;
    for (const char* file : {"model/model.safetensors", "model/config.json", "model/tokenizer.json", "stats.json",
                             "weight_grids.safetensors", "rotations.safetensors", "online.safetensors"}) {
      const bool there = fs::exists(fs::path(whole.run_dir) / file);
      EXPECT_EQ(there, fs::exists(fs::path(layers.run_dir) / file)) << name << ": " << file;
      if (there)
        EXPECT_TRUE(bytes_of((fs::path(whole.run_dir) / file).string()) ==
                    bytes_of((fs::path(layers.run_dir) / file).string()))
            << name << ": " << file << " differs";
    }
    if (whole.record.method.gptq) {
      ASSERT_TRUE(layers.record.method.gptq) << name;
      EXPECT_EQ(whole.record.method.gptq->layer_loss, layers.record.method.gptq->layer_loss) << name;
      EXPECT_EQ(whole.record.method.gptq->dead_columns, layers.record.method.gptq->dead_columns) << name;
    }
    // The streamed run reloads and reevaluates as a whole one does.
    const LoadedRun a = load_run(whole.run_dir), b = load_run(layers.run_dir);
    EXPECT_EQ(a.model.config().tie_word_embeddings, b.model.config().tie_word_embeddings) << name;
  }

  static TempDir* dir_;
  TempDir runs_;
};
TempDir* StreamedRun::dir_ = nullptr;

}  // namespace

TEST_F(StreamedRun, QuaRotWithRtnWeightsIsTheWholeRun) { expect_same_run(config("quarot", 4), "quarot"); }

TEST_F(StreamedRun, QuaRotWithGptqWeightsIsTheWholeRun) {
  CalibConfig c = config("quarot", 4);
  c.weight_quantizer = WeightQuantizer::Gptq;
  expect_same_run(c, "quarot-gptq");
}

TEST_F(StreamedRun, RtnWithoutRotationIsTheWholeRun) {
  expect_same_run(config("rtn", 4), "rtn");
  CalibConfig c = config("rtn", 4);
  c.wbits = 16;  // nothing rewritten: the model is copied tensor by tensor
  expect_same_run(c, "rtn-a4");
  c.weight_quantizer = WeightQuantizer::Gptq;
  c.wbits = 3;
  expect_same_run(c, "rtn-gptq");
}

TEST_F(StreamedRun, BFloat16IsTheWholeBFloat16Run) {
  CalibConfig c = config("quarot", 4);
  c.precision = Precision::BFloat16;
  expect_same_run(c, "quarot-bf16");
}

TEST_F(StreamedRun, TiedModelGetsItsFusedHead) {
  CalibConfig c = config("quarot", 16);
  c.model = dir_->file("tied");
  expect_same_run(c, "tied");
  // With every quantizer off the rotated model is the original function, and its stored file has
  // the fused, untied lm_head (a tied file would make the head the rotated embeddings).
  c.streaming = Streaming::Layers;
  const CalibOutcome r = run_calibration(c, out("tied-fp"));
  EXPECT_NEAR(r.record.results.quantized_perplexity / r.record.results.fp_perplexity, 1.0, 1e-5);
  const LoadedRun lr = load_run(r.run_dir);
  EXPECT_FALSE(lr.model.config().tie_word_embeddings);
  EXPECT_FALSE(lr.model.weights().lm_head.is_same(lr.model.weights().embed_tokens));
}

TEST_F(StreamedRun, RotationsReusedFromALearnedRunStream) {
  CalibConfig learn = config("respin", 4);
  learn.streaming = Streaming::Whole;
  const CalibOutcome src = run_calibration(learn, out("learned"));
  CalibConfig c = learn;
  c.rotations_from = src.run_dir;
  c.rank = 8;
  expect_same_run(c, "respin-r8");
}

TEST_F(StreamedRun, LearningMethodsRefuseLayers) {
  CalibConfig c = config("spinquant", 4);
  c.streaming = Streaming::Layers;
  try {
    run_calibration(c, out("refused"));
    FAIL() << "spinquant streamed without rotations_from ran";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("end-to-end gradients"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(fs::exists(out("refused")));
}

TEST_F(StreamedRun, AutoStreamsWhenTheWholeModelDoesNotFit) {
  CalibConfig c = config("quarot", 4);
  c.streaming = Streaming::Auto;
  const MemoryPlan whole_plan = plan_calibration(c);
  ASSERT_FALSE(whole_plan.streamed);
  // A budget between the streamed plan's peak and the whole plan's.
  CalibConfig s = c;
  s.streaming = Streaming::Layers;
  const MemoryPlan layer_plan = plan_calibration(s);
  ASSERT_TRUE(layer_plan.streamed);
  ASSERT_LT(layer_plan.peak().device_bytes, whole_plan.peak().device_bytes);
  c.device_memory = (layer_plan.peak().device_bytes + whole_plan.peak().device_bytes) / 2;
  const MemoryPlan chosen = plan_calibration(c);
  EXPECT_TRUE(chosen.streamed);
  EXPECT_TRUE(chosen.streaming_chosen);
  EXPECT_TRUE(chosen.fits());
  const CalibOutcome r = run_calibration(c, out("auto"));
  EXPECT_TRUE(r.record.memory.streamed);
  // A learning method cannot stream: the whole plan stays, and does not fit.
  c.method = Method::SpinQuant;
  c.device_memory = layer_plan.peak().device_bytes;
  const MemoryPlan learning = plan_calibration(c);
  EXPECT_FALSE(learning.streamed);
}

TEST_F(StreamedRun, CancelledMidRotationLeavesNothingBehind) {
  CalibConfig c = config("quarot", 4);
  c.streaming = Streaming::Layers;
  RunControl control;
  struct StopInRotation : CalibObserver {
    RunControl* control;
    int seen = 0;
    void on_progress(const CalibProgress& p) override {
      // After the first rotated layer is written into the partial model file.
      if (p.phase == Phase::Rotate && p.done >= 1 && ++seen == 1) control->request_stop();
    }
  } stopper;
  stopper.control = &control;
  EXPECT_THROW(run_calibration(c, out("cancelled"), &control, &stopper), Cancelled);
  EXPECT_EQ(stopper.seen, 1);
  EXPECT_TRUE(directory_is_empty(runs_.path())) << "left: " << list_directory(runs_.path()).front().name;
}
