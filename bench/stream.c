/*
 * stream.c -- a STREAM-like memory bandwidth figure for bench/compare.py: the rate at which
 * 1, 2, ... threads can copy (c[i] = a[i]) and triad (a[i] = b[i] + s*c[i]) arrays much larger
 * than the caches. It gives the bound docs/PERFORMANCE.md states for a shared-memory all-reduce:
 * every rank must at least read its input and write its output once, so n ranks of S bytes move
 * at least 2*S*n bytes, which takes at least 2*S*n / (copy bandwidth of all cores) seconds.
 *
 * Bytes are counted as STREAM counts them (copy: 16 per double element, read a and write c;
 * triad: 24), ignoring the write-allocate read the caches add; an all-reduce's reads and writes
 * pay that same hidden cost, so the copy rate is the right yardstick for it.
 *
 *   gcc -O2 -std=c11 -pthread -o stream bench/stream.c
 *   ./stream [--mib M] [--threads 1,2] [--reps R] [--json]
 *
 * Each array is M MiB (default 128, three arrays); each thread works on its own contiguous
 * slice, which it also first-touched, and the threads meet at a barrier before and after every
 * kernel; a timing spans the earliest start to the latest end over the threads. The best of R
 * repetitions is reported, as STREAM does (the machine may be shared), along with the median.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MAX_THREADS 64
#define MAX_REPS 1000

typedef enum kernel { K_COPY = 0, K_TRIAD, K_COUNT } kernel;
static const char *const kernel_names[K_COUNT] = {"copy", "triad"};
static const double kernel_bytes[K_COUNT] = {16.0, 24.0}; /* bytes per element, STREAM's way */

typedef struct shared {
  double *a, *b, *c;
  size_t n;
  int nthreads, reps;
  pthread_barrier_t bar;
  /* Each thread's start and end of the current kernel: the kernel's time is the latest end
   * minus the earliest start, so a thread descheduled just after the barrier (the machine is
   * shared) cannot shorten the measured span. */
  double t0[MAX_THREADS], t1[MAX_THREADS];
  double times[K_COUNT][MAX_REPS]; /* written by thread 0 only */
} shared;

typedef struct worker {
  shared *s;
  int id;
} worker;

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void *run(void *arg) {
  worker *w = arg;
  shared *s = w->s;
  size_t lo = s->n * (size_t)w->id / (size_t)s->nthreads;
  size_t hi = s->n * (size_t)(w->id + 1) / (size_t)s->nthreads;
  double *a = s->a, *b = s->b, *c = s->c;
  const double scalar = 3.0;
  /* First touch by the thread that will use the slice: no page fault is timed. */
  for (size_t i = lo; i < hi; i++) a[i] = 1.0, b[i] = 2.0, c[i] = 0.0;
  for (int r = 0; r < s->reps; r++) {
    for (int k = 0; k < K_COUNT; k++) {
      pthread_barrier_wait(&s->bar);
      s->t0[w->id] = now_s();
      if (k == K_COPY)
        for (size_t i = lo; i < hi; i++) c[i] = a[i];
      else
        for (size_t i = lo; i < hi; i++) a[i] = b[i] + scalar * c[i];
      s->t1[w->id] = now_s();
      pthread_barrier_wait(&s->bar);
      if (w->id == 0) {
        double start = s->t0[0], end = s->t1[0];
        for (int i = 1; i < s->nthreads; i++) {
          if (s->t0[i] < start) start = s->t0[i];
          if (s->t1[i] > end) end = s->t1[i];
        }
        s->times[k][r] = end - start;
      }
    }
  }
  return NULL;
}

static int cmp_double(const void *x, const void *y) {
  double a = *(const double *)x, b = *(const double *)y;
  return a < b ? -1 : a > b;
}

/* Runs every kernel reps times on nthreads threads; prints best and median rates. */
static int measure(double *a, double *b, double *c, size_t n, int nthreads, int reps, int json) {
  shared *s = calloc(1, sizeof *s);
  if (s == NULL) return -1;
  *s = (shared){.a = a, .b = b, .c = c, .n = n, .nthreads = nthreads, .reps = reps};
  pthread_barrier_init(&s->bar, NULL, (unsigned)nthreads);
  pthread_t tid[MAX_THREADS];
  worker w[MAX_THREADS];
  int started = 1;
  for (int i = 0; i < nthreads; i++) w[i] = (worker){s, i};
  for (int i = 1; i < nthreads; i++) {
    if (pthread_create(&tid[i], NULL, run, &w[i]) != 0) {
      fprintf(stderr, "stream: cannot start thread %d\n", i);
      exit(1); /* the others wait at a barrier that can no longer fill */
    }
    started++;
  }
  run(&w[0]);
  for (int i = 1; i < started; i++) pthread_join(tid[i], NULL);
  pthread_barrier_destroy(&s->bar);

  for (int k = 0; k < K_COUNT; k++) {
    double *t = s->times[k];
    /* The first repetition still warms the TLB and the caches' state: skip it if we can. */
    int first = reps > 1 ? 1 : 0, m = reps - first;
    qsort(t + first, (size_t)m, sizeof *t, cmp_double);
    double bytes = kernel_bytes[k] * (double)n;
    double best = bytes / t[first] / 1e9;
    double tmed = m % 2 ? t[first + m / 2] : 0.5 * (t[first + m / 2 - 1] + t[first + m / 2]);
    double med = bytes / tmed / 1e9;
    if (json)
      printf(
          "{\"kernel\":\"%s\",\"threads\":%d,\"bytes\":%.0f,\"reps\":%d,\"best_gbs\":%.3f,"
          "\"median_gbs\":%.3f}\n",
          kernel_names[k], nthreads, bytes, m, best, med);
    else
      printf("%-6s %3d thread(s)  %10.0f MB  best %7.2f GB/s  median %7.2f GB/s\n", kernel_names[k],
             nthreads, bytes / 1e6, best, med);
  }
  free(s);
  return 0;
}

static void usage(FILE *f) {
  fprintf(f,
          "usage: stream [--mib M] [--threads LIST] [--reps R] [--json]\n"
          "  --mib M        MiB per array, three arrays (default 128)\n"
          "  --threads LIST thread counts, comma separated (default 1,2)\n"
          "  --reps R       repetitions of each kernel, best and median reported (default 10)\n"
          "  --json         one JSON object per kernel and thread count\n");
}

int main(int argc, char **argv) {
  long mib = 128, reps = 10;
  int threads[MAX_THREADS], nt = 0, json = 0;
  for (int i = 1; i < argc; i++) {
    char *end = NULL;
    const char *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
      usage(stdout);
      return 0;
    } else if (strcmp(argv[i], "--json") == 0) {
      json = 1;
    } else if (strcmp(argv[i], "--mib") == 0 && v) {
      mib = strtol(v, &end, 10);
      if (*end || mib < 1 || mib > 65536) goto bad;
      i++;
    } else if (strcmp(argv[i], "--reps") == 0 && v) {
      reps = strtol(v, &end, 10);
      if (*end || reps < 1 || reps > MAX_REPS) goto bad;
      i++;
    } else if (strcmp(argv[i], "--threads") == 0 && v) {
      const char *p = v;
      nt = 0;
      while (*p) {
        long t = strtol(p, &end, 10);
        if (end == p || t < 1 || t > MAX_THREADS || nt == MAX_THREADS) goto bad;
        threads[nt++] = (int)t;
        p = *end == ',' ? end + 1 : end;
        if (*end != ',' && *end != '\0') goto bad;
      }
      i++;
    } else {
      goto bad;
    }
    continue;
  bad:
    fprintf(stderr, "stream: bad argument '%s'\n", argv[i]);
    usage(stderr);
    return 2;
  }
  if (nt == 0) threads[nt++] = 1, threads[nt++] = 2;

  size_t n = (size_t)mib * 1024 * 1024 / sizeof(double);
  double *a = aligned_alloc(4096, n * sizeof(double));
  double *b = aligned_alloc(4096, n * sizeof(double));
  double *c = aligned_alloc(4096, n * sizeof(double));
  if (!a || !b || !c) {
    fprintf(stderr, "stream: cannot allocate 3 x %ld MiB\n", mib);
    return 1;
  }
  if (!json) printf("# stream: 3 arrays of %ld MiB, %ld repetitions, best and median\n", mib, reps);
  for (int i = 0; i < nt; i++)
    if (measure(a, b, c, n, threads[i], (int)reps, json) != 0) return 1;
  /* Check the last run's result, so that a kernel that skipped part of its slice is caught:
   * from a = 1, c = 0, each repetition does c = a, then a = 2 + 3c. */
  double want = 1.0;
  for (long r = 0; r < reps; r++) want = 2.0 + 3.0 * want;
  size_t probe[3] = {0, n / 2, n - 1};
  for (int i = 0; i < 3; i++)
    if (a[probe[i]] != want) {
      fprintf(stderr, "stream: a[%zu] = %g, expected %g\n", probe[i], a[probe[i]], want);
      return 1;
    }
  free(a);
  free(b);
  free(c);
  return 0;
}
