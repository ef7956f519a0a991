// CUDA caching allocator statistics (see device_memory.h).
#include "core/util/device_memory.h"

#ifdef RESPIN_HAVE_C10_CUDA
#include <c10/cuda/CUDACachingAllocator.h>
#endif

namespace respin {

#ifdef RESPIN_HAVE_C10_CUDA
namespace {
// Index 0 of each statistics array is the aggregate over the allocator's pools.
constexpr size_t kAggregate = 0;
}  // namespace

bool device_peak_available() { return true; }

void reset_device_peak(at::Device device) {
  if (device.is_cuda()) c10::cuda::CUDACachingAllocator::resetPeakStats(device.index() < 0 ? 0 : device.index());
}

int64_t device_peak_allocated_bytes(at::Device device) {
  if (!device.is_cuda()) return -1;
  return c10::cuda::CUDACachingAllocator::getDeviceStats(device.index() < 0 ? 0 : device.index())
      .allocated_bytes[kAggregate]
      .peak;
}

int64_t device_allocated_bytes(at::Device device) {
  if (!device.is_cuda()) return -1;
  return c10::cuda::CUDACachingAllocator::getDeviceStats(device.index() < 0 ? 0 : device.index())
      .allocated_bytes[kAggregate]
      .current;
}
#else
bool device_peak_available() { return false; }
void reset_device_peak(at::Device) {}
int64_t device_peak_allocated_bytes(at::Device) { return -1; }
int64_t device_allocated_bytes(at::Device) { return -1; }
#endif

}  // namespace respin
