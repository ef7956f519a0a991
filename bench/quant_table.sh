#!/usr/bin/env bash
# Accuracy table of the quantization methods on one model: FP, RTN, QuaRot, SpinQuant and
# ReSpinQuant (rank sweep) at the given W/A/KV bit widths, same calibration data, evaluation
# windows and seed for every method; with each method's calibration time and peak memory.
#
#   bench/quant_table.sh [--model DIR] [--bits "4 3"] [--out DIR] [--respin BIN] [extra calibrate options]
#
# Defaults: the default `small` forge model, W4A4KV4 and W3A3KV3, runs under
# /tmp/respin-quant-table. ReSpinQuant is calibrated once per bit width at rank 32; the other
# ranks are evaluated from its stored rotations (`respin eval --run DIR --rank R`), which is exact
# for RTN weights (they do not depend on the rank). Prints a markdown table per bit width and
# writes it to OUT/table.md.
set -euo pipefail

here="$(cd "$(dirname "$0")/.." && pwd)"
model="${RESPIN_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/respin}/models/small"
bits_list="4 3"
out=/tmp/respin-quant-table
respin=""
extra=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --model) model="$2"; shift 2 ;;
    --bits) bits_list="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --respin) respin="$2"; shift 2 ;;
    *) extra+=("$1"); shift ;;
  esac
done
if [[ -z "$respin" ]]; then
  # the most recently built of the presets' binaries
  respin=$(ls -t "$here"/build/{cuda,cpu}/app/respin 2>/dev/null | head -1 || true)
fi
[[ -x "$respin" ]] || { echo "error: no respin binary; run scripts/build.sh first" >&2; exit 1; }
[[ -f "$model/config.json" ]] || { echo "error: no model at $model (scripts/run.sh trains the default one)" >&2; exit 1; }

# Shared protocol: 512-token windows, 200 calibration windows of the training split, 100 rotation
# steps of 2 windows, the first 100 windows of the test split.
common=(--model "$model" --seq-len 512 --samples 200 --iters 100 --batch 2 --eval-windows 100 --seed 0 "${extra[@]}")
hidden=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['hidden_size'])" "$model/config.json")
mkdir -p "$out"
table="$out/table.md"
: > "$table"

field() { python3 -c "import json,sys; j=json.load(open(sys.argv[1])); v=j
for k in sys.argv[2].split('.'): v=v[k]
print(v)" "$1" "$2"; }

for bits in $bits_list; do
  tag="W${bits}A${bits}KV${bits}"
  rows=()
  fp=""
  for method in rtn quarot spinquant respin; do
    dir="$out/$tag-$method"
    if [[ ! -f "$dir/run.json" ]]; then
      rm -rf "$dir"
      echo "== $tag $method" >&2
      "$respin" calibrate "${common[@]}" --method "$method" --wbits "$bits" --abits "$bits" --kvbits "$bits" \
        --rank 32 --out "$dir" >&2
    fi
    fp=$(field "$dir/run.json" results.fp_perplexity)
    ppl=$(field "$dir/run.json" results.quantized_perplexity)
    # the method's own cost: rotations (incl. learning), GPTQ or RTN weight quantization
    secs=$(python3 -c "import json,sys; p=json.load(open(sys.argv[1]))['timing']['phases_seconds']
print(sum(p.get(k, 0) for k in ('rotate', 'gptq', 'quantize')))" "$dir/run.json")
    mem=$(field "$dir/run.json" peak_rss_bytes)
    name="$method"
    [[ "$method" == respin ]] && name="respin r=32"
    rows+=("$(printf '| %s | %.3f | %+.1f%% | %.0f s | %.0f MiB |' "$name" "$ppl" \
      "$(python3 -c "print(100*($ppl/$fp-1))")" "$secs" "$(python3 -c "print($mem/1048576)")")")
    if [[ "$method" == respin ]]; then
      for rank in 0 8 128 "$hidden"; do
        json="$out/$tag-respin-r$rank.json"
        if [[ ! -s "$json" ]]; then
          "$respin" eval --run "$dir" --rank "$rank" --seq-len 512 --max-windows 100 --json > "$json.tmp"
          mv "$json.tmp" "$json"
        fi
        p=$(field "$json" perplexity)
        label="respin r=$rank"
        [[ "$rank" == "$hidden" ]] && label="respin r=$rank (full)"
        rows+=("$(printf '| %s | %.3f | %+.1f%% | (same rotations) | |' "$label" "$p" "$(python3 -c "print(100*($p/$fp-1))")")")
      done
    fi
  done
  {
    echo "### $tag"
    echo
    echo "| method | test PPL | vs FP | calibration time | peak memory |"
    echo "|---|---|---|---|---|"
    printf '| FP | %.3f | - | - | - |\n' "$fp"
    printf '%s\n' "${rows[@]}"
    echo
  } | tee -a "$table"
done
echo "table written to $table" >&2
