/*
 * module.c -- the par._par extension module: the process-wide world (par.init, par.destroy,
 * get_rank, get_world_size, ...), logging, and the assembly of the other files' functions and
 * types into one module.
 *
 * A process has at most one world at a time, as torch has one default process group.
 * par.init() creates it from the launcher's environment (parrun, torchrun, mpirun, srun; none:
 * a world of one) and makes the default group that group=None means: the world's own group,
 * or, when a backend is asked for that the world group does not use, a group of all ranks on
 * that backend. par.destroy() finishes pending works, then destroys meshes, groups and the
 * world in that order (the world must outlive its groups), and leaves every Python object
 * that pointed into them stale rather than dangling.
 */
#include <string.h>

#include "pypar.h"

par_world *pypar_world;
unsigned long pypar_world_epoch = 1;
unsigned long pypar_default_epoch = 1;
static par_group *own_default; /* the default group when par.init made one for a backend */

int pypar_need_world(void) {
  if (pypar_world) return 0;
  pypar_raisef(PAR_ERR_STATE, "par is not initialised: call par.init() first");
  return -1;
}

int pypar_timeout(PyObject *o, double *out) {
  *out = 0.0;
  if (!o || o == Py_None) return 0;
  PyObject *secs = NULL;
  if (PyObject_HasAttrString(o, "total_seconds")) { /* datetime.timedelta */
    secs = PyObject_CallMethod(o, "total_seconds", NULL);
    if (!secs) return -1;
    o = secs;
  }
  double v = PyFloat_AsDouble(o);
  Py_XDECREF(secs);
  if (v == -1.0 && PyErr_Occurred()) return -1;
  if (v < 0) {
    pypar_raisef(PAR_ERR_INVALID, "a timeout must be >= 0 seconds (got %g)", v);
    return -1;
  }
  *out = v;
  return 0;
}

static PyObject *init(PyObject *m, PyObject *args, PyObject *kw) {
  (void)m;
  static char *kwlist[] = {"backend", "timeout", NULL};
  PyObject *backend_obj = Py_None, *timeout_obj = Py_None;
  if (!PyArg_ParseTupleAndKeywords(args, kw, "|OO", kwlist, &backend_obj, &timeout_obj))
    return NULL;
  if (pypar_world)
    return pypar_raisef(PAR_ERR_STATE,
                        "par.init() was already called; call par.destroy() "
                        "before initialising again");
  par_world_options o = PAR_WORLD_OPTIONS_INIT;
  if (pypar_timeout(timeout_obj, &o.timeout_s) < 0) return NULL;
  par_backend want = PAR_BACKEND_AUTO;
  if (backend_obj != Py_None) {
    char bb[32];
    const char *b = PyUnicode_Check(backend_obj) ? pypar_utf8(backend_obj, bb, sizeof bb) : NULL;
    if (!b) {
      PyErr_SetString(PyExc_TypeError, "backend must be a string ('shm', 'mpi', 'auto') or None");
      return NULL;
    }
    /* A torch program's "gloo" means "the CPU backend": par's auto choice. */
    if (strcmp(b, "gloo") != 0 && par_backend_parse(b, &want) != PAR_OK)
      return pypar_raisef(PAR_ERR_INVALID, "par.init: %s", par_last_error());
  }
  par_world *w = NULL;
  par_status s;
  Py_BEGIN_ALLOW_THREADS
  s = par_world_create(&o, &w);
  Py_END_ALLOW_THREADS
  if (s != PAR_OK) return pypar_raise(s, par_last_error());
  par_group *g = par_world_group(w);
  if (want != PAR_BACKEND_AUTO && par_group_backend(g) != want) {
    int n = par_world_size(w);
    par_group_options go = PAR_GROUP_OPTIONS_INIT;
    go.backend = want;
    go.name = "default";
    const int *ranks = par_group_ranks(g);
    Py_BEGIN_ALLOW_THREADS
    s = par_group_create(w, ranks, n, &go, &own_default);
    Py_END_ALLOW_THREADS
    if (s != PAR_OK) {
      pypar_raise(s, par_world_last_error(w));
      par_world_destroy(w);
      return NULL;
    }
    g = own_default;
  }
  pypar_world = w;
  pypar_default_group = pygroup_new(g, PYGROUP_WORLD, NULL);
  if (!pypar_default_group) {
    par_group_destroy(own_default);
    own_default = NULL;
    par_world_destroy(w);
    pypar_world = NULL;
    return NULL;
  }
  Py_RETURN_NONE;
}

static PyObject *destroy(PyObject *m, PyObject *unused) {
  (void)m;
  (void)unused;
  if (!pypar_world) Py_RETURN_NONE;
  long live = pyalloc_live();
  if (live > 0)
    return pypar_raisef(PAR_ERR_STATE,
                        "par.destroy: %ld tensor(s) from par.empty() are still alive, and the "
                        "world's end would unmap their memory; delete them first",
                        live);
  pywork_finish_all();
  pymesh_destroy_all();
  if (par_parallelism_is_initialized()) {
    par_reset_parallelism();
    pypar_default_epoch++;
  }
  pygroup_destroy_owned();
  par_group_destroy(own_default);
  own_default = NULL;
  par_world *w = pypar_world;
  pypar_world = NULL;
  pypar_world_epoch++;
  Py_CLEAR(pypar_default_group);
  Py_BEGIN_ALLOW_THREADS
  par_world_destroy(w);
  Py_END_ALLOW_THREADS
  Py_RETURN_NONE;
}

static PyObject *is_initialized(PyObject *m, PyObject *unused) {
  (void)m;
  (void)unused;
  return PyBool_FromLong(pypar_world != NULL);
}

static PyObject *get_rank(PyObject *m, PyObject *args, PyObject *kw) {
  (void)m;
  static char *kwlist[] = {"group", NULL};
  PyObject *group = Py_None;
  if (!PyArg_ParseTupleAndKeywords(args, kw, "|O", kwlist, &group)) return NULL;
  if (group == Py_None) {
    if (pypar_need_world() < 0) return NULL;
    return PyLong_FromLong(par_world_rank(pypar_world));
  }
  if (PyObject_TypeCheck(group, pypar_group_type) &&
      ((pygroup *)group)->source == PYGROUP_NONMEMBER)
    return PyLong_FromLong(-1); /* as torch.distributed says for a group one is not in */
  pygroup *pg;
  if (!pygroup_get(group, &pg)) return NULL;
  return PyLong_FromLong(pg->index);
}

static PyObject *get_world_size(PyObject *m, PyObject *args, PyObject *kw) {
  (void)m;
  static char *kwlist[] = {"group", NULL};
  PyObject *group = Py_None;
  if (!PyArg_ParseTupleAndKeywords(args, kw, "|O", kwlist, &group)) return NULL;
  if (group == Py_None) {
    if (pypar_need_world() < 0) return NULL;
    return PyLong_FromLong(par_world_size(pypar_world));
  }
  if (PyObject_TypeCheck(group, pypar_group_type) &&
      ((pygroup *)group)->source == PYGROUP_NONMEMBER)
    return PyLong_FromLong(-1);
  pygroup *pg;
  if (!pygroup_get(group, &pg)) return NULL;
  return PyLong_FromLong(pg->size);
}

static PyObject *get_local_rank(PyObject *m, PyObject *unused) {
  (void)m;
  (void)unused;
  if (pypar_need_world() < 0) return NULL;
  return PyLong_FromLong(par_world_local_rank(pypar_world));
}

static PyObject *get_local_world_size(PyObject *m, PyObject *unused) {
  (void)m;
  (void)unused;
  if (pypar_need_world() < 0) return NULL;
  return PyLong_FromLong(par_world_local_size(pypar_world));
}

static PyObject *default_group(PyObject *m, PyObject *unused) {
  (void)m;
  (void)unused;
  if (pypar_need_world() < 0) return NULL;
  Py_INCREF(pypar_default_group);
  return pypar_default_group;
}

static PyObject *set_log_level(PyObject *m, PyObject *arg) {
  (void)m;
  static const char *names[] = {"off", "error", "warn", "info", "debug"};
  long lvl = -1;
  if (PyLong_Check(arg)) {
    lvl = PyLong_AsLong(arg);
  } else if (PyUnicode_Check(arg)) {
    char lb[16];
    const char *s = pypar_utf8(arg, lb, sizeof lb);
    for (int i = 0; s && i < 5; i++)
      if (!strcmp(s, names[i])) lvl = i;
  }
  if (lvl < PAR_LOG_OFF || lvl > PAR_LOG_DEBUG)
    return pypar_raisef(PAR_ERR_INVALID, "log level must be off, error, warn, info or debug");
  par_set_log_level((par_log_level)lvl);
  Py_RETURN_NONE;
}

static PyObject *get_log_level(PyObject *m, PyObject *unused) {
  (void)m;
  (void)unused;
  static const char *names[] = {"off", "error", "warn", "info", "debug"};
  par_log_level l = par_log_level_get();
  return PyUnicode_FromString((unsigned)l < 5 ? names[l] : "info");
}

#define KW(f) (PyCFunction)(void (*)(void))(f), METH_VARARGS | METH_KEYWORDS

static PyMethodDef world_methods[] = {
    {"init", KW(init),
     "init(backend=None, timeout=None): joins this process to the job's world (rank and size "
     "from parrun, torchrun, mpirun or srun; none: a world of one). Collective. backend: None "
     "or 'auto', 'shm', 'mpi' ('gloo' means auto); timeout: the default per-op timeout in "
     "seconds or a timedelta."},
    {"destroy", destroy, METH_NOARGS,
     "destroy(): waits for pending async ops, then frees every mesh, group and the world."},
    {"is_initialized", is_initialized, METH_NOARGS, "is_initialized()"},
    {"get_rank", KW(get_rank), "get_rank(group=None): global rank, or the index in group"},
    {"get_world_size", KW(get_world_size), "get_world_size(group=None)"},
    {"get_local_rank", get_local_rank, METH_NOARGS, "rank among the ranks on this host"},
    {"get_local_world_size", get_local_world_size, METH_NOARGS, "ranks on this host"},
    {"default_group", default_group, METH_NOARGS, "the group that group=None means"},
    {"set_log_level", set_log_level, METH_O,
     "set_log_level(level): 'off', 'error', 'warn', 'info' or 'debug'"},
    {"get_log_level", get_log_level, METH_NOARGS, "get_log_level()"},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef moduledef = {
    PyModuleDef_HEAD_INIT,
    "_par",
    "par's C extension; import par (the package) rather than this module.",
    -1,
    NULL,
    NULL,
    NULL,
    NULL,
    NULL};

PyMODINIT_FUNC PyInit__par(void) {
  PyObject *m = PyModule_Create(&moduledef);
  if (!m) return NULL;
  if (PyModule_AddFunctions(m, world_methods) < 0 ||
      PyModule_AddFunctions(m, pypar_op_methods) < 0 ||
      PyModule_AddFunctions(m, pypar_group_methods) < 0 ||
      PyModule_AddFunctions(m, pypar_mesh_methods) < 0 ||
      PyModule_AddFunctions(m, pypar_alloc_methods) < 0 || pypar_errors_init(m) < 0 ||
      pypar_group_init(m) < 0 || pypar_work_init(m) < 0 || pypar_mesh_init(m) < 0)
    goto fail;
  static const char *ops[] = {"SUM", "PROD", "MIN", "MAX", "AVG"};
  for (int i = 0; i < PAR_OP_COUNT; i++)
    if (PyModule_AddIntConstant(m, ops[i], i) < 0) goto fail;
  if (PyModule_AddStringConstant(m, "__version__", "0.1.0") < 0) goto fail;
  return m;
fail:
  Py_DECREF(m);
  return NULL;
}
