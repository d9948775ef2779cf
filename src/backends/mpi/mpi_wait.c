/*
 * mpi_wait.c -- how the MPI backend waits. A request is tested, never waited on (MPI_Wait
 * cannot time out or be interrupted), and between tests the thread spins briefly while the
 * host has a core per rank, else yields and then sleeps on the group's condition variable, a
 * little longer each round (at most 1 ms), so that 8 ranks on 2 cores still progress. A poke
 * (new send/recv ops queued) or an abort wakes the sleeper at once. Each round also looks
 * for an abort, local or from a peer, and for the deadline.
 *
 * Also here: the staging memory of collectives, and the check of which threads may call MPI
 * at the thread level MPI provides.
 */
#include <errno.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "backends/mpi/mpi_backend.h"

#define SLEEP_MIN_S 20e-6
#define SLEEP_MAX_S 1e-3

char *par__mpi_stage(mpi_state *st, size_t bytes) {
  if (bytes <= st->stage_cap && st->stage) return st->stage;
  /* Grow only: a fresh buffer costs page faults, so the largest one is kept. */
  free(st->stage);
  st->stage_cap = 0;
  st->stage = malloc(bytes ? bytes : 1);
  if (!st->stage) {
    par__error(PAR_ERR_NOMEM, "mpi: cannot allocate %zu bytes of staging memory", bytes);
    return NULL;
  }
  st->stage_cap = bytes;
  return st->stage;
}

/* Takes in the notices that have arrived; the receive is re-posted after a failure notice,
 * so that a later abort still gets through. */
static void take_notices(par_group *g, mpi_state *st) {
  par__mpi_lock();
  while (st->notice_rx != MPI_REQUEST_NULL) {
    int done = 0;
    MPI_Status status;
    if (MPI_Test(&st->notice_rx, &done, &status) != MPI_SUCCESS || !done) break;
    int from = status.MPI_SOURCE + 1;
    if (status.MPI_TAG != TAG_NOTICE(st)) {
      /* A late notice for an older group whose context id this communicator reuses. */
      from = 0;
    } else if (st->notice == NOTICE_ABORT) {
      atomic_store(&st->abort_from, from);
      atomic_store(&st->tainted, 1);
      /* Aborted here too, so that later ops fail the same way on every member. */
      atomic_store(&g->aborted, 1);
      break;
    }
    if (from) atomic_store(&st->tainted, 1);
    if (from && !atomic_load(&st->failed_from)) atomic_store(&st->failed_from, from);
    if (MPI_Irecv(&st->notice, 1, MPI_CHAR, MPI_ANY_SOURCE, MPI_ANY_TAG, st->ctrl,
                  &st->notice_rx) != MPI_SUCCESS)
      st->notice_rx = MPI_REQUEST_NULL;
  }
  par__mpi_unlock();
}

par_status par__mpi_interrupted(const mpi_waitctx *wc, int starting) {
  par_group *g = wc->g;
  mpi_state *st = wc->st;
  if (!atomic_load(&st->abort_from) && st->notice_rx != MPI_REQUEST_NULL) take_notices(g, st);
  PAR_FORWARD_IF_ERROR(par__op_check_abort(g, wc->what, wc->seq));
  int from = atomic_load(&st->failed_from);
  if (starting && from) return par__op_peer_failed(g, wc->what, wc->seq, from - 1);
  if (par__now() >= wc->deadline)
    return par__op_timed_out(g, wc->what, wc->seq, wc->timeout_s, -1, NULL);
  return PAR_OK;
}

void par__mpi_backoff(par_group *g, unsigned *round, unsigned seen) {
  if (par__wait_step(&g->wait, round)) return;
  mpi_state *st = g->be_state;
  unsigned r = *round - 1 - g->wait.spin - g->wait.yields;
  double s = SLEEP_MIN_S * (double)(1u << (r < 6 ? r : 6));
  if (s > SLEEP_MAX_S) s = SLEEP_MAX_S;
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  long ns = ts.tv_nsec + (long)(s * 1e9);
  ts.tv_sec += ns / 1000000000L;
  ts.tv_nsec = ns % 1000000000L;
  pthread_mutex_lock(&st->mu);
  int rc = 0;
  while (atomic_load(&st->wakeups) == seen && rc != ETIMEDOUT)
    rc = pthread_cond_timedwait(&st->cv, &st->mu, &ts);
  pthread_mutex_unlock(&st->mu);
}

par_status par__mpi_wait(const mpi_waitctx *wc, MPI_Request *req, MPI_Status *status) {
  unsigned round = 0;
  for (;;) {
    unsigned seen = atomic_load(&wc->st->wakeups);
    int done = 0;
    par__mpi_lock();
    int rc = MPI_Test(req, &done, status);
    par__mpi_unlock();
    if (rc != MPI_SUCCESS) {
      par__mpi_park(NULL, req);
      atomic_store(&wc->st->tainted, 1);
      return par__mpi_error(PAR_ERR_SYSTEM, rc, "%s on group '%s' (op #%llu): MPI failed", wc->what,
                            wc->g->name, (unsigned long long)wc->seq);
    }
    if (done) return PAR_OK;
    par_status s = par__mpi_interrupted(wc, 0);
    if (s < 0) {
      /* MPI may still write the staging memory: it goes with the request. */
      par__mpi_park(wc->st->stage, req);
      atomic_store(&wc->st->tainted, 1);
      wc->st->stage = NULL;
      wc->st->stage_cap = 0;
      return s;
    }
    par__mpi_backoff(wc->g, &round, seen);
  }
}

par_status par__mpi_thread_ok(par_group *g, const char *what) {
  int lv = par__mpi_thread_level();
  if (lv >= MPI_THREAD_MULTIPLE) return PAR_OK;
  int in_worker = par__work_in_worker(g);
  if (lv == MPI_THREAD_SERIALIZED) {
    /* par serialises its own calls; but its worker thread may overlap the program's calls,
     * unless the program leaves MPI to par. */
    if (!in_worker || par__mpi_owned()) return PAR_OK;
    return par__error(PAR_ERR_UNSUPPORTED,
                      "%s on group '%s' runs in par's worker thread (an async op, or an op "
                      "queued behind one), which may overlap the program's own MPI calls, but "
                      "the program initialised MPI with MPI_THREAD_SERIALIZED: async ops on an "
                      "mpi group need MPI_THREAD_MULTIPLE (call MPI_Init_thread with "
                      "MPI_THREAD_MULTIPLE, or let par initialise MPI)",
                      what, g->name);
  }
  int is_main = 0;
  MPI_Is_thread_main(&is_main);
  if (is_main) return PAR_OK;
  return par__error(PAR_ERR_UNSUPPORTED,
                    "%s on group '%s' runs in %s, but MPI provides only %s, under which only "
                    "the thread that initialised MPI may call it: async ops on an mpi group "
                    "need MPI_THREAD_MULTIPLE (or MPI_THREAD_SERIALIZED when par initialises "
                    "MPI)%s",
                    what, g->name,
                    in_worker ? "par's worker thread (an async op, or an op queued behind one)"
                              : "a thread other than the one that initialised MPI",
                    par__mpi_level_name(lv),
                    par__mpi_owned() ? "; this MPI library gives no more" : "");
}
