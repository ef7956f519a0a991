#!/usr/bin/env bash
# Sets up, builds and runs the whole test suite: every ctest label (unit, slow, gpu: GPU tests
# report "skipped" without a device), then the torch-free suites again under ASan + UBSan, then a
# short libFuzzer run of each parser harness (RESPIN_FUZZ_SECONDS each, default 20).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(nproc)}
export QT_QPA_PLATFORM=offscreen

build=$(scripts/build.sh)
ctest --test-dir "$build" --output-on-failure -j "$(nproc)" --timeout 900

echo "== sanitizer build (ASan + UBSan): safetensors, config, tokenizer, kernels reference"
scripts/build.sh asan >/dev/null
ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
  ctest --test-dir build/asan --output-on-failure -j "$(nproc)" --timeout 900

echo "== fuzzing (libFuzzer + ASan + UBSan): safetensors, config.json, tokenizer.json"
if [[ ! -f build/fuzz/build.ninja ]]; then
  cmake --preset fuzz -DRESPIN_FUZZ_SECONDS="${RESPIN_FUZZ_SECONDS:-20}" >/dev/null
fi
cmake --build --preset fuzz -j "$(nproc)" >/dev/null
ctest --test-dir build/fuzz -L fuzz --output-on-failure --timeout 900
