/*
 * api.c -- the collective entry points. Each checks its arguments once, here at the edge,
 * with a message that says what was wrong, then hands a par__op to the issue-order queue.
 * Ops built elsewhere (the tensor ops) come in through par__issue, so every op is checked
 * here. Argument errors leave the group usable; transport errors break it (see work.c).
 */
#include <stdint.h>
#include <string.h>

#include "coll/group.h"

const char *par__op_kind_name(par__op_kind k) {
  static const char *names[PAR__OP_KIND_COUNT] = {
      "allreduce", "allgather", "reduce_scatter", "broadcast", "reduce",
      "alltoall",  "barrier",   "send",           "recv"};
  return (unsigned)k < PAR__OP_KIND_COUNT ? names[k] : "unknown op";
}

static int overlaps(const void *a, size_t alen, const void *b, size_t blen) {
  uintptr_t x = (uintptr_t)a, y = (uintptr_t)b;
  return alen && blen && x < y + blen && y < x + alen;
}

/* Checks what every op shares, and computes bytes = count * element size * mult without
 * overflow. */
static par_status check_common(par_group *g, const par__op *op, size_t mult, size_t *bytes) {
  PAR_RETURN_ERROR_IF(!par__dtype_valid(op->dt), PAR_ERR_DTYPE,
                      "%s on group '%s': invalid dtype %d", par__op_kind_name(op->kind), g->name,
                      (int)op->dt);
  size_t total;
  PAR_RETURN_ERROR_IF(__builtin_mul_overflow(op->count, par_dtype_size(op->dt), bytes) ||
                          __builtin_mul_overflow(*bytes, mult, &total),
                      PAR_ERR_COUNT, "%s on group '%s': count %zu is too large",
                      par__op_kind_name(op->kind), g->name, op->count);
  return PAR_OK;
}

static par_status check_reduce_op(par_group *g, const par__op *op) {
  PAR_RETURN_ERROR_IF(!par__op_valid(op->op), PAR_ERR_OP, "%s on group '%s': invalid op %d",
                      par__op_kind_name(op->kind), g->name, (int)op->op);
  return PAR_OK;
}

static par_status check_buf(par_group *g, const par__op *op, const void *p, const char *what) {
  PAR_RETURN_ERROR_IF(!p && op->count > 0, PAR_ERR_NULL,
                      "%s on group '%s': %s is NULL with count %zu", par__op_kind_name(op->kind),
                      g->name, what, op->count);
  return PAR_OK;
}

static par_status check_index(par_group *g, const par__op *op, int idx, const char *what) {
  PAR_RETURN_ERROR_IF(idx < 0 || idx >= g->n, PAR_ERR_RANK,
                      "%s on group '%s': %s %d is out of range (the group has %d members)",
                      par__op_kind_name(op->kind), g->name, what, idx, g->n);
  return PAR_OK;
}

static par_status validate(par_group *g, const par__op *op) {
  /* bytes is set by check_common before any use; the 0 is for gcc, which cannot see it. */
  size_t n = (size_t)g->n, bytes = 0;
  switch (op->kind) {
    case PAR__ALLREDUCE:
      PAR_FORWARD_IF_ERROR(check_common(g, op, 1, &bytes));
      PAR_FORWARD_IF_ERROR(check_reduce_op(g, op));
      PAR_FORWARD_IF_ERROR(check_buf(g, op, op->sendbuf, "sendbuf"));
      PAR_FORWARD_IF_ERROR(check_buf(g, op, op->recvbuf, "recvbuf"));
      PAR_RETURN_ERROR_IF(op->sendbuf != op->recvbuf &&
                              overlaps(op->sendbuf, bytes, op->recvbuf, bytes),
                          PAR_ERR_INVALID,
                          "allreduce on group '%s': sendbuf and recvbuf overlap without being "
                          "equal (in-place needs sendbuf == recvbuf)",
                          g->name);
      return PAR_OK;
    case PAR__ALLGATHER:
      PAR_FORWARD_IF_ERROR(check_common(g, op, n, &bytes));
      PAR_FORWARD_IF_ERROR(check_buf(g, op, op->sendbuf, "sendbuf"));
      PAR_FORWARD_IF_ERROR(check_buf(g, op, op->recvbuf, "recvbuf"));
      PAR_RETURN_ERROR_IF(overlaps(op->sendbuf, bytes, op->recvbuf, bytes * n) &&
                              (const char *)op->sendbuf !=
                                  (const char *)op->recvbuf + bytes * (size_t)g->index,
                          PAR_ERR_INVALID,
                          "allgather on group '%s': sendbuf overlaps recvbuf but is not at "
                          "recvbuf + index*count (the in-place position)",
                          g->name);
      return PAR_OK;
    case PAR__REDUCE_SCATTER:
      PAR_FORWARD_IF_ERROR(check_common(g, op, n, &bytes));
      PAR_FORWARD_IF_ERROR(check_reduce_op(g, op));
      PAR_FORWARD_IF_ERROR(check_buf(g, op, op->sendbuf, "sendbuf"));
      PAR_FORWARD_IF_ERROR(check_buf(g, op, op->recvbuf, "recvbuf"));
      PAR_RETURN_ERROR_IF(overlaps(op->sendbuf, bytes * n, op->recvbuf, bytes) &&
                              (const char *)op->recvbuf !=
                                  (const char *)op->sendbuf + bytes * (size_t)g->index,
                          PAR_ERR_INVALID,
                          "reduce_scatter on group '%s': recvbuf overlaps sendbuf but is not at "
                          "sendbuf + index*count (the in-place position)",
                          g->name);
      return PAR_OK;
    case PAR__BROADCAST:
      PAR_FORWARD_IF_ERROR(check_common(g, op, 1, &bytes));
      PAR_FORWARD_IF_ERROR(check_index(g, op, op->root, "root"));
      PAR_FORWARD_IF_ERROR(check_buf(g, op, op->recvbuf, "buf"));
      return PAR_OK;
    case PAR__REDUCE:
      PAR_FORWARD_IF_ERROR(check_common(g, op, 1, &bytes));
      PAR_FORWARD_IF_ERROR(check_reduce_op(g, op));
      PAR_FORWARD_IF_ERROR(check_index(g, op, op->root, "root"));
      PAR_FORWARD_IF_ERROR(check_buf(g, op, op->sendbuf, "sendbuf"));
      if (op->root == g->index) {
        PAR_FORWARD_IF_ERROR(check_buf(g, op, op->recvbuf, "recvbuf (on the root)"));
        PAR_RETURN_ERROR_IF(op->sendbuf != op->recvbuf &&
                                overlaps(op->sendbuf, bytes, op->recvbuf, bytes),
                            PAR_ERR_INVALID,
                            "reduce on group '%s': sendbuf and recvbuf overlap without being "
                            "equal",
                            g->name);
      }
      return PAR_OK;
    case PAR__ALLTOALL:
      PAR_FORWARD_IF_ERROR(check_common(g, op, n, &bytes));
      PAR_FORWARD_IF_ERROR(check_buf(g, op, op->sendbuf, "sendbuf"));
      PAR_FORWARD_IF_ERROR(check_buf(g, op, op->recvbuf, "recvbuf"));
      PAR_RETURN_ERROR_IF(overlaps(op->sendbuf, bytes * n, op->recvbuf, bytes * n),
                          PAR_ERR_INVALID,
                          "alltoall on group '%s': sendbuf and recvbuf overlap (alltoall is "
                          "never in place)",
                          g->name);
      return PAR_OK;
    case PAR__BARRIER:
      return PAR_OK;
    case PAR__SEND:
    case PAR__RECV:
      PAR_FORWARD_IF_ERROR(check_common(g, op, 1, &bytes));
      PAR_FORWARD_IF_ERROR(check_index(g, op, op->root, "peer"));
      PAR_FORWARD_IF_ERROR(
          check_buf(g, op, op->kind == PAR__SEND ? op->sendbuf : op->recvbuf, "buf"));
      return PAR_OK;
    default:
      return par__error(PAR_ERR_INTERNAL, "unknown op kind %d", (int)op->kind);
  }
}

par_status par__issue(par_group *g, par__op *op, par__then_fn then, void *ctx,
                      void (*then_free)(void *), par_work **work) {
  PAR_RETURN_ERROR_IF(!g, PAR_ERR_NULL, "%s: group is NULL", par__op_kind_name(op->kind));
  if (work) *work = NULL;
  par_status s;
  PAR_FORWARD_IF_ERROR_GOTO(validate(g, op), s, keep);
  s = then ? par__submit_then(g, op, then, ctx, then_free, work) : par__submit(g, op, work);
keep:
  return par__error_keep(g->last_error, &g->mu, s);
}

static par_status issue(par_group *g, par__op *op, int async, par_work **work) {
  if (g && async && !work)
    return par__error_keep(g->last_error, &g->mu,
                           par__error(PAR_ERR_NULL, "%s_async on group '%s': work pointer is NULL",
                                      par__op_kind_name(op->kind), g->name));
  return par__issue(g, op, NULL, NULL, NULL, async ? work : NULL);
}

#define OP(...) (par__op){__VA_ARGS__}

par_status par_allreduce(par_group *g, const void *sb, void *rb, size_t count, par_dtype dt,
                         par_op op) {
  par__op o = OP(.kind = PAR__ALLREDUCE, .sendbuf = sb, .recvbuf = rb, .count = count, .dt = dt,
                 .op = op);
  return issue(g, &o, 0, NULL);
}
par_status par_allreduce_async(par_group *g, const void *sb, void *rb, size_t count,
                               par_dtype dt, par_op op, par_work **work) {
  par__op o = OP(.kind = PAR__ALLREDUCE, .sendbuf = sb, .recvbuf = rb, .count = count, .dt = dt,
                 .op = op);
  return issue(g, &o, 1, work);
}

par_status par_allgather(par_group *g, const void *sb, void *rb, size_t count, par_dtype dt) {
  par__op o = OP(.kind = PAR__ALLGATHER, .sendbuf = sb, .recvbuf = rb, .count = count, .dt = dt);
  return issue(g, &o, 0, NULL);
}
par_status par_allgather_async(par_group *g, const void *sb, void *rb, size_t count,
                               par_dtype dt, par_work **work) {
  par__op o = OP(.kind = PAR__ALLGATHER, .sendbuf = sb, .recvbuf = rb, .count = count, .dt = dt);
  return issue(g, &o, 1, work);
}

par_status par_reduce_scatter(par_group *g, const void *sb, void *rb, size_t count,
                              par_dtype dt, par_op op) {
  par__op o = OP(.kind = PAR__REDUCE_SCATTER, .sendbuf = sb, .recvbuf = rb, .count = count,
                 .dt = dt, .op = op);
  return issue(g, &o, 0, NULL);
}
par_status par_reduce_scatter_async(par_group *g, const void *sb, void *rb, size_t count,
                                    par_dtype dt, par_op op, par_work **work) {
  par__op o = OP(.kind = PAR__REDUCE_SCATTER, .sendbuf = sb, .recvbuf = rb, .count = count,
                 .dt = dt, .op = op);
  return issue(g, &o, 1, work);
}

par_status par_broadcast(par_group *g, void *buf, size_t count, par_dtype dt, int root) {
  par__op o = OP(.kind = PAR__BROADCAST, .sendbuf = buf, .recvbuf = buf, .count = count, .dt = dt,
                 .root = root);
  return issue(g, &o, 0, NULL);
}
par_status par_broadcast_async(par_group *g, void *buf, size_t count, par_dtype dt, int root,
                               par_work **work) {
  par__op o = OP(.kind = PAR__BROADCAST, .sendbuf = buf, .recvbuf = buf, .count = count, .dt = dt,
                 .root = root);
  return issue(g, &o, 1, work);
}

par_status par_reduce(par_group *g, const void *sb, void *rb, size_t count, par_dtype dt,
                      par_op op, int root) {
  par__op o = OP(.kind = PAR__REDUCE, .sendbuf = sb, .recvbuf = rb, .count = count, .dt = dt,
                 .op = op, .root = root);
  return issue(g, &o, 0, NULL);
}
par_status par_reduce_async(par_group *g, const void *sb, void *rb, size_t count, par_dtype dt,
                            par_op op, int root, par_work **work) {
  par__op o = OP(.kind = PAR__REDUCE, .sendbuf = sb, .recvbuf = rb, .count = count, .dt = dt,
                 .op = op, .root = root);
  return issue(g, &o, 1, work);
}

par_status par_alltoall(par_group *g, const void *sb, void *rb, size_t count, par_dtype dt) {
  par__op o = OP(.kind = PAR__ALLTOALL, .sendbuf = sb, .recvbuf = rb, .count = count, .dt = dt);
  return issue(g, &o, 0, NULL);
}
par_status par_alltoall_async(par_group *g, const void *sb, void *rb, size_t count,
                              par_dtype dt, par_work **work) {
  par__op o = OP(.kind = PAR__ALLTOALL, .sendbuf = sb, .recvbuf = rb, .count = count, .dt = dt);
  return issue(g, &o, 1, work);
}

par_status par_barrier(par_group *g) {
  par__op o = OP(.kind = PAR__BARRIER, .dt = PAR_U8);
  return issue(g, &o, 0, NULL);
}
par_status par_barrier_async(par_group *g, par_work **work) {
  par__op o = OP(.kind = PAR__BARRIER, .dt = PAR_U8);
  return issue(g, &o, 1, work);
}

par_status par_send(par_group *g, const void *buf, size_t count, par_dtype dt, int peer) {
  par__op o = OP(.kind = PAR__SEND, .sendbuf = buf, .count = count, .dt = dt, .root = peer);
  return issue(g, &o, 0, NULL);
}
par_status par_send_async(par_group *g, const void *buf, size_t count, par_dtype dt, int peer,
                          par_work **work) {
  par__op o = OP(.kind = PAR__SEND, .sendbuf = buf, .count = count, .dt = dt, .root = peer);
  return issue(g, &o, 1, work);
}
par_status par_recv(par_group *g, void *buf, size_t count, par_dtype dt, int peer) {
  par__op o = OP(.kind = PAR__RECV, .recvbuf = buf, .count = count, .dt = dt, .root = peer);
  return issue(g, &o, 0, NULL);
}
par_status par_recv_async(par_group *g, void *buf, size_t count, par_dtype dt, int peer,
                          par_work **work) {
  par__op o = OP(.kind = PAR__RECV, .recvbuf = buf, .count = count, .dt = dt, .root = peer);
  return issue(g, &o, 1, work);
}
