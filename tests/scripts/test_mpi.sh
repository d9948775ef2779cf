#!/usr/bin/env bash
# test_mpi.sh BUILD_DIR [quick|full] -- par under mpirun (docs/mpi.md). Skipped (exit 0,
# "SKIP: ...") when the build has no mpi backend or mpirun is missing. Sanitizer builds run a
# shorter quick set, and report only what lies in par's code (Open MPI is not instrumented).
#
# Under mpirun -n N, with no parrun and no MASTER_ADDR:
#  - every multi-rank test (tests/multi) passes with PAR_BACKEND=mpi (all groups over MPI) and
#    with auto (the world from MPI, groups over shm inside the host). quick (the default, as
#    ctest runs it) takes one rank count per test; full takes every count of its
#    PAR_TEST_RANKS line, as CI does;
#  - with two hosts faked (each rank in its own UTS namespace with its host's name, where the
#    machine allows it), auto puts groups that span the hosts on mpi and the others on shm,
#    and the tests still pass;
#  - parbench --check reports 0 wrong elements over the mpi backend;
#  - the mesh example prints exactly what it prints under parrun;
#  - the training demo logs a loss curve bit-identical to parrun's with shm (mp=2, pp=2 on 8
#    ranks, so both reduce in the same order);
#  - mixing: a program that initialised MPI itself keeps it (par does not finalise it); at
#    MPI_THREAD_SERIALIZED blocking ops work and an async op fails with PAR_ERR_UNSUPPORTED
#    naming MPI_THREAD_MULTIPLE; par finalises MPI it initialised when the last world goes;
#    PAR_CHECK=1 finds ranks that issue different collectives; PAR_BACKEND=mpi under parrun
#    is refused with a message that says to use mpirun.
set -u

B=${1:?usage: test_mpi.sh BUILD_DIR [quick|full]}
MODE=${2:-quick}
SRC=$(cd "$(dirname "$0")/../.." && pwd)
BIN="$B/bin"

skip() {
  echo "SKIP: $*"
  exit 0
}
grep -q '^PAR_WITH_MPI:BOOL=ON' "$B/CMakeCache.txt" 2>/dev/null ||
  skip "this build has no mpi backend (configure with -DPAR_WITH_MPI=ON and an MPI library)"
command -v mpirun >/dev/null || skip "mpirun is not installed (Debian: openmpi-bin)"
SANITIZE=$(sed -n 's/^PAR_SANITIZE:[A-Z]*=//p' "$B/CMakeCache.txt")
case "$SANITIZE" in OFF | FALSE | NO | 0) SANITIZE= ;; esac
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
if [[ "$SANITIZE" == *thread* ]]; then
  # Open MPI is not instrumented: only races between accesses in par's own code count.
  export TSAN_OPTIONS="${TSAN_OPTIONS:-halt_on_error=1}:ignore_noninstrumented_modules=1"
elif [ -n "$SANITIZE" ]; then
  # Open MPI's own allocations outlive MPI_Finalize: leaks are reported only when no frame of
  # the stack lies in Open MPI (which needs the slow, exact unwinder).
  printf 'leak:%s\n' libmpi.so libopen-pal.so libopen-rte.so libpmix.so libhwloc.so libevent \
    mca_ >"$TMP/lsan.supp"
  export LSAN_OPTIONS="suppressions=$TMP/lsan.supp:print_suppressions=0"
  export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1}:fast_unwind_on_malloc=0"
fi

# mpirun refuses root without these; this 2-core machine needs oversubscription.
if [ "$(id -u)" = 0 ]; then export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1; fi
MPIRUN=(timeout 300 mpirun --oversubscribe)
export PAR_TIMEOUT=${PAR_TIMEOUT:-120}
FAILS=0
fail() {
  echo "FAIL: $*" >&2
  FAILS=$((FAILS + 1))
}

# run_ok NAME CMD...: the command must exit 0; its output is kept in $TMP/NAME.
run_ok() {
  local name=$1
  shift
  if ! "$@" >"$TMP/$name" 2>&1; then
    fail "$name: '$*' exited non-zero; its output ends with:"
    tail -n 15 "$TMP/$name" | sed 's/^/    /' >&2
    return 1
  fi
  return 0
}

# --- the multi-rank suite --------------------------------------------------------------------
ranks_of() { # the PAR_TEST_RANKS counts of a test (default 1 2 3 5 8)
  local line
  line=$(grep -o 'PAR_TEST_RANKS:.*' "$1" | head -n 1 | sed 's/PAR_TEST_RANKS://')
  echo "${line:-1 2 3 5 8}"
}

suite() { # suite BACKEND: every multi-rank test under mpirun with PAR_BACKEND=BACKEND
  local backend=$1
  for src in "$SRC"/tests/multi/test_*.c; do
    local t counts n
    t=$(basename "$src" .c)
    [ -x "$BIN/$t" ] || { fail "$BIN/$t is not built"; continue; }
    counts=$(ranks_of "$src")
    # quick: the largest count up to 5 (3 under the sanitizers), or the smallest when all
    # are larger
    local most=5
    [ -n "$SANITIZE" ] && most=3
    [ "$MODE" = full ] || counts=$(echo "$counts" | tr ' ' '\n' | awk 'NF' | sort -n |
                                 awk -v m=$most 'NR==1{s=$1} $1<=m{a=$1} END{print (a?a:s)}')
    for n in $counts; do
      if run_ok "$backend-$t-$n" env PAR_BACKEND="$backend" "${MPIRUN[@]}" -n "$n" "$BIN/$t"; then
        grep -q "PASS on $n ranks" "$TMP/$backend-$t-$n" ||
          fail "$t on $n ranks with PAR_BACKEND=$backend: no PASS line"
      fi
    done
  done
}

suite mpi
# Under the sanitizers (slow: leak reports need Open MPI's stacks unwound exactly) the quick
# run keeps to the mpi backend; auto's groups are shm, which the parrun runs cover.
[ -n "$SANITIZE" ] && [ "$MODE" != full ] || suite auto

# Two fake hosts: ranks 0..n/2-1 on one, the rest on the other.
if [ -n "$SANITIZE" ] && [ "$MODE" != full ]; then
  echo "note: sanitizer build, quick run: the two-host checks are skipped"
elif unshare --uts true 2>/dev/null; then
  cat >"$TMP/fakehost.sh" <<'EOF'
#!/bin/sh
# Puts this rank on host "fakehost<rank * 2 / size>", then runs the program.
h=$((OMPI_COMM_WORLD_RANK * 2 / OMPI_COMM_WORLD_SIZE))
hostname "fakehost$h" && exec "$@"
EOF
  chmod +x "$TMP/fakehost.sh"
  for t in test_coll test_groups test_p2p test_mesh test_agree; do
    n=4
    [ $t = test_mesh ] && n=8
    if run_ok "hosts-$t" env PAR_BACKEND=auto PAR_LOG=debug "${MPIRUN[@]}" -n $n \
      unshare --uts "$TMP/fakehost.sh" "$BIN/$t"; then
      grep -q "PASS on $n ranks" "$TMP/hosts-$t" || fail "two fake hosts, $t: no PASS line"
      grep -q "group 'world' .* backend mpi" "$TMP/hosts-$t" ||
        fail "two fake hosts, $t: the world group (it spans both) is not on mpi"
    fi
  done
  # 8 ranks on two hosts of 4: mp groups ([0,1], ...) stay inside a host, dp groups ([0,4],
  # ...) span both.
  grep -q "group 'mp#[0-9]*' .* backend shm" "$TMP/hosts-test_mesh" ||
    fail "two fake hosts, test_mesh: no mp group on shm"
  grep -q "group 'dp#[0-9]*' .* backend mpi" "$TMP/hosts-test_mesh" ||
    fail "two fake hosts, test_mesh: no dp group on mpi"
else
  echo "note: unshare --uts is not permitted here; the two-host checks are skipped"
fi

# --- parbench, the mesh example, the training demo -------------------------------------------
# Every op, dtypes that take MPI's reduction (i32) and par's (f32, bf16, u8), ops MPI has and
# avg, which it lacks; full adds the default sweep (to 32 MiB: steps of several MPI calls).
BENCH=(--check --op all --max 1M --dtype f32,bf16,i32,u8 --redop sum,avg,max --iters 3)
[ -n "$SANITIZE" ] && BENCH=(--check --op all --max 256K --dtype f32,i32 --redop sum,avg --iters 2)
[ "$MODE" = full ] && BENCH=(--check)
if run_ok parbench env PAR_BACKEND=mpi "${MPIRUN[@]}" -n 4 "$BIN/parbench" "${BENCH[@]}"; then
  grep -q "backend mpi" "$TMP/parbench" || fail "parbench did not run over the mpi backend"
  grep -qx "# wrong elements: 0" "$TMP/parbench" ||
    fail "parbench ${BENCH[*]} over mpi: $(grep 'wrong elements' "$TMP/parbench")"
fi
if [ "$MODE" = full ]; then
  BENCH=(--check --op all --max 4M --dtype all --redop all --iters 2)
  run_ok parbench-types env PAR_BACKEND=mpi "${MPIRUN[@]}" -n 3 "$BIN/parbench" "${BENCH[@]}" &&
    { grep -qx "# wrong elements: 0" "$TMP/parbench-types" ||
      fail "parbench ${BENCH[*]} over mpi: $(grep 'wrong elements' "$TMP/parbench-types")"; }
fi

if [ -x "$BIN/mesh" ]; then
  run_ok mesh-parrun "$BIN/parrun" -n 8 --timeout 120 "$BIN/mesh" &&
    run_ok mesh-mpi env PAR_BACKEND=mpi "${MPIRUN[@]}" -n 8 "$BIN/mesh" && {
    sed 's/^\[[0-9]*\] //' "$TMP/mesh-parrun" | sort >"$TMP/mesh-a"
    sort "$TMP/mesh-mpi" >"$TMP/mesh-b"
    diff "$TMP/mesh-a" "$TMP/mesh-b" >"$TMP/mesh-diff" ||
      fail "mesh example: mpirun output differs from parrun's: $(cat "$TMP/mesh-diff")"
    grep -qx "ok: both match the single-process result on all 8 ranks" "$TMP/mesh-b" ||
      fail "mesh example under mpirun: no success line"
  }
else
  fail "$BIN/mesh is not built"
fi

if [ -x "$BIN/train" ]; then
  TRAIN=("$BIN/train" --mp 2 --pp 2 --json)
  [ "$MODE" = full ] || TRAIN+=(--steps 100 --log-every 10)
  [ -n "$SANITIZE" ] && [ "$MODE" != full ] && TRAIN+=(--steps 20)
  run_ok train-parrun "$BIN/parrun" -n 8 --timeout 120 "${TRAIN[@]}"
  for b in mpi auto; do
    run_ok "train-$b" env PAR_BACKEND=$b "${MPIRUN[@]}" -n 8 "${TRAIN[@]}" || continue
    grep -o '{"step".*}' "$TMP/train-parrun" >"$TMP/curve-parrun"
    grep -o '{"step".*}' "$TMP/train-$b" >"$TMP/curve-$b"
    [ -s "$TMP/curve-parrun" ] || fail "train under parrun logged no loss"
    cmp -s "$TMP/curve-parrun" "$TMP/curve-$b" ||
      fail "train: the loss curve under mpirun ($b) differs from parrun's: $(diff \
        "$TMP/curve-parrun" "$TMP/curve-$b" | head -n 4)"
  done
else
  echo "note: $BIN/train is not built; the training demo check is skipped"
fi

# --- mixing with a program's own MPI -----------------------------------------------------------
cat >"$TMP/mix.c" <<'EOF'
/* mix.c MODE -- par inside a program that may use MPI itself (see test_mpi.sh). */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "par.h"

#define DIE(...) (fprintf(stderr, __VA_ARGS__), fputc('\n', stderr), exit(1))
#define CHECK(call)                                                                        \
  do {                                                                                     \
    par_status s_ = (call);                                                                \
    if (s_ != PAR_OK) DIE("%s: %s: %s", #call, par_status_name(s_), par_last_error());     \
  } while (0)

int main(int argc, char **argv) {
  const char *mode = argc > 1 ? argv[1] : "";
  int provided = -1, want = -1;
  if (!strcmp(mode, "multiple")) want = MPI_THREAD_MULTIPLE;
  if (!strcmp(mode, "serialized")) want = MPI_THREAD_SERIALIZED;
  if (want >= 0) MPI_Init_thread(&argc, &argv, want, &provided);

  par_world *w;
  CHECK(par_world_create(NULL, &w));
  int rank = par_world_rank(w), size = par_world_size(w), init = 0, fin = 0;
  MPI_Initialized(&init);
  if (!init) DIE("rank %d: MPI is not initialised under a world from mpirun", rank);
  int mrank = -1, msize = -1;
  MPI_Comm_rank(MPI_COMM_WORLD, &mrank);
  MPI_Comm_size(MPI_COMM_WORLD, &msize);
  if (mrank != rank || msize != size)
    DIE("par says rank %d of %d, MPI says %d of %d", rank, size, mrank, msize);
  par_group *g = par_world_group(w);
  if (par_group_backend(g) != PAR_BACKEND_MPI) DIE("the world group is not on mpi");
  if (!strcmp(mode, "mismatch")) {
    /* PAR_CHECK=1: rank 0 reduces 4 elements, the others 5; every rank is told who did what. */
    float v[5] = {0};
    par_status s = par_allreduce(g, v, v, rank == 0 ? 4 : 5, PAR_F32, PAR_SUM);
    const char *m = par_group_last_error(g);
    if (s != PAR_ERR_MISMATCH || !strstr(m, "count=4") || !strstr(m, "count=5"))
      DIE("rank %d: expected PAR_ERR_MISMATCH naming both counts, got %s: %s", rank,
          par_status_name(s), m);
    par_world_destroy(w);
    if (rank == 0) printf("mix %s: ok\n", mode);
    return 0;
  }

  int32_t x = rank, want_sum = size * (size - 1) / 2;
  CHECK(par_allreduce(g, &x, &x, 1, PAR_I32, PAR_SUM));
  if (x != want_sum) DIE("blocking allreduce: %d, expected %d", x, want_sum);
  par_work *work = NULL;
  int32_t y = rank;
  CHECK(par_allreduce_async(g, &y, &y, 1, PAR_I32, PAR_SUM, &work));
  par_status s = par_work_wait(work, -1.0);
  if (!strcmp(mode, "serialized")) {
    if (s != PAR_ERR_UNSUPPORTED || !strstr(par_work_error(work), "MPI_THREAD_MULTIPLE"))
      DIE("async op at MPI_THREAD_SERIALIZED: expected PAR_ERR_UNSUPPORTED naming "
          "MPI_THREAD_MULTIPLE, got %s: %s", par_status_name(s), par_work_error(work));
  } else if (s != PAR_OK || y != want_sum) {
    DIE("async allreduce: %s (%s), %d, expected %d", par_status_name(s), par_work_error(work),
        y, want_sum);
  }
  par_work_free(work);
  par_world_destroy(w);

  MPI_Finalized(&fin);
  if (want >= 0) {
    /* The program's MPI is still its own: par must not have finalised it. */
    if (fin) DIE("par finalised MPI that the program initialised");
    int one = 1, n = 0;
    MPI_Allreduce(&one, &n, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    if (n != size) DIE("the program's own MPI_Allreduce gave %d, expected %d", n, size);
    MPI_Finalize();
  } else if (!fin) {
    DIE("par initialised MPI but did not finalise it with the last world");
  }
  if (rank == 0) printf("mix %s: ok\n", mode);
  return 0;
}
EOF
if mpicc -std=c11 -D_GNU_SOURCE ${SANITIZE:+-fsanitize=$SANITIZE} -I"$SRC/include" "$TMP/mix.c" \
  "$B/lib/libpar.a" -lcrypto -lpthread -lm -lrt -o "$TMP/mix" 2>"$TMP/mix-cc"; then
  for m in multiple serialized owned mismatch; do
    run_ok "mix-$m" env PAR_BACKEND=mpi PAR_CHECK=$([ $m = mismatch ] && echo 1 || echo 0) \
      "${MPIRUN[@]}" -n 3 "$TMP/mix" $m &&
      { grep -qx "mix $m: ok" "$TMP/mix-$m" || fail "mix $m: no ok line"; }
  done
else
  fail "cannot compile the mixing program: $(head -c 600 "$TMP/mix-cc")"
fi

# The mpi backend needs a world from MPI: under parrun it is refused, with the way out.
"$BIN/parrun" -n 2 --timeout 60 env PAR_BACKEND=mpi "$BIN/test_groups" >"$TMP/refuse" 2>&1 &&
  fail "PAR_BACKEND=mpi under parrun succeeded"
grep -q "backend mpi needs a world started by MPI" "$TMP/refuse" &&
  grep -q "mpirun" "$TMP/refuse" ||
  fail "PAR_BACKEND=mpi under parrun: no clear message in: $(head -c 600 "$TMP/refuse")"

if [ $FAILS -ne 0 ]; then
  echo "$FAILS check(s) failed" >&2
  exit 1
fi
echo "mpi ($MODE): all checks passed"
