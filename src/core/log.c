/*
 * log.c -- the level-gated logger. Lines go to stderr (coloured when it is a TTY) or to the
 * handler the program installed. The library logs nothing to stdout.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "core/core.h"

static par_log_fn log_fn;
static void *log_ctx;
static atomic_int log_level = -1; /* -1: not read from PAR_LOG yet */
static atomic_int log_rank = -1;

static par_log_level level_now(void) {
  int l = atomic_load_explicit(&log_level, memory_order_relaxed);
  if (l < 0) {
    l = (int)par__env_get()->log_level;
    if (!par__env_reading()) atomic_store(&log_level, l);
  }
  return (par_log_level)l;
}

void par_set_log_handler(par_log_fn fn, void *ctx) {
  log_fn = fn;
  log_ctx = ctx;
}

void par_set_log_level(par_log_level level) {
  if (level > PAR_LOG_DEBUG) level = PAR_LOG_DEBUG;
  atomic_store(&log_level, (int)level);
}

par_log_level par_log_level_get(void) { return level_now(); }

void par__log_set_rank(int rank) { atomic_store(&log_rank, rank); }

int par__log_enabled(par_log_level level) { return level != PAR_LOG_OFF && level <= level_now(); }

void par__log(par_log_level level, const char *fmt, ...) {
  static const char *names[] = {"", "error", "warn", "info", "debug"};
  static const char *colours[] = {"", "\033[1;31m", "\033[1;33m", "\033[1;32m", "\033[2m"};
  if (!par__log_enabled(level)) return;

  char msg[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);

  char prefix[32];
  int rank = atomic_load_explicit(&log_rank, memory_order_relaxed);
  if (rank >= 0)
    snprintf(prefix, sizeof prefix, "par[%d]", rank);
  else
    snprintf(prefix, sizeof prefix, "par");

  char line[1100];
  snprintf(line, sizeof line, "%s %s: %s", prefix, names[level], msg);
  if (log_fn) {
    log_fn(level, line, log_ctx);
    return;
  }
  /* One write per line so lines of concurrent ranks do not interleave mid-line. */
  char out[1200];
  int n;
  if (isatty(STDERR_FILENO))
    n = snprintf(out, sizeof out, "%s%s %s:\033[0m %s\n", colours[level], prefix, names[level],
                 msg);
  else
    n = snprintf(out, sizeof out, "%s\n", line);
  if (n > (int)sizeof out - 1) n = (int)sizeof out - 1;
  ssize_t w = write(STDERR_FILENO, out, (size_t)n);
  (void)w;
}
