/*
 * report.c -- what rank 0 prints: the configuration and the group layout at start, a progress
 * line per logged step (redrawn in place on the user's terminal, one line each otherwise, or
 * one JSON object each with --json; --progress chooses), the final summary, and the loss curve
 * as an SVG file (the one format train writes: a raster format would need a font renderer
 * for the axis labels, which a demo should not depend on).
 */
#include <errno.h>
#include <math.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "train.h"

double now_seconds(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

int report_is_tty(const train_config *cfg) {
  if (cfg->json) return 0;
  if (cfg->progress != PROGRESS_AUTO) return cfg->progress == PROGRESS_TTY;
  /* tcgetpgrp answers only for the caller's controlling terminal: under mpirun a rank's stdout
   * is a pseudo-terminal of Open MPI's whose output goes wherever mpirun's does (often a log
   * file), and it is not the rank's controlling terminal. */
  const char *term = getenv("TERM");
  return isatty(STDOUT_FILENO) && tcgetpgrp(STDOUT_FILENO) != -1 &&
         !(term && !strcmp(term, "dumb"));
}

int report_plot_check(const char *path, char *msg, size_t len) {
  const char *dot = strrchr(path, '.'), *slash = strrchr(path, '/');
  const char *ext = dot && (!slash || dot > slash) ? dot + 1 : "";
  if (strcmp(ext, "svg") != 0) {
    snprintf(msg, len, "--plot %s: train writes SVG only, so the name must end in .svg%s%s%s", path,
             *ext ? " (for ." : "", ext, *ext ? ", convert the SVG, e.g. with rsvg-convert)" : "");
    return -1;
  }
  char dir[4096];
  if (!slash)
    snprintf(dir, sizeof dir, ".");
  else
    snprintf(dir, sizeof dir, "%.*s", slash == path ? 1 : (int)(slash - path), path);
  struct stat st;
  if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode)) {
    snprintf(msg, len, "--plot %s: directory %s does not exist", path, dir);
    return -1;
  }
  int exists = stat(path, &st) == 0;
  if (exists && S_ISDIR(st.st_mode)) {
    snprintf(msg, len, "--plot %s: is a directory", path);
    return -1;
  }
  if (access(exists ? path : dir, exists ? W_OK : W_OK | X_OK) != 0) {
    snprintf(msg, len, "--plot %s: cannot write %s: %s", path, exists ? "the file" : dir,
             strerror(errno));
    return -1;
  }
  return 0;
}

/* ---------------------------------------------------------------------------------------- */
/* Start: configuration and layout                                                          */
/* ---------------------------------------------------------------------------------------- */

/* Prints every group over `dim` of the layout, e.g. "mp [0,1] [2,3] [4,5] [6,7]". */
static void print_groups(const par_layout *l, const char *dim) {
  par_dims dims;
  if (par_layout_parse_dims(l, dim, &dims) != PAR_OK) return;
  int n = par_layout_group_size(l, dims), count = par_layout_group_count(l, dims);
  int *ranks = train_alloc((size_t)n, sizeof *ranks);
  printf("train:   %s", dim);
  for (int id = 0; id < count; id++) {
    CHECK(par_layout_group_ranks(l, dims, id, ranks));
    printf(" [");
    for (int i = 0; i < n; i++) printf(i ? ",%d" : "%d", ranks[i]);
    printf("]");
  }
  printf("\n");
  free(ranks);
}

static void print_stages(const train_config *cfg, int nstages) {
  printf("train: stages ");
  for (int p = 0; p < nstages; p++) {
    int first, count;
    model_stage_blocks(cfg->blocks, p, nstages, &first, &count);
    printf(" %d:%s blocks %d-%d%s", p, p == 0 ? " input +" : "", first, first + count - 1,
           p == nstages - 1 ? " + classifier" : "");
    if (p + 1 < nstages) printf(" |");
  }
  printf("\n");
}

void report_start(report *r, const train_config *cfg, const train_par *par, const model *m,
                  int dp) {
  memset(r, 0, sizeof *r);
  r->tty = report_is_tty(cfg);
  r->json = cfg->json;
  r->cap = cfg->steps / (cfg->log_every > 0 ? cfg->log_every : 1) + 2;
  r->steps = train_alloc((size_t)r->cap, sizeof *r->steps);
  r->losses = train_alloc((size_t)r->cap, sizeof *r->losses);
  snprintf(r->title, sizeof r->title, "%s", par_mesh_describe(par->mesh));

  const par_layout *l = par_mesh_layout(par->mesh);
  printf("train: %s\n", par_mesh_describe(par->mesh));
  printf("train: groups (rank = (dp*%d + pp)*%d + mp)\n", par->nstages, l->size[l->ndims - 1]);
  print_groups(l, "mp");
  print_groups(l, "pp");
  print_groups(l, "dp");
  print_stages(cfg, par->nstages);
  printf("train: model   %d blocks %d->%d->%d (GELU, residual), %d classes, %zu parameters\n",
         cfg->blocks, cfg->width, cfg->hidden, cfg->width, cfg->classes, m->total_params);
  printf("train: data    %d-arm spirals, seed %llu; batch %d = %d dp x %d micro-batches x %d\n",
         cfg->classes, (unsigned long long)cfg->seed, cfg->batch, dp, cfg->micro_batches,
         cfg->batch / (dp * cfg->micro_batches));
  if (cfg->optim == OPTIM_SGD)
    printf("train: optim   sgd lr %g momentum %g; %d steps; %s schedule\n", cfg->lr, cfg->momentum,
           cfg->steps, cfg->schedule == SCHEDULE_GPIPE ? "gpipe" : "1f1b");
  else
    printf("train: optim   adam lr %g; %d steps; %s schedule\n", cfg->lr, cfg->steps,
           cfg->schedule == SCHEDULE_GPIPE ? "gpipe" : "1f1b");
  fflush(stdout);
  r->t_start = r->t_last = now_seconds();
}

/* ---------------------------------------------------------------------------------------- */
/* Progress and summary                                                                     */
/* ---------------------------------------------------------------------------------------- */

void report_step(report *r, const train_config *cfg, int step, double loss, int logged) {
  double t = now_seconds();
  /* On a terminal every step comes here; redraw at most 20 times a second. */
  if (!logged && t - r->t_last < 0.05) return;
  double rate = t > r->t_last ? (double)(step - r->step_last) * cfg->batch / (t - r->t_last) : 0;
  r->t_last = t;
  r->step_last = step;
  if (logged && r->n < r->cap) {
    r->steps[r->n] = step;
    r->losses[r->n] = loss;
    r->n++;
  }
  if (r->tty)
    printf("\rstep %5d/%d  loss %.6f  %9.0f samples/s\033[K", step, cfg->steps, loss, rate);
  else if (cfg->progress == PROGRESS_OFF && !r->json)
    return;
  else if (r->json)
    printf("{\"step\":%d,\"loss\":%.9g}\n", step, loss);
  else
    printf("step %5d/%d  loss %.6f  %9.0f samples/s\n", step, cfg->steps, loss, rate);
  fflush(stdout);
}

void report_finish(report *r, const train_config *cfg) {
  double t = now_seconds() - r->t_start;
  if (r->tty) printf("\n");
  printf("final loss: %.6f  time %.2f s  %.1f steps/s\n", r->n ? r->losses[r->n - 1] : NAN, t,
         t > 0 ? cfg->steps / t : 0.0);
  fflush(stdout);
}

void report_free(report *r) {
  free(r->steps);
  free(r->losses);
  memset(r, 0, sizeof *r);
}

/* ---------------------------------------------------------------------------------------- */
/* The loss curve as SVG                                                                    */
/* ---------------------------------------------------------------------------------------- */

/* A "nice" tick spacing (1, 2 or 5 times a power of ten) giving about `n` ticks over span. */
static double tick_step(double span, int n) {
  double raw = span / n, p = pow(10.0, floor(log10(raw))), f = raw / p;
  return (f < 1.5 ? 1 : f < 3.5 ? 2 : f < 7.5 ? 5 : 10) * p;
}

int report_plot(const report *r, const char *path) {
  FILE *f = fopen(path, "w");
  if (!f) return -1;
  const double W = 640, H = 400, L = 64, R = 20, T = 40, B = 48; /* size and margins */
  double xmax = r->n ? r->steps[r->n - 1] : 1, ymax = 0;
  for (int i = 0; i < r->n; i++) ymax = r->losses[i] > ymax ? r->losses[i] : ymax;
  if (xmax <= 0) xmax = 1;
  if (ymax <= 0) ymax = 1;
  double ys = tick_step(ymax, 5), xs = tick_step(xmax, 6);
  ymax = ceil(ymax / ys) * ys;
#define PX(x) (L + (x) / xmax * (W - L - R))
#define PY(y) (T + (1.0 - (y) / ymax) * (H - T - B))

  fprintf(f,
          "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%g\" height=\"%g\" "
          "viewBox=\"0 0 %g %g\" font-family=\"sans-serif\" font-size=\"12\">\n",
          W, H, W, H);
  fprintf(f, "<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n");
  fprintf(f,
          "<text x=\"%g\" y=\"24\" text-anchor=\"middle\" font-size=\"14\">training loss: "
          "%s</text>\n",
          W / 2, r->title);
  for (double y = 0; y <= ymax + ys / 2; y += ys) {
    fprintf(f, "<line x1=\"%g\" y1=\"%.1f\" x2=\"%g\" y2=\"%.1f\" stroke=\"#ddd\"/>\n", L, PY(y),
            W - R, PY(y));
    fprintf(f, "<text x=\"%g\" y=\"%.1f\" text-anchor=\"end\">%g</text>\n", L - 6, PY(y) + 4, y);
  }
  for (double x = 0; x <= xmax + xs / 2; x += xs)
    fprintf(f, "<text x=\"%.1f\" y=\"%g\" text-anchor=\"middle\">%g</text>\n", PX(x), H - B + 16,
            x);
  fprintf(f, "<line x1=\"%g\" y1=\"%g\" x2=\"%g\" y2=\"%g\" stroke=\"black\"/>\n", L, H - B, W - R,
          H - B);
  fprintf(f, "<line x1=\"%g\" y1=\"%g\" x2=\"%g\" y2=\"%g\" stroke=\"black\"/>\n", L, T, L, H - B);
  fprintf(f, "<text x=\"%g\" y=\"%g\" text-anchor=\"middle\">step</text>\n", (L + W - R) / 2,
          H - 10);
  fprintf(f,
          "<text x=\"16\" y=\"%g\" text-anchor=\"middle\" transform=\"rotate(-90 16 %g)\">"
          "loss</text>\n",
          (T + H - B) / 2, (T + H - B) / 2);
  fprintf(f, "<polyline fill=\"none\" stroke=\"#1f77b4\" stroke-width=\"2\" points=\"");
  for (int i = 0; i < r->n; i++)
    fprintf(f, "%s%.1f,%.1f", i ? " " : "", PX((double)r->steps[i]), PY(r->losses[i]));
  fprintf(f, "\"/>\n</svg>\n");
#undef PX
#undef PY
  int err = ferror(f);
  if (fclose(f) != 0 || err) {
    if (!errno) errno = EIO;
    return -1;
  }
  return 0;
}
