/*
 * group.c -- par.Group, a process group as Python sees it, and par.new_group.
 *
 * A Group wraps a par_group it may or may not own: the world's group (owned by the world),
 * a group made by new_group (owned by the object, and destroyed by par.destroy() at the
 * latest, since the world must outlive its groups), a group of a par.Mesh (owned by the mesh,
 * which the Group keeps alive), or a group of the default mesh of par.parallel (owned by it
 * until reset_parallelism()). Each op checks that the group still exists, so a stale Group
 * raises par.StateError instead of touching freed memory. As in torch, every rank calls
 * new_group with the same list; a rank outside it gets a Group it may not use.
 */
#include <stdlib.h>
#include <string.h>

#include "pypar.h"

PyTypeObject *pypar_group_type;
PyObject *pypar_default_group;
static pygroup *owned_head;

static void link_owned(pygroup *pg) {
  pg->next = owned_head;
  pg->prev = NULL;
  if (owned_head) owned_head->prev = pg;
  owned_head = pg;
}

static void unlink_owned(pygroup *pg) {
  if (pg->prev)
    pg->prev->next = pg->next;
  else if (owned_head == pg)
    owned_head = pg->next;
  if (pg->next) pg->next->prev = pg->prev;
  pg->next = pg->prev = NULL;
}

static PyObject *ranks_tuple(const int *ranks, int n) {
  PyObject *t = PyTuple_New(n);
  if (!t) return NULL;
  for (int i = 0; i < n; i++) {
    PyObject *v = PyLong_FromLong(ranks[i]);
    if (!v) {
      Py_DECREF(t);
      return NULL;
    }
    PyTuple_SetItem(t, i, v);
  }
  return t;
}

static pygroup *alloc_group(void) {
  pygroup *pg = PyObject_New(pygroup, pypar_group_type);
  if (!pg) return NULL;
  pg->g = NULL;
  pg->source = PYGROUP_NONMEMBER;
  pg->epoch = 0;
  pg->mesh = NULL;
  pg->ranks = NULL;
  pg->index = -1;
  pg->size = 0;
  pg->next = pg->prev = NULL;
  return pg;
}

PyObject *pygroup_new(par_group *g, pygroup_source source, PyObject *mesh) {
  pygroup *pg = alloc_group();
  if (!pg) return NULL;
  pg->ranks = ranks_tuple(par_group_ranks(g), par_group_size(g));
  if (!pg->ranks) {
    Py_DECREF(pg);
    return NULL;
  }
  pg->g = g;
  pg->source = source;
  pg->index = par_group_index(g);
  pg->size = par_group_size(g);
  pg->epoch = source == PYGROUP_DEFAULT ? pypar_default_epoch : pypar_world_epoch;
  if (mesh) {
    Py_INCREF(mesh);
    pg->mesh = mesh;
  }
  if (source == PYGROUP_OWNED) link_owned(pg);
  return (PyObject *)pg;
}

par_group *pygroup_get(PyObject *o, pygroup **out) {
  if (pypar_need_world() < 0) return NULL;
  if (o == NULL || o == Py_None) o = pypar_default_group;
  PyObject *inner = NULL;
  if (!PyObject_TypeCheck(o, pypar_group_type)) {
    /* par.parallel's GroupInfo (and anything else that carries one) stands for its .group. */
    inner = PyObject_GetAttrString(o, "group");
    if (inner && PyObject_TypeCheck(inner, pypar_group_type)) {
      par_group *g = pygroup_get(inner, out);
      Py_DECREF(inner); /* the caller's object keeps the Group alive */
      return g;
    }
    Py_XDECREF(inner);
    PyErr_Clear();
    PyErr_SetString(PyExc_TypeError,
                    "group must be a par.Group (from par.new_group, a "
                    "par.Mesh or par.parallel) or None");
    return NULL;
  }
  pygroup *pg = (pygroup *)o;
  if (pg->source == PYGROUP_NONMEMBER) {
    PyObject *r = PyObject_Repr(pg->ranks);
    char rb[256];
    pypar_raisef(PAR_ERR_NOT_MEMBER, "rank %d is not a member of this group (ranks %s)",
                 par_world_rank(pypar_world), pypar_utf8(r, rb, sizeof rb) ? rb : "?");
    Py_XDECREF(r);
    return NULL;
  }
  const char *stale = NULL;
  if (!pg->g)
    stale = "the group was destroyed";
  else if (pg->epoch != pypar_world_epoch && pg->source != PYGROUP_DEFAULT)
    stale = "the group belongs to a world that par.destroy() ended";
  else if (pg->source == PYGROUP_DEFAULT && pg->epoch != pypar_default_epoch)
    stale = "the group belongs to a parallel layout that reset_parallelism() ended";
  else if (pg->source == PYGROUP_MESH && !((pymesh *)pg->mesh)->m)
    stale = "the group belongs to a par.Mesh that was destroyed";
  if (stale) {
    pypar_raisef(PAR_ERR_STATE, "%s", stale);
    return NULL;
  }
  if (out) *out = pg;
  return pg->g;
}

int pygroup_index_of(pygroup *pg, long rank, const char *what) {
  for (int i = 0; i < pg->size; i++)
    if (PyLong_AsLong(PyTuple_GetItem(pg->ranks, i)) == rank) return i;
  PyObject *r = PyObject_Repr(pg->ranks);
  char rb[256];
  pypar_raisef(PAR_ERR_RANK, "%s %ld is not a member of the group (global ranks %s)", what, rank,
               pypar_utf8(r, rb, sizeof rb) ? rb : "?");
  Py_XDECREF(r);
  return -1;
}

void pygroup_destroy_owned(void) {
  while (owned_head) {
    pygroup *pg = owned_head;
    unlink_owned(pg);
    par_group_destroy(pg->g);
    pg->g = NULL;
  }
}

/* ---- The type ---------------------------------------------------------------------------- */

static void group_dealloc(PyObject *self) {
  pygroup *pg = (pygroup *)self;
  PyTypeObject *tp = Py_TYPE(self);
  if (pg->source == PYGROUP_OWNED && pg->g) {
    unlink_owned(pg);
    par_group_destroy(pg->g);
  }
  Py_XDECREF(pg->mesh);
  Py_XDECREF(pg->ranks);
  PyObject_Free(self);
  Py_DECREF(tp);
}

static PyObject *group_get_ranks(PyObject *self, void *c) {
  (void)c;
  PyObject *r = ((pygroup *)self)->ranks;
  return PySequence_List(r);
}

static PyObject *group_get_rank(PyObject *self, void *c) {
  (void)c;
  return PyLong_FromLong(((pygroup *)self)->index);
}

static PyObject *group_get_size(PyObject *self, void *c) {
  (void)c;
  return PyLong_FromLong(((pygroup *)self)->size);
}

static PyObject *group_get_is_member(PyObject *self, void *c) {
  (void)c;
  return PyBool_FromLong(((pygroup *)self)->source != PYGROUP_NONMEMBER);
}

static PyObject *group_get_backend(PyObject *self, void *c) {
  (void)c;
  par_group *g = pygroup_get(self, NULL);
  return g ? PyUnicode_FromString(par_backend_name(par_group_backend(g))) : NULL;
}

static PyObject *group_get_name(PyObject *self, void *c) {
  (void)c;
  par_group *g = pygroup_get(self, NULL);
  return g ? PyUnicode_FromString(par_group_name(g)) : NULL;
}

static PyGetSetDef group_getset[] = {
    {"ranks", group_get_ranks, NULL, "the members' global ranks, in index order", NULL},
    {"rank", group_get_rank, NULL, "this rank's index in the group (-1: not a member)", NULL},
    {"size", group_get_size, NULL, "the number of members", NULL},
    {"is_member", group_get_is_member, NULL, "whether this rank is in the group", NULL},
    {"backend", group_get_backend, NULL, "the backend's name (shm, mpi, ...)", NULL},
    {"name", group_get_name, NULL, "the name used in log and error messages", NULL},
    {NULL, NULL, NULL, NULL, NULL}};

static PyObject *group_set_timeout(PyObject *self, PyObject *arg) {
  par_group *g = pygroup_get(self, NULL);
  if (!g) return NULL;
  double t = PyFloat_AsDouble(arg);
  if (t == -1.0 && PyErr_Occurred()) return NULL;
  par_status s = par_group_set_timeout(g, t);
  if (s != PAR_OK) return pypar_raise(s, par_group_last_error(g));
  Py_RETURN_NONE;
}

static PyObject *group_abort(PyObject *self, PyObject *unused) {
  (void)unused;
  par_group *g = pygroup_get(self, NULL);
  if (!g) return NULL;
  par_group_abort(g);
  Py_RETURN_NONE;
}

static int is_group(pygroup *g, void *ctx) { return g == ctx; }

static PyObject *group_destroy(PyObject *self, PyObject *unused) {
  (void)unused;
  pygroup *pg = (pygroup *)self;
  if (pg->source != PYGROUP_OWNED)
    return pypar_raisef(PAR_ERR_STATE,
                        "only groups made by par.new_group can be destroyed; "
                        "this one belongs to the world or a mesh");
  if (pg->g) {
    pywork_finish_if(is_group, pg); /* a pending work must not outlive its group */
    unlink_owned(pg);
    par_group_destroy(pg->g);
    pg->g = NULL;
  }
  Py_RETURN_NONE;
}

static PyObject *group_repr(PyObject *self) {
  pygroup *pg = (pygroup *)self;
  PyObject *l = PySequence_List(pg->ranks);
  PyObject *r = l ? PyObject_Repr(l) : NULL;
  Py_XDECREF(l);
  if (!r) return NULL;
  PyObject *s = PyUnicode_FromFormat("par.Group(ranks=%U, rank=%d)", r, pg->index);
  Py_DECREF(r);
  return s;
}

static PyMethodDef group_methods[] = {
    {"set_timeout", group_set_timeout, METH_O, "set_timeout(seconds): per-op timeout from now on"},
    {"abort", group_abort, METH_NOARGS,
     "abort(): every pending and later op of the group fails with par.AbortedError"},
    {"destroy", group_destroy, METH_NOARGS, "destroy(): frees a group made by new_group"},
    {NULL, NULL, 0, NULL}};

static PyType_Slot group_slots[] = {
    {Py_tp_dealloc, group_dealloc},
    {Py_tp_getset, group_getset},
    {Py_tp_methods, group_methods},
    {Py_tp_repr, group_repr},
    {Py_tp_doc,
     "A process group. Made by par.new_group, par.Mesh, par.parallel, or the default "
     "group of par.init (group=None)."},
    {0, NULL}};

static PyType_Spec group_spec = {"par.Group", sizeof(pygroup), 0, Py_TPFLAGS_DEFAULT, group_slots};

/* ---- new_group --------------------------------------------------------------------------- */

static PyObject *new_group(PyObject *m, PyObject *args, PyObject *kw) {
  (void)m;
  static char *kwlist[] = {"ranks", "timeout", "backend", "name", NULL};
  PyObject *ranks_obj = Py_None, *timeout_obj = Py_None;
  double timeout = 0.0;
  const char *backend = NULL, *name = NULL;
  if (!PyArg_ParseTupleAndKeywords(args, kw, "|OOzz", kwlist, &ranks_obj, &timeout_obj, &backend,
                                   &name) ||
      pypar_timeout(timeout_obj, &timeout) < 0)
    return NULL;
  if (pypar_need_world() < 0) return NULL;
  int world = par_world_size(pypar_world), me = par_world_rank(pypar_world);
  int n = world;
  int *ranks = NULL;
  PyObject *seq = NULL;
  if (ranks_obj != Py_None) {
    seq = PySequence_List(ranks_obj);
    if (!seq) return NULL;
    n = (int)PyList_Size(seq);
  }
  ranks = malloc(sizeof *ranks * (size_t)(n > 0 ? n : 1));
  if (!ranks) {
    Py_XDECREF(seq);
    return PyErr_NoMemory();
  }
  int member = 0;
  for (int i = 0; i < n; i++) {
    ranks[i] = seq ? (int)PyLong_AsLong(PyList_GetItem(seq, i)) : i;
    if (ranks[i] == me) member = 1;
  }
  Py_XDECREF(seq);
  if (PyErr_Occurred()) {
    free(ranks);
    return NULL;
  }
  for (int i = 0; i < n; i++)
    if (ranks[i] < 0 || ranks[i] >= world) {
      int r = ranks[i];
      free(ranks);
      return pypar_raisef(PAR_ERR_RANK, "new_group: rank %d is out of range (world of %d)", r,
                          world);
    }
  if (!member) {
    pygroup *pg = alloc_group();
    if (pg) {
      pg->ranks = ranks_tuple(ranks, n);
      pg->size = n;
      if (!pg->ranks) Py_CLEAR(pg);
    }
    free(ranks);
    return (PyObject *)pg;
  }
  par_group_options o = PAR_GROUP_OPTIONS_INIT;
  o.timeout_s = timeout;
  o.name = name;
  if (backend && par_backend_parse(backend, &o.backend) != PAR_OK) {
    free(ranks);
    return pypar_raise(PAR_ERR_INVALID, par_last_error());
  }
  par_group *g = NULL;
  par_status s;
  Py_BEGIN_ALLOW_THREADS
  s = par_group_create(pypar_world, ranks, n, &o, &g);
  Py_END_ALLOW_THREADS
  free(ranks);
  if (s != PAR_OK) return pypar_raise(s, par_world_last_error(pypar_world));
  PyObject *r = pygroup_new(g, PYGROUP_OWNED, NULL);
  if (!r) par_group_destroy(g);
  return r;
}

PyMethodDef pypar_group_methods[] = {
    {"new_group", (PyCFunction)(void (*)(void))new_group, METH_VARARGS | METH_KEYWORDS,
     "new_group(ranks=None, timeout=None, backend=None, name=None): a group of the given "
     "global ranks (None: all), in that order. Every rank calls it with the same list, as in "
     "torch; a rank outside the list gets a Group it cannot use."},
    {NULL, NULL, 0, NULL}};

int pypar_group_init(PyObject *module) {
  pypar_group_type = (PyTypeObject *)PyType_FromSpec(&group_spec);
  if (!pypar_group_type) return -1;
  Py_INCREF(pypar_group_type);
  return PyModule_AddObject(module, "Group", (PyObject *)pypar_group_type);
}
