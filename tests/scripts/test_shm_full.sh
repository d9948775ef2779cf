#!/usr/bin/env bash
# A /dev/shm too small for a group's segment: par_world_create must fail with a message that
# says so (PAR_ERR_NOMEM), not kill the ranks with SIGBUS. Runs in a private mount namespace
# with a 2 MiB tmpfs on /dev/shm; skipped where that cannot be set up.
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
exit $fail
