/*
 * train.h -- the pieces of examples/train and how they fit.
 *
 * The program trains a small residual MLP classifier on a synthetic spiral dataset with model
 * (tensor), pipeline and data parallelism at once, on top of par:
 *
 *   data.c      the seeded dataset and the counter-based random numbers used everywhere
 *   model.c     parameters (this rank's shard of them), kernels, and each layer's forward and
 *               backward with the Megatron collectives over the mp group
 *   pipeline.c  one training step: micro-batches through this rank's stage in a 1F1B or GPipe
 *               schedule, send/recv between stages, data-parallel gradient averaging
 *               overlapped with the backward pass
 *   optim.c     SGD with momentum, or Adam
 *   report.c    what the program prints: configuration, group layout, progress, summary, plot
 *   profile.c   --profile: the share of the step spent inside par calls, per group kind
 *   train.c     options, set-up and the training loop
 *
 * Shapes in comments: B the global batch, b a micro-batch, D the width of the residual stream,
 * H the hidden width of a block, Hl = H/mp this rank's share of it, C the classes, Cl = C/mp,
 * X the input features (2: a point of the plane).
 */
#ifndef TRAIN_H
#define TRAIN_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include <par.h>

/* ---------------------------------------------------------------------------------------- */
/* Errors                                                                                   */
/* ---------------------------------------------------------------------------------------- */

/* The group (or NULL) whose last error explains a failed par call; set by the code that
 * issues the call so that CHECK can print it. */
extern par_group *train_err_group;

/* For par calls: on failure prints where, the status name and the detail, then exits 1. */
#define CHECK(call) train_check((call), #call, __FILE__, __LINE__)
void train_check(par_status st, const char *what, const char *file, int line);

/* Prints "train: <message>" to stderr and exits 1. */
void train_die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
/* malloc/calloc that exit on failure; the memory is zeroed. */
void *train_alloc(size_t count, size_t size);

/* ---------------------------------------------------------------------------------------- */
/* Configuration                                                                            */
/* ---------------------------------------------------------------------------------------- */

typedef enum optim_kind { OPTIM_SGD, OPTIM_ADAM } optim_kind;
typedef enum schedule_kind { SCHEDULE_1F1B, SCHEDULE_GPIPE } schedule_kind;

/* --progress: how the per-step progress lines are shown (report.c). */
typedef enum progress_kind {
  PROGRESS_AUTO,  /* TTY when stdout is the terminal the user typed the command in, else LINES */
  PROGRESS_TTY,   /* one line redrawn in place every step (\r and erase-to-end-of-line) */
  PROGRESS_LINES, /* one plain line per logged step */
  PROGRESS_OFF    /* none (start-up lines and the summary are still printed) */
} progress_kind;

typedef struct train_config {
  int mp, pp;        /* requested model and pipeline parallel sizes (dp is derived) */
  int steps;         /* optimizer steps */
  int batch;         /* B: global batch, the same in every configuration */
  int micro_batches; /* M: micro-batches per data-parallel part of the batch */
  int width;         /* D */
  int hidden;        /* H */
  int blocks;        /* residual blocks */
  int classes;       /* C: spiral arms */
  optim_kind optim;
  float lr, momentum; /* momentum is SGD's; Adam uses beta1 0.9, beta2 0.999 */
  schedule_kind schedule;
  uint64_t seed;
  int log_every;
  const char *plot_path; /* NULL: no plot; else ends in .svg (checked by report_plot_check) */
  int json;              /* one JSON line per logged step on stdout */
  int die_at_step;       /* testing aid: rank die_rank kills itself at this step (0: never) */
  int die_rank;
  progress_kind progress; /* --progress: how the progress lines are shown */
  int profile;            /* --profile: time inside par per step, reported at the end */
} train_config;

/* ---------------------------------------------------------------------------------------- */
/* This rank's place in the mesh                                                            */
/* ---------------------------------------------------------------------------------------- */

typedef struct train_par {
  par_world *world;
  par_mesh *mesh;
  par_group *all;            /* the world group (loss reporting) */
  par_group_info mp, pp, dp; /* this rank's groups; index = coordinate on that dim */
  int rank, size;
  int stage, nstages; /* = pp.index, pp.size */
} train_par;

/* ---------------------------------------------------------------------------------------- */
/* Data (data.c)                                                                            */
/* ---------------------------------------------------------------------------------------- */

#define INPUT_FEATURES 2 /* X */

/* A uniform number in [0, 1) that depends only on (seed, stream, index): any rank can make
 * any element of any tensor or sample without making the others. */
float rng_uniform(uint64_t seed, uint64_t stream, uint64_t index);

/* Fills x (n, X) and labels (n) with samples first, first+1, ... of the dataset of `seed`
 * with `classes` spiral arms. Sample i is a pure function of (seed, classes, i). */
void data_fill(uint64_t seed, int classes, uint64_t first, int n, float *x, int *labels);

/* ---------------------------------------------------------------------------------------- */
/* Model (model.c)                                                                          */
/* ---------------------------------------------------------------------------------------- */

/* The parameters of one residual block, this rank's shard: W1 column-parallel, W2
 * row-parallel, b2 replicated over mp. */
typedef struct block_tensors {
  float *w1; /* (D, Hl)  columns [m*Hl, (m+1)*Hl) of the full (D, H) */
  float *b1; /* (Hl) */
  float *w2; /* (Hl, D)  rows [m*Hl, (m+1)*Hl) of the full (H, D) */
  float *b2; /* (D)      replicated */
} block_tensors;

/* Pointers into one flat buffer (parameters, gradients or optimizer state); NULL where this
 * stage does not hold the tensor. */
typedef struct stage_tensors {
  float *we, *be;     /* input layer (X, D), (D): first stage only, replicated over mp */
  block_tensors *blk; /* this stage's blocks */
  float *wc, *bc;     /* classifier (D, Cl), (Cl): last stage only, column-parallel */
} stage_tensors;

/* A run of the flat buffer that becomes final at one point of the backward pass; each one is
 * all-reduced over dp by itself, as soon as it is final. */
typedef struct grad_bucket {
  size_t offset, count;
} grad_bucket;

typedef struct model {
  int D, H, Hl, C, Cl, X;
  int mp_index, mp_size;
  int first_block, nblocks; /* this stage holds blocks [first_block, first_block + nblocks) */
  int total_blocks;
  int has_input, has_head;
  size_t nparams;      /* this rank's parameters */
  size_t total_params; /* the whole model's */
  float *mem_params, *mem_grads;
  stage_tensors params, grads;
  /* Buckets in the order the backward pass finishes them: classifier, blocks last to first,
   * input layer. */
  grad_bucket *buckets;
  int nbuckets;
} model;

/* Builds this rank's part of the model: the stage's blocks, this mp index's shards.
 * Initialisation is the same for every layout: element i of the full tensor t is
 * U(-1/sqrt(fan_in), 1/sqrt(fan_in)) from rng_uniform(seed, t, i), so a shard holds exactly
 * the values the single-process model has at those positions. */
void model_build(model *m, const train_config *cfg, int stage, int nstages, int mp_index,
                 int mp_size);
void model_free(model *m);
/* The blocks stage `stage` of `nstages` holds: an even split, the first stages taking one
 * more when it does not divide. */
void model_stage_blocks(int blocks, int stage, int nstages, int *first, int *count);

/* Activations of one micro-batch on this stage, kept for its backward pass. */
typedef struct activations {
  float *x;        /* (b, X) input points (first stage) */
  int *labels;     /* (b) (last stage) */
  float **stream;  /* nblocks+1 of (b, D): the residual stream entering each block, and out */
  float **pre;     /* nblocks of (b, Hl): x W1 + b1 */
  float **act;     /* nblocks of (b, Hl): gelu(pre) */
  float *logits_l; /* (b, Cl) this rank's logits */
  float *logits;   /* (b, C) all of them, gathered over mp */
  float *probs;    /* (b, C) softmax */
} activations;

/* Scratch for the backward pass of one micro-batch. */
typedef struct backward_scratch {
  float *dstream; /* (b, D) gradient of the residual stream */
  float *dpart;   /* (b, D) partial input gradient, all-reduced over mp */
  float *dact;    /* (b, Hl) */
  float *dlogits; /* (b, C) */
} backward_scratch;

void activations_alloc(activations *a, const model *m, int b);
void activations_free(activations *a, const model *m);
void scratch_alloc(backward_scratch *s, const model *m, int b);
void scratch_free(backward_scratch *s);

/* Forward through the input layer: stream[0] = x We + be. */
void input_forward(const model *m, activations *a, int b);
/* Forward through this stage's blocks, from stream[0] to stream[nblocks]; all-reduces over
 * mp after each row-parallel W2. */
void blocks_forward(const model *m, activations *a, int b, par_group *mp);
/* Classifier and loss: logits gathered over mp, softmax cross-entropy. Returns the sum of the
 * b losses (not the mean). */
double head_forward(const model *m, activations *a, int b, par_group *mp);

/* Backward of the loss and the classifier into s->dstream (the gradient of stream[nblocks]),
 * each sample's loss weighted by `scale` (1 / samples per dp part). Accumulates grads. */
void head_backward(model *m, const activations *a, backward_scratch *s, int b, float scale,
                   par_group *mp);
/* Backward of block k (local index) with s->dstream the gradient of its output; leaves the
 * gradient of its input there. Accumulates grads. */
void block_backward(model *m, const activations *a, backward_scratch *s, int b, int k,
                    par_group *mp);
/* Backward of the input layer (parameters only). */
void input_backward(model *m, const activations *a, const backward_scratch *s, int b);

/* ---------------------------------------------------------------------------------------- */
/* One training step (pipeline.c)                                                           */
/* ---------------------------------------------------------------------------------------- */

typedef struct step_state {
  int b;           /* samples per micro-batch */
  int M;           /* micro-batches */
  activations *mb; /* M of them */
  backward_scratch scratch;
  float **grad_out; /* M of (b, D): gradients sent to the previous stage */
  par_work **sends; /* pending pipeline sends, at most 2*M per step */
  int nsends;
  par_work **reduces; /* pending dp all-reduces, one per bucket */
} step_state;

void step_init(step_state *s, const model *m, const train_config *cfg, const train_par *par);
void step_free(step_state *s, const model *m);
/* Runs forward and backward of global batch `step` (0-based) and leaves the dp-averaged
 * gradients in m->grads. Returns this rank's share of the summed loss (non-zero only on last
 * stage ranks with mp index 0, so that a sum over the world is the batch's total). */
double train_step(model *m, step_state *s, const train_config *cfg, const train_par *par, int step);

/* ---------------------------------------------------------------------------------------- */
/* Optimizer (optim.c)                                                                      */
/* ---------------------------------------------------------------------------------------- */

typedef struct optimizer {
  optim_kind kind;
  float lr, momentum, beta1, beta2, eps;
  int t;          /* steps taken */
  int steps;      /* of the whole run: the learning rate decays over them */
  float *m1, *m2; /* momentum / first moment; second moment (Adam) */
  size_t n;
} optimizer;

void optim_init(optimizer *o, const train_config *cfg, size_t nparams);
/* Updates params from grads, elementwise, so a shard updates as the whole would. The
 * learning rate of step t (from 1) is lr * (1 + cos(pi (t-1) / steps)) / 2. */
void optim_step(optimizer *o, float *params, const float *grads);
void optim_free(optimizer *o);

/* ---------------------------------------------------------------------------------------- */
/* Reporting (report.c), rank 0 only                                                        */
/* ---------------------------------------------------------------------------------------- */

typedef struct report {
  int tty; /* stdout is a terminal: progress is redrawn in place */
  int json;
  int n, cap; /* logged points */
  int *steps;
  double *losses;
  double t_start, t_last;
  int step_last;
  char title[256]; /* the configuration line, for the plot */
} report;

double now_seconds(void);
void report_start(report *r, const train_config *cfg, const train_par *par, const model *m, int dp);
/* Whether the progress line is redrawn in place: --progress tty, or auto where stdout is this
 * process's controlling terminal (so a terminal a launcher made for the rank, such as Open
 * MPI's pseudo-terminals whose output mpirun may be sending to a file, is not), and never with
 * --json. Decided by rank 0; the others learn it from it. */
int report_is_tty(const train_config *cfg);
/* Checks --plot's path before training: an extension whose format train writes (.svg) and a
 * place it can be written (an existing, writable directory; an existing file writable and not
 * a directory). Returns 0, or -1 with a message for the user in msg. */
int report_plot_check(const char *path, char *msg, size_t len);
/* The loss of step `step`. `logged`: a step of the --log-every grid (kept for the plot and
 * printed on a line of its own unless on a terminal); otherwise a terminal redraw. */
void report_step(report *r, const train_config *cfg, int step, double loss, int logged);
void report_finish(report *r, const train_config *cfg);
/* Writes the loss curve as an SVG file. Returns 0, or -1 with errno set. */
int report_plot(const report *r, const char *path);
void report_free(report *r);

/* ---------------------------------------------------------------------------------------- */
/* Profiling (profile.c): --profile                                                         */
/* ---------------------------------------------------------------------------------------- */

/* The group kind a par call is charged to: the mesh's three, and the world (the loss). */
typedef enum prof_group { PROF_MP, PROF_PP, PROF_DP, PROF_WORLD, PROF_NGROUPS } prof_group;

void prof_enable(void);
/* Before a par call: the time now, or 0 when profiling is off (then no clock is read). */
double prof_start(void);
/* After it: adds the time since t0 (prof_start's value) to group g. */
void prof_stop(prof_group g, double t0);
/* At the end of a step that began at t0 (prof_start's value). */
void prof_step_done(double t0);
/* Gathers every rank's totals (one par_allgather over the world, every rank must call it) and
 * on rank 0 prints a line per rank and the summary. Does nothing when profiling is off. */
void prof_report(const train_par *par);

#endif /* TRAIN_H */
