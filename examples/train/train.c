/*
 * train.c -- the main job: trains a residual MLP classifier with model, pipeline and data
 * parallelism on par, and gives the same loss curve as the single-process run.
 *
 *   build/bin/parrun -n 8 build/bin/train --mp 2 --pp 2     8 ranks: mp 2 x pp 2 x dp 2
 *   build/bin/train                                        the same training, one process
 *
 * This file holds the options, the set-up of the world and the mesh, and the training loop.
 * The model is in model.c, one step's schedule in pipeline.c (see train.h for the map).
 */
#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <string.h>
#include <unistd.h>

#include "train.h"

/* ---------------------------------------------------------------------------------------- */
/* Errors                                                                                   */
/* ---------------------------------------------------------------------------------------- */

par_group *train_err_group;
static int g_rank; /* for messages */

void train_check(par_status st, const char *what, const char *file, int line) {
  if (st >= 0) return;
  const char *rel = strstr(file, "examples/train/"); /* __FILE__ may be an absolute path */
  if (rel) file = rel;
  fprintf(stderr, "train: rank %d: %s:%d: %s failed: %s (%s)\n", g_rank, file, line, what,
          par_status_name(st), par_status_string(st));
  const char *detail = train_err_group ? par_group_last_error(train_err_group) : "";
  if (!detail || !*detail) detail = par_last_error();
  if (detail && *detail) fprintf(stderr, "train: rank %d:   %s\n", g_rank, detail);
  exit(1);
}

void train_die(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "train: ");
  vfprintf(stderr, fmt, ap);
  fprintf(stderr, "\n");
  va_end(ap);
  exit(1);
}

void *train_alloc(size_t count, size_t size) {
  void *p = calloc(count ? count : 1, size ? size : 1);
  if (!p) train_die("out of memory (%zu x %zu bytes)", count, size);
  return p;
}

/* ---------------------------------------------------------------------------------------- */
/* Options                                                                                  */
/* ---------------------------------------------------------------------------------------- */

static const char *usage_text =
    "usage: train [options]            (one process)\n"
    "       parrun -n N train [options] (N ranks: dp = N / (mp*pp))\n"
    "\n"
    "Trains a residual MLP classifier on a seeded spiral dataset with model (--mp), pipeline\n"
    "(--pp) and data parallelism; every layout gives the single-process loss curve.\n"
    "\n"
    "parallelism:\n"
    "  --mp M              model (tensor) parallel size (default 1)\n"
    "  --pp P              pipeline parallel size: stages (default 1)\n"
    "  --micro-batches K   micro-batches per data-parallel part of the batch (default 4)\n"
    "  --schedule S        pipeline schedule: 1f1b or gpipe (default 1f1b)\n"
    "model and training:\n"
    "  --steps N           optimizer steps (default 300)\n"
    "  --batch B           global batch, split over dp and micro-batches (default 128)\n"
    "  --width D           width of the residual stream (default 32)\n"
    "  --hidden H          hidden width of each block (default 128)\n"
    "  --blocks L          residual blocks (default 4)\n"
    "  --classes C         spiral arms to tell apart (default 4)\n"
    "  --optim O           sgd (with momentum) or adam (default sgd)\n"
    "  --lr X              learning rate, decayed to 0 by a cosine over the run\n"
    "                      (default 0.08 for sgd, 0.003 for adam)\n"
    "  --momentum X        SGD momentum (default 0.9)\n"
    "  --seed S            seed of the weights and the data (default 1)\n"
    "output:\n"
    "  --log-every N       log the loss every N steps (default 25)\n"
    "  --plot FILE.svg     write the loss curve as SVG (checked before training starts)\n"
    "  --progress P        auto (default), tty, lines or off: tty redraws one line in place,\n"
    "                      lines prints one line per logged step; auto is tty only when\n"
    "                      stdout is the terminal the command was typed in\n"
    "  --json              one {\"step\":N,\"loss\":X} line per logged step instead of progress\n"
    "  --profile           time every par call; at the end print each rank's share of the\n"
    "                      step spent inside par (mp, pp, dp, world) and the mean and max\n"
    "testing:\n"
    "  --die-at-step K     rank --die-rank (default the last) kills itself at step K\n"
    "  --die-rank R\n"
    "  -h, --help          show this help\n"
    "  --version           print train's version (par's) and exit\n";

static int parse_int(const char *opt, const char *v, int min) {
  char *end;
  errno = 0;
  long x = strtol(v, &end, 10);
  if (errno || end == v || *end || x < min || x > INT_MAX)
    train_die("%s '%s' is not an integer >= %d", opt, v, min);
  return (int)x;
}

static float parse_float(const char *opt, const char *v) {
  char *end;
  errno = 0;
  float x = strtof(v, &end);
  if (errno || end == v || *end || !(x >= 0.0f)) train_die("%s '%s' is not a number >= 0", opt, v);
  return x;
}

/* The options that take a value. */
static const char *const value_options[] = {
    "--mp",    "--pp",          "--micro-batches", "--schedule", "--steps",
    "--batch", "--width",       "--hidden",        "--blocks",   "--classes",
    "--optim", "--lr",          "--momentum",      "--seed",     "--log-every",
    "--plot",  "--die-at-step", "--die-rank",      "--progress"};

static int takes_value(const char *name) {
  for (size_t i = 0; i < sizeof value_options / sizeof *value_options; i++)
    if (!strcmp(name, value_options[i])) return 1;
  return 0;
}

static void parse_options(int argc, char **argv, train_config *c) {
  *c = (train_config){.mp = 1,
                      .pp = 1,
                      .steps = 300,
                      .batch = 128,
                      .micro_batches = 4,
                      .width = 32,
                      .hidden = 128,
                      .blocks = 4,
                      .classes = 4,
                      .optim = OPTIM_SGD,
                      .lr = -1.0f,
                      .momentum = 0.9f,
                      .schedule = SCHEDULE_1F1B,
                      .seed = 1,
                      .log_every = 25,
                      .die_rank = -1};
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
      fputs(usage_text, stdout);
      exit(0);
    }
    if (!strcmp(a, "--version")) {
      printf("train (par) %s\n", par_version_string());
      exit(0);
    }
    if (!strcmp(a, "--json")) {
      c->json = 1;
      continue;
    }
    if (!strcmp(a, "--profile")) {
      c->profile = 1;
      continue;
    }
    /* Every other option takes a value: "--opt V" or "--opt=V". */
    char name[32];
    const char *v, *eq = strchr(a, '=');
    if (strncmp(a, "--", 2) != 0) train_die("unexpected argument '%s' (see train --help)", a);
    snprintf(name, sizeof name, "%.*s", eq ? (int)(eq - a) : (int)strlen(a), a);
    if (!takes_value(name)) train_die("unknown option '%s' (see train --help)", name);
    if (eq) {
      v = eq + 1;
    } else {
      if (i + 1 >= argc) train_die("%s needs a value (see train --help)", a);
      v = argv[++i];
    }
    if (!strcmp(name, "--mp"))
      c->mp = parse_int(name, v, 1);
    else if (!strcmp(name, "--pp"))
      c->pp = parse_int(name, v, 1);
    else if (!strcmp(name, "--micro-batches"))
      c->micro_batches = parse_int(name, v, 1);
    else if (!strcmp(name, "--steps"))
      c->steps = parse_int(name, v, 1);
    else if (!strcmp(name, "--batch"))
      c->batch = parse_int(name, v, 1);
    else if (!strcmp(name, "--width"))
      c->width = parse_int(name, v, 1);
    else if (!strcmp(name, "--hidden"))
      c->hidden = parse_int(name, v, 1);
    else if (!strcmp(name, "--blocks"))
      c->blocks = parse_int(name, v, 1);
    else if (!strcmp(name, "--classes"))
      c->classes = parse_int(name, v, 2);
    else if (!strcmp(name, "--lr"))
      c->lr = parse_float(name, v);
    else if (!strcmp(name, "--momentum"))
      c->momentum = parse_float(name, v);
    else if (!strcmp(name, "--seed"))
      c->seed = (uint64_t)parse_int(name, v, 0);
    else if (!strcmp(name, "--log-every"))
      c->log_every = parse_int(name, v, 1);
    else if (!strcmp(name, "--plot"))
      c->plot_path = v;
    else if (!strcmp(name, "--progress")) {
      if (!strcmp(v, "auto"))
        c->progress = PROGRESS_AUTO;
      else if (!strcmp(v, "tty"))
        c->progress = PROGRESS_TTY;
      else if (!strcmp(v, "lines"))
        c->progress = PROGRESS_LINES;
      else if (!strcmp(v, "off"))
        c->progress = PROGRESS_OFF;
      else
        train_die("--progress '%s': expected auto, tty, lines or off", v);
    } else if (!strcmp(name, "--die-at-step"))
      c->die_at_step = parse_int(name, v, 1);
    else if (!strcmp(name, "--die-rank"))
      c->die_rank = parse_int(name, v, 0);
    else if (!strcmp(name, "--optim")) {
      if (!strcmp(v, "sgd"))
        c->optim = OPTIM_SGD;
      else if (!strcmp(v, "adam"))
        c->optim = OPTIM_ADAM;
      else
        train_die("--optim '%s': expected sgd or adam", v);
    } else if (!strcmp(name, "--schedule")) {
      if (!strcmp(v, "1f1b"))
        c->schedule = SCHEDULE_1F1B;
      else if (!strcmp(v, "gpipe"))
        c->schedule = SCHEDULE_GPIPE;
      else
        train_die("--schedule '%s': expected 1f1b or gpipe", v);
    } else {
      train_die("unknown option '%s' (see train --help)", name);
    }
  }
  if (c->lr < 0.0f) c->lr = c->optim == OPTIM_SGD ? 0.08f : 0.003f;
}

/* A configuration error that every rank finds: rank 0 reports it and exits; the others wait
 * for it to go (a barrier that fails once rank 0 has exited, or parrun stops them), so that
 * the message is not lost when parrun stops the job at the first rank that exits. */
static void config_error(par_world *world, const char *msg) {
  if (par_world_rank(world) == 0) {
    fprintf(stderr, "train: %s\n", msg);
    exit(1);
  }
  par_barrier(par_world_group(world));
  exit(1);
}

/* Checks what the layout needs of the model. */
static void validate(const train_config *c, const train_par *p) {
  char msg[256] = "";
  int mp = p->mp.size, pp = p->nstages, dp = p->dp.size;
  if (c->hidden % mp)
    snprintf(msg, sizeof msg, "--hidden %d is not divisible by mp %d", c->hidden, mp);
  else if (c->classes % mp)
    snprintf(msg, sizeof msg,
             "--classes %d is not divisible by mp %d (the classifier is "
             "split over mp)",
             c->classes, mp);
  else if (c->blocks < pp)
    snprintf(msg, sizeof msg, "--blocks %d is fewer than the %d pipeline stages", c->blocks, pp);
  else if (c->batch % (dp * c->micro_batches))
    snprintf(msg, sizeof msg, "--batch %d is not divisible by dp %d x %d micro-batches", c->batch,
             dp, c->micro_batches);
  if (msg[0]) config_error(p->world, msg);

  /* --plot is checked now rather than after the training it would otherwise waste. Only
   * rank 0 writes it, so rank 0 looks, and tells the others whether to go on. */
  if (c->plot_path) {
    int bad = p->rank == 0 && report_plot_check(c->plot_path, msg, sizeof msg) != 0;
    train_err_group = p->all;
    CHECK(par_allreduce(p->all, &bad, &bad, 1, PAR_I32, PAR_MAX));
    if (bad) config_error(p->world, msg);
  }
}

/* ---------------------------------------------------------------------------------------- */
/* Set-up                                                                                   */
/* ---------------------------------------------------------------------------------------- */

static void par_setup(train_par *p, const train_config *cfg) {
  memset(p, 0, sizeof *p);
  /* train prints the configuration line itself, with the groups; the library's info line
   * would repeat it. An explicit PAR_LOG still wins. */
  if (!getenv("PAR_LOG")) par_set_log_level(PAR_LOG_WARN);
  /* Rank and size from parrun's environment; without parrun, a world of one. */
  CHECK(par_world_create(NULL, &p->world));
  p->rank = g_rank = par_world_rank(p->world);
  p->size = par_world_size(p->world);
  p->all = par_world_group(p->world);

  par_mesh_options mo = PAR_MESH_OPTIONS_INIT;
  mo.mp = cfg->mp;
  mo.pp = cfg->pp;
  par_status st = par_mesh_create(p->world, &mo, &p->mesh);
  if (st != PAR_OK) config_error(p->world, par_last_error());
  CHECK(par_mesh_group(p->mesh, "mp", &p->mp));
  CHECK(par_mesh_group(p->mesh, "pp", &p->pp));
  CHECK(par_mesh_group(p->mesh, "dp", &p->dp));
  p->stage = par_mesh_stage(p->mesh);
  p->nstages = par_mesh_num_stages(p->mesh);
}

static void par_teardown(train_par *p) {
  par_mesh_destroy(p->mesh);
  par_world_destroy(p->world);
}

/* The loss of the global batch: the last stage's (mp index 0) summed losses, gathered from
 * every replica and divided by B. A sum over the world, since the other ranks send 0. */
static double global_loss(const train_par *par, double share, int batch) {
  double sum = share;
  train_err_group = par->all;
  double t0 = prof_start();
  CHECK(par_allreduce(par->all, &sum, &sum, 1, PAR_F64, PAR_SUM));
  prof_stop(PROF_WORLD, t0);
  return sum / batch;
}

/* ---------------------------------------------------------------------------------------- */
/* Main                                                                                     */
/* ---------------------------------------------------------------------------------------- */

int main(int argc, char **argv) {
  train_config cfg;
  parse_options(argc, argv, &cfg);

  train_par par;
  par_setup(&par, &cfg);
  validate(&cfg, &par);
  if (cfg.die_rank < 0) cfg.die_rank = par.size - 1;

  model m;
  model_build(&m, &cfg, par.stage, par.nstages, par.mp.index, par.mp.size);
  step_state st;
  step_init(&st, &m, &cfg, &par);
  optimizer opt;
  optim_init(&opt, &cfg, m.nparams);

  /* On a terminal the progress line is redrawn every step, which needs every step's loss
   * from every rank: they all learn whether rank 0's stdout is one. */
  int tty = par.rank == 0 ? report_is_tty(&cfg) : 0;
  train_err_group = par.all;
  CHECK(par_allreduce(par.all, &tty, &tty, 1, PAR_I32, PAR_MAX));

  report rep;
  if (par.rank == 0) report_start(&rep, &cfg, &par, &m, par.dp.size);
  if (cfg.profile) prof_enable();

  for (int step = 1; step <= cfg.steps; step++) {
    if (step == cfg.die_at_step && par.rank == cfg.die_rank) {
      fprintf(stderr, "train: rank %d kills itself at step %d (--die-at-step)\n", par.rank, step);
      fflush(stderr);
      raise(SIGKILL);
    }
    double t_step = prof_start();
    double share = train_step(&m, &st, &cfg, &par, step - 1);
    optim_step(&opt, m.mem_params, m.mem_grads);

    int logged = step == 1 || step % cfg.log_every == 0 || step == cfg.steps;
    if (logged || tty) {
      double loss = global_loss(&par, share, cfg.batch);
      if (par.rank == 0) report_step(&rep, &cfg, step, loss, logged);
    }
    prof_step_done(t_step);
  }

  int rc = 0;
  if (par.rank == 0) {
    report_finish(&rep, &cfg);
    if (cfg.plot_path) {
      if (report_plot(&rep, cfg.plot_path) != 0) {
        fprintf(stderr, "train: cannot write %s: %s\n", cfg.plot_path, strerror(errno));
        rc = 1;
      } else {
        printf("loss curve written to %s\n", cfg.plot_path);
      }
    }
    report_free(&rep);
  }
  prof_report(&par);

  optim_free(&opt);
  step_free(&st, &m);
  model_free(&m);
  par_teardown(&par);
  return rc;
}
