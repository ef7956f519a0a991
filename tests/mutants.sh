#!/usr/bin/env bash
# Mutation check of the composed-method tests (docs/testing.md, tests/test_pipeline_reference.cpp):
# applies each deliberate bug defined below to a copy of the sources, builds only the test binary
# that must catch it, runs the tests that must fail, restores the file, and prints one table.
# The working tree it is run from is never written: the copy lives in the work folder.
#
# Usage: tests/mutants.sh [--check] [--list] [--only NAME] [--work DIR] [-j N] [-- CMAKE_ARGS...]
#   --check      only verify that every mutation's text occurs exactly once in the current sources
#                and that the tests it names exist (no copy, no build); ctest runs this
#   --list       print the mutations and exit
#   --only NAME  run one mutation (repeatable)
#   --work DIR   the copy and its CPU build (default: build/mutants)
#   -j N         build jobs (default: nproc)
#   CMAKE_ARGS   extra arguments for the first configure of the copy (e.g. -DCMAKE_PREFIX_PATH=...)
# Environment: RESPIN_MUTANT_TEST_TIMEOUT, seconds per test run (default 1800; a hang counts as caught).
# Exit status: 0 when every mutation was caught; 1 when one was missed, did not build or did not
# apply, or when the unmutated tests fail; 2 on a usage error.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

die() {
  echo "mutants: $*" >&2
  exit 1
}

# ---------------------------------------------------------------------------------------------
# The mutations. mutation NAME FILE TEST_BINARY GTEST_FILTER DESCRIPTION, then on stdin the exact
# text to find (it must occur exactly once in FILE), a line "====", and its replacement. The
# filter lists exact test names (Suite.Name, ':'-separated); at least one of them must fail.
names=() files=() targets=() filters=() descriptions=() finds=() repls=()
mutation() {
  local body sep=$'\n====\n'
  body=$(cat)
  [[ $body == *"$sep"* ]] || die "mutation $1: no '====' line between the text and its replacement"
  names+=("$1") files+=("$2") targets+=("$3") filters+=("$4") descriptions+=("$5")
  finds+=("${body%%"$sep"*}") repls+=("${body#*"$sep"}")
}

mutation down-quant-before-r4 core/methods/rotated_model.cpp test_calib \
  PipelineReference.QuantizersSeeTheRotatedActivations \
  "the down_proj quantizer moved before its Hadamard (R4)" <<'EOF'
      case HookSite::DownProjInput:
        if (st->down) x = ops::hadamard(x, *st->down);
        act(o.quant.activation);
====
      case HookSite::DownProjInput:
        act(o.quant.activation);
        if (st->down) x = ops::hadamard(x, *st->down);
EOF

mutation k-quant-before-r3 core/methods/rotated_model.cpp test_calib \
  PipelineReference.QuantizersSeeTheRotatedActivations:PipelineReference.GroupClipAndR3OptionsReachTheQuantizers \
  "the K quantizer moved before R3" <<'EOF'
      case HookSite::Key:
        if (st->qk) x = ops::hadamard(x, *st->qk);
        kv();
====
      case HookSite::Key:
        kv();
        if (st->qk) x = ops::hadamard(x, *st->qk);
EOF

mutation attn-skip-bases-swapped core/methods/rotated_model.cpp test_calib \
  PipelineReference.ReSpinPartialRankMatchesItsDefinition \
  "the attention skip correction built from the bases in the wrong order" <<'EOF'
    s.attn_rank_r.push_back(make(rot.attn_in[i], rot.mlp_in[i]));
====
    s.attn_rank_r.push_back(make(rot.mlp_in[i], rot.attn_in[i]));
EOF

mutation gptq-propagates-unquantized core/methods/gptq_model.cpp test_calib \
  PipelineReference.GptqPipelineUsesTheHessiansOfTheQuantizedModel \
  "GPTQ propagating layer inputs through the unquantized layer" <<'EOF'
    GptqLayerResult r = gptq_quantize_layer(frame, i, layer, hidden, ctx, online, o, control);
====
    const LayerWeights original = layer;
    std::vector<at::Tensor> inputs = hidden;
    GptqLayerResult r = gptq_quantize_layer(frame, i, layer, hidden, ctx, online, o, control);
    frame.set_layer(i, original);
    for (at::Tensor& h : inputs) h = frame.layer_forward(i, h, ctx);
    hidden = inputs;
EOF

mutation gptq-hessian-before-hadamard core/methods/gptq_model.cpp test_calib \
  PipelineReference.GptqPipelineUsesTheHessiansOfTheQuantizedModel \
  "GPTQ accumulating the Hessian before the online Hadamard" <<'EOF'
      if (online) online(site, l, x);
      if (l == i && site == g.site) acc.add(x);
====
      if (l == i && site == g.site) acc.add(x);
      if (online) online(site, l, x);
EOF

mutation quarot-without-r4 core/methods/methods.cpp test_calib \
  PipelineReference.QuantizersSeeTheRotatedActivations:PipelineReference.QuaRotTamesAnActivationOutlierThatRtnCannot \
  "R4 switched off for QuaRot" <<'EOF'
  t.down_hadamard = true;
====
  t.down_hadamard = m != Method::QuaRot;
EOF

mutation kv-clip-dropped core/methods/rotated_model.cpp test_calib \
  PipelineReference.GroupClipAndR3OptionsReachTheQuantizers \
  "the KV clip ratio dropped in the hook" <<'EOF'
      x = ops::fake_quantize_kv(x, o.quant.kv, o.ste);
====
      QuantSpec unclipped = o.quant.kv;
      unclipped.clip_ratio = 1.0;
      x = ops::fake_quantize_kv(x, unclipped, o.ste);
EOF

mutation linear-lr-schedule core/methods/rotation_training.cpp test_calib \
  PipelineReference.RotationLearningFollowsTheCosineSchedule \
  "a linear instead of a cosine learning-rate schedule" <<'EOF'
    opt.set_lr(o.lr * 0.5 * (1.0 + std::cos(M_PI * static_cast<double>(step) / o.iterations)));
====
    opt.set_lr(o.lr * (1.0 - static_cast<double>(step) / o.iterations));
EOF

# ---------------------------------------------------------------------------------------------
check_only=0 list_only=0 jobs=$(nproc) work="" only=() cmake_args=()
usage() {
  sed -n '/^# Usage:/,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//' >&2
  exit 2
}
while (($#)); do
  case $1 in
    --check) check_only=1 ;;
    --list) list_only=1 ;;
    --only) (($# > 1)) || usage; only+=("$2"); shift ;;
    --work) (($# > 1)) || usage; work=$2; shift ;;
    -j) (($# > 1)) || usage; jobs=$2; shift ;;
    -j*) jobs=${1#-j} ;;
    --) shift; cmake_args=("$@"); break ;;
    -h | --help) usage ;;
    *) echo "mutants: unknown argument '$1'" >&2; usage ;;
  esac
  shift
done
[[ $jobs =~ ^[1-9][0-9]*$ ]] || { echo "mutants: -j needs a positive number, not '$jobs'" >&2; exit 2; }
command -v python3 >/dev/null 2>&1 || die "needs python3 (exact text replacement)"

if ((list_only)); then
  for i in "${!names[@]}"; do
    printf '%-30s %s\n  %s -> %s %s\n' "${names[i]}" "${descriptions[i]}" "${files[i]}" "${targets[i]}" "${filters[i]}"
  done
  exit 0
fi

selected=()
if ((${#only[@]})); then
  for n in "${only[@]}"; do
    found=""
    for i in "${!names[@]}"; do [[ ${names[i]} == "$n" ]] && found=$i; done
    [[ -n $found ]] || { echo "mutants: no mutation named '$n' (see --list)" >&2; exit 2; }
    selected+=("$found")
  done
else
  selected=("${!names[@]}")
fi

# count FILE TEXT: how many times TEXT occurs in FILE (exact, byte for byte).
count() {
  FIND=$2 python3 -c '
import os, sys
with open(sys.argv[1], encoding="utf-8", newline="") as f:
    print(f.read().count(os.environ["FIND"]))' "$1"
}

# apply FILE TEXT REPLACEMENT: rewrites FILE with TEXT, which must occur exactly once, replaced.
apply() {
  FIND=$2 REPL=$3 python3 -c '
import os, sys
path, find, repl = sys.argv[1], os.environ["FIND"], os.environ["REPL"]
with open(path, encoding="utf-8", newline="") as f:
    text = f.read()
n = text.count(find)
if n != 1:
    sys.exit(f"{path}: the text to replace occurs {n} times, not once")
with open(path, "w", encoding="utf-8", newline="") as f:
    f.write(text.replace(find, repl))' "$1"
}

# test_exists SRC_ROOT Suite.Name: whether tests/ defines that test.
test_exists() {
  local suite=${2%%.*} test=${2#*.}
  grep -qE "^[[:space:]]*TEST(_F|_P)?\([[:space:]]*${suite}[[:space:]]*,[[:space:]]*${test}[[:space:]]*\)" \
    "$1"/tests/*.cpp
}

# verify SRC_ROOT: every selected mutation applies there and names tests that exist.
verify() {
  local src=$1 bad=0 i n pattern
  for i in "${selected[@]}"; do
    if [[ ! -f $src/${files[i]} ]]; then
      echo "mutants: ${names[i]}: ${files[i]} does not exist" >&2
      bad=1
      continue
    fi
    n=$(count "$src/${files[i]}" "${finds[i]}")
    if [[ $n != 1 ]]; then
      echo "mutants: ${names[i]}: its text occurs $n times in ${files[i]} (expected once); the code it" \
        "mutates has moved or changed: update the mutation in tests/mutants.sh" >&2
      bad=1
    fi
    if ! grep -qE "NAME ${targets[i]}[[:space:]]" "$src/tests/CMakeLists.txt"; then
      echo "mutants: ${names[i]}: no test binary ${targets[i]} in tests/CMakeLists.txt" >&2
      bad=1
    fi
    IFS=: read -ra patterns <<<"${filters[i]}"
    for pattern in "${patterns[@]}"; do
      if [[ ! $pattern =~ ^[A-Za-z_][A-Za-z0-9_]*\.[A-Za-z_][A-Za-z0-9_]*$ ]] || ! test_exists "$src" "$pattern"; then
        echo "mutants: ${names[i]}: no test $pattern in tests/*.cpp" >&2
        bad=1
      fi
    done
  done
  return $bad
}

if ((check_only)); then
  verify "$root" || exit 1
  echo "mutants: all ${#selected[@]} mutations apply exactly once to the current sources"
  exit 0
fi

# ---------------------------------------------------------------------------------------------
# The copy: tracked and untracked-not-ignored files. Only files whose content differs are
# rewritten (with a fresh mtime, so that ninja rebuilds them); files gone from the tree are removed.
git -C "$root" rev-parse --show-toplevel >/dev/null 2>&1 || die "$root is not a git checkout"
work=${work:-$root/build/mutants}
mkdir -p "$work"
work=$(cd "$work" && pwd)
src=$work/src bld=$work/build logs=$work/logs saved=$work/original
mkdir -p "$src" "$logs" "$saved"

echo "mutants: copying the sources to $src"
git -C "$root" ls-files -co --exclude-standard -z | python3 -c '
import os, shutil, sys
root, dst, work = sys.argv[1], sys.argv[2], sys.argv[3]
wanted = set()
for name in sys.stdin.buffer.read().split(b"\0"):
    if not name:
        continue
    rel = os.fsdecode(name)
    from_path, to_path = os.path.join(root, rel), os.path.join(dst, rel)
    if os.path.realpath(from_path).startswith(work + os.sep):
        continue  # the work folder itself, when it lies inside the tree unignored
    if os.path.islink(from_path):
        wanted.add(rel)
        target = os.readlink(from_path)
        if not (os.path.islink(to_path) and os.readlink(to_path) == target):
            if os.path.lexists(to_path):
                os.remove(to_path)
            os.makedirs(os.path.dirname(to_path), exist_ok=True)
            os.symlink(target, to_path)
        continue
    if not os.path.isfile(from_path):
        continue  # deleted meanwhile, or a submodule
    wanted.add(rel)
    with open(from_path, "rb") as f:
        data = f.read()
    if os.path.isfile(to_path) and not os.path.islink(to_path):
        with open(to_path, "rb") as f:
            if f.read() == data:
                continue
    if os.path.lexists(to_path):
        os.remove(to_path)
    os.makedirs(os.path.dirname(to_path), exist_ok=True)
    with open(to_path, "wb") as f:
        f.write(data)
    shutil.copymode(from_path, to_path)
for d, _, names in os.walk(dst):
    for n in names:
        p = os.path.join(d, n)
        if os.path.relpath(p, dst) not in wanted:
            os.remove(p)
' "$root" "$src" "$work"

verify "$src" || die "the mutations do not apply to the copy (see above)"

# While a mutation is applied, its file's original content is in $saved; put back on any exit.
applied=""
restore() {
  if [[ -n $applied ]]; then
    cp "$saved/$(basename "$applied")" "$src/$applied"  # a fresh mtime: ninja rebuilds the object
    applied=""
  fi
}
trap restore EXIT
trap 'restore; exit 130' INT TERM

if [[ ! -f $bld/build.ninja ]]; then
  echo "mutants: configuring a CPU build in $bld"
  cmake -S "$src" -B "$bld" -G Ninja -DCMAKE_BUILD_TYPE=Release -DRESPIN_WITH_CUDA=OFF -DRESPIN_BUILD_UI=OFF \
    -DRESPIN_BUILD_BENCH=OFF "${cmake_args[@]}" >"$logs/configure.log" 2>&1 ||
    die "configuring the copy failed (log: $logs/configure.log)"
fi

test_timeout=${RESPIN_MUTANT_TEST_TIMEOUT:-1800}

# build TARGET LOG: builds one test binary of the copy.
build() {
  cmake --build "$bld" --target "$1" -j "$jobs" >"$2" 2>&1
}

# run_tests TARGET FILTER LOG: runs the binary; sets run_rc, run_count (tests run) and run_failed.
run_tests() {
  run_rc=0
  (cd "$bld/tests" && timeout "$test_timeout" "./$1" --gtest_filter="$2" --gtest_color=no) >"$3" 2>&1 || run_rc=$?
  run_count=$(sed -nE 's/^\[==========\] ([0-9]+) tests? from .* ran.*/\1/p' "$3" | tail -n 1)
  run_count=${run_count:-0}
  run_failed=$(sed -nE 's/^\[  FAILED  \] ([A-Za-z_][A-Za-z0-9_]*\.[A-Za-z0-9_/]+).*/\1/p' "$3" | sort -u | paste -sd, -)
}

# The unmutated tests first: a mutation is caught only if the same tests pass without it.
started=$SECONDS
declare -A base_filter=()
for i in "${selected[@]}"; do
  t=${targets[i]}
  base_filter[$t]=${base_filter[$t]:+${base_filter[$t]}:}${filters[i]}
done
for t in "${!base_filter[@]}"; do
  filter=$(tr : '\n' <<<"${base_filter[$t]}" | sort -u | paste -sd: -)
  echo "mutants: baseline: building $t (log: $logs/baseline.$t.build.log)"
  build "$t" "$logs/baseline.$t.build.log" || die "the baseline does not build (log: $logs/baseline.$t.build.log)"
  echo "mutants: baseline: running $t --gtest_filter=$filter"
  run_tests "$t" "$filter" "$logs/baseline.$t.test.log"
  if ((run_rc != 0)); then
    die "the baseline fails: $t ${run_failed:-exit $run_rc} without any mutation (log: $logs/baseline.$t.test.log)"
  fi
  ((run_count > 0)) || die "the baseline ran no tests of $t for filter $filter"
done
echo "mutants: baseline passes ($((SECONDS - started)) s)"

results=() failed_tests=() times=() bad=0
for i in "${selected[@]}"; do
  name=${names[i]} file=${files[i]} t=${targets[i]}
  t0=$SECONDS
  echo "mutants: $name: ${descriptions[i]} ($file)"
  cp "$src/$file" "$saved/$(basename "$file")"
  applied=$file
  if ! apply "$src/$file" "${finds[i]}" "${repls[i]}"; then
    restore
    results+=("did not apply") failed_tests+=("-") times+=("$((SECONDS - t0))")
    bad=1
    continue
  fi
  if ! build "$t" "$logs/$name.build.log"; then
    restore
    echo "mutants: $name: did not build (log: $logs/$name.build.log)"
    results+=("did not build") failed_tests+=("-") times+=("$((SECONDS - t0))")
    bad=1
    continue
  fi
  run_tests "$t" "${filters[i]}" "$logs/$name.test.log"
  restore
  if ((run_rc == 0 && run_count == 0)); then
    results+=("no tests ran") failed_tests+=("-")
    bad=1
  elif ((run_rc == 0)); then
    results+=("MISSED") failed_tests+=("(all $run_count passed)")
    bad=1
  elif ((run_rc == 124)); then
    results+=("caught") failed_tests+=("(timed out after ${test_timeout} s)")
  elif [[ -z $run_failed ]]; then
    results+=("caught") failed_tests+=("(exit $run_rc, no test reported failing)")
  else
    results+=("caught") failed_tests+=("$run_failed")
  fi
  times+=("$((SECONDS - t0))")
  echo "mutants: $name: ${results[-1]} ${failed_tests[-1]} (log: $logs/$name.test.log)"
done

# A last build of the restored sources, so that the copy's binaries are the unmutated ones again.
for t in "${!base_filter[@]}"; do build "$t" "$logs/restored.$t.build.log" || true; done

echo
printf '%-30s %-12s %-14s %6s  %s\n' mutation binary result time "tests that failed"
for k in "${!selected[@]}"; do
  i=${selected[k]}
  printf '%-30s %-12s %-14s %5ss  %s\n' "${names[i]}" "${targets[i]}" "${results[k]}" "${times[k]}" \
    "${failed_tests[k]}"
done
echo
echo "mutants: $((SECONDS - started)) s in all; logs in $logs"
if ((bad)); then
  echo "mutants: not every mutation was caught" >&2
  exit 1
fi
echo "mutants: every mutation was caught"
