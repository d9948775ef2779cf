/*
 * mpibench.c -- the MPI side of bench/compare.py: measures MPI_Allreduce, MPI_Allgather,
 * MPI_Bcast, MPI_Reduce_scatter_block and MPI_Alltoall exactly the way tools/parbench measures
 * par's collectives, so that the two times can be divided. Same sweep options, same sizes and
 * counts (nccl-tests' conventions), same timing (warmup, an automatic iteration count chosen by
 * rank 0 and broadcast, a barrier, then `iters` ops back to back, the slowest rank's elapsed time
 * divided by iters), same busbw factors, same JSON keys, and an optional --check on the same
 * exact-integer inputs.
 *
 * It is built by bench/compare.py with mpicc, not by CMake, so that par builds without MPI:
 *   mpicc -O2 -std=c11 -o mpibench bench/mpibench.c
 *   mpirun -n 2 ./mpibench --op allreduce --min 1M --max 1M --json
 * Only f32 with sum is measured: that is what the comparison's targets are stated for.
 * MPIBENCH_INJECT_FAULT=1 makes the last rank corrupt one output element after each checked op,
 * so that one can see --check report it (1 wrong per row, exit status 1).
 */
#define _GNU_SOURCE
#include <mpi.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* Same constants as tools/parbench/bench.h, so both pick the same iteration counts. */
#define TARGET_S 0.1
#define MIN_ITERS 2
#define MAX_ITERS 1000000
#define GUARD 64
#define SENTINEL 0xA5

typedef enum coll { ALLREDUCE = 0, ALLGATHER, BROADCAST, REDUCE_SCATTER, ALLTOALL, NCOLLS } coll;
static const char *const coll_names[NCOLLS] = {"allreduce", "allgather", "broadcast",
                                               "reduce_scatter", "alltoall"};

/* The sums (allreduce, reduce_scatter) take parbench's sum pattern; the others its data one. */
static int reduces(coll c) { return c == ALLREDUCE || c == REDUCE_SCATTER; }
/* Each rank passes a block of S/n (allgather's input, reduce_scatter's output, alltoall's
 * blocks); the others pass the whole size. */
static int blocked(coll c) { return c == ALLGATHER || c == REDUCE_SCATTER || c == ALLTOALL; }

typedef struct opts {
  int colls[NCOLLS];
  int ncolls;
  size_t min_bytes, max_bytes, factor;
  int warmup, iters, check, json, root;
} opts;

typedef struct bench {
  const opts *o;
  int me, n;
  int inject_fault; /* MPIBENCH_INJECT_FAULT=1: shows that --check can fail */
  float *send, *recv;
  size_t buf_bytes;
} bench;

/* A failed MPI call or a bad state ends the job: MPI_Abort stops every rank at once. */
#define DIE(...)                                              \
  do {                                                        \
    fprintf(stderr, "mpibench: %s:%d: ", __FILE__, __LINE__); \
    fprintf(stderr, __VA_ARGS__);                             \
    fputc('\n', stderr);                                      \
    MPI_Abort(MPI_COMM_WORLD, 1);                             \
    exit(1);                                                  \
  } while (0)

#define MPI_CHECK(expr)                                                     \
  do {                                                                      \
    int rc_ = (expr);                                                       \
    if (rc_ != MPI_SUCCESS) DIE("%s failed with MPI error %d", #expr, rc_); \
  } while (0)

/* ---------------------------------------------------------------------------------------- */
/* Command line                                                                             */
/* ---------------------------------------------------------------------------------------- */

static void usage(FILE *f) {
  fprintf(f,
          "usage: mpirun -n N mpibench [options]\n"
          "  --op LIST      allreduce,allgather,broadcast,reduce_scatter,alltoall, all\n"
          "                 (default all)\n"
          "  --min SIZE     smallest size in bytes (default 8; K/M/G suffixes)\n"
          "  --max SIZE     largest size in bytes (default 32M)\n"
          "  --factor F     size multiplier of the sweep (default 4)\n"
          "  --dtype f32    the only dtype measured\n"
          "  --redop sum    the only reduction measured\n"
          "  --root R       broadcast root (default 0)\n"
          "  --warmup N     untimed ops per size (default 1)\n"
          "  --iters N      timed ops per size, 0 = automatic (~%.2f s, >= %d)\n"
          "  --check        verify every result\n"
          "  --json         one JSON object per line (parbench's keys)\n",
          TARGET_S, MIN_ITERS);
}

static int parse_size(const char *s, size_t *out) {
  char *end;
  unsigned long long v = strtoull(s, &end, 10);
  if (end == s || *s == '-') return -1;
  unsigned long long mul = 1;
  if (*end == 'K' || *end == 'k')
    mul = 1ULL << 10, end++;
  else if (*end == 'M' || *end == 'm')
    mul = 1ULL << 20, end++;
  else if (*end == 'G' || *end == 'g')
    mul = 1ULL << 30, end++;
  if (*end == 'B' || *end == 'b') end++;
  if (*end != '\0' || v > SIZE_MAX / mul) return -1;
  *out = (size_t)(v * mul);
  return 0;
}

static int parse_int(const char *s, int lo, int *out) {
  char *end;
  long v = strtol(s, &end, 10);
  if (end == s || *end != '\0' || v < lo || v > 1000000000L) return -1;
  *out = (int)v;
  return 0;
}

static int parse_ops(char *list, opts *o) {
  o->ncolls = 0;
  for (char *save = NULL, *t = strtok_r(list, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
    int found = -1;
    for (int c = 0; c < NCOLLS; c++)
      if (strcmp(t, coll_names[c]) == 0) found = c;
    if (strcmp(t, "all") == 0) {
      for (int c = 0; c < NCOLLS; c++) o->colls[c] = c;
      o->ncolls = NCOLLS;
      continue;
    }
    if (found < 0 || o->ncolls == NCOLLS) return -1;
    o->colls[o->ncolls++] = found;
  }
  return o->ncolls > 0 ? 0 : -1;
}

static int takes_value(const char *a) {
  static const char *const names[] = {"--op",    "--min",  "--max",    "--factor", "--dtype",
                                      "--redop", "--root", "--warmup", "--iters"};
  for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
    if (strcmp(a, names[i]) == 0) return 1;
  return 0;
}

/* 0: run; 1: help printed; 2: bad command line (message printed). */
static int parse_args(int argc, char **argv, opts *o, int loud) {
  *o = (opts){.ncolls = NCOLLS, .min_bytes = 8, .max_bytes = 32u << 20, .factor = 4, .warmup = 1};
  for (int c = 0; c < NCOLLS; c++) o->colls[c] = c;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    const char *v = i + 1 < argc ? argv[i + 1] : NULL;
    int bad = 0, takes = 1;
    if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
      if (loud) usage(stdout);
      return 1;
    } else if (strcmp(a, "--check") == 0)
      o->check = 1, takes = 0;
    else if (strcmp(a, "--json") == 0)
      o->json = 1, takes = 0;
    else if (v == NULL && takes_value(a))
      bad = 1;
    else if (v == NULL) {
      if (loud) fprintf(stderr, "mpibench: unknown argument '%s'\n", a);
      return 2;
    } else if (strcmp(a, "--op") == 0) {
      char tmp[256];
      snprintf(tmp, sizeof tmp, "%s", v);
      bad = parse_ops(tmp, o);
    } else if (strcmp(a, "--min") == 0)
      bad = parse_size(v, &o->min_bytes);
    else if (strcmp(a, "--max") == 0)
      bad = parse_size(v, &o->max_bytes);
    else if (strcmp(a, "--factor") == 0)
      bad = parse_size(v, &o->factor) || o->factor < 2;
    else if (strcmp(a, "--dtype") == 0)
      bad = strcmp(v, "f32") != 0 && strcmp(v, "float") != 0;
    else if (strcmp(a, "--redop") == 0)
      bad = strcmp(v, "sum") != 0;
    else if (strcmp(a, "--root") == 0)
      bad = parse_int(v, 0, &o->root);
    else if (strcmp(a, "--warmup") == 0)
      bad = parse_int(v, 0, &o->warmup);
    else if (strcmp(a, "--iters") == 0)
      bad = parse_int(v, 0, &o->iters);
    else {
      if (loud) fprintf(stderr, "mpibench: unknown argument '%s'\n", a);
      return 2;
    }
    if (bad) {
      if (loud) fprintf(stderr, "mpibench: bad or missing value for '%s'\n", a);
      return 2;
    }
    i += takes;
  }
  if (o->min_bytes == 0 || o->min_bytes > o->max_bytes) {
    if (loud) fprintf(stderr, "mpibench: need 0 < --min <= --max\n");
    return 2;
  }
  return 0;
}

/* ---------------------------------------------------------------------------------------- */
/* Sizes, patterns and the check (parbench's conventions, docs/parbench.md)                 */
/* ---------------------------------------------------------------------------------------- */

static size_t call_count(coll c, size_t bytes, int n) {
  size_t total = bytes / sizeof(float);
  return blocked(c) ? total / (size_t)n : total;
}

/* The larger of the call's send and receive buffers, as parbench reports it. */
static size_t report_bytes(coll c, size_t count, int n) {
  return (blocked(c) ? count * (size_t)n : count) * sizeof(float);
}

static double busbw_factor(coll c, int n) {
  if (c == ALLREDUCE) return 2.0 * (n - 1) / n;
  if (blocked(c)) return (double)(n - 1) / n;
  return 1.0;
}

/* Small integers, exact in f32, whose sum over n ranks stays below 128 (sum), or that depend
 * on the source rank and element so a misplaced block is caught (allgather, broadcast). */
static int64_t value(coll c, int r, int n, size_t k) {
  uint64_t rr = (uint64_t)r, kk = (uint64_t)k;
  if (!reduces(c)) return (int64_t)((rr * 37 + kk * 13 + kk / 127) % 127);
  uint64_t m = (uint64_t)(127 / n < 10 ? 127 / n : 10);
  return (int64_t)(((rr + 1) * (kk % 7 + 1) + kk / 7) % (m + 1));
}

/*
 * Both patterns are periodic in k: the sum pattern depends on k only through k % 7 and
 * (k / 7) % (m + 1), so it repeats every 7(m+1) elements; the other through k % 127 and
 * (k / 127) % 127, every 127^2. Filling and verifying go through a table of one period, since
 * evaluating the divisions per element (and the n-rank sum per element) over 64 MiB on 8 ranks
 * would take tens of seconds on 2 cores.
 */
#define PERIOD_MAX (127 * 127)

static size_t period(coll c, int n) {
  if (!reduces(c)) return 127 * 127;
  return 7 * (size_t)((127 / n < 10 ? 127 / n : 10) + 1);
}

/* tab[j] = rank r's value at element j of a period; r < 0: the sum over all n ranks. */
static void pattern(coll c, int r, int n, float *tab) {
  size_t p = period(c, n);
  for (size_t j = 0; j < p; j++) {
    int64_t v = 0;
    if (r >= 0)
      v = value(c, r, n, j);
    else
      for (int q = 0; q < n; q++) v += value(c, q, n, j);
    tab[j] = (float)v;
  }
}

static float pattern_tab[PERIOD_MAX];

static void fill(float *buf, size_t count, coll c, int r, int n) {
  size_t p = period(c, n);
  pattern(c, r, n, pattern_tab);
  for (size_t k = 0; k < count; k++) buf[k] = pattern_tab[k % p];
}

/* Elements of buf[0..count) that differ from elements start.. of the periodic table. */
static int64_t mismatches_at(const float *buf, size_t count, const float *tab, size_t p,
                             size_t start) {
  int64_t wrong = 0;
  for (size_t k = 0, j = start % p; k < count; k++, j = j + 1 == p ? 0 : j + 1)
    if (buf[k] != tab[j]) wrong++;
  return wrong;
}

static int64_t mismatches(const float *buf, size_t count, const float *tab, size_t p) {
  return mismatches_at(buf, count, tab, p, 0);
}

/* Wrong output elements, guard bytes overwritten and input elements changed on this rank. */
static int64_t verify(const bench *b, coll c, size_t count) {
  int64_t wrong = 0;
  size_t p = period(c, b->n), out = count, in = count;
  size_t mine = (size_t)b->me * count; /* where this rank's block starts in a whole input */
  if (c == ALLREDUCE) {
    pattern(c, -1, b->n, pattern_tab);
    wrong += mismatches(b->recv, count, pattern_tab, p);
  } else if (c == REDUCE_SCATTER) { /* this rank's block of the sum */
    in = count * (size_t)b->n;
    pattern(c, -1, b->n, pattern_tab);
    wrong += mismatches_at(b->recv, count, pattern_tab, p, mine);
  } else if (c == ALLGATHER || c == ALLTOALL) {
    out = count * (size_t)b->n;
    if (c == ALLTOALL) in = out;
    /* Block src holds rank src's input: all of it (allgather), or its block for this rank. */
    for (int src = 0; src < b->n; src++) {
      pattern(c, src, b->n, pattern_tab);
      wrong += mismatches_at(b->recv + (size_t)src * count, count, pattern_tab, p,
                             c == ALLTOALL ? mine : 0);
    }
  } else {
    pattern(c, b->o->root, b->n, pattern_tab);
    wrong += mismatches(b->recv, count, pattern_tab, p);
  }
  const unsigned char *g = (const unsigned char *)(b->recv + out);
  for (size_t i = 0; i < GUARD && out * sizeof(float) + i < b->buf_bytes; i++)
    if (g[i] != SENTINEL) wrong++;
  if (c != BROADCAST) { /* out-of-place ops must leave their input alone */
    pattern(c, b->me, b->n, pattern_tab);
    wrong += mismatches(b->send, in, pattern_tab, p);
  }
  return wrong;
}

/* ---------------------------------------------------------------------------------------- */
/* Timing                                                                                   */
/* ---------------------------------------------------------------------------------------- */

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void run_once(const bench *b, coll c, size_t count) {
  int cnt = (int)count;
  switch (c) {
    case ALLREDUCE:
      MPI_CHECK(MPI_Allreduce(b->send, b->recv, cnt, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD));
      break;
    case ALLGATHER:
      MPI_CHECK(MPI_Allgather(b->send, cnt, MPI_FLOAT, b->recv, cnt, MPI_FLOAT, MPI_COMM_WORLD));
      break;
    case BROADCAST:
      MPI_CHECK(MPI_Bcast(b->recv, cnt, MPI_FLOAT, b->o->root, MPI_COMM_WORLD));
      break;
    case REDUCE_SCATTER:
      MPI_CHECK(
          MPI_Reduce_scatter_block(b->send, b->recv, cnt, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD));
      break;
    case ALLTOALL:
      MPI_CHECK(MPI_Alltoall(b->send, cnt, MPI_FLOAT, b->recv, cnt, MPI_FLOAT, MPI_COMM_WORLD));
      break;
    default:
      DIE("op %d out of range", (int)c);
  }
}

/* A barrier, `iters` ops back to back, the slowest rank's elapsed seconds (on every rank). */
static double timed_run(const bench *b, coll c, size_t count, int64_t iters) {
  MPI_CHECK(MPI_Barrier(MPI_COMM_WORLD));
  double t0 = now_s();
  for (int64_t i = 0; i < iters; i++) run_once(b, c, count);
  double t = now_s() - t0;
  MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, &t, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD));
  return t;
}

/* parbench's automatic count: probe 1 op, then more until a probe takes an eighth of the
 * target; scale to the target. Rank 0 decides each step and broadcasts it. */
static int64_t auto_iters(const bench *b, coll c, size_t count) {
  int64_t probe = 1;
  for (;;) {
    double t = timed_run(b, c, count, probe);
    int64_t next = 0;
    if (b->me == 0) {
      double per = t > 0 ? t / (double)probe : 1e-9;
      if (t >= TARGET_S / 8 || probe >= MAX_ITERS) {
        double want = TARGET_S / per;
        int64_t it = want >= MAX_ITERS ? MAX_ITERS : (int64_t)want + 1;
        next = -(it < MIN_ITERS ? MIN_ITERS : it);
      } else {
        double want = TARGET_S / 4 / per;
        next = want > 2.0 * (double)probe ? (int64_t)want : 2 * probe;
        if (next > MAX_ITERS) next = MAX_ITERS;
      }
    }
    MPI_CHECK(MPI_Bcast(&next, 1, MPI_INT64_T, 0, MPI_COMM_WORLD));
    if (next == 0) DIE("rank 0 sent no iteration decision");
    if (next < 0) return -next;
    probe = next;
  }
}

static int64_t checked_run(const bench *b, coll c, size_t count) {
  size_t out = report_bytes(c, count, b->n) + GUARD;
  memset(b->recv, SENTINEL, out < b->buf_bytes ? out : b->buf_bytes);
  if (c == BROADCAST && b->me == b->o->root) fill(b->recv, count, c, b->me, b->n);
  run_once(b, c, count);
  /* The last rank flips a bit of its first output element, as PARBENCH_INJECT_FAULT does. */
  if (b->inject_fault && b->me == b->n - 1 && count > 0) ((unsigned char *)b->recv)[0] ^= 0x40;
  int64_t wrong = verify(b, c, count);
  MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, &wrong, 1, MPI_INT64_T, MPI_SUM, MPI_COMM_WORLD));
  return wrong;
}

/* ---------------------------------------------------------------------------------------- */
/* The sweep                                                                                */
/* ---------------------------------------------------------------------------------------- */

static void print_result(const bench *b, coll c, size_t count, int64_t iters, double t,
                         int64_t wrong) {
  size_t bytes = report_bytes(c, count, b->n);
  double algbw = t > 0 ? (double)bytes / 1e9 / t : 0.0;
  double busbw = algbw * busbw_factor(c, b->n);
  char root[16] = "null", wstr[32] = "null";
  if (c == BROADCAST) snprintf(root, sizeof root, "%d", b->o->root);
  if (wrong >= 0) snprintf(wstr, sizeof wstr, "%lld", (long long)wrong);
  if (b->o->json) {
    printf(
        "{\"op\":\"%s\",\"dtype\":\"f32\",\"redop\":%s,\"root\":%s,\"bytes\":%zu,"
        "\"count\":%zu,\"ranks\":%d,\"iters\":%lld,\"time_us\":%.4f,\"algbw_gbs\":%.6f,"
        "\"busbw_gbs\":%.6f,\"wrong\":%s}\n",
        coll_names[c], reduces(c) ? "\"sum\"" : "null", root, bytes, count, b->n, (long long)iters,
        t * 1e6, algbw, busbw, wstr);
  } else {
    printf("  %12zu  %12zu  %6s  %6s  %6s  %10.2f  %11.3f  %11.3f  %8s  %8lld\n", bytes, count,
           "f32", reduces(c) ? "sum" : "-", c == BROADCAST ? root : "-", t * 1e6, algbw, busbw,
           wrong >= 0 ? wstr : "N/A", (long long)iters);
  }
}

static int64_t sweep(const bench *b, coll c) {
  const opts *o = b->o;
  fill(b->send, o->max_bytes / sizeof(float), c, b->me, b->n);
  if (b->me == 0 && !o->json) {
    printf("#\n# %s\n", coll_names[c]);
    printf("# %12s  %12s  %6s  %6s  %6s  %10s  %11s  %11s  %8s  %8s\n", "size(B)", "count", "type",
           "redop", "root", "time(us)", "algbw(GB/s)", "busbw(GB/s)", "#wrong", "iters");
  }
  int64_t wrong = 0;
  for (size_t size = o->min_bytes;;) {
    size_t count = call_count(c, size, b->n);
    if (count > (size_t)INT32_MAX) DIE("count %zu is beyond an MPI int count", count);
    for (int i = 0; i < o->warmup; i++) run_once(b, c, count);
    int64_t iters = o->iters > 0 ? o->iters : auto_iters(b, c, count);
    double t = timed_run(b, c, count, iters) / (double)iters;
    int64_t w = o->check ? checked_run(b, c, count) : -1;
    if (w > 0) wrong += w;
    if (b->me == 0) print_result(b, c, count, iters, t, w);
    if (size > o->max_bytes / o->factor) break;
    size *= o->factor;
  }
  return wrong;
}

static float *alloc_touched(size_t bytes, int fill_byte) {
  size_t rounded = (bytes + 4095) & ~(size_t)4095;
  float *p = aligned_alloc(4096, rounded);
  if (p == NULL) DIE("cannot allocate %zu bytes", rounded);
  /* Fault every page in before timing, as parbench does. */
  memset(p, fill_byte, rounded);
  return p;
}

int main(int argc, char **argv) {
  MPI_CHECK(MPI_Init(&argc, &argv));
  /* Errors come back as codes, so MPI_CHECK can say which call failed before aborting. */
  MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
  bench b = {0};
  MPI_Comm_rank(MPI_COMM_WORLD, &b.me);
  MPI_Comm_size(MPI_COMM_WORLD, &b.n);
  opts o;
  int prc = parse_args(argc, argv, &o, b.me == 0);
  if (prc == 0 && o.root >= b.n) {
    if (b.me == 0) fprintf(stderr, "mpibench: --root %d is not below %d ranks\n", o.root, b.n);
    prc = 2;
  }
  if (prc != 0) {
    MPI_Finalize();
    return prc == 1 ? 0 : 2;
  }
  setvbuf(stdout, NULL, _IOLBF, 0);
  b.o = &o;
  const char *fault = getenv("MPIBENCH_INJECT_FAULT");
  b.inject_fault = fault != NULL && strcmp(fault, "1") == 0;
  b.buf_bytes = o.max_bytes + GUARD;
  b.send = alloc_touched(b.buf_bytes, 0);
  b.recv = alloc_touched(b.buf_bytes, SENTINEL);
  if (b.me == 0 && !o.json) {
    int len = 0;
    char ver[MPI_MAX_LIBRARY_VERSION_STRING];
    MPI_Get_library_version(ver, &len);
    char *nl = strchr(ver, '\n');
    if (nl) *nl = '\0';
    printf(
        "# mpibench: %d ranks, %s\n# sizes %zu..%zu bytes x%zu, warmup %d, iters %s, "
        "check %s\n",
        b.n, ver, o.min_bytes, o.max_bytes, o.factor, o.warmup, o.iters ? "fixed" : "auto",
        o.check ? "on" : "off");
  }
  int64_t wrong = 0;
  for (int i = 0; i < o.ncolls; i++) wrong += sweep(&b, (coll)o.colls[i]);
  if (b.me == 0 && !o.json && o.check) printf("#\n# wrong elements: %lld\n", (long long)wrong);
  if (b.me == 0 && !o.json && !o.check) printf("#\n# wrong elements: N/A (run with --check)\n");
  if (b.me == 0 && wrong > 0)
    fprintf(stderr, "mpibench: FAILED: %lld wrong element(s)\n", (long long)wrong);
  MPI_CHECK(MPI_Barrier(MPI_COMM_WORLD));
  free(b.send);
  free(b.recv);
  MPI_Finalize();
  return wrong > 0 ? 1 : 0;
}
