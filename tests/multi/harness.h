/*
 * harness.h -- shared support for the multi-rank tests in tests/multi/.
 *
 * Every test program runs as N ranks under parrun. The harness creates the world, gives
 * assertions that name the rank, file:line, the current test case and the library's last
 * error, and exits the rank with status 1 on the first failure (parrun then stops the job).
 *
 * The oracle is written here from scratch: deterministic inputs per (global rank, element
 * index, dtype, generator, salt), our own f16/bf16 conversions, and a naive reducer that
 * combines contributions in group-index order exactly as par.h promises (f16/bf16 accumulate
 * in f32 and round once, integers wrap, avg = sum / n with truncation for integers). It never
 * calls the library's internal kernels, so a bug there cannot hide in the reference.
 *
 * On top of that, h_case_* runs one collective (blocking or async) with guard bytes around
 * every buffer and checks the result bit for bit, so test_coll, test_async and test_groups
 * share one checker.
 */
#ifndef PAR_TEST_HARNESS_H
#define PAR_TEST_HARNESS_H

#include <stddef.h>
#include <stdint.h>

#include "par.h"

/* ---------------------------------------------------------------------------------------- */
/* Setup and failure reporting                                                              */
/* ---------------------------------------------------------------------------------------- */

extern par_world *h_world; /* this process's world */
extern int h_rank;         /* global rank */
extern int h_size;         /* world size */

/* Creates the world with par_world_create(NULL, ...) and sets the world group's timeout to
 * H_OP_TIMEOUT unless PAR_TIMEOUT is set. Exits the rank on failure. */
void h_init(const char *test_name);
/* Destroys the world; rank 0 prints a summary line. Returns the exit status (0). */
int h_finish(void);

/* Per-op timeout the tests use, so a library hang fails with a message, not parrun's kill. */
#define H_OP_TIMEOUT 120.0

/* Sets the description of the current test case, printed with every failure. */
void h_context(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
const char *h_context_get(void);

/* Prints "[rank R] FAIL file:line: message", the context, and exits(1). */
void h_fail(const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4), noreturn));
/* Counts one passed assertion (for the summary). */
void h_pass(void);

void h_fail_call(const char *file, int line, const char *expr, par_status s,
                 const par_group *g, const par_work *w) __attribute__((noreturn));

/* CHECK(g, call): the call must return PAR_OK; else prints its status name and the last error
 * of group g (may be NULL) and of the world. */
#define CHECK(g, expr)                                                                         \
  do {                                                                                         \
    par_status h_s_ = (expr);                                                                  \
    if (h_s_ != PAR_OK) h_fail_call(__FILE__, __LINE__, #expr, h_s_, (g), NULL);             \
    h_pass();                                                                                  \
  } while (0)

/* CHECK_WORK(g, w, timeout): waits for work w, which must complete with PAR_OK. */
#define CHECK_WORK(g, w, timeout)                                                              \
  do {                                                                                         \
    par_status h_s_ = par_work_wait((w), (timeout));                                           \
    if (h_s_ != PAR_OK) h_fail_call(__FILE__, __LINE__, "par_work_wait(" #w ")", h_s_, (g), (w)); \
    h_pass();                                                                                  \
  } while (0)

/* EXPECT_STATUS(expected, call): the call must return exactly `expected`. */
#define EXPECT_STATUS(expected, expr)                                                          \
  do {                                                                                         \
    par_status h_e_ = (expected), h_a_ = (expr);                                               \
    if (h_e_ != h_a_)                                                                          \
      h_fail(__FILE__, __LINE__, "%s: expected %s, got %s", #expr, par_status_name(h_e_),      \
             par_status_name(h_a_));                                                           \
    h_pass();                                                                                  \
  } while (0)

#define EXPECT_INT(expected, actual)                                                           \
  do {                                                                                         \
    long long h_e_ = (long long)(expected), h_a_ = (long long)(actual);                        \
    if (h_e_ != h_a_)                                                                          \
      h_fail(__FILE__, __LINE__, "%s: expected %lld, got %lld", #actual, h_e_, h_a_);          \
    h_pass();                                                                                  \
  } while (0)

/* EXPECT_TRUE(cond, "what was expected", ...) */
#define EXPECT_TRUE(cond, ...)                                                                 \
  do {                                                                                         \
    if (!(cond)) h_fail(__FILE__, __LINE__, __VA_ARGS__);                                      \
    h_pass();                                                                                  \
  } while (0)

/* The string must be non-NULL, non-empty and contain every non-NULL needle (case-sensitive). */
#define EXPECT_MSG(msg, ...) h_expect_msg(__FILE__, __LINE__, #msg, (msg), __VA_ARGS__, (const char *)NULL)
void h_expect_msg(const char *file, int line, const char *what, const char *msg, ...);

/* ---------------------------------------------------------------------------------------- */
/* Guarded buffers                                                                          */
/* ---------------------------------------------------------------------------------------- */

/* Returns `bytes` of memory whose start is `misalign` bytes past a 64-byte boundary, with
 * guard bytes before and after it. The data is filled with H_SENTINEL. Never NULL. */
void *h_alloc(size_t bytes, size_t misalign);
/* Fails the rank if a guard byte of p was changed; `what` names the buffer. */
void h_check_guards(const void *p, const char *file, int line, const char *what);
void h_free(void *p);
/* Checks that `bytes` bytes at p all still hold H_SENTINEL. */
void h_check_sentinel(const void *p, size_t bytes, const char *file, int line, const char *what);

#define H_SENTINEL 0xEE

/* ---------------------------------------------------------------------------------------- */
/* Inputs, conversions, reference                                                           */
/* ---------------------------------------------------------------------------------------- */

typedef enum h_gen {
  H_GEN_SMALL, /* integers in [-8, 8] ([0, 15] for u8): exact in every dtype */
  H_GEN_TINY,  /* integers in [-2, 2] ([0, 3] for u8): products stay meaningful */
  H_GEN_WIDE,  /* floats: non-integers with full mantissas in +-[1/16, 16]; ints: all bits */
  H_GEN_BITS,  /* random bytes (NaN patterns included): only for ops that move data */
  H_GEN_COUNT
} h_gen;

const char *h_gen_name(h_gen g);

/* Writes elements [first, first+count) of the input of global rank `who`. */
void h_fill(void *buf, size_t count, par_dtype dt, h_gen gen, int who, size_t first,
            uint32_t salt);

float h_f16_to_f32(uint16_t h);
uint16_t h_f32_to_f16(float f);
float h_bf16_to_f32(uint16_t h);
uint16_t h_f32_to_bf16(float f);

/* dst[j] = in(who[0])[first+j] op in(who[1])[first+j] op ... op in(who[n-1])[first+j], in
 * that order, with par.h's rules per dtype. */
void h_ref_reduce(void *dst, size_t count, par_dtype dt, par_op op, h_gen gen,
                  const int *who, int n, size_t first, uint32_t salt);

/* Compares count elements bit for bit; on a difference prints the first few elements that
 * differ (decoded and in hex) and how many differ, then fails. */
void h_expect_elems(const char *file, int line, const char *what, par_dtype dt,
                    const void *expected, const void *actual, size_t count);
#define EXPECT_ELEMS(what, dt, expected, actual, count)                                        \
  h_expect_elems(__FILE__, __LINE__, (what), (dt), (expected), (actual), (count))

/* 64-bit FNV-1a of bytes, for cross-rank determinism checks. */
uint64_t h_hash_bytes(const void *p, size_t bytes);

/* ---------------------------------------------------------------------------------------- */
/* One collective, checked                                                                  */
/* ---------------------------------------------------------------------------------------- */

typedef enum h_coll {
  H_ALLREDUCE,
  H_ALLGATHER,
  H_REDUCE_SCATTER,
  H_BROADCAST,
  H_REDUCE,
  H_ALLTOALL,
  H_COLL_COUNT
} h_coll;

const char *h_coll_name(h_coll c);
/* 1 if the collective takes a reduction op. */
int h_coll_reduces(h_coll c);

typedef enum h_mode {
  H_BLOCKING,   /* the blocking call */
  H_ASYNC_WAIT, /* _async, then par_work_wait(-1) */
  H_ASYNC_POLL  /* _async, then par_work_test until done (sleeping between tests) */
} h_mode;

typedef struct h_case {
  h_coll coll;
  par_dtype dt;
  par_op op;       /* reductions only */
  size_t count;    /* as passed to the call */
  int root;        /* broadcast/reduce: group index */
  int inplace;     /* use the call's documented in-place form */
  h_gen gen;
  size_t misalign; /* byte offset of every buffer from 64-byte alignment */
  uint32_t salt;   /* varies the data; must be equal on every member */
} h_case;

typedef struct h_pending h_pending;

/* Allocates and fills the buffers, then issues the op. For async modes the op is left in
 * flight; h_case_finish completes and checks it. */
h_pending *h_case_post(par_group *g, const h_case *c, h_mode mode);
/* The work handle of an async case (NULL for blocking). */
par_work *h_case_work(h_pending *p);
/* Completes (async), checks result bits, guards, untouched inputs; frees everything. */
void h_case_finish(h_pending *p);
/* post + finish. */
void h_case_run(par_group *g, const h_case *c, h_mode mode);
/* Describes a case into buf ("allreduce f32 sum count=7 ..."). */
const char *h_case_str(const h_case *c, char *buf, size_t cap);

/* Creates a group from `ranks` with the tests' timeout and the given name; fails the rank on
 * error. */
par_group *h_group_create(const int *ranks, int n, const char *name);

/* Sleeps for `s` seconds (nanosleep). */
void h_sleep(double s);
/* Monotonic seconds (same clock on every rank of the host). */
double h_now(void);

#endif /* PAR_TEST_HARNESS_H */
