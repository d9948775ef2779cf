/*
 * test_version.c -- par_version() and par_version_string() give the version of par.h's
 * PAR_VERSION_* lines, which is also the version CMake's project() read from them
 * (PAR_TEST_PROJECT_VERSION, passed by tests/CMakeLists.txt): one number everywhere.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "par.h"

static void test_number(void **state) {
  (void)state;
  assert_int_equal(par_version(), PAR_VERSION_NUMBER);
  assert_int_equal(PAR_VERSION_NUMBER,
                   PAR_VERSION_MAJOR * 10000 + PAR_VERSION_MINOR * 100 + PAR_VERSION_PATCH);
}

static void test_string(void **state) {
  (void)state;
  char want[32];
  snprintf(want, sizeof want, "%d.%d.%d", PAR_VERSION_MAJOR, PAR_VERSION_MINOR, PAR_VERSION_PATCH);
  assert_string_equal(par_version_string(), want);
  assert_string_equal(par_version_string(), PAR_TEST_PROJECT_VERSION);
  /* Static storage: the same pointer every time. */
  assert_ptr_equal(par_version_string(), par_version_string());
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_number),
      cmocka_unit_test(test_string),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
