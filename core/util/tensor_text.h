// Text for error messages about tensors: shapes as "[2, 3]" and numbers in their shortest form.
#pragma once

#include <ATen/core/Tensor.h>

#include <sstream>
#include <string>

namespace respin {

inline std::string shape_text(at::IntArrayRef sizes) {
  std::string s = "[";
  for (size_t i = 0; i < sizes.size(); ++i) s += (i ? ", " : "") + std::to_string(sizes[i]);
  return s + "]";
}

inline std::string shape_text(const at::Tensor& t) { return shape_text(t.sizes()); }

// 0.9, 2, nan: shorter than std::to_string's fixed 6 decimals.
inline std::string number_text(double v) {
  std::ostringstream s;
  s << v;
  return s.str();
}

}  // namespace respin
