/*
 * machine.c -- what this host's CPU says about itself: cache sizes and who shares them, the
 * CPUs the job may use, the vector extensions it can run, its model name. par__tuning
 * (tune.c) derives the shared-memory backend's sizes from these facts.
 *
 * Sources, in order: Linux sysfs (/sys/devices/system/cpu/cpu0/cache/index*), which the kernel
 * fills from CPUID on x86 and from the device tree or ACPI PPTT elsewhere; then CPUID itself
 * for what sysfs lacks (containers that mask /sys, old kernels, VMs without cache nodes; AMD's
 * older leaves where a hypervisor hides the newer one); then defaults. Reading is
 * split from the CPUID and default steps so tests can hand it a fake tree (par__machine_read
 * takes a root directory). A value that does not parse, or is 0 or absurd, counts as unknown:
 * a wrong cache size would mistune every op, a missing one only falls back to the defaults.
 */
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <sys/uio.h>
#include <unistd.h>

#include "core/core.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <cpuid.h>
#define HAVE_CPUID 1
#else
#define HAVE_CPUID 0
#endif

/* Larger than any cache made (AMD's 3D V-Cache EPYCs have 1.1 GiB of L3): beyond this the
 * file is garbage, not a cache. */
#define CACHE_MAX ((size_t)16 << 30)
#define SHARED_MAX 65536

#define DEFAULT_L1D ((size_t)32 << 10)
#define DEFAULT_L2 ((size_t)512 << 10)
#define DEFAULT_L3 ((size_t)32 << 20)
#define DEFAULT_L3_SHARED_BY 2

/* ---------------------------------------------------------------------------------------- */
/* sysfs                                                                                    */
/* ---------------------------------------------------------------------------------------- */

/* Reads the first line of root/rel into buf, without its newline; 0 on success. */
static int read_line(const char *root, const char *rel, char *buf, size_t len) {
  char path[512];
  snprintf(path, sizeof path, "%s/%s", root, rel);
  FILE *f = fopen(path, "r");
  if (!f) return -1;
  char *got = fgets(buf, (int)len, f);
  fclose(f);
  if (!got) return -1;
  buf[strcspn(buf, "\n")] = '\0';
  return 0;
}

/* "32K", "2048K", "260M", "1G" or plain bytes (the kernel writes "%uK"); 0 if malformed. */
static size_t parse_cache_size(const char *s) {
  if (*s < '0' || *s > '9') return 0;
  char *end;
  unsigned long long v = strtoull(s, &end, 10);
  unsigned shift = 0;
  if (*end == 'K' || *end == 'k')
    shift = 10, end++;
  else if (*end == 'M' || *end == 'm')
    shift = 20, end++;
  else if (*end == 'G' || *end == 'g')
    shift = 30, end++;
  if (*end != '\0' || v == 0 || v > (CACHE_MAX >> shift)) return 0;
  return (size_t)(v << shift);
}

/* Counts the CPUs of a list such as "0-3,8,10-11"; 0 if malformed. */
static int count_cpu_list(const char *s) {
  long n = 0;
  while (*s) {
    char *end;
    if (*s < '0' || *s > '9') return 0;
    long a = strtol(s, &end, 10), b = a;
    if (*end == '-') {
      if (end[1] < '0' || end[1] > '9') return 0;
      b = strtol(end + 1, &end, 10);
    }
    if (b < a || b - a >= SHARED_MAX) return 0;
    n += b - a + 1;
    if (n > SHARED_MAX) return 0;
    if (*end == ',')
      end++;
    else if (*end != '\0')
      return 0;
    s = end;
  }
  return (int)n;
}

/* Counts the bits of a mask such as "00000000,0000000f"; 0 if malformed. */
static int count_cpu_map(const char *s) {
  int n = 0, digits = 0;
  for (; *s; s++) {
    if (*s == ',') continue;
    int d = *s >= '0' && *s <= '9'   ? *s - '0'
            : *s >= 'a' && *s <= 'f' ? *s - 'a' + 10
            : *s >= 'A' && *s <= 'F' ? *s - 'A' + 10
                                     : -1;
    if (d < 0) return 0;
    n += __builtin_popcount((unsigned)d);
    digits++;
  }
  return digits && n <= SHARED_MAX ? n : 0;
}

/* One cache's description: index<i>/{level,type,size,shared_cpu_list|shared_cpu_map}. */
static void read_index(const char *root, int i, par__machine *m) {
  char rel[128], level[16], type[32], size[64], shared[4096];
  const char *dir = "sys/devices/system/cpu/cpu0/cache";
  snprintf(rel, sizeof rel, "%s/index%d/level", dir, i);
  if (read_line(root, rel, level, sizeof level)) return;
  snprintf(rel, sizeof rel, "%s/index%d/type", dir, i);
  if (read_line(root, rel, type, sizeof type)) return;
  snprintf(rel, sizeof rel, "%s/index%d/size", dir, i);
  if (read_line(root, rel, size, sizeof size)) return;
  size_t bytes = parse_cache_size(size);
  if (!bytes || !strcmp(type, "Instruction")) return;

  int by = 0;
  snprintf(rel, sizeof rel, "%s/index%d/shared_cpu_list", dir, i);
  if (!read_line(root, rel, shared, sizeof shared)) by = count_cpu_list(shared);
  snprintf(rel, sizeof rel, "%s/index%d/shared_cpu_map", dir, i);
  if (!by && !read_line(root, rel, shared, sizeof shared)) by = count_cpu_map(shared);

  int unified = !strcmp(type, "Unified"), data = !strcmp(type, "Data");
  if (!strcmp(level, "1") && data) {
    m->l1d = bytes, m->l1d_from = PAR__FROM_SYSFS;
  } else if (!strcmp(level, "2") && (data || unified)) {
    m->l2 = bytes, m->l2_shared_by = by, m->l2_from = PAR__FROM_SYSFS;
  } else if (!strcmp(level, "3") && unified) {
    m->l3 = bytes, m->l3_shared_by = by, m->l3_from = PAR__FROM_SYSFS;
  }
}

/* The first "model name" line of proc/cpuinfo (x86; other architectures name it otherwise
 * and are left to CPUID or "unknown"). */
static void read_model(const char *root, par__machine *m) {
  char path[512], line[512];
  snprintf(path, sizeof path, "%s/proc/cpuinfo", root);
  FILE *f = fopen(path, "r");
  if (!f) return;
  while (fgets(line, sizeof line, f)) {
    if (strncmp(line, "model name", 10)) continue;
    const char *v = strchr(line, ':');
    if (!v) continue;
    for (v++; *v == ' ' || *v == '\t'; v++) {
    }
    snprintf(m->model, sizeof m->model, "%.*s", (int)strcspn(v, "\n"), v);
    break;
  }
  fclose(f);
}

void par__machine_read(const char *root, par__machine *out) {
  memset(out, 0, sizeof *out);
  /* index0..3 is the usual L1d, L1i, L2, L3; some CPUs list more (an L4, split L2s). */
  for (int i = 0; i < 16; i++) read_index(root, i, out);
  read_model(root, out);
}

/* ---------------------------------------------------------------------------------------- */
/* CPUID                                                                                    */
/* ---------------------------------------------------------------------------------------- */

#if HAVE_CPUID
/* Leaf 4 (Intel) and 0x8000001D (AMD, with TOPOEXT) describe one cache per subleaf in the
 * same layout: EAX type (bits 4:0, 0 = no more) and level (7:5), CPUs sharing it (25:14, + 1);
 * size = ways x partitions x line size x sets, each field + 1. */
static void cpuid_caches(unsigned leaf, par__machine *m) {
  for (unsigned i = 0; i < 16; i++) {
    unsigned a, b, c, d;
    __cpuid_count(leaf, i, a, b, c, d);
    unsigned type = a & 31, level = (a >> 5) & 7;
    if (type == 0) break;
    size_t size =
        (size_t)((b >> 22) + 1) * (((b >> 12) & 0x3ff) + 1) * ((b & 0xfff) + 1) * ((size_t)c + 1);
    int by = (int)((a >> 14) & 0xfff) + 1;
    if (size > CACHE_MAX) continue;
    if (level == 1 && type == 1 && !m->l1d) {
      m->l1d = size, m->l1d_from = PAR__FROM_CPUID;
    } else if (level == 2 && type != 2 && !m->l2) {
      m->l2 = size, m->l2_shared_by = by, m->l2_from = PAR__FROM_CPUID;
    } else if (level == 3 && type == 3 && !m->l3) {
      m->l3 = size, m->l3_shared_by = by, m->l3_from = PAR__FROM_CPUID;
    }
  }
}

/* AMD's leaf for the L1d and L2 before the topology extensions, which hypervisors that hide
 * 0x8000001D still pass on (Firecracker): done only when the leaf exists. */
static void cpuid_amd_legacy(par__machine *m) {
  if ((unsigned)__get_cpuid_max(0x80000000u, NULL) < 0x80000006u) return;
  unsigned a, b, c5, c6, d;
  __cpuid(0x80000005u, a, b, c5, d);
  __cpuid(0x80000006u, a, b, c6, d);
  par__machine_amd_legacy(m, c5, c6);
}

static void cpuid_brand(par__machine *m) {
  unsigned max = __get_cpuid_max(0x80000000u, NULL);
  if (max < 0x80000004u) return;
  unsigned r[12];
  for (unsigned i = 0; i < 3; i++)
    __cpuid(0x80000002u + i, r[4 * i], r[4 * i + 1], r[4 * i + 2], r[4 * i + 3]);
  char s[49];
  memcpy(s, r, 48);
  s[48] = '\0';
  const char *p = s;
  while (*p == ' ') p++;
  snprintf(m->model, sizeof m->model, "%s", p);
}

/* XCR0: which register states the OS saves on a context switch. */
static unsigned long long xgetbv0(void) {
  unsigned lo, hi;
  __asm__ __volatile__("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  return (unsigned long long)hi << 32 | lo;
}

/* AVX2 needs the YMM state saved (XCR0 bits 1, 2); AVX-512 also the opmask and ZMM states
 * (bits 5, 6, 7). A CPU that has the instructions under an OS that does not save them
 * (or a hypervisor that hides them) faults on the first use, so both are required. */
static void cpuid_isa(par__machine *m) {
  unsigned a, b, c, d;
  if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & bit_OSXSAVE)) return;
  unsigned long long xcr0 = xgetbv0();
  if (__get_cpuid_max(0, NULL) < 7) return;
  __cpuid_count(7, 0, a, b, c, d);
  m->avx2 = (b & bit_AVX2) && (xcr0 & 0x6) == 0x6;
  m->avx512 = (b & bit_AVX512F) && (b & bit_AVX512BW) && (xcr0 & 0xe6) == 0xe6;
}
#endif

void par__machine_cpuid(par__machine *m) {
#if HAVE_CPUID
  unsigned a, b, c, d;
  if (!__get_cpuid(0, &a, &b, &c, &d)) return;
  int amd = (b == 0x68747541u && d == 0x69746e65u && c == 0x444d4163u) || /* AuthenticAMD */
            (b == 0x6f677948u && d == 0x6e65476eu && c == 0x656e6975u);   /* HygonGenuine */
  if (amd) {
    /* 0x8000001D exists only with the topology extensions (CPUID 0x80000001 ECX bit 22). */
    if ((unsigned)__get_cpuid_max(0x80000000u, NULL) >= 0x8000001Du &&
        __get_cpuid(0x80000001u, &a, &b, &c, &d) && (c & (1u << 22)))
      cpuid_caches(0x8000001Du, m);
    cpuid_amd_legacy(m);
  } else if (a >= 4) {
    cpuid_caches(4, m);
  }
  if (!m->model[0]) cpuid_brand(m);
#else
  (void)m;
#endif
}

/*
 * AMD's older cache leaves, for what 0x8000001D left unknown: 0x80000005 ECX gives the L1d
 * (KiB in bits 31:24), 0x80000006 ECX the L2 (KiB in bits 31:16), each a core's own (shared
 * by 1: SMT siblings cannot be told from here, and the leaves that would tell are the ones
 * hidden). Its L3 (0x80000006 EDX) is left alone: on parts with several core complexes it is
 * the package's total, with no count of the cores that share it (508 MiB on a 2-vCPU Zen 5
 * VM whose core complex has 32 MiB), and a cache believed 16 times larger than it is would
 * mistune every rule that trusts the L3, where the default only tunes as before.
 */
void par__machine_amd_legacy(par__machine *m, unsigned ecx5, unsigned ecx6) {
  size_t l1d = (size_t)(ecx5 >> 24) << 10, l2 = (size_t)(ecx6 >> 16) << 10;
  if (!m->l1d && l1d) m->l1d = l1d, m->l1d_from = PAR__FROM_CPUID;
  if (!m->l2 && l2) m->l2 = l2, m->l2_shared_by = 1, m->l2_from = PAR__FROM_CPUID;
}

void par__machine_defaults(par__machine *m) {
  if (!m->l1d) m->l1d = DEFAULT_L1D, m->l1d_from = PAR__FROM_DEFAULT;
  if (!m->l2) m->l2 = DEFAULT_L2, m->l2_shared_by = 1, m->l2_from = PAR__FROM_DEFAULT;
  if (!m->l3)
    m->l3 = DEFAULT_L3, m->l3_shared_by = DEFAULT_L3_SHARED_BY, m->l3_from = PAR__FROM_DEFAULT;
  if (m->l2_shared_by < 1) m->l2_shared_by = 1;
  if (m->l3_shared_by < 1) m->l3_shared_by = 1;
  if (m->cpus < 1) m->cpus = 1;
  if (!m->model[0]) snprintf(m->model, sizeof m->model, "unknown");
}

/* ---------------------------------------------------------------------------------------- */
/* This host, once                                                                          */
/* ---------------------------------------------------------------------------------------- */

/* memcpy against par__copy's store loop, 64 KiB in the caches, the destination at the
 * source's page offset and 16 bytes past it: the loop is taken where it is 10% faster (Zen 3
 * with glibc 2.36, 16 past: 1.8-2.2 against 33-36 GB/s; Zen 5, the same offset 0: memcpy
 * 117 against 85 GB/s at 128 KiB). Best of 8 runs each. */
static void copy_calibrate(par__machine *m) {
  enum { BYTES = 64 << 10, RUNS = 8 };
  char *a = aligned_alloc(4096, BYTES + 4096), *b = aligned_alloc(4096, BYTES + 4096);
  m->copy_loop[0] = m->copy_loop[1] = 0;
  if (a && b) {
    memset(a, 1, BYTES + 4096);
    memset(b, 2, BYTES + 4096);
    for (int k = 0; k < 2; k++) {
      char *dst = b + (k ? 16 : 0);
      double best[2] = {1e9, 1e9};
      for (int i = 0; i < RUNS; i++)
        for (int loop = 0; loop < 2; loop++) {
          double t0 = par__now();
          if (loop)
            par__copy_out(dst, a, BYTES);
          else
            memcpy(dst, a, BYTES);
          double t = par__now() - t0;
          if (t < best[loop]) best[loop] = t;
        }
      m->copy_loop[k] = best[1] < 0.9 * best[0];
    }
  }
  free(a);
  free(b);
}

/* Best of a few runs of each copy over the same 256 KiB, which stay in the caches: the
 * ratio is the kernel's cost per byte against memcpy's, whatever the clock speed. */
void par__machine_calibrate(par__machine *m) {
  enum { BYTES = 256 << 10, RUNS = 8 };
  char *a = malloc(BYTES), *b = malloc(BYTES);
  m->cma_slowdown = 0;
  if (a && b) {
    memset(a, 1, BYTES);
    memset(b, 2, BYTES);
    double cp = 1e9, cma = 1e9;
    struct iovec local = {b, BYTES}, remote = {a, BYTES};
    int ok = 1;
    for (int i = 0; i < RUNS && ok; i++) {
      double t0 = par__now();
      memcpy(b, a, BYTES);
      double t1 = par__now();
      ok = process_vm_readv(getpid(), &local, 1, &remote, 1, 0) == BYTES;
      double t2 = par__now();
      if (t1 - t0 < cp) cp = t1 - t0;
      if (t2 - t1 < cma) cma = t2 - t1;
    }
    if (ok && cp > 0) m->cma_slowdown = cma / cp;
  }
  free(a);
  free(b);
  copy_calibrate(m);
}

static par__machine host;
static pthread_once_t host_once = PTHREAD_ONCE_INIT;

static void host_read(void) {
  par__machine_read("", &host);
  par__machine_cpuid(&host);
  host.cpus = par__job_cpus();
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof set, &set) == 0) host.cpus_affinity = CPU_COUNT(&set);
#if HAVE_CPUID
  cpuid_isa(&host);
#endif
  par__machine_defaults(&host);
  par__machine_calibrate(&host);
}

const par__machine *par__machine_get(void) {
  pthread_once(&host_once, host_read);
  return &host;
}

void par__fmt_size(char *buf, size_t len, size_t v) {
  if (v && v % (1u << 20) == 0)
    snprintf(buf, len, "%zuM", v >> 20);
  else if (v && v % 1024 == 0)
    snprintf(buf, len, "%zuK", v >> 10);
  else
    snprintf(buf, len, "%zu", v);
}

static const char *from_name(par__fact_from f) {
  static const char *names[] = {"unknown", "sysfs", "cpuid", "default"};
  return (unsigned)f < 4 ? names[f] : "?";
}

void par__machine_describe(const par__machine *m, char *buf, size_t len) {
  char a[24], b[24], c[24];
  par__fmt_size(a, sizeof a, m->l1d);
  par__fmt_size(b, sizeof b, m->l2);
  par__fmt_size(c, sizeof c, m->l3);
  snprintf(buf, len,
           "%s: L1d %s (%s), L2 %s shared by %d (%s), L3 %s shared by %d (%s); %d CPUs for the "
           "job, %d in this process's affinity; AVX2 %s, AVX-512 %s; single copy %.1fx memcpy; "
           "copies at a page offset 0 / 1-63 bytes apart: %s / %s",
           m->model, a, from_name(m->l1d_from), b, m->l2_shared_by, from_name(m->l2_from), c,
           m->l3_shared_by, from_name(m->l3_from), m->cpus, m->cpus_affinity,
           m->avx2 ? "yes" : "no", m->avx512 ? "yes" : "no", m->cma_slowdown,
           m->copy_loop[0] ? "loop" : "memcpy", m->copy_loop[1] ? "loop" : "memcpy");
}
