#!/usr/bin/env bash
# test_parbench.sh BUILD_DIR -- parbench end to end under parrun: the checked table run, JSON
# runs over several dtypes and every reduction op (every line parses, has the keys, reports 0
# wrong elements, and the sizes are exactly the sweep under nccl-tests' conventions), the
# automatic iteration count, a run where --check must catch an injected fault, and refusal of
# bad command lines with exit status 2.
set -u

B=${1:?usage: test_parbench.sh BUILD_DIR}
PARRUN="$B/bin/parrun"
# A hang (a lost message, a deadlock) fails the run instead of stalling the suite.
PARRUN_OPTS=(--timeout 120)
# A library timeout well inside that names the op and the member that never came.
export PAR_TIMEOUT=${PAR_TIMEOUT:-60}
BENCH="$B/bin/parbench"
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
FAILS=0

fail() {
  echo "FAIL: $*" >&2
  FAILS=$((FAILS + 1))
}

for f in "$PARRUN" "$BENCH"; do
  [ -x "$f" ] || { echo "FAIL: $f is missing" >&2; exit 1; }
done

# The default factor, as parbench documents it in its help.
FACTOR=$("$BENCH" --help | sed -n 's/.*--factor F.*(default \([0-9]*\)).*/\1/p')
[ -n "$FACTOR" ] || fail "--help does not state the default --factor"

# --- bad command lines: exit 2 and a message on stderr -------------------------------------
expect_usage_error() {
  local rc
  "$BENCH" "$@" >"$TMP/out" 2>"$TMP/err"
  rc=$?
  [ "$rc" -eq 2 ] || fail "parbench $* exited $rc, expected 2"
  [ -s "$TMP/err" ] || fail "parbench $* printed no message on stderr"
  [ -s "$TMP/out" ] && fail "parbench $* printed on stdout: $(head -c 200 "$TMP/out")"
}
expect_usage_error --bogus
expect_usage_error --min
expect_usage_error --min 0
expect_usage_error --min 3Q
expect_usage_error --min 2K --max 1K
expect_usage_error --factor 1
expect_usage_error --op allreduce,nosuchop
expect_usage_error --dtype f17
expect_usage_error --redop xor
expect_usage_error --iters -1
expect_usage_error --warmup many
expect_usage_error stray-argument
expect_usage_error --offset 4096
expect_usage_error --offset -1
expect_usage_error --offset 12

"$BENCH" --help >"$TMP/out" 2>&1 || fail "parbench --help exited non-zero"
grep -q -- "--redop" "$TMP/out" || fail "--help does not list --redop"

# Under parrun the whole job must fail too, and a root outside the world is refused.
"$PARRUN" "${PARRUN_OPTS[@]}" -n 2 "$BENCH" --bogus >/dev/null 2>"$TMP/err"
rc=$?
[ "$rc" -ne 0 ] || fail "parrun -n 2 parbench --bogus exited 0"
grep -q "unknown option" "$TMP/err" || fail "no 'unknown option' message under parrun"
"$PARRUN" "${PARRUN_OPTS[@]}" -n 3 "$BENCH" --root 3 --op broadcast --max 8 >/dev/null 2>"$TMP/err"
rc=$?
[ "$rc" -ne 0 ] || fail "--root 3 on 3 ranks exited 0"
grep -q -- "--root" "$TMP/err" || fail "no message about --root on 3 ranks"

# --- the checked table run ----------------------------------------------------------------
"$PARRUN" "${PARRUN_OPTS[@]}" -n 3 "$BENCH" --check --min 8 --max 1M --iters 3 --warmup 1 \
  >"$TMP/table" 2>"$TMP/err"
rc=$?
[ "$rc" -eq 0 ] || fail "checked table run exited $rc: $(tail -5 "$TMP/err")"
for op in allreduce allgather reduce_scatter broadcast alltoall sendrecv; do
  grep -q "# $op\$" "$TMP/table" || fail "table run has no '$op' table"
done
grep -q "wrong elements: 0" "$TMP/table" || fail "table run does not report 0 wrong elements"

# --- JSON runs ----------------------------------------------------------------------------
# Every line parses, carries the keys, reports no wrong element, and the rows are exactly the
# sweep: one per (op, dtype, redop, size), with nccl-tests' count and byte conventions.
check_json() { # FILE RANKS MIN MAX FACTOR ITERS OPS DTYPES REDOPS
  python3 - "$@" <<'EOF'
import json, re, sys
path, n, lo, hi, factor, iters = sys.argv[1], *map(int, sys.argv[2:7])
ops, dtypes, redops = (a.split(",") for a in sys.argv[7:10])
size = {"f32": 4, "f64": 8, "f16": 2, "bf16": 2, "i8": 1, "u8": 1, "i32": 4, "i64": 8}
reducing = {"allreduce", "reduce_scatter", "reduce"}
blocked = {"allgather", "reduce_scatter", "alltoall"}
busf = {"allreduce": 2 * (n - 1) / n, "allgather": (n - 1) / n, "reduce_scatter": (n - 1) / n,
        "alltoall": (n - 1) / n, "broadcast": 1.0, "reduce": 1.0, "sendrecv": 1.0}
keys = {"op", "dtype", "bytes", "count", "ranks", "time_us", "algbw_gbs", "busbw_gbs", "wrong"}
sweep, s = [], lo
while s <= hi:
    sweep.append(s)
    s *= factor
want = {}
for op in ops:
    for dt in dtypes:
        for red in (redops if op in reducing else [None]):
            for s in sweep:
                total = s // size[dt]
                count = total // n if op in blocked else total
                nbytes = count * n * size[dt] if op in blocked else count * size[dt]
                want[(op, dt, red, s)] = (count, nbytes)
errors, seen = [], {}
lines = open(path).read().splitlines()
for ln in lines:
    m = re.match(r"^\[\s*(\d+)\] (.*)$", ln)  # parrun's "[rank] " prefix
    if not m:
        errors.append("line without a rank prefix: %r" % ln)
        continue
    if m.group(1) != "0":
        errors.append("a line from rank %s (only rank 0 prints): %r" % (m.group(1), ln))
        continue
    try:
        r = json.loads(m.group(2))
    except ValueError as e:
        errors.append("not JSON (%s): %r" % (e, ln))
        continue
    miss = keys - set(r)
    if miss:
        errors.append("missing keys %s: %r" % (sorted(miss), ln))
        continue
    if r["wrong"] != 0:
        errors.append("wrong = %r: %r" % (r["wrong"], ln))
    if r["ranks"] != n:
        errors.append("ranks = %r, expected %d" % (r["ranks"], n))
    if iters and r.get("iters") != iters:
        errors.append("iters = %r, expected %d" % (r.get("iters"), iters))
    if not iters and not r.get("iters", 0) >= 2:
        errors.append("automatic iters = %r, expected >= 2" % r.get("iters"))
    if not r["time_us"] > 0:
        errors.append("time_us = %r: %r" % (r["time_us"], ln))
    # algbw = bytes / time; busbw = algbw * the op's factor (both printed to 6 decimals).
    alg = r["bytes"] / (r["time_us"] * 1e3) if r["time_us"] > 0 else 0
    if abs(r["algbw_gbs"] - alg) > 1e-5 + 1e-3 * alg:
        errors.append("algbw %r != bytes/time %r: %r" % (r["algbw_gbs"], alg, ln))
    if abs(r["busbw_gbs"] - r["algbw_gbs"] * busf[r["op"]]) > 2e-6 + 1e-6 * r["algbw_gbs"]:
        errors.append("busbw %r != algbw * %r: %r" % (r["busbw_gbs"], busf[r["op"]], ln))
    # The sweep size this row belongs to: the one whose counts it reports.
    red = r.get("redop")
    hits = [s for s in sweep if want.get((r["op"], r["dtype"], red, s)) == (r["count"], r["bytes"])
            and (r["op"], r["dtype"], red, s) not in seen]
    if not hits:
        errors.append("row matches no remaining sweep size: %r" % ln)
        continue
    seen[(r["op"], r["dtype"], red, hits[0])] = True
for k in want:
    if k not in seen:
        errors.append("no row for op %s dtype %s redop %s size %d" % k)
for e in errors[:20]:
    print("  " + e, file=sys.stderr)
print("%d rows, %d expected, %d problem(s)" % (len(lines), len(want), len(errors)))
sys.exit(1 if errors else 0)
EOF
}

OPS=allreduce,allgather,reduce_scatter,broadcast,reduce,alltoall,sendrecv
DTYPES=f32,bf16,i8,f64
REDOPS=sum,prod,min,max,avg
"$PARRUN" "${PARRUN_OPTS[@]}" -n 3 "$BENCH" --check --json --min 8 --max 1M --iters 3 \
  --warmup 1 --op all --dtype "$DTYPES" --redop "$REDOPS" >"$TMP/json" 2>"$TMP/err"
rc=$?
[ "$rc" -eq 0 ] || fail "checked JSON run exited $rc: $(tail -5 "$TMP/err")"
check_json "$TMP/json" 3 8 $((1 << 20)) "$FACTOR" 3 "$OPS" "$DTYPES" "$REDOPS" ||
  fail "checked JSON run: bad rows"

# The automatic iteration count, a root other than 0, an explicit factor, f16.
"$PARRUN" "${PARRUN_OPTS[@]}" -n 3 "$BENCH" --check --json --max 64K --factor 8 --root 2 \
  --op allreduce,reduce --dtype f16 --redop max >"$TMP/auto" 2>"$TMP/err"
rc=$?
[ "$rc" -eq 0 ] || fail "automatic-iterations run exited $rc: $(tail -5 "$TMP/err")"
check_json "$TMP/auto" 3 8 65536 8 0 allreduce,reduce f16 max || fail "automatic run: bad rows"
grep -q '"root":2' "$TMP/auto" || fail "reduce rows do not report root 2"

# --check must be able to fail: with PARBENCH_INJECT_FAULT=1 one rank flips a bit of its first
# output element after each checked op, and every row with data must then count exactly one
# wrong element, the run must exit 1 and the mismatch must be described on stderr.
PARBENCH_INJECT_FAULT=1 "$PARRUN" "${PARRUN_OPTS[@]}" -n 3 "$BENCH" --check --json --max 512 \
  --iters 2 --root 1 --op allreduce,reduce,reduce_scatter,allgather,broadcast,alltoall \
  --dtype bf16 --redop prod >"$TMP/fault" 2>"$TMP/err"
rc=$?
[ "$rc" -eq 1 ] || fail "injected fault: exit status $rc, expected 1"
grep -q "expected 0x" "$TMP/err" || fail "injected fault: no mismatch described on stderr"
python3 - "$TMP/fault" <<'EOF' || fail "injected fault: rows do not count it"
import json, re, sys
rows = [json.loads(re.sub(r"^\[\s*\d+\] ", "", ln)) for ln in open(sys.argv[1])]
bad = [r for r in rows if r["wrong"] != (1 if r["count"] > 0 else 0)]
for r in bad:
    print("  wrong = %r for %s count %d" % (r["wrong"], r["op"], r["count"]), file=sys.stderr)
sys.exit(1 if bad or not rows else 0)
EOF

# --zero-copy: the same checked results with buffers from par_alloc, read in place by peers.
"$PARRUN" "${PARRUN_OPTS[@]}" -n 3 "$BENCH" --zero-copy --check --json --max 1M --factor 8 \
  --iters 2 --op allreduce,reduce,allgather,broadcast,reduce_scatter,alltoall,sendrecv \
  --dtype f32,bf16,i8 --redop sum,avg >"$TMP/zc" 2>"$TMP/err"
rc=$?
[ "$rc" -eq 0 ] || fail "--zero-copy --check: exit status $rc: $(tail -n 3 "$TMP/err")"
grep -q '"wrong":0' "$TMP/zc" || fail "--zero-copy: no rows"
if grep -Eq '"wrong":[1-9]' "$TMP/zc"; then fail "--zero-copy: wrong results"; fi

# --offset 16: buffers where malloc puts large ones (page + 16), whose copies against the
# page-aligned segment take par__copy's other loop; checked, every op, odd rank count.
"$PARRUN" "${PARRUN_OPTS[@]}" -n 3 "$BENCH" --offset 16 --check --json --max 1M --factor 8 \
  --iters 2 --op allreduce,reduce,allgather,broadcast,reduce_scatter,alltoall,sendrecv \
  --dtype f32,i8 >"$TMP/off" 2>"$TMP/err"
rc=$?
[ "$rc" -eq 0 ] || fail "--offset 16 --check: exit status $rc: $(tail -n 3 "$TMP/err")"
grep -q '"wrong":0' "$TMP/off" || fail "--offset 16: no rows"
if grep -Eq '"wrong":[1-9]' "$TMP/off"; then fail "--offset 16: wrong results"; fi

if [ "$FAILS" -ne 0 ]; then
  echo "test_parbench: $FAILS failure(s)" >&2
  exit 1
fi
echo "test_parbench: ok"
