/*
 * profile.c -- --profile: the share of each training step this rank spends inside par.
 *
 * Every par call of the step (the collectives, the point-to-point posts and par_work_wait) is
 * bracketed by prof_start/prof_stop, which read CLOCK_MONOTONIC once each and add the
 * difference to the call's group kind (mp, pp, dp, or the world group of the loss). The step
 * itself is timed the same way in train.c, from train_step's start to the end of the loss
 * report. With profiling off no clock is read: prof_start returns 0 and prof_stop returns at
 * once. At the end every rank's totals are gathered with one par_allgather over the world
 * (not counted), and rank 0 prints a line per rank and the mean and max over ranks.
 *
 * The time inside par is time the rank is not computing: waiting for a peer, copying through
 * the shared segment, or posting work. With more ranks than cores (8 ranks on 2 here) it also
 * holds the time a rank waited for its core while its peers ran, which is why the share is a
 * property of the run, not of par alone.
 */
#include <stdio.h>

#include "train.h"

static const char *const group_names[PROF_NGROUPS] = {"mp", "pp", "dp", "world"};

static struct {
  int on;
  double in_par[PROF_NGROUPS]; /* seconds inside par calls, per group kind */
  double steps;                /* seconds of whole steps */
  int nsteps;
} prof;

void prof_enable(void) { prof.on = 1; }

double prof_start(void) { return prof.on ? now_seconds() : 0.0; }

void prof_stop(prof_group g, double t0) {
  if (prof.on) prof.in_par[g] += now_seconds() - t0;
}

void prof_step_done(double t0) {
  if (!prof.on) return;
  prof.steps += now_seconds() - t0;
  prof.nsteps++;
}

/* One rank's totals as the allgather carries them: the step time, then each group's. */
#define PROF_FIELDS (1 + PROF_NGROUPS)

static double in_par_total(const double *v) {
  double s = 0.0;
  for (int g = 0; g < PROF_NGROUPS; g++) s += v[1 + g];
  return s;
}

/* The share of the step, 0 for a rank that ran no step (it cannot have waited in one). */
static double share(double part, double step) { return step > 0.0 ? part / step : 0.0; }

static void print_rank(int r, const double *v) {
  printf("profile: rank %d: step time %.3f s, in par %.3f s (%.3f):", r, v[0], in_par_total(v),
         share(in_par_total(v), v[0]));
  for (int g = 0; g < PROF_NGROUPS; g++) printf(" %s %.3f", group_names[g], share(v[1 + g], v[0]));
  printf("\n");
}

void prof_report(const train_par *par) {
  if (!prof.on) return;
  double mine[PROF_FIELDS] = {prof.steps};
  for (int g = 0; g < PROF_NGROUPS; g++) mine[1 + g] = prof.in_par[g];
  double *all = train_alloc((size_t)par->size * PROF_FIELDS, sizeof *all);
  train_err_group = par->all;
  CHECK(par_allgather(par->all, mine, all, PROF_FIELDS, PAR_F64));
  if (par->rank == 0) {
    double mean = 0.0, max = -1.0, by_group[PROF_NGROUPS] = {0};
    int argmax = 0;
    for (int r = 0; r < par->size; r++) {
      const double *v = all + (size_t)r * PROF_FIELDS;
      double f = share(in_par_total(v), v[0]);
      print_rank(r, v);
      mean += f / par->size;
      if (f > max) max = f, argmax = r;
      for (int g = 0; g < PROF_NGROUPS; g++) by_group[g] += share(v[1 + g], v[0]) / par->size;
    }
    printf(
        "profile: time in par: mean %.3f, max %.3f (rank %d) of the step over %d ranks, %d "
        "steps; by group (mean):",
        mean, max, argmax, par->size, prof.nsteps);
    for (int g = 0; g < PROF_NGROUPS; g++) printf(" %s %.3f", group_names[g], by_group[g]);
    printf("\n");
    fflush(stdout);
  }
  free(all);
}
