// Hostile and careless input through the whole `respin` binary: every case either works or fails
// at once with one line that names the file and the problem, and no stored data is lost.
#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <thread>

#include "core/io/safetensors.h"
#include "core/model/weights.h"
#include "core/util/threads.h"
#include "core/util/fs.h"
#include "tests/cli_util.h"

using namespace respin;
using namespace respin::test;
namespace fs = std::filesystem;

namespace {

// The last line of stderr is one "error: ..." line (usage errors may add the help hint), and it
// contains every `part`.
void expect_error_line(const Result& r, std::initializer_list<std::string> parts, int code = 1) {
  EXPECT_EQ(r.code, code) << r.err;
  const size_t at = r.err.rfind("error: ");
  ASSERT_NE(at, std::string::npos) << r.err;
  std::string line = r.err.substr(at);
  const std::string hint = "(see 'respin --help')\n";
  if (code == 2 && line.size() > hint.size() && line.compare(line.size() - hint.size(), hint.size(), hint) == 0)
    line.resize(line.size() - hint.size());
  EXPECT_EQ(std::count(line.begin(), line.end(), '\n'), 1) << r.err;
  for (const std::string& p : parts) EXPECT_NE(line.find(p), std::string::npos) << "'" << p << "' not in: " << line;
}

class Hostile : public Cli {
 protected:
  std::string long_text() {
    std::string text;
    for (int i = 0; i < 30; ++i) text += kText;
    write_bytes(dir.file("long.txt"), text);
    return dir.file("long.txt");
  }
  std::string calibrate_args(const std::string& method, const std::string& out, const std::string& model_dir = "",
                             int iters = 2) {
    const std::string t = long_text();
    return "calibrate --method " + method + " --model '" + (model_dir.empty() ? model : model_dir) +
           "' --calib-text " + t + " --eval-text " + t + " --seq-len 16 --samples 4 --iters " + std::to_string(iters) +
           " --batch 2 --threads 1 --out " + out;
  }
};

}  // namespace

TEST_F(Hostile, InitModelNeverOverwritesAFolder) {
  const std::string before = read_bytes(model + "/model.safetensors");
  write_bytes(model + "/README.md", "a trained model's card");
  Result r = run("init-model --out " + model + " --seed 3");
  expect_error_line(r, {model, "already exists"});
  EXPECT_EQ(read_bytes(model + "/model.safetensors"), before);
  EXPECT_EQ(read_bytes(model + "/README.md"), "a trained model's card");
}

TEST_F(Hostile, TensorsTheConfigDoesNotUseAreErrors) {
  // num_hidden_layers 2 -> 1 would evaluate a truncated model.
  nlohmann::json c = nlohmann::json::parse(read_bytes(model + "/config.json"));
  c["num_hidden_layers"] = 1;
  write_bytes(model + "/config.json", c.dump());
  Result r = run("eval --model " + model + " --text-file " + dir.file("text.txt"));
  expect_error_line(r, {model + "/model.safetensors", "'model.layers.1.", "not part of the model"});
}

TEST_F(Hostile, EveryStoredCorrectionMustBePresent) {
  Result r = run(calibrate_args("respin", dir.file("run")) + " --rank 4");
  ASSERT_EQ(r.code, 0) << r.err;
  const std::string path = dir.file("run") + "/online.safetensors";
  {
    // Rewrite the file without one correction tensor.
    SafetensorsFile f = SafetensorsFile::open(path);
    std::vector<TensorView> keep;
    std::vector<std::string> bytes;
    for (const TensorInfo& t : f.tensors()) {
      if (t.name == "mlp_skip.1.q") continue;
      bytes.emplace_back(static_cast<const char*>(f.data(t)), t.nbytes());
      keep.push_back(TensorView{t.name, t.dtype, t.shape, nullptr});
    }
    for (size_t i = 0; i < keep.size(); ++i) keep[i].data = bytes[i].data();
    std::vector<TensorView> views = keep;
    write_safetensors(path + ".new", views);
  }
  fs::rename(path + ".new", path);
  r = run("eval --run " + dir.file("run"));
  expect_error_line(r, {path, "'mlp_skip.1.q' is missing"});
}

TEST_F(Hostile, OverflowingWeightsAreReportedNotAveraged) {
  LlamaModel m = load_model(model);
  ModelWeights w = m.weights();
  for (LayerWeights& L : w.layers)
    for (at::Tensor* t : linear_weights(L)) *t = t->mul(1e37);
  w.embed_tokens = w.embed_tokens.mul(1e37);
  SaveOptions so;
  so.file_dtype = DType::F32;
  so.tokenizer_json = dir.file("tokenizer.json");
  save_model(dir.file("huge"), m.config(), w, so);
  Result r = run("eval --model " + dir.file("huge") + " --text-file " + dir.file("text.txt"));
  expect_error_line(r, {dir.file("text.txt"), "non-finite loss"});
}

TEST_F(Hostile, ThreadCountsAreBoundedByTheHardware) {
  const std::string n = std::to_string(default_thread_count());
  for (const char* verb : {"eval --model m --text-file t", "calibrate --model m --out o", "generate --model m --prompt p",
                           "forge --out o"}) {
    for (const char* threads : {"1000", "100000", "-1"}) {
      Result r = run(std::string(verb) + " --threads " + threads);
      expect_error_line(r, {"--threads", "not in range 0 to " + n}, 2);
      EXPECT_LT(r.err.size(), 200u) << r.err;  // a readable bound, not the largest double
    }
  }
  // Other counts get readable bounds too.
  Result r = run("eval --model m --text-file t --max-windows -1");
  expect_error_line(r, {"--max-windows", "not in range 0 to 1099511627776"}, 2);
}

TEST_F(Hostile, CtrlCAndSigtermStopCalibrateCleanly) {
  for (int sig : {SIGINT, SIGTERM}) {
    const std::string out = dir.file("run");
    const std::string err = dir.file("err" + std::to_string(sig));
    const std::string args = calibrate_args("spinquant", out, "", 100000);
    pid_t pid = fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      freopen("/dev/null", "w", stdout);
      freopen(err.c_str(), "w", stderr);
      const std::string cmd = std::string(RESPIN_BIN) + " " + args;
      execl("/bin/sh", "sh", "-c", ("exec " + cmd).c_str(), static_cast<char*>(nullptr));
      _exit(127);
    }
    // Wait until rotation learning runs, then ask it to stop.
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
    int status = 0;
    while (read_bytes(err).find("rotate") == std::string::npos && std::chrono::steady_clock::now() < deadline &&
           waitpid(pid, &status, WNOHANG) == 0)
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    ASSERT_NE(read_bytes(err).find("rotate"), std::string::npos) << read_bytes(err);
    kill(pid, sig);
    waitpid(pid, &status, 0);
    ASSERT_TRUE(WIFEXITED(status)) << read_bytes(err);
    EXPECT_EQ(WEXITSTATUS(status), 130) << "signal " << sig;
    EXPECT_NE(read_bytes(err).find("cancelled"), std::string::npos) << read_bytes(err);
    EXPECT_FALSE(fs::exists(out));
    for (const DirEntry& e : list_directory(dir.path()))
      EXPECT_EQ(e.name.find("run.partial"), std::string::npos) << e.name;
  }
}

TEST_F(Hostile, UnwritableOutputAndNonUtf8PathsFailBeforeAnyWork) {
  // A dangling symbolic link as --out, a directory that cannot be written (sysfs refuses new
  // entries even to root), a path that is not UTF-8: refused before loading anything.
  fs::create_symlink(dir.file("nowhere"), dir.file("dangling"));
  Result r = run(calibrate_args("rtn", dir.file("dangling")));
  expect_error_line(r, {dir.file("dangling"), "already exists (a symbolic link)"});
  EXPECT_EQ(r.err.find("load"), std::string::npos) << r.err;
  r = run(calibrate_args("rtn", "/sys/respin-run"));
  expect_error_line(r, {"/sys: cannot create the run directory here"});
  EXPECT_EQ(r.err.find("load"), std::string::npos) << r.err;
  const std::string odd = dir.path() + "/m\xff";
  fs::create_directory_symlink(model, odd);
  r = run(calibrate_args("rtn", dir.file("run"), odd));
  expect_error_line(r, {"m\\xFF", "--model path is not valid UTF-8"});
  EXPECT_EQ(r.err.find("load"), std::string::npos) << r.err;
  // Reading through such a path works where nothing has to record it as JSON text.
  r = run("eval --json --model '" + odd + "' --text-file " + dir.file("text.txt"));
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_NO_THROW(nlohmann::json::parse(r.out));
}

TEST_F(Hostile, RunsRecordAbsolutePathsAndEvalReproducesTheirProtocol) {
  // Calibrate with relative paths from the fixture directory...
  long_text();
  Result r = run("calibrate --method quarot --model model --calib-text long.txt --eval-text long.txt --seq-len 16 "
                 "--samples 4 --eval-windows 7 --threads 1 --json --out run",
                 dir.path());
  ASSERT_EQ(r.code, 0) << r.err;
  const nlohmann::json j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["config"]["model"], model);
  EXPECT_EQ(j["config"]["eval_text"], dir.file("long.txt"));
  // ...and evaluate the run from elsewhere with no options: the run's own windows and number.
  r = run("eval --json --threads 1 --run " + dir.file("run"), "/");
  ASSERT_EQ(r.code, 0) << r.err;
  const nlohmann::json e = nlohmann::json::parse(r.out);
  EXPECT_EQ(e["seq_len"], 16);
  EXPECT_EQ(e["windows"], 7);
  EXPECT_DOUBLE_EQ(e["perplexity"].get<double>(), j["results"]["quantized_perplexity"].get<double>());
  EXPECT_EQ(r.err.find("capped"), std::string::npos) << r.err;
}

TEST_F(Hostile, InputErrorsNameTheirFile) {
  // Text that is not UTF-8, a directory, a text shorter than one window.
  write_bytes(dir.file("latin1.txt"), "caf\xe9 au lait, the best of times\n");
  Result r = run("eval --model " + model + " --text-file " + dir.file("latin1.txt"));
  expect_error_line(r, {dir.file("latin1.txt")});
  r = run("eval --model " + model + " --text-file " + dir.path());
  expect_error_line(r, {dir.path(), "directory"});
  write_bytes(dir.file("short.txt"), "the");
  r = run("eval --model " + model + " --text-file " + dir.file("short.txt"));
  expect_error_line(r, {dir.file("short.txt"), "fewer than one window"});
  // A token id beyond the model's vocabulary: the text and the tokenizer are named.
  nlohmann::json tok = nlohmann::json::parse(tiny_tokenizer_json());
  tok["model"]["vocab"]["Ġthe"] = 400;
  write_bytes(model + "/tokenizer.json", tok.dump());
  r = run("eval --model " + model + " --text-file " + dir.file("text.txt"));
  expect_error_line(r, {dir.file("text.txt"), model + "/tokenizer.json", "token id 400", "vocabulary"});
  // A run.json field of the wrong type.
  write_bytes(model + "/tokenizer.json", tiny_tokenizer_json());
  r = run(calibrate_args("rtn", dir.file("run")));
  ASSERT_EQ(r.code, 0) << r.err;
  nlohmann::json run_json = nlohmann::json::parse(read_bytes(dir.file("run") + "/run.json"));
  run_json["online"]["qk_hadamard"] = "yes";
  write_bytes(dir.file("run") + "/run.json", run_json.dump());
  r = run("eval --run " + dir.file("run"));
  expect_error_line(r, {dir.file("run") + "/run.json"});
  // Usage: an unknown verb names itself; --rank belongs to --run.
  r = run("frobnicate --model x");
  expect_error_line(r, {"unknown verb 'frobnicate'"}, 2);
  r = run("eval --model " + model + " --text-file " + dir.file("text.txt") + " --rank 4");
  expect_error_line(r, {"--rank", "--run"}, 2);
}

TEST_F(Hostile, ByteLevelTokenizerMissingAByteIsRefused) {
  // "café" is 63 61 66 C3 A9: without a token for 0xC3 the byte would silently disappear.
  nlohmann::json tok = nlohmann::json::parse(tiny_tokenizer_json());
  tok["model"]["vocab"].erase(byte_symbol(0xC3));
  write_bytes(dir.file("broken.json"), tok.dump());
  Result r = run("tokenize --tokenizer " + dir.file("broken.json") + " --text café");
  expect_error_line(r, {dir.file("broken.json"), "no token for byte 0xC3"});
  // The intact tokenizer keeps every byte.
  r = run("tokenize --tokenizer " + dir.file("tokenizer.json") + " --text café");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.out, "99 97 102 195 169\n");
}

TEST_F(Hostile, AllocationFailuresAreOneLine) {
  // One window of 4096 positions x a 150000-token vocabulary: 2.5 GB of float32 logits and as much
  // again for their log-softmax, under a 3 GB address-space limit: libtorch's allocator fails.
  Result r = run("init-model --out " + dir.file("wide") + " --tokenizer " + dir.file("tokenizer.json") +
                 " --hidden 64 --intermediate 128 --layers 1 --heads 4 --kv-heads 2 --vocab 150000 --max-positions 4096");
  ASSERT_EQ(r.code, 0) << r.err;
  std::string text;
  for (int i = 0; i < 300; ++i) text += kText;
  write_bytes(dir.file("book.txt"), text);
  const std::string cmd = "ulimit -v 3000000; " + std::string(RESPIN_BIN) + " eval --model " + dir.file("wide") +
                          " --text-file " + dir.file("book.txt") + " --seq-len 4096 --threads 1 2>" +
                          dir.file("alloc.err") + " >/dev/null </dev/null";
  const int status = std::system(("sh -c '" + cmd + "'").c_str());
  r = Result{WIFEXITED(status) ? WEXITSTATUS(status) : -1, "", read_bytes(dir.file("alloc.err"))};
  expect_error_line(r, {"evaluating " + dir.file("book.txt"), "can't allocate memory"});
  EXPECT_EQ(r.err.find("frame #"), std::string::npos) << r.err;
}
