// Helpers for the end-to-end suites that run the `respin` binary as a user does: a run() that
// captures exit code, stdout and stderr, a small byte-level tokenizer.json, and a fixture with a
// random model folder written by `respin init-model`.
#pragma once

#include <gtest/gtest.h>

#include <string>

#include "tests/test_util.h"

namespace respin::test {

struct Result {
  int code;
  std::string out, err;
};

// Runs `respin ARGS` (in `cwd` when given) with no standard input.
Result run(const std::string& args, const std::string& cwd = "");

// GPT-2 byte-to-unicode symbol of a byte.
std::string byte_symbol(int b);

// A byte-level BPE tokenizer.json with 256 byte tokens and a few merges ("th", "the", " the").
std::string tiny_tokenizer_json();

extern const char* kText;

// tokenizer.json, text.txt and a random 2-layer model folder (hidden 32, 4/2 heads, 64 positions,
// float32) in a fresh directory.
class Cli : public ::testing::Test {
 protected:
  void SetUp() override;
  TempDir dir;
  std::string model;
};

}  // namespace respin::test
