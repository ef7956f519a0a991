#!/usr/bin/env bash
# Fails when a hot operation of the data path is called around core/ops (core/ops/hot_ops.h, "the
# one door"): the linear layers, the activation and KV fake quantizers and the residual correction
# are called through respin::ops, so that a device kernel taking over an op there takes it over
# everywhere. Their definitions (core/quant, core/rotation) and core/ops itself are exempt.
set -euo pipefail
root=${1:-$(cd "$(dirname "$0")/.." && pwd)}
# pattern (extended regex) | the op to call instead
rules=(
  '(^|[^:_[:alnum:]])at::linear\(|ops::linear'
  '(^|[^:_[:alnum:]])fake_quantize_activation(_ste)?\(|ops::fake_quantize_tokens'
  '(^|[^:_[:alnum:]]|respin::)fake_quantize_kv\(|ops::fake_quantize_kv'
  '(^|[^:_[:alnum:]])apply_correction\(|ops::residual_correction'
)
status=0
for rule in "${rules[@]}"; do
  pattern=${rule%|*} instead=${rule##*|}
  hits=$(grep -rnE --include='*.cpp' --include='*.h' "$pattern" "$root/core" "$root/app" "$root/ui" |
           grep -vE '^[^:]*/core/(ops|quant|rotation)/' || true)
  if [[ -n $hits ]]; then
    echo "a hot op called around core/ops; use $instead:" >&2
    echo "$hits" >&2
    status=1
  fi
done
exit $status
