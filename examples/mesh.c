/*
 * mesh.c -- the parallel mesh in one page: a tensor-parallel pair of linear layers.
 *
 *     parrun -n 8 build/bin/mesh [--mp M] [--pp P]
 *
 * Every rank initialises the (dp, pp, mp) mesh, then the ranks of each model-parallel (mp)
 * group share the work of y = x·A (column-parallel: each holds a slice of A's columns, and an
 * all-gather of the partial outputs along the last dim rebuilds y) and z = x·B (row-parallel:
 * each holds a slice of B's rows and of x's columns, and a model-parallel reduce sums the
 * partial products). Rank 0 checks both against the same product computed in one process and
 * prints what it did. With no options mp = 2 when the world is even and pp = 2 when the rest
 * divides; docs/parallelism.md explains the layout.
 *
 * Shapes: x [BATCH, HIDDEN], A and B [HIDDEN, OUT], y and z [BATCH, OUT]. HIDDEN and OUT
 * must divide by mp (mp = 1, 2, 3 or 6). The values are small integers, so every float sum is
 * exact and the check can compare bits.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "par.h"

#define CHECK(call)                                                            \
  do {                                                                         \
    par_status check_s_ = (call);                                              \
    if (check_s_ != PAR_OK) {                                                  \
      fprintf(stderr, "%s:%d: %s failed: %s: %s\n", __FILE__, __LINE__, #call, \
              par_status_name(check_s_), par_last_error());                    \
      exit(1);                                                                 \
    }                                                                          \
  } while (0)

enum { BATCH = 4, HIDDEN = 12, OUT = 6 };

static const DLDataType F32 = {kDLFloat, 32, 1};

/* "[4,5] (index 1)" */
static const char *members(const par_group_info *g, char *buf, size_t cap) {
  size_t len = (size_t)snprintf(buf, cap, "[");
  for (int i = 0; i < g->size && len < cap; i++)
    len += (size_t)snprintf(buf + len, cap - len, "%s%d", i ? "," : "", g->ranks[i]);
  if (len < cap) snprintf(buf + len, cap - len, "] (index %d)", g->index);
  return buf;
}

static DLTensor tensor2(float *data, int64_t *shape, int64_t rows, int64_t cols) {
  shape[0] = rows;
  shape[1] = cols;
  DLTensor t = {.data = data, .device = {kDLCPU, 0}, .ndim = 2, .dtype = F32, .shape = shape};
  return t;
}

/* c[i][j] = sum_k a[i][k] * b[k][j] for 2-d tensors with any strides (views included). */
static void matmul(const DLTensor *a, const DLTensor *b, float *c) {
  int64_t n = a->shape[0], inner = a->shape[1], m = b->shape[1];
  const float *pa = (const float *)((const char *)a->data + a->byte_offset);
  const float *pb = (const float *)((const char *)b->data + b->byte_offset);
  int64_t as0 = a->strides ? a->strides[0] : inner, as1 = a->strides ? a->strides[1] : 1;
  int64_t bs0 = b->strides ? b->strides[0] : m, bs1 = b->strides ? b->strides[1] : 1;
  for (int64_t i = 0; i < n; i++)
    for (int64_t j = 0; j < m; j++) {
      float s = 0;
      for (int64_t k = 0; k < inner; k++) s += pa[i * as0 + k * as1] * pb[k * bs0 + j * bs1];
      c[i * m + j] = s;
    }
}

int main(int argc, char **argv) {
  par_world *world;
  CHECK(par_world_create(NULL, &world));
  int rank = par_world_rank(world), size = par_world_size(world);

  par_mesh_options opts = PAR_MESH_OPTIONS_INIT;
  opts.mp = size % 2 == 0 ? 2 : 1;
  opts.pp = size % (opts.mp * 2) == 0 ? 2 : 1;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (strcmp(argv[i], "--mp") == 0)
      opts.mp = atoi(argv[i + 1]);
    else if (strcmp(argv[i], "--pp") == 0)
      opts.pp = atoi(argv[i + 1]);
  }

  /* ---- The mesh ------------------------------------------------------------------------ */
  CHECK(par_init_parallelism(world, &opts));
  par_group_info mp, pp, dp;
  CHECK(par_mp_group_info(&mp));
  CHECK(par_pp_group_info(&pp));
  CHECK(par_dp_group_info(&dp));
  if (rank == 0) printf("%s\n", par_mesh_describe(par_default_mesh()));
  char m_buf[128], p_buf[128], d_buf[128];
  printf("rank %d: mp group %s, pp group %s, dp group %s\n", rank, members(&mp, m_buf, 128),
         members(&pp, p_buf, 128), members(&dp, d_buf, 128));

  /* ---- The same inputs on every rank (a real job would load or broadcast them) ---------- */
  static float x[BATCH * HIDDEN], a[HIDDEN * OUT], b[HIDDEN * OUT];
  for (int i = 0; i < BATCH * HIDDEN; i++) x[i] = (float)(i % 7 - 3);
  for (int i = 0; i < HIDDEN * OUT; i++) a[i] = (float)(i % 5 - 2);
  for (int i = 0; i < HIDDEN * OUT; i++) b[i] = (float)(i % 3 - 1);
  int64_t xs[2], as[2], bs[2];
  DLTensor X = tensor2(x, xs, BATCH, HIDDEN), A = tensor2(a, as, HIDDEN, OUT),
           Bm = tensor2(b, bs, HIDDEN, OUT);

  /* ---- Column-parallel: y = x·A, A split along its columns (dim 1, or -1) --------------- */
  DLTensor a_mine;
  int64_t a_shape[2], a_strides[2];
  CHECK(par_tensor_split(mp.group, &A, -1, &a_mine, a_shape, a_strides)); /* a view, no copy */
  int64_t cols = a_mine.shape[1];
  float *y_part = malloc(sizeof(float) * BATCH * (size_t)cols);
  static float y[BATCH * OUT];
  if (!y_part) return 1;
  matmul(&X, &a_mine, y_part); /* [BATCH, OUT/mp] */
  int64_t yps[2], ys[2];
  DLTensor Yp = tensor2(y_part, yps, BATCH, cols), Y = tensor2(y, ys, BATCH, OUT);
  CHECK(par_tensor_gather(mp.group, &Yp, -1, &Y)); /* [BATCH, OUT] on every mp rank */

  /* ---- Row-parallel: z = x·B, x split along dim 1 and B along dim 0, partials summed ----- */
  DLTensor x_mine, b_mine;
  int64_t x_shape[2], x_strides[2], b_shape[2], b_strides[2];
  CHECK(par_tensor_split(mp.group, &X, 1, &x_mine, x_shape, x_strides));
  CHECK(par_tensor_split(mp.group, &Bm, 0, &b_mine, b_shape, b_strides));
  static float z[BATCH * OUT];
  matmul(&x_mine, &b_mine, z); /* this rank's partial product */
  int64_t zs[2];
  DLTensor Z = tensor2(z, zs, BATCH, OUT);
  CHECK(par_tensor_reduce(mp.group, &Z, PAR_SUM)); /* the model-parallel reduce */

  /* ---- Check against one process ------------------------------------------------------- */
  static float y_ref[BATCH * OUT], z_ref[BATCH * OUT];
  matmul(&X, &A, y_ref);
  matmul(&X, &Bm, z_ref);
  int ok = memcmp(y, y_ref, sizeof y) == 0 && memcmp(z, z_ref, sizeof z) == 0;
  /* Every rank must agree: a data-parallel-style min over the world says whether all did. */
  int32_t all_ok = ok;
  CHECK(par_allreduce(par_world_group(world), &all_ok, &all_ok, 1, PAR_I32, PAR_MIN));
  if (rank == 0) {
    printf("column-parallel x·A: split A along dim -1 into %d parts, gathered [%d,%d]\n", mp.size,
           BATCH, OUT);
    printf("row-parallel x·B: split x along dim 1 and B along dim 0, reduced over mp\n");
    printf("%s: both match the single-process result on all %d ranks\n", all_ok ? "ok" : "MISMATCH",
           size);
  }

  free(y_part);
  par_reset_parallelism();
  par_world_destroy(world);
  return all_ok ? 0 : 1;
}
