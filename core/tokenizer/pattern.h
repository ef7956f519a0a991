// The {"String": ...} / {"Regex": ...} pattern objects of tokenizer.json (Replace normalizer,
// Split pre-tokenizer, Replace decoder): literal or regex search with one interface.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "core/tokenizer/unicode_text.h"

namespace respin::tok {

class Pattern {
 public:
  // Throws respin::Error naming `where` for an unknown form or an invalid regex.
  static Pattern from_json(const nlohmann::json& j, const std::string& where);

  // Non-overlapping matches, left to right, as byte ranges.
  std::vector<std::pair<size_t, size_t>> find_all(std::string_view text) const;
  std::string replace_all(std::string_view text, std::string_view replacement) const;

 private:
  std::string literal_;
  std::optional<Regex> regex_;
};

}  // namespace respin::tok
