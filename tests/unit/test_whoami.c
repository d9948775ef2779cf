/*
 * test_whoami.c -- par__whoami_resolve against every launcher's environment, through a fake
 * getenv: each source alone, their precedence, the store address and token sources, and
 * malformed or inconsistent values (the error must name the variable).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "bootstrap/bootstrap.h"
#include "core/core.h"

/* ---- the fake environment: NULL-terminated "NAME=value" strings -------------------------- */

static const char *const *fake_env;

static const char *fake_getenv(const char *name) {
  size_t n = strlen(name);
  for (const char *const *p = fake_env; p && *p; p++)
    if (!strncmp(*p, name, n) && (*p)[n] == '=') return *p + n + 1;
  return NULL;
}

static par_status resolve(const char *const *env, const par_world_options *opts, par__whoami *who) {
  fake_env = env;
  return par__whoami_resolve(opts, fake_getenv, who);
}

/* Expects failure with PAR_ERR_BOOTSTRAP and a detail that mentions `needle`. */
static void expect_error(const char *const *env, const par_world_options *opts,
                         const char *needle) {
  par__whoami who;
  par__error_clear();
  assert_int_equal(resolve(env, opts, &who), PAR_ERR_BOOTSTRAP);
  const char *detail = par__error_detail();
  if (!strstr(detail, needle)) fail_msg("detail '%s' does not mention '%s'", detail, needle);
}

/* ---- each source alone ------------------------------------------------------------------ */

static void test_none_is_world_of_one(void **state) {
  (void)state;
  static const char *const env[] = {NULL};
  par__whoami who;
  assert_int_equal(resolve(env, NULL, &who), PAR_OK);
  assert_int_equal(who.rank, 0);
  assert_int_equal(who.size, 1);
  assert_int_equal(who.local_rank, 0);
  assert_int_equal(who.local_size, 1);
  assert_string_equal(who.store_host, "");
  assert_int_equal(who.host_store, 0);
  assert_string_equal(who.token, "");
  assert_string_equal(who.source, "none");
}

static void test_parrun_env(void **state) {
  (void)state;
  static const char *const env[] = {"RANK=2",
                                    "WORLD_SIZE=4",
                                    "LOCAL_RANK=2",
                                    "LOCAL_WORLD_SIZE=4",
                                    "MASTER_ADDR=127.0.0.1",
                                    "MASTER_PORT=5555",
                                    "PAR_STORE_ADDR=127.0.0.1:5556",
                                    "PAR_TOKEN=0123abcd",
                                    NULL};
  par__whoami who;
  assert_int_equal(resolve(env, NULL, &who), PAR_OK);
  assert_string_equal(who.source, "parrun/torchrun");
  assert_int_equal(who.rank, 2);
  assert_int_equal(who.size, 4);
  assert_int_equal(who.local_rank, 2);
  assert_int_equal(who.local_size, 4);
  /* PAR_STORE_ADDR (hosted by the launcher) wins over MASTER_ADDR/PORT. */
  assert_string_equal(who.store_host, "127.0.0.1");
  assert_int_equal(who.store_port, 5556);
  assert_int_equal(who.host_store, 0);
  assert_string_equal(who.token, "0123abcd");
}

static void test_torchrun_master_rank0_hosts(void **state) {
  (void)state;
  static const char *const env0[] = {"RANK=0", "WORLD_SIZE=2", "MASTER_ADDR=node1",
                                     "MASTER_PORT=29500", NULL};
  static const char *const env1[] = {"RANK=1", "WORLD_SIZE=2", "MASTER_ADDR=node1",
                                     "MASTER_PORT=29500", NULL};
  par__whoami who;
  assert_int_equal(resolve(env0, NULL, &who), PAR_OK);
  assert_string_equal(who.store_host, "node1");
  assert_int_equal(who.store_port, 29500);
  assert_int_equal(who.host_store, 1);
  /* Without LOCAL_* the whole world is taken as local. */
  assert_int_equal(who.local_rank, 0);
  assert_int_equal(who.local_size, 2);
  assert_int_equal(resolve(env1, NULL, &who), PAR_OK);
  assert_int_equal(who.rank, 1);
  assert_int_equal(who.host_store, 0);
  assert_int_equal(who.local_rank, 1);
}

/* Under torchrun its agent holds MASTER_PORT with a store of its own: par's is on the next
 * port, for every rank alike; MASTER_PORT 65535 leaves none. */
static void test_torchrun_agent_port(void **state) {
  (void)state;
  static const char *const env0[] = {"RANK=0", "WORLD_SIZE=2", "MASTER_ADDR=node1",
                                     "MASTER_PORT=29500", "TORCHELASTIC_RUN_ID=none", NULL};
  static const char *const env1[] = {"RANK=1", "WORLD_SIZE=2", "MASTER_ADDR=node1",
                                     "MASTER_PORT=29500", "TORCHELASTIC_RUN_ID=none", NULL};
  static const char *const top[] = {"RANK=0", "WORLD_SIZE=2", "MASTER_ADDR=node1",
                                    "MASTER_PORT=65535", "TORCHELASTIC_RUN_ID=x", NULL};
  par__whoami who;
  assert_int_equal(resolve(env0, NULL, &who), PAR_OK);
  assert_int_equal(who.store_port, 29501);
  assert_int_equal(who.host_store, 1);
  assert_int_equal(resolve(env1, NULL, &who), PAR_OK);
  assert_int_equal(who.store_port, 29501);
  expect_error(top, NULL, "PAR_STORE_ADDR");
}

static void test_open_mpi(void **state) {
  (void)state;
  static const char *const env[] = {"OMPI_COMM_WORLD_RANK=5",       "OMPI_COMM_WORLD_SIZE=8",
                                    "OMPI_COMM_WORLD_LOCAL_RANK=1", "OMPI_COMM_WORLD_LOCAL_SIZE=4",
                                    "PAR_STORE_ADDR=[::1]:7000",    NULL};
  par__whoami who;
  assert_int_equal(resolve(env, NULL, &who), PAR_OK);
  assert_string_equal(who.source, "Open MPI");
  assert_int_equal(who.rank, 5);
  assert_int_equal(who.size, 8);
  assert_int_equal(who.local_rank, 1);
  assert_int_equal(who.local_size, 4);
  assert_string_equal(who.store_host, "::1");
  assert_int_equal(who.store_port, 7000);
}

static void test_pmi(void **state) {
  (void)state;
  static const char *const hydra[] = {"PMI_RANK=3",         "PMI_SIZE=4",
                                      "MPI_LOCALRANKID=1",  "MPI_LOCALNRANKS=2",
                                      "PAR_STORE_ADDR=h:1", NULL};
  static const char *const pmi_local[] = {"PMI_RANK=3",         "PMI_SIZE=4",
                                          "PMI_LOCAL_RANK=0",   "PMI_LOCAL_SIZE=1",
                                          "PAR_STORE_ADDR=h:1", NULL};
  static const char *const bare[] = {"PMI_RANK=3", "PMI_SIZE=4", "PAR_STORE_ADDR=h:1", NULL};
  par__whoami who;
  assert_int_equal(resolve(hydra, NULL, &who), PAR_OK);
  assert_string_equal(who.source, "PMI");
  assert_int_equal(who.rank, 3);
  assert_int_equal(who.size, 4);
  assert_int_equal(who.local_rank, 1);
  assert_int_equal(who.local_size, 2);
  assert_int_equal(resolve(pmi_local, NULL, &who), PAR_OK);
  assert_int_equal(who.local_rank, 0);
  assert_int_equal(who.local_size, 1);
  assert_int_equal(resolve(bare, NULL, &who), PAR_OK);
  assert_int_equal(who.local_rank, 3);
  assert_int_equal(who.local_size, 4);
}

static void test_slurm(void **state) {
  (void)state;
  static const char *const uniform[] = {"SLURM_PROCID=5",
                                        "SLURM_NTASKS=8",
                                        "SLURM_LOCALID=1",
                                        "SLURM_TASKS_PER_NODE=4(x2)",
                                        "SLURM_NODEID=1",
                                        "PAR_STORE_ADDR=h:1",
                                        NULL};
  static const char *const uneven[] = {"SLURM_PROCID=6",
                                       "SLURM_NTASKS=8",
                                       "SLURM_LOCALID=3",
                                       "SLURM_TASKS_PER_NODE=2(x1),1,5",
                                       "SLURM_NODEID=2",
                                       "PAR_STORE_ADDR=h:1",
                                       NULL};
  static const char *const per_node[] = {"SLURM_PROCID=1",
                                         "SLURM_NTASKS=4",
                                         "SLURM_LOCALID=1",
                                         "SLURM_NTASKS_PER_NODE=2",
                                         "SLURM_TASKS_PER_NODE=4",
                                         "PAR_STORE_ADDR=h:1",
                                         NULL};
  par__whoami who;
  assert_int_equal(resolve(uniform, NULL, &who), PAR_OK);
  assert_string_equal(who.source, "Slurm");
  assert_int_equal(who.rank, 5);
  assert_int_equal(who.size, 8);
  assert_int_equal(who.local_rank, 1);
  assert_int_equal(who.local_size, 4);
  assert_int_equal(resolve(uneven, NULL, &who), PAR_OK);
  assert_int_equal(who.local_rank, 3);
  assert_int_equal(who.local_size, 5);
  /* SLURM_NTASKS_PER_NODE is preferred over the list. */
  assert_int_equal(resolve(per_node, NULL, &who), PAR_OK);
  assert_int_equal(who.local_size, 2);
  /* Repeat counts beyond an int (found by fuzz_whoami: signed overflow) are read as a list
   * that cannot be used, never as a wrapped count. */
  static const char *const huge[] = {"SLURM_PROCID=2",
                                     "SLURM_NTASKS=4",
                                     "SLURM_LOCALID=0",
                                     "SLURM_TASKS_PER_NODE=4(x1),4(x1),4(x2288888888888888888)",
                                     "SLURM_NODEID=5",
                                     "PAR_STORE_ADDR=h:1",
                                     NULL};
  static const char *const many[] = {"SLURM_PROCID=2",
                                     "SLURM_NTASKS=4",
                                     "SLURM_LOCALID=0",
                                     "SLURM_TASKS_PER_NODE=4(x2147483647),3(x2147483647),2",
                                     "SLURM_NODEID=2147483647",
                                     "PAR_STORE_ADDR=h:1",
                                     NULL};
  assert_int_equal(resolve(huge, NULL, &who), PAR_OK);
  assert_int_equal(who.rank, 2);
  assert_int_equal(resolve(many, NULL, &who), PAR_OK);
  assert_int_equal(who.rank, 2);
}

/* ---- precedence ------------------------------------------------------------------------- */

static void test_source_precedence(void **state) {
  (void)state;
  static const char *const all[] = {"SLURM_PROCID=3",
                                    "SLURM_NTASKS=4",
                                    "PMI_RANK=2",
                                    "PMI_SIZE=4",
                                    "OMPI_COMM_WORLD_RANK=1",
                                    "OMPI_COMM_WORLD_SIZE=4",
                                    "RANK=0",
                                    "WORLD_SIZE=4",
                                    "PAR_STORE_ADDR=h:1",
                                    NULL};
  par__whoami who;
  assert_int_equal(resolve(all, NULL, &who), PAR_OK);
  assert_string_equal(who.source, "parrun/torchrun");
  assert_int_equal(who.rank, 0);
  static const char *const mpi_slurm_pmi[] = {
      "SLURM_PROCID=3",         "SLURM_NTASKS=4",         "PMI_RANK=2",         "PMI_SIZE=4",
      "OMPI_COMM_WORLD_RANK=1", "OMPI_COMM_WORLD_SIZE=4", "PAR_STORE_ADDR=h:1", NULL};
  assert_int_equal(resolve(mpi_slurm_pmi, NULL, &who), PAR_OK);
  assert_string_equal(who.source, "Open MPI");
  assert_int_equal(who.rank, 1);
  static const char *const slurm_pmi[] = {"SLURM_PROCID=3", "SLURM_NTASKS=4",     "PMI_RANK=2",
                                          "PMI_SIZE=4",     "PAR_STORE_ADDR=h:1", NULL};
  assert_int_equal(resolve(slurm_pmi, NULL, &who), PAR_OK);
  assert_string_equal(who.source, "PMI");
  assert_int_equal(who.rank, 2);
}

static void test_options_win(void **state) {
  (void)state;
  static const char *const env[] = {"RANK=0",
                                    "WORLD_SIZE=2",
                                    "LOCAL_RANK=0",
                                    "LOCAL_WORLD_SIZE=2",
                                    "PAR_STORE_ADDR=envhost:1",
                                    "PAR_TOKEN=envtoken",
                                    NULL};
  par_world_options o = PAR_WORLD_OPTIONS_INIT;
  o.rank = 2;
  o.size = 3;
  o.store_addr = "opthost:4242";
  o.token = "opttoken";
  par__whoami who;
  assert_int_equal(resolve(env, &o, &who), PAR_OK);
  assert_string_equal(who.source, "options");
  assert_int_equal(who.rank, 2);
  assert_int_equal(who.size, 3);
  /* Local values default to the options' world, not to the environment's LOCAL_*. */
  assert_int_equal(who.local_rank, 2);
  assert_int_equal(who.local_size, 3);
  assert_string_equal(who.store_host, "opthost");
  assert_int_equal(who.store_port, 4242);
  assert_string_equal(who.token, "opttoken");

  /* Explicit local values override an environment source's. */
  par_world_options lo = PAR_WORLD_OPTIONS_INIT;
  lo.local_rank = 0;
  lo.local_size = 1;
  assert_int_equal(resolve(env, &lo, &who), PAR_OK);
  assert_string_equal(who.source, "parrun/torchrun");
  assert_int_equal(who.local_rank, 0);
  assert_int_equal(who.local_size, 1);
  assert_string_equal(who.store_host, "envhost");
  assert_string_equal(who.token, "envtoken");
}

static void test_world_of_one_has_no_store(void **state) {
  (void)state;
  static const char *const env[] = {"RANK=0", "WORLD_SIZE=1", "MASTER_ADDR=x", "MASTER_PORT=1234",
                                    NULL};
  par__whoami who;
  assert_int_equal(resolve(env, NULL, &who), PAR_OK);
  assert_int_equal(who.size, 1);
  assert_string_equal(who.store_host, "");
  assert_int_equal(who.host_store, 0);
  /* Empty values count as unset. */
  static const char *const empty[] = {"RANK=", "WORLD_SIZE=", NULL};
  assert_int_equal(resolve(empty, NULL, &who), PAR_OK);
  assert_string_equal(who.source, "none");
}

/* ---- malformed and inconsistent values ---------------------------------------------------- */

static void test_malformed_numbers_name_the_variable(void **state) {
  (void)state;
  static const char *const e1[] = {"RANK=abc", "WORLD_SIZE=2", NULL};
  expect_error(e1, NULL, "RANK='abc'");
  static const char *const e2[] = {"RANK=0", "WORLD_SIZE=0", NULL};
  expect_error(e2, NULL, "WORLD_SIZE='0'");
  static const char *const e3[] = {"RANK=1x", "WORLD_SIZE=2", NULL};
  expect_error(e3, NULL, "RANK='1x'");
  static const char *const e4[] = {"RANK=-1", "WORLD_SIZE=2", NULL};
  expect_error(e4, NULL, "RANK='-1'");
  static const char *const e5[] = {"RANK=99999999999", "WORLD_SIZE=2", NULL};
  expect_error(e5, NULL, "RANK='99999999999'");
  static const char *const e6[] = {"OMPI_COMM_WORLD_RANK=0", "OMPI_COMM_WORLD_SIZE=2",
                                   "OMPI_COMM_WORLD_LOCAL_RANK=zero", NULL};
  expect_error(e6, NULL, "OMPI_COMM_WORLD_LOCAL_RANK='zero'");
  static const char *const e7[] = {"PMI_RANK=0", "PMI_SIZE=two", NULL};
  expect_error(e7, NULL, "PMI_SIZE='two'");
  static const char *const e8[] = {"SLURM_PROCID=0",  "SLURM_NTASKS=2",         "SLURM_LOCALID=0",
                                   "SLURM_NODEID=n0", "SLURM_TASKS_PER_NODE=2", NULL};
  expect_error(e8, NULL, "SLURM_NODEID='n0'");
  static const char *const e9[] = {"RANK=0", "WORLD_SIZE=2", "MASTER_ADDR=h", "MASTER_PORT=99999",
                                   NULL};
  expect_error(e9, NULL, "MASTER_PORT='99999'");
  static const char *const e10[] = {"RANK=0", "WORLD_SIZE=2", "PAR_STORE_ADDR=nohost", NULL};
  expect_error(e10, NULL, "PAR_STORE_ADDR='nohost'");
  static const char *const e11[] = {"RANK=0", "WORLD_SIZE=2", "PAR_STORE_ADDR=h:0", NULL};
  expect_error(e11, NULL, "PAR_STORE_ADDR='h:0'");
  /* Checked even in a world of one. */
  static const char *const e12[] = {"PAR_STORE_ADDR=h:port", NULL};
  expect_error(e12, NULL, "PAR_STORE_ADDR='h:port'");
}

static void test_inconsistent_values(void **state) {
  (void)state;
  static const char *const e1[] = {"RANK=4", "WORLD_SIZE=4", NULL};
  expect_error(e1, NULL, "RANK=4 is not less than WORLD_SIZE=4");
  static const char *const e2[] = {"RANK=1", NULL};
  expect_error(e2, NULL, "RANK is set but WORLD_SIZE is not");
  static const char *const e3[] = {
      "RANK=1", "WORLD_SIZE=4", "LOCAL_RANK=2", "LOCAL_WORLD_SIZE=2", "PAR_STORE_ADDR=h:1", NULL};
  expect_error(e3, NULL, "LOCAL_RANK=2 is not less than LOCAL_WORLD_SIZE=2");
  static const char *const e4[] = {"RANK=1", "WORLD_SIZE=2", "LOCAL_RANK=1", "LOCAL_WORLD_SIZE=4",
                                   NULL};
  expect_error(e4, NULL, "LOCAL_WORLD_SIZE=4 is larger than WORLD_SIZE=2");
  static const char *const e4b[] = {"RANK=1", "WORLD_SIZE=2", "LOCAL_WORLD_SIZE=2", NULL};
  expect_error(e4b, NULL, "LOCAL_WORLD_SIZE is set but no local rank (LOCAL_RANK) is");
  static const char *const e5[] = {"RANK=1", "WORLD_SIZE=2", "MASTER_ADDR=h", NULL};
  expect_error(e5, NULL, "MASTER_ADDR is set but MASTER_PORT is not");
  static const char *const e6[] = {"RANK=1", "WORLD_SIZE=2", "MASTER_PORT=1", NULL};
  expect_error(e6, NULL, "MASTER_PORT is set but MASTER_ADDR is not");

  par_world_options o = PAR_WORLD_OPTIONS_INIT;
  o.rank = 1;
  expect_error((const char *const[]){NULL}, &o, "must be set together");
  o.size = 1;
  expect_error((const char *const[]){NULL}, &o, "rank 1 and size 1");
  o.rank = 0;
  o.size = 2;
  o.store_addr = "h:1";
  o.local_rank = 3;
  expect_error((const char *const[]){NULL}, &o, "local rank 3");
}

static void test_no_store_for_big_world(void **state) {
  (void)state;
  static const char *const env[] = {"OMPI_COMM_WORLD_RANK=0", "OMPI_COMM_WORLD_SIZE=3", NULL};
  expect_error(env, NULL, "launch with parrun, or set MASTER_ADDR and MASTER_PORT");
  expect_error(env, NULL, "world of 3 ranks (from Open MPI)");
}

static void test_token_too_long(void **state) {
  (void)state;
  char longtok[320] = "PAR_TOKEN=";
  size_t at = strlen(longtok);
  memset(longtok + at, 'a', sizeof longtok - 1 - at);
  longtok[sizeof longtok - 1] = '\0';
  const char *const env[] = {longtok, NULL};
  expect_error(env, NULL, "PAR_TOKEN is too long");
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_none_is_world_of_one),
      cmocka_unit_test(test_parrun_env),
      cmocka_unit_test(test_torchrun_master_rank0_hosts),
      cmocka_unit_test(test_torchrun_agent_port),
      cmocka_unit_test(test_open_mpi),
      cmocka_unit_test(test_pmi),
      cmocka_unit_test(test_slurm),
      cmocka_unit_test(test_source_precedence),
      cmocka_unit_test(test_options_win),
      cmocka_unit_test(test_world_of_one_has_no_store),
      cmocka_unit_test(test_malformed_numbers_name_the_variable),
      cmocka_unit_test(test_inconsistent_values),
      cmocka_unit_test(test_no_store_for_big_world),
      cmocka_unit_test(test_token_too_long),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
