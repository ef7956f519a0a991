#!/usr/bin/env bash
# Drives the workbench by real X11 input under Xvfb (the xcb platform, as on a desktop; the tests
# use the offscreen platform) and saves what a user would see to PNGs: open a model, Ctrl+Enter
# to start a calibration with the run panel's values, wait for the run store to say it ended,
# the outliers view and a click into its grid, the runs view, the dark palette (Ctrl+Shift+D)
# over the outliers, calibration and compare views.
# Needs: xvfb, xdotool, imagemagick (apt-get install xvfb xdotool imagemagick; not part of the
# test set-up). Settings and the run store go to a scratch folder; the corpus is read from the
# data home. Usage: scripts/xvfb-session.sh MODEL_DIR [OUT_DIR] (OUT_DIR default build/xvfb)
set -uo pipefail
cd "$(dirname "$0")/.."
model=$(realpath "${1:?usage: scripts/xvfb-session.sh MODEL_DIR [OUT_DIR]}")
out=$(realpath -m "${2:-build/xvfb}")
wb=${RESPIN_WORKBENCH:-$(ls build/*/ui/respin-workbench 2>/dev/null | head -1)}
for tool in Xvfb xdotool import; do
  command -v $tool >/dev/null || { echo "xvfb-session: $tool missing (apt-get install xvfb xdotool imagemagick)" >&2; exit 1; }
done
[[ -x $wb ]] || { echo "xvfb-session: no respin-workbench built (scripts/build.sh)" >&2; exit 1; }
rm -rf "$out" && mkdir -p "$out/home"
export RESPIN_HOME=${RESPIN_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/respin}
export DISPLAY=:${RESPIN_XVFB_DISPLAY:-99} QT_QPA_PLATFORM=xcb XDG_CONFIG_HOME="$out/home"
Xvfb "$DISPLAY" -screen 0 1600x1000x24 >"$out/xvfb.log" 2>&1 &
xpid=$!
trap 'kill $wpid $xpid 2>/dev/null' EXIT
sleep 2
"$wb" --db "$out/runs.db" "$model" >"$out/workbench.log" 2>&1 &
wpid=$!
sleep 4
win=$(xdotool search --name "ReSpin Workbench" | head -1)
[[ -n $win ]] || { echo "xvfb-session: the window did not appear (log: $out/workbench.log)" >&2; exit 1; }
n=0
shot() { sleep "${2:-2}"; n=$((n + 1)); import -window root "$(printf '%s/%02d-%s.png' "$out" $n "$1")"; echo "$(printf '%02d' $n)-$1.png"; }
key() { xdotool windowfocus --sync "$win" 2>/dev/null; xdotool key "$1" 2>/dev/null; }
shot opened 1
key ctrl+Return
shot started 5
for _ in $(seq 1 120); do
  sleep 5
  python3 - "$out/runs.db" <<'PY' 2>/dev/null && break
import sqlite3, sys
c = sqlite3.connect("file:%s?mode=ro" % sys.argv[1], uri=True)
r = c.execute("select status from runs order by id desc limit 1").fetchone()
sys.exit(0 if r and r[0] in ("finished", "failed", "cancelled") else 1)
PY
done
shot ended
key ctrl+2
shot outliers
xdotool mousemove 480 200 click 1 2>/dev/null
shot outliers-cell
key ctrl+3
shot runs
key ctrl+shift+d
shot runs-dark
key ctrl+2
shot outliers-dark
key ctrl+1
shot calibration-dark
key ctrl+4
shot compare-dark
echo "xvfb-session: screenshots in $out" >&2
