#!/usr/bin/env bash
# test_parlayout.sh BUILD_DIR -- parlayout's output against an oracle written in shell
# arithmetic (rank = (d*PP + p)*MP + m), its error messages and exit codes, and the mp clamp.
set -u
BIN="$1/bin/parlayout"
fails=0
fail() {
  echo "FAIL: $*" >&2
  fails=$((fails + 1))
}

[ -x "$BIN" ] || { echo "FAIL: $BIN not built" >&2; exit 1; }

# expect_json WORLD MP PP: the JSON parlayout must print, built from the formula.
expect_json() {
  local world=$1 mp=$2 pp=$3 dp=$(($1 / ($2 * $3)))
  local out="{\"world\":$world,\"mp\":$mp,\"pp\":$pp,\"dp\":$dp,\"groups\":{"
  local d p m k first
  # mp groups: fixed (d, p), m varies; numbered by d*PP + p.
  out+="\"mp\":["
  first=1
  for ((d = 0; d < dp; d++)); do for ((p = 0; p < pp; p++)); do
    [ $first = 1 ] || out+=","
    first=0
    out+="["
    for ((m = 0; m < mp; m++)); do
      [ $m = 0 ] || out+=","
      out+=$(((d * pp + p) * mp + m))
    done
    out+="]"
  done; done
  out+="],\"pp\":["
  first=1
  for ((d = 0; d < dp; d++)); do for ((m = 0; m < mp; m++)); do
    [ $first = 1 ] || out+=","
    first=0
    out+="["
    for ((p = 0; p < pp; p++)); do
      [ $p = 0 ] || out+=","
      out+=$(((d * pp + p) * mp + m))
    done
    out+="]"
  done; done
  out+="],\"dp\":["
  first=1
  for ((p = 0; p < pp; p++)); do for ((m = 0; m < mp; m++)); do
    [ $first = 1 ] || out+=","
    first=0
    out+="["
    for ((d = 0; d < dp; d++)); do
      [ $d = 0 ] || out+=","
      out+=$(((d * pp + p) * mp + m))
    done
    out+="]"
  done; done
  out+="]}}"
  echo "$out"
}

# The documented example, verbatim.
want='{"world":8,"mp":2,"pp":2,"dp":2,"groups":{"mp":[[0,1],[2,3],[4,5],[6,7]],"pp":[[0,2],[1,3],[4,6],[5,7]],"dp":[[0,4],[1,5],[2,6],[3,7]]}}'
got=$("$BIN" --world 8 --mp 2 --pp 2 --json)
[ "$got" = "$want" ] || fail "8/2/2 json: got $got"
[ "$(expect_json 8 2 2)" = "$want" ] || fail "the shell oracle disagrees with the documented example"

# Every factorisation of 1..24 against the oracle.
n=0
for ((w = 1; w <= 24; w++)); do
  for ((mp = 1; mp <= w; mp++)); do
    ((w % mp == 0)) || continue
    for ((pp = 1; pp <= w / mp; pp++)); do
      (((w / mp) % pp == 0)) || continue
      got=$("$BIN" --world $w --mp $mp --pp $pp --json 2>&1) || fail "$w/$mp/$pp exited non-zero"
      [ "$got" = "$(expect_json $w $mp $pp)" ] || fail "$w/$mp/$pp: got $got"
      n=$((n + 1))
    done
  done
done
[ $n = 203 ] || fail "checked $n configurations, expected 203"

# Text output names the configuration and every group.
text=$("$BIN" --world 12 --mp 3 --pp 2)
grep -qx 'world 12: model parallel 3, pipeline parallel 2, data parallel 2' <<<"$text" ||
  fail "text header: $text"
grep -qx 'mp: 4 groups of 3: \[\[0,1,2\],\[3,4,5\],\[6,7,8\],\[9,10,11\]\]' <<<"$text" ||
  fail "text mp groups: $text"
grep -qx 'pp: 6 groups of 2: \[\[0,3\],\[1,4\],\[2,5\],\[6,9\],\[7,10\],\[8,11\]\]' <<<"$text" ||
  fail "text pp groups: $text"
grep -qx 'dp: 6 groups of 2: \[\[0,6\],\[1,7\],\[2,8\],\[3,9\],\[4,10\],\[5,11\]\]' <<<"$text" ||
  fail "text dp groups: $text"

# expect_error EXIT MESSAGE ARGS...: the exit code and the stderr line.
expect_error() {
  local code=$1 msg=$2
  shift 2
  local out rc
  out=$("$BIN" "$@" 2>&1 >/dev/null)
  rc=$?
  [ $rc = "$code" ] || fail "parlayout $*: exit $rc, expected $code"
  grep -qxF "$msg" <<<"$out" || fail "parlayout $*: stderr '$out', expected '$msg'"
}
expect_error 1 'parlayout: error: world size 8 is not divisible by model parallel size 3' \
  --world 8 --mp 3
expect_error 1 'parlayout: error: world size 8 is not divisible by model parallel size * pipeline parallel size 6 (mp 2, pp 3)' \
  --world 8 --mp 2 --pp 3
expect_error 1 'parlayout: error: world size 8 is not divisible by model parallel size * pipeline parallel size 16 (mp 1, pp 16)' \
  --world 8 --pp 16
expect_error 1 'parlayout: error: model parallel size must be >= 1 (got 0)' --world 8 --mp 0
expect_error 1 'parlayout: error: pipeline parallel size must be >= 1 (got -1)' --world 8 --pp -1
expect_error 1 'parlayout: error: world size must be >= 1 (got 0)' --world 0
expect_error 2 'parlayout: --world is required' --mp 2
expect_error 2 "parlayout: 'two' is not an integer" --world 8 --mp two
expect_error 2 "parlayout: unknown argument '--tp'" --world 8 --tp 2

# The mp clamp: a warning, exit 0, and the clamped layout.
out=$("$BIN" --world 4 --mp 16 --json 2>/tmp/parlayout_warn.$$)
rc=$?
warn=$(cat /tmp/parlayout_warn.$$)
rm -f /tmp/parlayout_warn.$$
[ $rc = 0 ] || fail "clamp: exit $rc"
[ "$warn" = "parlayout: warning: model parallel size 16 is larger than the world size 4; using 4 instead" ] ||
  fail "clamp warning: '$warn'"
[ "$out" = "$(expect_json 4 4 1)" ] || fail "clamp json: $out"
# The clamp happens before pp is checked, as in the library.
expect_error 1 'parlayout: error: world size 4 is not divisible by model parallel size * pipeline parallel size 8 (mp 4, pp 2)' \
  --world 4 --mp 16 --pp 2

if [ $fails -ne 0 ]; then
  echo "$fails check(s) failed" >&2
  exit 1
fi
echo "parlayout: all checks passed ($n configurations)"
