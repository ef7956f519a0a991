// End-to-end: the `respin` binary as a user runs it (exit codes, messages, output formats), on a
// model folder it writes itself with `init-model` and a small byte-level tokenizer.json.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <cstdlib>
#include <nlohmann/json.hpp>

#include "core/eval/perplexity.h"
#include "core/methods/rtn.h"
#include "core/model/weights.h"
#include "core/tokenizer/tokenizer.h"
#include "tests/cli_util.h"
#include "tests/test_util.h"

using namespace respin;
using namespace respin::test;

TEST(CliBasics, VersionHelpAndUsageErrors) {
  Result r = run("--version");
  EXPECT_EQ(r.code, 0);
  EXPECT_NE(r.out.find("respin 0."), std::string::npos) << r.out;
  r = run("--help");
  EXPECT_EQ(r.code, 0);
  for (const char* verb : {"info", "tokenize", "eval", "init-model"})
    EXPECT_NE(r.out.find(verb), std::string::npos) << verb;
  r = run("eval --help");
  EXPECT_EQ(r.code, 0);
  EXPECT_NE(r.out.find("--seq-len"), std::string::npos);
  r = run("");
  EXPECT_EQ(r.code, 2);
  EXPECT_EQ(r.err.rfind("error: ", 0), 0u) << r.err;
  EXPECT_EQ(run("frobnicate").code, 2);
  EXPECT_EQ(run("eval --model /tmp").code, 2);  // --text-file missing
  EXPECT_EQ(run("eval --model /tmp --text-file x --dtype f64").code, 2);
  EXPECT_EQ(run("tokenize --text hi").code, 2);  // neither --model nor --tokenizer
}

TEST_F(Cli, InfoHumanAndJson) {
  Result r = run("info --model " + model);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("LlamaForCausalLM"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("4 query, 2 key/value"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("byte-level BPE"), std::string::npos) << r.out;
  r = run("info --json --model " + model);
  ASSERT_EQ(r.code, 0) << r.err;
  auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["vocab_size"], 259);
  EXPECT_EQ(j["num_key_value_heads"], 2);
  // hidden 32, intermediate 64, head_dim 8, 4 heads: all Sylvester.
  ASSERT_EQ(j["hadamard"].size(), 4u);
  EXPECT_EQ(j["hadamard"][0]["text"], "32 = 2^5, Sylvester(32)");
  EXPECT_EQ(j["hadamard"][1]["construction"], "sylvester(64)");
  EXPECT_EQ(j["torch_dtype"], "float32");
  // 259*32 embed + 259*32 lm_head + 32 final norm + 2 layers * (attn 32*32*2 + 2*32*16 + mlp 3*32*64 + 64)
  EXPECT_EQ(j["parameter_count"], 259 * 32 * 2 + 32 + 2 * (2048 + 1024 + 6144 + 64));
  EXPECT_EQ(j["tokenizer"]["vocab_size"], 259);
}

TEST_F(Cli, TokenizeMatchesLibrary) {
  Result r = run("tokenize --model " + model + " --text 'the theme of the day'");
  ASSERT_EQ(r.code, 0) << r.err;
  Tokenizer tok = Tokenizer::from_file(dir.file("tokenizer.json"));
  std::vector<int> ids = tok.encode("the theme of the day");
  std::string expect;
  for (size_t i = 0; i < ids.size(); ++i) expect += (i ? " " : "") + std::to_string(ids[i]);
  EXPECT_EQ(r.out, expect + "\n");
  EXPECT_EQ(ids[0], 257);  // "the" merged
  r = run("tokenize --tokenizer " + dir.file("tokenizer.json") + " --file " + dir.file("text.txt"));
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(std::count(r.out.begin(), r.out.end(), ' ') + 1, static_cast<long>(tok.encode(kText).size()));
}

TEST_F(Cli, EvalMatchesLibraryAndCapsSeqLen) {
  Result r = run("eval --json --model " + model + " --text-file " + dir.file("text.txt") + " --seq-len 16 --threads 1");
  ASSERT_EQ(r.code, 0) << r.err;
  auto j = nlohmann::json::parse(r.out);
  LlamaModel m = load_model(model);
  Tokenizer tok = Tokenizer::from_file(dir.file("tokenizer.json"));
  std::vector<int> ids = tok.encode(kText);
  PerplexityOptions o;
  o.seq_len = 16;
  PerplexityResult ref = evaluate_perplexity(m, ids, o);
  EXPECT_EQ(j["windows"], ref.windows);
  EXPECT_EQ(j["tokens_total"], static_cast<int64_t>(ids.size()));
  EXPECT_NEAR(j["perplexity"].get<double>() / ref.perplexity, 1.0, 1e-6);
  EXPECT_GT(j["tokens_per_s"].get<double>(), 0.0);

  // RTN fake quantization changes the result and is reported; invalid bit widths are usage errors.
  r = run("eval --json --model " + model + " --text-file " + dir.file("text.txt") +
          " --seq-len 16 --threads 1 --wbits 3 --abits 3 --kvbits 3");
  ASSERT_EQ(r.code, 0) << r.err;
  auto jq = nlohmann::json::parse(r.out);
  EXPECT_EQ(jq["quantization"]["wbits"], 3);
  // The CLI's W3A3KV3 is the library's RTN (whose grids have by-hand tests) to the digit, and it
  // moves the perplexity of this random model measurably (its direction is noise for a model
  // that predicts nothing; the calibration suites check directions on output errors).
  QuantConfig qc;
  qc.weight.bits = qc.activation.bits = qc.kv.bits = 3;
  const double lib_q = evaluate_perplexity(quantize_rtn(m, qc), ids, o).perplexity;
  EXPECT_NEAR(jq["perplexity"].get<double>() / lib_q, 1.0, 1e-6);
  EXPECT_GT(std::abs(lib_q / ref.perplexity - 1.0), 1e-3) << lib_q << " vs " << ref.perplexity;
  EXPECT_TRUE(j["quantization"].is_null());
  EXPECT_EQ(run("eval --model " + model + " --text-file x --wbits 1").code, 2);

  r = run("eval --model " + model + " --text-file " + dir.file("text.txt") + " --seq-len 4096 --dtype bf16");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.err.find("capped at the model's max_position_embeddings 64"), std::string::npos) << r.err;
  EXPECT_NE(r.out.find("perplexity:"), std::string::npos) << r.out;
}

TEST_F(Cli, CalibrateWritesARunThatEvalReproduces) {
  std::string text;
  for (int i = 0; i < 30; ++i) text += kText;
  write_bytes(dir.file("long.txt"), text);
  const std::string common = " --model " + model + " --calib-text " + dir.file("long.txt") + " --eval-text " +
                             dir.file("long.txt") + " --seq-len 16 --samples 4 --iters 2 --batch 2 --threads 1 --device cpu";
  Result r = run("calibrate --method respin --rank 4 --wbits 4 --abits 4 --kvbits 4 --json --out " + dir.file("run") + common);
  ASSERT_EQ(r.code, 0) << r.err;
  auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["config"]["rank"], 4);
  EXPECT_EQ(j["method"]["training"]["loss"].size(), 2u);
  const double q = j["results"]["quantized_perplexity"].get<double>();
  // On the CPU everything computes in float32 (TF32 learning is a CUDA-only choice), recorded.
  EXPECT_EQ(j["timing"]["device"], "cpu");
  EXPECT_EQ(j["compute"]["rotation_learning"], "float32");
  EXPECT_EQ(j["compute"]["weight_fusion"], "float64");
  EXPECT_TRUE(j["gpu_memory_in_use_bytes"].is_null());

  // eval --run evaluates the stored model with its rotations and quantizers: the same number.
  r = run("eval --json --run " + dir.file("run") + " --text-file " + dir.file("long.txt") + " --seq-len 16 --threads 1 --device cpu");
  ASSERT_EQ(r.code, 0) << r.err;
  auto e = nlohmann::json::parse(r.out);
  EXPECT_NEAR(e["perplexity"].get<double>() / q, 1.0, 1e-6);
  EXPECT_EQ(e["device"], "cpu");
  EXPECT_EQ(e["quantization"]["config"]["method"], "respin");
  // A rank sweep from the stored rotations.
  r = run("eval --json --run " + dir.file("run") + " --rank 32 --text-file " + dir.file("long.txt") + " --seq-len 16");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(nlohmann::json::parse(r.out)["quantization"]["rank_rebuilt"].get<bool>());

  // Human output names both perplexities; an existing run directory is refused, untouched.
  r = run("calibrate --method quarot --out " + dir.file("run2") + common);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("held-out perplexity:  FP "), std::string::npos) << r.out;
  const std::string before = read_bytes(dir.file("run2") + "/run.json");
  r = run("calibrate --method quarot --out " + dir.file("run2") + common);
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("already exists"), std::string::npos) << r.err;
  EXPECT_EQ(read_bytes(dir.file("run2") + "/run.json"), before);
  // Usage errors.
  EXPECT_EQ(run("calibrate --method gptq --out x" + common).code, 2);
  EXPECT_EQ(run("calibrate --method rtn --wbits 1 --out x" + common).code, 2);
  EXPECT_EQ(run("eval --run " + dir.file("run") + " --model " + model).code, 2);
  r = run("eval --run " + dir.file("run2") + " --rank 4");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("respin runs only"), std::string::npos) << r.err;
}

TEST_F(Cli, FailuresAreOneLineErrorsNamingTheFile) {
  Result r = run("eval --model /nonexistent/model --text-file " + dir.file("text.txt"));
  EXPECT_EQ(r.code, 1);
  EXPECT_EQ(r.err, "error: /nonexistent/model: not a directory\n");
  r = run("eval --model " + model + " --text-file " + dir.file("missing.txt"));
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("missing.txt"), std::string::npos) << r.err;

  // A truncated weights file: clear error naming it, and the file is left as it was.
  std::string st = read_bytes(model + "/model.safetensors");
  write_bytes(model + "/model.safetensors", st.substr(0, st.size() / 2));
  r = run("eval --model " + model + " --text-file " + dir.file("text.txt"));
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find(model + "/model.safetensors"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("truncated"), std::string::npos) << r.err;
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  EXPECT_EQ(read_bytes(model + "/model.safetensors").size(), st.size() / 2);

  // A config naming an unsupported architecture.
  write_bytes(model + "/config.json", R"({"architectures": ["GPT2LMHeadModel"], "hidden_size": 8})");
  r = run("info --model " + model);
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("config.json: architecture 'GPT2LMHeadModel' is not supported"), std::string::npos) << r.err;
}

// Damaged inputs through the whole CLI: each failure is one line that names the file, the field or
// tensor, and (for calibrate) the phase; nothing is left behind.
TEST_F(Cli, DamagedConfigAndWeightsAreOneLineErrorsWithContext) {
  // The error is the last line of stderr (calibrate reports its phases before it).
  auto one_line = [](const Result& r) {
    EXPECT_EQ(r.code, 1) << r.err;
    const size_t at = r.err.find("error: ");
    ASSERT_NE(at, std::string::npos) << r.err;
    EXPECT_TRUE(at == 0 || r.err[at - 1] == '\n') << r.err;
    const std::string error = r.err.substr(at);
    EXPECT_EQ(std::count(error.begin(), error.end(), '\n'), 1) << r.err;
    EXPECT_EQ(error.back(), '\n') << r.err;
    EXPECT_EQ(r.err.find("frame #"), std::string::npos) << r.err;
  };
  const std::string config_path = model + "/config.json";
  const std::string good_config = read_bytes(config_path);
  const std::string eval = "eval --model " + model + " --text-file " + dir.file("text.txt");
  const std::string calibrate = "calibrate --method quarot --model " + model + " --calib-text " + dir.file("text.txt") +
                                " --eval-text " + dir.file("text.txt") + " --seq-len 8 --samples 2 --out " + dir.file("run");

  // A transformers 5 config with a rope type the forward does not implement.
  nlohmann::json c = nlohmann::json::parse(good_config);
  c.erase("rope_theta");
  c.erase("rope_scaling");
  c["rope_parameters"] = {{"rope_type", "yarn"}, {"factor", 4.0}, {"rope_theta", 10000.0},
                          {"original_max_position_embeddings", 64}};
  write_bytes(config_path, c.dump());
  Result r = run(eval);
  one_line(r);
  EXPECT_NE(r.err.find(config_path + ": field 'rope_parameters.rope_type' 'yarn' is not supported"), std::string::npos)
      << r.err;
  r = run(calibrate);
  one_line(r);
  EXPECT_NE(r.err.find("error: calibration (quarot), phase 'load': " + config_path), std::string::npos) << r.err;
  EXPECT_FALSE(std::filesystem::exists(dir.file("run")));

  // The same config in the 5.x form with a supported rope type loads, and gives the 4.x numbers.
  c["rope_parameters"] = {{"rope_type", "default"}, {"rope_theta", 10000.0}};
  c["dtype"] = c["torch_dtype"];
  c.erase("torch_dtype");
  write_bytes(config_path, c.dump());
  r = run(eval + " --json");
  ASSERT_EQ(r.code, 0) << r.err;
  const double ppl_5x = nlohmann::json::parse(r.out)["perplexity"].get<double>();
  write_bytes(config_path, good_config);
  r = run(eval + " --json");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(nlohmann::json::parse(r.out)["perplexity"].get<double>(), ppl_5x);

  // A head_dim that contradicts the stored projections: the config is named, with the tensor.
  c = nlohmann::json::parse(good_config);
  c["head_dim"] = 4;
  write_bytes(config_path, c.dump());
  r = run("--verbose " + eval);  // --verbose changes nothing for errors without a backtrace
  one_line(r);
  EXPECT_NE(r.err.find(config_path + ": field 'head_dim' (4)"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("'model.layers.0.self_attn.q_proj.weight' of shape [32, 32] in " + model + "/model.safetensors"),
            std::string::npos)
      << r.err;
  write_bytes(config_path, good_config);

  // A damaged safetensors header: named file, phase, one line; the run directory never appears.
  std::string st = read_bytes(model + "/model.safetensors");
  std::string damaged = st;
  damaged[8] = '#';  // the JSON header's opening brace
  write_bytes(model + "/model.safetensors", damaged);
  r = run(calibrate);
  one_line(r);
  EXPECT_NE(r.err.find("phase 'load': " + model + "/model.safetensors"), std::string::npos) << r.err;
  EXPECT_FALSE(std::filesystem::exists(dir.file("run")));
  write_bytes(model + "/model.safetensors", st);
  EXPECT_EQ(run(calibrate).code, 0);
}
