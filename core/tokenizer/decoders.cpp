// Decoders (ByteLevel, Metaspace, Replace, ByteFallback, Fuse, Strip, Sequence) and
// post-processors (TemplateProcessing, ByteLevel, Sequence) of tokenizer.json, following the
// HF tokenizers implementations so that decode() gives the same text.
#include <map>
#include <optional>

#include <nlohmann/json.hpp>

#include "core/tokenizer/json_fields.h"
#include "core/tokenizer/pattern.h"
#include "core/tokenizer/pipeline.h"
#include "core/tokenizer/unicode_text.h"
#include "core/util/error.h"

namespace respin::tok {

using nlohmann::json;

namespace {

const char* const kReplacementChar = "\xEF\xBF\xBD";  // U+FFFD

// Byte offset where the code point ending at `end` starts.
size_t char_start_before(const std::string& s, size_t end) {
  size_t i = end - 1;
  while (i > 0 && (static_cast<unsigned char>(s[i]) & 0xC0) == 0x80) --i;
  return i;
}

class SequenceDecoder final : public Decoder {
 public:
  explicit SequenceDecoder(std::vector<std::unique_ptr<Decoder>> parts)
      : parts_(std::move(parts)) {}
  std::vector<std::string> decode_chain(std::vector<std::string> tokens) const override {
    for (const auto& p : parts_) tokens = p->decode_chain(std::move(tokens));
    return tokens;
  }

 private:
  std::vector<std::unique_ptr<Decoder>> parts_;
};

// Maps the stand-in characters back to bytes for all tokens at once (a character may be split
// across tokens), then repairs invalid UTF-8 like Rust's from_utf8_lossy. A token containing
// characters outside the table (e.g. an added token) contributes its raw bytes, as in HF.
class ByteLevelDecoder final : public Decoder {
 public:
  std::vector<std::string> decode_chain(std::vector<std::string> tokens) const override {
    std::string bytes;
    for (const auto& t : tokens) {
      std::string mapped;
      bool all = true;
      for (size_t i = 0; i < t.size() && all; i += utf8_len_at(t, i)) {
        const int b = unicode_to_byte(utf8_decode_at(t, i));
        all = b >= 0;
        mapped += static_cast<char>(b);
      }
      bytes += all ? mapped : t;
    }
    return {utf8_lossy(bytes)};
  }
};

class MetaspaceDecoder final : public Decoder {
 public:
  MetaspaceDecoder(std::string replacement, bool strip_first)
      : replacement_(std::move(replacement)), strip_first_(strip_first) {}
  std::vector<std::string> decode_chain(std::vector<std::string> tokens) const override {
    // HF drops every replacement character of the first token (not only a leading one) unless
    // the prepend scheme is "never".
    for (size_t i = 0; i < tokens.size(); ++i) {
      const std::string& t = tokens[i];
      std::string out;
      for (size_t k = 0; k < t.size(); k += utf8_len_at(t, k)) {
        if (t.compare(k, replacement_.size(), replacement_) != 0) {
          out.append(t, k, utf8_len_at(t, k));
        } else if (!(i == 0 && strip_first_)) {
          out += ' ';
        }
      }
      tokens[i] = std::move(out);
    }
    return tokens;
  }

 private:
  std::string replacement_;
  bool strip_first_;
};

class ReplaceDecoder final : public Decoder {
 public:
  ReplaceDecoder(Pattern pattern, std::string content)
      : pattern_(std::move(pattern)), content_(std::move(content)) {}
  std::vector<std::string> decode_chain(std::vector<std::string> tokens) const override {
    for (auto& t : tokens) t = pattern_.replace_all(t, content_);
    return tokens;
  }

 private:
  Pattern pattern_;
  std::string content_;
};

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// "<0xNN>" tokens are collected into byte runs; a run that is valid UTF-8 becomes its text,
// otherwise each byte becomes U+FFFD (HF byte_fallback.rs).
class ByteFallbackDecoder final : public Decoder {
 public:
  std::vector<std::string> decode_chain(std::vector<std::string> tokens) const override {
    std::vector<std::string> out;
    std::string run;
    auto flush = [&] {
      if (run.empty()) return;
      if (utf8_first_invalid(run) == std::string::npos) {
        out.push_back(run);
      } else {
        for (size_t i = 0; i < run.size(); ++i) out.emplace_back(kReplacementChar);
      }
      run.clear();
    };
    for (auto& t : tokens) {
      const bool is_byte = t.size() == 6 && t.compare(0, 3, "<0x") == 0 && t[5] == '>' &&
                           hex_value(t[3]) >= 0 && hex_value(t[4]) >= 0;
      if (is_byte) {
        run += static_cast<char>(hex_value(t[3]) * 16 + hex_value(t[4]));
      } else {
        flush();
        out.push_back(std::move(t));
      }
    }
    flush();
    return out;
  }
};

class FuseDecoder final : public Decoder {
 public:
  std::vector<std::string> decode_chain(std::vector<std::string> tokens) const override {
    std::string all;
    for (const auto& t : tokens) all += t;
    return {all};
  }
};

// Removes up to `start` leading and `stop` trailing copies of `content` from every token.
class StripDecoder final : public Decoder {
 public:
  StripDecoder(std::string content, int start, int stop)
      : content_(std::move(content)), start_(start), stop_(stop) {}
  std::vector<std::string> decode_chain(std::vector<std::string> tokens) const override {
    for (auto& t : tokens) {
      // Byte offsets; `content` is one character, so each step removes one whole code point.
      size_t begin = 0, end = t.size();
      for (int i = 0;
           i < start_ && begin < t.size() && t.compare(begin, content_.size(), content_) == 0;
           ++i) {
        begin += content_.size();
      }
      for (int i = 0; i < stop_ && end > begin; ++i) {
        const size_t last = char_start_before(t, end);
        if (t.compare(last, end - last, content_) != 0) break;
        end = last;
      }
      t = t.substr(begin, end - begin);
    }
    return tokens;
  }

 private:
  std::string content_;
  int start_, stop_;
};

bool metaspace_strips_first(const json& j, const std::string& where) {
  // Same option handling as the Metaspace pre-tokenizer: only "never" keeps the first "▁".
  if (j.contains("prepend_scheme") && !j["prepend_scheme"].is_null()) {
    const std::string s = get_string(j, "prepend_scheme", where);
    if (s != "always" && s != "first" && s != "never") {
      throw Error(where + ".prepend_scheme '" + s + "' is not one of always, first, never");
    }
    if (s == "never") return false;
  }
  return get_bool(j, "add_prefix_space", where, true);
}

}  // namespace

std::unique_ptr<Decoder> make_decoder(const json& j, const std::string& where) {
  if (j.is_null()) return nullptr;
  const std::string type = get_type(j, where);
  if (type == "Sequence") {
    std::vector<std::unique_ptr<Decoder>> parts;
    const auto& list = get_array(j, "decoders", where);
    for (size_t i = 0; i < list.size(); ++i) {
      const std::string sub = where + ".decoders[" + std::to_string(i) + "]";
      if (list[i].is_null()) throw Error(sub + " must be an object");
      parts.push_back(make_decoder(list[i], sub));
    }
    return std::make_unique<SequenceDecoder>(std::move(parts));
  }
  if (type == "ByteLevel") return std::make_unique<ByteLevelDecoder>();
  if (type == "Metaspace") {
    return std::make_unique<MetaspaceDecoder>(get_char(j, "replacement", where),
                                              metaspace_strips_first(j, where));
  }
  if (type == "Replace") {
    return std::make_unique<ReplaceDecoder>(
        Pattern::from_json(require_field(j, "pattern", where), where + ".pattern"),
        get_string(j, "content", where));
  }
  if (type == "ByteFallback") return std::make_unique<ByteFallbackDecoder>();
  if (type == "Fuse") return std::make_unique<FuseDecoder>();
  if (type == "Strip") {
    return std::make_unique<StripDecoder>(
        get_char(j, "content", where), get_int(j, "start", where, 0), get_int(j, "stop", where, 0));
  }
  throw Error(where + ".type '" + type +
              "' is not supported (supported: Sequence, ByteLevel, Metaspace, Replace, "
              "ByteFallback, Fuse, Strip)");
}

namespace {

class TemplatePostProcessor final : public PostProcessor {
 public:
  // `parts`: the single-sequence template; a part is either special ids or the sequence (empty).
  explicit TemplatePostProcessor(std::vector<std::optional<std::vector<int>>> parts)
      : parts_(std::move(parts)) {}
  void process(std::vector<int>& ids) const override {
    std::vector<int> out;
    out.reserve(ids.size() + 4);
    for (const auto& part : parts_) {
      if (part) {
        out.insert(out.end(), part->begin(), part->end());
      } else {
        out.insert(out.end(), ids.begin(), ids.end());
      }
    }
    ids = std::move(out);
  }
  std::vector<int> leading_ids() const override {
    return !parts_.empty() && parts_.front() ? *parts_.front() : std::vector<int>{};
  }
  std::vector<int> trailing_ids() const override {
    return parts_.size() > 1 && parts_.back() ? *parts_.back() : std::vector<int>{};
  }

 private:
  std::vector<std::optional<std::vector<int>>> parts_;
};

class NoOpPostProcessor final : public PostProcessor {
 public:
  void process(std::vector<int>&) const override {}
};

class SequencePostProcessor final : public PostProcessor {
 public:
  explicit SequencePostProcessor(std::vector<std::unique_ptr<PostProcessor>> parts)
      : parts_(std::move(parts)) {}
  void process(std::vector<int>& ids) const override {
    for (const auto& p : parts_) p->process(ids);
  }
  std::vector<int> leading_ids() const override {
    for (const auto& p : parts_) {
      if (auto ids = p->leading_ids(); !ids.empty()) return ids;
    }
    return {};
  }
  std::vector<int> trailing_ids() const override {
    for (const auto& p : parts_) {
      if (auto ids = p->trailing_ids(); !ids.empty()) return ids;
    }
    return {};
  }

 private:
  std::vector<std::unique_ptr<PostProcessor>> parts_;
};

std::map<std::string, std::vector<int>> parse_special_tokens(const json& j,
                                                             const std::string& where) {
  std::map<std::string, std::vector<int>> specials;
  if (!j.contains("special_tokens")) return specials;
  const auto& map = j["special_tokens"];
  if (!map.is_object()) throw Error(where + ".special_tokens must be an object");
  for (const auto& [name, entry] : map.items()) {
    const std::string sub = where + ".special_tokens['" + name + "']";
    const auto& ids = get_array(entry, "ids", sub);
    std::vector<int> values;
    for (const auto& id : ids) {
      if (!id.is_number_integer()) throw Error(sub + ".ids must hold integers");
      values.push_back(id.get<int>());
    }
    specials[name] = std::move(values);
  }
  return specials;
}

std::unique_ptr<PostProcessor> make_template(const json& j, const std::string& where) {
  const auto specials = parse_special_tokens(j, where);
  const auto& single = get_array(j, "single", where);
  std::vector<std::optional<std::vector<int>>> parts;
  for (size_t i = 0; i < single.size(); ++i) {
    const std::string sub = where + ".single[" + std::to_string(i) + "]";
    const auto& item = single[i];
    if (item.is_object() && item.contains("SpecialToken")) {
      const std::string id = get_string(item["SpecialToken"], "id", sub + ".SpecialToken");
      auto it = specials.find(id);
      if (it == specials.end())
        throw Error(sub + ": special token '" + id + "' is missing from special_tokens");
      parts.emplace_back(it->second);
    } else if (item.is_object() && item.contains("Sequence")) {
      const std::string id = get_string(item["Sequence"], "id", sub + ".Sequence");
      if (id != "A")
        throw Error(sub + ": sequence '" + id + "' cannot appear in a single-sequence template");
      parts.emplace_back(std::nullopt);
    } else {
      throw Error(sub + " must be {\"SpecialToken\": ...} or {\"Sequence\": ...}");
    }
  }
  return std::make_unique<TemplatePostProcessor>(std::move(parts));
}

}  // namespace

std::unique_ptr<PostProcessor> make_post_processor(const json& j, const std::string& where) {
  if (j.is_null()) return nullptr;
  const std::string type = get_type(j, where);
  if (type == "TemplateProcessing") return make_template(j, where);
  if (type == "ByteLevel") return std::make_unique<NoOpPostProcessor>();  // only trims offsets
  if (type == "Sequence") {
    std::vector<std::unique_ptr<PostProcessor>> parts;
    const auto& list = get_array(j, "processors", where);
    for (size_t i = 0; i < list.size(); ++i) {
      const std::string sub = where + ".processors[" + std::to_string(i) + "]";
      if (list[i].is_null()) throw Error(sub + " must be an object");
      parts.push_back(make_post_processor(list[i], sub));
    }
    return std::make_unique<SequencePostProcessor>(std::move(parts));
  }
  throw Error(where + ".type '" + type +
              "' is not supported (supported: TemplateProcessing, ByteLevel, Sequence)");
}

}  // namespace respin::tok
