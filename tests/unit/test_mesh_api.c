/*
 * test_mesh_api.c -- the mesh API and the tensor ops in a world of one process.
 *
 * With one rank every group has one member, so a gather is a copy and a reduce is the
 * identity: that makes the strided paths (views, gaps, transposes, packed temporaries, the
 * async continuations) checkable element by element against a naive oracle that walks the
 * strides itself. Hundreds of random layouts are tried. Multi-rank behaviour is in
 * tests/multi/test_mesh.c.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "par.h"

static par_world *world;

static int setup(void **state) {
  (void)state;
  par_world_options o = PAR_WORLD_OPTIONS_INIT;
  o.rank = 0;
  o.size = 1;
  return par_world_create(&o, &world) == PAR_OK ? 0 : -1;
}

static int teardown(void **state) {
  (void)state;
  par_reset_parallelism();
  par_world_destroy(world);
  return 0;
}

/* ---------------------------------------------------------------------------------------- */
/* The default mesh in a world of one                                                       */
/* ---------------------------------------------------------------------------------------- */

static void test_default_mesh(void **state) {
  (void)state;
  par_group_info info;
  assert_int_equal(par_parallelism_is_initialized(), 0);
  assert_int_equal(par_default_group_info(&info), PAR_ERR_STATE);
  assert_string_equal(par_last_error(),
                      "par_default_group_info: parallelism is not initialised; call "
                      "par_init_parallelism() first");
  assert_int_equal(par_init_parallelism(NULL, NULL), PAR_ERR_STATE);
  assert_string_equal(par_last_error(),
                      "the world is not initialised: call par_world_create() "
                      "before par_init_parallelism()");

  assert_int_equal(par_init_parallelism(world, NULL), PAR_OK);
  assert_int_equal(par_parallelism_is_initialized(), 1);
  par_mesh *m = par_default_mesh();
  assert_non_null(m);
  assert_string_equal(par_mesh_describe(m),
                      "model parallel 1, pipeline parallel 1, data parallel 1 (world 1)");
  const char *kinds[] = {"mp", "pp", "dp"};
  for (int k = 0; k < 3; k++) {
    assert_int_equal(par_mesh_group(m, kinds[k], &info), PAR_OK);
    assert_int_equal(info.size, 1);
    assert_int_equal(info.index, 0);
    assert_int_equal(info.ranks[0], 0);
    assert_int_equal(par_mesh_coord(m, kinds[k]), 0);
    assert_int_equal(par_mesh_dim_size(m, kinds[k]), 1);
  }
  assert_int_equal(par_default_group_info(&info), PAR_OK);
  assert_ptr_equal(info.group, par_world_group(world));
  assert_int_equal(par_mesh_next_stage_rank(m), -1);
  assert_int_equal(par_mesh_prev_stage_rank(m), -1);
  assert_int_equal(par_mesh_is_first_stage(m), 1);
  assert_int_equal(par_mesh_is_last_stage(m), 1);

  assert_int_equal(par_init_parallelism(world, NULL), PAR_ERR_STATE);
  assert_string_equal(par_last_error(),
                      "parallelism is already initialised (model parallel 1, pipeline "
                      "parallel 1, data parallel 1 (world 1)); call par_reset_parallelism() "
                      "first");
  par_reset_parallelism();
  assert_int_equal(par_parallelism_is_initialized(), 0);

  /* mp 4 on one rank is clamped to 1; pp 2 is an error. */
  par_mesh_options o = PAR_MESH_OPTIONS_INIT;
  o.mp = 4;
  assert_int_equal(par_init_parallelism(world, &o), PAR_OK);
  assert_int_equal(par_mesh_dim_size(par_default_mesh(), "mp"), 1);
  par_reset_parallelism();
  o.mp = 1;
  o.pp = 2;
  assert_int_equal(par_init_parallelism(world, &o), PAR_ERR_INVALID);
  assert_string_equal(par_last_error(),
                      "world size 1 is not divisible by model parallel size * pipeline "
                      "parallel size 2 (mp 1, pp 2)");
  assert_int_equal(par_parallelism_is_initialized(), 0);
}

static void test_mesh_handles(void **state) {
  (void)state;
  par_mesh *m = (par_mesh *)1;
  assert_int_equal(par_mesh_create(NULL, NULL, &m), PAR_ERR_NULL);
  assert_null(m);
  assert_int_equal(par_mesh_create(world, NULL, NULL), PAR_ERR_NULL);
  assert_int_equal(par_mesh_create(world, NULL, &m), PAR_OK);
  par_group_info g;
  assert_int_equal(par_mesh_group(m, "pp,mp", &g), PAR_ERR_STATE);
  assert_string_equal(par_mesh_last_error(m),
                      "par_mesh_group: the group over \"pp,mp\" does not exist yet; create it "
                      "with par_mesh_group_create");
  assert_int_equal(par_mesh_group_create(m, "pp,mp", NULL, &g), PAR_OK);
  assert_int_equal(g.size, 1);
  assert_int_equal(par_mesh_group(m, "mp,pp", &g), PAR_OK);
  assert_int_equal(par_mesh_group(m, "xp", &g), PAR_ERR_INVALID);
  assert_string_equal(par_mesh_last_error(m), "unknown dim 'xp' (the dims are dp,pp,mp)");
  par_mesh_destroy(m);
  par_mesh_destroy(NULL);

  const char *names[2] = {"rows", "cols"};
  int sizes[2] = {1, -1};
  par_layout l;
  assert_int_equal(par_layout_init(&l, 1, 2, names, sizes), PAR_OK);
  par_backend bad[2] = {PAR_BACKEND_AUTO, (par_backend)7};
  assert_int_equal(par_mesh_create_layout(world, &l, bad, &m), PAR_ERR_INVALID);
  assert_string_equal(par_last_error(), "mesh: invalid backend 7 for cols");
  assert_int_equal(par_mesh_create_layout(world, &l, NULL, &m), PAR_OK);
  assert_string_equal(par_mesh_describe(m), "mesh rows=1 cols=1 (world 1)");
  assert_int_equal(par_mesh_num_stages(m), 1);
  par_mesh_destroy(m);
}

/* ---------------------------------------------------------------------------------------- */
/* Random strided layouts                                                                   */
/* ---------------------------------------------------------------------------------------- */

static uint64_t rng = 0x9e3779b97f4a7c15ull;
static uint32_t rnd(uint32_t n) {
  rng ^= rng << 13;
  rng ^= rng >> 7;
  rng ^= rng << 17;
  return (uint32_t)(rng % n);
}

typedef struct layout {
  int ndim;
  int64_t shape[4], strides[4];
  size_t span; /* elements of backing memory the strides reach */
} layout;

/* A random layout of `shape`: the dims in a random order, each with a random gap. */
static void random_layout(layout *l, int ndim, const int64_t *shape, int allow_gaps) {
  l->ndim = ndim;
  int order[4] = {0, 1, 2, 3};
  for (int i = ndim - 1; i > 0; i--) {
    int j = (int)rnd((uint32_t)i + 1), t = order[i];
    order[i] = order[j];
    order[j] = t;
  }
  int64_t s = 1;
  for (int k = ndim - 1; k >= 0; k--) {
    int d = order[k];
    l->shape[d] = shape[d];
    l->strides[d] = s;
    s *= shape[d] + (allow_gaps ? rnd(3) : 0);
  }
  l->span = (size_t)s + 1;
  for (int i = 0; i < ndim; i++) l->shape[i] = shape[i];
}

static DLTensor as_tensor(void *data, DLDataType dt, layout *l, uint64_t offset_elems,
                          size_t esize) {
  DLTensor t;
  memset(&t, 0, sizeof t);
  t.data = data;
  t.device.device_type = kDLCPU;
  t.ndim = l->ndim;
  t.dtype = dt;
  t.shape = l->shape;
  t.strides = l->strides;
  t.byte_offset = offset_elems * esize;
  return t;
}

/* Element offset (in elements from data+byte_offset) of the flat row-major index `flat`. */
static size_t offset_of(const layout *l, size_t flat) {
  size_t off = 0;
  for (int i = l->ndim - 1; i >= 0; i--) {
    off += (size_t)((int64_t)(flat % (size_t)l->shape[i]) * l->strides[i]);
    flat /= (size_t)l->shape[i];
  }
  return off;
}

static const DLDataType dtypes[4] = {
    {kDLInt, 8, 1}, {kDLBfloat, 16, 1}, {kDLFloat, 32, 1}, {kDLInt, 64, 1}};

static void test_random_gather_and_reduce(void **state) {
  (void)state;
  par_group *g = par_world_group(world);
  for (int iter = 0; iter < 400; iter++) {
    int ndim = 1 + (int)rnd(4);
    int64_t shape[4];
    size_t count = 1;
    for (int i = 0; i < ndim; i++) {
      shape[i] = rnd(12) == 0 ? 0 : 1 + rnd(4); /* now and then an empty tensor */
      count *= (size_t)shape[i];
    }
    DLDataType dt = dtypes[rnd(4)];
    size_t es = dt.bits / 8;
    layout li, lo;
    random_layout(&li, ndim, shape, 1);
    random_layout(&lo, ndim, shape, 1);
    size_t in_off = rnd(3), out_off = rnd(3);
    unsigned char *in = malloc((li.span + in_off) * es), *out = malloc((lo.span + out_off) * es);
    assert_non_null(in);
    assert_non_null(out);
    /* Values that survive a bf16 round trip exactly: small integers' bit patterns for
     * bf16, anything for the rest (a reduce over one member is the identity). */
    for (size_t i = 0; i < (li.span + in_off) * es; i++) in[i] = (unsigned char)rnd(256);
    if (dt.code == kDLBfloat)
      for (size_t i = 0; i < li.span + in_off; i++) {
        uint16_t v = (uint16_t)(0x3f80 + (rnd(64) << 1)); /* 1.0 .. ~2, normal */
        memcpy(in + i * es, &v, 2);
      }
    if (dt.code == kDLFloat)
      for (size_t i = 0; i < li.span + in_off; i++) {
        float v = (float)rnd(1000) - 500.0f;
        memcpy(in + i * es, &v, 4);
      }
    memset(out, 0xAB, (lo.span + out_off) * es);
    DLTensor tin = as_tensor(in, dt, &li, in_off, es), tout = as_tensor(out, dt, &lo, out_off, es);
    int dim = (int)rnd((uint32_t)ndim) - (rnd(2) ? ndim : 0);
    int async = (int)rnd(2);

    /* Gather over one member: out = in, element by element; nothing else in out changes. */
    if (async) {
      par_work *w = NULL;
      assert_int_equal(par_tensor_gather_async(g, &tin, dim, &tout, &w), PAR_OK);
      assert_int_equal(par_work_wait(w, -1), PAR_OK);
      par_work_free(w);
    } else {
      assert_int_equal(par_tensor_gather(g, &tin, dim, &tout), PAR_OK);
    }
    unsigned char *touched = calloc(lo.span + out_off, 1);
    assert_non_null(touched);
    for (size_t f = 0; f < count; f++) {
      size_t io = in_off + offset_of(&li, f), oo = out_off + offset_of(&lo, f);
      assert_memory_equal(out + oo * es, in + io * es, es);
      touched[oo] = 1;
    }
    for (size_t k = 0; k < lo.span + out_off; k++)
      if (!touched[k])
        for (size_t b = 0; b < es; b++) assert_int_equal(out[k * es + b], 0xAB);
    free(touched);

    /* Reduce (sum) over one member leaves the values and everything else as they were. */
    size_t bytes = (li.span + in_off) * es;
    unsigned char *before = malloc(bytes);
    assert_non_null(before);
    memcpy(before, in, bytes);
    if (async) {
      par_work *w = NULL;
      assert_int_equal(par_tensor_reduce_async(g, &tin, PAR_SUM, &w), PAR_OK);
      assert_int_equal(par_work_wait(w, -1), PAR_OK);
      par_work_free(w);
    } else {
      assert_int_equal(par_tensor_reduce(g, &tin, PAR_SUM), PAR_OK);
    }
    assert_memory_equal(in, before, bytes);

    /* Split over one member is the whole tensor, as a view. */
    DLTensor v;
    int64_t vs[4], vst[4];
    assert_int_equal(par_tensor_split(g, &tin, dim, &v, vs, vst), PAR_OK);
    assert_ptr_equal(v.data, tin.data);
    assert_int_equal(v.byte_offset, tin.byte_offset);
    for (int i = 0; i < ndim; i++) {
      assert_int_equal(vs[i], li.shape[i]);
      assert_int_equal(vst[i], li.strides[i]);
    }
    free(before);
    free(in);
    free(out);
  }
}

/* Split on explicit strides with an offset, into the descriptor's own arrays, and its
 * argument errors. */
static void test_split_views(void **state) {
  (void)state;
  float data[100];
  int64_t shape[3] = {2, 3, 4}, strides[3] = {40, 10, 2};
  DLTensor t;
  memset(&t, 0, sizeof t);
  t.data = data;
  t.device.device_type = kDLCPU;
  t.ndim = 3;
  t.dtype = (DLDataType){kDLFloat, 32, 1};
  t.shape = shape;
  t.strides = strides;
  t.byte_offset = 8;
  DLTensor v;
  int64_t vs[3], vst[3];
  /* Splitting into the caller's own arrays works (out may be in). */
  assert_int_equal(par_tensor_split(par_world_group(world), &t, -2, &t, shape, strides), PAR_OK);
  assert_int_equal(t.byte_offset, 8);
  assert_int_equal(shape[1], 3);
  assert_int_equal(strides[2], 2);
  assert_int_equal(par_tensor_split(par_world_group(world), &t, 3, &v, vs, vst), PAR_ERR_INVALID);
  assert_string_equal(par_last_error(),
                      "par_tensor_split: dim 3 is out of range for a tensor of 3 dims");
  t.dtype = (DLDataType){kDLUInt, 4, 1};
  assert_int_equal(par_tensor_split(par_world_group(world), &t, 0, &v, vs, vst), PAR_ERR_DTYPE);
  assert_string_equal(par_last_error(),
                      "par_tensor_split: in has elements of 4 bits; only whole bytes are "
                      "supported");
}

/* Tensor ops reach the queue only through the collectives' own checks: a reduction op that
 * the tensor checks pass on is refused by the all-reduce's, on every path (dense or staged
 * through a packed temporary, blocking or async), before any byte moves. A tensor op that
 * submitted by hand would run the staged async case (with one member, a copy) and succeed. */
static void test_tensor_ops_are_checked(void **state) {
  (void)state;
  par_group *g = par_world_group(world);
  float data[8] = {1, 2, 3, 4, 5, 6, 7, 8};
  int64_t shape[1] = {4}, gaps[1] = {2};
  DLTensor dense, strided;
  memset(&dense, 0, sizeof dense);
  dense.data = data;
  dense.device.device_type = kDLCPU;
  dense.ndim = 1;
  dense.dtype = (DLDataType){kDLFloat, 32, 1};
  dense.shape = shape;
  strided = dense;
  strided.strides = gaps; /* every other element: not dense, so staged */
  const char *want = "allreduce on group 'world': invalid op 42";
  DLTensor *cases[2] = {&dense, &strided};
  for (int c = 0; c < 2; c++) {
    par_work *w = (par_work *)&w;
    assert_int_equal(par_tensor_reduce_async(g, cases[c], (par_op)42, &w), PAR_ERR_OP);
    assert_null(w);
    assert_string_equal(par_group_last_error(g), want);
    assert_int_equal(par_tensor_reduce(g, cases[c], (par_op)42), PAR_ERR_OP);
    assert_string_equal(par_group_last_error(g), want);
  }
  for (int i = 0; i < 8; i++) assert_true(data[i] == (float)(i + 1));

  /* A tensor check's own error is kept on the group too, with its own message. */
  DLTensor none = dense;
  none.data = NULL;
  par_work *w = NULL;
  assert_int_equal(par_tensor_gather_async(g, &none, 0, &strided, &w), PAR_ERR_NULL);
  assert_string_equal(par_group_last_error(g), "par_tensor_gather_async: in has NULL data");
  assert_string_equal(par_last_error(), "par_tensor_gather_async: in has NULL data");

  /* The group still works, on the staged async path. */
  assert_int_equal(par_tensor_reduce_async(g, &strided, PAR_SUM, &w), PAR_OK);
  assert_int_equal(par_work_wait(w, 10.0), PAR_OK);
  par_work_free(w);
  for (int i = 0; i < 8; i++) assert_true(data[i] == (float)(i + 1));
}

/* At debug level an error's log line names where it was raised; the detail a user reads does
 * not carry the place. */
static char debug_line[1200];
static void keep_error_line(par_log_level level, const char *line, void *ctx) {
  (void)ctx;
  if (level == PAR_LOG_DEBUG && strstr(line, "error PAR_ERR_"))
    snprintf(debug_line, sizeof debug_line, "%s", line);
}

static void test_error_names_its_place(void **state) {
  (void)state;
  par_log_level was = par_log_level_get();
  par_set_log_handler(keep_error_line, NULL);
  par_set_log_level(PAR_LOG_DEBUG);
  DLTensor v;
  int64_t vs[1], vst[1];
  par_status s = par_tensor_split(par_world_group(world), NULL, 0, &v, vs, vst);
  par_set_log_handler(NULL, NULL);
  par_set_log_level(was);
  assert_int_equal(s, PAR_ERR_NULL);
  assert_string_equal(par_last_error(), "par_tensor_split: in is NULL");
  const char *at = strstr(debug_line, "error PAR_ERR_NULL at src/mesh/tensor.c:");
  assert_non_null(at);
  char *end;
  long line = strtol(at + strlen("error PAR_ERR_NULL at src/mesh/tensor.c:"), &end, 10);
  assert_true(line > 0);
  assert_string_equal(end, ": par_tensor_split: in is NULL");
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_default_mesh),
      cmocka_unit_test(test_mesh_handles),
      cmocka_unit_test(test_random_gather_and_reduce),
      cmocka_unit_test(test_split_views),
      cmocka_unit_test(test_tensor_ops_are_checked),
      cmocka_unit_test(test_error_names_its_place),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
