/*
 * test_tune.c -- par__tune_derive on the machines par has met: on the AMD EPYC it was tuned on
 * (and on the 35.8 MiB Xeon where docs/PERFORMANCE.md's figures were measured) it gives the
 * shared-memory backend's constants exactly; on the 2 MiB-L2 / 260 MiB-L3 Xeon the values the
 * rules argue for; on a machine that reports nothing, the constants again. Overrides win one
 * value each. Then the process's own environment: PAR_SHM_* values that are garbage are
 * ignored with a warning, good ones win, and par__tuning_get logs facts and values once.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "core/core.h"

#define KIB ((size_t)1 << 10)
#define MIB ((size_t)1 << 20)

/* The constants of src/backends/shm/shm.h before tuning: chunk, small_max, big_out, single
 * copy all-reduce window, single copy all-gather/broadcast window. */
static const size_t today[7] = {256 * KIB, 32 * KIB, 4 * MIB, 256 * KIB,
                                8 * MIB,   64 * KIB, 1 * MIB};

static par__machine machine(size_t l1d, size_t l2, int l2_by, size_t l3, int l3_by, int cpus) {
  par__machine m = {
      .l1d = l1d, .l2 = l2, .l2_shared_by = l2_by, .l3 = l3, .l3_shared_by = l3_by, .cpus = cpus};
  return m;
}

static void expect(const par__tuning *t, const size_t v[7]) {
  assert_int_equal(t->shm_chunk, v[0]);
  assert_int_equal(t->small_max, v[1]);
  assert_int_equal(t->big_out, v[2]);
  assert_int_equal(t->cma_reduce_min, v[3]);
  assert_int_equal(t->cma_reduce_max, v[4]);
  assert_int_equal(t->cma_move_min, v[5]);
  assert_int_equal(t->cma_move_max, v[6]);
}

/* ---- the rules on known machines -------------------------------------------------------- */

static void test_epyc_gives_todays_constants(void **state) {
  (void)state;
  par__machine m = machine(32 * KIB, 512 * KIB, 1, 32 * MIB, 2, 2);
  par__tuning t;
  par__tune_derive(&m, NULL, &t);
  expect(&t, today);
  assert_int_equal(t.from_env, 0);
  /* An environment that sets nothing changes nothing. */
  par__env none = {.log_level = PAR_LOG_INFO, .spin = -1, .shm_cma = -1};
  par__tune_derive(&m, &none, &t);
  expect(&t, today);
  assert_int_equal(t.from_env, 0);
}

static void test_cascade_lake_gives_todays_constants(void **state) {
  (void)state;
  /* Xeon @ 2.50 GHz, 1 MiB L2, 35.75 MiB L3, 2 vCPUs: docs/PERFORMANCE.md's run, where 256 KiB
   * rounds were measured best and 1 MiB ones 15-35% slower on 8 ranks. */
  par__machine m = machine(32 * KIB, 1 * MIB, 1, 36608 * KIB, 2, 2);
  par__tuning t;
  par__tune_derive(&m, NULL, &t);
  expect(&t, today);
}

/* A machine that reports its L1d and L2 but not its L3 (a Zen 5 VM that hides it): the L2
 * alone sets the chunk, since the default L3 is a guess; one that reports nothing runs as the
 * first machine. */
static void test_l3_unknown(void **state) {
  (void)state;
  par__machine m = machine(48 * KIB, 1 * MIB, 1, 32 * MIB, 2, 2);
  m.l3_from = PAR__FROM_DEFAULT;
  par__tuning t;
  par__tune_derive(&m, NULL, &t);
  assert_int_equal(t.shm_chunk, 512 * KIB);
  assert_int_equal(t.small_max, 48 * KIB);
  m.l3_from = PAR__FROM_CPUID; /* a 32 MiB L3 read: its cap holds */
  par__tune_derive(&m, NULL, &t);
  assert_int_equal(t.shm_chunk, 256 * KIB);
  par__machine none;
  memset(&none, 0, sizeof none);
  none.cpus = 2;
  par__machine_defaults(&none);
  par__tune_derive(&none, NULL, &t);
  expect(&t, today);
}

/* What the machine measures, not what it reports: single copy closes where the kernel's copy
 * costs more than twice a memcpy; non-temporal stores are a candidate from the whole L3. */
static void test_measured_and_streaming(void **state) {
  (void)state;
  par__machine m = machine(32 * KIB, 512 * KIB, 1, 32 * MIB, 2, 2);
  par__tuning t;
  m.cma_slowdown = 1.3; /* a kernel that copies almost as fast as memcpy: windows as ruled */
  par__tune_derive(&m, NULL, &t);
  expect(&t, today);
  assert_int_equal(t.stream_min, 32 * MIB);
  assert_int_equal(t.cma_bcast_min, 64 * KIB);
  assert_int_equal(t.cma_bcast_max, 32 * MIB);
  m.cma_slowdown = 3.4; /* this Firecracker VM: all-reduce and all-gather windows close */
  par__tune_derive(&m, NULL, &t);
  assert_true(t.cma_reduce_min == SIZE_MAX && t.cma_move_min == SIZE_MAX);
  assert_int_equal(t.cma_bcast_min, 64 * KIB); /* the root helps: still pays */
  m.cma_slowdown = 4.5;
  par__tune_derive(&m, NULL, &t);
  assert_true(t.cma_bcast_min == SIZE_MAX);
  m.cma_slowdown = 3.4;
  assert_int_equal(t.cma_reduce_max, 8 * MIB);
  char line[640];
  par__tuning_describe(&t, line, sizeof line);
  assert_non_null(strstr(line, "cma_reduce_min off (machine)"));
  /* An explicit window still wins. */
  par__env env = {.log_level = PAR_LOG_INFO, .spin = -1, .shm_cma = -1,
                  .shm_cma_reduce_min = 512 * KIB};
  par__tune_derive(&m, &env, &t);
  assert_int_equal(t.cma_reduce_min, 512 * KIB);
  assert_true(t.cma_move_min == SIZE_MAX);
  /* The 260 MiB Xeon streams only from 256 MiB; a 1 MiB L3 from the 4 MiB floor. */
  par__machine x = machine(48 * KIB, 2 * MIB, 1, 260 * MIB, 2, 2);
  par__tune_derive(&x, NULL, &t);
  assert_int_equal(t.stream_min, 256 * MIB);
  par__machine small = machine(32 * KIB, 256 * KIB, 1, 1 * MIB, 2, 2);
  par__tune_derive(&small, NULL, &t);
  assert_int_equal(t.stream_min, 4 * MIB);
}

static void test_xeon_260m(void **state) {
  (void)state;
  par__machine m = machine(48 * KIB, 2 * MIB, 1, 260 * MIB, 2, 2);
  par__tuning t;
  par__tune_derive(&m, NULL, &t);
  /* chunk L2/2; small_max L1d; big_out (130M/4 -> 32M); all-reduce window to 130M/2 capped at
   * 64M; all-gather to 4 chunks. */
  static const size_t want[7] = {1 * MIB,  48 * KIB, 32 * MIB, 256 * KIB,
                                 64 * MIB, 64 * KIB, 4 * MIB};
  expect(&t, want);
}

static void test_nothing_known_gives_todays_constants(void **state) {
  (void)state;
  par__machine m;
  par__machine_read("/nonexistent/par-test", &m);
  m.cpus = 2;
  par__machine_defaults(&m);
  par__tuning t;
  par__tune_derive(&m, NULL, &t);
  expect(&t, today);
}

static void test_shares_and_clamps(void **state) {
  (void)state;
  par__tuning t;
  /* A 64-core EPYC (8 cores, 16 threads per 32 MiB L3; SMT pairs share a 512 KiB L2), all 128
   * CPUs for the job: a thread's L2 share is 256K (chunk 128K), its L3 share 2 MiB. */
  par__machine big = machine(32 * KIB, 512 * KIB, 2, 32 * MIB, 16, 128);
  par__tune_derive(&big, NULL, &t);
  assert_int_equal(t.shm_chunk, 128 * KIB);
  assert_int_equal(t.small_max, 32 * KIB);
  assert_int_equal(t.big_out, 1 * MIB);        /* 2M / 4, raised to the 1M floor */
  assert_int_equal(t.cma_reduce_max, 1 * MIB); /* 2M / 2 */
  assert_int_equal(t.cma_move_max, 512 * KIB);
  /* The same part with a 2-CPU job: only 2 ranks compete for the L3 (16 MiB each), but the
   * two CPUs may be one core's SMT pair, so the L2 is still counted as halved. */
  big.cpus = 2;
  par__tune_derive(&big, NULL, &t);
  static const size_t two[7] = {128 * KIB, 32 * KIB, 4 * MIB,  256 * KIB,
                                8 * MIB,   64 * KIB, 512 * KIB};
  expect(&t, two);
  /* A small part: 256 KiB L2, 4 MiB L3 for 4 cores: the floors. */
  par__machine small = machine(16 * KIB, 256 * KIB, 1, 4 * MIB, 4, 4);
  par__tune_derive(&small, NULL, &t);
  static const size_t want[7] = {64 * KIB,  16 * KIB, 1 * MIB,  256 * KIB,
                                 512 * KIB, 64 * KIB, 256 * KIB};
  expect(&t, want);
  /* An L1d above the chunk is held to the chunk. */
  small.l1d = 128 * KIB;
  par__tune_derive(&small, NULL, &t);
  assert_int_equal(t.small_max, 64 * KIB);
  /* Huge caches: the caps. */
  par__machine huge = machine(64 * KIB, 16 * MIB, 1, 2048 * MIB, 1, 1);
  par__tune_derive(&huge, NULL, &t);
  assert_int_equal(t.shm_chunk, 1 * MIB);
  assert_int_equal(t.big_out, 64 * MIB);
  assert_int_equal(t.cma_reduce_max, 64 * MIB);
}

/* ---- overrides ---------------------------------------------------------------------------- */

static void test_overrides_win_one_value_each(void **state) {
  (void)state;
  par__machine m = machine(32 * KIB, 512 * KIB, 1, 32 * MIB, 2, 2);
  par__env env = {.log_level = PAR_LOG_INFO, .spin = -1, .shm_cma = -1};
  env.shm_chunk = 64 * KIB;
  env.shm_big_out = 16 * MIB;
  env.shm_cma_move_max = 3 * MIB;
  par__tuning t;
  par__tune_derive(&m, &env, &t);
  /* small_max and cma_move_max follow the machine's chunk, not the overridden one. */
  static const size_t want[7] = {64 * KIB, 32 * KIB, 16 * MIB, 256 * KIB,
                                 8 * MIB,  64 * KIB, 3 * MIB};
  expect(&t, want);
  assert_int_equal(t.from_env, PAR__TUNE_CHUNK | PAR__TUNE_BIG_OUT | PAR__TUNE_CMA_MOVE_MAX);
  char line[640];
  par__tuning_describe(&t, line, sizeof line);
  assert_string_equal(line,
                      "chunk 64K (PAR_SHM_CHUNK), small_max 32K (machine), big_out 16M "
                      "(PAR_SHM_BIG_OUT), cma_reduce_min 256K (machine), cma_reduce_max 8M "
                      "(machine), cma_move_min 64K (machine), cma_move_max 3M "
                      "(PAR_SHM_CMA_MOVE_MAX), stream_min 32M (machine), cma_bcast_min 64K "
                      "(machine), cma_bcast_max 32M (machine)");
  /* Every field can be overridden; a min above its max is kept (an empty window). */
  env.shm_small_max = 1;
  env.shm_cma_reduce_min = 9 * MIB;
  env.shm_cma_reduce_max = 1 * MIB;
  env.shm_cma_move_min = 5;
  par__tune_derive(&m, &env, &t);
  static const size_t all[7] = {64 * KIB, 1, 16 * MIB, 9 * MIB, 1 * MIB, 5, 3 * MIB};
  expect(&t, all);
  assert_int_equal(t.from_env, 0x7f);
}

static void test_parse_size(void **state) {
  (void)state;
  size_t v = 7;
  assert_int_equal(par__parse_size("4096", 0, 1 << 20, &v), 0);
  assert_int_equal(v, 4096);
  assert_int_equal(par__parse_size("4K", 0, 1 << 20, &v), 0);
  assert_int_equal(v, 4096);
  assert_int_equal(par__parse_size("3m", 0, 8 << 20, &v), 0);
  assert_int_equal(v, 3 << 20);
  assert_int_equal(par__parse_size("0", 0, 8, &v), 0);
  assert_int_equal(v, 0);
  v = 7;
  static const char *bad[] = {"",
                              "abc",
                              "-1",
                              " 1",
                              "+1",
                              "1G",
                              "4KK",
                              "4K ",
                              "1.5M",
                              "0x10",
                              "18446744073709551615K",
                              "99999999999999999999"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    if (par__parse_size(bad[i], 0, SIZE_MAX, &v) != -1) fail_msg("accepted '%s'", bad[i]);
    assert_int_equal(v, 7);
  }
  assert_int_equal(par__parse_size("4095", 4096, 8192, &v), -1);
  assert_int_equal(par__parse_size("9K", 4096, 8192, &v), -1);
  assert_int_equal(par__parse_size("8K", 4096, 8192, &v), 0);
  assert_int_equal(v, 8192);
}

/* ---- this process's environment and log ------------------------------------------------- */

static char logged[32][1100];
static int nlogged;

static void capture(par_log_level level, const char *line, void *ctx) {
  (void)level, (void)ctx;
  if (nlogged < 32) snprintf(logged[nlogged++], sizeof logged[0], "%s", line);
}

static int count_lines(const char *needle) {
  int n = 0;
  for (int i = 0; i < nlogged; i++) n += strstr(logged[i], needle) != NULL;
  return n;
}

static void test_environment(void **state) {
  (void)state;
  /* Set before anything reads the environment (it is read once per process). */
  setenv("PAR_LOG", "debug", 1);
  setenv("PAR_SHM_BIG_OUT", "8M", 1);
  setenv("PAR_SHM_CMA_MOVE_MAX", "2048K", 1);
  setenv("PAR_SHM_CMA_REDUCE_MIN", "0", 1); /* 0: derived, no warning */
  setenv("PAR_SHM_SMALL_MAX", "abc", 1);
  setenv("PAR_SHM_CMA_REDUCE_MAX", "-1", 1);
  setenv("PAR_SHM_CHUNK", "1K", 1); /* below its 4K minimum */
  setenv("PAR_SHM_CMA_MOVE_MIN", "99999999999999999999M", 1);
  par_set_log_handler(capture, NULL);

  const par__env *env = par__env_get();
  assert_int_equal(env->shm_big_out, 8 * MIB);
  assert_int_equal(env->shm_cma_move_max, 2 * MIB);
  assert_int_equal(env->shm_cma_reduce_min, 0);
  assert_int_equal(env->shm_small_max, 0);
  assert_int_equal(env->shm_cma_reduce_max, 0);
  assert_int_equal(env->shm_cma_move_min, 0);
  assert_int_equal(env->shm_chunk, 0);
  assert_int_equal(count_lines("ignoring PAR_SHM_SMALL_MAX=abc: not a valid value"), 1);
  assert_int_equal(count_lines("ignoring PAR_SHM_CMA_REDUCE_MAX=-1"), 1);
  assert_int_equal(count_lines("ignoring PAR_SHM_CMA_MOVE_MIN=99999999999999999999M"), 1);
  assert_int_equal(count_lines("ignoring PAR_SHM_CHUNK=1K"), 1);
  assert_int_equal(count_lines("PAR_SHM_CMA_REDUCE_MIN"), 0);
  assert_int_equal(count_lines("PAR_SHM_BIG_OUT"), 0);

  const par__tuning *t = par__tuning_get();
  par__tuning want;
  par__tune_derive(par__machine_get(), NULL, &want);
  assert_int_equal(t->shm_chunk, want.shm_chunk);
  assert_int_equal(t->small_max, want.small_max);
  assert_int_equal(t->big_out, 8 * MIB);
  assert_int_equal(t->cma_reduce_min, want.cma_reduce_min);
  assert_int_equal(t->cma_reduce_max, want.cma_reduce_max);
  assert_int_equal(t->cma_move_max, 2 * MIB);
  assert_int_equal(t->from_env, PAR__TUNE_BIG_OUT | PAR__TUNE_CMA_MOVE_MAX);
  /* Logged once, at debug: the facts, then each value and where it came from. */
  assert_int_equal(count_lines("debug: machine: "), 1);
  assert_int_equal(count_lines("debug: shm tuning: chunk "), 1);
  assert_int_equal(count_lines("big_out 8M (PAR_SHM_BIG_OUT)"), 1);
  assert_int_equal(count_lines("cma_move_max 2M (PAR_SHM_CMA_MOVE_MAX)"), 1);
  assert_int_equal(count_lines("small_max "), 1);
  assert_int_equal(count_lines("L1d "), 1);
  assert_ptr_equal(par__tuning_get(), t);
  assert_int_equal(count_lines("debug: shm tuning: "), 1);
  for (int i = 0; i < nlogged; i++) print_message("%s\n", logged[i]);
  par_set_log_handler(NULL, NULL);
}

/* ---- a group's round size ---------------------------------------------------------------- */

static void test_group_chunk(void **state) {
  (void)state;
  par__tuning t = {.shm_chunk = 512 * KIB};
  /* Ranks that fit the cores: the machine's chunk, whatever the group. */
  assert_int_equal(par__tune_group_chunk(&t, 2, 2, 2), 512 * KIB);
  assert_int_equal(par__tune_group_chunk(&t, 8, 8, 64), 512 * KIB);
  /* Ranks per core, rounded up, to a power of two at most 4. */
  assert_int_equal(par__tune_group_chunk(&t, 3, 3, 2), 1 * MIB);  /* 2 per core */
  assert_int_equal(par__tune_group_chunk(&t, 5, 5, 2), 1 * MIB);  /* 3 -> 2 */
  assert_int_equal(par__tune_group_chunk(&t, 8, 8, 2), 2 * MIB);  /* 4 */
  assert_int_equal(par__tune_group_chunk(&t, 8, 9, 4), 1 * MIB);
  /* The group's own members count: a 2-member group of 8 ranks on 2 cores keeps the
   * machine's; 3 of them take 2 per core. */
  assert_int_equal(par__tune_group_chunk(&t, 2, 8, 2), 512 * KIB);
  assert_int_equal(par__tune_group_chunk(&t, 3, 8, 2), 1 * MIB);
  assert_int_equal(par__tune_group_chunk(&t, 8, 9, 8), 512 * KIB);
  /* The segment's data stays within 64 MiB: 4 chunks per member. */
  assert_int_equal(par__tune_group_chunk(&t, 16, 16, 2), 1 * MIB);
  assert_int_equal(par__tune_group_chunk(&t, 64, 64, 2), 512 * KIB); /* cap 256K: never below */
  assert_int_equal(par__tune_group_chunk(&t, 32, 32, 2), 512 * KIB); /* cap 512K */
  t.shm_chunk = 64 * KIB;
  assert_int_equal(par__tune_group_chunk(&t, 64, 64, 2), 256 * KIB);
  /* Where the L3 was read, the segment's data stays within a quarter of it: the 35.8 MiB
   * Xeon's 8 ranks on 2 cores keep 256K; a 260 MiB L3 allows 2 MiB. */
  t.l3_read = (size_t)(35.8 * MIB);
  t.shm_chunk = 256 * KIB;
  assert_int_equal(par__tune_group_chunk(&t, 8, 8, 2), 256 * KIB);
  assert_int_equal(par__tune_group_chunk(&t, 3, 3, 2), 512 * KIB);
  t.l3_read = 260 * MIB;
  t.shm_chunk = 1 * MIB;
  assert_int_equal(par__tune_group_chunk(&t, 8, 8, 2), 2 * MIB);
  t.l3_read = 0;
  /* PAR_SHM_CHUNK is taken as it is; nothing known about the cores changes nothing. */
  t.shm_chunk = 512 * KIB;
  t.from_env = PAR__TUNE_CHUNK;
  assert_int_equal(par__tune_group_chunk(&t, 8, 8, 2), 512 * KIB);
  t.from_env = 0;
  assert_int_equal(par__tune_group_chunk(&t, 8, 8, 0), 512 * KIB);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_epyc_gives_todays_constants),
      cmocka_unit_test(test_cascade_lake_gives_todays_constants),
      cmocka_unit_test(test_l3_unknown),
      cmocka_unit_test(test_xeon_260m),
      cmocka_unit_test(test_measured_and_streaming),
      cmocka_unit_test(test_nothing_known_gives_todays_constants),
      cmocka_unit_test(test_shares_and_clamps),
      cmocka_unit_test(test_overrides_win_one_value_each),
      cmocka_unit_test(test_group_chunk),
      cmocka_unit_test(test_parse_size),
      cmocka_unit_test(test_environment),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
