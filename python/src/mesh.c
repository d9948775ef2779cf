/*
 * mesh.c -- par.Mesh, a named mesh of groups over the world (par_mesh_create_layout), and the
 * process-wide default (dp, pp, mp) mesh that par.parallel drives (par_init_parallelism).
 *
 * A Mesh owns its par_mesh; the Groups it hands out keep the Mesh alive and go stale when it
 * is destroyed (mesh.destroy() or par.destroy()). The default mesh's Groups go stale on
 * reset_parallelism(). Creating either is collective over the world and blocks, so it runs
 * with the GIL released.
 */
#include <string.h>

#include "pypar.h"

PyTypeObject *pypar_mesh_type;
static pymesh *meshes;

static void unlink_mesh(pymesh *pm) {
  if (pm->prev)
    pm->prev->next = pm->next;
  else if (meshes == pm)
    meshes = pm->next;
  if (pm->next) pm->next->prev = pm->prev;
  pm->next = pm->prev = NULL;
}

void pymesh_destroy_all(void) {
  while (meshes) {
    pymesh *pm = meshes;
    unlink_mesh(pm);
    par_mesh_destroy(pm->m);
    pm->m = NULL;
  }
}

static par_mesh *live(PyObject *self) {
  if (pypar_need_world() < 0) return NULL;
  pymesh *pm = (pymesh *)self;
  if (!pm->m) pypar_raisef(PAR_ERR_STATE, "the mesh was destroyed");
  return pm->m;
}

static PyObject *mesh_new(PyTypeObject *type, PyObject *args, PyObject *kw) {
  static char *kwlist[] = {"names", "sizes", "backends", NULL};
  PyObject *names_obj, *sizes_obj, *backends_obj = Py_None;
  if (!PyArg_ParseTupleAndKeywords(args, kw, "OO|O", kwlist, &names_obj, &sizes_obj, &backends_obj))
    return NULL;
  if (pypar_need_world() < 0) return NULL;
  PyObject *names = PySequence_List(names_obj), *sizes = names ? PySequence_List(sizes_obj) : NULL;
  PyObject *backends = sizes && backends_obj != Py_None ? PySequence_List(backends_obj) : NULL;
  pymesh *pm = NULL;
  if (!sizes || (backends_obj != Py_None && !backends)) goto done;
  Py_ssize_t nd = PyList_Size(names);
  if (nd != PyList_Size(sizes) || nd < 1 || nd > PAR_LAYOUT_MAX_DIMS ||
      (backends && PyList_Size(backends) != nd)) {
    pypar_raisef(PAR_ERR_INVALID,
                 "Mesh: names and sizes (and backends) must have the same length, 1..%d",
                 PAR_LAYOUT_MAX_DIMS);
    goto done;
  }
  const char *cnames[PAR_LAYOUT_MAX_DIMS];
  char nbuf[PAR_LAYOUT_MAX_DIMS][64], bbuf[32];
  int csizes[PAR_LAYOUT_MAX_DIMS];
  par_backend cback[PAR_LAYOUT_MAX_DIMS];
  for (Py_ssize_t i = 0; i < nd; i++) {
    cnames[i] = pypar_utf8(PyList_GetItem(names, i), nbuf[i], sizeof nbuf[i]);
    if (!cnames[i]) goto done;
    csizes[i] = (int)PyLong_AsLong(PyList_GetItem(sizes, i));
    cback[i] = PAR_BACKEND_AUTO;
    if (backends && PyList_GetItem(backends, i) != Py_None) {
      const char *b = pypar_utf8(PyList_GetItem(backends, i), bbuf, sizeof bbuf);
      if (b && par_backend_parse(b, &cback[i]) != PAR_OK) {
        pypar_raise(PAR_ERR_INVALID, par_last_error());
        goto done;
      }
    }
    if (PyErr_Occurred()) goto done;
  }
  par_layout layout;
  if (par_layout_init(&layout, par_world_size(pypar_world), (int)nd, cnames, csizes) != PAR_OK) {
    pypar_raise(PAR_ERR_INVALID, par_last_error());
    goto done;
  }
  par_mesh *m = NULL;
  par_status s;
  Py_BEGIN_ALLOW_THREADS
  s = par_mesh_create_layout(pypar_world, &layout, cback, &m);
  Py_END_ALLOW_THREADS
  if (s != PAR_OK) {
    pypar_raise(s, par_last_error());
    goto done;
  }
  pm = PyObject_New(pymesh, type);
  if (!pm) {
    par_mesh_destroy(m);
    goto done;
  }
  pm->m = m;
  pm->prev = NULL;
  pm->next = meshes;
  if (meshes) meshes->prev = pm;
  meshes = pm;
done:
  Py_XDECREF(names);
  Py_XDECREF(sizes);
  Py_XDECREF(backends);
  return (PyObject *)pm;
}

static void mesh_dealloc(PyObject *self) {
  pymesh *pm = (pymesh *)self;
  PyTypeObject *tp = Py_TYPE(self);
  if (pm->m) {
    unlink_mesh(pm);
    par_mesh_destroy(pm->m);
  }
  PyObject_Free(self);
  Py_DECREF(tp);
}

static PyObject *group_of(PyObject *self, const char *dims, int create) {
  par_mesh *m = live(self);
  if (!m) return NULL;
  par_group_info info;
  par_status s;
  if (create) {
    Py_BEGIN_ALLOW_THREADS
    s = par_mesh_group_create(m, dims, NULL, &info);
    Py_END_ALLOW_THREADS
  } else {
    s = par_mesh_group(m, dims, &info);
  }
  if (s != PAR_OK) return pypar_raise(s, par_mesh_last_error(m));
  return pygroup_new(info.group, PYGROUP_MESH, self);
}

static PyObject *mesh_getitem(PyObject *self, PyObject *key) {
  char nb[128];
  const char *name = PyUnicode_Check(key) ? pypar_utf8(key, nb, sizeof nb) : NULL;
  if (!name) {
    PyErr_SetString(PyExc_TypeError, "mesh[...] takes a dim name, e.g. mesh['mp']");
    return NULL;
  }
  return group_of(self, name, 0);
}

/* group(*names): the group over those dims, created (collectively) the first time. */
static PyObject *mesh_group(PyObject *self, PyObject *args) {
  PyObject *sep = PyUnicode_FromString(",");
  if (!sep) return NULL;
  PyObject *joined = PyUnicode_Join(sep, args);
  Py_DECREF(sep);
  if (!joined) return NULL;
  char db[256];
  const char *dims = pypar_utf8(joined, db, sizeof db);
  PyObject *r = dims ? group_of(self, dims, 1) : NULL;
  Py_DECREF(joined);
  return r;
}

static int in_mesh(pygroup *g, void *mesh) {
  return g && g->source == PYGROUP_MESH && g->mesh == mesh;
}

static int in_default_mesh(pygroup *g, void *ctx) {
  (void)ctx;
  return g && g->source == PYGROUP_DEFAULT;
}

static PyObject *mesh_destroy(PyObject *self, PyObject *unused) {
  (void)unused;
  pymesh *pm = (pymesh *)self;
  if (pm->m) {
    pywork_finish_if(in_mesh, self); /* a pending work must not outlive its group */
    unlink_mesh(pm);
    par_mesh_destroy(pm->m);
    pm->m = NULL;
  }
  Py_RETURN_NONE;
}

static PyObject *mesh_describe(PyObject *self, PyObject *unused) {
  (void)unused;
  par_mesh *m = live(self);
  return m ? PyUnicode_FromString(par_mesh_describe(m)) : NULL;
}

/* dict of name -> f(layout, dim) */
static PyObject *per_dim(PyObject *self, int coords) {
  par_mesh *m = live(self);
  if (!m) return NULL;
  const par_layout *l = par_mesh_layout(m);
  PyObject *d = PyDict_New();
  for (int i = 0; d && i < l->ndims; i++) {
    int v = coords ? par_mesh_coord(m, l->name[i]) : l->size[i];
    PyObject *x = PyLong_FromLong(v);
    if (!x || PyDict_SetItemString(d, l->name[i], x) < 0) Py_CLEAR(d);
    Py_XDECREF(x);
  }
  return d;
}

static PyObject *get_coords(PyObject *self, void *c) {
  (void)c;
  return per_dim(self, 1);
}
static PyObject *get_shape(PyObject *self, void *c) {
  (void)c;
  return per_dim(self, 0);
}

enum { STAGE, NUM_STAGES, FIRST, LAST, NEXT, PREV };
static PyObject *get_stage_info(PyObject *self, void *c) {
  par_mesh *m = live(self);
  if (!m) return NULL;
  switch ((int)(intptr_t)c) {
    case STAGE:
      return PyLong_FromLong(par_mesh_stage(m));
    case NUM_STAGES:
      return PyLong_FromLong(par_mesh_num_stages(m));
    case FIRST:
      return PyBool_FromLong(par_mesh_is_first_stage(m));
    case LAST:
      return PyBool_FromLong(par_mesh_is_last_stage(m));
    case NEXT: {
      int r = par_mesh_next_stage_rank(m);
      if (r < 0) Py_RETURN_NONE;
      return PyLong_FromLong(r);
    }
    default: {
      int r = par_mesh_prev_stage_rank(m);
      if (r < 0) Py_RETURN_NONE;
      return PyLong_FromLong(r);
    }
  }
}

static PyGetSetDef mesh_getset[] = {
    {"coords", get_coords, NULL, "{dim name: this rank's coordinate}", NULL},
    {"shape", get_shape, NULL, "{dim name: size}", NULL},
    {"stage", get_stage_info, NULL, "this rank's pipeline stage (its coordinate on 'pp')",
     (void *)STAGE},
    {"num_stages", get_stage_info, NULL, "the number of pipeline stages", (void *)NUM_STAGES},
    {"is_first_stage", get_stage_info, NULL, "stage == 0", (void *)FIRST},
    {"is_last_stage", get_stage_info, NULL, "stage == num_stages - 1", (void *)LAST},
    {"next_stage_rank", get_stage_info, NULL,
     "global rank of the next stage of this pipeline (None on the last)", (void *)NEXT},
    {"prev_stage_rank", get_stage_info, NULL,
     "global rank of the previous stage (None on the first)", (void *)PREV},
    {NULL, NULL, NULL, NULL, NULL}};

static PyMethodDef mesh_methods[] = {
    {"group", mesh_group, METH_VARARGS,
     "group(*names): the group over those dims that holds this rank, e.g. group('pp', 'mp'); "
     "collective over the world the first time"},
    {"describe", mesh_describe, METH_NOARGS, "the configuration line"},
    {"destroy", mesh_destroy, METH_NOARGS, "destroys the mesh and its groups"},
    {NULL, NULL, 0, NULL}};

static PyType_Slot mesh_slots[] = {
    {Py_tp_new, mesh_new},
    {Py_tp_dealloc, mesh_dealloc},
    {Py_mp_subscript, mesh_getitem},
    {Py_tp_getset, mesh_getset},
    {Py_tp_methods, mesh_methods},
    {Py_tp_doc,
     "Mesh(names, sizes, backends=None): a row-major mesh of named dims over the "
     "world (one size may be -1: derived). Collective over the world."},
    {0, NULL}};

static PyType_Spec mesh_spec = {"par.Mesh", sizeof(pymesh), 0, Py_TPFLAGS_DEFAULT, mesh_slots};

/* ---- The default mesh, for par.parallel -------------------------------------------------- */

static int backend_arg(const char *name, par_backend *out) {
  *out = PAR_BACKEND_AUTO;
  if (!name) return 0;
  if (par_backend_parse(name, out) == PAR_OK) return 0;
  pypar_raise(PAR_ERR_INVALID, par_last_error());
  return -1;
}

static PyObject *init_parallelism(PyObject *m, PyObject *args) {
  (void)m;
  par_mesh_options o = PAR_MESH_OPTIONS_INIT;
  const char *b[3];
  if (!PyArg_ParseTuple(args, "iizzz", &o.mp, &o.pp, &b[0], &b[1], &b[2])) return NULL;
  if (backend_arg(b[0], &o.mp_backend) < 0 || backend_arg(b[1], &o.pp_backend) < 0 ||
      backend_arg(b[2], &o.dp_backend) < 0)
    return NULL;
  par_status s;
  Py_BEGIN_ALLOW_THREADS
  s = par_init_parallelism(pypar_world, &o);
  Py_END_ALLOW_THREADS
  if (s != PAR_OK) return pypar_raise(s, par_last_error());
  Py_RETURN_NONE;
}

static PyObject *layout_parallel(PyObject *m, PyObject *args) {
  (void)m;
  int world, mp, pp;
  if (!PyArg_ParseTuple(args, "iii", &world, &mp, &pp)) return NULL;
  par_layout l;
  char warning[256];
  if (par_layout_init_parallel(&l, world, mp, pp, warning, sizeof warning) != PAR_OK)
    return pypar_raise(PAR_ERR_INVALID, par_last_error());
  return Py_BuildValue("(iiis)", l.size[2], l.size[1], l.size[0], warning);
}

static PyObject *default_groups(PyObject *m, PyObject *unused) {
  (void)m;
  (void)unused;
  par_group_info info[4];
  par_status s = par_default_group_info(&info[0]);
  if (s == PAR_OK) s = par_mp_group_info(&info[1]);
  if (s == PAR_OK) s = par_pp_group_info(&info[2]);
  if (s == PAR_OK) s = par_dp_group_info(&info[3]);
  if (s != PAR_OK) return pypar_raise(s, par_last_error());
  PyObject *t = PyTuple_New(4);
  for (int i = 0; t && i < 4; i++) {
    PyObject *g = pygroup_new(info[i].group, PYGROUP_DEFAULT, NULL);
    if (!g)
      Py_CLEAR(t);
    else
      PyTuple_SetItem(t, i, g);
  }
  return t;
}

static PyObject *reset_parallelism(PyObject *m, PyObject *unused) {
  (void)m;
  (void)unused;
  pywork_finish_if(in_default_mesh, NULL); /* a pending work must not outlive its group */
  par_reset_parallelism();
  pypar_default_epoch++;
  Py_RETURN_NONE;
}

static PyObject *parallelism_is_initialized(PyObject *m, PyObject *unused) {
  (void)m;
  (void)unused;
  return PyBool_FromLong(par_parallelism_is_initialized());
}

static PyObject *describe_default(PyObject *m, PyObject *unused) {
  (void)m;
  (void)unused;
  par_mesh *mesh = par_default_mesh();
  if (!mesh) return pypar_raisef(PAR_ERR_STATE, "parallelism is not initialised");
  return PyUnicode_FromString(par_mesh_describe(mesh));
}

PyMethodDef pypar_mesh_methods[] = {
    {"_init_parallelism", init_parallelism, METH_VARARGS,
     "_init_parallelism(mp, pp, mp_backend, pp_backend, dp_backend)"},
    {"_layout_parallel", layout_parallel, METH_VARARGS,
     "_layout_parallel(world, mp, pp) -> (mp, pp, dp, warning)"},
    {"_default_groups", default_groups, METH_NOARGS, "-> (world, mp, pp, dp) Groups"},
    {"_reset_parallelism", reset_parallelism, METH_NOARGS, ""},
    {"_parallelism_is_initialized", parallelism_is_initialized, METH_NOARGS, ""},
    {"_describe_default", describe_default, METH_NOARGS, ""},
    {NULL, NULL, 0, NULL}};

int pypar_mesh_init(PyObject *module) {
  pypar_mesh_type = (PyTypeObject *)PyType_FromSpec(&mesh_spec);
  if (!pypar_mesh_type) return -1;
  Py_INCREF(pypar_mesh_type);
  return PyModule_AddObject(module, "Mesh", (PyObject *)pypar_mesh_type);
}
