"""Multi-rank tests of par's Python package, run under parrun at 1, 2, 3 and 8 ranks (ctest
python_multi_n*). Every rank runs the same tests in the same order, so each test's collectives
match across ranks; a test that fails on one rank makes its peers fail too (a timeout or a
lost peer) rather than hang. Expected values come from helpers.reference (numpy, int64)."""
import gc
import os
import weakref

import numpy as np
import pytest

import par
from helpers import LIBS, as_f64, combos, empty, make, reference, signed, torch, values, wrap

OPS = ["sum", "prod", "min", "max", "avg"]


@pytest.fixture(scope="module", autouse=True)
def world():
    par.init(timeout=120)
    yield
    par.destroy()


def R():
    return par.get_rank()


def N():
    return par.get_world_size()


def check(got, want, dt, op="sum"):
    tol = {"f16": 2e-3, "bf16": 1e-2}.get(dt, 1e-6) if op == "avg" else 0
    np.testing.assert_allclose(as_f64(got).ravel(), np.ravel(want), rtol=tol, atol=0)


def test_world_matches_launcher():
    assert par.is_initialized()
    assert R() == int(os.environ.get("RANK", 0))
    assert N() == int(os.environ.get("WORLD_SIZE", 1))
    g = par.default_group()
    assert g.ranks == list(range(N())) and g.rank == R() and g.size == N()


# ---- every op, every dtype, torch and numpy -------------------------------------------------

@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("lib,dt", combos())
def test_all_reduce(lib, dt, op):
    count = 37
    t = make(lib, dt, values(op, R(), count, signed(dt)))
    assert par.all_reduce(t, op=op) is None
    want = reference(op, [values(op, r, count, signed(dt)) for r in range(N())], dt)
    check(t, want, dt, op)


@pytest.mark.parametrize("lib,dt", combos())
def test_all_gather_into_tensor(lib, dt):
    count = 5
    t = make(lib, dt, values("sum", R(), count, signed(dt)))
    out = empty(lib, dt, (N() * count,))
    par.all_gather_into_tensor(out, t)
    want = np.concatenate([values("sum", r, count, signed(dt)) for r in range(N())])
    check(out, want, dt)


@pytest.mark.parametrize("op", ["sum", "max", "avg"])
@pytest.mark.parametrize("lib,dt", combos())
def test_reduce_scatter_tensor(lib, dt, op):
    count = 3
    t = make(lib, dt, values(op, R(), N() * count, signed(dt)))
    out = empty(lib, dt, (count,))
    par.reduce_scatter_tensor(out, t, op=op)
    full = reference(op, [values(op, r, N() * count, signed(dt)) for r in range(N())], dt)
    check(out, full[R() * count:(R() + 1) * count], dt, op)


@pytest.mark.parametrize("lib,dt", combos())
def test_broadcast_from_every_rank(lib, dt):
    for src in range(N()):
        t = make(lib, dt, values("sum", R(), 9, signed(dt)))
        par.broadcast(t, src)
        check(t, values("sum", src, 9, signed(dt)), dt)


@pytest.mark.parametrize("lib,dt", combos())
def test_reduce_to_last_rank(lib, dt):
    dst = N() - 1
    mine = values("sum", R(), 11, signed(dt))
    t = make(lib, dt, mine)
    par.reduce(t, dst, op=par.SUM)
    if R() == dst:
        check(t, reference("sum", [values("sum", r, 11, signed(dt)) for r in range(N())], dt), dt)
    else:
        check(t, mine, dt)  # left as it was


@pytest.mark.parametrize("lib,dt", combos())
def test_all_to_all_single(lib, dt):
    count = 2
    # block j of rank r holds 10*r + j (fits every dtype for up to 8 ranks)
    mine = np.repeat(np.arange(N()) + 10 * R(), count) % 100
    out = empty(lib, dt, (N() * count,))
    par.all_to_all_single(out, make(lib, dt, mine))
    want = np.repeat(10 * np.arange(N()) + R(), count) % 100
    check(out, want, dt)


def test_barrier():
    par.barrier()
    assert par.barrier(async_op=True).wait() is True


@pytest.mark.parametrize("lib", LIBS)
def test_send_recv_ring(lib):
    right, left = (R() + 1) % N(), (R() - 1) % N()
    out = make(lib, "f32", np.arange(6) + 100 * R())
    got = empty(lib, "f32", (6,))
    rw = par.irecv(got, src=left)
    sw = par.isend(out, dst=right)
    sw.wait()
    rw.wait()
    check(got, np.arange(6) + 100 * left, "f32")
    if N() >= 2 and R() in (0, 1):  # blocking pair
        buf = make(lib, "i64", np.arange(4) * (R() + 1))
        if R() == 0:
            par.send(buf, dst=1)
        else:
            assert par.recv(buf, src=0) == 0
            check(buf, np.arange(4), "i64")


# ---- strided arrays -----------------------------------------------------------------------

VIEWS = [("transpose", lambda a: a.T, True), ("step", lambda a: a[:, ::2], True),
         ("negative", lambda a: a[::-1, 1:5], False)]  # torch has no negative steps


@pytest.mark.parametrize("lib", LIBS)
def test_strided_all_reduce_lands_in_place(lib):
    base = np.arange(24, dtype=np.float64).reshape(4, 6)
    for name, view, torch_ok in VIEWS:
        if lib == "torch" and not torch_ok:
            continue
        owner = make(lib, "f64", base + R())
        par.all_reduce(view(owner))
        want = base + R()
        view(want)[...] = N() * view(base) + sum(range(N()))  # writes through the view
        np.testing.assert_array_equal(as_f64(owner), want, err_msg=name)


@pytest.mark.parametrize("lib", LIBS)
def test_strided_gather_and_broadcast(lib):
    base = np.arange(12, dtype=np.float64).reshape(3, 4)
    src = make(lib, "f64", base + R())[:, 1:3]  # 3x2, not compact
    out_owner = empty(lib, "f64", (2 * N() * 3, 2))
    out = out_owner[::2]  # every other row: a strided output
    par.all_gather_into_tensor(out, src)
    want = np.concatenate([(base + r)[:, 1:3] for r in range(N())])
    np.testing.assert_array_equal(as_f64(out), want)
    np.testing.assert_array_equal(as_f64(out_owner[1::2]), 99)  # rows in between untouched
    t = make(lib, "f64", base + R()).T
    par.broadcast(t, N() - 1)
    np.testing.assert_array_equal(as_f64(t), (base + N() - 1).T)


# ---- async --------------------------------------------------------------------------------

@pytest.mark.parametrize("lib", LIBS)
def test_async_ops_and_keep_alive(lib):
    works, arrays = [], []
    for k in range(8):
        t = make(lib, "f32", np.full(1000, k + R()))
        works.append(par.all_reduce(t, async_op=True))
        arrays.append(t)
    for k, (w, t) in enumerate(zip(works, arrays)):
        assert w.wait() is True
        assert w.is_completed() and w.is_success() and w.exception() is None
        check(t, np.full(1000, N() * k + sum(range(N()))), "f32")
    # the array lives until the work is waited on, whatever the caller drops
    t = make(lib, "f64", np.arange(100000))
    ref = weakref.ref(t)
    w = par.all_reduce(t, async_op=True)
    del t
    gc.collect()
    assert ref() is not None
    w.wait()
    del w
    gc.collect()
    assert ref() is None
    # a strided async output gets its result when waited
    owner = make(lib, "f64", np.arange(20).reshape(4, 5))
    w = par.all_reduce(owner.T, op="max", async_op=True)
    w.wait()
    np.testing.assert_array_equal(as_f64(owner), np.arange(20).reshape(4, 5))
    # every async form
    n = N()
    out = empty(lib, "i32", (n * 2,))
    ws = [par.all_gather_into_tensor(out, make(lib, "i32", [R(), R()]), async_op=True),
          par.barrier(async_op=True)]
    b = make(lib, "i32", [R()] * 3)
    ws.append(par.broadcast(b, 0, async_op=True))
    rs = empty(lib, "i32", (1,))
    ws.append(par.reduce_scatter_tensor(rs, make(lib, "i32", np.arange(n)), async_op=True))
    rd = make(lib, "i32", [1])
    ws.append(par.reduce(rd, 0, async_op=True))
    a2a = empty(lib, "i32", (n,))
    ws.append(par.all_to_all_single(a2a, make(lib, "i32", np.arange(n) + 10 * R()),
                                    async_op=True))
    for w in ws:
        w.wait()
    check(out, np.repeat(np.arange(n), 2), "i32")
    check(b, [0, 0, 0], "i32")
    check(rs, [R() * n], "i32")
    if R() == 0:
        check(rd, [n], "i32")
    check(a2a, 10 * np.arange(n) + R(), "i32")


def test_wait_timeout_keeps_the_work_pending():
    buf = np.zeros(4, dtype=np.float32)
    rw = par.irecv(buf, src=R())  # from itself, nothing sent yet
    with pytest.raises(par.TimeoutError, match="still pending"):
        rw.wait(timeout=0.05)
    assert not rw.is_completed()
    sw = par.isend(np.ones(4, dtype=np.float32), dst=R())
    rw.wait()
    sw.wait()
    np.testing.assert_array_equal(buf, 1)


# ---- groups and meshes --------------------------------------------------------------------

def test_new_group_even_odd():
    evens = list(range(0, N(), 2))
    odds = list(range(1, N(), 2))
    ge = par.new_group(evens)
    go = par.new_group(odds) if odds else None
    mine, other = (ge, go) if R() % 2 == 0 else (go, ge)
    assert mine.is_member and mine.ranks == (evens if R() % 2 == 0 else odds)
    assert mine.rank == mine.ranks.index(R())
    assert par.get_rank(mine) == mine.rank and par.get_world_size(mine) == len(mine.ranks)
    t = np.array([R()], dtype=np.int64)
    par.all_reduce(t, group=mine)
    assert t[0] == sum(mine.ranks)
    # src/dst are global ranks
    b = np.array([R()], dtype=np.int64)
    par.broadcast(b, mine.ranks[-1], group=mine)
    assert b[0] == mine.ranks[-1]
    if other is not None:
        assert not other.is_member
        assert par.get_rank(other) == -1 and par.get_world_size(other) == -1
        with pytest.raises(par.NotMemberError):
            par.all_reduce(t, group=other)
    with pytest.raises(par.RankError):
        par.broadcast(b, N() + 5, group=mine)
    mine.destroy()
    with pytest.raises(par.StateError):
        par.barrier(mine)


def test_mesh():
    mp = 2 if N() % 2 == 0 else 1
    mesh = par.Mesh(["dp", "mp"], [-1, mp])
    assert mesh.shape == {"dp": N() // mp, "mp": mp}
    assert mesh.coords == {"dp": R() // mp, "mp": R() % mp}
    g = mesh["mp"]
    assert g.ranks == [(R() // mp) * mp + m for m in range(mp)] and g.rank == R() % mp
    d = mesh["dp"]
    assert d.ranks == list(range(R() % mp, N(), mp))
    t = np.ones(3)
    par.all_reduce(t, group=d)
    assert (t == N() // mp).all()
    both = mesh.group("dp", "mp")
    assert both.ranks == list(range(N()))
    assert mesh.num_stages == 1 and mesh.stage == 0 and mesh.next_stage_rank is None
    mesh.destroy()
    with pytest.raises(par.StateError):
        par.barrier(g)


def test_mesh_pipeline_stages():
    pp = N()
    mesh = par.Mesh(["pp"], [pp])
    assert mesh.stage == R() and mesh.num_stages == N()
    assert mesh.is_first_stage == (R() == 0) and mesh.is_last_stage == (R() == N() - 1)
    assert mesh.next_stage_rank == (R() + 1 if R() + 1 < N() else None)
    assert mesh.prev_stage_rank == (R() - 1 if R() > 0 else None)
    mesh.destroy()


# ---- errors (checked locally, before anything is sent) ------------------------------------

def test_bad_inputs_raise_clearly():
    n = N()
    with pytest.raises(par.CountError, match="times the group size"):
        par.all_gather_into_tensor(np.zeros(n * 3 + 1), np.zeros(3))
    with pytest.raises(par.DtypeError, match="dtype"):
        par.all_gather_into_tensor(np.zeros(n * 3, dtype=np.float32), np.zeros(3))
    with pytest.raises(par.CountError):
        par.reduce_scatter_tensor(np.zeros(2), np.zeros(2 * n + 1))
    ro = np.zeros(4)
    ro.flags.writeable = False
    with pytest.raises(par.InvalidArgumentError, match="read-only"):
        par.all_reduce(ro)
    with pytest.raises(par.DtypeError, match="complex"):
        par.all_reduce(np.zeros(3, dtype=np.complex64))
    with pytest.raises(par.DtypeError):
        par.all_reduce(np.zeros(3, dtype=bool))
    with pytest.raises(par.OpError):
        par.all_reduce(np.zeros(3), op="median")
    with pytest.raises(par.RankError):
        par.broadcast(np.zeros(3), n)
    with pytest.raises(TypeError):
        par.all_reduce("not an array")
    with pytest.raises(par.InvalidArgumentError, match="overlapping"):
        par.all_reduce(np.lib.stride_tricks.as_strided(np.zeros(1), (5,), (0,)))
    if torch is not None:
        g = torch.zeros(3, requires_grad=True)
        with pytest.raises(par.InvalidArgumentError, match="requires grad"):
            par.all_reduce(g)  # a leaf, grad mode on

        class Reduce(torch.autograd.Function):  # how a model-parallel layer uses it
            @staticmethod
            def forward(ctx, x):
                return par.all_reduce(x, group=None) or x

            @staticmethod
            def backward(ctx, grad):
                return grad

        x = torch.full((3,), float(R()), requires_grad=True)
        y = Reduce.apply(x * 2)  # x * 2 requires grad and is no leaf: written in place
        assert y.tolist() == [float(sum(range(n)) * 2)] * 3
        y.sum().backward()
        assert x.grad.tolist() == [2.0] * 3
        # reading from it is fine
        out = torch.zeros(3 * n)
        par.all_gather_into_tensor(out, g)
        assert (out == 0).all()
        par.all_reduce(g.detach())  # the documented way


def test_read_only_inputs_are_fine():
    n = N()
    src = np.full(3, float(R()))
    src.flags.writeable = False
    out = np.zeros(3 * n)
    par.all_gather_into_tensor(out, src)
    np.testing.assert_array_equal(out, np.repeat(np.arange(n), 3))


def test_timeout_error_carries_detail():
    if N() < 2:
        pytest.skip("needs a peer that does not join")
    g = par.new_group(list(range(N())))  # created with the default timeout (a loaded machine)
    g.set_timeout(0.5)
    if R() == 0:
        with pytest.raises(par.TimeoutError) as e:
            par.barrier(g)
        assert e.value.status_name == "PAR_ERR_TIMEOUT" and e.value.detail
        assert isinstance(e.value, par.Error) and isinstance(e.value, TimeoutError)
    g.destroy()
    par.barrier()


def test_the_gil_is_released_while_an_op_waits():
    if N() < 2:
        pytest.skip("needs a peer that arrives late")
    import threading
    import time
    state = {"in_op": False, "seen_in_op": None}

    def watcher():
        while not state["in_op"]:
            time.sleep(0.001)
        time.sleep(0.05)
        # Python code runs here only if the blocked op let go of the GIL.
        state["seen_in_op"] = state["in_op"]

    par.barrier()  # start together: the last rank's delay below is what rank 0 waits out
    if R() == 0:
        th = threading.Thread(target=watcher)
        th.start()
        t = np.ones(4)
        state["in_op"] = True
        par.all_reduce(t)  # blocks until the last rank arrives, 1.5 s later
        state["in_op"] = False
        th.join()
        assert state["seen_in_op"] is True, "no other thread ran while the op was blocked"
        assert (t == N()).all()
    else:
        time.sleep(1.5 if R() == N() - 1 else 0)
        par.all_reduce(np.ones(4))


@pytest.mark.parametrize("lib", LIBS)
def test_par_empty_zero_copy(lib):
    """Tensors from par.empty live in memory the peers read directly (par_alloc): the shm
    backend's zero-copy paths, for ops of 16 KiB and more, must give the same results."""
    n = 1 << 15  # 128 KiB of f32
    v = lambda r: (np.arange(n) % 7 + r + 1)  # noqa: E731
    t = par.empty(n, "float32", like=lib)
    t[:] = make(lib, "f32", v(R()))
    out = par.empty((N(), n), "float32", like=lib)
    par.all_reduce(t)
    check(t, sum(v(r) for r in range(N())), "f32")
    src = par.empty(n, "float32", like=lib)
    src[:] = make(lib, "f32", v(R()))
    par.all_gather_into_tensor(out, src)
    check(out, np.concatenate([v(r) for r in range(N())]), "f32")
    par.broadcast(src, N() - 1)
    check(src, v(N() - 1), "f32")
    w = par.all_reduce(src, op="max", async_op=True)
    w.wait()
    check(src, v(N() - 1), "f32")
    del t, out, src, w
    gc.collect()
    assert par._par._alloc_live() == 0


@pytest.mark.parametrize("lib", LIBS)
def test_random_strided_views(lib):
    """Views of random shape, dim order, steps and (numpy) directions, for every op that
    writes: all_reduce in place, broadcast, and an all-gather into a strided output. The same
    seed on every rank gives every rank the same cases."""
    rng = np.random.default_rng(1234)
    for case in range(25):
        nd = int(rng.integers(1, 5))
        shape = tuple(int(x) for x in rng.integers(1, 5, nd))
        base = np.arange(int(np.prod(shape)) * 8).reshape(tuple(s * 2 for s in shape[:1]) +
                                                          shape[1:] + (4,)) % 50
        sl = tuple(slice(None, None, int(rng.integers(1, 3))) for _ in range(base.ndim))
        if lib == "numpy" and rng.integers(0, 2):
            sl = (slice(None, None, -1),) + sl[1:]
        perm = tuple(rng.permutation(base.ndim))
        dt = ["f32", "f64", "i32", "i64", "u8", "f16"][case % 6]

        def view(a):
            v = a[sl]
            return v.transpose(perm) if isinstance(v, np.ndarray) else v.permute(*perm)

        owner = make(lib, dt, base + R())
        par.all_reduce(view(owner))
        want = (base + R()).astype(np.float64)
        view(want)[...] = wrap(N() * view(base) + sum(range(N())), dt)  # u8 wraps at 8 ranks
        np.testing.assert_array_equal(as_f64(owner), want, err_msg=f"case {case}")

        owner = make(lib, dt, base + R())
        par.broadcast(view(owner), 0)
        want = (base + R()).astype(np.float64)
        view(want)[...] = view(base.astype(np.float64))
        np.testing.assert_array_equal(as_f64(owner), want, err_msg=f"case {case}")

        part = view(make(lib, dt, base + R()))
        outer = empty(lib, dt, (N(),) + tuple(part.shape) + (2,))
        par.all_gather_into_tensor(outer[..., 1], part)
        for r in range(N()):
            np.testing.assert_array_equal(as_f64(outer[r, ..., 1]),
                                          view((base + r).astype(np.float64)))
        np.testing.assert_array_equal(as_f64(outer[..., 0]), 99)
