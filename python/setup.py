"""Builds par's Python package with setuptools alone (no CMake needed):

    python3 -m venv --system-site-packages venv
    venv/bin/pip install --no-build-isolation ./python

The extension par._par is compiled from python/src/*.c together with libpar's own C sources
(src/**/*.c), so the package carries its library and needs nothing installed beside it but
OpenSSL's libcrypto and the DLPack header (Debian: libssl-dev libdlpack-dev). The mpi backend
is left out (the CMake build has it when MPI is found). Built against the Limited API, the
wheel is tagged abi3: one build serves every CPython >= 3.8.
"""
import glob
import os

from setuptools import Extension, setup

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

lib_sources = sorted(
    p for p in glob.glob(os.path.join(ROOT, "src", "**", "*.c"), recursive=True)
    if os.sep + os.path.join("backends", "mpi") + os.sep not in p)
ext_sources = sorted(glob.glob(os.path.join(HERE, "src", "*.c")))
if not lib_sources:
    raise SystemExit(f"par's C sources are not at {ROOT}/src: build from the repository's "
                     "python/ folder (pip install ./python)")

setup(
    name="par",
    version="0.1.0",
    description="Collectives, process groups and parallel layouts for torch tensors and numpy "
                "arrays, from par's C library",
    packages=["par"],
    package_dir={"par": os.path.relpath(os.path.join(HERE, "par"))},
    python_requires=">=3.8",
    ext_modules=[Extension(
        "par._par",
        sources=[os.path.relpath(p) for p in ext_sources + lib_sources],
        include_dirs=[os.path.join(ROOT, "include"), os.path.join(ROOT, "src")],
        define_macros=[("_GNU_SOURCE", None), ("Py_LIMITED_API", "0x03080000")],
        extra_compile_args=["-std=c11", "-O2", "-fvisibility=hidden", "-Wall", "-Wextra"],
        libraries=["crypto", "pthread", "m", "rt"],
        py_limited_api=True,
    )],
    options={"bdist_wheel": {"py_limited_api": "cp38"}},
)
