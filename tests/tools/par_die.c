/*
 * par_die.c -- a job in which one rank dies in the middle of collectives, for
 * tests/scripts/test_rank_death.sh. Usage: par_die VICTIM ITER. Every rank runs all-reduces;
 * rank VICTIM kills itself with SIGKILL at iteration ITER. The survivors ignore SIGTERM (so
 * that parrun's first stop request does not end them before the library reports the loss)
 * and print the status their pending all-reduce returned, which must name the dead rank.
 */
#include <par.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int main(int argc, char **argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: par_die VICTIM ITER\n");
    return 2;
  }
  int victim = atoi(argv[1]), at = atoi(argv[2]);
  signal(SIGTERM, SIG_IGN);
  par_world *w;
  if (par_world_create(NULL, &w) != PAR_OK) {
    fprintf(stderr, "world: %s\n", par_last_error());
    return 1;
  }
  par_group *g = par_world_group(w);
  int rank = par_world_rank(w);
  if (rank == 0 && getenv("PAR_JOB_ID")) printf("job %s\n", getenv("PAR_JOB_ID"));
  static float buf[1 << 16];
  for (int i = 0;; i++) {
    if (rank == victim && i == at) raise(SIGKILL);
    par_status s = par_allreduce(g, buf, buf, sizeof buf / sizeof buf[0], PAR_F32, PAR_SUM);
    if (s != PAR_OK) {
      printf("rank %d: %s: %s\n", rank, par_status_name(s), par_group_last_error(g));
      fflush(stdout);
      par_world_destroy(w);
      return 3;
    }
  }
}
