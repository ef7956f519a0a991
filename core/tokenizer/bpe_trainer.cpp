// Byte-level BPE training (see bpe_trainer.h). Words come from the same ByteLevel pre-tokenizer
// the resulting tokenizer.json declares, so training and encoding split text identically. Pair
// counts are updated incrementally: a merge only revisits the words that contain its pair.
#include "core/tokenizer/bpe_trainer.h"

#include <algorithm>
#include <map>
#include <nlohmann/json.hpp>
#include <queue>
#include <unordered_map>

#include "core/tokenizer/pipeline.h"
#include "core/tokenizer/unicode_text.h"
#include "core/util/error.h"

namespace respin {

namespace {

using Pair = uint64_t;  // (left id << 32) | right id
Pair make_pair_key(int a, int b) { return (uint64_t(uint32_t(a)) << 32) | uint32_t(b); }
int left_of(Pair p) { return int(p >> 32); }
int right_of(Pair p) { return int(p & 0xffffffffu); }

const nlohmann::json& byte_level_json() {
  static const nlohmann::json j = {
      {"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", true}};
  return j;
}

struct Word {
  std::vector<int> symbols;
  int64_t freq = 0;
};

// Word frequencies of the text, each word as byte ids (the byte-level alphabet is ids 0..255).
std::vector<Word> count_words(const std::string& text, int64_t& total_words) {
  auto pre = tok::make_pre_tokenizer(byte_level_json(), "pre_tokenizer");
  std::unordered_map<std::string, int64_t> counts;
  total_words = 0;
  pre->split(tok::Piece{text, true}, [&](tok::Piece&& p) {
    ++counts[p.text];
    ++total_words;
  });
  std::vector<std::pair<std::string, int64_t>> sorted(counts.begin(), counts.end());
  std::sort(sorted.begin(), sorted.end());  // deterministic order
  std::vector<Word> words;
  words.reserve(sorted.size());
  for (const auto& [mapped, freq] : sorted) {
    Word w;
    w.freq = freq;
    for (size_t i = 0; i < mapped.size(); i += tok::utf8_len_at(mapped, i)) {
      int b = tok::unicode_to_byte(tok::utf8_decode_at(mapped, i));
      if (b < 0) throw Error("internal: byte-level pre-tokenizer produced an unmapped character");
      w.symbols.push_back(b);
    }
    words.push_back(std::move(w));
  }
  return words;
}

struct HeapEntry {
  int64_t count;
  Pair pair;
  bool operator<(const HeapEntry& o) const {  // max count first, then the smaller pair
    return count != o.count ? count < o.count : pair > o.pair;
  }
};

class PairTable {
 public:
  explicit PairTable(std::vector<Word>& words) : words_(words) {
    for (size_t w = 0; w < words_.size(); ++w) add_word_pairs(static_cast<int>(w), +1, -1);
    for (const auto& [pair, count] : counts_) heap_.push({count, pair});
  }

  // The most frequent pair, or count 0 when none is left.
  HeapEntry best() {
    while (!heap_.empty()) {
      HeapEntry top = heap_.top();
      auto it = counts_.find(top.pair);
      if (it != counts_.end() && it->second == top.count && top.count > 0) return top;
      heap_.pop();  // stale entry
    }
    return {0, 0};
  }

  void merge(Pair pair, int new_id) {
    const int a = left_of(pair), b = right_of(pair);
    std::vector<int> where = std::move(where_[pair]);
    where_.erase(pair);
    std::sort(where.begin(), where.end());
    where.erase(std::unique(where.begin(), where.end()), where.end());
    touched_.clear();
    for (int w : where) {
      std::vector<int>& s = words_[w].symbols;
      bool has = false;
      for (size_t i = 0; i + 1 < s.size() && !has; ++i) has = s[i] == a && s[i + 1] == b;
      if (!has) continue;
      add_word_pairs(w, -1, -1);
      std::vector<int> merged;
      merged.reserve(s.size());
      for (size_t i = 0; i < s.size(); ++i) {
        if (i + 1 < s.size() && s[i] == a && s[i + 1] == b) merged.push_back(new_id), ++i;
        else merged.push_back(s[i]);
      }
      s.swap(merged);
      add_word_pairs(w, +1, new_id);
    }
    counts_.erase(pair);
    for (Pair p : touched_) {
      auto it = counts_.find(p);
      if (it != counts_.end() && it->second > 0) heap_.push({it->second, p});
    }
  }

 private:
  // Adds (sign +1) or removes (-1) the word's pairs; records the word under pairs containing
  // `indexed_id` (all pairs when -1) so later merges can find it.
  void add_word_pairs(int w, int sign, int indexed_id) {
    const Word& word = words_[w];
    for (size_t i = 0; i + 1 < word.symbols.size(); ++i) {
      Pair p = make_pair_key(word.symbols[i], word.symbols[i + 1]);
      int64_t& c = counts_[p];
      c += sign * word.freq;
      touched_.push_back(p);
      if (sign > 0 && (indexed_id < 0 || word.symbols[i] == indexed_id || word.symbols[i + 1] == indexed_id))
        where_[p].push_back(w);
    }
  }

  std::vector<Word>& words_;
  std::unordered_map<Pair, int64_t> counts_;
  std::unordered_map<Pair, std::vector<int>> where_;
  std::priority_queue<HeapEntry> heap_;
  std::vector<Pair> touched_;
};

}  // namespace

BpeTrainResult train_byte_level_bpe(const std::string& text, const BpeTrainOptions& o,
                                    RunControl* control) {
  const int specials = static_cast<int>(o.special_tokens.size());
  if (o.vocab_size < 256 + specials)
    throw Error("vocabulary size " + std::to_string(o.vocab_size) + " is below the 256 byte tokens + " +
                std::to_string(specials) + " special tokens");
  BpeTrainResult r;
  std::vector<Word> words = count_words(text, r.words);
  r.unique_words = static_cast<int64_t>(words.size());

  std::vector<std::string> token_text(256);
  for (int b = 0; b < 256; ++b) token_text[b] = tok::byte_to_unicode()[b];
  std::vector<std::pair<int, int>> merges;
  PairTable table(words);
  const int target_merges = o.vocab_size - 256 - specials;
  while (static_cast<int>(merges.size()) < target_merges) {
    if (control) control->check();
    HeapEntry best = table.best();
    if (best.count < std::max<int64_t>(1, o.min_pair_frequency)) break;
    const int new_id = static_cast<int>(token_text.size());
    const int a = left_of(best.pair), b = right_of(best.pair);
    token_text.push_back(token_text[a] + token_text[b]);
    merges.emplace_back(a, b);
    table.merge(best.pair, new_id);
    if (control) {
      ProgressEvent ev;
      ev.phase = "tokenizer";
      ev.done = static_cast<long long>(merges.size());
      ev.total = target_merges;
      control->report(ev);
    }
  }

  nlohmann::json vocab = nlohmann::json::object();
  for (size_t id = 0; id < token_text.size(); ++id) vocab[token_text[id]] = id;
  nlohmann::json added = nlohmann::json::array();
  for (int i = 0; i < specials; ++i) {
    const int id = static_cast<int>(token_text.size()) + i;
    vocab[o.special_tokens[i]] = id;
    added.push_back({{"id", id}, {"content", o.special_tokens[i]}, {"single_word", false},
                     {"lstrip", false}, {"rstrip", false}, {"normalized", false}, {"special", true}});
  }
  nlohmann::json merge_list = nlohmann::json::array();
  for (const auto& [a, b] : merges) merge_list.push_back({token_text[a], token_text[b]});
  nlohmann::json post = byte_level_json();
  post["trim_offsets"] = false;
  nlohmann::json j = {
      {"version", "1.0"},
      {"truncation", nullptr},
      {"padding", nullptr},
      {"added_tokens", added},
      {"normalizer", nullptr},
      {"pre_tokenizer", byte_level_json()},
      {"post_processor", post},
      {"decoder", byte_level_json()},
      {"model", {{"type", "BPE"}, {"dropout", nullptr}, {"unk_token", nullptr},
                 {"continuing_subword_prefix", nullptr}, {"end_of_word_suffix", nullptr},
                 {"fuse_unk", false}, {"byte_fallback", false}, {"ignore_merges", false},
                 {"vocab", vocab}, {"merges", merge_list}}}};
  r.tokenizer_json = j.dump(1) + "\n";
  r.num_merges = static_cast<int>(merges.size());
  r.vocab_size = static_cast<int>(token_text.size()) + specials;
  return r;
}

}  // namespace respin
