/*
 * pattern.c -- parbench's oracle: the inputs every rank contributes and the exact results they
 * must give, as nccl-tests does it. Every value is a small integer, so it is exact in every
 * dtype (f16 holds integers to 2048, bf16 to 256, i8 to 127) and the expected bits can be
 * written without any floating-point arithmetic that could round differently from the library:
 *  - sum: values 0..m with m = min(10, 127/n), so a sum over n ranks never exceeds 127;
 *  - prod: values 1 or 2 with at most 6 twos per element, so products are powers of two <= 64;
 *  - min, max: values 0..10;
 *  - avg: one rank gives q+n-1 and the others q-1, so the sum is exactly n*q and the average is
 *    the integer q whichever way the library divides (divide, multiply by 1/n, truncate);
 *  - data movement (allgather, broadcast, alltoall, sendrecv): 0..126, mixing the source rank
 *    and the element index so that a block delivered to the wrong place is caught.
 * The conversions to f16/bf16 are written here for exact integers only, independently of the
 * library's kernels, so that the oracle does not share their bugs.
 */
#include <string.h>

#include "bench.h"

/* ---------------------------------------------------------------------------------------- */
/* Values                                                                                   */
/* ---------------------------------------------------------------------------------------- */

static int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
static int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }

int64_t bench_value(bench_coll c, par_op op, int r, int n, size_t k) {
  uint64_t rr = (uint64_t)r, kk = (uint64_t)k, nn = (uint64_t)n;
  if (!bench_coll_reduces(c)) return (int64_t)((rr * 37 + kk * 13 + kk / 127) % 127);
  switch (op) {
  case PAR_SUM: {
    uint64_t m = (uint64_t)min64(10, 127 / n);
    return (int64_t)(((rr + 1) * (kk % 7 + 1) + kk / 7) % (m + 1));
  }
  case PAR_PROD: {
    /* (r + k) % n takes each value 0..n-1 once over the ranks: exactly `twos` ranks give 2. */
    uint64_t twos = kk % (uint64_t)(min64(n, 6) + 1);
    return (rr + kk) % nn < twos ? 2 : 1;
  }
  case PAR_MIN:
  case PAR_MAX: return (int64_t)(((rr + 1) * (kk % 7 + 1) + kk / 7) % 11);
  case PAR_AVG: {
    int64_t q = 1 + (int64_t)(kk % (uint64_t)max64(1, min64(10, 127 / n)));
    return rr == kk % nn ? q + n - 1 : q - 1;
  }
  default: CHECK(0, "bench_value: reduction op %d out of range", (int)op);
  }
  return 0;
}

int64_t bench_reduced(bench_coll c, par_op op, int n, size_t k) {
  int64_t acc = bench_value(c, op, 0, n, k);
  for (int r = 1; r < n; r++) {
    int64_t v = bench_value(c, op, r, n, k);
    switch (op) {
    case PAR_SUM:
    case PAR_AVG: acc += v; break;
    case PAR_PROD: acc *= v; break;
    case PAR_MIN: acc = min64(acc, v); break;
    case PAR_MAX: acc = max64(acc, v); break;
    default: CHECK(0, "bench_reduced: reduction op %d out of range", (int)op);
    }
  }
  return op == PAR_AVG ? acc / n : acc;
}

/* ---------------------------------------------------------------------------------------- */
/* Exact encodings                                                                          */
/* ---------------------------------------------------------------------------------------- */

/* IEEE binary16 of an integer that it holds exactly. */
static uint16_t int_to_f16(int64_t v) {
  uint16_t sign = v < 0 ? 0x8000 : 0;
  uint64_t a = v < 0 ? (uint64_t)(-v) : (uint64_t)v;
  if (a == 0) return sign;
  int e = 63 - __builtin_clzll(a); /* value = 1.m * 2^e */
  CHECK(e <= 15, "int_to_f16: %lld is out of f16 range", (long long)v);
  CHECK(e <= 10 || (a & ((1ULL << (e - 10)) - 1)) == 0, "int_to_f16: %lld is not exact",
        (long long)v);
  uint64_t mant = e >= 10 ? a >> (e - 10) : a << (10 - e);
  return (uint16_t)(sign | (uint16_t)((e + 15) << 10) | (uint16_t)(mant & 0x3FF));
}

/* bfloat16 of an integer that it holds exactly: the top half of the f32 bits. */
static uint16_t int_to_bf16(int64_t v) {
  float f = (float)v;
  uint32_t bits;
  memcpy(&bits, &f, sizeof bits);
  CHECK((bits & 0xFFFF) == 0 && (int64_t)f == v, "int_to_bf16: %lld is not exact",
        (long long)v);
  return (uint16_t)(bits >> 16);
}

/* Writes v as element i of a dt array. */
static void store(void *buf, size_t i, par_dtype dt, int64_t v) {
  char *p = (char *)buf + i * par_dtype_size(dt);
  switch (dt) {
  case PAR_F32: { float f = (float)v; memcpy(p, &f, sizeof f); break; }
  case PAR_F64: { double d = (double)v; memcpy(p, &d, sizeof d); break; }
  case PAR_F16: { uint16_t h = int_to_f16(v); memcpy(p, &h, sizeof h); break; }
  case PAR_BF16: { uint16_t h = int_to_bf16(v); memcpy(p, &h, sizeof h); break; }
  case PAR_I8: { int8_t x = (int8_t)v; memcpy(p, &x, sizeof x); break; }
  case PAR_U8: { uint8_t x = (uint8_t)v; memcpy(p, &x, sizeof x); break; }
  case PAR_I32: { int32_t x = (int32_t)v; memcpy(p, &x, sizeof x); break; }
  case PAR_I64: memcpy(p, &v, sizeof v); break;
  default: CHECK(0, "store: dtype %d out of range", (int)dt);
  }
}

void bench_fill(void *buf, size_t count, par_dtype dt, bench_coll c, par_op op, int r, int n) {
  for (size_t k = 0; k < count; k++) store(buf, k, dt, bench_value(c, op, r, n, k));
}

/* ---------------------------------------------------------------------------------------- */
/* Verification                                                                             */
/* ---------------------------------------------------------------------------------------- */

/* Reports are capped so that a badly broken op does not flood the terminal. */
static int reports_left = 16;

static void report(const char *what, bench_coll c, par_op op, par_dtype dt, int me,
                   size_t count, size_t i, const void *want, const void *got, size_t elem) {
  if (reports_left <= 0) return;
  reports_left--;
  char w[40] = "", g[40] = "";
  for (size_t b = elem; b-- > 0;) {
    snprintf(w + strlen(w), sizeof w - strlen(w), "%02x", ((const unsigned char *)want)[b]);
    snprintf(g + strlen(g), sizeof g - strlen(g), "%02x", ((const unsigned char *)got)[b]);
  }
  fprintf(stderr,
          "parbench: rank %d: %s %s %s count %zu: %s element %zu: expected 0x%s, got 0x%s\n",
          me, bench_coll_name(c), par_dtype_name(dt),
          bench_coll_reduces(c) ? par_op_name(op) : "-", count, what, i, w, g);
  if (reports_left == 0) fprintf(stderr, "parbench: rank %d: further mismatches not shown\n", me);
}

/* The expected value of element i of a buffer as seen by `who`: this rank's index, except
 * for broadcast, whose output is the root's input, so the root is passed. */
typedef int64_t (*expect_fn)(bench_coll c, par_op op, int who, int n, size_t count, size_t i);

static int64_t expect_output(bench_coll c, par_op op, int who, int n, size_t count, size_t i) {
  int me = who, root = who;
  switch (c) {
  case BENCH_ALLREDUCE:
  case BENCH_REDUCE: return bench_reduced(c, op, n, i);
  case BENCH_REDUCE_SCATTER: return bench_reduced(c, op, n, (size_t)me * count + i);
  case BENCH_ALLGATHER: return bench_value(c, op, (int)(i / count), n, i % count);
  case BENCH_ALLTOALL:
    return bench_value(c, op, (int)(i / count), n, (size_t)me * count + i % count);
  case BENCH_BROADCAST: return bench_value(c, op, root, n, i);
  case BENCH_SENDRECV: return bench_value(c, op, (me + n - 1) % n, n, i);
  default: CHECK(0, "expect_output: op %d out of range", (int)c);
  }
  return 0;
}

static int64_t expect_input(bench_coll c, par_op op, int who, int n, size_t count, size_t i) {
  (void)count;
  return bench_value(c, op, who, n, i);
}

/* Counts the elements of buf[0..nelem) that differ from fn(..., i); reports the first. */

static int64_t compare(const char *what, expect_fn fn, bench_coll c, par_op op, par_dtype dt,
                       int me, int who, int n, size_t count, const void *buf, size_t nelem) {
  size_t elem = par_dtype_size(dt);
  int64_t wrong = 0;
  unsigned char want[8];
  for (size_t i = 0; i < nelem; i++) {
    store(want, 0, dt, fn(c, op, who, n, count, i));
    const unsigned char *got = (const unsigned char *)buf + i * elem;
    if (memcmp(want, got, elem) != 0) {
      if (wrong == 0) report(what, c, op, dt, me, count, i, want, got, elem);
      wrong++;
    }
  }
  return wrong;
}

int64_t bench_verify(bench_coll c, par_op op, par_dtype dt, int me, int n, int root,
                     size_t count, const void *sendbuf, const void *recvbuf, size_t buf_bytes) {
  size_t elem = par_dtype_size(dt);
  int blocked = c == BENCH_ALLGATHER || c == BENCH_ALLTOALL;
  size_t out_elems = blocked ? count * (size_t)n : count;
  size_t in_elems = (c == BENCH_REDUCE_SCATTER || c == BENCH_ALLTOALL) ? count * (size_t)n
                                                                        : count;
  int64_t wrong = 0;

  int has_output = !(c == BENCH_REDUCE && me != root);
  if (has_output) {
    wrong += compare("output", expect_output, c, op, dt, me, bench_coll_rooted(c) ? root : me,
                     n, count, recvbuf, out_elems);
    /* The bytes after the output must still hold the sentinel. */
    size_t end = out_elems * elem;
    size_t guard_end = end + BENCH_GUARD < buf_bytes ? end + BENCH_GUARD : buf_bytes;
    int64_t bad_guard = 0;
    for (size_t b = end; b < guard_end; b++)
      if (((const unsigned char *)recvbuf)[b] != BENCH_SENTINEL) bad_guard++;
    if (bad_guard > 0 && reports_left > 0 && reports_left--)
      fprintf(stderr, "parbench: rank %d: %s %s count %zu: %lld byte(s) written past the "
                      "%zu-byte output\n", me, bench_coll_name(c), par_dtype_name(dt), count,
              (long long)bad_guard, end);
    wrong += bad_guard;
  }
  /* Out-of-place ops must leave their input alone (broadcast has no separate input). */
  if (c != BENCH_BROADCAST)
    wrong += compare("input", expect_input, c, op, dt, me, me, n, count, sendbuf, in_elems);
  return wrong;
}
