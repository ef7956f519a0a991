// Model folder discovery (see model_folder.h).
#include "core/io/model_folder.h"

#include <sys/stat.h>

#include <cstdint>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>

#include "core/io/atomic_file.h"
#include "core/util/error.h"
#include "core/util/sha256.h"

namespace respin {

namespace {
bool is_file(const std::string& p) {
  struct stat st {};
  return ::stat(p.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}
bool is_dir(const std::string& p) {
  struct stat st {};
  return ::stat(p.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}
}  // namespace

ModelFolder ModelFolder::open(const std::string& dir_in) {
  std::string dir = dir_in;
  while (dir.size() > 1 && dir.back() == '/') dir.pop_back();
  if (!is_dir(dir)) throw Error(dir + ": not a directory");
  ModelFolder f;
  f.dir = dir;
  f.config_path = dir + "/config.json";
  if (!is_file(f.config_path)) throw Error(dir + ": no config.json (not a Hugging Face model folder?)");
  f.sharded = is_file(dir + "/model.safetensors.index.json");
  if (!f.sharded && !is_file(dir + "/model.safetensors"))
    throw Error(dir + ": no model.safetensors or model.safetensors.index.json");
  if (is_file(dir + "/tokenizer.json")) f.tokenizer_path = dir + "/tokenizer.json";
  return f;
}

const std::string& ModelFolder::require_tokenizer() const {
  if (tokenizer_path.empty()) throw Error(dir + ": no tokenizer.json");
  return tokenizer_path;
}

std::vector<std::string> ModelFolder::weight_files() const {
  if (!sharded) return {dir + "/model.safetensors"};
  const std::string index = dir + "/model.safetensors.index.json";
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(read_text_file(index));
  } catch (const nlohmann::json::exception& e) {
    throw Error(index + ": not valid JSON (" + e.what() + ")");
  }
  if (!j.contains("weight_map") || !j["weight_map"].is_object()) throw Error(index + ": missing field 'weight_map'");
  std::set<std::string> shards;
  for (const auto& v : j["weight_map"]) {
    if (!v.is_string()) throw Error(index + ": weight_map values must be file names");
    shards.insert(v.get<std::string>());
  }
  std::vector<std::string> out;
  for (const std::string& s : shards) out.push_back(dir + "/" + s);
  return out;
}

std::string ModelFolder::identity_sha256() const {
  Sha256 h;
  h.update(read_text_file(config_path));
  for (const std::string& path : weight_files()) {
    std::ifstream in(path, std::ios::binary);
    unsigned char len_bytes[8];
    if (!in.read(reinterpret_cast<char*>(len_bytes), 8)) throw Error(path + ": truncated (no safetensors header)");
    uint64_t n = 0;
    for (int i = 7; i >= 0; --i) n = (n << 8) | len_bytes[i];
    if (n > (uint64_t(100) << 20)) throw Error(path + ": safetensors header of " + std::to_string(n) + " bytes is implausible");
    std::string header(n, '\0');
    if (!in.read(header.data(), static_cast<std::streamsize>(n))) throw Error(path + ": truncated safetensors header");
    h.update(len_bytes, 8);
    h.update(header);
  }
  return h.hex();
}

}  // namespace respin
