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
 * Transfers are async (par_send_async, par_recv_async). A receive is waited for at once, as
 * its data is needed; sends are waited for at the end of the step, their buffers untouched
 * until then. In the 1F1B steady state both neighbours send before they receive, which with
 * messages larger than what the channel buffers would leave each waiting for the other; so
 * there, as in Megatron's batched send_forward_recv_backward, each send is posted together
 * with the receive that follows it, and par progresses consecutive send/recv ops of a group
 * together.
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

/* Posts a send of (b, D) floats to the next (dir = +1) or previous (dir = -1) stage. Its
 * handle is kept and waited for at the end of the step: the buffer is not touched before. */
static void post_send(step_state *s, const model *m, const train_par *par, const float *buf,
                      int dir) {
  train_err_group = par->pp.group;
  double t0 = prof_start();
  CHECK(par_send_async(par->pp.group, buf, (size_t)s->b * m->D, PAR_F32, par->stage + dir,
                       &s->sends[s->nsends++]));
  prof_stop(PROF_PP, t0);
}

/* Posts a receive of (b, D) floats from the previous (dir = -1) or next (dir = +1) stage. */
static par_work *post_recv(step_state *s, const model *m, const train_par *par, float *buf,
                           int dir) {
  par_work *w;
  train_err_group = par->pp.group;
  double t0 = prof_start();
  CHECK(par_recv_async(par->pp.group, buf, (size_t)s->b * m->D, PAR_F32, par->stage + dir, &w));
  prof_stop(PROF_PP, t0);
  return w;
}

static void wait_recv(const train_par *par, par_work *w) {
  if (!w) return;
  train_err_group = par->pp.group;
  double t0 = prof_start();
  CHECK(par_work_wait(w, -1.0));
  prof_stop(PROF_PP, t0);
  par_work_free(w);
}

/* The four transfers of micro-batch k; each does nothing on the stage without that
 * neighbour. Activations go forward into stream[0]; gradients come back into the scratch. */
static void send_forward(step_state *s, const model *m, const train_par *par, int k) {
  if (!m->has_head) post_send(s, m, par, s->mb[k].stream[m->nblocks], +1);
}
static par_work *recv_forward(step_state *s, const model *m, const train_par *par, int k) {
  return m->has_input ? NULL : post_recv(s, m, par, s->mb[k].stream[0], -1);
}
static void send_backward(step_state *s, const model *m, const train_par *par, int k) {
  if (!m->has_input) post_send(s, m, par, s->grad_out[k], -1);
}
static par_work *recv_backward(step_state *s, const model *m, const train_par *par) {
  return m->has_head ? NULL : post_recv(s, m, par, s->scratch.dstream, +1);
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
  double t0 = prof_start();
  CHECK(par_allreduce_async(par->dp.group, g, g, bk->count, PAR_F32, PAR_AVG,
                            &s->reduces[(*next)++]));
  prof_stop(PROF_DP, t0);
}

/* ---------------------------------------------------------------------------------------- */
/* Forward and backward of one micro-batch on this stage                                    */
/* ---------------------------------------------------------------------------------------- */

/* Forward of micro-batch k through this stage, its input in stream[0] (received, or made
 * here on the first stage). Returns the micro-batch's summed loss on the last stage, else 0. */
static double forward(model *m, step_state *s, const train_config *cfg, const train_par *par,
                      int step, int k) {
  activations *a = &s->mb[k];
  int b = s->b;
  /* Every stage can make its samples: the first needs the points, the last the labels. */
  uint64_t first = (uint64_t)step * (uint64_t)cfg->batch +
                   (uint64_t)par->dp.index * (uint64_t)(cfg->batch / par->dp.size) +
                   (uint64_t)k * (uint64_t)b;
  data_fill(cfg->seed, cfg->classes, first, b, a->x, a->labels);

  if (m->has_input) input_forward(m, a, b);
  blocks_forward(m, a, b, par->mp.group);
  return m->has_head ? head_forward(m, a, b, par->mp.group) : 0.0;
}

/* Backward of micro-batch k, the gradient of this stage's output in the scratch (received,
 * or made here from the loss on the last stage). Leaves the gradient of the stage's input in
 * grad_out[k] for the previous stage. During the last micro-batch, starts each layer's
 * data-parallel all-reduce as soon as its gradients are final. */
static void backward(model *m, step_state *s, const train_config *cfg, const train_par *par, int k,
                     int *bucket) {
  activations *a = &s->mb[k];
  backward_scratch *sc = &s->scratch;
  int b = s->b, last = k == s->M - 1;
  float scale = 1.0f / (float)(cfg->batch / par->dp.size);

  if (m->has_head) {
    head_backward(m, a, sc, b, scale, par->mp.group);
    if (last) start_bucket(m, s, par, bucket);
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
  }
}

/* ---------------------------------------------------------------------------------------- */
/* The step                                                                                 */
/* ---------------------------------------------------------------------------------------- */

double train_step(model *m, step_state *s, const train_config *cfg, const train_par *par,
                  int step) {
  int M = s->M, bucket = 0;
  double loss = 0.0;
  memset(m->mem_grads, 0, m->nparams * sizeof(float));
  s->nsends = 0;

  int warmup = cfg->schedule == SCHEDULE_GPIPE ? M : par->nstages - 1 - par->stage;
  if (warmup > M) warmup = M;
  int steady = M - warmup;

  /* Warm-up (GPipe: every forward). */
  for (int k = 0; k < warmup; k++) {
    wait_recv(par, recv_forward(s, m, par, k));
    loss += forward(m, s, cfg, par, step, k);
    send_forward(s, m, par, k);
  }
  /* 1F1B steady state: forward k, backward i. Each send is posted right before the receive
   * that follows it, so the pair progresses together (see the top of the file). */
  par_work *rf = steady > 0 ? recv_forward(s, m, par, warmup) : NULL;
  for (int i = 0; i < steady; i++) {
    int k = warmup + i;
    wait_recv(par, rf);
    loss += forward(m, s, cfg, par, step, k);
    send_forward(s, m, par, k);
    wait_recv(par, recv_backward(s, m, par));
    backward(m, s, cfg, par, i, &bucket);
    send_backward(s, m, par, i);
    rf = i + 1 < steady ? recv_forward(s, m, par, k + 1) : NULL;
  }
  /* Cool-down (GPipe: every backward). */
  for (int i = steady; i < M; i++) {
    wait_recv(par, recv_backward(s, m, par));
    backward(m, s, cfg, par, i, &bucket);
    send_backward(s, m, par, i);
  }

  /* All sends must be done before the next step overwrites their buffers. */
  for (int i = 0; i < s->nsends; i++) {
    train_err_group = par->pp.group;
    double t0 = prof_start();
    CHECK(par_work_wait(s->sends[i], -1.0));
    prof_stop(PROF_PP, t0);
    par_work_free(s->sends[i]);
  }
  for (int i = 0; i < bucket; i++) {
    train_err_group = par->dp.group;
    double t0 = prof_start();
    CHECK(par_work_wait(s->reduces[i], -1.0));
    prof_stop(PROF_DP, t0);
    par_work_free(s->reduces[i]);
  }
  return m->has_head && par->mp.index == 0 ? loss : 0.0;
}
