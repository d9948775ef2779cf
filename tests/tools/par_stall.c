/*
 * par_stall.c -- a job in which one rank stops (SIGSTOP) in the middle of collectives, for
 * tests/scripts/test_blame.sh. Usage: par_stall VICTIM ITER OP, OP one of broadcast,
 * allreduce, allgather. Every rank runs the op in a loop (broadcasts from every member in
 * turn, so that the stopped rank is sometimes the root and sometimes a reader); rank VICTIM
 * stops itself at iteration ITER. The survivors, whose ops time out (PAR_TIMEOUT), print the
 * status and detail they got, which must name the stopped rank. They ignore SIGTERM, so that
 * parrun's stop request after the first of them exits does not cut the others short.
 */
#include <par.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(int argc, char **argv) {
  if (argc != 4) {
    fprintf(stderr, "usage: par_stall VICTIM ITER broadcast|allreduce|allgather\n");
    return 2;
  }
  int victim = atoi(argv[1]), at = atoi(argv[2]);
  const char *op = argv[3];
  signal(SIGTERM, SIG_IGN); /* parrun's stop after the first survivor exits must not race the
                               other survivors' reports */
  par_world *w;
  if (par_world_create(NULL, &w) != PAR_OK) {
    fprintf(stderr, "world: %s\n", par_last_error());
    return 1;
  }
  par_group *g = par_world_group(w);
  int rank = par_world_rank(w), n = par_world_size(w);
  static float in[1024], out[1024 * 64];
  for (int i = 0;; i++) {
    if (rank == victim && i == at) raise(SIGSTOP);
    par_status s;
    if (!strcmp(op, "broadcast"))
      s = par_broadcast(g, out, 256, PAR_F32, i % n);
    else if (!strcmp(op, "allreduce"))
      s = par_allreduce(g, in, out, 256, PAR_F32, PAR_SUM);
    else
      s = par_allgather(g, in, out, 256, PAR_F32);
    if (s != PAR_OK) {
      printf("rank %d: %s: %s\n", rank, par_status_name(s), par_group_last_error(g));
      fflush(stdout);
      par_world_destroy(w);
      return 3;
    }
  }
}
