// Fast Walsh-Hadamard transform over the last dimension of a row-major [rows, n] float matrix,
// n a power of two, in place: x <- scale * x H_n (Sylvester ordering, H_n entries +-1; with
// scale = 1/sqrt(n) the transform is orthonormal). Its CPU twin is core's HadamardTransform
// (core/ops/hot_ops.h ops::hadamard), the one Walsh-Hadamard reference. No torch, no Qt.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace respin::kernels {

struct HadamardParams {
  float* data = nullptr;  // device pointer for hadamard_cuda, host pointer for hadamard_cuda_host
  int64_t rows = 0;
  int64_t n = 0;          // power of two
  float scale = 1.0f;
};

struct KernelStatus {
  enum Code { Ok, NoDevice, Unsupported, CudaError } code = Ok;
  std::string message;
  bool ok() const { return code == Ok; }
};

bool is_power_of_two(int64_t n);

// Largest n the CUDA kernel handles (one row per block, row held in shared memory).
constexpr int64_t kHadamardCudaMaxN = 8192;

// CUDA: `p.data` is device memory; `stream` is a cudaStream_t (nullptr = default stream).
KernelStatus hadamard_cuda(const HadamardParams& p, void* stream = nullptr);
// CUDA on host memory (copies in, runs, copies back, synchronizes): for tests and tools.
KernelStatus hadamard_cuda_host(const HadamardParams& p);

// Whether a usable CUDA device is present (false in builds without CUDA), and a description.
bool cuda_available();
std::string cuda_device_description();
// One line per visible CUDA device, in index order ("NVIDIA H200 (sm_90, 143155 MiB)"); empty
// without a device or in builds without CUDA.
std::vector<std::string> cuda_device_names();
// Memory in use on CUDA device 0 (total - free, as the driver reports it, all processes), or -1
// without a device. libtorch's caching allocator keeps what it has reserved, so read at the end of
// a run this approximates the run's peak reservation plus the CUDA context.
int64_t cuda_memory_in_use_bytes(int device = 0);
// Total memory of CUDA device `device` as the driver reports it, or -1 without a device.
int64_t cuda_memory_total_bytes(int device = 0);

}  // namespace respin::kernels
