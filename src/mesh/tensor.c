/*
 * tensor.c -- split, gather and reduce of DLPack tensors over a group.
 *
 * Split is pure arithmetic on the descriptor: this rank's slice is a view (same data, a byte
 * offset, the caller's shape and strides arrays). Gather and reduce turn a tensor into the
 * flat buffers the collectives take. When a tensor's memory already has the layout the
 * collective needs, it is used in place; otherwise the data goes through a packed temporary,
 * and what comes back is scattered into the caller's strides afterwards. For the async forms
 * that scatter runs as a continuation of the work (par__submit_then), in the thread that
 * completes the op and before the work counts as done, so par_work_wait returns with the
 * result in place: the async gather delivers its output.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "coll/group.h"
#include "core/core.h"

#define MAX_TENSOR_DIMS 32

/* A checked tensor: base address, shape and strides in elements (never NULL), element size. */
typedef struct tdesc {
  char *base; /* data + byte_offset */
  int ndim;
  int64_t shape[MAX_TENSOR_DIMS];
  int64_t strides[MAX_TENSOR_DIMS];
  size_t esize;
  size_t count; /* number of elements */
  DLDataType dl;
} tdesc;

/* Copies the thread's detail into the group's last error and returns s (as api.c does). */
static par_status finish(par_group *g, par_status s) {
  if (s < 0 && g) par__error_copy(g->last_error);
  return s;
}

/* ---------------------------------------------------------------------------------------- */
/* Checking descriptors                                                                     */
/* ---------------------------------------------------------------------------------------- */

par_status par_dtype_from_dlpack(DLDataType dt, par_dtype *out) {
  PAR_RETURN_ERROR_IF(!out, PAR_ERR_NULL, "par_dtype_from_dlpack: out is NULL");
  int ok = 1;
  par_dtype d = PAR_F32;
  if (dt.lanes != 1) ok = 0;
  else if (dt.code == kDLFloat && dt.bits == 16) d = PAR_F16;
  else if (dt.code == kDLFloat && dt.bits == 32) d = PAR_F32;
  else if (dt.code == kDLFloat && dt.bits == 64) d = PAR_F64;
  else if (dt.code == kDLBfloat && dt.bits == 16) d = PAR_BF16;
  else if (dt.code == kDLInt && dt.bits == 8) d = PAR_I8;
  else if (dt.code == kDLInt && dt.bits == 32) d = PAR_I32;
  else if (dt.code == kDLInt && dt.bits == 64) d = PAR_I64;
  else if (dt.code == kDLUInt && dt.bits == 8) d = PAR_U8;
  else ok = 0;
  PAR_RETURN_ERROR_IF(!ok, PAR_ERR_DTYPE,
                      "DLPack dtype (code %u, bits %u, lanes %u) has no par dtype: reductions "
                      "take float 16/32/64, bfloat 16, int 8/32/64 and uint 8 with 1 lane",
                      (unsigned)dt.code, (unsigned)dt.bits, (unsigned)dt.lanes);
  *out = d;
  return PAR_OK;
}

static par_status check_tensor(const DLTensor *t, const char *fn, const char *what,
                               tdesc *out) {
  PAR_RETURN_ERROR_IF(!t, PAR_ERR_NULL, "%s: %s is NULL", fn, what);
  DLDeviceType dev = t->device.device_type;
  PAR_RETURN_ERROR_IF(dev != kDLCPU && dev != kDLCUDAHost && dev != kDLROCMHost,
                      PAR_ERR_UNSUPPORTED,
                      "%s: %s is on DLPack device type %d; only host memory (kDLCPU, "
                      "kDLCUDAHost, kDLROCMHost) is supported",
                      fn, what, (int)dev);
  PAR_RETURN_ERROR_IF(t->ndim < 0 || t->ndim > MAX_TENSOR_DIMS, PAR_ERR_UNSUPPORTED,
                      "%s: %s has %d dims; 0 to %d are supported", fn, what, t->ndim,
                      MAX_TENSOR_DIMS);
  PAR_RETURN_ERROR_IF(t->ndim > 0 && !t->shape, PAR_ERR_NULL, "%s: %s has a NULL shape", fn,
                      what);
  unsigned bits = (unsigned)t->dtype.bits * t->dtype.lanes;
  PAR_RETURN_ERROR_IF(bits == 0 || bits % 8 != 0, PAR_ERR_DTYPE,
                      "%s: %s has elements of %u bits; only whole bytes are supported", fn,
                      what, bits);
  out->ndim = t->ndim;
  out->esize = bits / 8;
  out->dl = t->dtype;

  /* Element counts stay below 2^62 so that byte offsets cannot overflow. */
  const uint64_t limit = (uint64_t)1 << 62;
  uint64_t count = 1;
  for (int i = 0; i < t->ndim; i++) {
    PAR_RETURN_ERROR_IF(t->shape[i] < 0, PAR_ERR_INVALID, "%s: %s has shape[%d] = %lld", fn,
                        what, i, (long long)t->shape[i]);
    out->shape[i] = t->shape[i];
    if (count != 0 && (uint64_t)t->shape[i] > limit / count / out->esize)
      return par__error(PAR_ERR_COUNT, "%s: %s is too large", fn, what);
    count *= (uint64_t)t->shape[i];
  }
  out->count = (size_t)count;

  int64_t compact = 1;
  for (int i = t->ndim - 1; i >= 0; i--) {
    if (t->strides) {
      PAR_RETURN_ERROR_IF(t->strides[i] < 0, PAR_ERR_UNSUPPORTED,
                          "%s: %s has a negative stride (%lld on dim %d); negative strides are "
                          "not supported",
                          fn, what, (long long)t->strides[i], i);
      PAR_RETURN_ERROR_IF(count > 0 && t->strides[i] > (int64_t)(limit / out->esize),
                          PAR_ERR_COUNT, "%s: %s has a stride too large (%lld on dim %d)", fn,
                          what, (long long)t->strides[i], i);
      out->strides[i] = t->strides[i];
    } else {
      out->strides[i] = compact;
    }
    compact *= t->shape[i] > 0 ? t->shape[i] : 1;
  }
  PAR_RETURN_ERROR_IF(!t->data && count > 0, PAR_ERR_NULL, "%s: %s has NULL data", fn, what);
  out->base = (char *)t->data + t->byte_offset;
  return PAR_OK;
}

/* A tensor that is written to must not reach one element through two index tuples. Only the
 * plain case is checked (stride 0 on a dim of more than one element); others are documented
 * as the caller's duty. */
static par_status check_writable(const tdesc *t, const char *fn, const char *what) {
  if (t->count == 0) return PAR_OK;
  for (int i = 0; i < t->ndim; i++)
    PAR_RETURN_ERROR_IF(t->shape[i] > 1 && t->strides[i] == 0, PAR_ERR_INVALID,
                        "%s: %s has stride 0 on dim %d of size %lld, so its elements overlap; "
                        "it cannot be written",
                        fn, what, i, (long long)t->shape[i]);
  return PAR_OK;
}

static par_status normalise_dim(const tdesc *t, int dim, const char *fn, int *out) {
  int d = dim < 0 ? dim + t->ndim : dim;
  PAR_RETURN_ERROR_IF(d < 0 || d >= t->ndim, PAR_ERR_INVALID,
                      "%s: dim %d is out of range for a tensor of %d dims", fn, dim, t->ndim);
  *out = d;
  return PAR_OK;
}

/* Row-major with no gaps: the layout a packed buffer has. Dims of size 1 do not matter. */
static int is_contiguous(const tdesc *t) {
  if (t->count == 0) return 1;
  int64_t expect = 1;
  for (int i = t->ndim - 1; i >= 0; i--) {
    if (t->shape[i] == 1) continue;
    if (t->strides[i] != expect) return 0;
    expect *= t->shape[i];
  }
  return 1;
}

/* The elements fill [base, base + count*esize) exactly, in some order of the dims (a
 * transposed contiguous tensor, say). An element-wise op may then run on that block. */
static int is_dense(const tdesc *t) {
  if (t->count == 0) return 1;
  int order[MAX_TENSOR_DIMS], n = 0;
  for (int i = 0; i < t->ndim; i++)
    if (t->shape[i] > 1) order[n++] = i;
  for (int i = 1; i < n; i++) /* insertion sort by stride: n is small */
    for (int j = i; j > 0 && t->strides[order[j]] < t->strides[order[j - 1]]; j--) {
      int tmp = order[j];
      order[j] = order[j - 1];
      order[j - 1] = tmp;
    }
  int64_t expect = 1;
  for (int i = 0; i < n; i++) {
    if (t->strides[order[i]] != expect) return 0;
    expect *= t->shape[order[i]];
  }
  return 1;
}

/* ---------------------------------------------------------------------------------------- */
/* Strided copies                                                                           */
/* ---------------------------------------------------------------------------------------- */

/* Copies the elements of (shape) between two strided layouts (strides in elements). Dims of
 * size 1 are dropped and neighbours that are contiguous in both layouts merged, so that the
 * common cases become a few long memcpy runs. */
static void copy_strided(char *dst, const int64_t *dst_strides, const char *src,
                         const int64_t *src_strides, const int64_t *shape, int ndim,
                         size_t esize) {
  int64_t sh[MAX_TENSOR_DIMS], ds[MAX_TENSOR_DIMS], ss[MAX_TENSOR_DIMS];
  int n = 0;
  for (int i = 0; i < ndim; i++) {
    if (shape[i] == 0) return;
    if (shape[i] == 1) continue;
    if (n > 0 && ds[n - 1] == dst_strides[i] * shape[i] &&
        ss[n - 1] == src_strides[i] * shape[i]) {
      sh[n - 1] *= shape[i];
      ds[n - 1] = dst_strides[i];
      ss[n - 1] = src_strides[i];
      continue;
    }
    sh[n] = shape[i];
    ds[n] = dst_strides[i];
    ss[n] = src_strides[i];
    n++;
  }
  if (n == 0) {
    memcpy(dst, src, esize);
    return;
  }

  int64_t inner = sh[n - 1];
  size_t dstep = (size_t)ds[n - 1] * esize, sstep = (size_t)ss[n - 1] * esize;
  int runs = ds[n - 1] == 1 && ss[n - 1] == 1;
  int64_t idx[MAX_TENSOR_DIMS] = {0};
  for (;;) {
    size_t doff = 0, soff = 0;
    for (int i = 0; i < n - 1; i++) {
      doff += (size_t)(idx[i] * ds[i]) * esize;
      soff += (size_t)(idx[i] * ss[i]) * esize;
    }
    char *d = dst + doff;
    const char *s = src + soff;
    if (runs) {
      memcpy(d, s, (size_t)inner * esize);
    } else {
      /* Fixed-size memcpy compiles to one move for the common element sizes. */
      switch (esize) {
        case 2:
          for (int64_t k = 0; k < inner; k++, d += dstep, s += sstep) memcpy(d, s, 2);
          break;
        case 4:
          for (int64_t k = 0; k < inner; k++, d += dstep, s += sstep) memcpy(d, s, 4);
          break;
        case 8:
          for (int64_t k = 0; k < inner; k++, d += dstep, s += sstep) memcpy(d, s, 8);
          break;
        default:
          for (int64_t k = 0; k < inner; k++, d += dstep, s += sstep) memcpy(d, s, esize);
      }
    }
    int i = n - 2;
    for (; i >= 0; i--) {
      if (++idx[i] < sh[i]) break;
      idx[i] = 0;
    }
    if (i < 0) return;
  }
}

static void compact_strides(const int64_t *shape, int ndim, int64_t *strides) {
  int64_t s = 1;
  for (int i = ndim - 1; i >= 0; i--) {
    strides[i] = s;
    s *= shape[i] > 0 ? shape[i] : 1;
  }
}

/* Strided tensor -> packed row-major buffer. */
static void pack(char *dst, const tdesc *t) {
  int64_t packed[MAX_TENSOR_DIMS];
  compact_strides(t->shape, t->ndim, packed);
  copy_strided(dst, packed, t->base, t->strides, t->shape, t->ndim, t->esize);
}

/* Packed row-major buffer -> strided tensor. */
static void unpack(const tdesc *t, const char *src) {
  int64_t packed[MAX_TENSOR_DIMS];
  compact_strides(t->shape, t->ndim, packed);
  copy_strided(t->base, t->strides, src, packed, t->shape, t->ndim, t->esize);
}

/* ---------------------------------------------------------------------------------------- */
/* Split                                                                                    */
/* ---------------------------------------------------------------------------------------- */

par_status par_tensor_split(const par_group *group, const DLTensor *in, int dim, DLTensor *out,
                            int64_t *shape, int64_t *strides) {
  static const char fn[] = "par_tensor_split";
  PAR_RETURN_ERROR_IF(!group, PAR_ERR_NULL, "%s: group is NULL", fn);
  tdesc t;
  PAR_FORWARD_IF_ERROR(check_tensor(in, fn, "in", &t));
  PAR_RETURN_ERROR_IF(!out || !shape || !strides, PAR_ERR_NULL,
                      "%s: out, shape and strides must not be NULL", fn);
  int d = 0;
  PAR_FORWARD_IF_ERROR(normalise_dim(&t, dim, fn, &d));
  int n = par_group_size(group), idx = par_group_index(group);
  PAR_RETURN_ERROR_IF(t.shape[d] % n != 0, PAR_ERR_COUNT,
                      "%s: dim %d has size %lld, which is not divisible by the group size %d",
                      fn, dim, (long long)t.shape[d], n);
  int64_t part = t.shape[d] / n;

  /* Everything is read from `in` (checked into t) before anything is written: out may be in,
   * and shape or strides may be in's own arrays. */
  DLTensor view = *in;
  view.shape = shape;
  view.strides = strides;
  view.byte_offset = in->byte_offset + (uint64_t)(idx * part * t.strides[d]) * t.esize;
  for (int i = 0; i < t.ndim; i++) {
    shape[i] = i == d ? part : t.shape[i];
    strides[i] = t.strides[i];
  }
  *out = view;
  return PAR_OK;
}

/* ---------------------------------------------------------------------------------------- */
/* Gather                                                                                   */
/* ---------------------------------------------------------------------------------------- */

/* What the continuation of a gather through a temporary needs: the gathered blocks and where
 * each goes in out. Owns tmp. */
typedef struct gather_ctx {
  char *tmp;
  tdesc out;
  int dim, n;
  int64_t part; /* in's size along dim */
  size_t block; /* bytes of one member's part */
} gather_ctx;

static void gather_ctx_free(void *p) {
  gather_ctx *c = p;
  if (!c) return;
  free(c->tmp);
  free(c);
}

/* Member i's block goes to out's slice i along the dim. */
static par_status gather_scatter(void *p) {
  gather_ctx *c = p;
  tdesc slice = c->out;
  slice.shape[c->dim] = c->part;
  for (int i = 0; i < c->n; i++) {
    slice.base = c->out.base + (size_t)(i * c->part * c->out.strides[c->dim]) * c->out.esize;
    unpack(&slice, c->tmp + (size_t)i * c->block);
  }
  return PAR_OK;
}

/* Checks a gather and plans it. On success either *ctx is NULL and the all-gather can write
 * straight into out (sendbuf, recvbuf set), or *ctx holds a temporary for the gathered blocks
 * and the continuation that puts them in place. This rank's part is already packed where the
 * op will read it, so the op only reads in's memory when `sendbuf` points into it. */
static par_status gather_plan(par_group *g, const DLTensor *in_t, int dim, const DLTensor *out_t,
                              const char *fn, const void **sendbuf, void **recvbuf,
                              size_t *block, gather_ctx **ctx) {
  tdesc in, out;
  *ctx = NULL;
  PAR_RETURN_ERROR_IF(!g, PAR_ERR_NULL, "%s: group is NULL", fn);
  PAR_FORWARD_IF_ERROR(check_tensor(in_t, fn, "in", &in));
  PAR_FORWARD_IF_ERROR(check_tensor(out_t, fn, "out", &out));
  PAR_FORWARD_IF_ERROR(check_writable(&out, fn, "out"));
  int d = 0;
  PAR_FORWARD_IF_ERROR(normalise_dim(&in, dim, fn, &d));
  PAR_RETURN_ERROR_IF(in.dl.code != out.dl.code || in.dl.bits != out.dl.bits ||
                          in.dl.lanes != out.dl.lanes,
                      PAR_ERR_DTYPE,
                      "%s: in and out have different dtypes (code %u bits %u lanes %u vs code "
                      "%u bits %u lanes %u)",
                      fn, in.dl.code, in.dl.bits, in.dl.lanes, out.dl.code, out.dl.bits,
                      out.dl.lanes);
  int n = par_group_size(g), idx = par_group_index(g);
  int shape_ok = out.ndim == in.ndim;
  for (int i = 0; shape_ok && i < in.ndim; i++)
    shape_ok = out.shape[i] == (i == d ? in.shape[i] * n : in.shape[i]);
  if (!shape_ok) {
    char want[256], got[256];
    size_t wl = 0, gl = 0;
    want[0] = got[0] = '\0';
    for (int i = 0; i < in.ndim && wl < sizeof want; i++)
      wl += (size_t)snprintf(want + wl, sizeof want - wl, "%s%lld", i ? "," : "",
                             (long long)(i == d ? in.shape[i] * n : in.shape[i]));
    for (int i = 0; i < out.ndim && gl < sizeof got; i++)
      gl += (size_t)snprintf(got + gl, sizeof got - gl, "%s%lld", i ? "," : "",
                             (long long)out.shape[i]);
    return par__error(PAR_ERR_COUNT,
                      "%s: out has shape [%s]; gathering along dim %d over %d members needs "
                      "[%s]",
                      fn, got, dim, n, want);
  }

  *block = in.count * in.esize;
  int outer = 1; /* every dim before d has size 1: the parts lie one after another in out */
  for (int i = 0; i < d; i++)
    if (out.shape[i] != 1) outer = 0;
  if (*block == 0 || (outer && is_contiguous(&out))) {
    char *slot = out.base + (size_t)idx * *block;
    if (is_contiguous(&in)) {
      *sendbuf = in.base; /* == slot when in is this rank's slice of out: in place */
    } else {
      pack(slot, &in);
      *sendbuf = slot;
    }
    *recvbuf = out.base;
    return PAR_OK;
  }

  gather_ctx *c = calloc(1, sizeof *c);
  char *tmp = malloc(*block * (size_t)n);
  if (!c || !tmp) {
    free(c);
    free(tmp);
    return par__error(PAR_ERR_NOMEM, "%s: cannot allocate %zu bytes for the gathered parts", fn,
                      *block * (size_t)n);
  }
  c->tmp = tmp;
  c->out = out;
  c->dim = d;
  c->n = n;
  c->part = in.shape[d];
  c->block = *block;
  if (is_contiguous(&in)) {
    *sendbuf = in.base;
  } else {
    pack(tmp + (size_t)idx * *block, &in);
    *sendbuf = tmp + (size_t)idx * *block;
  }
  *recvbuf = tmp;
  *ctx = c;
  return PAR_OK;
}

par_status par_tensor_gather(par_group *group, const DLTensor *in, int dim, DLTensor *out) {
  const void *sendbuf = NULL;
  void *recvbuf = NULL;
  size_t block = 0;
  gather_ctx *ctx;
  par_status s = gather_plan(group, in, dim, out, "par_tensor_gather", &sendbuf, &recvbuf,
                             &block, &ctx);
  if (s < 0) return finish(group, s);
  /* Bytes are bytes: gathering them as u8 serves every dtype, lanes included. */
  s = par_allgather(group, sendbuf, recvbuf, block, PAR_U8);
  if (s >= 0 && ctx) s = gather_scatter(ctx);
  gather_ctx_free(ctx);
  return s;
}

par_status par_tensor_gather_async(par_group *group, const DLTensor *in, int dim,
                                   DLTensor *out, par_work **work) {
  static const char fn[] = "par_tensor_gather_async";
  PAR_RETURN_ERROR_IF(!work, PAR_ERR_NULL, "%s: work pointer is NULL", fn);
  *work = NULL;
  const void *sendbuf = NULL;
  void *recvbuf = NULL;
  size_t block = 0;
  gather_ctx *ctx;
  par_status s = gather_plan(group, in, dim, out, fn, &sendbuf, &recvbuf, &block, &ctx);
  if (s < 0) return finish(group, s);
  if (!ctx) return par_allgather_async(group, sendbuf, recvbuf, block, PAR_U8, work);

  par__op op = {.kind = PAR__ALLGATHER,
                .sendbuf = sendbuf,
                .recvbuf = recvbuf,
                .count = block,
                .dt = PAR_U8};
  s = par__submit_then(group, &op, gather_scatter, ctx, gather_ctx_free, work);
  if (s < 0) gather_ctx_free(ctx); /* not handed over on failure */
  return finish(group, s);
}

/* ---------------------------------------------------------------------------------------- */
/* Reduce                                                                                   */
/* ---------------------------------------------------------------------------------------- */

/* A reduction through a packed temporary; the continuation scatters it back. Owns tmp. */
typedef struct reduce_ctx {
  char *tmp;
  tdesc t;
} reduce_ctx;

static void reduce_ctx_free(void *p) {
  reduce_ctx *c = p;
  if (!c) return;
  free(c->tmp);
  free(c);
}

static par_status reduce_unpack(void *p) {
  reduce_ctx *c = p;
  unpack(&c->t, c->tmp);
  return PAR_OK;
}

/* Checks a reduce. *buf is where the all-reduce runs in place: the tensor's own block when it
 * is dense, else a packed temporary owned by *ctx. */
static par_status reduce_plan(par_group *g, const DLTensor *t_in, par_op op, const char *fn,
                              void **buf, par_dtype *dt, size_t *count, reduce_ctx **ctx) {
  tdesc t;
  *ctx = NULL;
  PAR_RETURN_ERROR_IF(!g, PAR_ERR_NULL, "%s: group is NULL", fn);
  PAR_FORWARD_IF_ERROR(check_tensor(t_in, fn, "t", &t));
  PAR_FORWARD_IF_ERROR(par_dtype_from_dlpack(t.dl, dt));
  PAR_RETURN_ERROR_IF(!par__op_valid(op), PAR_ERR_OP, "%s: invalid op %d", fn, (int)op);
  PAR_FORWARD_IF_ERROR(check_writable(&t, fn, "t"));
  *count = t.count;
  if (is_dense(&t)) {
    *buf = t.base; /* the lowest address, since strides are not negative */
    return PAR_OK;
  }
  reduce_ctx *c = calloc(1, sizeof *c);
  char *tmp = malloc(t.count * t.esize);
  if (!c || !tmp) {
    free(c);
    free(tmp);
    return par__error(PAR_ERR_NOMEM, "%s: cannot allocate %zu bytes for a packed copy", fn,
                      t.count * t.esize);
  }
  pack(tmp, &t);
  c->tmp = tmp;
  c->t = t;
  *buf = tmp;
  *ctx = c;
  return PAR_OK;
}

par_status par_tensor_reduce(par_group *group, DLTensor *t, par_op op) {
  void *buf = NULL;
  par_dtype dt;
  size_t count = 0;
  reduce_ctx *ctx;
  par_status s = reduce_plan(group, t, op, "par_tensor_reduce", &buf, &dt, &count, &ctx);
  if (s < 0) return finish(group, s);
  s = par_allreduce(group, buf, buf, count, dt, op);
  if (s >= 0 && ctx) s = reduce_unpack(ctx);
  reduce_ctx_free(ctx);
  return s;
}

par_status par_tensor_reduce_async(par_group *group, DLTensor *t, par_op op, par_work **work) {
  static const char fn[] = "par_tensor_reduce_async";
  PAR_RETURN_ERROR_IF(!work, PAR_ERR_NULL, "%s: work pointer is NULL", fn);
  *work = NULL;
  void *buf = NULL;
  par_dtype dt;
  size_t count = 0;
  reduce_ctx *ctx;
  par_status s = reduce_plan(group, t, op, fn, &buf, &dt, &count, &ctx);
  if (s < 0) return finish(group, s);
  if (!ctx) return par_allreduce_async(group, buf, buf, count, dt, op, work);

  par__op o = {.kind = PAR__ALLREDUCE,
               .sendbuf = buf,
               .recvbuf = buf,
               .count = count,
               .dt = dt,
               .op = op};
  s = par__submit_then(group, &o, reduce_unpack, ctx, reduce_ctx_free, work);
  if (s < 0) reduce_ctx_free(ctx);
  return finish(group, s);
}
