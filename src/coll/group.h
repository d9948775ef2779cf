/*
 * group.h -- the internal shape of worlds, groups, ops and work handles, and the backend
 * vtable. A call on a group is checked once at the API edge (api.c), turned into a par__op,
 * queued in issue order (work.c) and completed by the group's backend.
 */
#ifndef PAR_COLL_GROUP_H
#define PAR_COLL_GROUP_H

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>

#include "bootstrap/bootstrap.h"
#include "core/core.h"

/* ---------------------------------------------------------------------------------------- */
/* Ops                                                                                      */
/* ---------------------------------------------------------------------------------------- */

typedef enum par__op_kind {
  PAR__ALLREDUCE,
  PAR__ALLGATHER,
  PAR__REDUCE_SCATTER,
  PAR__BROADCAST,
  PAR__REDUCE,
  PAR__ALLTOALL,
  PAR__BARRIER,
  PAR__SEND,
  PAR__RECV,
  PAR__OP_KIND_COUNT
} par__op_kind;

const char *par__op_kind_name(par__op_kind k);

static inline int par__op_is_p2p(par__op_kind k) { return k == PAR__SEND || k == PAR__RECV; }

/* One issued op, fully validated. `root` is the root index (broadcast, reduce) or the peer
 * index (send, recv). */
typedef struct par__op {
  par__op_kind kind;
  const void *sendbuf;
  void *recvbuf;
  size_t count;
  par_dtype dt;
  par_op op;
  int root;
  uint64_t seq;    /* collectives: issue number on the group, from 1, the same on every member;
                     send/recv: issue number on the pair (this direction), from 1 */
  double deadline; /* absolute par__now() time; set when the op starts running */
  double timeout_s;
} par__op;

/* ---------------------------------------------------------------------------------------- */
/* Member agreement (agree.c)                                                               */
/* ---------------------------------------------------------------------------------------- */

/* What the members of a group compare before a collective moves any byte: exact, with the
 * fields an op does not use normalised away. `seq` is compared only under PAR_CHECK=1. */
typedef struct par__desc {
  uint64_t call; /* kind | dtype << 8 | reduction << 16 | (root + 1) << 32 */
  uint64_t count;
  uint64_t seq;
} par__desc;

static inline int par__op_reduces(par__op_kind k) {
  return k == PAR__ALLREDUCE || k == PAR__REDUCE || k == PAR__REDUCE_SCATTER;
}
static inline int par__op_rooted(par__op_kind k) { return k == PAR__BROADCAST || k == PAR__REDUCE; }

/* Inline: every collective computes its description (a few instructions on the 8-byte path). */
static inline void par__desc_of(const par__op *op, par__desc *d) {
  int barrier = op->kind == PAR__BARRIER;
  uint64_t dt = barrier ? 0 : (uint64_t)op->dt;
  uint64_t red = par__op_reduces(op->kind) ? (uint64_t)op->op : 0;
  uint64_t root = par__op_rooted(op->kind) ? (uint64_t)(uint32_t)(op->root + 1) : 0;
  d->call = (uint64_t)op->kind | dt << 8 | red << 16 | root << 32;
  d->count = barrier ? 0 : (uint64_t)op->count;
  d->seq = op->seq;
}

#define PAR__DESC_ESCAPE (1ull << 63)
uint64_t par__desc_hash(const par__desc *d);

/* One word that is equal for two descriptions exactly when they are, unless it is not exact
 * (par__desc_word_exact is 0: counts >= 2^31 or roots >= 2^20): then equal words need a
 * compare of the full descriptions. Exact words pack kind, dtype and reduction in 4 bits
 * each, root + 1 in 20 and the count in 31. */
static inline uint64_t par__desc_word(const par__desc *d) {
  uint64_t kind = d->call & 0xff, dt = (d->call >> 8) & 0xff, red = (d->call >> 16) & 0xff;
  uint64_t root = d->call >> 32;
  if (kind < 16 && dt < 16 && red < 16 && root < (1u << 20) && d->count < (1ull << 31))
    return kind | dt << 4 | red << 8 | root << 12 | d->count << 32;
  return par__desc_hash(d);
}
static inline int par__desc_word_exact(uint64_t w) { return !(w & PAR__DESC_ESCAPE); }
/* The description an exact word packs (seq 0); 0 when the word is not exact. */
int par__desc_unword(uint64_t w, par__desc *d);
int par__desc_equal(const par__desc *a, const par__desc *b, int with_seq);
/* PAR_ERR_MISMATCH naming this member's call and member j's. */
par_status par__desc_mismatch(par_group *g, const par__desc *mine, int j,
                              const par__desc *theirs, int with_seq);
/* Compares this member's description with every member's (all[g->n]). */
par_status par__desc_check(par_group *g, const par__desc *mine, const par__desc *all,
                           int with_seq);

/* ---------------------------------------------------------------------------------------- */
/* Flight recorder (recorder.c)                                                             */
/* ---------------------------------------------------------------------------------------- */

/* The last PAR__FLIGHT_LEN ops a group started, written by the thread that runs them (one
 * at a time per group), read when an op fails. */
#define PAR__FLIGHT_LEN 32

typedef struct par__flight_entry {
  uint64_t seq;
  double start; /* par__now() when it started */
  size_t count;
  uint8_t kind, dt, red;
  int8_t state; /* PAR__FLIGHT_* */
  int root;     /* root or peer index */
  par_status status;
} par__flight_entry;

enum { PAR__FLIGHT_RUNNING = 1, PAR__FLIGHT_DONE = 2, PAR__FLIGHT_FAILED = 3 };

typedef struct par__flight {
  par__flight_entry ring[PAR__FLIGHT_LEN];
  uint64_t next;     /* entries recorded so far */
  _Atomic int shown; /* the record was written to the log once */
} par__flight;

/* Records that an op starts; returns its position for par__flight_end. Inline: every op. */
static inline uint64_t par__flight_start(par__flight *f, const par__op *op) {
  uint64_t pos = f->next++;
  par__flight_entry *e = &f->ring[pos % PAR__FLIGHT_LEN];
  e->seq = op->seq;
  e->start = op->deadline - op->timeout_s;
  e->count = op->count;
  e->kind = (uint8_t)op->kind;
  e->dt = (uint8_t)op->dt;
  e->red = (uint8_t)op->op;
  e->root = op->root;
  e->state = PAR__FLIGHT_RUNNING;
  e->status = PAR_OK;
  return pos;
}
static inline void par__flight_end(par__flight *f, uint64_t pos, par_status st) {
  if (f->next - pos > PAR__FLIGHT_LEN) return; /* a send/recv batch longer than the ring */
  par__flight_entry *e = &f->ring[pos % PAR__FLIGHT_LEN];
  e->status = st;
  e->state = st < 0 ? PAR__FLIGHT_FAILED : PAR__FLIGHT_DONE;
}
/* Writes the group's record to the log at error level, once per group, when st is a
 * timeout, a lost peer or an abort, with the failure's detail and the ops still queued. */
void par__flight_report(par_group *g, par_status st, const char *detail);

/* ---------------------------------------------------------------------------------------- */
/* Backends                                                                                 */
/* ---------------------------------------------------------------------------------------- */

/* Progress of one send/recv op across calls of the backend's p2p(); zeroed when the op
 * starts. `be` is the backend's own per-op storage (e.g. a request handle). */
typedef struct par__p2p_state {
  size_t off;
  int started, done;
  _Alignas(16) unsigned char be[48];
} par__p2p_state;

/* The bit of an op kind in par__backend.ops. */
#define PAR__OP_BIT(kind) (1u << (kind))
#define PAR__OPS_ALL ((1u << PAR__OP_KIND_COUNT) - 1u)

/*
 * A launcher's runtime that starts the world in place of the rendezvous store: MPI, under
 * mpirun, mpiexec or srun. It comes with a backend (par__backend.runtime). The world then
 * takes its rank, size and every rank's host id from the runtime, and the runtime gives ranks
 * that share a host a store of their own (on loopback) for the shm backend to meet through.
 */
typedef struct par__runtime {
  const char *name;
  /* 1 when this world should come from the runtime: the process was started by its launcher
   * (or the program initialised it), and opts leave rank, size and store to the environment. */
  int (*detect)(const par_world_options *opts);
  /* Collective over the world. Sets rank, size, local_rank, local_size, job_id, host_ids (of
   * every rank), rt_state, and store, server and store_peers when ranks share a host. Blocks
   * at most w->timeout_s. */
  par_status (*world_init)(par_world *w);
  /* Releases rt_state; called last, after the world's groups and store are gone. */
  void (*world_fini)(par_world *w);
} par__runtime;

/*
 * A backend moves bytes between the members of a group, and nothing else: the group layer
 * above it checks arguments, orders ops, refuses ops on aborted or broken groups, keeps the
 * flight recorder, sets the waiting policy (par_group.wait) and words timeouts, lost peers
 * and aborts (par__op_timed_out and friends). docs/internals.md has the checklist for adding
 * one: a folder under src/backends/ and one line in src/coll/registry.c.
 */
typedef struct par__backend {
  const char *name;
  par_backend id;
  unsigned ops;                /* the op kinds run() and p2p() take: PAR__OP_BIT(kind) each */
  const par__runtime *runtime; /* the launcher runtime that comes with it; NULL: none */
  /* PAR_OK when it can carry group g (where the members are, how the world started);
   * otherwise PAR_ERR_UNSUPPORTED with a detail that says why. Not collective, never blocks
   * on peers. `auto` takes the first backend of the registry that can. */
  par_status (*can_serve)(par_group *g);
  /* Collective over the members: joins (or creates) the group's transport. Sets g->be_state.
   * Blocks at most until g->create_deadline. */
  par_status (*group_init)(par_group *g);
  /* Releases the transport. Not collective; never blocks on peers. */
  void (*group_fini)(par_group *g);
  /* Runs one collective with a count above 0 to completion in this thread, the members'
   * agreement (par__desc) first. Honours op->deadline and the abort flags. On error returns
   * the status with a detail naming the op, the group and the member waited on. */
  par_status (*run)(par_group *g, par__op *op);
  /* A barrier, or any collective of count 0: the members' agreement alone. */
  par_status (*barrier)(par_group *g, par__op *op);
  /* Progresses send/recv ops together (so two ranks that both send first cannot deadlock):
   * ops to the same peer in the same direction move in issue order. Returns PAR_OK once at
   * least one more op is done (ps[i].done), all are done, or *poke is non-zero (new ops were
   * queued; the caller adds them and calls again); poke may be NULL. Honours deadlines and
   * the abort flags like run(). */
  par_status (*p2p)(par_group *g, par__op *ops, par__p2p_state *ps, int nops,
                    _Atomic int *poke);
  /* Wakes a thread of this process blocked in p2p() on this group, after *poke was set. */
  void (*poke)(par_group *g);
  /* Makes pending and later calls of every member fail with PAR_ERR_ABORTED. Called from any
   * thread. */
  void (*abort)(par_group *g);
  /* Whether another member aborted the group: its index, g->n when the backend cannot tell
   * which member, or -1 when none did. Cheap: read before every op. */
  int (*aborted_by)(par_group *g);
  /* World services, NULL where the backend has none. world_init makes its per-world state
   * (par_world.be_world[id]) when a world is created, before any group; world_fini releases
   * it when the world ends, after every group. alloc_mem and free_mem: memory that the
   * members of a group on one host read in place (par_alloc, par_free; free_mem says
   * PAR_ERR_INVALID for a pointer that is not the backend's). */
  par_status (*world_init)(par_world *w);
  void (*world_fini)(par_world *w);
  par_status (*alloc_mem)(par_world *w, size_t bytes, void **out);
  par_status (*free_mem)(par_world *w, void *p);
} par__backend;

/* The backend with this id, or NULL where it is not built (registry.c). */
const par__backend *par__backend_get(par_backend b);
/* The built backends, in the order `auto` tries them: i from 0 until NULL. */
const par__backend *par__backend_at(int i);

/* ---------------------------------------------------------------------------------------- */
/* World and group                                                                          */
/* ---------------------------------------------------------------------------------------- */

typedef struct par__created {
  uint64_t hash;
  uint32_t count;
} par__created;

struct par_world {
  int rank, size, local_rank, local_size;
  double timeout_s;
  par__store *store;          /* NULL for a world of 1 */
  par__store_server *server;  /* when this rank hosts the store */
  int store_peers;            /* ranks that use the store (they count goodbyes on it) */
  const par__runtime *rt;     /* the runtime that started the world; NULL: the store did */
  void *rt_state;
  char job_id[32];            /* names shared-memory segments: /par-<job_id>-... */
  char host_id[160];          /* hostname and boot id: ranks with equal ids share a host */
  char **host_ids;            /* per rank: from the runtime, or fetched on demand */
  par_group *world_group;
  pthread_mutex_t mu;         /* guards created[], host_ids, last_error */
  par__created *created;      /* how many groups were made per member list, by hash */
  size_t ncreated, capcreated;
  char last_error[PAR__ERRLEN];
  void *be_world[PAR_BACKEND_COUNT]; /* each backend's per-world state (e.g. shm's par_alloc
                                        regions), created by the backend, freed by world_fini */
};

/* ---------------------------------------------------------------------------------------- */
/* Waiting (wait.c): one policy for every backend, and the words for waits that end badly     */
/* ---------------------------------------------------------------------------------------- */

/* A waiting thread spins `spin` times, then yields `yields` times, then sleeps (how it
 * sleeps is the backend's: a futex, a condition variable), each step after a look at what it
 * waits for. Set once per group from the host's load: spin while every local rank has a core
 * of its own; otherwise give the core up almost at once, so 8 ranks on 2 cores progress. */
typedef struct par__wait_policy {
  unsigned spin, yields;
  int oversubscribed; /* this host has more ranks of the job than cores */
} par__wait_policy;

void par__wait_policy_init(par__wait_policy *p, int local_size);

/* One step of waiting before sleeping: spins or yields and returns 1, or returns 0 once the
 * caller should sleep. *round counts the steps (start at 0). */
static inline int par__wait_step(const par__wait_policy *p, unsigned *round) {
  unsigned r = (*round)++;
  if (r < p->spin) {
    par__cpu_relax();
    return 1;
  }
  if (r - p->spin < p->yields) {
    sched_yield();
    return 1;
  }
  return 0;
}

/* PAR_ERR_ABORTED when the group was aborted here or by a member (par__backend.aborted_by),
 * naming the member when known; PAR_OK otherwise. Marks the group aborted here too, so that
 * later ops fail the same way on every member. */
par_status par__op_check_abort(par_group *g, const char *what, uint64_t seq);
/* PAR_ERR_TIMEOUT for op `what` (number seq) after `waited` seconds, waiting for member
 * `who` (-1: not known) whose state `why` adds to (may be NULL). */
par_status par__op_timed_out(par_group *g, const char *what, uint64_t seq, double waited,
                             int who, const char *why);
/* PAR_ERR_PEER_LOST: member `who` is gone (`how`: e.g. "pid 123 exited"). */
par_status par__op_peer_lost(par_group *g, const char *what, uint64_t seq, int who,
                             const char *how);
/* PAR_ERR_ABORTED: member `who` failed an earlier op, so the members are out of step. */
par_status par__op_peer_failed(par_group *g, const char *what, uint64_t seq, int who);

enum { PAR__RUNNING_NONE, PAR__RUNNING_ONE, PAR__RUNNING_P2P };

struct par_group {
  par_world *world;
  int n, index;
  int *ranks;
  char name[64];
  char uid[48]; /* identifies the group in the job: member-list hash and creation number */
  double timeout_s;
  double create_deadline;
  int is_world;

  const par__backend *be;
  par_backend backend;
  void *be_state;

  _Atomic int aborted;
  _Atomic int broken; /* the status of the error that broke the group; 0 while healthy */
  char broken_detail[PAR__ERRLEN];
  char last_error[PAR__ERRLEN];

  par__wait_policy wait; /* how its backend waits (wait.c) */

  /* Issue-order queue (work.c), guarded by mu. */
  pthread_mutex_t mu;
  pthread_cond_t cv;
  par_work *head, *tail;
  int running;      /* PAR__RUNNING_*: what runs now, inline or in the worker */
  int has_worker;   /* the worker thread exists; it exits once `stopping` and the queue is empty */
  int stopping;
  _Atomic int poke; /* send/recv ops were queued behind a running batch that takes them in */
  pthread_t worker;
  uint64_t seq;      /* collectives issued */
  uint64_t *p2p_seq; /* send/recv issued, per peer and direction: [2 * peer + (recv)] */
  par__flight flight;
};

/* Internal group creation used for the world group too. */
par_status par__group_create(par_world *world, const int *ranks, int n,
                             const par_group_options *opts, int is_world, par_group **out);
void par__group_free(par_group *g);

/* Host id of a rank (fetched from the store once). */
par_status par__world_host_id(par_world *w, int rank, const char **out);

/* ---------------------------------------------------------------------------------------- */
/* Work                                                                                     */
/* ---------------------------------------------------------------------------------------- */

/* Runs after an op succeeded, in the thread that ran it, before the work counts as done; its
 * status becomes the op's. Used by tensor ops that post-process an op's output (mesh gather). */
typedef par_status (*par__then_fn)(void *ctx);

struct par_work {
  par_group *g;
  par__op op;
  _Atomic int done;
  par_status status;
  char error[PAR__ERRLEN];
  par_work *next;
  par__then_fn then;
  void *then_ctx;
  void (*then_free)(void *ctx); /* frees then_ctx when the work is freed */
  uint64_t flight_pos;          /* its place in the flight recorder + 1; 0: not started */
};

/* Issues a validated op: blocking (runs it, inline when the queue is idle) or async (queues it
 * and returns a handle in *work). */
par_status par__submit(par_group *g, const par__op *op, par_work **work);
/* Async submit with a continuation (see par__then_fn); then_free may be NULL. */
par_status par__submit_then(par_group *g, const par__op *op, par__then_fn then, void *ctx,
                            void (*then_free)(void *), par_work **work);
/* The API edge (api.c): checks op as every collective's is checked, then submits it, blocking
 * when work is NULL, else async with the continuation `then` (NULL: none; ctx stays the
 * caller's on failure); an error's detail is kept on the group. Ops built outside api.c
 * (tensor ops) come in here, never straight to par__submit. */
par_status par__issue(par_group *g, par__op *op, par__then_fn then, void *ctx,
                      void (*then_free)(void *), par_work **work);
/* Stops the worker after draining the queue (pending ops fail fast if the group aborted). */
void par__work_shutdown(par_group *g);
/* 1 when the calling thread is the group's worker thread. */
int par__work_in_worker(par_group *g);

#endif /* PAR_COLL_GROUP_H */
