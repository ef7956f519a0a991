// The CUDA caching allocator's peak, for the measured side of the memory plan on a GPU
// (docs/methods.md 1.8): libtorch's own count of the bytes its tensors hold, not the driver's
// total (which also has the CUDA context and what the cache keeps reserved).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace respin {

// Whether this build can read the allocator's statistics (libtorch built with CUDA, c10_cuda
// linked); false in CPU-only builds such as Debian's libtorch.
bool device_peak_available();
// Starts a new peak on a CUDA `device` (no-op elsewhere).
void reset_device_peak(at::Device device);
// Bytes allocated through libtorch on a CUDA `device`: the peak since the last reset and now; -1
// where unavailable.
int64_t device_peak_allocated_bytes(at::Device device);
int64_t device_allocated_bytes(at::Device device);

}  // namespace respin
