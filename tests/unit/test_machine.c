/*
 * test_machine.c -- par__machine_read against fake sysfs trees written into a temporary
 * directory: the two cache hierarchies par was run on (AMD EPYC Zen 3 and an Intel Xeon with
 * 2 MiB L2 and 260 MiB L3), sharing given as a list or as a mask, and trees that are missing
 * or hold garbage, which must leave the facts unknown so that the defaults apply. Then this
 * host: CPUID must agree with sysfs, and the vector extensions with /proc/cpuinfo.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "core/core.h"

#define KIB ((size_t)1 << 10)
#define MIB ((size_t)1 << 20)
#define CACHE "sys/devices/system/cpu/cpu0/cache"

/* ---- fake trees ------------------------------------------------------------------------- */

static char root[64];

/* Writes root/rel (creating its directories) with `text`. */
static void put(const char *rel, const char *text) {
  char path[512];
  snprintf(path, sizeof path, "%s/%s", root, rel);
  for (char *p = path + strlen(root) + 1; (p = strchr(p, '/')); p++) {
    *p = '\0';
    mkdir(path, 0755);
    *p = '/';
  }
  FILE *f = fopen(path, "w");
  assert_non_null(f);
  fputs(text, f);
  fclose(f);
}

/* One cache: index<i> with level, type, size and, when given, shared_cpu_list / _map. */
static void put_cache(int i, const char *level, const char *type, const char *size,
                      const char *list, const char *map) {
  char rel[128];
  const char *names[] = {"level", "type", "size", "shared_cpu_list", "shared_cpu_map"};
  const char *values[] = {level, type, size, list, map};
  for (int k = 0; k < 5; k++) {
    if (!values[k]) continue;
    snprintf(rel, sizeof rel, CACHE "/index%d/%s", i, names[k]);
    char line[128];
    snprintf(line, sizeof line, "%s\n", values[k]);
    put(rel, line);
  }
}

static int make_root(void **state) {
  (void)state;
  snprintf(root, sizeof root, "/tmp/par-test-machine-XXXXXX");
  return mkdtemp(root) ? 0 : -1;
}

static int remove_root(void **state) {
  (void)state;
  char cmd[128];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", root);
  return system(cmd) == 0 ? 0 : -1;
}

/* ---- the two hierarchies ---------------------------------------------------------------- */

static void test_epyc(void **state) {
  (void)state;
  /* As this Zen 3 VM's kernel writes it: L3 shared by both vCPUs, the map beside the list. */
  put_cache(0, "1", "Data", "32K", "0", "1");
  put_cache(1, "1", "Instruction", "32K", "0", "1");
  put_cache(2, "2", "Unified", "512K", "0", "1");
  put_cache(3, "3", "Unified", "32768K", "0-1", "3");
  put("proc/cpuinfo",
      "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC\n"
      "flags\t\t: fpu avx2\n\nprocessor\t: 1\nmodel name\t: AMD EPYC\n");
  par__machine m;
  par__machine_read(root, &m);
  assert_int_equal(m.l1d, 32 * KIB);
  assert_int_equal(m.l2, 512 * KIB);
  assert_int_equal(m.l3, 32 * MIB);
  assert_int_equal(m.l2_shared_by, 1);
  assert_int_equal(m.l3_shared_by, 2);
  assert_int_equal(m.l1d_from, PAR__FROM_SYSFS);
  assert_int_equal(m.l2_from, PAR__FROM_SYSFS);
  assert_int_equal(m.l3_from, PAR__FROM_SYSFS);
  assert_string_equal(m.model, "AMD EPYC");
  /* Reading touches neither CPUID nor the affinity: those are par__machine_get's. */
  assert_int_equal(m.cpus, 0);
  assert_int_equal(m.avx512, 0);
}

static void test_xeon(void **state) {
  (void)state;
  /* 48 KiB L1d (Golden Cove), 2 MiB L2 per core, 260 MiB L3 given as a mask only. */
  put_cache(0, "1", "Data", "48K", "0", NULL);
  put_cache(1, "1", "Instruction", "32K", "0", NULL);
  put_cache(2, "2", "Unified", "2048K", "0", NULL);
  put_cache(3, "3", "Unified", "266240K", NULL, "00000000,00000003");
  put("proc/cpuinfo", "model name\t: Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz\n");
  par__machine m;
  par__machine_read(root, &m);
  assert_int_equal(m.l1d, 48 * KIB);
  assert_int_equal(m.l2, 2 * MIB);
  assert_int_equal(m.l3, 260 * MIB);
  assert_int_equal(m.l2_shared_by, 1);
  assert_int_equal(m.l3_shared_by, 2);
  assert_string_equal(m.model, "Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz");
  char line[512];
  m.cpus = 2;
  par__machine_describe(&m, line, sizeof line);
  assert_non_null(strstr(line, "L1d 48K (sysfs), L2 2M shared by 1 (sysfs), L3 260M shared by 2"));
}

static void test_sharing_lists_and_masks(void **state) {
  (void)state;
  /* A big part: SMT siblings share the L2, 16 CPUs in scattered ranges share the L3. */
  put_cache(0, "1", "Data", "32K", "0,64", NULL);
  put_cache(2, "2", "Unified", "1M", "0,64", NULL);
  put_cache(3, "3", "Unified", "32M", "0-3,8,10-11,64-71", NULL);
  par__machine m;
  par__machine_read(root, &m);
  assert_int_equal(m.l2, 1 * MIB);
  assert_int_equal(m.l2_shared_by, 2);
  assert_int_equal(m.l3_shared_by, 15);
  /* An unreadable list falls back to the mask. */
  put_cache(3, "3", "Unified", "32M", "0-x", "ff,0000ffff");
  par__machine_read(root, &m);
  assert_int_equal(m.l3_shared_by, 24);
}

/* ---- missing and garbage ---------------------------------------------------------------- */

static void expect_defaults(par__machine *m) {
  par__machine_defaults(m);
  assert_int_equal(m->l1d, 32 * KIB);
  assert_int_equal(m->l2, 512 * KIB);
  assert_int_equal(m->l3, 32 * MIB);
  assert_int_equal(m->l2_shared_by, 1);
  assert_int_equal(m->l3_shared_by, 2);
  assert_int_equal(m->l1d_from, PAR__FROM_DEFAULT);
  assert_int_equal(m->l2_from, PAR__FROM_DEFAULT);
  assert_int_equal(m->l3_from, PAR__FROM_DEFAULT);
  assert_int_equal(m->cpus, 1);
}

static void test_missing_tree(void **state) {
  (void)state;
  par__machine m;
  par__machine_read("/nonexistent/par-test", &m);
  assert_int_equal(m.l1d, 0);
  assert_int_equal(m.l1d_from, PAR__FROM_NONE);
  assert_string_equal(m.model, "");
  expect_defaults(&m);
  assert_string_equal(m.model, "unknown");
}

static void test_garbage_tree(void **state) {
  (void)state;
  put_cache(0, "1", "Data", "abc", "0", NULL);
  put_cache(1, "1", "Data", "32Q", "0", NULL);
  put_cache(2, "2", "Unified", "0K", "0", NULL);
  put_cache(3, "3", "Unified", "99999999999999999999K", "0-1", NULL);
  put_cache(4, "3", "Unified", "16777217K", "0-1", NULL); /* 16 GiB + 1 KiB */
  put_cache(5, "x", "Unified", "1M", "0", NULL);
  put_cache(6, "2", "Bogus", "1M", "0", NULL);
  put_cache(7, "", "", "", "", "");
  put("proc/cpuinfo", "model name without a colon\n\x01\x02\n");
  par__machine m;
  par__machine_read(root, &m);
  assert_int_equal(m.l1d, 0);
  assert_int_equal(m.l2, 0);
  assert_int_equal(m.l3, 0);
  expect_defaults(&m);
}

static void test_bad_sharing_is_one(void **state) {
  (void)state;
  /* A size that parses with a sharing list that does not: the size stands, sharing is 1. */
  put_cache(0, "1", "Data", "64K", "0", NULL);
  put_cache(2, "2", "Unified", "1M", "3-1", NULL);
  put_cache(3, "3", "Unified", "16M", "zz", "xyz");
  par__machine m;
  par__machine_read(root, &m);
  assert_int_equal(m.l1d, 64 * KIB);
  assert_int_equal(m.l2, 1 * MIB);
  assert_int_equal(m.l3, 16 * MIB);
  assert_int_equal(m.l2_shared_by, 0);
  assert_int_equal(m.l3_shared_by, 0);
  par__machine_defaults(&m);
  assert_int_equal(m.l2_shared_by, 1);
  assert_int_equal(m.l3_shared_by, 1);
  assert_int_equal(m.l1d_from, PAR__FROM_SYSFS);
}

/* ---- this host ---------------------------------------------------------------------------- */

/* 1 when /proc/cpuinfo's flags line has `flag` as a whole word. */
static int cpuinfo_has(const char *flag) {
  FILE *f = fopen("/proc/cpuinfo", "r");
  if (!f) return -1;
  char line[8192];
  int found = 0;
  while (!found && fgets(line, sizeof line, f)) {
    if (strncmp(line, "flags", 5)) continue;
    for (char *t = strtok(strchr(line, ':') + 1, " \n"); t; t = strtok(NULL, " \n"))
      if (!strcmp(t, flag)) found = 1;
    break;
  }
  fclose(f);
  return found;
}

/* AMD's older leaves as a Zen 5 VM under Firecracker returns them (0x8000001D all zero):
 * the L1d and L2 come from them, never the L3, and no known fact is overwritten. */
static void test_amd_legacy(void **state) {
  (void)state;
  par__machine m;
  memset(&m, 0, sizeof m);
  par__machine_amd_legacy(&m, 0x300c0140u, 0x04006140u);
  assert_int_equal(m.l1d, 48 * KIB);
  assert_int_equal(m.l2, 1024 * KIB);
  assert_int_equal(m.l2_shared_by, 1);
  assert_int_equal(m.l1d_from, PAR__FROM_CPUID);
  assert_int_equal(m.l2_from, PAR__FROM_CPUID);
  assert_int_equal(m.l3, 0);
  assert_int_equal(m.l3_from, PAR__FROM_NONE);
  memset(&m, 0, sizeof m);
  m.l2 = 2048 * KIB, m.l2_shared_by = 2, m.l2_from = PAR__FROM_SYSFS;
  par__machine_amd_legacy(&m, 0, 0x04006140u);
  assert_int_equal(m.l1d, 0); /* a zero register says nothing */
  assert_int_equal(m.l2, 2048 * KIB);
  assert_int_equal(m.l2_shared_by, 2);
  assert_int_equal(m.l2_from, PAR__FROM_SYSFS);
}

static void test_this_host(void **state) {
  (void)state;
  const par__machine *m = par__machine_get();
  assert_ptr_equal(m, par__machine_get());
  assert_true(m->l1d >= 4 * KIB && m->l2 >= m->l1d && m->l3 >= 1);
  assert_true(m->l2_shared_by >= 1 && m->l3_shared_by >= 1);
  assert_int_equal(m->cpus, par__job_cpus());
  assert_true(m->cpus_affinity >= 1);
  assert_true(m->model[0] != '\0');
#if defined(__x86_64__)
  /* Linux lists avx2/avx512f/avx512bw only when it also saves their registers. */
  if (cpuinfo_has("avx2") >= 0) {
    assert_int_equal(m->avx2, cpuinfo_has("avx2"));
    assert_int_equal(m->avx512, cpuinfo_has("avx512f") && cpuinfo_has("avx512bw"));
  }
  /* The kernel fills sysfs from the same CPUID leaves, so par's own reading must agree. */
  par__machine sys, cpu;
  par__machine_read("", &sys);
  memset(&cpu, 0, sizeof cpu);
  par__machine_cpuid(&cpu);
  if (sys.l1d && sys.l2 && sys.l3) {
    assert_int_equal(cpu.l1d, sys.l1d);
    assert_int_equal(cpu.l2, sys.l2);
    assert_int_equal(cpu.l3, sys.l3);
    assert_int_equal(cpu.l1d_from, PAR__FROM_CPUID);
  }
  /* CPUID only fills what is unknown. */
  size_t had = sys.l2;
  par__machine_cpuid(&sys);
  if (had) assert_int_equal(sys.l2_from, PAR__FROM_SYSFS);
  else if (sys.l2) assert_int_equal(sys.l2_from, PAR__FROM_CPUID);
  char line[512];
  par__machine_describe(m, line, sizeof line);
  print_message("this host: %s\n", line);
#endif
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_epyc, make_root, remove_root),
      cmocka_unit_test_setup_teardown(test_xeon, make_root, remove_root),
      cmocka_unit_test_setup_teardown(test_sharing_lists_and_masks, make_root, remove_root),
      cmocka_unit_test(test_missing_tree),
      cmocka_unit_test_setup_teardown(test_garbage_tree, make_root, remove_root),
      cmocka_unit_test_setup_teardown(test_bad_sharing_is_one, make_root, remove_root),
      cmocka_unit_test(test_amd_legacy),
      cmocka_unit_test(test_this_host),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
