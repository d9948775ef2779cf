"""Tensor-parallel linear layers with par.parallel, on torch tensors.

    build/bin/parrun -n 8 env PYTHONPATH=build/python python3 examples/python/tensor_parallel.py

The Python twin of examples/mesh.c: lays 8 ranks out as mp=2, pp=2, dp=2, prints each rank's
groups, then on every mp group runs a column-parallel layer (split the weight along its last
dim, gather the partial outputs) and a row-parallel layer (split the input along dim 1 and the
weight along dim 0, reduce the partial products over mp), and checks both against the product
computed in one process. It also averages a "gradient" over the dp group asynchronously, the
way a training step overlaps communication with compute. Works with any world size that mp=2
and pp=2 divide (with fewer ranks, pass --mp 1 --pp 1).
"""
import argparse

import torch

import par
from par import parallel

ap = argparse.ArgumentParser()
ap.add_argument("--mp", type=int, default=2)
ap.add_argument("--pp", type=int, default=2)
args = ap.parse_args()

par.init()
parallel.init_parallelism(model_parallelism=args.mp, pipeline_parallelism=args.pp)
rank = par.get_rank()
info = parallel.parallel_group_info()
mp, pp, dp = info.mp, info.pp, info.dp
print(f"rank {rank}: mp group {mp.global_ranks} (rank {mp.rank}), pp group {pp.global_ranks} "
      f"(rank {pp.rank}), dp group {dp.global_ranks} (rank {dp.rank})")

# The same inputs on every rank (a fixed seed), as a model's replicas would hold them.
torch.manual_seed(0)
x = torch.randn(4, 8, dtype=torch.float64)
A = torch.randn(8, 6, dtype=torch.float64)
B = torch.randn(8, 5, dtype=torch.float64)

# Column parallel: each mp member multiplies by its columns of A; gather joins the outputs.
y_part = x @ mp.split(A, dim=-1)                # [4, 6 / mp]
y = mp.gather(y_part, dim=-1)                   # [4, 6], member order = column order
assert torch.allclose(y, x @ A, rtol=1e-12, atol=1e-12)

# Row parallel: split x's columns and B's rows the same way; the partial products sum to x·B.
z = mp.split(x, dim=1) @ mp.split(B, dim=0)     # [4, 5], this member's share
mp.reduce(z)                                    # in place, over the mp group
assert torch.allclose(z, x @ B, rtol=1e-12, atol=1e-12)

# Data parallel: average a gradient over the replicas while something else runs.
grad = torch.full((1000,), float(dp.rank + 1))
work = dp.reduce(grad, op=par.AVG, async_op=True)
busy = sum(i * i for i in range(10000))         # compute that overlaps the reduce
work.wait()
assert torch.all(grad == (dp.world_size + 1) / 2)

par.barrier()
if rank == 0:
    print(f"ok: column- and row-parallel products match on all {par.get_world_size()} ranks")
parallel.reset_parallelism()
par.destroy()
