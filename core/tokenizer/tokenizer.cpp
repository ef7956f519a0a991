// Tokenizer: loads tokenizer.json and runs the HF encode pipeline (added-token split ->
// normalizer -> pre-tokenizer -> BPE -> post-processor) and decode (ids -> tokens -> decoder).
#include "core/tokenizer/tokenizer.h"

#include <cstdio>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "core/tokenizer/added_tokens.h"
#include "core/tokenizer/bpe_model.h"
#include "core/tokenizer/json_fields.h"
#include "core/tokenizer/pipeline.h"
#include "core/tokenizer/unicode_text.h"
#include "core/util/error.h"

namespace respin {

using nlohmann::json;

struct Tokenizer::Impl {
  std::string path;
  std::unique_ptr<tok::BpeModel> model;
  std::unique_ptr<tok::Normalizer> normalizer;
  std::unique_ptr<tok::PreTokenizer> pre_tokenizer;
  std::unique_ptr<tok::PostProcessor> post_processor;
  std::unique_ptr<tok::Decoder> decoder;
  tok::AddedVocabulary added;
  TokenizerInfo info;

  void build(const json& j);
  TokenizerInfo make_info(const json& j) const;
  void encode_text(std::string_view text, bool at_start, std::vector<int>& ids) const;
  void encode_normalized(std::string_view text, bool at_start, std::vector<int>& ids) const;
};

namespace {

std::string read_file(const std::string& path) {
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec))
    throw Error(path + ": is a directory, expected a tokenizer.json file");
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(path + ": cannot open file (" + std::strerror(errno) + ")");
  std::ostringstream buffer;
  buffer << in.rdbuf();
  if (in.bad()) throw Error(path + ": read error");
  return buffer.str();
}

void check_unsupported_top_level(const json& j) {
  for (const char* key : {"truncation", "padding"}) {
    if (j.contains(key) && !j[key].is_null()) {
      throw Error(std::string(key) +
                  " is set; only null is supported (it would change encode results)");
    }
  }
}

std::unique_ptr<tok::BpeModel> make_model(const json& j) {
  const auto& model = tok::require_field(j, "model", "tokenizer");
  if (!model.is_object()) throw Error("model must be an object");
  const std::string type = tok::get_string(model, "type", "model");
  if (type != "BPE") throw Error("model.type '" + type + "' is not supported (only BPE)");
  return tok::BpeModel::from_json(model);
}

std::string family(const json& j, const tok::BpeModel& model) {
  const json null;
  const json& pre = j.contains("pre_tokenizer") ? j["pre_tokenizer"] : null;
  const json& dec = j.contains("decoder") ? j["decoder"] : null;
  if (tok::json_uses_type(pre, "ByteLevel") || tok::json_uses_type(dec, "ByteLevel"))
    return "byte-level BPE";
  if (model.byte_fallback()) return "metaspace BPE (byte fallback)";
  if (tok::json_uses_type(pre, "Metaspace") || tok::json_uses_type(dec, "Metaspace"))
    return "metaspace BPE";
  return "BPE";
}

std::optional<int> first_known(const tok::AddedVocabulary& added,
                               std::initializer_list<const char*> names) {
  for (const char* name : names) {
    if (const auto* t = added.by_content(name)) return t->id;
  }
  return std::nullopt;
}

}  // namespace

TokenizerInfo Tokenizer::Impl::make_info(const json& j) const {
  const Impl& impl = *this;
  TokenizerInfo info;
  info.kind = family(j, *impl.model);
  int max_id = impl.model->max_id();
  for (const auto& t : impl.added.tokens()) max_id = std::max(max_id, t.id);
  info.vocab_size = max_id + 1;
  info.num_merges = static_cast<int>(impl.model->num_merges());
  info.num_added_tokens = static_cast<int>(impl.added.tokens().size());
  if (impl.post_processor) {
    if (auto lead = impl.post_processor->leading_ids(); !lead.empty()) info.bos_id = lead.front();
    if (auto trail = impl.post_processor->trailing_ids(); !trail.empty())
      info.eos_id = trail.back();
  }
  if (!info.bos_id)
    info.bos_id = first_known(impl.added, {"<s>", "<|begin_of_text|>", "<bos>", "<|startoftext|>"});
  if (!info.eos_id)
    info.eos_id = first_known(impl.added, {"</s>", "<|end_of_text|>", "<eos>", "<|endoftext|>"});
  return info;
}

void Tokenizer::Impl::build(const json& j) {
  Impl& impl = *this;
  if (!j.is_object()) throw Error("top level must be a JSON object");
  check_unsupported_top_level(j);
  const json null;
  auto field = [&](const char* key) -> const json& { return j.contains(key) ? j[key] : null; };
  impl.model = make_model(j);
  impl.normalizer = tok::make_normalizer(field("normalizer"), "normalizer");
  impl.pre_tokenizer = tok::make_pre_tokenizer(field("pre_tokenizer"), "pre_tokenizer");
  impl.post_processor = tok::make_post_processor(field("post_processor"), "post_processor");
  impl.decoder = tok::make_decoder(field("decoder"), "decoder");
  impl.added = tok::AddedVocabulary::from_json(field("added_tokens"), impl.normalizer.get());
  impl.info = make_info(j);
  // A byte-level BPE turns every byte into one of 256 symbols; one missing from the vocabulary
  // (and no unknown token to stand for it) would silently drop that byte from the text.
  if (tok::json_uses_type(field("pre_tokenizer"), "ByteLevel") && !impl.model->has_unk_token()) {
    const auto& symbols = tok::byte_to_unicode();
    for (int b = 0; b < 256; ++b)
      if (!impl.model->token_to_id(symbols[b])) {
        char hex[8];
        std::snprintf(hex, sizeof hex, "0x%02X", b);
        throw Error("model.vocab has no token for byte " + std::string(hex) + " ('" + symbols[b] +
                    "') of the byte-level alphabet; text containing that byte would lose it");
      }
  }
}

Tokenizer::Tokenizer(std::shared_ptr<const Impl> impl) : impl_(std::move(impl)) {}

Tokenizer Tokenizer::from_file(const std::string& tokenizer_json_path) {
  const std::string text = read_file(tokenizer_json_path);
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {  // parse_error, and out_of_range for numbers that overflow
    throw Error(tokenizer_json_path + ": invalid JSON (" + e.what() + ")");
  }
  auto impl = std::make_shared<Impl>();
  impl->path = tokenizer_json_path;
  try {
    impl->build(j);
  } catch (const Error& e) {
    throw Error(tokenizer_json_path + ": " + e.what());
  } catch (const json::exception& e) {
    throw Error(tokenizer_json_path + ": unexpected JSON content (" + e.what() + ")");
  }
  return Tokenizer(std::move(impl));
}

// A stretch of input without non-normalized added tokens: normalize it, cut it at the
// normalized added tokens, pre-tokenize the rest and run the model on every pre-token.
void Tokenizer::Impl::encode_text(std::string_view text, bool at_start,
                                  std::vector<int>& ids) const {
  std::string normalized =
      normalizer ? normalizer->normalize(std::string(text)) : std::string(text);
  if (normalized.empty()) return;
  if (!added.has_normalized_tokens()) {
    encode_normalized(normalized, at_start, ids);
    return;
  }
  for (const auto& seg : added.split_normalized(normalized)) {
    if (seg.id >= 0) {
      ids.push_back(seg.id);
    } else {
      encode_normalized(std::string_view(normalized).substr(seg.begin, seg.end - seg.begin),
                        at_start && seg.begin == 0, ids);
    }
  }
}

void Tokenizer::Impl::encode_normalized(std::string_view text, bool at_start,
                                        std::vector<int>& ids) const {
  if (!pre_tokenizer) {
    model->tokenize(text, ids);
    return;
  }
  pre_tokenizer->split(tok::Piece{std::string(text), at_start},
                       [&](tok::Piece&& p) { model->tokenize(p.text, ids); });
}

std::vector<int> Tokenizer::encode(const std::string& utf8_text, bool add_special_tokens) const {
  if (const size_t bad = tok::utf8_first_invalid(utf8_text); bad != std::string::npos) {
    throw Error("Tokenizer::encode: input is not valid UTF-8 (byte offset " + std::to_string(bad) +
                ")");
  }
  std::vector<int> ids;
  ids.reserve(utf8_text.size() / 3 + 4);
  for (const auto& seg : impl_->added.split_raw(utf8_text)) {
    if (seg.id >= 0) {
      ids.push_back(seg.id);
    } else {
      impl_->encode_text(std::string_view(utf8_text).substr(seg.begin, seg.end - seg.begin),
                         seg.begin == 0, ids);
    }
  }
  if (add_special_tokens && impl_->post_processor) impl_->post_processor->process(ids);
  return ids;
}

std::string Tokenizer::decode(const std::vector<int>& ids, bool skip_special_tokens) const {
  std::vector<std::string> tokens;
  tokens.reserve(ids.size());
  for (int id : ids) {
    if (const auto* t = impl_->added.by_id(id)) {
      if (!(skip_special_tokens && t->special)) tokens.push_back(t->content);
    } else if (const std::string* s = impl_->model->id_to_token(id)) {
      tokens.push_back(*s);
    }
  }
  if (impl_->decoder) tokens = impl_->decoder->decode_chain(std::move(tokens));
  std::string text;
  for (size_t i = 0; i < tokens.size(); ++i) {
    if (!impl_->decoder && i > 0) text += ' ';  // HF joins with spaces when there is no decoder
    text += tokens[i];
  }
  return text;
}

TokenizerInfo Tokenizer::info() const { return impl_->info; }

int Tokenizer::vocab_size() const { return impl_->info.vocab_size; }

std::optional<int> Tokenizer::token_to_id(const std::string& token) const {
  if (const auto* t = impl_->added.by_content(token)) return t->id;
  return impl_->model->token_to_id(token);
}

std::string Tokenizer::id_to_token(int id) const {
  if (const auto* t = impl_->added.by_id(id)) return t->content;
  if (const std::string* s = impl_->model->id_to_token(id)) return *s;
  throw Error(impl_->path + ": token id " + std::to_string(id) +
              " is not in the vocabulary (size " + std::to_string(impl_->info.vocab_size) + ")");
}

bool Tokenizer::is_special(int id) const {
  const auto* t = impl_->added.by_id(id);
  return t != nullptr && t->special;
}

const std::string& Tokenizer::path() const { return impl_->path; }

}  // namespace respin
