// The CUDA Walsh-Hadamard kernel (kernels/hadamard.cu) against the device's own copy bandwidth,
// measured in the same run: a device-to-device copy of the same bytes is the memory-bound floor
// (the transform reads and writes each element once). Prints GB/s (bytes read + written) and the
// fraction of the copy's rate, per row length. Median of the repetitions, CUDA events, inputs
// random (never zeros), one warm-up each.
// Usage: hadamard_bench [--mib M] [--reps R]      (M: MiB per buffer, default 512)
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

#include "kernels/hadamard.h"

namespace {

void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) {
    std::fprintf(stderr, "hadamard_bench: %s: %s\n", what, cudaGetErrorString(e));
    std::exit(1);
  }
}

template <class F>
float median_ms(F&& fn, int reps) {
  cudaEvent_t a, b;
  check(cudaEventCreate(&a), "event");
  check(cudaEventCreate(&b), "event");
  fn();  // warm-up
  check(cudaDeviceSynchronize(), "warm-up");
  std::vector<float> ms;
  for (int r = 0; r < reps; ++r) {
    check(cudaEventRecord(a), "record");
    fn();
    check(cudaEventRecord(b), "record");
    check(cudaEventSynchronize(b), "sync");
    float t = 0;
    check(cudaEventElapsedTime(&t, a, b), "elapsed");
    ms.push_back(t);
  }
  std::sort(ms.begin(), ms.end());
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  return ms[ms.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  size_t mib = 512;
  int reps = 20;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!std::strcmp(argv[i], "--mib")) mib = std::strtoul(argv[i + 1], nullptr, 10);
    else if (!std::strcmp(argv[i], "--reps")) reps = std::atoi(argv[i + 1]);
  }
  if (!respin::kernels::cuda_available()) {
    std::fprintf(stderr, "hadamard_bench: no CUDA device\n");
    return 77;
  }
  const size_t count = mib * (size_t(1) << 20) / sizeof(float);
  std::vector<float> host(count);
  std::mt19937 gen(7);
  std::normal_distribution<float> nd;
  for (auto& v : host) v = nd(gen);
  float *src = nullptr, *dst = nullptr;
  check(cudaMalloc(&src, count * sizeof(float)), "cudaMalloc");
  check(cudaMalloc(&dst, count * sizeof(float)), "cudaMalloc");
  check(cudaMemcpy(src, host.data(), count * sizeof(float), cudaMemcpyHostToDevice), "copy in");
  const double bytes = 2.0 * count * sizeof(float);
  const float copy_ms = median_ms([&] {
    check(cudaMemcpy(dst, src, count * sizeof(float), cudaMemcpyDeviceToDevice), "d2d");
  }, reps);
  const double copy_gbs = bytes / (copy_ms * 1e-3) / 1e9;
  std::printf("%s; %zu MiB per buffer, median of %d\n", respin::kernels::cuda_device_description().c_str(), mib, reps);
  std::printf("| %-22s | %9s | %8s | %9s |\n", "operation", "ms", "GB/s", "of copy");
  std::printf("| %-22s | %9.3f | %8.0f | %9.2f |\n", "copy (baseline)", copy_ms, copy_gbs, 1.0);
  for (int64_t n : {int64_t{128}, int64_t{1024}, int64_t{4096}, int64_t{8192}}) {
    const int64_t rows = static_cast<int64_t>(count) / n;
    respin::kernels::HadamardParams p{dst, rows, n, 1.0f / std::sqrt(float(n))};
    // Each repetition transforms a fresh copy of the random input in place (the copy is timed
    // separately above and subtracted).
    const float ms = median_ms([&] {
      check(cudaMemcpy(dst, src, count * sizeof(float), cudaMemcpyDeviceToDevice), "d2d");
      auto st = respin::kernels::hadamard_cuda(p, nullptr);
      if (!st.ok()) { std::fprintf(stderr, "hadamard_bench: %s\n", st.message.c_str()); std::exit(1); }
    }, reps) - copy_ms;
    // Spot check of the first row against the explicit Sylvester product (H[i][j] = (-1)^popcount(i & j)),
    // in double; the kernel's tests compare it with core's reference on every size (test_kernels_cuda).
    std::vector<float> got(n);
    std::vector<double> row(n, 0.0);
    for (int64_t j = 0; j < n; ++j) {
      for (int64_t i = 0; i < n; ++i) row[j] += (__builtin_popcountll(i & j) % 2 ? -1.0 : 1.0) * host[i];
      row[j] *= p.scale;
    }
    check(cudaMemcpy(got.data(), dst, n * sizeof(float), cudaMemcpyDeviceToHost), "copy out");
    double err = 0, ref = 0;
    for (int64_t i = 0; i < n; ++i) { err += (got[i] - row[i]) * (got[i] - row[i]); ref += row[i] * row[i]; }
    char name[64];
    std::snprintf(name, sizeof name, "hadamard n=%lld", static_cast<long long>(n));
    std::printf("| %-22s | %9.3f | %8.0f | %9.2f | rel. error %.1e\n", name, ms, bytes / (ms * 1e-3) / 1e9,
                (bytes / (ms * 1e-3) / 1e9) / copy_gbs, std::sqrt(err / ref));
  }
  cudaFree(src);
  cudaFree(dst);
  return 0;
}
