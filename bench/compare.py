#!/usr/bin/env python3
"""Side-by-side comparison of par's collectives with MPI's on this host.

Builds par (CMake, if the build dir has no cache yet; then an incremental build of parrun and
parbench), bench/mpibench.c with mpicc and bench/stream.c with cc; then, for 2 and 8 ranks, runs
parbench (under parrun) and mpibench (under mpirun) alternately, --reps times each, on the sizes
the targets name (f32 sum all-reduce at 8 B, 1 MiB, 64 MiB; allgather and broadcast at 1 MiB and
64 MiB), takes the median time of each, and prints par/MPI per op and size against its target.
It also runs both with --check on the same sizes and reports the wrong elements, measures the
memory bandwidth (bench/stream.c) before and after, and states the bound that bandwidth implies
for an all-reduce: n ranks of S bytes must at least read every input and write every output
once, 2*S*n bytes, so t >= 2*S*n / (copy bandwidth of the whole machine).

Exit status: 0 when every ratio is at or under its target and nothing is wrong; 1 when a ratio
misses its target, a result is wrong or a run failed; 2 on a bad command line or when no MPI is
installed (par's figures and the bound are still printed).

    python3 bench/compare.py                 # full run, ~5 minutes on 2 loaded cores
    python3 bench/compare.py --quick         # 2 repetitions, fewer 64 MiB iterations
    python3 bench/compare.py --sweep         # also the busbw sweep and its SVG (bench/plot.py)

Only the standard library is used. docs/PERFORMANCE.md describes the method and a run.
"""
import argparse
import csv
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.dont_write_bytecode = True  # no __pycache__ in the source tree
import plot  # noqa: E402  (bench/plot.py, next to this file)

KiB, MiB = 1 << 10, 1 << 20

# par time / Open MPI time must be at or under these (the performance issue's targets).
TARGETS = {
    (2, "allreduce", 8): 1.0, (2, "allreduce", MiB): 0.7, (2, "allreduce", 64 * MiB): 0.25,
    (8, "allreduce", 8): 0.7, (8, "allreduce", MiB): 0.5, (8, "allreduce", 64 * MiB): 0.35,
}
for _n in (2, 8):
    for _op in ("allgather", "broadcast"):
        for _s in (MiB, 64 * MiB):
            TARGETS[(_n, _op, _s)] = 1.0  # "no slower than Open MPI"

OPS = ("allreduce", "allgather", "broadcast")
# The sizes compared and the ops at each (the targets name allgather and broadcast at 1 MiB and
# 64 MiB only). A rank count without targets is measured and shown, not judged.
SIZE_OPS = {8: ("allreduce",), MiB: OPS, 64 * MiB: OPS}
PREFIX = re.compile(r"^\[\s*\d+\]\s")  # parrun's "[0] " before each line of rank 0


def fmt_size(b):
    if b >= MiB and b % MiB == 0:
        return "%d MiB" % (b // MiB)
    if b >= KiB and b % KiB == 0:
        return "%d KiB" % (b // KiB)
    return "%d B" % b


def fmt_us(us):
    if us is None:
        return "-"
    return "%.0f" % us if us >= 1000 else "%.1f" % us if us >= 10 else "%.2f" % us


def load1():
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


def log(msg):
    print(msg, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------
# Building
# ------------------------------------------------------------------------------------------

def run_checked(cmd, what):
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0:
        sys.stdout.write(proc.stdout[-4000:])
        raise SystemExit("compare: %s failed (exit %d): %s" %
                         (what, proc.returncode, " ".join(cmd)))


def newer(src, dst):
    return not os.path.exists(dst) or os.path.getmtime(src) > os.path.getmtime(dst)


def build(args):
    """Returns a dict of the programs' paths; mpibench is None without MPI."""
    bdir = args.build
    if not args.no_build:
        if not os.path.exists(os.path.join(bdir, "CMakeCache.txt")):
            log("compare: configuring %s" % bdir)
            run_checked(["cmake", "-S", ROOT, "-B", bdir], "cmake configure")
        log("compare: building parrun, parbench in %s" % bdir)
        run_checked(["cmake", "--build", bdir, "-j%d" % (os.cpu_count() or 2), "--target",
                     "parrun", "parbench"], "cmake build")
    progs = {"parrun": os.path.join(bdir, "bin", "parrun"),
             "parbench": os.path.join(bdir, "bin", "parbench")}
    for p in progs.values():
        if not os.access(p, os.X_OK):
            raise SystemExit("compare: %s is missing (build it, or drop --no-build)" % p)
    outdir = os.path.join(bdir, "bench")
    os.makedirs(outdir, exist_ok=True)
    cc = os.environ.get("CC", "cc")
    progs["stream"] = os.path.join(outdir, "stream")
    src = os.path.join(HERE, "stream.c")
    if newer(src, progs["stream"]):
        run_checked([cc, "-O2", "-std=c11", "-Wall", "-Wextra", "-Werror", "-pthread", "-o",
                     progs["stream"], src], "building stream")
    progs["mpibench"] = None
    mpicc, mpirun = shutil.which("mpicc"), shutil.which(args.mpirun)
    if mpicc and mpirun:
        progs["mpibench"] = os.path.join(outdir, "mpibench")
        src = os.path.join(HERE, "mpibench.c")
        if newer(src, progs["mpibench"]):
            run_checked([mpicc, "-O2", "-std=c11", "-Wall", "-Wextra", "-Werror", "-o",
                         progs["mpibench"], src], "building mpibench")
        progs["mpirun"] = mpirun
    return progs


def mpi_version(progs):
    if not progs.get("mpibench"):
        return None
    out = subprocess.run([progs["mpirun"], "--version"], stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True).stdout
    return out.strip().splitlines()[0] if out.strip() else "unknown"


# ------------------------------------------------------------------------------------------
# Running one benchmark
# ------------------------------------------------------------------------------------------

class RunFailed(Exception):
    pass


def bench_args(ops, size_min, size_max, factor, iters, warmup, check):
    a = ["--op", ",".join(ops), "--min", str(size_min), "--max", str(size_max), "--factor",
         str(factor), "--iters", str(iters), "--warmup", str(warmup), "--json"]
    return a + (["--check"] if check else [])


def launch(progs, impl, n, bargs, timeout):
    """Runs parbench or mpibench on n ranks; returns its JSON rows."""
    env = dict(os.environ)
    if impl == "par":
        # Measure par's own shared-memory backend, whatever the caller's environment says.
        env["PAR_BACKEND"] = "shm"
        cmd = [progs["parrun"], "-n", str(n), "--timeout", str(timeout), progs["parbench"]]
    else:
        cmd = [progs["mpirun"], "-n", str(n)]
        if "Open MPI" in (progs.get("mpi_version") or ""):
            # Open MPI refuses root and more ranks than cores unless told; MPICH needs neither.
            if os.geteuid() == 0:
                cmd.append("--allow-run-as-root")
            cmd.append("--oversubscribe")
        cmd += progs["mpirun_args"] + [progs["mpibench"]]
    cmd += bargs
    try:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=env, timeout=timeout + 30)
    except subprocess.TimeoutExpired:
        raise RunFailed("%s timed out after %d s: %s" % (impl, timeout + 30, " ".join(cmd)))
    rows = []
    for line in proc.stdout.splitlines():
        line = PREFIX.sub("", line).strip()
        if line.startswith("{"):
            rows.append(json.loads(line))
    # A --check run with wrong elements exits 1 but its rows are valid: the caller counts them.
    bad_wrong = any((r.get("wrong") or 0) > 0 for r in rows)
    if proc.returncode != 0 and not (proc.returncode == 1 and bad_wrong):
        raise RunFailed("%s exited %d: %s\n%s" % (impl, proc.returncode, " ".join(cmd),
                                                 proc.stderr[-2000:]))
    return rows


def launch_or_note(progs, impl, n, bargs, timeout, failures):
    """launch(), but a failed run is logged and noted in failures, and gives None."""
    try:
        return launch(progs, impl, n, bargs, timeout)
    except RunFailed as e:
        failures.append(str(e))
        log("compare: " + str(e))
        return None


def sweep_size(row, n):
    """The sweep size a row was asked for (allgather reports count*n*4, which can be less)."""
    return row["count"] * 4 * (n if row["op"] == "allgather" else 1)


# ------------------------------------------------------------------------------------------
# The comparison
# ------------------------------------------------------------------------------------------

def configs(args):
    """(ranks, size, ops, iters) launches: one launch measures every op at one size."""
    out = []
    for n in args.ranks:
        for size in (8, MiB, 64 * MiB):
            ops = list(SIZE_OPS[size])
            iters = 0  # parbench's automatic count (~0.1 s per size)
            if size == 64 * MiB:
                # MPI takes ~0.1 s (2 ranks) to ~0.5 s (8 ranks) per op here: fix the count.
                iters = (2 if args.quick else 4) if n <= 2 else (1 if args.quick else 2)
            out.append((n, size, ops, iters))
    return out


def run_stream(progs, args):
    nthreads = os.cpu_count() or 2
    threads = "1" if nthreads == 1 else "1,%d" % nthreads
    proc = subprocess.run([progs["stream"], "--json", "--mib", "128", "--reps",
                           "4" if args.quick else "8", "--threads", threads],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise RunFailed("stream exited %d: %s" % (proc.returncode, proc.stderr[-1000:]))
    return [json.loads(l) for l in proc.stdout.splitlines() if l.startswith("{")]


def compare(args, progs, result):
    have_mpi = progs.get("mpibench") is not None
    impls = ["par", "mpi"] if have_mpi else ["par"]
    samples = {}  # (impl, n, op, size) -> {rep: time_us}
    loads = [load1()]
    failures = []
    cfgs = configs(args)
    for rep in range(args.reps):
        for i, (n, size, ops, iters) in enumerate(cfgs):
            # Alternate which goes first, so that a drift in the machine's load hits both.
            order = impls if (rep + i) % 2 == 0 else impls[::-1]
            took = []
            for impl in order:
                t0 = time.time()
                rows = launch_or_note(progs, impl, n,
                                      bench_args(ops, size, size, 4, iters, 1, False),
                                      args.timeout, failures)
                if rows is None:
                    continue
                for r in rows:
                    samples.setdefault((impl, n, r["op"], size), {})[rep] = r["time_us"]
                took.append("%s %.1fs" % (impl, time.time() - t0))
            loads.append(load1())
            log("compare: rep %d/%d, %d ranks, %s: %s (load %.1f)" %
                (rep + 1, args.reps, n, fmt_size(size), ", ".join(took), loads[-1]))

    # The check pass: one verified op per size, same ops and sizes.
    wrong = {impl: 0 for impl in impls}
    checked = {impl: 0 for impl in impls}
    for n, size, ops, _ in cfgs:
        for impl in impls:
            rows = launch_or_note(progs, impl, n, bench_args(ops, size, size, 4, 1, 0, True),
                                  args.timeout, failures)
            if rows is None:
                continue
            for r in rows:
                if r.get("wrong") is None:
                    failures.append("%s %s at %d ranks, %d B: no check result" %
                                    (impl, r["op"], n, size))
                else:
                    wrong[impl] += r["wrong"]
                    checked[impl] += 1
    loads.append(load1())
    result.update(wrong=wrong,
                  checked=checked, failures=failures,
                  load1={"min": min(loads), "median": statistics.median(loads),
                         "max": max(loads), "samples": loads})
    return samples


def summarize(args, samples, bw_gbs, result):
    rows = []
    keys = [(n, op, size) for n in args.ranks for size in SIZE_OPS for op in SIZE_OPS[size]]
    for n, op, size in sorted(keys, key=lambda k: (k[0], OPS.index(k[1]), k[2])):
        target = TARGETS.get((n, op, size))
        par = samples.get(("par", n, op, size), {})
        mpi = samples.get(("mpi", n, op, size), {})
        par_us = statistics.median(par.values()) if par else None
        mpi_us = statistics.median(mpi.values()) if mpi else None
        ratio = par_us / mpi_us if par_us is not None and mpi_us else None
        # The ratio within each repetition (the two ran back to back, under the same load):
        # its median is less sensitive to the load changing between repetitions.
        pairs = [par[k] / mpi[k] for k in sorted(par) if k in mpi and mpi[k] > 0]
        pair_ratio = statistics.median(pairs) if pairs else None
        # The all-reduce bound: 2*S*n bytes at the machine's copy bandwidth (see the top). It
        # holds only where those bytes cannot stay in the last-level cache, whose bandwidth is
        # higher than memory's: below that the row shows no bound.
        bound_us = None
        if op == "allreduce" and bw_gbs and 2 * size * n > result["llc_bytes"]:
            bound_us = 2.0 * size * n / (bw_gbs * 1e9) * 1e6
        rows.append({"ranks": n, "op": op, "bytes": size, "par_us": par_us, "mpi_us": mpi_us,
                     "ratio": ratio, "pair_ratio": pair_ratio, "target": target,
                     "pass": ratio is not None and (target is None or ratio <= target),
                     "par_samples": [par[k] for k in sorted(par)],
                     "mpi_samples": [mpi[k] for k in sorted(mpi)],
                     "bound_us": bound_us})
    result["rows"] = rows
    return rows


def print_table(rows, result, args):
    load = result["load1"]
    print("# par (shm) vs %s: f32, sum for allreduce; median of %d alternating runs each" %
          (result.get("mpi_version") or "no MPI", args.reps))
    print("# %s, %d cores; 1-minute load average %.1f before the run, %.1f..%.1f (median %.1f)"
          " during it (the benchmark's own ranks included)" %
          (result["cpu"], os.cpu_count() or 0, result["load1_before"], load["min"], load["max"],
           load["median"]))
    print("#")
    print("# %5s  %-10s  %7s  %11s  %11s  %7s  %7s  %-7s  %7s  %10s  %9s" %
          ("ranks", "op", "size", "par(us)", "mpi(us)", "ratio", "target", "verdict", "pairs",
           "bound(us)", "par/bound"))
    for r in rows:
        ratio = "%.3f" % r["ratio"] if r["ratio"] is not None else "-"
        verdict = ("no MPI" if r["mpi_us"] is None else "-" if r["target"] is None else
                   "PASS" if r["pass"] else "FAIL")
        target = "<=%.2f" % r["target"] if r["target"] is not None else "-"
        bound = fmt_us(r["bound_us"]) if r["bound_us"] is not None else "-"
        pb = "%.2f" % (r["par_us"] / r["bound_us"]) if r["bound_us"] and r["par_us"] else "-"
        pairs = "%.3f" % r["pair_ratio"] if r["pair_ratio"] is not None else "-"
        print("  %5d  %-10s  %7s  %11s  %11s  %7s  %7s  %-7s  %7s  %10s  %9s" %
              (r["ranks"], r["op"], fmt_size(r["bytes"]), fmt_us(r["par_us"]),
               fmt_us(r["mpi_us"]), ratio, target, verdict, pairs, bound, pb))


def print_stream(stream, bw_gbs, llc, ranks):
    print("#")
    print("# memory bandwidth (bench/stream.c, 3 x 128 MiB arrays; best / median GB/s):")
    for s in stream:
        print("#   %-5s %d thread(s): %6.2f / %6.2f  [%s]" %
              (s["kernel"], s["threads"], s["best_gbs"], s["median_gbs"], s["when"]))
    print("# bound: an n-rank all-reduce of S bytes reads every input and writes every output at")
    print("#   least once, 2*S*n bytes, so t >= 2*S*n / %.2f GB/s (best copy rate above);" % bw_gbs)
    print("#   64 MiB: " + ", ".join(">= %.1f ms on %d ranks" % (2 * 64 * MiB * n / bw_gbs / 1e6, n)
                                   for n in ranks) + "; no bound is shown where")
    print("#   2*S*n fits in the %.1f MiB last-level cache (its bandwidth is higher)" %
          (llc / MiB))


def write_outputs(outdir, result):
    os.makedirs(outdir, exist_ok=True)
    with open(os.path.join(outdir, "compare.json"), "w") as f:
        json.dump(result, f, indent=1)
    with open(os.path.join(outdir, "compare.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["ranks", "op", "bytes", "par_us", "mpi_us", "ratio", "pair_ratio", "target",
                    "pass", "bound_us"])
        for r in result.get("rows", []):
            w.writerow([r["ranks"], r["op"], r["bytes"], r["par_us"], r["mpi_us"], r["ratio"],
                        r["pair_ratio"], r["target"], r["pass"], r["bound_us"]])


# ------------------------------------------------------------------------------------------
# The sweep behind the plot
# ------------------------------------------------------------------------------------------

def run_sweep(args, progs, bw_gbs, outdir):
    """4 B..64 MiB (x4) for every op on both sides, --sweep-reps times alternately; each point
    is the run with the median time (the lower median for an even count)."""
    impls = ["par", "mpi"] if progs.get("mpibench") else ["par"]
    runs = {}  # (impl, n, op, size) -> [row, ...]
    for rep in range(args.sweep_reps):
        for n in args.ranks:
            for impl in (impls if (rep + n) % 2 == 0 else impls[::-1]):
                t0 = time.time()
                got = launch(progs, impl, n, bench_args(OPS, 4, 64 * MiB, 4, 0, 1, False),
                             args.timeout)
                for r in got:
                    r["impl"] = impl
                    r["size"] = sweep_size(r, n)
                    runs.setdefault((impl, n, r["op"], r["size"]), []).append(r)
                log("compare: sweep %d/%d, %d ranks, %s: %.1f s (load %.1f)" %
                    (rep + 1, args.sweep_reps, n, impl, time.time() - t0, load1()))
    rows = []
    for key in sorted(runs):
        cand = runs[key]
        med = statistics.median_low([r["time_us"] for r in cand])
        rows.append(dict(next(r for r in cand if r["time_us"] == med), reps=len(cand)))
    sweep = {"rows": rows, "bandwidth_gbs": bw_gbs, "llc_bytes": llc_bytes(),
             "mpi_version": progs.get("mpi_version"), "reps": args.sweep_reps, "load1": load1()}
    path = os.path.join(outdir, "sweep.json")
    os.makedirs(outdir, exist_ok=True)
    with open(path, "w") as f:
        json.dump(sweep, f, indent=1)
    svg = args.svg or os.path.join(outdir, "perf.svg")
    with open(svg, "w") as f:
        f.write(plot.render(sweep))
    print("# sweep (%d run(s) each): %s; plot: %s" % (args.sweep_reps, path, svg))


# ------------------------------------------------------------------------------------------

def parse_args(argv):
    p = argparse.ArgumentParser(description="par vs MPI, side by side (docs/PERFORMANCE.md)")
    p.add_argument("--build", default=os.path.join(ROOT, "build"),
                   help="CMake build dir (default: build/ in the repository)")
    p.add_argument("--no-build", action="store_true", help="use the build dir as it is")
    p.add_argument("--reps", type=int, default=None, help="runs of each side (default 5)")
    p.add_argument("--quick", action="store_true",
                   help="2 runs each, fewer 64 MiB iterations, shorter STREAM")
    p.add_argument("--ranks", default="2,8", help="rank counts (default 2,8)")
    p.add_argument("--mpirun", default="mpirun", help="the MPI launcher (default mpirun)")
    p.add_argument("--mpirun-args", default="",
                   help="extra mpirun arguments, space separated (e.g. '--bind-to none')")
    p.add_argument("--timeout", type=int, default=300, help="seconds per launch (default 300)")
    p.add_argument("--out", default=None,
                   help="directory for compare.json/.csv (default: BUILD/bench-compare)")
    p.add_argument("--sweep", action="store_true",
                   help="also sweep 4 B..64 MiB (x4) on both and plot busbw (bench/plot.py)")
    p.add_argument("--sweep-reps", type=int, default=1,
                   help="runs of each side in the sweep; the median is plotted (default 1)")
    p.add_argument("--svg", default=None,
                   help="where --sweep writes the SVG (default: OUT/perf.svg)")
    args = p.parse_args(argv)
    if args.reps is None:
        args.reps = 2 if args.quick else 5
    if args.reps < 1 or args.sweep_reps < 1:
        p.error("--reps and --sweep-reps must be at least 1")
    try:
        args.ranks = [int(x) for x in args.ranks.split(",")]
    except ValueError:
        p.error("--ranks takes a comma-separated list of integers")
    if any(n < 2 for n in args.ranks):
        p.error("--ranks: a comparison needs at least 2 ranks")
    args.build = os.path.abspath(args.build)
    args.out = args.out or os.path.join(args.build, "bench-compare")
    return args


def llc_bytes():
    """The largest cache of cpu0 (the last level), from sysfs; 32 MiB when unknown."""
    best = 0
    base = "/sys/devices/system/cpu/cpu0/cache"
    try:
        entries = [e for e in os.listdir(base) if e.startswith("index")]
    except OSError:
        entries = []
    for idx in entries:
        try:
            with open(os.path.join(base, idx, "size")) as f:
                txt = f.read().strip()
            mul = {"K": KiB, "M": MiB}.get(txt[-1:], 1)
            best = max(best, int(txt.rstrip("KM")) * mul)
        except (OSError, ValueError):
            continue
    return best or 32 * MiB


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main(argv):
    args = parse_args(argv)
    t_start = time.time()
    progs = build(args)
    progs["mpi_version"] = mpi_version(progs)
    progs["mpirun_args"] = args.mpirun_args.split()
    result = {"when": time.strftime("%Y-%m-%d %H:%M:%S %z"), "host": platform.node(),
              "load1_before": load1(), "loadavg_before": list(os.getloadavg()),
              "cpu": cpu_name(), "cores": os.cpu_count(), "llc_bytes": llc_bytes(),
              "mpi_version": progs["mpi_version"],
              "reps": args.reps, "quick": args.quick, "ranks": args.ranks}
    if progs["mpibench"] is None:
        log("compare: no MPI (mpicc and %s) found: measuring par only, no ratios" % args.mpirun)

    stream = [dict(s, when="before") for s in run_stream(progs, args)]
    samples = compare(args, progs, result)
    stream += [dict(s, when="after") for s in run_stream(progs, args)]
    # The machine's bandwidth is the best copy rate seen at any thread count, before or after:
    # the highest rate gives the lowest, hence safe, bound.
    bw_gbs = max(s["best_gbs"] for s in stream if s["kernel"] == "copy")
    result.update(stream=stream, bandwidth_gbs=bw_gbs)

    rows = summarize(args, samples, bw_gbs, result)
    print_table(rows, result, args)
    print_stream(stream, bw_gbs, result["llc_bytes"], args.ranks)

    judged = [r for r in rows if r["target"] is not None]
    n_fail = sum(1 for r in judged if not r["pass"])
    total_wrong = sum(result["wrong"].values())
    print("#")
    print("# --check: " + ", ".join("%s %d wrong in %d results" % (impl, result["wrong"][impl],
                                                                   result["checked"][impl])
                                     for impl in result["wrong"]))
    for f in result["failures"]:
        print("# run failed: " + f.splitlines()[0])
    if args.sweep:
        run_sweep(args, progs, bw_gbs, args.out)
    ok = (progs["mpibench"] is not None and n_fail == 0 and total_wrong == 0
          and not result["failures"])
    result["pass"] = ok
    result["seconds"] = time.time() - t_start
    write_outputs(args.out, result)
    if progs["mpibench"] is None:
        print("# no MPI found (mpicc, %s): par measured alone, no ratios" % args.mpirun)
    print("# %d of %d ratios at or under target, %d wrong, %d failed runs: %s (%.0f s; %s)" %
          (len(judged) - n_fail, len(judged), total_wrong, len(result["failures"]),
           "PASS" if ok else "FAIL", time.time() - t_start, os.path.join(args.out, "compare.json")))
    if progs["mpibench"] is None:
        return 2
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
