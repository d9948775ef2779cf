#!/usr/bin/env bash
# .ci/deb.sh BUILD_DIR -- the Debian packages as a user gets them (docs/install.md): cpack
# makes them from BUILD_DIR, apt-get installs them into this system (with what they depend
# on), README's first program is built against the installed files with `pkg-config par` and
# with `find_package(par)`, and runs under the installed parrun (/usr/bin). The packages are
# removed again at the end, whatever happened. Needs root (or sudo); CI only.
set -euo pipefail
B=$(cd "${1:?usage: .ci/deb.sh BUILD_DIR}" && pwd)
SRC=$(cd "$(dirname "$0")/.." && pwd)
SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"
TMP=$(mktemp -d)
PKGS=(libpar0 libpar-dev par-tools)
cleanup() {
  $SUDO apt-get purge -y -qq "${PKGS[@]}" >/dev/null 2>&1 || true
  rm -rf "$TMP"
}
trap cleanup EXIT

rm -rf "$B/deb"
cpack --config "$B/CPackConfig.cmake" -G DEB -B "$B/deb" >"$TMP/cpack.log" 2>&1 ||
  { cat "$TMP/cpack.log"; exit 1; }
ls "$B"/deb/par_*.deb
for f in "$B"/deb/par_*.deb; do
  echo "-- $(basename "$f"): $(dpkg-deb -f "$f" Package) depends on: $(dpkg-deb -f "$f" Depends)"
done
[ ! -e /usr/bin/parrun ] || { echo "FAIL: a parrun is installed already" >&2; exit 1; }
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$B"/deb/par_*.deb >/dev/null

sed -n '/^## A first program/,/^## /p' "$SRC/README.md" | sed -n '/^```c$/,/^```$/p' | sed '1d;$d' \
  >"$TMP/prog.c"
cd "$TMP"
env -u PKG_CONFIG_PATH cc prog.c $(env -u PKG_CONFIG_PATH pkg-config --cflags --libs par) -o prog_pc
cat >CMakeLists.txt <<'CM'
cmake_minimum_required(VERSION 3.18)
project(first C)
find_package(par 0.1 REQUIRED)
add_executable(prog_cmake prog.c)
target_link_libraries(prog_cmake PRIVATE par::par)
CM
cmake -S . -B b >/dev/null && cmake --build b >/dev/null
ldd prog_pc | grep -Eq 'libpar.so.0 => (/usr)?/lib/' || { echo "FAIL: prog_pc does not load the installed libpar.so.0" >&2; exit 1; }
for p in ./prog_pc b/prog_cmake; do
  out=$(env -u LD_LIBRARY_PATH /usr/bin/parrun -n 4 "$p")
  echo "$out"
  [ "$(grep -c 'sum of ranks = 6$' <<<"$out")" = 4 ] || { echo "FAIL: $p under parrun" >&2; exit 1; }
done
/usr/bin/parrun --version
/usr/bin/train --steps 20 --log-every 10 >/dev/null
echo "deb: ok"
