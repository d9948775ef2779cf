#!/usr/bin/env bash
# test_version.sh BUILD_DIR -- every tool answers --version with "TOOL (par) VERSION", exit 0
# and nothing else, VERSION being the one in par.h, which CMake also wrote into par.pc and
# the CMake package (one source for the number).
set -u
B=${1:?usage: test_version.sh BUILD_DIR}
SRC=$(cd "$(dirname "$0")/../.." && pwd)
FAILS=0
fail() {
  echo "FAIL: $*" >&2
  FAILS=$((FAILS + 1))
}
v() { sed -n "s/^#define PAR_VERSION_$1 \([0-9]*\)$/\1/p" "$SRC/include/par.h"; }
want="$(v MAJOR).$(v MINOR).$(v PATCH)"
[ "$want" != ".." ] || { echo "FAIL: no version in par.h" >&2; exit 1; }
for t in parrun parbench parlayout train; do
  out=$("$B/bin/$t" --version 2>&1)
  rc=$?
  [ "$rc" = 0 ] || fail "$t --version exited $rc"
  [ "$out" = "$t (par) $want" ] || fail "$t --version printed '$out', want '$t (par) $want'"
done
grep -qx "Version: $want" "$B/par.pc" || fail "par.pc: $(grep Version "$B/par.pc"), want $want"
grep -q "set(PACKAGE_VERSION \"$want\")" "$B/parConfigVersion.cmake" ||
  fail "parConfigVersion.cmake does not say $want"
[ "$FAILS" = 0 ] || exit 1
echo "test_version: ok ($want)"
