/*
 * test_groups.c -- groups that are subsets or reorderings of the world.
 *
 * Even ranks, odd ranks, single ranks, the world reversed (a member's index follows the list,
 * not its global rank), a rotation, the world minus rank 0, several groups with the same list
 * created one after the other, and create/destroy cycles. Only members call
 * par_group_create. For each group: size, index, global ranks and name, then collectives
 * checked bit for bit against the reference, whose reduction order is the group's index order.
 *
 * PAR_TEST_RANKS: 1 2 3 5 8
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"

/* Each test function resets the salt: ranks in different groups run different numbers of
 * cases, and the salt must agree among the members of the next group. */
static uint32_t salt;

static int position(const int *list, int n, int r) {
  for (int i = 0; i < n; i++)
    if (list[i] == r) return i;
  return -1;
}

/* Size, index, global ranks and name of g match the list it was created from. */
static void check_shape(par_group *g, const int *list, int n, const char *name) {
  h_context("shape of group '%s' (n=%d)", name, n);
  EXPECT_INT(n, par_group_size(g));
  EXPECT_INT(position(list, n, h_rank), par_group_index(g));
  const int *ranks = par_group_ranks(g);
  EXPECT_TRUE(ranks != NULL, "par_group_ranks is not NULL");
  for (int i = 0; i < n; i++) {
    EXPECT_INT(list[i], par_group_global_rank(g, i));
    EXPECT_INT(list[i], ranks[i]);
  }
  EXPECT_INT(-1, par_group_global_rank(g, -1));
  EXPECT_INT(-1, par_group_global_rank(g, n));
  const char *gn = par_group_name(g);
  EXPECT_TRUE(gn && strcmp(gn, name) == 0, "group name is \"%s\", got \"%s\"", name, gn ? gn : "(null)");
  EXPECT_TRUE(par_backend_name(par_group_backend(g)) != NULL, "group backend %d has a name",
              (int)par_group_backend(g));
}

/* A set of collectives on g: order-sensitive float reductions, data movement, every root. */
static void exercise(par_group *g, int light) {
  int n = par_group_size(g);
  const h_case cases[] = {
      {H_ALLREDUCE, PAR_F32, PAR_SUM, 1000, 0, 0, H_GEN_WIDE, 0, 0},
      {H_ALLREDUCE, PAR_F16, PAR_AVG, 777, 0, 1, H_GEN_WIDE, 0, 0},
      {H_ALLREDUCE, PAR_I8, PAR_PROD, 100, 0, 0, H_GEN_WIDE, 0, 0},
      {H_ALLGATHER, PAR_I32, PAR_SUM, 257, 0, 1, H_GEN_BITS, 0, 0},
      {H_REDUCE_SCATTER, PAR_BF16, PAR_SUM, 301, 0, 0, H_GEN_WIDE, 0, 0},
      {H_ALLTOALL, PAR_F64, PAR_SUM, 33, 0, 0, H_GEN_BITS, 0, 0},
      {H_ALLREDUCE, PAR_F64, PAR_SUM, (1u << 18) + 1, 0, 0, H_GEN_WIDE, 0, 0}, /* 2 MiB */
  };
  size_t ncases = sizeof cases / sizeof cases[0] - (light ? 1 : 0);
  for (size_t i = 0; i < ncases; i++) {
    h_case c = cases[i];
    c.salt = salt++;
    h_case_run(g, &c, H_BLOCKING);
  }
  for (int root = 0; root < n; root++) {
    h_case b = {H_BROADCAST, PAR_U8, PAR_SUM, 129, root, 1, H_GEN_BITS, 0, salt++};
    h_case_run(g, &b, H_BLOCKING);
    h_case r = {H_REDUCE, PAR_F32, PAR_SUM, 100, root, root & 1, H_GEN_WIDE, 0, salt++};
    h_case_run(g, &r, H_BLOCKING);
  }
  h_context("barrier on group '%s'", par_group_name(g));
  CHECK(g, par_barrier(g));
}

static void test_world_group(void) {
  par_group *w = par_world_group(h_world);
  int *list = malloc(sizeof(int) * (size_t)h_size);
  for (int i = 0; i < h_size; i++) list[i] = i;
  EXPECT_TRUE(par_group_name(w) != NULL, "the world group has a name");
  check_shape(w, list, h_size, par_group_name(w));
  EXPECT_INT(h_rank, par_world_rank(h_world));
  EXPECT_INT(h_size, par_world_size(h_world));
  free(list);
}

/* Evens and odds at the same time (disjoint groups working concurrently). */
static void test_parity(void) {
  salt = 10000;
  int *list = malloc(sizeof(int) * (size_t)h_size), n = 0;
  for (int r = h_rank % 2; r < h_size; r += 2) list[n++] = r;
  const char *name = h_rank % 2 ? "odds" : "evens";
  par_group *g = h_group_create(list, n, name);
  check_shape(g, list, n, name);
  exercise(g, 0);
  par_group_destroy(g);
  free(list);
}

/* A group of one: every rank makes its own; and a group of only the last rank. */
static void test_single(void) {
  salt = 20000;
  par_group *g = h_group_create(&h_rank, 1, "self");
  check_shape(g, &h_rank, 1, "self");
  exercise(g, 1);
  par_group_destroy(g);
  int last = h_size - 1;
  if (h_rank == last) {
    par_group *gl = h_group_create(&last, 1, "last-only");
    check_shape(gl, &last, 1, "last-only");
    exercise(gl, 1);
    par_group_destroy(gl);
  }
}

/* The index follows the list: reversed and rotated orders of the whole world. */
static void test_orders(void) {
  salt = 30000;
  int *rev = malloc(sizeof(int) * (size_t)h_size), *rot = malloc(sizeof(int) * (size_t)h_size);
  for (int i = 0; i < h_size; i++) {
    rev[i] = h_size - 1 - i;
    rot[i] = (i + 1) % h_size;
  }
  par_group *gr = h_group_create(rev, h_size, "reversed");
  check_shape(gr, rev, h_size, "reversed");
  exercise(gr, 0);
  par_group *go = h_group_create(rot, h_size, "rotated");
  check_shape(go, rot, h_size, "rotated");
  exercise(go, 1);
  par_group_destroy(gr);
  par_group_destroy(go);
  free(rev);
  free(rot);
}

/* The world minus rank 0: rank 0 does not call par_group_create at all. */
static void test_minus_zero(void) {
  salt = 40000;
  if (h_size < 2) return;
  int *list = malloc(sizeof(int) * (size_t)(h_size - 1));
  for (int i = 1; i < h_size; i++) list[i - 1] = i;
  if (h_rank != 0) {
    par_group *g = h_group_create(list, h_size - 1, "minus0");
    check_shape(g, list, h_size - 1, "minus0");
    exercise(g, 0);
    par_group_destroy(g);
  }
  free(list);
  h_context("world barrier after minus0");
  CHECK(par_world_group(h_world), par_barrier(par_world_group(h_world)));
}

/* Three groups with the same (reversed) list, created in sequence, used interleaved: each must
 * be its own channel. Then create/destroy cycles of a group, and a group with default options. */
static void test_same_list(void) {
  salt = 50000;
  int *rev = malloc(sizeof(int) * (size_t)h_size);
  for (int i = 0; i < h_size; i++) rev[i] = h_size - 1 - i;
  par_group *g[3];
  char names[3][16];
  for (int k = 0; k < 3; k++) {
    snprintf(names[k], sizeof names[k], "same-%d", k);
    g[k] = h_group_create(rev, h_size, names[k]);
    check_shape(g[k], rev, h_size, names[k]);
  }
  for (int rep = 0; rep < 2; rep++) {
    h_pending *p[3];
    for (int k = 0; k < 3; k++) {
      h_case c = {H_ALLREDUCE, PAR_F32, PAR_SUM, 500 + (size_t)k, 0, 0, H_GEN_WIDE, 0, salt++};
      p[k] = h_case_post(g[k], &c, H_ASYNC_WAIT);
    }
    for (int k = 2; k >= 0; k--) h_case_finish(p[k]);
    for (int k = 0; k < 3; k++) {
      h_case c = {H_ALLGATHER, PAR_I64, PAR_SUM, 10 + (size_t)k, 0, 0, H_GEN_BITS, 0, salt++};
      h_case_run(g[(k + rep) % 3], &c, H_BLOCKING);
    }
  }
  for (int k = 0; k < 3; k++) par_group_destroy(g[k]);

  int *all = malloc(sizeof(int) * (size_t)h_size);
  for (int i = 0; i < h_size; i++) all[i] = i;
  for (int cycle = 0; cycle < 5; cycle++) {
    par_group *c = h_group_create(all, h_size, "cycle");
    h_case a = {H_ALLREDUCE, PAR_I32, PAR_SUM, 64, 0, cycle & 1, H_GEN_WIDE, 0, salt++};
    h_case_run(c, &a, H_BLOCKING);
    par_group_destroy(c);
  }

  h_context("par_group_create with opts == NULL");
  par_group *d = NULL;
  CHECK(NULL, par_group_create(h_world, all, h_size, NULL, &d));
  const char *dn = par_group_name(d);
  EXPECT_TRUE(dn && strcmp(dn, "group") == 0, "default group name is \"group\", got \"%s\"", dn ? dn : "(null)");
  h_case a = {H_ALLREDUCE, PAR_F64, PAR_MAX, 10, 0, 0, H_GEN_WIDE, 0, salt++};
  h_case_run(d, &a, H_BLOCKING);
  par_group_destroy(d);
  par_group_destroy(NULL); /* does nothing */
  free(all);
  free(rev);
}

int main(void) {
  h_init("test_groups");
  test_world_group();
  test_parity();
  test_single();
  test_orders();
  test_minus_zero();
  test_same_list();
  h_context("final barrier");
  CHECK(par_world_group(h_world), par_barrier(par_world_group(h_world)));
  return h_finish();
}
