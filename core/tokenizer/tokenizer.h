// Hugging Face tokenizer.json BPE tokenizer (LLaMA-2/Mistral metaspace + byte fallback, and
// GPT-2/LLaMA-3/Qwen2 byte-level), matching the ids of the HF `tokenizers` library. Anything
// in the file that it does not implement is rejected at load with an error naming the field,
// never silently approximated, because one differing id changes a perplexity result.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace respin {

struct TokenizerInfo {
  std::string kind;  // "byte-level BPE", "metaspace BPE (byte fallback)", "metaspace BPE" or "BPE"
  int vocab_size = 0;
  int num_merges = 0;
  int num_added_tokens = 0;
  // Best guess from tokenizer.json alone: the post-processor template's leading/trailing special
  // token, else a well-known token (<s>, <|begin_of_text|>, </s>, <|end_of_text|>, ...).
  // tokenizer_config.json / generation_config.json are authoritative when present.
  std::optional<int> bos_id, eos_id;
};

class Tokenizer {
 public:
  // Loads and validates a tokenizer.json; throws respin::Error with the path and the problem.
  static Tokenizer from_file(const std::string& tokenizer_json_path);

  // Token ids of `utf8_text` (which must be valid UTF-8, else respin::Error). With
  // add_special_tokens the post-processor runs (e.g. TemplateProcessing "<s> $A" adds BOS);
  // without it the raw ids come back (the perplexity protocol uses false). Thread-safe.
  std::vector<int> encode(const std::string& utf8_text, bool add_special_tokens = false) const;

  // Text of the ids through the file's decoder. Like HF, ids that are not in the vocabulary are
  // skipped; skip_special_tokens drops added tokens marked special.
  std::string decode(const std::vector<int>& ids, bool skip_special_tokens = false) const;

  TokenizerInfo info() const;
  // One past the largest id of the model vocabulary and the added tokens.
  int vocab_size() const;
  std::optional<int> token_to_id(const std::string& token) const;
  std::string id_to_token(int id) const;  // throws respin::Error for an id not in the vocabulary
  bool is_special(int id) const;          // an added token marked "special"
  const std::string& path() const;

 private:
  struct Impl;
  explicit Tokenizer(std::shared_ptr<const Impl> impl);
  std::shared_ptr<const Impl> impl_;
};

}  // namespace respin
