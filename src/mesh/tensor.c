/*
 * tensor.c -- split, gather and reduce of DLPack tensors over a group.
 *
 * Split is pure arithmetic on the descriptor: this rank's slice is a view (same data, a byte
 * offset, the caller's shape and strides arrays). Gather and reduce turn a tensor into the
 * flat buffers the collectives take. When a tensor's memory already has the layout the
 * collective needs, it is used in place; otherwise the data goes through a packed temporary,
 * and what comes back is scattered into the caller's strides afterwards. For the async forms
 * that scatter runs as a continuation of the work (par__issue), in the thread that
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

/* Keeps the detail of a tensor check's error on the group (when there is one) and returns s;
 * errors of the op itself are kept by par__issue. */
static par_status finish(par_group *g, par_status s) {
  return g ? par__error_keep(g->last_error, &g->mu, s) : s;
}

/* ---------------------------------------------------------------------------------------- */
/* Checking descriptors                                                                     */
/* ---------------------------------------------------------------------------------------- */

par_status par_dtype_from_dlpack(DLDataType dt, par_dtype *out) {
  static const struct {
    uint8_t code, bits;
    par_dtype dt;
  } map[] = {
      {kDLFloat, 16, PAR_F16},   {kDLFloat, 32, PAR_F32}, {kDLFloat, 64, PAR_F64},
      {kDLBfloat, 16, PAR_BF16}, {kDLInt, 8, PAR_I8},     {kDLInt, 32, PAR_I32},
      {kDLInt, 64, PAR_I64},     {kDLUInt, 8, PAR_U8},
  };
  PAR_RETURN_ERROR_IF(!out, PAR_ERR_NULL, "par_dtype_from_dlpack: out is NULL");
  for (size_t i = 0; dt.lanes == 1 && i < sizeof map / sizeof map[0]; i++)
    if (map[i].code == dt.code && map[i].bits == dt.bits) {
      *out = map[i].dt;
      return PAR_OK;
    }
  return par__error(PAR_ERR_DTYPE,
                    "DLPack dtype (code %u, bits %u, lanes %u) has no par dtype: reductions "
                    "take float 16/32/64, bfloat 16, int 8/32/64 and uint 8 with 1 lane",
                    (unsigned)dt.code, (unsigned)dt.bits, (unsigned)dt.lanes);
}

static par_status check_tensor(const DLTensor *t, const char *fn, const char *what, tdesc *out) {
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
  PAR_RETURN_ERROR_IF(t->ndim > 0 && !t->shape, PAR_ERR_NULL, "%s: %s has a NULL shape", fn, what);
  unsigned bits = (unsigned)t->dtype.bits * t->dtype.lanes;
  PAR_RETURN_ERROR_IF(bits == 0 || bits % 8 != 0, PAR_ERR_DTYPE,
                      "%s: %s has elements of %u bits; only whole bytes are supported", fn, what,
                      bits);
  out->ndim = t->ndim;
  out->esize = bits / 8;
  out->dl = t->dtype;

  /* Element counts stay below 2^62 so that byte offsets cannot overflow. */
  const uint64_t limit = (uint64_t)1 << 62;
  uint64_t count = 1;
  for (int i = 0; i < t->ndim; i++) {
    PAR_RETURN_ERROR_IF(t->shape[i] < 0, PAR_ERR_INVALID, "%s: %s has shape[%d] = %lld", fn, what,
                        i, (long long)t->shape[i]);
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
      PAR_RETURN_ERROR_IF(count > 0 && t->strides[i] > (int64_t)(limit / out->esize), PAR_ERR_COUNT,
                          "%s: %s has a stride too large (%lld on dim %d)", fn, what,
                          (long long)t->strides[i], i);
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
                         const int64_t *src_strides, const int64_t *shape, int ndim, size_t esize) {
  int64_t sh[MAX_TENSOR_DIMS], ds[MAX_TENSOR_DIMS], ss[MAX_TENSOR_DIMS];
  int n = 0;
  for (int i = 0; i < ndim; i++) {
    if (shape[i] == 0) return;
    if (shape[i] == 1) continue;
    if (n > 0 && ds[n - 1] == dst_strides[i] * shape[i] && ss[n - 1] == src_strides[i] * shape[i]) {
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
                      "%s: dim %d has size %lld, which is not divisible by the group size %d", fn,
                      dim, (long long)t.shape[d], n);
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
/* Staging through a packed temporary                                                       */
/* ---------------------------------------------------------------------------------------- */

/* A packed temporary and where its contents go once the collective is done: n blocks of
 * `block` bytes, block i to the i-th of n equal slices of dst along dim (n = 1: all of dst).
 * A gather lands in one when out's layout is not the all-gather's; a reduce of a non-dense
 * tensor runs in one. The async forms hand it to the work as its continuation. */
typedef struct staging {
  char *tmp;
  tdesc dst;
  int dim, n;
  size_t block;
} staging;

static void staging_free(void *p) {
  staging *c = p;
  if (!c) return;
  free(c->tmp);
  free(c);
}

static par_status staging_new(const tdesc *dst, int dim, int n, size_t block, const char *fn,
                              staging **out) {
  staging *c = calloc(1, sizeof *c);
  char *tmp = malloc(block * (size_t)n);
  if (!c || !tmp) {
    free(c);
    free(tmp);
    return par__error(PAR_ERR_NOMEM, "%s: cannot allocate a temporary of %zu bytes", fn,
                      block * (size_t)n);
  }
  c->tmp = tmp;
  c->dst = *dst;
  c->dim = dim;
  c->n = n;
  c->block = block;
  *out = c;
  return PAR_OK;
}

/* Copies the temporary into dst's strides; the continuation of staged async work. */
static par_status staging_scatter(void *p) {
  staging *c = p;
  if (c->n == 1) {
    unpack(&c->dst, c->tmp);
    return PAR_OK;
  }
  tdesc slice = c->dst;
  int64_t part = c->dst.shape[c->dim] / c->n;
  slice.shape[c->dim] = part;
  for (int i = 0; i < c->n; i++) {
    slice.base = c->dst.base + (size_t)(i * part * c->dst.strides[c->dim]) * c->dst.esize;
    unpack(&slice, c->tmp + (size_t)i * c->block);
  }
  return PAR_OK;
}

/* Issues `op` async, checked as every op is, with the staging as its continuation (which it
 * then owns). */
static par_status issue_staged(par_group *g, par__op *op, staging *c, par_work **work) {
  par_status s = par__issue(g, op, staging_scatter, c, staging_free, work);
  if (s < 0) staging_free(c); /* not handed over on failure */
  return s;
}

/* ---------------------------------------------------------------------------------------- */
/* Gather                                                                                   */
/* ---------------------------------------------------------------------------------------- */

/* Checks a gather and plans it: the all-gather's buffers and byte count per member, and a
 * staging when the parts cannot land in out directly (*stage NULL otherwise). This rank's part
 * is packed where the op will read it unless `in` can be read as it is. */
static par_status gather_plan(par_group *g, const DLTensor *in_t, int dim, const DLTensor *out_t,
                              const char *fn, const void **sendbuf, void **recvbuf, size_t *block,
                              staging **stage) {
  tdesc in, out;
  *stage = NULL;
  PAR_RETURN_ERROR_IF(!g, PAR_ERR_NULL, "%s: group is NULL", fn);
  PAR_FORWARD_IF_ERROR(check_tensor(in_t, fn, "in", &in));
  PAR_FORWARD_IF_ERROR(check_tensor(out_t, fn, "out", &out));
  PAR_FORWARD_IF_ERROR(check_writable(&out, fn, "out"));
  int d = 0;
  PAR_FORWARD_IF_ERROR(normalise_dim(&in, dim, fn, &d));
  PAR_RETURN_ERROR_IF(
      in.dl.code != out.dl.code || in.dl.bits != out.dl.bits || in.dl.lanes != out.dl.lanes,
      PAR_ERR_DTYPE,
      "%s: in and out have different dtypes (code %u bits %u lanes %u vs code "
      "%u bits %u lanes %u)",
      fn, in.dl.code, in.dl.bits, in.dl.lanes, out.dl.code, out.dl.bits, out.dl.lanes);
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
  char *dest = out.base;
  if (*block > 0 && !(outer && is_contiguous(&out))) {
    PAR_FORWARD_IF_ERROR(staging_new(&out, d, n, *block, fn, stage));
    dest = (*stage)->tmp;
  }
  char *slot = dest + (size_t)idx * *block;
  if (is_contiguous(&in)) {
    *sendbuf = in.base; /* == slot when in is this rank's slice of out: in place */
  } else {
    pack(slot, &in);
    *sendbuf = slot;
  }
  *recvbuf = dest;
  return PAR_OK;
}

par_status par_tensor_gather(par_group *group, const DLTensor *in, int dim, DLTensor *out) {
  const void *sendbuf = NULL;
  void *recvbuf = NULL;
  size_t block = 0;
  staging *stage;
  par_status s =
      gather_plan(group, in, dim, out, "par_tensor_gather", &sendbuf, &recvbuf, &block, &stage);
  if (s < 0) return finish(group, s);
  /* Bytes are bytes: gathering them as u8 serves every dtype, lanes included. */
  s = par_allgather(group, sendbuf, recvbuf, block, PAR_U8);
  if (s >= 0 && stage) s = staging_scatter(stage);
  staging_free(stage);
  return s;
}

par_status par_tensor_gather_async(par_group *group, const DLTensor *in, int dim, DLTensor *out,
                                   par_work **work) {
  static const char fn[] = "par_tensor_gather_async";
  PAR_RETURN_ERROR_IF(!work, PAR_ERR_NULL, "%s: work pointer is NULL", fn);
  *work = NULL;
  const void *sendbuf = NULL;
  void *recvbuf = NULL;
  size_t block = 0;
  staging *stage;
  par_status s = gather_plan(group, in, dim, out, fn, &sendbuf, &recvbuf, &block, &stage);
  if (s < 0) return finish(group, s);
  if (!stage) return par_allgather_async(group, sendbuf, recvbuf, block, PAR_U8, work);
  par__op op = {
      .kind = PAR__ALLGATHER, .sendbuf = sendbuf, .recvbuf = recvbuf, .count = block, .dt = PAR_U8};
  return issue_staged(group, &op, stage, work);
}

/* ---------------------------------------------------------------------------------------- */
/* Reduce                                                                                   */
/* ---------------------------------------------------------------------------------------- */

/* Checks a reduce's tensor (the reduction op is checked with the all-reduce, by par__issue or
 * par_allreduce). *buf is where the all-reduce runs in place: the tensor's own block when it
 * is dense, else a packed copy in *stage. */
static par_status reduce_plan(par_group *g, const DLTensor *t_in, const char *fn, void **buf,
                              par_dtype *dt, size_t *count, staging **stage) {
  tdesc t;
  *stage = NULL;
  PAR_RETURN_ERROR_IF(!g, PAR_ERR_NULL, "%s: group is NULL", fn);
  PAR_FORWARD_IF_ERROR(check_tensor(t_in, fn, "t", &t));
  PAR_FORWARD_IF_ERROR(par_dtype_from_dlpack(t.dl, dt));
  PAR_FORWARD_IF_ERROR(check_writable(&t, fn, "t"));
  *count = t.count;
  if (is_dense(&t)) {
    *buf = t.base; /* the lowest address, since strides are not negative */
    return PAR_OK;
  }
  PAR_FORWARD_IF_ERROR(staging_new(&t, 0, 1, t.count * t.esize, fn, stage));
  pack((*stage)->tmp, &t);
  *buf = (*stage)->tmp;
  return PAR_OK;
}

par_status par_tensor_reduce(par_group *group, DLTensor *t, par_op op) {
  void *buf = NULL;
  par_dtype dt;
  size_t count = 0;
  staging *stage;
  par_status s = reduce_plan(group, t, "par_tensor_reduce", &buf, &dt, &count, &stage);
  if (s < 0) return finish(group, s);
  s = par_allreduce(group, buf, buf, count, dt, op);
  if (s >= 0 && stage) s = staging_scatter(stage);
  staging_free(stage);
  return s;
}

par_status par_tensor_reduce_async(par_group *group, DLTensor *t, par_op op, par_work **work) {
  static const char fn[] = "par_tensor_reduce_async";
  PAR_RETURN_ERROR_IF(!work, PAR_ERR_NULL, "%s: work pointer is NULL", fn);
  *work = NULL;
  void *buf = NULL;
  par_dtype dt;
  size_t count = 0;
  staging *stage;
  par_status s = reduce_plan(group, t, fn, &buf, &dt, &count, &stage);
  if (s < 0) return finish(group, s);
  if (!stage) return par_allreduce_async(group, buf, buf, count, dt, op, work);
  par__op o = {
      .kind = PAR__ALLREDUCE, .sendbuf = buf, .recvbuf = buf, .count = count, .dt = dt, .op = op};
  return issue_staged(group, &o, stage, work);
}
