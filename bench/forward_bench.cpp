// Forward-pass benchmark on CPU (and whatever the linked libtorch runs on): tokens/s and achieved
// GFLOP/s in float32 and bfloat16, each against the machine's matmul peak measured in the same
// run (a square GEMM of the same dtype), so the figures are comparable across machines.
//
// Usage: forward_bench [--model DIR] [--seq-len T] [--batch B] [--threads N] [--reps R]
// Without --model a randomly initialised LLaMA-architecture model of the default shape is used
// (hidden 512, 8 layers, 8 heads / 4 KV heads, intermediate 1536, vocab 4096).
#include <ATen/ATen.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "core/model/random_init.h"
#include "core/model/weights.h"
#include "core/util/threads.h"

using namespace respin;

namespace {

double seconds_of(const std::function<void()>& fn, int reps) {
  fn();  // warm-up
  double best = 1e30;
  for (int r = 0; r < reps; ++r) {
    auto t0 = std::chrono::steady_clock::now();
    fn();
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  return best;
}

double matmul_peak_gflops(at::ScalarType dtype, int reps) {
  const int64_t n = 2048;
  at::Tensor a = at::randn({n, n}).to(dtype), b = at::randn({n, n}).to(dtype);
  double s = seconds_of([&] { at::mm(a, b); }, reps);
  return 2.0 * n * n * n / s / 1e9;
}

// Useful FLOPs of one forward over B x T tokens: 2 per multiply-add of every linear layer, and
// causal attention (token t attends to t keys: QK^T and PV cost 4 * q_dim * t, (T+1)/2 keys on
// average).
double forward_flops(const ModelConfig& c, int64_t B, int64_t T) {
  const double d = c.hidden_size, q = c.q_dim(), kv = c.kv_dim(), f = c.intermediate_size;
  const double linear = d * q + 2 * d * kv + q * d + 3 * d * f;
  const double attention = (T + 1) * q;  // x 2 below = 4 * q * (T + 1) / 2
  return 2.0 * B * T * (c.num_hidden_layers * (linear + attention) + d * c.vocab_size);
}

}  // namespace

int main(int argc, char** argv) {
  std::string model_dir;
  int64_t T = 512, B = 2;
  int threads = 0, reps = 3;
  for (int i = 1; i < argc; ++i) {
    auto next = [&]() -> const char* {
      if (i + 1 >= argc) { std::fprintf(stderr, "error: %s needs a value\n", argv[i]); std::exit(2); }
      return argv[++i];
    };
    if (!std::strcmp(argv[i], "--model")) model_dir = next();
    else if (!std::strcmp(argv[i], "--seq-len")) T = std::atoll(next());
    else if (!std::strcmp(argv[i], "--batch")) B = std::atoll(next());
    else if (!std::strcmp(argv[i], "--threads")) threads = std::atoi(next());
    else if (!std::strcmp(argv[i], "--reps")) reps = std::atoi(next());
    else { std::fprintf(stderr, "usage: forward_bench [--model DIR] [--seq-len T] [--batch B] [--threads N] [--reps R]\n"); return 2; }
  }
  set_compute_threads(threads);
  at::manual_seed(0);

  ModelConfig config;
  ModelWeights f32_weights;
  if (model_dir.empty()) {
    config = make_model_config("llama", 512, 1536, 8, 8, 4, 4096, 2048);
    f32_weights = random_weights(config);
  } else {
    LlamaModel m = load_model(model_dir, {at::kFloat});
    config = m.config();
    f32_weights = m.weights();
  }
  const double flops = forward_flops(config, B, T);
  at::Tensor ids = at::randint(config.vocab_size, {B, T}, at::kLong);

  std::printf("forward_bench: %s, %.2fM parameters, batch %lld x %lld tokens, %d threads\n",
              model_dir.empty() ? "random-init model" : model_dir.c_str(),
              config.parameter_count() / 1e6, static_cast<long long>(B), static_cast<long long>(T),
              compute_threads());
  std::printf("%-6s %14s %12s %12s %14s %12s\n", "dtype", "matmul GF/s", "tokens/s", "fwd GF/s",
              "frac of peak", "vs f32");
  double f32_tps = 0;
  for (at::ScalarType dtype : {at::kFloat, at::kBFloat16}) {
    LlamaModel model(config, cast_weights(f32_weights, dtype));
    const double peak = matmul_peak_gflops(dtype, reps);
    const double s = seconds_of([&] { model.forward(ids); }, reps);
    const double tps = B * T / s;
    const double gflops = flops / s / 1e9;
    if (dtype == at::kFloat) f32_tps = tps;
    std::printf("%-6s %14.1f %12.0f %12.1f %13.1f%% %11.2fx\n", dtype == at::kFloat ? "f32" : "bf16",
                peak, tps, gflops, 100.0 * gflops / peak, tps / f32_tps);
  }
  return 0;
}
