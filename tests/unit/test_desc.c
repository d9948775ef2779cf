/*
 * test_desc.c -- the descriptions members compare before a collective (src/coll/agree.c).
 *
 * Two descriptions must pack into equal words exactly when they are equal: every field that
 * differs makes the words differ, fields an op does not use never do, the words of counts and
 * roots too wide to pack are marked (and then compared in full), and an exact word unpacks to
 * its description. The mismatch message names both calls in the op's own terms.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "coll/group.h"

static par__desc desc(par__op_kind k, size_t count, par_dtype dt, par_op op, int root) {
  par__op o = {.kind = k, .count = count, .dt = dt, .op = op, .root = root, .seq = 7};
  par__desc d;
  par__desc_of(&o, &d);
  return d;
}

static void test_fields_that_matter(void **state) {
  (void)state;
  par__desc base = desc(PAR__ALLREDUCE, 10, PAR_F32, PAR_SUM, 0);
  par__desc other[] = {
      desc(PAR__ALLREDUCE, 11, PAR_F32, PAR_SUM, 0), desc(PAR__BROADCAST, 10, PAR_F32, PAR_SUM, 0),
      desc(PAR__ALLREDUCE, 10, PAR_F64, PAR_SUM, 0), desc(PAR__ALLREDUCE, 10, PAR_F32, PAR_MAX, 0),
      desc(PAR__ALLGATHER, 10, PAR_F32, PAR_SUM, 0), desc(PAR__ALLREDUCE, 0, PAR_F32, PAR_SUM, 0),
  };
  for (size_t i = 0; i < sizeof other / sizeof other[0]; i++) {
    assert_false(par__desc_equal(&base, &other[i], 0));
    assert_int_not_equal(par__desc_word(&base), par__desc_word(&other[i]));
  }
  /* Roots of rooted ops matter. */
  par__desc b0 = desc(PAR__BROADCAST, 10, PAR_F32, PAR_SUM, 0);
  par__desc b1 = desc(PAR__BROADCAST, 10, PAR_F32, PAR_SUM, 1);
  assert_int_not_equal(par__desc_word(&b0), par__desc_word(&b1));
}

static void test_fields_that_do_not(void **state) {
  (void)state;
  /* The reduction of a broadcast, the root of an allreduce, the dtype and count of a barrier. */
  par__desc a = desc(PAR__BROADCAST, 10, PAR_F32, PAR_SUM, 2);
  par__desc b = desc(PAR__BROADCAST, 10, PAR_F32, PAR_MAX, 2);
  assert_true(par__desc_equal(&a, &b, 1));
  assert_int_equal(par__desc_word(&a), par__desc_word(&b));
  a = desc(PAR__ALLREDUCE, 10, PAR_F32, PAR_SUM, 0);
  b = desc(PAR__ALLREDUCE, 10, PAR_F32, PAR_SUM, 3);
  assert_true(par__desc_equal(&a, &b, 1));
  a = desc(PAR__BARRIER, 0, PAR_U8, PAR_SUM, 0);
  b = desc(PAR__BARRIER, 5, PAR_F64, PAR_MAX, 1);
  assert_int_equal(par__desc_word(&a), par__desc_word(&b));
}

static void test_words(void **state) {
  (void)state;
  /* Exact words unpack to what they pack, at the edges of what fits. */
  size_t counts[] = {0, 1, 255, 65536, (1ull << 31) - 1};
  int roots[] = {0, 1, (1 << 20) - 2};
  for (size_t i = 0; i < sizeof counts / sizeof counts[0]; i++)
    for (size_t r = 0; r < sizeof roots / sizeof roots[0]; r++)
      for (int dt = 0; dt < PAR_DTYPE_COUNT; dt++) {
        par__desc d = desc(PAR__REDUCE, counts[i], (par_dtype)dt, PAR_AVG, roots[r]), u;
        uint64_t w = par__desc_word(&d);
        assert_true(par__desc_word_exact(w));
        assert_true(par__desc_unword(w, &u));
        assert_true(par__desc_equal(&d, &u, 0));
      }
  /* Too wide: marked, not unpackable, and still different for different counts. */
  par__desc big = desc(PAR__ALLREDUCE, 1ull << 31, PAR_U8, PAR_SUM, 0), u;
  par__desc big2 = desc(PAR__ALLREDUCE, (1ull << 31) + 1, PAR_U8, PAR_SUM, 0);
  par__desc far = desc(PAR__BROADCAST, 10, PAR_U8, PAR_SUM, 1 << 20);
  assert_false(par__desc_word_exact(par__desc_word(&big)));
  assert_false(par__desc_unword(par__desc_word(&big), &u));
  assert_false(par__desc_word_exact(par__desc_word(&far)));
  assert_int_not_equal(par__desc_word(&big), par__desc_word(&big2));
  /* 2^32 + 10 must not pack like 10. */
  par__desc ten = desc(PAR__ALLREDUCE, 10, PAR_U8, PAR_SUM, 0);
  par__desc wrap = desc(PAR__ALLREDUCE, (1ull << 32) + 10, PAR_U8, PAR_SUM, 0);
  assert_int_not_equal(par__desc_word(&ten), par__desc_word(&wrap));
}

static void test_message(void **state) {
  (void)state;
  int ranks[3] = {4, 9, 11};
  par_group g;
  memset(&g, 0, sizeof g);
  g.n = 3;
  g.index = 1;
  g.ranks = ranks;
  strcpy(g.name, "dp");
  par__desc a = desc(PAR__BROADCAST, 10, PAR_F32, PAR_MAX, 0);
  par__desc b = desc(PAR__ALLREDUCE, 12, PAR_BF16, PAR_AVG, 0);
  assert_int_equal(par__desc_mismatch(&g, &a, 2, &b, 0), PAR_ERR_MISMATCH);
  const char *m = par__error_detail();
  assert_non_null(strstr(m, "group 'dp'"));
  assert_non_null(strstr(m, "rank 9 (member 1) issued broadcast(count=10, f32, root 0)"));
  assert_non_null(strstr(m, "rank 11 (member 2) issued allreduce(count=12, bf16, avg)"));
  assert_null(strstr(m, "max")); /* a broadcast has no reduction to show */
  par__desc all[3] = {a, a, a};
  all[0].seq = 6;
  assert_int_equal(par__desc_check(&g, &a, all, 0), PAR_OK);
  assert_int_equal(par__desc_check(&g, &a, all, 1), PAR_ERR_MISMATCH);
  assert_non_null(strstr(par__error_detail(), "as op #6"));
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_fields_that_matter),
      cmocka_unit_test(test_fields_that_do_not),
      cmocka_unit_test(test_words),
      cmocka_unit_test(test_message),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
