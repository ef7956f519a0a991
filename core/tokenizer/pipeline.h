// The configurable stages of a Hugging Face tokenizer.json around the BPE model: normalizers,
// pre-tokenizers, post-processors and decoders, each built from its JSON object. Every factory
// throws respin::Error naming the JSON field (e.g. "pre_tokenizer.pretokenizers[1]") on anything
// it does not support, so an unsupported file fails at load instead of encoding differently.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

namespace respin::tok {

class Normalizer {
 public:
  virtual ~Normalizer() = default;
  virtual std::string normalize(std::string text) const = 0;
};

// A piece of text on its way to the model. `at_start` tells whether it begins at offset 0 of
// the original input, which Metaspace's prepend_scheme "first" depends on.
struct Piece {
  std::string text;
  bool at_start = false;
};

// Receives the pieces a pre-tokenizer produces, one at a time (streaming keeps a multi-MB
// input from being materialized as a million small strings first).
using PieceSink = std::function<void(Piece&&)>;

class PreTokenizer {
 public:
  virtual ~PreTokenizer() = default;
  // Splits (and may rewrite) one piece and hands every non-empty result to `sink`, in order.
  virtual void split(Piece piece, const PieceSink& sink) const = 0;
};

class PostProcessor {
 public:
  virtual ~PostProcessor() = default;
  // Adds the special tokens of a single-sequence encoding (only called with add_special_tokens).
  virtual void process(std::vector<int>& ids) const = 0;
  // The ids the template puts before / after the sequence (for TokenizerInfo's bos/eos guess).
  virtual std::vector<int> leading_ids() const { return {}; }
  virtual std::vector<int> trailing_ids() const { return {}; }
};

class Decoder {
 public:
  virtual ~Decoder() = default;
  virtual std::vector<std::string> decode_chain(std::vector<std::string> tokens) const = 0;
};

// A null JSON value gives nullptr (stage absent). `where` is the field path used in errors.
std::unique_ptr<Normalizer> make_normalizer(const nlohmann::json& j, const std::string& where);
std::unique_ptr<PreTokenizer> make_pre_tokenizer(const nlohmann::json& j, const std::string& where);
std::unique_ptr<PostProcessor> make_post_processor(const nlohmann::json& j,
                                                   const std::string& where);
std::unique_ptr<Decoder> make_decoder(const nlohmann::json& j, const std::string& where);

// Whether the pre-tokenizer (or any member of a Sequence) is of the given type; used to name
// the tokenizer family in TokenizerInfo.
bool json_uses_type(const nlohmann::json& j, const std::string& type);

}  // namespace respin::tok
