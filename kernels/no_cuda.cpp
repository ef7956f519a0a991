// Builds without CUDA: the same API, reporting that no device is available.
#include "kernels/hadamard.h"

namespace respin::kernels {

KernelStatus hadamard_cuda(const HadamardParams&, void*) {
  return {KernelStatus::NoDevice, "built without CUDA"};
}
KernelStatus hadamard_cuda_host(const HadamardParams&) {
  return {KernelStatus::NoDevice, "built without CUDA"};
}
bool cuda_available() { return false; }
std::string cuda_device_description() { return "built without CUDA"; }
std::vector<std::string> cuda_device_names() { return {}; }
int64_t cuda_memory_in_use_bytes(int) { return -1; }
int64_t cuda_memory_total_bytes(int) { return -1; }

}  // namespace respin::kernels
