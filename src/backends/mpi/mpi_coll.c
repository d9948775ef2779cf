/*
 * mpi_coll.c -- collectives over MPI's nonblocking collectives.
 *
 * Reductions keep par's promise of one fixed order (contributions combined in index order
 * 0, 1, ..., n-1), which MPI does not make: where the order cannot change the bits (integer
 * types with sum, prod, min or max, which wrap or compare exactly) MPI's own reduction runs
 * (MPI_Iallreduce, MPI_Ireduce, MPI_Ireduce_scatter_block); everything else (f32, f64, f16,
 * bf16, and avg of any type, which MPI lacks) is reduced by par's kernels after MPI moved the
 * contributions: small inputs are all-gathered (or gathered to the root) and reduced whole;
 * large ones are split in n slices, each member receives its slice from everyone
 * (MPI_Ialltoallv), reduces it, and the slices are all-gathered (or gathered) back. That is
 * bandwidth-optimal like a ring, and gives the same bits as the shm backend on every member.
 *
 * Every op runs in steps of at most STEP_BYTES per buffer (MPI counts are ints, and staging
 * memory stays bounded), and moves data through the group's staging memory: when an op
 * fails, MPI may still touch it, never the caller's buffers.
 */
#include <string.h>

#include "backends/mpi/mpi_backend.h"

#define STEP_BYTES ((size_t)16 << 20)
#define SMALL_GATHER ((size_t)64 << 10) /* ordered reductions up to this size gather whole */

typedef struct coll {
  par_group *g;
  mpi_state *st;
  const par__op *op;
  mpi_waitctx wc;
  size_t es;
  int n, me;
} coll;

/* Posts one nonblocking MPI call; its failure names the op. */
#define POST(c, call)                                                                              \
  do {                                                                                             \
    par__mpi_lock();                                                                               \
    int post_rc_ = (call);                                                                         \
    par__mpi_unlock();                                                                             \
    if (post_rc_ != MPI_SUCCESS)                                                                   \
      return par__mpi_error(PAR_ERR_SYSTEM, post_rc_, "%s on group '%s' (op #%llu)", (c)->wc.what, \
                            (c)->g->name, (unsigned long long)(c)->op->seq);                       \
  } while (0)

/* MPI's own type and op when they give par's bits whatever the order; 0 otherwise. */
static int native(const par__op *op, MPI_Datatype *t, MPI_Op *o) {
  switch (op->dt) {
    case PAR_I32:
      *t = MPI_INT32_T;
      break;
    case PAR_I64:
      *t = MPI_INT64_T;
      break;
    default:
      return 0;
  }
  switch (op->op) {
    case PAR_SUM:
      *o = MPI_SUM;
      break;
    case PAR_PROD:
      *o = MPI_PROD;
      break;
    case PAR_MIN:
      *o = MPI_MIN;
      break;
    case PAR_MAX:
      *o = MPI_MAX;
      break;
    default:
      return 0;
  }
  return 1;
}

/* Elements per step so that `mult` of them per member fit STEP_BYTES (at least one). */
static size_t step_elems(const coll *c, size_t mult) {
  size_t m = STEP_BYTES / (c->es * mult);
  return m ? m : 1;
}

static size_t align64(size_t x) { return (x + 63) & ~(size_t)63; }

/* Staging laid out as 4 int arrays of n (counts and displacements) and then data. */
static char *stage_with_counts(coll *c, size_t data, int **counts) {
  size_t head = align64(sizeof(int) * 4 * (size_t)c->n);
  char *p = par__mpi_stage(c->st, head + data);
  if (!p) return NULL;
  *counts = (int *)(void *)p;
  return p + head;
}

/* ---------------------------------------------------------------------------------------- */
/* Member agreement: before any data moves, members exchange their ops' descriptions (op   */
/* numbers too under PAR_CHECK=1) and compare them (coll/agree.c). Every member receives   */
/* all of them, so every member reports a disagreement, and all are still in step after it. */
/* ---------------------------------------------------------------------------------------- */

static par_status agree(coll *c) {
  int with_seq = par__env_get()->check;
  size_t n = (size_t)c->n;
  par__desc *all = (par__desc *)(void *)par__mpi_stage(c->st, sizeof(par__desc) * (n + 1));
  if (!all) return PAR_ERR_NOMEM;
  par__desc *mine = all + n;
  par__desc_of(c->op, mine);
  MPI_Request req;
  POST(c, MPI_Iallgather(mine, (int)sizeof *mine, MPI_BYTE, all, (int)sizeof *mine, MPI_BYTE,
                         c->st->comm, &req));
  PAR_FORWARD_IF_ERROR(par__mpi_wait(&c->wc, &req, MPI_STATUS_IGNORE));
  return par__desc_check(c->g, mine, all, with_seq);
}

/* ---------------------------------------------------------------------------------------- */
/* Reductions                                                                               */
/* ---------------------------------------------------------------------------------------- */

/* One step of allreduce (root < 0) or reduce with MPI's reduction: m elements of in, into out
 * (on the root only, for reduce). */
static par_status native_step(coll *c, const char *in, size_t m, char *out, int root,
                              MPI_Datatype t, MPI_Op o) {
  size_t bytes = m * c->es;
  char *s = par__mpi_stage(c->st, bytes);
  if (!s) return PAR_ERR_NOMEM;
  memcpy(s, in, bytes);
  MPI_Request req;
  if (root < 0)
    POST(c, MPI_Iallreduce(MPI_IN_PLACE, s, (int)m, t, o, c->st->comm, &req));
  else if (root == c->me)
    POST(c, MPI_Ireduce(MPI_IN_PLACE, s, (int)m, t, o, root, c->st->comm, &req));
  else
    POST(c, MPI_Ireduce(s, NULL, (int)m, t, o, root, c->st->comm, &req));
  PAR_FORWARD_IF_ERROR(par__mpi_wait(&c->wc, &req, MPI_STATUS_IGNORE));
  if (root < 0 || root == c->me) memcpy(out, s, bytes);
  return PAR_OK;
}

/* Small: everyone's contribution to every reducer, reduced whole in index order. */
static par_status gathered_step(coll *c, const char *in, size_t m, char *out, int root) {
  const par__op *op = c->op;
  size_t bytes = m * c->es;
  char *s = par__mpi_stage(c->st, bytes * (size_t)c->n);
  if (!s) return PAR_ERR_NOMEM;
  char *mine = s + (size_t)c->me * bytes;
  memcpy(mine, in, bytes);
  MPI_Request req;
  if (root < 0)
    POST(c, MPI_Iallgather(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, s, (int)bytes, MPI_BYTE, c->st->comm,
                           &req));
  else if (root == c->me)
    POST(c, MPI_Igather(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, s, (int)bytes, MPI_BYTE, root,
                        c->st->comm, &req));
  else
    POST(c, MPI_Igather(mine, (int)bytes, MPI_BYTE, NULL, 0, MPI_DATATYPE_NULL, root, c->st->comm,
                        &req));
  PAR_FORWARD_IF_ERROR(par__mpi_wait(&c->wc, &req, MPI_STATUS_IGNORE));
  if (root >= 0 && root != c->me) return PAR_OK;
  for (int j = 0; j < c->n; j++) c->st->srcs[j] = s + (size_t)j * bytes;
  par__reduce(out, c->st->srcs, c->n, m, op->dt, op->op, c->n);
  return PAR_OK;
}

/* Large: member j reduces slice j of everyone's input, then the slices travel back. */
static par_status sliced_step(coll *c, const char *in, size_t m, char *out, int root) {
  const par__op *op = c->op;
  size_t es = c->es, bytes = m * es;
  int n = c->n, me = c->me, *cnt;
  size_t lo_me = m * (size_t)me / (size_t)n, len_me = m * (size_t)(me + 1) / (size_t)n - lo_me;
  char *a = stage_with_counts(c, align64(bytes) + (size_t)n * len_me * es, &cnt);
  if (!a) return PAR_ERR_NOMEM;
  char *r = a + align64(bytes);
  int *scount = cnt, *sdispl = cnt + n, *rcount = cnt + 2 * n, *rdispl = cnt + 3 * n;
  for (int j = 0; j < n; j++) {
    size_t lo = m * (size_t)j / (size_t)n, hi = m * (size_t)(j + 1) / (size_t)n;
    scount[j] = (int)((hi - lo) * es);
    sdispl[j] = (int)(lo * es);
    rcount[j] = (int)(len_me * es);
    rdispl[j] = (int)((size_t)j * len_me * es);
  }
  memcpy(a, in, bytes);
  MPI_Request req;
  POST(c,
       MPI_Ialltoallv(a, scount, sdispl, MPI_BYTE, r, rcount, rdispl, MPI_BYTE, c->st->comm, &req));
  PAR_FORWARD_IF_ERROR(par__mpi_wait(&c->wc, &req, MPI_STATUS_IGNORE));

  /* a's own slice is free again: the reduced slice goes there, in its place in the result. */
  for (int j = 0; j < n; j++) c->st->srcs[j] = r + (size_t)j * len_me * es;
  par__reduce(a + lo_me * es, c->st->srcs, n, len_me, op->dt, op->op, n);
  if (root < 0)
    POST(c, MPI_Iallgatherv(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, a, scount, sdispl, MPI_BYTE,
                            c->st->comm, &req));
  else if (root == me)
    POST(c, MPI_Igatherv(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, a, scount, sdispl, MPI_BYTE, root,
                         c->st->comm, &req));
  else
    POST(c, MPI_Igatherv(a + lo_me * es, scount[me], MPI_BYTE, NULL, NULL, NULL, MPI_DATATYPE_NULL,
                         root, c->st->comm, &req));
  PAR_FORWARD_IF_ERROR(par__mpi_wait(&c->wc, &req, MPI_STATUS_IGNORE));
  if (root < 0 || root == me) memcpy(out, a, bytes);
  return PAR_OK;
}

/* allreduce (root < 0) and reduce. */
static par_status reduce_any(coll *c, int root) {
  const par__op *op = c->op;
  const char *in = op->sendbuf;
  char *out = op->recvbuf;
  MPI_Datatype t;
  MPI_Op o;
  int nat = native(op, &t, &o);
  size_t per = step_elems(c, 1);
  for (size_t base = 0, m; (m = par__span(op->count, base, per)) > 0; base += m) {
    const char *i = in + base * c->es;
    char *d = out ? out + base * c->es : NULL;
    if (nat)
      PAR_FORWARD_IF_ERROR(native_step(c, i, m, d, root, t, o));
    else if (m * c->es * (size_t)c->n <= SMALL_GATHER || (size_t)c->n > m)
      PAR_FORWARD_IF_ERROR(gathered_step(c, i, m, d, root));
    else
      PAR_FORWARD_IF_ERROR(sliced_step(c, i, m, d, root));
  }
  return PAR_OK;
}

/*
 * reduce_scatter (reduce) and alltoall: member j gets the j-th block of every member's input,
 * a step at a time through staging (the n blocks' elements of the step, block j at j*m, and
 * room for as many received) -- then reduces them in index order, or copies them out.
 */
static par_status blocks(coll *c, int reduce) {
  const par__op *op = c->op;
  size_t es = c->es, n = (size_t)c->n, per = step_elems(c, n);
  MPI_Datatype t;
  MPI_Op o;
  int nat = reduce && native(op, &t, &o);
  char *out = op->recvbuf;
  for (size_t base = 0, m; (m = par__span(op->count, base, per)) > 0; base += m) {
    size_t bytes = m * es;
    char *s = par__mpi_stage(c->st, 2 * n * bytes);
    if (!s) return PAR_ERR_NOMEM;
    char *rx = s + n * bytes;
    for (size_t j = 0; j < n; j++)
      memcpy(s + j * bytes, (const char *)op->sendbuf + (j * op->count + base) * es, bytes);
    MPI_Request req;
    if (nat)
      POST(c, MPI_Ireduce_scatter_block(s, rx, (int)m, t, o, c->st->comm, &req));
    else
      POST(c, MPI_Ialltoall(s, (int)bytes, MPI_BYTE, rx, (int)bytes, MPI_BYTE, c->st->comm, &req));
    PAR_FORWARD_IF_ERROR(par__mpi_wait(&c->wc, &req, MPI_STATUS_IGNORE));
    if (!reduce) {
      for (size_t j = 0; j < n; j++) memcpy(out + (j * op->count + base) * es, rx + j * bytes, bytes);
    } else if (nat) {
      memcpy(out + base * es, rx, bytes);
    } else {
      for (size_t j = 0; j < n; j++) c->st->srcs[j] = rx + j * bytes;
      par__reduce(out + base * es, c->st->srcs, c->n, m, op->dt, op->op, c->n);
    }
  }
  return PAR_OK;
}

/* ---------------------------------------------------------------------------------------- */
/* Data movement                                                                            */
/* ---------------------------------------------------------------------------------------- */

static par_status allgather(coll *c) {
  const par__op *op = c->op;
  size_t es = c->es, n = (size_t)c->n, per = step_elems(c, n);
  for (size_t base = 0, m; (m = par__span(op->count, base, per)) > 0; base += m) {
    size_t bytes = m * es;
    char *s = par__mpi_stage(c->st, n * bytes);
    if (!s) return PAR_ERR_NOMEM;
    memcpy(s + (size_t)c->me * bytes, (const char *)op->sendbuf + base * es, bytes);
    MPI_Request req;
    POST(c, MPI_Iallgather(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, s, (int)bytes, MPI_BYTE, c->st->comm,
                           &req));
    PAR_FORWARD_IF_ERROR(par__mpi_wait(&c->wc, &req, MPI_STATUS_IGNORE));
    for (size_t j = 0; j < n; j++)
      memcpy((char *)op->recvbuf + (j * op->count + base) * es, s + j * bytes, bytes);
  }
  return PAR_OK;
}

static par_status broadcast(coll *c) {
  const par__op *op = c->op;
  size_t es = c->es, per = step_elems(c, 1);
  int am_root = op->root == c->me;
  for (size_t base = 0, m; (m = par__span(op->count, base, per)) > 0; base += m) {
    size_t bytes = m * es;
    char *s = par__mpi_stage(c->st, bytes), *buf = (char *)op->recvbuf + base * es;
    if (!s) return PAR_ERR_NOMEM;
    if (am_root) memcpy(s, buf, bytes);
    MPI_Request req;
    POST(c, MPI_Ibcast(s, (int)bytes, MPI_BYTE, op->root, c->st->comm, &req));
    PAR_FORWARD_IF_ERROR(par__mpi_wait(&c->wc, &req, MPI_STATUS_IGNORE));
    if (!am_root) memcpy(buf, s, bytes);
  }
  return PAR_OK;
}

static coll coll_of(par_group *g, mpi_state *st, const par__op *op) {
  return (coll){g,
                st,
                op,
                {g, st, par__op_kind_name(op->kind), op->seq, op->deadline, op->timeout_s},
                par_dtype_size(op->dt),
                st->n,
                st->me};
}

/* The exchange waits for every member. */
par_status par__mpi_barrier(par_group *g, mpi_state *st, const par__op *op) {
  coll c = coll_of(g, st, op);
  return agree(&c);
}

par_status par__mpi_collective(par_group *g, mpi_state *st, const par__op *op) {
  coll c = coll_of(g, st, op);
  PAR_FORWARD_IF_ERROR(agree(&c));
  switch (op->kind) {
    case PAR__ALLREDUCE:
      return reduce_any(&c, -1);
    case PAR__REDUCE:
      return reduce_any(&c, op->root);
    case PAR__REDUCE_SCATTER:
      return blocks(&c, 1);
    case PAR__ALLGATHER:
      return allgather(&c);
    case PAR__BROADCAST:
      return broadcast(&c);
    case PAR__ALLTOALL:
      return blocks(&c, 0);
    default:
      return par__error(PAR_ERR_INTERNAL, "mpi: op %s is not a collective",
                        par__op_kind_name(op->kind));
  }
}
