// Added-token parsing and the leftmost-longest split of input text at added tokens.
#include "core/tokenizer/added_tokens.h"

#include <algorithm>

#include <nlohmann/json.hpp>

#include "core/tokenizer/json_fields.h"
#include "core/tokenizer/pipeline.h"
#include "core/tokenizer/unicode_text.h"
#include "core/util/error.h"

namespace respin::tok {

using nlohmann::json;

void AddedVocabulary::Matcher::add(const std::string& pattern, int token_index) {
  if (pattern.empty())
    return;  // an empty pattern would match everywhere; HF cannot match it either
  int node = 0;
  for (unsigned char b : pattern) {
    const uint64_t key = (static_cast<uint64_t>(node) << 8) | b;
    auto it = edges_.find(key);
    if (it == edges_.end()) {
      it = edges_.emplace(key, static_cast<int>(terminal_.size())).first;
      terminal_.push_back(-1);
    }
    node = it->second;
  }
  first_byte_[static_cast<unsigned char>(pattern[0])] = true;
  if (terminal_[node] < 0) terminal_[node] = token_index;  // first token with this content wins
}

int AddedVocabulary::Matcher::longest_at(std::string_view text, size_t pos, size_t* length) const {
  if (!first_byte_[static_cast<unsigned char>(text[pos])]) return -1;
  int node = 0, found = -1;
  for (size_t i = pos; i < text.size(); ++i) {
    auto it = edges_.find((static_cast<uint64_t>(node) << 8) | static_cast<unsigned char>(text[i]));
    if (it == edges_.end()) break;
    node = it->second;
    if (terminal_[node] >= 0) {
      found = terminal_[node];
      *length = i + 1 - pos;
    }
  }
  return found;
}

AddedVocabulary AddedVocabulary::from_json(const json& list, const Normalizer* normalizer) {
  AddedVocabulary v;
  if (list.is_null()) return v;
  if (!list.is_array()) throw Error("added_tokens must be an array");
  for (size_t i = 0; i < list.size(); ++i) {
    const std::string where = "added_tokens[" + std::to_string(i) + "]";
    const auto& j = list[i];
    AddedToken t;
    const auto& id = require_field(j, "id", where);
    if (!id.is_number_integer() || id.get<long long>() < 0 || id.get<long long>() > (1LL << 30)) {
      throw Error(where + ".id must be a non-negative integer");
    }
    t.id = id.get<int>();
    t.content = get_string(j, "content", where);
    if (t.content.empty()) throw Error(where + ".content must not be empty");
    t.special = get_bool(j, "special", where, false);
    t.lstrip = get_bool(j, "lstrip", where, false);
    t.rstrip = get_bool(j, "rstrip", where, false);
    t.normalized = get_bool(j, "normalized", where, !t.special);
    t.single_word = get_bool(j, "single_word", where, false);
    const int index = static_cast<int>(v.tokens_.size());
    if (t.normalized) {
      v.normalized_.add(normalizer ? normalizer->normalize(t.content) : t.content, index);
    } else {
      v.raw_.add(t.content, index);
    }
    v.index_by_id_.emplace(t.id, v.tokens_.size());
    v.index_by_content_.emplace(t.content, v.tokens_.size());
    v.tokens_.push_back(std::move(t));
  }
  return v;
}

const AddedToken* AddedVocabulary::by_id(int id) const {
  auto it = index_by_id_.find(id);
  return it == index_by_id_.end() ? nullptr : &tokens_[it->second];
}

const AddedToken* AddedVocabulary::by_content(const std::string& content) const {
  auto it = index_by_content_.find(content);
  return it == index_by_content_.end() ? nullptr : &tokens_[it->second];
}

namespace {

// Code point ending just before byte `end` (valid UTF-8 assumed).
char32_t last_char_before(std::string_view s, size_t end) {
  size_t i = end - 1;
  while (i > 0 && (static_cast<unsigned char>(s[i]) & 0xC0) == 0x80) --i;
  return utf8_decode_at(s, i);
}

// Start of the run of whitespace that ends at `end` (HF: regex \s*$ on text[..end]).
size_t trailing_space_start(std::string_view s, size_t end) {
  while (end > 0) {
    size_t i = end - 1;
    while (i > 0 && (static_cast<unsigned char>(s[i]) & 0xC0) == 0x80) --i;
    if (!is_white_space(utf8_decode_at(s, i))) break;
    end = i;
  }
  return end;
}

// End of the run of whitespace that starts at `begin` (HF: regex ^\s* on text[begin..]).
size_t leading_space_end(std::string_view s, size_t begin) {
  while (begin < s.size() && is_white_space(utf8_decode_at(s, begin)))
    begin += utf8_len_at(s, begin);
  return begin;
}

}  // namespace

std::vector<Segment> AddedVocabulary::split(std::string_view text, const Matcher& matcher) const {
  std::vector<Segment> out;
  size_t start_offset = 0, pos = 0, length = 0;
  while (!matcher.empty() && pos < text.size()) {
    const int index = matcher.longest_at(text, pos, &length);
    if (index < 0) {
      ++pos;
      continue;
    }
    const AddedToken& t = tokens_[index];
    size_t start = pos, stop = pos + length;
    pos = stop;
    if (t.single_word) {
      // Only a whole word: no word character (Rust regex \w) directly before or after.
      const bool space_before = start == 0 || !is_word_char(last_char_before(text, start));
      const bool space_after = stop == text.size() || !is_word_char(utf8_decode_at(text, stop));
      if (!space_before || !space_after) continue;
    }
    if (t.lstrip) start = std::max(trailing_space_start(text, start), start_offset);
    if (t.rstrip) stop = leading_space_end(text, stop);
    if (start_offset < start) out.push_back({start_offset, start, -1});
    out.push_back({start, stop, t.id});
    start_offset = pos = stop;
  }
  if (start_offset < text.size()) out.push_back({start_offset, text.size(), -1});
  return out;
}

}  // namespace respin::tok
