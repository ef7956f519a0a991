#!/usr/bin/env bash
# A model larger than the budget, on this machine (docs/results.md, "Layer streaming"):
#
#  1. a random bf16 model with LLaMA-3-70B's layer shapes (hidden 8192, intermediate 28672, 64/8
#     heads, vocabulary 128256) and 2 decoder layers (7.6 GB; written a tensor at a time), run
#     with RTN W4A4KV4 under `--device-memory` below the model's size: the whole plan is refused,
#     `--streaming auto` streams it, and the run's measured peak is compared with the plan and
#     with the model;
#  2. the plans of the full 80-layer 70B model (a placeholder folder: valid headers, no data) for
#     every method, whole and streamed, against an 80 GB budget.
#
#   bench/large_rows.sh [--out DIR] [--respin BIN] [--budget SIZE] [--layers N] [--threads N]
#                       [--plans-only] [--dry-run]
#
# --dry-run shrinks the model to hidden 512 (2 layers) and the budget to 150MB: the script's own
# check, a minute on a laptop. The real run takes about 20 minutes on 2 CPU cores (RTN's clip
# search over 1.7 billion weights) and needs about 16 GB of free disk under --out.
set -euo pipefail

here="$(cd "$(dirname "$0")/.." && pwd)"
out=/tmp/respin-large-rows
respin=""
budget=6GB
layers=2
threads=0
plans_only=0
dry=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --out) out="$2"; shift 2 ;;
    --respin) respin="$2"; shift 2 ;;
    --budget) budget="$2"; shift 2 ;;
    --layers) layers="$2"; shift 2 ;;
    --threads) threads="$2"; shift 2 ;;
    --plans-only) plans_only=1; shift ;;
    --dry-run) dry=1; shift ;;
    *) echo "large_rows: unknown option $1" >&2; exit 2 ;;
  esac
done
if [[ -z "$respin" ]]; then
  for b in "$here/build/cuda/app/respin" "$here/build/cpu/app/respin"; do [[ -x $b ]] && respin=$b && break; done
fi
[[ -x "$respin" ]] || { echo "large_rows: no respin binary (build first, or pass --respin)" >&2; exit 1; }
mkdir -p "$out"
tok="$here/resources/models/small/tokenizer.json"
shape=(--hidden 8192 --intermediate 28672 --heads 64 --kv-heads 8 --vocab 128256)
if [[ $dry == 1 ]]; then
  shape=(--hidden 512 --intermediate 1408 --heads 8 --kv-heads 4 --vocab 8192)
  budget=150MB
fi
# Small texts (Debian's GPL-3 text), so that the budget is the model's, not the corpus'.
text=/usr/share/common-licenses/GPL-3
common=(--samples 1 --seq-len 512 --eval-windows 1 --stats-windows 1 --threads "$threads" --device cpu
        --precision bfloat16 --wbits 4 --abits 4 --kvbits 4 --calib-text "$text" --eval-text "$text")
table="$out/large.md"
: >"$table"

json_field() { python3 -c 'import json,sys; j=json.load(open(sys.argv[1])); print(eval(sys.argv[2], {"j": j}))' "$@"; }

# 1. The 2-layer model, run under the budget.
if [[ $plans_only == 0 ]]; then
  m="$out/model-70b-shape-$layers"
  [[ $dry == 1 ]] && m="$out/model-dry"
  if [[ ! -f $m/config.json ]]; then
    "$respin" init-model --out "$m" "${shape[@]}" --layers "$layers" --tokenizer "$tok" --dtype bf16 >/dev/null
  fi
  file_bytes=$(stat -c %s "$m/model.safetensors")
  "$respin" plan --json --model "$m" --method rtn --streaming whole --device-memory "$budget" "${common[@]}" \
    >"$out/plan-whole.json" 2>/dev/null && whole_rc=0 || whole_rc=$?
  "$respin" plan --json --model "$m" --method rtn --device-memory "$budget" "${common[@]}" >"$out/plan-auto.json"
  run="$out/run-rtn"
  rm -rf "$run"
  start=$(date +%s.%N)
  "$respin" calibrate --no-store --json --out "$run" --model "$m" --method rtn --device-memory "$budget" \
    "${common[@]}" >"$out/run-rtn.json" 2>"$out/run-rtn.err"
  end=$(date +%s.%N)
  python3 - "$file_bytes" "$out/plan-whole.json" "$whole_rc" "$out/plan-auto.json" "$out/run-rtn.json" "$start" "$end" \
    "$budget" >>"$table" <<'EOF'
import json, sys
f, whole_path, whole_rc, auto_path, run_path, t0, t1, budget = sys.argv[1:]
f = int(f)
whole, auto, run = json.load(open(whole_path)), json.load(open(auto_path)), json.load(open(run_path))
m = run["memory"]
meas, pred = dict(m["measured_bytes"]), dict(m["predicted_bytes"])
print(f"Model file {f/1e9:.2f} GB (bf16), budget --device-memory {budget}; whole plan: peak "
      f"{whole['peak_bytes']/1e9:.2f} GB, fits {whole['fits']} (exit {whole_rc}); auto: streaming "
      f"{auto['streaming']}, peak {auto['peak_bytes']/1e9:.2f} GB, fits {auto['fits']}; run streamed "
      f"{m['streamed']}, {float(t1)-float(t0):.0f} s, ppl {run['results']['fp_perplexity']:.1f} -> "
      f"{run['results']['quantized_perplexity']:.1f}.")
print()
print("| phase | planned | measured | planned / measured | measured / model file | seconds |")
print("|---|---|---|---|---|---|")
secs = dict(run["timing"]["phases"])
for phase, p in m["predicted_bytes"]:
    x = meas.get(phase, 0)
    ratio = f"{p / x:.2f}" if x else "n/a"
    print(f"| {phase} | {p/1e9:.2f} GB | {x/1e9:.2f} GB | {ratio} | {x/f:.2f} | {secs.get(phase, 0):.0f} |")
print()
EOF
  rm -rf "$run"
fi

# 2. The 80-layer 70B plans from a placeholder folder.
p70="$out/placeholder-70b"
if [[ ! -f $p70/config.json ]]; then
  "$respin" init-model --out "$p70" --hidden 8192 --intermediate 28672 --layers 80 --heads 64 --kv-heads 8 \
    --vocab 128256 --tokenizer "$tok" --dtype bf16 --placeholder >/dev/null
fi
{
  echo "LLaMA-3-70B shape, 80 layers (placeholder folder), bf16, W4A4KV4, against an 80 GB budget:"
  echo
  echo "| method | streaming | peak | peak phase | fits 80 GB |"
  echo "|---|---|---|---|---|"
} >>"$table"
plan70=(--seq-len 2048 --samples 128 --eval-windows 40 --device-memory 80GB --precision bfloat16)
for row in "rtn|--method rtn" "quarot|--method quarot" "quarot gptq|--method quarot --gptq" \
           "spinquant|--method spinquant --batch 8" "respin r=32|--method respin --rank 32 --batch 8"; do
  name=${row%%|*}
  read -r -a opts <<<"${row#*|}"
  for s in whole layers; do
    "$respin" plan --json --model "$p70" "${opts[@]}" "${plan70[@]}" --streaming "$s" >"$out/p70.json" 2>"$out/p70.err" ||
      true
    if [[ -s $out/p70.json ]]; then
      json_field "$out/p70.json" \
        "f\"| $name | {j['streaming']} | {j['peak_bytes']/1e9:.1f} GB | {j['peak_phase']} | {j['fits']} |\"" >>"$table"
    else
      echo "| $name | $s | refused: $(head -c 160 "$out/p70.err" | tr '\n' ' ') | | |" >>"$table"
    fi
  done
done
cat "$table"
