# Quantization module (fake quantizers for activations, KV cache and weights); paths relative
# to core/. Needs libtorch, so it belongs in respin_core.
set(RESPIN_QUANT_SOURCES quant/quantizer.cpp quant/finite_checks.cpp quant/gptq.cpp)
