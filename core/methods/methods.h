// The four quantization methods and what distinguishes them (docs/methods.md 1-3):
//   rtn        no rotation; weights round-to-nearest (or GPTQ), activations/KV per token.
//   quarot     random Hadamard residual rotation R1 (fixed), plain Walsh-Hadamard head rotation on
//              v/o with an online Hadamard across heads before o_proj, online Hadamards R3 (Q/K
//              after RoPE, when the KV cache is quantized) and R4 (before down_proj).
//   spinquant  R1 (global) and one head rotation per layer learned with Cayley SGD from random
//              Hadamard inits; R3/R4 online; o_proj's input quantized per head (group = head_dim).
//   respin     ReSpinQuant: per-layer residual rotations (attention and MLP input bases, plus the
//              final basis) all initialised from the SAME random Hadamard, per-layer head rotations,
//              R3/R4 online, and a rank-r correction on the skip path of every residual add.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

#include <cstdint>
#include <string>

#include "core/calib/calib_config.h"
#include "core/methods/rotated_model.h"

namespace respin {

// Method and its names: core/calib/calib_config.h.

// diag(s) H / sqrt(n) with signs s from a seeded generator (deterministic across platforms and
// libtorch versions), float64, on the CPU (callers move it; initial_rotations does). Throws respin::Error when no Hadamard of order n is known.
at::Tensor random_hadamard(int64_t n, uint64_t seed);
// Haar-random orthogonal matrix (sign-fixed QR of a seeded Gaussian), float64, on the CPU.
at::Tensor random_orthogonal(int64_t n, uint64_t seed);

struct InitialRotations {
  ResidualRotations rotations;  // float32 leaves (independent tensors; global ones shared)
  std::string residual_init;    // e.g. "random hadamard (paley1(3) x sylvester(64))"
  std::string head_init;
};

// The starting rotations of a rotating method. The residual init is a random Hadamard; when the
// hidden size has no known Hadamard construction it falls back to a random orthogonal matrix and
// says so in residual_init (the run records it). Head rotations need a Hadamard of head_dim.
// Built on the CPU (the same matrices on every device) and returned on `device`, the model's.
InitialRotations initial_rotations(Method m, const ModelConfig& config, uint64_t seed, at::Device device);

// The online transforms of a method given its quantizers (R3 only when the KV cache is quantized,
// as QuaRot and SpinQuant do).
OnlineTransforms method_online_transforms(Method m, const QuantConfig& quant);
// Group size of the activation quantizer on o_proj's input (SpinQuant/ReSpinQuant: per head).
int64_t method_o_proj_group(Method m, const ModelConfig& config);

}  // namespace respin
