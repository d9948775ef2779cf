/*
 * alloc.c -- par.empty(): tensors and arrays in memory from par_alloc, which the other ranks on
 * the host map, so the shm backend reads all-reduce inputs (and allgather and broadcast
 * sources) in place instead of copying them through the group's segment (docs/PERFORMANCE.md,
 * "Zero copy"). Any tensor works with every op; these only make large ops faster.
 *
 * The memory goes out as a DLPack capsule, whose deleter calls par_free when the last tensor on
 * it goes: torch.utils.dlpack.from_dlpack consumes it; for numpy (whose from_dlpack makes
 * read-only arrays) par/__init__.py wraps the address in an __array_interface__ whose owner
 * keeps the unconsumed capsule, which then frees the region itself. par_world_destroy frees every
 * such region, so par.destroy() refuses to run while any is alive rather than leave tensors
 * pointing at unmapped memory. The deleter may run in any thread (torch frees storage wherever the
 * last reference dies), so the count of live regions is atomic and the deleter touches no Python
 * object.
 */
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "pypar.h"

typedef struct region {
  DLManagedTensor mt;
  int64_t shape[PYARR_MAX_DIMS];
  par_world *world;
  void *ptr;
} region;

static atomic_long live;

long pyalloc_live(void) { return atomic_load(&live); }

static void region_free(DLManagedTensor *mt) {
  region *r = mt->manager_ctx;
  par_free(r->world, r->ptr);
  free(r);
  atomic_fetch_sub(&live, 1);
}

/* A capsule nobody consumed frees its region itself, as the DLPack protocol asks. */
static void capsule_destructor(PyObject *cap) {
  if (!PyCapsule_IsValid(cap, "dltensor")) return; /* consumed: renamed "used_dltensor" */
  DLManagedTensor *mt = PyCapsule_GetPointer(cap, "dltensor");
  if (mt && mt->deleter) mt->deleter(mt);
}

/* _alloc(shape, dtype) -> (a "dltensor" capsule of par_alloc memory, its address). */
static PyObject *alloc(PyObject *m, PyObject *args) {
  (void)m;
  PyObject *shape_obj;
  const char *dtype;
  if (!PyArg_ParseTuple(args, "Os", &shape_obj, &dtype)) return NULL;
  if (pypar_need_world() < 0) return NULL;
  par_dtype dt;
  if (par_dtype_parse(dtype, &dt) != PAR_OK) return pypar_raise(PAR_ERR_DTYPE, par_last_error());
  PyObject *shape = PySequence_Tuple(shape_obj);
  if (!shape) return NULL;
  Py_ssize_t nd = PyTuple_Size(shape);
  region *r = calloc(1, sizeof *r);
  if (!r) {
    Py_DECREF(shape);
    return PyErr_NoMemory();
  }
  size_t count = 1;
  for (Py_ssize_t d = 0; d < nd && d < PYARR_MAX_DIMS; d++) {
    r->shape[d] = PyLong_AsLongLong(PyTuple_GetItem(shape, d));
    if (r->shape[d] < 0 && !PyErr_Occurred())
      pypar_raisef(PAR_ERR_INVALID, "par.empty: dim %d has a negative size", (int)d);
    count *= (size_t)(r->shape[d] > 0 ? r->shape[d] : 0);
  }
  Py_DECREF(shape);
  if (nd > PYARR_MAX_DIMS && !PyErr_Occurred())
    pypar_raisef(PAR_ERR_INVALID, "par.empty: %d dims; at most %d", (int)nd, PYARR_MAX_DIMS);
  if (PyErr_Occurred()) {
    free(r);
    return NULL;
  }
  size_t bytes = count * par_dtype_size(dt);
  par_status s;
  Py_BEGIN_ALLOW_THREADS
  s = par_alloc(pypar_world, bytes ? bytes : 1, &r->ptr);
  Py_END_ALLOW_THREADS
  if (s != PAR_OK) {
    free(r);
    return pypar_raise(s, par_world_last_error(pypar_world));
  }
  static const DLDataType dls[PAR_DTYPE_COUNT] = {
      {kDLFloat, 32, 1}, {kDLFloat, 64, 1}, {kDLFloat, 16, 1}, {kDLBfloat, 16, 1},
      {kDLInt, 8, 1},    {kDLUInt, 8, 1},   {kDLInt, 32, 1},   {kDLInt, 64, 1}};
  r->world = pypar_world;
  r->mt.dl_tensor.data = r->ptr;
  r->mt.dl_tensor.device.device_type = kDLCPU;
  r->mt.dl_tensor.ndim = (int)nd;
  r->mt.dl_tensor.dtype = dls[dt];
  r->mt.dl_tensor.shape = r->shape;
  r->mt.manager_ctx = r;
  r->mt.deleter = region_free;
  atomic_fetch_add(&live, 1);
  PyObject *cap = PyCapsule_New(&r->mt, "dltensor", capsule_destructor);
  if (!cap) {
    region_free(&r->mt);
    return NULL;
  }
  PyObject *ret = Py_BuildValue("(NN)", cap, PyLong_FromVoidPtr(r->ptr));
  return ret;
}

static PyObject *alloc_live(PyObject *m, PyObject *unused) {
  (void)m;
  (void)unused;
  return PyLong_FromLong(pyalloc_live());
}

PyMethodDef pypar_alloc_methods[] = {
    {"_alloc", alloc, METH_VARARGS,
     "_alloc(shape, dtype) -> (DLPack capsule of par_alloc memory, address)"},
    {"_alloc_live", alloc_live, METH_NOARGS, "how many par.empty regions are alive"},
    {NULL, NULL, 0, NULL}};
