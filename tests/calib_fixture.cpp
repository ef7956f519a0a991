// Shared calibration set-up (see calib_fixture.h).
#include "tests/calib_fixture.h"

#include "core/io/atomic_file.h"
#include "core/model/random_init.h"
#include "core/model/weights.h"
#include "core/tokenizer/bpe_trainer.h"

namespace respin::test {

void write_calibration_fixture(const TempDir& dir) {
  const std::string text = read_text_file("/usr/share/common-licenses/GPL-3");  // Debian base-files
  const size_t cut = text.size() * 2 / 3;
  write_file_atomically(dir.file("calib.txt"), text.substr(0, cut));
  write_file_atomically(dir.file("eval.txt"), text.substr(cut));
  BpeTrainOptions bo;
  bo.vocab_size = 320;
  BpeTrainResult tok = train_byte_level_bpe(text, bo);
  write_file_atomically(dir.file("tokenizer.json"), tok.tokenizer_json);
  write_fixture_model(dir, "model", tok.vocab_size, 4, false);
}

void write_fixture_model(const TempDir& dir, const std::string& name, int64_t vocab, uint64_t seed, bool tied) {
  ModelConfig c = make_model_config("llama", 64, 96, 2, 4, 2, vocab, 64);
  c.tie_word_embeddings = tied;
  RandomInitOptions ro;
  ro.seed = seed;
  ro.std = 0.1;
  ro.norm_jitter = 0.3;
  SaveOptions so;
  so.file_dtype = DType::F32;
  so.tokenizer_json = dir.file("tokenizer.json");
  save_model(dir.file(name), c, random_weights(c, ro), so);
}

CalibConfig small_calib_config(const TempDir& dir, const std::string& method, int bits) {
  CalibConfig c;
  c.model = dir.file("model");
  c.method = method_from_name(method);
  c.wbits = c.abits = c.kvbits = bits;
  c.calib_text = dir.file("calib.txt");
  c.eval_text = dir.file("eval.txt");
  c.samples = 8;
  c.seq_len = 32;
  c.iters = 3;
  c.lr = 1.0;
  c.batch = 2;
  c.eval_windows = 20;
  c.stats_windows = 2;
  c.seed = 1;
  c.threads = 1;
  return c;
}

}  // namespace respin::test
