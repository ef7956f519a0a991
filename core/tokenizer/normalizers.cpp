// Normalizers of tokenizer.json (Sequence, Prepend, Replace, NFC/NFD/NFKC/NFKD, Lowercase,
// Strip) and the shared String/Regex pattern object.
#include <nlohmann/json.hpp>

#include "core/tokenizer/json_fields.h"
#include "core/tokenizer/pattern.h"
#include "core/tokenizer/pipeline.h"
#include "core/tokenizer/unicode_text.h"
#include "core/util/error.h"

namespace respin::tok {

using nlohmann::json;

Pattern Pattern::from_json(const json& j, const std::string& where) {
  Pattern p;
  if (j.is_object() && j.size() == 1 && j.contains("String") && j["String"].is_string()) {
    p.literal_ = j["String"].get<std::string>();
    if (p.literal_.empty()) throw Error(where + ".String must not be empty");
  } else if (j.is_object() && j.size() == 1 && j.contains("Regex") && j["Regex"].is_string()) {
    try {
      p.regex_ = Regex::compile(j["Regex"].get<std::string>());
    } catch (const Error& e) {
      throw Error(where + ".Regex: " + e.what());
    }
  } else {
    throw Error(where + " must be {\"String\": ...} or {\"Regex\": ...}");
  }
  return p;
}

std::vector<std::pair<size_t, size_t>> Pattern::find_all(std::string_view text) const {
  if (regex_) return regex_->find_all(text);
  std::vector<std::pair<size_t, size_t>> matches;
  for (size_t pos = text.find(literal_); pos != std::string_view::npos;
       pos = text.find(literal_, pos + literal_.size())) {
    matches.emplace_back(pos, pos + literal_.size());
  }
  return matches;
}

std::string Pattern::replace_all(std::string_view text, std::string_view replacement) const {
  return replace_ranges(text, find_all(text), replacement);
}

namespace {

class SequenceNormalizer final : public Normalizer {
 public:
  explicit SequenceNormalizer(std::vector<std::unique_ptr<Normalizer>> parts)
      : parts_(std::move(parts)) {}
  std::string normalize(std::string text) const override {
    for (const auto& p : parts_) text = p->normalize(std::move(text));
    return text;
  }

 private:
  std::vector<std::unique_ptr<Normalizer>> parts_;
};

class PrependNormalizer final : public Normalizer {
 public:
  explicit PrependNormalizer(std::string prefix) : prefix_(std::move(prefix)) {}
  std::string normalize(std::string text) const override {
    // HF prepends only to non-empty text, so an empty piece stays empty.
    return text.empty() ? text : prefix_ + text;
  }

 private:
  std::string prefix_;
};

class ReplaceNormalizer final : public Normalizer {
 public:
  ReplaceNormalizer(Pattern pattern, std::string content)
      : pattern_(std::move(pattern)), content_(std::move(content)) {}
  std::string normalize(std::string text) const override {
    return pattern_.replace_all(text, content_);
  }

 private:
  Pattern pattern_;
  std::string content_;
};

class UnicodeNormalizer final : public Normalizer {
 public:
  explicit UnicodeNormalizer(NormalForm form) : form_(form) {}
  std::string normalize(std::string text) const override { return unicode_normalize(text, form_); }

 private:
  NormalForm form_;
};

class LowercaseNormalizer final : public Normalizer {
 public:
  std::string normalize(std::string text) const override { return unicode_lowercase(text); }
};

class StripNormalizer final : public Normalizer {
 public:
  StripNormalizer(bool left, bool right) : left_(left), right_(right) {}
  std::string normalize(std::string text) const override {
    size_t begin = 0, end = text.size();
    if (left_) {
      while (begin < end && is_white_space(utf8_decode_at(text, begin)))
        begin += utf8_len_at(text, begin);
    }
    if (right_) {
      while (end > begin) {
        size_t last = end - 1;
        while (last > begin && (static_cast<unsigned char>(text[last]) & 0xC0) == 0x80) --last;
        if (!is_white_space(utf8_decode_at(text, last))) break;
        end = last;
      }
    }
    return text.substr(begin, end - begin);
  }

 private:
  bool left_, right_;
};

}  // namespace

std::unique_ptr<Normalizer> make_normalizer(const json& j, const std::string& where) {
  if (j.is_null()) return nullptr;
  const std::string type = get_type(j, where);
  if (type == "Sequence") {
    std::vector<std::unique_ptr<Normalizer>> parts;
    const auto& list = get_array(j, "normalizers", where);
    for (size_t i = 0; i < list.size(); ++i) {
      const std::string sub = where + ".normalizers[" + std::to_string(i) + "]";
      if (list[i].is_null()) throw Error(sub + " must be an object");
      parts.push_back(make_normalizer(list[i], sub));
    }
    return std::make_unique<SequenceNormalizer>(std::move(parts));
  }
  if (type == "Prepend")
    return std::make_unique<PrependNormalizer>(get_string(j, "prepend", where));
  if (type == "Replace") {
    return std::make_unique<ReplaceNormalizer>(
        Pattern::from_json(require_field(j, "pattern", where), where + ".pattern"),
        get_string(j, "content", where));
  }
  if (type == "NFC") return std::make_unique<UnicodeNormalizer>(NormalForm::NFC);
  if (type == "NFD") return std::make_unique<UnicodeNormalizer>(NormalForm::NFD);
  if (type == "NFKC") return std::make_unique<UnicodeNormalizer>(NormalForm::NFKC);
  if (type == "NFKD") return std::make_unique<UnicodeNormalizer>(NormalForm::NFKD);
  if (type == "Lowercase") return std::make_unique<LowercaseNormalizer>();
  if (type == "Strip") {
    return std::make_unique<StripNormalizer>(get_bool(j, "strip_left", where, true),
                                             get_bool(j, "strip_right", where, true));
  }
  throw Error(where + ".type '" + type +
              "' is not supported (supported: Sequence, Prepend, Replace, NFC, NFD, NFKC, NFKD, "
              "Lowercase, Strip)");
}

}  // namespace respin::tok
