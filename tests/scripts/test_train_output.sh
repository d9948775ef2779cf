#!/usr/bin/env bash
# test_train_output.sh BUILD_DIR -- where train's output goes (issue 13). --plot is checked
# before training: a missing directory, a directory as the file, or an extension train does
# not write (.png) is refused at once, by rank 0 under parrun too, and no file is created.
# Progress: redrawn in place (\r, ESC[K) only on the terminal the command runs in; to a file,
# and on a pseudo-terminal that is not the process's controlling terminal (what Open MPI gives
# each rank, whose output mpirun may be writing to a file), plain lines; --progress tty, lines
# and off force each way; --version prints the library's version.
set -u

B=${1:?usage: test_train_output.sh BUILD_DIR}
PARRUN="$B/bin/parrun"
TRAIN="$B/bin/train"
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
FAILS=0
fail() {
  echo "FAIL: $*" >&2
  FAILS=$((FAILS + 1))
}
for f in "$PARRUN" "$TRAIN"; do
  [ -x "$f" ] || { echo "FAIL: $f is missing" >&2; exit 1; }
done
RUN=(--steps 30 --hidden 32 --log-every 10)

# --- --plot is checked before training --------------------------------------------------------
# refused WANT ARGS...: train ARGS exits 1 at once (a million steps would take minutes), prints
# no progress line, and says WANT.
refused() {
  local want=$1
  shift
  local start=$SECONDS
  if timeout 60 "$@" >"$TMP/out" 2>&1; then
    fail "$* exited 0"
  elif grep -q '^\(\[0\] \)\?step ' "$TMP/out"; then
    fail "$*: trained before refusing: $(head -3 "$TMP/out")"
  elif ! grep -q -- "$want" "$TMP/out"; then
    fail "$*: no message matching '$want': $(tail -3 "$TMP/out")"
  elif [ $((SECONDS - start)) -gt 20 ]; then
    fail "$*: took $((SECONDS - start)) s to refuse"
  fi
}
refused "directory /nonexistent-par-dir does not exist" \
  "$TRAIN" --steps 1000000 --plot /nonexistent-par-dir/x.svg
refused "train writes SVG only, so the name must end in .svg (for .png" \
  "$TRAIN" --steps 1000000 --plot "$TMP/curve.png"
[ -e "$TMP/curve.png" ] && fail "--plot curve.png created the file it refused"
refused "train writes SVG only" "$TRAIN" --steps 1000000 --plot "$TMP/curve"
mkdir "$TMP/dir.svg"
refused "is a directory" "$TRAIN" --steps 1000000 --plot "$TMP/dir.svg"
refused "\[0\] train: --plot /nonexistent-par-dir/x.svg: directory" \
  "$PARRUN" --timeout 60 -n 2 "$TRAIN" --steps 1000000 --plot /nonexistent-par-dir/x.svg
if "$TRAIN" "${RUN[@]}" --plot "$TMP/ok.svg" >"$TMP/out" 2>&1; then
  grep -q '<polyline' "$TMP/ok.svg" || fail "--plot ok.svg: no curve in the file"
else
  fail "--plot ok.svg failed: $(tail -3 "$TMP/out")"
fi

# --- progress -----------------------------------------------------------------------------------
# A redraw is ESC[K, or a \r not followed by \n (a terminal writes \r\n for every \n).
redraws() { sed 's/\r$//' "$1" | grep -q $'\r\|\033\\[K'; }
"$TRAIN" "${RUN[@]}" >"$TMP/file.out" 2>&1 || fail "train > file failed"
redraws "$TMP/file.out" && fail "train > file: progress redrawn into a file"
[ "$(grep -c '^step ' "$TMP/file.out")" = 4 ] || fail "train > file: not 4 step lines"
"$TRAIN" "${RUN[@]}" --progress tty >"$TMP/tty.out" 2>&1 || fail "--progress tty failed"
redraws "$TMP/tty.out" || fail "--progress tty: no redraws"
"$TRAIN" "${RUN[@]}" --progress off >"$TMP/off.out" 2>&1 || fail "--progress off failed"
grep -q 'step ' "$TMP/off.out" && fail "--progress off: progress lines printed"
grep -q '^final loss' "$TMP/off.out" || fail "--progress off: no summary"
refused "expected auto, tty, lines or off" "$TRAIN" --progress sometimes

# on_pty MODE OUT ARGS...: runs ARGS with stdout on a new pseudo-terminal, in a new session
# where that terminal is the controlling one (MODE ctty: a terminal the user sees) or not
# (MODE plain: like a rank of mpirun), and copies what it printed to OUT.
on_pty() {
  python3 - "$@" <<'PY'
import fcntl, os, subprocess, sys, termios
mode, out, argv = sys.argv[1], sys.argv[2], sys.argv[3:]
master, slave = os.openpty()
def child():
    os.setsid()
    if mode == "ctty":
        fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
env = dict(os.environ, TERM="xterm")
p = subprocess.Popen(argv, stdout=slave, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                     preexec_fn=child, env=env)
os.close(slave)
data = b""
while True:
    try:
        chunk = os.read(master, 65536)
    except OSError:  # EIO: every writer has closed the terminal
        break
    if not chunk:
        break
    data += chunk
open(out, "wb").write(data)
sys.exit(p.wait())
PY
}
if on_pty ctty "$TMP/ctty.out" "$TRAIN" "${RUN[@]}"; then
  redraws "$TMP/ctty.out" || fail "on its controlling terminal, auto did not redraw"
else
  fail "train on a terminal failed: $(tail -3 "$TMP/ctty.out")"
fi
if on_pty ctty "$TMP/lines.out" "$TRAIN" "${RUN[@]}" --progress lines; then
  redraws "$TMP/lines.out" && fail "--progress lines redrew on a terminal"
else
  fail "train --progress lines on a terminal failed"
fi
if on_pty plain "$TMP/plain.out" "$TRAIN" "${RUN[@]}"; then
  redraws "$TMP/plain.out" && fail "auto redrew on a terminal that is not the controlling one"
  [ "$(grep -c '^step ' "$TMP/plain.out")" = 4 ] || fail "launcher terminal: not 4 step lines"
else
  fail "train on a launcher's terminal failed: $(tail -3 "$TMP/plain.out")"
fi

# Under mpirun itself (each rank on a pseudo-terminal of Open MPI's), with mpirun's output in
# a file. Needs an MPI build without sanitizers (Open MPI is not instrumented).
if command -v mpirun >/dev/null && grep -q '^PAR_WITH_MPI:BOOL=ON' "$B/CMakeCache.txt" &&
  ! grep -q '^PAR_SANITIZE:[A-Z]*=[a-z]' "$B/CMakeCache.txt"; then
  OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 \
    on_pty ctty "$TMP/mpirun.tty" sh -c "mpirun --oversubscribe -n 2 '$TRAIN' ${RUN[*]} >'$TMP/mpirun.out' 2>&1"
  if grep -q '^final loss' "$TMP/mpirun.out"; then
    redraws "$TMP/mpirun.out" && fail "mpirun ... > log: progress redrawn into the log"
  else
    echo "note: mpirun could not run train here, skipped: $(tail -2 "$TMP/mpirun.out")"
  fi
fi

"$TRAIN" --version | grep -qx "train (par) [0-9]*\.[0-9]*\.[0-9]*" || fail "train --version"

[ "$FAILS" = 0 ] || { echo "test_train_output: $FAILS failure(s)" >&2; exit 1; }
echo "test_train_output: ok"
