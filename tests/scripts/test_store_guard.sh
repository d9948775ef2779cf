#!/usr/bin/env bash
# test_store_guard.sh BUILD_DIR -- the rendezvous store against what others on the host can
# do, and the bootstrap's answers when things go wrong, all with real processes and sockets:
# a job starts while 1,200 idle strangers hold connections (and under ulimit -n 64 with 100);
# a tokenless store on 0.0.0.0 refuses to start unless PAR_ALLOW_NO_TOKEN=1, then warns; two
# jobs given the same PAR_JOB_ID get different job ids and both run; parrun cleans up only
# its own job's segments; worlds created one after another on parrun's store each join; a
# rank that never starts is named after one PAR_TIMEOUT; under ulimit -v the job either
# starts or says why, never a misleading timeout.
set -u

BUILD=${1:?usage: test_store_guard.sh BUILD_DIR}
PARRUN=$BUILD/bin/parrun
JOIN=$BUILD/bin/par_join
[ -x "$PARRUN" ] && [ -x "$JOIN" ] || { echo "FAIL: parrun or par_join not built in $BUILD"; exit 1; }

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"; rm -f /dev/shm/par-guard$$-*' EXIT
FAILS=0
CHECKS=0
pass() { CHECKS=$((CHECKS + 1)); echo "ok   - $1"; }
fail() { CHECKS=$((CHECKS + 1)); FAILS=$((FAILS + 1)); echo "FAIL - $1"; }
check() { local d=$1; shift; if "$@"; then pass "$d"; else fail "$d"; fi; }
has() { grep -qF -- "$2" "$1"; }
lacks() { ! grep -qF -- "$2" "$1"; }
count() { grep -cF -- "$2" "$1"; }
lt() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a < b) }'; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }
show() { sed 's/^/    /' "$TMP/out" | tail -n 12; }
# A port below the kernel's ephemeral range, which outgoing connections (this script's floods,
# Open MPI in a test running beside it) never take, so that a port found free stays free.
read -r eph_lo _ </proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || eph_lo=32768
[ "$eph_lo" -gt 12000 ] || eph_lo=32768
free_port() {
  local p
  for _ in $(seq 50); do
    p=$((10000 + RANDOM % (eph_lo - 10000)))
    (exec 3<>/dev/tcp/127.0.0.1/$p) 2>/dev/null || { echo $p; return; }
  done
  echo 29500
}

echo "# 1,200 idle strangers hold connections to the store (parrun under ulimit -n 1024)"
t0=$(now)
(ulimit -n 1024 2>/dev/null; PAR_TIMEOUT=20 timeout 60 "$PARRUN" -n 3 "$JOIN" --flood 400 >"$TMP/out" 2>&1)
rc=$?
took=$(since "$t0")
show
check "the job ran (exit $rc)" [ $rc -eq 0 ]
check "every rank flooded and then joined" [ "$(count "$TMP/out" "joined in")" -eq 3 ]
check "within 15 s, far less than the timeout (took $took s)" lt "$took" 15

echo "# 100 idle strangers, parrun under ulimit -n 64"
t0=$(now)
(ulimit -n 64 2>/dev/null; PAR_TIMEOUT=20 timeout 60 "$PARRUN" -n 2 "$JOIN" --flood 50 >"$TMP/out" 2>&1)
rc=$?
took=$(since "$t0")
show
check "the job ran (exit $rc)" [ $rc -eq 0 ]
check "both ranks joined" [ "$(count "$TMP/out" "joined in")" -eq 2 ]
check "within 15 s (took $took s)" lt "$took" 15

echo "# a tokenless store on every interface"
port=$(free_port)
t0=$(now)
env -u PAR_TOKEN -u PAR_ALLOW_NO_TOKEN RANK=0 WORLD_SIZE=2 MASTER_ADDR=0.0.0.0 MASTER_PORT=$port \
  PAR_TIMEOUT=20 timeout 30 "$JOIN" >"$TMP/out" 2>&1
rc=$?
show
check "rank 0 refuses to start it (exit $rc)" [ $rc -eq 1 ]
check "at once (took $(since "$t0") s)" lt "$(since "$t0")" 5
check "saying why and naming PAR_ALLOW_NO_TOKEN" has "$TMP/out" "refusing to listen on 0.0.0.0:$port without a job token"
check "... and PAR_ALLOW_NO_TOKEN=1" has "$TMP/out" "PAR_ALLOW_NO_TOKEN=1"
env -u PAR_TOKEN RANK=0 WORLD_SIZE=2 MASTER_ADDR=0.0.0.0 MASTER_PORT=$port PAR_ALLOW_NO_TOKEN=1 \
  PAR_TIMEOUT=20 timeout 30 "$JOIN" >"$TMP/out" 2>&1 &
p0=$!
env -u PAR_TOKEN RANK=1 WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=$port PAR_ALLOW_NO_TOKEN=1 \
  PAR_TIMEOUT=20 timeout 30 "$JOIN" >"$TMP/out1" 2>&1
rc1=$?
wait $p0
rc0=$?
cat "$TMP/out1" >>"$TMP/out"
show
check "with PAR_ALLOW_NO_TOKEN=1 the job runs (exit $rc0 $rc1)" [ "$rc0$rc1" = 00 ]
check "rank 0 warns that the store listens without a token" has "$TMP/out" "listening on 0.0.0.0:$port without a job token (PAR_ALLOW_NO_TOKEN=1)"
check "and that it admitted a client without one" has "$TMP/out" "admitted a client without a job token"
check "PAR_ALLOW_NO_TOKEN=2 is refused by name" \
  bash -c "RANK=0 WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=$port PAR_ALLOW_NO_TOKEN=2 '$JOIN' 2>&1 | grep -q 'PAR_ALLOW_NO_TOKEN=2 is not 0 or 1'"
port=$(free_port)
env -u PAR_TOKEN RANK=0 WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=$port PAR_TIMEOUT=20 \
  timeout 30 "$JOIN" >"$TMP/out" 2>&1 &
p0=$!
env -u PAR_TOKEN RANK=1 WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=$port PAR_TIMEOUT=20 \
  timeout 30 "$JOIN" >"$TMP/out1" 2>&1
rc1=$?
wait $p0
rc0=$?
check "a tokenless store on loopback runs (exit $rc0 $rc1)" [ "$rc0$rc1" = 00 ]
check "but says that it admitted a client without a token" has "$TMP/out" "admitted a client without a job token"

echo "# two jobs given the same PAR_JOB_ID at the same time"
pa=$(free_port)
pb=$(free_port)
while [ "$pb" = "$pa" ]; do pb=$(free_port); done
for job in a b; do
  port=$pa
  [ $job = b ] && port=$pb
  for r in 0 1; do
    RANK=$r WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=$port PAR_TOKEN=tok$job \
      PAR_JOB_ID=guard$$ PAR_TIMEOUT=30 timeout 60 "$JOIN" --iters 300 >"$TMP/job$job$r" 2>&1 &
  done
done
wait
cat "$TMP"/joba* "$TMP"/jobb* >"$TMP/out"
show
check "all four ranks of both jobs ran" [ "$(count "$TMP/out" "joined in")" -eq 4 ]
ida=$(sed -n 's/.*job //p' "$TMP/joba0")
idb=$(sed -n 's/.*job //p' "$TMP/jobb0")
check "each job's ranks agree on its id" [ "$ida" = "$(sed -n 's/.*job //p' "$TMP/joba1")" ]
check "the ids keep PAR_JOB_ID as a prefix ($ida, $idb)" grep -qE "^guard$$-[0-9a-f]{8}$" <<<"$ida"
check "but differ, so their segments cannot collide" [ "$ida" != "$idb" ]
check "a PAR_JOB_ID that cannot name a segment is refused by name" \
  bash -c "PAR_JOB_ID=a/b '$JOIN' 2>&1 | grep -q \"PAR_JOB_ID: byte 1 of the job id (0x2f)\""

echo "# parrun removes its own job's segments and no one else's"
timeout 60 "$PARRUN" -n 1 sh -c 'touch /dev/shm/par-$PAR_JOB_ID-0123456789abcdef.0 \
  /dev/shm/par-$PAR_JOB_ID-m0.1 /dev/shm/par-$PAR_JOB_ID-0badc0de-0123456789abcdef.0;
  echo "$PAR_JOB_ID"' >"$TMP/out" 2>&1
job=$(sed -n 's/^\[0\] //p' "$TMP/out")
check "its own group segment is removed" [ ! -e "/dev/shm/par-$job-0123456789abcdef.0" ]
check "its own buffer segment is removed" [ ! -e "/dev/shm/par-$job-m0.1" ]
check "another job's (PAR_JOB_ID=$job) is kept" [ -e "/dev/shm/par-$job-0badc0de-0123456789abcdef.0" ]
rm -f "/dev/shm/par-$job-"*

echo "# worlds created one after another on parrun's store"
PAR_TIMEOUT=20 timeout 60 "$PARRUN" -n 3 "$JOIN" --worlds 3 --iters 5 >"$TMP/out" 2>&1
rc=$?
show
check "three worlds in a row join (exit $rc)" [ $rc -eq 0 ]
check "every rank joined each of them" [ "$(count "$TMP/out" "joined in")" -eq 9 ]

echo "# a rank that never starts"
t0=$(now)
PAR_TIMEOUT=4 timeout 60 "$PARRUN" -n 3 sh -c \
  'if [ "$RANK" = 1 ]; then sleep 30; else exec "$0"; fi' "$JOIN" >"$TMP/out" 2>&1
rc=$?
took=$(since "$t0")
show
check "the job fails (exit $rc)" [ $rc -ne 0 ]
# Whichever of ranks 0 and 2 times out first says so; parrun then stops the other.
check "a rank names rank 1 as never joined" grep -qE '^\[[02]\] world: rank 1 never joined the world within 4 s' "$TMP/out"
check "no internal key name is the reason" lacks "$TMP/out" "par/host"
# Three timeouts would be 12 s; the margin is for a loaded machine.
check "after one PAR_TIMEOUT, not three (took $took s)" lt "$took" 9

echo "# under ulimit -v: the job starts, or the failure says why (never a bare timeout)"
if grep -qaE "__asan_init|__tsan_init" "$PARRUN"; then
  echo "skip - a sanitizer reserves more address space than any ulimit -v here allows"
else
  bad=0
  for kb in 14000 16000 18000 20000 22000 24000 28000 32000 40000; do
    (ulimit -v $kb && PAR_TIMEOUT=20 timeout 60 "$PARRUN" -n 2 "$JOIN" --iters 2 >"$TMP/out" 2>&1)
    rc=$?
    what=started
    [ $rc -eq 0 ] || what="failed: $(grep -v '^parrun: rank' "$TMP/out" | head -n 1)"
    echo "    ulimit -v $kb: $what"
    if [ $rc -ne 0 ] && grep -qiE 'timed out|within 20 s|no greeting' "$TMP/out"; then bad=1; fi
  done
  check "no run failed with a timeout" [ $bad -eq 0 ]
fi

echo "$CHECKS checks, $FAILS failed"
[ $FAILS -eq 0 ]
