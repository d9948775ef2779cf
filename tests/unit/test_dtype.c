/*
 * test_dtype.c -- names and sizes of dtypes, reduction ops and backends.
 *
 * Every canonical name parses back to its value, every documented alias parses in any case,
 * and invalid input fails with the documented status, leaves the output untouched and leaves
 * a detail that lists what would have been accepted.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "core/core.h"

static void test_dtype_sizes(void **state) {
  (void)state;
  assert_int_equal(par_dtype_size(PAR_F32), 4);
  assert_int_equal(par_dtype_size(PAR_F64), 8);
  assert_int_equal(par_dtype_size(PAR_F16), 2);
  assert_int_equal(par_dtype_size(PAR_BF16), 2);
  assert_int_equal(par_dtype_size(PAR_I8), 1);
  assert_int_equal(par_dtype_size(PAR_U8), 1);
  assert_int_equal(par_dtype_size(PAR_I32), 4);
  assert_int_equal(par_dtype_size(PAR_I64), 8);
  assert_int_equal(par_dtype_size(PAR_DTYPE_COUNT), 0);
  assert_int_equal(par_dtype_size((par_dtype)-1), 0);
}

static void test_dtype_names_round_trip(void **state) {
  (void)state;
  static const char *const names[PAR_DTYPE_COUNT] = {"f32", "f64", "f16", "bf16",
                                                     "i8",  "u8",  "i32", "i64"};
  for (int dt = 0; dt < PAR_DTYPE_COUNT; dt++) {
    assert_string_equal(par_dtype_name((par_dtype)dt), names[dt]);
    par_dtype out = PAR_DTYPE_COUNT;
    assert_int_equal(par_dtype_parse(names[dt], &out), PAR_OK);
    assert_int_equal(out, dt);
  }
  assert_null(par_dtype_name(PAR_DTYPE_COUNT));
  assert_null(par_dtype_name((par_dtype)-1));
}

static void test_dtype_aliases(void **state) {
  (void)state;
  static const struct {
    const char *name;
    par_dtype dt;
  } aliases[] = {
      {"float", PAR_F32},     {"FLOAT32", PAR_F32}, {"F32", PAR_F32},     {"double", PAR_F64},
      {"Float64", PAR_F64},   {"half", PAR_F16},    {"float16", PAR_F16}, {"BF16", PAR_BF16},
      {"bfloat16", PAR_BF16}, {"int8", PAR_I8},     {"UINT8", PAR_U8},    {"int", PAR_I32},
      {"Int32", PAR_I32},     {"int64", PAR_I64},   {"I64", PAR_I64},
  };
  for (size_t i = 0; i < sizeof aliases / sizeof aliases[0]; i++) {
    par_dtype out = PAR_DTYPE_COUNT;
    assert_int_equal(par_dtype_parse(aliases[i].name, &out), PAR_OK);
    assert_int_equal(out, aliases[i].dt);
  }
}

static void test_dtype_invalid(void **state) {
  (void)state;
  static const char *const bad[] = {"f8", "", "floaty", "f32 ", " f32", "int16", "f3"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    par_dtype out = PAR_I64;
    assert_int_equal(par_dtype_parse(bad[i], &out), PAR_ERR_DTYPE);
    assert_int_equal(out, PAR_I64); /* untouched */
  }
  par_dtype out = PAR_I64;
  assert_int_equal(par_dtype_parse("f8", &out), PAR_ERR_DTYPE);
  assert_string_equal(par_last_error(),
                      "unknown dtype 'f8' (valid: f32|float|float32, f64|double|float64, "
                      "f16|half|float16, bf16|bfloat16, i8|int8, u8|uint8, i32|int|int32, "
                      "i64|int64)");
  assert_int_equal(par_dtype_parse(NULL, &out), PAR_ERR_NULL);
  assert_int_equal(par_dtype_parse("f32", NULL), PAR_ERR_NULL);
}

static void test_ops(void **state) {
  (void)state;
  static const char *const names[PAR_OP_COUNT] = {"sum", "prod", "min", "max", "avg"};
  for (int op = 0; op < PAR_OP_COUNT; op++) {
    assert_string_equal(par_op_name((par_op)op), names[op]);
    par_op out = PAR_OP_COUNT;
    assert_int_equal(par_op_parse(names[op], &out), PAR_OK);
    assert_int_equal(out, op);
  }
  par_op out = PAR_OP_COUNT;
  assert_int_equal(par_op_parse("AVG", &out), PAR_OK);
  assert_int_equal(out, PAR_AVG);
  assert_int_equal(par_op_parse("Max", &out), PAR_OK);
  assert_int_equal(out, PAR_MAX);
  assert_null(par_op_name(PAR_OP_COUNT));
  assert_null(par_op_name((par_op)-1));

  out = PAR_MIN;
  assert_int_equal(par_op_parse("median", &out), PAR_ERR_OP);
  assert_int_equal(out, PAR_MIN);
  assert_string_equal(par_last_error(),
                      "unknown reduction op 'median' (valid: sum, prod, min, max, avg)");
  assert_int_equal(par_op_parse("", &out), PAR_ERR_OP);
  assert_int_equal(par_op_parse("sum2", &out), PAR_ERR_OP);
  assert_int_equal(par_op_parse(NULL, &out), PAR_ERR_NULL);
  assert_int_equal(par_op_parse("sum", NULL), PAR_ERR_NULL);
}

static void test_backends(void **state) {
  (void)state;
  static const char *const names[PAR_BACKEND_COUNT] = {"auto", "shm", "mpi"};
  for (int b = 0; b < PAR_BACKEND_COUNT; b++) {
    assert_string_equal(par_backend_name((par_backend)b), names[b]);
    par_backend out = PAR_BACKEND_COUNT;
    assert_int_equal(par_backend_parse(names[b], &out), PAR_OK);
    assert_int_equal(out, b);
  }
  par_backend out = PAR_BACKEND_COUNT;
  assert_int_equal(par_backend_parse("SHM", &out), PAR_OK);
  assert_int_equal(out, PAR_BACKEND_SHM);
  assert_null(par_backend_name(PAR_BACKEND_COUNT));
  assert_null(par_backend_name((par_backend)-1));

  out = PAR_BACKEND_MPI;
  assert_int_equal(par_backend_parse("ib", &out), PAR_ERR_INVALID);
  assert_int_equal(out, PAR_BACKEND_MPI);
  assert_string_equal(par_last_error(), "unknown backend 'ib' (valid: auto, shm, mpi)");
  /* There is no tcp backend: multi-host groups are the mpi backend's (docs/mpi.md). */
  assert_int_equal(par_backend_parse("tcp", &out), PAR_ERR_INVALID);
  assert_int_equal(par_backend_parse("", &out), PAR_ERR_INVALID);
  assert_int_equal(par_backend_parse(NULL, &out), PAR_ERR_NULL);
  assert_int_equal(par_backend_parse("shm", NULL), PAR_ERR_NULL);
}

/* A long invalid name is cut in the detail, which still ends with the list of valid names. */
static void test_long_invalid_name(void **state) {
  (void)state;
  char name[300];
  memset(name, 'x', sizeof name - 1);
  name[sizeof name - 1] = '\0';
  par_op out = PAR_SUM;
  assert_int_equal(par_op_parse(name, &out), PAR_ERR_OP);
  const char *detail = par_last_error();
  assert_non_null(strstr(detail, "(valid: sum, prod, min, max, avg)"));
  assert_true(strlen(detail) < 200);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_dtype_sizes),
      cmocka_unit_test(test_dtype_names_round_trip),
      cmocka_unit_test(test_dtype_aliases),
      cmocka_unit_test(test_dtype_invalid),
      cmocka_unit_test(test_ops),
      cmocka_unit_test(test_backends),
      cmocka_unit_test(test_long_invalid_name),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
