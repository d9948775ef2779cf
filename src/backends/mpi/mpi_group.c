/*
 * mpi_group.c -- the MPI backend's vtable: groups as MPI communicators, send/recv, abort.
 *
 * A group is an MPI_Comm_create_group communicator over its members' ranks in the world's
 * duplicate of MPI_COMM_WORLD. That call involves only the members, matching par's contract
 * that non-members never take part, so each rank makes one call per group it is in: one per
 * partition of a mesh, never one per group of the partition. Since the call cannot time
 * out, the members first meet through member 0 with nonblocking messages, within the
 * group's creation deadline; once all have arrived the communicator forms at once.
 *
 * Each group also has a control communicator that carries only notices, taken by a pre-posted
 * receive: par_group_abort on one member fails the pending and later ops of every member, as
 * with shm, and a member whose op failed makes the later ops of the others fail at once.
 *
 * Send/recv map to MPI_Isend/MPI_Irecv on the group's communicator, posted as soon as the
 * op reaches the backend, so a batch progresses together; MPI's ordering keeps ops to one
 * peer in issue order. The tag carries the dtype (and the group), so a recv can tell a
 * mismatched send, and drops a message that an abandoned older group left behind.
 */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backends/mpi/mpi_backend.h"

#define TAG_CREATE 20000 /* + a hash: meeting and MPI_Comm_create_group on the world */

/* ---------------------------------------------------------------------------------------- */
/* Creating and destroying                                                                  */
/* ---------------------------------------------------------------------------------------- */

static uint32_t uid_hash(const char *s) {
  uint64_t h = par__fnv1a(s, strlen(s), PAR__FNV_OFFSET);
  return (uint32_t)(h ^ h >> 32);
}

/* Member 0 waits for a note from every member, then notes each back: after this every member
 * is known to be creating the group, so the blocking MPI_Comm_create_group returns promptly.
 * The notes carry nothing: notes of different groups that happen to share the tag are
 * interchangeable, and each creation consumes exactly one note per member. */
static par_status meet(par_group *g, MPI_Comm parent, int tag) {
  int n = g->n, lead = g->ranks[0];
  static const char note = 0;
  char *sink = calloc((size_t)n, 1);
  MPI_Request *reqs = malloc(sizeof(MPI_Request) * (size_t)n);
  if (!sink || !reqs) {
    free(sink);
    free(reqs);
    return par__error(PAR_ERR_NOMEM, "mpi: out of memory");
  }
  int nreq = 0, rc = MPI_SUCCESS;
  par_status s = PAR_OK;
  for (int phase = 0; phase < 2 && s >= 0; phase++) {
    /* Phase 0: notes to member 0; phase 1: member 0's notes back. */
    int receive = (phase == 0) == (g->index == 0);
    nreq = 0;
    par__mpi_lock();
    if (g->index == 0) {
      for (int i = 1; i < n && rc == MPI_SUCCESS; i++)
        rc = receive ? MPI_Irecv(&sink[i], 1, MPI_CHAR, g->ranks[i], tag, parent, &reqs[nreq++])
                     : MPI_Isend(&note, 1, MPI_CHAR, g->ranks[i], tag, parent, &reqs[nreq++]);
    } else {
      rc = receive ? MPI_Irecv(&sink[0], 1, MPI_CHAR, lead, tag, parent, &reqs[nreq++])
                   : MPI_Isend(&note, 1, MPI_CHAR, lead, tag, parent, &reqs[nreq++]);
    }
    par__mpi_unlock();
    if (rc != MPI_SUCCESS) {
      nreq--;
      s = par__mpi_error(PAR_ERR_SYSTEM, rc, "group '%s': meeting the members failed", g->name);
      break;
    }
    unsigned round = 0;
    mpi_state *st = g->be_state;
    for (;;) {
      int done = 0;
      unsigned seen = atomic_load(&st->wakeups);
      par__mpi_lock();
      rc = MPI_Testall(nreq, reqs, &done, MPI_STATUSES_IGNORE);
      par__mpi_unlock();
      if (rc != MPI_SUCCESS) {
        s = par__mpi_error(PAR_ERR_SYSTEM, rc, "group '%s': meeting the members failed", g->name);
        break;
      }
      if (done) break;
      if (par__now() >= g->create_deadline) {
        s = par__error(PAR_ERR_TIMEOUT,
                       "creating group '%s' (%d members) timed out after %.3g s: %s", g->name, n,
                       g->timeout_s,
                       g->index == 0 ? "not every member called par_group_create"
                                     : "member 0 did not answer (not every member arrived)");
        break;
      }
      par__mpi_backoff(g, &round, seen);
    }
  }
  if (s < 0) {
    /* Pending receives may still land in sink: it stays with them. */
    MPI_Request none = MPI_REQUEST_NULL;
    par__mpi_lock();
    for (int i = 0; i < nreq; i++)
      if (reqs[i] != MPI_REQUEST_NULL) MPI_Cancel(&reqs[i]);
    par__mpi_unlock();
    for (int i = 0; i < nreq; i++)
      if (reqs[i] != MPI_REQUEST_NULL) par__mpi_park(NULL, &reqs[i]);
    par__mpi_park(sink, &none);
  } else {
    free(sink);
  }
  free(reqs);
  return s;
}

static void mpi_fini(par_group *g) {
  mpi_state *st = g->be_state;
  if (!st) return;
  par__mpi_lock();
  if (st->notice_rx != MPI_REQUEST_NULL) {
    /* An unmatched receive cancels locally, so this wait returns at once. */
    MPI_Cancel(&st->notice_rx);
    MPI_Wait(&st->notice_rx, MPI_STATUS_IGNORE);
  }
  par__mpi_unlock();
  if (atomic_load(&st->tainted)) {
    /* Abandoned requests or unreceived messages may still travel on these. */
    par__mpi_retire(&st->ctrl);
    par__mpi_retire(&st->comm);
  }
  par__mpi_lock();
  if (st->ctrl != MPI_COMM_NULL) MPI_Comm_free(&st->ctrl);
  if (st->comm != MPI_COMM_NULL) MPI_Comm_free(&st->comm);
  par__mpi_unlock();
  free(st->stage);
  free(st->srcs);
  pthread_cond_destroy(&st->cv);
  pthread_mutex_destroy(&st->mu);
  free(st);
  g->be_state = NULL;
}

/* Any group of a world that MPI started. */
static par_status mpi_can_serve(par_group *g) {
  PAR_RETURN_ERROR_IF(!par__mpi_world_of(g->world), PAR_ERR_UNSUPPORTED,
                      "group '%s': backend mpi needs a world started by MPI (mpirun, mpiexec "
                      "or srun, or a program that initialised MPI), but this world's ranks met "
                      "through the rendezvous store (parrun or torchrun): start the program "
                      "with mpirun, or choose backend shm",
                      g->name);
  return PAR_OK;
}

static par_status mpi_init(par_group *g) {
  mpi_world *mw = par__mpi_world_of(g->world);
  PAR_FORWARD_IF_ERROR(par__mpi_thread_ok(g, "creating the group"));
  mpi_state *st = calloc(1, sizeof *st);
  PAR_RETURN_ERROR_IF(!st, PAR_ERR_NOMEM, "mpi: out of memory");
  st->comm = st->ctrl = MPI_COMM_NULL;
  st->notice_rx = MPI_REQUEST_NULL;
  st->n = g->n;
  st->me = g->index;
  pthread_mutex_init(&st->mu, NULL);
  pthread_cond_init(&st->cv, NULL);
  g->be_state = st;
  st->srcs = calloc((size_t)g->n, sizeof(void *));
  if (!st->srcs) {
    mpi_fini(g);
    return par__error(PAR_ERR_NOMEM, "mpi: out of memory");
  }
  /* Tags of concurrent creations must differ (MPI's rule): derive one from the group's uid. */
  uint32_t h = uid_hash(g->uid);
  int tag = TAG_CREATE + (int)(h % 10000u);
  st->tag_base = (int)(h / 10000u % TAG_BASES);
  par_status s = meet(g, mw->comm, tag);
  if (s < 0) {
    mpi_fini(g);
    return s;
  }
  MPI_Group all, sub;
  par__mpi_lock();
  int rc = MPI_Comm_group(mw->comm, &all);
  if (rc == MPI_SUCCESS) {
    rc = MPI_Group_incl(all, g->n, g->ranks, &sub);
    MPI_Group_free(&all);
    if (rc == MPI_SUCCESS) {
      rc = MPI_Comm_create_group(mw->comm, sub, tag, &st->comm);
      MPI_Group_free(&sub);
    }
  }
  if (rc == MPI_SUCCESS) rc = MPI_Comm_set_errhandler(st->comm, MPI_ERRORS_RETURN);
  if (rc == MPI_SUCCESS) rc = MPI_Comm_dup(st->comm, &st->ctrl);
  if (rc == MPI_SUCCESS) rc = MPI_Comm_set_errhandler(st->ctrl, MPI_ERRORS_RETURN);
  if (rc == MPI_SUCCESS)
    rc = MPI_Irecv(&st->notice, 1, MPI_CHAR, MPI_ANY_SOURCE, MPI_ANY_TAG, st->ctrl, &st->notice_rx);
  int me = -1;
  if (rc == MPI_SUCCESS) rc = MPI_Comm_rank(st->comm, &me);
  par__mpi_unlock();
  if (rc != MPI_SUCCESS) {
    s = par__mpi_error(PAR_ERR_SYSTEM, rc, "group '%s': creating its MPI communicator failed",
                       g->name);
    mpi_fini(g);
    return s;
  }
  if (me != g->index) {
    mpi_fini(g);
    return par__error(PAR_ERR_INTERNAL, "group '%s': MPI gave index %d, par %d", g->name, me,
                      g->index);
  }
  return PAR_OK;
}

/* ---------------------------------------------------------------------------------------- */
/* Abort and poke                                                                           */
/* ---------------------------------------------------------------------------------------- */

static void wake(mpi_state *st) {
  pthread_mutex_lock(&st->mu);
  atomic_fetch_add(&st->wakeups, 1);
  pthread_cond_broadcast(&st->cv);
  pthread_mutex_unlock(&st->mu);
}

static void mpi_poke(par_group *g) {
  if (g->be_state) wake(g->be_state);
}

/* Tells the other members what happened here (NOTICE_*), so that they do not wait out their
 * timeouts, nor post ops that would meet this member's abandoned requests on the
 * communicator. Each kind goes out once; an abort after a failure still goes out. */
void par__mpi_notify(par_group *g, int notice) {
  mpi_state *st = g->be_state;
  if (!st) return;
  pthread_mutex_lock(&st->mu);
  int send = st->sent < notice;
  if (send) st->sent = notice;
  pthread_mutex_unlock(&st->mu);
  /* A peer's abort has reached every member already. */
  if (!send || atomic_load(&st->abort_from)) return;
  int is_main = 1;
  if (par__mpi_thread_level() < MPI_THREAD_SERIALIZED) MPI_Is_thread_main(&is_main);
  if (!is_main) {
    PAR__LOG_WARN(
        "group '%s': MPI's thread level (%s) lets only the main thread call MPI, so "
        "the other members are not told that the group %s here",
        g->name, par__mpi_level_name(par__mpi_thread_level()),
        notice == NOTICE_ABORT ? "was aborted" : "failed");
    return;
  }
  /* Static bytes, so the sends may outlive this call. */
  static const char notices[3] = {0, NOTICE_FAILED, NOTICE_ABORT};
  par__mpi_lock();
  for (int j = 0; j < st->n; j++) {
    if (j == st->me) continue;
    MPI_Request r;
    if (MPI_Isend(&notices[notice], 1, MPI_CHAR, j, TAG_NOTICE(st), st->ctrl, &r) == MPI_SUCCESS)
      MPI_Request_free(&r);
  }
  par__mpi_unlock();
}

static void mpi_abort(par_group *g) {
  mpi_state *st = g->be_state;
  if (!st) return;
  atomic_store(&st->tainted, 1);
  wake(st);
  par__mpi_notify(g, NOTICE_ABORT);
}

/* ---------------------------------------------------------------------------------------- */
/* Send and recv                                                                            */
/* ---------------------------------------------------------------------------------------- */

/* A message above PAR__MPI_UNIT bytes goes as whole units plus a tail (MPI counts are ints).
 * A recv is posted once its first message is probed: its size and tag (the dtype) are
 * checked first, so a mismatched send is reported with both sizes instead of truncating. */
typedef struct p2p_be {
  MPI_Request req[2];
  int nreq;
  int posted;
} p2p_be;

_Static_assert(sizeof(p2p_be) <= sizeof(((par__p2p_state *)0)->be),
               "p2p_be must fit par__p2p_state.be");

static p2p_be *be_of(par__p2p_state *ps) { return (p2p_be *)(void *)ps->be; }

/* Bytes of the op's first message: the whole units, or the tail when there are none. */
static size_t first_part(size_t bytes) {
  return bytes >= PAR__MPI_UNIT ? bytes / PAR__MPI_UNIT * PAR__MPI_UNIT : bytes;
}

static par_status post(par_group *g, mpi_state *st, const par__op *op, par__p2p_state *ps,
                       int tag) {
  p2p_be *b = be_of(ps);
  size_t bytes = op->count * par_dtype_size(op->dt);
  size_t units = bytes / PAR__MPI_UNIT, tail = bytes % PAR__MPI_UNIT;
  PAR_RETURN_ERROR_IF(units > INT_MAX, PAR_ERR_COUNT, "%s on group '%s': %zu bytes is too large",
                      par__op_kind_name(op->kind), g->name, bytes);
  int rc = MPI_SUCCESS;
  b->nreq = 0;
  b->req[0] = b->req[1] = MPI_REQUEST_NULL;
  par__mpi_lock();
  if (op->kind == PAR__SEND) {
    const char *p = op->sendbuf;
    if (units)
      rc = MPI_Isend(p, (int)units, par__mpi_unit_type(), op->root, tag, st->comm,
                     &b->req[b->nreq++]);
    if (rc == MPI_SUCCESS && (tail || !units))
      rc = MPI_Isend(p ? p + units * PAR__MPI_UNIT : p, (int)tail, MPI_BYTE, op->root, tag,
                     st->comm, &b->req[b->nreq++]);
  } else {
    char *p = op->recvbuf;
    if (units)
      rc = MPI_Irecv(p, (int)units, par__mpi_unit_type(), op->root, tag, st->comm,
                     &b->req[b->nreq++]);
    if (rc == MPI_SUCCESS && (tail || !units))
      rc = MPI_Irecv(p ? p + units * PAR__MPI_UNIT : p, (int)tail, MPI_BYTE, op->root, tag,
                     st->comm, &b->req[b->nreq++]);
  }
  par__mpi_unlock();
  b->posted = 1;
  if (rc != MPI_SUCCESS)
    return par__mpi_error(PAR_ERR_SYSTEM, rc, "%s on group '%s' (op #%llu): posting failed",
                          par__op_kind_name(op->kind), g->name, (unsigned long long)op->seq);
  return PAR_OK;
}

static par_status mismatch(par_group *g, const par__op *op, long long got, int dt, int partial) {
  char what[96];
  if (got < 0)
    snprintf(what, sizeof what, "more");
  else
    snprintf(what, sizeof what, "%s%lld bytes of %s", partial ? "at least " : "", got,
             dt >= 0 && dt < PAR_DTYPE_COUNT ? par_dtype_name((par_dtype)dt) : "another kind");
  return par__error(PAR_ERR_COUNT,
                    "recv on group '%s' (op #%llu): expected %zu bytes of %s from member %d "
                    "(rank %d), but it sent %s",
                    g->name, (unsigned long long)op->seq, op->count * par_dtype_size(op->dt),
                    par_dtype_name(op->dt), op->root, g->ranks[op->root], what);
}

/* Posts recv i once its message is there and matches. Recvs from one peer go in issue order:
 * one waits while an earlier recv from that peer is unposted. */
static par_status probe_recv(par_group *g, mpi_state *st, par__op *ops, par__p2p_state *ps, int i) {
  const par__op *op = &ops[i];
  for (int k = 0; k < i; k++)
    if (!ps[k].done && ops[k].kind == PAR__RECV && ops[k].root == op->root &&
        !be_of(&ps[k])->posted)
      return PAR_OK;
  int found = 0, got = 0, rc, stale;
  MPI_Status status;
  do {
    par__mpi_lock();
    rc = MPI_Iprobe(op->root, MPI_ANY_TAG, st->comm, &found, &status);
    if (rc == MPI_SUCCESS && found) rc = MPI_Get_count(&status, MPI_BYTE, &got);
    /* A message of an older group on a reused context id: taken (truncated) and dropped. */
    stale = rc == MPI_SUCCESS && found &&
            (status.MPI_TAG < TAG_P2P(st, 0) || status.MPI_TAG >= TAG_P2P(st, 16));
    if (stale) MPI_Recv(NULL, 0, MPI_BYTE, op->root, status.MPI_TAG, st->comm, MPI_STATUS_IGNORE);
    par__mpi_unlock();
  } while (stale);
  if (rc != MPI_SUCCESS)
    return par__mpi_error(PAR_ERR_SYSTEM, rc, "recv on group '%s' (op #%llu)", g->name,
                          (unsigned long long)op->seq);
  if (!found) return PAR_OK;
  size_t bytes = op->count * par_dtype_size(op->dt), want = first_part(bytes);
  int dt = status.MPI_TAG - TAG_P2P(st, 0);
  if (dt != (int)op->dt || got == MPI_UNDEFINED || (size_t)got != want) {
    /* Whole units may be only the first part of the sender's message. */
    int partial =
        got != MPI_UNDEFINED && (size_t)got >= PAR__MPI_UNIT && (size_t)got % PAR__MPI_UNIT == 0;
    return mismatch(g, op, got == MPI_UNDEFINED ? -1 : got, dt, partial);
  }
  return post(g, st, op, &ps[i], status.MPI_TAG);
}

/* Tests the op's requests; sets ps->done when all are complete. */
static par_status test_op(par_group *g, mpi_state *st, par__op *ops, par__p2p_state *ps, int i) {
  const par__op *op = &ops[i];
  p2p_be *b = be_of(&ps[i]);
  if (!b->posted) {
    PAR_FORWARD_IF_ERROR(probe_recv(g, st, ops, ps, i));
    if (!b->posted) return PAR_OK;
  }
  int all = 1;
  for (int k = 0; k < b->nreq; k++) {
    if (b->req[k] == MPI_REQUEST_NULL) continue;
    int done = 0, got = 0;
    MPI_Status status;
    par__mpi_lock();
    int rc = MPI_Test(&b->req[k], &done, &status);
    if (rc == MPI_SUCCESS && done && op->kind == PAR__RECV) MPI_Get_count(&status, MPI_BYTE, &got);
    par__mpi_unlock();
    if (rc != MPI_SUCCESS) {
      int cls = 0;
      MPI_Error_class(rc, &cls);
      if (cls == MPI_ERR_TRUNCATE) return mismatch(g, op, -1, (int)op->dt, 0);
      return par__mpi_error(PAR_ERR_SYSTEM, rc, "%s on group '%s' (op #%llu) failed",
                            par__op_kind_name(op->kind), g->name, (unsigned long long)op->seq);
    }
    if (!done) {
      all = 0;
      continue;
    }
    /* The tail of a message whose first part matched: the sender's total may still differ. */
    size_t bytes = op->count * par_dtype_size(op->dt);
    if (op->kind == PAR__RECV && k == 1 && (size_t)got != bytes % PAR__MPI_UNIT)
      return mismatch(g, op, (long long)(bytes / PAR__MPI_UNIT * PAR__MPI_UNIT) + got, (int)op->dt,
                      0);
  }
  ps[i].done = all;
  return PAR_OK;
}

/* After a failure: receives are cancelled, sends let go; what MPI still holds is parked. */
static void drop_pending(par__op *ops, par__p2p_state *ps, int nops) {
  for (int i = 0; i < nops; i++) {
    if (!ps[i].started || ps[i].done) continue;
    p2p_be *b = be_of(&ps[i]);
    for (int k = 0; k < b->nreq; k++) {
      if (b->req[k] == MPI_REQUEST_NULL) continue;
      if (ops[i].kind == PAR__RECV) {
        par__mpi_lock();
        MPI_Cancel(&b->req[k]);
        par__mpi_unlock();
      }
      par__mpi_park(NULL, &b->req[k]);
    }
  }
}

/* Before posting: a peer may have given the group up already. */
static par_status precheck(par_group *g, const par__op *op) {
  PAR_FORWARD_IF_ERROR(par__mpi_thread_ok(g, par__op_kind_name(op->kind)));
  mpi_waitctx wc = {g,       g->be_state,  par__op_kind_name(op->kind),
                    op->seq, op->deadline, op->timeout_s};
  return par__mpi_interrupted(&wc, 1);
}

/* After a failure other than an abort (peers know of those), the peers are told. A mismatch
 * is no failure of the group: every member found it in the same exchange, still in step. */
static par_status failed(par_group *g, par_status s) {
  if (s == PAR_ERR_MISMATCH) return s;
  if (s < 0) atomic_store(&((mpi_state *)g->be_state)->tainted, 1);
  if (s < 0 && s != PAR_ERR_ABORTED) {
    char detail[PAR__ERRLEN];
    par__error_keep(detail, NULL, s);
    par__mpi_notify(g, NOTICE_FAILED);
    par__error(s, "%s", detail);
  }
  return s;
}

static par_status mpi_p2p(par_group *g, par__op *ops, par__p2p_state *ps, int nops,
                          _Atomic int *poke) {
  mpi_state *st = g->be_state;
  PAR_FORWARD_IF_ERROR(precheck(g, &ops[0]));
  par_status s = PAR_OK;
  for (int i = 0; i < nops && s >= 0; i++) {
    if (ps[i].started || ps[i].done) continue;
    ps[i].started = 1;
    if (ops[i].kind == PAR__SEND) s = post(g, st, &ops[i], &ps[i], TAG_P2P(st, ops[i].dt));
  }
  unsigned round = 0;
  while (s >= 0) {
    unsigned seen = atomic_load(&st->wakeups);
    int finished = 0, pending = -1;
    for (int i = 0; i < nops && s >= 0; i++) {
      if (ps[i].done) continue;
      s = test_op(g, st, ops, ps, i);
      if (ps[i].done)
        finished = 1;
      else if (pending < 0 || ops[i].deadline < ops[pending].deadline)
        pending = i;
    }
    if (s < 0) break;
    if (finished || pending < 0) return PAR_OK;
    if (poke && atomic_load(poke)) return PAR_OK;
    char what[64];
    const par__op *op = &ops[pending];
    snprintf(what, sizeof what, "%s %s member %d (rank %d)", par__op_kind_name(op->kind),
             op->kind == PAR__SEND ? "to" : "from", op->root, g->ranks[op->root]);
    mpi_waitctx wc = {g, st, what, op->seq, op->deadline, op->timeout_s};
    s = par__mpi_interrupted(&wc, 0);
    if (s < 0) break;
    par__mpi_backoff(g, &round, seen);
  }
  drop_pending(ops, ps, nops);
  return failed(g, s);
}

/* ---------------------------------------------------------------------------------------- */
/* Collectives                                                                              */
/* ---------------------------------------------------------------------------------------- */

static par_status mpi_run(par_group *g, par__op *op) {
  PAR_FORWARD_IF_ERROR(precheck(g, op));
  return failed(g, par__mpi_collective(g, g->be_state, op));
}

static par_status mpi_barrier(par_group *g, par__op *op) {
  PAR_FORWARD_IF_ERROR(precheck(g, op));
  return failed(g, par__mpi_barrier(g, g->be_state, op));
}

/* The member whose abort notice came. */
static int mpi_aborted_by(par_group *g) {
  mpi_state *st = g->be_state;
  return st ? atomic_load(&st->abort_from) - 1 : -1;
}

const par__backend par__mpi_backend = {
    .name = "mpi",
    .id = PAR_BACKEND_MPI,
    .ops = PAR__OPS_ALL,
    .runtime = &par__mpi_runtime,
    .can_serve = mpi_can_serve,
    .group_init = mpi_init,
    .group_fini = mpi_fini,
    .run = mpi_run,
    .barrier = mpi_barrier,
    .p2p = mpi_p2p,
    .poke = mpi_poke,
    .abort = mpi_abort,
    .aborted_by = mpi_aborted_by,
};
