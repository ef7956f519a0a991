#!/usr/bin/env bash
# Checks ReSpin Workbench on a GPU machine that has an NVIDIA GPU, the CUDA toolkit (nvcc) and
# PyTorch, but no internet and no apt (the usual GPU server). It
#   1. builds core + kernels + CLI + tests + bench against PyTorch's libtorch (RESPIN_BUILD_UI=OFF),
#      taking nlohmann-json, CLI11, GoogleTest and ICU from the bundle that scripts/gpu_bundle.sh
#      prepares on a Debian machine (copy or carry .gpu-bundle/ along with the checkout);
#   2. runs the `gpu` ctest label and the unit suite (2 threads per test, 8 tests at a time: tests
#      that each take every core time out by oversubscription);
#   3. calibrates every method with --device cuda on a random LLaMA-shaped model of about 490M
#      parameters (hidden 2048, 8 layers, 16 heads / 4 KV heads, intermediate 5632, vocabulary
#      32000) with a byte-level tokenizer, on text the machine has (/usr/share licences and
#      copyright files), and evaluates each run directory again with `respin eval --run`;
#   4. prints one table: method, exit status, seconds per phase, tokens/s, FP and quantized
#      perplexity, GPU memory.
# Random weights make the perplexities a plumbing check (both near the vocabulary in use), not a
# quality figure. Logs and run directories go to $OUT (the device tool's output folder) or
# build/gpu-check. Usage: scripts/gpu_check.sh [--quick | --lease | --dry-run | --8b]
#   --quick    2 layers, 20 learning steps
#   --lease    for a short device lease: 4 layers, 40 learning steps, the unit suite in the
#              background during the GPU work, every step under a time limit and the whole
#              check inside RESPIN_GPU_BUDGET seconds (default 420); a failed compile does not
#              stop the check (ninja -k 0: every error is reported, what built still runs)
#   --dry-run  a tiny model on the CPU: checks this script's own plumbing on a machine without a GPU
#   --8b       after the build, only the LLaMA-3-8B-shape rows (bench/gpu_8b_rows.sh: init-model of
#              16 GB, SpinQuant / ReSpinQuant r=32 / QuaRot / QuaRot+GPTQ(128 windows) at W4A4KV4,
#              minutes per phase and measured against planned device peak; RESPIN_8B_STEPS learning
#              steps, default 2, extrapolated to 100)
# It also runs bench/hadamard_bench (the CUDA kernel against the copy bandwidth) and checks that
# transformers loads an `respin export --format hf` folder and computes the perplexity that
# `respin eval --model` computes (where python3 has transformers and tokenizers).
set -uo pipefail
cd "$(dirname "$0")/.."
root=$PWD
quick=0 dry=0 lease=0
[[ ${1:-} == --quick ]] && quick=1
[[ ${1:-} == --lease ]] && lease=1
[[ ${1:-} == --dry-run ]] && dry=1
big=0
[[ ${1:-} == --8b ]] && big=1
t_start=$(date +%s)
budget=${RESPIN_GPU_BUDGET:-100000}
((lease)) && budget=${RESPIN_GPU_BUDGET:-420}
left() { echo $(( budget - ($(date +%s) - t_start) )); }
# limit SECONDS: the smaller of SECONDS and what is left of the budget (at least 1)
limit() { local l=$(left); (( l > $1 )) && l=$1; (( l < 1 )) && l=1; echo $l; }
bundle=${RESPIN_GPU_BUNDLE:-$root/.gpu-bundle}
out=${OUT:-$root/build/gpu-check}
mkdir -p "$out"
python=${PYTHON:-python3}
log() { echo "== $*" >&2; }
die() { echo "gpu_check: $*" >&2; exit 1; }

[[ -d $bundle/usr ]] || die "no bundle at $bundle: run scripts/gpu_bundle.sh on a Debian machine and bring .gpu-bundle/ along"
torch_prefix=$($python -c 'import torch; print(torch.utils.cmake_prefix_path)') || die "$python cannot import torch"
torch_lib=$($python -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
torch_version=$($python -c 'import torch; print(torch.__version__)')
# CMake and Ninja may live in the Python environment only.
export PATH="$(dirname "$(command -v "$python")"):$PATH"
command -v cmake >/dev/null || die "cmake not found (pip's cmake in the PyTorch environment is enough)"
command -v ninja >/dev/null || die "ninja not found"
command -v nvcc >/dev/null || export PATH="/usr/local/cuda/bin:$PATH"
export LD_LIBRARY_PATH="$bundle/usr/lib/x86_64-linux-gnu:$torch_lib:${LD_LIBRARY_PATH:-}"
jobs=$(nproc)
log "machine: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | head -1); $jobs cores; torch $torch_version; $(nvcc --version | tail -1)"

# ---- 1. build
build=$root/build/gpu
t0=$(date +%s)
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DRESPIN_BUILD_UI=OFF -DRESPIN_WITH_CUDA=ON \
  -DCMAKE_CUDA_ARCHITECTURES="${RESPIN_CUDA_ARCH:-90}" -DCMAKE_PREFIX_PATH="$torch_prefix;$bundle/usr" \
  -DICU_ROOT="$bundle/usr" -DOPENSSL_ROOT_DIR="$bundle/usr" >"$out/configure.log" 2>&1 || { tail -n 40 "$out/configure.log"; die "configure failed (log: $out/configure.log)"; }
build_ok=1
if ! cmake --build "$build" -j "$jobs" -- -k 0 >"$out/build.log" 2>&1; then
  build_ok=0
  echo "---- compile errors (unique, first 60; log: $out/build.log)" >&2
  grep -E 'error:|error [0-9]+:|undefined reference' "$out/build.log" | sort -u | head -n 60 >&2
  ((lease)) || die "build failed (log: $out/build.log)"
fi
log "build: $(( $(date +%s) - t0 )) s (ok: $build_ok)"

# ---- 8B rows only (--8b)
if ((big)); then
  ((build_ok)) || die "build failed: no 8B rows"
  timeout "$(limit 3000)" "$root/bench/gpu_8b_rows.sh" --respin "$build/app/respin" --out "$out/8b" \
    --steps "${RESPIN_8B_STEPS:-2}"
  exit $?
fi

# ---- 2. tests (the tokenizer oracle needs node, which such a machine usually lacks)
export OMP_NUM_THREADS=2
timeout "$(limit 240)" ctest --test-dir "$build" -L gpu --output-on-failure --timeout 600 >"$out/ctest-gpu.log" 2>&1
gpu_tests=$?
log "ctest gpu: $(grep -E 'tests passed|tests failed' "$out/ctest-gpu.log" | tail -1) (exit $gpu_tests)"
grep -E '\*\*\*|Failure|error:' "$out/ctest-gpu.log" | head -20 >&2
unit_run() {
  ctest --test-dir "$build" -L 'unit|slow' -E 'Oracle|oracle|Forge|package_deb' -j "$1" --output-on-failure --timeout 600 \
    >"$out/ctest-unit.log" 2>&1
}
if ((lease)); then
  # In the background, 6 tests at a time, while the GPU runs the calibrations below (their CPU-side
  # timings share the machine with it: the table says so).
  ( timeout "$(limit 400)" ctest --test-dir "$build" -L 'unit|slow' -E 'Oracle|oracle|Forge|package_deb' -j 6 \
      --output-on-failure --timeout 600 >"$out/ctest-unit.log" 2>&1; echo $? >"$out/ctest-unit.exit" ) &
  unit_pid=$!
else
  unit_run 8
  echo $? >"$out/ctest-unit.exit"
fi
unset OMP_NUM_THREADS
if [[ -x $build/bench/hadamard_bench ]]; then
  timeout "$(limit 60)" "$build/bench/hadamard_bench" --mib 512 --reps 20 >"$out/hadamard_bench.txt" 2>&1
  log "hadamard_bench (exit $?):"; cat "$out/hadamard_bench.txt" >&2
fi

# ---- 3. calibrate every method on CUDA
respin=$build/app/respin
work=$out/calib
rm -rf "$work" && mkdir -p "$work"
"$python" - "$work" <<'PY' || die "could not write the tokenizer and text"
import json, os, sys, glob
work = sys.argv[1]
# GPT-2 byte-to-unicode table: a byte-level BPE tokenizer.json with the 256 byte tokens, no merges.
printable = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
sym, n = {}, 0
for b in range(256):
    if b in printable:
        sym[b] = chr(b)
    else:
        sym[b] = chr(256 + n); n += 1
tok = {"version": "1.0", "added_tokens": [], "normalizer": None,
       "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
       "post_processor": None,
       "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
       "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                 "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                 "vocab": {sym[b]: b for b in range(256)}, "merges": []}}
json.dump(tok, open(os.path.join(work, "tokenizer.json"), "w"))
files = sorted(glob.glob("/usr/share/common-licenses/*")) + sorted(glob.glob("/usr/share/doc/*/copyright"))
text = []
for f in files:
    try:
        text.append(open(f, encoding="utf-8").read())
    except (OSError, UnicodeDecodeError):
        pass
text = "\n".join(text)
if len(text) < 400000:
    sys.exit("only %d bytes of text found" % len(text))
cut = len(text) * 9 // 10
open(os.path.join(work, "calib.txt"), "w").write(text[:cut])
open(os.path.join(work, "eval.txt"), "w").write(text[cut:])
print("text: %d bytes (%d files)" % (len(text), len(files)), file=sys.stderr)
PY
size=(--vocab 32000 --hidden 2048 --intermediate 5632 --layers 8 --heads 16 --kv-heads 4)
iters=100 seq=512 device=cuda
((quick)) && size[7]=2 && iters=20
((lease)) && size[7]=4 && iters=40
((dry)) && size=(--vocab 512 --hidden 128 --intermediate 256 --layers 2 --heads 4 --kv-heads 2) && iters=3 seq=64 device=cpu
"$respin" init-model --out "$work/model" --tokenizer "$work/tokenizer.json" "${size[@]}" --max-positions 2048 \
  --dtype bf16 --seed 0 >"$out/init-model.log" 2>&1 || { cat "$out/init-model.log"; die "init-model failed"; }
cat "$out/init-model.log" >&2
base=(--model "$work/model" --calib-text "$work/calib.txt" --eval-text "$work/eval.txt" --device $device
      --wbits 4 --seq-len $seq --samples 64 --iters $iters --batch 2 --eval-windows 40
        --stats-windows 2 --threads $((jobs < 8 ? jobs : 8)))
common=("${base[@]}" --abits 4 --kvbits 4)
declare -a names
run_method() {  # name, extra arguments...
  local name=$1; shift
  if (( $(left) < 45 )); then log "$name: skipped, $(left) s of the budget left"; return; fi
  names+=("$name")
  local t0=$(date +%s%N)
  timeout "$(limit 150)" "$respin" calibrate "${common[@]}" "$@" --json --out "$work/run-$name" >"$work/$name.json" 2>"$work/$name.err"
  echo $? >"$work/$name.exit"
  echo $(( ($(date +%s%N) - t0) / 1000000 )) >"$work/$name.wall"  # milliseconds
  if [[ $(cat "$work/$name.exit") == 0 ]]; then
    timeout "$(limit 60)" "$respin" eval --json --run "$work/run-$name" --device $device --seq-len $seq --max-windows 40 \
      >"$work/$name.eval.json" 2>"$work/$name.eval.err"
    echo $? >"$work/$name.eval.exit"
  fi
  log "$name: exit $(cat "$work/$name.exit")$(tail -n 1 "$work/$name.err" | grep -o 'error: .*' | head -c 300 | sed 's/^/, /')"
}
run_method rtn --method rtn
run_method quarot --method quarot
run_method spinquant --method spinquant
run_method respin-r32 --method respin --rank 32
run_method quarot-gptq --method quarot --gptq
run_method respin-full --method respin --rank -1

# ---- 3b. transformers loads an hf export and agrees on the perplexity (W4A16 RTN: the weights
# carry the quantization, nothing happens online, so a plain LlamaForCausalLM is the whole model)
interop=skipped
if "$python" -c 'import transformers, tokenizers' 2>/dev/null && (( $(left) > 60 )); then
  interop=failed
  if timeout "$(limit 90)" "$respin" calibrate "${base[@]}" --method rtn --abits 16 --kvbits 16 --json \
        --out "$work/run-w4a16" >"$work/w4a16.json" 2>"$work/w4a16.err" &&
     timeout "$(limit 60)" "$respin" export "$work/run-w4a16" --format hf --dtype f32 --out "$work/w4a16-hf" \
        >"$work/export.log" 2>&1 &&
     timeout "$(limit 60)" "$respin" eval --json --model "$work/w4a16-hf" --text-file "$work/eval.txt" --device $device \
        --seq-len $seq --max-windows 40 --batch 4 >"$work/w4a16-hf.eval.json" 2>"$work/w4a16-hf.eval.err"; then
    timeout "$(limit 120)" "$python" - "$work/w4a16-hf" "$work/eval.txt" $seq 40 "$work/w4a16-hf.eval.json" $device \
        >"$out/interop.txt" 2>&1 <<'PY' && interop=passed
import json, math, sys, torch, transformers
from tokenizers import Tokenizer
from transformers import AutoModelForCausalLM
folder, text, seq, windows, ours, device = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], sys.argv[6]
torch.backends.cuda.matmul.allow_tf32 = False
ids = Tokenizer.from_file(folder + "/tokenizer.json").encode(open(text, encoding="utf-8").read(), add_special_tokens=False).ids
model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).to(device).eval()
n = min(windows, len(ids) // seq)
x = torch.tensor(ids[: n * seq], device=device).view(n, seq)
nll = []
with torch.no_grad():
    for b in range(0, n, 4):
        logits = model(x[b:b + 4]).logits.float()
        lp = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, x[b:b + 4, 1:, None]).squeeze(-1)
        nll += (-lp.mean(dim=1)).tolist()
ppl = math.exp(sum(nll) / len(nll))
r = json.load(open(ours))
theirs = r["perplexity"]
rel = abs(ppl - theirs) / theirs
print("transformers %s (%s): %d tokens, %d windows x %d, perplexity %.6f; respin eval --model: %.6f (%s tokens); relative difference %.2e"
      % (transformers.__version__, type(model).__name__, len(ids), n, seq, ppl, theirs, r.get("tokens_total", "?"), rel))
sys.exit(0 if rel < 1e-4 else 1)
PY
  fi
  log "interop (transformers loads the hf export): $interop"
  cat "$out/interop.txt" "$work/export.log" "$work/w4a16.err" "$work/w4a16-hf.eval.err" 2>/dev/null | grep -v '^$' | tail -n 12 >&2
fi
if ((lease)); then
  wait "$unit_pid"
fi
unit_tests=$(cat "$out/ctest-unit.exit" 2>/dev/null || echo 1)
log "ctest unit: $(grep -E 'tests passed|tests failed' "$out/ctest-unit.log" | tail -1) (exit $unit_tests)"
grep -E '\*\*\*|\(Failed\)|\(Timeout\)' "$out/ctest-unit.log" | head -30 >&2

# ---- 4. the table
status=0
"$python" - "$work" "${names[@]}" <<'PY' || status=1
import json, os, sys
work, names = sys.argv[1], sys.argv[2:]
def read(path):
    try:
        return open(path).read().strip()
    except OSError:
        return ""
rows = []
hdr = ["method", "exit", "eval --run", "wall s", "load s", "eval-fp s", "stats s", "rotate s", "gptq s", "quantize s",
       "eval s", "learn tok/s", "eval tok/s", "FP ppl", "quant ppl", "eval --run ppl", "GPU MiB", "learning"]
for n in names:
    code = read(os.path.join(work, n + ".exit"))
    row = {"method": n, "exit": code}
    wall = read(os.path.join(work, n + ".wall"))
    row["wall s"] = "%.1f" % (int(wall) / 1000) if wall else "-"
    if code == "0":
        r = json.load(open(os.path.join(work, n + ".json")))
        ph = dict(r["timing"]["phases"])  # run.json v2: [[phase, seconds], ...]
        ph["stats"] = ph.get("stats-before", 0) + ph.get("stats-after", 0)
        for p in ["load", "eval-fp", "stats", "rotate", "gptq", "quantize", "eval"]:
            row[p + " s"] = "%.1f" % ph[p] if p in ph else "-"
        tr = (r.get("method") or {}).get("training")
        row["learn tok/s"] = "%.0f" % (tr["tokens"] / tr["seconds"]) if tr and tr["seconds"] > 0 else "-"
        res = r["results"]
        row["eval tok/s"] = "%.0f" % res["eval_tokens_per_s"] if res.get("eval_tokens_per_s") else "-"
        row["FP ppl"] = "%.3f" % res["fp_perplexity"]
        row["quant ppl"] = "%.3f" % res["quantized_perplexity"]
        mem = r.get("gpu_memory_in_use_bytes")
        row["GPU MiB"] = "%.0f" % (mem / 2**20) if mem else "-"
        row["learning"] = (r.get("compute") or {}).get("rotation_learning", "?")
        ecode = read(os.path.join(work, n + ".eval.exit"))
        row["eval --run"] = ecode
        if ecode == "0":
            row["eval --run ppl"] = "%.3f" % json.load(open(os.path.join(work, n + ".eval.json")))["perplexity"]
    rows.append(row)
widths = [max(len(h), *(len(str(r.get(h, "-"))) for r in rows)) for h in hdr]
line = lambda cells: "| " + " | ".join(str(c).rjust(w) for c, w in zip(cells, widths)) + " |"
print(line(hdr))
print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
for r in rows:
    print(line([r.get(h, "-") for h in hdr]))
PY
for n in "${names[@]}"; do [[ $(cat "$work/$n.exit") == 0 && $(cat "$work/$n.eval.exit" 2>/dev/null) == 0 ]] || status=1; done
((gpu_tests == 0 && unit_tests == 0 && build_ok == 1)) || status=1
[[ $interop == failed ]] && status=1
log "total: $(( $(date +%s) - t_start )) s; build ok: $build_ok; gpu tests exit $gpu_tests; unit tests exit $unit_tests; interop $interop"
log "GPU memory: whole-device use read at the end of each run (libtorch's cache keeps its peak reservation; includes the CUDA context)"
log "logs and run directories: $out"
exit $status
