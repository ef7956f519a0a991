// Helpers for the end-to-end CLI suites (see cli_util.h).
#include "tests/cli_util.h"

#include <sys/wait.h>

#include <cstdlib>
#include <nlohmann/json.hpp>

namespace respin::test {

Result run(const std::string& args, const std::string& cwd) {
  static TempDir io;
  std::string cmd = (cwd.empty() ? std::string() : "cd '" + cwd + "' && ") + std::string(RESPIN_BIN) + " " + args + " >" + io.file("out") + " 2>" + io.file("err") + " </dev/null";
  int status = std::system(cmd.c_str());
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, read_bytes(io.file("out")), read_bytes(io.file("err"))};
}

// GPT-2 byte-to-unicode table: printable bytes map to themselves, the rest to U+0100 onwards.
std::string byte_symbol(int b) {
  auto printable = [](int c) { return (c >= 33 && c <= 126) || (c >= 161 && c <= 172) || (c >= 174 && c <= 255); };
  int cp = b;
  if (!printable(b)) {
    int n = 0;
    for (int i = 0; i < b; ++i) n += !printable(i);
    cp = 256 + n;
  }
  std::string s;
  if (cp < 0x80) s += static_cast<char>(cp);
  else s += static_cast<char>(0xC0 | (cp >> 6)), s += static_cast<char>(0x80 | (cp & 0x3F));
  return s;
}

std::string tiny_tokenizer_json() {
  nlohmann::json vocab = nlohmann::json::object();
  for (int b = 0; b < 256; ++b) vocab[byte_symbol(b)] = b;
  vocab["th"] = 256;
  vocab["the"] = 257;
  vocab["Ġthe"] = 258;
  nlohmann::json j = {
      {"version", "1.0"},
      {"added_tokens", nlohmann::json::array()},
      {"normalizer", nullptr},
      {"pre_tokenizer", {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", true}}},
      {"post_processor", nullptr},
      {"decoder", {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", true}, {"use_regex", true}}},
      {"model", {{"type", "BPE"}, {"dropout", nullptr}, {"unk_token", nullptr},
                 {"continuing_subword_prefix", nullptr}, {"end_of_word_suffix", nullptr},
                 {"fuse_unk", false}, {"byte_fallback", false}, {"vocab", vocab},
                 {"merges", {"t h", "th e", "Ġ the"}}}}};
  return j.dump();
}

const char* kText =
    "It was the best of times, it was the worst of times, it was the age of wisdom, it was the "
    "age of foolishness, it was the epoch of belief, it was the epoch of incredulity.\n";

void Cli::SetUp() {
  write_bytes(dir.file("tokenizer.json"), tiny_tokenizer_json());
  write_bytes(dir.file("text.txt"), kText);
  model = dir.file("model");
  Result r = run("init-model --out " + model + " --tokenizer " + dir.file("tokenizer.json") +
                 " --hidden 32 --intermediate 64 --layers 2 --heads 4 --kv-heads 2 --max-positions 64 --dtype f32 --seed 9");
  ASSERT_EQ(r.code, 0) << r.err;
}

}  // namespace respin::test
