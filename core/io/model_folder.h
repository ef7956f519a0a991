// A Hugging Face model folder: config.json, model.safetensors (or sharded with an index) and
// tokenizer.json. Resolves and checks the paths; loading the parts is up to io/ and tokenizer/.
#pragma once

#include <string>
#include <vector>

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
  // The safetensors files holding the weights (one, or the shards the index names), absolute.
  std::vector<std::string> weight_files() const;
  // sha256 over config.json's bytes and each weight file's header (8-byte length + JSON: names,
  // dtypes, shapes, offsets), in file order: the same model copied elsewhere keeps its identity.
  std::string identity_sha256() const;
};

}  // namespace respin
