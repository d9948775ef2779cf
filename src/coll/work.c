/*
 * work.c -- issue order and async work. Ops on a group run one at a time in the order they
 * were issued. A blocking op runs inline in the caller's thread when nothing is queued (the
 * fast path: no thread hop, no allocation); otherwise ops go through a FIFO drained by one
 * worker thread per group, started on the first async op. A run of consecutive send/recv ops
 * at the head of the queue is handed to the backend together so they progress at once.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "coll/group.h"

#define MAX_P2P_BATCH 64

/* The status an op gets without running -- the group was aborted (here or by a member) or
 * is broken -- or PAR_OK when the group can run it. */
static par_status refuse(par_group *g, const par__op *op) {
  const char *what = par__op_kind_name(op->kind);
  PAR_FORWARD_IF_ERROR(par__op_check_abort(g, what, op->seq));
  int broken = atomic_load(&g->broken);
  if (broken)
    return par__error(PAR_ERR_STATE,
                      "%s on group '%s': the group is broken by an earlier error (%s: %s); "
                      "destroy it",
                      what, g->name, par_status_name((par_status)broken), g->broken_detail);
  PAR_RETURN_ERROR_IF(!(g->be->ops & PAR__OP_BIT(op->kind)), PAR_ERR_UNSUPPORTED,
                      "%s on group '%s': backend %s does not do this op", what, g->name,
                      g->be->name);
  return PAR_OK;
}

/* A failed transfer leaves the members out of step: the group cannot be trusted after it.
 * A mismatch does not: every member found it in the same round, before any data moved. The
 * flight recorder goes to the log when the failure is one a user must trace across ranks. */
static void note_failure(par_group *g, par_status st) {
  if (st < 0) par__flight_report(g, st, par__error_detail());
  if (st < 0 && st != PAR_ERR_MISMATCH && !atomic_load(&g->broken)) {
    par__error_keep(g->broken_detail, NULL, st); /* published by `broken` below */
    atomic_store(&g->broken, (int)st);
  }
}

/* Records an op's outcome (after its continuation, if any). */
static void settle(par_work *w, par_status st) {
  if (w->flight_pos) par__flight_end(&w->g->flight, w->flight_pos - 1, st);
  if (st >= 0 && w->then) st = w->then(w->then_ctx);
  w->status = st;
  /* Written before the work is marked done, which publishes it. */
  if (par__error_keep(w->error, NULL, st) >= 0) w->error[0] = '\0';
}

static void start_op(par_work *w) {
  w->op.deadline = par__now_coarse() + w->op.timeout_s;
  w->flight_pos = par__flight_start(&w->g->flight, &w->op) + 1;
}

/* Numbers an op, under the queue's lock, in issue order: collectives on the group, which
 * every member issues alike, send/recv on their pair and direction, which only the two ends
 * issue -- so point-to-point traffic never shifts what collectives compare or wait on. */
static void number(par_group *g, par__op *op) {
  if (par__op_is_p2p(op->kind))
    op->seq = ++g->p2p_seq[2 * op->root + (op->kind == PAR__RECV)];
  else
    op->seq = ++g->seq;
}

/* Runs a collective in the calling thread, with g->running set. An op that moves nothing
 * (a barrier, a count of 0) is the members' agreement alone. */
static void execute(par_group *g, par_work *w) {
  par__error_clear();
  par_status st = refuse(g, &w->op);
  if (st == PAR_OK) {
    start_op(w);
    if (w->op.kind == PAR__BARRIER || w->op.count == 0)
      st = g->be->barrier(g, &w->op);
    else
      st = g->be->run(g, &w->op);
  }
  settle(w, st); /* records the outcome in the flight recorder before a failure reports it */
  if (w->flight_pos) note_failure(g, st);
}

static void mark_done(par_group *g, par_work **ws, int n) {
  pthread_mutex_lock(&g->mu);
  g->running = PAR__RUNNING_NONE;
  for (int i = 0; i < n; i++) atomic_store_explicit(&ws[i]->done, 1, memory_order_release);
  pthread_cond_broadcast(&g->cv);
  pthread_mutex_unlock(&g->mu);
}

/* Moves consecutive send/recv ops from the head of the queue into the batch. Called with
 * g->mu held. */
static void absorb_p2p(par_group *g, par_work **ws, par__op *ops, par__p2p_state *ps, int *n) {
  while (g->head && *n < MAX_P2P_BATCH && par__op_is_p2p(g->head->op.kind)) {
    par_work *w = g->head;
    g->head = w->next;
    start_op(w);
    ws[*n] = w;
    ops[*n] = w->op;
    memset(&ps[*n], 0, sizeof ps[*n]);
    (*n)++;
  }
  if (!g->head) g->tail = NULL;
}

/*
 * Runs send/recv ops together: the batch starts with the ops in `ws` and takes in further
 * send/recv ops queued behind it while it runs, so that a recv posted just before its matching
 * send still progresses with it (`absorb`: the worker runs it; while it does, enqueue pokes
 * it). Ops finish as they complete. Called with g->mu held and g->running set; returns with
 * g->mu held and g->running cleared.
 */
static void execute_p2p(par_group *g, par_work **ws, int n, int absorb) {
  par__op ops[MAX_P2P_BATCH];
  par__p2p_state ps[MAX_P2P_BATCH];
  for (int i = 0; i < n; i++) {
    start_op(ws[i]);
    ops[i] = ws[i]->op;
    memset(&ps[i], 0, sizeof ps[i]);
  }
  if (absorb) {
    absorb_p2p(g, ws, ops, ps, &n);
    g->running = PAR__RUNNING_P2P;
  }
  while (n > 0) {
    atomic_store(&g->poke, 0);
    pthread_mutex_unlock(&g->mu);
    par__error_clear();
    par_status st = refuse(g, &ops[0]);
    if (st == PAR_OK) {
      st = g->be->p2p(g, ops, ps, n, absorb ? &g->poke : NULL);
      note_failure(g, st);
    }
    for (int i = 0; i < n; i++)
      if (st < 0 || ps[i].done) settle(ws[i], st < 0 ? st : PAR_OK);
    pthread_mutex_lock(&g->mu);
    int k = 0;
    for (int i = 0; i < n; i++) {
      if (st < 0 || ps[i].done) {
        atomic_store_explicit(&ws[i]->done, 1, memory_order_release);
        continue;
      }
      ws[k] = ws[i];
      ops[k] = ops[i];
      ps[k] = ps[i];
      k++;
    }
    n = k;
    pthread_cond_broadcast(&g->cv);
    if (absorb) absorb_p2p(g, ws, ops, ps, &n);
  }
  g->running = PAR__RUNNING_NONE;
  pthread_cond_broadcast(&g->cv);
}

static void *worker_main(void *arg) {
  par_group *g = arg;
  par_work *batch[MAX_P2P_BATCH];

  pthread_mutex_lock(&g->mu);
  for (;;) {
    if (!g->head || g->running) {
      if (g->stopping && !g->head) break;
      pthread_cond_wait(&g->cv, &g->mu);
      continue;
    }
    par_work *w = g->head;
    g->running = PAR__RUNNING_ONE;
    if (par__op_is_p2p(w->op.kind)) {
      execute_p2p(g, batch, 0, 1);
      continue;
    }
    g->head = w->next;
    if (!g->head) g->tail = NULL;
    pthread_mutex_unlock(&g->mu);
    execute(g, w);
    mark_done(g, &w, 1);
    pthread_mutex_lock(&g->mu);
  }
  pthread_mutex_unlock(&g->mu);
  return NULL;
}

/* Called with g->mu held. */
static par_status ensure_worker(par_group *g) {
  if (g->has_worker) return PAR_OK;
  int rc = pthread_create(&g->worker, NULL, worker_main, g);
  PAR_RETURN_ERROR_IF(rc != 0, PAR_ERR_SYSTEM, "group '%s': cannot start its worker thread: %s",
                      g->name, strerror(rc));
  g->has_worker = 1;
  return PAR_OK;
}

/* Called with g->mu held; returns 1 when the caller must poke the backend after unlocking. */
static int enqueue(par_group *g, par_work *w) {
  number(g, &w->op);
  w->next = NULL;
  if (g->tail)
    g->tail->next = w;
  else
    g->head = w;
  g->tail = w;
  pthread_cond_broadcast(&g->cv);
  if (g->running == PAR__RUNNING_P2P && par__op_is_p2p(w->op.kind) && g->head == w) {
    atomic_store(&g->poke, 1);
    return 1;
  }
  return 0;
}

static void work_init(par_work *w, par_group *g, const par__op *op) {
  /* Field by field: the error buffer is large and written only when the op fails. */
  w->g = g;
  w->op = *op;
  atomic_init(&w->done, 0);
  w->status = PAR_OK;
  w->error[0] = '\0';
  w->next = NULL;
  w->then = NULL;
  w->then_ctx = NULL;
  w->then_free = NULL;
  w->flight_pos = 0;
  if (w->op.timeout_s <= 0) w->op.timeout_s = g->timeout_s;
}

static par_status submit_async(par_group *g, par_work *w, par_work **out) {
  pthread_mutex_lock(&g->mu);
  par_status st = ensure_worker(g);
  if (st < 0) {
    pthread_mutex_unlock(&g->mu);
    free(w);
    return st;
  }
  int poke = enqueue(g, w);
  pthread_mutex_unlock(&g->mu);
  if (poke && g->be->poke) g->be->poke(g);
  *out = w;
  return PAR_OK;
}

par_status par__submit_then(par_group *g, const par__op *op, par__then_fn then, void *ctx,
                            void (*then_free)(void *), par_work **out) {
  par_work *w = malloc(sizeof *w);
  PAR_RETURN_ERROR_IF(!w, PAR_ERR_NOMEM, "cannot allocate a work handle");
  pthread_mutex_lock(&g->mu);
  work_init(w, g, op);
  pthread_mutex_unlock(&g->mu);
  w->then = then;
  w->then_ctx = ctx;
  w->then_free = then_free;
  return submit_async(g, w, out);
}

par_status par__submit(par_group *g, const par__op *op, par_work **out) {
  if (out) return par__submit_then(g, op, NULL, NULL, NULL, out);

  /* Blocking: the work lives on this stack frame. */
  par_work w;
  pthread_mutex_lock(&g->mu);
  work_init(&w, g, op);
  if (!g->running && !g->head) {
    g->running = PAR__RUNNING_ONE;
    number(g, &w.op);
    par_work *one = &w;
    if (par__op_is_p2p(w.op.kind)) {
      execute_p2p(g, &one, 1, 0);
      pthread_mutex_unlock(&g->mu);
    } else {
      pthread_mutex_unlock(&g->mu);
      execute(g, one);
      mark_done(g, &one, 1);
    }
  } else {
    par_status st = ensure_worker(g);
    if (st < 0) {
      pthread_mutex_unlock(&g->mu);
      return st;
    }
    int poke = enqueue(g, &w);
    if (poke && g->be->poke) {
      pthread_mutex_unlock(&g->mu);
      g->be->poke(g);
      pthread_mutex_lock(&g->mu);
    }
    while (!atomic_load(&w.done)) pthread_cond_wait(&g->cv, &g->mu);
    pthread_mutex_unlock(&g->mu);
  }
  if (w.status < 0) par__error(w.status, "%s", w.error);
  return w.status;
}

void par__work_shutdown(par_group *g) {
  pthread_mutex_lock(&g->mu);
  g->stopping = 1;
  pthread_cond_broadcast(&g->cv);
  int has = g->has_worker;
  pthread_mutex_unlock(&g->mu);
  if (has) pthread_join(g->worker, NULL);
  g->has_worker = 0;
  /* A blocking op of another thread may still be running inline. */
  pthread_mutex_lock(&g->mu);
  while (g->running) pthread_cond_wait(&g->cv, &g->mu);
  pthread_mutex_unlock(&g->mu);
}

int par__work_in_worker(par_group *g) {
  pthread_mutex_lock(&g->mu);
  int in = g->has_worker && pthread_equal(pthread_self(), g->worker);
  pthread_mutex_unlock(&g->mu);
  return in;
}

/* ---------------------------------------------------------------------------------------- */
/* Public work API                                                                          */
/* ---------------------------------------------------------------------------------------- */

par_status par_work_test(par_work *w) {
  if (!w) return par__error(PAR_ERR_NULL, "par_work_test: work is NULL");
  if (!atomic_load_explicit(&w->done, memory_order_acquire)) return PAR_IN_PROGRESS;
  return w->status;
}

par_status par_work_wait(par_work *w, double timeout_s) {
  if (!w) return par__error(PAR_ERR_NULL, "par_work_wait: work is NULL");
  if (atomic_load_explicit(&w->done, memory_order_acquire)) return w->status;

  par_group *g = w->g;
  /* The op enforces its own deadline; a wait without a bound of its own still gives up a
   * little after the op's timeout could have run out, so it cannot hang. */
  double limit = timeout_s >= 0 ? timeout_s : w->op.timeout_s * 2 + 5;
  pthread_mutex_lock(&g->mu);
  if (!(limit < 1e8)) {
    /* Beyond three years (or infinite, or NaN): no deadline of our own; the op's ends it. */
    while (!atomic_load(&w->done)) pthread_cond_wait(&g->cv, &g->mu);
  } else {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    long long ns = (long long)ts.tv_nsec + (long long)((limit - (double)(long long)limit) * 1e9);
    ts.tv_sec += (time_t)limit + (time_t)(ns / 1000000000);
    ts.tv_nsec = (long)(ns % 1000000000);
    int rc = 0;
    while (!atomic_load(&w->done) && rc == 0) rc = pthread_cond_timedwait(&g->cv, &g->mu, &ts);
  }
  pthread_mutex_unlock(&g->mu);
  if (!atomic_load_explicit(&w->done, memory_order_acquire))
    return par__error(PAR_ERR_TIMEOUT, "%s on group '%s' (op #%llu) not complete after %.3g s",
                      par__op_kind_name(w->op.kind), g->name, (unsigned long long)w->op.seq,
                      limit);
  if (w->status < 0) par__error(w->status, "%s", w->error);
  return w->status;
}

const char *par_work_error(const par_work *w) { return w ? w->error : ""; }

void par_work_free(par_work *w) {
  if (!w) return;
  while (!atomic_load_explicit(&w->done, memory_order_acquire)) par_work_wait(w, 1.0);
  if (w->then_free) w->then_free(w->then_ctx);
  free(w);
}
