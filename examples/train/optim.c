/*
 * optim.c -- the optimizers. Both update each parameter from its own gradient and state only,
 * so a rank that holds a shard updates it exactly as the single process updates those
 * elements, and replicated tensors (whose gradients are bit-identical on every mp rank, since
 * par's all-reduce gives every member the same bits) stay identical.
 */
#include <math.h>
#include <string.h>

#include "train.h"

void optim_init(optimizer *o, const train_config *cfg, size_t nparams) {
  memset(o, 0, sizeof *o);
  o->kind = cfg->optim;
  o->lr = cfg->lr;
  o->momentum = cfg->momentum;
  o->beta1 = 0.9f;
  o->beta2 = 0.999f;
  o->eps = 1e-8f;
  o->steps = cfg->steps;
  o->n = nparams;
  o->m1 = train_alloc(nparams, sizeof(float));
  if (o->kind == OPTIM_ADAM) o->m2 = train_alloc(nparams, sizeof(float));
}

void optim_step(optimizer *o, float *params, const float *grads) {
  o->t++;
  /* Cosine decay from lr towards 0 over the run: steadier at the end, where a large step
   * would throw the loss about. */
  float lr = o->lr * 0.5f * (1.0f + cosf(3.14159265f * (float)(o->t - 1) / (float)o->steps));
  if (o->kind == OPTIM_SGD) {
    /* PyTorch's SGD with momentum: v = mu v + g; p -= lr v. */
    for (size_t i = 0; i < o->n; i++) {
      o->m1[i] = o->momentum * o->m1[i] + grads[i];
      params[i] -= lr * o->m1[i];
    }
    return;
  }
  /* Adam with bias correction. */
  float c1 = 1.0f - powf(o->beta1, (float)o->t);
  float c2 = 1.0f - powf(o->beta2, (float)o->t);
  for (size_t i = 0; i < o->n; i++) {
    float g = grads[i];
    o->m1[i] = o->beta1 * o->m1[i] + (1.0f - o->beta1) * g;
    o->m2[i] = o->beta2 * o->m2[i] + (1.0f - o->beta2) * g * g;
    float mhat = o->m1[i] / c1, vhat = o->m2[i] / c2;
    params[i] -= lr * mhat / (sqrtf(vhat) + o->eps);
  }
}

void optim_free(optimizer *o) {
  free(o->m1);
  free(o->m2);
  memset(o, 0, sizeof *o);
}
