#!/usr/bin/env bash
# Renders the committed PNG icons from the two SVG drawings with rsvg-convert (Debian package
# librsvg2-bin, installed by scripts/setup.sh). Run it after editing either SVG and commit the PNGs:
#   resources/icons/render-icons.sh
# 16 and 24 px come from respin-workbench-small.svg (simplified, thicker strokes), the others from
# respin-workbench.svg. Output: respin-workbench-<N>.png next to this script (8-bit RGBA, no
# timestamps, so an unchanged drawing renders to identical files with the same librsvg).
set -euo pipefail
cd "$(dirname "$0")"
command -v rsvg-convert >/dev/null || { echo "render-icons: rsvg-convert not found (apt-get install librsvg2-bin)" >&2; exit 1; }
for n in 16 24 32 48 64 128 256 512; do
  svg=respin-workbench.svg
  ((n <= 24)) && svg=respin-workbench-small.svg
  rsvg-convert --width "$n" --height "$n" --format png "$svg" --output "respin-workbench-$n.png"
done
echo "render-icons: $(ls respin-workbench-*.png | wc -l) PNGs from $(rsvg-convert --version)"
