/*
 * test_p2p.c -- par_send / par_recv between members.
 *
 * Rings in both directions with async pairs (no deadlock whatever the message size), messages
 * of several MiB (larger than any internal buffer), long trains of small messages that must
 * arrive in order, count 0, blocking sends between pairs, peers as group indices in a
 * reversed group, separate groups as separate channels, sending to oneself, and a count
 * mismatch (PAR_ERR_COUNT) on a throwaway group with a short timeout, so that an error there
 * cannot hang the job.
 *
 * PAR_TEST_RANKS: 1 2 3 5 8
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"

static par_group *world;
static uint32_t salt = 7000;

#define RING_BOTH 1       /* also send to index-1 and receive from index+1 */
#define RING_SEND_FIRST 2 /* post the sends before the recvs */

/* Every member sends to index+1 (and, with RING_BOTH, to index-1 as well) and receives from
 * the other side, all async, then checks what arrived. Needs size >= 2. With 2 members both
 * directions go to the same peer. */
static void ring(par_group *g, par_dtype dt, size_t count, int flags, size_t misalign) {
  int both = flags & RING_BOTH, send_first = flags & RING_SEND_FIRST;
  int n = par_group_size(g), idx = par_group_index(g);
  int next = (idx + 1) % n, prev = (idx + n - 1) % n;
  size_t es = par_dtype_size(dt);
  uint32_t s = salt;
  salt += 2;
  h_context("ring on '%s' (n=%d, index %d -> %d) %s count=%zu%s, %s posted first", par_group_name(g),
            n, idx, next, par_dtype_name(dt), count, both ? " both directions" : "",
            send_first ? "sends" : "recvs");
  int me = par_group_global_rank(g, idx);
  void *sf = h_alloc(count * es, misalign), *rf = h_alloc(count * es, misalign);
  void *sb = both ? h_alloc(count * es, 0) : NULL, *rb = both ? h_alloc(count * es, 0) : NULL;
  h_fill(sf, count, dt, H_GEN_BITS, me, 0, s);
  if (both) h_fill(sb, count, dt, H_GEN_BITS, me, 0, s + 1);
  par_work *w[4] = {NULL, NULL, NULL, NULL};
  for (int pass = 0; pass < 2; pass++) {
    if ((pass == 0) == (send_first != 0)) {
      CHECK(g, par_send_async(g, sf, count, dt, next, &w[1]));
      if (both) CHECK(g, par_send_async(g, sb, count, dt, prev, &w[2]));
    } else {
      CHECK(g, par_recv_async(g, rf, count, dt, prev, &w[0]));
      if (both) CHECK(g, par_recv_async(g, rb, count, dt, next, &w[3]));
    }
  }
  for (int i = 0; i < 4; i++)
    if (w[i]) {
      CHECK_WORK(g, w[i], -1.0);
      par_work_free(w[i]);
    }
  void *exp = h_alloc(count * es, 0);
  h_fill(exp, count, dt, H_GEN_BITS, par_group_global_rank(g, prev), 0, s);
  EXPECT_ELEMS("received from the previous member", dt, exp, rf, count);
  h_fill(exp, count, dt, H_GEN_BITS, me, 0, s);
  EXPECT_ELEMS("send buffer (must be unchanged)", dt, exp, sf, count);
  if (both) {
    h_fill(exp, count, dt, H_GEN_BITS, par_group_global_rank(g, next), 0, s + 1);
    EXPECT_ELEMS("received from the next member", dt, exp, rb, count);
  }
  void *bufs[] = {sf, rf, sb, rb};
  for (int i = 0; i < 4; i++)
    if (bufs[i]) {
      h_check_guards(bufs[i], __FILE__, __LINE__, "p2p buffer");
      h_free(bufs[i]);
    }
  h_free(exp);
}

static void test_rings(void) {
  static const size_t counts[] = {0, 1, 7, 1000, 4099};
  for (int dt = 0; dt < PAR_DTYPE_COUNT; dt++)
    for (size_t c = 0; c < sizeof counts / sizeof counts[0]; c++)
      ring(world, (par_dtype)dt, counts[c], (int)(c + (size_t)dt) & 3, c == 2 ? par_dtype_size((par_dtype)dt) : 0);
  /* Several MiB, larger than any ring or chunk a backend keeps; odd sizes; every posting order. */
  ring(world, PAR_U8, (5u << 20) + 3, RING_SEND_FIRST, 1);
  ring(world, PAR_U8, (5u << 20) + 3, 0, 1);
  ring(world, PAR_F32, (2u << 20) + 1, RING_BOTH | RING_SEND_FIRST, 0); /* 8 MiB each way */
  ring(world, PAR_BF16, (3u << 20) + 5, RING_BOTH, 2);
}

/* Pairs (0,1), (2,3), ...: blocking send on one side, blocking recv on the other; with
 * ordering such that no pair needs both to send at once. */
static void test_blocking_pairs(void) {
  int partner = h_rank ^ 1;
  if (partner >= h_size) return;
  const size_t sizes[] = {1, 100, (3u << 20) + 7};
  for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
    size_t count = sizes[k];
    uint32_t s = salt + (uint32_t)k;
    h_context("blocking pair %d<->%d i64 count=%zu", h_rank, partner, count);
    int64_t *out = h_alloc(count * 8, 0), *in = h_alloc(count * 8, 0), *exp = h_alloc(count * 8, 0);
    h_fill(out, count, PAR_I64, H_GEN_BITS, h_rank, 0, s);
    if (h_rank % 2 == 0) {
      CHECK(world, par_send(world, out, count, PAR_I64, partner));
      CHECK(world, par_recv(world, in, count, PAR_I64, partner));
    } else {
      CHECK(world, par_recv(world, in, count, PAR_I64, partner));
      CHECK(world, par_send(world, out, count, PAR_I64, partner));
    }
    h_fill(exp, count, PAR_I64, H_GEN_BITS, partner, 0, s);
    EXPECT_ELEMS("blocking recv", PAR_I64, exp, in, count);
    h_check_guards(in, __FILE__, __LINE__, "recv buffer");
    h_free(out);
    h_free(in);
    h_free(exp);
  }
}

/* Many small messages of varying length to the next member: they arrive in the order sent.
 * First all async, then blocking between pairs. */
static void test_many_small(void) {
  int n = h_size;
  if (n < 2) return;
  enum { M = 150, MAXC = 6 };
  int next = (h_rank + 1) % n, prev = (h_rank + n - 1) % n;
  int32_t (*out)[MAXC] = malloc(sizeof(int32_t) * MAXC * M), (*in)[MAXC] = malloc(sizeof(int32_t) * MAXC * M);
  par_work **w = malloc(sizeof(par_work *) * 2 * M);
  memset(in, 0xEE, sizeof(int32_t) * MAXC * M);
  for (int k = 0; k < M; k++)
    for (int j = 0; j < MAXC; j++) out[k][j] = h_rank * 1000000 + k * 10 + j;
  h_context("%d small async messages %d -> %d", M, h_rank, next);
  for (int k = 0; k < M; k++) {
    size_t cnt = (size_t)(k % MAXC) + 1;
    CHECK(world, par_send_async(world, out[k], cnt, PAR_I32, next, &w[2 * k]));
    CHECK(world, par_recv_async(world, in[k], cnt, PAR_I32, prev, &w[2 * k + 1]));
  }
  for (int k = 0; k < 2 * M; k++) {
    CHECK_WORK(world, w[k], -1.0);
    par_work_free(w[k]);
  }
  for (int k = 0; k < M; k++)
    for (int j = 0; j < MAXC; j++) {
      int32_t want = j <= k % MAXC ? prev * 1000000 + k * 10 + j : (int32_t)0xEEEEEEEE;
      EXPECT_TRUE(in[k][j] == want, "message %d element %d from rank %d: expected %d, got %d", k, j,
                  prev, want, in[k][j]);
    }

  int partner = h_rank ^ 1;
  if (partner < n) {
    h_context("%d small blocking messages between %d and %d", M, h_rank, partner);
    for (int k = 0; k < M; k++) {
      size_t cnt = (size_t)(k % MAXC) + 1;
      if (h_rank % 2 == 0) CHECK(world, par_send(world, out[k], cnt, PAR_I32, partner));
      else CHECK(world, par_recv(world, in[k], cnt, PAR_I32, partner));
    }
    if (h_rank % 2 == 1)
      for (int k = 0; k < M; k++)
        for (int j = 0; j <= k % MAXC; j++)
          EXPECT_INT(partner * 1000000 + k * 10 + j, in[k][j]);
  }
  free(out);
  free(in);
  free(w);
  CHECK(world, par_barrier(world));
}

/* Count 0 moves nothing: the buffers stay untouched, and NULL buffers are fine. */
static void test_zero(void) {
  if (h_size < 2) return;
  int next = (h_rank + 1) % h_size, prev = (h_rank + h_size - 1) % h_size;
  h_context("count 0 send/recv");
  void *b = h_alloc(16, 0);
  par_work *w[4];
  CHECK(world, par_send_async(world, b, 0, PAR_F32, next, &w[0]));
  CHECK(world, par_recv_async(world, b, 0, PAR_F32, prev, &w[1]));
  CHECK(world, par_send_async(world, NULL, 0, PAR_F64, next, &w[2]));
  CHECK(world, par_recv_async(world, NULL, 0, PAR_F64, prev, &w[3]));
  for (int i = 0; i < 4; i++) {
    CHECK_WORK(world, w[i], -1.0);
    par_work_free(w[i]);
  }
  h_check_sentinel(b, 16, __FILE__, __LINE__, "buffer of a count-0 recv");
  h_check_guards(b, __FILE__, __LINE__, "buffer of a count-0 recv");
  h_free(b);
}

/* Peers are group indices: a ring on the reversed world. And two groups with the same members
 * are separate channels: messages posted on one are never matched by a recv on the other. */
static void test_groups(void) {
  if (h_size < 2) return;
  int *rev = malloc(sizeof(int) * (size_t)h_size);
  for (int i = 0; i < h_size; i++) rev[i] = h_size - 1 - i;
  par_group *g1 = h_group_create(rev, h_size, "rev-1");
  par_group *g2 = h_group_create(rev, h_size, "rev-2");
  ring(g1, PAR_I32, 1000, RING_BOTH, 0);
  ring(g2, PAR_F16, 77, RING_SEND_FIRST, 0);

  int n = h_size, idx = par_group_index(g1);
  int next = (idx + 1) % n, prev = (idx + n - 1) % n;
  h_context("separate channels: send on rev-1 and rev-2, receive on rev-2 first");
  int32_t a = 100 + h_rank, b = 200 + h_rank, ra = -1, rb = -1;
  par_work *w[4];
  CHECK(g1, par_send_async(g1, &a, 1, PAR_I32, next, &w[0]));
  CHECK(g2, par_send_async(g2, &b, 1, PAR_I32, next, &w[1]));
  CHECK(g2, par_recv_async(g2, &rb, 1, PAR_I32, prev, &w[2]));
  CHECK(g1, par_recv_async(g1, &ra, 1, PAR_I32, prev, &w[3]));
  CHECK_WORK(g2, w[2], -1.0);
  CHECK_WORK(g1, w[3], -1.0);
  CHECK_WORK(g1, w[0], -1.0);
  CHECK_WORK(g2, w[1], -1.0);
  for (int i = 0; i < 4; i++) par_work_free(w[i]);
  int pg = rev[prev];
  EXPECT_INT(100 + pg, ra);
  EXPECT_INT(200 + pg, rb);
  par_group_destroy(g1);
  par_group_destroy(g2);
  free(rev);
}

/* Sending to oneself: par.h does not say whether it is allowed. Either both directions are
 * accepted and the message arrives, or the send is refused at once as a bad peer. */
static void test_self(void) {
  h_context("send/recv with peer == my own index");
  int idx = par_group_index(world);
  int32_t out[5] = {1, 2, 3, 4, 5}, in[5] = {0};
  par_work *ws = NULL, *wr = NULL;
  par_status s = par_send_async(world, out, 5, PAR_I32, idx, &ws);
  if (s == PAR_OK) {
    CHECK(world, par_recv_async(world, in, 5, PAR_I32, idx, &wr));
    CHECK_WORK(world, wr, -1.0);
    CHECK_WORK(world, ws, -1.0);
    par_work_free(wr);
    par_work_free(ws);
    for (int i = 0; i < 5; i++) EXPECT_INT(out[i], in[i]);
  } else {
    EXPECT_TRUE(s == PAR_ERR_RANK || s == PAR_ERR_INVALID,
                "a refused self-send returns PAR_ERR_RANK or PAR_ERR_INVALID, got %s", par_status_name(s));
    EXPECT_MSG(par_group_last_error(world), "send");
    EXPECT_TRUE(par_recv_async(world, in, 5, PAR_I32, idx, &wr) == s,
                "a self-recv is refused like the self-send (%s)", par_status_name(s));
  }
}

/* A recv whose count differs from the send's gets PAR_ERR_COUNT naming both counts. Each pair
 * uses a throwaway group with a 2 s timeout: the group is broken afterwards. */
static void test_count_mismatch(void) {
  int partner = h_rank ^ 1;
  if (partner < h_size) {
    const size_t recv_counts[] = {12, 8};
    for (int k = 0; k < 2; k++) {
      int pair[2] = {h_rank & ~1, (h_rank & ~1) + 1};
      par_group *g = h_group_create(pair, 2, "mismatch");
      CHECK(g, par_group_set_timeout(g, 2.0));
      int32_t buf[16] = {0};
      char want_recv[32], want_send[32];
      snprintf(want_recv, sizeof want_recv, "%zu", recv_counts[k]);
      snprintf(want_send, sizeof want_send, "%d", 10);
      h_context("count mismatch: send 10 i32, recv %zu i32", recv_counts[k]);
      par_work *w = NULL;
      double t0 = h_now();
      if (par_group_index(g) == 0) {
        CHECK(g, par_send_async(g, buf, 10, PAR_I32, 1, &w));
        par_status s = par_work_wait(w, -1.0);
        EXPECT_TRUE(s != PAR_IN_PROGRESS, "the sender's op completes");
        EXPECT_TRUE(h_now() - t0 < 8.0, "the sender's op ends within the 2 s timeout (+slack), took %.1f s",
                    h_now() - t0);
      } else {
        CHECK(g, par_recv_async(g, buf, recv_counts[k], PAR_I32, 0, &w));
        EXPECT_STATUS(PAR_ERR_COUNT, par_work_wait(w, -1.0));
        /* The detail must give both sizes, as element counts or as bytes. */
        const char *m = par_work_error(w);
        char bytes_recv[32], bytes_send[32];
        snprintf(bytes_recv, sizeof bytes_recv, "%zu", recv_counts[k] * 4);
        snprintf(bytes_send, sizeof bytes_send, "%d", 40);
        EXPECT_TRUE(m && ((strstr(m, want_recv) && strstr(m, want_send)) ||
                          (strstr(m, bytes_recv) && strstr(m, bytes_send))),
                    "the mismatch detail names both sizes (%s and %s elements, or %s and %s bytes), got \"%s\"",
                    want_recv, want_send, bytes_recv, bytes_send, m ? m : "(null)");
        EXPECT_TRUE(h_now() - t0 < 8.0, "the mismatch is reported within seconds, took %.1f s", h_now() - t0);
      }
      par_work_free(w);
      par_group_destroy(g);
    }
  }
  h_context("world ring after the mismatch groups");
  CHECK(world, par_barrier(world));
  if (h_size >= 2) ring(world, PAR_F64, 100, RING_BOTH, 0);
}

int main(void) {
  h_init("test_p2p");
  world = par_world_group(h_world);
  if (h_size >= 2) test_rings();
  test_blocking_pairs();
  test_many_small();
  test_zero();
  test_groups();
  test_self();
  test_count_mismatch();
  h_context("final barrier");
  CHECK(world, par_barrier(world));
  return h_finish();
}
