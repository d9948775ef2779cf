/*
 * shm_coll.c -- collectives through the group's segment, chunk by chunk so each round's data
 * stays in cache. Reductions combine the members' contributions in index order, so every
 * member gets the same bits on every run. Large all-reduce is reduce-scatter plus all-gather
 * inside each round: every member reduces 1/n of the round's elements and everyone copies the
 * n results out; small ones take one round in which each member reduces everything itself.
 */
#include <string.h>

#include "backends/shm/shm.h"
#include "coll/group.h"

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

/* Copies into an op's output; outputs larger than the caches take the copy made for them. */
static void put(int big, void *dst, const void *src, size_t n) {
  if (big > 1)
    par__copy_big(dst, src, n);
  else if (big)
    par__copy_out(dst, src, n);
  else
    par__copy(dst, src, n);
}

/* How an output of this size is written (put): 0 par__copy, 1 the store loop, 2 the faster of
 * the store loop and non-temporal stores. */
static int big_out(const shm_state *st, size_t bytes) {
  return bytes >= st->paths.stream_min ? 2 : bytes >= st->paths.big_out;
}

/* ---------------------------------------------------------------------------------------- */
/* Member agreement: every op's first round is the same on every path -- begin the round     */
/* (waiting until everyone posted the previous one), publish the op's description beside the */
/* epoch, write the round's data, post, wait for everyone, compare -- so that members that   */
/* issued different ops all stop at the same point, in step, before any of them has read     */
/* another's data or touched another's buffer. The group stays usable after a mismatch.      */
/* ---------------------------------------------------------------------------------------- */

/* Begins the op's first round and publishes this member's description in it. */
static par_status first_round(shm_state *st, const shm_waitctx *wc, const par__op *op, int *s) {
  PAR_FORWARD_IF_ERROR(round_begin(st, wc, 1, s));
  par__desc d;
  par__desc_of(op, &d);
  shm_ctrl *c = &st->ctrl[st->me];
  c->desc[*s] = par__desc_word(&d);
  if (st->check || !par__desc_word_exact(c->desc[*s])) {
    c->fp[*s][0] = d.call;
    c->fp[*s][1] = d.count;
    c->fp[*s][2] = d.seq;
  }
  return PAR_OK;
}

/* Member j's full description of the op in round parity s. */
static void desc_of_member(shm_state *st, int j, int s, par__desc *d) {
  uint64_t w = st->ctrl[j].desc[s];
  if (!st->check && par__desc_unword(w, d)) return;
  d->call = st->ctrl[j].fp[s][0];
  d->count = st->ctrl[j].fp[s][1];
  d->seq = st->ctrl[j].fp[s][2];
}

/* Compares every member's description with this one's, after waiting for the first round's
 * post of all. A mismatch ends the first round here, as every member does. */
static par_status agree(shm_state *st, int s, par_group *g) {
  uint64_t mine = st->ctrl[st->me].desc[s];
  int quick = !st->check && par__desc_word_exact(mine);
  for (int j = 0; j < st->n; j++) {
    if (quick && st->ctrl[j].desc[s] == mine) continue;
    par__desc a, b;
    desc_of_member(st, st->me, s, &a);
    desc_of_member(st, j, s, &b);
    if (par__desc_equal(&a, &b, st->check)) continue;
    round_end(st);
    return par__desc_mismatch(g, &a, j, &b, st->check);
  }
  return PAR_OK;
}

/* Waits for everyone's first post (epoch e) and compares the descriptions. */
static par_status first_wait(shm_state *st, const shm_waitctx *wc, int s, uint64_t e) {
  PAR_FORWARD_IF_ERROR(par__shm_wait_all(st, wc, e));
  return agree(st, s, wc->g);
}

/* ---------------------------------------------------------------------------------------- */
/* Zero copy: members whose buffers come from par_alloc publish where they lie (in their    */
/* ctrl line, with the op's first post); readers then take those contributions in place.   */
/* Every decision below depends only on what all members published, so all take the same    */
/* path. A member whose input is read in place must not return before the readers are done: */
/* such ops end with one more synchronisation (zc_finish).                                  */
/* ---------------------------------------------------------------------------------------- */

enum { ZC_SEND_ID, ZC_SEND_OFF, ZC_RECV_ID, ZC_RECV_OFF, ZC_FLAGS, ZC_SEND_ADDR, ZC_RECV_ADDR };
#define ZC_INPLACE 1u

static void zc_publish(const shm_waitctx *wc, shm_state *st, const par__op *op, int s,
                       size_t sbytes, size_t rbytes) {
  uint64_t *z = st->ctrl[st->me].zc[s];
  uint32_t id;
  uint64_t off;
  memset(z, 0, sizeof st->ctrl[st->me].zc[s]);
  if (par__shm_region_find(wc->g->world, op->sendbuf, sbytes, &id, &off))
    z[ZC_SEND_ID] = id, z[ZC_SEND_OFF] = off;
  if (rbytes && par__shm_region_find(wc->g->world, op->recvbuf, rbytes, &id, &off))
    z[ZC_RECV_ID] = id, z[ZC_RECV_OFF] = off;
  if (op->sendbuf == op->recvbuf) z[ZC_FLAGS] |= ZC_INPLACE;
  z[ZC_SEND_ADDR] = (uint64_t)(uintptr_t)op->sendbuf;
  z[ZC_RECV_ADDR] = (uint64_t)(uintptr_t)op->recvbuf;
}

static par_status zc_map(const shm_waitctx *wc, int j, uint64_t id, uint64_t off, size_t bytes,
                         char **out) {
  char *base;
  size_t size;
  PAR_FORWARD_IF_ERROR(
      par__shm_region_map(wc->g->world, wc->g->ranks[j], (uint32_t)id, &base, &size));
  PAR_RETURN_ERROR_IF(off > size || bytes > size - off, PAR_ERR_PROTOCOL,
                      "%s on group '%s': rank %d published a buffer outside its allocation",
                      wc->what, wc->g->name, wc->g->ranks[j]);
  *out = base + off;
  return PAR_OK;
}

/*
 * Reads what every member published in round parity s (after waiting for all of them) into
 * b and maps their buffers. A peer's buffer may be mapped only if this op reads it: its owner
 * may free it (unlinking its file) as soon as the op returns there, and only ops that read a
 * buffer in place end with the synchronisation that keeps the owner in. `lazy` (reduce
 * rounds, which end with it only when some input is read in place) maps just the inputs of
 * members not in place, and every buffer only when all inputs and outputs are published (the
 * op then takes allreduce_zc, which ends with it).
 */
static par_status zc_resolve(const shm_waitctx *wc, shm_state *st, const par__op *op, int s,
                             size_t sbytes, size_t rbytes, int lazy, shm_bufs *b) {
  b->nsend = b->nrecv = b->usable = 0;
  for (int j = 0; j < st->n; j++) {
    const uint64_t *z = st->ctrl[j].zc[s];
    b->src[j] = b->dst[j] = NULL;
    b->inplace[j] = (z[ZC_FLAGS] & ZC_INPLACE) != 0;
    b->asrc[j] = z[ZC_SEND_ADDR];
    b->adst[j] = z[ZC_RECV_ADDR];
    b->nsend += z[ZC_SEND_ID] != 0;
    b->usable += z[ZC_SEND_ID] && !b->inplace[j];
    b->nrecv += z[ZC_RECV_ID] != 0;
  }
  int every = !lazy || shm_bufs_all(b, st->n);
  for (int j = 0; j < st->n; j++) {
    const uint64_t *z = st->ctrl[j].zc[s];
    if (z[ZC_SEND_ID] && (every || !b->inplace[j])) {
      char *p = NULL;
      if (j != st->me)
        PAR_FORWARD_IF_ERROR(zc_map(wc, j, z[ZC_SEND_ID], z[ZC_SEND_OFF], sbytes, &p));
      b->src[j] = j == st->me ? op->sendbuf : p;
    }
    if (z[ZC_RECV_ID] && every) {
      if (j == st->me)
        b->dst[j] = op->recvbuf;
      else
        PAR_FORWARD_IF_ERROR(zc_map(wc, j, z[ZC_RECV_ID], z[ZC_RECV_OFF], rbytes, &b->dst[j]));
    }
  }
  return PAR_OK;
}

/* Member j's input can be read in place all along: par_alloc'ed, and not overwritten by its
 * own output (in place). */
static int zc_usable(const shm_bufs *b, int j) { return b->src[j] && !b->inplace[j]; }

/* The last synchronisation of an op that read some member's buffer in place. */
static par_status zc_finish(shm_state *st, const shm_waitctx *wc) {
  int s;
  PAR_FORWARD_IF_ERROR(round_begin(st, wc, 0, &s));
  PAR_FORWARD_IF_ERROR(par__shm_wait_all(st, wc, post_next(st)));
  round_end(st);
  return PAR_OK;
}

/* ---------------------------------------------------------------------------------------- */
/* Reductions: allreduce, reduce (to a root), reduce_scatter                                */
/* ---------------------------------------------------------------------------------------- */

/* Reads `len` bytes at `off` of member j's output into this member's output; `big` is how the
 * whole output is written (put). gather_shares calls it for every member's reduced share but
 * this one's: the all-gather half of a single-copy all-reduce. */
typedef par_status (*share_read_fn)(shm_state *st, const shm_waitctx *wc, const shm_bufs *b,
                                    int j, size_t off, void *dst, size_t len, int big);

static par_status gather_shares(shm_state *st, const shm_waitctx *wc, const par__op *op,
                                const shm_bufs *b, share_read_fn read) {
  size_t es = par_dtype_size(op->dt), lo, hi;
  char *out = op->recvbuf;
  int big = big_out(st, op->count * es);
  for (int k = 1; k < st->n; k++) {
    int j = (st->me + k) % st->n;
    share(op->count, es, st->n, j, &lo, &hi);
    if (hi > lo)
      PAR_FORWARD_IF_ERROR(read(st, wc, b, j, lo * es, out + lo * es, (hi - lo) * es, big));
  }
  return PAR_OK;
}

/*
 * All-reduce with every input and output par_alloc'ed (b resolved, all mapped): member i
 * reduces its share of the elements straight from the inputs and writes the result into every
 * member's output, so each input byte is read once and each output byte written once (the
 * memory bound's traffic; reading the shares back out of their owners' outputs took half as
 * much again). Works in place: share i of every buffer is read and written only by member i,
 * which reads a chunk of it from all inputs before it writes that chunk anywhere. The wait
 * for everyone's post at the end is the op's last synchronisation: after it no member touches
 * another's buffers. Only for all-reduces of at least SHM_ZC_MIN bytes, for which every member
 * has opened its zgate (par__shm_collective).
 */
static par_status allreduce_zc(shm_state *st, const shm_waitctx *wc, const par__op *op,
                               const shm_bufs *b) {
  size_t es = par_dtype_size(op->dt), lo, hi;
  int s;
  PAR_FORWARD_IF_ERROR(round_begin(st, wc, 1, &s));
  share(op->count, es, st->n, st->me, &lo, &hi);
  int big = big_out(st, op->count * es);
  /* Outputs that stream to memory (big > 1) are reduced and written out a few hundred bytes
   * at a time (par__reduce_to), once par__copy_big has chosen how to write them: 8 members
   * at 64 MiB on the Zen 5 VM, 23.7-27.7 ms -> 17.3-23.6, 2 members 4.1-4.6 -> 3.8-4.3.
   * Until then, and for smaller outputs, pieces of 4 KiB: reduced straight into this
   * member's own output (unless in place past member 0: the kernel overwrites its output
   * before it reads a later input) or into a cached chunk of the segment's result area, then
   * copied out. There that is faster (2 members, 1 MiB, 26 against 30-35 us): the reduction
   * writes into the output itself, and the copies read a whole piece from the L1d. */
  size_t per = (SHM_ZC_PIECE < st->hdr->chunk ? SHM_ZC_PIECE : st->hdr->chunk) / es;
  int direct = !big && (!b->inplace[st->me] || st->me == 0);
  char *tmp = shm_area(st, st->me, s, 1);
  size_t batch = SHM_GATE_PIECE / es;
  for (size_t b0 = lo; b0 < hi; b0 += batch) {
    size_t b1 = hi - b0 < batch ? hi : b0 + batch;
    /* Into the others' outputs only while they are in the op (their zgates, shm.h). */
    int gone = par__shm_zgates_enter(st, op->seq);
    if (gone >= 0) return par__shm_left_op(st, wc, gone);
    int how = big > 1 ? par__copy_big_choice() : 0;
    if (how) {
      for (int j = 0; j < st->n; j++) {
        st->srcs[j] = b->src[j] + b0 * es;
        st->dsts[j] = b->dst[(st->me + j) % st->n] + b0 * es;
      }
      par__reduce_to(st->dsts, st->n, st->srcs, st->n, b1 - b0, op->dt, op->op, st->n,
                     how == 2);
    } else {
      for (size_t c = b0; c < b1; c += per) {
        size_t m = b1 - c < per ? b1 - c : per;
        char *acc = direct ? b->dst[st->me] + c * es : tmp;
        for (int j = 0; j < st->n; j++) st->srcs[j] = b->src[j] + c * es;
        par__reduce(acc, st->srcs, st->n, m, op->dt, op->op, st->n);
        for (int k = direct; k < st->n; k++) {
          char *to = b->dst[(st->me + k) % st->n] + c * es;
          if (big > 1)
            par__copy_big_unfenced(to, acc, m * es);
          else
            put(big, to, acc, m * es);
        }
      }
    }
    par__copy_fence(); /* the batch's non-temporal stores, once, before the gates and posts */
    par__shm_zgates_leave(st);
  }
  PAR_FORWARD_IF_ERROR(par__shm_wait_all(st, wc, post_next(st)));
  /* Everyone posted, but one may have given up on this member meanwhile (the zgate, shm.h). */
  for (int j = 0; j < st->n; j++)
    if (j != st->me && par__shm_zgate_failed(st, j, op->seq)) return par__shm_left_op(st, wc, j);
  round_end(st);
  return PAR_OK;
}

/* ---------------------------------------------------------------------------------------- */
/* Single copy: when every member can read every other's memory (shm.c probes it when the    */
/* group is created, and turns it on only when every member could: cma_agree), large ops     */
/* read peers' buffers where they lie -- mapped when par_alloc'ed, with process_vm_readv     */
/* otherwise -- instead of copying them through the segment first. The first round publishes */
/* the buffers. Invariant: every op ends with a synchronisation (zc_finish) after which no   */
/* member reads, or writes into, another's buffers; so a member may return, and reuse or     */
/* free its buffers, once that synchronisation is done.                                     */
/* ---------------------------------------------------------------------------------------- */

/* Copies len bytes at byte offset off of member j's input (out == 0) or output (out == 1). */
static par_status peer_read(shm_state *st, const shm_waitctx *wc, const shm_bufs *b, int j,
                            int out, size_t off, void *dst, size_t len) {
  const char *mapped = b->src[j];
  if (out) mapped = b->dst[j] ? b->dst[j] : b->inplace[j] ? b->src[j] : NULL;
  if (mapped) {
    par__copy(dst, mapped + off, len);
    return PAR_OK;
  }
  return par__shm_cma_read(st, wc, j, dst, (out ? b->adst[j] : b->asrc[j]) + off, len);
}

static par_status peer_out_read(shm_state *st, const shm_waitctx *wc, const shm_bufs *b, int j,
                                size_t off, void *dst, size_t len, int big) {
  (void)big; /* the kernel writes it */
  return peer_read(st, wc, b, j, 1, off, dst, len);
}

/* The first round: everyone publishes its buffers and learns everyone else's (into b). A
 * local copy that needs nobody else (len > 0) is done once the members agree. */
static par_status sc_publish(shm_state *st, const shm_waitctx *wc, const par__op *op,
                             size_t sbytes, size_t rbytes, shm_bufs *b, void *dst,
                             const void *src, size_t len) {
  int s;
  PAR_FORWARD_IF_ERROR(first_round(st, wc, op, &s));
  zc_publish(wc, st, op, s, sbytes, rbytes);
  PAR_FORWARD_IF_ERROR(first_wait(st, wc, s, post_next(st)));
  if (len) par__copy(dst, src, len); /* only once the members agree: the output is theirs */
  par_status r = zc_resolve(wc, st, op, s, sbytes, rbytes, 0, b);
  round_end(st);
  if (r < 0) par__shm_abort(st); /* the others are about to use this member's buffers */
  return r;
}

/*
 * All-reduce as reduce-scatter plus all-gather on the members' own buffers: member i reduces
 * its share of the elements, reading the others' inputs a slice at a time into its scratch
 * area, and writes it into its own output; after one synchronisation everyone copies the other
 * shares from their owners' outputs. In place works too: member i writes only its own share,
 * which the others read from its output only after the synchronisation.
 */
static par_status allreduce_sc(shm_state *st, const shm_waitctx *wc, const par__op *op,
                               shm_bufs *b) {
  size_t es = par_dtype_size(op->dt), bytes = op->count * es, lo, hi;
  PAR_FORWARD_IF_ERROR(sc_publish(st, wc, op, bytes, bytes, b, NULL, NULL, 0));
  if (bytes >= SHM_ZC_MIN && shm_bufs_all(b, st->n)) return allreduce_zc(st, wc, op, b);
  const char *in = op->sendbuf;
  char *out = op->recvbuf;
  int s, inplace = op->sendbuf == op->recvbuf;
  PAR_FORWARD_IF_ERROR(round_begin(st, wc, 1, &s));
  /* Scratch: both areas of this member's set s (nobody reads them in this op), one slot per
   * member, in whole 64-byte units. */
  size_t unit = es >= 64 ? 1 : 64 / es;
  size_t per = 2 * st->hdr->chunk / es / (size_t)st->n / unit * unit;
  char *tmp = shm_area(st, st->me, s, 0);
  share(op->count, es, st->n, st->me, &lo, &hi);
  for (size_t c = lo; c < hi; c += per) {
    size_t m = hi - c < per ? hi - c : per;
    for (int j = 0; j < st->n; j++) {
      char *slot = tmp + (size_t)j * per * es;
      if (j != st->me) {
        PAR_FORWARD_IF_ERROR(peer_read(st, wc, b, j, 0, c * es, slot, m * es));
        st->srcs[j] = slot;
      } else if (inplace && j != 0) {
        par__copy(slot, in + c * es, m * es); /* only src[0] may alias the output */
        st->srcs[j] = slot;
      } else {
        st->srcs[j] = in + c * es;
      }
    }
    par__reduce(out + c * es, st->srcs, st->n, m, op->dt, op->op, st->n);
  }
  PAR_FORWARD_IF_ERROR(par__shm_wait_all(st, wc, post_next(st)));
  round_end(st);
  PAR_FORWARD_IF_ERROR(gather_shares(st, wc, op, b, peer_out_read));
  return zc_finish(st, wc);
}

/* All-gather: everyone copies each member's input straight into its block of the output. */
static par_status allgather_sc(shm_state *st, const shm_waitctx *wc, const par__op *op,
                               shm_bufs *b) {
  size_t bytes = op->count * par_dtype_size(op->dt);
  const char *in = op->sendbuf;
  char *out = op->recvbuf;
  char *mine = out + (size_t)st->me * bytes;
  PAR_FORWARD_IF_ERROR(sc_publish(st, wc, op, bytes, 0, b, mine, in, mine != in ? bytes : 0));
  for (int k = 1; k < st->n; k++) {
    int j = (st->me + k) % st->n;
    PAR_FORWARD_IF_ERROR(peer_read(st, wc, b, j, 0, 0, out + (size_t)j * bytes, bytes));
  }
  return zc_finish(st, wc);
}

/*
 * Broadcast: the message is cut into n parts. Each non-root member reads from the root every
 * part but its own, and the root writes part j into member j's buffer meanwhile, so the root
 * copies as much as each reader instead of waiting (on 2 ranks each copies half).
 */
static par_status broadcast_parts(shm_state *st, const shm_waitctx *wc, const par__op *op,
                                  shm_bufs *b) {
  size_t es = par_dtype_size(op->dt), bytes = op->count * es, lo, hi;
  int root = op->root;
  char *buf = op->recvbuf;
  PAR_FORWARD_IF_ERROR(sc_publish(st, wc, op, bytes, 0, b, NULL, NULL, 0));
  for (int k = 1; k < st->n; k++) {
    /* The root writes part j into member j; the others read from the root every part but
     * their own, the root's included. */
    int j = (st->me + k) % st->n;
    share(op->count, es, st->n, j, &lo, &hi);
    if (hi == lo) continue;
    if (root == st->me) /* (by the kernel, whether par_alloc'ed or not) */
      PAR_FORWARD_IF_ERROR(par__shm_gate_write(st, wc, j, op->seq, b->asrc[j] + lo * es,
                                               buf + lo * es, (hi - lo) * es));
    else
      PAR_FORWARD_IF_ERROR(peer_read(st, wc, b, root, 0, lo * es, buf + lo * es, (hi - lo) * es));
  }
  return zc_finish(st, wc);
}

/*
 * The root writes into the others' buffers, which is safe only while their owners are in the
 * op. Invariant (the gate, shm.h): a non-root member opens its gate before its first post of
 * the op publishes its buffer, and closes it before it returns, however it returns; the root
 * writes each piece only while holding the gate open, so no byte lands in a buffer whose
 * owner has left the op.
 */
static par_status broadcast_sc(shm_state *st, const shm_waitctx *wc, const par__op *op,
                               shm_bufs *b) {
  if (op->root == st->me) return broadcast_parts(st, wc, op, b);
  par__shm_gate_open(st, op->seq);
  par_status s = broadcast_parts(st, wc, op, b);
  par__shm_gate_close(st, op->root, op->seq);
  return s;
}

/* Tiny allreduce and reduce: each contribution travels in its member's control line, beside
 * the epoch that publishes it, so a reader fetches one cache line per member. */
static par_status reduce_tiny(shm_state *st, const shm_waitctx *wc, const par__op *op, int all) {
  int s;
  PAR_FORWARD_IF_ERROR(first_round(st, wc, op, &s));
  memcpy(st->ctrl[st->me].tiny[s], op->sendbuf, op->count * par_dtype_size(op->dt));
  PAR_FORWARD_IF_ERROR(first_wait(st, wc, s, post_next(st)));
  if (all || op->root == st->me) {
    for (int j = 0; j < st->n; j++) st->srcs[j] = st->ctrl[j].tiny[s];
    par__reduce(op->recvbuf, st->srcs, st->n, op->count, op->dt, op->op, st->n);
  }
  round_end(st);
  return PAR_OK;
}

/*
 * Opens a round of a chunked reduction over elements [base, base + m): begins it (the op's
 * first round: publishing the description and, with zero copy, the buffers), stages this
 * member's elements into its input area -- all but [keep_lo, keep_hi) of the round, which it
 * reduces itself straight from its input, and none when the others read its input in place
 * -- posts, and waits for everyone (first round: and compares the descriptions, and resolves
 * the published buffers into b). Returns the round's set in *set.
 */
static par_status reduce_open(shm_state *st, const shm_waitctx *wc, const par__op *op,
                              shm_bufs *b, size_t base, size_t m, size_t keep_lo, size_t keep_hi,
                              int *set) {
  size_t es = par_dtype_size(op->dt), bytes = op->count * es;
  int first = base == 0, all = op->kind == PAR__ALLREDUCE, zc = bytes >= SHM_ZC_MIN;
  int s;
  PAR_FORWARD_IF_ERROR(first ? first_round(st, wc, op, &s) : round_begin(st, wc, 1, &s));
  if (first && zc) zc_publish(wc, st, op, s, bytes, all ? bytes : 0);
  int read_in_place = !zc      ? 0
                      : first ? st->ctrl[st->me].zc[s][ZC_SEND_ID] && op->sendbuf != op->recvbuf
                              : zc_usable(b, st->me);
  if (!read_in_place) {
    const char *in = (const char *)op->sendbuf + base * es;
    char *area = shm_area(st, st->me, s, 0);
    par__shm_stage(st, s, area, in, keep_lo * es);
    par__shm_stage(st, s, area + keep_hi * es, in + keep_hi * es, (m - keep_hi) * es);
  }
  uint64_t e = post_next(st);
  *set = s;
  if (!first) return par__shm_wait_all(st, wc, e);
  PAR_FORWARD_IF_ERROR(first_wait(st, wc, s, e));
  par_status r = zc ? zc_resolve(wc, st, op, s, bytes, all ? bytes : 0, 1, b) : PAR_OK;
  if (r < 0) par__shm_abort(st); /* the others may be about to read this member's input */
  return r;
}

/* The members' contributions to a round over elements from `base` in set s: in place where
 * readable, else their input areas. */
static void reduce_sources(shm_state *st, const shm_bufs *b, int s, size_t base, size_t es) {
  for (int j = 0; j < st->n; j++)
    st->srcs[j] = zc_usable(b, j) ? b->src[j] + base * es : shm_area(st, j, s, 0);
}

/* The first round found every input and output par_alloc'ed: allreduce_zc takes over. */
static int reduce_goes_zc(shm_state *st, const par__op *op, const shm_bufs *b) {
  return op->kind == PAR__ALLREDUCE && shm_bufs_all(b, st->n);
}

/*
 * All-reduce and reduce, direct: in each round of a chunk per member everyone publishes its
 * chunk and every reader combines all of them itself -- one synchronisation per round, and a
 * reader's own contribution comes from its input, still in cache. For small ops, and for 2
 * members, where reduce-scatter would only add a synchronisation.
 */
static par_status reduce_direct(shm_state *st, const shm_waitctx *wc, const par__op *op,
                                shm_bufs *b) {
  size_t es = par_dtype_size(op->dt), per = st->hdr->chunk / es;
  int reader = op->kind == PAR__ALLREDUCE || op->root == st->me;
  shm_bufs_clear(b, st->n);
  for (size_t base = 0, m; (m = par__span(op->count, base, per)) > 0; base += m) {
    int s;
    PAR_FORWARD_IF_ERROR(reduce_open(st, wc, op, b, base, m, m, m, &s));
    if (base == 0 && reduce_goes_zc(st, op, b)) {
      round_end(st);
      return allreduce_zc(st, wc, op, b);
    }
    if (reader) {
      reduce_sources(st, b, s, base, es);
      if (op->sendbuf != op->recvbuf) st->srcs[st->me] = (const char *)op->sendbuf + base * es;
      int peer = 1 - st->me; /* timed with 2 members, where one peer's staging is read */
      int timed = st->n == 2 && !zc_usable(b, peer);
      uint64_t t0 = timed ? par__shm_stage_read_start(st, m * es) : 0;
      par__reduce((char *)op->recvbuf + base * es, st->srcs, st->n, m, op->dt, op->op, st->n);
      if (t0) par__shm_stage_read_done(st, peer, s, m * es, t0);
    }
    round_end(st);
  }
  return b->usable ? zc_finish(st, wc) : PAR_OK;
}

/*
 * All-reduce and reduce as reduce-scatter plus all-gather inside each round of a chunk per
 * member: member i reduces its 1/n share of the round (its own contribution straight from
 * its input, so it never stages that share) into its result area, and the readers copy the
 * n results out once each is posted.
 */
static par_status reduce_split(shm_state *st, const shm_waitctx *wc, const par__op *op,
                               shm_bufs *b) {
  size_t es = par_dtype_size(op->dt), per = st->hdr->chunk / es;
  int reader = op->kind == PAR__ALLREDUCE || op->root == st->me;
  int big = big_out(st, op->count * es);
  char *out = op->recvbuf;
  shm_bufs_clear(b, st->n);
  for (size_t base = 0, m; (m = par__span(op->count, base, per)) > 0; base += m) {
    size_t lo, hi;
    int s;
    share(m, es, st->n, st->me, &lo, &hi);
    PAR_FORWARD_IF_ERROR(reduce_open(st, wc, op, b, base, m, lo, hi, &s));
    if (base == 0 && reduce_goes_zc(st, op, b)) {
      round_end(st);
      return allreduce_zc(st, wc, op, b);
    }
    reduce_sources(st, b, s, base + lo, es);
    for (int j = 0; j < st->n; j++)
      if (!zc_usable(b, j)) st->srcs[j] = (const char *)st->srcs[j] + lo * es;
    st->srcs[st->me] = (const char *)op->sendbuf + (base + lo) * es;
    if (hi > lo)
      par__reduce(shm_area(st, st->me, s, 1), st->srcs, st->n, hi - lo, op->dt, op->op, st->n);
    uint64_t done = post_next(st);
    for (int k = 0; reader && k < st->n; k++) {
      int j = (st->me + k) % st->n;
      share(m, es, st->n, j, &lo, &hi);
      if (hi == lo) continue;
      PAR_FORWARD_IF_ERROR(par__shm_wait_one(st, wc, j, done));
      put(big, out + (base + lo) * es, shm_area(st, j, s, 1), (hi - lo) * es);
    }
    round_end(st);
  }
  return b->usable ? zc_finish(st, wc) : PAR_OK;
}

/*
 * Opens a round of an op that gives member j the j-th block of every input (reduce_scatter,
 * alltoall): begins it (the first round: publishing the description), stages elements
 * [base, base + m) of each of this member's blocks but its own (which it takes from its input
 * itself, unless stage_own) into its set's two areas, block j at j*m, and posts. The first round also waits for
 * everyone and compares the descriptions; later rounds leave the waiting to the caller (*e:
 * the epoch to wait for).
 */
static par_status blocks_open(shm_state *st, const shm_waitctx *wc, const par__op *op,
                              size_t base, size_t m, int stage_own, int *set, uint64_t *e) {
  size_t es = par_dtype_size(op->dt);
  const char *in = op->sendbuf;
  int first = base == 0;
  PAR_FORWARD_IF_ERROR(first ? first_round(st, wc, op, set) : round_begin(st, wc, 1, set));
  char *mine = shm_area(st, st->me, *set, 0);
  for (int j = 0; j < st->n; j++)
    if (j != st->me || stage_own)
      par__shm_stage(st, *set, mine + (size_t)j * m * es,
                     in + ((size_t)j * op->count + base) * es, m * es);
  *e = post_next(st);
  if (!first) par__shm_settle(st); /* alltoall copies its own block before any wait */
  return first ? first_wait(st, wc, *set, *e) : PAR_OK;
}

/*
 * reduce_scatter (reduce) and alltoall: member i takes the i-th block of every member's
 * input, round by round -- reduced in index order once everyone has posted, or copied from
 * each member as soon as it has. A round stages up to both areas of a set (2 chunks).
 */
static par_status blocks(shm_state *st, const shm_waitctx *wc, const par__op *op, int reduce) {
  size_t es = par_dtype_size(op->dt), per = 2 * st->hdr->chunk / (es * (size_t)st->n);
  const char *in = op->sendbuf;
  char *out = op->recvbuf;
  size_t me = (size_t)st->me;
  int big = !reduce && big_out(st, op->count * es * (size_t)st->n);
  /* In place, a member's own block is its output, which only src[0] may alias. */
  int alias = reduce && op->recvbuf == (const char *)op->sendbuf + me * op->count * es && me;
  for (size_t base = 0, m; (m = par__span(op->count, base, per)) > 0; base += m) {
    int s;
    uint64_t e;
    const char *own = in + (me * op->count + base) * es;
    PAR_FORWARD_IF_ERROR(blocks_open(st, wc, op, base, m, alias, &s, &e));
    if (reduce) {
      PAR_FORWARD_IF_ERROR(par__shm_wait_all(st, wc, e));
      for (int j = 0; j < st->n; j++) st->srcs[j] = shm_area(st, j, s, 0) + me * m * es;
      if (!alias) st->srcs[me] = own;
      uint64_t t0 = st->n == 2 ? par__shm_stage_read_start(st, m * es) : 0;
      par__reduce(out + base * es, st->srcs, st->n, m, op->dt, op->op, st->n);
      if (t0) par__shm_stage_read_done(st, 1 - st->me, s, m * es, t0);
    }
    for (int k = 0; !reduce && k < st->n; k++) {
      int j = (st->me + k) % st->n;
      const char *from = own;
      if (k) {
        PAR_FORWARD_IF_ERROR(par__shm_wait_one(st, wc, j, e));
        from = shm_area(st, j, s, 0) + me * m * es;
      }
      uint64_t t0 = k ? par__shm_stage_read_start(st, m * es) : 0;
      put(big, out + ((size_t)j * op->count + base) * es, from, m * es);
      if (t0) par__shm_stage_read_done(st, j, s, m * es, t0);
    }
    round_end(st);
  }
  return PAR_OK;
}

/* ---------------------------------------------------------------------------------------- */
/* Data movement: allgather, broadcast, alltoall, barrier                                   */
/* ---------------------------------------------------------------------------------------- */

static par_status allgather(shm_state *st, const shm_waitctx *wc, const par__op *op, shm_bufs *b) {
  size_t es = par_dtype_size(op->dt), per = st->hdr->chunk / es, bytes = op->count * es;
  const char *in = op->sendbuf;
  char *out = op->recvbuf;
  int zc = bytes >= SHM_ZC_MIN, big = big_out(st, bytes * (size_t)st->n), whole = 0;
  shm_bufs_clear(b, st->n);
  for (size_t base = 0, m; (m = par__span(op->count, base, per)) > 0; base += m) {
    int s, first = base == 0;
    PAR_FORWARD_IF_ERROR(first ? first_round(st, wc, op, &s) : round_begin(st, wc, 1, &s));
    if (first && zc) zc_publish(wc, st, op, s, bytes, 0);
    /* In place, the input is the member's own block of the output, which nobody else writes:
     * it can always be read in place. */
    int mine_zc = !zc    ? 0
                  : first ? st->ctrl[st->me].zc[s][ZC_SEND_ID] != 0
                          : b->src[st->me] != NULL;
    if (!mine_zc) par__shm_stage(st, s, shm_area(st, st->me, s, 0), in + base * es, m * es);
    uint64_t e = post_next(st);
    if (first) PAR_FORWARD_IF_ERROR(first_wait(st, wc, s, e));
    par__shm_settle(st); /* the own block's copy comes before any wait */
    if (first && zc) {
      par_status r = zc_resolve(wc, st, op, s, bytes, 0, 0, b);
      if (r < 0) par__shm_abort(st); /* the others may be about to read this member's input */
      PAR_FORWARD_IF_ERROR(r);
      /* Every source in place: everything in this one round, unless the output is large:
       * then the readers keep to the rounds, so that a block one of them brings into the
       * cache is still there for the others. */
      whole = b->nsend == st->n && !big;
      if (whole) m = op->count - base;
    }
    for (int k = 0; k < st->n; k++) {
      int j = (st->me + k) % st->n;
      char *dst = out + ((size_t)j * op->count + base) * es;
      if (j == st->me) {
        if (dst != in + base * es) put(big, dst, in + base * es, m * es);
        continue;
      }
      PAR_FORWARD_IF_ERROR(par__shm_wait_one(st, wc, j, e));
      int staged = !(zc && b->src[j]);
      uint64_t t0 = staged ? par__shm_stage_read_start(st, m * es) : 0;
      put(big, dst, staged ? shm_area(st, j, s, 0) : b->src[j] + base * es, m * es);
      if (t0) par__shm_stage_read_done(st, j, s, m * es, t0);
    }
    round_end(st);
    if (whole) break;
  }
  return b->nsend ? zc_finish(st, wc) : PAR_OK;
}

static par_status broadcast(shm_state *st, const shm_waitctx *wc, const par__op *op, shm_bufs *b) {
  size_t es = par_dtype_size(op->dt), per = st->hdr->chunk / es, bytes = op->count * es;
  char *buf = op->recvbuf;
  int root = op->root, am_root = root == st->me, root_zc = 0, big = big_out(st, bytes);
  /* With the root's buffer in place, small messages are copied whole; large ones in rounds,
   * so that the readers share what one of them brings into the cache. */
  for (size_t base = 0, m; (m = par__span(op->count, base, per)) > 0; base += m) {
    int s, first = base == 0;
    PAR_FORWARD_IF_ERROR(first ? first_round(st, wc, op, &s) : round_begin(st, wc, am_root, &s));
    if (first && am_root && bytes >= SHM_ZC_MIN) {
      zc_publish(wc, st, op, s, bytes, 0);
      root_zc = st->ctrl[root].zc[s][ZC_SEND_ID] != 0;
    }
    if (am_root && !root_zc)
      par__shm_stage(st, s, shm_area(st, root, s, 0), buf + base * es, m * es);
    uint64_t e = post_next(st);
    if (first) PAR_FORWARD_IF_ERROR(first_wait(st, wc, s, e));
    if (!am_root) {
      PAR_FORWARD_IF_ERROR(par__shm_wait_one(st, wc, root, e));
      if (first && bytes >= SHM_ZC_MIN && st->ctrl[root].zc[s][ZC_SEND_ID]) {
        char *p = NULL;
        PAR_FORWARD_IF_ERROR(zc_map(wc, root, st->ctrl[root].zc[s][ZC_SEND_ID],
                                    st->ctrl[root].zc[s][ZC_SEND_OFF], bytes, &p));
        b->src[root] = p;
        root_zc = 1;
      }
      if (root_zc && !big)
        par__copy(buf, b->src[root], bytes);
      else {
        uint64_t t0 = root_zc ? 0 : par__shm_stage_read_start(st, m * es);
        put(big, buf + base * es, root_zc ? b->src[root] + base * es : shm_area(st, root, s, 0),
            m * es);
        if (t0) par__shm_stage_read_done(st, root, s, m * es, t0);
      }
    }
    round_end(st);
    if (root_zc && !big) break;
  }
  return root_zc ? zc_finish(st, wc) : PAR_OK;
}

par_status par__shm_barrier(par_group *g, shm_state *st, const par__op *op) {
  shm_waitctx wc = {g, par__op_kind_name(op->kind), op->seq, op->deadline, 0};
  int s;
  PAR_FORWARD_IF_ERROR(first_round(st, &wc, op, &s));
  PAR_FORWARD_IF_ERROR(first_wait(st, &wc, s, post_next(st)));
  round_end(st);
  return PAR_OK;
}

/* Chooses how this op stages (shm_stage.c): `moved`, the bytes it moves; `piece`, the most a
 * reader takes of one member in a round; `kind`, what the readers do with it (-1: the path
 * does not time its reads). */
static void stage_for(shm_state *st, size_t moved, size_t piece, int kind) {
  par__shm_stage_choose(&st->staging, moved, piece, kind, st->paths.stream_min, -1, st->ctrl,
                        st->n, st->me);
}

par_status par__shm_collective(par_group *g, shm_state *st, const par__op *op) {
  shm_waitctx wc = {g, par__op_kind_name(op->kind), op->seq, op->deadline, 0};
  shm_bufs *b = &st->bufs;
  const shm_paths *p = &st->paths;
  size_t bytes = op->count * par_dtype_size(op->dt), chunk = st->hdr->chunk, n = (size_t)st->n;
  stage_for(st, 0, 0, -1); /* single copy, zero copy and tiny ops stage nothing */
  switch (op->kind) {
    case PAR__ALLREDUCE:
    case PAR__REDUCE: {
      int all = op->kind == PAR__ALLREDUCE;
      if (bytes <= SHM_TINY_MAX) return reduce_tiny(st, &wc, op, all);
      /* An all-reduce that may take zero copy, on any of the paths below, opens this member's
       * output to the others' writes for the op (the zgate, shm.h). */
      int gated = all && bytes >= SHM_ZC_MIN;
      if (gated) par__shm_zgate_open(st, op->seq);
      par_status r;
      if (all && st->cma && bytes >= p->cma_reduce_min && bytes <= p->cma_reduce_max) {
        r = allreduce_sc(st, &wc, op, b);
      } else if (st->n <= 2 || (bytes <= p->small_max && bytes <= chunk)) {
        /* Timed with 2 members, where each reduces its one peer's staging. */
        stage_for(st, bytes, bytes < chunk ? bytes : chunk, st->n == 2 ? SHM_READ_REDUCE : -1);
        r = reduce_direct(st, &wc, op, b);
      } else {
        stage_for(st, bytes, chunk / n, -1);
        r = reduce_split(st, &wc, op, b);
      }
      if (gated) par__shm_zgate_close(st, op->seq, r < 0);
      return r;
    }
    case PAR__REDUCE_SCATTER:
      /* Timed with 2 members, where each reduces its one peer's staging. */
      stage_for(st, bytes * n, bytes < 2 * chunk / n ? bytes : 2 * chunk / n,
                st->n == 2 ? SHM_READ_REDUCE : -1);
      return blocks(st, &wc, op, 1);
    case PAR__ALLGATHER:
      if (st->cma && bytes >= p->cma_move_min && bytes <= p->cma_move_max)
        return allgather_sc(st, &wc, op, b);
      stage_for(st, bytes * n, bytes < chunk ? bytes : chunk, SHM_READ_COPY);
      return allgather(st, &wc, op, b);
    case PAR__BROADCAST:
      if (st->cma && bytes >= p->cma_bcast_min && bytes <= p->cma_bcast_max)
        return broadcast_sc(st, &wc, op, b);
      stage_for(st, bytes, bytes < chunk ? bytes : chunk, SHM_READ_COPY);
      return broadcast(st, &wc, op, b);
    case PAR__ALLTOALL:
      stage_for(st, bytes * n, bytes < 2 * chunk / n ? bytes : 2 * chunk / n, SHM_READ_COPY);
      return blocks(st, &wc, op, 0);
    default:
      return par__error(PAR_ERR_INTERNAL, "shm: op %s is not a collective",
                        par__op_kind_name(op->kind));
  }
}
