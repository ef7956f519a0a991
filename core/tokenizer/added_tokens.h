// Added tokens of tokenizer.json ("added_tokens": special tokens such as <s> or
// <|begin_of_text|>, and user-added words). Input text is cut at them before normalization and
// pre-tokenization, longest match first, honouring lstrip/rstrip/single_word like HF's
// AddedVocabulary::find_matches.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include <nlohmann/json_fwd.hpp>

namespace respin::tok {

class Normalizer;

struct AddedToken {
  int id = 0;
  std::string content;
  bool special = false;
  bool lstrip = false;
  bool rstrip = false;
  bool normalized = true;
  bool single_word = false;
};

// A stretch of the input: either plain text or one added token (id >= 0).
struct Segment {
  size_t begin = 0, end = 0;
  int id = -1;
};

class AddedVocabulary {
 public:
  // Parses the "added_tokens" array (null/absent = none). Tokens with normalized=true are
  // matched against normalized text, so their content is run through `normalizer` as HF does.
  static AddedVocabulary from_json(const nlohmann::json& list, const Normalizer* normalizer);

  // Splits raw input at the non-normalized tokens.
  std::vector<Segment> split_raw(std::string_view text) const { return split(text, raw_); }
  // Splits a normalized piece at the normalized tokens.
  std::vector<Segment> split_normalized(std::string_view text) const {
    return split(text, normalized_);
  }
  bool has_normalized_tokens() const { return !normalized_.empty(); }

  const std::vector<AddedToken>& tokens() const { return tokens_; }
  const AddedToken* by_id(int id) const;
  const AddedToken* by_content(const std::string& content) const;

 private:
  // Byte trie answering "longest token starting here" (Aho-Corasick LeftmostLongest semantics
  // when scanned left to right).
  class Matcher {
   public:
    void add(const std::string& pattern, int token_index);
    int longest_at(std::string_view text, size_t pos, size_t* length) const;
    bool empty() const { return terminal_.size() <= 1; }

   private:
    std::unordered_map<uint64_t, int> edges_;  // (node << 8 | byte) -> child node
    std::vector<int> terminal_{-1};            // node -> token index or -1
    std::array<bool, 256> first_byte_{};
  };

  std::vector<Segment> split(std::string_view text, const Matcher& matcher) const;

  std::vector<AddedToken> tokens_;
  std::unordered_map<int, size_t> index_by_id_;
  std::unordered_map<std::string, size_t> index_by_content_;
  Matcher raw_, normalized_;
};

}  // namespace respin::tok
