/*
 * shm_coll.c -- collectives through the group's segment, chunk by chunk so each round's data
 * stays in cache. Reductions combine the members' contributions in index order, so every
 * member gets the same bits on every run. Large all-reduce is reduce-scatter plus all-gather
 * inside each round: every member reduces 1/n of the round's elements and everyone copies the
 * n results out; small ones take one round in which each member reduces everything itself.
 */
#include <string.h>

#include "backends/shm/shm.h"

/* Starts a round. A member that will write into the round's set first waits until everyone
 * has posted the previous round, i.e. has finished reading the set two rounds back. */
static par_status round_begin(shm_state *st, const shm_waitctx *wc, int writes, int *set) {
  *set = (int)(st->round & 1);
  if (writes) return par__shm_wait_all(st, wc, st->prev_round_end);
  return PAR_OK;
}

static void round_end(shm_state *st) {
  st->prev_round_end = st->epoch;
  st->round++;
}

static uint64_t post_next(shm_state *st) {
  par__shm_post(st, ++st->epoch);
  return st->epoch;
}

/* Member j's share [lo, hi) of m elements, split in whole 64-byte units. */
static void share(size_t m, size_t es, int n, int j, size_t *lo, size_t *hi) {
  size_t unit = es >= 64 ? 1 : 64 / es;
  size_t units = (m + unit - 1) / unit;
  size_t a = units * (size_t)j / (size_t)n * unit, b = units * (size_t)(j + 1) / (size_t)n * unit;
  *lo = a < m ? a : m;
  *hi = b < m ? b : m;
}

/* PAR_CHECK: members compare what they are about to run before running it. */
static par_status check_fingerprint(par_group *g, shm_state *st, const par__op *op,
                                    const shm_waitctx *wc) {
  int s;
  PAR_FORWARD_IF_ERROR(round_begin(st, wc, 1, &s));
  uint64_t *fp = st->ctrl[st->me].fp[s];
  fp[0] = (uint64_t)op->kind | (uint64_t)op->dt << 8 | (uint64_t)op->op << 16 |
          (uint64_t)(uint32_t)(op->root + 1) << 32;
  fp[1] = op->count;
  fp[2] = op->seq;
  PAR_FORWARD_IF_ERROR(par__shm_wait_all(st, wc, post_next(st)));
  round_end(st);
  for (int j = 0; j < st->n; j++) {
    const uint64_t *o = st->ctrl[j].fp[s];
    if (o[0] == fp[0] && o[1] == fp[1] && o[2] == fp[2]) continue;
    return par__error(PAR_ERR_MISMATCH,
                      "group '%s': rank %d issued %s(count=%llu, %s, %s, root/peer %d) as op "
                      "#%llu but rank %d issued %s(count=%llu, %s, %s, root/peer %d) as op #%llu",
                      g->name, g->ranks[st->me], par__op_kind_name(op->kind),
                      (unsigned long long)op->count, par_dtype_name(op->dt),
                      par_op_name(op->op), op->root, (unsigned long long)op->seq, g->ranks[j],
                      par__op_kind_name((par__op_kind)(o[0] & 0xff)),
                      (unsigned long long)o[1], par_dtype_name((par_dtype)((o[0] >> 8) & 0xff)),
                      par_op_name((par_op)((o[0] >> 16) & 0xff)), (int)(o[0] >> 32) - 1,
                      (unsigned long long)o[2]);
  }
  return PAR_OK;
}

/* ---------------------------------------------------------------------------------------- */
/* Reductions: allreduce, reduce (to a root), reduce_scatter                                */
/* ---------------------------------------------------------------------------------------- */

/* Every reducer combines all contributions itself: one synchronisation per round. Its own
 * contribution is read from its input (still in cache from the copy) unless the op is in
 * place. Used for small inputs, and for all sizes on two members, where it also moves the
 * least data. */
static par_status reduce_direct(shm_state *st, const shm_waitctx *wc, const par__op *op,
                                int all) {
  size_t es = par_dtype_size(op->dt), per = st->hdr->chunk / es;
  const char *in = op->sendbuf;
  char *out = op->recvbuf;
  int reader = all || op->root == st->me, inplace = op->sendbuf == op->recvbuf;
  for (size_t base = 0; base < op->count; base += per) {
    size_t m = op->count - base < per ? op->count - base : per;
    int s;
    PAR_FORWARD_IF_ERROR(round_begin(st, wc, 1, &s));
    memcpy(shm_area(st, st->me, s, 0), in + base * es, m * es);
    PAR_FORWARD_IF_ERROR(par__shm_wait_all(st, wc, post_next(st)));
    if (reader) {
      for (int j = 0; j < st->n; j++) st->srcs[j] = shm_area(st, j, s, 0);
      if (!inplace) st->srcs[st->me] = in + base * es;
      par__reduce(out + base * es, st->srcs, st->n, m, op->dt, op->op, st->n);
    }
    round_end(st);
  }
  return PAR_OK;
}

static par_status reduce_large(shm_state *st, const shm_waitctx *wc, const par__op *op,
                               int all) {
  size_t es = par_dtype_size(op->dt), per = st->hdr->chunk / es;
  const char *in = op->sendbuf;
  char *out = op->recvbuf;
  int reader = all || op->root == st->me;
  for (size_t base = 0; base < op->count; base += per) {
    size_t m = op->count - base < per ? op->count - base : per, lo, hi;
    int s;
    PAR_FORWARD_IF_ERROR(round_begin(st, wc, 1, &s));
    memcpy(shm_area(st, st->me, s, 0), in + base * es, m * es);
    PAR_FORWARD_IF_ERROR(par__shm_wait_all(st, wc, post_next(st)));

    share(m, es, st->n, st->me, &lo, &hi);
    for (int j = 0; j < st->n; j++) st->srcs[j] = shm_area(st, j, s, 0) + lo * es;
    if (hi > lo)
      par__reduce(shm_area(st, st->me, s, 1), st->srcs, st->n, hi - lo, op->dt, op->op, st->n);
    uint64_t done = post_next(st);

    if (reader)
      for (int k = 0; k < st->n; k++) {
        int j = (st->me + k) % st->n;
        share(m, es, st->n, j, &lo, &hi);
        if (hi == lo) continue;
        PAR_FORWARD_IF_ERROR(par__shm_wait_one(st, wc, j, done));
        memcpy(out + (base + lo) * es, shm_area(st, j, s, 1), (hi - lo) * es);
      }
    round_end(st);
  }
  return PAR_OK;
}

static par_status reduce_scatter(shm_state *st, const shm_waitctx *wc, const par__op *op) {
  size_t es = par_dtype_size(op->dt), per = st->hdr->chunk / (es * (size_t)st->n);
  const char *in = op->sendbuf;
  char *out = op->recvbuf;
  for (size_t base = 0; base < op->count; base += per) {
    size_t m = op->count - base < per ? op->count - base : per;
    int s;
    PAR_FORWARD_IF_ERROR(round_begin(st, wc, 1, &s));
    char *mine = shm_area(st, st->me, s, 0);
    for (int j = 0; j < st->n; j++)
      memcpy(mine + (size_t)j * m * es, in + ((size_t)j * op->count + base) * es, m * es);
    PAR_FORWARD_IF_ERROR(par__shm_wait_all(st, wc, post_next(st)));
    for (int j = 0; j < st->n; j++)
      st->srcs[j] = shm_area(st, j, s, 0) + (size_t)st->me * m * es;
    par__reduce(out + base * es, st->srcs, st->n, m, op->dt, op->op, st->n);
    round_end(st);
  }
  return PAR_OK;
}

/* ---------------------------------------------------------------------------------------- */
/* Data movement: allgather, broadcast, alltoall, barrier                                   */
/* ---------------------------------------------------------------------------------------- */

static par_status allgather(shm_state *st, const shm_waitctx *wc, const par__op *op) {
  size_t es = par_dtype_size(op->dt), per = st->hdr->chunk / es;
  const char *in = op->sendbuf;
  char *out = op->recvbuf;
  for (size_t base = 0; base < op->count; base += per) {
    size_t m = op->count - base < per ? op->count - base : per;
    int s;
    PAR_FORWARD_IF_ERROR(round_begin(st, wc, 1, &s));
    memcpy(shm_area(st, st->me, s, 0), in + base * es, m * es);
    uint64_t e = post_next(st);
    for (int k = 0; k < st->n; k++) {
      int j = (st->me + k) % st->n;
      char *dst = out + ((size_t)j * op->count + base) * es;
      if (j == st->me) {
        if (dst != in + base * es) memcpy(dst, in + base * es, m * es);
        continue;
      }
      PAR_FORWARD_IF_ERROR(par__shm_wait_one(st, wc, j, e));
      memcpy(dst, shm_area(st, j, s, 0), m * es);
    }
    round_end(st);
  }
  return PAR_OK;
}

static par_status broadcast(shm_state *st, const shm_waitctx *wc, const par__op *op) {
  size_t es = par_dtype_size(op->dt), per = st->hdr->chunk / es;
  char *buf = op->recvbuf;
  int root = op->root, am_root = root == st->me;
  for (size_t base = 0; base < op->count; base += per) {
    size_t m = op->count - base < per ? op->count - base : per;
    int s;
    PAR_FORWARD_IF_ERROR(round_begin(st, wc, am_root, &s));
    if (am_root) memcpy(shm_area(st, root, s, 0), buf + base * es, m * es);
    uint64_t e = post_next(st);
    if (!am_root) {
      PAR_FORWARD_IF_ERROR(par__shm_wait_one(st, wc, root, e));
      memcpy(buf + base * es, shm_area(st, root, s, 0), m * es);
    }
    round_end(st);
  }
  return PAR_OK;
}

static par_status alltoall(shm_state *st, const shm_waitctx *wc, const par__op *op) {
  size_t es = par_dtype_size(op->dt), per = st->hdr->chunk / (es * (size_t)st->n);
  const char *in = op->sendbuf;
  char *out = op->recvbuf;
  for (size_t base = 0; base < op->count; base += per) {
    size_t m = op->count - base < per ? op->count - base : per;
    int s;
    PAR_FORWARD_IF_ERROR(round_begin(st, wc, 1, &s));
    char *mine = shm_area(st, st->me, s, 0);
    for (int j = 0; j < st->n; j++)
      memcpy(mine + (size_t)j * m * es, in + ((size_t)j * op->count + base) * es, m * es);
    uint64_t e = post_next(st);
    for (int k = 0; k < st->n; k++) {
      int j = (st->me + k) % st->n;
      PAR_FORWARD_IF_ERROR(par__shm_wait_one(st, wc, j, e));
      memcpy(out + ((size_t)j * op->count + base) * es,
             shm_area(st, j, s, 0) + (size_t)st->me * m * es, m * es);
    }
    round_end(st);
  }
  return PAR_OK;
}

static par_status barrier(shm_state *st, const shm_waitctx *wc) {
  int s;
  PAR_FORWARD_IF_ERROR(round_begin(st, wc, 0, &s));
  PAR_FORWARD_IF_ERROR(par__shm_wait_all(st, wc, post_next(st)));
  round_end(st);
  return PAR_OK;
}

par_status par__shm_collective(par_group *g, shm_state *st, const par__op *op) {
  shm_waitctx wc = {g, par__op_kind_name(op->kind), op->seq, op->deadline, 0};
  if (par__env_get()->check) PAR_FORWARD_IF_ERROR(check_fingerprint(g, st, op, &wc));
  if (op->kind == PAR__BARRIER) return barrier(st, &wc);
  if (op->count == 0) return PAR_OK;
  size_t bytes = op->count * par_dtype_size(op->dt);
  switch (op->kind) {
    case PAR__ALLREDUCE:
    case PAR__REDUCE: {
      int all = op->kind == PAR__ALLREDUCE;
      if (st->n <= 2 || (bytes <= SHM_SMALL_MAX && bytes <= st->hdr->chunk))
        return reduce_direct(st, &wc, op, all);
      return reduce_large(st, &wc, op, all);
    }
    case PAR__REDUCE_SCATTER:
      return reduce_scatter(st, &wc, op);
    case PAR__ALLGATHER:
      return allgather(st, &wc, op);
    case PAR__BROADCAST:
      return broadcast(st, &wc, op);
    case PAR__ALLTOALL:
      return alltoall(st, &wc, op);
    default:
      return par__error(PAR_ERR_INTERNAL, "shm: op %s is not a collective",
                        par__op_kind_name(op->kind));
  }
}
