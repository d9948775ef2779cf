#!/usr/bin/env bash
# test_install.sh BUILD_DIR -- the installed library as a user meets it (docs/install.md).
# `cmake --install BUILD --prefix P` into a fresh non-default prefix, then README's first
# program is built against P four ways and run under P's parrun: pkg-config (shared, with the
# RPATH docs/install.md gives), pkg-config --static against libpar.a alone, find_package(par)
# with par::par and with par::par_static. Then P is moved, and par.pc and the CMake package
# must follow it (they are relocatable). Also: par.pc names no absolute library file and no
# build directory, and P's tools run with no LD_LIBRARY_PATH.
set -u
B=$(cd "${1:?usage: test_install.sh BUILD_DIR}" && pwd)
SRC=$(cd "$(dirname "$0")/../.." && pwd)
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
FAILS=0
fail() {
  echo "FAIL: $*" >&2
  FAILS=$((FAILS + 1))
}
command -v pkg-config >/dev/null || { echo "FAIL: pkg-config is not installed" >&2; exit 1; }
# A sanitizer build's libpar needs its programs built with the same sanitizers.
SAN=$(sed -n 's/^PAR_SANITIZE:[A-Z]*=\([a-z].*\)/\1/p' "$B/CMakeCache.txt") # not OFF or empty
CC=$(sed -n 's/^CMAKE_C_COMPILER:[A-Z]*=//p' "$B/CMakeCache.txt")
CFLAGS=(${SAN:+-fsanitize=$SAN})
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=0}

P="$TMP/prefix"
cmake --install "$B" --prefix "$P" >"$TMP/install.log" 2>&1 || {
  echo "FAIL: cmake --install: $(tail -3 "$TMP/install.log")" >&2
  exit 1
}
LIBDIR=$(dirname "$(find "$P" -name par.pc)")/..
LIBDIR=$(cd "$LIBDIR" && pwd)
for f in include/par.h bin/parrun bin/parbench bin/parlayout bin/train; do
  [ -e "$P/$f" ] || fail "not installed: $f"
done
for f in libpar.so libpar.a cmake/par/parConfig.cmake pkgconfig/par.pc; do
  [ -e "$LIBDIR/$f" ] || fail "not installed: lib/$f"
done
grep -n '/[^ ]*\.so\|/[^ ]*\.a\b' "$LIBDIR/pkgconfig/par.pc" && fail "par.pc names a library file"
grep -n "$B\|$SRC" "$LIBDIR/pkgconfig/par.pc" && fail "par.pc names the build or source tree"

# README's first program, as the README has it.
sed -n '/^## A first program/,/^## /p' "$SRC/README.md" | sed -n '/^```c$/,/^```$/p' | sed '1d;$d' \
  >"$TMP/prog.c"
grep -q par_world_create "$TMP/prog.c" || { echo "FAIL: no first program in README.md" >&2; exit 1; }

# run NAME PARRUN PROG: 3 ranks each print "sum of ranks = 3".
run() {
  if env -u LD_LIBRARY_PATH "$2" -n 3 "$3" >"$TMP/$1.out" 2>&1; then
    [ "$(grep -c 'sum of ranks = 3$' "$TMP/$1.out")" = 3 ] ||
      fail "$1: wrong output: $(head -3 "$TMP/$1.out")"
  else
    fail "$1: the program failed: $(tail -3 "$TMP/$1.out")"
  fi
}

# build_all P TAG: every way of building against prefix P.
build_all() {
  local p=$1 tag=$2 pc lib
  pc=$(dirname "$(find "$p" -name par.pc)")
  lib=$(PKG_CONFIG_PATH=$pc pkg-config --variable=libdir par)
  # shellcheck disable=SC2046
  if "$CC" "${CFLAGS[@]}" "$TMP/prog.c" -o "$TMP/pc_$tag" $(PKG_CONFIG_PATH=$pc pkg-config --cflags --libs par) \
      -Wl,-rpath,"$lib" 2>"$TMP/cc.log"; then
    run "pkg-config-$tag" "$p/bin/parrun" "$TMP/pc_$tag"
    env -u LD_LIBRARY_PATH ldd "$TMP/pc_$tag" | grep -q "libpar.so.* => $p/" ||
      fail "$tag: the program does not load $p's libpar.so: $(ldd "$TMP/pc_$tag" | grep libpar)"
  else
    fail "$tag: cc with pkg-config --cflags --libs par: $(head -5 "$TMP/cc.log")"
  fi
  # Static: a copy of the prefix without libpar.so, so that -lpar can only be libpar.a.
  rm -rf "$TMP/static" && cp -a "$p" "$TMP/static" && find "$TMP/static" -name 'libpar.so*' -delete
  local spc
  spc=$(dirname "$(find "$TMP/static" -name par.pc)")
  # shellcheck disable=SC2046
  if "$CC" "${CFLAGS[@]}" "$TMP/prog.c" -o "$TMP/pcs_$tag" \
      $(PKG_CONFIG_PATH=$spc pkg-config --static --cflags --libs par) 2>"$TMP/cc.log"; then
    run "pkg-config-static-$tag" "$p/bin/parrun" "$TMP/pcs_$tag"
  else
    fail "$tag: cc with pkg-config --static: $(head -5 "$TMP/cc.log")"
  fi
  mkdir -p "$TMP/cm_$tag"
  cat >"$TMP/cm_$tag/CMakeLists.txt" <<CM
cmake_minimum_required(VERSION 3.18)
project(first C)
find_package(par ${3} REQUIRED)
add_executable(prog_shared "$TMP/prog.c")
target_link_libraries(prog_shared PRIVATE par::par)
add_executable(prog_static "$TMP/prog.c")
target_link_libraries(prog_static PRIVATE par::par_static)
CM
  if cmake -S "$TMP/cm_$tag" -B "$TMP/cm_$tag/build" -DCMAKE_PREFIX_PATH="$p" -DCMAKE_C_COMPILER="$CC" \
      -DCMAKE_C_FLAGS="${CFLAGS[*]}" >"$TMP/cm.log" 2>&1 &&
    cmake --build "$TMP/cm_$tag/build" >>"$TMP/cm.log" 2>&1; then
    run "find_package-shared-$tag" "$p/bin/parrun" "$TMP/cm_$tag/build/prog_shared"
    run "find_package-static-$tag" "$p/bin/parrun" "$TMP/cm_$tag/build/prog_static"
  else
    fail "$tag: find_package(par): $(grep -m5 -i 'error' "$TMP/cm.log")"
  fi
}

VERSION=$(PKG_CONFIG_PATH=$LIBDIR/pkgconfig pkg-config --modversion par)
build_all "$P" installed "$VERSION"
env -u LD_LIBRARY_PATH "$P/bin/parrun" --version >/dev/null || fail "installed parrun does not run"
env -u LD_LIBRARY_PATH "$P/bin/train" --steps 2 >/dev/null || fail "installed train does not run"
# Moved: par.pc and the CMake package follow.
mv "$P" "$TMP/moved"
build_all "$TMP/moved" moved "$VERSION"

[ "$FAILS" = 0 ] || { echo "test_install: $FAILS failure(s)" >&2; exit 1; }
echo "test_install: ok (version $VERSION)"
