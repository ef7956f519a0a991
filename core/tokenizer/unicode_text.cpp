// ICU-backed implementations of the tokenizer's Unicode helpers (see unicode_text.h).
#include "core/tokenizer/unicode_text.h"

#include <unicode/normalizer2.h>
#include <unicode/regex.h>
#include <unicode/uchar.h>
#include <unicode/unistr.h>
#include <unicode/ustring.h>
#include <unicode/utext.h>

#include <memory>

#include "core/util/error.h"

namespace respin::tok {

char32_t utf8_decode_at(std::string_view s, size_t i) {
  const auto b0 = static_cast<unsigned char>(s[i]);
  const size_t n = utf8_len_at(s, i);
  if (n == 1) return b0;
  char32_t cp = b0 & (n == 2 ? 0x1F : n == 3 ? 0x0F : 0x07);
  for (size_t k = 1; k < n; ++k) cp = (cp << 6) | (static_cast<unsigned char>(s[i + k]) & 0x3F);
  return cp;
}

void utf8_append(std::string& out, char32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

namespace {

// Length of the valid UTF-8 sequence at s[i] (1..4), or 0 with `*bad` set to the length of the
// maximal invalid subpart (Unicode "best practice", which Rust's from_utf8_lossy follows).
size_t valid_sequence_at(std::string_view s, size_t i, size_t* bad) {
  const auto b0 = static_cast<unsigned char>(s[i]);
  if (b0 < 0x80) return 1;
  size_t need;
  unsigned char lo = 0x80, hi = 0xBF;  // allowed range of the second byte
  if (b0 >= 0xC2 && b0 <= 0xDF) {
    need = 2;
  } else if (b0 >= 0xE0 && b0 <= 0xEF) {
    need = 3;
    if (b0 == 0xE0) lo = 0xA0;
    if (b0 == 0xED) hi = 0x9F;  // no surrogates
  } else if (b0 >= 0xF0 && b0 <= 0xF4) {
    need = 4;
    if (b0 == 0xF0) lo = 0x90;
    if (b0 == 0xF4) hi = 0x8F;
  } else {
    *bad = 1;
    return 0;
  }
  for (size_t k = 1; k < need; ++k) {
    if (i + k >= s.size()) {
      *bad = k;
      return 0;
    }
    const auto b = static_cast<unsigned char>(s[i + k]);
    const bool ok = k == 1 ? (b >= lo && b <= hi) : (b >= 0x80 && b <= 0xBF);
    if (!ok) {
      *bad = k;
      return 0;
    }
  }
  return need;
}

}  // namespace

size_t utf8_first_invalid(std::string_view s) {
  size_t i = 0, bad = 0;
  while (i < s.size()) {
    const size_t n = valid_sequence_at(s, i, &bad);
    if (n == 0) return i;
    i += n;
  }
  return std::string_view::npos;
}

std::string utf8_lossy(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size());
  size_t i = 0, bad = 0;
  while (i < bytes.size()) {
    const size_t n = valid_sequence_at(bytes, i, &bad);
    if (n > 0) {
      out.append(bytes.substr(i, n));
      i += n;
    } else {
      out += "\xEF\xBF\xBD";
      i += bad;
    }
  }
  return out;
}

std::string unicode_normalize(std::string_view s, NormalForm form) {
  UErrorCode status = U_ZERO_ERROR;
  const icu::Normalizer2* norm = nullptr;
  switch (form) {
    case NormalForm::NFC:
      norm = icu::Normalizer2::getNFCInstance(status);
      break;
    case NormalForm::NFD:
      norm = icu::Normalizer2::getNFDInstance(status);
      break;
    case NormalForm::NFKC:
      norm = icu::Normalizer2::getNFKCInstance(status);
      break;
    case NormalForm::NFKD:
      norm = icu::Normalizer2::getNFKDInstance(status);
      break;
  }
  if (U_FAILURE(status))
    throw Error(std::string("ICU normalizer unavailable: ") + u_errorName(status));
  const icu::UnicodeString in =
      icu::UnicodeString::fromUTF8(icu::StringPiece(s.data(), static_cast<int32_t>(s.size())));
  const icu::UnicodeString result = norm->normalize(in, status);
  if (U_FAILURE(status))
    throw Error(std::string("ICU normalization failed: ") + u_errorName(status));
  std::string out;
  result.toUTF8String(out);
  return out;
}

std::string unicode_lowercase(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size(); i += utf8_len_at(s, i)) {
    const char32_t cp = utf8_decode_at(s, i);
    if (cp < 0x80) {
      out += static_cast<char>(cp >= 'A' && cp <= 'Z' ? cp + 32 : cp);
      continue;
    }
    // One code point at a time, so ICU sees no context (Rust's char::to_lowercase has none).
    UChar src[2];
    int32_t src_len = 0;
    U16_APPEND_UNSAFE(src, src_len, static_cast<UChar32>(cp));
    UChar dst[8];
    UErrorCode status = U_ZERO_ERROR;
    const int32_t n = u_strToLower(dst, 8, src, src_len, "", &status);
    if (U_FAILURE(status)) throw Error(std::string("ICU lowercase failed: ") + u_errorName(status));
    icu::UnicodeString(dst, n).toUTF8String(out);
  }
  return out;
}

bool is_white_space(char32_t c) {
  return u_hasBinaryProperty(static_cast<UChar32>(c), UCHAR_WHITE_SPACE);
}

bool is_numeric(char32_t c) {
  const int8_t t = u_charType(static_cast<UChar32>(c));
  return t == U_DECIMAL_DIGIT_NUMBER || t == U_LETTER_NUMBER || t == U_OTHER_NUMBER;
}

bool is_word_char(char32_t c) {
  const auto cp = static_cast<UChar32>(c);
  if (u_hasBinaryProperty(cp, UCHAR_ALPHABETIC) || u_hasBinaryProperty(cp, UCHAR_JOIN_CONTROL))
    return true;
  const uint32_t mask = U_GET_GC_MASK(cp);
  return (mask & (U_GC_M_MASK | U_GC_ND_MASK | U_GC_PC_MASK)) != 0;
}

namespace {

// GPT-2's table: printable Latin-1 bytes map to themselves, the rest to U+0100 onwards in order.
std::array<char32_t, 256> make_byte_table() {
  std::array<char32_t, 256> table{};
  std::array<bool, 256> printable{};
  for (int b = '!'; b <= '~'; ++b) printable[b] = true;
  for (int b = 0xA1; b <= 0xAC; ++b) printable[b] = true;
  for (int b = 0xAE; b <= 0xFF; ++b) printable[b] = true;
  char32_t next = 256;
  for (int b = 0; b < 256; ++b) table[b] = printable[b] ? static_cast<char32_t>(b) : next++;
  return table;
}

const std::array<char32_t, 256>& byte_table() {
  static const std::array<char32_t, 256> table = make_byte_table();
  return table;
}

}  // namespace

const std::array<std::string, 256>& byte_to_unicode() {
  static const std::array<std::string, 256> strings = [] {
    std::array<std::string, 256> s;
    for (int b = 0; b < 256; ++b) utf8_append(s[b], byte_table()[b]);
    return s;
  }();
  return strings;
}

int unicode_to_byte(char32_t cp) {
  // The table's image is [0x21, 0x7E] ∪ [0xA1, 0xAC] ∪ [0xAE, 0xFF] ∪ [0x100, 0x143].
  static const std::array<int, 0x144> inverse = [] {
    std::array<int, 0x144> inv;
    inv.fill(-1);
    for (int b = 0; b < 256; ++b) inv[byte_table()[b]] = b;
    return inv;
  }();
  return cp < inverse.size() ? inverse[cp] : -1;
}

std::string translate_regex(const std::string& p) {
  // Oniguruma (HF) and ICU agree on \s, \d, \p{..}; they differ on \w (Onig: L|M|Nd|Pc, ICU adds
  // Alphabetic and joiners) and \h (Onig: hex digit, ICU: horizontal space). Nested sets are legal
  // inside ICU character classes, so the replacements work in and outside [...].
  std::string out;
  out.reserve(p.size() + 16);
  for (size_t i = 0; i < p.size(); ++i) {
    if (p[i] != '\\' || i + 1 == p.size()) {
      out += p[i];
      continue;
    }
    const char e = p[++i];
    switch (e) {
      case 'w':
        out += "[\\p{L}\\p{M}\\p{Nd}\\p{Pc}]";
        break;
      case 'W':
        out += "[^\\p{L}\\p{M}\\p{Nd}\\p{Pc}]";
        break;
      case 'h':
        out += "[0-9a-fA-F]";
        break;
      case 'H':
        out += "[^0-9a-fA-F]";
        break;
      default:
        out += '\\';
        out += e;
    }
  }
  return out;
}

struct Regex::Impl {
  std::unique_ptr<icu::RegexPattern> pattern;
};

Regex Regex::compile(const std::string& pattern) {
  UErrorCode status = U_ZERO_ERROR;
  UParseError parse_error{};
  const std::string translated = translate_regex(pattern);
  auto impl = std::make_shared<Impl>();
  impl->pattern.reset(
      icu::RegexPattern::compile(icu::UnicodeString::fromUTF8(translated), 0, parse_error, status));
  if (U_FAILURE(status)) {
    throw Error("invalid regex '" + pattern + "': " + u_errorName(status) + " at offset " +
                std::to_string(parse_error.offset));
  }
  Regex r;
  r.impl_ = std::move(impl);
  return r;
}

namespace {

struct UTextCloser {
  void operator()(UText* t) const { utext_close(t); }
};

}  // namespace

std::vector<std::pair<size_t, size_t>> Regex::find_all(std::string_view text) const {
  std::vector<std::pair<size_t, size_t>> matches;
  if (text.empty()) return matches;
  UErrorCode status = U_ZERO_ERROR;
  // A UTF-8 UText lets ICU report native (byte) offsets, so no index mapping is needed.
  std::unique_ptr<UText, UTextCloser> ut(
      utext_openUTF8(nullptr, text.data(), static_cast<int64_t>(text.size()), &status));
  std::unique_ptr<icu::RegexMatcher> m(impl_->pattern->matcher(status));
  if (U_FAILURE(status))
    throw Error(std::string("ICU regex matcher failed: ") + u_errorName(status));
  m->reset(ut.get());
  while (m->find(status)) {
    const auto start = static_cast<size_t>(m->start64(status));
    const auto end = static_cast<size_t>(m->end64(status));
    matches.emplace_back(start, end);
  }
  if (U_FAILURE(status))
    throw Error(std::string("ICU regex search failed: ") + u_errorName(status));
  return matches;
}

std::string Regex::replace_all(std::string_view text, std::string_view replacement) const {
  return replace_ranges(text, find_all(text), replacement);
}

std::string replace_ranges(std::string_view text, const std::vector<std::pair<size_t, size_t>>& ranges,
                           std::string_view replacement) {
  std::string out;
  size_t prev = 0;
  for (const auto& [start, end] : ranges) {
    out.append(text.substr(prev, start - prev));
    out.append(replacement);
    prev = end;
  }
  out.append(text.substr(prev));
  return out;
}

}  // namespace respin::tok
