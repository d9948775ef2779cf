/*
 * test_soak.c -- a randomized soak of every op, checked against the naive reference.
 *
 * All ranks draw one pseudo-random sequence of steps from a shared seed (PAR_SOAK_SEED, else
 * drawn from the clock on rank 0; rank 0 broadcasts it and prints it so a failure can be
 * replayed). A step is one op, or a batch of async ops on several groups, some of them waited
 * on a few steps later. Each op draws its kind (every collective, barrier, send/recv between a
 * random pair of members while the others idle, sending to oneself), dtype, reduction, count
 * (0, 1, small odd, a few thousand, 16 KiB..1 MiB, 1..9 MiB: the latency, pipelined,
 * single-copy and zero-copy paths), in-place or not, misalignment, malloc or par_alloc buffers
 * (none, all or some members), group (the world or one of a few random subgroups, in random
 * member order, made at the start; non-members skip its ops) and root. Every rank draws every
 * op, member or not, so the streams never drift apart.
 *
 * Inputs are a function of (seed, step, op, global rank, element), so each member computes
 * what every other member contributed and checks its own outputs bit for bit with the
 * harness's reference (reduction in index order, f16/bf16 accumulated in f32); send buffers and
 * untouched outputs must keep their bytes; every buffer has guard bytes. A wrong result is
 * printed with the seed, step, op and group, counted, and fails the test at the end; an error
 * status fails the rank at once; a hang fails through the groups' timeout (PAR_SOAK_TIMEOUT,
 * default 60 s).
 *
 * Bounded by PAR_SOAK_SECONDS (default 15; 0: no limit) and PAR_SOAK_OPS (rank-ops; default
 * none), whichever comes first: every CHECKPOINT steps rank 0 broadcasts whether to stop, with
 * its step number, which every rank compares with its own. At the end each rank prints what it
 * ran and rank 0 the totals (ops, rank-ops = ops times the ranks that took part, bytes checked,
 * wrong, errors) and what the stream covered.
 * PAR_SOAK_TRACE=1 prints every op a rank takes part in before it is issued; PAR_SOAK_ZC=0
 * uses malloc'ed buffers only (the stream is otherwise the same), to tell zero-copy bugs apart;
 * PAR_SOAK_CHURN sets how often a par_alloc'ed block is freed rather than reused (below).
 *
 * PAR_TEST_RANKS: 2 3 5
 */
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"

/* ---------------------------------------------------------------------------------------- */
/* Shared random stream                                                                     */
/* ---------------------------------------------------------------------------------------- */

static uint64_t seed;  /* the run's seed, equal on every rank */
static uint64_t rng;   /* the shared stream: every rank draws the same numbers in order */

static uint64_t mix(uint64_t x) { /* splitmix64's finalizer */
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

static uint64_t draw(void) { return mix(rng++); }
static unsigned below(unsigned n) { return n ? (unsigned)(draw() % n) : 0; }
static int chance(unsigned percent) { return below(100) < percent; }

/* A choice that only this rank makes (buffer kind in mixed mode, wait style, posting order):
 * it need not agree with the others, but is reproducible from the seed. */
static unsigned local_choice(int64_t step, int opi, unsigned what, unsigned n) {
  return (unsigned)(mix(seed ^ mix((uint64_t)step * 64 + (uint64_t)opi) ^
                        ((uint64_t)(unsigned)h_rank << 40) ^ ((uint64_t)what << 56)) % n);
}

/* ---------------------------------------------------------------------------------------- */
/* Groups                                                                                   */
/* ---------------------------------------------------------------------------------------- */

#define MAX_GROUPS 5
#define MAX_RANKS 64

typedef struct sgroup {
  par_group *g; /* NULL on non-members */
  int n;
  int ranks[MAX_RANKS];
  int idx;      /* this rank's index, -1 when not a member */
  char name[64];
} sgroup;

static sgroup groups[MAX_GROUPS];
static int ngroups;
static double op_timeout = 60.0;

/* Group 0 is the world group; group 1 the whole world in a random order; the others random
 * subsets (of 2..n members, one time in five of 1) in random order. The lists come from the shared stream, so
 * every rank knows every group; members create theirs in list order, which every rank shares. */
static void make_groups(void) {
  sgroup *w = &groups[0];
  w->g = par_world_group(h_world);
  w->n = h_size;
  for (int i = 0; i < h_size; i++) w->ranks[i] = i;
  w->idx = h_rank;
  snprintf(w->name, sizeof w->name, "%s", par_group_name(w->g));
  ngroups = MAX_GROUPS;
  for (int k = 1; k < ngroups; k++) {
    sgroup *s = &groups[k];
    int perm[MAX_RANKS];
    for (int i = 0; i < h_size; i++) perm[i] = i;
    for (int i = h_size - 1; i > 0; i--) {
      int j = (int)below((unsigned)i + 1), t = perm[i];
      perm[i] = perm[j];
      perm[j] = t;
    }
    s->n = k == 1 ? h_size : chance(20) ? 1 : 2 + (int)below((unsigned)h_size - 1);
    int len = snprintf(s->name, sizeof s->name, "soak%d[", k);
    s->idx = -1;
    for (int i = 0; i < s->n; i++) {
      s->ranks[i] = perm[i];
      if (perm[i] == h_rank) s->idx = i;
      len += snprintf(s->name + len, sizeof s->name - (size_t)len, i ? ",%d" : "%d", perm[i]);
    }
    snprintf(s->name + len, sizeof s->name - (size_t)len, "]");
  }
  for (int k = 1; k < ngroups; k++) {
    sgroup *s = &groups[k];
    if (s->idx < 0) continue;
    s->g = h_group_create(s->ranks, s->n, s->name);
    CHECK(s->g, par_group_set_timeout(s->g, op_timeout));
  }
}

/* ---------------------------------------------------------------------------------------- */
/* Buffers: malloc or par_alloc, with guard bytes either way                                */
/* ---------------------------------------------------------------------------------------- */

#define GUARD 64

typedef struct sbuf {
  unsigned char *raw, *data;
  size_t bytes, cap;
  int zc; /* from par_alloc */
} sbuf;

/*
 * par_alloc'ed blocks are mostly reused, as a program would: a freed block goes back to a pool
 * (by size class, powers of two) and the next op that fits takes it, so a peer that still read
 * it after the op had completed here would see the next op's data. One block in `churn`
 * (PAR_SOAK_CHURN, default 2) is really freed (par_free), so a peer that still needed it would
 * fail to map it or read freed memory. Peers keep their mappings of freed blocks until the
 * world ends, so long runs use a higher PAR_SOAK_CHURN to bound the memory held.
 */
#define POOL_CLASSES 16 /* 4 KiB .. 128 MiB */
#define POOL_DEPTH 4
static unsigned churn = 2;

static void *pool[POOL_CLASSES][POOL_DEPTH];
static int npool[POOL_CLASSES];
static uint64_t pool_draws;

static int size_class(size_t total) {
  int c = 0;
  while (c < POOL_CLASSES - 1 && ((size_t)4096 << c) < total) c++;
  return c;
}

static void *zc_get(size_t total, size_t *cap) {
  int c = size_class(total);
  *cap = (size_t)4096 << c;
  if (*cap < total) *cap = total; /* beyond the largest class: not pooled */
  if (*cap == (size_t)4096 << c && npool[c] > 0) return pool[c][--npool[c]];
  void *raw = NULL;
  par_status s = par_alloc(h_world, *cap, &raw);
  if (s != PAR_OK) h_fail_call(__FILE__, __LINE__, "par_alloc", s, NULL, NULL);
  return raw;
}

static void zc_put(void *raw, size_t cap) {
  int c = size_class(cap);
  int really = mix(seed ^ ((uint64_t)(unsigned)h_rank << 48) ^ pool_draws++) % churn == 0;
  if (really || cap != (size_t)4096 << c || npool[c] == POOL_DEPTH) {
    par_status s = par_free(h_world, raw);
    if (s != PAR_OK) h_fail_call(__FILE__, __LINE__, "par_free", s, NULL, NULL);
    return;
  }
  pool[c][npool[c]++] = raw;
}

static void pool_drain(void) {
  for (int c = 0; c < POOL_CLASSES; c++)
    while (npool[c] > 0) {
      par_status s = par_free(h_world, pool[c][--npool[c]]);
      if (s != PAR_OK) h_fail_call(__FILE__, __LINE__, "par_free", s, NULL, NULL);
    }
}

static unsigned char guard_byte(size_t i) { return (unsigned char)(0xA7 + i * 13); }

static void sb_alloc(sbuf *b, int zc, size_t bytes, size_t misalign) {
  size_t total = (2 * GUARD + misalign + bytes + 63) & ~(size_t)63;
  void *raw = NULL;
  b->cap = total;
  if (zc) {
    raw = zc_get(total, &b->cap);
  } else {
    raw = aligned_alloc(64, total);
    if (!raw) h_fail(__FILE__, __LINE__, "out of memory allocating %zu bytes", total);
  }
  b->raw = raw;
  b->data = b->raw + GUARD + misalign;
  b->bytes = bytes;
  b->zc = zc;
  for (size_t i = 0; i < GUARD + misalign; i++) b->data[-1 - (ptrdiff_t)i] = guard_byte(i);
  for (size_t i = 0; i < GUARD; i++) b->data[bytes + i] = guard_byte(i + 1000);
  memset(b->data, H_SENTINEL, bytes);
}

static void sb_free(sbuf *b) {
  if (!b->raw) return;
  if (b->zc) {
    zc_put(b->raw, b->cap);
  } else {
    free(b->raw);
  }
  memset(b, 0, sizeof *b);
}

/* ---------------------------------------------------------------------------------------- */
/* Counters and reporting                                                                   */
/* ---------------------------------------------------------------------------------------- */

static long long my_ops, my_bytes, my_wrong, my_errors;
static long long total_ops, total_rank_ops; /* the whole job's, computed from the stream */
static int trace;
static int use_zc = 1; /* PAR_SOAK_ZC=0: malloc only (to tell a zero-copy bug from others) */

/* One wrong result: the context says seed, step, op and group. Printed in full for the first
 * few, counted always. Returns 1 so callers can count an op once. */
static int report_wrong(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int report_wrong(const char *fmt, ...) {
  if (my_wrong < 10) {
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    fprintf(stderr, "[rank %d] WRONG %s\n[rank %d]   while: %s\n", h_rank, msg, h_rank, h_context_get());
  }
  return 1;
}

static void fmt_hex(char *out, size_t cap, const unsigned char *p, size_t es) {
  int len = snprintf(out, cap, "0x");
  for (size_t i = es; i-- > 0 && len < (int)cap;) len += snprintf(out + len, cap - (size_t)len, "%02x", p[i]);
}

/* Compares count elements bit for bit; on a difference reports the first ones. Returns 1 when
 * they differ. */
static int differ(const char *what, par_dtype dt, const void *expected, const void *actual, size_t count) {
  size_t es = par_dtype_size(dt);
  my_bytes += (long long)(count * es);
  if (count == 0 || memcmp(expected, actual, count * es) == 0) return 0;
  size_t ndiff = 0, first = 0;
  for (size_t j = 0; j < count; j++) {
    const unsigned char *e = (const unsigned char *)expected + j * es, *a = (const unsigned char *)actual + j * es;
    if (memcmp(e, a, es) == 0) continue;
    if (ndiff == 0) first = j;
    if (ndiff < 3 && my_wrong < 10) {
      char he[40], ha[40];
      fmt_hex(he, sizeof he, e, es);
      fmt_hex(ha, sizeof ha, a, es);
      fprintf(stderr, "[rank %d]   %s[%zu]: expected %s, got %s\n", h_rank, what, j, he, ha);
    }
    ndiff++;
  }
  return report_wrong("%s (%s, %zu elements): %zu differ from the reference, first at %zu", what,
                      par_dtype_name(dt), count, ndiff, first);
}

static int guards_broken(const sbuf *b, size_t misalign, const char *what) {
  if (!b->raw) return 0;
  for (size_t i = 0; i < GUARD + misalign; i++)
    if (b->data[-1 - (ptrdiff_t)i] != guard_byte(i))
      return report_wrong("%s: guard byte %zd before the buffer was overwritten", what, -1 - (ptrdiff_t)i);
  for (size_t i = 0; i < GUARD; i++)
    if (b->data[b->bytes + i] != guard_byte(i + 1000))
      return report_wrong("%s: guard byte %zu after the end (%zu bytes) was overwritten", what, i, b->bytes);
  return 0;
}

static int sentinel_broken(const sbuf *b, const char *what) {
  for (size_t i = 0; i < b->bytes; i++)
    if (b->data[i] != H_SENTINEL) return report_wrong("%s: byte %zu of %zu was written", what, i, b->bytes);
  return 0;
}

/* ---------------------------------------------------------------------------------------- */
/* Ops                                                                                      */
/* ---------------------------------------------------------------------------------------- */

/* The collectives keep the harness's numbering; then barrier and point to point. */
enum { K_BARRIER = H_COLL_COUNT, K_P2P, K_COUNT };
#define MAX_MSG 3

static const char *kind_name(int k) {
  return k < H_COLL_COUNT ? h_coll_name((h_coll)k) : k == K_BARRIER ? "barrier" : "send/recv";
}

typedef enum amode { A_BLOCKING, A_WAIT, A_POLL } amode;

typedef struct sop {
  /* drawn from the shared stream: equal on every rank */
  int kind, gi;
  par_dtype dt;
  par_op op;
  h_gen gen;
  size_t count, misalign;
  int root, inplace;
  int zc_mode;  /* 0: malloc everywhere, 1: par_alloc everywhere, 2: each rank decides */
  amode mode;
  int64_t step, due; /* async: completed at the end of step `due` */
  int opi;
  uint32_t salt;
  int src, dst, both, nmsg; /* send/recv: indices; dst == src sends to itself */
  size_t mcount[MAX_MSG];
  /* this rank's part */
  int zc;
  sbuf send, recv;
  par_work *work;
  sbuf ps[2][MAX_MSG], pr[2][MAX_MSG]; /* [direction][message]: sent, received */
  par_work *psw[2][MAX_MSG], *prw[2][MAX_MSG];
} sop;

static int reduces(int kind) { return kind < H_COLL_COUNT && h_coll_reduces((h_coll)kind); }

/* Element counts by size class; for ops with a block per member the class sizes the whole
 * buffer, so one op stays within ~9 MiB per buffer at any rank count. */
static size_t draw_count(int kind, par_dtype dt, int n) {
  size_t es = par_dtype_size(dt);
  unsigned c = below(100);
  if (c < 6) return 0;
  if (c < 14) return 1;
  if (c < 42) return 3 + 2 * (size_t)below(60);
  if (c < 76) return 1000 + (size_t)below(4000);
  size_t bytes = c < 95 ? 16 * 1024 + (size_t)below(1008 * 1024) : (1u << 20) + (size_t)below(8u << 20);
  if (kind == H_ALLGATHER || kind == H_REDUCE_SCATTER || kind == H_ALLTOALL) bytes /= (size_t)n;
  return (bytes / es) | 1;
}

static void draw_op(sop *o, int64_t step, int opi, int in_batch) {
  memset(o, 0, sizeof *o);
  o->step = o->due = step;
  o->opi = opi;
  o->gi = chance(40) ? 0 : 1 + (int)below((unsigned)ngroups - 1);
  int n = groups[o->gi].n;
  static const unsigned weight[K_COUNT] = {18, 12, 12, 12, 12, 10, 6, 18};
  unsigned r = below(100);
  for (o->kind = 0; o->kind < K_COUNT - 1 && r >= weight[o->kind]; o->kind++) r -= weight[o->kind];
  o->dt = (par_dtype)below(PAR_DTYPE_COUNT);
  o->op = (par_op)below(PAR_OP_COUNT);
  o->count = draw_count(o->kind, o->dt, n);
  o->root = (int)below((unsigned)n);
  o->inplace = o->kind != H_ALLTOALL && chance(50);
  o->misalign = chance(30) ? par_dtype_size(o->dt) * (1 + below(3)) : 0;
  if (reduces(o->kind)) {
    int wide = chance(50);
    o->gen = wide ? H_GEN_WIDE : o->op == PAR_PROD ? H_GEN_TINY : H_GEN_SMALL;
  } else {
    o->gen = H_GEN_BITS;
  }
  o->zc_mode = (int)below(3);
  if (!use_zc) o->zc_mode = 0;
  o->mode = in_batch ? (amode)(1 + below(2)) : chance(15) ? (amode)(1 + below(2)) : A_BLOCKING;
  if (in_batch && chance(30)) o->due = step + 1 + below(3);
  o->salt = (uint32_t)mix(seed ^ mix((uint64_t)step * 64 + (uint64_t)opi));
  if (o->kind == K_P2P) {
    o->src = (int)below((unsigned)n);
    o->dst = n == 1 || chance(5) ? o->src : (o->src + 1 + (int)below((unsigned)n - 1)) % n;
    o->both = o->dst != o->src && chance(30);
    o->nmsg = chance(60) ? 1 : 2 + (int)below(MAX_MSG - 1);
    for (int i = 0; i < MAX_MSG; i++) o->mcount[i] = i == 0 ? o->count : draw_count(K_P2P, o->dt, n);
    if (o->dst == o->src && o->mode == A_BLOCKING) o->mode = A_WAIT; /* a blocking self-send cannot complete */
  }
}

/* What the stream covered (the whole job's): ops per kind, size class, async, buffers. */
static long long n_kind[K_COUNT], n_zero, n_one, n_large, n_async, n_later, n_zc, n_mixed, n_sub;

static void tally(const sop *o) {
  size_t bytes = o->count * par_dtype_size(o->dt);
  if (o->kind == H_ALLGATHER || o->kind == H_REDUCE_SCATTER || o->kind == H_ALLTOALL) bytes *= (size_t)groups[o->gi].n;
  n_kind[o->kind]++;
  n_zero += o->kind != K_BARRIER && o->count == 0;
  n_one += o->kind != K_BARRIER && o->count == 1;
  n_large += o->kind != K_BARRIER && bytes >= (1u << 20);
  n_async += o->mode != A_BLOCKING;
  n_later += o->due > o->step;
  n_zc += o->zc_mode == 1;
  n_mixed += o->zc_mode == 2;
  n_sub += o->gi != 0;
}

static const char *mode_name(amode m) { return m == A_BLOCKING ? "blocking" : m == A_WAIT ? "async+wait" : "async+test"; }

static const char *describe(const sop *o, char *buf, size_t cap) {
  const sgroup *s = &groups[o->gi];
  int len = snprintf(buf, cap, "seed %" PRIu64 " step %" PRId64 " op %d: %s dtype=%s", seed, o->step, o->opi,
                     kind_name(o->kind), par_dtype_name(o->dt));
  if (reduces(o->kind)) len += snprintf(buf + len, cap - (size_t)len, " op=%s gen=%s", par_op_name(o->op), h_gen_name(o->gen));
  if (o->kind == H_BROADCAST || o->kind == H_REDUCE) len += snprintf(buf + len, cap - (size_t)len, " root=%d", o->root);
  if (o->kind == K_P2P) {
    len += snprintf(buf + len, cap - (size_t)len, " %d->%d%s counts", o->src, o->dst, o->both ? " and back" : "");
    for (int i = 0; i < o->nmsg; i++) len += snprintf(buf + len, cap - (size_t)len, "%s%zu", i ? "," : "=", o->mcount[i]);
  } else if (o->kind != K_BARRIER) {
    len += snprintf(buf + len, cap - (size_t)len, " count=%zu %s", o->count, o->inplace ? "in-place" : "out-of-place");
  }
  snprintf(buf + len, cap - (size_t)len, " misalign=%zu buffers=%s %s%s on group '%s' (size %d, my index %d)",
           o->misalign, o->zc_mode == 0 ? "malloc" : o->zc_mode == 1 ? "par_alloc" : "mixed", mode_name(o->mode),
           o->due > o->step ? " (waited later)" : "", s->name, s->n, s->idx);
  return buf;
}

static void set_context(const sop *o, const char *phase) {
  char d[512];
  h_context("%s %s", phase, describe(o, d, sizeof d));
}

static void fail_status(const sop *o, const char *what, par_status s, par_work *w) {
  my_errors++;
  set_context(o, "running");
  h_fail_call(__FILE__, __LINE__, what, s, groups[o->gi].g, w);
}

/* ---- collectives ---------------------------------------------------------------------- */

static void post_coll(sop *o) {
  sgroup *s = &groups[o->gi];
  par_group *g = s->g;
  size_t es = par_dtype_size(o->dt), cnt = o->count, n = (size_t)s->n, idx = (size_t)s->idx;
  int me = h_rank, zc = o->zc;
  unsigned char *send = NULL, *recv = NULL;
  switch (o->kind) {
    case H_ALLREDUCE:
      sb_alloc(&o->send, zc, cnt * es, o->misalign);
      h_fill(o->send.data, cnt, o->dt, o->gen, me, 0, o->salt);
      if (!o->inplace) sb_alloc(&o->recv, zc, cnt * es, o->misalign);
      send = o->send.data;
      recv = o->inplace ? send : o->recv.data;
      break;
    case H_ALLGATHER:
      sb_alloc(&o->recv, zc, n * cnt * es, o->misalign);
      if (o->inplace) {
        send = o->recv.data + idx * cnt * es;
      } else {
        sb_alloc(&o->send, zc, cnt * es, o->misalign);
        send = o->send.data;
      }
      h_fill(send, cnt, o->dt, o->gen, me, 0, o->salt);
      recv = o->recv.data;
      break;
    case H_REDUCE_SCATTER:
      sb_alloc(&o->send, zc, n * cnt * es, o->misalign);
      h_fill(o->send.data, n * cnt, o->dt, o->gen, me, 0, o->salt);
      if (!o->inplace) sb_alloc(&o->recv, zc, cnt * es, o->misalign);
      send = o->send.data;
      recv = o->inplace ? send + idx * cnt * es : o->recv.data;
      break;
    case H_BROADCAST:
      sb_alloc(&o->recv, zc, cnt * es, o->misalign);
      if (s->idx == o->root) h_fill(o->recv.data, cnt, o->dt, o->gen, me, 0, o->salt);
      send = recv = o->recv.data;
      break;
    case H_REDUCE:
      sb_alloc(&o->send, zc, cnt * es, o->misalign);
      h_fill(o->send.data, cnt, o->dt, o->gen, me, 0, o->salt);
      send = o->send.data;
      if (o->inplace) {
        recv = send; /* on non-roots recvbuf is ignored: sendbuf must stay intact */
      } else if (s->idx == o->root || local_choice(o->step, o->opi, 1, 2)) {
        sb_alloc(&o->recv, zc, cnt * es, o->misalign); /* on non-roots: must stay untouched */
        recv = o->recv.data;
      }
      break;
    case H_ALLTOALL:
      sb_alloc(&o->send, zc, n * cnt * es, o->misalign);
      h_fill(o->send.data, n * cnt, o->dt, o->gen, me, 0, o->salt);
      sb_alloc(&o->recv, zc, n * cnt * es, o->misalign);
      send = o->send.data;
      recv = o->recv.data;
      break;
    default: break;
  }
  par_work **wp = o->mode == A_BLOCKING ? NULL : &o->work;
  par_status st = PAR_OK;
  switch (o->kind) {
    case H_ALLREDUCE:
      st = wp ? par_allreduce_async(g, send, recv, cnt, o->dt, o->op, wp) : par_allreduce(g, send, recv, cnt, o->dt, o->op);
      break;
    case H_ALLGATHER:
      st = wp ? par_allgather_async(g, send, recv, cnt, o->dt, wp) : par_allgather(g, send, recv, cnt, o->dt);
      break;
    case H_REDUCE_SCATTER:
      st = wp ? par_reduce_scatter_async(g, send, recv, cnt, o->dt, o->op, wp)
              : par_reduce_scatter(g, send, recv, cnt, o->dt, o->op);
      break;
    case H_BROADCAST:
      st = wp ? par_broadcast_async(g, recv, cnt, o->dt, o->root, wp) : par_broadcast(g, recv, cnt, o->dt, o->root);
      break;
    case H_REDUCE:
      st = wp ? par_reduce_async(g, send, recv, cnt, o->dt, o->op, o->root, wp)
              : par_reduce(g, send, recv, cnt, o->dt, o->op, o->root);
      break;
    case H_ALLTOALL:
      st = wp ? par_alltoall_async(g, send, recv, cnt, o->dt, wp) : par_alltoall(g, send, recv, cnt, o->dt);
      break;
    case K_BARRIER: st = wp ? par_barrier_async(g, wp) : par_barrier(g); break;
    default: break;
  }
  if (st != PAR_OK) fail_status(o, kind_name(o->kind), st, NULL);
}

/* Checks this rank's outputs of a completed collective; returns 1 if anything was wrong. */
static int check_coll(sop *o) {
  sgroup *s = &groups[o->gi];
  size_t es = par_dtype_size(o->dt), cnt = o->count, n = (size_t)s->n, idx = (size_t)s->idx;
  int wrong = 0, check_send = 0;
  if (o->kind == K_BARRIER) return 0;
  size_t big = (o->kind == H_ALLGATHER || o->kind == H_REDUCE_SCATTER || o->kind == H_ALLTOALL) ? n * cnt : cnt;
  unsigned char *exp = malloc(big * es + 8);
  if (!exp) h_fail(__FILE__, __LINE__, "out of memory");
  switch (o->kind) {
    case H_ALLREDUCE:
      h_ref_reduce(exp, cnt, o->dt, o->op, o->gen, s->ranks, s->n, 0, o->salt);
      wrong |= differ("allreduce result", o->dt, exp, o->inplace ? o->send.data : o->recv.data, cnt);
      check_send = !o->inplace;
      break;
    case H_ALLGATHER:
      for (size_t i = 0; i < n; i++) h_fill(exp + i * cnt * es, cnt, o->dt, o->gen, s->ranks[i], 0, o->salt);
      wrong |= differ("allgather result", o->dt, exp, o->recv.data, n * cnt);
      check_send = !o->inplace;
      break;
    case H_REDUCE_SCATTER:
      h_ref_reduce(exp, cnt, o->dt, o->op, o->gen, s->ranks, s->n, idx * cnt, o->salt);
      wrong |= differ("reduce_scatter result block", o->dt, exp, o->inplace ? o->send.data + idx * cnt * es : o->recv.data, cnt);
      check_send = 1;
      break;
    case H_BROADCAST:
      h_fill(exp, cnt, o->dt, o->gen, s->ranks[o->root], 0, o->salt);
      wrong |= differ("broadcast buffer", o->dt, exp, o->recv.data, cnt);
      break;
    case H_REDUCE:
      if (s->idx == o->root) {
        h_ref_reduce(exp, cnt, o->dt, o->op, o->gen, s->ranks, s->n, 0, o->salt);
        wrong |= differ("reduce result on the root", o->dt, exp, o->inplace ? o->send.data : o->recv.data, cnt);
        check_send = !o->inplace;
      } else {
        check_send = 1;
        if (o->recv.raw) wrong |= sentinel_broken(&o->recv, "reduce recvbuf on a non-root (ignored)");
      }
      break;
    case H_ALLTOALL:
      for (size_t i = 0; i < n; i++) h_fill(exp + i * cnt * es, cnt, o->dt, o->gen, s->ranks[i], idx * cnt, o->salt);
      wrong |= differ("alltoall result", o->dt, exp, o->recv.data, n * cnt);
      check_send = 1;
      break;
    default: break;
  }
  if (check_send && o->send.raw) {
    size_t total = (o->kind == H_REDUCE_SCATTER || o->kind == H_ALLTOALL) ? n * cnt : cnt;
    h_fill(exp, total, o->dt, o->gen, h_rank, 0, o->salt);
    if (o->kind == H_REDUCE_SCATTER && o->inplace) { /* all but my block, which is the result */
      size_t after = (idx + 1) * cnt;
      wrong |= differ("reduce_scatter sendbuf before my block (must be unchanged)", o->dt, exp, o->send.data, idx * cnt);
      wrong |= differ("reduce_scatter sendbuf after my block (must be unchanged)", o->dt, exp + after * es,
                      o->send.data + after * es, total - after);
    } else {
      wrong |= differ("sendbuf (must be unchanged)", o->dt, exp, o->send.data, total);
    }
  }
  wrong |= guards_broken(&o->send, o->misalign, "sendbuf");
  wrong |= guards_broken(&o->recv, o->misalign, "recvbuf");
  free(exp);
  return wrong;
}

/* ---- send/recv ------------------------------------------------------------------------ */

/* Direction 0 is src -> dst, direction 1 (when `both`) dst -> src. */
static int p2p_from(const sop *o, int d) { return d ? o->dst : o->src; }
static int p2p_to(const sop *o, int d) { return d ? o->src : o->dst; }
static uint32_t msg_salt(const sop *o, int d, int i) { return o->salt + (uint32_t)(d * MAX_MSG + i + 1); }

static void post_p2p(sop *o) {
  sgroup *s = &groups[o->gi];
  par_group *g = s->g;
  int me = s->idx, ndir = o->both ? 2 : 1;
  /* Async: sends or recvs first, as this rank picks. Blocking: direction by direction, so
   * that a send always meets a posted recv. */
  int blocking = o->mode == A_BLOCKING, recvs_first = (int)local_choice(o->step, o->opi, 2, 2);
  for (int pass = 0; pass < (blocking ? 1 : 2); pass++)
    for (int d = 0; d < ndir; d++)
      for (int i = 0; i < o->nmsg; i++) {
        int sending = me == p2p_from(o, d) && (blocking || (pass == 0) != recvs_first);
        int receiving = me == p2p_to(o, d) && (blocking || (pass == 0) == recvs_first);
        size_t c = o->mcount[i], bytes = c * par_dtype_size(o->dt);
        par_status st;
        if (sending) {
          sb_alloc(&o->ps[d][i], o->zc, bytes, o->misalign);
          h_fill(o->ps[d][i].data, c, o->dt, H_GEN_BITS, h_rank, 0, msg_salt(o, d, i));
          st = o->mode == A_BLOCKING ? par_send(g, o->ps[d][i].data, c, o->dt, p2p_to(o, d))
                                     : par_send_async(g, o->ps[d][i].data, c, o->dt, p2p_to(o, d), &o->psw[d][i]);
          if (st != PAR_OK) fail_status(o, "send", st, NULL);
        }
        if (receiving) {
          sb_alloc(&o->pr[d][i], o->zc, bytes, o->misalign);
          st = o->mode == A_BLOCKING ? par_recv(g, o->pr[d][i].data, c, o->dt, p2p_from(o, d))
                                     : par_recv_async(g, o->pr[d][i].data, c, o->dt, p2p_from(o, d), &o->prw[d][i]);
          if (st != PAR_OK) fail_status(o, "recv", st, NULL);
        }
      }
}

static int check_p2p(sop *o) {
  sgroup *s = &groups[o->gi];
  int wrong = 0;
  for (int d = 0; d < 2; d++)
    for (int i = 0; i < MAX_MSG; i++) {
      size_t c = o->mcount[i], es = par_dtype_size(o->dt);
      if (!o->ps[d][i].raw && !o->pr[d][i].raw) continue;
      unsigned char *exp = malloc(c * es + 8);
      if (!exp) h_fail(__FILE__, __LINE__, "out of memory");
      if (o->pr[d][i].raw) {
        h_fill(exp, c, o->dt, H_GEN_BITS, s->ranks[p2p_from(o, d)], 0, msg_salt(o, d, i));
        wrong |= differ(i ? "a later message received" : "message received", o->dt, exp, o->pr[d][i].data, c);
        wrong |= guards_broken(&o->pr[d][i], o->misalign, "recv buffer");
      }
      if (o->ps[d][i].raw) {
        h_fill(exp, c, o->dt, H_GEN_BITS, h_rank, 0, msg_salt(o, d, i));
        wrong |= differ("send buffer (must be unchanged)", o->dt, exp, o->ps[d][i].data, c);
        wrong |= guards_broken(&o->ps[d][i], o->misalign, "send buffer");
      }
      free(exp);
    }
  return wrong;
}

/* ---- issue, complete, check ----------------------------------------------------------- */

static int member(const sop *o) {
  const sgroup *s = &groups[o->gi];
  if (s->idx < 0) return 0;
  return o->kind != K_P2P || s->idx == o->src || s->idx == o->dst;
}

static int participants(const sop *o) {
  return o->kind == K_P2P ? (o->src == o->dst ? 1 : 2) : groups[o->gi].n;
}

static void post(sop *o) {
  o->zc = o->zc_mode == 2 ? (int)local_choice(o->step, o->opi, 0, 2) : o->zc_mode;
  set_context(o, "posting");
  if (trace) fprintf(stderr, "[rank %d] soak: %s\n", h_rank, h_context_get());
  if (o->kind == K_P2P)
    post_p2p(o);
  else
    post_coll(o);
}

static void wait_one(sop *o, par_work **w) {
  if (!*w) return;
  par_status st;
  if (o->mode == A_POLL) {
    double deadline = h_now() + op_timeout + 30.0;
    while ((st = par_work_test(*w)) == PAR_IN_PROGRESS) {
      if (h_now() > deadline) {
        my_errors++;
        set_context(o, "polling");
        h_fail(__FILE__, __LINE__, "par_work_test still PAR_IN_PROGRESS after %.0f s (a hang)", op_timeout + 30.0);
      }
      h_sleep(50e-6);
    }
  } else {
    st = par_work_wait(*w, -1.0);
  }
  if (st != PAR_OK) fail_status(o, "completing the async op", st, *w);
  par_work_free(*w);
  *w = NULL;
}

/* Completes (async), checks, frees. */
static void finish(sop *o) {
  set_context(o, "completing");
  wait_one(o, &o->work);
  for (int d = 0; d < 2; d++)
    for (int i = 0; i < MAX_MSG; i++) {
      wait_one(o, &o->psw[d][i]);
      wait_one(o, &o->prw[d][i]);
    }
  set_context(o, "checking");
  my_wrong += o->kind == K_P2P ? check_p2p(o) : check_coll(o);
  my_ops++;
  sb_free(&o->send);
  sb_free(&o->recv);
  for (int d = 0; d < 2; d++)
    for (int i = 0; i < MAX_MSG; i++) {
      sb_free(&o->ps[d][i]);
      sb_free(&o->pr[d][i]);
    }
}

/* ---------------------------------------------------------------------------------------- */
/* The run                                                                                  */
/* ---------------------------------------------------------------------------------------- */

#define MAX_BATCH 6
#define MAX_PENDING 64
#define CHECKPOINT 8

static sop *pending[MAX_PENDING]; /* async ops of this rank in flight, in issue order */
static int npending;

/* Completes the pending ops due by `step` (all with step < 0), in an order this rank picks. */
static void complete_due(int64_t step) {
  int due[MAX_PENDING], nd = 0;
  for (int i = 0; i < npending; i++)
    if (step < 0 || pending[i]->due <= step) due[nd++] = i;
  for (int k = nd - 1; k > 0; k--) { /* a shuffle: ops on a group complete in issue order anyway */
    int j = (int)local_choice(step, k, 3, (unsigned)k + 1), t = due[k];
    due[k] = due[j];
    due[j] = t;
  }
  for (int k = 0; k < nd; k++) {
    finish(pending[due[k]]);
    free(pending[due[k]]);
    pending[due[k]] = NULL;
  }
  int m = 0;
  for (int i = 0; i < npending; i++)
    if (pending[i]) pending[m++] = pending[i];
  npending = m;
}

static double env_double(const char *name, double def) {
  const char *v = getenv(name);
  return v && *v ? strtod(v, NULL) : def;
}

int main(void) {
  h_init("test_soak");
  par_group *world = par_world_group(h_world);
  EXPECT_TRUE(h_size <= MAX_RANKS, "at most %d ranks, got %d", MAX_RANKS, h_size);
  trace = env_double("PAR_SOAK_TRACE", 0) != 0;
  use_zc = env_double("PAR_SOAK_ZC", 1) != 0;
  churn = (unsigned)env_double("PAR_SOAK_CHURN", 2);
  if (churn < 1) churn = 1;
  if (!getenv("PAR_TIMEOUT")) op_timeout = env_double("PAR_SOAK_TIMEOUT", 60.0);
  CHECK(world, par_group_set_timeout(world, op_timeout));
  double seconds = env_double("PAR_SOAK_SECONDS", 15.0);
  long long max_rank_ops = (long long)env_double("PAR_SOAK_OPS", 0);

  /* The seed: rank 0's, from the environment or the clock, broadcast to all. */
  int64_t sv = 0;
  if (h_rank == 0) {
    const char *e = getenv("PAR_SOAK_SEED");
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    sv = (int64_t)(e && *e ? strtoull(e, NULL, 0) : mix((uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec) ^ (uint64_t)getpid());
  }
  h_context("broadcasting the seed");
  CHECK(world, par_broadcast(world, &sv, 1, PAR_I64, 0));
  seed = (uint64_t)sv;
  rng = mix(seed);
  if (h_rank == 0) {
    printf("test_soak: seed %" PRIu64 " (PAR_SOAK_SEED=%" PRIu64 " replays it), %d ranks, until", seed, seed, h_size);
    if (seconds > 0) printf(" %.0f s%s", seconds, max_rank_ops > 0 ? " or" : "");
    if (max_rank_ops > 0) printf(" %lld rank-ops", max_rank_ops);
    printf("%s\n", seconds > 0 || max_rank_ops > 0 ? "" : " stopped (no limit)");
  }

  make_groups();
  if (h_rank == 0)
    for (int k = 1; k < ngroups; k++) printf("test_soak: group %s\n", groups[k].name);

  double t0 = h_now(), t_progress = t0;
  int64_t step = 0;
  for (int stop = 0; !stop; step++) {
    /* Draw the whole step first: every rank draws the same numbers, member or not. */
    sop *ops[MAX_BATCH];
    int nops = chance(12) ? 2 + (int)below(MAX_BATCH - 1) : 1;
    for (int i = 0; i < nops; i++) {
      ops[i] = malloc(sizeof(sop));
      if (!ops[i]) h_fail(__FILE__, __LINE__, "out of memory");
      draw_op(ops[i], step, i, nops > 1);
      total_ops++;
      total_rank_ops += participants(ops[i]);
      tally(ops[i]);
    }
    for (int i = 0; i < nops; i++) {
      sop *o = ops[i];
      if (!member(o)) {
        free(o);
        continue;
      }
      post(o);
      if (o->mode == A_BLOCKING) {
        finish(o);
        free(o);
      } else {
        if (npending == MAX_PENDING) complete_due(-1);
        pending[npending++] = o;
      }
    }
    complete_due(step);

    if (step % CHECKPOINT == CHECKPOINT - 1) {
      int64_t word[2] = {0, step};
      double now = h_now();
      if (h_rank == 0) {
        word[0] = (seconds > 0 && now - t0 >= seconds) || (max_rank_ops > 0 && total_rank_ops >= max_rank_ops);
        if (now - t_progress >= 60) { /* long runs say how far they are */
          t_progress = now;
          printf("test_soak: %.0f s: %" PRId64 " steps, %lld ops, %lld rank-ops\n", now - t0, step + 1, total_ops,
                 total_rank_ops);
        }
      }
      h_context("seed %" PRIu64 " step %" PRId64 ": checkpoint broadcast on the world", seed, step);
      CHECK(world, par_broadcast(world, word, 2, PAR_I64, 0));
      EXPECT_TRUE(word[1] == step, "rank 0 is at step %" PRId64 " at the checkpoint, I am at %" PRId64, word[1], step);
      stop = (int)word[0];
    }
  }
  complete_due(-1);
  double elapsed = h_now() - t0;

  h_context("seed %" PRIu64 ": totals after %" PRId64 " steps", seed, step);
  int64_t mine[4] = {my_ops, my_bytes, my_wrong, my_errors}, sum[4];
  CHECK(world, par_allreduce(world, mine, sum, 4, PAR_I64, PAR_SUM));
  printf("test_soak: rank %d: %" PRId64 " steps, %lld ops, %lld bytes checked, %lld wrong, %lld errors\n", h_rank,
         step, my_ops, my_bytes, my_wrong, my_errors);
  if (h_rank == 0)
    printf("test_soak: seed %" PRIu64 ", %d ranks, %.1f s: %lld ops, %" PRId64 " rank-ops (%.0f/s), %" PRId64
           " bytes checked, %" PRId64 " wrong, %" PRId64 " errors, 0 hangs\n",
           seed, h_size, elapsed, total_ops, sum[0], (double)sum[0] / elapsed, sum[1], sum[2], sum[3]);
  if (h_rank == 0) {
    printf("test_soak: kinds:");
    for (int k = 0; k < K_COUNT; k++) printf(" %s %lld", kind_name(k), n_kind[k]);
    printf("; count 0: %lld, 1: %lld, >= 1 MiB: %lld; async %lld (waited steps later %lld); par_alloc %lld, "
           "mixed %lld; on subgroups %lld\n", n_zero, n_one, n_large, n_async, n_later, n_zc, n_mixed, n_sub);
  }
  /* Every rank ran its share of the stream: the ranks' ops add up to the stream's rank-ops. */
  EXPECT_TRUE(sum[0] == total_rank_ops, "the ranks ran %" PRId64 " rank-ops together, the stream has %lld", sum[0],
              total_rank_ops);
  EXPECT_TRUE(sum[2] == 0, "no wrong result on any rank (seed %" PRIu64 "), got %" PRId64 " (this rank: %lld)", seed,
              sum[2], my_wrong);
  pool_drain();
  for (int k = 1; k < ngroups; k++) par_group_destroy(groups[k].g);
  return h_finish();
}
