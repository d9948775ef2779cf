/*
 * test_stage.c -- the shared-memory backend's staging choice (src/backends/shm/shm_stage.c)
 * as pure logic on a shm_staging record: which ops it leaves to the cache, that it streams
 * only once streaming was measured cheaper, that the other way is tried on one op every 16
 * and 50 ms, that one slow op of the way taken does not turn it over while a lasting change
 * does, that the tried way counts at its latest figure, that kinds of read keep apart, and
 * that a forced way wins.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "backends/shm/shm.h"

#define MIB ((size_t)1 << 20)
#define STREAM_MIN (32 * MIB)

static shm_staging fresh(void) {
  shm_staging g;
  memset(&g, 0, sizeof g);
  g.choose = -1;
  return g;
}

/* One op of 1 MiB in 256 KiB pieces read by `kind` at time `now`; then, as if timed, its
 * staging and reading cost (ticks per byte) `w` and `r` in the way it was staged. */
static int op(shm_staging *g, int kind, double now, double w, double r) {
  par__shm_stage_choose(g, MIB, 256 << 10, kind, STREAM_MIN, now);
  int mode = g->mode;
  if (g->kind >= 0) {
    g->acc[mode][0] = g->acc[mode][2] = (double)MIB;
    g->acc[mode][1] = w * (double)MIB;
    g->acc[mode][3] = r * (double)MIB;
  }
  par__shm_stage_settle(g);
  return mode;
}

static void test_left_to_the_cache(void **state) {
  (void)state;
  shm_staging g = fresh();
  g.figs[SHM_READ_COPY].wcost[1] = g.figs[SHM_READ_COPY].rcost[1] = 0.01; /* streaming cheap */
  g.figs[SHM_READ_COPY].wcost[0] = g.figs[SHM_READ_COPY].rcost[0] = 1.0;
  /* too small, too large, pieces too small to time, a path that does not time */
  par__shm_stage_choose(&g, SHM_STAGE_MIN - 1, 256 << 10, SHM_READ_COPY, STREAM_MIN, 0);
  assert_int_equal(g.mode, SHM_WRITE_CACHE);
  par__shm_stage_choose(&g, STREAM_MIN, 256 << 10, SHM_READ_COPY, STREAM_MIN, 0);
  assert_int_equal(g.mode, SHM_WRITE_CACHE);
  assert_int_equal(g.kind, -1);
  par__shm_stage_choose(&g, MIB, SHM_STAGE_PIECE - 1, SHM_READ_COPY, STREAM_MIN, 0);
  assert_int_equal(g.kind, -1);
  par__shm_stage_choose(&g, MIB, 256 << 10, -1, STREAM_MIN, 0);
  assert_int_equal(g.mode, SHM_WRITE_CACHE);
  /* with the figures above, a timed op streams */
  par__shm_stage_choose(&g, MIB, 256 << 10, SHM_READ_COPY, STREAM_MIN, 0);
  assert_int_equal(g.mode, SHM_WRITE_STREAM);
  assert_int_equal(g.kind, SHM_READ_COPY);
}

static void test_forced(void **state) {
  (void)state;
  for (int way = 0; way < 2; way++) {
    shm_staging g = fresh();
    g.choose = way;
    par__shm_stage_choose(&g, 64 * MIB, 256 << 10, -1, STREAM_MIN, 0);
    assert_int_equal(g.mode, way);
    assert_int_equal(g.kind, -1); /* not timed */
    par__shm_stage_choose(&g, SHM_STAGE_MIN - 1, 1024, -1, STREAM_MIN, 0);
    assert_int_equal(g.mode, SHM_WRITE_CACHE);
  }
}

/* Costs (ticks per byte) of staging and reading back, by way, in two placements. */
typedef struct place {
  double w[2], r[2];
} place;
static const place near = {{0.1, 0.2}, {0.1, 0.3}}; /* cache 0.2 in all, streaming 0.5 */
static const place far = {{0.1, 0.2}, {1.0, 0.3}};  /* cache 1.1, streaming 0.5 */

static int run(shm_staging *g, int kind, double now, const place *p) {
  shm_staging probe = *g;
  par__shm_stage_choose(&probe, MIB, 256 << 10, kind, STREAM_MIN, now);
  return op(g, kind, now, p->w[probe.mode], p->r[probe.mode]);
}

static void test_tries_and_turns(void **state) {
  (void)state;
  shm_staging g = fresh();
  double now = 1.0;
  /* The cache until a try: the 16th timed op, then none before 50 ms have passed. */
  for (int i = 1; i <= 15; i++) assert_int_equal(run(&g, SHM_READ_COPY, now, &near), 0);
  assert_int_equal(run(&g, SHM_READ_COPY, now, &near), SHM_WRITE_STREAM);
  for (int i = 0; i < 40; i++) assert_int_equal(run(&g, SHM_READ_COPY, now, &near), 0);
  now += 0.06;
  assert_int_equal(run(&g, SHM_READ_COPY, now, &near), SHM_WRITE_STREAM); /* tried again */
  assert_int_equal(run(&g, SHM_READ_COPY, now, &near), 0); /* and measured dearer */
  /* One op the host stopped does not turn the cache over. */
  assert_int_equal(op(&g, SHM_READ_COPY, now, 0.1, 50.0), 0);
  assert_int_equal(run(&g, SHM_READ_COPY, now, &near), 0);
  /* A placement that lasts does, within a dozen ops. */
  int turned = 0;
  for (int i = 0; i < 12 && !turned; i++)
    turned = run(&g, SHM_READ_COPY, now, &far) == SHM_WRITE_STREAM;
  assert_true(turned);
  for (int i = 0; i < 10; i++) assert_int_equal(run(&g, SHM_READ_COPY, now, &far), 1);
  /* Back near: the next try measures the cache at its latest figure, and it is taken. */
  now += 0.06;
  int back = 0;
  for (int i = 0; i < 20 && !back; i++) {
    int m = run(&g, SHM_READ_COPY, now, &near);
    if (m == SHM_WRITE_CACHE) back = run(&g, SHM_READ_COPY, now, &near) == SHM_WRITE_CACHE;
  }
  assert_true(back);
  /* The other kind of read learnt nothing from all this. */
  par__shm_stage_choose(&g, MIB, 256 << 10, SHM_READ_REDUCE, STREAM_MIN, now);
  assert_int_equal(g.mode, SHM_WRITE_CACHE);
  assert_true(g.figs[SHM_READ_REDUCE].wcost[0] == 0 && g.figs[SHM_READ_REDUCE].rcost[1] == 0);
}

/* An op that timed nothing (its pieces were all read in place, say) changes no figure. */
static void test_untimed_op(void **state) {
  (void)state;
  shm_staging g = fresh();
  g.figs[SHM_READ_COPY].wcost[0] = g.figs[SHM_READ_COPY].rcost[0] = 0.1;
  shm_stage_figs before = g.figs[SHM_READ_COPY];
  par__shm_stage_choose(&g, MIB, 256 << 10, SHM_READ_COPY, STREAM_MIN, 1.0);
  par__shm_stage_settle(&g);
  assert_memory_equal(&before.wcost, &g.figs[SHM_READ_COPY].wcost, sizeof before.wcost);
  assert_memory_equal(&before.rcost, &g.figs[SHM_READ_COPY].rcost, sizeof before.rcost);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_left_to_the_cache),
      cmocka_unit_test(test_forced),
      cmocka_unit_test(test_tries_and_turns),
      cmocka_unit_test(test_untimed_op),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
