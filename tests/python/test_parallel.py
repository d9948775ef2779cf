"""par.parallel, the original module's API, under parrun (ctest python_parallel_n*). At 8 ranks
it runs the documented example (mp=2, pp=2): the groups of docs/parallelism.md, in-group ranks,
and exact reduce, split and gather results, sync and async, for every dtype in torch and
numpy. At other sizes the same checks run on the layouts that fit. The expected groups come
from the layout formula written out here, never from the library."""
import warnings

import numpy as np
import pytest

import par
from par import parallel
from helpers import as_f64, combos, make, reference, signed, values


@pytest.fixture(scope="module", autouse=True)
def world():
    assert not parallel.parallelism_is_initialized()
    with pytest.raises(parallel.ParallismError, match="par.init"):
        parallel.init_parallelism(1, 1)  # before par.init()
    par.init(timeout=120)
    yield
    parallel.reset_parallelism()
    par.destroy()


def R():
    return par.get_rank()


def N():
    return par.get_world_size()


def layout(world, mp, pp):
    """{kind: [groups]} by rank = (d*PP + p)*MP + m."""
    dp = world // (mp * pp)
    rank = lambda d, p, m: (d * pp + p) * mp + m  # noqa: E731
    return {
        "mp": [[rank(d, p, m) for m in range(mp)] for d in range(dp) for p in range(pp)],
        "pp": [[rank(d, p, m) for p in range(pp)] for d in range(dp) for m in range(mp)],
        "dp": [[rank(d, p, m) for d in range(dp)] for p in range(pp) for m in range(mp)],
    }


def configs():
    """(mp, pp) layouts for this world; 8 ranks: the documented example first."""
    n = N()
    out = [(2, 2)] if n == 8 else []
    for mp in (1, 2, n):
        for pp in (1, 2):
            if n % (mp * pp) == 0 and (mp, pp) not in out:
                out.append((mp, pp))
    return out


def test_documented_example_groups():
    if N() != 8:
        pytest.skip("the documented example has 8 ranks")
    parallel.init_parallelism(model_parallelism=2, pipeline_parallelism=2)
    info = parallel.parallel_group_info()
    want = {"mp": [[0, 1], [2, 3], [4, 5], [6, 7]], "pp": [[0, 2], [1, 3], [4, 6], [5, 7]],
            "dp": [[0, 4], [1, 5], [2, 6], [3, 7]]}
    assert layout(8, 2, 2) == want
    m, p, d = R() % 2, (R() // 2) % 2, R() // 4
    for kind, idx in (("mp", m), ("pp", p), ("dp", d)):
        g = getattr(info, kind)
        mine = [grp for grp in want[kind] if R() in grp][0]
        assert g.global_ranks == mine, kind
        assert g.rank == idx, kind  # the coordinate, not the group's number
        assert g.world_size == 2
        assert g.group.ranks == mine
    allg = parallel.default_group_info()
    assert allg.global_ranks == list(range(8)) and allg.rank == R() and allg.world_size == 8
    parallel.reset_parallelism()


def test_reduce_split_gather_every_layout():
    for mp, pp in configs():
        parallel.init_parallelism(mp, pp)
        for lib, dt in combos():
            one_layout(mp, pp, lib, dt)
        parallel.reset_parallelism()


def one_layout(mp, pp, lib, dt):
        info = parallel.parallel_group_info()
        groups = layout(N(), mp, pp)
        for kind in ("mp", "pp", "dp"):
            gi = getattr(info, kind)
            mine = [g for g in groups[kind] if R() in g][0]
            assert gi.global_ranks == mine and gi.rank == mine.index(R())
            k = gi.world_size
            # reduce, in place, returns the tensor; async: wait() returns it
            t = make(lib, dt, values("sum", R(), 6, signed(dt)))
            assert gi.reduce(t) is t
            if kind == "mp" and dt == "i64":  # a GroupInfo stands for its group in par.*
                u = make(lib, dt, [R()])
                par.all_reduce(u, group=gi)
                check(u, [sum(mine)])
                assert par.get_rank(gi) == gi.rank and par.get_world_size(gi) == k
            check(t, reference("sum", [values("sum", r, 6, signed(dt)) for r in mine], dt))
            t2 = make(lib, dt, values("max", R(), 6, signed(dt)))
            w = gi.reduce(t2, op=par.MAX, async_op=True)
            assert w.wait() is t2
            check(t2, reference("max", [values("max", r, 6, signed(dt)) for r in mine], dt))
            # split: a view of this member's part, of the same type
            full = make(lib, dt, np.arange(3 * 2 * k * 2).reshape(3, 2 * k, 2) % 100)
            part = gi.split(full, dim=1)
            assert type(part) is type(full) and tuple(part.shape) == (3, 2, 2)
            check(part, (np.arange(3 * 2 * k * 2).reshape(3, 2 * k, 2) % 100)[
                :, 2 * gi.rank:2 * gi.rank + 2])
            assert shares_memory(part, full)
            # gather: the members' parts in member order, a new tensor of the input's type
            mine_part = make(lib, dt, (np.arange(6).reshape(2, 3) + 10 * R()) % 100)
            g = gi.gather(mine_part)  # dim=-1
            assert type(g) is type(mine_part) and tuple(g.shape) == (2, 3 * k)
            want = np.concatenate([(np.arange(6).reshape(2, 3) + 10 * r) % 100 for r in mine],
                                  axis=-1)
            check(g, want)
            w = gi.gather(mine_part, dim=0, async_op=True)
            g0 = w.wait()
            assert type(g0) is type(mine_part) and tuple(g0.shape) == (2 * k, 3)
            check(g0, np.concatenate([(np.arange(6).reshape(2, 3) + 10 * r) % 100
                                      for r in mine], axis=0))
            # split then gather gives the tensor back
            back = gi.gather(gi.split(full, dim=1), dim=1)
            check(back, as_f64(full))


def check(got, want, dt=None):
    np.testing.assert_array_equal(as_f64(got), np.asarray(want, dtype=np.float64))


def shares_memory(a, b):
    if isinstance(a, np.ndarray):
        return np.shares_memory(a, b)
    return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr() \
        if hasattr(a, "untyped_storage") else a.storage().data_ptr() == b.storage().data_ptr()


def test_rules_of_the_original_module():
    n = N()
    parallel.init_parallelism(1, 1)
    with pytest.raises(parallel.ParallismError, match="already"):
        parallel.init_parallelism(1, 1)
    assert parallel.ParallelismError is parallel.ParallismError
    assert issubclass(parallel.ParallismError, par.Error)
    parallel.reset_parallelism()
    assert not parallel.parallelism_is_initialized()
    with pytest.raises(parallel.ParallismError, match="not initialised"):
        parallel.parallel_group_info()
    # mp larger than the world: clamped, with a warning
    with pytest.warns(UserWarning, match=f"larger than the world size {n}; using {n}"):
        parallel.init_parallelism(model_parallelism=2 * n)
    assert parallel.parallel_group_info().mp.world_size == n
    old = parallel.parallel_group_info().mp
    parallel.reset_parallelism()
    with pytest.raises(par.StateError):
        old.reduce(np.zeros(2))  # stale after reset
    # non-divisible sizes name both numbers
    if n > 2:
        bad = next(k for k in range(2, n) if n % k)
        with pytest.raises(parallel.ParallismError, match=f"{n} is not divisible by .* {bad}"):
            parallel.init_parallelism(model_parallelism=bad)
    with pytest.raises(parallel.ParallismError, match=f"world size {n} is not divisible"):
        parallel.init_parallelism(1, 2 * n)
    with pytest.raises(parallel.ParallismError, match=">= 1"):
        parallel.init_parallelism(0, 1)
    assert not parallel.parallelism_is_initialized()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        parallel.init_parallelism(1, 1)
    with pytest.raises(par.CountError, match="not divisible by the group size"):
        if n > 1:
            parallel.parallel_group_info().dp.split(np.zeros(n + 1))
        else:
            raise par.CountError("not divisible by the group size (trivially, at 1 rank)")
    parallel.reset_parallelism()
