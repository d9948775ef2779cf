/*
 * parbench.c -- measures par's collectives on the world group, in the style of nccl-tests:
 * for each op, dtype, reduction op and size of the sweep it warms up, picks an iteration count
 * (or takes --iters), times that many back-to-back ops after a barrier, takes the slowest
 * rank's time, and prints time, algorithm bandwidth and bus bandwidth; with --check it then runs
 * the op once more on inputs whose exact result is known (pattern.c) and counts wrong elements.
 * Run it under parrun: `parrun -n 4 parbench`. Only rank 0 prints results.
 */
#include <string.h>
#include <time.h>

#include "bench.h"

/* ---------------------------------------------------------------------------------------- */
/* State and failure reporting                                                              */
/* ---------------------------------------------------------------------------------------- */

typedef struct bench {
  const bench_opts *o;
  par_world *world;
  par_group *g;
  int me, n;
  void *send, *recv;
  size_t buf_bytes; /* allocation of each buffer: max size plus the guard */
  int inject_fault; /* PARBENCH_INJECT_FAULT=1 */
} bench;

/* What the current call is, for the failure message. */
typedef struct call {
  bench_coll c;
  par_dtype dt;
  par_op op;
  size_t count;
} call;

/* A failed par call ends the run: say which call, the status and the library's detail, then
 * abort the group so that the other ranks fail at once rather than at their timeout. */
static void fail(bench *b, const char *where, int line, const char *fn, const call *k,
                 par_status st, const char *detail) {
  fprintf(stderr, "parbench: %s:%d: rank %d: %s failed", where, line, b->me, fn);
  if (k != NULL)
    fprintf(stderr, " (%s, %s, %s, count %zu)", bench_coll_name(k->c), par_dtype_name(k->dt),
            bench_coll_reduces(k->c) ? par_op_name(k->op) : "-", k->count);
  fprintf(stderr, ": %s: %s\n", par_status_name(st), detail && *detail ? detail : "(no detail)");
  par_group_abort(b->g);
  exit(1);
}

#define BENCH_CALL(b, k, expr)                                                                 \
  do {                                                                                         \
    par_status st_ = (expr);                                                                   \
    if (st_ != PAR_OK)                                                                         \
      fail((b), __FILE__, __LINE__, #expr, (k), st_, par_group_last_error((b)->g));            \
  } while (0)

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* ---------------------------------------------------------------------------------------- */
/* One op                                                                                   */
/* ---------------------------------------------------------------------------------------- */

static void wait_work(bench *b, const call *k, par_work *w, const char *what) {
  par_status st = par_work_wait(w, -1.0);
  if (st != PAR_OK) fail(b, __FILE__, __LINE__, what, k, st, par_work_error(w));
  par_work_free(w);
}

/* Issues one op of kind k->c on the preallocated buffers and waits for it. */
static void run_once(bench *b, const call *k) {
  par_group *g = b->g;
  void *s = b->send, *r = b->recv;
  size_t cnt = k->count;
  int root = b->o->root;
  switch (k->c) {
  case BENCH_ALLREDUCE: BENCH_CALL(b, k, par_allreduce(g, s, r, cnt, k->dt, k->op)); break;
  case BENCH_ALLGATHER: BENCH_CALL(b, k, par_allgather(g, s, r, cnt, k->dt)); break;
  case BENCH_REDUCE_SCATTER:
    BENCH_CALL(b, k, par_reduce_scatter(g, s, r, cnt, k->dt, k->op));
    break;
  case BENCH_BROADCAST: BENCH_CALL(b, k, par_broadcast(g, r, cnt, k->dt, root)); break;
  case BENCH_REDUCE:
    /* recvbuf is ignored off the root; passing NULL there holds the header to its word. */
    BENCH_CALL(b, k, par_reduce(g, s, b->me == root ? r : NULL, cnt, k->dt, k->op, root));
    break;
  case BENCH_ALLTOALL: BENCH_CALL(b, k, par_alltoall(g, s, r, cnt, k->dt)); break;
  case BENCH_SENDRECV: {
    /* A ring: send to the next index, receive from the previous one. Both are posted before
     * either is waited on, as the header asks of pairs that send to each other. */
    int next = (b->me + 1) % b->n, prev = (b->me + b->n - 1) % b->n;
    par_work *rw = NULL, *sw = NULL;
    BENCH_CALL(b, k, par_recv_async(g, r, cnt, k->dt, prev, &rw));
    BENCH_CALL(b, k, par_send_async(g, s, cnt, k->dt, next, &sw));
    wait_work(b, k, rw, "par_work_wait(recv)");
    wait_work(b, k, sw, "par_work_wait(send)");
    break;
  }
  default: CHECK(0, "run_once: op %d out of range", (int)k->c);
  }
}

/* Runs `iters` ops back to back after a barrier; returns the slowest rank's elapsed seconds,
 * the same value on every rank. */
static double timed_run(bench *b, const call *k, int64_t iters) {
  BENCH_CALL(b, NULL, par_barrier(b->g));
  double t0 = now_s();
  for (int64_t i = 0; i < iters; i++) run_once(b, k);
  double t = now_s() - t0;
  BENCH_CALL(b, NULL, par_allreduce(b->g, &t, &t, 1, PAR_F64, PAR_MAX));
  return t;
}

/*
 * Chooses the iteration count for --iters 0: probes with 1, then more ops until a probe takes
 * an eighth of the target, and scales that to the target. Rank 0 decides each step and
 * broadcasts it, so every rank runs the same number of ops whatever its clock says.
 */
static int64_t auto_iters(bench *b, const call *k) {
  int64_t probe = 1;
  for (;;) {
    double t = timed_run(b, k, probe);
    int64_t next = 0; /* > 0: probe again with that many; < 0: the answer, negated */
    if (b->me == 0) {
      double per = t > 0 ? t / (double)probe : 1e-9;
      if (t >= BENCH_TARGET_S / 8 || probe >= BENCH_MAX_ITERS) {
        double want = BENCH_TARGET_S / per;
        int64_t it = want >= BENCH_MAX_ITERS ? BENCH_MAX_ITERS : (int64_t)want + 1;
        next = -(it < BENCH_MIN_ITERS ? BENCH_MIN_ITERS : it);
      } else {
        /* Aim the next probe at a quarter of the target; at least double. */
        double want = BENCH_TARGET_S / 4 / per;
        next = want > 2.0 * (double)probe ? (int64_t)want : 2 * probe;
        if (next > BENCH_MAX_ITERS) next = BENCH_MAX_ITERS;
      }
    }
    BENCH_CALL(b, NULL, par_broadcast(b->g, &next, 1, PAR_I64, 0));
    CHECK(next != 0, "auto_iters: rank 0 sent no decision");
    if (next < 0) return -next;
    probe = next;
  }
}

/* PARBENCH_INJECT_FAULT=1 (a test aid, see docs/parbench.md): one rank flips a bit of the
 * first output element after the checked op, so that a test can see --check catch it. */
static void inject_fault(bench *b, const call *k) {
  int victim = k->c == BENCH_REDUCE ? b->o->root : b->n - 1;
  if (b->me == victim && k->count > 0) ((unsigned char *)b->recv)[0] ^= 0x40;
}

/* The checked run: sentinel over the output, the root's data for broadcast, one op, then
 * every rank verifies its part. Returns the number of wrong elements over all ranks. */
static int64_t checked_run(bench *b, const call *k) {
  size_t elem = par_dtype_size(k->dt);
  size_t out = bench_report_bytes(k->c, k->count, elem, b->n) + BENCH_GUARD;
  memset(b->recv, BENCH_SENTINEL, out < b->buf_bytes ? out : b->buf_bytes);
  if (k->c == BENCH_BROADCAST && b->me == b->o->root)
    bench_fill(b->recv, k->count, k->dt, k->c, k->op, b->me, b->n);
  run_once(b, k);
  if (b->inject_fault) inject_fault(b, k);
  int64_t wrong = bench_verify(k->c, k->op, k->dt, b->me, b->n, b->o->root, k->count, b->send,
                               b->recv, b->buf_bytes);
  BENCH_CALL(b, NULL, par_allreduce(b->g, &wrong, &wrong, 1, PAR_I64, PAR_SUM));
  return wrong;
}

/* ---------------------------------------------------------------------------------------- */
/* Output                                                                                   */
/* ---------------------------------------------------------------------------------------- */

typedef struct result {
  size_t bytes, count;
  int64_t iters;
  double time_us, algbw, busbw;
  int64_t wrong; /* -1: not checked */
} result;

static void print_table_head(bench_coll c) {
  printf("#\n# %s\n", bench_coll_name(c));
  printf("# %12s  %12s  %6s  %6s  %6s  %10s  %11s  %11s  %8s  %8s\n", "size(B)", "count",
         "type", "redop", "root", "time(us)", "algbw(GB/s)", "busbw(GB/s)", "#wrong", "iters");
}

static void print_row(const bench *b, const call *k, const result *r) {
  char tstr[32], root[16], wrong[32];
  /* nccl-tests' precision: fewer decimals as the time grows. */
  snprintf(tstr, sizeof tstr, r->time_us >= 10000 ? "%.0f" : r->time_us >= 100 ? "%.1f" : "%.2f",
           r->time_us);
  snprintf(root, sizeof root, "%d", b->o->root);
  snprintf(wrong, sizeof wrong, "%lld", (long long)r->wrong);
  printf("  %12zu  %12zu  %6s  %6s  %6s  %10s  %11.3f  %11.3f  %8s  %8lld\n", r->bytes, r->count,
         par_dtype_name(k->dt), bench_coll_reduces(k->c) ? par_op_name(k->op) : "-",
         bench_coll_rooted(k->c) ? root : "-", tstr, r->algbw, r->busbw,
         r->wrong < 0 ? "N/A" : wrong, (long long)r->iters);
}

static void print_json(const bench *b, const call *k, const result *r) {
  char redop[16] = "null", root[16] = "null", wrong[32] = "null";
  if (bench_coll_reduces(k->c)) snprintf(redop, sizeof redop, "\"%s\"", par_op_name(k->op));
  if (bench_coll_rooted(k->c)) snprintf(root, sizeof root, "%d", b->o->root);
  if (r->wrong >= 0) snprintf(wrong, sizeof wrong, "%lld", (long long)r->wrong);
  printf("{\"backend\":\"%s\",\"op\":\"%s\",\"dtype\":\"%s\",\"redop\":%s,\"root\":%s,\"bytes\":%zu,\"count\":%zu,"
         "\"ranks\":%d,\"iters\":%lld,\"time_us\":%.4f,\"algbw_gbs\":%.6f,\"busbw_gbs\":%.6f,"
         "\"wrong\":%s}\n",
         par_backend_name(par_group_backend(b->g)), bench_coll_name(k->c), par_dtype_name(k->dt),
         redop, root, r->bytes, r->count, b->n,
         (long long)r->iters, r->time_us, r->algbw, r->busbw, wrong);
}

static void print_header(const bench *b) {
  const bench_opts *o = b->o;
  printf("# parbench: %d ranks, backend %s%s", b->n, par_backend_name(par_group_backend(b->g)),
         o->zero_copy ? ", buffers from par_alloc (zero copy)" : "");
  if (o->offset) printf(", buffers at page + %d", o->offset);
  printf("\n");
  printf("# op:");
  for (int i = 0; i < o->ncolls; i++) printf("%s%s", i ? "," : " ", bench_coll_name(o->colls[i]));
  printf("  dtype:");
  for (int i = 0; i < o->ndtypes; i++) printf("%s%s", i ? "," : " ", par_dtype_name(o->dtypes[i]));
  printf("  redop:");
  for (int i = 0; i < o->nredops; i++) printf("%s%s", i ? "," : " ", par_op_name(o->redops[i]));
  printf("  root: %d\n", o->root);
  printf("# sizes %zu..%zu bytes x%zu, warmup %d, ", o->min_bytes, o->max_bytes, o->factor,
         o->warmup);
  if (o->iters > 0)
    printf("iters %d, ", o->iters);
  else
    printf("iters auto (~%.2f s per size, >= %d), ", BENCH_TARGET_S, BENCH_MIN_ITERS);
  printf("check %s\n", o->check ? "on" : "off");
}

/* ---------------------------------------------------------------------------------------- */
/* The sweep                                                                                */
/* ---------------------------------------------------------------------------------------- */

/* Measures one size; returns its result (the same on every rank). */
static result measure(bench *b, const call *k) {
  const bench_opts *o = b->o;
  size_t elem = par_dtype_size(k->dt);
  result r = {0};
  r.count = k->count;
  r.bytes = bench_report_bytes(k->c, k->count, elem, b->n);
  for (int i = 0; i < o->warmup; i++) run_once(b, k);
  r.iters = o->iters > 0 ? o->iters : auto_iters(b, k);
  double t = timed_run(b, k, r.iters) / (double)r.iters;
  r.time_us = t * 1e6;
  r.algbw = t > 0 ? (double)r.bytes / 1e9 / t : 0.0;
  r.busbw = r.algbw * bench_busbw_factor(k->c, b->n);
  r.wrong = o->check ? checked_run(b, k) : -1;
  return r;
}

/* Runs the sweep for one op, dtype and reduction op; returns the wrong elements found. */
static int64_t sweep(bench *b, bench_coll c, par_dtype dt, par_op op, double *bw_sum,
                     int *bw_n) {
  const bench_opts *o = b->o;
  size_t elem = par_dtype_size(dt);
  /* The inputs depend on the op and the reduction, not on the size: fill once at the
   * largest count, every later size uses a prefix. */
  bench_fill(b->send, o->max_bytes / elem, dt, c, op, b->me, b->n);
  int64_t wrong = 0;
  for (size_t size = o->min_bytes;;) {
    call k = {c, dt, op, bench_call_count(c, size, elem, b->n)};
    result r = measure(b, &k);
    if (r.wrong > 0) wrong += r.wrong;
    if (b->me == 0) {
      if (o->json)
        print_json(b, &k, &r);
      else
        print_row(b, &k, &r);
    }
    *bw_sum += r.busbw;
    (*bw_n)++;
    if (size > o->max_bytes / o->factor) break;
    size *= o->factor;
  }
  return wrong;
}

static void *alloc_touched(bench *b, size_t bytes, int fill) {
  size_t rounded = (bytes + (size_t)b->o->offset + 4095) & ~(size_t)4095;
  void *p = NULL;
  if (b->o->zero_copy) {
    par_status st = par_alloc(b->world, rounded, &p);
    CHECK(st == PAR_OK, "par_alloc(%zu) failed: %s: %s", rounded, par_status_name(st),
          par_last_error());
  } else {
    p = aligned_alloc(4096, rounded);
    CHECK(p != NULL, "cannot allocate %zu bytes", rounded);
  }
  /* Fault every page in now: a first touch inside the timed loop would be measured. */
  memset(p, fill, rounded);
  return (char *)p + b->o->offset;
}

static void free_buffer(bench *b, void *p) {
  p = (char *)p - b->o->offset;
  if (b->o->zero_copy)
    par_free(b->world, p);
  else
    free(p);
}

int main(int argc, char **argv) {
  bench_opts o;
  int prc = bench_parse_args(argc, argv, &o);
  if (prc == 1) return 0;
  if (prc != 0) return 2;
  setvbuf(stdout, NULL, _IOLBF, 0);

  const char *fault = getenv("PARBENCH_INJECT_FAULT");
  bench b = {.o = &o, .inject_fault = fault != NULL && strcmp(fault, "1") == 0};
  par_status st = par_world_create(NULL, &b.world);
  CHECK(st == PAR_OK, "par_world_create failed: %s: %s", par_status_name(st), par_last_error());
  b.g = par_world_group(b.world);
  b.me = par_group_index(b.g);
  b.n = par_group_size(b.g);
  if (o.root >= b.n) {
    if (b.me == 0)
      fprintf(stderr, "parbench: invalid value '%d' for --root: the world has %d rank(s)\n",
              o.root, b.n);
    /* Everyone leaves together: a rank exiting first would make the launcher stop rank 0
     * before it has said why. */
    par_barrier(b.g);
    par_world_destroy(b.world);
    return 2;
  }

  b.buf_bytes = o.max_bytes + BENCH_GUARD;
  b.send = alloc_touched(&b, b.buf_bytes, 0);
  b.recv = alloc_touched(&b, b.buf_bytes, BENCH_SENTINEL);

  if (b.me == 0 && !o.json) print_header(&b);
  int64_t wrong = 0;
  par_group *world = b.g;
  for (int bi = 0; bi < (o.nbackends ? o.nbackends : 1); bi++) {
    if (o.nbackends) {
      /* A group of every rank on the backend asked for: one table compares backends. */
      int *all = malloc(sizeof(int) * (size_t)b.n);
      CHECK(all != NULL, "out of memory");
      for (int i = 0; i < b.n; i++) all[i] = par_group_global_rank(world, i);
      par_group_options go = PAR_GROUP_OPTIONS_INIT;
      go.backend = o.backends[bi];
      go.name = par_backend_name(o.backends[bi]);
      st = par_group_create(b.world, all, b.n, &go, &b.g);
      free(all);
      CHECK(st == PAR_OK, "cannot make a group on backend %s: %s: %s",
            par_backend_name(o.backends[bi]), par_status_name(st), par_world_last_error(b.world));
      if (b.me == 0 && !o.json)
        printf("#\n# backend %s\n", par_backend_name(par_group_backend(b.g)));
    }
    for (int ci = 0; ci < o.ncolls; ci++) {
      bench_coll c = (bench_coll)o.colls[ci];
      if (b.me == 0 && !o.json) print_table_head(c);
      double bw_sum = 0;
      int bw_n = 0;
      for (int di = 0; di < o.ndtypes; di++) {
        /* Ops without a reduction run once per dtype, not once per --redop. */
        int nred = bench_coll_reduces(c) ? o.nredops : 1;
        for (int ri = 0; ri < nred; ri++)
          wrong += sweep(&b, c, o.dtypes[di], o.redops[ri], &bw_sum, &bw_n);
      }
      if (b.me == 0 && !o.json)
        printf("# %s: average busbw %.3f GB/s\n", bench_coll_name(c), bw_n ? bw_sum / bw_n : 0.0);
    }
    if (b.g != world) {
      BENCH_CALL(&b, NULL, par_barrier(b.g));
      par_group_destroy(b.g);
      b.g = world;
    }
  }
  if (b.me == 0) {
    if (!o.json && o.check) printf("#\n# wrong elements: %lld\n", (long long)wrong);
    if (!o.json && !o.check) printf("#\n# wrong elements: N/A (run with --check)\n");
    if (wrong > 0) fprintf(stderr, "parbench: FAILED: %lld wrong element(s)\n", (long long)wrong);
  }
  /* Nobody leaves while a peer may still be reading its buffers. */
  BENCH_CALL(&b, NULL, par_barrier(b.g));
  free_buffer(&b, b.send);
  free_buffer(&b, b.recv);
  par_world_destroy(b.world);
  return wrong > 0 ? 1 : 0;
}
