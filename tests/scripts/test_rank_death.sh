#!/usr/bin/env bash
# A rank killed in the middle of collectives: parrun must stop the job within seconds and name
# that rank; the survivors' library calls must fail with PAR_ERR_PEER_LOST naming it (not hang);
# no shared-memory segment of the job may be left in /dev/shm.
set -u
B=$1/bin
fail=0
check() { if eval "$2"; then echo "ok: $1"; else echo "FAIL: $1"; fail=1; fi; }

start=$(date +%s.%N)
out=$("$B/parrun" -n 4 --timeout 60 "$B/par_die" 2 50 2>&1)
rc=$?
took=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f", b - a }')
echo "$out" | tail -n 8
check "parrun exits non-zero" "[ $rc -ne 0 ]"
check "parrun names rank 2 as the first failure" "echo \"\$out\" | grep -q 'rank 2 (pid [0-9]*) failed first: killed by signal 9'"
check "the job ended within 10 s (took $took s)" "awk -v t=$took 'BEGIN { exit !(t < 10) }'"
check "survivors got PAR_ERR_PEER_LOST naming rank 2" "echo \"\$out\" | grep -q 'PAR_ERR_PEER_LOST.*rank 2'"
job=$(echo "$out" | sed -n 's/^\[0\] job \([0-9a-f]*\)$/\1/p')
check "the job printed its id ($job)" "[ -n \"$job\" ]"
left=$(ls /dev/shm | grep -c "^par-$job-" || true)
check "no segment of the job left behind ($left)" "[ $left -eq 0 ]"
exit $fail
