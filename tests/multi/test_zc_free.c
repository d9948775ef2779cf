/*
 * test_zc_free.c -- a par_alloc'ed buffer may be freed as soon as the op that used it has
 * returned on its owner: no peer may still need it.
 *
 * Found by test_soak: in-place reduce (and in-place allreduce where only some members use
 * par_alloc) of zero-copy size, each member freeing its buffer right after the call. The
 * members publish their buffers, every reader maps every published one, but the op ended
 * without a last synchronisation when no input was to be read in place, so a member could
 * return and free its buffer (unlinking its file) before a slower peer had mapped it: the
 * peer's op failed with PAR_ERR_SYSTEM "cannot map rank R's buffer". Results are checked too.
 *
 * PAR_TEST_RANKS: 2 3 5
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"

#define ITERS 400
#define COUNT 4619 /* 36952 bytes of f64: above the zero-copy minimum, one round */

/* kind 0: reduce to a rotating root; 1: allreduce. zc_mode 0: every member par_alloc's,
 * 1: even ranks only. */
static void run(int kind, int zc_mode) {
  par_group *g = par_world_group(h_world);
  int zc = zc_mode == 0 || h_rank % 2 == 0;
  for (int it = 0; it < ITERS; it++) {
    int root = it % h_size;
    h_context("%s in place, %s buffers freed on return, iteration %d (root %d)",
              kind ? "allreduce" : "reduce", zc_mode ? "even ranks' par_alloc'ed" : "par_alloc'ed",
              it, root);
    void *p = NULL;
    if (zc)
      CHECK(NULL, par_alloc(h_world, COUNT * sizeof(double), &p));
    else
      p = malloc(COUNT * sizeof(double));
    double *b = p;
    EXPECT_TRUE(b != NULL, "a buffer of %d doubles", COUNT);
    for (int j = 0; j < COUNT; j++) b[j] = (double)(h_rank + 1) * 0.5 + j;
    if (kind)
      CHECK(g, par_allreduce(g, b, b, COUNT, PAR_F64, PAR_SUM));
    else
      CHECK(g, par_reduce(g, b, b, COUNT, PAR_F64, PAR_SUM, root));
    if (kind || h_rank == root) {
      /* Sum over ranks r of (r+1)/2 + j, added in rank order: exact in f64 for these sizes. */
      double base = 0.0;
      for (int r = 0; r < h_size; r++) base += (double)(r + 1) * 0.5;
      for (int j = 0; j < COUNT; j++) {
        double want = base + (double)h_size * j;
        if (b[j] != want) h_fail(__FILE__, __LINE__, "element %d: expected %.17g, got %.17g", j, want, b[j]);
      }
    }
    if (zc)
      CHECK(NULL, par_free(h_world, b));
    else
      free(b);
  }
}

int main(void) {
  h_init("test_zc_free");
  for (int kind = 0; kind < 2; kind++)
    for (int zc_mode = 0; zc_mode < 2; zc_mode++) run(kind, zc_mode);
  h_context("final barrier");
  CHECK(par_world_group(h_world), par_barrier(par_world_group(h_world)));
  return h_finish();
}
