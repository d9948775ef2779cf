#!/usr/bin/env bash
# test_mesh_example.sh BUILD_DIR -- runs examples/mesh.c under parrun: 8 ranks (mp=2, pp=2)
# must report success and every rank's documented groups; the configuration line is logged
# once at info level; an invalid configuration fails with the library's message.
set -u
B="$1/bin"
fails=0
fail() {
  echo "FAIL: $*" >&2
  fails=$((fails + 1))
}
for p in parrun mesh; do [ -x "$B/$p" ] || { echo "FAIL: $B/$p not built" >&2; exit 1; }; done

out=$(PAR_LOG=info "$B/parrun" -n 8 --timeout 120 "$B/mesh" 2>/tmp/mesh_example_err.$$)
rc=$?
err=$(cat /tmp/mesh_example_err.$$)
rm -f /tmp/mesh_example_err.$$
[ $rc = 0 ] || fail "parrun -n 8 mesh exited $rc: $out $err"

expect_line() {
  grep -qxF "$1" <<<"$out" || fail "missing line: $1"
}
expect_line "[0] model parallel 2, pipeline parallel 2, data parallel 2 (world 8)"
expect_line "[0] ok: both match the single-process result on all 8 ranks"
# The 8-rank picture of docs/parallelism.md, rank by rank.
expect_line "[0] rank 0: mp group [0,1] (index 0), pp group [0,2] (index 0), dp group [0,4] (index 0)"
expect_line "[1] rank 1: mp group [0,1] (index 1), pp group [1,3] (index 0), dp group [1,5] (index 0)"
expect_line "[2] rank 2: mp group [2,3] (index 0), pp group [0,2] (index 1), dp group [2,6] (index 0)"
expect_line "[3] rank 3: mp group [2,3] (index 1), pp group [1,3] (index 1), dp group [3,7] (index 0)"
expect_line "[4] rank 4: mp group [4,5] (index 0), pp group [4,6] (index 0), dp group [0,4] (index 1)"
expect_line "[5] rank 5: mp group [4,5] (index 1), pp group [5,7] (index 0), dp group [1,5] (index 1)"
expect_line "[6] rank 6: mp group [6,7] (index 0), pp group [4,6] (index 1), dp group [2,6] (index 1)"
expect_line "[7] rank 7: mp group [6,7] (index 1), pp group [5,7] (index 1), dp group [3,7] (index 1)"

# One info line for the whole job, from rank 0.
n=$(grep -c 'info: model parallel 2, pipeline parallel 2, data parallel 2 (world 8)' <<<"$err")
[ "$n" = 1 ] || fail "expected 1 info line with the configuration, got $n: $err"

# mp=3 does not divide 8 ranks: every rank fails with the library's message.
out=$("$B/parrun" -n 8 --timeout 120 "$B/mesh" --mp 3 2>&1)
rc=$?
[ $rc != 0 ] || fail "mesh --mp 3 on 8 ranks succeeded"
grep -qF 'PAR_ERR_INVALID: world size 8 is not divisible by model parallel size 3' <<<"$out" ||
  fail "mesh --mp 3: no library message in: $out"

# 6 ranks, mp=3, pp=2.
out=$("$B/parrun" -n 6 --timeout 120 "$B/mesh" --mp 3 --pp 2 2>&1)
rc=$?
[ $rc = 0 ] || fail "parrun -n 6 mesh --mp 3 --pp 2 exited $rc: $out"
grep -qxF "[0] ok: both match the single-process result on all 6 ranks" <<<"$out" ||
  fail "6 ranks: no success line in: $out"
grep -qxF "[4] rank 4: mp group [3,4,5] (index 1), pp group [1,4] (index 1), dp group [4] (index 0)" <<<"$out" ||
  fail "6 ranks: rank 4's groups wrong in: $out"

if [ $fails -ne 0 ]; then
  echo "$fails check(s) failed" >&2
  exit 1
fi
echo "mesh example: all checks passed"
