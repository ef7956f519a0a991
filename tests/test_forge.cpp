// The model forge: byte-level BPE training (checked against the JavaScript oracle), the corpus
// split, generation, and `forge` itself on the micro preset: a trained model beats the unigram
// baseline, the written folder reproduces the training code's logits, and a stopped run resumes
// to exactly the weights of an uninterrupted one.
#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <thread>

#include "core/data/corpus.h"
#include "core/eval/generate.h"
#include "core/model/weights.h"
#include "core/tokenizer/bpe_trainer.h"
#include "core/tokenizer/tokenizer.h"
#include "core/train/forge.h"
#include "core/util/error.h"
#include "core/util/threads.h"
#include "tests/test_util.h"

using namespace respin;
using respin::test::TempDir;
using respin::test::read_bytes;
using respin::test::write_bytes;
namespace fs = std::filesystem;

namespace {

std::string sample_text() {
  std::string t;
  for (int i = 0; i < 200; ++i)
    t += "The whale swam on. The captain watched the whale, and the crew watched the captain " +
         std::to_string(i * 37) + " times!\n";
  return t + "Ünïcödé ✓ and emoji 🐋 appear once.\n";
}

}  // namespace

TEST(BpeTrainer, LearnsFrequentWordsAndRoundTrips) {
  const std::string text = sample_text();
  BpeTrainOptions o;
  o.vocab_size = 320;
  BpeTrainResult r = train_byte_level_bpe(text, o);
  EXPECT_EQ(r.vocab_size, 320);
  EXPECT_EQ(r.num_merges, 320 - 256 - 1);
  EXPECT_EQ(train_byte_level_bpe(text, o).tokenizer_json, r.tokenizer_json);  // deterministic
  TempDir dir;
  write_bytes(dir.file("tokenizer.json"), r.tokenizer_json);
  Tokenizer tok = Tokenizer::from_file(dir.file("tokenizer.json"));
  EXPECT_EQ(tok.vocab_size(), 320);
  EXPECT_EQ(tok.info().kind, "byte-level BPE");
  EXPECT_EQ(tok.token_to_id("<|endoftext|>"), 319);
  EXPECT_EQ(tok.encode(" whale").size(), 1u);    // frequent words become single tokens
  EXPECT_EQ(tok.encode(" captain").size(), 1u);
  std::vector<int> ids = tok.encode(text);
  EXPECT_LT(ids.size(), text.size() / 3);
  EXPECT_EQ(tok.decode(ids), text);                // every byte still representable
  EXPECT_EQ(tok.encode("<|endoftext|>"), std::vector<int>{319});
}

TEST(BpeTrainer, StopsWhenNoPairRepeatsAndRejectsTinyVocab) {
  BpeTrainOptions o;
  o.vocab_size = 5000;
  BpeTrainResult r = train_byte_level_bpe("abc abd", o);
  EXPECT_LT(r.vocab_size, 5000);  // ran out of pairs seen twice
  o.vocab_size = 100;
  EXPECT_THROW(train_byte_level_bpe("abc", o), Error);
}

TEST(BpeTrainer, OracleAgreesOnTheTrainedTokenizer) {
  // The independent JavaScript implementation loads the written tokenizer.json and must produce
  // the same ids as ours on varied strings.
  TempDir dir;
  BpeTrainOptions o;
  o.vocab_size = 400;
  write_bytes(dir.file("tokenizer.json"), train_byte_level_bpe(sample_text(), o).tokenizer_json);
  std::vector<std::string> strings = {
      "The whale swam on.", "  leading spaces and trailing  ", "numbers 1234567 and 3.14159",
      "line\nbreaks\r\n\ttabs", "Ünïcödé ✓ 🐋 👩‍👩‍👧", "the captain's crew'll watch", "", "x",
      "CAPTAIN WHALE", "code: for (int i = 0; i < n; ++i) { x[i] = 2*i; }"};
  write_bytes(dir.file("strings.json"), nlohmann::json(strings).dump());
  const std::string cmd = std::string("cd ") + RESPIN_SOURCE_DIR + "/tests/oracle && node encode_with.mjs " +
                          dir.file("tokenizer.json") + " " + dir.file("strings.json") + " " + dir.file("out.json");
  ASSERT_EQ(std::system(cmd.c_str()), 0) << "oracle failed (run scripts/setup.sh)";
  auto expected = nlohmann::json::parse(read_bytes(dir.file("out.json")));
  Tokenizer tok = Tokenizer::from_file(dir.file("tokenizer.json"));
  ASSERT_EQ(expected.size(), strings.size());
  for (size_t i = 0; i < strings.size(); ++i)
    EXPECT_EQ(tok.encode(strings[i]), expected[i].get<std::vector<int>>()) << "string " << i << ": " << strings[i];
}

TEST(Corpus, DocumentSplitIsByWholeDocument) {
  EXPECT_EQ(split_of_document(7), Split::Validation);
  EXPECT_EQ(split_of_document(27), Split::Validation);
  EXPECT_EQ(split_of_document(17), Split::Test);
  EXPECT_EQ(split_of_document(0), Split::Train);
  TempDir dir;
  fs::create_directories(dir.file("sotu"));
  fs::create_directories(dir.file("moby-dick"));
  for (int y = 1790; y < 1810; ++y) write_bytes(dir.file("sotu/" + std::to_string(y) + "_x.txt"), "year " + std::to_string(y));
  write_bytes(dir.file("moby-dick/datapackage.json"),
              R"({"resources": [{"path": "./data/chapter_2.txt"}, {"path": "./data/chapter_2.json"},
                                {"path": "./data/chapter_10.txt"}]})");
  write_bytes(dir.file("moby-dick/chapter_2.txt"), "two");
  write_bytes(dir.file("moby-dick/chapter_10.txt"), "ten");
  Corpus c = Corpus::load(dir.path());
  ASSERT_EQ(c.documents.size(), 22u);
  EXPECT_EQ(c.documents[0].name, "1790_x");
  EXPECT_EQ(c.documents[20].name, "chapter_2");  // book order, not lexical
  EXPECT_EQ(c.text_of(Split::Validation), "year 1797");
  EXPECT_EQ(c.text_of(Split::Test), "year 1807");
  EXPECT_EQ(c.documents_of(Split::Train).size(), 20u);
  try {
    Corpus::load(dir.file("nowhere"));
    ADD_FAILURE() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("scripts/setup.sh"), std::string::npos) << e.what();
  }
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
