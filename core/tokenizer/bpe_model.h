// The BPE model of a Hugging Face tokenizer.json ("model": {"type": "BPE", ...}): vocabulary,
// ranked merges, byte fallback, unknown-token handling and ignore_merges, with the same results
// as the Rust tokenizers library (merge order by rank, ties broken leftmost).
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include <nlohmann/json_fwd.hpp>

namespace respin::tok {

class BpeModel {
 public:
  // Parses the "model" object. Throws respin::Error with a message naming the offending field
  // (the caller prefixes the file name).
  static std::unique_ptr<BpeModel> from_json(const nlohmann::json& model);
  ~BpeModel();

  // Appends the ids of one pre-token (a "word") to `out`. Safe for concurrent calls.
  void tokenize(std::string_view word, std::vector<int>& out) const;

  std::optional<int> token_to_id(const std::string& token) const;
  const std::string* id_to_token(int id) const;  // nullptr when the id is not in the vocabulary
  int max_id() const { return static_cast<int>(id_to_token_.size()) - 1; }
  size_t num_merges() const { return num_merges_; }
  bool byte_fallback() const { return byte_fallback_; }
  bool has_unk_token() const { return unk_token_.has_value(); }

 private:
  struct Merge {
    int rank;
    int new_id;
  };
  struct WordCache;

  BpeModel();
  void parse_vocab(const nlohmann::json& vocab);
  void parse_merges(const nlohmann::json& merges);
  void add_merge(const std::string& a, const std::string& b, int rank);
  void initial_symbols(std::string_view word, std::vector<int>& ids, std::vector<int>& lens) const;
  void merge_word(std::string_view word, std::vector<int>& out) const;
  void tokenize_cached(std::string_view word, std::vector<int>& out) const;
  bool metaspace_splits_are_final() const;
  const Merge* find_merge(int a, int b) const;

  std::unordered_map<std::string, int> vocab_;
  std::vector<std::string> id_to_token_;
  std::vector<bool> id_used_;
  std::unordered_map<uint64_t, Merge> merges_;  // key: (left id << 32) | right id
  size_t num_merges_ = 0;
  std::array<int, 256> byte_ids_{};  // id of "<0xNN>" or -1
  bool byte_fallback_ = false;
  bool fuse_unk_ = false;
  bool ignore_merges_ = false;
  bool split_at_metaspace_ = false;  // see metaspace_splits_are_final()
  std::optional<std::string> unk_token_;
  std::unique_ptr<WordCache> cache_;
};

}  // namespace respin::tok
