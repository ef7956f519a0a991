// Torch-free data pieces of the forge: byte-level BPE training (deterministic, round-trips, and
// the independent JavaScript implementation agrees on the file it writes) and the corpus split.
// Also run under the sanitizer preset.
#include <gtest/gtest.h>

#include <filesystem>
#include <nlohmann/json.hpp>

#include "core/data/corpus.h"
#include "core/tokenizer/bpe_trainer.h"
#include "core/tokenizer/tokenizer.h"
#include "core/util/error.h"
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

