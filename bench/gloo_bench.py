"""gloo_bench.py -- the Gloo side of bench/compare.py: torch.distributed's gloo backend, measured
the way tools/parbench measures par and bench/mpibench.c measures MPI, so the times divide.

Run under parrun (it sets MASTER_ADDR, MASTER_PORT, RANK and WORLD_SIZE, as torchrun does):

    build/bin/parrun -n 2 /usr/bin/python3 bench/gloo_bench.py --case 1M:allreduce+allgather:0

Each --case SIZE:OPS:ITERS measures OPS ('+'-separated: allreduce, allgather, broadcast,
reduce_scatter, alltoall) at one sweep size in bytes (K/M suffixes), f32 (sum for the
reductions), with ITERS timed ops (0: parbench's automatic count, ~0.1 s). Sizes and counts are
parbench's (nccl-tests'): allgather, reduce_scatter and alltoall pass each rank's block, S/n.
The timing is parbench's: buffers allocated and written once per size, `--warmup` untimed ops,
then a barrier, ITERS ops back to back, and the slowest rank's time divided by ITERS.

What each op calls, and how it differs from par's out-of-place call:
  allreduce       dist.all_reduce, in place (gloo's only form; no input copy is timed)
  allgather       dist.all_gather into n views of one output tensor
  broadcast       dist.broadcast from rank 0, in place (as par's and MPI's)
  reduce_scatter  dist.reduce_scatter where the backend has it; gloo in torch <= 2.x has not
                  (it raises), so then: copy the input, all_reduce it in place, copy this rank's
                  block out. Rows say so ("emulated": true).
  alltoall        dist.all_to_all_single

--check runs each op once more on exact small-integer inputs (parbench's patterns) and counts
the wrong elements: outputs against a reference computed here, 64 guard bytes after each
output, and inputs of out-of-place ops unchanged. Rank 0 prints one JSON object per op and size
with parbench's keys (op dtype bytes count ranks iters time_us algbw_gbs busbw_gbs wrong) plus
"emulated". GLOO_BENCH_INJECT_FAULT=1 makes the last rank corrupt one output element of each
checked op, to see --check fail. Exit status: 0 ok, 1 a wrong result, 2 a bad command line.
"""
import argparse
import json
import os
import sys
import time

import torch
import torch.distributed as dist

TARGET_S, MIN_ITERS, MAX_ITERS = 0.1, 2, 1000000  # tools/parbench/bench.h
GUARD = 64  # bytes after each output that must keep the sentinel
SENTINEL = 0xA5
OPS = ("allreduce", "allgather", "broadcast", "reduce_scatter", "alltoall")
BLOCKED = ("allgather", "reduce_scatter", "alltoall")  # count = S / n per rank
REDUCES = ("allreduce", "reduce_scatter")


def parse_size(s):
    mul = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(s[-1:].upper(), 1)
    return int(s[:-1] if mul > 1 else s) * mul


def parse_case(text):
    try:
        size, ops, iters = text.split(":")
        ops = ops.split("+")
        if any(o not in OPS for o in ops) or int(iters) < 0 or parse_size(size) < 4:
            raise ValueError
        return parse_size(size), ops, int(iters)
    except ValueError:
        raise argparse.ArgumentTypeError("a case is SIZE:OP+OP:ITERS, e.g. 1M:allreduce:0, "
                                         "ops from " + ", ".join(OPS))


# ------------------------------------------------------------------------------------------
# parbench's patterns (tools/parbench/pattern.c), as float32 tables of one period
# ------------------------------------------------------------------------------------------

def period(op, n):
    return 7 * (min(10, 127 // n) + 1) if op in REDUCES else 127 * 127


def pattern(op, r, n):
    """Rank r's input over one period; r = None: the sum over all ranks (the reduced value)."""
    k = torch.arange(period(op, n), dtype=torch.int64)
    if op not in REDUCES:
        return ((r * 37 + k * 13 + k // 127) % 127).float()
    m = min(10, 127 // n)
    ranks = range(n) if r is None else (r,)
    return sum(((q + 1) * (k % 7 + 1) + k // 7) % (m + 1) for q in ranks).float()


def tiled(table, start, count):
    """Elements start .. start+count of the periodic sequence whose period is table."""
    p = table.numel()
    rolled = torch.roll(table, -(start % p))
    return rolled.repeat(count // p + 1)[:count]


# ------------------------------------------------------------------------------------------
# The ops
# ------------------------------------------------------------------------------------------

class Bench:
    def __init__(self, me, n, max_bytes):
        self.me, self.n = me, n
        elems = max_bytes // 4 + GUARD // 4
        self.send = torch.zeros(elems, dtype=torch.float32)
        self.recv = torch.zeros(elems, dtype=torch.float32)
        self.tmp = torch.zeros(elems, dtype=torch.float32)
        self.recv.view(torch.uint8).fill_(SENTINEL)
        self.native_rs = self.probe_reduce_scatter()
        self.inject_fault = os.environ.get("GLOO_BENCH_INJECT_FAULT") == "1"

    def probe_reduce_scatter(self):
        """Whether the backend has reduce_scatter (every rank learns the same answer)."""
        ok = torch.ones(1)
        try:
            out = torch.zeros(1)
            dist.reduce_scatter(out, [torch.ones(1) for _ in range(self.n)])
        except (RuntimeError, NotImplementedError, ValueError):
            ok.zero_()
        dist.all_reduce(ok, op=dist.ReduceOp.MIN)
        return ok.item() == 1

    def counts(self, op, size):
        """(count, input elements, output elements) as parbench has them."""
        total = size // 4
        count = total // self.n if op in BLOCKED else total
        n_in = count * self.n if op in ("reduce_scatter", "alltoall") else count
        n_out = count * self.n if op in ("allgather", "alltoall") else count
        return count, n_in, n_out

    def caller(self, op, count):
        """A function that runs op once on this rank's buffers."""
        n, me = self.n, self.me
        if op == "allreduce":
            out = self.recv[:count]
            return lambda: dist.all_reduce(out)
        if op == "broadcast":
            out = self.recv[:count]
            return lambda: dist.broadcast(out, src=0)
        if op == "allgather":
            inp, outs = self.send[:count], list(self.recv[:count * n].split(count))
            return lambda: dist.all_gather(outs, inp)
        if op == "alltoall":
            inp, out = self.send[:count * n], self.recv[:count * n]
            return lambda: dist.all_to_all_single(out, inp)
        inp, out = self.send[:count * n], self.recv[:count]
        if self.native_rs:
            ins = list(inp.split(count))
            return lambda: dist.reduce_scatter(out, ins)
        tmp = self.tmp[:count * n]

        def emulated():
            tmp.copy_(inp)
            dist.all_reduce(tmp)
            out.copy_(tmp[me * count:(me + 1) * count])
        return emulated

    def timed(self, fn, iters):
        """A barrier, iters ops back to back; the slowest rank's seconds, on every rank."""
        dist.barrier()
        t0 = time.perf_counter()
        for _ in range(iters):
            fn()
        t = torch.tensor([time.perf_counter() - t0], dtype=torch.float64)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return t.item()

    def auto_iters(self, fn):
        """parbench's automatic count: probe until a probe takes TARGET_S / 8, then scale;
        rank 0 decides each step and broadcasts it."""
        probe = 1
        while True:
            t = self.timed(fn, probe)
            nxt = torch.zeros(1, dtype=torch.int64)
            if self.me == 0:
                per = t / probe if t > 0 else 1e-9
                if t >= TARGET_S / 8 or probe >= MAX_ITERS:
                    want = TARGET_S / per
                    nxt[0] = -max(MIN_ITERS, MAX_ITERS if want >= MAX_ITERS else int(want) + 1)
                else:
                    want = TARGET_S / 4 / per
                    nxt[0] = min(MAX_ITERS, int(want) if want > 2.0 * probe else 2 * probe)
            dist.broadcast(nxt, src=0)
            if nxt.item() < 0:
                return -nxt.item()
            probe = nxt.item()

    def checked(self, op, count, n_in, n_out):
        """Runs op once on known inputs; the wrong elements summed over the ranks."""
        me, n = self.me, self.n
        self.recv.view(torch.uint8)[:n_out * 4 + GUARD].fill_(SENTINEL)
        if op == "allreduce":  # in place: the input goes where the output will be
            self.recv[:count].copy_(tiled(pattern(op, me, n), 0, count))
        elif op == "broadcast" and me == 0:
            self.recv[:count].copy_(tiled(pattern(op, 0, n), 0, count))
        else:
            self.send[:n_in].copy_(tiled(pattern(op, me, n), 0, n_in))
        self.caller(op, count)()
        out = self.recv[:n_out]
        if self.inject_fault and me == n - 1:  # as PARBENCH_INJECT_FAULT: --check must see it
            out.view(torch.uint8)[0] ^= 0x40
        if op == "allreduce":
            want = tiled(pattern(op, None, n), 0, count)
        elif op == "reduce_scatter":
            want = tiled(pattern(op, None, n), me * count, count)
        elif op == "broadcast":
            want = tiled(pattern(op, 0, n), 0, count)
        elif op == "allgather":
            want = torch.cat([tiled(pattern(op, src, n), 0, count) for src in range(n)])
        else:  # alltoall: block src is src's block for this rank
            want = torch.cat([tiled(pattern(op, src, n), me * count, count) for src in range(n)])
        wrong = int((out != want).sum().item())
        guard = self.recv.view(torch.uint8)[n_out * 4:n_out * 4 + GUARD]
        wrong += int((guard != SENTINEL).sum().item())
        if op not in ("allreduce", "broadcast"):  # out of place: the input must be unchanged
            wrong += int((self.send[:n_in] != tiled(pattern(op, me, n), 0, n_in)).sum().item())
        w = torch.tensor([wrong], dtype=torch.int64)
        dist.all_reduce(w)
        return w.item()


def busbw_factor(op, n):
    return 2.0 * (n - 1) / n if op == "allreduce" else 1.0 if op == "broadcast" else (n - 1) / n


def main(argv):
    ap = argparse.ArgumentParser(description="torch.distributed gloo, measured as parbench")
    ap.add_argument("--case", action="append", type=parse_case, required=True,
                    help="SIZE:OP+OP:ITERS (repeatable)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed ops per size (default 1)")
    ap.add_argument("--check", action="store_true", help="verify every op once on exact inputs")
    args = ap.parse_args(argv)

    torch.set_num_threads(1)  # the ranks share the cores; gloo works on its own threads
    dist.init_process_group("gloo", init_method="env://")
    me, n = dist.get_rank(), dist.get_world_size()
    b = Bench(me, n, max(size for size, _, _ in args.case))
    total_wrong = 0
    for size, ops, fixed in args.case:
        for op in ops:
            count, n_in, n_out = b.counts(op, size)
            if count == 0:
                continue  # a block of no elements: nothing to measure (parbench skips it too)
            fn = b.caller(op, count)
            for _ in range(args.warmup):
                fn()
            iters = fixed or b.auto_iters(fn)
            t = b.timed(fn, iters) / iters
            wrong = b.checked(op, count, n_in, n_out) if args.check else None
            total_wrong += wrong or 0
            nbytes = n_out * 4 if op in ("allgather", "alltoall") else n_in * 4
            algbw = nbytes / 1e9 / t if t > 0 else 0.0
            if me == 0:
                print(json.dumps({
                    "op": op, "dtype": "f32", "redop": "sum" if op in REDUCES else None,
                    "root": 0 if op == "broadcast" else None, "bytes": nbytes, "count": count,
                    "ranks": n, "iters": iters, "time_us": t * 1e6, "algbw_gbs": algbw,
                    "busbw_gbs": algbw * busbw_factor(op, n), "wrong": wrong,
                    "emulated": op == "reduce_scatter" and not b.native_rs,
                    "torch": torch.__version__}), flush=True)
    dist.barrier()
    dist.destroy_process_group()
    if me == 0 and total_wrong:
        print("gloo_bench: FAILED: %d wrong element(s)" % total_wrong, file=sys.stderr)
    return 1 if total_wrong else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
