// Small accessors for tokenizer.json objects that turn missing or mistyped fields into
// respin::Error messages naming the field path, instead of nlohmann's generic type errors.
#pragma once

#include <string>

#include <nlohmann/json.hpp>

#include "core/tokenizer/unicode_text.h"
#include "core/util/error.h"

namespace respin::tok {

inline const nlohmann::json& require_field(const nlohmann::json& j, const char* key,
                                           const std::string& where) {
  if (!j.is_object() || !j.contains(key)) throw Error(where + "." + key + " is missing");
  return j[key];
}

inline std::string get_string(const nlohmann::json& j, const char* key, const std::string& where) {
  const auto& v = require_field(j, key, where);
  if (!v.is_string()) throw Error(where + "." + key + " must be a string");
  return v.get<std::string>();
}

inline bool get_bool(const nlohmann::json& j, const char* key, const std::string& where,
                     bool fallback) {
  if (!j.contains(key) || j[key].is_null()) return fallback;
  if (!j[key].is_boolean()) throw Error(where + "." + key + " must be a boolean");
  return j[key].get<bool>();
}

inline int get_int(const nlohmann::json& j, const char* key, const std::string& where,
                   int fallback) {
  if (!j.contains(key) || j[key].is_null()) return fallback;
  if (!j[key].is_number_integer()) throw Error(where + "." + key + " must be an integer");
  return j[key].get<int>();
}

inline const nlohmann::json& get_array(const nlohmann::json& j, const char* key,
                                       const std::string& where) {
  const auto& v = require_field(j, key, where);
  if (!v.is_array()) throw Error(where + "." + key + " must be an array");
  return v;
}

// The "type" tag of a stage object.
inline std::string get_type(const nlohmann::json& j, const std::string& where) {
  if (!j.is_object()) throw Error(where + " must be an object or null");
  return get_string(j, "type", where);
}

// A single character setting such as Metaspace's "replacement" or Strip's "content".
inline std::string get_char(const nlohmann::json& j, const char* key, const std::string& where) {
  std::string s = get_string(j, key, where);
  if (s.empty() || utf8_first_invalid(s) != std::string::npos || utf8_len_at(s, 0) != s.size()) {
    throw Error(where + "." + key + " must be a single character");
  }
  return s;
}

}  // namespace respin::tok
