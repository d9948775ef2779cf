"""par for Python: collectives, process groups and parallel layouts on torch tensors and numpy
arrays, from par's C library (a CPython extension written in C; no torch.distributed under it).

Two faces over one world:

* torch.distributed's names: ``par.init()``, ``par.all_reduce(t, op=par.SUM, group=None,
  async_op=False)``, ``par.new_group(ranks)``, ``par.Mesh(names, sizes)``, ...
* the original module's API: ``from par import parallel`` (``init_parallelism``,
  ``parallel_group_info().mp.reduce / split / gather``).

Arrays come in through ``__dlpack__`` (torch CPU tensors, numpy arrays) or the buffer protocol;
results are written into the caller's memory. docs/python.md has the whole story.
"""
import enum as _enum

from ._par import *  # noqa: F401,F403  (the functions, Group, Work, Mesh, the exceptions)
from ._par import __version__  # noqa: F401
from . import _par


class ReduceOp(_enum.IntEnum):
    """Reduction ops. The names ("sum", "avg", ...) and torch's ReduceOp work too."""

    SUM = _par.SUM
    PROD = _par.PROD
    MIN = _par.MIN
    MAX = _par.MAX
    AVG = _par.AVG


SUM = ReduceOp.SUM
PROD = ReduceOp.PROD
MIN = ReduceOp.MIN
MAX = ReduceOp.MAX
AVG = ReduceOp.AVG



_TYPESTR = {"float32": "<f4", "float64": "<f8", "float16": "<f2", "int8": "|i1",
            "uint8": "|u1", "int32": "<i4", "int64": "<i8"}
_ALIASES = {"f32": "float32", "float": "float32", "f64": "float64", "double": "float64",
            "f16": "float16", "half": "float16", "bf16": "bfloat16", "i8": "int8",
            "u8": "uint8", "i32": "int32", "int": "int32", "i64": "int64"}


class _Region:
    """The owner of a numpy array on par_alloc memory: keeps the capsule (whose destructor
    frees the region) and describes the memory to numpy, writable."""

    def __init__(self, capsule, address, shape, typestr):
        self._capsule = capsule
        self.__array_interface__ = {"shape": tuple(shape), "typestr": typestr,
                                    "data": (address, False), "version": 3}


def empty(shape, dtype="float32", *, like="torch"):
    """A new, uninitialised tensor (like="torch") or numpy array (like="numpy") in memory the
    other ranks on this host can read directly (par_alloc). Ops on such tensors skip copying
    them through the group's shared segment: large all-reduces, allgathers and broadcasts get
    faster. dtype: a torch or numpy dtype or a name ("float32", "bf16", ...). Every tensor from
    it must be gone before par.destroy()."""
    if isinstance(shape, int):
        shape = (shape,)
    name = str(dtype)
    if name.startswith("torch."):
        name = name[len("torch."):]
    elif not isinstance(dtype, str):
        import numpy
        name = numpy.dtype(dtype).name
    name = _ALIASES.get(name, name)
    if like not in ("torch", "numpy"):
        raise _par.InvalidArgumentError(
            f"par.empty: like must be 'torch' or 'numpy', not {like!r}")
    shape = tuple(int(d) for d in shape)
    if like == "numpy":
        import numpy
        if name not in _TYPESTR:
            raise DtypeError(f"par.empty: numpy has no dtype {name!r} that par supports")
    capsule, address = _par._alloc(shape, name)
    if like == "torch":
        import torch.utils.dlpack
        return torch.utils.dlpack.from_dlpack(capsule)
    return numpy.asarray(_Region(capsule, address, shape, _TYPESTR[name]))


def _at_exit():
    # A program that forgets par.destroy() still says goodbye to its peers; one that keeps
    # par.empty() tensors to the end leaves the world to the process's exit.
    if _par.is_initialized() and _par._alloc_live() == 0:
        try:
            _par.destroy()
        except Error:
            pass


import atexit as _atexit  # noqa: E402

_atexit.register(_at_exit)

from . import parallel  # noqa: E402,F401
