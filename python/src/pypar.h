/*
 * pypar.h -- what the files of the `par._par` extension share: the array view (an array
 * object turned into a flat buffer par's collectives take), the Group, Work and Mesh types,
 * the exceptions, and the process-wide world. Everything here runs under the GIL unless a
 * comment says otherwise. Built against the Limited API (Py_LIMITED_API 3.8) so one binary
 * serves every CPython >= 3.8.
 */
#ifndef PYPAR_H
#define PYPAR_H

#ifndef Py_LIMITED_API
#define Py_LIMITED_API 0x03080000
#endif
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <par.h>

#define PYARR_MAX_DIMS 32

/* ---- Arrays ------------------------------------------------------------------------------ */

/*
 * One array as an op sees it. `buf` is where the op reads and writes `count` elements of
 * `dt`: the array's own memory when it is compact, else `temp`, a packed copy made by
 * pyarr_get (inputs) and scattered back by pyarr_finish (outputs). The references keep the
 * memory alive until pyarr_release, so an async op may hold a pyarr until it is waited on.
 */
typedef struct pyarr {
  PyObject *obj;   /* the caller's object (owned reference) */
  PyObject *owner; /* what keeps the memory alive: a DLPack capsule or the object itself */
  char *base;      /* address of element [0,...,0] */
  int ndim;
  int64_t shape[PYARR_MAX_DIMS];
  int64_t strides[PYARR_MAX_DIMS]; /* in elements; may be negative or 0 */
  par_dtype dt;
  DLDataType dl;
  size_t esize;
  size_t count;
  int compact;   /* row-major, no gaps: buf == base */
  void *buf;     /* what the op uses */
  void *temp;    /* malloc'ed packed copy when !compact */
  int writeback; /* scatter temp back into the array in pyarr_finish */
} pyarr;

/* Access wanted from an array. */
enum { PYARR_READ = 0, PYARR_WRITE = 1 };

/* Turns `o` into a pyarr. `what` names the argument in messages ("tensor", "output").
 * PYARR_WRITE refuses read-only arrays and tensors that require grad, and marks the array for
 * writeback. Returns 0, or -1 with an exception set (and nothing to release). */
int pyarr_get(PyObject *o, int access, const char *what, pyarr *a);
/* Copies the packed result back into a strided output. No GIL needed. */
void pyarr_finish(pyarr *a);
/* Drops the references and the temp. Safe on a zeroed pyarr. */
void pyarr_release(pyarr *a);
/* The name of a dtype for messages. */
const char *pyarr_dtype_name(const pyarr *a);
/* Describes a as a DLTensor for par_tensor_* calls: a's own memory and strides, or its
 * packed temporary. The descriptor points into a (shape, strides). */
void pyarr_dltensor(pyarr *a, DLTensor *t);

/* The UTF-8 text of str `o`, copied into buf (cap bytes; longer text is cut). NULL with an
 * exception set when o is not a str. (PyUnicode_AsUTF8AndSize is not in the 3.8 Limited API.) */
const char *pypar_utf8(PyObject *o, char *buf, size_t cap);

/* ---- Exceptions ------------------------------------------------------------------------- */

/* Raises the exception class of `s` with "detail" (or the status's message when empty). */
PyObject *pypar_raise(par_status s, const char *detail);
/* Raises the class of `s` with a formatted message. Returns NULL. */
PyObject *pypar_raisef(par_status s, const char *fmt, ...);
int pypar_errors_init(PyObject *module);

/* ---- The world --------------------------------------------------------------------------- */

extern par_world *pypar_world;
/* Bumped whenever the world is destroyed, so Group objects from before know they are stale. */
extern unsigned long pypar_world_epoch;
/* Bumped whenever the default mesh is reset. */
extern unsigned long pypar_default_epoch;
/* Raises par.StateError when par.init() has not been called. Returns 0 or -1. */
int pypar_need_world(void);
/* A timeout argument: None (0: the default), seconds, or a datetime.timedelta. */
int pypar_timeout(PyObject *o, double *out);

/* ---- Groups ------------------------------------------------------------------------------ */

typedef enum pygroup_source {
  PYGROUP_WORLD,   /* the world group, or the default group par.init made */
  PYGROUP_OWNED,   /* made by new_group; destroyed with the object or by par.destroy */
  PYGROUP_MESH,    /* a group of a par.Mesh object (kept alive through `mesh`) */
  PYGROUP_DEFAULT, /* a group of the default mesh of par.parallel */
  PYGROUP_NONMEMBER
} pygroup_source;

typedef struct pygroup {
  PyObject_HEAD par_group *g; /* NULL once destroyed */
  pygroup_source source;
  unsigned long epoch; /* pypar_world_epoch or pypar_default_epoch at creation */
  PyObject *mesh;      /* the Mesh object for PYGROUP_MESH */
  PyObject *ranks;     /* tuple of global ranks */
  int index, size;
  struct pygroup *next, *prev; /* list of PYGROUP_OWNED groups */
} pygroup;

extern PyTypeObject *pypar_group_type;
/* Makes a Group for `g`. ranks: the members, n of them. */
PyObject *pygroup_new(par_group *g, pygroup_source source, PyObject *mesh);
/* The live par_group of `o` (None: the default group); NULL with an exception when the group
 * is stale, destroyed, or this rank is not a member. */
par_group *pygroup_get(PyObject *o, pygroup **out);
/* The index in `pg` of global rank `rank`, or -1 with par.RankError set. */
int pygroup_index_of(pygroup *pg, long rank, const char *what);
/* Destroys every group made by new_group (par.destroy). */
void pygroup_destroy_owned(void);
/* The Group objects par.init made: the default group (group=None). */
extern PyObject *pypar_default_group;
extern PyMethodDef pypar_group_methods[];
int pypar_group_init(PyObject *module);

/* ---- Works ------------------------------------------------------------------------------- */

#define PYWORK_MAX_ARRS 2

typedef struct pywork {
  PyObject_HEAD par_work *w; /* NULL once finished */
  pyarr arr[PYWORK_MAX_ARRS];
  int narr;
  PyObject *group;  /* keeps the Group alive while the work is pending */
  PyObject *result; /* what wait() returns (None: True) */
  par_status status;
  char error[512];
  int done;
  struct pywork *next, *prev; /* the list of pending works */
} pywork;

extern PyTypeObject *pypar_work_type;
/* Wraps a pending work; takes over the pyarrs (the caller must not release them, even when
 * this fails). */
PyObject *pywork_new(par_work *w, pyarr *arrs, int narr, PyObject *group, PyObject *result);
/* Waits for every pending work (par.destroy). */
void pywork_finish_all(void);
/* Waits for the pending works whose group satisfies pred (before that group is destroyed). */
void pywork_finish_if(int (*pred)(pygroup *g, void *ctx), void *ctx);
int pypar_work_init(PyObject *module);

/* ---- Mesh -------------------------------------------------------------------------------- */

typedef struct pymesh {
  PyObject_HEAD par_mesh *m; /* NULL once destroyed */
  struct pymesh *next, *prev;
} pymesh;

extern PyTypeObject *pypar_mesh_type;
/* Destroys every Mesh object's mesh (par.destroy). */
void pymesh_destroy_all(void);
extern PyMethodDef pypar_mesh_methods[];
int pypar_mesh_init(PyObject *module);

/* ---- par.empty ---------------------------------------------------------------------------- */

extern PyMethodDef pypar_alloc_methods[];
/* How many regions of par.empty() are alive (their tensors not yet freed). */
long pyalloc_live(void);

/* ---- Ops --------------------------------------------------------------------------------- */

extern PyMethodDef pypar_op_methods[];
/* Parses an op: an int (par.SUM, ...) or a name ("sum", "avg", ...). Returns 0 or -1. */
int pypar_parse_op(PyObject *o, par_op *out);

#endif /* PYPAR_H */
