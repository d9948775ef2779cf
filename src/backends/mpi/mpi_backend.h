/*
 * mpi_backend.h -- the MPI backend's shared pieces: the process-wide MPI runtime (who
 * initialised MPI, the thread level it gives, the lock that serialises par's MPI calls when
 * that level is below MPI_THREAD_MULTIPLE), the world that MPI started, the per-group state,
 * and the wait loop every transfer polls through.
 *
 * MPI's blocking calls cannot time out or be interrupted, so every transfer is a nonblocking
 * MPI call whose request is tested until it completes, the op's deadline passes, or the group
 * is aborted (here, or by a peer through the group's control communicator). Collectives move
 * data through staging buffers owned by the group: an op that fails leaves its request behind
 * (MPI cannot cancel a collective), and the staging memory it may still touch is parked
 * until MPI is finalised, never the caller's buffers.
 */
#ifndef PAR_MPI_BACKEND_H
#define PAR_MPI_BACKEND_H

#include <mpi.h>
#include <pthread.h>
#include <stdatomic.h>

#include "coll/group.h"

/* ---------------------------------------------------------------------------------------- */
/* The process-wide runtime (mpi_runtime.c)                                                 */
/* ---------------------------------------------------------------------------------------- */

/* Initialises MPI (asking for MPI_THREAD_MULTIPLE) unless the program already has, and counts
 * one more user. PAR_ERR_BOOTSTRAP when MPI was finalised already. */
par_status par__mpi_acquire(void);
/* One user fewer; the last one finalises MPI if par initialised it (never otherwise). */
void par__mpi_release(void);
/* The thread level MPI provides, and whether par (rather than the program) initialised MPI. */
int par__mpi_thread_level(void);
int par__mpi_owned(void);
const char *par__mpi_level_name(int level);
/* Serialise par's MPI calls when the thread level is below MPI_THREAD_MULTIPLE; no-ops
 * otherwise. Held only around calls that return at once (and group creation). */
void par__mpi_lock(void);
void par__mpi_unlock(void);
/* Records an MPI error code as a par error: "<context>: <MPI's message>". */
par_status par__mpi_error(par_status s, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Keeps `buf` (may be NULL) alive while the abandoned request `*req` may still use it: until
 * the request completes or MPI is finalised (always the latter when *req is MPI_REQUEST_NULL,
 * for memory that several abandoned requests share). Takes ownership of both. */
void par__mpi_park(void *buf, MPI_Request *req);
/* Keeps a communicator that may still carry abandoned traffic until MPI is finalised: freed,
 * its context id could be reused by a new communicator that the old traffic would reach. */
void par__mpi_retire(MPI_Comm *comm);
/* A committed MPI type of PAR__MPI_UNIT bytes, for messages above 2 GiB. */
MPI_Datatype par__mpi_unit_type(void);
#define PAR__MPI_UNIT (1u << 20)

/* ---------------------------------------------------------------------------------------- */
/* The world MPI started (mpi_world.c)                                                      */
/* ---------------------------------------------------------------------------------------- */

typedef struct mpi_world {
  MPI_Comm comm; /* par's duplicate of MPI_COMM_WORLD: its errors return, its tags are par's */
} mpi_world;

/* The world's MPI state, or NULL when the world was not started by MPI. */
mpi_world *par__mpi_world_of(par_world *w);

/* ---------------------------------------------------------------------------------------- */
/* Groups (mpi_group.c) and collectives (mpi_coll.c)                                        */
/* ---------------------------------------------------------------------------------------- */

typedef struct mpi_state {
  MPI_Comm comm; /* collectives and send/recv */
  MPI_Comm ctrl; /* abort notices only, so they never mix with data */
  int n, me;
  int tag_base;        /* from the group's uid: a message of an older group is told apart */
  _Atomic int tainted; /* an op failed or was abandoned here, or a peer's notice came */

  MPI_Request notice_rx; /* a pre-posted receive of any member's notice */
  char notice;
  _Atomic int abort_from;  /* member whose abort notice arrived, + 1; 0 while none */
  _Atomic int failed_from; /* member whose failure notice arrived, + 1; 0 while none */
  int sent;                /* the strongest notice sent (NOTICE_*); guarded by mu */

  pthread_mutex_t mu; /* guards the sleep below and abort_sent */
  pthread_cond_t cv;  /* signalled by poke and abort */
  _Atomic unsigned wakeups;

  char *stage; /* staging memory of the running collective; grows, reused across ops */
  size_t stage_cap;
  const void **srcs; /* n pointers, scratch for reductions */
} mpi_state;

/* What a wait is for, to name it in messages. */
typedef struct mpi_waitctx {
  par_group *g;
  mpi_state *st;
  const char *what;
  uint64_t seq;
  double deadline;
  double timeout_s; /* the op's, for messages */
} mpi_waitctx;

/* Staging memory of at least `bytes` for the current op; NULL (with a par error) on failure. */
char *par__mpi_stage(mpi_state *st, size_t bytes);
/* Waits until the request completes (status may be MPI_STATUS_IGNORE). On timeout or abort,
 * parks the request with the staging memory and returns the error. */
par_status par__mpi_wait(const mpi_waitctx *wc, MPI_Request *req, MPI_Status *status);
/* Notices on a group's control communicator: a member aborted the group (pending ops of
 * every member fail), or a member's op failed (later ops of every member are refused, while
 * pending ones end as they would: a member that waits for the failed one times out). */
#define NOTICE_FAILED 1
#define NOTICE_ABORT 2
/* Tags: a notice's is its group's, so that a late notice for a destroyed group that reaches a
 * new communicator (Open MPI reuses context ids) is recognised and dropped. */
#define TAG_NOTICE(st) (1 + (st)->tag_base)
#define TAG_P2P(st, dt) (2048 + (st)->tag_base * 16 + (int)(dt))
#define TAG_BASES 1024
/* One round of the wait loop's checks: PAR_ERR_ABORTED when the group was aborted here or by
 * a peer (or, with `starting`, a peer's op on it failed), PAR_ERR_TIMEOUT once the deadline
 * has passed, else PAR_OK. */
par_status par__mpi_interrupted(const mpi_waitctx *wc, int starting);
/* Waits a step by the group's policy (spin, yield, then sleep a little longer each round)
 * unless poked or aborted meanwhile; `seen` is st->wakeups read before the last test. */
void par__mpi_backoff(par_group *g, unsigned *round, unsigned seen);
/* Checks that this thread may call MPI at the level MPI provides (see docs/mpi.md). */
par_status par__mpi_thread_ok(par_group *g, const char *what);

par_status par__mpi_collective(par_group *g, mpi_state *st, const par__op *op);
/* A barrier, or any op of count 0: the members' agreement alone (one exchange). */
par_status par__mpi_barrier(par_group *g, mpi_state *st, const par__op *op);
extern const par__runtime par__mpi_runtime;
/* Sends every other member a notice (NOTICE_*) about this group, once per kind. */
void par__mpi_notify(par_group *g, int notice);

#endif /* PAR_MPI_BACKEND_H */
