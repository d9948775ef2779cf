/*
 * shm_stage.c -- how a member writes what it stages into the segment (shm.h, "Staging").
 *
 * Where the readers sit on the writer's core complex they take the staged lines from its
 * cache fastest; where they sit on another die or socket, every line read from the writer's
 * cache crosses the interconnect at the latency of a remote snoop, and lines the writer
 * streamed to memory come faster. On the 2-core EPYC VM the host moves the two virtual CPUs
 * between such placements every few seconds (bench/handover.c: 256 KiB handed over at 11-17
 * GB/s through the cache near, 2.5-3.7 far; 6-7 streamed either way); on a Zen 5 VM, ops
 * larger than the L3 ran 1.6-2.2x faster staged streamed, since a line the reader still holds
 * costs the writer a snoop to take back. So each member times its staging and its reads of
 * the others' staged pieces, by the way they were written (each member publishes its way per
 * round, and its read costs per op, which stand for a writer's readers), separately for ops
 * that fit the L3 and larger ones, and stages the way that cost less; the other way is tried
 * now and then. The choice changes how bytes are written, never which bytes or when, so
 * members need not agree on it. docs/PERFORMANCE.md, "Where the swings come from" and "A
 * second machine".
 */
#include <string.h>

#include "backends/shm/shm.h"

/* A cheap clock for the timings: only ratios of its readings are used. */
static inline uint64_t ticks(void) {
#if defined(__x86_64__) && defined(__GNUC__)
  return __builtin_ia32_rdtsc();
#else
  return (uint64_t)(par__now() * 1e9);
#endif
}

static float load_cost(const _Atomic uint32_t *w) {
  uint32_t u = atomic_load_explicit(w, memory_order_relaxed);
  float f;
  memcpy(&f, &u, sizeof f);
  return f;
}

/* Publishes a cost when it moved by more than 1/16 since last published: the writers read
 * the line at every timed op's start, and it stays in their caches while it holds still. */
static void store_cost(_Atomic uint32_t *w, double cost) {
  float had = load_cost(w), f = (float)cost;
  if (had > 0 && f > had - had / 16 && f < had + had / 16) return;
  uint32_t u;
  memcpy(&u, &f, sizeof u);
  atomic_store_explicit(w, u, memory_order_relaxed);
}

/* What reading this member's staging costs its readers, by way: the mean of the figures the
 * others published for it, else this member's own reads of the others' staging, which on a
 * symmetric op are the same kind of read. */
static void readers_cost(const shm_stage_figs *f, int kind, int cls, const shm_ctrl *ctrl, int n,
                         int me, double r[2]) {
  for (int m = 0; m < 2; m++) {
    double sum = 0;
    int known = 0;
    for (int j = 0; ctrl && j < n; j++) {
      double c = j == me ? 0 : load_cost(&ctrl[j].rcost[kind][cls][m]);
      if (c > 0) sum += c, known++;
    }
    r[m] = known ? sum / known : f->rcost[m];
  }
}

void par__shm_stage_choose(shm_staging *g, size_t moved, size_t piece, int kind, size_t stream_min,
                           double now, const shm_ctrl *ctrl, int n, int me) {
  g->kind = -1;
  g->mode = SHM_WRITE_CACHE;
  if (moved < SHM_STAGE_MIN) return;
  if (g->choose >= 0) {
    g->mode = g->choose;
    return;
  }
  if (kind < 0 || piece < SHM_STAGE_PIECE) return;
  /* An op larger than the last-level cache reads its input from memory and writes its
   * output there: its costs differ from a cached op's, and so may its best way. */
  g->cls = moved >= stream_min ? SHM_CLASS_MEMORY : SHM_CLASS_CACHED;
  /* Where ranks share cores, a reader often runs on the writer's core after it, and finds a
   * cached op's staging in that core's cache; a larger op's is in memory either way. */
  if (g->shared_cores && g->cls == SHM_CLASS_CACHED) return;
  shm_stage_figs *f = &g->figs[kind][g->cls];
  double r[2];
  readers_cost(f, kind, g->cls, ctrl, n, me, r);
  double c = f->wcost[SHM_WRITE_CACHE] + r[SHM_WRITE_CACHE];
  double t = f->wcost[SHM_WRITE_STREAM] + r[SHM_WRITE_STREAM];
  /* The cache unless streaming cost less, both measured. */
  f->best = f->wcost[SHM_WRITE_STREAM] > 0 && f->wcost[SHM_WRITE_CACHE] > 0 &&
            r[SHM_WRITE_STREAM] > 0 && r[SHM_WRITE_CACHE] > 0 && t < c;
  g->kind = kind;
  if (f->try_left > 0) { /* a try lasts SHM_STAGE_TRY_LEN ops */
    f->try_left--;
    g->mode = !f->best;
    return;
  }
  g->mode = f->best;
  /* The first try comes as soon as the way taken has a figure (a job that moves large
   * messages may run only a few), the later ones every SHM_STAGE_TRY_OPS ops. */
  int have = f->wcost[f->best] > 0 && r[f->best] > 0;
  int other = f->wcost[!f->best] > 0 && r[!f->best] > 0;
  f->since_try++;
  if (other ? f->since_try < SHM_STAGE_TRY_OPS : !have) return;
  if (now < 0) now = par__now_coarse(); /* read only here: most ops never need it */
  if (now >= f->next_try) {
    g->mode = !f->best;
    f->try_left = SHM_STAGE_TRY_LEN - 1;
    f->next_try = now + SHM_STAGE_TRY_S;
    f->since_try = 0;
  }
}

void par__shm_stage(shm_state *st, int s, void *dst, const void *src, size_t n) {
  shm_staging *g = &st->staging;
  uint32_t *w = &st->ctrl[st->me].wmode[s];
  if (*w != (uint32_t)g->mode) *w = (uint32_t)g->mode; /* the readers fetch its line */
  uint64_t t0 = g->kind >= 0 && n >= SHM_STAGE_PIECE ? ticks() : 0;
  if (g->mode == SHM_WRITE_STREAM)
    par__copy_stream(dst, src, n);
  else
    par__copy(dst, src, n);
  uint64_t t1 = t0 ? ticks() : 0;
  if (t1 > t0) { /* a clock that went back (another CPU's counter) is no figure */
    g->acc[g->mode][0] += (double)n;
    g->acc[g->mode][1] += (double)(t1 - t0);
  }
}

uint64_t par__shm_stage_read_start(const shm_state *st, size_t bytes) {
  return st->staging.kind >= 0 && bytes >= SHM_STAGE_PIECE ? ticks() : 0;
}

void par__shm_stage_read_done(shm_state *st, int j, int s, size_t bytes, uint64_t t0) {
  uint64_t t1 = t0 ? ticks() : 0;
  if (t1 <= t0) return;
  int m = st->ctrl[j].wmode[s] == SHM_WRITE_STREAM;
  st->staging.acc[m][2] += (double)bytes;
  st->staging.acc[m][3] += (double)(t1 - t0);
}

/*
 * One way's figure, from an op that took it. The first op of a stretch of ops that took the
 * same way pays for the change (lines the other way left in memory, or in a cache, that this
 * way must first fetch or evict), so its figure is not taken. A figure older than a few ops
 * (the way tried now and then) is replaced, since it may carry a placement long gone; the
 * way taken op after op is averaged (1/4 per op), each op counting at most twice the average,
 * so that an op the host stopped for a while does not turn it over while a placement that
 * lasts does within a few ops.
 */
static void fold(shm_stage_figs *f, shm_stage_way *w, double *cost, int m, double bytes,
                 double ticks_) {
  if (m != w->last) w->last = m, w->run = 0;
  if (w->run < 2) w->run++; /* 1 or more than 1 is all it needs to know: no overflow */
  if (w->run == 1) return;
  double c = ticks_ / bytes;
  if (*cost <= 0 || f->ops - w->at[m] > SHM_STAGE_FRESH_OPS)
    *cost = c;
  else
    *cost += 0.25 * ((c < 2 * *cost ? c : 2 * *cost) - *cost);
  w->at[m] = f->ops;
}

void par__shm_stage_settle(shm_staging *g, shm_ctrl *mine) {
  if (g->kind >= 0) {
    shm_stage_figs *f = &g->figs[g->kind][g->cls];
    f->ops++;
    /* An op stages one way; its reads meet the writers' ways, mostly one. */
    int w = g->acc[1][0] > g->acc[0][0], r = g->acc[1][2] > g->acc[0][2];
    if (g->acc[w][0] > 0) fold(f, &f->staged, &f->wcost[w], w, g->acc[w][0], g->acc[w][1]);
    if (g->acc[r][2] > 0) {
      fold(f, &f->read, &f->rcost[r], r, g->acc[r][2], g->acc[r][3]);
      if (mine)
        for (int m = 0; m < 2; m++) store_cost(&mine->rcost[g->kind][g->cls][m], f->rcost[m]);
    }
  }
  for (int m = 0; m < 2; m++)
    for (int k = 0; k < 4; k++) g->acc[m][k] = 0;
}
