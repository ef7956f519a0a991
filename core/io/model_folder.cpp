// Model folder discovery (see model_folder.h).
#include "core/io/model_folder.h"

#include <sys/stat.h>

#include "core/util/error.h"

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

}  // namespace respin
