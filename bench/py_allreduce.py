"""par.all_reduce against torch.distributed.all_reduce (gloo) on the same torch tensors, in one
job, and what the Python call adds to par's C call:

    build/bin/parrun -n 8 env PYTHONPATH=build/python python3 bench/py_allreduce.py

Sizes 8 B, 1 MiB and 64 MiB of float32, in place (--sizes to change). par runs twice: on the
same torch tensor as gloo, and on a tensor from par.empty (par_alloc memory, which the shm
backend reads in place). For each size the libraries are timed in turn on the same tensor after a warm-up, --reps times, alternating which
goes first so that a change in the machine's load hits both; a timing is `iters` ops back to
back after a barrier, and its time per op is the slowest rank's mean. Each side's figure is the
median over the repetitions, and the ratio is par's median over gloo's. For 8 B the script also
times _c_allreduce_loop, the same par_allreduce call in a C loop with no Python in between,
alternating with the Python loop: the difference of the medians is what the Python call adds.
Rank 0 prints the table; docs/PERFORMANCE.md has the targets and recorded figures.
"""
import argparse
import os
import statistics
import time

import torch
import torch.distributed as dist

import par


def parse_size(s):
    units = {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "K": 1 << 10, "M": 1 << 20}
    for u in sorted(units, key=len, reverse=True):
        if s.endswith(u):
            return int(s[: -len(u)]) * units[u]
    return int(s)


def iters_for(nbytes, budget_s):
    # enough ops to fill the budget at a guessed ~0.5 GB/s, at least 3
    return max(3, min(5000, int(budget_s / (20e-6 + nbytes / 5e8))))


def slowest(seconds):
    t = torch.tensor([seconds], dtype=torch.float64)
    par.all_reduce(t, op=par.MAX)
    return t.item()


def timed(fn, iters):
    par.barrier()
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    return slowest(time.perf_counter() - t0) / iters


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="8B,1MiB,64MiB")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--budget", type=float, default=0.3,
                    help="seconds per timing (sets iters for each size)")
    args = ap.parse_args()

    dist.init_process_group("gloo", init_method="env://")
    par.init()
    rank, n = par.get_rank(), par.get_world_size()
    say = print if rank == 0 else (lambda *a, **k: None)
    say(f"# {n} ranks, torch {torch.__version__} gloo vs par "
        f"(PAR_BACKEND={os.environ.get('PAR_BACKEND', 'auto')}), f32 sum in place, "
        f"medians of {args.reps} alternating timings, load {os.getloadavg()[0]:.1f}")
    say(f"# {'size':>8} {'iters':>6} {'gloo us':>10} {'par us':>10} {'par/gloo':>9} "
        f"{'par.empty us':>13} {'ratio':>7}")
    for s in args.sizes.split(","):
        nbytes = parse_size(s)
        t = torch.ones(max(1, nbytes // 4), dtype=torch.float32)
        z = par.empty(t.shape, torch.float32)  # par_alloc memory: the zero-copy paths
        z.fill_(1)
        iters = iters_for(nbytes, args.budget)
        for _ in range(min(iters, 10)):  # warm-up: connections, segments, first touch
            dist.all_reduce(t)
            par.all_reduce(t)
            par.all_reduce(z)
        g, p, pz = [], [], []
        for r in range(args.reps):
            sides = [(g, lambda: dist.all_reduce(t)), (p, lambda: par.all_reduce(t)),
                     (pz, lambda: par.all_reduce(z))]
            for out, fn in (sides if r % 2 == 0 else sides[::-1]):
                out.append(timed(fn, iters))
        gm, pm, zm = statistics.median(g), statistics.median(p), statistics.median(pz)
        say(f"  {s:>8} {iters:>6} {gm * 1e6:>10.1f} {pm * 1e6:>10.1f} {pm / gm:>9.3f} "
            f"{zm * 1e6:>13.1f} {zm / gm:>7.3f}", flush=True)
        del z
        if nbytes <= 64:
            c, py = [], []
            for r in range(args.reps):
                par.barrier()
                c.append(slowest(par._par._c_allreduce_loop(t, iters)) / iters)
                py.append(timed(lambda: par.all_reduce(t), iters))
            cm, pym = statistics.median(c), statistics.median(py)
            say(f"# {s}: C call {cm * 1e6:.2f} us, Python call {pym * 1e6:.2f} us: the Python "
                f"call adds {(pym - cm) * 1e6:.2f} us", flush=True)
    par.destroy()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
