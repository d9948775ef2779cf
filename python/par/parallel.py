"""par.parallel: the original parallelism module's API on par's (dp, pp, mp) mesh.

    import par
    from par import parallel

    par.init()                                  # the world first (parrun sets it up)
    parallel.init_parallelism(model_parallelism=2, pipeline_parallelism=2)
    info = parallel.parallel_group_info()       # .mp .pp .dp
    info.mp.reduce(t)                           # all-reduce over the mp group, in place
    part = info.mp.split(w, dim=-1)             # a view of this rank's part of w
    full = info.mp.gather(y, dim=-1)            # the members' parts, concatenated in order

The layout is par's: rank = (d*PP + p)*MP + m on every rank, a rank's ``rank`` in a group is
its index there (its coordinate), and the groups are those of docs/parallelism.md. The rules are
the C library's: initialising twice or before par.init() raises ParallismError (the original's
spelling; ParallelismError is the same class), model parallelism larger than the world is
clamped with a warning, sizes that do not divide the world raise naming both numbers.
"""
import os as _os
import sys as _sys
import warnings as _warnings

from . import _par

__all__ = [
    "init_parallelism", "parallel_group_info", "default_group_info",
    "parallelism_is_initialized", "reset_parallelism", "ParallismError", "ParallelismError",
    "GroupInfo", "ParallelGroupInfo",
]


class ParallismError(_par.Error):
    """A parallel layout that cannot be set up (the original module's spelling)."""


ParallelismError = ParallismError


def _new_like(tensor, shape):
    """A new, uninitialised array of tensor's type and dtype with the given shape."""
    if hasattr(tensor, "new_empty"):  # torch
        return tensor.new_empty(shape)
    import numpy
    if isinstance(tensor, numpy.ndarray):
        return numpy.empty(shape, dtype=tensor.dtype)
    return numpy.empty(shape, dtype=numpy.asarray(tensor).dtype)


def _norm_dim(dim, ndim, what):
    d = dim + ndim if dim < 0 else dim
    if not 0 <= d < ndim:
        raise _par.InvalidArgumentError(
            f"{what}: dim {dim} is out of range for a tensor of {ndim} dims")
    return d


class GroupInfo:
    """One group of the layout as this rank sees it: ``group`` (a par.Group),
    ``global_ranks`` (the members, in order), ``rank`` (this rank's index in the group) and
    ``world_size`` (the number of members), with reduce, split and gather over it."""

    __slots__ = ("group", "global_ranks", "rank", "world_size")

    def __init__(self, group):
        self.group = group
        self.global_ranks = group.ranks
        self.rank = group.rank
        self.world_size = group.size

    def reduce(self, tensor, op=_par.SUM, *, async_op=False):
        """All-reduces tensor over the group, in place. Returns the tensor, or with
        async_op=True a par.Work whose wait() returns it."""
        return _par._reduce_into(tensor, op, self.group, async_op)

    def split(self, tensor, dim=0):
        """This rank's part of tensor along dim: a view (no copy) of the same type. The dim
        must divide evenly by the group size."""
        shape = tuple(tensor.shape)
        d = _norm_dim(dim, len(shape), "split")
        n = shape[d]
        if n % self.world_size:
            raise _par.CountError(
                f"split: dim {dim} has size {n}, which is not divisible by the group size "
                f"{self.world_size}")
        part = n // self.world_size
        start = self.rank * part
        return tensor[(slice(None),) * d + (slice(start, start + part),)]

    def gather(self, tensor, dim=-1, *, async_op=False):
        """The members' tensors concatenated along dim in member order, as a new tensor of
        the input's type. With async_op=True a par.Work whose wait() returns it."""
        shape = list(tensor.shape)
        d = _norm_dim(dim, len(shape), "gather")
        shape[d] *= self.world_size
        out = _new_like(tensor, shape)
        return _par._tensor_gather(self.group, tensor, d, out, async_op)

    def __repr__(self):
        return (f"GroupInfo(global_ranks={self.global_ranks}, rank={self.rank}, "
                f"world_size={self.world_size})")


class ParallelGroupInfo:
    """This rank's model, pipeline and data parallel groups: ``.mp``, ``.pp``, ``.dp``."""

    __slots__ = ("mp", "pp", "dp")

    def __init__(self, mp, pp, dp):
        self.mp, self.pp, self.dp = mp, pp, dp

    def __iter__(self):
        return iter((self.mp, self.pp, self.dp))

    def __repr__(self):
        return f"ParallelGroupInfo(mp={self.mp}, pp={self.pp}, dp={self.dp})"


_infos = None  # (default, ParallelGroupInfo) of the current layout


def _colour():
    return "NO_COLOR" not in _os.environ and _os.environ.get("TERM") != "dumb"


def _log_configuration(line):
    if _par.get_rank() != 0 or _par.get_log_level() not in ("info", "debug"):
        return
    if _colour():
        _sys.stderr.write(f"\033[1;32mpar.parallel\033[0m \033[1m{line}\033[0m\n")
    else:
        _sys.stderr.write(f"par.parallel {line}\n")
    _sys.stderr.flush()


def init_parallelism(model_parallelism=1, pipeline_parallelism=1, *, mp_backend=None,
                     pp_backend=None, dp_backend=None):
    """Lays the world out as (dp, pp, mp) and creates this rank's groups. Collective over the
    world: every rank calls it with the same arguments. Backends: None (auto), 'shm', 'mpi'."""
    global _infos
    if not _par.is_initialized():
        raise ParallismError(
            "the world is not initialised: call par.init() before init_parallelism()")
    if _par._parallelism_is_initialized():
        raise ParallismError(
            f"parallelism is already initialised ({_par._describe_default()}); call "
            "reset_parallelism() first")
    world = _par.get_world_size()
    try:
        mp, pp, dp, warning = _par._layout_parallel(world, int(model_parallelism),
                                                    int(pipeline_parallelism))
    except _par.InvalidArgumentError as e:
        raise ParallismError(str(e)) from None
    if warning:
        _warnings.warn(warning, stacklevel=2)
    # The library would log the clamp and the configuration line itself; this module says
    # them once, its own way (a Python warning, the coloured line).
    level = _par.get_log_level()
    _par.set_log_level("error" if level != "off" else "off")
    try:
        _par._init_parallelism(mp, pp, mp_backend, pp_backend, dp_backend)
    except (_par.StateError, _par.InvalidArgumentError) as e:
        raise ParallismError(str(e)) from None
    finally:
        _par.set_log_level(level)
    world_g, mp_g, pp_g, dp_g = _par._default_groups()
    _infos = (GroupInfo(world_g),
              ParallelGroupInfo(GroupInfo(mp_g), GroupInfo(pp_g), GroupInfo(dp_g)))
    _log_configuration(_par._describe_default())


def _need():
    if _infos is None or not _par._parallelism_is_initialized():
        raise ParallismError("parallelism is not initialised: call init_parallelism() first")
    return _infos


def parallel_group_info():
    """This rank's mp, pp and dp GroupInfos."""
    return _need()[1]


def default_group_info():
    """The GroupInfo of the whole world."""
    return _need()[0]


def parallelism_is_initialized():
    return _par._parallelism_is_initialized()


def reset_parallelism():
    """Frees the layout's groups; init_parallelism may be called again. GroupInfos taken
    before are stale afterwards (their ops raise par.StateError). Not collective."""
    global _infos
    _infos = None
    _par._reset_parallelism()
