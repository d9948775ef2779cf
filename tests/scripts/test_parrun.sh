#!/usr/bin/env bash
# test_parrun.sh BUILD_DIR -- checks the launcher's behaviour with small shell programs:
# rank-prefixed output, the job environment, exit codes, a rank killed mid-job, --timeout,
# signal forwarding, stdin, exec failures and the /dev/shm clean-up. Prints each check and
# exits non-zero if any fails.
set -u

BUILD=${1:?usage: test_parrun.sh BUILD_DIR}
PARRUN=$BUILD/bin/parrun
[ -x "$PARRUN" ] || { echo "FAIL: $PARRUN not found"; exit 1; }

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
FAILS=0
CHECKS=0

pass() { CHECKS=$((CHECKS + 1)); echo "ok   - $1"; }
fail() { CHECKS=$((CHECKS + 1)); FAILS=$((FAILS + 1)); echo "FAIL - $1"; }
# check DESCRIPTION COMMAND...: passes when the command succeeds.
check() { local d=$1; shift; if "$@"; then pass "$d"; else fail "$d"; fi; }
has() { grep -qF -- "$2" "$1"; }
lacks() { ! grep -qF -- "$2" "$1"; }
not() { ! "$@"; }
# run ARGS...: runs parrun (bounded by a watchdog), output in $TMP/out and $TMP/err, exit
# code in $RC, wall time in $SECS.
run() {
  local t0 t1
  t0=$(date +%s.%N)
  timeout 60 "$PARRUN" "$@" >"$TMP/out" 2>"$TMP/err" </dev/null
  RC=$?
  t1=$(date +%s.%N)
  SECS=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }')
}
# run_in_one_cpu ARGS...: run, with parrun itself limited to the first CPU it may use.
run_in_one_cpu() {
  local cpu
  cpu=$(awk '/^Cpus_allowed_list/ {print $2}' /proc/self/status | cut -d, -f1 | cut -d- -f1)
  timeout 60 taskset -c "$cpu" "$PARRUN" "$@" >"$TMP/out" 2>"$TMP/err" </dev/null
  RC=$?
}
faster_than() { awk -v s="$SECS" -v l="$1" 'BEGIN { exit !(s < l) }'; }
show() { echo "  --- stdout:"; sed 's/^/  /' "$TMP/out"; echo "  --- stderr:"; sed 's/^/  /' "$TMP/err"; }

echo "# output is prefixed with the rank, stdout and stderr kept apart"
run -n 3 sh -c 'echo "out $RANK"; echo "err $RANK" >&2; printf "partial $RANK"'
check "exit code 0 when every rank succeeds" [ "$RC" = 0 ]
for r in 0 1 2; do
  check "stdout has '[$r] out $r'" has "$TMP/out" "[$r] out $r"
  check "stderr has '[$r] err $r'" has "$TMP/err" "[$r] err $r"
  check "unterminated last line of rank $r is flushed as '[$r] partial $r'" \
    grep -qx "\[$r\] partial $r" "$TMP/out"
done
check "stderr lines do not reach stdout" lacks "$TMP/out" "err"
check "every stdout line carries a prefix" [ "$(grep -cv '^\[[0-9]\] ' "$TMP/out")" = 0 ]

run -n 11 sh -c 'echo "r$RANK"'
check "with 11 ranks the prefix is padded: '[ 3] r3'" has "$TMP/out" "[ 3] r3"
check "with 11 ranks the last prefix is '[10] r10'" has "$TMP/out" "[10] r10"

echo "# the job environment"
run -n 2 sh -c 'echo "$RANK $WORLD_SIZE $LOCAL_RANK $LOCAL_WORLD_SIZE $MASTER_ADDR $MASTER_PORT $PAR_STORE_ADDR $PAR_TOKEN $PAR_JOB_ID"'
line0=$(grep '^\[0\] ' "$TMP/out" | cut -c5-)
line1=$(grep '^\[1\] ' "$TMP/out" | cut -c5-)
read -r r0 w0 lr0 lw0 ma0 mp0 sa0 tok0 job0 <<<"$line0"
read -r r1 w1 lr1 lw1 ma1 mp1 sa1 tok1 job1 <<<"$line1"
check "RANK/WORLD_SIZE/LOCAL_* for rank 0 are 0 2 0 2" [ "$r0 $w0 $lr0 $lw0" = "0 2 0 2" ]
check "RANK/WORLD_SIZE/LOCAL_* for rank 1 are 1 2 1 2" [ "$r1 $w1 $lr1 $lw1" = "1 2 1 2" ]
check "MASTER_ADDR is 127.0.0.1" [ "$ma0" = 127.0.0.1 ]
check "PAR_STORE_ADDR is 127.0.0.1:<port>, not MASTER_PORT (torch binds that)" \
  [ "${sa0%:*}" = 127.0.0.1 -a "${sa0#*:}" != "$mp0" -a -n "$mp0" ]
check "PAR_TOKEN is 32 hex digits" grep -qxE '[0-9a-f]{32}' <<<"$tok0"
check "PAR_JOB_ID is 8 hex digits" grep -qxE '[0-9a-f]{8}' <<<"$job0"
check "both ranks share port, token and job id" [ "$mp0 $tok0 $job0" = "$mp1 $tok1 $job1" ]
run -n 1 sh -c 'echo $PAR_TOKEN'
check "each job gets a fresh token" [ "$(cut -c5- "$TMP/out")" != "$tok0" ]
run -n 1 bash -c 'exec 3<>/dev/tcp/${PAR_STORE_ADDR%:*}/${PAR_STORE_ADDR#*:} && head -c 8 <&3'
check "the rendezvous store answers on PAR_STORE_ADDR with its greeting" has "$TMP/out" "[0] PARSTOR1"
if command -v python3 >/dev/null; then
  run -n 1 python3 -c 'import os, socket; s = socket.socket(); s.bind(("127.0.0.1", int(os.environ["MASTER_PORT"]))); s.listen(); print("bound")'
  check "rank 0 can bind MASTER_PORT, as torch.distributed's env:// rendezvous does" \
    has "$TMP/out" "[0] bound"
fi

echo "# stdin goes to rank 0 only"
timeout 60 "$PARRUN" -n 2 sh -c 'cat; echo "done $RANK"' <<<"typed line" >"$TMP/out" 2>"$TMP/err"
check "rank 0 reads parrun's stdin" has "$TMP/out" "[0] typed line"
check "rank 1 reads nothing" [ "$(grep -c '^\[1\]' "$TMP/out")" = 1 ]

echo "# exit codes"
run -n 3 sh -c 'if [ "$RANK" = 1 ]; then exit 3; fi; sleep 20'
check "a rank's exit code 3 becomes parrun's (got $RC)" [ "$RC" = 3 ]
check "stderr names the rank that failed first" \
  grep -qE '^parrun: rank 1 \(pid [0-9]+\) failed first: exit code 3 after [0-9.]+ s' "$TMP/err"
check "the other ranks are stopped at once (took ${SECS}s)" faster_than 5
run -n 2 false
check "'false' on every rank gives exit code 1 (got $RC)" [ "$RC" = 1 ]
check "only one rank is reported as failing first" [ "$(grep -c 'failed first' "$TMP/err")" = 1 ]

echo "# a rank killed by SIGKILL mid-job"
run -n 4 sh -c 'echo $$ > '"$TMP"'/pid.$RANK; if [ "$RANK" = 2 ]; then sleep 0.5; kill -KILL $$; fi; sleep 60'
check "parrun exits 128+9 (got $RC)" [ "$RC" = 137 ]
check "stderr names rank 2 and the signal" \
  grep -qE '^parrun: rank 2 \(pid [0-9]+\) failed first: killed by signal 9 \(SIGKILL\) after [0-9.]+ s' "$TMP/err"
check "the job ended within a few seconds (took ${SECS}s)" faster_than 5
alive=0
for r in 0 1 3; do kill -0 "$(cat "$TMP/pid.$r")" 2>/dev/null && alive=$((alive + 1)); done
check "no other rank is left running" [ "$alive" = 0 ]

echo "# a rank that ignores SIGTERM is killed after the grace period"
run -n 2 sh -c 'trap "" TERM; if [ "$RANK" = 0 ]; then sleep 0.5; exit 4; fi; sleep 60'
check "exit code is the failed rank's 4 (got $RC)" [ "$RC" = 4 ]
check "the survivor was given the grace period first (took ${SECS}s)" not faster_than 3
check "then SIGKILL ended it (took ${SECS}s)" faster_than 8

echo "# --timeout"
run -n 3 --timeout 1 sh -c 'sleep 30'
check "exit code 124 (got $RC)" [ "$RC" = 124 ]
check "stderr says 'parrun: job timed out after 1 s'" has "$TMP/err" "parrun: job timed out after 1 s"
check "stopped soon after the timeout (took ${SECS}s)" faster_than 5
run -n 2 --timeout=30 sh -c 'exit 0'
check "a job within its timeout exits 0 (got $RC)" [ "$RC" = 0 ]

echo "# SIGTERM to parrun is forwarded to every rank"
timeout 60 "$PARRUN" -n 2 sh -c 'trap "echo got-TERM-\$RANK; exit 0" TERM; echo ready; sleep 30 & wait' \
  >"$TMP/out" 2>"$TMP/err" </dev/null &
PID=$!
for _ in $(seq 100); do [ "$(grep -c ready "$TMP/out")" = 2 ] && break; sleep 0.1; done
kill -TERM "$PID"
wait "$PID"
RC=$?
check "rank 0 caught the forwarded SIGTERM" has "$TMP/out" "[0] got-TERM-0"
check "rank 1 caught the forwarded SIGTERM" has "$TMP/out" "[1] got-TERM-1"
check "parrun says it forwarded SIGTERM" has "$TMP/err" "parrun: got SIGTERM; forwarding it to all ranks"
check "parrun exits 128+15 (got $RC)" [ "$RC" = 143 ]

echo "# programs that cannot run"
run -n 2 /nonexistent/prog
check "a missing program exits 127 (got $RC)" [ "$RC" = 127 ]
check "and says 'parrun: cannot run /nonexistent/prog: No such file or directory'" \
  has "$TMP/err" "parrun: cannot run /nonexistent/prog: No such file or directory"
echo 'echo hi' >"$TMP/notexec"
chmod -x "$TMP/notexec"
run -n 1 "$TMP/notexec"
check "a non-executable file exits 127 (got $RC)" [ "$RC" = 127 ]
check "and says 'Permission denied'" has "$TMP/err" "cannot run $TMP/notexec: Permission denied"
run -n 1 no-such-command-for-parrun
check "a command not on PATH exits 127 (got $RC)" [ "$RC" = 127 ]

echo "# usage"
run --help
check "--help exits 0 (got $RC)" [ "$RC" = 0 ]
check "--help prints the usage" has "$TMP/out" "usage: parrun -n N"
run sh -c true
check "missing -n exits 2 (got $RC)" [ "$RC" = 2 ]
run -n 0 true
check "-n 0 is refused with exit 2 (got $RC)" [ "$RC" = 2 ]
run -n 2 --timeout abc true
check "--timeout abc is refused with exit 2 (got $RC)" [ "$RC" = 2 ]

echo "# /dev/shm/par-<job id>-* files are removed after the job"
run -n 2 sh -c 'touch /dev/shm/par-$PAR_JOB_ID-seg$RANK /dev/shm/par-$PAR_JOB_ID-x; echo $PAR_JOB_ID'
job=$(head -n1 "$TMP/out" | cut -c5-)
check "the job created its files (job id '$job')" grep -qxE '[0-9a-f]{8}' <<<"$job"
check "no /dev/shm/par-$job-* file remains after success" \
  [ "$(find /dev/shm -maxdepth 1 -name "par-$job-*" | wc -l)" = 0 ]
touch "/dev/shm/par-other-keep-$$"
run -n 2 sh -c 'touch /dev/shm/par-$PAR_JOB_ID-seg$RANK; echo $PAR_JOB_ID; if [ $RANK = 1 ]; then kill -KILL $$; fi; sleep 30'
job=$(head -n1 "$TMP/out" | cut -c5-)
check "no /dev/shm/par-$job-* file remains after a failed job" \
  [ "$(find /dev/shm -maxdepth 1 -name "par-$job-*" | wc -l)" = 0 ]
check "files of other jobs are left alone" [ -e "/dev/shm/par-other-keep-$$" ]
rm -f "/dev/shm/par-other-keep-$$"

# --- CPU binding -------------------------------------------------------------------------
ncpu=$(nproc)
if [ "$ncpu" -ge 2 ]; then
  run -n 2 sh -c 'grep Cpus_allowed_list /proc/self/status'
  check "with a CPU per rank, each rank is pinned to one CPU" \
    [ "$(grep -c 'Cpus_allowed_list:[[:space:]]*[0-9]*$' "$TMP/out")" = 2 ]
  check "the two ranks are on different CPUs" \
    [ "$(awk '{print $NF}' "$TMP/out" | sort -u | wc -l)" = 2 ]
fi
run -n $((2 * ncpu + 1)) sh -c 'grep Cpus_allowed_list /proc/self/status'
check "with more ranks than CPUs every rank is still pinned to one CPU" \
  [ "$(grep -c 'Cpus_allowed_list:[[:space:]]*[0-9]*$' "$TMP/out")" = $((2 * ncpu + 1)) ]
check "and they are spread over every CPU" \
  [ "$(awk '{print $NF}' "$TMP/out" | sort -u | wc -l)" = "$ncpu" ]
if [ "$ncpu" -ge 2 ]; then
  run --bind-to none -n 1 sh -c 'grep Cpus_allowed_list /proc/self/status'
  check "--bind-to none leaves placement to the kernel" \
    [ "$(grep -c 'Cpus_allowed_list:[[:space:]]*[0-9]*$' "$TMP/out")" = 0 ]
fi
run -n 1 sh -c 'echo "cpus=$PAR_CPUS"'
check "each rank learns how many CPUs the job may use (PAR_CPUS)" grep -q "cpus=$ncpu\$" "$TMP/out"
# The library counts the job's CPUs, not the one CPU a pinned rank sees, nor the host's.
if [ "$ncpu" -ge 2 ]; then
  PAR_LOG=debug run -n 2 "$BUILD/bin/parbench" --op allreduce --min 8 --max 8 --iters 2
  check "2 ranks on $ncpu CPUs are not oversubscribed" grep -q "world': 2 local ranks, not oversubscribed" "$TMP/err"
fi
PAR_LOG=debug run_in_one_cpu -n 2 "$BUILD/bin/parbench" --op allreduce --min 8 --max 8 --iters 2
check "2 ranks limited to one CPU are oversubscribed" grep -q "world': 2 local ranks, oversubscribed" "$TMP/err"

run --bind-to sideways -n 1 true
check "a bad --bind-to is refused with exit 2" [ "$RC" = 2 ]

echo "# $CHECKS checks, $FAILS failed"
if [ "$FAILS" != 0 ]; then
  show
  exit 1
fi
exit 0
