#!/usr/bin/env bash
# test_compare.sh BUILD_DIR -- bench/compare.py --quick end to end on 2 ranks: it exits 0, its
# table has every op at 1 MiB and the all-reduce at 8 B and 64 MiB with par's times, the MPI
# column where an MPI is installed and the Gloo column where an interpreter has torch (else
# n/a with the reason), every one of the issue's 32 targets is listed with a verdict, --check
# finds 0 wrong elements on every side, the bound uses a 2-thread copy rate (with its pairs at the
# rate measured before the repetition), and compare.json
# records the machine (CPU, cores, caches) and the cores' handover (bench/handover.c). Then the
# Gloo side's own checks: gloo_bench.py's --check catches an injected fault, and an interpreter
# without torch gives "n/a", not a crash; and --warmup reaches every side's launches.
set -u

B=$(cd "${1:?usage: test_compare.sh BUILD_DIR}" && pwd)
SRC=$(cd "$(dirname "$0")/../.." && pwd)
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
FAILS=0

fail() {
  echo "FAIL: $*" >&2
  FAILS=$((FAILS + 1))
}

# Under sanitizers the benchmark's figures mean nothing and the run takes minutes.
if grep -q '^PAR_SANITIZE:[A-Z]*=[a-z]' "$B/CMakeCache.txt"; then
  echo "SKIP: a sanitizer build"
  exit 0
fi
command -v python3 >/dev/null || { echo "FAIL: python3 is needed" >&2; exit 1; }

HAVE_MPI=0
command -v mpicc >/dev/null && command -v mpirun >/dev/null && HAVE_MPI=1
TORCH_PY=""
for py in /usr/bin/python3 python3; do
  if "$py" -c 'import torch.distributed as d; assert d.is_gloo_available()' 2>/dev/null; then
    TORCH_PY=$(command -v "$py")
    break
  fi
done
echo "MPI: $HAVE_MPI; Python with torch: ${TORCH_PY:-none}"

# --- the quick comparison --------------------------------------------------------------------
python3 "$SRC/bench/compare.py" --quick --ranks 2 --build "$B" --no-build --out "$TMP/out" \
  --timeout 120 >"$TMP/table" 2>"$TMP/log"
rc=$?
[ "$rc" -eq 0 ] || fail "compare.py --quick exited $rc: $(tail -5 "$TMP/log")"
JSON=$TMP/out/compare.json
python3 - "$JSON" "$HAVE_MPI" "$TORCH_PY" "$TMP/table" <<'PY' || FAILS=$((FAILS + 1))
import json, sys

path, have_mpi, torch_py, table = sys.argv[1], sys.argv[2] == "1", sys.argv[3], sys.argv[4]
r = json.load(open(path))
text = open(table).read()
bad = []
want = {("allreduce", 8), ("allreduce", 1 << 20), ("allreduce", 64 << 20)} | \
    {(op, 1 << 20) for op in ("allgather", "broadcast", "reduce_scatter", "alltoall")}
rows = {(x["op"], x["bytes"]): x for x in r["rows"] if x["ranks"] == 2}
if set(rows) != want:
    bad.append(f"rows {sorted(rows)}, expected {sorted(want)}")
for key, x in rows.items():
    if not (x["par_us"] or 0) > 0:
        bad.append(f"{key}: no par time")
    if have_mpi != (x["mpi_us"] is not None):
        bad.append(f"{key}: mpi_us {x['mpi_us']} with MPI installed = {have_mpi}")
    if bool(torch_py) != (x["gloo_us"] is not None):
        bad.append(f"{key}: gloo_us {x['gloo_us']} with torch at '{torch_py}'")
    if x["gloo_us"] is not None and not 0 < x["gloo_ratio"] < 1e6:
        bad.append(f"{key}: par/gloo {x['gloo_ratio']}")
ar = rows.get(("allreduce", 64 << 20), {})
if not (ar.get("bound_us") or 0) > 0 or not (ar.get("par_zc_us") or 0) > 0:
    bad.append(f"64 MiB all-reduce: bound {ar.get('bound_us')}, zero copy {ar.get('par_zc_us')}")
if torch_py:
    if r["gloo_python"] != torch_py:
        bad.append(f"gloo_python {r['gloo_python']}, expected {torch_py}")
    if "Gloo" not in text.splitlines()[0]:
        bad.append("the header does not name Gloo")
elif "gloo" not in r["missing"] or "Gloo: n/a" not in text:
    bad.append("no torch, but the Gloo column is not marked n/a with a reason")
# Every target listed, with a verdict; on 2 ranks with --quick the 8-rank ones are n/a.
if len(r["targets"]) != 32 or text.count(" <= ") != 32:
    bad.append(f"{len(r['targets'])} targets in the JSON, {text.count(' <= ')} printed; want 32")
for t in r["targets"]:
    unjudged = t["verdict"] == "n/a"
    if t["verdict"] not in ("PASS", "FAIL", "n/a") or unjudged != (t["value"] is None):
        bad.append(f"target {t}")
    if t["ranks"] == 8 and t["verdict"] != "n/a":
        bad.append(f"an 8-rank target judged from a 2-rank run: {t}")
kinds = (["mpi"] if have_mpi else []) + (["gloo"] if torch_py else [])
judged = [t for t in r["targets"]
          if (t["ranks"], t["op"], t["bytes"]) == (2, "allreduce", 8) and t["kind"] in kinds]
if any(t["verdict"] == "n/a" for t in judged):
    bad.append(f"8 B all-reduce targets not judged: {judged}")
# --check: every side verified every row, none wrong.
for impl in r["impls"]:
    if r["wrong"][impl] != 0 or r["checked"][impl] == 0:
        bad.append(f"--check {impl}: {r['wrong'][impl]} wrong in {r['checked'][impl]}")
if "# --check: par 0 wrong" not in text:
    bad.append("no --check summary line")
m = r["machine"]
# The caches: sysfs's where the kernel lists them, and always what par itself read (CPUID
# where sysfs has none) with the tuning it derived.
if not m["cpu"] or m["cores"] < 1 or "L1d " not in m["par"]["facts"]:
    bad.append(f"machine not recorded: {m}")
if m["caches"] and "# caches of cpu0: L1" not in text:
    bad.append("the header does not list sysfs's caches")
if "# par read: " not in text or "# par's shm tuning: chunk " not in text:
    bad.append("the header does not give par's reading of the machine and its tuning")
if r["bandwidth_threads"] != min(2, m["cores"]) or not r["bandwidth_gbs"] > 0:
    bad.append(f"bound bandwidth {r['bandwidth_gbs']} at {r['bandwidth_threads']} threads")
# The copy rate of the moment, before the repetition's launches, and the bound's pairs from it:
# one repetition, so each is that launch's time over the bound at that rate, and the run's
# bound (its best rate) is at most that bound.
rc_ = [x for x in r.get("rep_copy", []) if x["ranks"] == 2]
if len(rc_) != 1 or not rc_[0]["best_gbs"] > 0 or rc_[0]["best_gbs"] > r["bandwidth_gbs"]:
    bad.append(f"copy rate before the repetition: {r.get('rep_copy')}")
elif ar:
    at = 2.0 * (64 << 20) * 2 / (rc_[0]["best_gbs"] * 1e9) * 1e6
    for key, us in (("par_bound_pairs", ar.get("par_us")), ("par_zc_bound_pairs",
                                                            ar.get("par_zc_us"))):
        if not us or abs((ar.get(key) or 0) - us / at) > 1e-6 * us / at:
            bad.append(f"64 MiB all-reduce {key} {ar.get(key)}, expected {us and us / at}")
if "before each repetition's launches" not in text:
    bad.append("the copy rates of the repetitions are not printed")
# The cores' handover: before the repetition and after it, where there are 2 CPUs to pass
# data between.
h = [x for x in r["handover"] if "round_trip_ns" in x]
if m["cores"] >= 2 and (len(h) != 2 or not all(x["round_trip_ns"] > 0 and x["handover_gbs"] > 0
                                               for x in h)):
    bad.append(f"handover not recorded: {r['handover']}")
if h and "# the cores' handover" not in text:
    bad.append("the handover figures are not printed")
for b in bad:
    print("FAIL:", b, file=sys.stderr)
sys.exit(1 if bad else 0)
PY

# --- the Gloo side's check must be able to fail ----------------------------------------------
if [ -n "$TORCH_PY" ]; then
  GLOO_BENCH_INJECT_FAULT=1 "$B/bin/parrun" -n 2 --timeout 120 "$TORCH_PY" \
    "$SRC/bench/gloo_bench.py" --check --case 64K:allreduce+alltoall:2 >"$TMP/gloo" 2>&1
  rc=$?
  [ "$rc" -ne 0 ] || fail "gloo_bench.py with an injected fault exited 0"
  n=$(grep -c '"wrong": 1' "$TMP/gloo")
  [ "$n" -eq 2 ] || fail "an injected fault gave $n rows with 1 wrong, not 2: $(cat "$TMP/gloo")"
fi

# --- --warmup reaches every side's launches (0 for the --check pass), and a bad one is refused
msg=$(cd "$SRC/bench" && python3 -c '
import sys, types
sys.dont_write_bytecode = True
import compare
seen = []
compare.launch_or_note = lambda progs, impl, n, a, timeout, failures: seen.append((impl, a)) or []
args = types.SimpleNamespace(quick=True, warmup=7, timeout=60)
for impl in ("par", "par-zc", "mpi", "gloo"):
    for check in (False, True):
        seen.clear()
        compare.run_side(args, {}, impl, 2, check, [])
        assert seen, impl
        for _, a in seen:
            w = a[a.index("--warmup") + 1]
            assert w == ("0" if check else "7"), (impl, check, a)
print("ok")' 2>&1) || fail "--warmup: $msg"
[ "$msg" = ok ] || fail "--warmup: $msg"
python3 "$SRC/bench/compare.py" --warmup -1 >"$TMP/neg" 2>&1
rc=$?
[ "$rc" -eq 2 ] && grep -q -- "--warmup must be 0 or more" "$TMP/neg" ||
  fail "--warmup -1: exit $rc, $(cat "$TMP/neg")"
grep -q "1 warm-up op(s) before each case" "$TMP/table" ||
  fail "the header does not give the warm-up: $(head -1 "$TMP/table")"

# --- no torch: n/a with the reason, never a crash --------------------------------------------
printf '#!/bin/sh\necho "ModuleNotFoundError: No module named torch" >&2\nexit 1\n' >"$TMP/notorch"
chmod +x "$TMP/notorch"
msg=$(cd "$SRC/bench" && python3 -c '
import sys, types
sys.dont_write_bytecode = True
import compare
py, ver, why = compare.find_gloo_python(types.SimpleNamespace(no_gloo=False, python=sys.argv[1]))
assert py is None and ver is None, (py, ver)
print(why)' "$TMP/notorch" 2>&1) || fail "find_gloo_python without torch: $msg"
case "$msg" in
*"No module named torch"*) ;;
*) fail "the reason for no Gloo does not say why: $msg" ;;
esac

[ "$FAILS" -eq 0 ] || { echo "test_compare: $FAILS failure(s)"; exit 1; }
echo "test_compare: ok"
