/*
 * test_layout.c -- the mesh arithmetic against a naive oracle.
 *
 * The oracle is the normative formula written out directly (m = r % MP, p = (r / MP) % PP,
 * d = r / (MP*PP)) and group membership by brute force: the group over a set of dims that
 * holds rank r is every rank that agrees with r on all other dims, in ascending order. Every
 * factorisation of every world size from 1 to 64 is checked, for every set of dims; then the
 * documented 8-rank example verbatim, the validation messages, and the general layout API.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "par.h"

/* ---------------------------------------------------------------------------------------- */
/* Oracle                                                                                   */
/* ---------------------------------------------------------------------------------------- */

/* Coordinates in the order of the dims (dp, pp, mp). */
static void oracle_coords(int r, int mp, int pp, int c[3]) {
  c[2] = r % mp;
  c[1] = (r / mp) % pp;
  c[0] = r / (mp * pp);
}

/* Members of the group over `dims` that holds r, ascending; returns their number. */
static int oracle_group(int world, int mp, int pp, par_dims dims, int r, int *members) {
  int cr[3], cs[3], n = 0;
  oracle_coords(r, mp, pp, cr);
  for (int s = 0; s < world; s++) {
    oracle_coords(s, mp, pp, cs);
    int same = 1;
    for (int i = 0; i < 3; i++)
      if (!(dims & (1u << i)) && cs[i] != cr[i]) same = 0;
    if (same) members[n++] = s;
  }
  return n;
}

/* ---------------------------------------------------------------------------------------- */
/* Every factorisation of 1..64                                                             */
/* ---------------------------------------------------------------------------------------- */

static void check_config(int world, int mp, int pp) {
  par_layout l;
  char warning[200];
  assert_int_equal(par_layout_init_parallel(&l, world, mp, pp, warning, sizeof warning), PAR_OK);
  assert_string_equal(warning, "");
  assert_int_equal(l.ndims, 3);
  assert_int_equal(l.world, world);
  assert_string_equal(l.name[0], "dp");
  assert_string_equal(l.name[1], "pp");
  assert_string_equal(l.name[2], "mp");
  assert_int_equal(l.size[0], world / (mp * pp));
  assert_int_equal(l.size[1], pp);
  assert_int_equal(l.size[2], mp);

  int *members = malloc(sizeof(int) * (size_t)world);
  int *got = malloc(sizeof(int) * (size_t)world);
  int *seen = malloc(sizeof(int) * (size_t)world);
  assert_non_null(members);
  assert_non_null(got);
  assert_non_null(seen);

  for (int r = 0; r < world; r++) {
    int c[3];
    oracle_coords(r, mp, pp, c);
    for (int i = 0; i < 3; i++) assert_int_equal(par_layout_coord(&l, r, i), c[i]);
    assert_int_equal(par_layout_rank(&l, c), r);
    assert_int_equal(r, (c[0] * pp + c[1]) * mp + c[2]);
  }

  for (par_dims dims = 0; dims < 8; dims++) {
    int expect_size =
        ((dims & 1) ? world / (mp * pp) : 1) * ((dims & 2) ? pp : 1) * ((dims & 4) ? mp : 1);
    int count = par_layout_group_count(&l, dims);
    assert_int_equal(par_layout_group_size(&l, dims), expect_size);
    assert_int_equal(count, world / expect_size);

    /* Every rank is in exactly one group of the set: enumerate the groups by number. */
    memset(seen, 0, sizeof(int) * (size_t)world);
    for (int id = 0; id < count; id++) {
      assert_int_equal(par_layout_group_ranks(&l, dims, id, got), PAR_OK);
      for (int k = 0; k < expect_size; k++) {
        assert_in_range(got[k], 0, world - 1);
        seen[got[k]]++;
        assert_int_equal(par_layout_group_id(&l, dims, got[k]), id);
        assert_int_equal(par_layout_group_index(&l, dims, got[k]), k);
      }
    }
    for (int r = 0; r < world; r++) assert_int_equal(seen[r], 1);

    /* Each rank's own group and index agree with the oracle. */
    for (int r = 0; r < world; r++) {
      int n = oracle_group(world, mp, pp, dims, r, members);
      assert_int_equal(n, expect_size);
      int id = par_layout_group_id(&l, dims, r);
      assert_int_equal(par_layout_group_ranks(&l, dims, id, got), PAR_OK);
      int index = -1;
      for (int k = 0; k < n; k++) {
        assert_int_equal(got[k], members[k]);
        if (members[k] == r) index = k;
      }
      assert_int_equal(par_layout_group_index(&l, dims, r), index);
    }
  }

  /* A rank's index in a one-dim group is its coordinate on that dim. */
  for (int r = 0; r < world; r++)
    for (int i = 0; i < 3; i++)
      assert_int_equal(par_layout_group_index(&l, 1u << i, r), par_layout_coord(&l, r, i));

  free(members);
  free(got);
  free(seen);
}

static void test_every_factorisation(void **state) {
  (void)state;
  int configs = 0;
  for (int world = 1; world <= 64; world++)
    for (int mp = 1; mp <= world; mp++) {
      if (world % mp) continue;
      for (int pp = 1; pp <= world / mp; pp++) {
        if ((world / mp) % pp) continue;
        check_config(world, mp, pp);
        configs++;
      }
    }
  /* The number of ordered factorisations world = dp*pp*mp, summed over 1..64. */
  int expect = 0;
  for (int world = 1; world <= 64; world++)
    for (int a = 1; a <= world; a++)
      for (int b = 1; b <= world; b++)
        if (world % (a * b) == 0) expect++;
  assert_int_equal(configs, expect);
  assert_int_equal(configs, 796);
}

/* ---------------------------------------------------------------------------------------- */
/* The documented example, verbatim                                                         */
/* ---------------------------------------------------------------------------------------- */

static void expect_groups(const par_layout *l, const char *dims_name, const int expect[4][2]) {
  par_dims dims;
  assert_int_equal(par_layout_parse_dims(l, dims_name, &dims), PAR_OK);
  assert_int_equal(par_layout_group_count(l, dims), 4);
  assert_int_equal(par_layout_group_size(l, dims), 2);
  for (int id = 0; id < 4; id++) {
    int got[2];
    assert_int_equal(par_layout_group_ranks(l, dims, id, got), PAR_OK);
    assert_int_equal(got[0], expect[id][0]);
    assert_int_equal(got[1], expect[id][1]);
    /* Each member finds this group as its own and its index as its position in it. */
    for (int k = 0; k < 2; k++) {
      assert_int_equal(par_layout_group_id(l, dims, expect[id][k]), id);
      assert_int_equal(par_layout_group_index(l, dims, expect[id][k]), k);
    }
  }
}

static void test_docstring_example(void **state) {
  (void)state;
  static const int mp[4][2] = {{0, 1}, {2, 3}, {4, 5}, {6, 7}};
  static const int pp[4][2] = {{0, 2}, {1, 3}, {4, 6}, {5, 7}};
  static const int dp[4][2] = {{0, 4}, {1, 5}, {2, 6}, {3, 7}};
  par_layout l;
  assert_int_equal(par_layout_init_parallel(&l, 8, 2, 2, NULL, 0), PAR_OK);
  expect_groups(&l, "mp", mp);
  expect_groups(&l, "pp", pp);
  expect_groups(&l, "dp", dp);

  /* The original picked the wrong group on 6 of 8 ranks: spell out rank 5 by hand. Rank 5 =
   * (d=1, p=0, m=1): mp group [4,5] index 1, pp group [5,7] index 0, dp group [1,5] index 1. */
  assert_int_equal(par_layout_group_id(&l, 4, 5), 2);
  assert_int_equal(par_layout_group_index(&l, 4, 5), 1);
  assert_int_equal(par_layout_group_id(&l, 2, 5), 3);
  assert_int_equal(par_layout_group_index(&l, 2, 5), 0);
  assert_int_equal(par_layout_group_id(&l, 1, 5), 1);
  assert_int_equal(par_layout_group_index(&l, 1, 5), 1);

  /* The model group (pp x mp) of rank 5 is [4,5,6,7]; the pp x dp group is [1,3,5,7]. */
  par_dims model, ppdp;
  int got[4];
  assert_int_equal(par_layout_parse_dims(&l, "mp,pp", &model), PAR_OK);
  assert_int_equal(model, 6u);
  assert_int_equal(par_layout_group_ranks(&l, model, par_layout_group_id(&l, model, 5), got),
                   PAR_OK);
  assert_int_equal(got[0], 4);
  assert_int_equal(got[1], 5);
  assert_int_equal(got[2], 6);
  assert_int_equal(got[3], 7);
  assert_int_equal(par_layout_group_index(&l, model, 5), 1);
  assert_int_equal(par_layout_parse_dims(&l, " pp , dp ", &ppdp), PAR_OK);
  assert_int_equal(ppdp, 3u);
  assert_int_equal(par_layout_group_ranks(&l, ppdp, par_layout_group_id(&l, ppdp, 5), got), PAR_OK);
  assert_int_equal(got[0], 1);
  assert_int_equal(got[1], 3);
  assert_int_equal(got[2], 5);
  assert_int_equal(got[3], 7);
  assert_int_equal(par_layout_group_index(&l, ppdp, 5), 2);

  char buf[64];
  par_layout_format_dims(&l, model, buf, sizeof buf);
  assert_string_equal(buf, "pp,mp");
}

/* ---------------------------------------------------------------------------------------- */
/* Validation                                                                               */
/* ---------------------------------------------------------------------------------------- */

static void expect_invalid(int world, int mp, int pp, const char *detail) {
  par_layout l;
  assert_int_equal(par_layout_init_parallel(&l, world, mp, pp, NULL, 0), PAR_ERR_INVALID);
  assert_string_equal(par_last_error(), detail);
}

static void test_invalid_configurations(void **state) {
  (void)state;
  expect_invalid(8, 3, 1, "world size 8 is not divisible by model parallel size 3");
  expect_invalid(12, 5, 1, "world size 12 is not divisible by model parallel size 5");
  expect_invalid(8, 2, 3,
                 "world size 8 is not divisible by model parallel size * pipeline parallel "
                 "size 6 (mp 2, pp 3)");
  /* pp is not clamped. */
  expect_invalid(8, 1, 16,
                 "world size 8 is not divisible by model parallel size * pipeline parallel "
                 "size 16 (mp 1, pp 16)");
  expect_invalid(8, 0, 1, "model parallel size must be >= 1 (got 0)");
  expect_invalid(8, -2, 1, "model parallel size must be >= 1 (got -2)");
  expect_invalid(8, 1, 0, "pipeline parallel size must be >= 1 (got 0)");
  expect_invalid(0, 1, 1, "world size must be >= 1 (got 0)");
  assert_int_equal(par_layout_init_parallel(NULL, 8, 1, 1, NULL, 0), PAR_ERR_NULL);
}

static void test_mp_clamp(void **state) {
  (void)state;
  par_layout l;
  char warning[200];
  assert_int_equal(par_layout_init_parallel(&l, 4, 16, 1, warning, sizeof warning), PAR_OK);
  assert_string_equal(warning,
                      "model parallel size 16 is larger than the world size 4; using 4 instead");
  assert_int_equal(l.size[2], 4);
  assert_int_equal(l.size[1], 1);
  assert_int_equal(l.size[0], 1);
  /* After the clamp, pp must still divide what is left: world 4, mp 16 -> 4, pp 2 fails. */
  assert_int_equal(par_layout_init_parallel(&l, 4, 16, 2, warning, sizeof warning),
                   PAR_ERR_INVALID);
  assert_string_equal(warning,
                      "model parallel size 16 is larger than the world size 4; using 4 instead");
  assert_string_equal(par_last_error(),
                      "world size 4 is not divisible by model parallel size * pipeline "
                      "parallel size 8 (mp 4, pp 2)");
}

/* ---------------------------------------------------------------------------------------- */
/* General layouts                                                                          */
/* ---------------------------------------------------------------------------------------- */

static void test_general_layout(void **state) {
  (void)state;
  const char *names[4] = {"dp", "pp", "ep", "tp"};
  int sizes[4] = {-1, 3, 2, 2};
  par_layout l;
  assert_int_equal(par_layout_init(&l, 24, 4, names, sizes), PAR_OK);
  assert_int_equal(l.size[0], 2);
  assert_int_equal(par_layout_find(&l, "ep"), 2);
  assert_int_equal(par_layout_find(&l, "xx"), -1);

  /* Rank 17 = ((1*3 + 1)*2 + 0)*2 + 1. */
  int c[4] = {1, 1, 0, 1};
  assert_int_equal(par_layout_rank(&l, c), 17);
  assert_int_equal(par_layout_coord(&l, 17, 0), 1);
  assert_int_equal(par_layout_coord(&l, 17, 1), 1);
  assert_int_equal(par_layout_coord(&l, 17, 2), 0);
  assert_int_equal(par_layout_coord(&l, 17, 3), 1);
  assert_int_equal(par_layout_coord(&l, 24, 0), -1);
  assert_int_equal(par_layout_coord(&l, 17, 4), -1);
  int bad[4] = {1, 3, 0, 0};
  assert_int_equal(par_layout_rank(&l, bad), -1);

  /* Shifting along pp (stride 4) wraps around: stage 1 -> 2 -> 0. */
  assert_int_equal(par_layout_shift(&l, 17, 1, 1), 21);
  assert_int_equal(par_layout_shift(&l, 17, 1, 2), 13);
  assert_int_equal(par_layout_shift(&l, 17, 1, -1), 13);
  assert_int_equal(par_layout_shift(&l, 17, 1, -4), 13);
  assert_int_equal(par_layout_shift(&l, 17, 3, 1), 16);

  /* The group over {ep, tp} holding 17 is 16..19. The one over {dp, ep} holds the ranks that
   * agree with 17 on pp (1) and tp (1): ((d*3 + 1)*2 + e)*2 + 1 = 5, 7, 17, 19, with 17 at
   * index d*2 + e = 2. */
  par_dims dims;
  int got[4];
  assert_int_equal(par_layout_parse_dims(&l, "tp,ep", &dims), PAR_OK);
  assert_int_equal(par_layout_group_ranks(&l, dims, par_layout_group_id(&l, dims, 17), got),
                   PAR_OK);
  assert_int_equal(got[0], 16);
  assert_int_equal(got[3], 19);
  assert_int_equal(par_layout_parse_dims(&l, "dp,ep", &dims), PAR_OK);
  assert_int_equal(par_layout_group_ranks(&l, dims, par_layout_group_id(&l, dims, 17), got),
                   PAR_OK);
  assert_int_equal(got[0], 5);
  assert_int_equal(got[1], 7);
  assert_int_equal(got[2], 17);
  assert_int_equal(got[3], 19);
  assert_int_equal(par_layout_group_index(&l, dims, 17), 2);
  assert_int_equal(par_layout_group_ranks(&l, dims, 6, got), PAR_ERR_INVALID);
  assert_string_equal(par_last_error(), "group number 6 is out of range: there are 6 groups");
  assert_int_equal(par_layout_group_size(&l, 1u << 4), -1);
}

static void expect_layout_error(int world, int ndims, const char *const *names, const int *sizes,
                                const char *detail) {
  par_layout l;
  assert_int_equal(par_layout_init(&l, world, ndims, names, sizes), PAR_ERR_INVALID);
  assert_string_equal(par_last_error(), detail);
}

static void test_layout_errors(void **state) {
  (void)state;
  const char *ab[2] = {"a", "b"};
  const char *aa[2] = {"a", "a"};
  const char *comma[2] = {"a", "b,c"};
  int s_2_m1[2] = {2, -1}, s_m1_m1[2] = {-1, -1}, s_0_4[2] = {0, 4}, s_3_m1[2] = {3, -1};
  int s_2_2[2] = {2, 2}, s_m3_1[2] = {-3, 1};
  expect_layout_error(8, 2, aa, s_2_m1, "dim name 'a' is used twice");
  expect_layout_error(8, 2, comma, s_2_m1,
                      "dim name 'b,c' is not 1 to 15 characters of [A-Za-z0-9_]");
  expect_layout_error(8, 2, ab, s_m1_m1,
                      "dims 'a' and 'b' both have size -1; at most one size is derived");
  expect_layout_error(8, 2, ab, s_0_4,
                      "dim 'a' has size 0; a size is >= 1, or -1 to derive it from the world");
  expect_layout_error(8, 2, ab, s_m3_1,
                      "dim 'a' has size -3; a size is >= 1, or -1 to derive it from the world");
  expect_layout_error(8, 2, ab, s_3_m1,
                      "world size 8 is not divisible by 3, the product of the sizes of the "
                      "dims other than 'b'");
  expect_layout_error(8, 2, ab, s_2_2, "the dim sizes multiply to 4, not to the world size 8");
  expect_layout_error(8, 0, ab, s_2_2, "a layout has 1 to 8 dims (got 0)");
  par_layout l;
  assert_int_equal(par_layout_init(&l, 4, 2, ab, s_2_2), PAR_OK);

  par_dims dims = 99;
  assert_int_equal(par_layout_parse_dims(&l, "a,c", &dims), PAR_ERR_INVALID);
  assert_string_equal(par_last_error(), "unknown dim 'c' (the dims are a,b)");
  assert_int_equal(par_layout_parse_dims(&l, "b,b", &dims), PAR_ERR_INVALID);
  assert_string_equal(par_last_error(), "dim 'b' is listed twice in \"b,b\"");
  assert_int_equal(par_layout_parse_dims(&l, "", &dims), PAR_ERR_INVALID);
  assert_string_equal(par_last_error(), "empty dim name in \"\" (the dims are a,b)");
  assert_int_equal(par_layout_parse_dims(&l, "a b", &dims), PAR_ERR_INVALID);
  assert_string_equal(par_last_error(), "dim names in \"a b\" must be separated by commas");
  assert_int_equal(dims, 99u);
  assert_int_equal(par_layout_parse_dims(&l, "b,a", &dims), PAR_OK);
  assert_int_equal(dims, 3u);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_every_factorisation),    cmocka_unit_test(test_docstring_example),
      cmocka_unit_test(test_invalid_configurations), cmocka_unit_test(test_mp_clamp),
      cmocka_unit_test(test_general_layout),         cmocka_unit_test(test_layout_errors),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
