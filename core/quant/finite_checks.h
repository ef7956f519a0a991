// NaN/Inf checks of quantizer inputs, immediate or deferred (docs/methods.md 2.3, host reads).
//
// A quantizer refuses a NaN or Inf input (its ranges would be meaningless). Read back one by one,
// each check is a host-device synchronisation: about 550 per rotation-learning step on a GPU.
// While a DeferredFiniteChecks is alive on a thread, the checks made on that thread are queued
// on the device instead and read back together, once, by read(): the first failure's message is
// then the same one the immediate check would have thrown.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>
#include <vector>

namespace respin {

// Throws respin::Error "<what> contains NaN or Inf values (tensor [..]); ..." now, or queues the
// check when a DeferredFiniteChecks is active on this thread.
void check_finite(const at::Tensor& x, const std::string& what);
// A one-element bool tensor on x's device: every element of x is finite (no host read).
at::Tensor finite_flag(const at::Tensor& x);

class DeferredFiniteChecks {
 public:
  DeferredFiniteChecks();
  ~DeferredFiniteChecks();
  DeferredFiniteChecks(const DeferredFiniteChecks&) = delete;
  DeferredFiniteChecks& operator=(const DeferredFiniteChecks&) = delete;

  // Reads the queued checks and `value` (a one-element tensor, e.g. the step's loss) in one
  // transfer; throws the first failed check's error, else returns value as a double. Clears the
  // queue. `value` may be undefined (then 0 is returned).
  double read(const at::Tensor& value = {});
  size_t pending() const { return flags_.size(); }

  // Host reads of finite checks made on this thread since it started (immediate ones count one
  // each, a read() one): what the tests use to see that a step reads back once.
  static int64_t host_reads();

 private:
  friend void check_finite(const at::Tensor& x, const std::string& what);
  std::vector<at::Tensor> flags_;  // 0-dim bool, on the checked tensor's device
  std::vector<std::string> messages_;
  DeferredFiniteChecks* outer_ = nullptr;
};

}  // namespace respin
