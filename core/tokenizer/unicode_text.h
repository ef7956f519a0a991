// Unicode helpers for the tokenizer: UTF-8 walking and repair, ICU-backed normalization and
// character properties with the semantics the Hugging Face tokenizers (Rust) library uses, the
// GPT-2 byte<->unicode table, and a regex wrapper that matches like HF's Oniguruma regexes.
// ICU stays out of this header so that only the tokenizer .cpp files see it.
#pragma once

#include <array>
#include <cstddef>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace respin::tok {

// Byte length of the UTF-8 sequence starting at s[i], assuming s is valid UTF-8.
inline size_t utf8_len_at(std::string_view s, size_t i) {
  const auto b = static_cast<unsigned char>(s[i]);
  if (b < 0x80) return 1;
  if (b < 0xE0) return 2;
  if (b < 0xF0) return 3;
  return 4;
}

// Decodes the (valid) code point starting at s[i].
char32_t utf8_decode_at(std::string_view s, size_t i);
void utf8_append(std::string& out, char32_t cp);

// Offset of the first byte that makes `s` invalid UTF-8, or npos when it is valid.
size_t utf8_first_invalid(std::string_view s);

// Rust's String::from_utf8_lossy: every maximal invalid subpart becomes U+FFFD.
std::string utf8_lossy(std::string_view bytes);

enum class NormalForm { NFC, NFD, NFKC, NFKD };
std::string unicode_normalize(std::string_view s, NormalForm form);

// Rust char::to_lowercase applied per code point (full mapping, no context such as final sigma).
std::string unicode_lowercase(std::string_view s);

bool is_white_space(char32_t c);  // Unicode White_Space, as Rust char::is_whitespace
bool is_numeric(char32_t c);      // Nd | Nl | No, as Rust char::is_numeric
bool is_word_char(char32_t c);    // Rust regex \w: Alphabetic | M | Nd | Pc | Join_Control

// GPT-2 bytes_to_unicode: every byte maps to one printable code point (UTF-8 encoded here).
const std::array<std::string, 256>& byte_to_unicode();
// Inverse of byte_to_unicode; -1 when the code point is not one of the 256.
int unicode_to_byte(char32_t cp);

// A compiled regular expression with Hugging Face (Oniguruma) matching semantics, run by ICU.
// Class escapes that differ between the two engines (\w, \W, \h, \H) are rewritten at compile
// time. Safe for concurrent const use (every search creates its own matcher).
class Regex {
 public:
  // Throws respin::Error naming the pattern when ICU rejects it.
  static Regex compile(const std::string& pattern);

  // Non-overlapping matches left to right as byte ranges [first, second) into `text` (valid
  // UTF-8). Empty matches are reported too; the search then moves on by one code point.
  std::vector<std::pair<size_t, size_t>> find_all(std::string_view text) const;

  // Replaces every match with `replacement` taken literally (no $1 group references).
  std::string replace_all(std::string_view text, std::string_view replacement) const;

 private:
  struct Impl;
  std::shared_ptr<const Impl> impl_;
};

// `text` with each of the sorted, non-overlapping byte ranges replaced by `replacement`.
std::string replace_ranges(std::string_view text, const std::vector<std::pair<size_t, size_t>>& ranges,
                           std::string_view replacement);

// Oniguruma-to-ICU rewrite of class escapes; exposed for tests.
std::string translate_regex(const std::string& onig_pattern);

}  // namespace respin::tok
