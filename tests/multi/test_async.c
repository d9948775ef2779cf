/*
 * test_async.c -- the _async forms and par_work handles.
 *
 * Every collective's async form, completed by par_work_wait and by polling par_work_test;
 * several ops in flight on one group completing in issue order; ops in flight on two
 * overlapping groups at once from one thread; par_work_wait with a timeout that runs out
 * (the work stays pending and completes later); par_work_free on pending work; and results
 * landing in the caller's buffers. Results are checked bit for bit against the reference.
 *
 * PAR_TEST_RANKS: 1 2 3 5 8
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"

static par_group *world;
static uint32_t salt = 1000;

/* Each collective's async form, waited on and polled. */
static void test_each_async(void) {
  int n = par_group_size(world);
  const h_case cases[] = {
      {H_ALLREDUCE, PAR_F32, PAR_SUM, 1000, 0, 0, H_GEN_WIDE, 0, 0},
      {H_ALLREDUCE, PAR_BF16, PAR_AVG, 7, 0, 1, H_GEN_WIDE, 2, 0},
      {H_ALLREDUCE, PAR_I64, PAR_PROD, 1000, 0, 1, H_GEN_WIDE, 0, 0},
      {H_ALLGATHER, PAR_F16, PAR_SUM, 7, 0, 0, H_GEN_BITS, 0, 0},
      {H_ALLGATHER, PAR_I32, PAR_SUM, 1000, 0, 1, H_GEN_BITS, 0, 0},
      {H_REDUCE_SCATTER, PAR_F64, PAR_MIN, 1000, 0, 0, H_GEN_WIDE, 0, 0},
      {H_REDUCE_SCATTER, PAR_I8, PAR_SUM, 7, 0, 1, H_GEN_WIDE, 0, 0},
      {H_BROADCAST, PAR_U8, PAR_SUM, 1000, n - 1, 1, H_GEN_BITS, 1, 0},
      {H_BROADCAST, PAR_F32, PAR_SUM, 1, 0, 1, H_GEN_BITS, 0, 0},
      {H_REDUCE, PAR_F16, PAR_MAX, 1000, n / 2, 0, H_GEN_WIDE, 0, 0},
      {H_REDUCE, PAR_I32, PAR_AVG, 7, n - 1, 1, H_GEN_SMALL, 0, 0},
      {H_ALLTOALL, PAR_BF16, PAR_SUM, 1000, 0, 0, H_GEN_BITS, 0, 0},
      {H_ALLTOALL, PAR_F64, PAR_SUM, 0, 0, 0, H_GEN_BITS, 0, 0},
      {H_ALLREDUCE, PAR_F32, PAR_MAX, 1u << 20, 0, 0, H_GEN_WIDE, 0, 0}, /* 4 MiB */
  };
  for (int mode = H_ASYNC_WAIT; mode <= H_ASYNC_POLL; mode++)
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
      h_case c = cases[i];
      c.salt = salt++;
      h_case_run(world, &c, (h_mode)mode);
    }
  for (int mode = H_ASYNC_WAIT; mode <= H_ASYNC_POLL; mode++) {
    h_context("barrier_async (%s)", mode == H_ASYNC_WAIT ? "wait" : "poll");
    par_work *w = NULL;
    CHECK(world, par_barrier_async(world, &w));
    EXPECT_TRUE(w != NULL, "par_barrier_async gave a work handle");
    if (mode == H_ASYNC_WAIT) {
      CHECK_WORK(world, w, -1.0);
    } else {
      par_status s;
      while ((s = par_work_test(w)) == PAR_IN_PROGRESS) h_sleep(100e-6);
      EXPECT_STATUS(PAR_OK, s);
    }
    par_work_free(w);
  }
}

/* Many ops in flight on one group: after the last one completes, every earlier one must have
 * completed too (ops on a group complete in issue order), and all results must be right. */
static void test_in_flight_in_order(void) {
  int n = par_group_size(world);
  const h_case cases[] = {
      {H_ALLREDUCE, PAR_F32, PAR_SUM, 1000, 0, 0, H_GEN_WIDE, 0, 0},
      {H_ALLGATHER, PAR_I64, PAR_SUM, 77, 0, 0, H_GEN_BITS, 0, 0},
      {H_BROADCAST, PAR_F16, PAR_SUM, 513, n - 1, 1, H_GEN_BITS, 0, 0},
      {H_REDUCE_SCATTER, PAR_BF16, PAR_SUM, 300, 0, 1, H_GEN_WIDE, 0, 0},
      {H_ALLREDUCE, PAR_F64, PAR_AVG, 3u << 17, 0, 1, H_GEN_WIDE, 0, 0}, /* 3 MiB */
      {H_REDUCE, PAR_U8, PAR_MIN, 1000, 0, 0, H_GEN_WIDE, 0, 0},
      {H_ALLTOALL, PAR_I32, PAR_SUM, 100, 0, 0, H_GEN_BITS, 0, 0},
      {H_ALLREDUCE, PAR_I8, PAR_MAX, 1, 0, 0, H_GEN_WIDE, 0, 0},
  };
  enum { K = sizeof cases / sizeof cases[0] };
  for (int rep = 0; rep < 2; rep++) {
    h_pending *p[K];
    for (int i = 0; i < K; i++) {
      h_case c = cases[i];
      c.salt = salt++;
      p[i] = h_case_post(world, &c, H_ASYNC_WAIT);
    }
    par_work *bw = NULL;
    CHECK(world, par_barrier_async(world, &bw));
    h_context("in-flight round %d: waiting for the last op (a barrier) issued after %d ops", rep, K);
    CHECK_WORK(world, bw, -1.0);
    for (int i = 0; i < K; i++) {
      par_status s = par_work_test(h_case_work(p[i]));
      EXPECT_TRUE(s == PAR_OK, "op %d of %d in flight completed (PAR_OK) once a later op had, got %s",
                  i, K, par_status_name(s));
    }
    par_work_free(bw);
    /* Finish in reverse order the first time, in issue order the second. */
    for (int i = 0; i < K; i++) h_case_finish(p[rep == 0 ? K - 1 - i : i]);
  }

  /* A long train of small ops. */
  enum { T = 40 };
  h_pending *t[T];
  for (int i = 0; i < T; i++) {
    h_case c = {H_ALLREDUCE, (par_dtype)(i % PAR_DTYPE_COUNT), (par_op)(i % PAR_OP_COUNT),
                (size_t)(i % 9), 0, i & 1, (i % PAR_OP_COUNT) == PAR_PROD ? H_GEN_TINY : H_GEN_SMALL, 0, salt++};
    t[i] = h_case_post(world, &c, H_ASYNC_WAIT);
  }
  for (int i = 0; i < T; i++) h_case_finish(t[i]);
}

/* Async ops in flight on two groups at once, issued and completed from this thread. */
static void test_two_groups(void) {
  int n = h_size;
  int *evens = malloc(sizeof(int) * (size_t)n), ne = 0;
  for (int r = 0; r < n; r += 2) evens[ne++] = r;
  par_group *ge = (h_rank % 2 == 0) ? h_group_create(evens, ne, "evens") : NULL;

  /* world + evens: issued in the same order everywhere, completed in the opposite order. */
  for (int rep = 0; rep < 3; rep++) {
    h_case cw = {H_ALLREDUCE, PAR_F32, PAR_SUM, rep == 1 ? (3u << 18) + 1 : 1000, 0, rep & 1, H_GEN_WIDE, 0, salt++};
    h_case ce = {H_ALLGATHER, PAR_BF16, PAR_SUM, rep == 2 ? (1u << 20) + 3 : 333, 0, rep & 1, H_GEN_BITS, 0, salt++};
    h_pending *pw = h_case_post(world, &cw, H_ASYNC_WAIT);
    h_pending *pe = ge ? h_case_post(ge, &ce, H_ASYNC_POLL) : NULL;
    if (pe) h_case_finish(pe);
    h_case_finish(pw);
  }

  /* An async op on evens stays in flight across blocking ops on the world group. */
  if (ge) {
    h_case ce = {H_REDUCE_SCATTER, PAR_F16, PAR_SUM, 1000, 0, 0, H_GEN_WIDE, 0, salt};
    h_pending *pe = h_case_post(ge, &ce, H_ASYNC_WAIT);
    h_case cw = {H_BROADCAST, PAR_I32, PAR_SUM, 5000, 0, 1, H_GEN_BITS, 0, salt + 1};
    h_case_run(world, &cw, H_BLOCKING);
    CHECK(world, par_barrier(world));
    h_case_finish(pe);
  } else {
    h_case cw = {H_BROADCAST, PAR_I32, PAR_SUM, 5000, 0, 1, H_GEN_BITS, 0, salt + 1};
    h_case_run(world, &cw, H_BLOCKING);
    CHECK(world, par_barrier(world));
  }
  salt += 2;
  par_group_destroy(ge);

  /* Two overlapping subgroups: lo = {0..n-2}, hi = {1..n-1} (n >= 3, so both have 2+ members
   * and the middle ranks are in both). */
  if (n >= 3) {
    int *lo = malloc(sizeof(int) * (size_t)(n - 1)), *hi = malloc(sizeof(int) * (size_t)(n - 1));
    for (int i = 0; i < n - 1; i++) {
      lo[i] = i;
      hi[i] = i + 1;
    }
    par_group *glo = h_rank <= n - 2 ? h_group_create(lo, n - 1, "lo") : NULL;
    par_group *ghi = h_rank >= 1 ? h_group_create(hi, n - 1, "hi") : NULL;
    for (int rep = 0; rep < 2; rep++) {
      h_case a = {H_ALLREDUCE, PAR_F64, PAR_SUM, rep ? (1u << 18) + 5 : 100, 0, 0, H_GEN_WIDE, 0, salt++};
      h_case b = {H_ALLREDUCE, PAR_I32, PAR_MAX, rep ? (1u << 18) + 7 : 100, 0, 1, H_GEN_WIDE, 0, salt++};
      h_pending *pa = glo ? h_case_post(glo, &a, H_ASYNC_WAIT) : NULL;
      h_pending *pb = ghi ? h_case_post(ghi, &b, H_ASYNC_WAIT) : NULL;
      if (pb) h_case_finish(pb);
      if (pa) h_case_finish(pa);
    }
    par_group_destroy(glo);
    par_group_destroy(ghi);
    free(lo);
    free(hi);
  }
  free(evens);
  CHECK(world, par_barrier(world));
}

/* par_work_wait with a timeout that runs out leaves the work pending; it completes later. */
static void test_wait_timeout(void) {
  int *all = malloc(sizeof(int) * (size_t)h_size);
  for (int i = 0; i < h_size; i++) all[i] = i;
  par_group *g = h_group_create(all, h_size, "late-peers");
  h_case c = {H_ALLREDUCE, PAR_I32, PAR_SUM, 1000, 0, 0, H_GEN_SMALL, 0, salt++};
  if (h_rank == 0) {
    h_pending *p = h_case_post(g, &c, H_ASYNC_WAIT);
    par_work *w = h_case_work(p);
    if (h_size > 1) {
      /* The others post only after the world barrier below, so this cannot complete yet. */
      h_context("par_work_wait(0.2) while the peers have not posted yet");
      double t0 = h_now();
      EXPECT_STATUS(PAR_ERR_TIMEOUT, par_work_wait(w, 0.2));
      double dt = h_now() - t0;
      EXPECT_TRUE(dt >= 0.15 && dt < 5.0, "par_work_wait(0.2) returned after about 0.2 s, took %.3f s", dt);
      EXPECT_STATUS(PAR_ERR_TIMEOUT, par_work_wait(w, 0.0));
      EXPECT_STATUS(PAR_IN_PROGRESS, par_work_test(w));
    }
    CHECK(world, par_barrier(world));
    h_case_finish(p); /* waits again, without a limit, and checks the result */
  } else {
    CHECK(world, par_barrier(world));
    h_case_run(g, &c, H_BLOCKING);
  }
  par_group_destroy(g);
  free(all);
}

/* par_work_free on pending work waits for it; the result is in the caller's buffer. */
static void test_free_pending(void) {
  for (int rep = 0; rep < 3; rep++) {
    size_t count = rep == 2 ? (1u << 20) + 1 : 1000;
    uint32_t s = salt++;
    h_context("par_work_free on a pending allreduce, count=%zu", count);
    float *in = h_alloc(count * 4, 0), *out = h_alloc(count * 4, 0), *exp = h_alloc(count * 4, 0);
    h_fill(in, count, PAR_F32, H_GEN_WIDE, h_rank, 0, s);
    par_work *w = NULL;
    CHECK(world, par_allreduce_async(world, in, out, count, PAR_F32, PAR_SUM, &w));
    par_work_free(w);
    const int *who = par_group_ranks(world);
    h_ref_reduce(exp, count, PAR_F32, PAR_SUM, H_GEN_WIDE, who, h_size, 0, s);
    EXPECT_ELEMS("allreduce result after par_work_free of the pending work", PAR_F32, exp, out, count);
    h_check_guards(out, __FILE__, __LINE__, "recvbuf");
    h_free(in);
    h_free(out);
    h_free(exp);
  }
  par_work_free(NULL); /* does nothing */
}

/* Waits without a bound of their own (an infinite or huge timeout) end when the op does. */
static void test_unbounded_wait(void) {
  double limits[] = {INFINITY, 1e30, 1e9};
  for (int i = 0; i < 3; i++) {
    h_context("par_work_wait(%g) on an allreduce that completes", limits[i]);
    int x = h_rank + 1, y = 0;
    par_work *w = NULL;
    CHECK(world, par_allreduce_async(world, &x, &y, 1, PAR_I32, PAR_SUM, &w));
    EXPECT_STATUS(PAR_OK, par_work_wait(w, limits[i]));
    EXPECT_INT(h_size * (h_size + 1) / 2, y);
    par_work_free(w);
  }
}

int main(void) {
  h_init("test_async");
  world = par_world_group(h_world);
  test_each_async();
  test_in_flight_in_order();
  test_two_groups();
  test_wait_timeout();
  test_free_pending();
  test_unbounded_wait();
  h_context("final barrier");
  CHECK(world, par_barrier(world));
  return h_finish();
}
