#!/usr/bin/env bash
# Sets up and builds, makes sure the default model exists (a model shipped in
# resources/models/small, when the checkout has one, is copied into the data home and checked
# against its SHA256SUMS; otherwise it is trained once with `respin forge --preset small`, 17 minutes
# on 2 Intel Xeon cores with AMX, about an hour on 2 AMD EPYC cores, with a progress bar; an interrupted training resumes from its checkpoint),
# shows it, measures its perplexity on 16 windows of the corpus' test split and continues a prompt, then opens
# the workbench on it when a display is available (--no-gui skips).
set -euo pipefail
cd "$(dirname "$0")/.."
gui=1
[[ "${1:-}" == "--no-gui" ]] && gui=0

scripts/setup.sh
build=$(scripts/build.sh)
respin=$build/app/respin
data_home=${RESPIN_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/respin}
model=$data_home/models/small

shipped=resources/models/small
if [[ ! -e $model && -f $shipped/SHA256SUMS ]]; then
  # The shipped model: copied whole into a temporary sibling, the copy checked against its
  # SHA256SUMS, then renamed into place (never over a folder that appeared meanwhile).
  mkdir -p "$(dirname "$model")"
  tmp=$(mktemp -d "$model.partial-XXXXXX")
  trap 'rm -rf "$tmp"' EXIT
  cp "$shipped"/* "$tmp"/
  if ! (cd "$tmp" && sha256sum --quiet -c SHA256SUMS); then
    echo "run: $shipped does not match its SHA256SUMS (a partial checkout, or Git LFS pointers instead of the files?)" >&2
    exit 1
  fi
  mv -T -n "$tmp" "$model"
  if [[ -d $tmp ]]; then
    echo "run: $model appeared while the shipped model was copied; left it as it is" >&2
    exit 1
  fi
  trap - EXIT
  echo "Installed the shipped default model into $model" >&2
fi
if [[ ! -f $model/README.md ]]; then
  resume=()
  [[ -f $model/checkpoint/state.json ]] && resume=(--resume)
  echo "Training the default model (respin forge --preset small) into $model" >&2
  "$respin" forge --preset small --out "$model" "${resume[@]}"
fi

test_text=$data_home/corpus/test.txt
[[ -f $test_text ]] || "$respin" corpus --write test "$test_text"
"$respin" info --model "$model"
echo
# A first number in seconds (16 windows of 512 tokens); `respin eval` without --max-windows scores
# the whole test split.
"$respin" eval --model "$model" --text-file "$test_text" --seq-len 512 --max-windows 16
echo
"$respin" generate --model "$model" --prompt "The Congress of the United States" --max-new-tokens 40

if ((gui)) && [[ -n "${DISPLAY:-}" && -x $build/ui/respin-workbench ]]; then
  exec "$build/ui/respin-workbench" "$model"
fi
