/*
 * reduce.c -- the reduction kernels (par__reduce) and the f16/bf16 <-> f32 conversions.
 *
 * par__reduce is the inner loop of every reducing collective, so it is written for speed while
 * keeping one exact meaning: dst[i] = ((src0[i] op src1[i]) op src2[i]) op ..., combined in
 * source order, element by element. Because each element is computed on its own and in a fixed
 * order, the result does not depend on chunking, on the vector width the CPU dispatch picked,
 * or on the number of threads: every path performs the same IEEE operations on the same
 * operands (no reassociation, no fused multiply-add).
 *
 * How it is fast: the element range is walked in blocks of BLOCK_BYTES of accumulator, small
 * enough to stay in L1. For each block the first two sources are combined into the
 * accumulator, then the remaining sources are folded in up to three at a time, so every source
 * byte is read from memory once and the accumulator is written back once. Each step is a
 * plain loop over restrict pointers that GCC auto-vectorises; on x86-64 each type/op driver is
 * compiled twice (AVX2 and baseline) and picked per call by CPU. f16 is widened block by
 * block (with F16C where the CPU has it) and reduced by the f32 drivers.
 *
 * Semantics worth knowing:
 *  - f16/bf16 are widened to f32, combined in f32 and rounded once when the block is stored.
 *  - Integer sum/prod wrap modulo 2^bits: they run on the unsigned type of the same width,
 *    which gives the two's-complement bits without signed-overflow UB.
 *  - min/max on floating types propagate NaN: if any operand is NaN the result is NaN (the
 *    last NaN operand in source order); otherwise ties (including -0 vs +0) keep the earlier
 *    operand.
 *  - PAR_AVG is the (wrapping, for integers) sum divided by `divisor` at the end; integer
 *    division truncates toward zero, float division is correctly rounded.
 *  - The conversions round to nearest even, keep subnormals and infinities, and keep NaN a
 *    NaN (f16 NaNs come back quiet; f32 -> bf16 quiets the NaN, keeping the top payload bits).
 *    They assume the default rounding mode, as every float operation here does.
 */
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "core/core.h"

/* Runtime CPU dispatch on x86-64 (GCC or Clang): every driver is compiled twice, for the
 * baseline and with AVX2, and par__reduce picks one per call from __builtin_cpu_supports; f16
 * conversions use F16C when present. This is plain dispatch, not target_clones: ifunc
 * resolvers run during relocation, before a sanitizer runtime is ready, and crash under TSan. */
#if defined(__x86_64__) && defined(__GNUC__)
#include <cpuid.h>
#include <immintrin.h>
#define HAVE_X86_DISPATCH 1
#else
#define HAVE_X86_DISPATCH 0
#endif

/* The library builds at -O2, whose vectoriser gives up on most of these loops; the dynamic
 * cost model vectorises them all (-O3 was measured no faster and 50% larger). Contraction is
 * off so that no compiler setting can fuse a multiply and an add and change the bits; FP
 * exception flags are not part of the contract, and without trapping math GCC if-converts
 * the selects in the conversions and min/max. */
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("O2", "tree-vectorize", "vect-cost-model=dynamic", "fp-contract=off", \
                     "no-trapping-math")
#endif

#if defined(__GNUC__)
#define ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define ALWAYS_INLINE inline
#endif

/* Accumulator bytes per block: the accumulator plus one block of each source being folded
 * stay in a 32 KiB L1. */
#define BLOCK_BYTES 4096

/* Accumulator bytes per block of par__reduce_to: a block's loads and its stores to every
 * destination follow each other closely enough that the memory system overlaps them. The
 * 8-member zero-copy all-reduce of 64 MiB done by 2 processes (4 shares each) on the 2-core
 * Zen 5 VM, median of 11 passes, in alternating runs: 4 KiB blocks reduced, then copied out
 * with non-temporal stores, 23.5-28.7 ms; blocks of 64 bytes 19.6-22.4, 256 bytes 14.0-23.0
 * (5-9 ms under the 4 KiB blocks of the same round), 1 KiB 24.0-25.7; hand-written AVX-512,
 * one register's loads and stores at a time, 19.4-22.2. */
#define FUSE_BYTES 256

/* ---------------------------------------------------------------------------------------- */
/* Stores                                                                                   */
/* ---------------------------------------------------------------------------------------- */

/*
 * Copies 64 bytes at a time, inline (par__reduce_to's blocks: memcpy would be a call per block
 * and destination), with non-temporal stores when `stream`: the destination's lines go to
 * memory without being read first (no read-for-ownership) and without evicting the caches,
 * for outputs far larger than the caches, written once. Callers pass `stream` as a constant
 * or the same for a whole block.
 */
static ALWAYS_INLINE void copy_body(void *dst, const void *src, size_t n, int stream) {
#if defined(__x86_64__) && defined(__GNUC__)
  char *d = dst;
  const char *s = src;
  size_t head = stream ? (16 - ((uintptr_t)d & 15)) & 15 : 0; /* non-temporal: aligned */
  if (head > n) head = n;
  if (head) memcpy(d, s, head); /* a call, rare: not per block of par__reduce_to */
  d += head, s += head, n -= head;
  for (; n >= 64; n -= 64, d += 64, s += 64) {
    __m128i a = _mm_loadu_si128((const __m128i *)s);
    __m128i b = _mm_loadu_si128((const __m128i *)(s + 16));
    __m128i c = _mm_loadu_si128((const __m128i *)(s + 32));
    __m128i e = _mm_loadu_si128((const __m128i *)(s + 48));
    if (stream) {
      _mm_stream_si128((__m128i *)d, a);
      _mm_stream_si128((__m128i *)(d + 16), b);
      _mm_stream_si128((__m128i *)(d + 32), c);
      _mm_stream_si128((__m128i *)(d + 48), e);
    } else {
      _mm_storeu_si128((__m128i *)d, a);
      _mm_storeu_si128((__m128i *)(d + 16), b);
      _mm_storeu_si128((__m128i *)(d + 32), c);
      _mm_storeu_si128((__m128i *)(d + 48), e);
    }
  }
  if (n) memcpy(d, s, n);
#else
  (void)stream;
  memcpy(dst, src, n);
#endif
}

/* Writes one reduced block of par__reduce_to to one of its destinations. The branch gives each
 * inlined copy_body a constant `stream`, so neither store loop tests it per 64 bytes. */
static ALWAYS_INLINE void store_block(void *dst, const void *src, size_t n, int stream) {
  if (stream)
    copy_body(dst, src, n, 1);
  else
    copy_body(dst, src, n, 0);
}

/* ---------------------------------------------------------------------------------------- */
/* f16 / bf16 conversions                                                                   */
/* ---------------------------------------------------------------------------------------- */

/* The conversions are written without branches (every candidate is computed, one is
 * selected) so the kernels' loops that call them vectorise; the scalar par__ functions below
 * are the same code, so hand conversions and in-kernel conversions agree bit for bit. */

static ALWAYS_INLINE uint32_t f32_bits(float f) {
  uint32_t u;
  memcpy(&u, &f, sizeof u);
  return u;
}

static ALWAYS_INLINE float bits_f32(uint32_t u) {
  float f;
  memcpy(&f, &u, sizeof f);
  return f;
}

static ALWAYS_INLINE float half_to_float(uint16_t h) {
  uint32_t w = (uint32_t)h << 16;
  uint32_t sign = w & 0x80000000u;
  uint32_t two_w = w + w; /* exponent and mantissa at the top, sign shifted out */
  /* Normal, inf and NaN: place the fields as an f32 whose exponent is 224 too high (so inf
   * and NaN land on 255), then scale by 2^-112 to correct the bias (127 - 15 = 112). The
   * product is exact; inf stays inf and NaN comes back quiet with its payload. */
  float normal = bits_f32((two_w >> 4) + 0x70000000u) * 0x1p-112f;
  /* Zero and subnormals (exponent field 0): put the mantissa under 0.5, whose ulp is 2^-24,
   * the f16 subnormal step, and subtract 0.5 again; both steps are exact. */
  float sub = bits_f32((two_w >> 17) | 0x3f000000u) - 0.5f;
  uint32_t mag = two_w < 0x08000000u ? f32_bits(sub) : f32_bits(normal);
  return bits_f32(sign | mag);
}

static ALWAYS_INLINE uint16_t float_to_half(float f) {
  uint32_t x = f32_bits(f);
  uint32_t sign = (x >> 16) & 0x8000u;
  uint32_t ax = x & 0x7fffffffu;
  /* NaN: quiet, keep the top payload bits. */
  uint32_t nan = 0x7e00u | ((ax >> 13) & 0x3ffu);
  /* Normal results: rebias the exponent by -112 and round the 13 dropped bits to nearest
   * even (add 0xfff, plus one more when the kept lsb is odd); a carry into the exponent is
   * the correct rounding up to the next binade. */
  uint32_t normal = (ax + 0xc8000fffu + ((ax >> 13) & 1u)) >> 13;
  /* Results below 2^-14 are subnormal (or zero): adding 0.5 puts the value where an f32 ulp
   * is 2^-24, the f16 subnormal step, so the FPU's own round-to-nearest-even does the
   * rounding and the low mantissa bits are the f16 bits (0x400 = smallest normal). */
  uint32_t sub = f32_bits(bits_f32(ax) + 0.5f) - 0x3f000000u;
  /* 65520 (0x477ff000) is halfway between 65504, the largest f16, and 65536: it and
   * everything above round to infinity. 2^-14 (0x38800000) is the smallest normal f16. */
  uint32_t mag = ax > 0x7f800000u   ? nan
                 : ax >= 0x477ff000u ? 0x7c00u
                 : ax >= 0x38800000u ? normal
                                     : sub;
  return (uint16_t)(sign | mag);
}

static ALWAYS_INLINE float bfloat_to_float(uint16_t h) { return bits_f32((uint32_t)h << 16); }

static ALWAYS_INLINE uint16_t float_to_bfloat(float f) {
  uint32_t x = f32_bits(f);
  /* Round the 16 dropped bits to nearest even; overflow carries into infinity. */
  uint32_t rounded = (x + 0x7fffu + ((x >> 16) & 1u)) >> 16;
  /* NaN: truncating could clear every payload bit left, so force the quiet bit. */
  uint32_t nan = (x >> 16) | 0x0040u;
  return (uint16_t)((x & 0x7fffffffu) > 0x7f800000u ? nan : rounded);
}

float par__f16_to_f32(uint16_t h) { return half_to_float(h); }
uint16_t par__f32_to_f16(float f) { return float_to_half(f); }
float par__bf16_to_f32(uint16_t h) { return bfloat_to_float(h); }
uint16_t par__f32_to_bf16(float f) { return float_to_bfloat(f); }

/* ---------------------------------------------------------------------------------------- */
/* Element operations                                                                       */
/* ---------------------------------------------------------------------------------------- */

/* Each takes two accumulator values, x the earlier one. MIN/MAX propagate NaN: a NaN y
 * replaces x, and a NaN x survives since no comparison with it is true; so the result is the
 * last NaN operand, if any. Ties (including -0 vs +0) keep x. For integers `y != y` is always
 * false and MIN/MAX are plain comparisons. This form, unlike equivalent ones that keep the
 * first NaN, vectorises in GCC's fold loops (measured: 4x faster there). */
#define OP_SUM(x, y) ((x) + (y))
#define OP_PROD(x, y) ((x) * (y))
#define OP_MIN(x, y) (((y) != (y)) ? (y) : ((y) < (x)) ? (y) : (x))
#define OP_MAX(x, y) (((y) != (y)) ? (y) : ((y) > (x)) ? (y) : (x))

/* The loads widen a stored element into the accumulator type. */
#define LOAD_SAME(v) (v)
#define LOAD_BF16(v) bfloat_to_float(v)

/* ---------------------------------------------------------------------------------------- */
/* Block kernels                                                                            */
/* ---------------------------------------------------------------------------------------- */

/*
 * For one element type and op: init1/init2 start a block's accumulator from the first one or
 * two sources, fold1..3 combine the next one to three sources into it, in order. acc never
 * aliases a source (in-place reductions skip init and fold into dst, which holds src[0]).
 */
#define DEFINE_KERNELS(K, IN_T, ACC_T, LOAD, OP)                                               \
  static ALWAYS_INLINE void K##_init1(ACC_T *restrict acc, const IN_T *restrict a, size_t n) {  \
    for (size_t i = 0; i < n; i++) acc[i] = LOAD(a[i]);                                        \
  }                                                                                            \
  static ALWAYS_INLINE void K##_init2(ACC_T *restrict acc, const IN_T *restrict a,              \
                                      const IN_T *restrict b, size_t n) {                      \
    for (size_t i = 0; i < n; i++) {                                                           \
      ACC_T x = LOAD(a[i]), y = LOAD(b[i]);                                                    \
      acc[i] = (ACC_T)OP(x, y);                                                                \
    }                                                                                          \
  }                                                                                            \
  static ALWAYS_INLINE void K##_fold1(ACC_T *restrict acc, const IN_T *restrict a, size_t n) {  \
    for (size_t i = 0; i < n; i++) {                                                           \
      ACC_T x = acc[i], y = LOAD(a[i]);                                                        \
      acc[i] = (ACC_T)OP(x, y);                                                                \
    }                                                                                          \
  }                                                                                            \
  static ALWAYS_INLINE void K##_fold2(ACC_T *restrict acc, const IN_T *restrict a,              \
                                      const IN_T *restrict b, size_t n) {                      \
    for (size_t i = 0; i < n; i++) {                                                           \
      ACC_T x = acc[i], y = LOAD(a[i]);                                                        \
      x = (ACC_T)OP(x, y);                                                                     \
      y = LOAD(b[i]);                                                                          \
      acc[i] = (ACC_T)OP(x, y);                                                                \
    }                                                                                          \
  }                                                                                            \
  static ALWAYS_INLINE void K##_fold3(ACC_T *restrict acc, const IN_T *restrict a,              \
                                      const IN_T *restrict b, const IN_T *restrict c,          \
                                      size_t n) {                                              \
    for (size_t i = 0; i < n; i++) {                                                           \
      ACC_T x = acc[i], y = LOAD(a[i]);                                                        \
      x = (ACC_T)OP(x, y);                                                                     \
      y = LOAD(b[i]);                                                                          \
      x = (ACC_T)OP(x, y);                                                                     \
      y = LOAD(c[i]);                                                                          \
      acc[i] = (ACC_T)OP(x, y);                                                                \
    }                                                                                          \
  }

#define DEFINE_KERNELS_ALL_OPS(T, IN_T, ACC_T, LOAD)                                           \
  DEFINE_KERNELS(T##_sum, IN_T, ACC_T, LOAD, OP_SUM)                                           \
  DEFINE_KERNELS(T##_prod, IN_T, ACC_T, LOAD, OP_PROD)                                         \
  DEFINE_KERNELS(T##_min, IN_T, ACC_T, LOAD, OP_MIN)                                           \
  DEFINE_KERNELS(T##_max, IN_T, ACC_T, LOAD, OP_MAX)

DEFINE_KERNELS_ALL_OPS(f32, float, float, LOAD_SAME)
DEFINE_KERNELS_ALL_OPS(f64, double, double, LOAD_SAME)
DEFINE_KERNELS_ALL_OPS(bf16, uint16_t, float, LOAD_BF16)
/* Integer sum/prod wrap: they run on the unsigned type whatever the signedness. */
DEFINE_KERNELS(u8_sum, uint8_t, uint8_t, LOAD_SAME, OP_SUM)
DEFINE_KERNELS(u8_prod, uint8_t, uint8_t, LOAD_SAME, OP_PROD)
DEFINE_KERNELS(u32_sum, uint32_t, uint32_t, LOAD_SAME, OP_SUM)
DEFINE_KERNELS(u32_prod, uint32_t, uint32_t, LOAD_SAME, OP_PROD)
DEFINE_KERNELS(u64_sum, uint64_t, uint64_t, LOAD_SAME, OP_SUM)
DEFINE_KERNELS(u64_prod, uint64_t, uint64_t, LOAD_SAME, OP_PROD)
DEFINE_KERNELS(i8_min, int8_t, int8_t, LOAD_SAME, OP_MIN)
DEFINE_KERNELS(i8_max, int8_t, int8_t, LOAD_SAME, OP_MAX)
DEFINE_KERNELS(u8_min, uint8_t, uint8_t, LOAD_SAME, OP_MIN)
DEFINE_KERNELS(u8_max, uint8_t, uint8_t, LOAD_SAME, OP_MAX)
DEFINE_KERNELS(i32_min, int32_t, int32_t, LOAD_SAME, OP_MIN)
DEFINE_KERNELS(i32_max, int32_t, int32_t, LOAD_SAME, OP_MAX)
DEFINE_KERNELS(i64_min, int64_t, int64_t, LOAD_SAME, OP_MIN)
DEFINE_KERNELS(i64_max, int64_t, int64_t, LOAD_SAME, OP_MAX)

/* ---------------------------------------------------------------------------------------- */
/* Block finishers: what happens to a finished accumulator block                            */
/* ---------------------------------------------------------------------------------------- */

/* The accumulator is dst itself: nothing left to do. */
#define FINISH_NONE(OUT_T, ACC_T) (void)dst, (void)acc, (void)n
/* The accumulator is dst itself; divide it in place. OUT_T is the signed or unsigned type the
 * caller asked for, so the division truncates the value it means. The quotient is computed
 * in FLT_T (float for 8-bit types, double for 32-bit ones), which vectorises where integer
 * division does not, and is exact: the element x fits FLT_T exactly, the rounded quotient is
 * within |x|/d * 2^-24 (float, |x| < 2^8) or 2^-53 (double, |x| < 2^31) of x/d, which is
 * less than 1/d, the least distance from a non-integer x/d to an integer; so the conversion
 * back, which truncates toward zero, yields exactly the C integer quotient. 64-bit integers
 * do not fit a double and use integer division. */
#define FINISH_DIV_VIA(OUT_T, FLT_T)                                                           \
  do {                                                                                         \
    OUT_T *restrict out_ = (OUT_T *)(void *)dst;                                               \
    const FLT_T div_ = (FLT_T)divisor;                                                         \
    (void)acc;                                                                                 \
    for (size_t i = 0; i < n; i++) out_[i] = (OUT_T)((FLT_T)out_[i] / div_);                   \
  } while (0)
#define FINISH_DIV_I8(OUT_T, ACC_T) FINISH_DIV_VIA(OUT_T, float)
#define FINISH_DIV_I32(OUT_T, ACC_T) FINISH_DIV_VIA(OUT_T, double)
#define FINISH_DIV_I64(OUT_T, ACC_T)                                                           \
  do {                                                                                         \
    OUT_T *restrict out_ = (OUT_T *)(void *)dst;                                               \
    (void)acc;                                                                                 \
    for (size_t i = 0; i < n; i++) out_[i] = (OUT_T)(out_[i] / divisor);                       \
  } while (0)
#define FINISH_DIV_FLOAT(OUT_T, ACC_T)                                                         \
  do {                                                                                         \
    const OUT_T div_ = (OUT_T)divisor;                                                         \
    (void)acc;                                                                                 \
    for (size_t i = 0; i < n; i++) dst[i] = dst[i] / div_;                                     \
  } while (0)
/* The accumulator is an f32 buffer: round each element into dst, after the division for
 * AVG (the average rounds once, like every other bf16 result). */
#define FINISH_BF16(OUT_T, ACC_T)                                                              \
  for (size_t i = 0; i < n; i++) dst[i] = float_to_bfloat(acc[i])
#define FINISH_BF16_DIV(OUT_T, ACC_T)                                                          \
  do {                                                                                         \
    const float div_ = (float)divisor;                                                         \
    for (size_t i = 0; i < n; i++) dst[i] = float_to_bfloat(acc[i] / div_);                   \
  } while (0)

/* ---------------------------------------------------------------------------------------- */
/* Drivers: one per (type, op) and CPU level                                                */
/* ---------------------------------------------------------------------------------------- */

typedef void (*driver_fn)(void *dst, const void *const *src, int nsrc, size_t count,
                          int divisor);

/*
 * One block of a reduction: dst[0..n) (IN_T) = the sources' elements off..off+n, combined in
 * acc (dst itself, or an f32 buffer for bf16), then FINISH. With in_place, acc already holds
 * src[0]'s block and folding starts at src[1]. The drivers below declare what it names.
 */
#define REDUCE_BLOCK(K, IN_T, ACC_T, OUT_T, FINISH)                                            \
  do {                                                                                         \
    int k;                                                                                     \
    if (in_place) {                                                                            \
      k = 1;                                                                                   \
    } else if (nsrc == 1) {                                                                    \
      K##_init1(acc, (const IN_T *)srcv[0] + off, n);                                          \
      k = 1;                                                                                   \
    } else {                                                                                   \
      K##_init2(acc, (const IN_T *)srcv[0] + off, (const IN_T *)srcv[1] + off, n);             \
      k = 2;                                                                                   \
    }                                                                                          \
    for (; nsrc - k >= 3; k += 3)                                                              \
      K##_fold3(acc, (const IN_T *)srcv[k] + off, (const IN_T *)srcv[k + 1] + off,             \
                (const IN_T *)srcv[k + 2] + off, n);                                           \
    if (nsrc - k == 2)                                                                         \
      K##_fold2(acc, (const IN_T *)srcv[k] + off, (const IN_T *)srcv[k + 1] + off, n);         \
    else if (nsrc - k == 1)                                                                    \
      K##_fold1(acc, (const IN_T *)srcv[k] + off, n);                                          \
    FINISH(OUT_T, ACC_T);                                                                      \
  } while (0)

/*
 * NAME reduces nsrc sources of IN_T into dst with kernels K. ACC_IS_DST says whether the
 * accumulator is the destination block itself (same-width types) or a stack buffer of f32
 * (bf16). FINISH runs once per block with dst, acc, n and divisor in scope; OUT_T is the
 * caller's element type, for the division of AVG. ATTR is the CPU target.
 *
 * NAME##_to is the same reduction written to ndst destinations (par__reduce_to): blocks of
 * FUSE_BYTES of accumulator, reduced on the stack and stored to each destination in turn, so
 * that the loads of the sources and the stores to the destinations interleave finely.
 */
#define DEFINE_DRIVER_AT(NAME, ATTR, K, IN_T, ACC_T, OUT_T, ACC_IS_DST, FINISH)                \
  static ATTR void NAME(void *dstv, const void *const *srcv, int nsrc, size_t count,           \
                        int divisor) {                                                         \
    enum { B = BLOCK_BYTES / sizeof(ACC_T) };                                                  \
    (void)divisor; /* only AVG's finisher reads it */                                         \
    ACC_T buf[ACC_IS_DST ? 1 : B];                                                             \
    IN_T *dstall = dstv;                                                                       \
    /* An in-place accumulator already holds src[0]: start folding at src[1]. */              \
    const int in_place = ACC_IS_DST && dstv == srcv[0];                                        \
    for (size_t off = 0; off < count; off += B) {                                              \
      const size_t n = count - off < (size_t)B ? count - off : (size_t)B;                      \
      IN_T *dst = dstall + off;                                                                \
      ACC_T *acc = ACC_IS_DST ? (ACC_T *)(void *)dst : buf;                                    \
      REDUCE_BLOCK(K, IN_T, ACC_T, OUT_T, FINISH);                                             \
    }                                                                                          \
  }                                                                                            \
  static ATTR void NAME##_to(void *const *dstv, int ndst, const void *const *srcv, int nsrc,   \
                             size_t count, int divisor, int stream) {                          \
    enum { B = FUSE_BYTES / sizeof(ACC_T) };                                                   \
    (void)divisor;                                                                             \
    _Alignas(64) IN_T dst[B];                                                                  \
    _Alignas(64) ACC_T buf[ACC_IS_DST ? 1 : B];                                                \
    ACC_T *acc = ACC_IS_DST ? (ACC_T *)(void *)dst : buf;                                      \
    const int in_place = 0;                                                                    \
    size_t off = 0;                                                                            \
    for (; count - off >= (size_t)B; off += B) { /* whole blocks: n a constant */              \
      const size_t n = B;                                                                      \
      REDUCE_BLOCK(K, IN_T, ACC_T, OUT_T, FINISH);                                             \
      for (int d = 0; d < ndst; d++)                                                           \
        store_block((IN_T *)dstv[d] + off, dst, sizeof dst, stream);                           \
    }                                                                                          \
    if (off < count) {                                                                         \
      const size_t n = count - off;                                                            \
      REDUCE_BLOCK(K, IN_T, ACC_T, OUT_T, FINISH);                                             \
      for (int d = 0; d < ndst; d++)                                                           \
        store_block((IN_T *)dstv[d] + off, dst, n * sizeof(IN_T), stream);                     \
    }                                                                                          \
  }

#define NO_ATTR
#if HAVE_X86_DISPATCH
#define DEFINE_DRIVER(NAME, ...)                                                               \
  DEFINE_DRIVER_AT(NAME##_base, NO_ATTR, __VA_ARGS__)                                          \
  DEFINE_DRIVER_AT(NAME##_avx2, __attribute__((target("avx2"))), __VA_ARGS__)
#else
#define DEFINE_DRIVER(NAME, ...) DEFINE_DRIVER_AT(NAME##_base, NO_ATTR, __VA_ARGS__)
#endif

/* Floating types: sum, prod, min, max, avg. */
#define DEFINE_FLOAT_DRIVERS(T, IN_T)                                                          \
  DEFINE_DRIVER(T##_sum, T##_sum, IN_T, IN_T, IN_T, 1, FINISH_NONE)                            \
  DEFINE_DRIVER(T##_prod, T##_prod, IN_T, IN_T, IN_T, 1, FINISH_NONE)                          \
  DEFINE_DRIVER(T##_min, T##_min, IN_T, IN_T, IN_T, 1, FINISH_NONE)                            \
  DEFINE_DRIVER(T##_max, T##_max, IN_T, IN_T, IN_T, 1, FINISH_NONE)                            \
  DEFINE_DRIVER(T##_avg, T##_sum, IN_T, IN_T, IN_T, 1, FINISH_DIV_FLOAT)
DEFINE_FLOAT_DRIVERS(f32, float)
DEFINE_FLOAT_DRIVERS(f64, double)

/* bf16: f32 accumulator on the stack, rounded into dst per block. Widening bf16 is a shift,
 * so the conversions are fused into the loops. */
DEFINE_DRIVER(bf16_sum, bf16_sum, uint16_t, float, uint16_t, 0, FINISH_BF16)
DEFINE_DRIVER(bf16_prod, bf16_prod, uint16_t, float, uint16_t, 0, FINISH_BF16)
DEFINE_DRIVER(bf16_min, bf16_min, uint16_t, float, uint16_t, 0, FINISH_BF16)
DEFINE_DRIVER(bf16_max, bf16_max, uint16_t, float, uint16_t, 0, FINISH_BF16)
DEFINE_DRIVER(bf16_avg, bf16_sum, uint16_t, float, uint16_t, 0, FINISH_BF16_DIV)

/* Integers: sum and prod are shared by the signed and unsigned type of a width. */
DEFINE_DRIVER(u8_sum, u8_sum, uint8_t, uint8_t, uint8_t, 1, FINISH_NONE)
DEFINE_DRIVER(u8_prod, u8_prod, uint8_t, uint8_t, uint8_t, 1, FINISH_NONE)
DEFINE_DRIVER(u32_sum, u32_sum, uint32_t, uint32_t, uint32_t, 1, FINISH_NONE)
DEFINE_DRIVER(u32_prod, u32_prod, uint32_t, uint32_t, uint32_t, 1, FINISH_NONE)
DEFINE_DRIVER(u64_sum, u64_sum, uint64_t, uint64_t, uint64_t, 1, FINISH_NONE)
DEFINE_DRIVER(u64_prod, u64_prod, uint64_t, uint64_t, uint64_t, 1, FINISH_NONE)
DEFINE_DRIVER(i8_min, i8_min, int8_t, int8_t, int8_t, 1, FINISH_NONE)
DEFINE_DRIVER(i8_max, i8_max, int8_t, int8_t, int8_t, 1, FINISH_NONE)
DEFINE_DRIVER(u8_min, u8_min, uint8_t, uint8_t, uint8_t, 1, FINISH_NONE)
DEFINE_DRIVER(u8_max, u8_max, uint8_t, uint8_t, uint8_t, 1, FINISH_NONE)
DEFINE_DRIVER(i32_min, i32_min, int32_t, int32_t, int32_t, 1, FINISH_NONE)
DEFINE_DRIVER(i32_max, i32_max, int32_t, int32_t, int32_t, 1, FINISH_NONE)
DEFINE_DRIVER(i64_min, i64_min, int64_t, int64_t, int64_t, 1, FINISH_NONE)
DEFINE_DRIVER(i64_max, i64_max, int64_t, int64_t, int64_t, 1, FINISH_NONE)
/* AVG of integers: the wrapping sum, then a division in the caller's signedness. */
DEFINE_DRIVER(i8_avg, u8_sum, uint8_t, uint8_t, int8_t, 1, FINISH_DIV_I8)
DEFINE_DRIVER(u8_avg, u8_sum, uint8_t, uint8_t, uint8_t, 1, FINISH_DIV_I8)
DEFINE_DRIVER(i32_avg, u32_sum, uint32_t, uint32_t, int32_t, 1, FINISH_DIV_I32)
DEFINE_DRIVER(i64_avg, u64_sum, uint64_t, uint64_t, int64_t, 1, FINISH_DIV_I64)

/* ---------------------------------------------------------------------------------------- */
/* f16: widen blocks to f32, reduce them with the f32 drivers, round once                   */
/* ---------------------------------------------------------------------------------------- */

/*
 * Widening f16 in portable code needs selects for subnormals and specials and costs about
 * five times bf16's shift, which made f16 compute-bound well below memory bandwidth. Every
 * x86-64 CPU with AVX has F16C, which converts 8 values per instruction, so f16 sources are
 * widened a block at a time into f32 buffers (by F16C when present, else by the vectorised
 * portable code), combined by the f32 drivers above, and rounded back once per block. F16C's
 * conversions are the IEEE ones (exact widening, round-to-nearest-even narrowing, NaN made
 * quiet with its payload kept), the same function as the portable code; the unit test checks
 * both paths against the scalar conversions. Each path converts every element of a call the
 * same way (the F16C tails go through a padded vector), so chunking cannot change the bits.
 */
#define F16_BLOCK 512

typedef void (*widen_fn)(float *restrict dst, const uint16_t *restrict src, size_t n);
typedef void (*narrow_fn)(uint16_t *restrict dst, const float *restrict src, size_t n);

static void widen_f16_portable(float *restrict dst, const uint16_t *restrict src, size_t n) {
  for (size_t i = 0; i < n; i++) dst[i] = half_to_float(src[i]);
}

static void narrow_f16_portable(uint16_t *restrict dst, const float *restrict src, size_t n) {
  for (size_t i = 0; i < n; i++) dst[i] = float_to_half(src[i]);
}

#if HAVE_X86_DISPATCH
static __attribute__((target("avx,f16c"))) void widen_f16_f16c(float *restrict dst,
                                                               const uint16_t *restrict src,
                                                               size_t n) {
  size_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(src + i))));
  if (i < n) {
    uint16_t in[8] = {0};
    float out[8];
    memcpy(in, src + i, (n - i) * sizeof *src);
    _mm256_storeu_ps(out, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)in)));
    memcpy(dst + i, out, (n - i) * sizeof *dst);
  }
}

static __attribute__((target("avx,f16c"))) void narrow_f16_f16c(uint16_t *restrict dst,
                                                                const float *restrict src,
                                                                size_t n) {
  size_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm_storeu_si128((__m128i *)(dst + i),
                     _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT));
  if (i < n) {
    float in[8] = {0};
    uint16_t out[8];
    memcpy(in, src + i, (n - i) * sizeof *src);
    _mm_storeu_si128((__m128i *)out,
                     _mm256_cvtps_ph(_mm256_loadu_ps(in), _MM_FROUND_TO_NEAREST_INT));
    memcpy(dst + i, out, (n - i) * sizeof *dst);
  }
}
#endif

/* The f32 drivers of one CPU level, for f16_reduce: [op], AVG as SUM. */
typedef struct f32_set {
  driver_fn fold[PAR_OP_COUNT];
  driver_fn avg;
  widen_fn widen;
  narrow_fn narrow;
} f32_set;

/* f16: nsrc sources into dst[0..ndst) (par__reduce's dst alone: ndst 1, stream 0). */
static void f16_reduce(const f32_set *set, void *const *dst, int ndst, int stream,
                       const void *const *srcv, int nsrc, size_t count, par_op op,
                       int divisor) {
  float acc[F16_BLOCK], tmp[3][F16_BLOCK];
  uint16_t out[F16_BLOCK];
  /* acc first, then up to three widened sources: an in-place f32 reduction folds them into
   * acc in source order. */
  const void *const part[4] = {acc, tmp[0], tmp[1], tmp[2]};
  const driver_fn fold = set->fold[op];
  const int direct = ndst == 1 && !stream;
  for (size_t off = 0; off < count; off += F16_BLOCK) {
    const size_t n = count - off < F16_BLOCK ? count - off : F16_BLOCK;
    set->widen(acc, (const uint16_t *)srcv[0] + off, n);
    for (int k = 1; k < nsrc; k += 3) {
      const int m = nsrc - k < 3 ? nsrc - k : 3;
      for (int j = 0; j < m; j++) set->widen(tmp[j], (const uint16_t *)srcv[k + j] + off, n);
      fold(acc, part, m + 1, n, 1);
    }
    if (op == PAR_AVG) set->avg(acc, part, 1, n, divisor);
    set->narrow(direct ? (uint16_t *)dst[0] + off : out, acc, n);
    for (int d = 0; !direct && d < ndst; d++)
      store_block((uint16_t *)dst[d] + off, out, n * sizeof *out, stream);
  }
}

static const f32_set f32_base = {{f32_sum_base, f32_prod_base, f32_min_base, f32_max_base,
                                  f32_sum_base},
                                 f32_avg_base,
                                 widen_f16_portable,
                                 narrow_f16_portable};
#if HAVE_X86_DISPATCH
static const f32_set f32_avx2 = {{f32_sum_avx2, f32_prod_avx2, f32_min_avx2, f32_max_avx2,
                                  f32_sum_avx2},
                                 f32_avg_avx2,
                                 widen_f16_f16c,
                                 narrow_f16_f16c};
#endif

/* ---------------------------------------------------------------------------------------- */
/* Entry point                                                                              */
/* ---------------------------------------------------------------------------------------- */

/* Test hook (declared by tests/unit/test_reduce.c): nonzero forces the baseline drivers and
 * the portable f16 conversions, so one machine can test every path. Atomic because any
 * thread may reduce. */
static atomic_int force_portable;

void par__reduce_force_portable(int on) {
  atomic_store_explicit(&force_portable, on, memory_order_relaxed);
}

#define DRIVER_ROW(T, L) {T##_sum_##L, T##_prod_##L, T##_min_##L, T##_max_##L, T##_avg_##L}
#define DRIVER_TABLE(L)                                                                        \
  {                                                                                            \
    [PAR_F32] = DRIVER_ROW(f32, L), [PAR_F64] = DRIVER_ROW(f64, L), [PAR_F16] = {NULL},        \
    [PAR_BF16] = DRIVER_ROW(bf16, L),                                                          \
    [PAR_I8] = {u8_sum_##L, u8_prod_##L, i8_min_##L, i8_max_##L, i8_avg_##L},                  \
    [PAR_U8] = {u8_sum_##L, u8_prod_##L, u8_min_##L, u8_max_##L, u8_avg_##L},                  \
    [PAR_I32] = {u32_sum_##L, u32_prod_##L, i32_min_##L, i32_max_##L, i32_avg_##L},            \
    [PAR_I64] = {u64_sum_##L, u64_prod_##L, i64_min_##L, i64_max_##L, i64_avg_##L},            \
  }

typedef void (*driver_to_fn)(void *const *dst, int ndst, const void *const *src, int nsrc,
                             size_t count, int divisor, int stream);

/* [dtype][op], in the order of the enums in par.h; f16 goes through f16_reduce. */
static const driver_fn drivers_base[PAR_DTYPE_COUNT][PAR_OP_COUNT] = DRIVER_TABLE(base);
static const driver_to_fn drivers_to_base[PAR_DTYPE_COUNT][PAR_OP_COUNT] =
    DRIVER_TABLE(base_to);
#if HAVE_X86_DISPATCH
static const driver_fn drivers_avx2[PAR_DTYPE_COUNT][PAR_OP_COUNT] = DRIVER_TABLE(avx2);
static const driver_to_fn drivers_to_avx2[PAR_DTYPE_COUNT][PAR_OP_COUNT] =
    DRIVER_TABLE(avx2_to);
#endif

/* The kernels of one CPU level. */
typedef struct kernel_set {
  const driver_fn (*reduce)[PAR_OP_COUNT];
  const driver_to_fn (*reduce_to)[PAR_OP_COUNT];
  const f32_set *f16;
} kernel_set;

#if HAVE_X86_DISPATCH
/* 1: baseline, 2: AVX2 drivers, 3: AVX2 drivers and F16C; 0: not looked up yet. Looked up
 * once: CPUID can trap to the hypervisor in a VM and cost microseconds. The race between
 * first callers is benign, they store the same value. */
static atomic_int cpu_level;

static int x86_level(void) {
  int level = atomic_load_explicit(&cpu_level, memory_order_relaxed);
  if (level == 0) {
    /* __builtin_cpu_supports also checks that the OS saves the AVX registers. Clang does not
     * know "f16c" there, so that bit comes from CPUID leaf 1 (AVX2 implies F16C on every CPU
     * made, but both are checked). */
    unsigned a = 0, b = 0, c = 0, d = 0;
    int f16c = __get_cpuid(1, &a, &b, &c, &d) && (c & bit_F16C);
    level = !__builtin_cpu_supports("avx2") ? 1 : f16c ? 3 : 2;
    atomic_store_explicit(&cpu_level, level, memory_order_relaxed);
  }
  return level;
}
#endif

/* The kernels for this CPU (or the portable ones, par__reduce_force_portable). */
static kernel_set kernels(void) {
  kernel_set k = {drivers_base, drivers_to_base, &f32_base};
#if HAVE_X86_DISPATCH
  if (!atomic_load_explicit(&force_portable, memory_order_relaxed)) {
    int level = x86_level();
    if (level >= 2) k.reduce = drivers_avx2, k.reduce_to = drivers_to_avx2;
    if (level >= 3) k.f16 = &f32_avx2;
  }
#endif
  return k;
}

void par__reduce(void *dst, const void *const *src, int nsrc, size_t count, par_dtype dt,
                 par_op op, int divisor) {
  /* The API edge validates; these guards only keep a bad internal call from being UB (an
   * out-of-range table index, or an integer division by zero). */
  if (count == 0 || nsrc < 1 || !par__dtype_valid(dt) || !par__op_valid(op)) return;
  if (divisor < 1) divisor = 1;
  kernel_set k = kernels();
  if (dt == PAR_F16) f16_reduce(k.f16, &dst, 1, 0, src, nsrc, count, op, divisor);
  else k.reduce[dt][op](dst, src, nsrc, count, divisor);
}

void par__reduce_to(void *const *dst, int ndst, const void *const *src, int nsrc,
                    size_t count, par_dtype dt, par_op op, int divisor, int stream) {
  if (count == 0 || ndst < 1 || nsrc < 1 || !par__dtype_valid(dt) || !par__op_valid(op))
    return;
  if (divisor < 1) divisor = 1;
  kernel_set k = kernels();
  if (dt == PAR_F16) f16_reduce(k.f16, dst, ndst, stream != 0, src, nsrc, count, op, divisor);
  else k.reduce_to[dt][op](dst, ndst, src, nsrc, count, divisor, stream != 0);
}

/* ---------------------------------------------------------------------------------------- */
/* Copies into outputs larger than the caches                                               */
/* ---------------------------------------------------------------------------------------- */

/*
 * glibc's memcpy moves mid-sized blocks with `rep movsb`, the fastest way between buffers
 * that stay in cache; but where the destination streams out to memory a plain AVX2 loop was
 * measured faster on the machines this was tuned on (a 64 MiB output written in 256 KiB
 * pieces from a cached source: 7.8 ms against 9.9 ms; the same loop between cached buffers
 * is slower, 17 against 14 us for 512 KiB). The collectives call this for their large
 * outputs only.
 */
#if HAVE_X86_DISPATCH
static __attribute__((target("avx2"))) void copy_avx2(char *d, const char *s, size_t n) {
  for (; n >= 128; n -= 128, d += 128, s += 128) {
    __m256i a = _mm256_loadu_si256((const __m256i *)s);
    __m256i b = _mm256_loadu_si256((const __m256i *)(s + 32));
    __m256i c = _mm256_loadu_si256((const __m256i *)(s + 64));
    __m256i e = _mm256_loadu_si256((const __m256i *)(s + 96));
    _mm256_storeu_si256((__m256i *)d, a);
    _mm256_storeu_si256((__m256i *)(d + 32), b);
    _mm256_storeu_si256((__m256i *)(d + 64), c);
    _mm256_storeu_si256((__m256i *)(d + 96), e);
  }
  memcpy(d, s, n);
}
#endif

void par__copy_out(void *dst, const void *src, size_t n) {
#if HAVE_X86_DISPATCH
  if (!atomic_load_explicit(&force_portable, memory_order_relaxed) && x86_level() >= 2) {
    copy_avx2(dst, src, n);
    return;
  }
#endif
  memcpy(dst, src, n);
}

/* Bit k: par__machine's copy_loop[k], or both as PAR_SHM_COPY_LOOP says; -1 until looked up
 * (a benign race: the same value). */
static _Atomic int copy_rule = -1;

void par__copy(void *dst, const void *src, size_t n) {
  size_t off = ((uintptr_t)dst - (uintptr_t)src) & 4095;
  if (n >= 1024 && off < 64) {
    int rule = atomic_load_explicit(&copy_rule, memory_order_relaxed);
    if (rule < 0) {
      int forced = par__env_get()->shm_copy_loop;
      if (forced >= 0) {
        rule = forced ? 3 : 0;
      } else {
        const par__machine *m = par__machine_get();
        rule = m->copy_loop[0] | m->copy_loop[1] << 1;
      }
      atomic_store_explicit(&copy_rule, rule, memory_order_relaxed);
    }
    if (rule & (off ? 2 : 1)) {
      par__copy_out(dst, src, n);
      return;
    }
  }
  memcpy(dst, src, n);
}

void par__copy_fence(void) {
#if defined(__x86_64__) && defined(__GNUC__)
  _mm_sfence();
#endif
}

void par__copy_stream(void *dst, const void *src, size_t n) {
  copy_body(dst, src, n, 1);
  par__copy_fence();
}

/*
 * Whether non-temporal stores beat the store loop for large outputs depends on the memory
 * system, not on anything the CPU reports: on a 2-core EPYC (Firecracker) they made 64 MiB
 * all-gathers 25% faster and 8-rank all-reduces 15-25% faster, by sparing each line's read
 * for ownership; on a 2-core Xeon they were slower (2-rank 64 MiB all-reduce 26.3 against
 * 21.7 ms). So each process times its first large pieces, alternating the two kernels, and
 * keeps the one with the lower mean cost per byte. The pieces of one op are alike (a round's
 * share), and alternating puts any change in load on both. It starts once the process has
 * written twice its L3 this way (the store loop meanwhile): the first large op's pieces land
 * on lines the program has just written, some in the other core's cache, and on pages never
 * written from this process. There a 4 KiB piece cost 0.7-10 ns/B on the Zen 5 VM, streaming
 * or not, and the choice went to chance (the store loop, mostly); after it, 0.07 ns/B with
 * the store loop against 0.04 streaming, and streaming made the zero-copy 2-rank 64 MiB
 * all-reduce 20% faster (4.3-4.7 ms -> 3.6).
 */
#define BIG_PROBES 16 /* pieces timed per kernel */

static _Atomic int big_choice; /* 0: still measuring; 1: store loop; 2: streaming */
static _Atomic unsigned big_probes;
static _Atomic uint64_t big_ns[2], big_bytes[2], big_before;

static void copy_kind(int stream, void *dst, const void *src, size_t n) {
  if (stream)
    par__copy_stream(dst, src, n);
  else
    par__copy_out(dst, src, n);
}

int par__copy_big_choice(void) {
  int c = atomic_load_explicit(&big_choice, memory_order_relaxed);
  if (!c) {
    int forced = par__env_get()->shm_stream;
    if (forced >= 0) atomic_store(&big_choice, c = forced ? 2 : 1);
  }
  return c;
}

static void copy_big(void *dst, const void *src, size_t n, int fence) {
  int c = par__copy_big_choice();
  if (c == 2 && !fence) {
    copy_body(dst, src, n, 1);
    return;
  }
  if (c) {
    copy_kind(c == 2, dst, src, n);
    return;
  }
  if (atomic_load_explicit(&big_before, memory_order_relaxed) < 2 * par__machine_get()->l3) {
    atomic_fetch_add(&big_before, n);
    par__copy_out(dst, src, n);
    return;
  }
  unsigned k = atomic_fetch_add(&big_probes, 1);
  if (k >= 2 * BIG_PROBES) {
    /* ns per byte, compared without division: a/b < c/d as a*d < c*b (in double). */
    double t0 = (double)atomic_load(&big_ns[0]) * (double)atomic_load(&big_bytes[1]);
    double t1 = (double)atomic_load(&big_ns[1]) * (double)atomic_load(&big_bytes[0]);
    c = t1 < t0 ? 2 : 1;
    int expected = 0;
    if (atomic_compare_exchange_strong(&big_choice, &expected, c))
      PAR__LOG_DEBUG("large outputs: %s (store loop %.3f ns/B, streaming %.3f ns/B)",
                     c == 2 ? "streaming stores" : "store loop",
                     (double)atomic_load(&big_ns[0]) / (double)(atomic_load(&big_bytes[0]) + 1),
                     (double)atomic_load(&big_ns[1]) / (double)(atomic_load(&big_bytes[1]) + 1));
    copy_kind(atomic_load(&big_choice) == 2, dst, src, n);
    return;
  }
  /* The kernels alternate by the parity of k's bits (0110 1001...), not of k: a caller that
   * writes each piece to two places in turn would otherwise time each kernel on one of them. */
  int which = __builtin_parity(k);
  double t = par__now();
  copy_kind(which, dst, src, n);
  atomic_fetch_add(&big_ns[which], (uint64_t)((par__now() - t) * 1e9));
  atomic_fetch_add(&big_bytes[which], n);
}

void par__copy_big(void *dst, const void *src, size_t n) { copy_big(dst, src, n, 1); }

void par__copy_big_unfenced(void *dst, const void *src, size_t n) { copy_big(dst, src, n, 0); }
