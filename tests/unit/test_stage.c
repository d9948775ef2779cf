/*
 * test_stage.c -- the shared-memory backend's staging choice (src/backends/shm/shm_stage.c)
 * as pure logic on a shm_staging record: which ops it leaves to the cache (where ranks share
 * cores, every op that fits it), that it streams only once streaming was measured cheaper,
 * that the other way is tried as soon as the way taken has a figure, then for two ops every
 * 16 ops and 50 ms, that the first op after a change of way is not taken, that one slow op of
 * the way taken does not turn it over while a lasting change does, that the tried way counts
 * at its latest figure, that kinds of read and size classes keep apart, that a writer goes
 * by its readers' published costs (a broadcast's root reads nothing itself), and that a
 * forced way wins.
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

/* The choice for an op of `moved` bytes in 256 KiB pieces, without peers. */
static void choose(shm_staging *g, size_t moved, int kind, double now) {
  par__shm_stage_choose(g, moved, 256 << 10, kind, STREAM_MIN, now, NULL, 0, 0);
}

/* Records, as if timed, an op's staging and reading cost (ticks per byte) `w` and `r` in the
 * way it was staged, and settles it. */
static void timed(shm_staging *g, double w, double r, shm_ctrl *mine) {
  int mode = g->mode;
  if (g->kind >= 0) {
    g->acc[mode][0] = g->acc[mode][2] = (double)MIB;
    g->acc[mode][1] = w * (double)MIB;
    g->acc[mode][3] = r * (double)MIB;
  }
  par__shm_stage_settle(g, mine);
}

/* One op of 1 MiB read by `kind` at time `now`, costing `w` and `r`. */
static int op(shm_staging *g, int kind, double now, double w, double r) {
  choose(g, MIB, kind, now);
  int mode = g->mode;
  timed(g, w, r, NULL);
  return mode;
}

/* An op of 1 MiB that read only, data staged `way`, at `cost` ticks per byte. */
static void read_op(shm_staging *g, int way, double cost, shm_ctrl *mine) {
  choose(g, MIB, SHM_READ_COPY, 1.0);
  g->acc[way][2] = (double)MIB;
  g->acc[way][3] = cost * (double)MIB;
  par__shm_stage_settle(g, mine);
}

/* Figures of the cached class. */
static shm_stage_figs *figs(shm_staging *g, int kind) { return &g->figs[kind][SHM_CLASS_CACHED]; }

static void test_left_to_the_cache(void **state) {
  (void)state;
  shm_staging g = fresh();
  figs(&g, SHM_READ_COPY)->wcost[1] = figs(&g, SHM_READ_COPY)->rcost[1] = 0.01; /* cheap */
  figs(&g, SHM_READ_COPY)->wcost[0] = figs(&g, SHM_READ_COPY)->rcost[0] = 1.0;
  /* too small, pieces too small to time, a path that does not time */
  choose(&g, SHM_STAGE_MIN - 1, SHM_READ_COPY, 0);
  assert_int_equal(g.mode, SHM_WRITE_CACHE);
  par__shm_stage_choose(&g, MIB, SHM_STAGE_PIECE - 1, SHM_READ_COPY, STREAM_MIN, 0, NULL, 0, 0);
  assert_int_equal(g.kind, -1);
  choose(&g, MIB, -1, 0);
  assert_int_equal(g.mode, SHM_WRITE_CACHE);
  /* with the figures above, a timed op streams */
  choose(&g, MIB, SHM_READ_COPY, 0);
  assert_int_equal(g.mode, SHM_WRITE_STREAM);
  assert_int_equal(g.kind, SHM_READ_COPY);
  assert_int_equal(g.cls, SHM_CLASS_CACHED);
  /* an op larger than the last-level cache is timed in its own class, not yet measured */
  choose(&g, STREAM_MIN, SHM_READ_COPY, 0);
  assert_int_equal(g.mode, SHM_WRITE_CACHE);
  assert_int_equal(g.kind, SHM_READ_COPY);
  assert_int_equal(g.cls, SHM_CLASS_MEMORY);
  /* where ranks share cores, only the larger ops are timed */
  g.shared_cores = 1;
  choose(&g, MIB, SHM_READ_COPY, 0);
  assert_int_equal(g.mode, SHM_WRITE_CACHE);
  assert_int_equal(g.kind, -1);
  choose(&g, STREAM_MIN, SHM_READ_COPY, 0);
  assert_int_equal(g.kind, SHM_READ_COPY);
}

static void test_forced(void **state) {
  (void)state;
  for (int way = 0; way < 2; way++) {
    shm_staging g = fresh();
    g.choose = way;
    choose(&g, 64 * MIB, SHM_READ_COPY, 0);
    assert_int_equal(g.mode, way);
    assert_int_equal(g.kind, -1); /* not timed */
    par__shm_stage_choose(&g, SHM_STAGE_MIN - 1, 1024, -1, STREAM_MIN, 0, NULL, 0, 0);
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
  choose(&probe, MIB, kind, now);
  return op(g, kind, now, p->w[probe.mode], p->r[probe.mode]);
}

static void test_tries_and_turns(void **state) {
  (void)state;
  shm_staging g = fresh();
  double now = 1.0;
  /* The cache until it has a figure (the first op pays for the start), then the first try,
   * two ops (the first of which pays for the change) ... */
  assert_int_equal(run(&g, SHM_READ_COPY, now, &near), 0);
  assert_int_equal(run(&g, SHM_READ_COPY, now, &near), 0);
  assert_int_equal(run(&g, SHM_READ_COPY, now, &near), SHM_WRITE_STREAM);
  assert_int_equal(run(&g, SHM_READ_COPY, now, &near), SHM_WRITE_STREAM);
  /* ... measured dearer; then no try before 50 ms have passed ... */
  for (int i = 0; i < 40; i++) assert_int_equal(run(&g, SHM_READ_COPY, now, &near), 0);
  now += 0.06;
  assert_int_equal(run(&g, SHM_READ_COPY, now, &near), SHM_WRITE_STREAM); /* tried again */
  assert_int_equal(run(&g, SHM_READ_COPY, now, &near), SHM_WRITE_STREAM);
  /* ... and 16 ops */
  now += 1.0;
  for (int i = 1; i <= 15; i++) assert_int_equal(run(&g, SHM_READ_COPY, now, &near), 0);
  assert_int_equal(run(&g, SHM_READ_COPY, now, &near), SHM_WRITE_STREAM);
  assert_int_equal(run(&g, SHM_READ_COPY, now, &near), SHM_WRITE_STREAM);
  assert_int_equal(run(&g, SHM_READ_COPY, now, &near), 0); /* and measured dearer */
  assert_int_equal(run(&g, SHM_READ_COPY, now, &near), 0);
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
  int tried = 0;
  for (int i = 0; i < 20 && !tried; i++) tried = run(&g, SHM_READ_COPY, now, &near) == 0;
  assert_true(tried);
  assert_int_equal(run(&g, SHM_READ_COPY, now, &near), 0); /* the try's second op */
  for (int i = 0; i < 5; i++) assert_int_equal(run(&g, SHM_READ_COPY, now, &near), 0);
  /* The other kind of read, and the larger ops, learnt nothing from all this. */
  choose(&g, MIB, SHM_READ_REDUCE, now);
  assert_int_equal(g.mode, SHM_WRITE_CACHE);
  assert_true(figs(&g, SHM_READ_REDUCE)->wcost[0] == 0 && figs(&g, SHM_READ_REDUCE)->rcost[1] == 0);
  shm_stage_figs *large = &g.figs[SHM_READ_COPY][SHM_CLASS_MEMORY];
  assert_true(large->wcost[0] == 0 && large->rcost[0] == 0 && large->rcost[1] == 0);
}

/* Ops larger than the last-level cache learn their own way: streaming there while the
 * cached ops keep to the cache. */
static void test_classes_apart(void **state) {
  (void)state;
  shm_staging g = fresh();
  double now = 1.0;
  int big_streams = 0, small_streamed = 0;
  for (int i = 0; i < 200; i++, now += 0.01) {
    choose(&g, MIB, SHM_READ_COPY, now);
    int small = g.mode;
    timed(&g, near.w[small], near.r[small], NULL);
    choose(&g, 64 * MIB, SHM_READ_COPY, now);
    int big = g.mode;
    timed(&g, far.w[big], far.r[big], NULL);
    if (i >= 100) big_streams += big == SHM_WRITE_STREAM, small_streamed += small;
  }
  assert_true(big_streams >= 80); /* all but the tries */
  assert_true(small_streamed <= 20);
}

/* A broadcast's root stages and reads nothing: it goes by what its readers published. The
 * readers publish only once they know both ways; a figure that barely moved is not
 * published again (the root reads the line at every op). */
static void test_readers_published(void **state) {
  (void)state;
  static shm_ctrl ctrl[3];
  memset(ctrl, 0, sizeof ctrl);
  shm_staging root = fresh(), reader[3] = {fresh(), fresh(), fresh()};
  double now = 1.0;
  int streamed = 0;
  for (int i = 0; i < 100; i++, now += 0.01) {
    par__shm_stage_choose(&root, MIB, 256 << 10, SHM_READ_COPY, STREAM_MIN, now, ctrl, 3, 0);
    int way = root.mode;
    timed(&root, far.w[way], 0, NULL); /* stages; reads nothing */
    root.acc[way][2] = root.acc[way][3] = 0;
    for (int j = 1; j < 3; j++) {
      par__shm_stage_choose(&reader[j], MIB, 256 << 10, SHM_READ_COPY, STREAM_MIN, now, ctrl, 3,
                            j);
      reader[j].acc[way][2] = (double)MIB; /* read what the root staged, its way */
      reader[j].acc[way][3] = far.r[way] * (double)MIB;
      par__shm_stage_settle(&reader[j], &ctrl[j]);
    }
    if (i >= 50) streamed += way;
  }
  assert_true(streamed >= 40); /* all but the tries */
  /* a way no reader published is judged by the writer's own reads */
  memset(ctrl, 0, sizeof ctrl);
  shm_staging one = fresh();
  read_op(&one, 0, 5.0, &ctrl[1]); /* the first op of a stretch pays for the change */
  assert_int_equal(atomic_load(&ctrl[1].rcost[SHM_READ_COPY][SHM_CLASS_CACHED][0]), 0);
  read_op(&one, 0, 5.0, &ctrl[1]);
  shm_staging w = fresh();
  figs(&w, SHM_READ_COPY)->wcost[0] = figs(&w, SHM_READ_COPY)->wcost[1] = 0.1;
  figs(&w, SHM_READ_COPY)->rcost[0] = 0.1, figs(&w, SHM_READ_COPY)->rcost[1] = 0.5;
  par__shm_stage_choose(&w, MIB, 256 << 10, SHM_READ_COPY, STREAM_MIN, now, NULL, 0, 0);
  assert_int_equal(w.mode, SHM_WRITE_CACHE); /* by its own figures */
  par__shm_stage_choose(&w, MIB, 256 << 10, SHM_READ_COPY, STREAM_MIN, now, ctrl, 2, 0);
  assert_int_equal(w.mode, SHM_WRITE_STREAM); /* its reader's cache costs 5.0 */
  /* a small move is not published again; a large one is */
  uint32_t was = atomic_load(&ctrl[1].rcost[SHM_READ_COPY][SHM_CLASS_CACHED][0]);
  assert_true(was != 0);
  read_op(&one, 0, 5.1, &ctrl[1]);
  assert_int_equal(atomic_load(&ctrl[1].rcost[SHM_READ_COPY][SHM_CLASS_CACHED][0]), was);
  read_op(&one, 0, 9.0, &ctrl[1]);
  assert_true(atomic_load(&ctrl[1].rcost[SHM_READ_COPY][SHM_CLASS_CACHED][0]) != was);
}

static void test_untimed_op(void **state) {
  (void)state;
  shm_staging g = fresh();
  figs(&g, SHM_READ_COPY)->wcost[0] = figs(&g, SHM_READ_COPY)->rcost[0] = 0.1;
  shm_stage_figs before = *figs(&g, SHM_READ_COPY);
  static shm_ctrl mine;
  choose(&g, MIB, SHM_READ_COPY, 1.0);
  par__shm_stage_settle(&g, &mine);
  assert_memory_equal(&before.wcost, &figs(&g, SHM_READ_COPY)->wcost, sizeof before.wcost);
  assert_memory_equal(&before.rcost, &figs(&g, SHM_READ_COPY)->rcost, sizeof before.rcost);
  assert_int_equal(atomic_load(&mine.rcost[SHM_READ_COPY][SHM_CLASS_CACHED][0]), 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_left_to_the_cache),
      cmocka_unit_test(test_forced),
      cmocka_unit_test(test_tries_and_turns),
      cmocka_unit_test(test_untimed_op),
      cmocka_unit_test(test_classes_apart),
      cmocka_unit_test(test_readers_published),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
