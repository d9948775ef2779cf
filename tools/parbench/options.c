/*
 * options.c -- parbench's command line: the option table, the size parser (K/M/G binary
 * suffixes), the comma lists of ops, dtypes and reduction ops, the usage text, and the
 * nccl-tests conventions for counts, reported sizes and bus-bandwidth factors. Nothing here
 * needs a world, so a bad command line is refused (exit 2) before any rank connects.
 */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <string.h>
#include <strings.h>

#include "bench.h"

/* ---------------------------------------------------------------------------------------- */
/* Collectives and their conventions                                                        */
/* ---------------------------------------------------------------------------------------- */

static const char *const coll_names[BENCH_COLL_COUNT] = {
    [BENCH_ALLREDUCE] = "allreduce", [BENCH_ALLGATHER] = "allgather",
    [BENCH_REDUCE_SCATTER] = "reduce_scatter", [BENCH_BROADCAST] = "broadcast",
    [BENCH_REDUCE] = "reduce", [BENCH_ALLTOALL] = "alltoall", [BENCH_SENDRECV] = "sendrecv",
};

const char *bench_coll_name(bench_coll c) {
  return (unsigned)c < BENCH_COLL_COUNT ? coll_names[c] : NULL;
}

int bench_coll_reduces(bench_coll c) {
  return c == BENCH_ALLREDUCE || c == BENCH_REDUCE_SCATTER || c == BENCH_REDUCE;
}

int bench_coll_rooted(bench_coll c) { return c == BENCH_BROADCAST || c == BENCH_REDUCE; }

/* The ops whose count is a per-rank block of a buffer that holds one block per rank. */
static int coll_blocked(bench_coll c) {
  return c == BENCH_ALLGATHER || c == BENCH_REDUCE_SCATTER || c == BENCH_ALLTOALL;
}

size_t bench_call_count(bench_coll c, size_t bytes, size_t elem, int nranks) {
  size_t total = bytes / elem;
  return coll_blocked(c) ? total / (size_t)nranks : total;
}

size_t bench_report_bytes(bench_coll c, size_t count, size_t elem, int nranks) {
  return coll_blocked(c) ? count * (size_t)nranks * elem : count * elem;
}

double bench_busbw_factor(bench_coll c, int nranks) {
  double n = (double)nranks;
  switch (c) {
  case BENCH_ALLREDUCE: return 2.0 * (n - 1.0) / n;
  case BENCH_ALLGATHER:
  case BENCH_REDUCE_SCATTER:
  case BENCH_ALLTOALL: return (n - 1.0) / n;
  default: return 1.0;
  }
}

/* ---------------------------------------------------------------------------------------- */
/* Parsers                                                                                  */
/* ---------------------------------------------------------------------------------------- */

int bench_parse_size(const char *s, size_t *out) {
  if (s == NULL || *s < '0' || *s > '9') return -1; /* no sign, no blanks, no empty string */
  errno = 0;
  char *end = NULL;
  unsigned long long v = strtoull(s, &end, 10);
  if (errno != 0 || end == s) return -1;
  unsigned shift = 0;
  if (*end != '\0') {
    switch (*end) {
    case 'k': case 'K': shift = 10; break;
    case 'm': case 'M': shift = 20; break;
    case 'g': case 'G': shift = 30; break;
    default: return -1;
    }
    end++;
    if (*end == 'B' || *end == 'b') end++; /* "8KB" reads as 8K */
    if (*end != '\0') return -1;
  }
  /* Keep sizes far from overflow: the sweep multiplies them by the factor and by ranks. */
  if (v > (1ULL << 40) >> shift) return -1;
  *out = (size_t)(v << shift);
  return 0;
}

static int parse_int(const char *s, int lo, int hi, int *out) {
  if (s == NULL || *s == '\0') return -1;
  errno = 0;
  char *end = NULL;
  long v = strtol(s, &end, 10);
  if (errno != 0 || *end != '\0' || v < lo || v > hi) return -1;
  *out = (int)v;
  return 0;
}

/* Splits a comma list and calls one(item) for each; returns -1 at the first bad item. */
static int parse_list(const char *arg, int (*one)(const char *item, void *ctx), void *ctx) {
  char buf[256];
  if (strlen(arg) >= sizeof buf || arg[0] == '\0') return -1;
  strcpy(buf, arg);
  char *save = NULL;
  int n = 0;
  for (char *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save), n++)
    if (one(tok, ctx) != 0) return -1;
  return n > 0 ? 0 : -1;
}

static int add_coll(const char *item, void *ctx) {
  bench_opts *o = ctx;
  if (strcasecmp(item, "all") == 0) {
    for (int c = 0; c < BENCH_COLL_COUNT; c++) o->colls[c] = c;
    o->ncolls = BENCH_COLL_COUNT;
    return 0;
  }
  for (int c = 0; c < BENCH_COLL_COUNT; c++) {
    if (strcasecmp(item, coll_names[c]) != 0) continue;
    for (int i = 0; i < o->ncolls; i++)
      if (o->colls[i] == c) return 0; /* listed twice: measure once */
    o->colls[o->ncolls++] = c;
    return 0;
  }
  return -1;
}

static int add_dtype(const char *item, void *ctx) {
  bench_opts *o = ctx;
  if (strcasecmp(item, "all") == 0) {
    for (int d = 0; d < PAR_DTYPE_COUNT; d++) o->dtypes[d] = (par_dtype)d;
    o->ndtypes = PAR_DTYPE_COUNT;
    return 0;
  }
  par_dtype dt;
  if (par_dtype_parse(item, &dt) != PAR_OK) return -1;
  for (int i = 0; i < o->ndtypes; i++)
    if (o->dtypes[i] == dt) return 0;
  o->dtypes[o->ndtypes++] = dt;
  return 0;
}

static int add_redop(const char *item, void *ctx) {
  bench_opts *o = ctx;
  if (strcasecmp(item, "all") == 0) {
    for (int p = 0; p < PAR_OP_COUNT; p++) o->redops[p] = (par_op)p;
    o->nredops = PAR_OP_COUNT;
    return 0;
  }
  par_op op;
  if (par_op_parse(item, &op) != PAR_OK) return -1;
  for (int i = 0; i < o->nredops; i++)
    if (o->redops[i] == op) return 0;
  o->redops[o->nredops++] = op;
  return 0;
}

static int add_backend(const char *item, void *ctx) {
  bench_opts *o = ctx;
  par_backend be;
  if (par_backend_parse(item, &be) != PAR_OK) return -1;
  for (int i = 0; i < o->nbackends; i++)
    if (o->backends[i] == be) return 0;
  o->backends[o->nbackends++] = be;
  return 0;
}

/* ---------------------------------------------------------------------------------------- */
/* Command line                                                                             */
/* ---------------------------------------------------------------------------------------- */

void bench_usage(FILE *f) {
  fprintf(f,
          "usage: parrun -n N parbench [options]\n"
          "\n"
          "Measures par collectives on the world group, nccl-tests style.\n"
          "\n"
          "  --op LIST       ops, comma separated: allreduce, allgather, reduce_scatter,\n"
          "                  broadcast, reduce, alltoall, sendrecv, all\n"
          "                  (default: allreduce,allgather,reduce_scatter,broadcast,alltoall,"
          "sendrecv)\n"
          "  --min SIZE      smallest size in bytes (default %zu); K, M, G suffixes are binary\n"
          "  --max SIZE      largest size in bytes (default %zuM)\n"
          "  --factor F      multiply the size by F between steps, F >= 2 (default %zu)\n"
          "  --dtype LIST    data types: f32 f64 f16 bf16 i8 u8 i32 i64, all (default f32)\n"
          "  --redop LIST    reduction ops: sum prod min max avg, all (default sum)\n"
          "  --root R        root rank of broadcast and reduce (default 0)\n"
          "  --warmup N      untimed runs before each size (default %d)\n"
          "  --iters N       timed runs per size; 0 = automatic, about %.1f s per size and at\n"
          "                  least %d runs (default 0)\n"
          "  --check         verify every result against the exact expected values\n"
          "  --json          print one JSON object per measurement instead of the table\n"
          "  --zero-copy     take the buffers from par_alloc (peers read them in place)\n"
          "  --offset B      start the buffers B bytes past a page boundary, a multiple of 8\n"
          "                  up to 4088 (default 0; malloc's large buffers start at 16)\n"
          "  --backend LIST  measure a group of all ranks on each backend (e.g. shm,mpi under\n"
          "                  mpirun); default: the world group\n"
          "  -h, --help      print this help\n"
          "  --version       print parbench's version\n"
          "\n"
          "Exit status: 0 ok; 1 a wrong result or a failed par call; 2 a bad command line.\n",
          BENCH_DEFAULT_MIN, BENCH_DEFAULT_MAX >> 20, BENCH_DEFAULT_FACTOR, BENCH_DEFAULT_WARMUP,
          BENCH_TARGET_S, BENCH_MIN_ITERS);
}

enum { OPT_OP = 256, OPT_MIN, OPT_MAX, OPT_FACTOR, OPT_DTYPE, OPT_REDOP, OPT_ROOT,
       OPT_WARMUP, OPT_ITERS, OPT_CHECK, OPT_JSON, OPT_ZERO_COPY, OPT_BACKEND,
       OPT_OFFSET, OPT_VERSION };

static const struct option long_opts[] = {
    {"op", required_argument, NULL, OPT_OP},
    {"min", required_argument, NULL, OPT_MIN},
    {"max", required_argument, NULL, OPT_MAX},
    {"factor", required_argument, NULL, OPT_FACTOR},
    {"dtype", required_argument, NULL, OPT_DTYPE},
    {"redop", required_argument, NULL, OPT_REDOP},
    {"root", required_argument, NULL, OPT_ROOT},
    {"warmup", required_argument, NULL, OPT_WARMUP},
    {"iters", required_argument, NULL, OPT_ITERS},
    {"check", no_argument, NULL, OPT_CHECK},
    {"json", no_argument, NULL, OPT_JSON},
    {"zero-copy", no_argument, NULL, OPT_ZERO_COPY},
    {"offset", required_argument, NULL, OPT_OFFSET},
    {"backend", required_argument, NULL, OPT_BACKEND},
    {"help", no_argument, NULL, 'h'},
    {"version", no_argument, NULL, OPT_VERSION},
    {NULL, 0, NULL, 0},
};

#define OP_CHOICES                                                                             \
  "a comma list of allreduce, allgather, reduce_scatter, broadcast, reduce, alltoall, "         \
  "sendrecv, or all"
#define DTYPE_CHOICES "a comma list of f32, f64, f16, bf16, i8, u8, i32, i64, or all"
#define REDOP_CHOICES "a comma list of sum, prod, min, max, avg, or all"

static int bad(const char *opt, const char *val, const char *want) {
  fprintf(stderr, "parbench: invalid value '%s' for %s: %s\n", val, opt, want);
  return 2;
}

int bench_parse_args(int argc, char **argv, bench_opts *o) {
  memset(o, 0, sizeof *o);
  o->min_bytes = BENCH_DEFAULT_MIN;
  o->max_bytes = BENCH_DEFAULT_MAX;
  o->factor = BENCH_DEFAULT_FACTOR;
  o->warmup = BENCH_DEFAULT_WARMUP;

  opterr = 0; /* we word the messages ourselves */
  optind = 1;
  int c;
  while ((c = getopt_long(argc, argv, ":h", long_opts, NULL)) != -1) {
    const char *name = argv[optind - 1];
    switch (c) {
    case OPT_OP:
      if (parse_list(optarg, add_coll, o) != 0) return bad("--op", optarg, OP_CHOICES);
      break;
    case OPT_DTYPE:
      if (parse_list(optarg, add_dtype, o) != 0) return bad("--dtype", optarg, DTYPE_CHOICES);
      break;
    case OPT_REDOP:
      if (parse_list(optarg, add_redop, o) != 0) return bad("--redop", optarg, REDOP_CHOICES);
      break;
    case OPT_MIN:
      if (bench_parse_size(optarg, &o->min_bytes) != 0 || o->min_bytes == 0)
        return bad("--min", optarg, "a size >= 1 such as 8, 64K, 1M (at most 1T)");
      break;
    case OPT_MAX:
      if (bench_parse_size(optarg, &o->max_bytes) != 0 || o->max_bytes == 0)
        return bad("--max", optarg, "a size >= 1 such as 8, 64K, 1M (at most 1T)");
      break;
    case OPT_FACTOR: {
      int f;
      if (parse_int(optarg, 2, 1 << 20, &f) != 0)
        return bad("--factor", optarg, "an integer >= 2");
      o->factor = (size_t)f;
      break;
    }
    case OPT_ROOT:
      if (parse_int(optarg, 0, INT_MAX, &o->root) != 0)
        return bad("--root", optarg, "a rank >= 0");
      break;
    case OPT_WARMUP:
      if (parse_int(optarg, 0, BENCH_MAX_ITERS, &o->warmup) != 0)
        return bad("--warmup", optarg, "an integer >= 0");
      break;
    case OPT_ITERS:
      if (parse_int(optarg, 0, BENCH_MAX_ITERS, &o->iters) != 0)
        return bad("--iters", optarg, "an integer >= 0 (0 = automatic)");
      break;
    case OPT_CHECK: o->check = 1; break;
    case OPT_JSON: o->json = 1; break;
    case OPT_ZERO_COPY: o->zero_copy = 1; break;
    case OPT_OFFSET:
      if (parse_int(optarg, 0, 4088, &o->offset) != 0 || o->offset % 8 != 0)
        return bad("--offset", optarg, "a multiple of 8 from 0 to 4088 (elements stay aligned)");
      break;
    case OPT_BACKEND:
      if (parse_list(optarg, add_backend, o) != 0)
        return bad("--backend", optarg, "a comma list of auto, shm, mpi");
      break;
    case 'h': bench_usage(stdout); return 1;
    case OPT_VERSION: printf("parbench (par) %s\n", par_version_string()); return 1;
    case ':':
      fprintf(stderr, "parbench: option %s needs a value\n", name);
      fprintf(stderr, "Try 'parbench --help'.\n");
      return 2;
    default:
      fprintf(stderr, "parbench: unknown option '%s'\n", name);
      fprintf(stderr, "Try 'parbench --help'.\n");
      return 2;
    }
  }
  if (optind < argc) {
    fprintf(stderr, "parbench: unexpected argument '%s'\nTry 'parbench --help'.\n",
            argv[optind]);
    return 2;
  }
  if (o->min_bytes > o->max_bytes) {
    fprintf(stderr, "parbench: --min (%zu) is larger than --max (%zu)\n", o->min_bytes,
            o->max_bytes);
    return 2;
  }
  if (o->ncolls == 0) {
    static const bench_coll defaults[] = {BENCH_ALLREDUCE, BENCH_ALLGATHER,
                                          BENCH_REDUCE_SCATTER, BENCH_BROADCAST,
                                          BENCH_ALLTOALL, BENCH_SENDRECV};
    for (size_t i = 0; i < sizeof defaults / sizeof defaults[0]; i++)
      o->colls[o->ncolls++] = defaults[i];
  }
  if (o->ndtypes == 0) o->dtypes[o->ndtypes++] = PAR_F32;
  if (o->nredops == 0) o->redops[o->nredops++] = PAR_SUM;
  return 0;
}
