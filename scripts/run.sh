#!/usr/bin/env bash
# Sets up and builds, makes sure the default model exists (training it once with `respin forge
# --preset small`, about 20 minutes on 2 cores, with a progress bar; an interrupted training
# resumes from its checkpoint), shows it, measures its perplexity on the corpus' test split and
# continues a prompt, then opens the workbench on it when a display is available (--no-gui skips).
set -euo pipefail
cd "$(dirname "$0")/.."
gui=1
[[ "${1:-}" == "--no-gui" ]] && gui=0

scripts/setup.sh
build=$(scripts/build.sh)
respin=$build/app/respin
data_home=${RESPIN_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/respin}
model=$data_home/models/small

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
"$respin" eval --model "$model" --text-file "$test_text" --seq-len 512
echo
"$respin" generate --model "$model" --prompt "The Congress of the United States" --max-new-tokens 40

if ((gui)) && [[ -n "${DISPLAY:-}" && -x $build/ui/respin-workbench ]]; then
  exec "$build/ui/respin-workbench" "$model"
fi
