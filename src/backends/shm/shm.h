/*
 * shm.h -- the shared-memory backend's segment layout and the primitives its collectives and
 * point-to-point channels are built from. One segment per group:
 *
 *   header page    magic, sizes, abort flag, futex word and sleeper count (own lines)
 *   ctrl[n]        per member: its epoch counter (the only word it writes), pid, fingerprints
 *   data[n]        per member: 2 sets (round parity) x 2 areas (input, result) x chunk bytes
 *   p2p[n][n]      per ordered pair: sent/acked counters (own lines) and a ring of slots
 *
 * Every op runs in rounds. In a round a member writes only its own areas of set (round & 1),
 * then posts its epoch; readers wait for the writers' epochs. Before writing, a member waits
 * until every member has posted the previous round: each posts only after it has finished
 * reading the round before that, so the set it is about to overwrite is no longer read.
 */
#ifndef PAR_SHM_H
#define PAR_SHM_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "coll/group.h"

#define SHM_MAGIC 0x7061722d73686d31ull /* "par-shm1" */
#define SHM_VERSION 11
#define SHM_LINE 128 /* two cache lines: adjacent-line prefetch must not couple flags */
#define SHM_MAX_CHUNK (64u << 20) /* PAR_SHM_CHUNK's maximum */
#define SHM_P2P_CHUNK (32u << 10)
#define SHM_P2P_SLOTS 4u
#define SHM_ZC_MIN (16u << 10) /* smaller ops copy par_alloc'ed buffers like any other */
#define SHM_ZC_PIECE 4096u     /* a zero-copy all-reduce reduces and writes out this much at once */
#define SHM_TINY_MAX 16u       /* allreduce/reduce at most this size travel with the epoch */

/*
 * The sizes that choose an op's algorithm (tune.c derives them from the machine; PAR_SHM_*
 * override them). Member 0 writes its values into the segment's header and every member
 * takes them from there: members must take the same path for every op, and their own
 * environments (affinity, variables) may differ. Single copy (cross-memory attach) serves
 * all-reduce of [cma_reduce_min, cma_reduce_max] bytes, all-gather blocks of [cma_move_min,
 * cma_move_max] and broadcasts of [cma_bcast_min, cma_bcast_max] (tune.c and
 * docs/PERFORMANCE.md have the rules and measurements): below, a system call per peer costs
 * more than the copy it saves; above, the data no longer fits the caches and the segment's
 * pipeline moves it faster than the kernel's page-by-page copy.
 */
typedef struct shm_paths {
  uint64_t small_max; /* allreduce/reduce at most this size (and a chunk) take direct rounds */
  uint64_t cma_reduce_min, cma_reduce_max;
  uint64_t cma_move_min, cma_move_max;
  uint64_t cma_bcast_min, cma_bcast_max;
  /* Outputs from big_out bytes are written with the store loop, from stream_min with the
   * faster of it and streaming stores; group-wide too, since all-gather and broadcast also
   * choose their rounds by it. */
  uint64_t big_out, stream_min;
} shm_paths;

typedef struct shm_header {
  uint64_t magic;
  uint32_t version, n;
  uint64_t chunk, p2p_chunk, p2p_slots, size;
  uint64_t off_ctrl, off_data, off_p2p, p2p_stride;
  shm_paths paths; /* member 0's; copied by every member when it joins */
  _Alignas(SHM_LINE) _Atomic uint32_t abort;
  /* The first collective that failed on a member (a timeout, a lost peer, ...; not a
   * mismatch, after which every member stops at the same point): (op seq + 1) << 16 | member,
   * 0 none. A member whose op completes without waiting for the others (a broadcast's root, a
   * reduce's other members) checks it at the op's end, so that it fails too. */
  _Atomic uint64_t failed;
  _Alignas(SHM_LINE) _Atomic uint32_t attached;
} shm_header;

/* Staging (shm_stage.c, below): how a member writes what it stages, what its readers do with
 * it, and whether the op fits the last-level cache (its size class). */
enum { SHM_WRITE_CACHE = 0, SHM_WRITE_STREAM = 1 };
enum { SHM_READ_COPY = 0, SHM_READ_REDUCE = 1, SHM_READ_KINDS = 2 };
enum { SHM_CLASS_CACHED = 0, SHM_CLASS_MEMORY = 1, SHM_CLASSES = 2 };

/* Per member. Waiting is targeted: a member that waits for member j's epoch sleeps on j's
 * bell, which j rings when it posts; send/recv ring the bell of the member at the other end
 * of the channel, and a send/recv batch sleeps on its own bell. A ring makes a system call
 * only when the bell has sleepers. */
typedef struct shm_ctrl {
  _Alignas(SHM_LINE) _Atomic uint64_t epoch;
  _Atomic uint32_t bell; /* futex word */
  _Atomic int32_t pid; /* set before the member counts itself attached */
  /* Written in an op's first round, by round parity, and read by every member after it
   * waited for that round: the op's description (par__desc_word), which all compare before
   * any byte moves, and a tiny reduction's contribution. On the epoch's 64-byte line, so that
   * the members' agreement costs no line the op would not fetch anyway. */
  uint64_t desc[2];
  _Alignas(16) unsigned char tiny[2][SHM_TINY_MAX];
  /* The full description (call, count, seq), by round parity: written only when the word is
   * not exact or under PAR_CHECK=1 (which compares seq too). */
  uint64_t fp[2][3];
  uint64_t zc[2][7]; /* buffers of the current op, by round parity (shm_coll.c) */
  uint64_t probe;    /* address, in the member's own memory, of its pid: the single-copy probe */
  _Atomic uint64_t gate; /* writes into this member's buffers: op seq << 2 | SHM_GATE_* */
  /* Writes into this member's output by the others in a zero-copy all-reduce: op seq << 16 |
   * SHM_ZGATE_CLOSED | SHM_ZGATE_FAILED | writers inside. */
  _Atomic uint64_t zgate;
  /* Op seq + 1 while this member enters, holds or leaves others' zgates, else 0: an owner
   * closing its zgate counts the dead among these writers only. */
  _Atomic uint64_t zwriting;
  _Atomic uint32_t cma; /* 0 not probed yet, 1 cannot read every peer, 2 can */
  uint32_t wmode[2];    /* how this member staged the round of this parity: SHM_WRITE_* */
  /* What reading the others' staged data costs this member (shm_stage.c): float ticks per
   * byte by kind of read, size class and way of writing, 0 unknown. Written at the end of its
   * timed ops, read by writers choosing their way (a broadcast's root reads nothing itself). */
  _Alignas(SHM_LINE) _Atomic uint32_t rcost[SHM_READ_KINDS][SHM_CLASSES][2];
  _Alignas(SHM_LINE) _Atomic uint32_t sleepers; /* written by waiters: its own line */
} shm_ctrl;

_Static_assert(offsetof(shm_ctrl, tiny) + sizeof(((shm_ctrl *)0)->tiny) <= 64 &&
                   offsetof(shm_ctrl, desc) + sizeof(((shm_ctrl *)0)->desc) <= 64,
               "descriptions and tiny contributions share the epoch's cache line");

typedef struct shm_slot {
  uint64_t total; /* bytes of the whole message */
  uint32_t dt;
  uint32_t len; /* bytes in this slot */
  char pad[48];
} shm_slot;

typedef struct shm_chan {
  _Alignas(SHM_LINE) _Atomic uint64_t sent;  /* written by the sender */
  _Alignas(SHM_LINE) _Atomic uint64_t acked; /* written by the receiver */
} shm_chan;

/* What the members published about their buffers in an op's first round, read by every
 * member: zero copy (par_alloc'ed buffers, mapped) and single copy (addresses for
 * process_vm_readv). The storage for n members lives in shm_state; the algorithms that use it
 * take it as an argument. */
typedef struct shm_bufs {
  const char **src;       /* per member: its input, mapped, when it is par_alloc'ed */
  char **dst;             /* per member: its output, mapped, when it is par_alloc'ed */
  unsigned char *inplace; /* per member: its op is in place */
  uint64_t *asrc, *adst;  /* per member: its input and output addresses, in its own memory */
  int nsend, nrecv;       /* members whose input / output is par_alloc'ed */
  int usable;             /* members whose input can be read in place all along */
} shm_bufs;

/* Every member's input and output are par_alloc'ed. */
static inline int shm_bufs_all(const shm_bufs *b, int n) { return b->nsend == n && b->nrecv == n; }
/* Nothing published yet (ops too small for zero copy read no entry). */
static inline void shm_bufs_clear(shm_bufs *b, int n) {
  for (int j = 0; j < n; j++) b->src[j] = b->dst[j] = NULL, b->inplace[j] = 0;
  b->nsend = b->nrecv = b->usable = 0;
}

/*
 * Staging (shm_stage.c): how a member writes what it copies into its input areas -- through
 * its cache, from which a reader nearby takes it fastest, or with non-temporal stores, which
 * send it to memory and spare a distant reader (another die or socket) a read of every line
 * from this core's cache. Each member times its staging and its reads of the others' staged
 * data, by the way it was written, and stages the way that cost less, by what the readers do
 * with it (copy it, or reduce it).
 */
#define SHM_STAGE_MIN ((size_t)64 << 10)   /* ops moving less stage through the cache */
#define SHM_STAGE_PIECE ((size_t)16 << 10) /* pieces this large or larger are timed */
#define SHM_STAGE_TRY_OPS 16 /* the other way is tried at most every 16 ops ... */
#define SHM_STAGE_TRY_S 0.05 /* ... and every 50 ms, ... */
#define SHM_STAGE_TRY_LEN 2  /* ... for 2 ops (the first pays for the change) */
#define SHM_STAGE_FRESH_OPS 4 /* a way's figure older than this many ops is replaced */

/* The stretch of ops that took one way of writing (staged it, or met it in their reads),
 * and when each way's figure was last taken (shm_stage.c, fold). */
typedef struct shm_stage_way {
  int last;     /* the way of the last op */
  int run;      /* ops in a row that took it: 0, 1, or 2 for more */
  long at[2];   /* the op count when each way's figure was last taken */
} shm_stage_way;

/* What a member knows of one kind of read and size class, by way of writing (SHM_WRITE_*):
 * clock ticks per byte to stage and to read back; 0: not measured yet. */
typedef struct shm_stage_figs {
  double wcost[2], rcost[2];
  shm_stage_way staged, read;
  long ops;        /* timed ops settled */
  int best;        /* the way it takes when not trying the other */
  int try_left;    /* ops of the running try still to come */
  int since_try;   /* timed ops since the last try */
  double next_try; /* no try before this time */
} shm_stage_figs;

typedef struct shm_staging {
  int choose;       /* SHM_WRITE_* for every op (PAR_SHM_STAGE_STREAM), or -1: as measured */
  int shared_cores; /* ranks outnumber the cores: ops of the cached class keep to the cache */
  int mode;         /* the running op's way */
  int kind;         /* the running op's SHM_READ_*, or -1: not timed */
  int cls;          /* the running op's SHM_CLASS_* */
  double acc[2][4]; /* the running op's staged bytes, ticks; read bytes, ticks; by way */
  shm_stage_figs figs[SHM_READ_KINDS][SHM_CLASSES];
} shm_staging;

typedef struct shm_state {
  shm_header *hdr;
  char *base;
  size_t size;
  int n, me;
  int unlinked;
  char name[96];
  shm_ctrl *ctrl;
  uint64_t epoch;          /* my last posted epoch; equal on all members between ops */
  uint64_t round;          /* rounds run so far; its parity picks the data set */
  uint64_t prev_round_end; /* epoch at the end of the previous round */
  _Atomic int sleeping_on; /* the bell this process's waiting thread sleeps on, or -1 */
  int ring_due;            /* a post's ring is still to be done (par__shm_settle) */
  const void **srcs;       /* n pointers, scratch for reductions */
  void **dsts;             /* n pointers, scratch for reductions' outputs */
  shm_bufs bufs;           /* the members' buffers in the running op (shm_coll.c) */
  int cma;                 /* every member can read every other's memory (process_vm_readv) */
  shm_paths paths;         /* the group's algorithm thresholds, from the header */
  int check;               /* PAR_CHECK=1: members compare op numbers too */
  shm_staging staging;     /* how this member writes its input areas (shm_stage.c) */
} shm_state;

/* What a wait is for, to name it in a timeout message. */
typedef struct shm_waitctx {
  par_group *g;
  const char *what;
  uint64_t seq;
  double deadline;
  int own_bell; /* sleep on this member's own bell (send/recv) instead of the awaited one's */
} shm_waitctx;

/* Returns -1 when the condition holds, else the index of a member it still waits for. */
typedef int (*shm_pred)(shm_state *st, const void *arg);

par_status par__shm_wait(shm_state *st, const shm_waitctx *wc, shm_pred pred, const void *arg);
/* Posts this member's epoch. Its ring (waking members asleep on it) is due until
 * par__shm_settle, which every wait and the end of every op call. */
void par__shm_post(shm_state *st, uint64_t epoch);
void par__shm_settle(shm_state *st);
/* Rings member j's bell: wakes whoever sleeps on it. */
void par__shm_ring(shm_state *st, int j);
/* Aborts the group for every member (a member that fails mid-op after the others started
 * on its buffers): their waits end with PAR_ERR_ABORTED instead of a timeout. */
void par__shm_abort(shm_state *st);
par_status par__shm_wait_all(shm_state *st, const shm_waitctx *wc, uint64_t epoch);
par_status par__shm_wait_one(shm_state *st, const shm_waitctx *wc, int j, uint64_t epoch);
/* Copies len bytes at addr in member j's memory to dst (needs st->cma: process_vm_readv). A
 * failure aborts the group, so the other members do not wait for this one. */
par_status par__shm_cma_read(shm_state *st, const shm_waitctx *wc, int j, void *dst,
                             uint64_t addr, size_t len);
/*
 * Writing into another member's buffers (broadcast's root does, with process_vm_writev) must
 * never land after that member returned, e.g. on a timeout. The member opens its gate for
 * the op before it publishes its buffers and closes it before it returns, however it returns;
 * the writer holds the gate for each piece it writes (SHM_GATE_PIECE bytes at most), and
 * stops with an error when it finds the gate closed. Closing waits out a piece in flight,
 * unless the writer died (a writer stopped mid-piece holds the member until it resumes).
 */
enum { SHM_GATE_OPEN = 1, SHM_GATE_WRITING = 2, SHM_GATE_CLOSED = 3 };
#define SHM_GATE_PIECE (1u << 20)
void par__shm_gate_open(shm_state *st, uint64_t seq);
void par__shm_gate_close(shm_state *st, int writer, uint64_t seq);
/* Copies len bytes from src to addr in member j's buffers through j's gate for op seq. */
par_status par__shm_gate_write(shm_state *st, const shm_waitctx *wc, int j, uint64_t seq,
                               uint64_t addr, const void *src, size_t len);
/* A writer found member j's gate closed: aborts the group and returns PAR_ERR_ABORTED, naming
 * j as the member that left the op. */
par_status par__shm_left_op(shm_state *st, const shm_waitctx *wc, int j);

/*
 * The same rule for a zero-copy all-reduce, where every member writes into every other's
 * output at once: a member opens its zgate before the op's first post and closes it before it
 * returns, however it returns; a writer enters the gate of every member it writes into for a
 * batch of at most SHM_GATE_PIECE bytes of its share, and stops with an error when one is
 * closed. Closing waits until no writer is inside, unless as many writers as are inside are
 * dead among those that were entering, holding or leaving gates (zwriting). A member
 * whose op failed closes its gate marked failed, and a writer that finishes after it (it was
 * stopped, say, and resumes once the other has timed out) fails too, although its own output
 * is whole: the members of an op agree that it failed. (One that finishes in the instant
 * between the other's timeout and its close still succeeds.)
 */
#define SHM_ZGATE_CLOSED 0x8000u
#define SHM_ZGATE_FAILED 0x4000u
#define SHM_ZGATE_INSIDE 0x3FFFu /* writers inside: up to 16383, more than a host has cores */
void par__shm_zgate_open(shm_state *st, uint64_t seq);
void par__shm_zgate_close(shm_state *st, uint64_t seq, int failed);
/* Enters the zgate of every other member for op seq: -1, or the first member found to have
 * left the op (par__shm_left_op), after leaving those entered. */
int par__shm_zgates_enter(shm_state *st, uint64_t seq);
void par__shm_zgates_leave(shm_state *st);
/* 1 when member j failed op seq (closed its zgate marked failed). */
int par__shm_zgate_failed(shm_state *st, int j, uint64_t seq);

static inline char *shm_area(shm_state *st, int r, int set, int area) {
  return st->base + st->hdr->off_data +
         (((size_t)r * 2 + (size_t)set) * 2 + (size_t)area) * st->hdr->chunk;
}

static inline shm_chan *shm_chan_of(shm_state *st, int from, int to) {
  return (shm_chan *)(st->base + st->hdr->off_p2p +
                      ((size_t)from * (size_t)st->n + (size_t)to) * st->hdr->p2p_stride);
}

static inline shm_slot *shm_slot_of(shm_state *st, shm_chan *ch, uint64_t i) {
  size_t per = sizeof(shm_slot) + st->hdr->p2p_chunk;
  return (shm_slot *)((char *)ch + sizeof(shm_chan) + (size_t)(i % st->hdr->p2p_slots) * per);
}

/* The header of a segment for n members with rounds of `chunk` bytes per member (the creator
 * writes it; par__shm_header_check recomputes it). */
void par__shm_layout(shm_header *h, int n, size_t chunk);
/* Checks a segment's header as a member that attaches reads it (another process wrote it):
 * this version, n members, and a layout that follows from n and the chunk and fills exactly
 * the `mapped` bytes. PAR_ERR_PROTOCOL with a detail otherwise. */
par_status par__shm_header_check(const shm_header *h, size_t mapped, int n);

/* par_alloc'ed memory (shm_alloc.c): the world's regions, this rank's and peers' mapped. */
par_status par__shm_world_init(par_world *w);
void par__shm_world_fini(par_world *w);
par_status par__shm_alloc(par_world *w, size_t bytes, void **out);
par_status par__shm_free(par_world *w, void *p);
/* Where a buffer lies in this rank's par_alloc'ed memory: region id (from 1) and offset.
 * Returns 0 (and id 0) when [p, p+len) is not wholly inside one region. Thread-safe. */
int par__shm_region_find(par_world *w, const void *p, size_t len, uint32_t *id, uint64_t *off);
/* Maps region `id` of rank `rank` (on this host) and returns its base and size; mappings are
 * kept until the owner frees the region (or the world ends). Thread-safe. */
par_status par__shm_region_map(par_world *w, int rank, uint32_t id, char **base, size_t *size);

/* Collectives (shm_coll.c) and point-to-point (shm_p2p.c). */
par_status par__shm_collective(par_group *g, shm_state *st, const par__op *op);
/* Staging (shm_stage.c). At an op's start: its way, for an op that moves `moved` bytes
 * (under SHM_STAGE_MIN: through the cache) whose readers do `kind` with pieces of `piece`
 * bytes (kind -1, or pieces under SHM_STAGE_PIECE: not timed, through the cache unless
 * forced); ops of stream_min bytes or more keep figures of their own. `ctrl` (NULL: none),
 * the n members' control blocks, whose published read costs stand for this member's readers
 * where known; `me`, this member. `now`: the coarse clock, or -1 to read it when a try is
 * due. */
void par__shm_stage_choose(shm_staging *g, size_t moved, size_t piece, int kind,
                           size_t stream_min, double now, const shm_ctrl *ctrl, int n, int me);
/* Stages n bytes into this member's areas of set s (published with the round's post). */
void par__shm_stage(shm_state *st, int s, void *dst, const void *src, size_t n);
/* Times a read of a piece member j staged in set s: start before, done after (start returns
 * 0 when the op is not timed). */
uint64_t par__shm_stage_read_start(const shm_state *st, size_t bytes);
void par__shm_stage_read_done(shm_state *st, int j, int s, size_t bytes, uint64_t t0);
/* At an op's end: folds its timings into the figures, and publishes the read costs in `mine`
 * (this member's control block; NULL: not published). */
void par__shm_stage_settle(shm_staging *g, shm_ctrl *mine);
/* A barrier, or any op of count 0: the first round alone, so the members still agree. */
par_status par__shm_barrier(par_group *g, shm_state *st, const par__op *op);
par_status par__shm_p2p(par_group *g, shm_state *st, par__op *ops, par__p2p_state *ps, int nops,
                        _Atomic int *poke);

#endif /* PAR_SHM_H */
