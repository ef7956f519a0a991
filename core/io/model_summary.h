// What a model folder is, in one place for `respin info` and the workbench's model panel
// (torch-free): architecture, sizes, parameter count, dtype, tokenizer, and for every width a
// rotation method rotates, which Hadamard construction it gets (or that none is known and a
// random orthogonal matrix is used instead).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "core/io/model_config.h"
#include "core/tokenizer/tokenizer.h"

namespace respin {

struct HadamardSummary {
  std::string role;          // "hidden size (R1)", "intermediate size (R4)", "head dim (R2, R3)", "heads"
  int64_t order = 0;
  std::string construction;  // e.g. "goethals_seidel(43) x sylvester(64)"; empty: none known
  // "11008 = 172 x 64, Goethals-Seidel(43) x Sylvester(64)" or
  // "116: no known construction: random orthogonal fallback".
  std::string text;
};

struct ModelSummary {
  std::string folder;
  std::string config_path;
  bool sharded = false;
  int64_t weight_bytes = 0;  // size of the safetensors files
  ModelConfig config;
  int64_t parameters = 0;
  std::optional<TokenizerInfo> tokenizer;  // absent without tokenizer.json
  std::vector<HadamardSummary> hadamards;
};

// Throws respin::Error naming the file and the problem (not a model folder, a config it refuses).
ModelSummary summarize_model(const std::string& dir);
// The HadamardSummary::text of order n.
std::string hadamard_summary_text(int64_t n);

}  // namespace respin
