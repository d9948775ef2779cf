/*
 * mpi_runtime.c -- MPI as a process-wide resource. par initialises MPI only when the program
 * has not (asking for MPI_THREAD_MULTIPLE, since async ops run in a worker thread per group)
 * and then finalises it when its last world is destroyed; a program that initialised MPI
 * itself keeps it: par never finalises it. Below MPI_THREAD_MULTIPLE, par's own MPI calls
 * are serialised by one lock, held only around calls that return at once, so that
 * MPI_THREAD_SERIALIZED is enough for par; which threads may call MPI at a lower level is
 * checked per op (par__mpi_thread_ok) with an error that says what to change.
 *
 * Requests abandoned by a failed op (MPI cannot cancel collectives) are parked here with the
 * staging memory they may still write, until they complete or MPI is finalised.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backends/mpi/mpi_backend.h"

typedef struct parked {
  void *buf;
  MPI_Request req; /* MPI_REQUEST_NULL: kept until MPI is finalised */
  struct parked *next;
} parked;

static pthread_mutex_t rt_mu = PTHREAD_MUTEX_INITIALIZER; /* guards the state below */
static int users;                                         /* worlds that use MPI */
static int owned;                                         /* par called MPI_Init_thread */
static int level = -1;                                    /* the thread level MPI provides */
static int serialise; /* level < MPI_THREAD_MULTIPLE: par's calls take call_mu */
static MPI_Datatype unit = MPI_DATATYPE_NULL;
static parked *graveyard; /* reachable from here, so leak checkers do not count it */
static MPI_Comm *retired; /* communicators kept until MPI is finalised */
static size_t nretired, capretired;

static pthread_mutex_t call_mu = PTHREAD_MUTEX_INITIALIZER;

const char *par__mpi_level_name(int lv) {
  switch (lv) {
    case MPI_THREAD_SINGLE:
      return "MPI_THREAD_SINGLE";
    case MPI_THREAD_FUNNELED:
      return "MPI_THREAD_FUNNELED";
    case MPI_THREAD_SERIALIZED:
      return "MPI_THREAD_SERIALIZED";
    case MPI_THREAD_MULTIPLE:
      return "MPI_THREAD_MULTIPLE";
    default:
      return "an unknown MPI thread level";
  }
}

par_status par__mpi_error(par_status s, int code, const char *fmt, ...) {
  char ctx[PAR__ERRLEN], msg[MPI_MAX_ERROR_STRING] = "";
  int len = 0;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(ctx, sizeof ctx, fmt, ap);
  va_end(ap);
  if (MPI_Error_string(code, msg, &len) != MPI_SUCCESS) snprintf(msg, sizeof msg, "code %d", code);
  return par__error(s, "%s: %s", ctx, msg);
}

par_status par__mpi_acquire(void) {
  pthread_mutex_lock(&rt_mu);
  par_status s = PAR_OK;
  if (users == 0) {
    int init = 0, fin = 0;
    MPI_Initialized(&init);
    MPI_Finalized(&fin);
    if (fin) {
      s = par__error(PAR_ERR_BOOTSTRAP,
                     "MPI was already finalised in this process, and MPI can be initialised "
                     "only once: to create worlds again after destroying the last one, "
                     "initialise MPI in the program (MPI_Init_thread) and finalise it at the end");
      goto out;
    }
    int provided = MPI_THREAD_SINGLE;
    if (init) {
      MPI_Query_thread(&provided);
      owned = 0;
    } else {
      int rc = MPI_Init_thread(NULL, NULL, MPI_THREAD_MULTIPLE, &provided);
      if (rc != MPI_SUCCESS) {
        s = par__mpi_error(PAR_ERR_BOOTSTRAP, rc, "MPI_Init_thread failed");
        goto out;
      }
      owned = 1;
    }
    level = provided;
    serialise = provided < MPI_THREAD_MULTIPLE;
    if (unit == MPI_DATATYPE_NULL) {
      MPI_Type_contiguous((int)PAR__MPI_UNIT, MPI_BYTE, &unit);
      MPI_Type_commit(&unit);
    }
    if (provided < MPI_THREAD_MULTIPLE)
      PAR__LOG_DEBUG("mpi: MPI provides %s; par serialises its MPI calls",
                     par__mpi_level_name(provided));
  }
  users++;
out:
  pthread_mutex_unlock(&rt_mu);
  return s;
}

void par__mpi_release(void) {
  pthread_mutex_lock(&rt_mu);
  if (users > 0 && --users == 0) {
    int fin = 0;
    MPI_Finalized(&fin);
    if (!fin) MPI_Type_free(&unit);
    unit = MPI_DATATYPE_NULL;
    if (owned && !fin) {
      MPI_Finalize();
      free(retired);
      retired = NULL;
      nretired = capretired = 0;
      /* Nothing can use parked memory once MPI is gone. */
      while (graveyard) {
        parked *p = graveyard;
        graveyard = p->next;
        free(p->buf);
        free(p);
      }
    }
    owned = 0;
  }
  pthread_mutex_unlock(&rt_mu);
}

int par__mpi_thread_level(void) { return level; }
int par__mpi_owned(void) { return owned; }

void par__mpi_lock(void) {
  if (serialise) pthread_mutex_lock(&call_mu);
}

void par__mpi_unlock(void) {
  if (serialise) pthread_mutex_unlock(&call_mu);
}

MPI_Datatype par__mpi_unit_type(void) { return unit; }

void par__mpi_park(void *buf, MPI_Request *req) {
  parked *p = malloc(sizeof *p);
  pthread_mutex_lock(&rt_mu);
  /* Free what earlier failures left once their requests are done, so memory stays bounded. */
  par__mpi_lock();
  for (parked **pp = &graveyard; *pp;) {
    int done = 0;
    if ((*pp)->req != MPI_REQUEST_NULL &&
        MPI_Test(&(*pp)->req, &done, MPI_STATUS_IGNORE) != MPI_SUCCESS)
      done = 0;
    if (done) {
      parked *d = *pp;
      *pp = d->next;
      free(d->buf);
      free(d);
    } else {
      pp = &(*pp)->next;
    }
  }
  par__mpi_unlock();
  if (p) {
    p->buf = buf;
    p->req = *req;
    p->next = graveyard;
    graveyard = p;
  }
  /* Without memory for the record, the buffer must leak rather than be freed under MPI. */
  *req = MPI_REQUEST_NULL;
  pthread_mutex_unlock(&rt_mu);
}

void par__mpi_retire(MPI_Comm *comm) {
  if (*comm == MPI_COMM_NULL) return;
  pthread_mutex_lock(&rt_mu);
  if (nretired == capretired) {
    size_t cap = capretired ? capretired * 2 : 16;
    MPI_Comm *c = realloc(retired, cap * sizeof *c);
    if (c) {
      retired = c;
      capretired = cap;
    }
  }
  /* Without room to keep it, the handle is dropped: the communicator stays allocated. */
  if (nretired < capretired) retired[nretired++] = *comm;
  *comm = MPI_COMM_NULL;
  pthread_mutex_unlock(&rt_mu);
}
