/*
 * test_zerocopy.c -- collectives on par_alloc'ed buffers (read in place by peers) give the
 * same results as on ordinary memory: every member zero-copy, some members zero-copy (the
 * others use malloc), in place and out of place, small and multi-round sizes.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"

static int failures;

/* Counts a mismatch, printing the first of each check. */
static int expect_eq(const char *what, const char *op, size_t i, float want, float got) {
  if (want == got) return 0;
  fprintf(stderr, "[rank %d] FAIL %s %s: element %zu expected %g, got %g\n", h_rank, op, what, i,
          (double)want, (double)got);
  failures++;
  return 1;
}

static void *buffer(int zc, size_t bytes) {
  void *p = NULL;
  if (zc) {
    par_status s = par_alloc(h_world, bytes, &p);
    if (s != PAR_OK) {
      fprintf(stderr, "[rank %d] par_alloc: %s\n", h_rank, par_last_error());
      exit(1);
    }
  } else {
    p = malloc(bytes);
  }
  return p;
}

static void release(int zc, void *p) {
  if (zc)
    par_free(h_world, p);
  else
    free(p);
}

static float input(int r, size_t i) { return (float)(r + 1) + (float)(i % 7); }

/* mode 0: nobody zero-copy, 1: everyone, 2: even ranks only. inplace 0: nobody, 1: everyone,
 * 2: odd ranks only (members that read and write each other's buffers, some of them in place). */
static void run(int mode, size_t count, int inplace) {
  int zc = mode == 1 || (mode == 2 && h_rank % 2 == 0), n = h_size;
  char what[96];
  snprintf(what, sizeof what, "mode %d count %zu %s", mode, count,
           inplace == 2 ? "in place on odd ranks" : inplace ? "in place" : "out of place");
  if (inplace == 2) inplace = h_rank % 2;
  par_group *g = par_world_group(h_world);

  /* allreduce */
  float *a = buffer(zc, count * sizeof(float)), *b = inplace ? a : buffer(zc, count * 4);
  for (size_t i = 0; i < count; i++) a[i] = input(h_rank, i);
  CHECK(g, par_allreduce(g, a, b, count, PAR_F32, PAR_SUM));
  for (size_t i = 0; i < count; i++)
    if (expect_eq(what, "allreduce", i, (float)(n * (n + 1) / 2) + (float)(n * (int)(i % 7)), b[i]))
      break;
  /* reduce to the last member */
  for (size_t i = 0; i < count; i++) a[i] = input(h_rank, i);
  CHECK(g, par_reduce(g, a, b, count, PAR_F32, PAR_MAX, n - 1));
  if (h_rank == n - 1)
    for (size_t i = 0; i < count; i++)
      if (expect_eq(what, "reduce", i, input(n - 1, i), b[i])) break;
  if (!inplace) release(zc, b);

  /* broadcast from member 0 */
  for (size_t i = 0; i < count; i++) a[i] = h_rank == 0 ? input(7, i) : -1.0f;
  CHECK(g, par_broadcast(g, a, count, PAR_F32, 0));
  for (size_t i = 0; i < count; i++)
    if (expect_eq(what, "broadcast", i, input(7, i), a[i])) break;
  /* allgather, in place when asked (input at the member's own block) */
  {
    float *all = buffer(zc, count * (size_t)n * sizeof(float));
    float *src = inplace ? all + (size_t)h_rank * count : a;
    for (size_t i = 0; i < count; i++) src[i] = input(h_rank, i);
    CHECK(g, par_allgather(g, src, all, count, PAR_F32));
    for (int r = 0; r < n; r++)
      for (size_t i = 0; i < count; i++)
        if (expect_eq(what, "allgather", i, input(r, i), all[(size_t)r * count + i])) break;
    release(zc, all);
  }
  release(zc, a);
}

int main(void) {
  h_init("test_zerocopy");
  size_t counts[] = {1, 1000, 3 * 65536 + 17, (1u << 20) + 5}; /* the last: outputs >= 4 MiB */
  for (int mode = 0; mode < 3; mode++)
    for (size_t c = 0; c < sizeof counts / sizeof counts[0]; c++)
      for (int inplace = 0; inplace < 3; inplace++) run(mode, counts[c], inplace);
  /* The group still works with ordinary memory afterwards. */
  run(0, 5, 0);
  if (failures) {
    fprintf(stderr, "[rank %d] test_zerocopy: %d failure(s)\n", h_rank, failures);
    return 1;
  }
  return h_finish();
}
