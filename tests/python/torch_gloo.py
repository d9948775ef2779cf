"""A torch.distributed program, written as for torchrun, that must run unchanged under parrun
(ctest python_torch_gloo_n2): gloo's rendezvous binds MASTER_PORT on rank 0, so parrun must
hand out a port that nothing holds, and keep its own store where par finds it
(PAR_STORE_ADDR). par runs beside gloo in the same processes."""
import torch
import torch.distributed as dist

dist.init_process_group("gloo", init_method="env://")
rank, world = dist.get_rank(), dist.get_world_size()
t = torch.full((4,), float(rank + 1))
dist.all_reduce(t)
assert t.tolist() == [world * (world + 1) / 2] * 4, t

import par  # noqa: E402

par.init()
assert (par.get_rank(), par.get_world_size()) == (rank, world)
u = torch.full((4,), float(rank + 1))
par.all_reduce(u)
assert torch.equal(t, u)
par.destroy()
dist.destroy_process_group()
print(f"rank {rank}: gloo and par agree: {t.tolist()}")
