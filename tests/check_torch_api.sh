#!/usr/bin/env bash
# Fails when the tree uses a libtorch API known to be missing from one of the two libtorch lines the
# project builds against (Debian's 1.13 here, PyTorch 2.x on GPU machines), so that a CPU-only CI
# catches what would only break the GPU build. docs/gpu.md lists the differences met so far.
set -euo pipefail
root=${1:-$(cd "$(dirname "$0")/.." && pwd)}
# pattern | what to use instead
rules=(
  'at::NoGradGuard|c10::NoGradGuard from <c10/core/GradMode.h> (at::NoGradGuard is not declared by the 2.x headers)'
  'remove_all(|respin::remove_tree (core/util/fs.h): PyTorch 2.x exports its own std::filesystem iterators, and remove_all crashed against them'
  'directory_iterator|respin::list_directory (core/util/fs.h): PyTorch 2.x exports its own std::filesystem iterators'
  'fs::is_empty|respin::directory_is_empty (core/util/fs.h): std::filesystem::is_empty iterates the folder'
  'filesystem::is_empty|respin::directory_is_empty (core/util/fs.h): std::filesystem::is_empty iterates the folder'
)
status=0
# The fused attention exists from 2.1 only: one guarded use, in core/model/llama.cpp.
sdpa=$(grep -rnF --include='*.cpp' --include='*.h' --include='*.cu' "scaled_dot_product_attention(" \
         "$root/core" "$root/app" "$root/ui" "$root/kernels" "$root/tests" "$root/bench" | grep -v '^[^:]*core/model/llama.cpp:' || true)
if [[ -n $sdpa ]]; then
  echo "uses scaled_dot_product_attention outside core/model/llama.cpp's RESPIN_HAS_SDPA guard (absent from libtorch 1.13):" >&2
  echo "$sdpa" >&2
  status=1
fi
if ! grep -q '^#ifdef RESPIN_HAS_SDPA' "$root/core/model/llama.cpp"; then
  echo "core/model/llama.cpp: the fused attention must stay under #ifdef RESPIN_HAS_SDPA" >&2
  status=1
fi
for rule in "${rules[@]}"; do
  pattern=${rule%%|*}
  hits=$(grep -rnF --include='*.cpp' --include='*.h' --include='*.cu' --exclude=fs.h --exclude=fs.cpp "$pattern" \
           "$root/core" "$root/app" "$root/ui" "$root/kernels" "$root/tests" "$root/bench" || true)
  if [[ -n $hits ]]; then
    echo "uses $pattern; use ${rule#*|}:" >&2
    echo "$hits" >&2
    status=1
  fi
done
exit $status
