/*
 * ops.c -- the torch-style collectives: par.all_reduce, all_gather_into_tensor,
 * reduce_scatter_tensor, broadcast, reduce, all_to_all_single, barrier, send, recv, isend,
 * irecv, and the tensor gather behind par.parallel.
 *
 * Each op checks its arrays against each other (dtypes, element counts, overlap) and its
 * ranks against the group (`src` and `dst` are global ranks, as in torch), then runs the C
 * collective with the GIL released: the blocking form for async_op=False (no work handle to
 * allocate, so a small op costs little more than the C call), the _async form wrapped in a
 * par.Work otherwise. Results go straight into the caller's memory, through a packed
 * temporary only for strided arrays.
 */
#include <string.h>
#include <time.h>

#include "pypar.h"

typedef enum op_kind {
  K_ALLREDUCE,
  K_ALLGATHER,
  K_REDUCE_SCATTER,
  K_BROADCAST,
  K_REDUCE,
  K_ALLTOALL,
  K_BARRIER,
  K_SEND,
  K_RECV,
  K_TENSOR_GATHER
} op_kind;

/* One call: a[0] is the array written (or the only one), a[1] the input of two-array ops. */
typedef struct call {
  op_kind kind;
  const char *name;
  par_group *g;
  pygroup *pg;
  pyarr a[2];
  int na;
  par_op op;
  int peer; /* root or peer, as an index in the group */
  int dim;
} call;

static void release(call *c) {
  for (int i = 0; i < c->na; i++) pyarr_release(&c->a[i]);
  c->na = 0;
}

/* work == NULL: the blocking form. No GIL. */
static par_status issue(call *c, par_work **w) {
  par_group *g = c->g;
  void *b0 = c->na > 0 ? c->a[0].buf : NULL, *b1 = c->na > 1 ? c->a[1].buf : NULL;
  size_t n = c->na > 0 ? c->a[0].count : 0;
  par_dtype dt = c->na > 0 ? c->a[0].dt : PAR_U8;
  switch (c->kind) {
    case K_ALLREDUCE:
      return w ? par_allreduce_async(g, b0, b0, n, dt, c->op, w)
               : par_allreduce(g, b0, b0, n, dt, c->op);
    case K_ALLGATHER:
      n = c->a[1].count;
      return w ? par_allgather_async(g, b1, b0, n, dt, w) : par_allgather(g, b1, b0, n, dt);
    case K_REDUCE_SCATTER:
      return w ? par_reduce_scatter_async(g, b1, b0, n, dt, c->op, w)
               : par_reduce_scatter(g, b1, b0, n, dt, c->op);
    case K_BROADCAST:
      return w ? par_broadcast_async(g, b0, n, dt, c->peer, w)
               : par_broadcast(g, b0, n, dt, c->peer);
    case K_REDUCE:
      return w ? par_reduce_async(g, b0, b0, n, dt, c->op, c->peer, w)
               : par_reduce(g, b0, b0, n, dt, c->op, c->peer);
    case K_ALLTOALL:
      n /= (size_t)par_group_size(g);
      return w ? par_alltoall_async(g, b1, b0, n, dt, w) : par_alltoall(g, b1, b0, n, dt);
    case K_BARRIER:
      return w ? par_barrier_async(g, w) : par_barrier(g);
    case K_SEND:
      return w ? par_send_async(g, b0, n, dt, c->peer, w) : par_send(g, b0, n, dt, c->peer);
    case K_RECV:
      return w ? par_recv_async(g, b0, n, dt, c->peer, w) : par_recv(g, b0, n, dt, c->peer);
    case K_TENSOR_GATHER: {
      DLTensor tin, tout;
      pyarr_dltensor(&c->a[1], &tin);
      pyarr_dltensor(&c->a[0], &tout);
      return w ? par_tensor_gather_async(g, &tin, c->dim, &tout, w)
               : par_tensor_gather(g, &tin, c->dim, &tout);
    }
  }
  return PAR_ERR_INTERNAL;
}

/* Runs the call; takes over its arrays. Returns None (blocking), a Work (async_op), or NULL
 * with the op's error raised. */
static PyObject *run(call *c, int async_op, PyObject *result) {
  par_status s;
  par_work *w = NULL;
  if (!async_op) {
    Py_BEGIN_ALLOW_THREADS
    s = issue(c, NULL);
    if (s == PAR_OK)
      for (int i = 0; i < c->na; i++) pyarr_finish(&c->a[i]);
    Py_END_ALLOW_THREADS
  } else {
    Py_BEGIN_ALLOW_THREADS
    s = issue(c, &w);
    Py_END_ALLOW_THREADS
  }
  if (s != PAR_OK) {
    pypar_raise(s, par_group_last_error(c->g));
    release(c);
    return NULL;
  }
  if (async_op) {
    int na = c->na;
    c->na = 0;
    return pywork_new(w, c->a, na, (PyObject *)c->pg, result);
  }
  release(c);
  if (result) {
    Py_INCREF(result);
    return result;
  }
  Py_RETURN_NONE;
}

/* ---- Argument checks --------------------------------------------------------------------- */

int pypar_parse_op(PyObject *o, par_op *out) {
  if (PyLong_Check(o)) {
    long v = PyLong_AsLong(o);
    if (v < 0 || v >= PAR_OP_COUNT) {
      if (!PyErr_Occurred())
        pypar_raisef(PAR_ERR_OP, "op %ld is not one of par.SUM, PROD, MIN, MAX, AVG", v);
      return -1;
    }
    *out = (par_op)v;
    return 0;
  }
  PyObject *name = NULL;
  if (PyUnicode_Check(o)) {
    Py_INCREF(o);
    name = o;
  } else {
    /* torch.distributed.ReduceOp.SUM and enum members carry their name. */
    name = PyObject_GetAttrString(o, "name");
    if (!name || !PyUnicode_Check(name)) {
      Py_XDECREF(name);
      PyErr_Clear();
      pypar_raisef(PAR_ERR_OP, "op must be par.SUM, PROD, MIN, MAX, AVG or their names");
      return -1;
    }
  }
  PyObject *low = PyObject_CallMethod(name, "lower", NULL);
  Py_DECREF(name);
  if (!low) return -1;
  char sb[32];
  const char *s = pypar_utf8(low, sb, sizeof sb);
  par_status st = s ? par_op_parse(s, out) : PAR_ERR_OP;
  if (st != PAR_OK)
    pypar_raisef(PAR_ERR_OP, "unknown op '%s': use sum, prod, min, max or avg", s ? s : "?");
  Py_DECREF(low);
  return st == PAR_OK ? 0 : -1;
}

static int get_group(call *c, PyObject *group) {
  c->g = pygroup_get(group, &c->pg);
  return c->g ? 0 : -1;
}

static int add(call *c, PyObject *o, int access, const char *what) {
  if (pyarr_get(o, access, what, &c->a[c->na]) < 0) return -1;
  c->na++;
  return 0;
}

static int same_dtype(call *c) {
  if (c->a[0].dt == c->a[1].dt) return 0;
  pypar_raisef(PAR_ERR_DTYPE, "%s: the output's dtype %s differs from the input's %s", c->name,
               pyarr_dtype_name(&c->a[0]), pyarr_dtype_name(&c->a[1]));
  return -1;
}

static int overlap(const pyarr *x, const pyarr *y) {
  const char *a = x->buf, *b = y->buf;
  size_t na = x->count * x->esize, nb = y->count * y->esize;
  return na && nb && a < b + nb && b < a + na;
}

static int no_tag(PyObject *tag, const char *name) {
  if (!tag || tag == Py_None || (PyLong_Check(tag) && PyLong_AsLong(tag) == 0)) return 0;
  pypar_raisef(PAR_ERR_UNSUPPORTED,
               "%s: par has no message tags (messages between two ranks arrive in order); "
               "pass tag=0",
               name);
  return -1;
}

#define PARSE(fmt, ...)                                                                \
  do {                                                                                 \
    if (!PyArg_ParseTupleAndKeywords(args, kw, fmt, kwlist, __VA_ARGS__)) return NULL; \
  } while (0)
#define FAIL()   \
  do {           \
    release(&c); \
    return NULL; \
  } while (0)

/* ---- The ops ----------------------------------------------------------------------------- */

static PyObject *all_reduce(PyObject *m, PyObject *args, PyObject *kw) {
  (void)m;
  static char *kwlist[] = {"tensor", "op", "group", "async_op", NULL};
  PyObject *t, *op = NULL, *group = Py_None;
  int async_op = 0;
  PARSE("O|OOp", &t, &op, &group, &async_op);
  call c = {.kind = K_ALLREDUCE, .name = "all_reduce", .op = PAR_SUM};
  if ((op && pypar_parse_op(op, &c.op) < 0) || get_group(&c, group) < 0 ||
      add(&c, t, PYARR_WRITE, "tensor") < 0)
    FAIL();
  return run(&c, async_op, NULL);
}

/* _reduce_into(tensor, op, group, async_op): all_reduce that returns the tensor (or a Work
 * whose wait() does), for par.parallel's GroupInfo.reduce. */
static PyObject *reduce_into(PyObject *m, PyObject *args, PyObject *kw) {
  (void)m;
  static char *kwlist[] = {"tensor", "op", "group", "async_op", NULL};
  PyObject *t, *op = NULL, *group = Py_None;
  int async_op = 0;
  PARSE("O|OOp", &t, &op, &group, &async_op);
  call c = {.kind = K_ALLREDUCE, .name = "reduce", .op = PAR_SUM};
  if ((op && pypar_parse_op(op, &c.op) < 0) || get_group(&c, group) < 0 ||
      add(&c, t, PYARR_WRITE, "tensor") < 0)
    FAIL();
  return run(&c, async_op, t);
}

static PyObject *all_gather_into_tensor(PyObject *m, PyObject *args, PyObject *kw) {
  (void)m;
  static char *kwlist[] = {"output_tensor", "input_tensor", "group", "async_op", NULL};
  PyObject *out, *in, *group = Py_None;
  int async_op = 0;
  PARSE("OO|Op", &out, &in, &group, &async_op);
  call c = {.kind = K_ALLGATHER, .name = "all_gather_into_tensor"};
  if (get_group(&c, group) < 0 || add(&c, out, PYARR_WRITE, "output_tensor") < 0 ||
      add(&c, in, PYARR_READ, "input_tensor") < 0 || same_dtype(&c) < 0)
    FAIL();
  size_t n = c.a[1].count, size = (size_t)par_group_size(c.g);
  if (c.a[0].count != n * size) {
    pypar_raisef(PAR_ERR_COUNT,
                 "all_gather_into_tensor: the output has %zu elements; it must have the "
                 "input's %zu times the group size %zu = %zu",
                 c.a[0].count, n, size, n * size);
    FAIL();
  }
  if (overlap(&c.a[0], &c.a[1]) &&
      (char *)c.a[1].buf != (char *)c.a[0].buf + (size_t)par_group_index(c.g) * n * c.a[0].esize) {
    pypar_raisef(PAR_ERR_INVALID,
                 "all_gather_into_tensor: the input overlaps the output other "
                 "than as this rank's own block");
    FAIL();
  }
  return run(&c, async_op, NULL);
}

static PyObject *reduce_scatter_tensor(PyObject *m, PyObject *args, PyObject *kw) {
  (void)m;
  static char *kwlist[] = {"output", "input", "op", "group", "async_op", NULL};
  PyObject *out, *in, *op = NULL, *group = Py_None;
  int async_op = 0;
  PARSE("OO|OOp", &out, &in, &op, &group, &async_op);
  call c = {.kind = K_REDUCE_SCATTER, .name = "reduce_scatter_tensor", .op = PAR_SUM};
  if ((op && pypar_parse_op(op, &c.op) < 0) || get_group(&c, group) < 0 ||
      add(&c, out, PYARR_WRITE, "output") < 0 || add(&c, in, PYARR_READ, "input") < 0 ||
      same_dtype(&c) < 0)
    FAIL();
  size_t n = c.a[0].count, size = (size_t)par_group_size(c.g);
  if (c.a[1].count != n * size) {
    pypar_raisef(PAR_ERR_COUNT,
                 "reduce_scatter_tensor: the input has %zu elements; it must have the "
                 "output's %zu times the group size %zu = %zu",
                 c.a[1].count, n, size, n * size);
    FAIL();
  }
  if (overlap(&c.a[0], &c.a[1]) &&
      (char *)c.a[0].buf != (char *)c.a[1].buf + (size_t)par_group_index(c.g) * n * c.a[0].esize) {
    pypar_raisef(PAR_ERR_INVALID,
                 "reduce_scatter_tensor: the output overlaps the input other "
                 "than as this rank's own block");
    FAIL();
  }
  return run(&c, async_op, NULL);
}

static PyObject *broadcast(PyObject *m, PyObject *args, PyObject *kw) {
  (void)m;
  static char *kwlist[] = {"tensor", "src", "group", "async_op", NULL};
  PyObject *t, *group = Py_None;
  long src;
  int async_op = 0;
  PARSE("Ol|Op", &t, &src, &group, &async_op);
  call c = {.kind = K_BROADCAST, .name = "broadcast"};
  if (get_group(&c, group) < 0 || (c.peer = pygroup_index_of(c.pg, src, "broadcast: src")) < 0 ||
      add(&c, t, PYARR_WRITE, "tensor") < 0)
    FAIL();
  return run(&c, async_op, NULL);
}

static PyObject *reduce(PyObject *m, PyObject *args, PyObject *kw) {
  (void)m;
  static char *kwlist[] = {"tensor", "dst", "op", "group", "async_op", NULL};
  PyObject *t, *op = NULL, *group = Py_None;
  long dst;
  int async_op = 0;
  PARSE("Ol|OOp", &t, &dst, &op, &group, &async_op);
  call c = {.kind = K_REDUCE, .name = "reduce", .op = PAR_SUM};
  if ((op && pypar_parse_op(op, &c.op) < 0) || get_group(&c, group) < 0 ||
      (c.peer = pygroup_index_of(c.pg, dst, "reduce: dst")) < 0 ||
      add(&c, t, PYARR_WRITE, "tensor") < 0)
    FAIL();
  return run(&c, async_op, NULL);
}

static PyObject *all_to_all_single(PyObject *m, PyObject *args, PyObject *kw) {
  (void)m;
  static char *kwlist[] = {"output",   "input", "output_split_sizes", "input_split_sizes", "group",
                           "async_op", NULL};
  PyObject *out, *in, *osplit = Py_None, *isplit = Py_None, *group = Py_None;
  int async_op = 0;
  PARSE("OO|OOOp", &out, &in, &osplit, &isplit, &group, &async_op);
  call c = {.kind = K_ALLTOALL, .name = "all_to_all_single"};
  if (osplit != Py_None || isplit != Py_None) {
    pypar_raisef(PAR_ERR_UNSUPPORTED,
                 "all_to_all_single: uneven splits are not supported; every member sends "
                 "equal blocks (leave output_split_sizes and input_split_sizes None)");
    return NULL;
  }
  if (get_group(&c, group) < 0 || add(&c, out, PYARR_WRITE, "output") < 0 ||
      add(&c, in, PYARR_READ, "input") < 0 || same_dtype(&c) < 0)
    FAIL();
  size_t size = (size_t)par_group_size(c.g);
  if (c.a[0].count != c.a[1].count || c.a[1].count % size) {
    pypar_raisef(PAR_ERR_COUNT,
                 "all_to_all_single: output (%zu elements) and input (%zu) must be the same "
                 "size, divisible by the group size %zu",
                 c.a[0].count, c.a[1].count, size);
    FAIL();
  }
  if (overlap(&c.a[0], &c.a[1])) {
    pypar_raisef(PAR_ERR_INVALID, "all_to_all_single: the output and the input overlap");
    FAIL();
  }
  return run(&c, async_op, NULL);
}

static PyObject *barrier(PyObject *m, PyObject *args, PyObject *kw) {
  (void)m;
  static char *kwlist[] = {"group", "async_op", NULL};
  PyObject *group = Py_None;
  int async_op = 0;
  PARSE("|Op", &group, &async_op);
  call c = {.kind = K_BARRIER, .name = "barrier"};
  if (get_group(&c, group) < 0) return NULL;
  return run(&c, async_op, NULL);
}

static PyObject *p2p(PyObject *args, PyObject *kw, int is_send, int async_op) {
  static char *kwlist_s[] = {"tensor", "dst", "group", "tag", NULL};
  static char *kwlist_r[] = {"tensor", "src", "group", "tag", NULL};
  const char *name = is_send ? (async_op ? "isend" : "send") : (async_op ? "irecv" : "recv");
  PyObject *t, *peer_obj = Py_None, *group = Py_None, *tag = NULL;
  if (!PyArg_ParseTupleAndKeywords(args, kw, is_send ? "OO|OO" : "O|OOO",
                                   is_send ? kwlist_s : kwlist_r, &t, &peer_obj, &group, &tag))
    return NULL;
  if (no_tag(tag, name) < 0) return NULL;
  if (peer_obj == Py_None)
    return pypar_raisef(PAR_ERR_UNSUPPORTED,
                        "%s: name the peer rank (%s=...); par has no "
                        "receive from any source",
                        name, is_send ? "dst" : "src");
  long peer = PyLong_AsLong(peer_obj);
  if (peer == -1 && PyErr_Occurred()) return NULL;
  call c = {.kind = is_send ? K_SEND : K_RECV, .name = name};
  if (get_group(&c, group) < 0 ||
      (c.peer = pygroup_index_of(c.pg, peer, is_send ? "dst" : "src")) < 0)
    return NULL;
  if (!async_op && c.peer == c.pg->index)
    return pypar_raisef(PAR_ERR_INVALID,
                        "%s to this rank itself would never complete; use isend and irecv", name);
  if (add(&c, t, is_send ? PYARR_READ : PYARR_WRITE, "tensor") < 0) FAIL();
  PyObject *r = run(&c, async_op, NULL);
  if (!r || async_op || is_send) return r;
  Py_DECREF(r);
  return PyLong_FromLong(peer); /* torch's recv returns the sender's rank */
}

static PyObject *send(PyObject *m, PyObject *a, PyObject *k) {
  (void)m;
  return p2p(a, k, 1, 0);
}
static PyObject *recv(PyObject *m, PyObject *a, PyObject *k) {
  (void)m;
  return p2p(a, k, 0, 0);
}
static PyObject *isend(PyObject *m, PyObject *a, PyObject *k) {
  (void)m;
  return p2p(a, k, 1, 1);
}
static PyObject *irecv(PyObject *m, PyObject *a, PyObject *k) {
  (void)m;
  return p2p(a, k, 0, 1);
}

/* _tensor_gather(group, input, dim, output, async_op): par_tensor_gather into a new output
 * made by par.parallel; the Work's wait() returns the output. */
static PyObject *tensor_gather(PyObject *m, PyObject *args, PyObject *kw) {
  (void)m;
  static char *kwlist[] = {"group", "input", "dim", "output", "async_op", NULL};
  PyObject *group, *in, *out;
  int dim, async_op = 0;
  PARSE("OOiO|p", &group, &in, &dim, &out, &async_op);
  call c = {.kind = K_TENSOR_GATHER, .name = "gather", .dim = dim};
  if (get_group(&c, group) < 0 || add(&c, out, PYARR_WRITE, "output") < 0 ||
      add(&c, in, PYARR_READ, "tensor") < 0)
    FAIL();
  return run(&c, async_op, out);
}

/* _c_allreduce_loop(tensor, iters, group=None) -> seconds: `iters` in-place par_allreduce
 * calls on the tensor's memory in one C loop, the GIL released: the C cost of the op, against
 * which bench/py_allreduce.py measures what the Python call adds. */
static PyObject *c_allreduce_loop(PyObject *m, PyObject *args, PyObject *kw) {
  (void)m;
  static char *kwlist[] = {"tensor", "iters", "group", NULL};
  PyObject *t, *group = Py_None;
  long iters;
  PARSE("Ol|O", &t, &iters, &group);
  call c = {.kind = K_ALLREDUCE, .name = "all_reduce", .op = PAR_SUM};
  if (get_group(&c, group) < 0 || add(&c, t, PYARR_WRITE, "tensor") < 0) FAIL();
  par_status s = PAR_OK;
  struct timespec t0, t1;
  Py_BEGIN_ALLOW_THREADS
  clock_gettime(CLOCK_MONOTONIC, &t0);
  for (long i = 0; i < iters && s == PAR_OK; i++) s = issue(&c, NULL);
  clock_gettime(CLOCK_MONOTONIC, &t1);
  Py_END_ALLOW_THREADS
  if (s != PAR_OK) {
    pypar_raise(s, par_group_last_error(c.g));
    FAIL();
  }
  release(&c);
  return PyFloat_FromDouble((double)(t1.tv_sec - t0.tv_sec) +
                            1e-9 * (double)(t1.tv_nsec - t0.tv_nsec));
}

#define KW(f) (PyCFunction)(void (*)(void))(f), METH_VARARGS | METH_KEYWORDS

PyMethodDef pypar_op_methods[] = {
    {"all_reduce", KW(all_reduce),
     "all_reduce(tensor, op=SUM, group=None, async_op=False): reduces tensor over the group, "
     "in place on every member."},
    {"all_gather_into_tensor", KW(all_gather_into_tensor),
     "all_gather_into_tensor(output_tensor, input_tensor, group=None, async_op=False): "
     "member i's input lands in block i of every member's output."},
    {"reduce_scatter_tensor", KW(reduce_scatter_tensor),
     "reduce_scatter_tensor(output, input, op=SUM, group=None, async_op=False): reduces the "
     "inputs; member i gets block i in output."},
    {"broadcast", KW(broadcast),
     "broadcast(tensor, src, group=None, async_op=False): global rank src's tensor to all."},
    {"reduce", KW(reduce),
     "reduce(tensor, dst, op=SUM, group=None, async_op=False): the reduction lands in global "
     "rank dst's tensor (the others' are left as they were)."},
    {"all_to_all_single", KW(all_to_all_single),
     "all_to_all_single(output, input, output_split_sizes=None, input_split_sizes=None, "
     "group=None, async_op=False): member i's block j goes to member j's block i."},
    {"barrier", KW(barrier), "barrier(group=None, async_op=False)"},
    {"send", KW(send), "send(tensor, dst, group=None, tag=0)"},
    {"recv", KW(recv), "recv(tensor, src, group=None, tag=0): returns src"},
    {"isend", KW(isend), "isend(tensor, dst, group=None, tag=0) -> Work"},
    {"irecv", KW(irecv), "irecv(tensor, src, group=None, tag=0) -> Work"},
    {"_c_allreduce_loop", KW(c_allreduce_loop),
     "_c_allreduce_loop(tensor, iters, group=None) -> seconds of iters C calls (benchmarks)"},
    {"_reduce_into", KW(reduce_into), "_reduce_into(tensor, op, group, async_op=False)"},
    {"_tensor_gather", KW(tensor_gather),
     "_tensor_gather(group, input, dim, output, async_op=False): par_tensor_gather"},
    {NULL, NULL, 0, NULL}};
