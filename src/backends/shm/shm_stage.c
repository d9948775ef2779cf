/*
 * shm_stage.c -- how a member writes what it stages into the segment (shm.h, "Staging").
 *
 * Where the readers sit on the writer's core complex they take the staged lines from its
 * cache fastest; where they sit on another die or socket, every line read from the writer's
 * cache crosses the interconnect at the latency of a remote snoop, and lines the writer
 * streamed to memory come faster. On the 2-core EPYC VM the host moves the two virtual CPUs
 * between such placements every few seconds (bench/handover.c: 256 KiB handed over at 11-17
 * GB/s through the cache near, 2.5-3.7 far; 6-7 streamed either way). So each member times its
 * staging and its reads of the others' staged pieces, by the way they were written (each
 * member publishes its way per round), and stages the way that cost less; the other way is
 * tried now and then. The choice changes how bytes are written, never which bytes or when,
 * so members need not agree on it. docs/PERFORMANCE.md, "Where the swings come from".
 */
#include "backends/shm/shm.h"

/* A cheap clock for the timings: only ratios of its readings are used. */
static inline uint64_t ticks(void) {
#if defined(__x86_64__) && defined(__GNUC__)
  return __builtin_ia32_rdtsc();
#else
  return (uint64_t)(par__now() * 1e9);
#endif
}

void par__shm_stage_choose(shm_staging *g, size_t moved, size_t piece, int kind, size_t stream_min,
                           double now) {
  g->kind = -1;
  g->mode = SHM_WRITE_CACHE;
  if (moved < SHM_STAGE_MIN) return;
  if (g->choose >= 0) {
    g->mode = g->choose;
    return;
  }
  /* Ops larger than the last-level cache go through memory whichever way they are staged,
   * and staging them streamed was measured slower (docs/PERFORMANCE.md). */
  if (kind < 0 || piece < SHM_STAGE_PIECE || moved >= stream_min) return;
  shm_stage_figs *f = &g->figs[kind];
  double c = f->wcost[SHM_WRITE_CACHE] + f->rcost[SHM_WRITE_CACHE];
  double t = f->wcost[SHM_WRITE_STREAM] + f->rcost[SHM_WRITE_STREAM];
  /* The cache unless streaming cost less, both measured. */
  f->best = f->wcost[SHM_WRITE_STREAM] > 0 && f->rcost[SHM_WRITE_STREAM] > 0 &&
            f->rcost[SHM_WRITE_CACHE] > 0 && t < c;
  g->kind = kind;
  g->mode = f->best;
  if (++f->since_try < SHM_STAGE_TRY_OPS) return;
  if (now < 0) now = par__now_coarse(); /* read only here: most ops never need it */
  if (now >= f->next_try) {
    g->mode = !f->best;
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
 * The way taken op after op is averaged (1/4 per op), each op counting at most twice the
 * average, so that an op the host stopped for a while does not turn it over while a placement
 * that lasts does within a few ops; the way tried now and then is taken at its latest figure,
 * which would otherwise carry a placement long gone.
 */
static void fold(double *cost, double bytes, double ticks_, int steady) {
  if (bytes <= 0) return;
  double c = ticks_ / bytes;
  if (!steady || *cost <= 0) {
    *cost = c;
    return;
  }
  *cost += 0.25 * ((c < 2 * *cost ? c : 2 * *cost) - *cost);
}

void par__shm_stage_settle(shm_staging *g) {
  if (g->kind >= 0) {
    shm_stage_figs *f = &g->figs[g->kind];
    for (int m = 0; m < 2; m++) {
      fold(&f->wcost[m], g->acc[m][0], g->acc[m][1], m == f->best);
      fold(&f->rcost[m], g->acc[m][2], g->acc[m][3], m == f->best);
    }
  }
  for (int m = 0; m < 2; m++)
    for (int k = 0; k < 4; k++) g->acc[m][k] = 0;
}
