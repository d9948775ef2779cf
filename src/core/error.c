/*
 * error.c -- status names and messages (from the one list in par.h) and the thread-local
 * error detail that internal functions fill and the API edge copies into handles.
 */
#include <stdio.h>
#include <string.h>

#include "core/core.h"

static _Thread_local char tls_detail[PAR__ERRLEN];

const char *par_status_name(par_status s) {
  switch (s) {
#define PAR__STATUS_NAME(name, value, msg)                                                     \
  case PAR_##name:                                                                             \
    return "PAR_" #name;
    PAR_STATUS_MAP(PAR__STATUS_NAME)
#undef PAR__STATUS_NAME
  }
  return "PAR_ERR_UNKNOWN";
}

const char *par_status_string(par_status s) {
  switch (s) {
#define PAR__STATUS_MSG(name, value, msg)                                                      \
  case PAR_##name:                                                                             \
    return msg;
    PAR_STATUS_MAP(PAR__STATUS_MSG)
#undef PAR__STATUS_MSG
  }
  return "unknown status";
}

/* "src/coll/api.c" from the compiler's full path of the file, for the debug line. */
static const char *source_path(const char *file) {
  const char *p = file, *hit = NULL;
  while ((p = strstr(p, "/src/")) != NULL) hit = ++p;
  return hit ? hit : file;
}

par_status par__error_at(const char *file, int line, par_status s, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(tls_detail, sizeof tls_detail, fmt, ap);
  va_end(ap);
  PAR__LOG_DEBUG("error %s at %s:%d: %s", par_status_name(s), source_path(file), line,
                 tls_detail);
  return s;
}

const char *par__error_detail(void) { return tls_detail; }

void par__error_clear(void) { tls_detail[0] = '\0'; }


void par__error_store(char *dst, pthread_mutex_t *mu) {
  if (mu) pthread_mutex_lock(mu);
  memcpy(dst, tls_detail, PAR__ERRLEN);
  if (mu) pthread_mutex_unlock(mu);
}

const char *par_last_error(void) { return tls_detail; }
