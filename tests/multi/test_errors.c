/*
 * test_errors.c -- errors: the right status, a specific last-error string, and no damage.
 *
 * Bad arguments to every call (NULL buffers, invalid dtype/op, root or peer out of range, NULL
 * work pointer, NULL group) give the documented status and a last-error detail that names the
 * op and the offending value, and leave the group usable (checked with an allreduce after each
 * one). par_group_create rejects out-of-range and duplicate ranks and lists without the
 * caller (PAR_ERR_NOT_MEMBER) at once. A member that never joins a collective makes the others
 * fail with PAR_ERR_TIMEOUT naming the op and the group within a couple of seconds.
 * par_group_abort from another thread unblocks an op and fails pending and later ops on every
 * member with PAR_ERR_ABORTED. A child process with a clean environment gets a world of 1.
 *
 * PAR_TEST_RANKS: 1 2 3 5 8
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"

static par_group *world;
static uint32_t salt = 9000;

#define BAD_DT ((par_dtype)99)
#define NEG_DT ((par_dtype)-1)
#define BAD_OP ((par_op)42)

static void still_usable(par_group *g) {
  h_case c = {H_ALLREDUCE, PAR_I32, PAR_SUM, 3, 0, 0, H_GEN_SMALL, 0, salt++};
  h_case_run(g, &c, H_BLOCKING);
}

/* The call fails with `expected` on every member alike (so no member is left waiting), the
 * group's last error mentions every needle, and the group still works. */
#define BAD(g, expected, call, ...)                                                            \
  do {                                                                                         \
    h_context("bad argument: %s", #call);                                                      \
    EXPECT_STATUS(expected, call);                                                             \
    EXPECT_MSG(par_group_last_error(g), __VA_ARGS__);                                          \
    still_usable(g);                                                                           \
  } while (0)

static void test_names(void) {
  h_context("status, dtype and op names");
#define CHECK_STATUS_NAME(name, value, msg)                                                    \
  EXPECT_TRUE(strcmp(par_status_name(PAR_##name), "PAR_" #name) == 0, "par_status_name(%d) is %s, got %s", \
              value, "PAR_" #name, par_status_name(PAR_##name));                               \
  EXPECT_TRUE(strcmp(par_status_string(PAR_##name), msg) == 0, "par_status_string(%d) is \"%s\"", value, msg);
  PAR_STATUS_MAP(CHECK_STATUS_NAME)
#undef CHECK_STATUS_NAME
  EXPECT_TRUE(strcmp(par_status_name((par_status)12345), "PAR_ERR_UNKNOWN") == 0,
              "par_status_name(12345) is PAR_ERR_UNKNOWN, got %s", par_status_name((par_status)12345));
  static const size_t sizes[] = {4, 8, 2, 2, 1, 1, 4, 8};
  for (int dt = 0; dt < PAR_DTYPE_COUNT; dt++) EXPECT_INT(sizes[dt], par_dtype_size((par_dtype)dt));
  EXPECT_INT(0, par_dtype_size(BAD_DT));
  EXPECT_TRUE(par_dtype_name(BAD_DT) == NULL, "par_dtype_name(99) is NULL");
  EXPECT_TRUE(par_op_name(BAD_OP) == NULL, "par_op_name(42) is NULL");
}

static void test_bad_collective_args(par_group *g) {
  int n = par_group_size(g), idx = par_group_index(g);
  char nstr[16];
  snprintf(nstr, sizeof nstr, "%d", n);
  float *a = h_alloc(sizeof(float) * 64 * (size_t)n, 0), *b = h_alloc(sizeof(float) * 64 * (size_t)n, 0);
  par_work *w = NULL;

  /* NULL buffers with count > 0. */
  BAD(g, PAR_ERR_NULL, par_allreduce(g, NULL, b, 4, PAR_F32, PAR_SUM), "allreduce");
  BAD(g, PAR_ERR_NULL, par_allreduce(g, a, NULL, 4, PAR_F32, PAR_SUM), "allreduce");
  BAD(g, PAR_ERR_NULL, par_allgather(g, NULL, b, 4, PAR_F32), "allgather");
  BAD(g, PAR_ERR_NULL, par_allgather(g, a, NULL, 4, PAR_F32), "allgather");
  BAD(g, PAR_ERR_NULL, par_reduce_scatter(g, NULL, b, 4, PAR_F32, PAR_SUM), "reduce_scatter");
  BAD(g, PAR_ERR_NULL, par_reduce_scatter(g, a, NULL, 4, PAR_F32, PAR_SUM), "reduce_scatter");
  BAD(g, PAR_ERR_NULL, par_broadcast(g, NULL, 4, PAR_F32, 0), "broadcast");
  BAD(g, PAR_ERR_NULL, par_reduce(g, NULL, b, 4, PAR_F32, PAR_SUM, 0), "reduce");
  BAD(g, PAR_ERR_NULL, par_alltoall(g, NULL, b, 4, PAR_F32), "alltoall");
  BAD(g, PAR_ERR_NULL, par_alltoall(g, a, NULL, 4, PAR_F32), "alltoall");
  if (n == 1) /* recvbuf only matters on the root: alone, every member is the root */
    BAD(g, PAR_ERR_NULL, par_reduce(g, a, NULL, 4, PAR_F32, PAR_SUM, 0), "reduce");

  /* Invalid dtypes and ops. */
  BAD(g, PAR_ERR_DTYPE, par_allreduce(g, a, b, 4, BAD_DT, PAR_SUM), "allreduce", "99");
  BAD(g, PAR_ERR_DTYPE, par_allreduce(g, a, b, 4, NEG_DT, PAR_SUM), "allreduce", "-1");
  BAD(g, PAR_ERR_DTYPE, par_allgather(g, a, b, 4, BAD_DT), "allgather", "99");
  BAD(g, PAR_ERR_DTYPE, par_reduce_scatter(g, a, b, 4, BAD_DT, PAR_SUM), "reduce_scatter", "99");
  BAD(g, PAR_ERR_DTYPE, par_broadcast(g, a, 4, BAD_DT, 0), "broadcast", "99");
  BAD(g, PAR_ERR_DTYPE, par_reduce(g, a, b, 4, BAD_DT, PAR_SUM, 0), "reduce", "99");
  BAD(g, PAR_ERR_DTYPE, par_alltoall(g, a, b, 4, BAD_DT), "alltoall", "99");
  BAD(g, PAR_ERR_OP, par_allreduce(g, a, b, 4, PAR_F32, BAD_OP), "allreduce", "42");
  BAD(g, PAR_ERR_OP, par_allreduce(g, a, b, 4, PAR_I32, (par_op)-1), "allreduce", "-1");
  BAD(g, PAR_ERR_OP, par_reduce_scatter(g, a, b, 4, PAR_F32, BAD_OP), "reduce_scatter", "42");
  BAD(g, PAR_ERR_OP, par_reduce(g, a, b, 4, PAR_F32, BAD_OP, 0), "reduce", "42");

  /* Roots and peers are group indices in [0, size). */
  BAD(g, PAR_ERR_RANK, par_broadcast(g, a, 4, PAR_F32, n), "broadcast", nstr);
  BAD(g, PAR_ERR_RANK, par_broadcast(g, a, 4, PAR_F32, -1), "broadcast", "-1");
  BAD(g, PAR_ERR_RANK, par_reduce(g, a, b, 4, PAR_F32, PAR_SUM, n), "reduce", nstr);
  BAD(g, PAR_ERR_RANK, par_reduce(g, a, b, 4, PAR_F32, PAR_SUM, -1), "reduce", "-1");
  BAD(g, PAR_ERR_RANK, par_send(g, a, 4, PAR_F32, n), "send", nstr);
  BAD(g, PAR_ERR_RANK, par_send(g, a, 4, PAR_F32, -1), "send", "-1");
  BAD(g, PAR_ERR_RANK, par_recv(g, b, 4, PAR_F32, n), "recv", nstr);
  BAD(g, PAR_ERR_RANK, par_recv(g, b, 4, PAR_F32, -7), "recv", "-7");
  /* Only one argument is ever wrong at a time: in a group of one, every peer is oneself. */
  int peer = (idx + 1) % n;
  if (n > 1) {
    BAD(g, PAR_ERR_NULL, par_send(g, NULL, 4, PAR_F32, peer), "send");
    BAD(g, PAR_ERR_NULL, par_recv(g, NULL, 4, PAR_F32, peer), "recv");
    BAD(g, PAR_ERR_DTYPE, par_send(g, a, 4, BAD_DT, peer), "send", "99");
    BAD(g, PAR_ERR_DTYPE, par_recv(g, b, 4, BAD_DT, peer), "recv", "99");
  }

  /* alltoall is never in place: par.h says the buffers must not overlap. */
  BAD(g, PAR_ERR_INVALID, par_alltoall(g, a, a, 4, PAR_F32), "alltoall");
  /* Elsewhere buffers may overlap only in place (the same buffer, or the member's own block
   * of the buffer that holds one per member): one element off is refused, for every shape. */
  BAD(g, PAR_ERR_INVALID, par_allreduce(g, a, a + 1, 4, PAR_F32, PAR_SUM), "allreduce",
      "overlap", "sendbuf == recvbuf");
  BAD(g, PAR_ERR_INVALID, par_allgather(g, a + 4 * idx + 1, a, 4, PAR_F32), "allgather",
      "overlap", "recvbuf + index*count");
  BAD(g, PAR_ERR_INVALID, par_reduce_scatter(g, a, a + 4 * idx + 1, 4, PAR_F32, PAR_SUM),
      "reduce_scatter", "overlap", "sendbuf + index*count");
  BAD(g, PAR_ERR_INVALID, par_reduce(g, a + 1, a, 4, PAR_F32, PAR_SUM, idx), "reduce",
      "overlap");

  /* A NULL work pointer for every async form. */
  BAD(g, PAR_ERR_NULL, par_allreduce_async(g, a, b, 4, PAR_F32, PAR_SUM, NULL), "allreduce");
  BAD(g, PAR_ERR_NULL, par_allgather_async(g, a, b, 4, PAR_F32, NULL), "allgather");
  BAD(g, PAR_ERR_NULL, par_reduce_scatter_async(g, a, b, 4, PAR_F32, PAR_SUM, NULL), "reduce_scatter");
  BAD(g, PAR_ERR_NULL, par_broadcast_async(g, a, 4, PAR_F32, 0, NULL), "broadcast");
  BAD(g, PAR_ERR_NULL, par_reduce_async(g, a, b, 4, PAR_F32, PAR_SUM, 0, NULL), "reduce");
  BAD(g, PAR_ERR_NULL, par_alltoall_async(g, a, b, 4, PAR_F32, NULL), "alltoall");
  BAD(g, PAR_ERR_NULL, par_barrier_async(g, NULL), "barrier");
  if (n > 1) {
    BAD(g, PAR_ERR_NULL, par_send_async(g, a, 4, PAR_F32, peer, NULL), "send");
    BAD(g, PAR_ERR_NULL, par_recv_async(g, b, 4, PAR_F32, peer, NULL), "recv");
  }
  /* A bad argument to an async form fails at the call: no work handle is made (*work is
   * either set to NULL or left alone; here it starts as a marker that is no handle). */
  static char marker;
  par_work *const untouched = (par_work *)(void *)&marker;
  w = untouched;
  EXPECT_STATUS(PAR_ERR_DTYPE, par_allreduce_async(g, a, b, 4, BAD_DT, PAR_SUM, &w));
  EXPECT_TRUE(w == NULL || w == untouched, "a failed _async call leaves no work handle to free");
  still_usable(g);

  h_free(a);
  h_free(b);
}

/* Calls with no group handle report through par_last_error(). */
static void test_null_handles(void) {
  float a[4] = {0}, b[4] = {0};
  par_work *w = NULL;
  h_context("NULL handles");
  EXPECT_STATUS(PAR_ERR_NULL, par_allreduce(NULL, a, b, 4, PAR_F32, PAR_SUM));
  EXPECT_MSG(par_last_error(), NULL);
  EXPECT_STATUS(PAR_ERR_NULL, par_barrier(NULL));
  EXPECT_STATUS(PAR_ERR_NULL, par_broadcast_async(NULL, a, 4, PAR_F32, 0, &w));
  EXPECT_STATUS(PAR_ERR_NULL, par_send(NULL, a, 4, PAR_F32, 0));
  EXPECT_STATUS(PAR_ERR_NULL, par_group_set_timeout(NULL, 1.0));
  EXPECT_STATUS(PAR_ERR_NULL, par_work_wait(NULL, 1.0));
  EXPECT_STATUS(PAR_ERR_NULL, par_work_test(NULL));
  (void)b;
}

/* par_group_create rejects bad lists at once, on the caller alone, naming the problem. */
static void test_bad_group_create(void) {
  par_group *g = NULL;
  int me = h_rank, other = (h_rank + 1) % h_size;
  char sz[16];
  snprintf(sz, sizeof sz, "%d", h_size);
  const char *werr = NULL;

  /* Lists no longer than the world, so that only one thing is wrong with each. */
  int out_hi[2] = {me, h_size}, out_lo[2] = {me, -3};
  int nbad = h_size > 1 ? 2 : 1, *hi = h_size > 1 ? out_hi : out_hi + 1, *lo = h_size > 1 ? out_lo : out_lo + 1;
  h_context("par_group_create with a rank out of range");
  EXPECT_STATUS(PAR_ERR_RANK, par_group_create(h_world, hi, nbad, NULL, &g));
  werr = par_world_last_error(h_world);
  EXPECT_MSG(werr, sz);
  EXPECT_STATUS(PAR_ERR_RANK, par_group_create(h_world, lo, nbad, NULL, &g));
  werr = par_world_last_error(h_world);
  EXPECT_MSG(werr, "-3");

  if (h_size > 1) {
    char mestr[16];
    snprintf(mestr, sizeof mestr, "%d", me);
    h_context("par_group_create with duplicate ranks");
    int dup[2] = {me, me};
    EXPECT_STATUS(PAR_ERR_INVALID, par_group_create(h_world, dup, 2, NULL, &g));
    EXPECT_MSG(par_world_last_error(h_world), mestr);
    if (h_size > 2) {
      int dup2[3] = {me, other, other};
      EXPECT_STATUS(PAR_ERR_INVALID, par_group_create(h_world, dup2, 3, NULL, &g));
    }
  }

  h_context("par_group_create with bad pointers and sizes");
  int one[1] = {me};
  EXPECT_STATUS(PAR_ERR_NULL, par_group_create(h_world, NULL, 1, NULL, &g));
  EXPECT_STATUS(PAR_ERR_NULL, par_group_create(h_world, one, 1, NULL, NULL));
  EXPECT_STATUS(PAR_ERR_NULL, par_group_create(NULL, one, 1, NULL, &g));
  EXPECT_STATUS(PAR_ERR_INVALID, par_group_create(h_world, one, 0, NULL, &g));
  EXPECT_STATUS(PAR_ERR_INVALID, par_group_create(h_world, one, -1, NULL, &g));

  if (h_size > 1) {
    h_context("par_group_create without the caller");
    int *others = malloc(sizeof(int) * (size_t)(h_size - 1)), k = 0;
    for (int r = 0; r < h_size; r++)
      if (r != me) others[k++] = r;
    double t0 = h_now();
    EXPECT_STATUS(PAR_ERR_NOT_MEMBER, par_group_create(h_world, others, h_size - 1, NULL, &g));
    EXPECT_TRUE(h_now() - t0 < 1.0, "PAR_ERR_NOT_MEMBER comes at once, took %.3f s", h_now() - t0);
    EXPECT_MSG(par_world_last_error(h_world), NULL);
    free(others);
  }
  /* The world is fine: a real group works. */
  par_group *ok = h_group_create(one, 1, "after-bad-creates");
  still_usable(ok);
  par_group_destroy(ok);
  still_usable(world);
}

/* One member never issues the collective; the others time out after ~1 s with an error naming
 * the op and the group. The group is then broken and destroyed; the world goes on. */
static void test_timeout(void) {
  if (h_size < 2) return;
  struct {
    const char *op;
    int absent;
    int async;
  } runs[] = {{"allreduce", h_size - 1, 0}, {"barrier", 0, 0}, {"allgather", h_size / 2, 1}};
  int *all = malloc(sizeof(int) * (size_t)h_size);
  for (int i = 0; i < h_size; i++) all[i] = i;
  for (size_t r = 0; r < sizeof runs / sizeof runs[0]; r++) {
    par_group *g = h_group_create(all, h_size, "tmo-group");
    CHECK(g, par_group_set_timeout(g, 1.0));
    h_context("%s with rank %d absent, timeout 1 s%s", runs[r].op, runs[r].absent, runs[r].async ? " (async)" : "");
    if (h_rank != runs[r].absent) {
      float a[8] = {0}, b[8];
      double t0 = h_now();
      par_status s;
      const char *msg;
      par_work *w = NULL;
      float *all_b = NULL;
      if (r == 0) {
        s = par_allreduce(g, a, b, 8, PAR_F32, PAR_SUM);
        msg = par_group_last_error(g);
      } else if (r == 1) {
        s = par_barrier(g);
        msg = par_group_last_error(g);
      } else {
        all_b = h_alloc(sizeof(float) * 8 * (size_t)h_size, 0);
        CHECK(g, par_allgather_async(g, a, all_b, 8, PAR_F32, &w));
        s = par_work_wait(w, -1.0);
        msg = par_work_error(w);
      }
      double dt = h_now() - t0;
      EXPECT_STATUS(PAR_ERR_TIMEOUT, s);
      EXPECT_TRUE(dt >= 0.9 && dt < 4.0, "the timeout came after ~1 s, took %.2f s", dt);
      EXPECT_MSG(msg, runs[r].op, "tmo-group");
      par_work_free(w); /* before freeing the buffer the op may still hold */
      h_free(all_b);
    }
    h_context("world barrier after the %s timeout", runs[r].op);
    CHECK(world, par_barrier(world));
    par_group_destroy(g);
  }
  free(all);
  still_usable(world);
}

/* The root of a broadcast comes late: the others time out and go on using their buffers. The
 * root, arriving after they left, must not write into those buffers (with single copy it
 * writes parts of the message straight into them), and fails instead: in a message of many
 * rounds because it waits for the readers, in one of a single round (where it waits for
 * nobody) because they recorded their failure. */
static void late_broadcast_root(const char *name, size_t bytes, double t) {
  int *all = malloc(sizeof(int) * (size_t)h_size);
  for (int i = 0; i < h_size; i++) all[i] = i;
  par_group *g = h_group_create(all, h_size, name);
  CHECK(g, par_group_set_timeout(g, t));
  unsigned char *buf = h_alloc(bytes, 0);
  h_context("broadcast of %zu bytes whose root comes %g s late, timeout %g s", bytes, 2 * t, t);
  if (h_rank == 0) {
    memset(buf, 0xC3, bytes);
    h_sleep(2 * t);
    par_status s = par_broadcast(g, buf, bytes, PAR_U8, 0);
    EXPECT_TRUE(s == PAR_ERR_ABORTED || s == PAR_ERR_TIMEOUT,
                "the late root fails (got %s: %s)", par_status_name(s), par_group_last_error(g));
  } else {
    memset(buf, 0, bytes);
    EXPECT_STATUS(PAR_ERR_TIMEOUT, par_broadcast(g, buf, bytes, PAR_U8, 0));
    memset(buf, 0x5A, bytes); /* the buffer is the caller's again */
    h_sleep(2.5 * t);         /* the root arrives meanwhile */
    size_t changed = 0;
    for (size_t i = 0; i < bytes; i++) changed += buf[i] != 0x5A;
    EXPECT_TRUE(changed == 0, "%zu bytes written into the buffer after the broadcast returned",
                changed);
  }
  h_context("world barrier after the late broadcast");
  CHECK(world, par_barrier(world));
  par_group_destroy(g);
  h_free(buf);
  free(all);
}

static void test_late_broadcast_root(void) {
  if (h_size < 2) return;
  late_broadcast_root("late-root", 1u << 20, 1.0);
  late_broadcast_root("late-root-small", 4096, 0.5);
}

typedef struct abort_arg {
  par_group *g;
  double delay;
} abort_arg;

static void *abort_later(void *p) {
  abort_arg *a = p;
  h_sleep(a->delay);
  par_group_abort(a->g);
  return NULL;
}

/* Rank 0's main thread blocks in an allreduce that the last rank never joins; a second thread
 * of rank 0 aborts the group. The allreduce fails with PAR_ERR_ABORTED at once (long before
 * the 60 s timeout), so do the other members' pending allreduces, and every later op on the
 * group, on every member. */
static void test_abort(void) {
  int last = h_size - 1;
  int *all = malloc(sizeof(int) * (size_t)h_size);
  for (int i = 0; i < h_size; i++) all[i] = i;
  par_group *g = h_group_create(all, h_size, "abort-group");
  CHECK(g, par_group_set_timeout(g, 60.0));
  float x[4] = {1, 2, 3, 4}, y[4];
  if (h_size == 1) {
    h_context("par_group_abort on a group of one");
    par_group_abort(g);
    EXPECT_STATUS(PAR_ERR_ABORTED, par_allreduce(g, x, y, 4, PAR_F32, PAR_SUM));
  } else if (h_rank != last) {
    h_context("allreduce on 'abort-group' (rank %d never joins; rank 0 aborts after 0.3 s)", last);
    pthread_t t;
    abort_arg a = {g, 0.3};
    if (h_rank == 0) EXPECT_INT(0, pthread_create(&t, NULL, abort_later, &a));
    double t0 = h_now();
    par_status s = par_allreduce(g, x, y, 4, PAR_F32, PAR_SUM);
    double dt = h_now() - t0;
    if (h_rank == 0) EXPECT_INT(0, pthread_join(t, NULL));
    EXPECT_STATUS(PAR_ERR_ABORTED, s);
    EXPECT_TRUE(dt < 15.0, "the abort ends the op within seconds (timeout 60 s), took %.1f s", dt);
    EXPECT_MSG(par_group_last_error(g), "allreduce");
  }
  h_context("world barrier after the abort");
  CHECK(world, par_barrier(world));
  h_context("a later op on the aborted group");
  EXPECT_STATUS(PAR_ERR_ABORTED, par_barrier(g));
  par_group_destroy(g);
  free(all);
  still_usable(world);
}

/* Run in a child process with an empty environment: no launcher, so a world of 1. */
static int child_world_of_one(void) {
  h_rank = 0;
  par_world *w = NULL;
  par_status s = par_world_create(NULL, &w);
  if (s != PAR_OK) h_fail(__FILE__, __LINE__, "world of 1: par_world_create gave %s: %s", par_status_name(s), par_last_error());
  h_world = w;
  EXPECT_INT(0, par_world_rank(w));
  EXPECT_INT(1, par_world_size(w));
  EXPECT_INT(0, par_world_local_rank(w));
  EXPECT_INT(1, par_world_local_size(w));
  par_group *g = par_world_group(w);
  EXPECT_INT(1, par_group_size(g));
  h_case c = {H_ALLREDUCE, PAR_F32, PAR_AVG, 100, 0, 0, H_GEN_WIDE, 0, 1};
  h_case_run(g, &c, H_BLOCKING);
  int zero = 0;
  par_group *sub = NULL;
  CHECK(NULL, par_group_create(w, &zero, 1, NULL, &sub));
  h_case d = {H_BROADCAST, PAR_I64, PAR_SUM, 100, 0, 1, H_GEN_BITS, 0, 2};
  h_case_run(sub, &d, H_BLOCKING);
  par_group_destroy(sub);
  par_world_destroy(w);
  h_world = NULL;

  /* Inconsistent options are refused with a detail, and *out is NULL. */
  par_world_options o = PAR_WORLD_OPTIONS_INIT;
  o.rank = 3;
  o.size = 2;
  w = (par_world *)&o;
  h_context("par_world_create with rank 3 of 2");
  EXPECT_STATUS(PAR_ERR_BOOTSTRAP, par_world_create(&o, &w));
  EXPECT_TRUE(w == NULL, "*out is NULL after a failed par_world_create");
  EXPECT_MSG(par_last_error(), NULL);
  o.rank = 0;
  h_context("par_world_create with size 2 and no store");
  EXPECT_STATUS(PAR_ERR_BOOTSTRAP, par_world_create(&o, &w));
  EXPECT_MSG(par_last_error(), NULL);
  printf("test_errors child: world of 1 OK\n");
  return 0;
}

static void test_world_of_one(const char *self) {
  if (h_rank != 0) return;
  h_context("child with a clean environment (world of 1)");
  pid_t pid = fork();
  EXPECT_TRUE(pid >= 0, "fork works");
  if (pid == 0) {
    char *argv[] = {(char *)self, (char *)"--child-world-of-one", NULL};
    char *envp[] = {NULL};
    execve("/proc/self/exe", argv, envp);
    _exit(127);
  }
  int st = 0;
  EXPECT_TRUE(waitpid(pid, &st, 0) == pid, "waitpid for the child");
  EXPECT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0, "the world-of-1 child exits 0, got status 0x%x", st);
}

int main(int argc, char **argv) {
  if (argc > 1 && strcmp(argv[1], "--child-world-of-one") == 0) return child_world_of_one();
  h_init("test_errors");
  world = par_world_group(h_world);
  test_names();
  test_bad_collective_args(world);
  {
    par_group *self = h_group_create(&h_rank, 1, "self"); /* size-1 group: reduce's NULL root recvbuf */
    test_bad_collective_args(self);
    par_group_destroy(self);
  }
  test_null_handles();
  test_bad_group_create();
  test_timeout();
  test_late_broadcast_root();
  test_abort();
  test_world_of_one(argv[0]);
  h_context("final barrier");
  CHECK(world, par_barrier(world));
  return h_finish();
}
