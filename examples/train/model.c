/*
 * model.c -- the model: a residual MLP classifier, as this rank holds it.
 *
 *   input layer   h = x We + be                          (b, X) -> (b, D)
 *   block k       h = h + gelu(h W1 + b1) W2 + b2         (b, D) -> (b, H) -> (b, D)
 *   classifier    logits = h Wc + bc, softmax cross-entropy over C classes
 *
 * Model parallelism over the mp group follows Megatron-LM. In a block, W1 is column-parallel
 * (each rank holds Hl = H/mp of its output columns) and W2 is row-parallel (the matching Hl
 * input rows), so the hidden activation never leaves the rank and the block needs one
 * all-reduce of its (b, D) output. Backward uses the conjugates: the row-parallel all-reduce
 * becomes an identity, and the identity in front of the column-parallel W1 becomes an
 * all-reduce of the input gradient. The classifier is column-parallel over the classes: its
 * logits are gathered over mp (par_tensor_gather) for the loss, and in backward each rank takes
 * its own columns of the logit gradient back (par_tensor_split, a view without copying) --
 * the split <-> gather pair. The input layer is tiny and replicated.
 *
 * Pipeline parallelism gives each stage a run of blocks; the first stage also holds the input
 * layer and the last the classifier. With one rank, mp = 1 and every collective is a copy.
 */
#include <math.h>
#include <string.h>

#include "train.h"

/* ---------------------------------------------------------------------------------------- */
/* Building and initialising                                                                */
/* ---------------------------------------------------------------------------------------- */

/* Random streams of the weights: one per full tensor, whatever the layout. */
enum { STREAM_WE = 1, STREAM_BE, STREAM_WC, STREAM_BC, STREAM_BLOCK0 = 16 };
static uint64_t block_stream(int block, int which) {
  return STREAM_BLOCK0 + 4u * (uint64_t)block + (uint64_t)which;
}

/* Fills the (rows, cols) shard at (row0, col0) of a full tensor with `full_cols` columns:
 * element (r, c) of the shard is element (row0 + r, col0 + c) of the full tensor, drawn from
 * U(-bound, bound) with bound = 1/sqrt(fan_in) (PyTorch's default for Linear). */
static void init_shard(float *t, int rows, int cols, int row0, int col0, int full_cols,
                       uint64_t seed, uint64_t stream, int fan_in) {
  float bound = 1.0f / sqrtf((float)fan_in);
  for (int r = 0; r < rows; r++)
    for (int c = 0; c < cols; c++) {
      uint64_t i = (uint64_t)(row0 + r) * (uint64_t)full_cols + (uint64_t)(col0 + c);
      t[(size_t)r * cols + c] = (2.0f * rng_uniform(seed, stream, i) - 1.0f) * bound;
    }
}

void model_stage_blocks(int blocks, int stage, int nstages, int *first, int *count) {
  int base = blocks / nstages, extra = blocks % nstages;
  *count = base + (stage < extra);
  *first = stage * base + (stage < extra ? stage : extra);
}

/* Points `t` at the tensors of this stage inside `mem` (params, grads: the same layout). */
static void layout_tensors(const model *m, float *mem, stage_tensors *t) {
  float *p = mem;
  memset(t, 0, sizeof *t);
  t->blk = train_alloc((size_t)m->nblocks + 1, sizeof *t->blk);
  if (m->has_input) {
    t->we = p, p += (size_t)m->X * m->D;
    t->be = p, p += m->D;
  }
  for (int k = 0; k < m->nblocks; k++) {
    block_tensors *bt = &t->blk[k];
    bt->w1 = p, p += (size_t)m->D * m->Hl;
    bt->b1 = p, p += m->Hl;
    bt->w2 = p, p += (size_t)m->Hl * m->D;
    bt->b2 = p, p += m->D;
  }
  if (m->has_head) {
    t->wc = p, p += (size_t)m->D * m->Cl;
    t->bc = p, p += m->Cl;
  }
}

void model_build(model *m, const train_config *cfg, int stage, int nstages, int mp_index,
                 int mp_size) {
  memset(m, 0, sizeof *m);
  m->X = INPUT_FEATURES;
  m->D = cfg->width;
  m->H = cfg->hidden;
  m->C = cfg->classes;
  m->mp_index = mp_index;
  m->mp_size = mp_size;
  m->Hl = m->H / mp_size;
  m->Cl = m->C / mp_size;
  m->total_blocks = cfg->blocks;
  model_stage_blocks(cfg->blocks, stage, nstages, &m->first_block, &m->nblocks);
  m->has_input = stage == 0;
  m->has_head = stage == nstages - 1;

  size_t input = (size_t)m->X * m->D + m->D;
  size_t block_l = (size_t)m->D * m->Hl + m->Hl + (size_t)m->Hl * m->D + m->D;
  size_t head_l = (size_t)m->D * m->Cl + m->Cl;
  m->nparams =
      (m->has_input ? input : 0) + (size_t)m->nblocks * block_l + (m->has_head ? head_l : 0);
  m->total_params = input + (size_t)cfg->blocks * (2 * (size_t)m->D * m->H + m->H + m->D) +
                    (size_t)m->D * m->C + m->C;
  m->mem_params = train_alloc(m->nparams, sizeof(float));
  m->mem_grads = train_alloc(m->nparams, sizeof(float));
  layout_tensors(m, m->mem_params, &m->params);
  layout_tensors(m, m->mem_grads, &m->grads);

  /* Initialise this rank's shards from the full tensors' streams. */
  const stage_tensors *p = &m->params;
  uint64_t seed = cfg->seed;
  int h0 = mp_index * m->Hl, c0 = mp_index * m->Cl;
  if (m->has_input) {
    init_shard(p->we, m->X, m->D, 0, 0, m->D, seed, STREAM_WE, m->X);
    init_shard(p->be, 1, m->D, 0, 0, m->D, seed, STREAM_BE, m->X);
  }
  for (int k = 0; k < m->nblocks; k++) {
    int g = m->first_block + k;
    init_shard(p->blk[k].w1, m->D, m->Hl, 0, h0, m->H, seed, block_stream(g, 0), m->D);
    init_shard(p->blk[k].b1, 1, m->Hl, 0, h0, m->H, seed, block_stream(g, 1), m->D);
    init_shard(p->blk[k].w2, m->Hl, m->D, h0, 0, m->D, seed, block_stream(g, 2), m->H);
    init_shard(p->blk[k].b2, 1, m->D, 0, 0, m->D, seed, block_stream(g, 3), m->H);
  }
  if (m->has_head) {
    init_shard(p->wc, m->D, m->Cl, 0, c0, m->C, seed, STREAM_WC, m->D);
    init_shard(p->bc, 1, m->Cl, 0, c0, m->C, seed, STREAM_BC, m->D);
  }

  /* Gradient buckets, in the order backward finishes them. */
  m->buckets = train_alloc((size_t)m->nblocks + 2, sizeof *m->buckets);
  size_t end = m->nparams;
  if (m->has_head) {
    end -= head_l;
    m->buckets[m->nbuckets++] = (grad_bucket){end, head_l};
  }
  for (int k = m->nblocks - 1; k >= 0; k--) {
    end -= block_l;
    m->buckets[m->nbuckets++] = (grad_bucket){end, block_l};
  }
  if (m->has_input) m->buckets[m->nbuckets++] = (grad_bucket){0, input};
}

void model_free(model *m) {
  free(m->params.blk);
  free(m->grads.blk);
  free(m->mem_params);
  free(m->mem_grads);
  free(m->buckets);
  memset(m, 0, sizeof *m);
}

void activations_alloc(activations *a, const model *m, int b) {
  memset(a, 0, sizeof *a);
  a->x = train_alloc((size_t)b * m->X, sizeof(float));
  a->labels = train_alloc((size_t)b, sizeof(int));
  a->stream = train_alloc((size_t)m->nblocks + 1, sizeof(float *));
  a->pre = train_alloc((size_t)m->nblocks + 1, sizeof(float *));
  a->act = train_alloc((size_t)m->nblocks + 1, sizeof(float *));
  for (int k = 0; k <= m->nblocks; k++) a->stream[k] = train_alloc((size_t)b * m->D, sizeof(float));
  for (int k = 0; k < m->nblocks; k++) {
    a->pre[k] = train_alloc((size_t)b * m->Hl, sizeof(float));
    a->act[k] = train_alloc((size_t)b * m->Hl, sizeof(float));
  }
  a->logits_l = train_alloc((size_t)b * m->Cl, sizeof(float));
  a->logits = train_alloc((size_t)b * m->C, sizeof(float));
  a->probs = train_alloc((size_t)b * m->C, sizeof(float));
}

void activations_free(activations *a, const model *m) {
  for (int k = 0; k <= m->nblocks; k++) free(a->stream[k]);
  for (int k = 0; k < m->nblocks; k++) {
    free(a->pre[k]);
    free(a->act[k]);
  }
  free(a->stream);
  free(a->pre);
  free(a->act);
  free(a->x);
  free(a->labels);
  free(a->logits_l);
  free(a->logits);
  free(a->probs);
}

void scratch_alloc(backward_scratch *s, const model *m, int b) {
  s->dstream = train_alloc((size_t)b * m->D, sizeof(float));
  s->dpart = train_alloc((size_t)b * m->D, sizeof(float));
  s->dact = train_alloc((size_t)b * m->Hl, sizeof(float));
  s->dlogits = train_alloc((size_t)b * m->C, sizeof(float));
}

void scratch_free(backward_scratch *s) {
  free(s->dstream);
  free(s->dpart);
  free(s->dact);
  free(s->dlogits);
}

/* ---------------------------------------------------------------------------------------- */
/* Kernels                                                                                  */
/* ---------------------------------------------------------------------------------------- */

/* y (n) += a x (n). The fixed-size inner loop over non-aliasing (restrict) pointers is what
 * the compiler vectorises at -O2. */
static void axpy(float *restrict y, float a, const float *restrict x, int n) {
  int j = 0;
  for (; j + 8 <= n; j += 8)
    for (int l = 0; l < 8; l++) y[j + l] += a * x[j + l];
  for (; j < n; j++) y[j] += a * x[j];
}

/* out (n, oc) = inp (n, ic) w (ic, oc) + bias (oc); bias may be NULL. */
static void matmul_forward(float *restrict out, const float *restrict inp, const float *restrict w,
                           const float *restrict bias, int n, int ic, int oc) {
  for (int r = 0; r < n; r++) {
    float *restrict o = out + (size_t)r * oc;
    for (int j = 0; j < oc; j++) o[j] = bias ? bias[j] : 0.0f;
    for (int i = 0; i < ic; i++) {
      float v = inp[(size_t)r * ic + i];
      axpy(o, v, w + (size_t)i * oc, oc);
    }
  }
}

/* The dot product of a and b (n floats) in 8 interleaved partial sums, which the compiler
 * can keep in vector lanes; the order is fixed, so the result is too. */
static float dot(const float *restrict a, const float *restrict b, int n) {
  float acc[8] = {0};
  int j = 0;
  for (; j + 8 <= n; j += 8)
    for (int l = 0; l < 8; l++) acc[l] += a[j + l] * b[j + l];
  for (; j < n; j++) acc[0] += a[j] * b[j];
  return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

/* Backward of out = inp w + bias, with dout (n, oc) rows `ldo` floats apart:
 * dinp (n, ic) = dout w^T (overwritten; skipped when NULL), dw (ic, oc) += inp^T dout,
 * dbias (oc) += the sum of dout's rows (skipped when NULL). */
static void matmul_backward(float *restrict dinp, float *restrict dw, float *restrict dbias,
                            const float *restrict dout, int ldo, const float *restrict inp,
                            const float *restrict w, int n, int ic, int oc) {
  for (int r = 0; r < n; r++) {
    const float *restrict d = dout + (size_t)r * ldo;
    if (dinp)
      for (int i = 0; i < ic; i++) dinp[(size_t)r * ic + i] = dot(d, w + (size_t)i * oc, oc);
    for (int i = 0; i < ic; i++) axpy(dw + (size_t)i * oc, inp[(size_t)r * ic + i], d, oc);
    if (dbias) axpy(dbias, 1.0f, d, oc);
  }
}

/* GELU, tanh approximation (as in GPT-2). */
#define GELU_SCALE 0.7978845608f /* sqrt(2/pi) */

/* tanh through expf, which is several times faster than libm's tanhf and accurate to a few
 * ulp; at the extremes expf gives inf or 0 and the result 1 or -1. */
static float tanh_exp(float u) { return 1.0f - 2.0f / (expf(2.0f * u) + 1.0f); }

static void gelu_forward(float *out, const float *inp, size_t n) {
  for (size_t i = 0; i < n; i++) {
    float x = inp[i];
    out[i] = 0.5f * x * (1.0f + tanh_exp(GELU_SCALE * (x + 0.044715f * x * x * x)));
  }
}

/* dinp = gelu'(inp) * dout */
static void gelu_backward(float *dinp, const float *inp, const float *dout, size_t n) {
  for (size_t i = 0; i < n; i++) {
    float x = inp[i];
    float u = GELU_SCALE * (x + 0.044715f * x * x * x);
    float th = tanh_exp(u);
    float sech2 = 1.0f - th * th;
    float grad =
        0.5f * (1.0f + th) + 0.5f * x * sech2 * GELU_SCALE * (1.0f + 3.0f * 0.044715f * x * x);
    dinp[i] = grad * dout[i];
  }
}

/* ---------------------------------------------------------------------------------------- */
/* Collectives of the mp group                                                              */
/* ---------------------------------------------------------------------------------------- */

/* Sums a (b, D) partial result over the mp group, in place. With one member it is a copy. */
static void mp_allreduce(par_group *mp, float *buf, size_t n) {
  train_err_group = mp;
  double t0 = prof_start();
  CHECK(par_allreduce(mp, buf, buf, n, PAR_F32, PAR_SUM));
  prof_stop(PROF_MP, t0);
}

static DLTensor matrix(float *data, int64_t *shape, int64_t rows, int64_t cols) {
  shape[0] = rows;
  shape[1] = cols;
  DLTensor t = {.data = data,
                .device = {kDLCPU, 0},
                .ndim = 2,
                .dtype = {kDLFloat, 32, 1},
                .shape = shape,
                .strides = NULL,
                .byte_offset = 0};
  return t;
}

/* ---------------------------------------------------------------------------------------- */
/* Forward                                                                                  */
/* ---------------------------------------------------------------------------------------- */

void input_forward(const model *m, activations *a, int b) {
  matmul_forward(a->stream[0], a->x, m->params.we, m->params.be, b, m->X, m->D);
}

void blocks_forward(const model *m, activations *a, int b, par_group *mp) {
  size_t nd = (size_t)b * m->D;
  for (int k = 0; k < m->nblocks; k++) {
    const block_tensors *p = &m->params.blk[k];
    const float *x = a->stream[k];
    float *y = a->stream[k + 1];
    /* Column-parallel W1: (b, D) -> (b, Hl); the input is replicated, so no communication. */
    matmul_forward(a->pre[k], x, p->w1, p->b1, b, m->D, m->Hl);
    gelu_forward(a->act[k], a->pre[k], (size_t)b * m->Hl);
    /* Row-parallel W2: (b, Hl) -> a partial (b, D), summed over mp. b2 is added once, after
     * the sum, or it would count mp times. */
    matmul_forward(y, a->act[k], p->w2, NULL, b, m->Hl, m->D);
    mp_allreduce(mp, y, nd);
    for (int r = 0; r < b; r++)
      for (int j = 0; j < m->D; j++) {
        size_t i = (size_t)r * m->D + j;
        y[i] = x[i] + y[i] + p->b2[j];
      }
  }
}

double head_forward(const model *m, activations *a, int b, par_group *mp) {
  const float *h = a->stream[m->nblocks];
  /* Column-parallel over classes: this rank's (b, Cl) logits, then all of them gathered. */
  matmul_forward(a->logits_l, h, m->params.wc, m->params.bc, b, m->D, m->Cl);
  int64_t in_shape[2], out_shape[2];
  DLTensor in = matrix(a->logits_l, in_shape, b, m->Cl);
  DLTensor out = matrix(a->logits, out_shape, b, m->C);
  train_err_group = mp;
  double t0 = prof_start();
  CHECK(par_tensor_gather(mp, &in, 1, &out));
  prof_stop(PROF_MP, t0);

  /* Softmax cross-entropy, replicated on every mp rank. */
  double loss = 0.0;
  for (int r = 0; r < b; r++) {
    const float *z = a->logits + (size_t)r * m->C;
    float *p = a->probs + (size_t)r * m->C;
    float zmax = z[0];
    for (int c = 1; c < m->C; c++) zmax = z[c] > zmax ? z[c] : zmax;
    float sum = 0.0f;
    for (int c = 0; c < m->C; c++) sum += p[c] = expf(z[c] - zmax);
    for (int c = 0; c < m->C; c++) p[c] /= sum;
    loss += -logf(p[a->labels[r]] > 1e-30f ? p[a->labels[r]] : 1e-30f);
  }
  return loss;
}

/* ---------------------------------------------------------------------------------------- */
/* Backward                                                                                 */
/* ---------------------------------------------------------------------------------------- */

void head_backward(model *m, const activations *a, backward_scratch *s, int b, float scale,
                   par_group *mp) {
  /* dlogits (b, C) = (softmax - onehot) * scale, the same on every mp rank. */
  for (int r = 0; r < b; r++)
    for (int c = 0; c < m->C; c++) {
      size_t i = (size_t)r * m->C + c;
      s->dlogits[i] = (a->probs[i] - (c == a->labels[r] ? 1.0f : 0.0f)) * scale;
    }
  /* The conjugate of the gather: this rank's columns, as a strided view. */
  int64_t shape[2], view_shape[2], view_strides[2];
  DLTensor full = matrix(s->dlogits, shape, b, m->C), mine;
  train_err_group = mp;
  /* Local (a view, no communication): not timed by --profile. */
  CHECK(par_tensor_split(mp, &full, 1, &mine, view_shape, view_strides));
  const float *dl = (const float *)((const char *)mine.data + mine.byte_offset);
  int ld = (int)mine.strides[0];

  /* dh = dlogits_l Wc_l^T is a partial sum over the class shards: all-reduce it (the
   * conjugate of the identity in front of a column-parallel layer). */
  matmul_backward(s->dpart, m->grads.wc, m->grads.bc, dl, ld, a->stream[m->nblocks], m->params.wc,
                  b, m->D, m->Cl);
  mp_allreduce(mp, s->dpart, (size_t)b * m->D);
  memcpy(s->dstream, s->dpart, (size_t)b * m->D * sizeof(float));
}

void block_backward(model *m, const activations *a, backward_scratch *s, int b, int k,
                    par_group *mp) {
  const block_tensors *p = &m->params.blk[k];
  block_tensors *g = &m->grads.blk[k];
  size_t nd = (size_t)b * m->D;
  /* y = x + allreduce(act W2) + b2: the all-reduce's conjugate is the identity, so dy is
   * this rank's gradient of its partial product as it stands. */
  for (int r = 0; r < b; r++) axpy(g->b2, 1.0f, s->dstream + (size_t)r * m->D, m->D);
  matmul_backward(s->dact, g->w2, NULL, s->dstream, m->D, a->act[k], p->w2, b, m->Hl, m->D);
  gelu_backward(s->dact, a->pre[k], s->dact, (size_t)b * m->Hl);
  /* Column-parallel W1: its input gradient is a partial sum over the hidden shards. */
  matmul_backward(s->dpart, g->w1, g->b1, s->dact, m->Hl, a->stream[k], p->w1, b, m->D, m->Hl);
  mp_allreduce(mp, s->dpart, nd);
  for (size_t i = 0; i < nd; i++) s->dstream[i] += s->dpart[i]; /* plus the residual path */
}

void input_backward(model *m, const activations *a, const backward_scratch *s, int b) {
  matmul_backward(NULL, m->grads.we, m->grads.be, s->dstream, m->D, a->x, m->params.we, b, m->X,
                  m->D);
}
