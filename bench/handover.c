/*
 * handover.c -- how fast two cores pass data, for bench/compare.py: the round trip of one
 * cache line between two threads pinned to two different CPUs, and the rate at which a block
 * one of them has just written is copied by the other (256 KiB, the shared-memory backend's
 * round per member). par's segment paths hand every byte over this way; Open MPI's single
 * copy reads the peer's buffer as it lies. On a VM whose virtual CPUs the host moves between
 * cores and dies, both figures change from one minute to the next (docs/PERFORMANCE.md, "Where
 * the swings come from"), so compare.py records them before each repetition.
 *
 *   gcc -O2 -std=c11 -pthread -o handover bench/handover.c
 *   ./handover [--json]
 *
 * Exits 0 with no output lines where fewer than two CPUs are available.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define BLOCK (256u << 10)
#define PINGS 200000L
#define BLOCKS 400L

typedef struct pair {
  _Alignas(128) _Atomic long ping;
  _Alignas(128) _Atomic long pong;
  _Alignas(128) _Atomic long posted; /* blocks written by the writer */
  _Alignas(128) _Atomic long taken;  /* blocks copied by the reader */
  unsigned char *area[2], *src, *dst;
  int cpu[2];
} pair;

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void pin(int cpu) {
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  sched_setaffinity(0, sizeof set, &set); /* best effort: the figures say what they got */
}

/* The second thread: answers pings, then copies each block the first one posts. */
static void *responder(void *arg) {
  pair *p = arg;
  pin(p->cpu[1]);
  for (long i = 1; i <= PINGS; i++) {
    while (atomic_load_explicit(&p->ping, memory_order_acquire) < i) {
    }
    atomic_store_explicit(&p->pong, i, memory_order_release);
  }
  for (long r = 1; r <= BLOCKS; r++) {
    while (atomic_load_explicit(&p->posted, memory_order_acquire) < r) {
    }
    memcpy(p->dst, p->area[r & 1], BLOCK);
    atomic_store_explicit(&p->taken, r, memory_order_release);
  }
  return NULL;
}

int main(int argc, char **argv) {
  int json = argc > 1 && strcmp(argv[1], "--json") == 0;
  if (argc > 1 && !json) {
    fprintf(stderr, "usage: handover [--json]\n");
    return 2;
  }
  cpu_set_t set;
  int cpus[2], n = 0;
  if (sched_getaffinity(0, sizeof set, &set) != 0) return 1;
  for (int c = 0; c < CPU_SETSIZE && n < 2; c++)
    if (CPU_ISSET(c, &set)) cpus[n++] = c;
  if (n < 2) return 0;
  pair *p = aligned_alloc(128, sizeof *p);
  unsigned char *mem = aligned_alloc(4096, 4 * (size_t)BLOCK);
  if (!p || !mem) return 1;
  memset(p, 0, sizeof *p);
  memset(mem, 1, 4 * (size_t)BLOCK);
  p->area[0] = mem, p->area[1] = mem + BLOCK, p->src = mem + 2 * BLOCK, p->dst = mem + 3 * BLOCK;
  p->cpu[0] = cpus[0], p->cpu[1] = cpus[1];
  pin(cpus[0]);
  pthread_t t;
  if (pthread_create(&t, NULL, responder, p) != 0) return 1;
  double t0 = now_s();
  for (long i = 1; i <= PINGS; i++) {
    atomic_store_explicit(&p->ping, i, memory_order_release);
    while (atomic_load_explicit(&p->pong, memory_order_acquire) < i) {
    }
  }
  double rtt = (now_s() - t0) / (double)PINGS;
  /* Two areas by parity, as the segment's sets: block r may be written once the reader has
   * taken block r - 2. */
  double t1 = now_s();
  for (long r = 1; r <= BLOCKS; r++) {
    while (atomic_load_explicit(&p->taken, memory_order_acquire) < r - 2) {
    }
    p->src[0] = (unsigned char)r;
    memcpy(p->area[r & 1], p->src, BLOCK);
    atomic_store_explicit(&p->posted, r, memory_order_release);
  }
  while (atomic_load_explicit(&p->taken, memory_order_acquire) < BLOCKS) {
  }
  double rate = (double)BLOCK * (double)BLOCKS / (now_s() - t1) / 1e9;
  pthread_join(t, NULL);
  if (p->dst[0] != (unsigned char)BLOCKS) {
    fprintf(stderr, "handover: the last block did not arrive\n");
    return 1;
  }
  if (json)
    printf("{\"cpus\":[%d,%d],\"round_trip_ns\":%.1f,\"handover_gbs\":%.2f}\n", cpus[0], cpus[1],
           rtt * 1e9, rate);
  else
    printf("CPUs %d and %d: cache-line round trip %.1f ns, 256 KiB handover %.2f GB/s\n",
           cpus[0], cpus[1], rtt * 1e9, rate);
  free(mem);
  free(p);
  return 0;
}
