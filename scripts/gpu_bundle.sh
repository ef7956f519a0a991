#!/usr/bin/env bash
# Prepares, on a Debian 12 machine (this project's development machine), the headers and libraries
# that a GPU server with PyTorch but without internet or apt lacks: nlohmann-json, CLI11, SQLite, OpenSSL,
# GoogleTest/GMock and ICU, as Debian packages fetched with `apt-get download` and unpacked with
# `dpkg -x` into one folder (default .gpu-bundle/, ignored by git: it is build output, never
# committed). scripts/gpu_check.sh builds against it on the GPU machine.
# Usage: scripts/gpu_bundle.sh [DIR]      (static archives other than GoogleTest's are dropped)
set -euo pipefail
cd "$(dirname "$0")/.."
dest=$(realpath -m "${1:-.gpu-bundle}")
packages=(nlohmann-json3-dev libcli11-dev libgtest-dev libgmock-dev libicu-dev libicu72
          libsqlite3-dev libsqlite3-0 libssl-dev libssl3)  # the run store and sha256

command -v apt-get >/dev/null && command -v dpkg >/dev/null || { echo "gpu_bundle: needs apt-get and dpkg (Debian)" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
if ! (cd "$tmp" && apt-get download "${packages[@]}" >/dev/null 2>"$tmp/apt.err"); then
  # The package lists may be missing on a fresh machine.
  if [[ $(id -u) -eq 0 ]]; then apt-get update -qq; else sudo apt-get update -qq; fi
  (cd "$tmp" && apt-get download "${packages[@]}" >/dev/null) || { cat "$tmp/apt.err" >&2; exit 1; }
fi
rm -rf "$dest.partial" && mkdir -p "$dest.partial"
for deb in "$tmp"/*.deb; do dpkg -x "$deb" "$dest.partial"; done
# ICU's static archives are large and unused (the build links the shared libraries).
find "$dest.partial" -name '*.a' ! -name 'libgtest*.a' ! -name 'libgmock*.a' -delete  # shared libraries only (carry limit: 64 MiB)
{
  echo "# Debian packages unpacked here by scripts/gpu_bundle.sh on $(date -u +%Y-%m-%dT%H:%MZ)"
  for deb in "$tmp"/*.deb; do echo "$(dpkg-deb -f "$deb" Package) $(dpkg-deb -f "$deb" Version)"; done
} >"$dest.partial/PACKAGES"
rm -rf "$dest" && mv "$dest.partial" "$dest"
echo "gpu_bundle: $(du -sh "$dest" | cut -f1) in $dest ($(grep -vc "^#" "$dest/PACKAGES") packages)" >&2
