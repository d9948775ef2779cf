/*
 * records.c -- checks on the small records ranks read from the rendezvous store that
 * another process wrote: the job id (it becomes part of shared-memory names, so it must be a
 * short run of safe characters) and a host id (compared as a string, so no embedded NUL, and
 * printed in messages, so printable). A record that fails is an error naming the key, never
 * a truncated or mangled value used anyway. tests/fuzz/fuzz_records.c feeds these bytes.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bootstrap/bootstrap.h"
#include "core/core.h"

static int job_id_char(unsigned char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
         c == '.' || c == '-';
}

static int host_id_char(unsigned char c) { return c >= 0x20 && c != 0x7f; }

/* Copies a record of 1 to cap-1 bytes, each of which `ok` accepts (`allowed` says which). */
static par_status record(const char *what, const char *kind, int (*ok)(unsigned char),
                         const char *allowed, const void *buf, size_t len, char *out, size_t cap) {
  const unsigned char *p = buf;
  PAR_RETURN_ERROR_IF(len == 0 || len >= cap, PAR_ERR_PROTOCOL,
                      "%s: a %s of %zu bytes (want 1..%zu)", what, kind, len, cap - 1);
  for (size_t i = 0; i < len; i++)
    PAR_RETURN_ERROR_IF(!ok(p[i]), PAR_ERR_PROTOCOL, "%s: byte %zu of the %s (0x%02x) is not %s",
                        what, i, kind, p[i], allowed);
  memcpy(out, p, len);
  out[len] = '\0';
  return PAR_OK;
}

par_status par__record_job_id(const char *what, const void *buf, size_t len, char *out,
                              size_t cap) {
  return record(what, "job id", job_id_char, "a letter, digit, '_', '.' or '-'", buf, len, out,
                cap);
}

par_status par__record_host_id(const char *what, const void *buf, size_t len, char *out,
                               size_t cap) {
  return record(what, "host id", host_id_char, "printable", buf, len, out, cap);
}

par_status par__job_id_compose(char *out, size_t cap) {
  const char *env = getenv("PAR_JOB_ID");
  char prefix[64] = "";
  size_t room = cap > 9 ? cap - 9 : 1; /* "-" and 8 digits follow the prefix */
  if (env && *env)
    PAR_FORWARD_IF_ERROR(par__record_job_id("PAR_JOB_ID", env, strlen(env), prefix,
                                            room < sizeof prefix ? room : sizeof prefix));
  char rnd[9];
  par__random_hex(rnd, 8);
  snprintf(out, cap, "%s%s%s", prefix, *prefix ? "-" : "", rnd);
  return PAR_OK;
}
