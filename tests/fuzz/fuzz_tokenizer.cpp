// libFuzzer harness: tokenizer.json loading (model, normalizer, pre-tokenizer, post-processor,
// decoder, added tokens) and, for what loads, encoding and decoding a fixed multilingual text
// and the input itself. Anything but a respin::Error is a finding.
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <string>

#include "core/tokenizer/tokenizer.h"
#include "core/util/error.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::string path = "/dev/shm/respin-fuzz-" + std::to_string(getpid()) + "-tokenizer.json";
  FILE* f = std::fopen(path.c_str(), "wb");
  if (!f) return 0;
  std::fwrite(data, 1, size, f);
  std::fclose(f);
  try {
    respin::Tokenizer tok = respin::Tokenizer::from_file(path);
    for (const std::string& text : {std::string("The café's naïve façade, 東京 ✓ 123\n\ttabs  and  spaces"),
                                    std::string(reinterpret_cast<const char*>(data), size < 256 ? size : 256)}) {
      try {
        std::vector<int> ids = tok.encode(text, /*add_special_tokens=*/true);
        (void)tok.decode(ids, /*skip_special_tokens=*/false);
      } catch (const respin::Error&) {  // e.g. the input text is not UTF-8
      }
    }
  } catch (const respin::Error&) {
  }
  return 0;
}
