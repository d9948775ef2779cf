#!/usr/bin/env bash
# A /dev/shm too small for a group's segment: par_world_create must fail with a message that
# says so (PAR_ERR_NOMEM), not kill the ranks with SIGBUS. Runs in a private mount namespace
# with a 2 MiB tmpfs on /dev/shm; skipped where that cannot be set up. Then a /dev/shm with room
# for the machine's round size but not for the larger rounds of ranks that outnumber the cores
# (8 ranks here): the group takes the machine's and the job runs.
set -u
B=$1/bin
if ! unshare -m true 2>/dev/null; then
  echo "SKIP: no mount namespaces here (unshare -m failed)"
  exit 0
fi
out=$(unshare -m bash -c "mount -t tmpfs -o size=2m tmpfs /dev/shm && '$B/parrun' -n 8 --timeout 60 '$B/par_die' 99 0" 2>&1)
rc=$?
echo "$out" | tail -n 5
fail=0
if echo "$out" | grep -q "signal 7"; then echo "FAIL: a rank died of SIGBUS"; fail=1; fi
if ! echo "$out" | grep -q "cannot reserve .* bytes .* in /dev/shm"; then
  echo "FAIL: no 'cannot reserve ... in /dev/shm' message"; fail=1
fi
if [ $rc -eq 0 ]; then echo "FAIL: the job succeeded"; fail=1; fi
[ $fail = 0 ] && echo "ok: a full /dev/shm is a clear error"

out=$(unshare -m bash -c "mount -t tmpfs -o size=48m tmpfs /dev/shm && PAR_LOG=debug '$B/parrun' -n 8 --timeout 60 '$B/parbench' --op allreduce --min 1M --max 1M --iters 2" 2>&1)
rc=$?
if [ $rc -ne 0 ]; then
  echo "$out" | tail -n 5
  echo "FAIL: the job did not run in a 48 MiB /dev/shm (exit $rc)"; fail=1
elif echo "$out" | grep -q "rounds of 2097152 bytes (8 ranks on 2 cores)"; then
  echo "FAIL: a 2 MiB round's segment was said to fit a 48 MiB /dev/shm"; fail=1
else
  echo "ok: in a 48 MiB /dev/shm the job runs$(echo "$out" | grep -q 'no room in /dev/shm' && echo ', on the machine'"'"'s round size')"
fi
exit $fail
