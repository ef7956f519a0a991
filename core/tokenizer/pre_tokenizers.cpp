// Pre-tokenizers of tokenizer.json (Sequence, ByteLevel, Split, Metaspace, Digits). The split
// behaviours reproduce HF's NormalizedString::split (tokenizer/normalizer.rs) case by case,
// because e.g. MergedWithNext vs Contiguous decide which spaces end up in which word.
#include <algorithm>

#include <nlohmann/json.hpp>

#include "core/tokenizer/json_fields.h"
#include "core/tokenizer/pattern.h"
#include "core/tokenizer/pipeline.h"
#include "core/tokenizer/unicode_text.h"
#include "core/util/error.h"

namespace respin::tok {

using nlohmann::json;

namespace {

enum class Behavior { Removed, Isolated, MergedWithPrevious, MergedWithNext, Contiguous };

Behavior parse_behavior(const json& j, const std::string& where) {
  const std::string b = get_string(j, "behavior", where);
  if (b == "Removed") return Behavior::Removed;
  if (b == "Isolated") return Behavior::Isolated;
  if (b == "MergedWithPrevious") return Behavior::MergedWithPrevious;
  if (b == "MergedWithNext") return Behavior::MergedWithNext;
  if (b == "Contiguous") return Behavior::Contiguous;
  throw Error(where + ".behavior '" + b +
              "' is not one of Removed, Isolated, MergedWithPrevious, MergedWithNext, Contiguous");
}

struct Span {
  size_t begin, end;
  bool is_match;
};

// HF Pattern::find_matches for a regex or literal: the matches plus the gaps between them, so
// the spans tile the whole text.
std::vector<Span> spans_from_matches(std::string_view text,
                                     const std::vector<std::pair<size_t, size_t>>& matches) {
  std::vector<Span> spans;
  if (text.empty()) return {{0, 0, false}};
  size_t prev = 0;
  for (const auto& [b, e] : matches) {
    if (prev != b) spans.push_back({prev, b, false});
    spans.push_back({b, e, true});
    prev = e;
  }
  if (prev != text.size()) spans.push_back({prev, text.size(), false});
  return spans;
}

// HF Pattern::find_matches for a character predicate: each matching character is its own match.
template <typename Pred>
std::vector<Span> spans_from_chars(std::string_view text, Pred pred) {
  if (text.empty()) return {{0, 0, false}};
  std::vector<Span> spans;
  size_t last = 0;
  for (size_t i = 0; i < text.size();) {
    const size_t n = utf8_len_at(text, i);
    if (pred(text.substr(i, n))) {
      if (last < i) spans.push_back({last, i, false});
      spans.push_back({i, i + n, true});
      last = i + n;
    }
    i += n;
  }
  if (last < text.size()) spans.push_back({last, text.size(), false});
  return spans;
}

// Groups the spans according to the delimiter behaviour; returns [begin, end) ranges to keep.
std::vector<std::pair<size_t, size_t>> apply_behavior(const std::vector<Span>& spans,
                                                      Behavior behavior) {
  std::vector<std::pair<size_t, size_t>> out;
  bool previous_match = false;
  switch (behavior) {
    case Behavior::Removed:
      for (const auto& s : spans) {
        if (!s.is_match) out.emplace_back(s.begin, s.end);
      }
      break;
    case Behavior::Isolated:
      for (const auto& s : spans) out.emplace_back(s.begin, s.end);
      break;
    case Behavior::Contiguous:
      for (const auto& s : spans) {
        if (s.is_match == previous_match && !out.empty()) {
          out.back().second = s.end;
        } else {
          out.emplace_back(s.begin, s.end);
        }
        previous_match = s.is_match;
      }
      break;
    case Behavior::MergedWithPrevious:
      for (const auto& s : spans) {
        if (s.is_match && !previous_match && !out.empty()) {
          out.back().second = s.end;
        } else {
          out.emplace_back(s.begin, s.end);
        }
        previous_match = s.is_match;
      }
      break;
    case Behavior::MergedWithNext:
      for (auto it = spans.rbegin(); it != spans.rend(); ++it) {
        if (it->is_match && !previous_match && !out.empty()) {
          out.back().first = it->begin;
        } else {
          out.emplace_back(it->begin, it->end);
        }
        previous_match = it->is_match;
      }
      std::reverse(out.begin(), out.end());
      break;
  }
  return out;
}

void emit_ranges(const Piece& piece, const std::vector<std::pair<size_t, size_t>>& ranges,
                 const PieceSink& sink) {
  for (const auto& [b, e] : ranges) {
    if (b == e) continue;
    sink(Piece{piece.text.substr(b, e - b), piece.at_start && b == 0});
  }
}

// Each member splits every piece of the previous one; pieces flow through one at a time.
class SequencePreTokenizer final : public PreTokenizer {
 public:
  explicit SequencePreTokenizer(std::vector<std::unique_ptr<PreTokenizer>> parts)
      : parts_(std::move(parts)) {}
  void split(Piece piece, const PieceSink& sink) const override { run(0, std::move(piece), sink); }

 private:
  void run(size_t stage, Piece piece, const PieceSink& sink) const {
    if (stage == parts_.size()) {
      sink(std::move(piece));
      return;
    }
    parts_[stage]->split(std::move(piece), [&](Piece&& p) { run(stage + 1, std::move(p), sink); });
  }

  std::vector<std::unique_ptr<PreTokenizer>> parts_;
};

class SplitPreTokenizer final : public PreTokenizer {
 public:
  SplitPreTokenizer(Pattern pattern, Behavior behavior, bool invert)
      : pattern_(std::move(pattern)), behavior_(behavior), invert_(invert) {}
  void split(Piece piece, const PieceSink& sink) const override {
    auto spans = spans_from_matches(piece.text, pattern_.find_all(piece.text));
    if (invert_) {
      for (auto& s : spans) s.is_match = !s.is_match;
    }
    emit_ranges(piece, apply_behavior(spans, behavior_), sink);
  }

 private:
  Pattern pattern_;
  Behavior behavior_;
  bool invert_;
};

const Regex& gpt2_regex() {
  static const Regex r = Regex::compile(
      R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)");
  return r;
}

// GPT-2 byte-level: optional leading space, the GPT-2 regex split, then every byte of a piece
// becomes its printable stand-in character so the BPE vocabulary covers all of UTF-8.
class ByteLevelPreTokenizer final : public PreTokenizer {
 public:
  ByteLevelPreTokenizer(bool add_prefix_space, bool use_regex)
      : add_prefix_space_(add_prefix_space), use_regex_(use_regex) {}
  void split(Piece piece, const PieceSink& sink) const override {
    if (add_prefix_space_ && (piece.text.empty() || piece.text[0] != ' '))
      piece.text.insert(0, 1, ' ');
    const auto& table = byte_to_unicode();
    auto emit = [&](size_t begin, size_t end) {
      std::string mapped;
      mapped.reserve((end - begin) * 2);
      for (size_t i = begin; i < end; ++i)
        mapped += table[static_cast<unsigned char>(piece.text[i])];
      sink(Piece{std::move(mapped), piece.at_start && begin == 0});
    };
    if (!use_regex_) {
      if (!piece.text.empty()) emit(0, piece.text.size());
      return;
    }
    // Isolated split: the regex matches and the gaps between them, in order.
    size_t prev = 0;
    for (const auto& [b, e] : gpt2_regex().find_all(piece.text)) {
      if (prev < b) emit(prev, b);
      if (b < e) emit(b, e);
      prev = e;
    }
    if (prev < piece.text.size()) emit(prev, piece.text.size());
  }

 private:
  bool add_prefix_space_, use_regex_;
};

enum class PrependScheme { Always, First, Never };

// SentencePiece-style: spaces become the replacement character ("▁"), which is prepended
// according to the scheme; with split, each "▁" starts a new piece (MergedWithNext).
class MetaspacePreTokenizer final : public PreTokenizer {
 public:
  MetaspacePreTokenizer(std::string replacement, PrependScheme scheme, bool split)
      : replacement_(std::move(replacement)), scheme_(scheme), split_(split) {}
  void split(Piece piece, const PieceSink& sink) const override {
    std::string text;
    text.reserve(piece.text.size() + replacement_.size());
    for (char c : piece.text) {
      if (c == ' ') {
        text += replacement_;
      } else {
        text += c;
      }
    }
    const bool starts = text.compare(0, replacement_.size(), replacement_) == 0;
    if (!starts &&
        (scheme_ == PrependScheme::Always || (scheme_ == PrependScheme::First && piece.at_start))) {
      text.insert(0, replacement_);
    }
    Piece rewritten{std::move(text), piece.at_start};
    if (!split_) {
      if (!rewritten.text.empty()) sink(std::move(rewritten));
      return;
    }
    const auto spans =
        spans_from_chars(rewritten.text, [&](std::string_view ch) { return ch == replacement_; });
    emit_ranges(rewritten, apply_behavior(spans, Behavior::MergedWithNext), sink);
  }

 private:
  std::string replacement_;
  PrependScheme scheme_;
  bool split_;
};

class DigitsPreTokenizer final : public PreTokenizer {
 public:
  explicit DigitsPreTokenizer(bool individual) : individual_(individual) {}
  void split(Piece piece, const PieceSink& sink) const override {
    const auto spans = spans_from_chars(
        piece.text, [](std::string_view ch) { return is_numeric(utf8_decode_at(ch, 0)); });
    emit_ranges(piece,
                apply_behavior(spans, individual_ ? Behavior::Isolated : Behavior::Contiguous),
                sink);
  }

 private:
  bool individual_;
};

std::unique_ptr<PreTokenizer> make_metaspace(const json& j, const std::string& where) {
  // HF's deserializer: a legacy add_prefix_space=false means prepend_scheme "never".
  PrependScheme scheme = PrependScheme::Always;
  const bool has_scheme = j.contains("prepend_scheme") && !j["prepend_scheme"].is_null();
  if (has_scheme) {
    const std::string s = get_string(j, "prepend_scheme", where);
    if (s == "always") {
      scheme = PrependScheme::Always;
    } else if (s == "first") {
      scheme = PrependScheme::First;
    } else if (s == "never") {
      scheme = PrependScheme::Never;
    } else {
      throw Error(where + ".prepend_scheme '" + s + "' is not one of always, first, never");
    }
  }
  if (!get_bool(j, "add_prefix_space", where, true)) {
    if (has_scheme && scheme != PrependScheme::Never) {
      throw Error(where + ": add_prefix_space=false contradicts prepend_scheme");
    }
    scheme = PrependScheme::Never;
  }
  return std::make_unique<MetaspacePreTokenizer>(get_char(j, "replacement", where), scheme,
                                                 get_bool(j, "split", where, true));
}

}  // namespace

std::unique_ptr<PreTokenizer> make_pre_tokenizer(const json& j, const std::string& where) {
  if (j.is_null()) return nullptr;
  const std::string type = get_type(j, where);
  if (type == "Sequence") {
    std::vector<std::unique_ptr<PreTokenizer>> parts;
    const auto& list = get_array(j, "pretokenizers", where);
    for (size_t i = 0; i < list.size(); ++i) {
      const std::string sub = where + ".pretokenizers[" + std::to_string(i) + "]";
      if (list[i].is_null()) throw Error(sub + " must be an object");
      parts.push_back(make_pre_tokenizer(list[i], sub));
    }
    return std::make_unique<SequencePreTokenizer>(std::move(parts));
  }
  if (type == "ByteLevel") {
    return std::make_unique<ByteLevelPreTokenizer>(get_bool(j, "add_prefix_space", where, true),
                                                   get_bool(j, "use_regex", where, true));
  }
  if (type == "Split") {
    return std::make_unique<SplitPreTokenizer>(
        Pattern::from_json(require_field(j, "pattern", where), where + ".pattern"),
        parse_behavior(j, where), get_bool(j, "invert", where, false));
  }
  if (type == "Metaspace") return make_metaspace(j, where);
  if (type == "Digits")
    return std::make_unique<DigitsPreTokenizer>(get_bool(j, "individual_digits", where, false));
  throw Error(where + ".type '" + type +
              "' is not supported (supported: Sequence, ByteLevel, Split, Metaspace, Digits)");
}

bool json_uses_type(const json& j, const std::string& type) {
  if (!j.is_object()) return false;
  if (j.contains("type") && j["type"] == type) return true;
  for (const char* list : {"pretokenizers", "normalizers", "decoders", "processors"}) {
    if (j.contains(list) && j[list].is_array()) {
      for (const auto& sub : j[list]) {
        if (json_uses_type(sub, type)) return true;
      }
    }
  }
  return false;
}

}  // namespace respin::tok
