/*
 * harness.c -- setup, assertions, guarded buffers, input generators, the reference reducer
 * and the checked collective runner shared by the multi-rank tests (see harness.h).
 *
 * The reference is deliberately naive: one element at a time, contributions combined in
 * group-index order, scalar f16/bf16 conversions written here. Results are compared bit for
 * bit, since par.h promises a fixed reduction order.
 */
#include "harness.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

par_world *h_world;
int h_rank = -1;
int h_size = 0;

static const char *test_name = "test";
static char context[512];
static unsigned long long passes;

/* ---------------------------------------------------------------------------------------- */
/* Setup and failure reporting                                                              */
/* ---------------------------------------------------------------------------------------- */

void h_init(const char *name) {
  test_name = name;
  setvbuf(stdout, NULL, _IOLBF, 0);
  par_status s = par_world_create(NULL, &h_world);
  if (s != PAR_OK) {
    fprintf(stderr, "[%s] FAIL par_world_create: %s: %s\n", name, par_status_name(s),
            par_last_error());
    exit(1);
  }
  h_rank = par_world_rank(h_world);
  h_size = par_world_size(h_world);
  if (!getenv("PAR_TIMEOUT")) CHECK(NULL, par_group_set_timeout(par_world_group(h_world), H_OP_TIMEOUT));
}

int h_finish(void) {
  par_world_destroy(h_world);
  h_world = NULL;
  if (h_rank == 0) printf("%s: PASS on %d ranks (%llu checks on rank 0)\n", test_name, h_size, passes);
  return 0;
}

void h_context(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(context, sizeof context, fmt, ap);
  va_end(ap);
}

const char *h_context_get(void) { return context; }

void h_pass(void) { passes++; }

static void __attribute__((noreturn)) fail_exit(void) {
  if (context[0]) fprintf(stderr, "[rank %d]   while: %s\n", h_rank, context);
  fprintf(stderr, "[rank %d] %s: FAILED\n", h_rank, test_name);
  fflush(stderr);
  exit(1);
}

void h_fail(const char *file, int line, const char *fmt, ...) {
  char msg[2048];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  fprintf(stderr, "[rank %d] FAIL %s:%d: %s\n", h_rank, file, line, msg);
  fail_exit();
}

void h_fail_call(const char *file, int line, const char *expr, par_status s, const par_group *g,
                 const par_work *w) {
  fprintf(stderr, "[rank %d] FAIL %s:%d: %s returned %s (%s)\n", h_rank, file, line, expr,
          par_status_name(s), par_status_string(s));
  if (w) fprintf(stderr, "[rank %d]   work error: %s\n", h_rank, par_work_error(w));
  if (g) fprintf(stderr, "[rank %d]   group '%s' last error: %s\n", h_rank, par_group_name(g),
                 par_group_last_error(g));
  if (h_world) fprintf(stderr, "[rank %d]   world last error: %s\n", h_rank, par_world_last_error(h_world));
  fprintf(stderr, "[rank %d]   par_last_error: %s\n", h_rank, par_last_error());
  fail_exit();
}

void h_expect_msg(const char *file, int line, const char *what, const char *msg, ...) {
  if (!msg) h_fail(file, line, "%s: expected a message, got NULL", what);
  if (!msg[0]) h_fail(file, line, "%s: expected a non-empty message, got \"\"", what);
  va_list ap;
  va_start(ap, msg);
  for (const char *needle = va_arg(ap, const char *); needle; needle = va_arg(ap, const char *)) {
    if (!strstr(msg, needle)) {
      va_end(ap);
      h_fail(file, line, "%s: expected the message to mention \"%s\", got \"%s\"", what, needle,
             msg);
    }
  }
  va_end(ap);
  h_pass();
}

void h_sleep(double s) {
  struct timespec ts = {(time_t)s, (long)((s - (double)(time_t)s) * 1e9)};
  while (nanosleep(&ts, &ts) != 0) {
  }
}

double h_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

par_group *h_group_create(const int *ranks, int n, const char *name) {
  par_group_options opts = PAR_GROUP_OPTIONS_INIT;
  if (!getenv("PAR_TIMEOUT")) opts.timeout_s = H_OP_TIMEOUT;
  opts.name = name;
  par_group *g = NULL;
  par_status s = par_group_create(h_world, ranks, n, &opts, &g);
  if (s != PAR_OK) {
    h_context("par_group_create '%s' (n=%d)", name, n);
    h_fail_call(__FILE__, __LINE__, "par_group_create", s, NULL, NULL);
  }
  EXPECT_TRUE(g != NULL, "par_group_create '%s' returned PAR_OK and a non-NULL group", name);
  return g;
}

/* ---------------------------------------------------------------------------------------- */
/* Guarded buffers                                                                          */
/* ---------------------------------------------------------------------------------------- */

#define GUARD 64
#define HDR_MAGIC 0x70617254657374ULL

typedef struct buf_hdr {
  uint64_t magic;
  void *raw;
  size_t bytes;
} buf_hdr;

static unsigned char guard_byte(size_t i) { return (unsigned char)(0x5A + i * 7); }

static buf_hdr read_hdr(const void *p, const char *file, int line) {
  buf_hdr h;
  memcpy(&h, (const unsigned char *)p - GUARD - sizeof h, sizeof h);
  if (h.magic != HDR_MAGIC) h_fail(file, line, "buffer header overwritten (underflow?)");
  return h;
}

void *h_alloc(size_t bytes, size_t misalign) {
  size_t total = 2 * GUARD + GUARD + misalign + bytes; /* header area, pre guard, data, post */
  total = (total + 63) & ~(size_t)63;
  unsigned char *raw = aligned_alloc(64, total);
  if (!raw) h_fail(__FILE__, __LINE__, "out of memory allocating %zu bytes", bytes);
  unsigned char *data = raw + 2 * GUARD + misalign;
  buf_hdr h = {HDR_MAGIC, raw, bytes};
  memcpy(data - GUARD - sizeof h, &h, sizeof h);
  for (size_t i = 0; i < GUARD; i++) {
    data[-1 - (ptrdiff_t)i] = guard_byte(i);
    data[bytes + i] = guard_byte(i + GUARD);
  }
  memset(data, H_SENTINEL, bytes);
  return data;
}

void h_check_guards(const void *p, const char *file, int line, const char *what) {
  const unsigned char *data = p;
  buf_hdr h = read_hdr(p, file, line);
  for (size_t i = 0; i < GUARD; i++) {
    if (data[-1 - (ptrdiff_t)i] != guard_byte(i))
      h_fail(file, line, "%s: guard byte %zd before the buffer was overwritten (0x%02x)", what,
             -1 - (ptrdiff_t)i, data[-1 - (ptrdiff_t)i]);
    if (data[h.bytes + i] != guard_byte(i + GUARD))
      h_fail(file, line, "%s: guard byte %zu after the end (%zu bytes) was overwritten (0x%02x)",
             what, i, h.bytes, data[h.bytes + i]);
  }
  h_pass();
}

void h_free(void *p) {
  if (!p) return;
  free(read_hdr(p, __FILE__, __LINE__).raw);
}

void h_check_sentinel(const void *p, size_t bytes, const char *file, int line, const char *what) {
  const unsigned char *d = p;
  for (size_t i = 0; i < bytes; i++)
    if (d[i] != H_SENTINEL)
      h_fail(file, line, "%s: byte %zu of %zu was written (0x%02x), expected untouched 0x%02x",
             what, i, bytes, d[i], H_SENTINEL);
  h_pass();
}

/* ---------------------------------------------------------------------------------------- */
/* f16 / bf16 (round to nearest even), written independently of the library               */
/* ---------------------------------------------------------------------------------------- */

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

float h_f16_to_f32(uint16_t h) {
  uint32_t sign = (uint32_t)(h >> 15) << 31, exp = (h >> 10) & 0x1f, man = h & 0x3ff;
  if (exp == 0) { /* zero or subnormal: man * 2^-24, exact in f32 */
    float v = (float)man / 16777216.0f;
    return sign ? -v : v;
  }
  if (exp == 31) return bits_f32(sign | 0x7f800000u | (man << 13));
  return bits_f32(sign | ((exp - 15 + 127) << 23) | (man << 13));
}

uint16_t h_f32_to_f16(float f) {
  uint32_t x = f32_bits(f), ax = x & 0x7fffffffu;
  uint16_t sign = (uint16_t)((x >> 16) & 0x8000);
  if (ax > 0x7f800000u) return (uint16_t)(sign | 0x7e00 | ((ax >> 13) & 0x3ff)); /* NaN */
  if (ax >= 0x477ff000u) return (uint16_t)(sign | 0x7c00); /* >= 65520 rounds to inf */
  uint32_t e = ax >> 23;
  if (e < 113) { /* below 2^-14: a half subnormal, result = round(|f| / 2^-24) */
    if (e == 0) return sign; /* f32 subnormals are far below half's smallest subnormal */
    uint32_t m = (ax & 0x7fffffu) | 0x800000u, shift = 126 - e;
    if (shift > 24) return sign;
    uint32_t q = m >> shift, rem = m & ((1u << shift) - 1), half = 1u << (shift - 1);
    if (rem > half || (rem == half && (q & 1))) q++;
    return (uint16_t)(sign | q);
  }
  uint32_t q = ((e - 112) << 10) | ((ax >> 13) & 0x3ff), rem = ax & 0x1fff;
  if (rem > 0x1000 || (rem == 0x1000 && (q & 1))) q++; /* a carry into the exponent is right */
  return (uint16_t)(sign | q);
}

float h_bf16_to_f32(uint16_t h) { return bits_f32((uint32_t)h << 16); }

uint16_t h_f32_to_bf16(float f) {
  uint32_t x = f32_bits(f);
  if ((x & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((x >> 16) | 0x40);
  return (uint16_t)((x + 0x7fffu + ((x >> 16) & 1)) >> 16);
}

/* ---------------------------------------------------------------------------------------- */
/* Inputs                                                                                   */
/* ---------------------------------------------------------------------------------------- */

const char *h_gen_name(h_gen g) {
  static const char *names[] = {"small", "tiny", "wide", "bits"};
  return (unsigned)g < H_GEN_COUNT ? names[g] : "?";
}

static uint64_t mix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

static int is_float(par_dtype dt) {
  return dt == PAR_F32 || dt == PAR_F64 || dt == PAR_F16 || dt == PAR_BF16;
}

/* Stores the small integer v as element j of dt. */
static void store_int(void *buf, size_t j, par_dtype dt, int v) {
  switch (dt) {
    case PAR_F32: ((float *)buf)[j] = (float)v; break;
    case PAR_F64: ((double *)buf)[j] = (double)v; break;
    case PAR_F16: ((uint16_t *)buf)[j] = h_f32_to_f16((float)v); break;
    case PAR_BF16: ((uint16_t *)buf)[j] = h_f32_to_bf16((float)v); break;
    case PAR_I8: ((int8_t *)buf)[j] = (int8_t)v; break;
    case PAR_U8: ((uint8_t *)buf)[j] = (uint8_t)v; break;
    case PAR_I32: ((int32_t *)buf)[j] = v; break;
    case PAR_I64: ((int64_t *)buf)[j] = v; break;
    default: break;
  }
}

/* A finite float with a random full mantissa, random sign and magnitude in [2^-4, 2^4). */
static void store_wide_float(void *buf, size_t j, par_dtype dt, uint64_t r) {
  uint64_t sign = r & 1, e = (r >> 1) & 7; /* exponent -4 .. 3 */
  uint64_t man = r >> 4;
  switch (dt) {
    case PAR_F32: {
      uint32_t u = (uint32_t)(sign << 31 | (123 + e) << 23 | (man & 0x7fffff));
      memcpy((float *)buf + j, &u, 4);
      break;
    }
    case PAR_F64: {
      uint64_t u = sign << 63 | (1019 + e) << 52 | (man & 0xfffffffffffffULL);
      memcpy((double *)buf + j, &u, 8);
      break;
    }
    case PAR_F16: ((uint16_t *)buf)[j] = (uint16_t)(sign << 15 | (11 + e) << 10 | (man & 0x3ff)); break;
    case PAR_BF16: ((uint16_t *)buf)[j] = (uint16_t)(sign << 15 | (123 + e) << 7 | (man & 0x7f)); break;
    default: break;
  }
}

void h_fill(void *buf, size_t count, par_dtype dt, h_gen gen, int who, size_t first,
            uint32_t salt) {
  uint64_t seed = mix64(((uint64_t)salt << 32) ^ ((uint64_t)(unsigned)who << 8) ^
                        ((uint64_t)dt << 4) ^ (uint64_t)gen);
  size_t es = par_dtype_size(dt);
  for (size_t j = 0; j < count; j++) {
    uint64_t r = mix64(seed ^ ((first + j) * 0xd6e8feb86659fd93ULL));
    switch (gen) {
      case H_GEN_SMALL: store_int(buf, j, dt, dt == PAR_U8 ? (int)(r % 16) : (int)(r % 17) - 8); break;
      case H_GEN_TINY: store_int(buf, j, dt, dt == PAR_U8 ? (int)(r % 4) : (int)(r % 5) - 2); break;
      case H_GEN_WIDE: /* integers take all their bits, as with H_GEN_BITS */
        if (is_float(dt)) store_wide_float(buf, j, dt, r);
        else memcpy((unsigned char *)buf + j * es, &r, es); /* little-endian */
        break;
      case H_GEN_BITS: memcpy((unsigned char *)buf + j * es, &r, es); break;
      default: break;
    }
  }
}

/* ---------------------------------------------------------------------------------------- */
/* Reference reducer                                                                        */
/* ---------------------------------------------------------------------------------------- */

static int64_t load_int(const void *buf, size_t j, par_dtype dt) {
  switch (dt) {
    case PAR_I8: return ((const int8_t *)buf)[j];
    case PAR_U8: return ((const uint8_t *)buf)[j];
    case PAR_I32: return ((const int32_t *)buf)[j];
    default: return ((const int64_t *)buf)[j];
  }
}

static float load_f32ish(const void *buf, size_t j, par_dtype dt) {
  if (dt == PAR_F16) return h_f16_to_f32(((const uint16_t *)buf)[j]);
  if (dt == PAR_BF16) return h_bf16_to_f32(((const uint16_t *)buf)[j]);
  return ((const float *)buf)[j];
}

void h_ref_reduce(void *dst, size_t count, par_dtype dt, par_op op, h_gen gen, const int *who,
                  int n, size_t first, uint32_t salt) {
  size_t es = par_dtype_size(dt);
  unsigned char *tmp = malloc(count * es + 8);
  void *acc = malloc(count * 8 + 8); /* float, double or int64_t per element */
  if (!tmp || !acc) h_fail(__FILE__, __LINE__, "out of memory in the reference");
  float *af = acc;
  double *ad = acc;
  int64_t *ai = acc;
  for (int k = 0; k < n; k++) {
    h_fill(tmp, count, dt, gen, who[k], first, salt);
    for (size_t j = 0; j < count; j++) {
      if (dt == PAR_F64) {
        double x = ((const double *)tmp)[j], a = k ? ad[j] : x;
        if (k) {
          switch (op) {
            case PAR_SUM: case PAR_AVG: a = a + x; break;
            case PAR_PROD: a = a * x; break;
            case PAR_MIN: a = x < a ? x : a; break;
            case PAR_MAX: a = x > a ? x : a; break;
            default: break;
          }
        }
        ad[j] = a;
      } else if (is_float(dt)) { /* f32, and f16/bf16 accumulated in f32 */
        float x = load_f32ish(tmp, j, dt), a = k ? af[j] : x;
        if (k) {
          switch (op) {
            case PAR_SUM: case PAR_AVG: a = a + x; break;
            case PAR_PROD: a = a * x; break;
            case PAR_MIN: a = x < a ? x : a; break;
            case PAR_MAX: a = x > a ? x : a; break;
            default: break;
          }
        }
        af[j] = a;
      } else { /* integers: sums and products wrap, computed mod 2^64 then truncated */
        int64_t x = load_int(tmp, j, dt), a = k ? ai[j] : x;
        if (k) {
          switch (op) {
            case PAR_SUM: case PAR_AVG: a = (int64_t)((uint64_t)a + (uint64_t)x); break;
            case PAR_PROD: a = (int64_t)((uint64_t)a * (uint64_t)x); break;
            case PAR_MIN: a = x < a ? x : a; break;
            case PAR_MAX: a = x > a ? x : a; break;
            default: break;
          }
        }
        ai[j] = a;
      }
    }
  }
  for (size_t j = 0; j < count; j++) {
    switch (dt) {
      case PAR_F64: ((double *)dst)[j] = op == PAR_AVG ? ad[j] / (double)n : ad[j]; break;
      case PAR_F32: ((float *)dst)[j] = op == PAR_AVG ? af[j] / (float)n : af[j]; break;
      case PAR_F16: ((uint16_t *)dst)[j] = h_f32_to_f16(op == PAR_AVG ? af[j] / (float)n : af[j]); break;
      case PAR_BF16: ((uint16_t *)dst)[j] = h_f32_to_bf16(op == PAR_AVG ? af[j] / (float)n : af[j]); break;
      default: {
        int64_t v = ai[j];
        if (op == PAR_AVG) {
          /* The wrapped sum (in the element type, with its signedness), then C division, which
           * truncates toward zero. par.h says only "sum divided by the group size"; that the
           * sum wraps first is what src/core/core.h specifies for the kernels. */
          switch (dt) {
            case PAR_I8: v = (int8_t)(uint8_t)v; break;
            case PAR_U8: v = (uint8_t)v; break;
            case PAR_I32: v = (int32_t)(uint32_t)v; break;
            default: break;
          }
          v /= n;
        }
        uint64_t u = (uint64_t)v;
        memcpy((unsigned char *)dst + j * es, &u, es); /* little-endian truncation */
        break;
      }
    }
  }
  free(tmp);
  free(acc);
}

/* ---------------------------------------------------------------------------------------- */
/* Comparison                                                                               */
/* ---------------------------------------------------------------------------------------- */

static void fmt_elem(char *out, size_t cap, par_dtype dt, const void *buf, size_t j) {
  switch (dt) {
    case PAR_F32: {
      float f = ((const float *)buf)[j];
      snprintf(out, cap, "%.9g (0x%08x)", (double)f, f32_bits(f));
      break;
    }
    case PAR_F64: {
      double d = ((const double *)buf)[j];
      uint64_t u;
      memcpy(&u, &d, 8);
      snprintf(out, cap, "%.17g (0x%016llx)", d, (unsigned long long)u);
      break;
    }
    case PAR_F16: case PAR_BF16: {
      uint16_t h = ((const uint16_t *)buf)[j];
      float f = dt == PAR_F16 ? h_f16_to_f32(h) : h_bf16_to_f32(h);
      snprintf(out, cap, "%.6g (0x%04x)", (double)f, h);
      break;
    }
    default: snprintf(out, cap, "%lld", (long long)load_int(buf, j, dt)); break;
  }
}

void h_expect_elems(const char *file, int line, const char *what, par_dtype dt,
                    const void *expected, const void *actual, size_t count) {
  size_t es = par_dtype_size(dt);
  if (count == 0 || memcmp(expected, actual, count * es) == 0) {
    h_pass();
    return;
  }
  size_t ndiff = 0, first = 0;
  char e[64], a[64];
  for (size_t j = 0; j < count; j++) {
    if (memcmp((const char *)expected + j * es, (const char *)actual + j * es, es) == 0) continue;
    if (ndiff == 0) first = j;
    if (ndiff < 4) {
      fmt_elem(e, sizeof e, dt, expected, j);
      fmt_elem(a, sizeof a, dt, actual, j);
      fprintf(stderr, "[rank %d]   %s[%zu]: expected %s, got %s\n", h_rank, what, j, e, a);
    }
    ndiff++;
  }
  h_fail(file, line, "%s (%s, %zu elements): %zu elements differ from the reference, first at %zu",
         what, par_dtype_name(dt), count, ndiff, first);
}

uint64_t h_hash_bytes(const void *p, size_t bytes) {
  uint64_t h = 0xcbf29ce484222325ULL;
  for (size_t i = 0; i < bytes; i++) h = (h ^ ((const unsigned char *)p)[i]) * 0x100000001b3ULL;
  return h;
}

/* ---------------------------------------------------------------------------------------- */
/* One collective, checked                                                                  */
/* ---------------------------------------------------------------------------------------- */

struct h_pending {
  h_case c;
  par_group *g;
  h_mode mode;
  par_work *work;
  int n, idx;
  int *who;                /* global rank of each group index */
  uint32_t salt;           /* effective data salt */
  unsigned char *send;     /* what the call got as sendbuf (may point into recv) */
  unsigned char *recv;     /* what the call got as recvbuf (may be NULL or alias send) */
  unsigned char *own_send; /* allocations to check and free */
  unsigned char *own_recv;
};

const char *h_coll_name(h_coll c) {
  static const char *names[] = {"allreduce", "allgather", "reduce_scatter",
                                "broadcast", "reduce",    "alltoall"};
  return (unsigned)c < H_COLL_COUNT ? names[c] : "?";
}

int h_coll_reduces(h_coll c) { return c == H_ALLREDUCE || c == H_REDUCE_SCATTER || c == H_REDUCE; }

const char *h_case_str(const h_case *c, char *buf, size_t cap) {
  int n = snprintf(buf, cap, "%s dtype=%s", h_coll_name(c->coll), par_dtype_name(c->dt));
  if (h_coll_reduces(c->coll) && n < (int)cap) n += snprintf(buf + n, cap - (size_t)n, " op=%s", par_op_name(c->op));
  if ((c->coll == H_BROADCAST || c->coll == H_REDUCE) && n < (int)cap)
    n += snprintf(buf + n, cap - (size_t)n, " root=%d", c->root);
  if (n < (int)cap)
    snprintf(buf + n, cap - (size_t)n, " count=%zu %s gen=%s misalign=%zu salt=%u", c->count,
             c->inplace ? "in-place" : "out-of-place", h_gen_name(c->gen), c->misalign, c->salt);
  return buf;
}

static const char *mode_name(h_mode m) {
  return m == H_BLOCKING ? "blocking" : m == H_ASYNC_WAIT ? "async+wait" : "async+test";
}

static void set_case_context(const h_pending *p, const char *phase) {
  char cs[256];
  h_context("%s %s on group '%s' (size %d, my index %d), %s", phase, h_case_str(&p->c, cs, sizeof cs),
            par_group_name(p->g), p->n, p->idx, mode_name(p->mode));
}

static uint32_t case_salt(const h_case *c) {
  return (uint32_t)mix64(((uint64_t)c->salt << 24) ^ ((uint64_t)c->coll << 16) ^
                         ((uint64_t)c->op << 8) ^ (uint64_t)c->root);
}

h_pending *h_case_post(par_group *g, const h_case *c, h_mode mode) {
  h_pending *p = calloc(1, sizeof *p);
  if (!p) h_fail(__FILE__, __LINE__, "out of memory");
  p->c = *c;
  p->g = g;
  p->mode = mode;
  p->n = par_group_size(g);
  p->idx = par_group_index(g);
  p->salt = case_salt(c);
  p->who = malloc(sizeof(int) * (size_t)p->n);
  if (!p->who) h_fail(__FILE__, __LINE__, "out of memory");
  memcpy(p->who, par_group_ranks(g), sizeof(int) * (size_t)p->n);
  set_case_context(p, "posting");

  size_t es = par_dtype_size(c->dt), cnt = c->count, n = (size_t)p->n, idx = (size_t)p->idx;
  int me = p->who[p->idx];
  switch (c->coll) {
    case H_ALLREDUCE:
      p->own_send = h_alloc(cnt * es, c->misalign);
      h_fill(p->own_send, cnt, c->dt, c->gen, me, 0, p->salt);
      p->own_recv = c->inplace ? NULL : h_alloc(cnt * es, c->misalign);
      p->send = p->own_send;
      p->recv = c->inplace ? p->own_send : p->own_recv;
      break;
    case H_ALLGATHER:
      p->own_recv = h_alloc(n * cnt * es, c->misalign);
      if (c->inplace) {
        p->send = p->own_recv + idx * cnt * es;
        h_fill(p->send, cnt, c->dt, c->gen, me, 0, p->salt);
      } else {
        p->own_send = h_alloc(cnt * es, c->misalign);
        h_fill(p->own_send, cnt, c->dt, c->gen, me, 0, p->salt);
        p->send = p->own_send;
      }
      p->recv = p->own_recv;
      break;
    case H_REDUCE_SCATTER:
      p->own_send = h_alloc(n * cnt * es, c->misalign);
      h_fill(p->own_send, n * cnt, c->dt, c->gen, me, 0, p->salt);
      p->own_recv = c->inplace ? NULL : h_alloc(cnt * es, c->misalign);
      p->send = p->own_send;
      p->recv = c->inplace ? p->own_send + idx * cnt * es : p->own_recv;
      break;
    case H_BROADCAST:
      p->own_recv = h_alloc(cnt * es, c->misalign);
      if (p->idx == c->root) h_fill(p->own_recv, cnt, c->dt, c->gen, me, 0, p->salt);
      p->send = p->recv = p->own_recv;
      break;
    case H_REDUCE:
      p->own_send = h_alloc(cnt * es, c->misalign);
      h_fill(p->own_send, cnt, c->dt, c->gen, me, 0, p->salt);
      p->send = p->own_send;
      if (c->inplace) {
        p->recv = p->own_send; /* on non-roots recvbuf is ignored: sendbuf must stay intact */
      } else if (p->idx == c->root || (c->salt & 1)) {
        p->own_recv = h_alloc(cnt * es, c->misalign); /* on non-roots: must stay untouched */
        p->recv = p->own_recv;
      } else {
        p->recv = NULL; /* allowed on non-roots */
      }
      break;
    case H_ALLTOALL:
      p->own_send = h_alloc(n * cnt * es, c->misalign);
      h_fill(p->own_send, n * cnt, c->dt, c->gen, me, 0, p->salt);
      p->own_recv = h_alloc(n * cnt * es, c->misalign);
      p->send = p->own_send;
      p->recv = p->own_recv;
      break;
    default: h_fail(__FILE__, __LINE__, "bad h_coll %d", (int)c->coll);
  }

  par_work **wp = mode == H_BLOCKING ? NULL : &p->work;
  par_status s = PAR_OK;
  switch (c->coll) {
    case H_ALLREDUCE:
      s = wp ? par_allreduce_async(g, p->send, p->recv, cnt, c->dt, c->op, wp)
             : par_allreduce(g, p->send, p->recv, cnt, c->dt, c->op);
      break;
    case H_ALLGATHER:
      s = wp ? par_allgather_async(g, p->send, p->recv, cnt, c->dt, wp)
             : par_allgather(g, p->send, p->recv, cnt, c->dt);
      break;
    case H_REDUCE_SCATTER:
      s = wp ? par_reduce_scatter_async(g, p->send, p->recv, cnt, c->dt, c->op, wp)
             : par_reduce_scatter(g, p->send, p->recv, cnt, c->dt, c->op);
      break;
    case H_BROADCAST:
      s = wp ? par_broadcast_async(g, p->recv, cnt, c->dt, c->root, wp)
             : par_broadcast(g, p->recv, cnt, c->dt, c->root);
      break;
    case H_REDUCE:
      s = wp ? par_reduce_async(g, p->send, p->recv, cnt, c->dt, c->op, c->root, wp)
             : par_reduce(g, p->send, p->recv, cnt, c->dt, c->op, c->root);
      break;
    case H_ALLTOALL:
      s = wp ? par_alltoall_async(g, p->send, p->recv, cnt, c->dt, wp)
             : par_alltoall(g, p->send, p->recv, cnt, c->dt);
      break;
    default: break;
  }
  if (s != PAR_OK) h_fail_call(__FILE__, __LINE__, h_coll_name(c->coll), s, g, NULL);
  if (wp && !p->work) h_fail(__FILE__, __LINE__, "the _async call returned PAR_OK but no work handle");
  h_pass();
  return p;
}

par_work *h_case_work(h_pending *p) { return p->work; }

static void complete(h_pending *p) {
  if (p->mode == H_BLOCKING) return;
  par_status s;
  if (p->mode == H_ASYNC_WAIT) {
    s = par_work_wait(p->work, -1.0);
  } else {
    double deadline = h_now() + H_OP_TIMEOUT + 30.0;
    while ((s = par_work_test(p->work)) == PAR_IN_PROGRESS) {
      if (h_now() > deadline) h_fail(__FILE__, __LINE__, "par_work_test still PAR_IN_PROGRESS after %.0f s", H_OP_TIMEOUT + 30.0);
      h_sleep(100e-6);
    }
  }
  if (s != PAR_OK) h_fail_call(__FILE__, __LINE__, "completing the async op", s, p->g, p->work);
  EXPECT_STATUS(PAR_OK, par_work_test(p->work)); /* a completed work keeps reporting its status */
  const char *err = par_work_error(p->work);
  EXPECT_TRUE(err && !err[0], "par_work_error of a successful op is \"\", got \"%s\"", err ? err : "(null)");
  par_work_free(p->work);
  p->work = NULL;
}

void h_case_finish(h_pending *p) {
  complete(p);
  set_case_context(p, "checking");
  const h_case *c = &p->c;
  size_t es = par_dtype_size(c->dt), cnt = c->count, n = (size_t)p->n, idx = (size_t)p->idx;
  int me = p->who[p->idx];
  /* `exp` holds the expected contents of whichever buffer is checked. */
  size_t big = (c->coll == H_ALLGATHER || c->coll == H_REDUCE_SCATTER || c->coll == H_ALLTOALL) ? n * cnt : cnt;
  unsigned char *exp = malloc(big * es + 8);
  if (!exp) h_fail(__FILE__, __LINE__, "out of memory");
  int check_send = 0; /* 1: own_send must still hold this rank's input (except an in-place block) */

  switch (c->coll) {
    case H_ALLREDUCE:
      h_ref_reduce(exp, cnt, c->dt, c->op, c->gen, p->who, p->n, 0, p->salt);
      EXPECT_ELEMS("allreduce result", c->dt, exp, p->recv, cnt);
      check_send = !c->inplace;
      break;
    case H_ALLGATHER:
      for (size_t i = 0; i < n; i++) h_fill(exp + i * cnt * es, cnt, c->dt, c->gen, p->who[i], 0, p->salt);
      EXPECT_ELEMS("allgather result", c->dt, exp, p->recv, n * cnt);
      check_send = !c->inplace;
      break;
    case H_REDUCE_SCATTER:
      h_ref_reduce(exp, cnt, c->dt, c->op, c->gen, p->who, p->n, idx * cnt, p->salt);
      EXPECT_ELEMS("reduce_scatter result block", c->dt, exp, p->recv, cnt);
      check_send = 1;
      break;
    case H_BROADCAST:
      h_fill(exp, cnt, c->dt, c->gen, p->who[c->root], 0, p->salt);
      EXPECT_ELEMS("broadcast buffer", c->dt, exp, p->recv, cnt);
      break;
    case H_REDUCE:
      if (p->idx == c->root) {
        h_ref_reduce(exp, cnt, c->dt, c->op, c->gen, p->who, p->n, 0, p->salt);
        EXPECT_ELEMS("reduce result on root", c->dt, exp, p->recv, cnt);
        check_send = !c->inplace;
      } else {
        check_send = 1;
        if (p->own_recv) h_check_sentinel(p->own_recv, cnt * es, __FILE__, __LINE__, "reduce recvbuf on a non-root (ignored)");
      }
      break;
    case H_ALLTOALL:
      for (size_t i = 0; i < n; i++)
        h_fill(exp + i * cnt * es, cnt, c->dt, c->gen, p->who[i], idx * cnt, p->salt);
      EXPECT_ELEMS("alltoall result", c->dt, exp, p->recv, n * cnt);
      check_send = 1;
      break;
    default: break;
  }
  if (check_send && p->own_send) {
    size_t total = (c->coll == H_REDUCE_SCATTER || c->coll == H_ALLTOALL) ? n * cnt : cnt;
    h_fill(exp, total, c->dt, c->gen, me, 0, p->salt);
    if (c->coll == H_REDUCE_SCATTER && c->inplace) { /* all but my block, which is the result */
      EXPECT_ELEMS("reduce_scatter sendbuf before my block (must be unchanged)", c->dt, exp, p->own_send, idx * cnt);
      size_t after = (idx + 1) * cnt;
      EXPECT_ELEMS("reduce_scatter sendbuf after my block (must be unchanged)", c->dt, exp + after * es,
                   p->own_send + after * es, total - after);
    } else {
      EXPECT_ELEMS("sendbuf (must be unchanged)", c->dt, exp, p->own_send, total);
    }
  }
  if (p->own_send) h_check_guards(p->own_send, __FILE__, __LINE__, "sendbuf");
  if (p->own_recv) h_check_guards(p->own_recv, __FILE__, __LINE__, "recvbuf");
  free(exp);
  h_free(p->own_send);
  h_free(p->own_recv);
  free(p->who);
  free(p);
}

void h_case_run(par_group *g, const h_case *c, h_mode mode) { h_case_finish(h_case_post(g, c, mode)); }
