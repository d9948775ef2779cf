/*
 * test_reduce.c -- par__reduce and the f16/bf16 conversions against naive references.
 *
 * The oracle for the kernels is ref_reduce below: one element at a time, sources combined
 * left to right in the plain C arithmetic of the accumulator type (f32 for f16/bf16, rounded
 * once; unsigned arithmetic for integer sum/prod), with NaN-propagating min/max spelled out
 * with isnan. The oracle for the conversions is independent of the library's bit tricks:
 * decoding with ldexp, and encoding by searching the sorted table of f16 values for the
 * nearest one, ties to even. Every kernel test runs on both dispatch paths: the one the CPU
 * gets (AVX2 and F16C on x86-64 where present) and the portable one, forced by a test hook.
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "core/core.h"

/* Test hook defined in src/core/reduce.c: nonzero forces the baseline (non-AVX2) drivers and
 * the portable f16 conversions, so the suite covers both dispatch paths on one machine. */
void par__reduce_force_portable(int on);

/* ---------------------------------------------------------------------------------------- */
/* Helpers                                                                                  */
/* ---------------------------------------------------------------------------------------- */

static uint64_t rng = 0x9e3779b97f4a7c15u;

static uint64_t rnd(void) {
  rng ^= rng << 13;
  rng ^= rng >> 7;
  rng ^= rng << 17;
  return rng;
}

static uint32_t f32_bits(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  return u;
}

static float bits_f32(uint32_t u) {
  float f;
  memcpy(&f, &u, 4);
  return f;
}

static int f16_is_nan(uint16_t h) { return (h & 0x7c00) == 0x7c00 && (h & 0x03ff) != 0; }
static int bf16_is_nan(uint16_t h) { return (h & 0x7f80) == 0x7f80 && (h & 0x007f) != 0; }

static const par_dtype all_dtypes[] = {PAR_F32, PAR_F64, PAR_F16, PAR_BF16,
                                       PAR_I8,  PAR_U8,  PAR_I32, PAR_I64};
static const par_op all_ops[] = {PAR_SUM, PAR_PROD, PAR_MIN, PAR_MAX, PAR_AVG};

/* A random float with a moderate exponent, or now and then a special value. */
static float rand_f32(int allow_nan) {
  static const uint32_t specials[] = {0x00000000, 0x80000000, 0x7f800000, 0xff800000,
                                      0x00000001, 0x807fffff, 0x7f7fffff, 0x7fc00123,
                                      0xffa00001};
  if (rnd() % 16 == 0) {
    uint32_t s = specials[rnd() % (allow_nan ? 9 : 7)];
    return bits_f32(s);
  }
  uint32_t exp = 127 - 20 + (uint32_t)(rnd() % 41);
  return bits_f32((uint32_t)(rnd() & 0x807fffffu) | exp << 23);
}

static double rand_f64(int allow_nan) {
  float f = rand_f32(allow_nan);
  /* Widen and add low mantissa bits so f64 arithmetic has something to round. */
  double d = (double)f;
  if (isfinite(d) && d != 0.0) d *= 1.0 + ldexp((double)(rnd() % 1000000), -40);
  return d;
}

/* Half of the f16/bf16 values near 1 (where sums round), half any bit pattern. */
static uint16_t rand_half(par_dtype dt, int allow_nan) {
  for (;;) {
    uint16_t h;
    if (rnd() % 2)
      h = (uint16_t)((dt == PAR_F16 ? 0x3800 : 0x3f00) + rnd() % 0x0900) | (rnd() % 2) << 15;
    else
      h = (uint16_t)rnd();
    int nan = dt == PAR_F16 ? f16_is_nan(h) : bf16_is_nan(h);
    if (allow_nan || !nan) return h;
  }
}

static void fill(void *buf, size_t count, par_dtype dt, int allow_nan) {
  for (size_t i = 0; i < count; i++) {
    switch (dt) {
    case PAR_F32: ((float *)buf)[i] = rand_f32(allow_nan); break;
    case PAR_F64: ((double *)buf)[i] = rand_f64(allow_nan); break;
    case PAR_F16:
    case PAR_BF16: ((uint16_t *)buf)[i] = rand_half(dt, allow_nan); break;
    case PAR_I8:
    case PAR_U8: ((uint8_t *)buf)[i] = (uint8_t)rnd(); break;
    case PAR_I32: ((uint32_t *)buf)[i] = (uint32_t)rnd(); break;
    case PAR_I64: ((uint64_t *)buf)[i] = rnd(); break;
    default: fail_msg("bad dtype %d", (int)dt);
    }
  }
}

/* ---------------------------------------------------------------------------------------- */
/* Reference reduction                                                                      */
/* ---------------------------------------------------------------------------------------- */

/* min/max as documented: the last NaN operand wins; otherwise ties keep x. */
static double ref_min(double x, double y) { return isnan(y) ? y : isnan(x) ? x : (y < x ? y : x); }
static double ref_max(double x, double y) { return isnan(y) ? y : isnan(x) ? x : (y > x ? y : x); }

static float ref_op_f32(float x, float y, par_op op) {
  switch (op) {
  case PAR_SUM:
  case PAR_AVG: return x + y;
  case PAR_PROD: return x * y;
  case PAR_MIN: return isnan(y) ? y : isnan(x) ? x : (y < x ? y : x);
  case PAR_MAX: return isnan(y) ? y : isnan(x) ? x : (y > x ? y : x);
  default: return NAN;
  }
}

static double ref_op_f64(double x, double y, par_op op) {
  switch (op) {
  case PAR_SUM:
  case PAR_AVG: return x + y;
  case PAR_PROD: return x * y;
  case PAR_MIN: return ref_min(x, y);
  case PAR_MAX: return ref_max(x, y);
  default: return NAN;
  }
}

static int int_bits(par_dtype dt) {
  return dt == PAR_I8 || dt == PAR_U8 ? 8 : dt == PAR_I32 ? 32 : 64;
}

/* Element i of an integer buffer as a mathematical value. */
static int64_t int_load(const void *p, size_t i, par_dtype dt) {
  switch (dt) {
  case PAR_I8: return ((const int8_t *)p)[i];
  case PAR_U8: return ((const uint8_t *)p)[i];
  case PAR_I32: return ((const int32_t *)p)[i];
  default: return ((const int64_t *)p)[i];
  }
}

/* The value the low `bits` bits of u denote in dt (two's complement for signed types). */
static int64_t int_wrap(uint64_t u, par_dtype dt) {
  int bits = int_bits(dt);
  if (bits < 64) u &= (UINT64_C(1) << bits) - 1;
  if (dt == PAR_U8) return (int64_t)u;
  if (bits < 64 && (u >> (bits - 1)) & 1) return (int64_t)u - ((int64_t)1 << bits);
  int64_t s;
  memcpy(&s, &u, 8);
  return s;
}

static void int_store(void *p, size_t i, par_dtype dt, int64_t v) {
  switch (dt) {
  case PAR_I8: ((int8_t *)p)[i] = (int8_t)v; break;
  case PAR_U8: ((uint8_t *)p)[i] = (uint8_t)v; break;
  case PAR_I32: ((int32_t *)p)[i] = (int32_t)v; break;
  default: ((int64_t *)p)[i] = v; break;
  }
}

static void ref_reduce(void *dst, void *const *src, int nsrc, size_t count, par_dtype dt,
                       par_op op, int divisor) {
  for (size_t i = 0; i < count; i++) {
    if (dt == PAR_F32 || dt == PAR_F16 || dt == PAR_BF16) {
      float acc = 0;
      for (int k = 0; k < nsrc; k++) {
        float v = dt == PAR_F32   ? ((const float *)src[k])[i]
                  : dt == PAR_F16 ? par__f16_to_f32(((const uint16_t *)src[k])[i])
                                  : par__bf16_to_f32(((const uint16_t *)src[k])[i]);
        acc = k == 0 ? v : ref_op_f32(acc, v, op);
      }
      if (op == PAR_AVG) acc = acc / (float)divisor;
      if (dt == PAR_F32) ((float *)dst)[i] = acc;
      else if (dt == PAR_F16) ((uint16_t *)dst)[i] = par__f32_to_f16(acc);
      else ((uint16_t *)dst)[i] = par__f32_to_bf16(acc);
    } else if (dt == PAR_F64) {
      double acc = ((const double *)src[0])[i];
      for (int k = 1; k < nsrc; k++) acc = ref_op_f64(acc, ((const double *)src[k])[i], op);
      if (op == PAR_AVG) acc = acc / (double)divisor;
      ((double *)dst)[i] = acc;
    } else {
      /* Sum and prod in uint64 arithmetic, wrapped to the width afterwards: modular
       * arithmetic commutes with the truncation. */
      int64_t acc = int_load(src[0], i, dt);
      for (int k = 1; k < nsrc; k++) {
        int64_t v = int_load(src[k], i, dt);
        switch (op) {
        case PAR_SUM:
        case PAR_AVG: acc = int_wrap((uint64_t)acc + (uint64_t)v, dt); break;
        case PAR_PROD: acc = int_wrap((uint64_t)acc * (uint64_t)v, dt); break;
        case PAR_MIN: acc = v < acc ? v : acc; break;
        case PAR_MAX: acc = v > acc ? v : acc; break;
        default: break;
        }
      }
      if (op == PAR_AVG) acc = acc / divisor; /* C division truncates toward zero */
      int_store(dst, i, dt, acc);
    }
  }
}

/* First index where a and b differ, or -1. A NaN matches any NaN unless nan_bits is set
 * (payloads can differ with the order the hardware sees two NaN operands in). */
static long first_diff(const void *a, const void *b, size_t count, par_dtype dt, int nan_bits) {
  size_t es = par_dtype_size(dt);
  for (size_t i = 0; i < count; i++) {
    const char *pa = (const char *)a + i * es, *pb = (const char *)b + i * es;
    if (memcmp(pa, pb, es) == 0) continue;
    if (!nan_bits) {
      if (dt == PAR_F32 && isnan(*(const float *)pa) && isnan(*(const float *)pb)) continue;
      if (dt == PAR_F64 && isnan(*(const double *)pa) && isnan(*(const double *)pb)) continue;
      if (dt == PAR_F16 && f16_is_nan(*(const uint16_t *)pa) && f16_is_nan(*(const uint16_t *)pb))
        continue;
      if (dt == PAR_BF16 && bf16_is_nan(*(const uint16_t *)pa) &&
          bf16_is_nan(*(const uint16_t *)pb))
        continue;
    }
    return (long)i;
  }
  return -1;
}

static void hexdump_elem(char *out, size_t cap, const void *p, size_t i, par_dtype dt) {
  size_t es = par_dtype_size(dt);
  const unsigned char *b = (const unsigned char *)p + i * es;
  size_t len = 0;
  for (size_t j = es; j-- > 0 && len + 3 < cap;) len += (size_t)snprintf(out + len, cap - len, "%02x", b[j]);
}

static void expect_same(const void *got, const void *want, size_t count, par_dtype dt, par_op op,
                        int nsrc, const char *what) {
  long d = first_diff(got, want, count, dt, 0);
  if (d >= 0) {
    char g[20], w[20];
    hexdump_elem(g, sizeof g, got, (size_t)d, dt);
    hexdump_elem(w, sizeof w, want, (size_t)d, dt);
    fail_msg("%s: %s %s nsrc=%d count=%zu: element %ld is 0x%s, expected 0x%s", what,
             par_dtype_name(dt), par_op_name(op), nsrc, count, d, g, w);
  }
}

/* Buffers for up to 8 sources plus results. */
typedef struct bufs {
  void *src[8];
  void *out, *ref;
} bufs;

static void bufs_alloc(bufs *b, size_t count, par_dtype dt) {
  size_t bytes = count * par_dtype_size(dt) + 16;
  for (int k = 0; k < 8; k++) assert_non_null(b->src[k] = malloc(bytes));
  assert_non_null(b->out = malloc(bytes));
  assert_non_null(b->ref = malloc(bytes));
}

static void bufs_free(bufs *b) {
  for (int k = 0; k < 8; k++) free(b->src[k]);
  free(b->out);
  free(b->ref);
}

/* ---------------------------------------------------------------------------------------- */
/* Kernels against the reference                                                            */
/* ---------------------------------------------------------------------------------------- */

static const int nsrcs[] = {1, 2, 3, 5, 8};
static const size_t counts[] = {0, 1, 7, 1000, 4099};

static void check_matrix(const par_dtype *dts, size_t ndt, const char *what) {
  for (size_t d = 0; d < ndt; d++) {
    par_dtype dt = dts[d];
    for (size_t o = 0; o < 5; o++) {
      for (size_t s = 0; s < 5; s++) {
        for (size_t c = 0; c < 5; c++) {
          int nsrc = nsrcs[s];
          size_t count = counts[c];
          int divisor = nsrc == 1 ? 3 : nsrc;
          bufs b;
          bufs_alloc(&b, count, dt);
          for (int k = 0; k < nsrc; k++) fill(b.src[k], count, dt, 1);
          ref_reduce(b.ref, b.src, nsrc, count, dt, all_ops[o], divisor);
          par__reduce(b.out, (const void *const *)b.src, nsrc, count, dt, all_ops[o], divisor);
          expect_same(b.out, b.ref, count, dt, all_ops[o], nsrc, what);
          bufs_free(&b);
        }
      }
    }
  }
}

static void test_matrix(void **state) {
  (void)state;
  check_matrix(all_dtypes, 8, "matrix");
}

static void test_matrix_portable(void **state) {
  (void)state;
  par__reduce_force_portable(1);
  check_matrix(all_dtypes, 8, "matrix (portable)");
  par__reduce_force_portable(0);
}

static void check_in_place(const char *what) {
  const size_t count = 4099;
  for (size_t d = 0; d < 8; d++) {
    par_dtype dt = all_dtypes[d];
    size_t bytes = count * par_dtype_size(dt);
    for (size_t o = 0; o < 5; o++) {
      for (size_t s = 0; s < 5; s++) {
        int nsrc = nsrcs[s];
        bufs b;
        bufs_alloc(&b, count, dt);
        for (int k = 0; k < nsrc; k++) fill(b.src[k], count, dt, 1);
        ref_reduce(b.ref, b.src, nsrc, count, dt, all_ops[o], nsrc);
        /* dst aliases src[0]: the library must read each element before writing it. */
        memcpy(b.out, b.src[0], bytes);
        const void *srcs[8];
        for (int k = 0; k < nsrc; k++) srcs[k] = b.src[k];
        srcs[0] = b.out;
        par__reduce(b.out, srcs, nsrc, count, dt, all_ops[o], nsrc);
        expect_same(b.out, b.ref, count, dt, all_ops[o], nsrc, what);
        bufs_free(&b);
      }
    }
  }
}

static void test_in_place(void **state) {
  (void)state;
  check_in_place("in place");
  par__reduce_force_portable(1);
  check_in_place("in place (portable)");
  par__reduce_force_portable(0);
}

/*
 * par__reduce_to: every destination gets the reference's bits, nothing past its end is
 * written, with ordinary and non-temporal stores, at destinations 8 bytes off alignment, and
 * with the first destination being the first source (in place).
 */
static void check_reduce_to(const char *what) {
  enum { NDST = 3, GUARD = 64 };
  for (size_t d = 0; d < 8; d++) {
    par_dtype dt = all_dtypes[d];
    size_t es = par_dtype_size(dt);
    for (size_t o = 0; o < 5; o++) {
      for (size_t s = 0; s < 5; s++) {
        for (size_t c = 0; c < 5; c++) {
          for (int mode = 0; mode < 4; mode++) { /* bit 0: stream; bit 1: in place */
            int nsrc = nsrcs[s], stream = mode & 1, in_place = mode >> 1;
            size_t count = counts[c], bytes = count * es;
            bufs b;
            bufs_alloc(&b, count, dt);
            for (int k = 0; k < nsrc; k++) fill(b.src[k], count, dt, 1);
            ref_reduce(b.ref, b.src, nsrc, count, dt, all_ops[o], nsrc);
            unsigned char *mem[NDST];
            void *dst[NDST];
            const void *srcs[8];
            for (int k = 0; k < nsrc; k++) srcs[k] = b.src[k];
            for (int k = 0; k < NDST; k++) {
              assert_non_null(mem[k] = malloc(8 * k + bytes + GUARD));
              memset(mem[k], 0xa5, 8 * k + bytes + GUARD);
              dst[k] = mem[k] + 8 * k;
            }
            if (in_place) {
              memcpy(dst[0], b.src[0], bytes);
              srcs[0] = dst[0];
            }
            par__reduce_to(dst, NDST, srcs, nsrc, count, dt, all_ops[o], nsrc, stream);
            par__copy_fence();
            for (int k = 0; k < NDST; k++) {
              expect_same(dst[k], b.ref, count, dt, all_ops[o], nsrc, what);
              for (size_t i = 0; i < 8 * (size_t)k; i++) assert_int_equal(mem[k][i], 0xa5);
              for (size_t i = 0; i < GUARD; i++)
                assert_int_equal(mem[k][8 * k + bytes + i], 0xa5);
              free(mem[k]);
            }
            bufs_free(&b);
          }
        }
      }
    }
  }
}

static void test_reduce_to(void **state) {
  (void)state;
  check_reduce_to("reduce_to");
  par__reduce_force_portable(1);
  check_reduce_to("reduce_to (portable)");
  par__reduce_force_portable(0);
}

/* One call over [0, count) and calls over pieces split at odd points give the same bits. */
static void check_chunking(par_dtype dt, const char *what) {
  static const size_t cuts[] = {0, 1, 4, 7, 518, 1023, 1024, 1025, 3001, 4097, 8191, 10007};
  const size_t count = 10007, es = par_dtype_size(dt);
  for (size_t o = 0; o < 5; o++) {
    for (int nsrc = 2; nsrc <= 8; nsrc += 3) {
      bufs b;
      bufs_alloc(&b, count, dt);
      /* NaN-free inputs: without input NaNs every result bit is defined. */
      for (int k = 0; k < nsrc; k++) fill(b.src[k], count, dt, 0);
      par__reduce(b.ref, (const void *const *)b.src, nsrc, count, dt, all_ops[o], nsrc);
      memset(b.out, 0xa5, count * es);
      for (size_t c = 0; c + 1 < sizeof cuts / sizeof cuts[0]; c++) {
        const void *piece[8];
        for (int k = 0; k < nsrc; k++) piece[k] = (const char *)b.src[k] + cuts[c] * es;
        par__reduce((char *)b.out + cuts[c] * es, piece, nsrc, cuts[c + 1] - cuts[c], dt,
                    all_ops[o], nsrc);
      }
      long d = first_diff(b.out, b.ref, count, dt, 1);
      if (d >= 0)
        fail_msg("%s: %s %s nsrc=%d: chunked result differs at element %ld", what,
                 par_dtype_name(dt), par_op_name(all_ops[o]), nsrc, d);
      bufs_free(&b);
    }
  }
}

static void test_chunking_invariance(void **state) {
  (void)state;
  for (size_t d = 0; d < 8; d++) check_chunking(all_dtypes[d], "chunking");
  par__reduce_force_portable(1);
  for (size_t d = 0; d < 8; d++) check_chunking(all_dtypes[d], "chunking (portable)");
  par__reduce_force_portable(0);
}

/* ---------------------------------------------------------------------------------------- */
/* Hand-picked cases                                                                        */
/* ---------------------------------------------------------------------------------------- */

static void test_integer_wraparound(void **state) {
  (void)state;
  int32_t a32[3] = {INT32_MAX, INT32_MIN, 65536}, b32[3] = {1, -1, 65536}, o32[3];
  const void *s32[2] = {a32, b32};
  par__reduce(o32, s32, 2, 1, PAR_I32, PAR_SUM, 1);
  assert_int_equal(o32[0], INT32_MIN);
  par__reduce(o32, s32, 2, 3, PAR_I32, PAR_SUM, 1);
  assert_int_equal(o32[1], INT32_MAX);
  par__reduce(o32, s32, 2, 3, PAR_I32, PAR_PROD, 1);
  assert_int_equal(o32[1], INT32_MIN); /* INT32_MIN * -1 wraps to itself */
  assert_int_equal(o32[2], 0);         /* 2^16 * 2^16 = 2^32 wraps to 0 */

  int8_t a8[2] = {127, -128}, b8[2] = {1, -1}, o8[2];
  const void *s8[2] = {a8, b8};
  par__reduce(o8, s8, 2, 2, PAR_I8, PAR_SUM, 1);
  assert_int_equal(o8[0], -128);
  assert_int_equal(o8[1], 127);
  par__reduce(o8, s8, 2, 2, PAR_I8, PAR_PROD, 1);
  assert_int_equal(o8[1], -128);

  uint8_t au[2] = {255, 16}, bu[2] = {1, 16}, ou[2];
  const void *su[2] = {au, bu};
  par__reduce(ou, su, 2, 2, PAR_U8, PAR_SUM, 1);
  assert_int_equal(ou[0], 0);
  par__reduce(ou, su, 2, 2, PAR_U8, PAR_PROD, 1);
  assert_int_equal(ou[1], 0);

  int64_t a64[1] = {INT64_MAX}, b64[1] = {1}, o64[1];
  const void *s64[2] = {a64, b64};
  par__reduce(o64, s64, 2, 1, PAR_I64, PAR_SUM, 1);
  assert_true(o64[0] == INT64_MIN);
}

static void test_min_max_signedness(void **state) {
  (void)state;
  /* 200 as u8 is -56 as i8: the comparison must follow the type. */
  uint8_t u[2] = {200, 100}, v[2] = {100, 200}, ou[2];
  const void *su[2] = {u, v};
  par__reduce(ou, su, 2, 2, PAR_U8, PAR_MAX, 1);
  assert_int_equal(ou[0], 200);
  assert_int_equal(ou[1], 200);
  int8_t i[2] = {-56, 100}, j[2] = {100, -56}, oi[2];
  const void *si[2] = {i, j};
  par__reduce(oi, si, 2, 2, PAR_I8, PAR_MAX, 1);
  assert_int_equal(oi[0], 100);
  assert_int_equal(oi[1], 100);
  par__reduce(oi, si, 2, 2, PAR_I8, PAR_MIN, 1);
  assert_int_equal(oi[0], -56);
  int64_t p[1] = {INT64_MIN}, q[1] = {INT64_MAX}, o[1];
  const void *sp[2] = {p, q};
  par__reduce(o, sp, 2, 1, PAR_I64, PAR_MIN, 1);
  assert_true(o[0] == INT64_MIN);
}

static void test_avg_truncates(void **state) {
  (void)state;
  int32_t a[4] = {-7, 7, -9, 2147483647}, b[4] = {0, 0, -1, 1}, o[4];
  const void *s[2] = {a, b};
  par__reduce(o, s, 2, 4, PAR_I32, PAR_AVG, 2);
  assert_int_equal(o[0], -3); /* -3.5 truncates toward zero, not down to -4 */
  assert_int_equal(o[1], 3);
  assert_int_equal(o[2], -5);
  assert_int_equal(o[3], INT32_MIN / 2); /* the sum wraps first, then divides */

  int8_t c[3] = {-5, 100, -128}, d[3] = {0, 100, 0}, e[3] = {0, 0, 0}, oc[3];
  const void *sc[3] = {c, d, e};
  par__reduce(oc, sc, 3, 3, PAR_I8, PAR_AVG, 3);
  assert_int_equal(oc[0], -1);  /* -5/3 = -1.67 -> -1 */
  assert_int_equal(oc[1], -18); /* 100+100 wraps to -56; -56/3 = -18.67 -> -18 */
  assert_int_equal(oc[2], -42); /* -128/3 = -42.67 -> -42 */

  uint8_t u[1] = {255}, w[1] = {254}, ou[1];
  const void *su[2] = {u, w};
  par__reduce(ou, su, 2, 1, PAR_U8, PAR_AVG, 2);
  assert_int_equal(ou[0], 126); /* 509 wraps to 253, /2 = 126 */

  int64_t x[2] = {-10, INT64_MIN}, y[2] = {0, 0}, ox[2];
  const void *sx[2] = {x, y};
  par__reduce(ox, sx, 2, 2, PAR_I64, PAR_AVG, 3);
  assert_true(ox[0] == -3);
  assert_true(ox[1] == INT64_MIN / 3);

  float f[1] = {1.0f}, g[1] = {2.0f}, of[1];
  const void *sf[2] = {f, g};
  par__reduce(of, sf, 2, 1, PAR_F32, PAR_AVG, 2);
  assert_true(of[0] == 1.5f);
}

static void test_min_max_nan_and_zero(void **state) {
  (void)state;
  const float nan1 = bits_f32(0x7fc00001), nan2 = bits_f32(0x7fc00002);
  float a[5] = {1.0f, nan1, nan1, 0.0f, -0.0f}, b[5] = {nan2, 2.0f, nan2, -0.0f, 0.0f};
  float c[5] = {3.0f, 0.5f, 1.0f, 0.0f, 0.0f}, o[5];
  const void *s[3] = {a, b, c};
  for (int op = PAR_MIN; op <= PAR_MAX; op++) {
    par__reduce(o, s, 3, 5, PAR_F32, (par_op)op, 1);
    assert_int_equal(f32_bits(o[0]), 0x7fc00002); /* NaN in the middle propagates */
    assert_int_equal(f32_bits(o[1]), 0x7fc00001); /* a NaN first survives later numbers */
    assert_int_equal(f32_bits(o[2]), 0x7fc00002); /* two NaNs: the last one */
  }
  /* Ties keep the earlier operand: the sign of zero follows source order. */
  const void *s2[2] = {a, b};
  par__reduce(o, s2, 2, 5, PAR_F32, PAR_MIN, 1);
  assert_int_equal(f32_bits(o[3]), 0x00000000);
  assert_int_equal(f32_bits(o[4]), 0x80000000);
  par__reduce(o, s2, 2, 5, PAR_F32, PAR_MAX, 1);
  assert_int_equal(f32_bits(o[3]), 0x00000000);
  assert_int_equal(f32_bits(o[4]), 0x80000000);
  /* f16 NaN stays NaN through a reduction. */
  uint16_t h[2] = {0x7e01, 0x3c00}, k[2] = {0x3c00, 0xfc00}, oh[2];
  const void *sh[2] = {h, k};
  par__reduce(oh, sh, 2, 2, PAR_F16, PAR_MAX, 1);
  assert_int_equal(oh[0], 0x7e01);
  assert_int_equal(oh[1], 0x3c00);
}

/* ---------------------------------------------------------------------------------------- */
/* Conversions                                                                              */
/* ---------------------------------------------------------------------------------------- */

/* Value of a finite f16, decoded from its fields. */
static double f16_value(uint16_t h) {
  int e = (h >> 10) & 31, m = h & 1023;
  double v = e == 0 ? ldexp(m, -24) : ldexp(1024 + m, e - 25);
  return (h & 0x8000) ? -v : v;
}

/* Nearest f16 to f, ties to even, by search over the positive finite f16 values. */
static uint16_t ref_f32_to_f16(float f) {
  if (isnan(f)) return 0x7e00;
  uint16_t sign = signbit(f) ? 0x8000 : 0;
  double a = fabs((double)f);
  if (a >= 65520.0) return sign | 0x7c00; /* halfway between 65504 and 2^16, and above */
  uint16_t lo = 0, hi = 0x7bff;           /* largest h with value <= a */
  while (lo < hi) {
    uint16_t mid = (uint16_t)((lo + hi + 1) / 2);
    if (f16_value(mid) <= a) lo = mid;
    else hi = (uint16_t)(mid - 1);
  }
  if (lo == 0x7bff) return sign | lo;
  double twice = 2 * a, sum = f16_value(lo) + f16_value((uint16_t)(lo + 1));
  uint16_t r = twice < sum ? lo : twice > sum ? (uint16_t)(lo + 1) : (lo & 1) ? lo + 1 : lo;
  return sign | r;
}

static void test_f16_all_patterns(void **state) {
  (void)state;
  for (uint32_t h = 0; h < 65536; h++) {
    float f = par__f16_to_f32((uint16_t)h);
    uint16_t back = par__f32_to_f16(f);
    if (f16_is_nan((uint16_t)h)) {
      assert_true(isnan(f));
      assert_true(f16_is_nan(back));
      assert_int_equal(back & 0x8000, h & 0x8000);
    } else if ((h & 0x7fff) == 0x7c00) {
      assert_true(isinf(f));
      assert_int_equal(back, h);
    } else {
      float want = (float)f16_value((uint16_t)h);
      if (f32_bits(f) != f32_bits(want))
        fail_msg("f16 0x%04x widened to 0x%08x, expected 0x%08x", h, f32_bits(f), f32_bits(want));
      assert_int_equal(back, h);
    }
  }
}

static void test_bf16_all_patterns(void **state) {
  (void)state;
  for (uint32_t h = 0; h < 65536; h++) {
    float f = par__bf16_to_f32((uint16_t)h);
    uint16_t back = par__f32_to_bf16(f);
    if (bf16_is_nan((uint16_t)h)) {
      assert_true(isnan(f));
      assert_true(bf16_is_nan(back));
      assert_int_equal(back & 0x8000, h & 0x8000);
    } else {
      int e = (h >> 7) & 255, m = h & 127;
      double v = e == 255 ? INFINITY : e == 0 ? ldexp(m, -133) : ldexp(128 + m, e - 134);
      float want = (float)((h & 0x8000) ? -v : v);
      assert_int_equal(f32_bits(f), f32_bits(want));
      assert_int_equal(back, h);
    }
  }
}

static void test_f16_rounding(void **state) {
  (void)state;
  struct {
    float in;
    uint16_t out;
  } cases[] = {
      {1.0f, 0x3c00},
      {1.0f + 0x1p-11f, 0x3c00},            /* halfway 1 .. 1+2^-10: to even (down) */
      {1.0f + 3 * 0x1p-11f, 0x3c02},        /* halfway 0x3c01 .. 0x3c02: to even (up) */
      {1.0f + 0x1p-11f + 0x1p-20f, 0x3c01}, /* just above halfway */
      {65504.0f, 0x7bff},
      {65519.996f, 0x7bff},
      {65520.0f, 0x7c00}, /* halfway to 2^16 rounds to even = infinity */
      {0x1p-24f, 0x0001},
      {0x1p-25f, 0x0000},                    /* halfway 0 .. 2^-24: to even (zero) */
      {0x1.000002p-25f, 0x0001},             /* just above */
      {3 * 0x1p-25f, 0x0002},                /* halfway 1 .. 2: to even */
      {0x1p-14f - 0x1p-25f, 0x0400},         /* halfway largest subnormal .. smallest normal */
      {0x1p-14f, 0x0400},
      {-0.0f, 0x8000},
      {1e-10f, 0x0000},
      {-1e-10f, 0x8000},
      {INFINITY, 0x7c00},
      {-INFINITY, 0xfc00},
      {-2.5f, 0xc100},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    uint16_t got = par__f32_to_f16(cases[i].in);
    if (got != cases[i].out)
      fail_msg("f32 %a -> f16 0x%04x, expected 0x%04x", (double)cases[i].in, got, cases[i].out);
  }
  assert_true(f16_is_nan(par__f32_to_f16(NAN)));
  assert_true(f16_is_nan(par__f32_to_f16(bits_f32(0x7f800001)))); /* sNaN, low payload */
  assert_true(f16_is_nan(par__f32_to_f16(bits_f32(0xff800001))));

  /* Every midpoint between adjacent f16 values, and its f32 neighbours. */
  for (uint16_t h = 0; h < 0x7bff + 1; h++) {
    float mid = (float)((f16_value(h) + (h == 0x7bff ? 65536.0 : f16_value(h + 1))) / 2);
    uint16_t even = (h & 1) ? (uint16_t)(h + 1) : h;
    assert_int_equal(par__f32_to_f16(mid), even);
    assert_int_equal(par__f32_to_f16(-mid), even | 0x8000);
    assert_int_equal(par__f32_to_f16(nextafterf(mid, 0.0f)), h);
    assert_int_equal(par__f32_to_f16(nextafterf(mid, INFINITY)), h + 1);
  }
  /* A spread of all f32 patterns against the search-based reference. */
  for (uint64_t b = 0; b < (UINT64_C(1) << 32); b += 4099) {
    float f = bits_f32((uint32_t)b);
    uint16_t got = par__f32_to_f16(f), want = ref_f32_to_f16(f);
    if (isnan(f)) assert_true(f16_is_nan(got));
    else if (got != want) fail_msg("f32 0x%08x -> f16 0x%04x, expected 0x%04x", (uint32_t)b, got, want);
  }
}

static void test_bf16_rounding(void **state) {
  (void)state;
  assert_int_equal(par__f32_to_bf16(1.0f), 0x3f80);
  assert_int_equal(par__f32_to_bf16(1.0f + 0x1p-8f), 0x3f80);     /* halfway: to even */
  assert_int_equal(par__f32_to_bf16(1.0f + 3 * 0x1p-8f), 0x3f82); /* halfway: to even */
  assert_int_equal(par__f32_to_bf16(bits_f32(0x7f7fffff)), 0x7f80); /* FLT_MAX: infinity */
  assert_int_equal(par__f32_to_bf16(bits_f32(0x00000001)), 0x0000); /* tiny subnormal */
  assert_int_equal(par__f32_to_bf16(bits_f32(0x00008000)), 0x0000); /* halfway: to even */
  assert_int_equal(par__f32_to_bf16(bits_f32(0x00018000)), 0x0002);
  assert_int_equal(par__f32_to_bf16(-INFINITY), 0xff80);
  /* NaNs whose payload sits below the kept bits must not truncate to infinity. */
  uint16_t n = par__f32_to_bf16(bits_f32(0x7f800001));
  assert_true(bf16_is_nan(n));
  assert_int_equal(n & 0x0040, 0x0040); /* quiet */
  assert_true(bf16_is_nan(par__f32_to_bf16(bits_f32(0xffc00000))));
  /* Every midpoint (low half exactly 0x8000), and its neighbours, for finite values. */
  for (uint32_t hi = 0; hi < 0x7f80; hi++) {
    float mid = bits_f32(hi << 16 | 0x8000);
    uint16_t even = (hi & 1) ? (uint16_t)(hi + 1) : (uint16_t)hi;
    assert_int_equal(par__f32_to_bf16(mid), even);
    assert_int_equal(par__f32_to_bf16(bits_f32(hi << 16 | 0x7fff)), hi);
    assert_int_equal(par__f32_to_bf16(bits_f32(hi << 16 | 0x8001)), hi + 1);
    assert_int_equal(par__f32_to_bf16(-mid), even | 0x8000);
  }
}

/* The kernels' conversions (F16C or portable, fused or blocked) agree with the scalar ones
 * for every f16/bf16 pattern, widening and narrowing. */
static void check_kernel_conversions(const char *what) {
  uint16_t *in, *out;
  assert_non_null(in = malloc(65536 * 2));
  assert_non_null(out = malloc(65536 * 2));
  for (uint32_t h = 0; h < 65536; h++) in[h] = (uint16_t)h;
  const void *s[1] = {in};
  for (int dt = PAR_F16; dt <= PAR_BF16; dt++) {
    for (int divisor = 1; divisor <= 3; divisor += 2) {
      /* divisor 3 makes every narrowing round (and reach subnormal results). */
      par__reduce(out, s, 1, 65536, (par_dtype)dt, PAR_AVG, divisor);
      for (uint32_t h = 0; h < 65536; h++) {
        float w = dt == PAR_F16 ? par__f16_to_f32((uint16_t)h) : par__bf16_to_f32((uint16_t)h);
        /* volatile: the division must happen (x / 1 quiets a signalling NaN; folded, not) */
        volatile float fd = (float)divisor;
        w = w / fd;
        uint16_t want = dt == PAR_F16 ? par__f32_to_f16(w) : par__f32_to_bf16(w);
        if (out[h] != want)
          fail_msg("%s: %s 0x%04x / %d gave 0x%04x, expected 0x%04x", what,
                   par_dtype_name((par_dtype)dt), h, divisor, out[h], want);
      }
    }
  }
  free(in);
  free(out);
}

static void test_kernel_conversions(void **state) {
  (void)state;
  check_kernel_conversions("default path");
  par__reduce_force_portable(1);
  check_kernel_conversions("portable");
  par__reduce_force_portable(0);
}

/* par__copy_out, par__copy_stream and par__copy_big (which times the other two on its first
 * pieces, then keeps one): every length up to a few vector blocks and some large ones, at
 * every misalignment of source and destination, leaving the bytes around the destination
 * alone. */
typedef void (*copy_fn)(void *dst, const void *src, size_t n);

static void check_copy(const char *path, copy_fn copy) {
  enum { MAX = 4096 + 300, PAD = 64 };
  unsigned char *src = malloc(MAX + 64), *dst = malloc(MAX + 64 + 2 * PAD);
  assert_non_null(src);
  assert_non_null(dst);
  for (size_t i = 0; i < MAX + 64; i++) src[i] = (unsigned char)rnd();
  static const size_t big[] = {1000, 4096, 4096 + 127, 4096 + 300};
  for (size_t len = 0; len < 300 + sizeof big / sizeof big[0]; len++) {
    size_t n = len < 300 ? len : big[len - 300];
    for (size_t so = 0; so < 64; so += 7)
      for (size_t doff = 0; doff < 64; doff += 5) {
        memset(dst, 0xA5, MAX + 64 + 2 * PAD);
        copy(dst + PAD + doff, src + so, n);
        if (memcmp(dst + PAD + doff, src + so, n) != 0)
          fail_msg("%s: copy of %zu bytes (src +%zu, dst +%zu) differs", path, n, so, doff);
        for (size_t i = 0; i < MAX + 64 + 2 * PAD; i++)
          if ((i < PAD + doff || i >= PAD + doff + n) && dst[i] != 0xA5)
            fail_msg("%s: copy of %zu bytes wrote byte %zd outside its destination",
                     path, n, (ptrdiff_t)i - (ptrdiff_t)(PAD + doff));
      }
  }
  free(src);
  free(dst);
}

/* par__copy picks the store loop where the destination lies just past the source modulo a
 * page: those positions need one allocation holding both. */
static void test_copy_page_offsets(void **state) {
  (void)state;
  enum { R = 73728 }; /* the largest length, rounded up to pages */
  static const size_t lens[] = {1, 1023, 1024, 4096 + 17, 70000};
  static const size_t offs[] = {0, 1, 8, 16, 40, 63, 64, 100, 4095};
  unsigned char *buf = aligned_alloc(4096, 2 * R + 8192);
  assert_non_null(buf);
  unsigned char *src = buf, *end = buf + 2 * R + 8192;
  for (size_t i = 0; i < R; i++) src[i] = (unsigned char)rnd();
  for (size_t a = 0; a < sizeof offs / sizeof offs[0]; a++)
    for (size_t l = 0; l < sizeof lens / sizeof lens[0]; l++) {
      unsigned char *dst = buf + R + 4096 + offs[a];
      memset(buf + R, 0xA5, (size_t)(end - (buf + R)));
      par__copy(dst, src, lens[l]);
      if (memcmp(dst, src, lens[l]) != 0)
        fail_msg("par__copy: %zu bytes at page offset %zu differ", lens[l], offs[a]);
      for (unsigned char *q = buf + R; q < end; q++)
        if ((q < dst || q >= dst + lens[l]) && *q != 0xA5)
          fail_msg("par__copy: %zu bytes at page offset %zu wrote outside the destination",
                   lens[l], offs[a]);
    }
  free(buf);
}

static void test_copy_out(void **state) {
  (void)state;
  check_copy("par__copy", par__copy);
  check_copy("par__copy_out, default path", par__copy_out);
  check_copy("par__copy_stream", par__copy_stream);
  check_copy("par__copy_big", par__copy_big); /* both kernels while timing, then the choice */
  par__reduce_force_portable(1);
  check_copy("par__copy_out, portable", par__copy_out);
  par__reduce_force_portable(0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_copy_out),
      cmocka_unit_test(test_copy_page_offsets),
      cmocka_unit_test(test_matrix),
      cmocka_unit_test(test_matrix_portable),
      cmocka_unit_test(test_in_place),
      cmocka_unit_test(test_reduce_to),
      cmocka_unit_test(test_chunking_invariance),
      cmocka_unit_test(test_integer_wraparound),
      cmocka_unit_test(test_min_max_signedness),
      cmocka_unit_test(test_avg_truncates),
      cmocka_unit_test(test_min_max_nan_and_zero),
      cmocka_unit_test(test_f16_all_patterns),
      cmocka_unit_test(test_bf16_all_patterns),
      cmocka_unit_test(test_f16_rounding),
      cmocka_unit_test(test_bf16_rounding),
      cmocka_unit_test(test_kernel_conversions),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
