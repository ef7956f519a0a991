#!/usr/bin/env bash
# The LLaMA-3-8B shape on one GPU (issue "real model sizes", docs/results.md "Memory"): a random
# bf16 model of that shape written by `respin init-model` (hidden 4096, intermediate 14336, 32
# layers, 32 / 8 heads, vocabulary 128256: 16 GB on disk), then, each at W4A4KV4 with 2048-token
# windows and precision auto (bfloat16 on CUDA):
#   spinquant-40GB   8 windows per step, STEPS learning steps (RTN weights), under --device-memory 40GB
#   respin-r32-48GB  the same with ReSpinQuant's rank-32 skip corrections, under 48GB
#   quarot-24GB      RTN weights, under 24GB
#   quarot-gptq-24GB GPTQ over 128 windows, under 24GB (streamed: chosen to fit)
# (the budgets are the issue's targets; the plan chooses micro-batches, checkpointing and streaming
# to fit them; --dry-run drops them)
#   quarot-streamed-8GB  RTN weights a decoder layer at a time under --device-memory 8GB (half the model)
# For each: the plan (`respin plan --json`: predicted device peak), the run (`calibrate --json`:
# seconds per phase, libtorch's measured device peak per phase), and the learning phase
# extrapolated from the measured steps to the papers' 100 (the table says which figures are
# extrapolated). Prints a markdown table and writes it to OUT/gpu-8b.md.
#
#   bench/gpu_8b_rows.sh [--respin BIN] [--out DIR] [--steps N] [--dry-run]
#
# --dry-run: a tiny model of the same layout on the CPU (2 layers, hidden 256, 128-token windows,
# 8 GPTQ windows): checks the script's own plumbing on a machine without a GPU; its figures are
# not the 8B table. The texts are the machine's own licence and copyright files, repeated until
# there are enough tokens (random weights: the perplexities are plumbing, not quality).
set -uo pipefail

here="$(cd "$(dirname "$0")/.." && pwd)"
respin="" out=${OUT:-/tmp/respin-gpu-8b} steps=2 dry=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --respin) respin="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --steps) steps="$2"; shift 2 ;;
    --dry-run) dry=1; shift ;;
    *) echo "gpu_8b_rows: unknown option $1" >&2; exit 2 ;;
  esac
done
if [[ -z "$respin" ]]; then
  for b in "$here/build/gpu/app/respin" "$here/build/cuda/app/respin" "$here/build/cpu/app/respin"; do
    [[ -x $b ]] && respin=$b && break
  done
fi
[[ -x "$respin" ]] || { echo "gpu_8b_rows: no respin binary (build first, or pass --respin)" >&2; exit 1; }
mkdir -p "$out"
tok="$here/resources/models/small/tokenizer.json"

shape=(--vocab 128256 --hidden 4096 --intermediate 14336 --layers 32 --heads 32 --kv-heads 8)
seq=2048 gptq_windows=128 device=cuda
# The issue's targets as budgets: the plan chooses micro-batches, checkpointing and streaming to fit.
b40=(--device-memory 40GB) b48=(--device-memory 48GB) b24=(--device-memory 24GB)
((dry)) && shape=(--vocab 4096 --hidden 256 --intermediate 512 --layers 2 --heads 4 --kv-heads 2) &&
  seq=128 gptq_windows=8 device=cpu b40=() b48=() b24=()

# Texts: enough for the GPTQ windows and the evaluation (about 4 bytes of text per token).
need=$(( (gptq_windows + 8) * seq * 5 ))
python3 - "$out" "$need" <<'PY' || { echo "gpu_8b_rows: could not write the texts" >&2; exit 1; }
import glob, os, sys
out, need = sys.argv[1], int(sys.argv[2])
parts = []
for f in sorted(glob.glob("/usr/share/common-licenses/*")) + sorted(glob.glob("/usr/share/doc/*/copyright")):
    try:
        parts.append(open(f, encoding="utf-8").read())
    except (OSError, UnicodeDecodeError):
        pass
text = "\n".join(parts)
if len(text) < 10000:
    sys.exit("only %d bytes of text on this machine" % len(text))
reps = 1 + need // len(text)
open(os.path.join(out, "calib.txt"), "w").write("\n".join([text] * reps))
open(os.path.join(out, "eval.txt"), "w").write(text[: max(len(text) // 10, 8 * 2048 * 5)])
print("texts: %d bytes of licence text, repeated %d times for calibration" % (len(text), reps), file=sys.stderr)
PY

model=$out/model-8b
((dry)) && model=$out/model-dry
if [[ ! -f $model/config.json ]]; then
  "$respin" init-model --out "$model" --tokenizer "$tok" "${shape[@]}" --max-positions 8192 --dtype bf16 --seed 0 \
    >"$out/init-model.log" 2>&1 || { cat "$out/init-model.log" >&2; echo "gpu_8b_rows: init-model failed" >&2; exit 1; }
fi
common=(--model "$model" --calib-text "$out/calib.txt" --eval-text "$out/eval.txt" --device "$device"
        --wbits 4 --abits 4 --kvbits 4 --seq-len "$seq" --eval-windows 4 --stats-windows 1)
rows=(
  "spinquant-40GB|--method spinquant --samples 8 --batch 8 --iters $steps ${b40[*]}"
  "respin-r32-48GB|--method respin --rank 32 --samples 8 --batch 8 --iters $steps ${b48[*]}"
  "quarot-24GB|--method quarot --samples 8 ${b24[*]}"
  "quarot-gptq-24GB|--method quarot --gptq --samples $gptq_windows ${b24[*]}"
  "quarot-streamed-8GB|--method quarot --samples 8 --device-memory 8GB --streaming layers"
)
names=()
for row in "${rows[@]}"; do
  name=${row%%|*}
  read -r -a opts <<<"${row#*|}"
  names+=("$name")
  "$respin" plan --json "${common[@]}" "${opts[@]}" >"$out/$name.plan.json" 2>"$out/$name.plan.err"
  echo $? >"$out/$name.plan.exit"
  rm -rf "$out/run-$name"
  "$respin" calibrate --no-store --json --out "$out/run-$name" "${common[@]}" "${opts[@]}" >"$out/$name.json" 2>"$out/$name.err"
  echo $? >"$out/$name.exit"
  echo "== $name: exit $(cat "$out/$name.exit")$(grep -o 'error: .*' "$out/$name.err" | head -c 300 | sed 's/^/, /')" >&2
  rm -rf "$out/run-$name"  # the 8B run directories are 16 GB each
done

python3 - "$out" "$steps" "$dry" "${names[@]}" <<'PY' | tee "$out/gpu-8b.md"
import json, os, sys
out, steps, dry, names = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1", sys.argv[4:]
def load(path):
    try:
        return json.load(open(path))
    except (OSError, ValueError):
        return None
gb = lambda b: "%.1f GB" % (b / 1e9)
print("Dry run: a tiny model on the CPU, not the 8B table." if dry else
      "LLaMA-3-8B shape, random bf16 weights, W4A4KV4, 2048-token windows.")
print()
print("| row | exit | precision | minutes per phase | learning s/step | learning, 100 steps (extrapolated) "
      "| device peak measured | planned | measured / planned |")
print("|---|---|---|---|---|---|---|---|---|")
for n in names:
    code = open(os.path.join(out, n + ".exit")).read().strip()
    r, plan = load(os.path.join(out, n + ".json")), load(os.path.join(out, n + ".plan.json"))
    planned = plan["peak_bytes"] if plan else None
    if code != "0" or not r:
        print("| %s | %s | | | | | | %s | |" % (n, code, gb(planned) if planned else "-"))
        continue
    ph = r["timing"]["phases"]
    phases = ", ".join("%s %.1f" % (p, s / 60) for p, s in ph)
    tr = (r.get("method") or {}).get("training")
    per_step = tr["seconds"] / max(tr["steps"], 1) if tr else None
    m = r.get("memory") or {}
    dev = dict(m.get("measured_device_bytes") or [])
    host = dict(m.get("measured_bytes") or [])
    measured = max(dev.values()) if dev else (max(host.values()) if host else None)
    kind = "" if dev else " (host)"
    ratio = "%.2f" % (measured / planned) if measured and planned else "-"
    print("| %s | 0 | %s | %s | %s | %s | %s | %s | %s |" % (
        n, (r.get("compute") or {}).get("weights_and_activations", "?"), phases,
        "%.1f" % per_step if per_step else "-",
        "%.1f min" % (per_step * 100 / 60) if per_step else "-",
        (gb(measured) + kind) if measured else "-", gb(planned) if planned else "-", ratio))
PY
