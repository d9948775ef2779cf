#!/usr/bin/env bash
# test_train_profile.sh BUILD_DIR -- train --profile (docs/PERFORMANCE.md): on 8 ranks with
# mp 2, pp 2, dp 2 rank 0 prints one "profile: rank R" line per rank and the summary line; every
# share is a fraction in [0, 1], each rank's group shares add up to its total, the max is the
# largest rank's and the mean their mean; the loss is the same as without --profile (timing
# must not change what is computed), and without --profile nothing is printed. One process
# (no parrun) reports too.
set -u

B=${1:?usage: test_train_profile.sh BUILD_DIR}
PARRUN="$B/bin/parrun"
TRAIN="$B/bin/train"
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
FAILS=0
fail() {
  echo "FAIL: $*" >&2
  FAILS=$((FAILS + 1))
}
for f in "$PARRUN" "$TRAIN"; do
  [ -x "$f" ] || { echo "FAIL: $f is missing" >&2; exit 1; }
done
command -v python3 >/dev/null || { echo "FAIL: python3 is needed" >&2; exit 1; }
RUN=(--steps 30 --hidden 32 --log-every 10 --progress off)

# check_profile OUT NRANKS: the profile lines of OUT are complete and consistent.
check_profile() {
  python3 - "$1" "$2" <<'PY'
import re, sys

out, n = open(sys.argv[1]).read(), int(sys.argv[2])
bad = []
num = r"([0-9]+\.[0-9]+)"
ranks = {}
for m in re.finditer(r"profile: rank (\d+): step time %s s, in par %s s \(%s\): mp %s pp %s dp %s "
                     r"world %s$" % ((num,) * 7), out, re.M):
    r, vals = int(m.group(1)), [float(x) for x in m.groups()[1:]]
    ranks[r] = vals
    step, in_par, total, parts = vals[0], vals[1], vals[2], vals[3:]
    if not all(0.0 <= f <= 1.0 for f in [total] + parts):
        bad.append(f"rank {r}: a share outside [0, 1]: {m.group(0)}")
    if abs(sum(parts) - total) > 0.003:
        bad.append(f"rank {r}: the group shares add up to {sum(parts):.3f}, not {total}")
    if not (step > 0 and 0 <= in_par <= step):
        bad.append(f"rank {r}: {in_par} s in par of a {step} s step")
if sorted(ranks) != list(range(n)):
    bad.append(f"per-rank lines for ranks {sorted(ranks)}, expected 0..{n - 1}")
m = re.search(r"profile: time in par: mean %s, max %s \(rank (\d+)\) of the step over (\d+) "
              r"ranks, (\d+) steps; by group \(mean\): mp %s pp %s dp %s world %s$" % (
                  (num,) * 2 + (num,) * 4), out, re.M)
if not m:
    bad.append("no summary line")
else:
    mean, mx = float(m.group(1)), float(m.group(2))
    arg, nr, steps = int(m.group(3)), int(m.group(4)), int(m.group(5))
    if not (0.0 <= mean <= mx <= 1.0):
        bad.append(f"summary: mean {mean}, max {mx}: not 0 <= mean <= max <= 1")
    if nr != n or steps != 30:
        bad.append(f"summary: {nr} ranks, {steps} steps; expected {n}, 30")
    if ranks:
        totals = {r: v[2] for r, v in ranks.items()}
        if abs(mx - max(totals.values())) > 0.0015 or abs(totals.get(arg, -1) - mx) > 0.0015:
            bad.append(f"summary max {mx} (rank {arg}) is not the largest rank's: {totals}")
        if abs(mean - sum(totals.values()) / n) > 0.002:
            bad.append(f"summary mean {mean} is not the ranks' mean")
for b in bad:
    print("FAIL:", b, file=sys.stderr)
sys.exit(1 if bad else 0)
PY
}

# --- 8 ranks, every kind of group --------------------------------------------------------------
"$PARRUN" -n 8 --timeout 120 "$TRAIN" --mp 2 --pp 2 "${RUN[@]}" --profile >"$TMP/prof" 2>&1 ||
  fail "train --profile on 8 ranks exited $?: $(tail -3 "$TMP/prof")"
check_profile "$TMP/prof" 8 || fail "8 ranks: the profile lines (above)"
"$PARRUN" -n 8 --timeout 120 "$TRAIN" --mp 2 --pp 2 "${RUN[@]}" >"$TMP/plain" 2>&1 ||
  fail "train on 8 ranks exited $?: $(tail -3 "$TMP/plain")"
grep -q "profile:" "$TMP/plain" && fail "without --profile a profile line was printed"
want=$(grep -o 'final loss: [0-9.]*' "$TMP/plain")
got=$(grep -o 'final loss: [0-9.]*' "$TMP/prof")
[ -n "$want" ] && [ "$want" = "$got" ] || fail "--profile changed the loss: '$got', without '$want'"

# --- one process -------------------------------------------------------------------------------
"$TRAIN" "${RUN[@]}" --profile >"$TMP/one" 2>&1 || fail "train --profile alone exited $?"
check_profile "$TMP/one" 1 || fail "1 process: the profile lines (above)"

[ "$FAILS" -eq 0 ] || { echo "test_train_profile: $FAILS failure(s)"; exit 1; }
echo "test_train_profile: ok"
