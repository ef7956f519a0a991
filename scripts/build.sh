#!/usr/bin/env bash
# Configures and builds with the CUDA preset when nvcc is available, else the CPU preset.
# Prints the build directory on stdout. Usage: scripts/build.sh [PRESET]
set -euo pipefail
cd "$(dirname "$0")/.."
preset=${1:-}
if [[ -z $preset ]]; then
  if command -v nvcc >/dev/null 2>&1 || [[ -x /usr/local/cuda/bin/nvcc ]]; then preset=cuda; else preset=cpu; fi
fi
jobs=$(nproc)
if [[ ! -f build/$preset/build.ninja ]]; then
  cmake --preset "$preset" >build-$preset.configure.log 2>&1 || { cat build-$preset.configure.log >&2; exit 1; }
  rm -f build-$preset.configure.log
fi
cmake --build --preset "$preset" -j "$jobs" >&2
echo "build/$preset"
