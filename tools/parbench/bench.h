/*
 * bench.h -- what the three parts of parbench share: the parsed command line (options.c), the
 * collectives it can measure with their nccl-tests size conventions, and the data patterns whose
 * exact results are known (pattern.c). parbench.c drives the sweep.
 */
#ifndef PARBENCH_BENCH_H
#define PARBENCH_BENCH_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "par.h"

/* Tools may exit: CHECK prints where and why, then ends the process with status 1. */
#define CHECK(cond, ...)                                                                       \
  do {                                                                                         \
    if (!(cond)) {                                                                             \
      fprintf(stderr, "parbench: %s:%d: ", __FILE__, __LINE__);                                \
      fprintf(stderr, __VA_ARGS__);                                                            \
      fputc('\n', stderr);                                                                     \
      exit(1);                                                                                 \
    }                                                                                          \
  } while (0)

/* ---------------------------------------------------------------------------------------- */
/* Collectives measured                                                                     */
/* ---------------------------------------------------------------------------------------- */

typedef enum bench_coll {
  BENCH_ALLREDUCE = 0,
  BENCH_ALLGATHER,
  BENCH_REDUCE_SCATTER,
  BENCH_BROADCAST,
  BENCH_REDUCE,
  BENCH_ALLTOALL,
  BENCH_SENDRECV,
  BENCH_COLL_COUNT
} bench_coll;

/* "allreduce", ...; NULL when out of range. */
const char *bench_coll_name(bench_coll c);
/* 1 for the ops that take a reduction op (allreduce, reduce_scatter, reduce). */
int bench_coll_reduces(bench_coll c);
/* 1 for the ops that take a root (broadcast, reduce). */
int bench_coll_rooted(bench_coll c);

/*
 * nccl-tests' conventions. A sweep size of `bytes` gives total = bytes / elem elements; the
 * count passed to the call is total for allreduce, broadcast, reduce and sendrecv, and
 * total / nranks (per-rank block) for allgather, reduce_scatter and alltoall. The size reported
 * is the larger of the call's send and receive buffers (count or count*nranks elements).
 */
size_t bench_call_count(bench_coll c, size_t bytes, size_t elem, int nranks);
size_t bench_report_bytes(bench_coll c, size_t count, size_t elem, int nranks);
/* busbw = algbw * factor: 2(n-1)/n allreduce; (n-1)/n allgather, reduce_scatter, alltoall;
 * 1 broadcast, reduce, sendrecv. */
double bench_busbw_factor(bench_coll c, int nranks);

/* ---------------------------------------------------------------------------------------- */
/* Options (options.c)                                                                      */
/* ---------------------------------------------------------------------------------------- */

typedef struct bench_opts {
  int colls[BENCH_COLL_COUNT]; /* which ops, in the order given; ncolls of them */
  int ncolls;
  par_dtype dtypes[PAR_DTYPE_COUNT];
  int ndtypes;
  par_op redops[PAR_OP_COUNT];
  int nredops;
  size_t min_bytes, max_bytes;
  size_t factor;
  int warmup;
  int iters; /* 0: automatic */
  int check;
  int json;
  int zero_copy; /* --zero-copy: buffers from par_alloc */
  int offset;    /* --offset: the buffers start this many bytes past a page boundary */
  par_backend backends[PAR_BACKEND_COUNT]; /* --backend: one group of all ranks per backend */
  int nbackends;                           /* 0: the world group */
  int root;
} bench_opts;

/* Defaults, documented in docs/parbench.md and the usage text. */
#define BENCH_DEFAULT_MIN ((size_t)8)
#define BENCH_DEFAULT_MAX ((size_t)32 << 20)
#define BENCH_DEFAULT_FACTOR ((size_t)4)
#define BENCH_DEFAULT_WARMUP 1
/* Automatic iterations aim at this much time per size, with at least BENCH_MIN_ITERS. */
#define BENCH_TARGET_S 0.1
#define BENCH_MIN_ITERS 2
#define BENCH_MAX_ITERS 1000000

/*
 * Parses argv into *o. Returns 0 to run, 1 when the help or the version was printed (exit 0),
 * 2 on a bad command line (a message is on stderr; exit 2). Does not need a world.
 */
int bench_parse_args(int argc, char **argv, bench_opts *o);
/* Parses "64", "8K", "1M", "2G" (binary units) into *out; 0 on success, -1 if malformed. */
int bench_parse_size(const char *s, size_t *out);
void bench_usage(FILE *f);

/* ---------------------------------------------------------------------------------------- */
/* Data patterns and the oracle (pattern.c)                                                 */
/* ---------------------------------------------------------------------------------------- */

/* Byte written over receive buffers before a checked run, so untouched output is caught. */
#define BENCH_SENTINEL 0xA5
/* Bytes past each checked output that must keep the sentinel (catches overruns). */
#define BENCH_GUARD 64

/*
 * The value rank `r` of `n` contributes at element `k` of its send buffer: a small integer,
 * exact in every dtype. For reducing ops it depends on the reduction so that the exact result
 * fits every dtype (i8 included, f16/bf16 exact) with n ranks: see pattern.c.
 */
int64_t bench_value(bench_coll c, par_op op, int r, int n, size_t k);
/* The exact result at element k of a reduction over ranks 0..n-1 of bench_value. */
int64_t bench_reduced(bench_coll c, par_op op, int n, size_t k);
/* Writes `count` elements bench_value(c, op, r, n, k) for k = 0..count-1 into buf. */
void bench_fill(void *buf, size_t count, par_dtype dt, bench_coll c, par_op op, int r, int n);

/*
 * Verifies the result of one checked run on this rank and returns how many elements are
 * wrong: the output region against the exact result, the BENCH_GUARD bytes after it (still
 * the sentinel, where the buffer has room: buf_bytes is the allocation), and the send buffer
 * (unchanged). `me` is this rank's index, `count` the count passed to the call.
 */
int64_t bench_verify(bench_coll c, par_op op, par_dtype dt, int me, int n, int root,
                     size_t count, const void *sendbuf, const void *recvbuf, size_t buf_bytes);

#endif /* PARBENCH_BENCH_H */
