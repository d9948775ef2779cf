"""Shared by the Python tests: arrays of every dtype in torch and numpy, and the reference
results (the oracle computes in int64/float64 with numpy and never calls par)."""
import numpy as np

try:
    import torch
except ImportError:  # the numpy-only tests still run
    torch = None

DTYPES = ["f32", "f64", "f16", "bf16", "i8", "u8", "i32", "i64"]
NP = {"f32": np.float32, "f64": np.float64, "f16": np.float16, "i8": np.int8, "u8": np.uint8,
      "i32": np.int32, "i64": np.int64}
LIBS = ["numpy", "torch"] if torch is not None else ["numpy"]


def torch_dtype(dt):
    return {"f32": torch.float32, "f64": torch.float64, "f16": torch.float16,
            "bf16": torch.bfloat16, "i8": torch.int8, "u8": torch.uint8, "i32": torch.int32,
            "i64": torch.int64}[dt]


def combos():
    """(lib, dtype) pairs: numpy has no bfloat16."""
    return [(lib, dt) for lib in LIBS for dt in DTYPES if not (lib == "numpy" and dt == "bf16")]


def make(lib, dt, values):
    """An array of lib and dtype holding the integer values (an int64 numpy array)."""
    values = np.asarray(values)
    if lib == "numpy":
        return values.astype(NP[dt])
    return torch.from_numpy(values.astype(np.float64)).to(torch_dtype(dt))


def empty(lib, dt, shape):
    if lib == "numpy":
        return np.full(shape, 99, dtype=NP[dt])
    return torch.full(shape, 99, dtype=torch_dtype(dt))


def as_f64(a):
    if torch is not None and isinstance(a, torch.Tensor):
        return a.to(torch.float64).numpy()
    return np.asarray(a).astype(np.float64)


def wrap(values, dt):
    """Integer values as the dtype stores them (ints wrap, as par's reductions do)."""
    values = np.asarray(values, dtype=np.int64)
    if dt in ("i8", "u8", "i32", "i64"):
        return values.astype(NP[dt]).astype(np.float64)
    return values.astype(np.float64)


def reference(op, parts, dt):
    """The reduction of the int64 arrays `parts` (one per rank) with op, as float64."""
    parts = np.stack([np.asarray(p, dtype=np.int64) for p in parts])
    n = len(parts)
    if op == "sum":
        return wrap(parts.sum(0), dt)
    if op == "prod":
        return wrap(parts.prod(0), dt)
    if op == "min":
        return parts.min(0).astype(np.float64)
    if op == "max":
        return parts.max(0).astype(np.float64)
    s = wrap(parts.sum(0), dt)
    if dt in ("i8", "u8", "i32", "i64"):
        return np.trunc(s / n)
    return s / n


def values(op, rank, count, signed):
    """Small integer inputs: products of up to 8 of them stay exact in f16 and bf16."""
    i = np.arange(count)
    if op == "prod":
        return ((rank + i) % 2) + 1
    v = ((rank * 7 + i * 3) % 5) + 1
    return v - 3 if signed else v


def signed(dt):
    return dt != "u8"
