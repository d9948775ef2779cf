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

par_status par__error(par_status s, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(tls_detail, sizeof tls_detail, fmt, ap);
  va_end(ap);
  PAR__LOG_DEBUG("error %s: %s", par_status_name(s), tls_detail);
  return s;
}

const char *par__error_detail(void) { return tls_detail; }

void par__error_clear(void) { tls_detail[0] = '\0'; }

void par__error_copy(char *dst) { memcpy(dst, tls_detail, PAR__ERRLEN); }

const char *par_last_error(void) { return tls_detail; }
