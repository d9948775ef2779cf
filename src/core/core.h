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
  int shm_stream;          /* PAR_SHM_STREAM: non-temporal stores for large outputs; -1 = auto */
  int shm_stage_stream;    /* PAR_SHM_STAGE_STREAM: stage with non-temporal stores; -1 = auto */
  int shm_copy_loop;       /* PAR_SHM_COPY_LOOP: par__copy's loop at page offsets; -1 = measured */
  int cpus;                /* PAR_CPUS: CPUs the job may use on this host; 0 = unknown */
  /* PAR_SHM_SMALL_MAX, _BIG_OUT, _CMA_REDUCE_MIN/MAX, _CMA_MOVE_MIN/MAX: the shared-memory
   * backend's size thresholds (par__tuning below); 0 = derived from the machine. */
  size_t shm_small_max, shm_big_out;
  size_t shm_cma_reduce_min, shm_cma_reduce_max, shm_cma_move_min, shm_cma_move_max;
  size_t shm_stream_min; /* PAR_SHM_STREAM_MIN; 0 = derived */
  size_t shm_cma_bcast_min, shm_cma_bcast_max; /* PAR_SHM_CMA_BCAST_MIN/MAX; 0 = derived */
} par__env;

/* The environment, parsed on first use. Thread-safe. While it is being parsed, calls from the
 * parsing thread (a parser that logs) get the defaults. */
const par__env *par__env_get(void);
int par__env_reading(void);

/* Parses a byte size: decimal digits and an optional K or M suffix (KiB, MiB). Returns 0 and
 * sets *out when the value is well formed, fits and lies in [min, max]; else -1. */
int par__parse_size(const char *v, size_t min, size_t max, size_t *out);

/* The CPUs the job may use on this host: PAR_CPUS (set by parrun from its affinity mask), else
 * the host's online CPUs; at least 1. */
int par__job_cpus(void);

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
/* The machine and the tuning derived from it (machine.c, tune.c; docs/PERFORMANCE.md)      */
/* ---------------------------------------------------------------------------------------- */

/* Where a fact came from. */
typedef enum par__fact_from {
  PAR__FROM_NONE = 0, /* not known (yet) */
  PAR__FROM_SYSFS,    /* /sys/devices/system/cpu/cpu0/cache */
  PAR__FROM_CPUID,    /* x86 CPUID: leaf 4 (Intel), 0x8000001D (AMD), else 0x80000005/6 */
  PAR__FROM_DEFAULT,  /* nothing said: the machine the defaults were tuned on */
} par__fact_from;

/* What this host's CPU reports about itself. Cache sizes are bytes per instance as seen from
 * CPU 0; *_shared_by counts the CPUs (logical) that share one instance. */
typedef struct par__machine {
  size_t l1d, l2, l3;
  int l2_shared_by, l3_shared_by;
  par__fact_from l1d_from, l2_from, l3_from;
  int cpus;          /* par__job_cpus(): what the job may use on this host */
  int cpus_affinity; /* CPUs in this process's affinity mask (sched_getaffinity); 0 unknown */
  int avx2, avx512;  /* usable: the CPU has it and the OS saves its registers; avx512: F+BW */
  /* How many times longer the kernel's cross-memory copy (process_vm_readv, what single copy
   * uses) takes than memcpy for 256 KiB in the caches, measured once; 0: not measured. It
   * depends on the kernel and the hypervisor (page pinning), not on the caches. */
  double cma_slowdown;
  /* Whether par__copy takes the store loop (par__copy_out) instead of memcpy where the
   * destination lies at the source's page offset ([0]) or 1-63 bytes past it ([1]): the loop
   * was faster there, 64 KiB in the caches, measured once (glibc's `rep movsb` crawls 1-63
   * bytes past on Zen 3; on Zen 5 memcpy is the faster at both). */
  unsigned char copy_loop[2];
  char model[64];    /* /proc/cpuinfo "model name", else the CPUID brand, else "unknown" */
} par__machine;

/* This host's facts, read once (sysfs, then CPUID for what sysfs lacks, then defaults).
 * Thread-safe; never fails. */
const par__machine *par__machine_get(void);

/* The file-reading half, for tests: zeroes *out and fills what `root` (a directory standing for
 * "/": it holds sys/devices/system/cpu/cpu0/cache/index* and proc/cpuinfo; "" is the real one)
 * says. Missing files and malformed values (sizes "abc", "0K", over 16 GiB) leave a fact
 * unknown: 0, PAR__FROM_NONE. Reads no CPUID and no affinity. */
void par__machine_read(const char *root, par__machine *out);
/* Measures cma_slowdown on this host (about 0.5 ms; left 0 where the system call is
 * refused) and copy_loop. */
void par__machine_calibrate(par__machine *m);
/* Fills the caches still unknown from CPUID (x86 only; elsewhere nothing). */
void par__machine_cpuid(par__machine *m);
/* The pure half of AMD's older leaves: fills an unknown L1d and L2 from the ECX values of
 * CPUID 0x80000005 and 0x80000006 (never the L3: machine.c says why). */
void par__machine_amd_legacy(par__machine *m, unsigned ecx5, unsigned ecx6);
/* Fills the caches still unknown with the defaults: 32 KiB L1d, 512 KiB L2 per core and
 * 32 MiB L3 shared by 2 CPUs, the machine today's constants were tuned on, so a machine that
 * reports nothing is tuned as before. Sharing counts of 0 become 1, an empty model "unknown". */
void par__machine_defaults(par__machine *m);
/* A size for people: "32K", "2M", or bytes when not a whole KiB. */
void par__fmt_size(char *buf, size_t len, size_t v);
/* One line of facts for the log ("AMD EPYC: L1d 32K (sysfs), ..."). */
void par__machine_describe(const par__machine *m, char *buf, size_t len);

/* The shared-memory backend's sizes (bytes), each derived from the machine by a rule
 * (tune.c says why each holds) unless its PAR_SHM_* variable overrides it. */
typedef struct par__tuning {
  size_t shm_chunk;      /* per member per pipeline round; PAR_SHM_CHUNK */
  size_t small_max;      /* all-reduce/reduce at most this size take one round */
  size_t big_out;        /* outputs from this size are written with par__copy_out */
  size_t cma_reduce_min; /* single-copy all-reduce, whole message: window [min, max] */
  size_t cma_reduce_max;
  size_t cma_move_min; /* single-copy all-gather (per member) and broadcast: from min */
  size_t cma_move_max; /* all-gather per member: up to max */
  size_t cma_bcast_min, cma_bcast_max; /* single-copy broadcast: window [min, max] */
  size_t stream_min;   /* outputs from this size may take non-temporal stores (par__copy_big) */
  size_t l3_read;      /* the L3's size where the machine said it, else 0 (a group's round cap) */
  unsigned from_env;   /* PAR__TUNE_* bits: the value came from its PAR_SHM_* variable */
} par__tuning;

enum {
  PAR__TUNE_CHUNK = 1u << 0,
  PAR__TUNE_SMALL_MAX = 1u << 1,
  PAR__TUNE_BIG_OUT = 1u << 2,
  PAR__TUNE_CMA_REDUCE_MIN = 1u << 3,
  PAR__TUNE_CMA_REDUCE_MAX = 1u << 4,
  PAR__TUNE_CMA_MOVE_MIN = 1u << 5,
  PAR__TUNE_CMA_MOVE_MAX = 1u << 6,
  PAR__TUNE_STREAM_MIN = 1u << 7,
  PAR__TUNE_CMA_BCAST_MIN = 1u << 8,
  PAR__TUNE_CMA_BCAST_MAX = 1u << 9,
};

/* Pure: the sizes for machine m under the overrides in env (env may be NULL: none). On the
 * machine the defaults were tuned on (32K/512K/32M shared by 2) it gives today's constants. */
void par__tune_derive(const par__machine *m, const par__env *env, par__tuning *out);
/* par__tune_derive(par__machine_get(), par__env_get()), computed once; the first call logs
 * the facts and each value with its origin at debug level. Thread-safe; never fails. */
const par__tuning *par__tuning_get(void);
/* Pure: the round size of a group of n members on a host that runs local_ranks ranks of the
 * job on cpus cores: t->shm_chunk, larger where ranks outnumber the cores (tune.c). */
size_t par__tune_group_chunk(const par__tuning *t, int n, int local_ranks, int cpus);
/* One line of values for the log ("chunk 256K (machine), small_max ..."). */
void par__tuning_describe(const par__tuning *t, char *buf, size_t len);

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
/* Monotonic seconds, not earlier than par__now() at the call and at most two clock ticks
 * (a few ms each) later, at a third of its cost: for the start of every op, where a deadline
 * needs no finer grain. */
double par__now_coarse(void);

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

/*
 * par__reduce's result written to each of dst[0..ndst), with non-temporal stores left
 * unfenced when `stream` (the caller calls par__copy_fence before anyone may read them), else
 * with ordinary stores. It reduces and writes a few hundred bytes at a time, so that the loads
 * and the stores overlap in the memory system: for outputs far larger than the caches, where
 * reducing a large block and then copying it out leaves the memory idle in turns. A
 * destination may be a source only at the same elements (in place): each block is read from
 * every source before it is written anywhere.
 */
void par__reduce_to(void *const *dst, int ndst, const void *const *src, int nsrc,
                    size_t count, par_dtype dt, par_op op, int divisor, int stream);

/*
 * memcpy for the data path (staging into the segment, copying out of it, send/recv slots):
 * memcpy itself, except where the destination lies just past the source modulo a page
 * ((dst - src) mod 4096 < 64) and the machine measured the store loop faster there
 * (par__machine.copy_loop). There glibc's `rep movsb` crawls on AMD Zen 3 (Debian 12's glibc
 * 2.36; later glibc avoids it there): 1.7-2.2 GB/s against 27-40 for a cached 64 KiB copy.
 * It is what a malloc'ed buffer (page + 16) gets against the page-aligned segment. On Zen 5
 * memcpy is the faster at every offset. dst and src must not overlap.
 */
void par__copy(void *dst, const void *src, size_t n);
/* memcpy for a destination far larger than the caches (an op's large output): faster there,
 * slower between cached buffers (reduce.c). dst and src must not overlap. */
void par__copy_out(void *dst, const void *src, size_t n);
/* memcpy with non-temporal stores (reduce.c). dst and src must not overlap. */
void par__copy_stream(void *dst, const void *src, size_t n);
/* Copies a piece of an op's large output with whichever of par__copy_out and
 * par__copy_stream this process measured faster on 32 pieces once it had written twice its
 * L3 this way (PAR_SHM_STREAM forces one; reduce.c). dst and src must not overlap.
 * Thread-safe. */
void par__copy_big(void *dst, const void *src, size_t n);
/* How par__copy_big writes: 0 not decided yet (still timing, or not begun), 1 the store
 * loop, 2 non-temporal stores. */
int par__copy_big_choice(void);
/* par__copy_big without the fence that ends a non-temporal copy: for many small pieces in a
 * row, whose writer calls par__copy_fence once before anyone may read them. */
void par__copy_big_unfenced(void *dst, const void *src, size_t n);
/* Orders the non-temporal stores before it before every store after it (sfence on x86). */
void par__copy_fence(void);

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
