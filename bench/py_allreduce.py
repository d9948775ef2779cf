"""par.all_reduce against torch.distributed.all_reduce (gloo) on the same torch tensors, in one
job, and what the Python call adds to par's C call:

    build/bin/parrun -n 8 env PYTHONPATH=build/python python3 bench/py_allreduce.py

Sizes 8 B, 1 MiB and 64 MiB of float32 (--sizes to change). Each size is timed for both
libraries in turn on the same tensor, after a warm-up; the time per op is the slowest rank's
mean over the iterations. Rank 0 prints one line per size with the ratio par / gloo, and the
8-byte op's Python overhead: par.all_reduce minus _c_allreduce_loop (the same C call in a C
loop, no Python in between). docs/PERFORMANCE.md has the targets and recorded figures.
"""
import argparse
import os
import time

import torch
import torch.distributed as dist

import par


def parse_size(s):
    units = {"B": 1, "K": 1 << 10, "KiB": 1 << 10, "M": 1 << 20, "MiB": 1 << 20}
    for u in sorted(units, key=len, reverse=True):
        if s.endswith(u):
            return int(s[: -len(u)]) * units[u]
    return int(s)


def iters_for(nbytes, budget_s):
    # enough ops to fill the budget at a guessed ~1 GB/s, at least 3
    return max(3, min(20000, int(budget_s / (5e-6 + nbytes / 1e9))))


def slowest(seconds):
    t = torch.tensor([seconds], dtype=torch.float64)
    par.all_reduce(t, op=par.MAX)
    return t.item()


def time_loop(fn, iters):
    par.barrier()
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    return slowest(time.perf_counter() - t0) / iters


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="8B,1MiB,64MiB")
    ap.add_argument("--budget", type=float, default=1.0, help="seconds per size and library")
    args = ap.parse_args()

    dist.init_process_group("gloo", init_method="env://")
    par.init()
    rank, n = par.get_rank(), par.get_world_size()
    if rank == 0:
        print(f"# {n} ranks, torch {torch.__version__}, gloo vs par "
              f"(PAR_BACKEND={os.environ.get('PAR_BACKEND', 'auto')})")
        print(f"# {'size':>8} {'iters':>6} {'gloo us':>10} {'par us':>10} {'par/gloo':>9}")
    for s in args.sizes.split(","):
        nbytes = parse_size(s)
        t = torch.ones(max(1, nbytes // 4), dtype=torch.float32)
        iters = iters_for(nbytes, args.budget)
        for _ in range(min(iters, 20)):  # warm-up: connections, segments, caches
            dist.all_reduce(t)
            par.all_reduce(t)
        g = time_loop(lambda: dist.all_reduce(t), iters)
        p = time_loop(lambda: par.all_reduce(t), iters)
        if rank == 0:
            print(f"  {s:>8} {iters:>6} {g * 1e6:>10.1f} {p * 1e6:>10.1f} {p / g:>9.3f}",
                  flush=True)
        if nbytes <= 64:
            par.barrier()
            c = slowest(par._par._c_allreduce_loop(t, iters)) / iters
            py = time_loop(lambda: par.all_reduce(t), iters)
            if rank == 0:
                print(f"# {s}: C call {c * 1e6:.2f} us, Python call {py * 1e6:.2f} us: "
                      f"the Python call adds {(py - c) * 1e6:.2f} us", flush=True)
    par.destroy()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
