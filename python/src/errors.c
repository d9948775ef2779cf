/*
 * errors.c -- par's statuses as Python exceptions: par.Error, and one subclass per status
 * (par.TimeoutError, par.PeerLostError, par.MismatchError, ...), each also deriving from the
 * built-in exception a Python programmer would catch for it (TimeoutError, ValueError,
 * TypeError, ...). An exception carries the detail message of the C call that failed, and
 * its status as .status (the negative code) and .status_name ("PAR_ERR_TIMEOUT").
 */
#include <stdarg.h>
#include <stdio.h>

#include "pypar.h"

typedef struct err_class {
  par_status status;
  const char *name;   /* the Python name, in module par */
  PyObject **builtin; /* the built-in base next to par.Error, or NULL */
  PyObject *cls;
} err_class;

static PyObject *error_base;

static err_class classes[] = {
    {PAR_ERR_INVALID, "InvalidArgumentError", &PyExc_ValueError, NULL},
    {PAR_ERR_NULL, "NullError", &PyExc_ValueError, NULL},
    {PAR_ERR_DTYPE, "DtypeError", &PyExc_TypeError, NULL},
    {PAR_ERR_OP, "OpError", &PyExc_ValueError, NULL},
    {PAR_ERR_COUNT, "CountError", &PyExc_ValueError, NULL},
    {PAR_ERR_RANK, "RankError", &PyExc_ValueError, NULL},
    {PAR_ERR_NOT_MEMBER, "NotMemberError", &PyExc_ValueError, NULL},
    {PAR_ERR_STATE, "StateError", &PyExc_RuntimeError, NULL},
    {PAR_ERR_NOMEM, "NoMemoryError", &PyExc_MemoryError, NULL},
    {PAR_ERR_SYSTEM, "SystemCallError", &PyExc_OSError, NULL},
    {PAR_ERR_TIMEOUT, "TimeoutError", &PyExc_TimeoutError, NULL},
    {PAR_ERR_PEER_LOST, "PeerLostError", &PyExc_ConnectionError, NULL},
    {PAR_ERR_ABORTED, "AbortedError", &PyExc_RuntimeError, NULL},
    {PAR_ERR_BOOTSTRAP, "BootstrapError", &PyExc_ConnectionError, NULL},
    {PAR_ERR_AUTH, "AuthError", &PyExc_PermissionError, NULL},
    {PAR_ERR_UNSUPPORTED, "UnsupportedError", &PyExc_ValueError, NULL},
    {PAR_ERR_MISMATCH, "MismatchError", &PyExc_RuntimeError, NULL},
    {PAR_ERR_PROTOCOL, "ProtocolError", &PyExc_RuntimeError, NULL},
    {PAR_ERR_INTERNAL, "InternalError", &PyExc_RuntimeError, NULL},
};
#define NCLASSES (sizeof classes / sizeof classes[0])

PyObject *pypar_raise(par_status s, const char *detail) {
  PyObject *cls = error_base;
  for (size_t i = 0; i < NCLASSES; i++)
    if (classes[i].status == s) cls = classes[i].cls;
  const char *msg = detail && *detail ? detail : par_status_string(s);
  PyObject *exc = PyObject_CallFunction(cls, "s", msg);
  if (!exc) return NULL;
  PyObject *code = PyLong_FromLong((long)s);
  PyObject *name = PyUnicode_FromString(par_status_name(s));
  PyObject *det = PyUnicode_FromString(detail ? detail : "");
  if (code && name && det) {
    PyObject_SetAttrString(exc, "status", code);
    PyObject_SetAttrString(exc, "status_name", name);
    PyObject_SetAttrString(exc, "detail", det);
  }
  Py_XDECREF(code);
  Py_XDECREF(name);
  Py_XDECREF(det);
  PyErr_SetObject(cls, exc);
  Py_DECREF(exc);
  return NULL;
}

PyObject *pypar_raisef(par_status s, const char *fmt, ...) {
  char buf[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  return pypar_raise(s, buf);
}

const char *pypar_utf8(PyObject *o, char *buf, size_t cap) {
  if (!o) return NULL;
  PyObject *b = PyUnicode_AsUTF8String(o);
  if (!b) return NULL;
  const char *s = PyBytes_AsString(b);
  if (s) snprintf(buf, cap, "%s", s);
  Py_DECREF(b);
  return s ? buf : NULL;
}

int pypar_errors_init(PyObject *m) {
  error_base = PyErr_NewExceptionWithDoc(
      "par.Error",
      "Base of par's exceptions. .status is the par_status code, .status_name its name "
      "(PAR_ERR_...), .detail the C library's detail message.",
      NULL, NULL);
  if (!error_base) return -1;
  Py_INCREF(error_base);
  if (PyModule_AddObject(m, "Error", error_base) < 0) return -1;
  for (size_t i = 0; i < NCLASSES; i++) {
    char qual[64];
    snprintf(qual, sizeof qual, "par.%s", classes[i].name);
    PyObject *bases = PyTuple_Pack(2, error_base, *classes[i].builtin);
    if (!bases) return -1;
    classes[i].cls = PyErr_NewException(qual, bases, NULL);
    Py_DECREF(bases);
    if (!classes[i].cls) return -1;
    Py_INCREF(classes[i].cls);
    if (PyModule_AddObject(m, classes[i].name, classes[i].cls) < 0) return -1;
  }
  return 0;
}
