"""Single-process tests of par's Python package (ctest python_single): no launcher, so
par.init() makes a world of one. Covers what needs no peers: the module's surface, init and
destroy cycles, array intake (DLPack, __array_interface__, the buffer protocol), strided
write-back, every bad input, the exception classes, and par.parallel before par.init()."""
import array
import ctypes
import gc
import os
import subprocess
import sys

import numpy as np
import pytest

import par
from par import parallel
from helpers import as_f64, combos, make, torch


@pytest.fixture(autouse=True)
def fresh():
    for v in ("RANK", "WORLD_SIZE", "PAR_STORE_ADDR", "MASTER_ADDR", "MASTER_PORT"):
        assert v not in os.environ, f"run test_single.py without a launcher ({v} is set)"
    yield
    if parallel.parallelism_is_initialized():
        parallel.reset_parallelism()
    if par.is_initialized():
        par.destroy()


def test_surface():
    for name in ("init", "is_initialized", "get_rank", "get_world_size", "destroy", "new_group",
                 "all_reduce", "all_gather_into_tensor", "reduce_scatter_tensor", "broadcast",
                 "reduce", "all_to_all_single", "barrier", "send", "recv", "isend", "irecv",
                 "Mesh", "Group", "Work", "Error", "TimeoutError", "PeerLostError",
                 "MismatchError", "SUM", "PROD", "MIN", "MAX", "AVG"):
        assert hasattr(par, name), name
    assert [int(o) for o in (par.SUM, par.PROD, par.MIN, par.MAX, par.AVG)] == [0, 1, 2, 3, 4]
    assert par._par.__file__.endswith(".abi3.so")


def test_exceptions_form_a_hierarchy():
    assert issubclass(par.TimeoutError, par.Error) and issubclass(par.TimeoutError, TimeoutError)
    assert issubclass(par.DtypeError, TypeError)
    for c in (par.CountError, par.InvalidArgumentError, par.RankError, par.UnsupportedError):
        assert issubclass(c, par.Error) and issubclass(c, ValueError)
    assert issubclass(par.PeerLostError, ConnectionError)
    assert issubclass(par.MismatchError, par.Error)


def test_calls_before_init_raise_state_error():
    assert not par.is_initialized()
    with pytest.raises(par.StateError, match="par.init"):
        par.all_reduce(np.zeros(2))
    with pytest.raises(par.StateError):
        par.get_rank()
    with pytest.raises(parallel.ParallismError, match="par.init"):
        parallel.init_parallelism()
    par.destroy()  # harmless


def test_init_destroy_cycles_and_stale_groups():
    for _ in range(3):
        par.init(timeout=30)
        assert par.get_rank() == 0 and par.get_world_size() == 1
        g = par.new_group([0])
        t = np.arange(3.0)
        par.all_reduce(t, group=g)
        np.testing.assert_array_equal(t, [0, 1, 2])
        with pytest.raises(par.StateError, match="already"):
            par.init()
        d = par.default_group()
        par.destroy()
        with pytest.raises(par.StateError):
            par.all_reduce(t, group=g)
        par.init()
        with pytest.raises(par.StateError, match="par.destroy"):
            par.all_reduce(t, group=d)
        par.destroy()


def test_init_arguments():
    import datetime
    par.init(backend="shm", timeout=datetime.timedelta(seconds=5))
    assert par.default_group().backend == "shm"
    par.destroy()
    par.init(backend="gloo")  # a torch program's CPU backend: par's auto choice
    par.destroy()
    with pytest.raises(par.InvalidArgumentError):
        par.init(backend="carrier-pigeon")
    with pytest.raises(par.InvalidArgumentError):
        par.init(timeout=-1)
    assert not par.is_initialized()


@pytest.mark.parametrize("lib,dt", combos())
def test_every_dtype_at_one_rank(lib, dt):
    par.init()
    v = np.arange(10) % 7
    t = make(lib, dt, v)
    for op in ("sum", "prod", "min", "max", "avg"):
        par.all_reduce(t, op)
        np.testing.assert_array_equal(as_f64(t), v)
    out = make(lib, dt, np.zeros(10))
    par.all_gather_into_tensor(out, make(lib, dt, v))
    np.testing.assert_array_equal(as_f64(out), v)


def test_buffer_protocol_objects():
    par.init()
    a = array.array("f", [1.0, 2.0, 3.0])
    par.all_reduce(a, op=par.AVG)
    assert list(a) == [1.0, 2.0, 3.0]
    b = bytearray(b"\x01\x02\x03\x04")
    out = bytearray(4)
    par.all_gather_into_tensor(out, b)
    assert out == b
    par.all_gather_into_tensor(memoryview(out), bytes(b))  # read-only input is fine
    with pytest.raises(par.InvalidArgumentError, match="read-only"):
        par.all_reduce(bytes(4))
    with pytest.raises(TypeError, match="__dlpack__"):
        par.all_reduce(object())


def test_strided_results_are_written_back():
    par.init()
    owner = np.arange(24, dtype=np.float32).reshape(4, 6)
    expected = owner.copy()
    par.broadcast(owner[::-1, ::2], 0)
    par.all_reduce(owner.T)
    np.testing.assert_array_equal(owner, expected)
    # a gather into a strided output and from a negative-stride input
    out = np.zeros((4, 12), dtype=np.float32)
    par.all_gather_into_tensor(out[:, ::2], owner[:, ::-1])
    np.testing.assert_array_equal(out[:, ::2], owner[:, ::-1])
    np.testing.assert_array_equal(out[:, 1::2], 0)


def test_bad_inputs():
    par.init()
    ro = np.zeros(3)
    ro.flags.writeable = False
    with pytest.raises(par.InvalidArgumentError, match="read-only"):
        par.all_reduce(ro)
    with pytest.raises(par.DtypeError, match="complex"):
        par.all_reduce(np.zeros(2, dtype=np.complex128))
    with pytest.raises(par.DtypeError, match="uint16"):
        par.all_reduce(np.zeros(2, dtype=np.uint16))
    with pytest.raises(par.DtypeError):
        par.all_reduce(np.zeros(2, dtype=">f4"))  # byte-swapped
    with pytest.raises(par.CountError):
        par.all_to_all_single(np.zeros(3), np.zeros(4))
    with pytest.raises(par.InvalidArgumentError, match="overlap"):
        x = np.zeros(4)
        par.all_to_all_single(x, x)
    with pytest.raises(par.UnsupportedError, match="tag"):
        par.send(np.zeros(1), 0, tag=3)
    with pytest.raises(par.InvalidArgumentError, match="itself"):
        par.send(np.zeros(1), 0)  # a blocking send to oneself could never complete
    with pytest.raises(par.UnsupportedError, match="splits"):
        par.all_to_all_single(np.zeros(2), np.zeros(2), [1], [1])
    with pytest.raises(par.OpError):
        par.all_reduce(np.zeros(1), op=7)
    with pytest.raises(TypeError):
        par.all_reduce(np.zeros(1), group="world")
    if torch is not None:
        with pytest.raises(par.DtypeError, match="complex"):
            par.all_reduce(torch.zeros(2, dtype=torch.complex64))
        with pytest.raises(par.DtypeError, match="bool"):
            par.all_reduce(torch.zeros(2, dtype=torch.bool))
        with pytest.raises(par.DtypeError, match="int16"):
            par.all_reduce(torch.zeros(2, dtype=torch.int16))
        sub = torch.arange(10.0)[3:7]  # a view at a storage offset
        par.broadcast(sub, 0)
        assert sub.tolist() == [3.0, 4.0, 5.0, 6.0]
        leaf = torch.ones(2, requires_grad=True)
        with pytest.raises(par.InvalidArgumentError, match="leaf tensor that requires grad"):
            par.all_reduce(leaf)  # torch's own in-place ops refuse it too
        with torch.no_grad():
            par.all_reduce(leaf, op="avg")  # as an optimizer step would
            par.broadcast(leaf, 0)
        inner = leaf * 3  # an intermediate result that requires grad: torch writes those
        par.all_reduce(inner)
        assert inner.tolist() == [3.0, 3.0] and inner.requires_grad
        with pytest.raises(par.InvalidArgumentError, match="overlapping"):
            par.all_reduce(torch.zeros(1).expand(4))
        assert par.all_reduce(torch.ones(2, requires_grad=True).detach()) is None


class _DLDevice(ctypes.Structure):
    _fields_ = [("device_type", ctypes.c_int), ("device_id", ctypes.c_int)]


class _DLDataType(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]


class _DLTensor(ctypes.Structure):
    _fields_ = [("data", ctypes.c_void_p), ("device", _DLDevice), ("ndim", ctypes.c_int),
                ("dtype", _DLDataType), ("shape", ctypes.POINTER(ctypes.c_int64)),
                ("strides", ctypes.POINTER(ctypes.c_int64)), ("byte_offset", ctypes.c_uint64)]


class _DLManaged(ctypes.Structure):
    _fields_ = [("dl_tensor", _DLTensor), ("manager_ctx", ctypes.c_void_p),
                ("deleter", ctypes.c_void_p)]


class FakeCudaTensor:
    """A DLPack exporter that says its memory is on a CUDA device (no GPU needed: par must
    refuse it before touching the pointer)."""

    def __init__(self):
        self.shape = (ctypes.c_int64 * 1)(4)
        self.m = _DLManaged()
        self.m.dl_tensor.data = 0x1000
        self.m.dl_tensor.device = _DLDevice(2, 0)  # kDLCUDA
        self.m.dl_tensor.ndim = 1
        self.m.dl_tensor.dtype = _DLDataType(2, 32, 1)
        self.m.dl_tensor.shape = self.shape

    def __dlpack__(self, stream=None):
        new = ctypes.pythonapi.PyCapsule_New
        new.restype = ctypes.py_object
        new.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p]
        return new(ctypes.addressof(self.m), b"dltensor", None)


def test_gpu_tensors_are_refused():
    par.init()
    with pytest.raises(par.UnsupportedError, match="device memory.*cpu"):
        par.all_reduce(FakeCudaTensor())


def test_work_semantics_and_timeout():
    par.init()
    buf = np.zeros(3)
    rw = par.irecv(buf, 0)
    assert not rw.is_completed()
    with pytest.raises(par.TimeoutError, match="still pending") as e:
        rw.wait(timeout=0.02)
    assert e.value.status_name == "PAR_ERR_TIMEOUT"
    sw = par.isend(np.full(3, 7.0), 0)
    assert rw.wait() is True and sw.wait() is True
    assert rw.wait() is True  # again: already done
    np.testing.assert_array_equal(buf, 7)
    assert "par.Work" in repr(rw)
    # a work dropped without wait still finishes before its arrays go
    t = np.ones(1 << 16)
    par.all_reduce(t, async_op=True)
    del t
    gc.collect()
    # destroy finishes pending works
    w = par.all_reduce(np.ones(8), async_op=True)
    par.destroy()
    assert w.is_completed()


def test_mesh_at_one_rank():
    par.init()
    m = par.Mesh(["dp", "pp", "mp"], [1, 1, 1])
    assert m.coords == {"dp": 0, "pp": 0, "mp": 0}
    assert m["mp"].ranks == [0] and m.group("pp", "mp").ranks == [0]
    assert "world 1" in m.describe()
    with pytest.raises(par.InvalidArgumentError, match="divide|not divisible|multiply"):
        par.Mesh(["a", "b"], [2, 3])
    with pytest.raises(par.InvalidArgumentError):
        m["nope"]


def test_configuration_line_is_coloured_on_rank_zero():
    code = ("import par; from par import parallel; par.init(); "
            "parallel.init_parallelism(1, 1); par.destroy()")
    env = dict(os.environ)
    env.pop("NO_COLOR", None)
    env["TERM"] = "xterm"
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert "\033[" in r.stderr and "model parallel 1, pipeline parallel 1, data parallel 1" \
        in r.stderr
    env["NO_COLOR"] = "1"
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       timeout=120)
    assert "\033[" not in r.stderr and "model parallel 1" in r.stderr
    env["PAR_LOG"] = "warn"
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       timeout=120)
    assert "model parallel" not in r.stderr


def test_par_empty_and_destroy():
    par.init()
    t = par.empty((2, 3), "bf16")
    assert t.dtype == torch.bfloat16 and tuple(t.shape) == (2, 3) if torch else True
    a = par.empty(4, np.int64, like="numpy")
    assert a.flags.writeable and a.dtype == np.int64
    a[:] = 5
    par.all_reduce(a, op="max")
    assert (a == 5).all()
    with pytest.raises(par.DtypeError):
        par.empty(2, "bf16", like="numpy")
    with pytest.raises(par.InvalidArgumentError):
        par.empty(2, like="jax")
    view = a[1:]
    del a
    with pytest.raises(par.StateError, match="still alive"):
        par.destroy()  # the world's end would unmap the memory under t and view
    del t, view
    gc.collect()
    assert par._par._alloc_live() == 0
    par.destroy()
    assert not par.is_initialized()


def test_destroying_a_group_finishes_its_pending_work():
    par.init()
    g = par.new_group([0])
    buf = np.zeros(3)
    sw = par.isend(np.full(3, 4.0), 0, group=g)
    rw = par.irecv(buf, 0, group=g)
    g.destroy()  # waits for both before the group goes
    assert sw.is_completed() and rw.is_completed()
    np.testing.assert_array_equal(buf, 4)
    mesh = par.Mesh(["x"], [1])
    w = par.all_reduce(np.ones(4), group=mesh["x"], async_op=True)
    mesh.destroy()
    assert w.is_completed() and w.wait() is True
