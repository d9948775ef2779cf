#!/usr/bin/env bash
# pip installs par's Python package into a fresh virtual environment (made with
# --system-site-packages, so numpy comes from the system) offline, with the system's setuptools
# (--no-build-isolation), from a copy of the sources (the build is in-tree), then runs a
# collective from it under parrun. Usage: test_python_pip.sh BUILD_DIR
set -euo pipefail
BUILD=$(cd "$1" && pwd)
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
PY=""
for c in python3 /usr/bin/python3; do
  if command -v "$c" >/dev/null && "$c" -c "import numpy, setuptools, wheel, venv, ensurepip" 2>/dev/null; then
    PY=$c
    break
  fi
done
if [ -z "$PY" ]; then
  echo "skip: no python3 with numpy, setuptools, wheel, venv and ensurepip (Debian: python3-numpy python3-setuptools python3-wheel python3-venv)"
  exit 0
fi
echo "# using $PY ($("$PY" --version))"
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
mkdir "$TMP/repo"
cp -r "$ROOT/src" "$ROOT/include" "$ROOT/python" "$TMP/repo/"
"$PY" -m venv --system-site-packages "$TMP/venv"
PIP_NO_INDEX=1 "$TMP/venv/bin/pip" install -q --no-build-isolation "$TMP/repo/python"
cd "$TMP"  # not the sources: import the installed package
"$TMP/venv/bin/python" -c 'import par, sys; assert par.__file__.startswith(sys.prefix), par.__file__; print("installed", par._par.__file__)'
timeout 120 "$BUILD/bin/parrun" -n 2 "$TMP/venv/bin/python" -c '
import numpy as np, par
par.init()
a = np.full(4, par.get_rank() + 1.0)
par.all_reduce(a)
assert (a == 3).all(), a
print("ok", a)
' | tee "$TMP/out"
grep -q "^\[1\] ok" "$TMP/out"
echo "ok - pip install --no-build-isolation ./python works offline and the package runs under parrun"
