// What a run holds its weights and runs its forward in (docs/methods.md 1.9): the requested
// precision resolved against the device and the dtype the model is stored in.
#pragma once

#include <cstdint>

#include "core/calib/calib_config.h"
#include "core/io/safetensors.h"

namespace respin {

// Float32 or BFloat16, never Auto: `auto` is bfloat16 on CUDA for a model stored in bfloat16 (the
// weights stay as stored, the matmuls run on the tensor cores with float32 accumulation) and
// float32 otherwise (a float16 or float32 model, and the CPU path, which is the float32 reference).
Precision resolve_precision(Precision requested, bool cuda, DType stored);

// Bytes per element of weights and activations held in a resolved precision.
int64_t element_bytes(Precision resolved);

}  // namespace respin
