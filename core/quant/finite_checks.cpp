// Immediate and deferred NaN/Inf checks (see finite_checks.h).
#include "core/quant/finite_checks.h"

#include <ATen/ATen.h>

#include "core/util/error.h"
#include "core/util/tensor_text.h"

namespace respin {
namespace {

thread_local DeferredFiniteChecks* t_active = nullptr;
thread_local int64_t t_host_reads = 0;

std::string finite_message(const at::Tensor& x, const std::string& what) {
  return what + " contains NaN or Inf values (tensor " + shape_text(x) + "); quantization ranges would be meaningless";
}

}  // namespace

at::Tensor finite_flag(const at::Tensor& x) {
  // min and max propagate NaN and hold an infinity: both finite iff every element is, with no
  // temporary the size of x (isfinite's abs and masks are two more copies of it).
  const at::Tensor d = x.detach();
  if (d.numel() == 0 || !at::isFloatingType(d.scalar_type()))
    return at::ones({}, at::TensorOptions().dtype(at::kBool).device(d.device()));
  return at::isfinite(at::stack({d.min(), d.max()})).all();
}

void check_finite(const at::Tensor& x, const std::string& what) {
  if (x.numel() == 0 || !at::isFloatingType(x.scalar_type())) return;
  if (t_active) {
    t_active->flags_.push_back(finite_flag(x));
    t_active->messages_.push_back(finite_message(x, what));
    return;
  }
  ++t_host_reads;
  if (!finite_flag(x).item<bool>()) throw Error(finite_message(x, what));
}

DeferredFiniteChecks::DeferredFiniteChecks() : outer_(t_active) { t_active = this; }

DeferredFiniteChecks::~DeferredFiniteChecks() { t_active = outer_; }

double DeferredFiniteChecks::read(const at::Tensor& value) {
  if (flags_.empty() && !value.defined()) return 0.0;
  ++t_host_reads;
  // One tensor on the host: the flags as 0/1 and the value last, in double.
  std::vector<at::Tensor> parts;
  const at::Device device = value.defined() ? value.device() : flags_.front().device();
  if (!flags_.empty()) parts.push_back(at::stack(flags_).to(device, at::kDouble));
  if (value.defined()) parts.push_back(value.detach().to(device, at::kDouble).reshape({1}));
  const at::Tensor host = at::cat(parts).to(at::kCPU).contiguous();
  const double* p = host.data_ptr<double>();
  std::vector<std::string> messages = std::move(messages_);
  const size_t n = flags_.size();
  flags_.clear();
  messages_.clear();
  for (size_t i = 0; i < n; ++i)
    if (p[i] == 0.0) throw Error(messages[i]);
  return value.defined() ? p[n] : 0.0;
}

int64_t DeferredFiniteChecks::host_reads() { return t_host_reads; }

}  // namespace respin
