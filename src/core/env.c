/*
 * env.c -- every PAR_* environment variable is read here, once (docs/env.md lists them).
 * A malformed value falls back to the default with a warning: the environment is advice and
 * must never stop a job that has valid code-level options.
 */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "core/core.h"

static par__env env;
static pthread_once_t env_once = PTHREAD_ONCE_INIT;
static char env_warnings[12][160];
static int env_nwarnings;

static void warn_later(const char *name, const char *value) {
  /* The logger's level itself comes from here, so warnings are queued until parsing ends. */
  if (env_nwarnings < (int)(sizeof env_warnings / sizeof env_warnings[0]))
    snprintf(env_warnings[env_nwarnings++], sizeof env_warnings[0],
             "ignoring %s=%.60s: not a valid value", name, value);
}

static _Thread_local int reading; /* env_read's own calls (parsers log errors) see defaults */

int par__parse_size(const char *v, size_t min, size_t max, size_t *out) {
  if (!v || *v < '0' || *v > '9') return -1; /* strtoull would take "-1", " 1" and "+1" */
  char *end;
  errno = 0;
  unsigned long long c = strtoull(v, &end, 10);
  if (errno == ERANGE) return -1; /* strtoull saturates: "99999999999999999999" is not 2^64-1 */
  unsigned shift = 0;
  if (*end == 'K' || *end == 'k')
    shift = 10, end++;
  else if (*end == 'M' || *end == 'm')
    shift = 20, end++;
  if (*end != '\0' || c > (SIZE_MAX >> shift)) return -1; /* garbage after, or overflow */
  c <<= shift;
  if (c < min || c > max) return -1;
  *out = (size_t)c;
  return 0;
}

/* A threshold variable: 0 or unset means "derived from the machine" (par__tuning). */
static void read_threshold(const char *name, size_t *field) {
  /* As large as any buffer can be: a threshold above every size turns a path off. */
  const size_t most = SIZE_MAX > (1ull << 40) ? (size_t)(1ull << 40) : (size_t)1 << 30;
  const char *v = getenv(name);
  if (v && *v && par__parse_size(v, 0, most, field) < 0) warn_later(name, v);
}

/* 0, 1 or auto (-1) */
static void read_switch(const char *name, int *out) {
  const char *v = getenv(name);
  if (!v || !*v) return;
  if (!strcmp(v, "0") || !strcmp(v, "1"))
    *out = v[0] == '1';
  else if (!strcasecmp(v, "auto"))
    *out = -1;
  else
    warn_later(name, v);
}

static void env_read(void) {
  reading = 1;
  env.log_level = PAR_LOG_INFO;
  env.timeout_s = 300.0;
  env.backend = PAR_BACKEND_AUTO;
  env.check = 0;
  env.shm_chunk = 0; /* 0: the backend's default */
  env.spin = -1;
  env.shm_cma = -1;
  env.shm_stream = -1;
  env.shm_stage_stream = -1;
  env.shm_copy_loop = -1;
  env.cpus = 0; /* the PAR_SHM_* sizes start at 0 (derived) with the rest of the static */

  const char *v;
  if ((v = getenv("PAR_LOG")) && *v) {
    static const char *levels[] = {"off", "error", "warn", "info", "debug"};
    int found = 0;
    for (int i = 0; i < 5; i++)
      if (!strcasecmp(v, levels[i])) env.log_level = (par_log_level)i, found = 1;
    if (!found && !strcasecmp(v, "warning")) env.log_level = PAR_LOG_WARN, found = 1;
    if (!found) warn_later("PAR_LOG", v);
  }
  if ((v = getenv("PAR_TIMEOUT")) && *v) {
    char *end;
    double t = strtod(v, &end);
    if (*end == '\0' && t > 0)
      env.timeout_s = t;
    else
      warn_later("PAR_TIMEOUT", v);
  }
  if ((v = getenv("PAR_BACKEND")) && *v) {
    par_backend b;
    if (par_backend_parse(v, &b) == PAR_OK)
      env.backend = b;
    else
      warn_later("PAR_BACKEND", v);
  }
  if ((v = getenv("PAR_CHECK")) && *v) {
    static const char *yes[] = {"1", "true", "yes", "on"}, *no[] = {"0", "false", "no", "off"};
    int found = 0;
    for (int i = 0; i < 4; i++) {
      if (!strcasecmp(v, yes[i])) env.check = 1, found = 1;
      if (!strcasecmp(v, no[i])) env.check = 0, found = 1;
    }
    if (!found) warn_later("PAR_CHECK", v);
  }
  if ((v = getenv("PAR_SHM_CHUNK")) && *v) {
    size_t c = 0; /* 0: derived, like the other sizes; else 4K to 64M */
    if (par__parse_size(v, 0, (size_t)64 << 20, &c) == 0 && (c == 0 || c >= 4096))
      env.shm_chunk = c;
    else
      warn_later("PAR_SHM_CHUNK", v);
  }
  read_threshold("PAR_SHM_SMALL_MAX", &env.shm_small_max);
  read_threshold("PAR_SHM_BIG_OUT", &env.shm_big_out);
  read_threshold("PAR_SHM_CMA_REDUCE_MIN", &env.shm_cma_reduce_min);
  read_threshold("PAR_SHM_CMA_REDUCE_MAX", &env.shm_cma_reduce_max);
  read_threshold("PAR_SHM_CMA_MOVE_MIN", &env.shm_cma_move_min);
  read_threshold("PAR_SHM_CMA_MOVE_MAX", &env.shm_cma_move_max);
  read_threshold("PAR_SHM_STREAM_MIN", &env.shm_stream_min);
  read_threshold("PAR_SHM_CMA_BCAST_MIN", &env.shm_cma_bcast_min);
  read_threshold("PAR_SHM_CMA_BCAST_MAX", &env.shm_cma_bcast_max);
  if ((v = getenv("PAR_SPIN")) && *v) {
    char *end;
    long s = strtol(v, &end, 10);
    if (*end == '\0' && s >= 0)
      env.spin = (int)s;
    else
      warn_later("PAR_SPIN", v);
  }
  read_switch("PAR_SHM_CMA", &env.shm_cma);
  read_switch("PAR_SHM_STREAM", &env.shm_stream);
  read_switch("PAR_SHM_STAGE_STREAM", &env.shm_stage_stream);
  read_switch("PAR_SHM_COPY_LOOP", &env.shm_copy_loop);
  if ((v = getenv("PAR_CPUS")) && *v) {
    char *end;
    long c = strtol(v, &end, 10);
    if (*end == '\0' && c >= 0 && c <= 1 << 20)
      env.cpus = (int)c;
    else
      warn_later("PAR_CPUS", v);
  }
  reading = 0;
}

int par__env_reading(void) { return reading; }

const par__env *par__env_get(void) {
  static const par__env defaults = {.log_level = PAR_LOG_INFO,
                                    .timeout_s = 300.0,
                                    .backend = PAR_BACKEND_AUTO,
                                    .spin = -1,
                                    .shm_cma = -1,
                                    .shm_stream = -1,
                                    .shm_stage_stream = -1,
                                    .shm_copy_loop = -1};
  if (reading) return &defaults;
  pthread_once(&env_once, env_read);
  /* Logged after the once-block: par__log reads the level through this function. */
  static int warned;
  if (env_nwarnings && !__atomic_exchange_n(&warned, 1, __ATOMIC_ACQ_REL))
    for (int i = 0; i < env_nwarnings; i++) par__log(PAR_LOG_WARN, "%s", env_warnings[i]);
  return &env;
}

int par__job_cpus(void) {
  long ncpu = par__env_get()->cpus; /* from parrun: what the job may use */
  /* Not this process's affinity: a launcher that pins each rank to one CPU (mpirun's
   * binding) would make every job look oversubscribed. */
  if (ncpu <= 0) ncpu = sysconf(_SC_NPROCESSORS_ONLN);
  return ncpu > 0 ? (int)(ncpu < (1 << 20) ? ncpu : 1 << 20) : 1;
}

int par__oversubscribed(int local_size) { return local_size > par__job_cpus(); }

double par__now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* The coarse clock is the fine one as of a recent tick: it lags by up to a tick and a half
 * (measured on a 4 ms tick: 5.5 ms), so two ticks added keep it from being early. Where it is
 * missing, the fine clock serves. */
double par__now_coarse(void) {
  static _Atomic long tick_ns = -1; /* its resolution, read once; 0: not there */
  long tick = atomic_load_explicit(&tick_ns, memory_order_relaxed);
  struct timespec ts;
  if (tick < 0) {
    tick = clock_getres(CLOCK_MONOTONIC_COARSE, &ts) == 0 && ts.tv_sec == 0 ? ts.tv_nsec : 0;
    atomic_store_explicit(&tick_ns, tick, memory_order_relaxed);
  }
  if (tick == 0 || clock_gettime(CLOCK_MONOTONIC_COARSE, &ts) != 0) return par__now();
  return (double)ts.tv_sec + (double)(ts.tv_nsec + 2 * tick) * 1e-9;
}
