#!/usr/bin/env bash
# Blame: a rank stopped (SIGSTOP) in the middle of collectives makes the others time out, and
# every survivor's error names the stopped rank -- for broadcast too, where a reader waits for
# a root that itself waits for the stopped rank -- and says it is stopped. Each survivor writes
# its group's flight recorder to the log (error level): the op it was in, running, after the
# ops that completed.
set -u
B=$1/bin
fail=0
check() { if eval "$2"; then echo "ok: $1"; else echo "FAIL: $1"; fail=1; fi; }

for op in broadcast allreduce allgather; do
  out=$(PAR_TIMEOUT=2 "$B/parrun" -n 4 --timeout 60 "$B/par_stall" 2 7 "$op" 2>&1)
  lines=$(echo "$out" | grep -E "^\[[0-9]\] rank [0-9]: PAR_ERR_TIMEOUT")
  echo "$lines"
  check "$op: 3 survivors time out" "[ \$(echo \"\$lines\" | grep -c .) -eq 3 ]"
  check "$op: every survivor names rank 2, stopped" \
    "[ \$(echo \"\$lines\" | grep -c 'waiting for member 2 (rank 2, whose process is stopped)') -eq 3 ]"
  check "$op: the flight recorder shows the op each survivor was in" \
    "[ \$(echo \"\$out\" | grep -c \"flight recorder of group 'world'\") -eq 3 ] &&
     echo \"\$out\" | grep -q \"$op #8 .*FAILED (PAR_ERR_TIMEOUT)\" &&
     echo \"\$out\" | grep -q \"$op #7 .*done\""
done
exit $fail
