/*
 * array.c -- turns the caller's array object into memory an op can use.
 *
 * An array comes in through __dlpack__ (torch tensors, numpy >= 1.22 arrays, anything that
 * speaks DLPack), or through numpy's __array_interface__ when DLPack refuses (numpy will not
 * export a read-only array, torch will not export a tensor that requires grad: both are fine
 * to read from), or, for plain buffer-protocol objects (bytearray, array.array, memoryview),
 * through a numpy view of the buffer. Whatever the way in, the op gets the array's own memory:
 * results land where the caller's tensor sees them. A compact array is used in place; a
 * strided one (a transpose, a slice with a step, negative strides) goes through a packed
 * temporary that is copied back after the op. The object (or the DLPack capsule, whose
 * destructor frees the export) is held until the op is done, so async ops keep their arrays
 * alive until waited on.
 */
#include <stdlib.h>
#include <string.h>

#include "pypar.h"

static PyObject *s_dlpack, *s_array_interface, *s_requires_grad, *s_detach, *s_numpy;

static int strings_init(void) {
  if (s_dlpack) return 0;
  s_dlpack = PyUnicode_InternFromString("__dlpack__");
  s_array_interface = PyUnicode_InternFromString("__array_interface__");
  s_requires_grad = PyUnicode_InternFromString("requires_grad");
  s_detach = PyUnicode_InternFromString("detach");
  return s_dlpack && s_array_interface && s_requires_grad && s_detach ? 0 : -1;
}

static const char *type_name(PyObject *o) {
  /* The Limited API has no tp_name accessor before 3.11; the type's __name__ will do. */
  static char buf[96];
  PyObject *t = PyObject_GetAttrString((PyObject *)Py_TYPE(o), "__name__");
  if (!pypar_utf8(t, buf, sizeof buf)) snprintf(buf, sizeof buf, "?");
  Py_XDECREF(t);
  PyErr_Clear();
  return buf;
}

static const char *dl_name(DLDataType dt, char *buf, size_t cap) {
  static const char *codes[] = {"int", "uint", "float", "opaque", "bfloat", "complex", "bool"};
  const char *c = dt.code < sizeof codes / sizeof codes[0] ? codes[dt.code] : "code?";
  if (dt.code == 6)
    snprintf(buf, cap, "bool");
  else
    snprintf(buf, cap, "%s%u%s", c, (unsigned)dt.bits, dt.lanes != 1 ? "xN" : "");
  return buf;
}

const char *pyarr_dtype_name(const pyarr *a) { return par_dtype_name(a->dt); }

static void pyarr_copy(pyarr *a, int to_temp);

/* ---- Layout ------------------------------------------------------------------------------ */

/* Checks the shape and strides and decides between in place and a packed temporary. */
static int finish_layout(pyarr *a, int access, const char *what) {
  a->esize = par_dtype_size(a->dt);
  a->count = 1;
  for (int d = 0; d < a->ndim; d++) a->count *= (size_t)a->shape[d];
  int64_t expect = 1;
  a->compact = 1;
  for (int d = a->ndim - 1; d >= 0; d--) {
    if (a->shape[d] == 1) continue;
    if (a->strides[d] != expect) a->compact = 0;
    expect *= a->shape[d];
    if (access == PYARR_WRITE && a->strides[d] == 0 && a->count > 0) {
      pypar_raisef(PAR_ERR_INVALID,
                   "%s has overlapping elements (stride 0 on dim %d, e.g. from expand()): "
                   "par cannot write a result into it; pass a tensor with its own memory",
                   what, d);
      return -1;
    }
  }
  if (a->count == 0) a->compact = 1;
  if (a->compact) {
    a->buf = a->base;
    return 0;
  }
  a->temp = malloc(a->count * a->esize);
  if (!a->temp) {
    PyErr_NoMemory();
    return -1;
  }
  a->buf = a->temp;
  a->writeback = access == PYARR_WRITE;
  /* Inputs and in-place arrays carry their values into the op. */
  pyarr_copy(a, 1);
  return 0;
}

/* Copies between the strided array and its packed temporary, the last dim innermost. */
static void pyarr_copy(pyarr *a, int to_temp) {
  if (a->count == 0) return;
  char *t = a->temp;
  size_t es = a->esize;
  int nd = a->ndim;
  if (nd == 0) {
    if (to_temp)
      memcpy(t, a->base, es);
    else
      memcpy(a->base, t, es);
    return;
  }
  int64_t idx[PYARR_MAX_DIMS] = {0};
  int64_t inner = a->shape[nd - 1];
  ptrdiff_t istride = (ptrdiff_t)a->strides[nd - 1] * (ptrdiff_t)es;
  size_t outer = a->count / (size_t)inner;
  for (size_t o = 0; o < outer; o++) {
    char *p = a->base;
    for (int d = 0; d < nd - 1; d++) p += (ptrdiff_t)idx[d] * a->strides[d] * (ptrdiff_t)es;
    for (int64_t i = 0; i < inner; i++, p += istride, t += es) {
      if (to_temp)
        memcpy(t, p, es);
      else
        memcpy(p, t, es);
    }
    for (int d = nd - 2; d >= 0; d--) {
      if (++idx[d] < a->shape[d]) break;
      idx[d] = 0;
    }
  }
}

void pyarr_finish(pyarr *a) {
  if (a->writeback && a->temp) pyarr_copy(a, 0);
}

void pyarr_release(pyarr *a) {
  Py_CLEAR(a->owner);
  Py_CLEAR(a->obj);
  free(a->temp);
  a->temp = NULL;
  a->buf = NULL;
}

void pyarr_dltensor(pyarr *a, DLTensor *t) {
  memset(t, 0, sizeof *t);
  t->data = a->buf;
  t->device.device_type = kDLCPU;
  t->ndim = a->ndim;
  t->dtype = a->dl;
  t->shape = a->shape;
  t->strides = a->temp ? NULL : a->strides; /* the packed temporary is compact */
}

/* ---- DLPack ------------------------------------------------------------------------------ */

static int from_capsule(PyObject *cap, int access, const char *what, pyarr *a) {
  DLManagedTensor *mt = PyCapsule_GetPointer(cap, "dltensor");
  if (!mt) return -1;
  DLTensor *t = &mt->dl_tensor;
  int dev = t->device.device_type;
  if (dev != kDLCPU && dev != kDLCUDAHost && dev != kDLROCMHost) {
    pypar_raisef(PAR_ERR_UNSUPPORTED,
                 "%s is in device memory (DLPack device type %d, id %d): par works on host "
                 "memory; move it with .cpu()",
                 what, dev, (int)t->device.device_id);
    return -1;
  }
  char nb[32];
  if (par_dtype_from_dlpack(t->dtype, &a->dt) != PAR_OK) {
    pypar_raisef(PAR_ERR_DTYPE,
                 "%s has dtype %s, which par does not support (float16/32/64, bfloat16, "
                 "int8/32/64, uint8)",
                 what, dl_name(t->dtype, nb, sizeof nb));
    return -1;
  }
  if (t->ndim < 0 || t->ndim > PYARR_MAX_DIMS) {
    pypar_raisef(PAR_ERR_INVALID, "%s has %d dims; par takes at most %d", what, t->ndim,
                 PYARR_MAX_DIMS);
    return -1;
  }
  a->dl = t->dtype;
  a->ndim = t->ndim;
  a->base = (char *)t->data + t->byte_offset;
  int64_t expect = 1;
  for (int d = t->ndim - 1; d >= 0; d--) {
    a->shape[d] = t->shape[d];
    a->strides[d] = t->strides ? t->strides[d] : expect;
    expect *= t->shape[d];
  }
  Py_INCREF(cap);
  a->owner = cap;
  return finish_layout(a, access, what);
}

/* ---- __array_interface__ (numpy arrays DLPack will not export) --------------------------- */

static int typestr_dtype(const char *s, par_dtype *dt, DLDataType *dl) {
  static const struct {
    const char *s;
    par_dtype dt;
    uint8_t code, bits;
  } map[] = {{"<f4", PAR_F32, kDLFloat, 32}, {"<f8", PAR_F64, kDLFloat, 64},
             {"<f2", PAR_F16, kDLFloat, 16}, {"|i1", PAR_I8, kDLInt, 8},
             {"|u1", PAR_U8, kDLUInt, 8},    {"<i4", PAR_I32, kDLInt, 32},
             {"<i8", PAR_I64, kDLInt, 64}};
  for (size_t i = 0; i < sizeof map / sizeof map[0]; i++)
    if (!strcmp(s, map[i].s)) {
      *dt = map[i].dt;
      dl->code = map[i].code;
      dl->bits = map[i].bits;
      dl->lanes = 1;
      return 0;
    }
  return -1;
}

static int from_array_interface(PyObject *o, PyObject *ai, int access, const char *what, pyarr *a) {
  PyObject *typestr = PyDict_GetItemString(ai, "typestr");
  PyObject *data = PyDict_GetItemString(ai, "data");
  PyObject *shape = PyDict_GetItemString(ai, "shape");
  PyObject *strides = PyDict_GetItemString(ai, "strides");
  char tsbuf[32];
  const char *ts = pypar_utf8(typestr, tsbuf, sizeof tsbuf);
  if (!ts || !data || !PyTuple_Check(data) || PyTuple_Size(data) != 2 || !shape ||
      !PyTuple_Check(shape)) {
    PyErr_Clear();
    pypar_raisef(PAR_ERR_INVALID, "%s has a malformed __array_interface__", what);
    return -1;
  }
  if (typestr_dtype(ts, &a->dt, &a->dl) != 0) {
    pypar_raisef(PAR_ERR_DTYPE,
                 "%s has dtype '%s', which par does not support (float16/32/64, int8/32/64, "
                 "uint8, in native byte order)",
                 what, ts);
    return -1;
  }
  int ro = PyObject_IsTrue(PyTuple_GetItem(data, 1));
  if (ro && access == PYARR_WRITE) {
    pypar_raisef(PAR_ERR_INVALID,
                 "%s is read-only: par writes the result into it; pass a writable array", what);
    return -1;
  }
  a->base = PyLong_AsVoidPtr(PyTuple_GetItem(data, 0));
  Py_ssize_t nd = PyTuple_Size(shape);
  if (nd > PYARR_MAX_DIMS) {
    pypar_raisef(PAR_ERR_INVALID, "%s has %d dims; par takes at most %d", what, (int)nd,
                 PYARR_MAX_DIMS);
    return -1;
  }
  a->ndim = (int)nd;
  size_t es = par_dtype_size(a->dt);
  int64_t expect = 1;
  for (int d = a->ndim - 1; d >= 0; d--) {
    a->shape[d] = PyLong_AsLongLong(PyTuple_GetItem(shape, d));
    if (strides && strides != Py_None) {
      long long bs = PyLong_AsLongLong(PyTuple_GetItem(strides, d));
      if (bs % (long long)es) {
        pypar_raisef(PAR_ERR_UNSUPPORTED,
                     "%s has a stride of %lld bytes, not a multiple of its element size", what, bs);
        return -1;
      }
      a->strides[d] = bs / (long long)es;
    } else {
      a->strides[d] = expect;
    }
    expect *= a->shape[d];
  }
  if (PyErr_Occurred()) return -1;
  Py_INCREF(o);
  a->owner = o;
  return finish_layout(a, access, what);
}

/* ---- torch tensors, directly ------------------------------------------------------------ */

/* torch's __dlpack__ is Python code that costs ~1.9 us a call, more than the whole 8-byte
 * all-reduce; reading the few attributes it reads costs ~0.5 us. So a torch.Tensor (once torch
 * is imported by the program) is taken apart here, and anything unusual about it (another
 * dtype, layout or device) goes the DLPack way, which explains itself. */
static PyObject *torch_tensor, *torch_strided, *torch_bool;
static PyObject *torch_dtypes[PAR_DTYPE_COUNT];
static PyObject *s_dtype, *s_is_cpu, *s_layout, *s_shape, *s_stride, *s_data_ptr;
static int torch_tried;

static void torch_init(void) {
  if (torch_tried) return;
  PyObject *modules = PySys_GetObject("modules"); /* borrowed */
  PyObject *torch = modules ? PyDict_GetItemString(modules, "torch") : NULL;
  if (!torch) return; /* not imported yet: look again next time */
  torch_tried = 1;
  static const char *names[PAR_DTYPE_COUNT] = {"float32", "float64", "float16", "bfloat16",
                                               "int8",    "uint8",   "int32",   "int64"};
  PyObject *tensor = PyObject_GetAttrString(torch, "Tensor");
  PyObject *strided = PyObject_GetAttrString(torch, "strided");
  PyObject *tbool = PyObject_GetAttrString(torch, "bool");
  int ok = tensor && strided && tbool;
  for (int i = 0; ok && i < PAR_DTYPE_COUNT; i++)
    ok = (torch_dtypes[i] = PyObject_GetAttrString(torch, names[i])) != NULL;
  s_dtype = PyUnicode_InternFromString("dtype");
  s_is_cpu = PyUnicode_InternFromString("is_cpu");
  s_layout = PyUnicode_InternFromString("layout");
  s_shape = PyUnicode_InternFromString("shape");
  s_stride = PyUnicode_InternFromString("stride");
  s_data_ptr = PyUnicode_InternFromString("data_ptr");
  if (!ok || !s_dtype || !s_is_cpu || !s_layout || !s_shape || !s_stride || !s_data_ptr) {
    PyErr_Clear(); /* an odd torch: the DLPack way still works */
    Py_XDECREF(tensor);
    return;
  }
  torch_tensor = tensor;
  torch_strided = strided;
  torch_bool = tbool;
}

static int attr_is(PyObject *o, PyObject *name, PyObject *want) {
  PyObject *v = PyObject_GetAttr(o, name);
  if (!v) {
    PyErr_Clear();
    return 0;
  }
  int r = want ? v == want : v == Py_True;
  Py_DECREF(v);
  return r;
}

/* Whether par may write into a tensor that requires grad: where torch itself would let an
 * in-place op do it, that is, unless it is a leaf while grad mode is on (torch raises "a leaf
 * Variable that requires grad is being used in an in-place operation"). Inside an autograd
 * Function's forward, under torch.no_grad(), or on an intermediate result, it may. 1: may,
 * 0: may not, with the exception set. */
static int may_write_grad_tensor(PyObject *o, const char *what) {
  PyObject *leaf = PyObject_GetAttrString(o, "is_leaf");
  int is_leaf = leaf ? PyObject_IsTrue(leaf) == 1 : 1;
  Py_XDECREF(leaf);
  PyErr_Clear();
  int grad_on = 1;
  PyObject *modules = PySys_GetObject("modules"); /* borrowed */
  PyObject *torch = modules ? PyDict_GetItemString(modules, "torch") : NULL;
  PyObject *on = torch ? PyObject_CallMethod(torch, "is_grad_enabled", NULL) : NULL;
  if (on) grad_on = PyObject_IsTrue(on) == 1;
  Py_XDECREF(on);
  PyErr_Clear();
  if (!(is_leaf && grad_on)) return 1;
  pypar_raisef(PAR_ERR_INVALID,
               "%s is a leaf tensor that requires grad, which torch does not let an in-place "
               "op write while grad mode is on; write it under torch.no_grad(), or pass "
               "tensor.detach() (it shares the memory)",
               what);
  return 0;
}

/* 1: done (a filled), 0: not a plain CPU tensor of a par dtype (use DLPack), -1: error. */
static int from_torch(PyObject *o, int access, const char *what, pyarr *a) {
  PyObject *dt = PyObject_GetAttr(o, s_dtype);
  if (!dt) return -1;
  int idx = -1;
  for (int i = 0; i < PAR_DTYPE_COUNT; i++)
    if (dt == torch_dtypes[i]) idx = i;
  int is_bool = dt == torch_bool;
  Py_DECREF(dt);
  if (is_bool) {
    pypar_raisef(PAR_ERR_DTYPE,
                 "%s has dtype torch.bool, which par does not support (float16/32/64, bfloat16, "
                 "int8/32/64, uint8)",
                 what);
    return -1;
  }
  if (idx < 0 || !attr_is(o, s_is_cpu, NULL) || !attr_is(o, s_layout, torch_strided)) return 0;
  if (access == PYARR_WRITE && attr_is(o, s_requires_grad, NULL) &&
      !may_write_grad_tensor(o, what))
    return -1;
  PyObject *shape = PyObject_GetAttr(o, s_shape);
  PyObject *strides = shape ? PyObject_CallMethodObjArgs(o, s_stride, NULL) : NULL;
  PyObject *ptr = strides ? PyObject_CallMethodObjArgs(o, s_data_ptr, NULL) : NULL;
  int rc = -1;
  if (!ptr) goto done;
  Py_ssize_t nd = PyTuple_Size(shape);
  if (nd < 0 || nd > PYARR_MAX_DIMS || PyTuple_Size(strides) != nd) {
    if (!PyErr_Occurred())
      pypar_raisef(PAR_ERR_INVALID, "%s has %d dims; par takes at most %d", what, (int)nd,
                   PYARR_MAX_DIMS);
    goto done;
  }
  static const DLDataType dls[PAR_DTYPE_COUNT] = {
      {kDLFloat, 32, 1}, {kDLFloat, 64, 1}, {kDLFloat, 16, 1}, {kDLBfloat, 16, 1},
      {kDLInt, 8, 1},    {kDLUInt, 8, 1},   {kDLInt, 32, 1},   {kDLInt, 64, 1}};
  a->dt = (par_dtype)idx;
  a->dl = dls[idx];
  a->ndim = (int)nd;
  a->base = PyLong_AsVoidPtr(ptr);
  for (int d = 0; d < a->ndim; d++) {
    a->shape[d] = PyLong_AsLongLong(PyTuple_GetItem(shape, d));
    a->strides[d] = PyLong_AsLongLong(PyTuple_GetItem(strides, d));
  }
  if (PyErr_Occurred()) goto done;
  Py_INCREF(o);
  a->owner = o; /* the tensor keeps its storage alive */
  rc = finish_layout(a, access, what) < 0 ? -1 : 1;
done:
  Py_XDECREF(shape);
  Py_XDECREF(strides);
  Py_XDECREF(ptr);
  return rc;
}

/* ---- The entry point --------------------------------------------------------------------- */

/* numpy.asarray(memoryview(o)): a numpy view of any buffer-protocol object. */
static PyObject *buffer_view(PyObject *o, const char *what) {
  PyObject *mv = PyMemoryView_FromObject(o);
  if (!mv) {
    PyErr_Clear();
    PyErr_Format(PyExc_TypeError,
                 "%s must be a tensor or array (an object with __dlpack__ or the buffer "
                 "protocol), not %s",
                 what, type_name(o));
    return NULL;
  }
  if (!s_numpy) s_numpy = PyImport_ImportModule("numpy");
  if (!s_numpy) {
    Py_DECREF(mv);
    return NULL;
  }
  PyObject *arr = PyObject_CallMethod(s_numpy, "asarray", "O", mv);
  Py_DECREF(mv);
  return arr;
}

static int get(PyObject *o, int access, const char *what, pyarr *a, int depth) {
  torch_init();
  if (torch_tensor && PyObject_TypeCheck(o, (PyTypeObject *)torch_tensor)) {
    int rc = from_torch(o, access, what, a);
    if (rc != 0) return rc < 0 ? -1 : 0;
  }
  PyObject *meth = PyObject_GetAttr(o, s_dlpack);
  if (!meth) {
    if (!PyErr_ExceptionMatches(PyExc_AttributeError) || depth > 0) return -1;
    PyErr_Clear();
    PyObject *arr = buffer_view(o, what);
    if (!arr) return -1;
    int rc = get(arr, access, what, a, depth + 1);
    Py_DECREF(arr);
    return rc;
  }
  PyObject *cap = PyObject_CallObject(meth, NULL);
  Py_DECREF(meth);
  if (cap) {
    int rc = from_capsule(cap, access, what, a);
    Py_DECREF(cap);
    return rc;
  }
  /* DLPack refused. A tensor that requires grad may still be read through a detached view;
   * a numpy array that is read-only (or of a dtype DLPack lacks) through its interface. */
  PyObject *type, *value, *tb;
  PyErr_Fetch(&type, &value, &tb);
  PyObject *rg = PyObject_GetAttr(o, s_requires_grad);
  int requires_grad = rg ? PyObject_IsTrue(rg) == 1 : 0;
  Py_XDECREF(rg);
  PyErr_Clear();
  if (requires_grad) {
    Py_XDECREF(type);
    Py_XDECREF(value);
    Py_XDECREF(tb);
    if (access == PYARR_WRITE && !may_write_grad_tensor(o, what)) return -1;
    /* The detached view shares the memory: what par writes there, the tensor sees. */
    PyObject *det = PyObject_CallMethodObjArgs(o, s_detach, NULL);
    if (!det) return -1;
    int rc = get(det, access, what, a, depth + 1);
    Py_DECREF(det);
    return rc;
  }
  PyObject *ai = PyObject_GetAttr(o, s_array_interface);
  if (ai && PyDict_Check(ai)) {
    Py_XDECREF(type);
    Py_XDECREF(value);
    Py_XDECREF(tb);
    int rc = from_array_interface(o, ai, access, what, a);
    Py_DECREF(ai);
    return rc;
  }
  Py_XDECREF(ai);
  PyErr_Restore(type, value, tb);
  return -1;
}

int pyarr_get(PyObject *o, int access, const char *what, pyarr *a) {
  memset(a, 0, sizeof *a);
  if (strings_init() < 0) return -1;
  if (get(o, access, what, a, 0) < 0) {
    pyarr_release(a);
    return -1;
  }
  Py_INCREF(o);
  a->obj = o;
  return 0;
}
