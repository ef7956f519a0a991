// CUDA fast Walsh-Hadamard transform: one block per row, the row staged in shared memory,
// log2(n) butterfly stages separated by block barriers (see hadamard.h).
#include <cuda_runtime.h>

#include "kernels/hadamard.h"

namespace respin::kernels {

namespace {

__global__ void fwht_rows_kernel(float* data, int64_t n, float scale) {
  extern __shared__ float row[];
  float* x = data + static_cast<int64_t>(blockIdx.x) * n;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) row[i] = x[i];
  __syncthreads();
  for (int64_t h = 1; h < n; h *= 2) {
    // Each of the n/2 butterflies (j, j + h) with j's bit h clear.
    for (int64_t t = threadIdx.x; t < n / 2; t += blockDim.x) {
      const int64_t j = (t / h) * 2 * h + (t % h);
      const float a = row[j], b = row[j + h];
      row[j] = a + b;
      row[j + h] = a - b;
    }
    __syncthreads();
  }
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) x[i] = row[i] * scale;
}

KernelStatus from_cuda(cudaError_t err, const char* what) {
  if (err == cudaSuccess) return {};
  return {KernelStatus::CudaError, std::string(what) + ": " + cudaGetErrorString(err)};
}

}  // namespace

KernelStatus hadamard_cuda(const HadamardParams& p, void* stream) {
  if (!is_power_of_two(p.n) || p.n > kHadamardCudaMaxN)
    return {KernelStatus::Unsupported, "hadamard_cuda: n must be a power of two <= 8192"};
  if (p.rows == 0) return {};
  const int threads = static_cast<int>(p.n / 2 < 256 ? (p.n / 2 > 0 ? p.n / 2 : 1) : 256);
  const size_t smem = static_cast<size_t>(p.n) * sizeof(float);
  fwht_rows_kernel<<<static_cast<unsigned>(p.rows), threads, smem,
                     static_cast<cudaStream_t>(stream)>>>(p.data, p.n, p.scale);
  return from_cuda(cudaGetLastError(), "hadamard_cuda launch");
}

KernelStatus hadamard_cuda_host(const HadamardParams& p) {
  if (!cuda_available()) return {KernelStatus::NoDevice, "no CUDA device"};
  const size_t bytes = static_cast<size_t>(p.rows * p.n) * sizeof(float);
  float* dev = nullptr;
  KernelStatus s = from_cuda(cudaMalloc(&dev, bytes), "cudaMalloc");
  if (!s.ok()) return s;
  s = from_cuda(cudaMemcpy(dev, p.data, bytes, cudaMemcpyHostToDevice), "copy in");
  if (s.ok()) {
    HadamardParams d = p;
    d.data = dev;
    s = hadamard_cuda(d, nullptr);
  }
  if (s.ok()) s = from_cuda(cudaDeviceSynchronize(), "hadamard_cuda");
  if (s.ok()) s = from_cuda(cudaMemcpy(p.data, dev, bytes, cudaMemcpyDeviceToHost), "copy out");
  cudaFree(dev);
  return s;
}

}  // namespace respin::kernels
