// core/calib: the calibration pipeline end to end on a small random model folder written here
// (with a BPE tokenizer trained on real text): every method with quantizers off reproduces the
// full-precision perplexity through the run directory; a quantized run directory reloads to the
// same perplexity; GPTQ runs layer by layer; configs round-trip through JSON and bad ones are
// refused; a cancelled or failing run leaves nothing on disk and an existing run is never touched.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/calib/calibrate.h"
#include "core/eval/perplexity.h"
#include "core/io/atomic_file.h"
#include "core/model/random_init.h"
#include "core/model/weights.h"
#include "core/stats/activation_stats.h"
#include "core/tokenizer/bpe_trainer.h"
#include "core/tokenizer/tokenizer.h"
#include "core/util/error.h"
#include "tests/calib_fixture.h"
#include "tests/test_util.h"

using namespace respin;
using respin::test::TempDir;
namespace fs = std::filesystem;

namespace {

class Calib : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new TempDir();
    test::write_calibration_fixture(*dir_);
  }
  static void TearDownTestSuite() { delete dir_; }

  static CalibConfig config(const std::string& method, int bits) {
    return test::small_calib_config(*dir_, method, bits);
  }
  std::string out(const std::string& name) const { return run_dir_.file(name); }

  static TempDir* dir_;
  TempDir run_dir_;
};
TempDir* Calib::dir_ = nullptr;

}  // namespace

TEST_F(Calib, EveryMethodWithQuantizersOffKeepsThePerplexity) {
  for (const char* method : {"rtn", "quarot", "spinquant", "respin"}) {
    CalibConfig c = config(method, 16);
    c.kvbits = 4;  // switches the Q/K Hadamard on for the rotating methods...
    CalibResult r = run_calibration(c, out(std::string(method) + "-kvon"));
    // ...which then quantizes K and V: not equal, but close.
    EXPECT_NEAR(r.quant_perplexity / r.fp_perplexity, 1.0, 0.05) << method;
    c.kvbits = 16;
    c.rank = -1;
    r = run_calibration(c, out(method));
    EXPECT_NEAR(r.quant_perplexity / r.fp_perplexity, 1.0, 1e-5) << method;
    EXPECT_EQ(r.eval_windows, 20);
    // The written run reproduces it.
    LoadedRun lr = load_run(out(method));
    Tokenizer tok = Tokenizer::from_file(dir_->file("tokenizer.json"));
    PerplexityOptions po;
    po.seq_len = 32;
    po.max_windows = 20;
    const double ppl = evaluate_perplexity(lr.model, tok.encode(read_text_file(dir_->file("eval.txt")), false), po).perplexity;
    EXPECT_NEAR(ppl / r.fp_perplexity, 1.0, 1e-5) << method;
  }
}

TEST_F(Calib, QuantizedRunDirectoryReloadsToTheSamePerplexity) {
  CalibConfig c = config("respin", 4);
  c.rank = 8;
  RunControl control;
  std::vector<std::string> phases;
  control.set_progress_callback([&](const ProgressEvent& e) {
    if (phases.empty() || phases.back() != e.phase) phases.push_back(e.phase);
  }, 0);
  CalibResult r = run_calibration(c, out("run"), &control);
  // 4-bit everything changes the model's predictions (on a random model not necessarily for the worse).
  EXPECT_GT(std::abs(r.quant_perplexity / r.fp_perplexity - 1), 1e-3);
  EXPECT_EQ(r.loss_curve.size(), 3u);
  EXPECT_GT(r.calibration_seconds, 0);
  EXPECT_LT(r.calibration_seconds, r.total_seconds);
  for (const char* p : {"load", "eval-fp", "stats", "rotate", "quantize", "eval", "write"})
    EXPECT_NE(std::find(phases.begin(), phases.end(), p), phases.end()) << p;
  for (const char* f : {"run.json", "model/config.json", "model/model.safetensors", "model/tokenizer.json",
                        "rotations.safetensors", "online.safetensors", "stats.json"})
    EXPECT_TRUE(fs::exists(out("run") + "/" + f)) << f;
  nlohmann::json run = nlohmann::json::parse(read_text_file(out("run") + "/run.json"));
  EXPECT_EQ(run["config"]["method"], "respin");
  EXPECT_EQ(run["method"]["rank"], 8);
  EXPECT_EQ(run["method"]["online_parameters"], 2 * 2 * (64 * 8 + 8 * 8));
  EXPECT_EQ(run["method"]["online_macs_per_token"], 2 * 2 * (2 * 64 * 8 + 8 * 8));
  EXPECT_EQ(run["method"]["transition_spectral_error"].size(), 4u);
  EXPECT_DOUBLE_EQ(run["results"]["quantized_perplexity"].get<double>(), r.quant_perplexity);
  EXPECT_GT(run["peak_rss_bytes"].get<int64_t>(), 0);
  EXPECT_LT(run["method"]["training"]["max_orthogonality_error"].get<double>(), 1e-4);
  EXPECT_TRUE(run["online"]["skip_correction"].get<bool>());

  LoadedRun lr = load_run(out("run"));
  EXPECT_EQ(lr.config.rank, 8);
  Tokenizer tok = Tokenizer::from_file(out("run") + "/model/tokenizer.json");
  PerplexityOptions po;
  po.seq_len = 32;
  po.max_windows = 20;
  const double ppl = evaluate_perplexity(lr.model, tok.encode(read_text_file(dir_->file("eval.txt")), false), po).perplexity;
  EXPECT_NEAR(ppl / r.quant_perplexity, 1.0, 1e-6);

  // Rebuilding the corrections from the stored rotations at the run's rank gives the same model;
  // another rank gives another one.
  auto ppl_of = [&](const LlamaModel& m) {
    return evaluate_perplexity(m, tok.encode(read_text_file(dir_->file("eval.txt")), false), po).perplexity;
  };
  EXPECT_NEAR(ppl_of(load_run(out("run"), 8).model) / r.quant_perplexity, 1.0, 1e-6);
  LoadedRun full = load_run(out("run"), 1000);
  EXPECT_EQ(full.config.rank, 64);
  EXPECT_GT(std::abs(ppl_of(full.model) / r.quant_perplexity - 1), 1e-6);

  // Statistics before and after rotation cover the same sites; rotation changes them.
  nlohmann::json stats = nlohmann::json::parse(read_text_file(out("run") + "/stats.json"));
  std::vector<SiteStats> before = stats_from_json(stats["before"]), after = stats_from_json(stats["after"]);
  ASSERT_EQ(before.size(), after.size());
  EXPECT_EQ(before.size(), 2u * 7);
  for (size_t i = 0; i < before.size(); ++i) {
    EXPECT_EQ(before[i].site, after[i].site);
    EXPECT_EQ(before[i].count, after[i].count);
    // R4 (a Hadamard over the intermediate size) makes the heavy-tailed down_proj input close to
    // Gaussian: kurtosis down towards 3, the largest channel closer to the median one.
    if (before[i].site == HookSite::DownProjInput) {
      EXPECT_LT(after[i].kurtosis(), before[i].kurtosis() - 0.5) << "layer " << before[i].layer;
      EXPECT_LT(after[i].kurtosis(), 4.0) << "layer " << before[i].layer;
      EXPECT_LT(after[i].max_median_ratio(), before[i].max_median_ratio()) << "layer " << before[i].layer;
    }
  }

  // A damaged file is reported by name.
  const std::string online = out("run") + "/online.safetensors";
  std::string bytes = read_text_file(online);
  write_file_atomically(online, bytes.substr(0, bytes.size() / 2));
  try {
    load_run(out("run"));
    FAIL() << "a truncated online.safetensors loaded";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("online.safetensors"), std::string::npos) << e.what();
  }
}

TEST_F(Calib, GptqRunsLayerByLayerAndBeatsRtnOnWeights) {
  CalibConfig c = config("quarot", 16);
  c.wbits = 3;
  CalibResult rtn = run_calibration(c, out("rtn"));
  c.weight_quantizer = "gptq";
  CalibResult gptq = run_calibration(c, out("gptq"));
  EXPECT_EQ(gptq.run["method"]["gptq"]["layer_loss"].size(), 2u);
  EXPECT_THROW(load_run(out("gptq"), 8), Error);  // a rank applies to respin runs only

  // Learned rotations for a GPTQ pipeline are learned with 16-bit weights (SpinQuant's protocol),
  // for an RTN pipeline with the target bits.
  CalibConfig s = config("spinquant", 4);
  s.weight_quantizer = "gptq";
  CalibResult sg = run_calibration(s, out("spin-gptq"));
  EXPECT_EQ(sg.run["method"]["training"]["weight_bits_while_training"], 16);
  EXPECT_EQ(sg.run["method"]["gptq"]["layer_loss"].size(), 2u);
  EXPECT_TRUE(std::isfinite(sg.quant_perplexity));
  s.weight_quantizer = "rtn";
  EXPECT_EQ(run_calibration(s, out("spin-rtn")).run["method"]["training"]["weight_bits_while_training"], 4);
  EXPECT_TRUE(std::isfinite(gptq.quant_perplexity));
  // Weight-only 3-bit: GPTQ's error compensation removes a clear share of round-to-nearest's
  // output error (logits against the full-precision model's; the perplexity of a random model is
  // too flat to show it).
  const LlamaModel fp_model = load_model(dir_->file("model"));
  const std::vector<int> calib_ids =
      Tokenizer::from_file(dir_->file("tokenizer.json")).encode(read_text_file(dir_->file("calib.txt")), false);
  const at::Tensor ids = at::tensor(std::vector<int64_t>(calib_ids.begin(), calib_ids.begin() + 8 * 32)).view({8, 32});
  const at::Tensor fp = fp_model.forward(ids).to(at::kDouble);
  auto output_error = [&](const std::string& run) {
    const at::Tensor q = load_run(run).model.forward(ids).to(at::kDouble);
    return (q - fp).norm().item<double>() / (fp - fp.mean(-1, true)).norm().item<double>();
  };
  const double e_rtn = output_error(out("rtn")), e_gptq = output_error(out("gptq"));
  EXPECT_GT(e_rtn, 0.01);
  EXPECT_LT(e_gptq, 0.8 * e_rtn) << "output error: rtn " << e_rtn << ", gptq " << e_gptq;
}

TEST_F(Calib, CancelledOrFailedRunsLeaveNothingBehind) {
  CalibConfig c = config("spinquant", 4);
  RunControl control;
  control.set_progress_callback([&](const ProgressEvent& e) {
    if (e.phase == "rotate" && e.done == 1) control.request_stop();
  }, 0);
  EXPECT_THROW(run_calibration(c, out("cancelled"), &control), Cancelled);
  EXPECT_TRUE(fs::is_empty(run_dir_.path())) << "left: " << fs::directory_iterator(run_dir_.path())->path();

  // An existing directory is refused before any work and left untouched.
  fs::create_directories(out("existing"));
  write_file_atomically(out("existing") + "/keep.txt", "mine");
  EXPECT_THROW(run_calibration(c, out("existing")), Error);
  EXPECT_EQ(read_text_file(out("existing") + "/keep.txt"), "mine");

  // Too few calibration windows: a clear error, nothing written.
  c.samples = 100000;
  try {
    run_calibration(c, out("toofew"));
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("--samples"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(fs::exists(out("toofew")));
}

TEST(CalibConfigJson, RoundTripsAndRefusesBadInput) {
  CalibConfig c;
  c.model = "/m";
  c.method = "spinquant";
  c.wbits = 3;
  c.rank = -1;
  c.lr = 0.25;
  c.seed = 123456789012345ull;
  c.weight_quantizer = "gptq";
  CalibConfig d = calib_config_from_json(calib_config_to_json(c), "x");
  EXPECT_EQ(calib_config_to_json(d), calib_config_to_json(c));
  EXPECT_EQ(d.seed, c.seed);
  auto error_of = [](const std::string& text) {
    try {
      calib_config_from_json(text, "cfg.json");
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(error_of(R"({"method": "rtn"})").find("missing field 'model'"), std::string::npos);
  EXPECT_NE(error_of(R"({"model": "m", "method": "rtn", "wbitz": 4})").find("unknown field 'wbitz'"), std::string::npos);
  EXPECT_NE(error_of(R"({"model": "m", "method": "rtn", "wbits": "4"})").find("'wbits' has the wrong type"),
            std::string::npos);
  EXPECT_NE(error_of(R"({"model": "m", "method": "rtn", "wbits": 1})").find("wbits"), std::string::npos);
  EXPECT_NE(error_of(R"({"model": "m", "method": "gptq"})").find("unknown method"), std::string::npos);
  EXPECT_NE(error_of("{").find("not valid JSON"), std::string::npos);
  EXPECT_EQ(error_of(R"({"model": "m", "method": "quarot"})"), "no error");
}
