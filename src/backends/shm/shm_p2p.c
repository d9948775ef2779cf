/*
 * shm_p2p.c -- send and recv through per-pair rings in the segment. Each ordered pair of
 * members has its own channel (the sender alone writes `sent` and the slots, the receiver
 * alone writes `acked`), so point-to-point traffic never touches the collective epochs. A run
 * of send/recv ops progresses together: each step moves whatever can move, and the thread
 * sleeps only when nothing can.
 */
#include <string.h>

#include "backends/shm/shm.h"

static size_t total_of(const par__op *op) { return op->count * par_dtype_size(op->dt); }

/* The op before it in the batch on the same channel is still pending. */
static int blocked(const par__op *ops, const par__p2p_state *ps, int i) {
  for (int k = 0; k < i; k++)
    if (!ps[k].done && ops[k].kind == ops[i].kind && ops[k].root == ops[i].root) return 1;
  return 0;
}

/* Moves what it can; returns 1 if anything moved, or an error (< 0). */
static int step_send(shm_state *st, const par__op *op, par__p2p_state *p) {
  shm_chan *ch = shm_chan_of(st, st->me, op->root);
  size_t total = total_of(op);
  int moved = 0;
  while (!p->done) {
    uint64_t sent = atomic_load_explicit(&ch->sent, memory_order_relaxed);
    if (sent - atomic_load_explicit(&ch->acked, memory_order_acquire) >= st->hdr->p2p_slots)
      break;
    shm_slot *slot = shm_slot_of(st, ch, sent);
    size_t len = total - p->off < st->hdr->p2p_chunk ? total - p->off : st->hdr->p2p_chunk;
    slot->total = total;
    slot->dt = (uint32_t)op->dt;
    slot->len = (uint32_t)len;
    if (len) par__copy(slot + 1, (const char *)op->sendbuf + p->off, len);
    p->off += len;
    atomic_store(&ch->sent, sent + 1);
    par__shm_ring(st, op->root);
    p->done = p->off == total;
    moved = 1;
  }
  return moved;
}

static int step_recv(shm_state *st, par_group *g, const par__op *op, par__p2p_state *p) {
  shm_chan *ch = shm_chan_of(st, op->root, st->me);
  size_t total = total_of(op);
  int moved = 0;
  while (!p->done) {
    uint64_t acked = atomic_load_explicit(&ch->acked, memory_order_relaxed);
    if (atomic_load_explicit(&ch->sent, memory_order_acquire) == acked) break;
    shm_slot *slot = shm_slot_of(st, ch, acked);
    uint32_t len = slot->len; /* read once: the sender owns the slot's bytes */
    if (slot->total != total || slot->dt != (uint32_t)op->dt || len > total - p->off ||
        len > st->hdr->p2p_chunk)
      return par__error(PAR_ERR_COUNT,
                        "recv on group '%s' (op #%llu): expected %zu bytes of %s from member %d "
                        "(rank %d), but it sent %llu bytes of %s",
                        g->name, (unsigned long long)op->seq, total, par_dtype_name(op->dt),
                        op->root, g->ranks[op->root], (unsigned long long)slot->total,
                        par_dtype_name((par_dtype)slot->dt));
    if (len) par__copy((char *)op->recvbuf + p->off, slot + 1, len);
    p->off += len;
    atomic_store(&ch->acked, acked + 1);
    par__shm_ring(st, op->root);
    p->done = p->off == total;
    moved = 1;
  }
  return moved;
}

typedef struct batch {
  const par__op *ops;
  par__p2p_state *ps;
  int nops;
  _Atomic int *poke;
} batch;

/* Ready when some pending op can move; otherwise names the peer of the first pending one. */
static int pred_batch(shm_state *st, const void *arg) {
  const batch *b = arg;
  int first = -1;
  if (b->poke && atomic_load(b->poke)) return -1;
  for (int i = 0; i < b->nops; i++) {
    if (b->ps[i].done || blocked(b->ops, b->ps, i)) continue;
    const par__op *op = &b->ops[i];
    if (first < 0) first = op->root;
    if (op->kind == PAR__SEND) {
      shm_chan *ch = shm_chan_of(st, st->me, op->root);
      if (atomic_load(&ch->sent) - atomic_load(&ch->acked) < st->hdr->p2p_slots) return -1;
    } else {
      shm_chan *ch = shm_chan_of(st, op->root, st->me);
      if (atomic_load(&ch->sent) != atomic_load(&ch->acked)) return -1;
    }
  }
  return first < 0 ? -1 : first;
}

par_status par__shm_p2p(par_group *g, shm_state *st, par__op *ops, par__p2p_state *ps, int nops,
                        _Atomic int *poke) {
  batch b = {ops, ps, nops, poke};
  for (;;) {
    int pending = 0, moved = 0, finished = 0, first = 0;
    double deadline = 0;
    for (int i = 0; i < nops; i++) {
      if (ps[i].done) continue;
      if (!pending || ops[i].deadline < deadline) deadline = ops[i].deadline;
      if (!pending) first = i;
      pending = 1;
      if (blocked(ops, ps, i)) continue;
      int r = ops[i].kind == PAR__SEND ? step_send(st, &ops[i], &ps[i])
                                       : step_recv(st, g, &ops[i], &ps[i]);
      if (r < 0) return (par_status)r;
      moved |= r;
      finished |= ps[i].done;
    }
    if (!pending || finished) return PAR_OK;
    if (poke && atomic_load(poke)) return PAR_OK;
    if (moved) continue;
    shm_waitctx wc = {g, par__op_kind_name(ops[first].kind), ops[first].seq, deadline, 1};
    PAR_FORWARD_IF_ERROR(par__shm_wait(st, &wc, pred_batch, &b));
  }
}
