#!/usr/bin/env bash
# Memory of each method on random LLaMA-shaped models of three sizes (hidden 512 / 1024 / 2048, 8
# layers, bf16 files written by `respin init-model`): the measured peak resident memory above the
# process's size at the run's start (run.json memory.measured_bytes, the kernel's high-water
# mark reset at each phase) as a multiple of the bf16 model file, the plan's prediction of the
# same peak, and their ratio. Prints a markdown table and writes it to OUT/memory-PRECISION.md.
#
#   bench/memory_rows.sh [--sizes "512 1024 2048"] [--precision float32|bfloat16] [--rows "quarot,..."]
#                        [--out DIR] [--respin BIN] [--threads N] [--dry-run]
#
# Rows per size: QuaRot (RTN weights), QuaRot + GPTQ over 8 windows, both again and RTN a decoder
# layer at a time (--streaming layers), SpinQuant and ReSpinQuant
# r=32 learning one step of 8 windows x 512 tokens checkpointed in micro-batches of 1, and (where
# it fits this machine) SpinQuant keeping the whole step's graph. Every row is W4A4KV4 and
# evaluates 1 window. --dry-run prints the plans only (`respin plan`), which is how rows that do
# not fit here are sized. --precision is calibrate's (default float32, the CPU's reference);
# --rows keeps the rows whose names are listed (comma-separated).
set -euo pipefail

here="$(cd "$(dirname "$0")/.." && pwd)"
sizes="512 1024 2048"
out=/tmp/respin-memory-rows
respin=""
threads=0
dry=0
precision=float32
only=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --sizes) sizes="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --respin) respin="$2"; shift 2 ;;
    --threads) threads="$2"; shift 2 ;;
    --dry-run) dry=1; shift ;;
    --precision) precision="$2"; shift 2 ;;
    --rows) only="$2"; shift 2 ;;
    *) echo "memory_rows: unknown option $1" >&2; exit 2 ;;
  esac
done
if [[ -z "$respin" ]]; then
  for b in "$here/build/cuda/app/respin" "$here/build/cpu/app/respin"; do [[ -x $b ]] && respin=$b && break; done
fi
[[ -x "$respin" ]] || { echo "memory_rows: no respin binary (build first, or pass --respin)" >&2; exit 1; }
mkdir -p "$out"
tok="$here/resources/models/small/tokenizer.json"

model_of() {  # size -> folder (written once)
  local h=$1 dir="$out/model-$1"
  if [[ ! -f $dir/config.json ]]; then
    local heads=$((h / 64)) inter=$(( (h * 11 / 4 + 63) / 64 * 64 ))
    "$respin" init-model --out "$dir" --hidden "$h" --intermediate "$inter" --layers 8 --heads "$heads" \
      --kv-heads $((heads / 2)) --tokenizer "$tok" --dtype bf16 >/dev/null
  fi
  echo "$dir"
}

common=(--samples 8 --seq-len 512 --eval-windows 1 --stats-windows 1 --threads "$threads" --device cpu --precision "$precision")
rows=(
  "quarot|--method quarot"
  "quarot gptq|--method quarot --gptq"
  "quarot streamed|--method quarot --streaming layers"
  "quarot gptq streamed|--method quarot --gptq --streaming layers"
  "rtn streamed|--method rtn --streaming layers"
  "spinquant checkpointed|--method spinquant --iters 1 --batch 8 --checkpoint-layers --micro-batch 1"
  "respin r=32 checkpointed|--method respin --rank 32 --iters 1 --batch 8 --checkpoint-layers --micro-batch 1"
  "spinquant whole graph|--method spinquant --iters 1 --batch 8"
)

table="$out/memory-$precision.md"
{
  echo "Weights and activations in $precision."
  echo
  echo "| model | row | bf16 file | measured peak above start | / bf16 | planned | planned / measured | peak phase | time |"
  echo "|---|---|---|---|---|---|---|---|---|"
} >"$table"
for h in $sizes; do
  m=$(model_of "$h")
  file_bytes=$(stat -c %s "$m/model.safetensors")
  for row in "${rows[@]}"; do
    name=${row%%|*}
    if [[ -n $only && ",$only," != *",$name,"* ]]; then continue; fi
    read -r -a opts <<<"${row#*|}"
    plan_json=$("$respin" plan --json --model "$m" "${opts[@]}" "${common[@]}" 2>/dev/null || true)
    planned=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["peak_bytes"])' "$plan_json")
    # Rows the host cannot hold (the whole graph at hidden 2048) are planned, not run.
    avail=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["capacity_bytes"])' "$plan_json")
    if [[ $dry == 1 || $planned -gt $((avail * 8 / 10)) ]]; then
      python3 - "$h" "$name" "$file_bytes" "$planned" >>"$table" <<'EOF'
import sys
h, name, f, p = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
print(f"| hidden {h} | {name} | {f/1e6:.1f} MB | not run | | {p/1e9:.2f} GB | | | |")
EOF
      continue
    fi
    run="$out/run-$h-${name// /-}"
    rm -rf "$run"
    start=$(date +%s.%N)
    "$respin" calibrate --no-store --json --out "$run" --model "$m" "${opts[@]}" "${common[@]}" >"$run.json" 2>"$run.err"
    end=$(date +%s.%N)
    python3 - "$h" "$name" "$file_bytes" "$run.json" "$start" "$end" >>"$table" <<'EOF'
import json, sys
h, name, f, path, t0, t1 = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], float(sys.argv[5]), float(sys.argv[6])
m = json.load(open(path))["memory"]
meas = dict(m["measured_bytes"]); pred = dict(m["predicted_bytes"])
peak_phase = max(meas, key=meas.get) if meas else "?"
mp, pp = max(meas.values()) if meas else 0, max(pred.values())
ratio = f"{pp / mp:.2f}" if mp else "n/a"
print(f"| hidden {h} | {name} | {f/1e6:.1f} MB | {mp/1e6:.0f} MB | {mp/f:.2f}x | {pp/1e6:.0f} MB | {ratio} | {peak_phase} | {t1-t0:.0f} s |")
EOF
    rm -rf "$run"
  done
done
cat "$table"
