// A Hugging Face model folder: config.json, model.safetensors (or sharded with an index) and
// tokenizer.json. Resolves and checks the paths; loading the parts is up to io/ and tokenizer/.
#pragma once

#include <string>

namespace respin {

struct ModelFolder {
  std::string dir;
  std::string config_path;     // always present
  std::string tokenizer_path;  // empty if the folder has no tokenizer.json
  bool sharded = false;        // model.safetensors.index.json present

  // Throws respin::Error naming the folder and what is missing.
  static ModelFolder open(const std::string& dir);
  // Throws if tokenizer_path is empty.
  const std::string& require_tokenizer() const;
};

}  // namespace respin
