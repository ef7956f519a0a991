// Tokenizer encode throughput: MB/s of a tokenizer.json on a text file, first pass (cold per-word
// cache) and second pass (warm), with the warm/cold ratio measured in the same run.
// Usage: tokenizer_bench TOKENIZER_JSON TEXT_FILE
#include <chrono>
#include <cstdio>

#include "core/io/atomic_file.h"
#include "core/tokenizer/tokenizer.h"

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: tokenizer_bench TOKENIZER_JSON TEXT_FILE\n");
    return 2;
  }
  try {
    respin::Tokenizer tok = respin::Tokenizer::from_file(argv[1]);
    const std::string text = respin::read_text_file(argv[2]);
    double seconds[2];
    size_t n = 0;
    for (double& s : seconds) {
      auto t0 = std::chrono::steady_clock::now();
      n = tok.encode(text).size();
      s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    }
    std::printf("tokenizer_bench: %s, %s (%.2f MB -> %zu tokens, %s)\n", argv[1], argv[2], text.size() / 1e6, n,
                tok.info().kind.c_str());
    std::printf("%-6s %10s %10s\n", "pass", "MB/s", "vs cold");
    std::printf("%-6s %10.2f %9.2fx\n", "cold", text.size() / 1e6 / seconds[0], 1.0);
    std::printf("%-6s %10.2f %9.2fx\n", "warm", text.size() / 1e6 / seconds[1], seconds[0] / seconds[1]);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
