/*
 * test_agree.c -- members that disagree get an error, always, and nothing else happens.
 *
 * The last member of the world issues a call that differs from everyone else's in one
 * respect (count, kind, dtype, reduction, root); every member must get PAR_ERR_MISMATCH with a
 * message that names both calls, no byte may land outside any buffer (guards), and the group
 * must still work afterwards. Then send/recv among some members, mixed with collectives among
 * all: point-to-point traffic must never shift what collectives compare or wait on (single
 * copy on and off, PAR_CHECK on and off: see tests/CMakeLists.txt).
 *
 * PAR_TEST_RANKS: 1 2 3 5 8
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "harness.h"

static par_group *world;

/* Whether PAR_CHECK asks for op numbers to be compared too (docs/env.md's values). */
static int check_on(void) {
  const char *v = getenv("PAR_CHECK");
  const char *yes[] = {"1", "true", "yes", "on"};
  for (int i = 0; v && i < 4; i++)
    if (!strcasecmp(v, yes[i])) return 1;
  return 0;
}

/* One side of a disagreement: what a member calls. */
typedef struct call {
  h_coll coll; /* H_COLL_COUNT: barrier */
  size_t count;
  par_dtype dt;
  par_op op;
  int root;
} call;

/* Buffers for a call, with guards; recv is large enough for n members. */
static par_status issue(const call *c, void **send, void **recv) {
  size_t es = par_dtype_size(c->dt), n = (size_t)h_size, bytes = c->count * es;
  size_t sbytes = c->coll == H_REDUCE_SCATTER || c->coll == H_ALLTOALL ? bytes * n : bytes;
  size_t rbytes = c->coll == H_ALLGATHER || c->coll == H_ALLTOALL ? bytes * n : bytes;
  *send = h_alloc(sbytes ? sbytes : 1, 0);
  *recv = h_alloc(rbytes ? rbytes : 1, 0);
  memset(*send, 1, sbytes);
  switch (c->coll) {
    case H_ALLREDUCE:
      return par_allreduce(world, *send, *recv, c->count, c->dt, c->op);
    case H_ALLGATHER:
      return par_allgather(world, *send, *recv, c->count, c->dt);
    case H_REDUCE_SCATTER:
      return par_reduce_scatter(world, *send, *recv, c->count, c->dt, c->op);
    case H_BROADCAST:
      return par_broadcast(world, *recv, c->count, c->dt, c->root);
    case H_REDUCE:
      return par_reduce(world, *send, *recv, c->count, c->dt, c->op, c->root);
    case H_ALLTOALL:
      return par_alltoall(world, *send, *recv, c->count, c->dt);
    default:
      return par_barrier(world);
  }
}

/* The group still works, and every member is at the same op: an allreduce of the ranks. */
static void still_in_step(const char *after) {
  h_context("allreduce after: %s", after);
  int64_t x = h_rank, want = (int64_t)h_size * (h_size - 1) / 2;
  CHECK(world, par_allreduce(world, &x, &x, 1, PAR_I64, PAR_SUM));
  EXPECT_INT(want, x);
}

static void disagree(const char *what, call base, call odd, const char *base_word,
                     const char *odd_word) {
  int me_odd = h_rank == h_size - 1;
  const call *c = me_odd ? &odd : &base;
  h_context("%s: rank %d issues the %s call", what, h_rank, me_odd ? "odd" : "common");
  void *send, *recv;
  par_status s = issue(c, &send, &recv);
  const char *msg = par_group_last_error(world);
  EXPECT_STATUS(PAR_ERR_MISMATCH, s);
  EXPECT_MSG(msg, "disagree", base_word, odd_word);
  EXPECT_TRUE((strstr(msg, " as op #") != NULL) == check_on(),
              "op numbers are compared exactly when PAR_CHECK is true (PAR_CHECK=%s): %s",
              getenv("PAR_CHECK") ? getenv("PAR_CHECK") : "(unset)", msg);
  h_check_guards(send, __FILE__, __LINE__, "sendbuf");
  h_check_guards(recv, __FILE__, __LINE__, "recvbuf");
  if (c->coll != H_ALLREDUCE && c->coll != H_REDUCE)
    h_check_sentinel(recv, 1, __FILE__, __LINE__, "recvbuf (nothing moved)");
  h_free(send);
  h_free(recv);
  still_in_step(what);
}

#define BARRIER H_COLL_COUNT

static void test_mismatches(void) {
  if (h_size < 2) return;
  const size_t M = 1u << 20;
  /* Small, then sizes that take the segment's rounds, single copy and the large paths. */
  disagree("count 10 vs 11", (call){H_ALLREDUCE, 10, PAR_F32, PAR_SUM, 0},
           (call){H_ALLREDUCE, 11, PAR_F32, PAR_SUM, 0}, "count=10", "count=11");
  disagree("allreduce vs broadcast", (call){H_ALLREDUCE, 10, PAR_F32, PAR_SUM, 0},
           (call){H_BROADCAST, 10, PAR_F32, PAR_SUM, 0}, "allreduce(count=10, f32, sum)",
           "broadcast(count=10, f32, root 0)");
  disagree("f32 vs f64", (call){H_ALLREDUCE, 10, PAR_F32, PAR_SUM, 0},
           (call){H_ALLREDUCE, 10, PAR_F64, PAR_SUM, 0}, "f32", "f64");
  disagree("sum vs max", (call){H_ALLREDUCE, 1000, PAR_I32, PAR_SUM, 0},
           (call){H_ALLREDUCE, 1000, PAR_I32, PAR_MAX, 0}, "sum)", "max)");
  disagree("root 0 vs 1", (call){H_BROADCAST, 10, PAR_F32, PAR_SUM, 0},
           (call){H_BROADCAST, 10, PAR_F32, PAR_SUM, 1}, "root 0", "root 1");
  disagree("reduce root 0 vs 1", (call){H_REDUCE, 5000, PAR_F32, PAR_SUM, 0},
           (call){H_REDUCE, 5000, PAR_F32, PAR_SUM, 1}, "root 0", "root 1");
  disagree("allgather vs alltoall", (call){H_ALLGATHER, 10, PAR_F32, PAR_SUM, 0},
           (call){H_ALLTOALL, 10, PAR_F32, PAR_SUM, 0}, "allgather(count=10, f32)",
           "alltoall(count=10, f32)");
  disagree("count 10 vs 1M", (call){H_ALLREDUCE, 10, PAR_F32, PAR_SUM, 0},
           (call){H_ALLREDUCE, M, PAR_F32, PAR_SUM, 0}, "count=10", "count=1048576");
  disagree("broadcast 1M from root 0 vs 20000", (call){H_BROADCAST, M, PAR_F32, PAR_SUM, 0},
           (call){H_BROADCAST, 20000, PAR_F32, PAR_SUM, 0}, "count=1048576", "count=20000");
  disagree("allgather 100000 vs 100001", (call){H_ALLGATHER, 100000, PAR_F32, PAR_SUM, 0},
           (call){H_ALLGATHER, 100001, PAR_F32, PAR_SUM, 0}, "count=100000", "count=100001");
  disagree("allreduce 1M vs 2M", (call){H_ALLREDUCE, M, PAR_F32, PAR_SUM, 0},
           (call){H_ALLREDUCE, 2 * M, PAR_F32, PAR_SUM, 0}, "count=1048576", "count=2097152");
  disagree("reduce_scatter vs allreduce", (call){H_REDUCE_SCATTER, 300, PAR_F32, PAR_SUM, 0},
           (call){H_ALLREDUCE, 300, PAR_F32, PAR_SUM, 0}, "reduce_scatter", "allreduce");
  disagree("barrier vs allreduce", (call){BARRIER, 0, PAR_F32, PAR_SUM, 0},
           (call){H_ALLREDUCE, 1, PAR_F32, PAR_SUM, 0}, "barrier()", "allreduce(count=1");
  disagree("count 0 vs 10", (call){H_ALLGATHER, 0, PAR_F32, PAR_SUM, 0},
           (call){H_ALLGATHER, 10, PAR_F32, PAR_SUM, 0}, "count=0", "count=10");
}

/* Async ops disagree just as blocking ones do, and the queue goes on. */
static void test_async_mismatch(void) {
  if (h_size < 2) return;
  h_context("async allreduce, count 7 vs 8");
  float v[8] = {0};
  par_work *w;
  CHECK(world, par_allreduce_async(world, v, v, h_rank == 0 ? 7 : 8, PAR_F32, PAR_SUM, &w));
  EXPECT_STATUS(PAR_ERR_MISMATCH, par_work_wait(w, -1.0));
  EXPECT_MSG(par_work_error(w), "count=7", "count=8");
  par_work_free(w);
  still_in_step("async mismatch");
}

/* ---------------------------------------------------------------------------------------- */
/* Send/recv among some members never shifts the collectives among all                       */
/* ---------------------------------------------------------------------------------------- */

static void bcast_check(size_t count, int root, uint32_t salt) {
  unsigned char *buf = h_alloc(count, 0);
  for (size_t i = 0; i < count; i++)
    buf[i] = h_rank == root ? (unsigned char)(i * 31 + salt) : 0;
  CHECK(world, par_broadcast(world, buf, count, PAR_U8, root));
  size_t bad = 0;
  for (size_t i = 0; i < count; i++) bad += buf[i] != (unsigned char)(i * 31 + salt);
  EXPECT_TRUE(bad == 0, "%zu of %zu bytes of the broadcast from %d are wrong", bad, count, root);
  h_check_guards(buf, __FILE__, __LINE__, "broadcast buffer");
  h_free(buf);
}

static void test_p2p_then_collectives(void) {
  const size_t M = 1u << 20;
  for (int round = 0; round < 3; round++) {
    /* A send to self on every member, then 0 -> 1 while the others idle (a pipeline). */
    h_context("round %d: send to self", round);
    int x = h_rank + round, y = -1;
    par_work *w;
    CHECK(world, par_recv_async(world, &y, 1, PAR_I32, h_rank, &w));
    CHECK(world, par_send(world, &x, 1, PAR_I32, h_rank));
    CHECK_WORK(world, w, -1.0);
    par_work_free(w);
    EXPECT_INT(h_rank + round, y);
    if (h_size >= 2 && h_rank <= 1) {
      h_context("round %d: 0 -> 1 while the others idle", round);
      for (int k = 0; k <= round; k++) {
        int v = 100 + k;
        if (h_rank == 0)
          CHECK(world, par_send(world, &v, 1, PAR_I32, 1));
        else {
          int got = 0;
          CHECK(world, par_recv(world, &got, 1, PAR_I32, 0));
          EXPECT_INT(100 + k, got);
        }
      }
    }
    /* Collectives among all, on the paths that number their rounds by op (single copy's
     * broadcast gate) and in the segment. */
    h_context("round %d: collectives after send/recv", round);
    bcast_check(M, h_size - 1, (uint32_t)round);
    bcast_check(1000, 0, (uint32_t)round + 7);
    still_in_step("send/recv then broadcasts");
  }
}

int main(void) {
  h_init("test_agree");
  world = par_world_group(h_world);
  test_mismatches();
  test_async_mismatch();
  test_p2p_then_collectives();
  return h_finish();
}
