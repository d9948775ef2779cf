#!/usr/bin/env bash
# A zero-copy all-reduce, whose members write their reduced share into every member's output,
# with one member stopped (SIGSTOP) part of the way through: the others time out, and once
# their op has returned no byte of their output changes, even when the stopped member resumes
# in the middle of writing (the zgate, src/backends/shm/shm.h); that member then fails rather
# than succeed. Then on 3 ranks, with a third member dying while the last is stopped: rank 0
# must still wait for the stopped one, which may be inside its gate (the dead one is not). The
# stop lands inside the op at some of the delays tried; the run says how often.
set -u
B=$1/bin
fail=0
inside=0
runs=0
for job in "2 0" "3 1"; do
  set -- $job
  n=$1 die=$2 stopped=$(($1 - 1))
  for delay in 0.001 0.004 0.010; do
    runs=$((runs + 1))
    out=$(PAR_LOG=error timeout 60 "$B/parrun" -n "$n" --timeout 50 "$B/par_zc_stall" "$delay" 64 \
          "$die" 2>&1)
    rc=$?
    echo "# $n ranks, stop after $delay s$([ "$die" = 1 ] && echo ", rank 1 dies 0.1 s later")"
    echo "$out" | sed 's/^/    /'
    if [ $rc -ne 0 ]; then echo "FAIL: the job exited $rc"; fail=1; continue; fi
    if echo "$out" | grep -q "rank 0: PAR_OK"; then
      echo "ok: the stop came after the op"
      continue
    fi
    inside=$((inside + 1))
    if echo "$out" | grep -q "rank 0: 0 bytes of the output changed after the op returned"; then
      echo "ok: rank 0's output is untouched after its op returned"
    else
      echo "FAIL: rank 0's output changed after its op returned"; fail=1
    fi
    if echo "$out" | grep -q "rank $stopped: PAR_OK"; then
      echo "FAIL: the stopped rank succeeded where rank 0 failed"; fail=1
    else
      echo "ok: the stopped rank fails too"
    fi
  done
done
echo "# the stop landed inside the op in $inside of $runs runs"
exit $fail
