// The model forge on the micro preset: a trained model beats the unigram baseline, the written
// folder reproduces the training code's logits, a stopped run resumes to exactly the weights of an
// uninterrupted one, Ctrl-C on the CLI leaves the checkpoint intact; and generation choices.
#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <set>
#include <sstream>
#include <nlohmann/json.hpp>
#include <thread>

#include "core/data/corpus.h"
#include "core/eval/generate.h"
#include "core/eval/perplexity.h"
#include "core/model/weights.h"
#include "core/tokenizer/tokenizer.h"
#include "core/train/forge.h"
#include "core/util/error.h"
#include "core/util/fs.h"
#include "core/util/sha256.h"
#include "core/util/threads.h"
#include "tests/test_util.h"

using namespace respin;
using respin::test::TempDir;
using respin::test::read_bytes;
using respin::test::write_bytes;
namespace fs = std::filesystem;

TEST(ForgePresets, HadamardFriendlyAndNonPowerOfTwoSizes) {
  auto pow2 = [](int64_t n) { return n > 0 && (n & (n - 1)) == 0; };
  ForgePreset small = forge_preset("small");
  EXPECT_TRUE(pow2(small.hidden_size) && pow2(small.intermediate_size));
  EXPECT_LT(small.num_kv_heads, small.num_heads);  // GQA
  EXPECT_FALSE(small.tied);
  ForgePreset npot = forge_preset("small-npot");
  EXPECT_FALSE(pow2(npot.hidden_size));
  EXPECT_FALSE(pow2(npot.intermediate_size));
  EXPECT_EQ(npot.intermediate_size % 12, 0);
  EXPECT_TRUE(pow2(npot.intermediate_size / 12));  // 12 * 2^m: the K * 2^m Hadamard path
  EXPECT_TRUE(pow2(npot.hidden_size / 3));
  for (const auto& p : forge_presets()) {
    EXPECT_EQ(p.hidden_size % p.num_heads, 0) << p.name;
    EXPECT_EQ(p.num_heads % p.num_kv_heads, 0) << p.name;
  }
  EXPECT_THROW(forge_preset("huge"), Error);
}

TEST(Generate, GreedyAndNucleusChoices) {
  at::Generator gen = at::detail::createCPUGenerator(1);
  at::Tensor logits = at::tensor(std::vector<float>{0.0f, 5.0f, 1.0f, 4.0f});
  GenerateOptions greedy;
  EXPECT_EQ(choose_token(logits, greedy, gen), 1);
  GenerateOptions nucleus;
  nucleus.temperature = 1.0;
  nucleus.top_p = 0.5;  // token 1 alone holds ~0.71 of the mass
  for (int i = 0; i < 50; ++i) EXPECT_EQ(choose_token(logits, nucleus, gen), 1);
  nucleus.top_p = 0.9;  // tokens 1 and 3 (0.71 + 0.26)
  std::set<int> seen;
  for (int i = 0; i < 200; ++i) seen.insert(choose_token(logits, nucleus, gen));
  EXPECT_EQ(seen, (std::set<int>{1, 3}));
}

class ForgeMicro : public ::testing::Test {
 protected:
  static ForgeOptions options(const std::string& out, int64_t steps) {
    ForgeOptions o;
    o.preset = forge_preset("micro");
    o.preset.steps = steps;
    o.preset.warmup_steps = 5;
    o.out_dir = out;
    o.seed = 11;
    o.compute = "f32";
    o.checkpoint_every = 10;
    return o;
  }
  void SetUp() override { set_compute_threads(0); }
};

TEST_F(ForgeMicro, TrainsBeatsUnigramAndFolderReproducesTrainingLogits) {
  TempDir dir;
  ForgeOptions o = options(dir.file("m"), 60);
  o.save_f32 = true;
  ForgeResult r = forge(o);
  for (const char* f : {"config.json", "model.safetensors", "tokenizer.json", "generation_config.json", "README.md",
                        "f32/model.safetensors"})
    EXPECT_TRUE(fs::exists(dir.file("m/") + f)) << f;
  EXPECT_FALSE(fs::exists(dir.file("m/checkpoint")));
  EXPECT_LT(r.val_perplexity, 0.5 * r.unigram_val_perplexity);
  EXPECT_EQ(r.outliers.size(), 4u * r.config.num_hidden_layers);
  const std::string card = read_bytes(dir.file("m/README.md"));
  EXPECT_NE(card.find("unigram baseline"), std::string::npos);
  // SHA256SUMS names every file of the folder with its digest, as `sha256sum -c` reads it.
  const std::string sums = read_bytes(dir.file("m/SHA256SUMS"));
  for (const char* f : {"README.md", "config.json", "generation_config.json", "model.safetensors", "tokenizer.json"})
    EXPECT_NE(sums.find(sha256_hex(read_bytes(dir.file("m/") + f)) + "  " + f + "\n"), std::string::npos) << f;
  EXPECT_NE(card.find("| 1 | down_proj_input |"), std::string::npos);

  // The training code's logits (its own float32 weights) against the folders the loader reads.
  at::Tensor ids = at::randint(r.config.vocab_size, {2, 32}, at::kLong);
  at::Tensor trained = LlamaModel(r.config, r.weights).forward(ids);
  EXPECT_TRUE(at::equal(load_model(dir.file("m/f32")).forward(ids), trained));
  LlamaModel stored = load_model(dir.file("m"), {at::kBFloat16});
  ModelWeights bf = r.weights;
  bf.embed_tokens = bf.embed_tokens.to(at::kBFloat16);  // what the bf16 folder must hold, exactly
  EXPECT_TRUE(at::equal(stored.weights().embed_tokens, bf.embed_tokens));
  EXPECT_LT((stored.forward(ids).to(at::kFloat) - trained).abs().max().item<double>(),
            0.05 * trained.abs().max().item<double>());

  // A finished folder is not overwritten.
  EXPECT_THROW(forge(options(dir.file("m"), 60)), Error);
}

TEST_F(ForgeMicro, StoppedRunResumesToTheSameWeights) {
  TempDir dir;
  ForgeResult straight = forge(options(dir.file("a"), 40));

  RunControl control;
  control.set_progress_callback([&](const ProgressEvent& e) {
    if (e.phase == "train" && e.done == 25) control.request_stop();
  }, 0);
  EXPECT_THROW(forge(options(dir.file("b"), 40), &control), Cancelled);
  auto state = nlohmann::json::parse(read_bytes(dir.file("b/checkpoint/state.json")));
  EXPECT_EQ(state["step"], 20);  // the last completed checkpoint, intact
  EXPECT_FALSE(fs::exists(dir.file("b/config.json")));

  ForgeOptions again = options(dir.file("b"), 40);
  EXPECT_THROW(forge(again), Error);  // refuses to start over a checkpoint without resume
  again.resume = true;
  ForgeResult resumed = forge(again);
  EXPECT_EQ(resumed.steps, 40);
  EXPECT_TRUE(at::equal(resumed.weights.layers[1].down_proj, straight.weights.layers[1].down_proj));
  EXPECT_TRUE(at::equal(resumed.weights.embed_tokens, straight.weights.embed_tokens));
  EXPECT_DOUBLE_EQ(resumed.val_perplexity, straight.val_perplexity);
}

TEST(ForgeCli, CtrlCLeavesCheckpointAndGenerateWorks) {
  TempDir dir;
  const std::string out = dir.file("m");
  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    freopen("/dev/null", "w", stderr);
    execl(RESPIN_BIN, RESPIN_BIN, "forge", "--preset", "micro", "--steps", "100000", "--checkpoint-every", "20",
          "--out", out.c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
  while (!fs::exists(out + "/checkpoint/state.json") && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  ASSERT_TRUE(fs::exists(out + "/checkpoint/state.json"));
  kill(pid, SIGINT);
  int status = 0;
  waitpid(pid, &status, 0);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 130);
  auto state = nlohmann::json::parse(read_bytes(out + "/checkpoint/state.json"));
  EXPECT_GE(state["step"].get<int>(), 20);
  EXPECT_EQ(state["step"].get<int>() % 20, 0);
  EXPECT_TRUE(fs::exists(out + "/checkpoint/model.safetensors"));
  EXPECT_FALSE(fs::exists(out + "/checkpoint.tmp"));
  // Finish it with fewer total steps, then generate from it.
  const std::string resume = std::string(RESPIN_BIN) + " forge --preset micro --resume --steps " +
                             std::to_string(state["step"].get<int>() + 10) + " --out " + out + " 2>/dev/null >/dev/null";
  ASSERT_EQ(std::system(resume.c_str()), 0);
  const std::string gen = std::string(RESPIN_BIN) + " generate --model " + out +
                          " --prompt 'The President' --max-new-tokens 8 > " + dir.file("gen.txt");
  ASSERT_EQ(std::system(gen.c_str()), 0);
  EXPECT_EQ(read_bytes(dir.file("gen.txt")).rfind("The President", 0), 0u);
  EXPECT_GT(read_bytes(dir.file("gen.txt")).size(), std::string("The President\n").size());
}

// The default model the repository ships (resources/models/small, what scripts/run.sh installs):
// the files its SHA256SUMS lists and no others, a card that says how it was made, the sizes of the
// small preset, and a model that has learned the corpus (two validation windows scored at less
// than half the card's unigram baseline perplexity).
TEST(ShippedModel, IsTheSmallPresetTrainedAsItsCardSays) {
  const fs::path dir = fs::path(RESPIN_SOURCE_DIR) / "resources/models/small";
  ASSERT_TRUE(fs::is_directory(dir)) << dir << " is missing: scripts/run.sh would train it for about 30 minutes";
  const std::string sums = read_bytes((dir / "SHA256SUMS").string());
  std::set<std::string> listed;
  std::istringstream lines(sums);
  for (std::string line; std::getline(lines, line);) {
    ASSERT_GT(line.size(), 66u) << line;
    const std::string digest = line.substr(0, 64), name = line.substr(66);
    EXPECT_EQ(sha256_hex(read_bytes((dir / name).string())), digest) << name;
    listed.insert(name);
  }
  EXPECT_EQ(listed, (std::set<std::string>{"README.md", "config.json", "generation_config.json", "model.safetensors",
                                           "tokenizer.json"}));
  for (const DirEntry& e : list_directory(dir.string()))
    EXPECT_TRUE(e.name == "SHA256SUMS" || listed.count(e.name)) << "unlisted file " << e.name;

  const ForgePreset p = forge_preset("small");
  const std::string card = read_bytes((dir / "README.md").string());
  EXPECT_NE(card.find("| steps | " + std::to_string(p.steps) + " x " + std::to_string(p.batch_size) + " windows x " +
                      std::to_string(p.seq_len) + " tokens |"),
            std::string::npos);
  EXPECT_NE(card.find("| optimizer | AdamW (0.9, 0.95), weight decay "), std::string::npos);
  EXPECT_NE(card.find(" warm-up steps, cosine to "), std::string::npos);
  EXPECT_NE(card.find("(float32 master weights), seed 0 |"), std::string::npos);

  const nlohmann::json config = nlohmann::json::parse(read_bytes((dir / "config.json").string()));
  EXPECT_EQ(config.at("hidden_size").get<int64_t>(), p.hidden_size);
  EXPECT_EQ(config.at("intermediate_size").get<int64_t>(), p.intermediate_size);
  EXPECT_EQ(config.at("num_hidden_layers").get<int64_t>(), p.num_layers);
  EXPECT_EQ(config.at("num_attention_heads").get<int64_t>(), p.num_heads);
  EXPECT_EQ(config.at("num_key_value_heads").get<int64_t>(), p.num_kv_heads);
  EXPECT_EQ(config.at("vocab_size").get<int64_t>(), p.vocab_size);
  EXPECT_EQ(config.at("max_position_embeddings").get<int64_t>(), p.seq_len);

  // The card's unigram baseline, and two validation windows of the corpus scored now.
  const std::string key = "| unigram baseline (same tokenizer, training-split counts, same tokens) | ";
  const size_t at_key = card.find(key);
  ASSERT_NE(at_key, std::string::npos);
  const double unigram = std::stod(card.substr(at_key + key.size()));
  ASSERT_GT(unigram, 10.0);
  set_compute_threads(0);
  const Corpus corpus = Corpus::load(default_corpus_dir());
  const Tokenizer tok = Tokenizer::from_file((dir / "tokenizer.json").string());
  const LlamaModel model = load_model(dir.string());
  PerplexityOptions po;
  po.seq_len = p.seq_len;
  po.max_windows = 2;
  const PerplexityResult r = evaluate_perplexity(model, tok.encode(corpus.text_of(Split::Validation)), po);
  EXPECT_EQ(r.windows, 2);
  EXPECT_LT(r.perplexity, 0.5 * unigram) << "unigram " << unigram;
  std::printf("  shipped model: 2 validation windows ppl %.3f, card's unigram baseline %.3f\n", r.perplexity, unigram);
}
