/*
 * core.h -- what every part of libpar shares: error reporting, logging, the environment read
 * once, clocks, and the reduction kernels. Internal: names are par__ / PAR__.
 */
#ifndef PAR_CORE_H
#define PAR_CORE_H

#include <pthread.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include "par.h"

/* ---------------------------------------------------------------------------------------- */
/* Errors                                                                                   */
/* ---------------------------------------------------------------------------------------- */

/* Every internal function that fails records a one-line detail in a thread-local buffer and
 * returns the status. The API edge keeps that detail on the handle (par__error_keep). */
#define PAR__ERRLEN 512

/* Records the formatted detail (printf-style) and returns s. At debug log level it also logs
 * "error PAR_ERR_X at src/dir/file.c:LINE: detail", naming where the error was raised; the
 * detail itself never carries the place. */
#define par__error(s, ...) par__error_at(__FILE__, __LINE__, (s), __VA_ARGS__)
par_status par__error_at(const char *file, int line, par_status s, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* The detail recorded by the last par__error on this thread ("" if none). */
const char *par__error_detail(void);
/* Clears this thread's detail. */
void par__error_clear(void);
/* Copies this thread's detail into dst (size PAR__ERRLEN). Prefer par__error_keep. */
void par__error_copy(char *dst);

/*
 * The locking rule for a handle's last-error string (par_world, par_group, par_mesh:
 * `last_error`): it is written only through par__error_keep, with `mu` the mutex that guards
 * the handle (w->mu, g->mu, the mesh's mu), so concurrent failures never interleave their
 * copies; par_*_last_error reads it without the lock, since it is meant for the thread whose
 * call on the handle just failed, and par.h's threading rules keep other calls off the handle
 * meanwhile. A local buffer (a detail kept across a cleanup that may fail too) passes mu NULL.
 * Returns s, so an error path reads `return par__error_keep(g->last_error, &g->mu, s);`;
 * inline, so the success path costs one compare.
 */
void par__error_store(char *dst, pthread_mutex_t *mu);
static inline par_status par__error_keep(char *dst, pthread_mutex_t *mu, par_status s) {
  if (s < 0) par__error_store(dst, mu);
  return s;
}

#define PAR_RETURN_ERROR_IF(cond, status, ...)                                                 \
  do {                                                                                         \
    if (cond) return par__error((status), __VA_ARGS__);                                        \
  } while (0)

#define PAR_FORWARD_IF_ERROR(expr)                                                             \
  do {                                                                                         \
    par_status par__fwd_s = (expr);                                                            \
    if (par__fwd_s < 0) return par__fwd_s;                                                     \
  } while (0)

/* Stores the status of expr in s and jumps to the cleanup label when it is an error (NCCL's
 * NCCLCHECKGOTO): `PAR_FORWARD_IF_ERROR_GOTO(map(...), s, fail_close);`. */
#define PAR_FORWARD_IF_ERROR_GOTO(expr, s, label)                                              \
  do {                                                                                         \
    if (((s) = (expr)) < 0) goto label;                                                        \
  } while (0)

/* ---------------------------------------------------------------------------------------- */
/* Logging                                                                                  */
/* ---------------------------------------------------------------------------------------- */

void par__log(par_log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Sets the rank shown in log lines ("par[3]"); -1 shows none. */
void par__log_set_rank(int rank);
int par__log_enabled(par_log_level level);

#define PAR__LOG_ERROR(...) par__log(PAR_LOG_ERROR, __VA_ARGS__)
#define PAR__LOG_WARN(...) par__log(PAR_LOG_WARN, __VA_ARGS__)
#define PAR__LOG_INFO(...) par__log(PAR_LOG_INFO, __VA_ARGS__)
#define PAR__LOG_DEBUG(...)                                                                    \
  do {                                                                                         \
    if (par__log_enabled(PAR_LOG_DEBUG)) par__log(PAR_LOG_DEBUG, __VA_ARGS__);                 \
  } while (0)

/* ---------------------------------------------------------------------------------------- */
/* Environment, read once (docs/env.md lists every variable)                                */
/* ---------------------------------------------------------------------------------------- */

typedef struct par__env {
  par_log_level log_level; /* PAR_LOG */
  double timeout_s;        /* PAR_TIMEOUT, default 300 */
  par_backend backend;     /* PAR_BACKEND, default auto */
  int check;               /* PAR_CHECK=1: members compare op numbers too */
  size_t shm_chunk;        /* PAR_SHM_CHUNK: bytes per rank per pipeline stage */
  int spin;                /* PAR_SPIN: spin iterations before sleeping; -1 = automatic */
  int shm_cma;             /* PAR_SHM_CMA: single-copy reads of peers' memory; -1 = auto */
  int cpus;                /* PAR_CPUS: CPUs the job may use on this host; 0 = unknown */
} par__env;

/* The environment, parsed on first use. Thread-safe. While it is being parsed, calls from the
 * parsing thread (a parser that logs) get the defaults. */
const par__env *par__env_get(void);
int par__env_reading(void);

/* 1 when a job with `local_size` ranks on this host has more ranks than cores: waiting
 * ranks must then give up their core early instead of spinning. */
int par__oversubscribed(int local_size);

/* The length of the step from `base` through elements [0, count), at most `per`; 0 at the
 * end: for (size_t base = 0, m; (m = par__span(count, base, per)) > 0; base += m). */
static inline size_t par__span(size_t count, size_t base, size_t per) {
  return count - base < per ? count - base : per;
}

/* A pause for spin-wait loops. */
static inline void par__cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  __asm__ __volatile__("yield");
#endif
}

/* ---------------------------------------------------------------------------------------- */
/* Identifiers (hash.c)                                                                     */
/* ---------------------------------------------------------------------------------------- */

#define PAR__FNV_OFFSET 1469598103934665603ull
/* 64-bit FNV-1a of n bytes, continuing from h (start with PAR__FNV_OFFSET). */
uint64_t par__fnv1a(const void *p, size_t n, uint64_t h);
/* nhex (at most 64) random lowercase hex digits and a NUL, from the kernel's generator. */
void par__random_hex(char *out, int nhex);

/* ---------------------------------------------------------------------------------------- */
/* Time                                                                                     */
/* ---------------------------------------------------------------------------------------- */

/* Monotonic seconds. */
double par__now(void);

/* ---------------------------------------------------------------------------------------- */
/* Reduction kernels (src/core/reduce.c)                                                    */
/* ---------------------------------------------------------------------------------------- */

/*
 * dst[i] = src[0][i] op src[1][i] op ... op src[nsrc-1][i], combined strictly left to right
 * (index order), for i < count. f16/bf16 accumulate in f32 and round once at the end; integer
 * types wrap (two's complement) on sum and prod. PAR_AVG divides the sum by `divisor` at the
 * end (integer types truncate toward zero). dst may alias src[0] (only src[0]). nsrc >= 1.
 * The result depends only on the inputs, never on how the call is chunked, so any chunking of
 * the element range gives the same bits.
 */
void par__reduce(void *dst, const void *const *src, int nsrc, size_t count, par_dtype dt,
                 par_op op, int divisor);

/* memcpy for a destination far larger than the caches (an op's large output): faster there,
 * slower between cached buffers (reduce.c). dst and src must not overlap. */
void par__copy_out(void *dst, const void *src, size_t n);

/* Tests only: 1 forces the portable (non-SIMD) kernels, 0 restores CPU dispatch. */
void par__reduce_force_portable(int on);

/* Scalar conversions used by the kernels and tests; round to nearest even. */
float par__f16_to_f32(uint16_t h);
uint16_t par__f32_to_f16(float f);
float par__bf16_to_f32(uint16_t h);
uint16_t par__f32_to_bf16(float f);

/* Validity checks used at the API edge. */
static inline int par__dtype_valid(par_dtype dt) { return (unsigned)dt < PAR_DTYPE_COUNT; }
static inline int par__op_valid(par_op op) { return (unsigned)op < PAR_OP_COUNT; }

#endif /* PAR_CORE_H */
