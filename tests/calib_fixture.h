// A small calibration set-up shared by the calibration suites (CPU and CUDA): a random 2-layer
// LLaMA model folder with a byte-level BPE tokenizer trained on real text (Debian's GPL-3 copy),
// calibration and evaluation text files, and a fast calibration config over them.
#pragma once

#include <string>

#include "core/calib/calib_config.h"
#include "tests/test_util.h"

namespace respin::test {

// Writes calib.txt, eval.txt, tokenizer.json and model/ into `dir`: hidden 64, head_dim 16,
// intermediate 96 = 12 * 8 (a non-power-of-two down_proj Hadamard), 4 heads / 2 KV heads.
void write_calibration_fixture(const TempDir& dir);
// The fixture's model shapes (norms jittered by 0.3) with `vocab` tokens, into dir/name, using
// dir's tokenizer.json: write_calibration_fixture's model is ("model", its vocabulary, seed 4, untied).
void write_fixture_model(const TempDir& dir, const std::string& name, int64_t vocab, uint64_t seed, bool tied);

// 8 windows of 32 tokens, 3 learning steps of 2 windows, 20 evaluation windows, seed 1, 1 thread.
CalibConfig small_calib_config(const TempDir& dir, const std::string& method, int bits);

}  // namespace respin::test
