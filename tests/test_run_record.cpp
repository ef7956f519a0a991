// The typed run record behind run.json: every field round-trips, non-finite numbers survive, a
// version-1 run.json (written before the record existed) still reads, and damage is named.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <limits>

#include "core/calib/calibration.h"
#include "core/calib/run_record.h"
#include "core/util/error.h"
#include "tests/test_util.h"

using namespace respin;
using nlohmann::json;

namespace {

RunRecord sample() {
  RunRecord r;
  r.respin_version = "1.2.3";
  r.created = "2026-11-27T10:00:00Z";
  r.finished = "2026-11-27T10:05:00Z";
  r.config.model = "/m";
  r.config.method = Method::ReSpin;
  r.config.rank = 16;
  r.config.weight_quantizer = WeightQuantizer::Gptq;
  r.config.device = DeviceChoice::Cpu;
  r.config.seed = 18446744073709551615ull;
  r.config_sha256 = std::string(64, 'a');
  r.model = {"/m", "LlamaForCausalLM", 1000, 64, 128, 2, 4, 2, 16, 259, std::string(64, 'b')};
  r.quantizers.weight = {4, true, 0, 1.0};
  r.quantizers.activation = {4, false, 32, 0.9};
  r.quantizers.o_proj_activation_group = 16;
  r.quantizers.kv = {3, false, 0, 0.95};
  r.online = {true, true, false, true};
  r.method.residual_init = "random hadamard (sylvester(64))";
  r.method.rank = 16;
  r.method.transition_spectral_error = {0.5, 0.25, 0.125, 1e-300};
  r.method.online_parameters = 123;
  r.method.online_macs_per_token = 456;
  r.method.training = TrainingRecord{3, 1.5, 1, 16, 96, 2.5, 1e-7, {5.5, std::nan(""), 5.25}};
  r.method.gptq = GptqRecord{{0.1, 0.2}, 3, 1.25};
  r.method.rotations_from = "/runs/base";
  r.calibration = {{"corpus training split", 1000, std::string(64, 'c')}, 4, 32};
  r.results = {{"/e.txt", 500, std::string(64, 'd')}, 8, 32, 256, 264.5, std::numeric_limits<double>::infinity(), 777.0};
  r.timing = {{{"load", 0.5}, {"stats-before", 0.1}, {"eval", 1.0}, {"stats-after", 0.2}, {"eval", 0.3}}, 2.0, 3.0, 2, "cpu"};
  r.compute.libtorch = "1.13.1";
  r.compute.attention = "eager, blocks of 256 query rows";
  r.compute.weights_and_activations = "bfloat16";
  r.compute.phases = {{"load", "bfloat16"}, {"rotate", "float64"}};
  r.peak_rss_bytes = 1 << 30;
  r.gpu_memory_in_use_bytes = 42;
  r.memory.device = "cuda:0";
  r.memory.capacity_bytes = 2147483648;
  r.memory.capacity_given = true;
  r.memory.micro_batch = 2;
  r.memory.checkpoint_layers = true;
  r.memory.learning_chosen = true;
  r.memory.baseline_rss_bytes = 350000000;
  r.memory.predicted_bytes = {{"load", 1.5e9}, {"rotate", 2e9}};
  r.memory.predicted_device_bytes = {{"load", 1e9}, {"rotate", 1.9e9}};
  r.memory.measured_device_bytes = {{"load", 0.9e9}, {"rotate", 2.1e9}};
  r.memory.predicted_seconds = {{"eval-fp", 3.25}, {"rotate", 12.5}};
  r.memory.flops_per_second = 1.5e12;
  r.memory.f64_flops_per_second = 2.5e10;
  r.memory.measured_bytes = {{"load", 1.4e9}, {"rotate", 1.8e9}};
  return r;
}

}  // namespace

TEST(RunRecord, EveryFieldRoundTripsIncludingNonFiniteNumbers) {
  const RunRecord r = sample();
  const json j = run_record_to_json(r);
  EXPECT_EQ(j["format"], "respin-run");
  EXPECT_EQ(j["format_version"], kRunFormatVersion);
  EXPECT_EQ(j["results"]["quantized_perplexity"], "inf");
  EXPECT_EQ(j["method"]["training"]["loss"][1], "nan");
  const RunRecord back = run_record_from_json(json::parse(j.dump()), "run.json");
  EXPECT_EQ(run_record_to_json(back), j);
  EXPECT_TRUE(std::isinf(back.results.quantized_perplexity));
  EXPECT_TRUE(std::isnan(back.method.training->loss[1]));
  EXPECT_EQ(back.config.seed, 18446744073709551615ull);
  EXPECT_EQ(back.timing.phases_seconds.size(), 5u);  // order and repeats kept
  EXPECT_EQ(back.timing.phases_seconds[3].first, "stats-after");
  EXPECT_EQ(back.method.transition_spectral_error[3], 1e-300);
  // Absent optionals stay absent.
  RunRecord plain = sample();
  plain.method.training.reset();
  plain.gpu_memory_in_use_bytes.reset();
  const RunRecord p2 = run_record_from_json(run_record_to_json(plain), "run.json");
  EXPECT_FALSE(p2.method.training);
  EXPECT_FALSE(p2.gpu_memory_in_use_bytes);
}

// The bytes run.json and the config hash are made of, held against files committed under
// tests/golden/: a change to a field's name, order, type or number format shows up here, not in a
// user's store (config_sha256 identifies a configuration across runs). A deliberate format change
// rewrites them with RESPIN_UPDATE_GOLDEN=1 and the diff is reviewed.
namespace {
std::string golden_path(const std::string& name) { return std::string(RESPIN_SOURCE_DIR) + "/tests/golden/" + name; }

// Returns false (and the test skips) when it rewrote the file instead of comparing with it.
bool expect_golden(const std::string& name, const std::string& bytes) {
  if (std::getenv("RESPIN_UPDATE_GOLDEN")) {
    test::write_bytes(golden_path(name), bytes);
    return false;
  }
  const std::string want = test::read_bytes(golden_path(name));
  if (want.empty()) {
    ADD_FAILURE() << golden_path(name) << " is missing";
    return true;
  }
  EXPECT_EQ(bytes, want) << name << " changed; if on purpose, rerun with RESPIN_UPDATE_GOLDEN=1 and review the diff";
  return true;
}
}  // namespace

TEST(RunRecord, WritesTheGoldenBytesAndReadsThemBack) {
  const std::string text = run_record_to_json(sample()).dump(2);
  if (!expect_golden("run_record.json", text)) GTEST_SKIP() << "rewrote tests/golden/run_record.json";
  // Reading the committed file and writing it again gives the same bytes.
  const std::string golden = test::read_bytes(golden_path("run_record.json"));
  EXPECT_EQ(run_record_to_json(run_record_from_json(json::parse(golden), "run_record.json")).dump(2), golden);
}

TEST(CalibConfig, WritesTheGoldenBytesAndReadsThemBack) {
  CalibConfig c = sample().config;
  c.wbits = 3;
  c.abits = 8;
  c.kvbits = 16;
  c.samples = 64;
  c.seq_len = 256;
  c.iters = 7;
  c.lr = 0.75;
  c.batch = 2;
  c.micro_batch = 1;
  c.checkpoint_layers = true;
  c.device_memory = 2147483648;
  c.w_group = 128;
  c.a_group = 64;
  c.kv_group = 32;
  c.w_sym = false;
  c.a_sym = true;
  c.kv_sym = true;
  c.w_mse_clip = false;
  c.a_clip = 0.9;
  c.kv_clip = 0.95;
  c.calib_text = "/data/calib.txt";
  c.eval_text = "/data/eval.txt";
  c.eval_windows = 12;
  c.stats_windows = 3;
  c.threads = 5;
  c.device = DeviceChoice::Cuda;
  c.cuda_device = 2;
  c.precision = Precision::BFloat16;
  c.streaming = Streaming::Layers;
  c.data_dir = "/data/corpus";
  c.rotations_from = "/runs/learned";
  const std::string text = calib_config_to_json(c);
  if (!expect_golden("calib_config.json", text)) GTEST_SKIP() << "rewrote tests/golden/calib_config.json";
  const std::string golden = test::read_bytes(golden_path("calib_config.json"));
  EXPECT_EQ(calib_config_to_json(calib_config_from_json(golden, "calib_config.json")), golden);
}

TEST(RunRecord, ReadsAVersionOneRunJson) {
  // The layout respin wrote before the typed record (format_version 1).
  const json v1 = json::parse(R"JSON({
    "format": "respin-run", "format_version": 1, "respin_version": "0.9", "created": "2026-11-01T00:00:00Z",
    "config": {"model": "/m", "method": "quarot", "wbits": 4, "abits": 4, "kvbits": 16},
    "model": {"folder": "/m", "architecture": "LlamaForCausalLM", "parameters": 10, "hidden_size": 64, "layers": 2},
    "quantizers": {"weight": {"bits": 4, "symmetric": true, "group_size": 0, "clip_ratio": 1.0},
                   "weight_mse_clip": true, "weight_quantizer": "rtn",
                   "activation": {"bits": 4, "symmetric": false, "group_size": 0, "clip_ratio": 1.0},
                   "o_proj_activation_group": 0,
                   "kv": {"bits": 16, "symmetric": false, "group_size": 0, "clip_ratio": 1.0}},
    "online": {"qk_hadamard": false, "down_hadamard": true, "heads_hadamard": true, "skip_correction": false},
    "method": {"residual_init": "random hadamard (sylvester(64))", "head_init": "walsh-hadamard"},
    "calibration": {"source": "corpus training split", "windows": 4, "seq_len": 32},
    "results": {"eval_source": "corpus test split", "eval_windows": 8, "eval_seq_len": 32, "eval_tokens": 256,
                "fp_perplexity": 10.5, "quantized_perplexity": 11.25},
    "timing": {"phases_seconds": {"load": 0.5, "eval": 1.5}, "calibration_seconds": 0.25, "total_seconds": 3.0,
               "threads": 2, "device": "cpu"},
    "compute": {"weights_and_activations": "float32", "rotation_learning": "none", "rotations": "float32",
                "weight_fusion": "float64", "gptq_hessian": "float64", "libtorch": "1.13.1"},
    "peak_rss_bytes": 100, "gpu_memory_in_use_bytes": null})JSON");
  const RunRecord r = run_record_from_json(v1, "old/run.json");
  EXPECT_EQ(r.config.method, Method::QuaRot);
  EXPECT_EQ(r.results.quantized_perplexity, 11.25);
  EXPECT_EQ(r.results.eval_data.source, "corpus test split");
  EXPECT_EQ(r.calibration.data.source, "corpus training split");
  EXPECT_EQ(r.timing.phases_seconds.size(), 2u);
  EXPECT_TRUE(r.online.heads_hadamard);
  EXPECT_EQ(r.method.rank, -1);
  EXPECT_TRUE(r.model.sha256.empty());  // unknown before version 2
}

TEST(RunRecord, DamageIsNamed) {
  json j = run_record_to_json(sample());
  j["results"]["eval_windows"] = "eight";
  EXPECT_NE(test::expect_error([&] { run_record_from_json(j, "r/run.json"); }).find("r/run.json: field 'results.eval_windows' has the wrong type"),
            std::string::npos);
  j = run_record_to_json(sample());
  j["format_version"] = kRunFormatVersion + 1;
  EXPECT_NE(test::expect_error([&] { run_record_from_json(j, "r/run.json"); }).find("newer than this respin reads"), std::string::npos);
  j = run_record_to_json(sample());
  j.erase("results");
  EXPECT_NE(test::expect_error([&] { run_record_from_json(j, "r/run.json"); }).find("missing field 'results'"), std::string::npos);
  j = run_record_to_json(sample());
  j["config"]["method"] = "magic";
  EXPECT_NE(test::expect_error([&] { run_record_from_json(j, "r/run.json"); }).find("unknown method 'magic'"), std::string::npos);
  j = run_record_to_json(sample());
  j["format"] = "something-else";
  EXPECT_NE(test::expect_error([&] { run_record_from_json(j, "r/run.json"); }).find("not a respin run"), std::string::npos);
}

TEST(CalibConfig, EnumsTravelAsTheirNamesAndLabelsRead) {
  CalibConfig c;
  c.model = "/m";
  c.method = Method::SpinQuant;
  c.weight_quantizer = WeightQuantizer::Gptq;
  c.device = DeviceChoice::Cuda;
  c.cuda_device = 1;
  const json j = json::parse(calib_config_to_json(c));
  EXPECT_EQ(j["method"], "spinquant");
  EXPECT_EQ(j["weight_quantizer"], "gptq");
  EXPECT_EQ(j["device"], "cuda");
  EXPECT_EQ(j["cuda_device"], 1);
  const CalibConfig back = calib_config_from_json(j.dump(), "cfg");
  EXPECT_EQ(back.method, Method::SpinQuant);
  EXPECT_EQ(back.device, DeviceChoice::Cuda);
  EXPECT_EQ(back.cuda_device, 1);
  // Configs written before the field existed read as device 0.
  json old = j;
  old.erase("cuda_device");
  EXPECT_EQ(calib_config_from_json(old.dump(), "cfg").cuda_device, 0);
  EXPECT_EQ(back.label(), "spinquant W4A4KV4 gptq");
  c.method = Method::ReSpin;
  c.rank = -1;
  c.weight_quantizer = WeightQuantizer::Rtn;
  EXPECT_EQ(c.label(), "respin r=full W4A4KV4");
  json bad = j;
  bad["device"] = "tpu";
  EXPECT_NE(test::expect_error([&] { calib_config_from_json(bad.dump(), "cfg"); }).find("cfg: field 'device': device 'tpu' is not supported"),
            std::string::npos);
  bad = j;
  bad["rotations_from"] = "/x";
  bad["method"] = "rtn";
  EXPECT_NE(test::expect_error([&] { calib_config_from_json(bad.dump(), "cfg"); }).find("rotations_from applies to rotating methods only"),
            std::string::npos);
}
