/*
 * par.h -- the one public header of par.
 *
 * par lets a program run as N cooperating processes (ranks) and train a model with model
 * (tensor), pipeline and data parallelism. It gives every rank its place in the parallel mesh,
 * the process groups of that mesh, and collectives on each group.
 *
 * Conventions used throughout:
 *  - Every fallible call returns a par_status: PAR_OK (0) on success, PAR_IN_PROGRESS (> 0) from
 *    par_work_test while work is pending, a negative PAR_ERR_* code on error. The detail of the
 *    last error (which rank, which op, what differed) is kept per handle: see
 *    par_world_last_error, par_group_last_error and par_work_error.
 *  - Handles are opaque and come in _create/_destroy pairs; _destroy(NULL) does nothing.
 *  - The caller owns every buffer. The library keeps no user pointer after an op completes; for
 *    async ops, buffers must stay valid and untouched until the work handle has completed.
 *  - The library never prints to stdout, never exits and never aborts: it logs to stderr (or to
 *    the handler installed with par_set_log_handler) under PAR_LOG.
 *  - Thread safety is stated per function. Unless said otherwise, calls on one group must come
 *    from one thread at a time; different groups may be used from different threads.
 */
#ifndef PAR_H
#define PAR_H

#include <stddef.h>
#include <stdint.h>

#include <dlpack/dlpack.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------------------------------------ */
/* Version                                                                                    */
/* ------------------------------------------------------------------------------------------ */

/* The version of this header. These three lines are the one source of the version number:
 * CMakeLists.txt reads them for project(VERSION), which the library's soname, par.pc, the CMake
 * package and the Debian packages take, so they cannot disagree. */
#define PAR_VERSION_MAJOR 0
#define PAR_VERSION_MINOR 1
#define PAR_VERSION_PATCH 0
/* The header's version as one comparable number: major * 10000 + minor * 100 + patch. */
#define PAR_VERSION_NUMBER (PAR_VERSION_MAJOR * 10000 + PAR_VERSION_MINOR * 100 + PAR_VERSION_PATCH)

/* The version of the library the program runs with, as PAR_VERSION_NUMBER computes it (0.1.0
 * is 100). It differs from PAR_VERSION_NUMBER when the program was compiled against another
 * version's header than the libpar.so it loaded. Never fails; any thread may call it. */
int par_version(void);
/* The same version as a string, "MAJOR.MINOR.PATCH" (e.g. "0.1.0"); static storage, never
 * NULL. Any thread may call it. */
const char *par_version_string(void);

/* ------------------------------------------------------------------------------------------ */
/* Status codes                                                                               */
/* ------------------------------------------------------------------------------------------ */

/* One list gives the enum, its name and its message. */
#define PAR_STATUS_MAP(X)                                                                      \
  X(OK, 0, "success")                                                                          \
  X(IN_PROGRESS, 1, "operation in progress")                                                   \
  X(ERR_INVALID, -1, "invalid argument")                                                       \
  X(ERR_NULL, -2, "NULL pointer argument")                                                     \
  X(ERR_DTYPE, -3, "unsupported or mismatched data type")                                      \
  X(ERR_OP, -4, "unsupported reduction op")                                                    \
  X(ERR_COUNT, -5, "element count or shape mismatch")                                          \
  X(ERR_RANK, -6, "rank out of range")                                                         \
  X(ERR_NOT_MEMBER, -7, "this rank is not a member of the group")                              \
  X(ERR_STATE, -8, "call not allowed in the current state")                                    \
  X(ERR_NOMEM, -9, "out of memory")                                                            \
  X(ERR_SYSTEM, -10, "operating-system call failed")                                           \
  X(ERR_TIMEOUT, -11, "timed out")                                                             \
  X(ERR_PEER_LOST, -12, "a peer rank died or disconnected")                                    \
  X(ERR_ABORTED, -13, "the group was aborted")                                                 \
  X(ERR_BOOTSTRAP, -14, "bootstrap or rendezvous failed")                                      \
  X(ERR_AUTH, -15, "authentication with the job token failed")                                 \
  X(ERR_UNSUPPORTED, -16, "not supported by this build or backend")                            \
  X(ERR_MISMATCH, -17, "ranks issued different collectives")                                   \
  X(ERR_PROTOCOL, -18, "malformed message from a peer")                                        \
  X(ERR_INTERNAL, -19, "internal error")

typedef enum par_status {
#define PAR__STATUS_ENUM(name, value, msg) PAR_##name = value,
  PAR_STATUS_MAP(PAR__STATUS_ENUM)
#undef PAR__STATUS_ENUM
} par_status;

/* "PAR_ERR_TIMEOUT" for PAR_ERR_TIMEOUT; "PAR_ERR_UNKNOWN" for values not in the list. */
const char *par_status_name(par_status s);
/* A one-line human description of the status, from the same list. */
const char *par_status_string(par_status s);

/* ------------------------------------------------------------------------------------------ */
/* Data types and reduction ops                                                               */
/* ------------------------------------------------------------------------------------------ */

typedef enum par_dtype {
  PAR_F32 = 0,
  PAR_F64 = 1,
  PAR_F16 = 2,  /* IEEE binary16; reductions accumulate in f32 */
  PAR_BF16 = 3, /* bfloat16; reductions accumulate in f32 */
  PAR_I8 = 4,
  PAR_U8 = 5,
  PAR_I32 = 6,
  PAR_I64 = 7,
  PAR_DTYPE_COUNT
} par_dtype;

typedef enum par_op {
  PAR_SUM = 0,
  PAR_PROD = 1,
  PAR_MIN = 2,
  PAR_MAX = 3,
  PAR_AVG = 4, /* sum divided by the group size; for integer types the sum wraps in the
                  type first, then the division truncates toward zero */
  PAR_OP_COUNT
} par_op;

/* Size in bytes of one element; 0 for an invalid dtype. */
size_t par_dtype_size(par_dtype dt);
/* "f32", "bf16", ...; NULL for an invalid dtype. */
const char *par_dtype_name(par_dtype dt);
/* Parses a name as printed by par_dtype_name (also "float", "half", "int", ...). */
par_status par_dtype_parse(const char *name, par_dtype *out);
/* "sum", "prod", "min", "max", "avg"; NULL for an invalid op. */
const char *par_op_name(par_op op);
par_status par_op_parse(const char *name, par_op *out);

/* ------------------------------------------------------------------------------------------ */
/* Logging                                                                                    */
/* ------------------------------------------------------------------------------------------ */

typedef enum par_log_level {
  PAR_LOG_OFF = 0,
  PAR_LOG_ERROR = 1,
  PAR_LOG_WARN = 2,
  PAR_LOG_INFO = 3,
  PAR_LOG_DEBUG = 4
} par_log_level;

/* Receives every log line the library emits (without colour or trailing newline). */
typedef void (*par_log_fn)(par_log_level level, const char *line, void *ctx);

/* Installs a log handler; NULL restores the default (stderr, coloured on a TTY). Not
 * thread-safe with respect to concurrent logging: call it before creating a world. */
void par_set_log_handler(par_log_fn fn, void *ctx);
/* Sets the level; the initial level comes from PAR_LOG (default info). Thread-safe. */
void par_set_log_level(par_log_level level);
par_log_level par_log_level_get(void);

/* ------------------------------------------------------------------------------------------ */
/* World: who am I, and rendezvous                                                            */
/* ------------------------------------------------------------------------------------------ */

typedef struct par_world par_world;
typedef struct par_group par_group;
typedef struct par_work par_work;

/* Options for par_world_create. Fields left at their PAR_WORLD_OPTIONS_INIT value mean "take
 * it from the environment" (see docs/env.md for the order) or the default. */
typedef struct par_world_options {
  int rank;                /* -1: from the environment */
  int size;                /* -1: from the environment */
  int local_rank;          /* -1: from the environment, else equal to rank */
  int local_size;          /* -1: from the environment, else equal to size */
  const char *store_addr;  /* "host:port" of the rendezvous store; NULL: from the environment */
  const char *token;       /* job token; NULL: PAR_TOKEN */
  double timeout_s;        /* default per-op timeout; <= 0: PAR_TIMEOUT or 300 s */
} par_world_options;

#define PAR_WORLD_OPTIONS_INIT {-1, -1, -1, -1, NULL, NULL, 0.0}

/*
 * Creates this process's world: learns rank and size (options, then the environment of
 * parrun/torchrun, Open MPI, MPICH/PMI, Slurm; with none, a world of 1), connects to the
 * rendezvous store and creates the whole-world group. Collective over all ranks of the world:
 * every rank must call it. Blocks until all ranks have arrived or the timeout runs out.
 * opts may be NULL. On error *out is NULL and the message can be read from par_last_error().
 * Thread-safe (each call makes an independent world).
 */
par_status par_world_create(const par_world_options *opts, par_world **out);
/* Destroys the world. Groups created from it must be destroyed first. NULL does nothing. */
void par_world_destroy(par_world *world);

int par_world_rank(const par_world *world);
int par_world_size(const par_world *world);
int par_world_local_rank(const par_world *world);
int par_world_local_size(const par_world *world);
/* The group of all ranks of the world, owned by the world. */
par_group *par_world_group(par_world *world);
/* Detail of the last error on this world (or on creating a group from it). */
const char *par_world_last_error(const par_world *world);
/* Detail of the last error of a call that had no handle to keep it (e.g. a failed
 * par_world_create). Thread-local. */
const char *par_last_error(void);

/*
 * Allocates `bytes` of memory that the other ranks of the world on this host can read
 * directly (a shared-memory file, populated up front). Collectives on the shm backend whose
 * buffers lie in such memory skip copying them through the group's segment: an allreduce reads
 * every member's input in place (and, when the outputs are par_alloc'ed too, each member reduces
 * its share into its own output and the others copy it from there); allgather and broadcast
 * read the sources in place (ops of 16 KiB and more; smaller ones gain nothing from it). Any
 * buffer works with any collective; this only makes it faster.
 * Not collective. Free with par_free before destroying the world. Thread-safe.
 */
par_status par_alloc(par_world *world, size_t bytes, void **out);
/* Frees memory from par_alloc. NULL does nothing. No collective may be using it. */
par_status par_free(par_world *world, void *ptr);

/* ------------------------------------------------------------------------------------------ */
/* Groups                                                                                     */
/* ------------------------------------------------------------------------------------------ */

typedef enum par_backend {
  PAR_BACKEND_AUTO = 0, /* shm when all members share this host */
  PAR_BACKEND_SHM = 1,
  PAR_BACKEND_MPI = 2, /* groups that span hosts need a world started by MPI (docs/mpi.md) */
  PAR_BACKEND_COUNT
} par_backend;

const char *par_backend_name(par_backend b);
par_status par_backend_parse(const char *name, par_backend *out);

typedef struct par_group_options {
  par_backend backend; /* PAR_BACKEND_AUTO: from PAR_BACKEND, else the best available */
  double timeout_s;    /* <= 0: the world's default */
  const char *name;    /* for log and error messages; NULL: "group" */
} par_group_options;

#define PAR_GROUP_OPTIONS_INIT {PAR_BACKEND_AUTO, 0.0, NULL}

/*
 * Creates a group from `n` distinct global ranks, listed in the order that gives their index
 * in the group. Only the members take part: every member must call it with the same list, in
 * the same order relative to other creations of groups with that list; non-members never call
 * it. Blocks until all members have joined or the timeout runs out. opts may be NULL.
 * Returns PAR_ERR_NOT_MEMBER if this rank is not in the list.
 */
par_status par_group_create(par_world *world, const int *ranks, int n,
                            const par_group_options *opts, par_group **out);
/* Destroys a group created with par_group_create (not the world group). Pending async work
 * is aborted. NULL does nothing. Not collective. */
void par_group_destroy(par_group *group);

int par_group_size(const par_group *group);
/* This rank's index in the group, 0 <= index < size. */
int par_group_index(const par_group *group);
/* The global rank of the member at `index`, or -1 if out of range. */
int par_group_global_rank(const par_group *group, int index);
/* The members' global ranks, in index order; valid while the group lives. */
const int *par_group_ranks(const par_group *group);
const char *par_group_name(const par_group *group);
par_backend par_group_backend(const par_group *group);
const char *par_group_last_error(const par_group *group);
/* Sets the timeout applied to ops issued from now on. */
par_status par_group_set_timeout(par_group *group, double timeout_s);

/*
 * Aborts the group: every pending and later op on it, on every member, fails with
 * PAR_ERR_ABORTED. Callable from any thread, including while another thread is blocked in an
 * op of the group. After an error other than a bad argument or a mismatch, a group is broken
 * and must be destroyed (as in NCCL).
 */
void par_group_abort(par_group *group);

/* ------------------------------------------------------------------------------------------ */
/* Work handles for async ops                                                                 */
/* ------------------------------------------------------------------------------------------ */

/*
 * Waits for the work to complete, at most timeout_s seconds (< 0: the op's own timeout).
 * Returns the op's status, or PAR_ERR_TIMEOUT if the wait ran out (the work stays pending and
 * may be waited on again). The output buffers hold the result when it returns PAR_OK.
 */
par_status par_work_wait(par_work *work, double timeout_s);
/* PAR_IN_PROGRESS while pending, else the op's status. Never blocks. */
par_status par_work_test(par_work *work);
/* The error detail of a failed op ("" when none). */
const char *par_work_error(const par_work *work);
/* Frees the handle. If the work is still pending it waits for it first. NULL does nothing. */
void par_work_free(par_work *work);

/* ------------------------------------------------------------------------------------------ */
/* Collectives                                                                                */
/*                                                                                            */
/* Every member of the group must issue the same collectives in the same order with matching  */
/* dtype, count, op and root: members check this before any byte moves, and a difference is  */
/* PAR_ERR_MISMATCH on every member, naming both calls (the group stays usable; with         */
/* PAR_CHECK=1 they compare op numbers too). Send/recv are numbered per peer and never shift  */
/* what collectives compare. Ops on a group complete in issue order. Results are bitwise     */
/* identical on every rank and from run to run: reductions combine contributions in index    */
/* order 0, 1, ..., n-1. Each blocking call has an _async form that returns a par_work in     */
/* *work (NULL work pointer is an error); the blocking form is the async form plus wait.      */
/* `count` is a number of elements; a count of 0 is valid, moves nothing, and still checks    */
/* that the members agree.                                                                    */
/* ------------------------------------------------------------------------------------------ */

/* Reduces `count` elements from every member and leaves the result in every member's recvbuf.
 * In-place when sendbuf == recvbuf. */
par_status par_allreduce(par_group *g, const void *sendbuf, void *recvbuf, size_t count,
                         par_dtype dt, par_op op);
par_status par_allreduce_async(par_group *g, const void *sendbuf, void *recvbuf, size_t count,
                               par_dtype dt, par_op op, par_work **work);

/* Gathers `count` elements from every member into recvbuf (size*count elements, member i's
 * at offset i*count) on every member. In-place when sendbuf == recvbuf + index*count. */
par_status par_allgather(par_group *g, const void *sendbuf, void *recvbuf, size_t count,
                         par_dtype dt);
par_status par_allgather_async(par_group *g, const void *sendbuf, void *recvbuf, size_t count,
                               par_dtype dt, par_work **work);

/* Reduces size*count elements from every member; member i receives block i (count elements).
 * In-place when recvbuf == sendbuf + index*count. */
par_status par_reduce_scatter(par_group *g, const void *sendbuf, void *recvbuf, size_t count,
                              par_dtype dt, par_op op);
par_status par_reduce_scatter_async(par_group *g, const void *sendbuf, void *recvbuf,
                                    size_t count, par_dtype dt, par_op op, par_work **work);

/* Copies `count` elements of root's buf to every member's buf. Always in place. `root` is an
 * index in the group. */
par_status par_broadcast(par_group *g, void *buf, size_t count, par_dtype dt, int root);
par_status par_broadcast_async(par_group *g, void *buf, size_t count, par_dtype dt, int root,
                               par_work **work);

/* Reduces `count` elements from every member into root's recvbuf; recvbuf is ignored (may be
 * NULL) on other members. In-place on root when sendbuf == recvbuf. */
par_status par_reduce(par_group *g, const void *sendbuf, void *recvbuf, size_t count,
                      par_dtype dt, par_op op, int root);
par_status par_reduce_async(par_group *g, const void *sendbuf, void *recvbuf, size_t count,
                            par_dtype dt, par_op op, int root, par_work **work);

/* Member i sends block j (count elements at sendbuf + j*count) to member j, which stores it
 * at recvbuf + i*count. Not in place: sendbuf and recvbuf must not overlap. */
par_status par_alltoall(par_group *g, const void *sendbuf, void *recvbuf, size_t count,
                        par_dtype dt);
par_status par_alltoall_async(par_group *g, const void *sendbuf, void *recvbuf, size_t count,
                              par_dtype dt, par_work **work);

/* Returns when every member has entered the barrier. */
par_status par_barrier(par_group *g);
par_status par_barrier_async(par_group *g, par_work **work);

/* Point to point: sends `count` elements to the member at index `peer`, which must post a
 * matching recv with the same count and dtype. Messages between two members arrive in the
 * order they were sent. A blocking send may wait until the receiver takes the data; a pair of
 * ranks that both send before receiving large messages must use the async forms, whose
 * consecutive send/recv ops progress together. `peer` may be this rank itself (a copy), with
 * the async forms: a blocking send to self waits for a recv that cannot be posted. */
par_status par_send(par_group *g, const void *buf, size_t count, par_dtype dt, int peer);
par_status par_send_async(par_group *g, const void *buf, size_t count, par_dtype dt, int peer,
                          par_work **work);
par_status par_recv(par_group *g, void *buf, size_t count, par_dtype dt, int peer);
par_status par_recv_async(par_group *g, void *buf, size_t count, par_dtype dt, int peer,
                          par_work **work);

/* ------------------------------------------------------------------------------------------ */
/* Mesh: the parallel layout (model, pipeline, data parallel groups) and tensor ops           */
/* ------------------------------------------------------------------------------------------ */

/*
 * The layout is pure arithmetic: a row-major mesh of named dims whose sizes multiply to the
 * world, the last dim varying fastest. The default mesh has dims (dp, pp, mp), so
 *
 *     rank = (d*PP + p)*MP + m,   m = rank % MP,   p = (rank / MP) % PP,   d = rank / (MP*PP)
 *
 * and for 8 ranks with mp=2, pp=2 the groups are
 *     mp [[0,1],[2,3],[4,5],[6,7]]   pp [[0,2],[1,3],[4,6],[5,7]]   dp [[0,4],[1,5],[2,6],[3,7]].
 * A group over a set of dims holds the ranks that agree on every other dim; its members are
 * listed in mesh order, so a rank's index in a one-dim group is its coordinate on that dim.
 * Groups are numbered row-major over the dims they do not span. docs/parallelism.md has more.
 *
 * The par_layout_* functions need no world (the parlayout tool uses them); they are pure and
 * thread-safe. A par_mesh puts a layout on a world and creates the groups of this rank.
 */

#define PAR_LAYOUT_MAX_DIMS 8
#define PAR_LAYOUT_NAME_MAX 16 /* bytes of a dim name, including the terminating NUL */

/* A set of dims, bit i for dim i. */
typedef uint32_t par_dims;

/* A value type: fill it with par_layout_init or par_layout_init_parallel and treat the fields
 * as read-only. */
typedef struct par_layout {
  int world; /* the product of the sizes */
  int ndims;
  int size[PAR_LAYOUT_MAX_DIMS];
  char name[PAR_LAYOUT_MAX_DIMS][PAR_LAYOUT_NAME_MAX];
} par_layout;

/*
 * Makes a layout of `ndims` dims named names[i] (1-15 characters of [A-Za-z0-9_], distinct)
 * with sizes[i] >= 1; at most one size may be -1, which is derived as world / (product of the
 * others). The sizes must multiply to `world`. Errors (with a detail in par_last_error()):
 * PAR_ERR_NULL, PAR_ERR_INVALID for bad counts, names or sizes and for sizes that do not divide
 * the world (the detail names both numbers).
 */
par_status par_layout_init(par_layout *layout, int world, int ndims, const char *const *names,
                           const int *sizes);

/*
 * The (dp, pp, mp) layout of model parallel size `mp` and pipeline parallel size `pp` on
 * `world` ranks; dp = world / (mp*pp). mp larger than the world is clamped to the world and a
 * warning is written into `warning` (cap bytes; may be NULL when cap is 0; "" when there is
 * none); pp is never clamped. A world not divisible by mp, or by mp*pp, is PAR_ERR_INVALID with
 * a detail that names both numbers; sizes below 1 are PAR_ERR_INVALID. par_init_parallelism and
 * parlayout use this function, so they report the same messages.
 */
par_status par_layout_init_parallel(par_layout *layout, int world, int mp, int pp, char *warning,
                                    size_t cap);

/* The index of the dim called `name`, or -1 when there is none. */
int par_layout_find(const par_layout *layout, const char *name);
/* Parses a comma-separated list of dim names ("mp", "pp,mp", "dp, pp") into a set. The order
 * of the names does not matter; an unknown, repeated or empty name is PAR_ERR_INVALID naming
 * it and the dims that exist. */
par_status par_layout_parse_dims(const par_layout *layout, const char *names, par_dims *out);
/* Writes the names of the dims in `dims`, in mesh order, as "pp,mp" into buf (cap bytes). */
void par_layout_format_dims(const par_layout *layout, par_dims dims, char *buf, size_t cap);

/* The coordinate of `rank` on dim `dim`; -1 when either is out of range. */
int par_layout_coord(const par_layout *layout, int rank, int dim);
/* The rank at the given coordinates (ndims of them); -1 when one is out of range. */
int par_layout_rank(const par_layout *layout, const int *coords);
/* The rank `delta` steps from `rank` along dim `dim`, the other coordinates unchanged; wraps
 * around the dim. -1 when rank or dim is out of range. */
int par_layout_shift(const par_layout *layout, int rank, int dim, int delta);

/* The number of members of a group over `dims` (the product of their sizes; 1 for no dims). */
int par_layout_group_size(const par_layout *layout, par_dims dims);
/* How many such groups there are (world / group size). */
int par_layout_group_count(const par_layout *layout, par_dims dims);
/* The number of the group over `dims` that holds `rank`; -1 when rank is out of range. */
int par_layout_group_id(const par_layout *layout, par_dims dims, int rank);
/* The index of `rank` within its group over `dims`; -1 when rank is out of range. */
int par_layout_group_index(const par_layout *layout, par_dims dims, int rank);
/* Writes the members of group number `id` over `dims`, in index order, into ranks[0..size). */
par_status par_layout_group_ranks(const par_layout *layout, par_dims dims, int id, int *ranks);

/* ---- Mesh: a layout on a world, with this rank's groups -------------------------------- */

typedef struct par_mesh par_mesh;

/* A group of the mesh as seen by this rank. The pointers stay valid while the mesh lives. */
typedef struct par_group_info {
  par_group *group; /* collectives and tensor ops go through it */
  const int *ranks; /* the members' global ranks, in index order */
  int size;         /* number of members */
  int index;        /* this rank's index in the group (its coordinate, for a one-dim group) */
} par_group_info;

/* Fills *out from any group. */
par_status par_group_info_get(par_group *group, par_group_info *out);

typedef struct par_mesh_options {
  int mp;                 /* model (tensor) parallel size, >= 1; clamped to the world */
  int pp;                 /* pipeline parallel size, >= 1 */
  par_backend mp_backend; /* backend of each kind of group; AUTO: as par_group_create */
  par_backend pp_backend;
  par_backend dp_backend;
  double timeout_s;       /* per-op timeout of the mesh's groups; <= 0: the world's */
} par_mesh_options;

#define PAR_MESH_OPTIONS_INIT {1, 1, PAR_BACKEND_AUTO, PAR_BACKEND_AUTO, PAR_BACKEND_AUTO, 0.0}

/*
 * Creates the (dp, pp, mp) mesh of par_layout_init_parallel on `world` and this rank's mp, pp
 * and dp groups (a rank creates only the groups it is in). opts may be NULL (mp = pp = 1).
 * The mp clamp is logged as a warning; on world rank 0 the configuration is logged at info
 * level (see par_mesh_describe). Collective over all ranks of the world, which must pass the
 * same options: the ranks compare them first (one small all-reduce over the world) and a
 * difference is PAR_ERR_MISMATCH on every rank. Blocks until the groups are formed. On error
 * *out is NULL and the detail is in par_last_error(). Thread-safe.
 */
par_status par_mesh_create(par_world *world, const par_mesh_options *opts, par_mesh **out);

/*
 * Creates a general mesh: `layout` (whose world must equal the world's size) and one group per
 * dim, with backends[i] for dim i (backends may be NULL: all AUTO) and the world's timeout.
 * Collective over all ranks of the world, like par_mesh_create.
 */
par_status par_mesh_create_layout(par_world *world, const par_layout *layout,
                                  const par_backend *backends, par_mesh **out);

/* Destroys the mesh and the groups it created (not the world). Not collective; NULL does
 * nothing. Group infos taken from the mesh are invalid afterwards. */
void par_mesh_destroy(par_mesh *mesh);

const par_layout *par_mesh_layout(const par_mesh *mesh);
par_world *par_mesh_world(const par_mesh *mesh);
/* Detail of the last error of a call on this mesh. */
const char *par_mesh_last_error(const par_mesh *mesh);
/* This rank's coordinate on the dim called `dim`, or -1 when there is no such dim. */
int par_mesh_coord(const par_mesh *mesh, const char *dim);
/* The size of the dim called `dim`, or -1 when there is no such dim. */
int par_mesh_dim_size(const par_mesh *mesh, const char *dim);

/*
 * The group over the comma-separated dims `dims` that holds this rank ("mp", "pp", "dp" on the
 * default mesh; "pp,mp" for the model group once created). The groups of single dims and of
 * all dims (the world group) always exist; others exist once par_mesh_group_create made them
 * (PAR_ERR_STATE otherwise). Does not block. Thread-safe.
 */
par_status par_mesh_group(par_mesh *mesh, const char *dims, par_group_info *out);
/*
 * Creates (or returns, if it already exists) the group over the dims `dims` that holds this
 * rank, e.g. "pp,mp" (the model group) or "dp,pp". opts may be NULL. Members are in mesh
 * order. Collective over the world when it creates: every rank makes the same calls in the
 * same order (each rank creates only its own group). Call it from one thread at a time;
 * par_mesh_group may run concurrently.
 */
par_status par_mesh_group_create(par_mesh *mesh, const char *dims, const par_group_options *opts,
                                 par_group_info *out);

/*
 * Pipeline stages are the coordinates on the dim "pp" (a mesh without one has a single stage).
 * A stage's index in the pp group is its stage number, so par_send(pp.group, ..., stage + 1)
 * sends to the next stage.
 */
int par_mesh_stage(const par_mesh *mesh);
int par_mesh_num_stages(const par_mesh *mesh);
int par_mesh_is_first_stage(const par_mesh *mesh);
int par_mesh_is_last_stage(const par_mesh *mesh);
/* Global rank of the next (previous) stage of this rank's pipeline; -1 on the last (first). */
int par_mesh_next_stage_rank(const par_mesh *mesh);
int par_mesh_prev_stage_rank(const par_mesh *mesh);

/* One line stating the configuration: "model parallel 2, pipeline parallel 2, data parallel
 * 2 (world 8)" on the default mesh, "dims dp=2 pp=2 mp=2 (world 8)" on a general one. Valid
 * while the mesh lives. The same text is what par_mesh_create logs at info level. */
const char *par_mesh_describe(const par_mesh *mesh);

/* ---- The process-wide default mesh (the original API) ---------------------------------- */

/*
 * Creates the process-wide default mesh with par_mesh_create. Errors: PAR_ERR_STATE when it is
 * already initialised ("call par_reset_parallelism() first") or when world is NULL (the world
 * must be created first); the errors of par_mesh_create. Collective over the world. Thread-safe;
 * other calls of this section wait while it runs.
 */
par_status par_init_parallelism(par_world *world, const par_mesh_options *opts);
/* 1 when the default mesh exists, else 0. Thread-safe. */
int par_parallelism_is_initialized(void);
/* Destroys the default mesh; afterwards par_init_parallelism may be called again. Group infos
 * taken from it become invalid. Not collective. Does nothing when not initialised. */
void par_reset_parallelism(void);
/* The default mesh, or NULL when not initialised. */
par_mesh *par_default_mesh(void);
/* The group infos of the default mesh: the whole world, and this rank's mp, pp and dp groups.
 * PAR_ERR_STATE before par_init_parallelism. */
par_status par_default_group_info(par_group_info *out);
par_status par_mp_group_info(par_group_info *out);
par_status par_pp_group_info(par_group_info *out);
par_status par_dp_group_info(par_group_info *out);

/* ---- Tensor ops on a group, on DLPack tensors ------------------------------------------ */
/*
 * Tensors live in host memory (device kDLCPU, kDLCUDAHost or kDLROCMHost) and have up to 32
 * dims. Strides may be NULL (compact row-major) or any non-negative values; negative strides
 * are PAR_ERR_UNSUPPORTED. A negative `dim` counts from the end (-1 is the last dim). Errors
 * carry a detail in par_last_error() and, when the group is not NULL, par_group_last_error().
 */

/* The par dtype of a DLPack dtype: float 16/32/64, bfloat 16, int 8/32/64, uint 8, lanes 1.
 * Anything else is PAR_ERR_DTYPE. */
par_status par_dtype_from_dlpack(DLDataType dt, par_dtype *out);

/*
 * Sets *out to a view of this rank's slice of `in` along `dim`: the group splits that dim into
 * size equal parts and member i gets part i. No data is copied: out->data is in->data and
 * out->byte_offset points at the slice. out->shape and out->strides are set to the caller's
 * arrays `shape` and `strides` (in->ndim entries each), which must outlive the view. A dim not
 * divisible by the group size is PAR_ERR_COUNT. Any dtype of whole bytes may be split. Local:
 * does not communicate, does not block. Thread-safe.
 */
par_status par_tensor_split(const par_group *group, const DLTensor *in, int dim, DLTensor *out,
                            int64_t *shape, int64_t *strides);

/*
 * All-gathers `in` from every member and concatenates the parts along `dim` in index order
 * into `out`, whose shape must be in's with dim multiplied by the group size (PAR_ERR_COUNT
 * otherwise) and whose dtype must equal in's (PAR_ERR_DTYPE; any dtype of whole bytes, moved
 * as it is). in and out may have any strides (out must not overlap itself). in may be this
 * rank's slice of out (as par_tensor_split gives it): that gathers in place; otherwise in and
 * out must not overlap. Collective over the group; blocks until out holds the result.
 */
par_status par_tensor_gather(par_group *group, const DLTensor *in, int dim, DLTensor *out);
/* The async form: out holds the result once the work has completed with PAR_OK. The memory of
 * in and out must stay valid and untouched until then; the descriptors themselves (the DLTensor
 * structs and their shape and strides arrays) need not outlive the call. */
par_status par_tensor_gather_async(par_group *group, const DLTensor *in, int dim, DLTensor *out,
                                   par_work **work);

/*
 * All-reduces `t` in place with `op` over the group: afterwards every member's t holds the
 * reduction of all members' t (same shape and dtype on every member). Non-contiguous tensors
 * work (through a temporary buffer unless their elements fill a dense block). Collective over
 * the group; blocks.
 */
par_status par_tensor_reduce(par_group *group, DLTensor *t, par_op op);
/* The async form: t holds the result once the work has completed with PAR_OK; t's memory must
 * stay valid and untouched until then, its descriptor need not. */
par_status par_tensor_reduce_async(par_group *group, DLTensor *t, par_op op, par_work **work);

#ifdef __cplusplus
}
#endif

#endif /* PAR_H */
