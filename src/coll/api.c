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

static int overlaps(uintptr_t x, size_t alen, uintptr_t y, size_t blen) {
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

/* How an op kind uses its arguments: how many count-sized blocks its send and receive
 * buffers hold (one, or one per member), whether it takes a reduction, and what its `root`
 * field names. */
enum { NO_BUF, ONE_BLOCK, EACH_MEMBER };
typedef struct op_shape {
  unsigned char send, recv, reduces;
  const char *index; /* "root", "peer", or NULL */
} op_shape;

static const op_shape shapes[PAR__OP_KIND_COUNT] = {
    [PAR__ALLREDUCE] = {ONE_BLOCK, ONE_BLOCK, 1, NULL},
    [PAR__ALLGATHER] = {ONE_BLOCK, EACH_MEMBER, 0, NULL},
    [PAR__REDUCE_SCATTER] = {EACH_MEMBER, ONE_BLOCK, 1, NULL},
    [PAR__BROADCAST] = {NO_BUF, ONE_BLOCK, 0, "root"},
    [PAR__REDUCE] = {ONE_BLOCK, ONE_BLOCK, 1, "root"}, /* recvbuf: on the root only */
    [PAR__ALLTOALL] = {EACH_MEMBER, EACH_MEMBER, 0, NULL},
    [PAR__BARRIER] = {NO_BUF, NO_BUF, 0, NULL},
    [PAR__SEND] = {ONE_BLOCK, NO_BUF, 0, "peer"},
    [PAR__RECV] = {NO_BUF, ONE_BLOCK, 0, "peer"},
};

/*
 * Send and receive buffers may overlap only in place, where NCCL allows it: the same buffer
 * when both hold one block; the member's own block of the bigger one when one holds a block
 * per member (allgather: sendbuf at recvbuf + index*count; reduce_scatter the other way);
 * never when both hold a block per member (alltoall).
 */
static par_status check_overlap(par_group *g, const par__op *op, const op_shape *sh,
                                size_t bytes) {
  size_t n = (size_t)g->n, mine = bytes * (size_t)g->index;
  size_t slen = sh->send == EACH_MEMBER ? bytes * n : bytes;
  size_t rlen = sh->recv == EACH_MEMBER ? bytes * n : bytes;
  uintptr_t snd = (uintptr_t)op->sendbuf, rcv = (uintptr_t)op->recvbuf;
  const char *hint;
  int in_place;
  if (sh->send == sh->recv && sh->send == ONE_BLOCK)
    in_place = snd == rcv, hint = "sendbuf == recvbuf";
  else if (sh->send == ONE_BLOCK)
    in_place = snd == rcv + mine, hint = "sendbuf at recvbuf + index*count";
  else if (sh->recv == ONE_BLOCK)
    in_place = rcv == snd + mine, hint = "recvbuf at sendbuf + index*count";
  else
    in_place = 0, hint = "never, for this op";
  PAR_RETURN_ERROR_IF(!in_place && overlaps(snd, slen, rcv, rlen), PAR_ERR_INVALID,
                      "%s on group '%s': sendbuf and recvbuf overlap, and not in place (in "
                      "place: %s)",
                      par__op_kind_name(op->kind), g->name, hint);
  return PAR_OK;
}

static par_status validate(par_group *g, const par__op *op) {
  PAR_RETURN_ERROR_IF((unsigned)op->kind >= PAR__OP_KIND_COUNT, PAR_ERR_INTERNAL,
                      "unknown op kind %d", (int)op->kind);
  if (op->kind == PAR__BARRIER) return PAR_OK;
  const op_shape *sh = &shapes[op->kind];
  int each = sh->send == EACH_MEMBER || sh->recv == EACH_MEMBER;
  /* bytes is set by check_common before any use; the 0 is for gcc, which cannot see it. */
  size_t bytes = 0;
  PAR_FORWARD_IF_ERROR(check_common(g, op, each ? (size_t)g->n : 1, &bytes));
  if (sh->reduces) PAR_FORWARD_IF_ERROR(check_reduce_op(g, op));
  if (sh->index) PAR_FORWARD_IF_ERROR(check_index(g, op, op->root, sh->index));
  int two = sh->send && sh->recv, recv = sh->recv;
  if (op->kind == PAR__REDUCE) recv = op->root == g->index;
  if (sh->send) PAR_FORWARD_IF_ERROR(check_buf(g, op, op->sendbuf, two ? "sendbuf" : "buf"));
  if (recv)
    PAR_FORWARD_IF_ERROR(check_buf(g, op, op->recvbuf,
                                   !two                       ? "buf"
                                   : op->kind == PAR__REDUCE ? "recvbuf (on the root)"
                                                             : "recvbuf"));
  return sh->send && recv ? check_overlap(g, op, sh, bytes) : PAR_OK;
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
