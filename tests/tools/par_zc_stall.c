/*
 * par_zc_stall.c -- a zero-copy all-reduce whose last rank stops (SIGSTOP) part of the way
 * through, for tests/scripts/test_zc_stall.sh. Usage: par_zc_stall DELAY_S MIB. Every rank
 * all-reduces MIB MiB of par_alloc'ed floats into a par_alloc'ed output once to warm up, then
 * again with a 0.3 s timeout while a thread of the last rank stops its process DELAY_S into
 * the op; a child of that rank resumes it 1.5 s later. The others, when their op fails, fill
 * their output with 0x5A, wait 3 s (the stopped rank resumes meanwhile) and print how many of
 * its bytes changed: the members write into each other's outputs, and none may do so after
 * the owner's op returned. Each rank prints its status. With a third argument DIE of 1 (and
 * 3 ranks or more), rank 1 ends its process 0.1 s after the stop, while it waits for the
 * stopped rank: rank 0 then closes its zgate with one member dead, outside every gate, and
 * one stopped inside, and must wait for the stopped one all the same.
 */
#include <par.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static double delay;

static void sleep_s(double s) {
  struct timespec t = {(time_t)s, (long)((s - (double)(time_t)s) * 1e9)};
  nanosleep(&t, NULL);
}

static void *dier(void *arg) {
  (void)arg;
  sleep_s(delay + 0.1);
  _exit(0);
}

static void *stopper(void *arg) {
  (void)arg;
  pid_t me = getpid();
  if (fork() == 0) {
    sleep_s(delay + 1.5);
    kill(me, SIGCONT);
    _exit(0);
  }
  sleep_s(delay);
  kill(me, SIGSTOP);
  return NULL;
}

int main(int argc, char **argv) {
  if (argc != 3 && argc != 4) {
    fprintf(stderr, "usage: par_zc_stall DELAY_S MIB [DIE]\n");
    return 2;
  }
  delay = atof(argv[1]);
  int die = argc == 4 && atoi(argv[3]) == 1;
  size_t bytes = (size_t)atoi(argv[2]) << 20, count = bytes / sizeof(float);
  par_world *w;
  if (par_world_create(NULL, &w) != PAR_OK) {
    fprintf(stderr, "world: %s\n", par_last_error());
    return 1;
  }
  int me = par_world_rank(w), last = par_world_size(w) - 1;
  par_group *g = par_world_group(w);
  float *in = NULL, *out = NULL;
  if (par_alloc(w, bytes, (void **)&in) != PAR_OK || par_alloc(w, bytes, (void **)&out) != PAR_OK) {
    fprintf(stderr, "par_alloc: %s\n", par_last_error());
    return 1;
  }
  for (size_t i = 0; i < count; i++) in[i] = 1.0f, out[i] = 0.0f;
  if (par_allreduce(g, in, out, count, PAR_F32, PAR_SUM) != PAR_OK) {
    fprintf(stderr, "warm-up: %s\n", par_group_last_error(g));
    return 1;
  }
  par_group_set_timeout(g, 0.3);
  pthread_t t;
  if (me == last) pthread_create(&t, NULL, stopper, NULL);
  if (die && me == 1 && me != last) pthread_create(&t, NULL, dier, NULL);
  par_status s = par_allreduce(g, in, out, count, PAR_F32, PAR_SUM);
  if (me == last) pthread_join(t, NULL);
  printf("rank %d: %s%s%s\n", me, par_status_name(s), s == PAR_OK ? "" : ": ",
         s == PAR_OK ? "" : par_group_last_error(g));
  if (me != last && s != PAR_OK) {
    memset(out, 0x5A, bytes);
    sleep_s(3.0);
    size_t changed = 0;
    const unsigned char *o = (const unsigned char *)out;
    for (size_t i = 0; i < bytes; i++) changed += o[i] != 0x5A;
    printf("rank %d: %zu bytes of the output changed after the op returned\n", me, changed);
  }
  fflush(stdout);
  par_free(w, in);
  par_free(w, out);
  par_world_destroy(w);
  return 0;
}
