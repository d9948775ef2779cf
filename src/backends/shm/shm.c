/*
 * shm.c -- the shared-memory backend: creating and joining a group's segment, the
 * spin-then-sleep wait every transfer is built on, and the backend vtable.
 *
 * Waiting: a member spins briefly while the job has no more ranks than cores, and otherwise
 * yields a few times and then sleeps on a futex in the segment, so that 8 ranks on 2 cores
 * keep making progress. A poster only makes a system call when someone sleeps. Sleeps are
 * bounded (50 ms) so that aborts, deadlines and dead peers are noticed.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/futex.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "backends/shm/shm.h"

static void futex_wait(_Atomic uint32_t *addr, uint32_t val, double seconds) {
  struct timespec ts;
  ts.tv_sec = (time_t)seconds;
  ts.tv_nsec = (long)((seconds - (double)ts.tv_sec) * 1e9);
  syscall(SYS_futex, (uint32_t *)addr, FUTEX_WAIT, val, &ts, NULL, 0);
}

static void futex_wake_all(_Atomic uint32_t *addr) {
  syscall(SYS_futex, (uint32_t *)addr, FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
}

void par__shm_ring(shm_state *st, int j) {
  shm_ctrl *c = &st->ctrl[j];
  /* seq_cst: the caller's store of what changed (an epoch, a ring counter) comes before this
   * load of the sleeper count, as a sleeper's count comes before its check (a Dekker
   * handshake): either the sleeper sees the change, or we see the sleeper and move the bell,
   * which its futex_wait then notices. With no sleeper, ringing costs one load. */
  if (atomic_load(&c->sleepers) > 0) {
    atomic_fetch_add(&c->bell, 1);
    futex_wake_all(&c->bell);
  }
}

/*
 * A post is a release store; its ring waits (st->ring_due) until this member next reads
 * another's epoch or ends the op (par__shm_settle). The ring needs the store ordered before
 * its load of the sleeper count, a full fence: issued at once, it would stall until this
 * core owns the epoch's line again (a cache-line round trip to every reader); issued after
 * the next read of a peer's line, that round trip has overlapped the read.
 */
void par__shm_post(shm_state *st, uint64_t epoch) {
  atomic_store_explicit(&st->ctrl[st->me].epoch, epoch, memory_order_release);
  st->ring_due = 1;
}

void par__shm_settle(shm_state *st) {
  if (!st->ring_due) return;
  st->ring_due = 0;
  atomic_thread_fence(memory_order_seq_cst);
  par__shm_ring(st, st->me);
}

static void ring_all(shm_state *st) {
  for (int j = 0; j < st->n; j++) {
    atomic_fetch_add(&st->ctrl[j].bell, 1);
    futex_wake_all(&st->ctrl[j].bell);
  }
}

void par__shm_abort(shm_state *st) {
  atomic_store(&st->hdr->abort, 1);
  ring_all(st);
}

/* The state letter of member j's process in /proc (R, S, D, T, t, Z, X...), or 0. */
static char peer_state(shm_state *st, int j) {
  char path[64], buf[256];
  snprintf(path, sizeof path, "/proc/%d/stat", (int)atomic_load(&st->ctrl[j].pid));
  FILE *f = fopen(path, "r");
  if (!f) return 0;
  size_t got = fread(buf, 1, sizeof buf - 1, f);
  fclose(f);
  buf[got] = '\0';
  const char *p = strrchr(buf, ')');
  return p && p[1] == ' ' ? p[2] : 0;
}

/* 1 when the member's process is gone or a zombie. */
static int peer_dead(shm_state *st, int j) {
  pid_t pid = atomic_load(&st->ctrl[j].pid);
  if (pid <= 0) return 0;
  if (kill(pid, 0) < 0 && errno == ESRCH) return 1;
  char c = peer_state(st, j);
  return c == 'Z' || c == 'X';
}

/*
 * The member to blame when a wait for member `who` runs out. In a collective, a member that
 * waits has posted everything up to the wait, so the member that has not arrived is the one
 * furthest behind: the lowest epoch (`who` among equals). Waiting for a root that itself
 * waits for a stopped member thus names the stopped member, not the root.
 */
static int laggard(shm_state *st, const shm_waitctx *wc, int who) {
  if (wc->own_bell) return who; /* send/recv and group creation: the peer is the one */
  uint64_t low = atomic_load(&st->ctrl[who].epoch);
  for (int j = 0; j < st->n; j++) {
    uint64_t e = atomic_load(&st->ctrl[j].epoch);
    if (e < low) low = e, who = j;
  }
  return who;
}

/* The note a timeout adds about the member waited for, or NULL. */
static const char *state_note(shm_state *st, int j) {
  return peer_state(st, j) == 'T' ? "whose process is stopped" : NULL;
}

/* Member j's process is gone. */
static par_status lost(shm_state *st, const shm_waitctx *wc, int j) {
  char how[32];
  snprintf(how, sizeof how, "pid %d", (int)atomic_load(&st->ctrl[j].pid));
  return par__op_peer_lost(wc->g, wc->what, wc->seq, j, how);
}

par_status par__shm_wait(shm_state *st, const shm_waitctx *wc, shm_pred pred, const void *arg) {
  int who = pred(st, arg);
  par__shm_settle(st);
  if (who < 0) return PAR_OK;
  par_group *g = wc->g;
  for (unsigned round = 0; par__wait_step(&g->wait, &round);)
    if ((who = pred(st, arg)) < 0) return PAR_OK;
  double start = par__now(), next_check = start + 0.5;
  for (;;) {
    PAR_FORWARD_IF_ERROR(par__op_check_abort(g, wc->what, wc->seq));
    int bell = wc->own_bell ? st->me : who;
    shm_ctrl *c = &st->ctrl[bell];
    atomic_fetch_add(&c->sleepers, 1);
    /* The other half of par__shm_settle's fence: the count comes before the predicate's
     * (acquire) reads below, which C11 orders only after a full fence. */
    atomic_thread_fence(memory_order_seq_cst);
    atomic_store(&st->sleeping_on, bell);
    uint32_t v = atomic_load(&c->bell);
    int again = pred(st, arg);
    double now = par__now();
    /* Sleep only on the bell of the member still awaited: another's post rings only its own. */
    int nap = again >= 0 && (wc->own_bell || again == who);
    who = again;
    if (nap && now < wc->deadline && !atomic_load(&st->hdr->abort)) {
      double left = wc->deadline - now;
      futex_wait(&c->bell, v, left < 0.05 ? left : 0.05);
      who = pred(st, arg);
      now = par__now();
    }
    atomic_store(&st->sleeping_on, -1);
    atomic_fetch_sub(&c->sleepers, 1);
    if (who < 0) return PAR_OK;
    if (now >= wc->deadline) {
      int b = laggard(st, wc, who);
      return par__op_timed_out(g, wc->what, wc->seq, now - start, b, state_note(st, b));
    }
    if (now >= next_check) {
      next_check = now + 0.5;
      int b = laggard(st, wc, who);
      if (!peer_dead(st, b)) b = b != who && peer_dead(st, who) ? who : -1;
      if (b >= 0) return lost(st, wc, b);
    }
  }
}

static int pred_all(shm_state *st, const void *arg) {
  uint64_t e = *(const uint64_t *)arg;
  for (int j = 0; j < st->n; j++)
    if (atomic_load_explicit(&st->ctrl[j].epoch, memory_order_acquire) < e) return j;
  return -1;
}

typedef struct one_arg {
  int j;
  uint64_t e;
} one_arg;

static int pred_one(shm_state *st, const void *arg) {
  const one_arg *a = arg;
  return atomic_load_explicit(&st->ctrl[a->j].epoch, memory_order_acquire) < a->e ? a->j : -1;
}

par_status par__shm_wait_all(shm_state *st, const shm_waitctx *wc, uint64_t epoch) {
  return par__shm_wait(st, wc, pred_all, &epoch);
}

par_status par__shm_wait_one(shm_state *st, const shm_waitctx *wc, int j, uint64_t epoch) {
  one_arg a = {j, epoch};
  return par__shm_wait(st, wc, pred_one, &a);
}

/* ---------------------------------------------------------------------------------------- */
/* Single copy: a peer's memory read or written with process_vm_readv/writev (cross-memory  */
/* attach)                                                                                  */
/* ---------------------------------------------------------------------------------------- */

/* One direction of cross-memory attach, until len bytes have moved. */
static par_status cma_move(shm_state *st, const shm_waitctx *wc, int j, char *local,
                           uint64_t addr, size_t len, int write) {
  pid_t pid = atomic_load(&st->ctrl[j].pid);
  while (len > 0) {
    struct iovec l = {local, len}, r = {(void *)(uintptr_t)addr, len};
    ssize_t got = write ? process_vm_writev(pid, &l, 1, &r, 1, 0)
                        : process_vm_readv(pid, &l, 1, &r, 1, 0);
    if (got > 0) {
      local += got, addr += (uint64_t)got, len -= (size_t)got;
      continue;
    }
    if (got < 0 && errno == EINTR) continue;
    int e = got < 0 ? errno : EFAULT;
    par__shm_abort(st);
    par_group *g = wc->g;
    return par__error(e == ESRCH ? PAR_ERR_PEER_LOST : PAR_ERR_SYSTEM,
                      "%s on group '%s' (op #%llu): cannot %s %zu bytes %s member %d (rank %d, "
                      "pid %d): %s",
                      wc->what, g->name, (unsigned long long)wc->seq, write ? "write" : "read",
                      len, write ? "into" : "of", j, g->ranks[j], (int)pid,
                      e == ESRCH ? "it died" : strerror(e));
  }
  return PAR_OK;
}

par_status par__shm_cma_read(shm_state *st, const shm_waitctx *wc, int j, void *dst,
                             uint64_t addr, size_t len) {
  return cma_move(st, wc, j, dst, addr, len, 0);
}

void par__shm_gate_open(shm_state *st, uint64_t seq) {
  atomic_store(&st->ctrl[st->me].gate, seq << 2 | SHM_GATE_OPEN);
}

/* A closing owner's wait for a writer's piece in flight: a few yields, then short sleeps. */
static void gate_backoff(int spins) {
  if (spins < 16) {
    sched_yield();
  } else {
    struct timespec ts = {0, 200000};
    nanosleep(&ts, NULL);
  }
}

void par__shm_gate_close(shm_state *st, int writer, uint64_t seq) {
  _Atomic uint64_t *gate = &st->ctrl[st->me].gate;
  uint64_t open = seq << 2 | SHM_GATE_OPEN, writing = seq << 2 | SHM_GATE_WRITING;
  uint64_t closed = seq << 2 | SHM_GATE_CLOSED;
  for (int spins = 0;; spins++) {
    uint64_t v = open;
    if (atomic_compare_exchange_strong(gate, &v, closed) || v != writing) return;
    /* A piece is being written: it takes well under a millisecond. Only the writer's death
     * ends the wait early; a writer that merely cannot run (stopped) may still be about to
     * start the copy it claimed the gate for. */
    if (spins > 100 && peer_dead(st, writer)) {
      v = writing;
      if (atomic_compare_exchange_strong(gate, &v, closed)) return;
      continue;
    }
    gate_backoff(spins);
  }
}

static uint64_t zgate_word(uint64_t seq) { return seq << 16; }

/* 1 when gate word v is for op seq, whatever its flags and count. */
static int zgate_of(uint64_t v, uint64_t seq) { return (v & ~(uint64_t)0xFFFF) == zgate_word(seq); }

void par__shm_zgate_open(shm_state *st, uint64_t seq) {
  atomic_store(&st->ctrl[st->me].zgate, zgate_word(seq));
}

void par__shm_zgate_close(shm_state *st, uint64_t seq, int failed) {
  _Atomic uint64_t *gate = &st->ctrl[st->me].zgate;
  const uint64_t inside = SHM_ZGATE_INSIDE;
  uint64_t v = atomic_fetch_or(gate, SHM_ZGATE_CLOSED | (failed ? SHM_ZGATE_FAILED : 0));
  for (int spins = 0; zgate_of(v, seq) && (v & inside); spins++) {
    /* Writers stay inside for a batch, well under a millisecond; only the death of as many
     * writers as are inside, among those writing in this op, ends the wait early. */
    if (spins > 100) {
      uint64_t dead = 0;
      for (int j = 0; j < st->n; j++)
        dead += j != st->me && atomic_load(&st->ctrl[j].zwriting) == seq + 1 && peer_dead(st, j);
      if ((v & inside) <= dead) return;
    }
    gate_backoff(spins);
    v = atomic_load(gate);
  }
}

static int zgate_enter(shm_state *st, int j, uint64_t seq) {
  _Atomic uint64_t *gate = &st->ctrl[j].zgate;
  uint64_t v = atomic_load(gate);
  for (;;) {
    if (!zgate_of(v, seq) || (v & SHM_ZGATE_CLOSED)) return 0;
    if (atomic_compare_exchange_weak(gate, &v, v + 1)) return 1;
  }
}

/* The flag goes up before the first gate is entered and down after the last is left, so a
 * writer that died inside a gate is always counted; one that died with the flag up but
 * outside every gate is counted too, in that instant. */
int par__shm_zgates_enter(shm_state *st, uint64_t seq) {
  atomic_store(&st->ctrl[st->me].zwriting, seq + 1);
  int in = 1;
  while (in < st->n && zgate_enter(st, (st->me + in) % st->n, seq)) in++;
  if (in == st->n) return -1;
  int gone = (st->me + in) % st->n;
  while (--in >= 1) atomic_fetch_sub(&st->ctrl[(st->me + in) % st->n].zgate, 1);
  atomic_store(&st->ctrl[st->me].zwriting, 0);
  return gone;
}

void par__shm_zgates_leave(shm_state *st) {
  for (int k = 1; k < st->n; k++) atomic_fetch_sub(&st->ctrl[(st->me + k) % st->n].zgate, 1);
  atomic_store(&st->ctrl[st->me].zwriting, 0);
}

int par__shm_zgate_failed(shm_state *st, int j, uint64_t seq) {
  uint64_t v = atomic_load(&st->ctrl[j].zgate);
  return zgate_of(v, seq) && (v & SHM_ZGATE_FAILED);
}

par_status par__shm_gate_write(shm_state *st, const shm_waitctx *wc, int j, uint64_t seq,
                               uint64_t addr, const void *src, size_t len) {
  _Atomic uint64_t *gate = &st->ctrl[j].gate;
  uint64_t open = seq << 2 | SHM_GATE_OPEN, writing = seq << 2 | SHM_GATE_WRITING;
  const char *from = src;
  while (len > 0) {
    size_t piece = len < SHM_GATE_PIECE ? len : SHM_GATE_PIECE;
    uint64_t v = open;
    par_status s = PAR_OK;
    if (atomic_compare_exchange_strong(gate, &v, writing)) {
      s = cma_move(st, wc, j, (char *)(uintptr_t)from, addr, piece, 1);
      v = writing;
      if (atomic_compare_exchange_strong(gate, &v, open)) {
        if (s < 0) return s;
        from += piece, addr += piece, len -= piece;
        continue;
      }
    }
    if (s < 0) return s;
    return par__shm_left_op(st, wc, j);
  }
  return PAR_OK;
}

par_status par__shm_left_op(shm_state *st, const shm_waitctx *wc, int j) {
  par__shm_abort(st);
  par_group *g = wc->g;
  return par__error(PAR_ERR_ABORTED,
                    "%s on group '%s' (op #%llu): member %d (rank %d) left the op before it "
                    "was done (it failed or timed out)",
                    wc->what, g->name, (unsigned long long)wc->seq, j, g->ranks[j]);
}

/* 1 when this process can read and write member j's memory: it reads j's pid at the address
 * j published, and writes the same value back. */
static int cma_probe(shm_state *st, int j) {
  int32_t got = 0, want = atomic_load(&st->ctrl[j].pid);
  struct iovec local = {&got, sizeof got}, remote = {(void *)(uintptr_t)st->ctrl[j].probe,
                                                     sizeof got};
  if (process_vm_readv(want, &local, 1, &remote, 1, 0) != (ssize_t)sizeof got || got != want)
    return 0;
  return process_vm_writev(want, &local, 1, &remote, 1, 0) == (ssize_t)sizeof got;
}

/* Where Yama restricts ptrace to descendants (ptrace_scope 1), sibling ranks could not read
 * each other: let any process of this user do so, as Open MPI does for the same purpose.
 * Without Yama this fails harmlessly. */
static void allow_peer_access(void) {
  static atomic_int done;
  if (!atomic_exchange(&done, 1)) (void)prctl(PR_SET_PTRACER, PR_SET_PTRACER_ANY, 0, 0, 0);
}

static int pred_cma(shm_state *st, const void *arg) {
  (void)arg;
  for (int j = 0; j < st->n; j++)
    if (atomic_load(&st->ctrl[j].cma) == 0) return j;
  return -1;
}

/*
 * Single copy is a property of the group, agreed once when it is created. Every member probes
 * every other (reads and writes back its pid) and publishes whether it could reach them all;
 * each then turns single copy on only if all could. Invariant: st->cma is the same on every
 * member, so an op's choice between single copy and the segment (par__shm_collective), which
 * depends only on st->cma and the op's size, is the same on every member -- members never
 * disagree on the path, which would deadlock them. By default it is off when the host has
 * more ranks than cores: there it was measured slower than the segment's pipeline at every
 * size (docs/PERFORMANCE.md); PAR_SHM_CMA=1 turns it on anyway.
 */
static par_status cma_agree(par_group *g, shm_state *st) {
  int want = par__env_get()->shm_cma;
  int ok = st->n > 1 && (want > 0 || (want < 0 && !par__oversubscribed(g->world->local_size)));
  for (int j = 0; ok && j < st->n; j++) ok = j == st->me || cma_probe(st, j);
  atomic_store(&st->ctrl[st->me].cma, ok ? 2u : 1u);
  ring_all(st);
  shm_waitctx wc = {g, "creating the group", 0, g->create_deadline, 1};
  PAR_FORWARD_IF_ERROR(par__shm_wait(st, &wc, pred_cma, NULL));
  st->cma = 1;
  for (int j = 0; j < st->n; j++) st->cma &= atomic_load(&st->ctrl[j].cma) == 2;
  PAR__LOG_DEBUG("shm: group '%s': single-copy reads between members %s", g->name,
                st->cma ? "on" : "off");
  return PAR_OK;
}

/* ---------------------------------------------------------------------------------------- */
/* Segment lifecycle                                                                        */
/* ---------------------------------------------------------------------------------------- */

static size_t align_up(size_t x, size_t a) { return (x + a - 1) / a * a; }

void par__shm_layout(shm_header *h, int n, size_t chunk) {
  memset(h, 0, sizeof *h);
  h->version = SHM_VERSION;
  h->n = (uint32_t)n;
  h->chunk = chunk;
  h->p2p_chunk = SHM_P2P_CHUNK;
  h->p2p_slots = SHM_P2P_SLOTS;
  h->off_ctrl = align_up(sizeof(shm_header), 4096);
  h->off_data = align_up(h->off_ctrl + (size_t)n * sizeof(shm_ctrl), 4096);
  h->off_p2p = h->off_data + (size_t)n * 4 * chunk;
  h->p2p_stride = align_up(sizeof(shm_chan) + SHM_P2P_SLOTS * (sizeof(shm_slot) + SHM_P2P_CHUNK),
                           4096);
  h->size = h->off_p2p + (size_t)n * (size_t)n * h->p2p_stride;
}

/* Names the first member that has not attached yet. */
static int pred_attached(shm_state *st, const void *arg) {
  (void)arg;
  if (atomic_load(&st->hdr->attached) >= (uint32_t)st->n) return -1;
  for (int j = 0; j < st->n; j++)
    if (atomic_load(&st->ctrl[j].pid) == 0) return j;
  return st->me; /* all pids are set: the last count is a moment away */
}

static par_status map_segment(shm_state *st, int fd, size_t size) {
  void *p = mmap(NULL, size, PROT_READ | PROT_WRITE,
                 MAP_SHARED | MAP_POPULATE | (fd < 0 ? MAP_ANONYMOUS : 0), fd, 0);
  PAR_RETURN_ERROR_IF(p == MAP_FAILED, PAR_ERR_SYSTEM, "shm: cannot map %zu bytes of %s: %s",
                      size, st->name, strerror(errno));
  st->base = p;
  st->size = size;
  st->hdr = p;
  return PAR_OK;
}

static par_status create_segment(par_group *g, shm_state *st, size_t chunk,
                                 const par__tuning *tune) {
  shm_header h;
  par__shm_layout(&h, st->n, chunk);
  h.paths = (shm_paths){tune->small_max,     tune->cma_reduce_min, tune->cma_reduce_max,
                        tune->cma_move_min,  tune->cma_move_max,   tune->cma_bcast_min,
                        tune->cma_bcast_max, tune->big_out,        tune->stream_min};
  int fd = -1;
  if (st->n > 1) {
    fd = shm_open(st->name, O_CREAT | O_EXCL | O_RDWR, 0600);
    PAR_RETURN_ERROR_IF(fd < 0, PAR_ERR_SYSTEM, "shm: cannot create segment %s for group '%s': %s",
                        st->name, g->name, strerror(errno));
    /* Reserve the pages now: on a full /dev/shm a sparse file would fault with SIGBUS on
     * first touch instead of failing here. */
    int e = ftruncate(fd, (off_t)h.size) < 0 ? errno : posix_fallocate(fd, 0, (off_t)h.size);
    if (e) {
      close(fd);
      shm_unlink(st->name);
      return par__error(PAR_ERR_NOMEM,
                        "shm: cannot reserve %llu bytes for segment %s of group '%s' in /dev/shm: "
                        "%s",
                        (unsigned long long)h.size, st->name, g->name, strerror(e));
    }
  }
  par_status s = map_segment(st, fd, h.size);
  if (fd >= 0) close(fd);
  if (s < 0) {
    if (st->n > 1) shm_unlink(st->name);
    return s;
  }
  memcpy(st->hdr, &h, sizeof h);
  __atomic_store_n(&st->hdr->magic, SHM_MAGIC, __ATOMIC_RELEASE);
  return PAR_OK;
}

par_status par__shm_header_check(const shm_header *h, size_t mapped, int n) {
  uint64_t chunk = h->chunk;
  PAR_RETURN_ERROR_IF(h->magic != SHM_MAGIC || h->version != SHM_VERSION, PAR_ERR_PROTOCOL,
                      "shm: not a par segment of this version (magic %#llx, version %u; want "
                      "%#llx, %u)",
                      (unsigned long long)h->magic, h->version,
                      (unsigned long long)SHM_MAGIC, SHM_VERSION);
  PAR_RETURN_ERROR_IF(h->n != (uint32_t)n, PAR_ERR_PROTOCOL,
                      "shm: the segment has %u members, the group %d", h->n, n);
  PAR_RETURN_ERROR_IF(chunk < 4096 || chunk > SHM_MAX_CHUNK || chunk % 4096, PAR_ERR_PROTOCOL,
                      "shm: the segment's chunk size %llu is not a multiple of 4096 in [4096, "
                      "%u]",
                      (unsigned long long)chunk, SHM_MAX_CHUNK);
  /* Every offset follows from n and the chunk: recompute the layout and compare it whole, so
   * that nothing read from the header can point outside the mapping. */
  shm_header want;
  par__shm_layout(&want, n, (size_t)chunk);
  PAR_RETURN_ERROR_IF(h->p2p_chunk != want.p2p_chunk || h->p2p_slots != want.p2p_slots ||
                          h->off_ctrl != want.off_ctrl || h->off_data != want.off_data ||
                          h->off_p2p != want.off_p2p || h->p2p_stride != want.p2p_stride ||
                          h->size != want.size,
                      PAR_ERR_PROTOCOL, "shm: the segment's layout does not follow from its "
                                        "%u members and chunk %llu",
                      h->n, (unsigned long long)chunk);
  PAR_RETURN_ERROR_IF(h->size != mapped, PAR_ERR_PROTOCOL,
                      "shm: the segment is %zu bytes, its header says %llu", mapped,
                      (unsigned long long)h->size);
  return PAR_OK;
}

static par_status open_segment(par_group *g, shm_state *st) {
  int fd = shm_open(st->name, O_RDWR, 0600);
  PAR_RETURN_ERROR_IF(fd < 0, PAR_ERR_SYSTEM, "shm: cannot open segment %s of group '%s': %s",
                      st->name, g->name, strerror(errno));
  struct stat sb;
  if (fstat(fd, &sb) < 0 || (size_t)sb.st_size < sizeof(shm_header)) {
    close(fd);
    return par__error(PAR_ERR_PROTOCOL, "shm: segment %s is too small", st->name);
  }
  par_status s = map_segment(st, fd, (size_t)sb.st_size);
  close(fd);
  PAR_FORWARD_IF_ERROR(s);
  shm_header *h = st->hdr;
  (void)__atomic_load_n(&h->magic, __ATOMIC_ACQUIRE); /* the creator published it last */
  s = par__shm_header_check(h, (size_t)sb.st_size, st->n);
  if (s < 0) {
    char detail[PAR__ERRLEN];
    par__error_keep(detail, NULL, s);
    return par__error(s, "%s (segment %s of group '%s')", detail, st->name, g->name);
  }
  return PAR_OK;
}

static void shm_fini(par_group *g) {
  shm_state *st = g->be_state;
  if (!st) return;
  if (st->base) munmap(st->base, st->size);
  if (!st->unlinked && st->me == 0 && st->n > 1) shm_unlink(st->name);
  free(st->srcs);
  free(st->dsts);
  free(st->bufs.src);
  free(st->bufs.dst);
  free(st->bufs.inplace);
  free(st->bufs.asrc);
  free(st->bufs.adst);
  free(st);
  g->be_state = NULL;
}

static par_status shm_init(par_group *g) {
  shm_state *st = calloc(1, sizeof *st);
  PAR_RETURN_ERROR_IF(!st, PAR_ERR_NOMEM, "shm: out of memory");
  g->be_state = st;
  st->n = g->n;
  st->me = g->index;
  atomic_store(&st->sleeping_on, -1);
  st->srcs = calloc((size_t)g->n, sizeof(void *));
  st->dsts = calloc((size_t)g->n, sizeof(void *));
  shm_bufs *b = &st->bufs;
  b->src = calloc((size_t)g->n, sizeof(char *));
  b->dst = calloc((size_t)g->n, sizeof(char *));
  b->inplace = calloc((size_t)g->n, 1);
  b->asrc = calloc((size_t)g->n, sizeof(uint64_t));
  b->adst = calloc((size_t)g->n, sizeof(uint64_t));
  if (!st->srcs || !st->dsts || !b->src || !b->dst || !b->inplace || !b->asrc || !b->adst) {
    shm_fini(g);
    return par__error(PAR_ERR_NOMEM, "shm: out of memory");
  }
  const par__env *env = par__env_get();
  const par__tuning *tune = par__tuning_get();
  st->check = env->check;
  /* Ranks that share cores read much of each other's staging from their own core's cache:
   * there ops that fit the cache keep to it (shm_stage.c). */
  st->staging.choose = env->shm_stage_stream >= 0 ? env->shm_stage_stream : -1;
  st->staging.shared_cores = par__oversubscribed(g->world->local_size);

  snprintf(st->name, sizeof st->name, "/par-%s-%s", g->world->job_id, g->uid);
  if (st->n == 1) st->unlinked = 1;

  par_world *w = g->world;
  char key[96];
  snprintf(key, sizeof key, "par/shm/%s", g->uid);
  par_status s;
  if (st->me == 0) {
    /* Rounds that split the chunk n ways need at least a cache line per member. Larger
     * rounds where ranks outnumber the cores (par__tune_group_chunk), unless /dev/shm has no
     * room for them: then the machine's. */
    size_t least = align_up((size_t)st->n * 64 * 8, 4096);
    size_t chunk = par__tune_group_chunk(tune, st->n, g->world->local_size, par__job_cpus());
    s = create_segment(g, st, chunk > least ? align_up(chunk, 4096) : least, tune);
    if (s == PAR_ERR_NOMEM && chunk > tune->shm_chunk) {
      PAR__LOG_DEBUG("shm: group '%s': no room in /dev/shm for rounds of %zu bytes, taking %zu",
                     g->name, chunk, tune->shm_chunk);
      chunk = tune->shm_chunk;
      s = create_segment(g, st, chunk > least ? align_up(chunk, 4096) : least, tune);
    }
    if (s >= 0 && chunk != tune->shm_chunk)
      PAR__LOG_DEBUG("shm: group '%s': rounds of %zu bytes (%d ranks on %d cores)", g->name,
                     chunk, g->world->local_size, par__job_cpus());
    if (s >= 0 && st->n > 1) s = par__store_set(w->store, key, st->name, strlen(st->name));
  } else {
    char got[96];
    size_t len = 0;
    double left = g->create_deadline - par__now();
    s = par__store_get(w->store, key, got, sizeof got - 1, &len, left > 0 ? left : 0.001);
    if (s >= 0) s = open_segment(g, st);
  }
  if (s < 0) {
    shm_fini(g);
    return s;
  }
  st->ctrl = (shm_ctrl *)(st->base + st->hdr->off_ctrl);
  st->paths = st->hdr->paths;
  st->ctrl[st->me].probe = (uint64_t)(uintptr_t)&st->ctrl[st->me].pid;
  if (env->shm_cma != 0 && st->n > 1) allow_peer_access(); /* before the others probe us */
  atomic_store(&st->ctrl[st->me].pid, (int32_t)getpid());
  atomic_fetch_add(&st->hdr->attached, 1);
  ring_all(st); /* whoever waits for the last member to attach sleeps on some bell */

  shm_waitctx wc = {g, "creating the group", 0, g->create_deadline, 1};
  s = par__shm_wait(st, &wc, pred_attached, NULL);
  if (s >= 0) s = cma_agree(g, st);
  if (s < 0) {
    /* Members that did attach must not wait on a group this member gave up on. */
    atomic_store(&st->hdr->abort, 1);
    ring_all(st);
  }
  if (s >= 0 && st->me == 0 && st->n > 1) {
    /* Everyone has it mapped: the name is no longer needed, and a crash leaves nothing. */
    shm_unlink(st->name);
    st->unlinked = 1;
    par__store_del(w->store, key);
  }
  if (s < 0) {
    shm_fini(g);
    return s;
  }
  return PAR_OK;
}

/* ---------------------------------------------------------------------------------------- */
/* The vtable                                                                               */
/* ---------------------------------------------------------------------------------------- */

/* Every member must be on this host: the segment is one host's memory. */
static par_status shm_can_serve(par_group *g) {
  for (int i = 0; i < g->n; i++) {
    const char *id;
    PAR_FORWARD_IF_ERROR(par__world_host_id(g->world, g->ranks[i], &id));
    PAR_RETURN_ERROR_IF(strcmp(id, g->world->host_id) != 0, PAR_ERR_UNSUPPORTED,
                        "backend shm needs all members on one host, and rank %d is on another",
                        g->ranks[i]);
  }
  return PAR_OK;
}

/* After a collective: a member whose op failed records it for the group (hdr->failed); one
 * whose op completed without waiting on the others after they failed it (a broadcast's root
 * that comes after the readers timed out) fails with them, instead of returning success for
 * data nobody received. */
static par_status failed_check(par_group *g, shm_state *st, const par__op *op, par_status s) {
  _Atomic uint64_t *f = &st->hdr->failed;
  if (s < 0) {
    uint64_t none = 0;
    if (s != PAR_ERR_MISMATCH)
      atomic_compare_exchange_strong(f, &none, (op->seq + 1) << 16 | (uint64_t)st->me);
    return s;
  }
  uint64_t v = atomic_load_explicit(f, memory_order_acquire);
  if (!v || (v >> 16) - 1 > op->seq) return s;
  int j = (int)(v & 0xffff);
  return par__error(PAR_ERR_ABORTED,
                    "%s on group '%s' (op #%llu): member %d (rank %d) failed op #%llu of the "
                    "group, so not every member has this op's result",
                    par__op_kind_name(op->kind), g->name, (unsigned long long)op->seq, j,
                    g->ranks[j], (unsigned long long)((v >> 16) - 1));
}

/* An op may end on a post (a broadcast's root): its ring is due before the op returns. */
static par_status shm_run(par_group *g, par__op *op) {
  shm_state *st = g->be_state;
  par_status s = par__shm_collective(g, st, op);
  par__shm_settle(st);
  par__shm_stage_settle(&st->staging, &st->ctrl[st->me]);
  return failed_check(g, st, op, s);
}

static par_status shm_barrier(par_group *g, par__op *op) {
  par_status s = par__shm_barrier(g, g->be_state, op);
  par__shm_settle(g->be_state);
  return s;
}

static par_status shm_p2p(par_group *g, par__op *ops, par__p2p_state *ps, int nops,
                          _Atomic int *poke) {
  return par__shm_p2p(g, g->be_state, ops, ps, nops, poke);
}

/* Wakes this process's waiting thread, wherever it sleeps, to look at the poke flag. */
static void shm_poke(par_group *g) {
  shm_state *st = g->be_state;
  int j = atomic_load(&st->sleeping_on);
  if (j >= 0) par__shm_ring(st, j);
}

static void shm_abort(par_group *g) {
  shm_state *st = g->be_state;
  if (st && st->hdr) par__shm_abort(st);
}

/* The segment's flag does not say which member set it. */
static int shm_aborted_by(par_group *g) {
  shm_state *st = g->be_state;
  return st && st->hdr && atomic_load_explicit(&st->hdr->abort, memory_order_relaxed) ? g->n : -1;
}

const par__backend par__shm_backend = {
    .name = "shm",
    .id = PAR_BACKEND_SHM,
    .ops = PAR__OPS_ALL,
    .can_serve = shm_can_serve,
    .group_init = shm_init,
    .group_fini = shm_fini,
    .run = shm_run,
    .barrier = shm_barrier,
    .p2p = shm_p2p,
    .poke = shm_poke,
    .abort = shm_abort,
    .aborted_by = shm_aborted_by,
    .alloc_mem = par__shm_alloc,
    .free_mem = par__shm_free,
    .world_init = par__shm_world_init,
    .world_fini = par__shm_world_fini,
};
