#!/usr/bin/env bash
# The Debian package end to end (ctest: package_deb, label slow):
#   tests/test_package.sh BUILD_DIR
# 1. the desktop entry and the AppStream metainfo in packaging/ validate (desktop-file-validate,
#    appstreamcli validate --no-net) and agree with each other, the icons and project(VERSION);
# 2. cpack -G DEB in BUILD_DIR (built already: respin and respin-workbench) into a temporary folder;
# 3. the control fields: name, version, Depends found by dpkg-shlibdeps (Qt, Debian's libtorch)
#    plus libqt6svg6;
# 4. dpkg -x into a temporary root: both programs, the desktop entry, the metainfo and every icon
#    (PNG sizes checked) are there, and every shared library the programs need resolves;
# 5. the programs from that root: respin --version, respin init-model (a tiny random model),
#    respin-workbench --version and --screenshot of the model view with that model, offscreen;
#    the PNG must exist, be large and show the whole window.
# Nothing outside the temporary folder is touched (HOME, XDG_* and RESPIN_HOME point into it).
# Any missing tool or feature is a failure. The one skip (exit 77): a build against a libtorch that
# is not Debian's, which no .deb can depend on.
set -euo pipefail

src=$(cd "$(dirname "$0")/.." && pwd)
[[ $# -eq 1 ]] || { echo "usage: $0 BUILD_DIR" >&2; exit 2; }
build=$(cd "$1" && pwd)
tmp=$(mktemp -d "${TMPDIR:-/tmp}/respin-package.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

fail() { echo "FAIL: $*" >&2; exit 1; }
step() { echo "== $*"; }
cache() { sed -n "s/^$1:[A-Z]*=//p" "$build/CMakeCache.txt"; }

[[ -f $build/CMakeCache.txt && -f $build/CPackConfig.cmake ]] || fail "$build is not a configured build directory"
for tool in desktop-file-validate appstreamcli dpkg dpkg-deb dpkg-shlibdeps file ldd; do
  command -v "$tool" >/dev/null || fail "$tool not found (scripts/setup.sh installs it)"
done
cpack=$(dirname "$(cache CMAKE_COMMAND)")/cpack
[[ -x $cpack ]] || fail "cpack not found next to $(cache CMAKE_COMMAND)"
version=$(cache CMAKE_PROJECT_VERSION)
[[ -n $version ]] || fail "no CMAKE_PROJECT_VERSION in $build/CMakeCache.txt"
[[ $(cache RESPIN_BUILD_UI) == ON && $(cache RESPIN_WITH_TORCH) == ON ]] ||
  fail "$build was configured without the workbench (RESPIN_BUILD_UI and RESPIN_WITH_TORCH must be ON)"

# The .deb depends on Debian's libtorch (dpkg-shlibdeps needs every library to belong to a package):
# a build against a PyTorch installation's libtorch (the GPU bundle) cannot be packaged. ctest shows
# this as skipped (SKIP_RETURN_CODE 77), not as passed.
torch_lib=$(readlink -f "$(cache TORCH_LIBRARY)")
if ! torch_owner=$(dpkg -S "$torch_lib" 2>/dev/null); then
  echo "SKIPPED: libtorch $torch_lib belongs to no Debian package; the .deb needs Debian's libtorch-dev build" >&2
  exit 77
fi
torch_pkg=${torch_owner%%:*}

desktop=respin-workbench.desktop
metainfo=io.github.respin.Workbench.metainfo.xml
sizes=(16 24 32 48 64 128 256 512)

# -- 1. sources -----------------------------------------------------------------------------------
step "desktop-file-validate packaging/$desktop"
out=$(desktop-file-validate "$src/packaging/$desktop" 2>&1) || fail "desktop-file-validate: $out"
[[ -z $out ]] && echo "valid" || echo "$out"
grep -qiE '(error|warning):' <<<"$out" && fail "desktop-file-validate reported errors or warnings"

step "appstreamcli validate --no-net packaging/$metainfo"
appstreamcli validate --no-net "$src/packaging/$metainfo" || fail "appstreamcli validate failed"

step "cross-checks: version, launchable, icon name, icon sizes"
grep -q "<release version=\"$version\"" "$src/packaging/$metainfo" ||
  fail "$metainfo has no <release version=\"$version\"> (project version $version)"
grep -q "<launchable type=\"desktop-id\">$desktop</launchable>" "$src/packaging/$metainfo" ||
  fail "$metainfo does not launch $desktop"
grep -qx 'Icon=respin-workbench' "$src/packaging/$desktop" || fail "$desktop: Icon= is not respin-workbench"
grep -qx 'Exec=respin-workbench %f' "$src/packaging/$desktop" || fail "$desktop: Exec= is not respin-workbench %f"
for n in "${sizes[@]}"; do
  f=$src/resources/icons/respin-workbench-$n.png
  file "$f" | grep -q "PNG image data, $n x $n," || fail "$f is not a $n x $n PNG: $(file -b "$f")"
done
echo "version $version, icons ${sizes[*]} px"

# -- 2. cpack -------------------------------------------------------------------------------------
step "cpack -G DEB in $build"
if ! (cd "$build" && "$cpack" -G DEB -B "$tmp/out" --config CPackConfig.cmake >"$tmp/cpack.log" 2>&1); then
  tail -n 40 "$tmp/cpack.log" >&2
  fail "cpack failed"
fi
debs=("$tmp"/out/*.deb)
[[ ${#debs[@]} -eq 1 && -f ${debs[0]} ]] || fail "expected one .deb, cpack made: $(ls "$tmp/out")"
deb=${debs[0]}
echo "$(basename "$deb"): $(du -h "$deb" | cut -f1)"

# -- 3. control fields ----------------------------------------------------------------------------
step "control fields"
dpkg-deb -f "$deb" Package Version Architecture Section Depends
[[ $(dpkg-deb -f "$deb" Package) == respin-workbench ]] || fail "package name is not respin-workbench"
[[ $(dpkg-deb -f "$deb" Version) == "$version" ]] || fail "package version is not $version"
depends=$(dpkg-deb -f "$deb" Depends)
has_dep() { local d=", $depends,"; [[ $d == *", $1,"* || $d == *", $1 ("* || $d == *" | $1"[\ ,]* ]]; }
for p in libc6 libstdc++6 libqt6core6 libqt6widgets6 libqt6svg6 "$torch_pkg"; do
  has_dep "$p" || fail "Depends lacks $p (did dpkg-shlibdeps run?): $depends"
done

# -- 4. contents ----------------------------------------------------------------------------------
step "dpkg -x into $tmp/root"
dpkg -x "$deb" "$tmp/root"
root=$tmp/root
expect=(usr/bin/respin usr/bin/respin-workbench usr/share/applications/$desktop usr/share/metainfo/$metainfo
        usr/share/icons/hicolor/scalable/apps/respin-workbench.svg)
for n in "${sizes[@]}"; do expect+=("usr/share/icons/hicolor/${n}x$n/apps/respin-workbench.png"); done
for f in "${expect[@]}"; do [[ -f $root/$f ]] || fail "the package lacks /$f"; done
for n in "${sizes[@]}"; do
  file "$root/usr/share/icons/hicolor/${n}x$n/apps/respin-workbench.png" | grep -q "PNG image data, $n x $n," ||
    fail "the installed ${n}x$n icon is not $n x $n"
done
[[ -x $root/usr/bin/respin && -x $root/usr/bin/respin-workbench ]] || fail "the programs are not executable"
desktop-file-validate "$root/usr/share/applications/$desktop" || fail "the installed desktop entry does not validate"
appstreamcli validate --no-net "$root/usr/share/metainfo/$metainfo" >/dev/null || fail "the installed metainfo does not validate"
echo "${#expect[@]} files present; $(find "$root" -type f | wc -l) files in the package"
for b in respin respin-workbench; do
  missing=$(ldd "$root/usr/bin/$b" | grep 'not found' || true)
  [[ -z $missing ]] || fail "$b: unresolved libraries: $missing"
done

# -- 5. run the programs from the package ---------------------------------------------------------
export HOME=$tmp/home XDG_CONFIG_HOME=$tmp/home/.config XDG_CACHE_HOME=$tmp/home/.cache
export XDG_DATA_HOME=$tmp/home/.local/share XDG_RUNTIME_DIR=$tmp/runtime RESPIN_HOME=$tmp/respin-home
export QT_QPA_PLATFORM=offscreen
mkdir -p "$HOME" "$XDG_RUNTIME_DIR" && chmod 700 "$XDG_RUNTIME_DIR"

step "respin --version"
out=$("$root/usr/bin/respin" --version) || fail "respin --version failed"
echo "$out"
grep -qF "$version" <<<"$out" || fail "respin --version does not say $version"

step "respin init-model (tiny random model for the screenshot)"
"$root/usr/bin/respin" init-model --out "$tmp/model" --hidden 64 --intermediate 128 --layers 2 --heads 4 \
  --kv-heads 2 >/dev/null || fail "respin init-model failed"

step "respin-workbench --version"
out=$("$root/usr/bin/respin-workbench" --version 2>/dev/null) || fail "respin-workbench --version failed"
echo "$out"
grep -qF "$version" <<<"$out" || fail "respin-workbench --version does not say $version"

step "respin-workbench --screenshot --view model"
"$root/usr/bin/respin-workbench" --help 2>/dev/null | grep -q -- --screenshot ||
  fail "respin-workbench has no --screenshot option (app/workbench_main.cpp)"
shot=$tmp/shot.png
"$root/usr/bin/respin-workbench" --screenshot "$shot" --view model --model "$tmp/model" --db "$tmp/runs.db" ||
  fail "respin-workbench --screenshot failed"
[[ -f $shot ]] || fail "no screenshot written"
info=$(file -b "$shot")
bytes=$(stat -c %s "$shot")
echo "$info, $bytes bytes"
[[ $info =~ ^PNG\ image\ data,\ ([0-9]+)\ x\ ([0-9]+), ]] || fail "the screenshot is not a PNG: $info"
((BASH_REMATCH[1] >= 800 && BASH_REMATCH[2] >= 500)) || fail "the screenshot is only ${BASH_REMATCH[1]} x ${BASH_REMATCH[2]}"
((bytes >= 20000)) || fail "the screenshot is only $bytes bytes (an empty window?)"

echo "PASS: $(basename "$deb") installs and runs"
