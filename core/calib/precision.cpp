// Run precision (see precision.h).
#include "core/calib/precision.h"

namespace respin {

Precision resolve_precision(Precision requested, bool cuda, DType stored) {
  if (requested != Precision::Auto) return requested;
  return cuda && stored == DType::BF16 ? Precision::BFloat16 : Precision::Float32;
}

int64_t element_bytes(Precision resolved) { return resolved == Precision::BFloat16 ? 2 : 4; }

}  // namespace respin
