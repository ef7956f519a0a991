// Trains a byte-level BPE tokenizer (GPT-2 / LLaMA-3 style: GPT-2 pre-tokenizer regex, bytes
// mapped to printable code points, merges learned by pair frequency) and writes it as a standard
// Hugging Face tokenizer.json that Tokenizer (and the HF libraries) load.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/util/run_control.h"

namespace respin {

struct BpeTrainOptions {
  int vocab_size = 4096;          // 256 byte tokens + merges + special tokens
  int64_t min_pair_frequency = 2;  // stop early when no pair is this frequent
  std::vector<std::string> special_tokens = {"<|endoftext|>"};  // appended after the merges
};

struct BpeTrainResult {
  std::string tokenizer_json;  // the whole file
  int vocab_size = 0;
  int num_merges = 0;
  int64_t unique_words = 0;
  int64_t words = 0;
};

// Deterministic: the same text and options give the same file. Ties between equally frequent
// pairs go to the smaller (left id, right id). Progress phase "tokenizer" (done = merges).
BpeTrainResult train_byte_level_bpe(const std::string& text, const BpeTrainOptions& options,
                                    RunControl* control = nullptr);

}  // namespace respin
