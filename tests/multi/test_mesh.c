/*
 * test_mesh.c -- the parallel mesh on a real world: configuration errors, the default mesh's
 * groups against the normative formula, reduce over each kind of group, split/gather round
 * trips on every dim, pipeline neighbours, subset groups and a general mesh.
 *
 * The configuration comes from the world size: 6 ranks run mp=2 pp=3, 8 ranks mp=2 pp=2, 12
 * ranks mp=3 pp=2 (other sizes: mp = the smallest prime factor, pp = 1). The oracle for every
 * group is the formula rank = (d*PP + p)*MP + m written out here, never the library's layout
 * code.
 *
 * PAR_TEST_RANKS: 6 8 12
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"

static int MP, PP, DP;
static int my_m, my_p, my_d;

static const DLDataType DT_F32 = {kDLFloat, 32, 1};
static const DLDataType DT_I32 = {kDLInt, 32, 1};
static const DLDataType DT_I64 = {kDLInt, 64, 1};
static const DLDataType DT_I8 = {kDLInt, 8, 1};
static const DLDataType DT_BF16 = {kDLBfloat, 16, 1};

static int rank_of(int d, int p, int m) { return (d * PP + p) * MP + m; }

/* ---------------------------------------------------------------------------------------- */
/* Oracle groups                                                                            */
/* ---------------------------------------------------------------------------------------- */

/* The members of this rank's group over the dims in `which` ("d", "p", "m" letters), in mesh
 * order, as the formula gives them. Returns their number. */
static int oracle_members(const char *which, int *out) {
  int vd = strchr(which, 'd') != NULL, vp = strchr(which, 'p') != NULL,
      vm = strchr(which, 'm') != NULL;
  int n = 0;
  for (int d = 0; d < DP; d++)
    for (int p = 0; p < PP; p++)
      for (int m = 0; m < MP; m++) {
        if ((!vd && d != my_d) || (!vp && p != my_p) || (!vm && m != my_m)) continue;
        out[n++] = rank_of(d, p, m);
      }
  return n;
}

static void expect_info(const par_group_info *info, const char *which, const char *what) {
  int members[64];
  int n = oracle_members(which, members);
  h_context("group info %s", what);
  EXPECT_TRUE(info->group != NULL, "%s: group is set", what);
  EXPECT_INT(n, info->size);
  EXPECT_INT(n, par_group_size(info->group));
  int index = -1;
  for (int i = 0; i < n; i++) {
    EXPECT_INT(members[i], info->ranks[i]);
    EXPECT_INT(members[i], par_group_global_rank(info->group, i));
    if (members[i] == h_rank) index = i;
  }
  EXPECT_INT(index, info->index);
  EXPECT_INT(index, par_group_index(info->group));
}

/* ---------------------------------------------------------------------------------------- */
/* Tensors                                                                                  */
/* ---------------------------------------------------------------------------------------- */

static DLTensor tensor(void *data, DLDataType dt, int ndim, int64_t *shape, int64_t *strides) {
  DLTensor t;
  memset(&t, 0, sizeof t);
  t.data = data;
  t.device.device_type = kDLCPU;
  t.ndim = ndim;
  t.dtype = dt;
  t.shape = shape;
  t.strides = strides;
  return t;
}

/* The element of a 3-d f32 tensor at (i, j, k), following its strides. */
static float at3(const DLTensor *t, int64_t i, int64_t j, int64_t k) {
  const char *base = (const char *)t->data + t->byte_offset;
  int64_t s0 = t->strides ? t->strides[0] : t->shape[1] * t->shape[2];
  int64_t s1 = t->strides ? t->strides[1] : t->shape[2];
  int64_t s2 = t->strides ? t->strides[2] : 1;
  float v;
  memcpy(&v, base + (size_t)(i * s0 + j * s1 + k * s2) * sizeof(float), sizeof v);
  return v;
}

/* ---------------------------------------------------------------------------------------- */
/* Configuration errors and the default-mesh state                                          */
/* ---------------------------------------------------------------------------------------- */

typedef struct captured {
  int warn, info;
  char warn_line[512], info_line[512];
} captured;

static void capture(par_log_level level, const char *line, void *ctx) {
  captured *c = ctx;
  if (level == PAR_LOG_WARN) {
    c->warn++;
    snprintf(c->warn_line, sizeof c->warn_line, "%s", line);
  } else if (level == PAR_LOG_INFO && strstr(line, "parallel")) {
    c->info++;
    snprintf(c->info_line, sizeof c->info_line, "%s", line);
  }
}

static void expect_init_error(int mp, int pp, par_status status, const char *detail) {
  par_mesh_options o = PAR_MESH_OPTIONS_INIT;
  o.mp = mp;
  o.pp = pp;
  h_context("init with mp=%d pp=%d on %d ranks", mp, pp, h_size);
  EXPECT_STATUS(status, par_init_parallelism(h_world, &o));
  EXPECT_TRUE(strcmp(par_last_error(), detail) == 0, "detail \"%s\", got \"%s\"", detail,
              par_last_error());
  EXPECT_INT(0, par_parallelism_is_initialized());
}

static void test_config_errors(void) {
  par_group_info info;
  char want[256];
  par_mesh_options o = PAR_MESH_OPTIONS_INIT;

  h_context("before anything");
  EXPECT_INT(0, par_parallelism_is_initialized());
  EXPECT_TRUE(par_default_mesh() == NULL, "no default mesh yet");
  EXPECT_STATUS(PAR_ERR_STATE, par_mp_group_info(&info));
  EXPECT_MSG(par_last_error(), "not initialised", "par_init_parallelism()");
  EXPECT_STATUS(PAR_ERR_STATE, par_pp_group_info(&info));
  EXPECT_STATUS(PAR_ERR_STATE, par_dp_group_info(&info));
  EXPECT_STATUS(PAR_ERR_STATE, par_default_group_info(&info));

  /* Before the world. */
  EXPECT_STATUS(PAR_ERR_STATE, par_init_parallelism(NULL, &o));
  EXPECT_MSG(par_last_error(), "world is not initialised", "par_world_create()");
  EXPECT_INT(0, par_parallelism_is_initialized());

  /* A world not divisible by mp: the smallest non-divisor. */
  int bad_mp = 2;
  while (h_size % bad_mp == 0) bad_mp++;
  snprintf(want, sizeof want, "world size %d is not divisible by model parallel size %d", h_size,
           bad_mp);
  expect_init_error(bad_mp, 1, PAR_ERR_INVALID, want);

  /* Divisible by mp but not by mp*pp: pp = the world's own size over mp, plus one. */
  int bad_pp = h_size / MP + 1;
  snprintf(want, sizeof want,
           "world size %d is not divisible by model parallel size * pipeline parallel size %d "
           "(mp %d, pp %d)",
           h_size, MP * bad_pp, MP, bad_pp);
  expect_init_error(MP, bad_pp, PAR_ERR_INVALID, want);

  /* pp is never clamped. */
  snprintf(want, sizeof want,
           "world size %d is not divisible by model parallel size * pipeline parallel size %d "
           "(mp 1, pp %d)",
           h_size, 2 * h_size, 2 * h_size);
  expect_init_error(1, 2 * h_size, PAR_ERR_INVALID, want);
  expect_init_error(0, 1, PAR_ERR_INVALID, "model parallel size must be >= 1 (got 0)");
  expect_init_error(1, -1, PAR_ERR_INVALID, "pipeline parallel size must be >= 1 (got -1)");

  /* Valid options that differ between ranks: every rank learns it at once. */
  o.mp = h_rank == 0 ? MP : 1;
  h_context("ranks disagree on mp");
  EXPECT_STATUS(PAR_ERR_MISMATCH, par_init_parallelism(h_world, &o));
  EXPECT_MSG(par_last_error(), "asked for different meshes");
  EXPECT_INT(0, par_parallelism_is_initialized());
  o.mp = 1;

  o.dp_backend = (par_backend)99;
  h_context("invalid backend");
  EXPECT_STATUS(PAR_ERR_INVALID, par_init_parallelism(h_world, &o));
  EXPECT_MSG(par_last_error(), "invalid backend 99 for dp");
  o = (par_mesh_options)PAR_MESH_OPTIONS_INIT;

  /* mp larger than the world: clamped with one warning (on rank 0), and the configuration is
   * logged once at info level. */
  captured cap;
  memset(&cap, 0, sizeof cap);
  par_log_level old = par_log_level_get();
  par_set_log_handler(capture, &cap);
  par_set_log_level(PAR_LOG_INFO);
  o.mp = 2 * h_size;
  h_context("mp clamp");
  CHECK(NULL, par_init_parallelism(h_world, &o));
  par_set_log_handler(NULL, NULL);
  par_set_log_level(old);
  EXPECT_INT(1, par_parallelism_is_initialized());
  EXPECT_INT(h_rank == 0 ? 1 : 0, cap.warn);
  EXPECT_INT(h_rank == 0 ? 1 : 0, cap.info);
  if (h_rank == 0) {
    snprintf(want, sizeof want,
             "model parallel size %d is larger than the world size %d; using %d instead",
             2 * h_size, h_size, h_size);
    EXPECT_MSG(cap.warn_line, want);
    snprintf(want, sizeof want,
             "model parallel %d, pipeline parallel 1, data parallel 1 (world %d)", h_size, h_size);
    EXPECT_MSG(cap.info_line, want);
  }
  CHECK(NULL, par_mp_group_info(&info));
  EXPECT_INT(h_size, info.size);
  EXPECT_INT(h_rank, info.index);
  CHECK(NULL, par_pp_group_info(&info));
  EXPECT_INT(1, info.size);
  CHECK(NULL, par_dp_group_info(&info));
  EXPECT_INT(1, info.size);

  /* Twice is an error that names the way out; the first mesh stays. */
  o.mp = 1;
  h_context("init twice");
  EXPECT_STATUS(PAR_ERR_STATE, par_init_parallelism(h_world, &o));
  EXPECT_MSG(par_last_error(), "already initialised", "call par_reset_parallelism() first");
  EXPECT_INT(1, par_parallelism_is_initialized());
  EXPECT_INT(h_size, par_mesh_dim_size(par_default_mesh(), "mp"));

  par_reset_parallelism();
  EXPECT_INT(0, par_parallelism_is_initialized());
  EXPECT_STATUS(PAR_ERR_STATE, par_mp_group_info(&info));
  par_reset_parallelism(); /* a no-op */
}

/* ---------------------------------------------------------------------------------------- */
/* The default mesh                                                                         */
/* ---------------------------------------------------------------------------------------- */

static void test_groups(par_mesh *mesh) {
  par_group_info mp, pp, dp, all;
  CHECK(NULL, par_mp_group_info(&mp));
  CHECK(NULL, par_pp_group_info(&pp));
  CHECK(NULL, par_dp_group_info(&dp));
  CHECK(NULL, par_default_group_info(&all));
  expect_info(&mp, "m", "mp");
  expect_info(&pp, "p", "pp");
  expect_info(&dp, "d", "dp");
  expect_info(&all, "dpm", "world");
  /* A rank's index in a one-dim group is its coordinate. */
  EXPECT_INT(my_m, mp.index);
  EXPECT_INT(my_p, pp.index);
  EXPECT_INT(my_d, dp.index);
  EXPECT_TRUE(all.group == par_world_group(h_world), "the whole-world group is the world's");

  h_context("mesh queries");
  EXPECT_INT(my_m, par_mesh_coord(mesh, "mp"));
  EXPECT_INT(my_p, par_mesh_coord(mesh, "pp"));
  EXPECT_INT(my_d, par_mesh_coord(mesh, "dp"));
  EXPECT_INT(-1, par_mesh_coord(mesh, "tp"));
  EXPECT_INT(DP, par_mesh_dim_size(mesh, "dp"));
  EXPECT_TRUE(par_mesh_world(mesh) == h_world, "the mesh's world");
  char want[128];
  snprintf(want, sizeof want,
           "model parallel %d, pipeline parallel %d, data parallel %d (world %d)", MP, PP, DP,
           h_size);
  EXPECT_TRUE(strcmp(par_mesh_describe(mesh), want) == 0, "describe \"%s\", got \"%s\"", want,
              par_mesh_describe(mesh));

  par_group_info g;
  EXPECT_STATUS(PAR_ERR_INVALID, par_mesh_group(mesh, "mp,tp", &g));
  EXPECT_MSG(par_mesh_last_error(mesh), "unknown dim 'tp'", "dp,pp,mp");
  EXPECT_STATUS(PAR_ERR_STATE, par_mesh_group(mesh, "pp,mp", &g));
  EXPECT_MSG(par_mesh_last_error(mesh), "par_mesh_group_create");

  /* Subset groups: the model group (pp x mp) and pp x dp. Each rank creates only its own. */
  par_group_info model, ppdp, again;
  CHECK(NULL, par_mesh_group_create(mesh, "mp,pp", NULL, &model));
  expect_info(&model, "pm", "model (pp,mp)");
  CHECK(NULL, par_mesh_group_create(mesh, "dp,pp", NULL, &ppdp));
  expect_info(&ppdp, "dp", "dp,pp");
  CHECK(NULL, par_mesh_group(mesh, "pp, mp", &again));
  EXPECT_TRUE(again.group == model.group, "the model group is found again");
  CHECK(NULL, par_mesh_group_create(mesh, "pp,mp", NULL, &again));
  EXPECT_TRUE(again.group == model.group, "creating it again returns the same group");
}

static void test_pipeline(par_mesh *mesh) {
  h_context("pipeline stages");
  EXPECT_INT(my_p, par_mesh_stage(mesh));
  EXPECT_INT(PP, par_mesh_num_stages(mesh));
  EXPECT_INT(my_p == 0, par_mesh_is_first_stage(mesh));
  EXPECT_INT(my_p == PP - 1, par_mesh_is_last_stage(mesh));
  EXPECT_INT(my_p + 1 < PP ? rank_of(my_d, my_p + 1, my_m) : -1, par_mesh_next_stage_rank(mesh));
  EXPECT_INT(my_p > 0 ? rank_of(my_d, my_p - 1, my_m) : -1, par_mesh_prev_stage_rank(mesh));

  /* Activations flow down the pipeline: each stage passes on its rank to the next, which
   * finds the previous stage's rank. The stage is the index in the pp group. */
  par_group_info pp;
  CHECK(NULL, par_pp_group_info(&pp));
  if (!par_mesh_is_first_stage(mesh)) {
    int32_t got = -1;
    CHECK(pp.group, par_recv(pp.group, &got, 1, PAR_I32, par_mesh_stage(mesh) - 1));
    EXPECT_INT(par_mesh_prev_stage_rank(mesh), got);
  }
  if (!par_mesh_is_last_stage(mesh)) {
    int32_t mine = h_rank;
    CHECK(pp.group, par_send(pp.group, &mine, 1, PAR_I32, par_mesh_stage(mesh) + 1));
  }
}

/* Reduce over g: each rank contributes values built from its rank, so the result is the sum
 * over exactly the members the oracle lists for `which`. */
static void check_reduce(par_group *g, const char *which, const char *what) {
  int members[64];
  int n = oracle_members(which, members);
  enum { N = 37 };

  /* f32, contiguous, blocking. */
  float f[N];
  int64_t shape1[1] = {N};
  for (int i = 0; i < N; i++) f[i] = (float)((h_rank + 1) * 100 + i);
  DLTensor t = tensor(f, DT_F32, 1, shape1, NULL);
  h_context("reduce f32 sum on %s", what);
  CHECK(g, par_tensor_reduce(g, &t, PAR_SUM));
  for (int i = 0; i < N; i++) {
    float want = 0;
    for (int k = 0; k < n; k++) want += (float)((members[k] + 1) * 100 + i);
    EXPECT_TRUE(f[i] == want, "%s: f[%d] = %g, expected %g", what, i, f[i], want);
  }

  /* i64 max, async. */
  int64_t v[N];
  for (int i = 0; i < N; i++) v[i] = (int64_t)(h_rank * 1000 + (i * 7 + h_rank * 3) % 11);
  t = tensor(v, DT_I64, 1, shape1, NULL);
  par_work *w = NULL;
  h_context("reduce i64 max async on %s", what);
  CHECK(g, par_tensor_reduce_async(g, &t, PAR_MAX, &w));
  CHECK_WORK(g, w, -1);
  par_work_free(w);
  for (int i = 0; i < N; i++) {
    int64_t want = INT64_MIN;
    for (int k = 0; k < n; k++) {
      int64_t x = (int64_t)(members[k] * 1000 + (i * 7 + members[k] * 3) % 11);
      if (x > want) want = x;
    }
    EXPECT_INT(want, v[i]);
  }

  /* A strided view with gaps (every other column of 4x6 i32): through a temporary, blocking
   * and async; the gaps stay untouched. */
  for (int async = 0; async < 2; async++) {
    int32_t buf[24];
    for (int i = 0; i < 24; i++) buf[i] = (i % 2 == 0) ? (h_rank + 1) * (i + 1) : -7;
    int64_t shape2[2] = {4, 3}, strides2[2] = {6, 2};
    t = tensor(buf, DT_I32, 2, shape2, strides2);
    h_context("reduce strided i32 (async %d) on %s", async, what);
    if (async) {
      CHECK(g, par_tensor_reduce_async(g, &t, PAR_SUM, &w));
      CHECK_WORK(g, w, -1);
      par_work_free(w);
    } else {
      CHECK(g, par_tensor_reduce(g, &t, PAR_SUM));
    }
    for (int i = 0; i < 24; i++) {
      int32_t want = -7;
      if (i % 2 == 0) {
        want = 0;
        for (int k = 0; k < n; k++) want += (members[k] + 1) * (i + 1);
      }
      EXPECT_INT(want, buf[i]);
    }
  }

  /* A transposed view (dense, in place) in bf16, values exact in bf16. */
  uint16_t hb[12];
  for (int i = 0; i < 12; i++) hb[i] = h_f32_to_bf16((float)(h_rank % 5 + i % 3));
  int64_t shapeT[2] = {4, 3}, stridesT[2] = {1, 4};
  t = tensor(hb, DT_BF16, 2, shapeT, stridesT);
  h_context("reduce transposed bf16 on %s", what);
  CHECK(g, par_tensor_reduce(g, &t, PAR_SUM));
  for (int i = 0; i < 12; i++) {
    float want = 0;
    for (int k = 0; k < n; k++) want += (float)(members[k] % 5 + i % 3);
    EXPECT_TRUE(h_bf16_to_f32(hb[i]) == want, "%s: bf16[%d] = %g, expected %g", what, i,
                h_bf16_to_f32(hb[i]), want);
  }
}

/* Split then gather along dim_arg of a [2n, 3n, 2n] f32 tensor that is the same on every
 * member: every form of gather must give the tensor back. */
static void check_split_gather(par_group *g, int dim_arg, const char *what) {
  int n = par_group_size(g), idx = par_group_index(g);
  int d = dim_arg < 0 ? dim_arg + 3 : dim_arg;
  int64_t S[3] = {2 * n, 3 * n, 2 * n};
  size_t count = (size_t)(S[0] * S[1] * S[2]);
  float *x = malloc(count * sizeof *x), *out = malloc(count * sizeof *out);
  EXPECT_TRUE(x && out, "allocation");
  for (size_t i = 0; i < count; i++) x[i] = (float)i;
  DLTensor X = tensor(x, DT_F32, 3, S, NULL);

  /* The split is a view of this member's part, with no copy. */
  h_context("split %s along dim %d", what, dim_arg);
  DLTensor V;
  int64_t vshape[3], vstrides[3];
  CHECK(g, par_tensor_split(g, &X, dim_arg, &V, vshape, vstrides));
  EXPECT_TRUE(V.data == X.data, "the view shares the data");
  EXPECT_INT(S[d] / n, V.shape[d]);
  for (int i = 0; i < 3; i++)
    if (i != d) EXPECT_INT(S[i], V.shape[i]);
  int64_t off[3] = {0, 0, 0};
  off[d] = idx * (S[d] / n);
  for (int64_t i = 0; i < V.shape[0]; i++)
    for (int64_t j = 0; j < V.shape[1]; j++)
      for (int64_t k = 0; k < V.shape[2]; k++)
        if (at3(&V, i, j, k) != at3(&X, i + off[0], j + off[1], k + off[2]))
          h_fail(__FILE__, __LINE__, "%s: split view at (%lld,%lld,%lld) is %g, expected %g", what,
                 (long long)i, (long long)j, (long long)k, at3(&V, i, j, k),
                 at3(&X, i + off[0], j + off[1], k + off[2]));

  /* Gather, blocking, into a fresh tensor. */
  h_context("gather %s along dim %d", what, dim_arg);
  memset(out, 0xEE, count * sizeof *out);
  DLTensor O = tensor(out, DT_F32, 3, S, NULL);
  CHECK(g, par_tensor_gather(g, &V, dim_arg, &O));
  EXPECT_TRUE(memcmp(out, x, count * sizeof *out) == 0, "%s: gather along %d gives X back", what,
              dim_arg);

  /* Async: the result is delivered by the time wait returns. */
  h_context("gather async %s along dim %d", what, dim_arg);
  memset(out, 0xEE, count * sizeof *out);
  par_work *w = NULL;
  CHECK(g, par_tensor_gather_async(g, &V, dim_arg, &O, &w));
  CHECK_WORK(g, w, -1);
  par_work_free(w);
  EXPECT_TRUE(memcmp(out, x, count * sizeof *out) == 0, "%s: async gather along %d gives X back",
              what, dim_arg);

  /* In place: the input is this member's own slice of the output. */
  h_context("gather in place %s along dim %d", what, dim_arg);
  memset(out, 0xEE, count * sizeof *out);
  DLTensor mine;
  int64_t mshape[3], mstrides[3];
  CHECK(g, par_tensor_split(g, &O, dim_arg, &mine, mshape, mstrides));
  for (int64_t i = 0; i < mine.shape[0]; i++)
    for (int64_t j = 0; j < mine.shape[1]; j++)
      for (int64_t k = 0; k < mine.shape[2]; k++) {
        float v = at3(&X, i + off[0], j + off[1], k + off[2]);
        memcpy((char *)mine.data + mine.byte_offset +
                   (size_t)(i * mine.strides[0] + j * mine.strides[1] + k * mine.strides[2]) *
                       sizeof(float),
               &v, sizeof v);
      }
  CHECK(g, par_tensor_gather(g, &mine, dim_arg, &O));
  EXPECT_TRUE(memcmp(out, x, count * sizeof *out) == 0, "%s: in-place gather along %d gives X back",
              what, dim_arg);

  /* Into a strided output (rows padded by one element), async; the padding stays. */
  h_context("gather into padded output %s along dim %d", what, dim_arg);
  size_t padded = (size_t)(S[0] * S[1] * (S[2] + 1));
  float *pad = malloc(padded * sizeof *pad);
  EXPECT_TRUE(pad != NULL, "allocation");
  for (size_t i = 0; i < padded; i++) pad[i] = -1.0f;
  int64_t pstrides[3] = {S[1] * (S[2] + 1), S[2] + 1, 1};
  DLTensor P = tensor(pad, DT_F32, 3, S, pstrides);
  CHECK(g, par_tensor_gather_async(g, &V, dim_arg, &P, &w));
  CHECK_WORK(g, w, -1);
  par_work_free(w);
  for (int64_t i = 0; i < S[0]; i++)
    for (int64_t j = 0; j < S[1]; j++) {
      for (int64_t k = 0; k < S[2]; k++)
        if (at3(&P, i, j, k) != at3(&X, i, j, k))
          h_fail(__FILE__, __LINE__, "%s: padded gather at (%lld,%lld,%lld) is %g, expected %g",
                 what, (long long)i, (long long)j, (long long)k, at3(&P, i, j, k),
                 at3(&X, i, j, k));
      EXPECT_TRUE(pad[(size_t)(i * pstrides[0] + j * pstrides[1] + S[2])] == -1.0f,
                  "%s: padding after row (%lld,%lld) untouched", what, (long long)i, (long long)j);
    }
  free(pad);
  free(x);
  free(out);
}

/* Members hold different data: member i's part lands at slice i (1-byte elements, default
 * dim -1). */
static void check_gather_order(par_group *g, const char *what) {
  int n = par_group_size(g);
  int8_t mine[6], all[6 * 64];
  for (int i = 0; i < 6; i++) mine[i] = (int8_t)(h_rank * 6 + i);
  int64_t ishape[2] = {2, 3}, oshape[2] = {2, 3 * n};
  DLTensor in = tensor(mine, DT_I8, 2, ishape, NULL);
  DLTensor out = tensor(all, DT_I8, 2, oshape, NULL);
  h_context("gather order on %s", what);
  CHECK(g, par_tensor_gather(g, &in, -1, &out));
  for (int r = 0; r < 2; r++)
    for (int k = 0; k < n; k++)
      for (int c = 0; c < 3; c++)
        EXPECT_INT((int8_t)(par_group_global_rank(g, k) * 6 + r * 3 + c),
                   all[r * 3 * n + k * 3 + c]);
}

static void test_tensor_errors(par_group *g) {
  int n = par_group_size(g);
  float buf[64 * 8];
  int64_t shape[2] = {n, 3}, oshape[2] = {n, 3}, strides[2] = {3, 1};
  DLTensor t = tensor(buf, DT_F32, 2, shape, NULL);
  DLTensor v;
  int64_t vs[2], vst[2];
  h_context("tensor op errors");
  if (n > 1) {
    /* 3n+1 is never divisible by the group size n. */
    shape[1] = 3 * n + 1;
    EXPECT_STATUS(PAR_ERR_COUNT, par_tensor_split(g, &t, 1, &v, vs, vst));
    EXPECT_MSG(par_last_error(), "not divisible by the group size");
    shape[1] = 3;
  }
  EXPECT_STATUS(PAR_ERR_INVALID, par_tensor_split(g, &t, 2, &v, vs, vst));
  EXPECT_MSG(par_last_error(), "dim 2 is out of range");
  EXPECT_STATUS(PAR_ERR_INVALID, par_tensor_split(g, &t, -3, &v, vs, vst));
  EXPECT_STATUS(PAR_ERR_NULL, par_tensor_split(g, NULL, 0, &v, vs, vst));
  EXPECT_STATUS(PAR_ERR_NULL, par_tensor_split(g, &t, 0, &v, NULL, vst));

  /* Wrong output shape: not multiplied along the dim. */
  DLTensor o = tensor(buf, DT_F32, 2, oshape, NULL);
  float in_small[3];
  int64_t ishape[2] = {1, 3};
  DLTensor in = tensor(in_small, DT_F32, 2, ishape, NULL);
  oshape[0] = n + 1;
  EXPECT_STATUS(PAR_ERR_COUNT, par_tensor_gather(g, &in, 0, &o));
  EXPECT_MSG(par_last_error(), "out has shape", "needs");
  EXPECT_MSG(par_group_last_error(g), "out has shape");
  oshape[0] = n;
  DLTensor o_i32 = tensor(buf, DT_I32, 2, oshape, NULL);
  EXPECT_STATUS(PAR_ERR_DTYPE, par_tensor_gather(g, &in, 0, &o_i32));
  par_work *w = (par_work *)&w;
  EXPECT_STATUS(PAR_ERR_DTYPE, par_tensor_gather_async(g, &in, 0, &o_i32, &w));
  EXPECT_TRUE(w == NULL, "no work handle after an error");
  EXPECT_STATUS(PAR_ERR_NULL, par_tensor_gather_async(g, &in, 0, &o, NULL));

  /* Negative strides and device memory are refused; an output with stride 0 too. */
  int64_t neg[2] = {-3, 1};
  DLTensor tn = tensor(buf, DT_F32, 2, shape, neg);
  EXPECT_STATUS(PAR_ERR_UNSUPPORTED, par_tensor_reduce(g, &tn, PAR_SUM));
  EXPECT_MSG(par_last_error(), "negative stride");
  DLTensor td = tensor(buf, DT_F32, 2, shape, strides);
  td.device.device_type = kDLCUDA;
  EXPECT_STATUS(PAR_ERR_UNSUPPORTED, par_tensor_reduce(g, &td, PAR_SUM));
  EXPECT_MSG(par_last_error(), "only host memory");
  int64_t zero[2] = {1, 0};
  DLTensor tz = tensor(buf, DT_F32, 2, shape, zero);
  EXPECT_STATUS(PAR_ERR_INVALID, par_tensor_reduce(g, &tz, PAR_SUM));
  EXPECT_MSG(par_last_error(), "stride 0");

  /* Reductions need a par dtype. */
  DLDataType complex64 = {kDLComplex, 64, 1};
  DLTensor tc = tensor(buf, complex64, 2, shape, NULL);
  EXPECT_STATUS(PAR_ERR_DTYPE, par_tensor_reduce(g, &tc, PAR_SUM));
  EXPECT_MSG(par_last_error(), "has no par dtype");
  DLTensor tf = tensor(buf, DT_F32, 2, shape, NULL);
  EXPECT_STATUS(PAR_ERR_OP, par_tensor_reduce(g, &tf, (par_op)42));
  EXPECT_MSG(par_group_last_error(g), "allreduce on group", "invalid op 42");
  /* A tensor with gaps goes through a packed temporary, async as a continuation: its op is
   * checked there too, by the same checks as every collective, and no work is made. */
  int64_t gaps[2] = {6, 1};
  DLTensor tg = tensor(buf, DT_F32, 2, shape, gaps);
  w = (par_work *)&w;
  EXPECT_STATUS(PAR_ERR_OP, par_tensor_reduce_async(g, &tg, (par_op)42, &w));
  EXPECT_TRUE(w == NULL, "no work handle after an error");
  EXPECT_MSG(par_group_last_error(g), "allreduce on group", "invalid op 42");
  par_dtype pd;
  CHECK(NULL, par_dtype_from_dlpack(DT_BF16, &pd));
  EXPECT_INT(PAR_BF16, pd);
  DLDataType f32x4 = {kDLFloat, 32, 4};
  EXPECT_STATUS(PAR_ERR_DTYPE, par_dtype_from_dlpack(f32x4, &pd));

  /* The group still works after argument errors. */
  float one[1] = {1.0f};
  int64_t s1[1] = {1};
  DLTensor t1 = tensor(one, DT_F32, 1, s1, NULL);
  CHECK(g, par_tensor_reduce(g, &t1, PAR_SUM));
  EXPECT_TRUE(one[0] == (float)n, "sum of ones over %d members is %d, got %g", n, n, one[0]);
}

/* ---------------------------------------------------------------------------------------- */
/* A general mesh                                                                           */
/* ---------------------------------------------------------------------------------------- */

/* Dims (a, b, c, d) = (dp, pp, 1, mp): the same ranks as the default mesh, plus a trivial dim
 * whose groups have one member. */
static void test_general_mesh(void) {
  const char *names[4] = {"a", "b", "c", "d"};
  int sizes[4] = {-1, PP, 1, MP};
  par_layout l;
  h_context("general mesh");
  CHECK(NULL, par_layout_init(&l, h_size, 4, names, sizes));
  par_mesh *m = NULL;
  CHECK(NULL, par_mesh_create_layout(h_world, &l, NULL, &m));
  par_group_info a, b, c, d;
  CHECK(NULL, par_mesh_group(m, "a", &a));
  CHECK(NULL, par_mesh_group(m, "b", &b));
  CHECK(NULL, par_mesh_group(m, "c", &c));
  CHECK(NULL, par_mesh_group(m, "d", &d));
  expect_info(&a, "d", "a");
  expect_info(&b, "p", "b");
  expect_info(&d, "m", "d");
  EXPECT_INT(1, c.size);
  EXPECT_INT(0, c.index);
  EXPECT_INT(h_rank, c.ranks[0]);
  /* No dim called "pp": one stage. */
  EXPECT_INT(0, par_mesh_stage(m));
  EXPECT_INT(1, par_mesh_num_stages(m));
  EXPECT_INT(-1, par_mesh_next_stage_rank(m));
  EXPECT_INT(1, par_mesh_is_first_stage(m) && par_mesh_is_last_stage(m));

  check_reduce(a.group, "d", "general a");
  check_reduce(c.group, "", "general c (one member)");
  par_group_info bd;
  CHECK(NULL, par_mesh_group_create(m, "d,b,c", NULL, &bd));
  expect_info(&bd, "pm", "general b,c,d");
  check_reduce(bd.group, "pm", "general b,c,d");
  par_mesh_destroy(m);

  /* The layout's world must be this world. */
  const char *one[1] = {"x"};
  int all[1] = {-1};
  CHECK(NULL, par_layout_init(&l, h_size * 2, 1, one, all));
  EXPECT_STATUS(PAR_ERR_INVALID, par_mesh_create_layout(h_world, &l, NULL, &m));
  EXPECT_TRUE(m == NULL, "no mesh after an error");
  EXPECT_MSG(par_last_error(), "the layout is for");
}

int main(void) {
  h_init("test_mesh");
  if (h_size == 6) {
    MP = 2, PP = 3;
  } else if (h_size == 8) {
    MP = 2, PP = 2;
  } else if (h_size == 12) {
    MP = 3, PP = 2;
  } else {
    MP = 2;
    while (h_size % MP) MP++;
    if (MP > h_size) MP = 1;
    PP = 1;
  }
  DP = h_size / (MP * PP);
  my_m = h_rank % MP;
  my_p = (h_rank / MP) % PP;
  my_d = h_rank / (MP * PP);

  test_config_errors();

  par_mesh_options o = PAR_MESH_OPTIONS_INIT;
  o.mp = MP;
  o.pp = PP;
  h_context("init mp=%d pp=%d", MP, PP);
  CHECK(NULL, par_init_parallelism(h_world, &o));
  par_mesh *mesh = par_default_mesh();
  EXPECT_TRUE(mesh != NULL, "the default mesh exists");
  test_groups(mesh);
  test_pipeline(mesh);

  static const char *const kinds[] = {"mp", "pp", "dp", "pp,mp", "dp,pp", "dp,pp,mp"};
  static const char *const oracle[] = {"m", "p", "d", "pm", "dp", "dpm"};
  for (int k = 0; k < 6; k++) {
    par_group_info info;
    h_context("group %s", kinds[k]);
    CHECK(NULL, par_mesh_group(mesh, kinds[k], &info));
    check_reduce(info.group, oracle[k], kinds[k]);
    check_gather_order(info.group, kinds[k]);
    if (k < 4)
      for (int dim = -3; dim < 3; dim++) check_split_gather(info.group, dim, kinds[k]);
  }
  par_group_info mp;
  CHECK(NULL, par_mp_group_info(&mp));
  test_tensor_errors(mp.group);

  par_reset_parallelism();
  EXPECT_INT(0, par_parallelism_is_initialized());
  test_general_mesh();
  return h_finish();
}
