/*
 * pipeline.c -- one training step on this rank: which samples it sees, in which order its
 * stage runs the micro-batches forward and backward, what it sends to the neighbouring stages,
 * and how the gradients are averaged over data-parallel replicas.
 *
 * The global batch B of step s is samples [s*B, (s+1)*B) of the dataset in every layout. The
 * dp group splits it into dp equal parts (replica d takes part d) and each part is cut into M
 * micro-batches of b = B/(dp*M) samples, which flow through the pipeline. Each sample's loss
 * is weighted by 1/(B/dp) and the replicas' gradients are averaged (PAR_AVG), so the gradient
 * is the mean over the global batch, as in the single-process run.
 *
 * Schedules, for stage p of P:
 *   GPipe  all M forwards, then all M backwards;
 *   1F1B   min(P-1-p, M) forwards to fill the pipe, then one forward and one backward in turn,
 *          then the remaining backwards, so at most P-p micro-batches wait for their backward.
 * Both run the backwards in micro-batch order 0..M-1, so the gradients accumulate in the same
 * order and the two schedules give bit-identical results.
 *
 * Sends are async (par_send_async) and waited for at the end of the step; receives block,
 * since the data is needed at once. The pp group runs its ops in issue order and a send
 * completes once its data sits in the shared-memory channel, so a stage never waits on a
 * neighbour that waits on it.
 *
 * Data parallelism overlaps with the backward pass: during the last micro-batch's backward,
 * each layer's gradients are final as soon as that layer is done, and their all-reduce over dp
 * starts then (par_allreduce_async, run by the dp group's worker thread) while the earlier
 * layers are still being differentiated. The step waits for them all before returning.
 */
#include <string.h>

#include "train.h"

void step_init(step_state *s, const model *m, const train_config *cfg, const train_par *par) {
  memset(s, 0, sizeof *s);
  s->M = cfg->micro_batches;
  s->b = cfg->batch / (par->dp.size * s->M);
  s->mb = train_alloc((size_t)s->M, sizeof *s->mb);
  for (int k = 0; k < s->M; k++) activations_alloc(&s->mb[k], m, s->b);
  scratch_alloc(&s->scratch, m, s->b);
  s->grad_out = train_alloc((size_t)s->M, sizeof *s->grad_out);
  for (int k = 0; k < s->M; k++) s->grad_out[k] = train_alloc((size_t)s->b * m->D, sizeof(float));
  s->sends = train_alloc(2 * (size_t)s->M, sizeof *s->sends);
  s->reduces = train_alloc((size_t)m->nbuckets + 1, sizeof *s->reduces);
}

void step_free(step_state *s, const model *m) {
  for (int k = 0; k < s->M; k++) {
    activations_free(&s->mb[k], m);
    free(s->grad_out[k]);
  }
  free(s->mb);
  free(s->grad_out);
  scratch_free(&s->scratch);
  free(s->sends);
  free(s->reduces);
  memset(s, 0, sizeof *s);
}

/* ---------------------------------------------------------------------------------------- */
/* Pipeline transfers over the pp group                                                     */
/* ---------------------------------------------------------------------------------------- */

static void send_to_stage(step_state *s, const train_par *par, const float *buf, size_t n,
                          int stage) {
  train_err_group = par->pp.group;
  CHECK(par_send_async(par->pp.group, buf, n, PAR_F32, stage, &s->sends[s->nsends++]));
}

static void recv_from_stage(const train_par *par, float *buf, size_t n, int stage) {
  train_err_group = par->pp.group;
  CHECK(par_recv(par->pp.group, buf, n, PAR_F32, stage));
}

/* ---------------------------------------------------------------------------------------- */
/* Data-parallel gradient averaging                                                         */
/* ---------------------------------------------------------------------------------------- */

/* Starts the all-reduce of the next bucket (they are listed in the order backward finishes
 * them). A one-member average is the identity, so without data parallelism nothing is sent. */
static void start_bucket(model *m, step_state *s, const train_par *par, int *next) {
  if (par->dp.size == 1) return;
  const grad_bucket *bk = &m->buckets[*next];
  float *g = m->mem_grads + bk->offset;
  train_err_group = par->dp.group;
  CHECK(par_allreduce_async(par->dp.group, g, g, bk->count, PAR_F32, PAR_AVG,
                            &s->reduces[(*next)++]));
}

/* ---------------------------------------------------------------------------------------- */
/* Forward and backward of one micro-batch on this stage                                    */
/* ---------------------------------------------------------------------------------------- */

/* Returns the summed loss of the micro-batch on the last stage, else 0. */
static double forward(model *m, step_state *s, const train_config *cfg, const train_par *par,
                      int step, int k) {
  activations *a = &s->mb[k];
  int b = s->b;
  /* Every stage can make its samples: the first needs the points, the last the labels. */
  uint64_t first = (uint64_t)step * (uint64_t)cfg->batch +
                   (uint64_t)par->dp.index * (uint64_t)(cfg->batch / par->dp.size) +
                   (uint64_t)k * (uint64_t)b;
  data_fill(cfg->seed, cfg->classes, first, b, a->x, a->labels);

  if (m->has_input)
    input_forward(m, a, b);
  else
    recv_from_stage(par, a->stream[0], (size_t)b * m->D, par->stage - 1);
  blocks_forward(m, a, b, par->mp.group);
  if (m->has_head) return head_forward(m, a, b, par->mp.group);
  send_to_stage(s, par, a->stream[m->nblocks], (size_t)b * m->D, par->stage + 1);
  return 0.0;
}

static void backward(model *m, step_state *s, const train_config *cfg, const train_par *par,
                     int k, int *bucket) {
  activations *a = &s->mb[k];
  backward_scratch *sc = &s->scratch;
  int b = s->b, last = k == s->M - 1;
  float scale = 1.0f / (float)(cfg->batch / par->dp.size);

  if (m->has_head) {
    head_backward(m, a, sc, b, scale, par->mp.group);
    if (last) start_bucket(m, s, par, bucket);
  } else {
    recv_from_stage(par, sc->dstream, (size_t)b * m->D, par->stage + 1);
  }
  for (int j = m->nblocks - 1; j >= 0; j--) {
    block_backward(m, a, sc, b, j, par->mp.group);
    if (last) start_bucket(m, s, par, bucket);
  }
  if (m->has_input) {
    input_backward(m, a, sc, b);
    if (last) start_bucket(m, s, par, bucket);
  } else {
    /* The scratch is reused by the next micro-batch while the send may still be pending. */
    memcpy(s->grad_out[k], sc->dstream, (size_t)b * m->D * sizeof(float));
    send_to_stage(s, par, s->grad_out[k], (size_t)b * m->D, par->stage - 1);
  }
}

/* ---------------------------------------------------------------------------------------- */
/* The step                                                                                 */
/* ---------------------------------------------------------------------------------------- */

double train_step(model *m, step_state *s, const train_config *cfg, const train_par *par,
                  int step) {
  int M = s->M, bucket = 0, nf = 0, nb = 0;
  double loss = 0.0;
  memset(m->mem_grads, 0, m->nparams * sizeof(float));
  s->nsends = 0;

  int warmup = cfg->schedule == SCHEDULE_GPIPE ? M : par->nstages - 1 - par->stage;
  if (warmup > M) warmup = M;
  while (nf < warmup) loss += forward(m, s, cfg, par, step, nf++);
  while (nf < M) { /* 1F1B steady state */
    loss += forward(m, s, cfg, par, step, nf++);
    backward(m, s, cfg, par, nb++, &bucket);
  }
  while (nb < M) backward(m, s, cfg, par, nb++, &bucket);

  /* All sends must be done before the next step overwrites their buffers. */
  for (int i = 0; i < s->nsends; i++) {
    train_err_group = par->pp.group;
    CHECK(par_work_wait(s->sends[i], -1.0));
    par_work_free(s->sends[i]);
  }
  for (int i = 0; i < bucket; i++) {
    train_err_group = par->dp.group;
    CHECK(par_work_wait(s->reduces[i], -1.0));
    par_work_free(s->reduces[i]);
  }
  return m->has_head && par->mp.index == 0 ? loss : 0.0;
}
