/*
 * work.c -- par.Work, the handle an async op returns (async_op=True, isend, irecv).
 *
 * A Work holds the op's par_work and the arrays it uses, so their memory stays alive until the
 * op is over, however the caller drops its own references. The op finishes exactly once: on
 * wait(), on an is_completed() that finds it done, on par.destroy(), or when the Work is
 * collected (which waits for it, as par_work_free does). Finishing copies the results of
 * strided outputs back from their packed temporaries, frees the par_work and lets the arrays
 * go. wait() returns True as torch's does, or the op's result where there is one (the
 * gathered tensor of par.parallel's gather).
 */
#include <string.h>

#include "pypar.h"

PyTypeObject *pypar_work_type;
/* Pending works, so par.destroy() can finish them before the groups go away. */
static pywork *pending;

static void track(pywork *pw) {
  pw->prev = NULL;
  pw->next = pending;
  if (pending) pending->prev = pw;
  pending = pw;
}

static void untrack(pywork *pw) {
  if (pw->prev)
    pw->prev->next = pw->next;
  else if (pending == pw)
    pending = pw->next;
  if (pw->next) pw->next->prev = pw->prev;
  pw->next = pw->prev = NULL;
}

/* Completes a work that par_work_wait or par_work_test reported done with status s. Called
 * with the GIL released for the copies, then holding it for the references. */
static void settle_nogil(pywork *pw, par_status s) {
  pw->status = s;
  if (s == PAR_OK)
    for (int i = 0; i < pw->narr; i++) pyarr_finish(&pw->arr[i]);
  snprintf(pw->error, sizeof pw->error, "%s", s == PAR_OK ? "" : par_work_error(pw->w));
  par_work_free(pw->w);
  pw->w = NULL;
}

static void settle_gil(pywork *pw) {
  for (int i = 0; i < pw->narr; i++) pyarr_release(&pw->arr[i]);
  pw->narr = 0;
  Py_CLEAR(pw->group);
  pw->done = 1;
  untrack(pw);
}

PyObject *pywork_new(par_work *w, pyarr *arrs, int narr, PyObject *group, PyObject *result) {
  pywork *pw = PyObject_New(pywork, pypar_work_type);
  if (!pw) {
    par_work_wait(w, -1);
    for (int i = 0; i < narr; i++) {
      pyarr_finish(&arrs[i]);
      pyarr_release(&arrs[i]);
    }
    par_work_free(w);
    return NULL;
  }
  pw->w = w;
  memcpy(pw->arr, arrs, sizeof(pyarr) * (size_t)narr);
  pw->narr = narr;
  Py_XINCREF(group);
  pw->group = group;
  Py_XINCREF(result);
  pw->result = result;
  pw->status = PAR_IN_PROGRESS;
  pw->error[0] = '\0';
  pw->done = 0;
  track(pw);
  return (PyObject *)pw;
}

void pywork_finish_all(void) { pywork_finish_if(NULL, NULL); }

void pywork_finish_if(int (*pred)(pygroup *g, void *ctx), void *ctx) {
  for (;;) {
    pywork *pw = pending;
    while (pw && pred && !pred((pygroup *)pw->group, ctx)) pw = pw->next;
    if (!pw) return;
    par_status s;
    Py_BEGIN_ALLOW_THREADS
    s = par_work_wait(pw->w, -1);
    settle_nogil(pw, s);
    Py_END_ALLOW_THREADS
    settle_gil(pw);
  }
}

static PyObject *outcome(pywork *pw) {
  if (pw->status != PAR_OK) return pypar_raise(pw->status, pw->error);
  if (pw->result) {
    Py_INCREF(pw->result);
    return pw->result;
  }
  Py_RETURN_TRUE;
}

static PyObject *work_wait(PyObject *self, PyObject *args, PyObject *kw) {
  static char *kwlist[] = {"timeout", NULL};
  PyObject *tobj = Py_None;
  if (!PyArg_ParseTupleAndKeywords(args, kw, "|O", kwlist, &tobj)) return NULL;
  double t = -1.0;
  if (tobj != Py_None && pypar_timeout(tobj, &t) < 0) return NULL;
  pywork *pw = (pywork *)self;
  if (pw->done) return outcome(pw);
  par_status s;
  int still_pending = 0;
  Py_BEGIN_ALLOW_THREADS
  s = par_work_wait(pw->w, t);
  if (s == PAR_ERR_TIMEOUT && par_work_test(pw->w) == PAR_IN_PROGRESS)
    still_pending = 1;
  else
    settle_nogil(pw, s);
  Py_END_ALLOW_THREADS
  if (still_pending)
    return pypar_raisef(PAR_ERR_TIMEOUT,
                        "Work.wait: still pending after %g s (the op goes on; wait again)", t);
  settle_gil(pw);
  return outcome(pw);
}

static PyObject *work_is_completed(PyObject *self, PyObject *unused) {
  (void)unused;
  pywork *pw = (pywork *)self;
  if (pw->done) Py_RETURN_TRUE;
  par_status s = par_work_test(pw->w);
  if (s == PAR_IN_PROGRESS) Py_RETURN_FALSE;
  Py_BEGIN_ALLOW_THREADS
  settle_nogil(pw, s);
  Py_END_ALLOW_THREADS
  settle_gil(pw);
  Py_RETURN_TRUE;
}

static PyObject *work_is_success(PyObject *self, PyObject *unused) {
  pywork *pw = (pywork *)self;
  PyObject *c = work_is_completed(self, unused);
  if (!c) return NULL;
  Py_DECREF(c);
  return PyBool_FromLong(pw->done && pw->status == PAR_OK);
}

static PyObject *work_exception(PyObject *self, PyObject *unused) {
  pywork *pw = (pywork *)self;
  PyObject *c = work_is_completed(self, unused);
  if (!c) return NULL;
  Py_DECREF(c);
  if (!pw->done || pw->status == PAR_OK) Py_RETURN_NONE;
  pypar_raise(pw->status, pw->error);
  PyObject *type, *value, *tb;
  PyErr_Fetch(&type, &value, &tb);
  Py_XDECREF(type);
  Py_XDECREF(tb);
  return value;
}

static void work_dealloc(PyObject *self) {
  pywork *pw = (pywork *)self;
  PyTypeObject *tp = Py_TYPE(self);
  if (!pw->done) {
    /* Dropped without a wait: the op still has to end before its arrays may go. */
    par_status s;
    Py_BEGIN_ALLOW_THREADS
    s = par_work_wait(pw->w, -1);
    settle_nogil(pw, s);
    Py_END_ALLOW_THREADS
    settle_gil(pw);
  }
  Py_XDECREF(pw->result);
  PyObject_Free(self);
  Py_DECREF(tp);
}

static PyObject *work_repr(PyObject *self) {
  pywork *pw = (pywork *)self;
  if (!pw->done) return PyUnicode_FromString("par.Work(pending)");
  return PyUnicode_FromFormat("par.Work(%s)", par_status_name(pw->status));
}

static PyMethodDef work_methods[] = {
    {"wait", (PyCFunction)(void (*)(void))work_wait, METH_VARARGS | METH_KEYWORDS,
     "wait(timeout=None): blocks until the op is done (at most timeout seconds: then "
     "par.TimeoutError, and the op stays pending). Returns True, or the op's result (the "
     "gathered tensor of par.parallel's gather); raises the op's error."},
    {"is_completed", work_is_completed, METH_NOARGS,
     "is_completed(): whether the op is over (successfully or not). Never blocks."},
    {"is_success", work_is_success, METH_NOARGS, "is_success(): completed without error"},
    {"exception", work_exception, METH_NOARGS, "exception(): the op's error, or None"},
    {NULL, NULL, 0, NULL}};

static PyType_Slot work_slots[] = {{Py_tp_dealloc, work_dealloc},
                                   {Py_tp_methods, work_methods},
                                   {Py_tp_repr, work_repr},
                                   {Py_tp_doc, "The handle of an async op."},
                                   {0, NULL}};

static PyType_Spec work_spec = {"par.Work", sizeof(pywork), 0, Py_TPFLAGS_DEFAULT, work_slots};

int pypar_work_init(PyObject *module) {
  pypar_work_type = (PyTypeObject *)PyType_FromSpec(&work_spec);
  if (!pypar_work_type) return -1;
  Py_INCREF(pypar_work_type);
  return PyModule_AddObject(module, "Work", (PyObject *)pypar_work_type);
}
