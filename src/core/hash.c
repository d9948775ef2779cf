/*
 * hash.c -- the small identifiers par makes: FNV-1a hashes (names that every member derives
 * alike, such as a group's uid from its member list) and random hex strings (job ids and
 * tokens that must differ between jobs). One home for both, so that every caller hashes and
 * draws the same way.
 */
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

#include "core/core.h"

uint64_t par__fnv1a(const void *p, size_t n, uint64_t h) {
  const unsigned char *c = p;
  for (size_t i = 0; i < n; i++) h = (h ^ c[i]) * 1099511628211ull;
  return h;
}

void par__random_hex(char *out, int nhex) {
  unsigned char b[32] = {0};
  if (nhex > 64) nhex = 64;
  size_t need = ((size_t)nhex + 1) / 2;
  /* getrandom blocks only before the kernel's pool is first seeded, long before any job. */
  if (getrandom(b, need, 0) != (ssize_t)need) {
    uint64_t x = (uint64_t)getpid() ^ (uint64_t)(par__now() * 1e9);
    for (size_t i = 0; i < need; i++) b[i] ^= (unsigned char)(par__fnv1a(&x, sizeof x, PAR__FNV_OFFSET + i) >> 8);
  }
  for (int i = 0; i < nhex; i++) out[i] = "0123456789abcdef"[(b[i / 2] >> (i % 2 ? 0 : 4)) & 15];
  out[nhex] = '\0';
}
