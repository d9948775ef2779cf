/*
 * fuzz_records.c -- the checks on records that ranks read from the store, written there by
 * another process (src/bootstrap/records.c): the job id, which names shared-memory segments,
 * and a host id. The first input byte picks the output capacity, the rest is the record. An
 * accepted record must come back unchanged, NUL-terminated, within the capacity, and hold no
 * byte the check forbids ('/' in a job id, NUL in either).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "bootstrap/bootstrap.h"
#include "core/core.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1) return 0;
  size_t cap = 1 + data[0] % 200;
  const uint8_t *rec = data + 1;
  size_t n = size - 1;
  char *out = malloc(cap);
  if (!out) return 0;
  if (par__record_job_id("fuzz", rec, n, out, cap) == PAR_OK) {
    if (n == 0 || n >= cap || out[n] != '\0' || memcmp(out, rec, n) != 0) __builtin_trap();
    if (memchr(rec, '/', n) || memchr(rec, '\0', n)) __builtin_trap();
  }
  if (par__record_host_id("fuzz", rec, n, out, cap) == PAR_OK) {
    if (n == 0 || n >= cap || out[n] != '\0' || memcmp(out, rec, n) != 0) __builtin_trap();
    if (strlen(out) != n) __builtin_trap();
  }
  free(out);
  return 0;
}
