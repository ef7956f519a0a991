// core/calib: the calibration pipeline end to end on a small random model folder written here
// (with a BPE tokenizer trained on real text): every method with quantizers off reproduces the
// full-precision perplexity through the run directory; a quantized run directory reloads to the
// same perplexity; GPTQ runs layer by layer; configs round-trip through JSON and bad ones are
// refused; a cancelled or failing run leaves nothing on disk and an existing run is never touched.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <numeric>
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
#include "core/util/fs.h"
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
    CalibOutcome r = run_calibration(c, out(std::string(method) + "-kvon"));
    // ...which then quantizes K and V: not equal, but close.
    EXPECT_NEAR(r.record.results.quantized_perplexity / r.record.results.fp_perplexity, 1.0, 0.05) << method;
    c.kvbits = 16;
    c.rank = -1;
    r = run_calibration(c, out(method));
    EXPECT_NEAR(r.record.results.quantized_perplexity / r.record.results.fp_perplexity, 1.0, 1e-5) << method;
    EXPECT_EQ(r.record.results.eval_windows, 20);
    // The written run reproduces it.
    LoadedRun lr = load_run(out(method));
    Tokenizer tok = Tokenizer::from_file(dir_->file("tokenizer.json"));
    PerplexityOptions po;
    po.seq_len = 32;
    po.max_windows = 20;
    const double ppl = evaluate_perplexity(lr.model, tok.encode(read_text_file(dir_->file("eval.txt")), false), po).perplexity;
    EXPECT_NEAR(ppl / r.record.results.fp_perplexity, 1.0, 1e-5) << method;
  }
}

TEST_F(Calib, QuantizedRunDirectoryReloadsToTheSamePerplexity) {
  CalibConfig c = config("respin", 4);
  c.rank = 8;
  RunControl control;
  // What a caller sees while the run goes on.
  struct Watcher : CalibObserver {
    std::vector<std::string> phases;
    std::vector<double> overall;
    std::vector<std::pair<int64_t, double>> losses;
    std::vector<StatsStage> stats;
    std::string temp_dir, run_dir, started_model;
    void on_started(const RunRecord& r, const std::string& tmp, const std::string& dir) override {
      temp_dir = tmp;
      run_dir = dir;
      started_model = r.model.folder;
      EXPECT_TRUE(fs::is_directory(tmp));
    }
    void on_progress(const CalibProgress& p) override {
      if (p.phase_started) phases.push_back(phase_name(p.phase));
      overall.push_back(p.overall_fraction);
    }
    void on_loss(int64_t step, double loss) override { losses.emplace_back(step, loss); }
    void on_stats(StatsStage s, const std::vector<SiteStats>& st) override {
      stats.push_back(s);
      EXPECT_EQ(st.size(), 7u * 2);  // 7 sites x 2 layers
    }
    // The live histogram: layer 1's down_proj input while rotations are learned.
    std::vector<std::pair<int64_t, SiteStats>> live;
    bool live_site(int& layer, HookSite& site) override {
      layer = 1;
      site = HookSite::DownProjInput;
      return true;
    }
    void on_live_stats(int64_t step, const SiteStats& st) override { live.emplace_back(step, st); }
  } watch;
  CalibOutcome r = run_calibration(c, out("run"), &control, &watch);
  // 4-bit everything changes the model's predictions (on a random model not necessarily for the worse).
  EXPECT_GT(std::abs(r.record.results.quantized_perplexity / r.record.results.fp_perplexity - 1), 1e-3);
  EXPECT_EQ(r.record.method.training->loss.size(), 3u);
  EXPECT_GT(r.record.timing.calibration_seconds, 0);
  EXPECT_LT(r.record.timing.calibration_seconds, r.record.timing.total_seconds);
  const std::vector<std::string> expected_phases = {"load", "eval-fp", "stats-before", "rotate", "stats-after",
                                                    "quantize", "eval", "write"};
  EXPECT_EQ(watch.phases, expected_phases);
  std::vector<std::string> planned;
  for (Phase p : phases_of(c)) planned.push_back(phase_name(p));
  EXPECT_EQ(planned, expected_phases);
  ASSERT_FALSE(watch.overall.empty());
  EXPECT_TRUE(std::is_sorted(watch.overall.begin(), watch.overall.end()));
  EXPECT_DOUBLE_EQ(watch.overall.back(), 1.0);
  ASSERT_EQ(watch.losses.size(), 3u);  // every learning step, in order, as the record has them
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_EQ(watch.losses[i].first, static_cast<int64_t>(i));
    EXPECT_EQ(watch.losses[i].second, r.record.method.training->loss[i]);
  }
  EXPECT_EQ(watch.stats, (std::vector<StatsStage>{StatsStage::Before, StatsStage::After}));
  // Live statistics came at the first and the last learning step at least, from the steps' own
  // batches, for the site asked; what the quantizers see there is already Hadamard-rotated (R4).
  ASSERT_GE(watch.live.size(), 2u);
  EXPECT_EQ(watch.live.front().first, 0);
  EXPECT_EQ(watch.live.back().first, 2);
  for (const auto& [step, st] : watch.live) {
    EXPECT_EQ(st.layer, 1);
    EXPECT_EQ(st.site, HookSite::DownProjInput);
    EXPECT_EQ(st.count, c.batch * c.seq_len * static_cast<int64_t>(st.channel_absmax.size())) << step;
    EXPECT_EQ(std::accumulate(st.histogram.begin(), st.histogram.end(), int64_t{0}), st.count);
  }
  EXPECT_EQ(watch.run_dir, fs::absolute(out("run")).string());
  EXPECT_FALSE(fs::exists(watch.temp_dir));  // renamed into place
  EXPECT_EQ(r.stats_before.size(), 14u);
  EXPECT_EQ(r.record.model.folder, watch.started_model);
  EXPECT_EQ(r.record.model.sha256.size(), 64u);
  EXPECT_EQ(r.record.calibration.data.sha256.size(), 64u);
  EXPECT_EQ(r.record.results.eval_data.bytes, static_cast<int64_t>(read_text_file(dir_->file("eval.txt")).size()));
  for (const char* f : {"run.json", "model/config.json", "model/model.safetensors", "model/tokenizer.json",
                        "rotations.safetensors", "online.safetensors", "stats.json"})
    EXPECT_TRUE(fs::exists(out("run") + "/" + f)) << f;
  nlohmann::json run = nlohmann::json::parse(read_text_file(out("run") + "/run.json"));
  EXPECT_EQ(run["config"]["method"], "respin");
  EXPECT_EQ(run["method"]["rank"], 8);
  EXPECT_EQ(run["method"]["online_parameters"], 2 * 2 * (64 * 8 + 8 * 8));
  EXPECT_EQ(run["method"]["online_macs_per_token"], 2 * 2 * (2 * 64 * 8 + 8 * 8));
  EXPECT_EQ(run["method"]["transition_spectral_error"].size(), 4u);
  EXPECT_DOUBLE_EQ(run["results"]["quantized_perplexity"].get<double>(), r.record.results.quantized_perplexity);
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
  // The same numbers, not close ones: the stored model scored window by window is the function
  // the run scored (core/eval/perplexity.h), on every CPU.
  EXPECT_EQ(ppl, r.record.results.quantized_perplexity);

  // Rebuilding the corrections from the stored rotations at the run's rank gives the same model;
  // another rank gives another one.
  auto ppl_of = [&](const LlamaModel& m) {
    return evaluate_perplexity(m, tok.encode(read_text_file(dir_->file("eval.txt")), false), po).perplexity;
  };
  EXPECT_EQ(ppl_of(load_run(out("run"), 8).model), r.record.results.quantized_perplexity);
  LoadedRun full = load_run(out("run"), 1000);
  EXPECT_EQ(full.config.rank, 64);
  EXPECT_GT(std::abs(ppl_of(full.model) / r.record.results.quantized_perplexity - 1), 1e-6);

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
      if (before[i].layer == 1) {
        EXPECT_LT(watch.live.back().second.kurtosis(), 4.0);
        EXPECT_LT(watch.live.back().second.kurtosis(), before[i].kurtosis() - 0.5);
      }
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
  CalibOutcome rtn = run_calibration(c, out("rtn"));
  c.weight_quantizer = WeightQuantizer::Gptq;
  CalibOutcome gptq = run_calibration(c, out("gptq"));
  EXPECT_EQ(run_record_to_json(gptq.record)["method"]["gptq"]["layer_loss"].size(), 2u);
  EXPECT_THROW(load_run(out("gptq"), 8), Error);  // a rank applies to respin runs only

  // Learned rotations for a GPTQ pipeline are learned with 16-bit weights (SpinQuant's protocol),
  // for an RTN pipeline with the target bits.
  CalibConfig s = config("spinquant", 4);
  s.weight_quantizer = WeightQuantizer::Gptq;
  CalibOutcome sg = run_calibration(s, out("spin-gptq"));
  EXPECT_EQ(run_record_to_json(sg.record)["method"]["training"]["weight_bits_while_training"], 16);
  EXPECT_EQ(run_record_to_json(sg.record)["method"]["gptq"]["layer_loss"].size(), 2u);
  EXPECT_TRUE(std::isfinite(sg.record.results.quantized_perplexity));
  s.weight_quantizer = WeightQuantizer::Rtn;
  EXPECT_EQ(run_calibration(s, out("spin-rtn")).record.method.training->weight_bits_while_training, 4);
  EXPECT_TRUE(std::isfinite(gptq.record.results.quantized_perplexity));
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
  struct StopAtFirstStep : CalibObserver {
    RunControl* control;
    void on_loss(int64_t, double) override { control->request_stop(); }
  } stopper;
  stopper.control = &control;
  EXPECT_THROW(run_calibration(c, out("cancelled"), &control, &stopper), Cancelled);
  EXPECT_TRUE(directory_is_empty(run_dir_.path())) << "left: " << list_directory(run_dir_.path()).front().name;

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
  c.method = Method::SpinQuant;
  c.wbits = 3;
  c.rank = -1;
  c.lr = 0.25;
  c.seed = 123456789012345ull;
  c.weight_quantizer = WeightQuantizer::Gptq;
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
