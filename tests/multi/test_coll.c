/*
 * test_coll.c -- every collective on the world group against the naive reference, bit for bit.
 *
 * Covers allreduce, reduce_scatter, reduce (every root), allgather, broadcast (every root),
 * alltoall and barrier, for every dtype and every op that applies, in-place and out-of-place
 * as par.h documents per call, counts 0, 1, 7 and 1000, misaligned buffers, a few multi-MiB
 * cases, and the mid sizes the shared-memory backend moves by single copy (tests/CMakeLists.txt
 * also runs this file with PAR_SHM_CMA forced on and off). Every buffer has guard bytes;
 * inputs must be left as they were. Then
 * determinism: the same allreduce twice gives the same bits, and every rank's result hashes
 * the same (compared through allgather).
 *
 * PAR_TEST_RANKS: 1 2 3 5 8
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"

static const par_dtype dtypes[] = {PAR_F32, PAR_F64, PAR_F16, PAR_BF16,
                                   PAR_I8,  PAR_U8,  PAR_I32, PAR_I64};
#define NDT (sizeof dtypes / sizeof dtypes[0])
static const size_t counts[] = {0, 1, 7, 1000};
#define NCOUNT (sizeof counts / sizeof counts[0])

static par_group *world;
static uint32_t salt = 1;
static double t_section;

static void section(const char *name) {
  double now = h_now();
  if (h_rank == 0 && name) printf("test_coll: %-28s (previous section %.2f s)\n", name, now - t_section);
  t_section = now;
}

/* The inputs a reduction case uses: small integers (tiny ones for prod, so products stay in
 * range and exact), then full-mantissa floats / full-range integers (wrapping; for integer
 * avg the reference wraps the sum before dividing, as src/core/core.h specifies). */
static int gens_for(par_dtype dt, par_op op, h_gen out[2]) {
  (void)dt;
  out[0] = op == PAR_PROD ? H_GEN_TINY : H_GEN_SMALL;
  out[1] = H_GEN_WIDE;
  return 2;
}

static size_t misalign_for(par_dtype dt, size_t count, int inplace) {
  return (count == 7 || (count == 1000 && inplace)) ? par_dtype_size(dt) : 0;
}

/* allreduce and reduce_scatter: every dtype x op x generator x count x in-place. */
static void test_reductions(h_coll coll) {
  for (size_t d = 0; d < NDT; d++)
    for (int op = 0; op < PAR_OP_COUNT; op++) {
      h_gen gens[2];
      int ng = gens_for(dtypes[d], (par_op)op, gens);
      for (int gi = 0; gi < ng; gi++)
        for (size_t ci = 0; ci < NCOUNT; ci++)
          for (int inplace = 0; inplace < 2; inplace++) {
            h_case c = {coll, dtypes[d], (par_op)op, counts[ci], 0, inplace, gens[gi],
                        misalign_for(dtypes[d], counts[ci], inplace), salt++};
            h_case_run(world, &c, H_BLOCKING);
          }
    }
}

/* reduce: the full matrix for the first and last root, one count per case for the others. */
static void test_reduce(void) {
  int n = par_group_size(world);
  for (int root = 0; root < n; root++)
    for (size_t d = 0; d < NDT; d++)
      for (int op = 0; op < PAR_OP_COUNT; op++) {
        h_gen gens[2];
        int ng = gens_for(dtypes[d], (par_op)op, gens);
        if (root == 0 || root == n - 1) {
          for (int gi = 0; gi < ng; gi++)
            for (size_t ci = 0; ci < NCOUNT; ci++)
              for (int inplace = 0; inplace < 2; inplace++) {
                h_case c = {H_REDUCE, dtypes[d], (par_op)op, counts[ci], root, inplace, gens[gi],
                            misalign_for(dtypes[d], counts[ci], inplace), salt++};
                h_case_run(world, &c, H_BLOCKING);
              }
        } else {
          int inplace = (root + (int)d + op) & 1;
          h_case c = {H_REDUCE, dtypes[d], (par_op)op, 7, root, inplace, gens[(root + op) % ng],
                      misalign_for(dtypes[d], 7, inplace), salt++};
          h_case_run(world, &c, H_BLOCKING);
        }
      }
}

/* allgather, alltoall, broadcast (every root): every dtype x count, random bit patterns
 * (NaNs included) since these only move data. */
static void test_movers(void) {
  int n = par_group_size(world);
  for (size_t d = 0; d < NDT; d++)
    for (size_t ci = 0; ci < NCOUNT; ci++) {
      for (int inplace = 0; inplace < 2; inplace++) {
        h_case c = {H_ALLGATHER, dtypes[d], PAR_SUM, counts[ci], 0, inplace, H_GEN_BITS,
                    misalign_for(dtypes[d], counts[ci], inplace), salt++};
        h_case_run(world, &c, H_BLOCKING);
      }
      h_case a = {H_ALLTOALL, dtypes[d], PAR_SUM, counts[ci], 0, 0, H_GEN_BITS,
                  misalign_for(dtypes[d], counts[ci], 0), salt++};
      h_case_run(world, &a, H_BLOCKING);
      for (int root = 0; root < n; root++) {
        h_case b = {H_BROADCAST, dtypes[d], PAR_SUM, counts[ci], root, 1, H_GEN_BITS,
                    misalign_for(dtypes[d], counts[ci], root & 1), salt++};
        h_case_run(world, &b, H_BLOCKING);
      }
    }
}

/* A few multi-MiB cases: larger than any chunk or ring a backend keeps, odd element counts. */
static void test_large(void) {
  int n = par_group_size(world);
  const size_t mib = 1u << 20;
  /* Salts are given in the loop: several salt++ in one initializer list are unsequenced. */
  const h_case cases[] = {
      {H_ALLREDUCE, PAR_F32, PAR_SUM, 3 * mib / 4 + 7, 0, 0, H_GEN_WIDE, 0, 0},
      {H_ALLREDUCE, PAR_F32, PAR_SUM, 3 * mib / 4 + 7, 0, 1, H_GEN_WIDE, 4, 0},
      {H_ALLREDUCE, PAR_BF16, PAR_AVG, 3 * mib / 2 + 3, 0, 1, H_GEN_WIDE, 0, 0},
      {H_ALLREDUCE, PAR_I8, PAR_SUM, 3 * mib + 1, 0, 0, H_GEN_WIDE, 1, 0},
      {H_REDUCE_SCATTER, PAR_F16, PAR_SUM, 3 * mib / 2 / (size_t)n + 1, 0, 0, H_GEN_WIDE, 0, 0},
      {H_REDUCE_SCATTER, PAR_I32, PAR_MAX, 3 * mib / 4 / (size_t)n + 3, 0, 1, H_GEN_WIDE, 0, 0},
      {H_ALLGATHER, PAR_U8, PAR_SUM, 3 * mib / (size_t)n + 5, 0, 0, H_GEN_BITS, 0, 0},
      {H_ALLGATHER, PAR_F64, PAR_SUM, 3 * mib / 8 / (size_t)n + 1, 0, 1, H_GEN_BITS, 0, 0},
      {H_BROADCAST, PAR_I32, PAR_SUM, 3 * mib / 4 + 9, n - 1, 1, H_GEN_BITS, 0, 0},
      {H_REDUCE, PAR_F64, PAR_MAX, 3 * mib / 8 + 3, n / 2, 0, H_GEN_WIDE, 0, 0},
      {H_REDUCE, PAR_F32, PAR_PROD, 3 * mib / 4 + 1, 0, 1, H_GEN_TINY, 0, 0},
      {H_ALLTOALL, PAR_I64, PAR_SUM, 3 * mib / 8 / (size_t)n + 1, 0, 0, H_GEN_BITS, 0, 0},
      /* Outputs of 4 MiB and more are written with the backend's large-output copy. */
      {H_ALLREDUCE, PAR_F32, PAR_SUM, 5 * mib / 4 + 3, 0, 0, H_GEN_WIDE, 4, 0},
      {H_ALLGATHER, PAR_I32, PAR_SUM, 5 * mib / 4 / (size_t)n + 1, 0, 1, H_GEN_BITS, 0, 0},
      {H_BROADCAST, PAR_U8, PAR_SUM, 5 * mib + 1, 0, 1, H_GEN_BITS, 1, 0},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    h_case c = cases[i];
    c.salt = salt++;
    h_case_run(world, &c, H_BLOCKING);
  }
}

/* Sizes where the shared-memory backend reads peers' buffers directly (single copy, when
 * the group allows it: PAR_SHM_CMA, docs/env.md): all-reduce of 256 KiB..8 MiB, all-gather
 * and broadcast of 64 KiB..1 MiB per member. Every dtype and op, in place and out of place,
 * misaligned, element counts that do not split evenly over the members. */
static void test_single_copy(void) {
  const size_t kib = 1024;
  for (size_t d = 0; d < NDT; d++) {
    par_dtype dt = dtypes[d];
    size_t es = par_dtype_size(dt);
    for (int op = 0; op < PAR_OP_COUNT; op++)
      for (int inplace = 0; inplace < 2; inplace++) {
        h_case c = {H_ALLREDUCE, dt, (par_op)op, 300 * kib / es + 3, 0, inplace,
                    op == PAR_PROD ? H_GEN_TINY : H_GEN_WIDE, inplace ? es : 0, salt++};
        h_case_run(world, &c, H_BLOCKING);
      }
    for (int inplace = 0; inplace < 2; inplace++) {
      h_case a = {H_ALLGATHER, dt, PAR_SUM, 100 * kib / es + 1, 0, inplace, H_GEN_BITS,
                  inplace ? 0 : es, salt++};
      h_case_run(world, &a, H_BLOCKING);
    }
    h_case b = {H_BROADCAST, dt, PAR_SUM, 200 * kib / es + 5, (int)d % h_size, 1, H_GEN_BITS,
                es, salt++};
    h_case_run(world, &b, H_BLOCKING);
  }
  /* Async: several single-copy ops in flight on one group complete in issue order. */
  h_pending *p[3];
  for (int i = 0; i < 3; i++) {
    h_case c = {H_ALLREDUCE, PAR_F32, PAR_SUM, (256 + 64 * (size_t)i) * kib / 4, 0, i & 1,
                H_GEN_WIDE, 0, salt++};
    p[i] = h_case_post(world, &c, H_ASYNC_WAIT);
  }
  for (int i = 0; i < 3; i++) h_case_finish(p[i]);
}

/* Same inputs, same op, twice: the same bits; and every rank holds the same bits. */
static void test_determinism(void) {
  static const struct {
    par_dtype dt;
    par_op op;
    size_t count;
  } runs[] = {{PAR_F32, PAR_SUM, 1000}, {PAR_F16, PAR_SUM, 1000}, {PAR_BF16, PAR_AVG, 1001},
              {PAR_F64, PAR_PROD, 999}, {PAR_F32, PAR_AVG, 3u << 18}};
  for (size_t r = 0; r < sizeof runs / sizeof runs[0]; r++) {
    par_dtype dt = runs[r].dt;
    size_t count = runs[r].count, bytes = count * par_dtype_size(dt);
    h_context("determinism: allreduce %s %s count=%zu twice", par_dtype_name(dt), par_op_name(runs[r].op), count);
    void *in = h_alloc(bytes, 0), *out1 = h_alloc(bytes, 0), *out2 = h_alloc(bytes, 0);
    h_fill(in, count, dt, H_GEN_WIDE, h_rank, 0, salt++);
    CHECK(world, par_allreduce(world, in, out1, count, dt, runs[r].op));
    CHECK(world, par_allreduce(world, in, out2, count, dt, runs[r].op));
    EXPECT_ELEMS("second allreduce of the same inputs (vs the first)", dt, out1, out2, count);

    int64_t mine = (int64_t)h_hash_bytes(out1, bytes);
    int64_t *all = h_alloc(sizeof(int64_t) * (size_t)h_size, 0);
    CHECK(world, par_allgather(world, &mine, all, 1, PAR_I64));
    for (int i = 0; i < h_size; i++)
      EXPECT_TRUE(all[i] == mine, "rank %d's result hash 0x%016llx equals mine 0x%016llx", i,
                  (unsigned long long)all[i], (unsigned long long)mine);
    h_free(in);
    h_free(out1);
    h_free(out2);
    h_free(all);
  }
}

/* Nobody leaves a barrier before everybody has entered it. Ranks enter staggered; the clock
 * is CLOCK_MONOTONIC, shared by all processes on the host. */
static void test_barrier(void) {
  for (int round = 0; round < 3; round++) {
    h_context("barrier round %d", round);
    int late = (round % (h_size > 0 ? h_size : 1));
    if (h_rank == late) h_sleep(0.05);
    double t_enter = h_now();
    CHECK(world, par_barrier(world));
    double t_exit = h_now();
    double *enters = h_alloc(sizeof(double) * (size_t)h_size, 0);
    CHECK(world, par_allgather(world, &t_enter, enters, 1, PAR_F64));
    for (int i = 0; i < h_size; i++)
      EXPECT_TRUE(t_exit >= enters[i], "left the barrier at %.6f, after rank %d entered at %.6f",
                  t_exit, i, enters[i]);
    h_free(enters);
  }
  for (int i = 0; i < 20; i++) CHECK(world, par_barrier(world));
}

/* A count of 0 is valid and moves nothing, so no buffer is needed at all. */
static void test_zero_count_null(void) {
  h_context("count 0 with NULL buffers");
  CHECK(world, par_allreduce(world, NULL, NULL, 0, PAR_F32, PAR_SUM));
  CHECK(world, par_allgather(world, NULL, NULL, 0, PAR_I32));
  CHECK(world, par_reduce_scatter(world, NULL, NULL, 0, PAR_F64, PAR_MAX));
  CHECK(world, par_broadcast(world, NULL, 0, PAR_U8, 0));
  CHECK(world, par_reduce(world, NULL, NULL, 0, PAR_I64, PAR_MIN, 0));
  CHECK(world, par_alltoall(world, NULL, NULL, 0, PAR_BF16));
}

int main(void) {
  h_init("test_coll");
  world = par_world_group(h_world);
  EXPECT_INT(h_size, par_group_size(world));
  EXPECT_INT(h_rank, par_group_index(world));
  t_section = h_now();

  section("allreduce");
  test_reductions(H_ALLREDUCE);
  section("reduce_scatter");
  test_reductions(H_REDUCE_SCATTER);
  section("reduce (every root)");
  test_reduce();
  section("allgather/alltoall/broadcast");
  test_movers();
  section("barrier");
  test_barrier();
  section("count 0, NULL buffers");
  test_zero_count_null();
  section("large (multi-MiB)");
  test_large();
  section("single copy (mid-sized)");
  test_single_copy();
  section("determinism");
  test_determinism();
  section("done");
  h_context("final barrier");
  CHECK(world, par_barrier(world));
  return h_finish();
}
