/*
 * test_zc_unmap.c -- memory from par_alloc goes back to the system once its owner has freed
 * it, even after peers read it in place.
 *
 * Found by test_soak, whose host's shared memory grew by about 25 MB/s with par_alloc'ed
 * buffers allocated and freed per op: each peer maps another member's buffer the first time a
 * collective reads it and keeps that mapping until the world ends, so a freed buffer's pages
 * stay allocated (its file is unlinked but still mapped) for as long as the job runs. A
 * program that allocates and frees per step holds every buffer it ever had. Checked without
 * the host-wide counters, which other jobs move: the par_alloc files this process still maps
 * after their owners freed them (/proc/self/maps marks them "(deleted)") must not grow with the
 * number of rounds of par_alloc, an all-reduce that reads every member's buffers in place,
 * par_free and a barrier.
 *
 * PAR_TEST_RANKS: 2 3
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"

#define ROUNDS 64
#define COUNT (64 * 1024) /* 256 KiB of f32 per buffer: read in place by every member */

/* Mappings of par_alloc files (named /par-<job>-m<rank>.<id>) that were unlinked. */
static int deleted_par_mappings(size_t *bytes) {
  FILE *f = fopen("/proc/self/maps", "r");
  EXPECT_TRUE(f != NULL, "/proc/self/maps can be read");
  char line[512];
  int n = 0;
  *bytes = 0;
  while (fgets(line, sizeof line, f)) {
    if (!strstr(line, "/par-") || !strstr(line, "(deleted)")) continue;
    const char *m = strrchr(line, '/'), *t = NULL;
    for (const char *q = m ? strstr(m, "-m") : NULL; q; q = strstr(q + 1, "-m")) t = q;
    int owner;
    unsigned id;
    if (!t || sscanf(t, "-m%d.%u", &owner, &id) != 2) continue; /* a group's segment */
    unsigned long lo = 0, hi = 0;
    if (sscanf(line, "%lx-%lx", &lo, &hi) == 2) *bytes += hi - lo;
    n++;
  }
  fclose(f);
  return n;
}

/* Rounds of par_alloc, an all-reduce that reads every member's buffers in place, par_free. */
static void rounds(par_group *g, int first, int count) {
  for (int r = first; r < first + count; r++) {
    h_context("round %d: par_alloc, allreduce reading every member's buffers in place, par_free", r);
    void *in = NULL, *out = NULL;
    CHECK(NULL, par_alloc(h_world, COUNT * sizeof(float), &in));
    CHECK(NULL, par_alloc(h_world, COUNT * sizeof(float), &out));
    float *a = in, *b = out;
    for (int j = 0; j < COUNT; j++) a[j] = (float)(h_rank + j % 5);
    CHECK(g, par_allreduce(g, in, out, COUNT, PAR_F32, PAR_SUM));
    for (int j = 0; j < COUNT; j++) {
      float want = (float)(h_size * (h_size - 1) / 2 + h_size * (j % 5));
      if (b[j] != want) h_fail(__FILE__, __LINE__, "element %d: expected %g, got %g", j, (double)want, (double)b[j]);
    }
    CHECK(NULL, par_free(h_world, in));
    CHECK(NULL, par_free(h_world, out));
    CHECK(g, par_barrier(g)); /* every owner has freed this round's buffers */
  }
}

int main(void) {
  h_init("test_zc_unmap");
  par_group *g = par_world_group(h_world);
  size_t bytes1, bytes2;
  rounds(g, 0, ROUNDS);
  int n1 = deleted_par_mappings(&bytes1);
  rounds(g, ROUNDS, ROUNDS);
  int n2 = deleted_par_mappings(&bytes2);
  /* A bounded cache of peers' buffers is fine; a mapping per buffer ever freed is not: twice
   * the rounds must not leave more of them (one round's worth of slack). */
  h_context("after %d and %d rounds of 2 buffers per member", ROUNDS, 2 * ROUNDS);
  EXPECT_TRUE(n2 <= n1 + 2 * (h_size - 1),
              "mappings of freed par_alloc buffers stop growing: %d (%zu KiB) after %d rounds, %d (%zu KiB) "
              "after %d",
              n1, bytes1 >> 10, ROUNDS, n2, bytes2 >> 10, 2 * ROUNDS);
  CHECK(g, par_barrier(g));
  return h_finish();
}
