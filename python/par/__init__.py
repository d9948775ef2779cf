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

from . import parallel  # noqa: E402,F401
