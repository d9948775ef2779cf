/*
 * mesh.c -- a layout put on a world: this rank's coordinates and the groups that hold it.
 *
 * A rank computes the members of each of its groups from the layout (layout.c) and creates
 * only those groups, with par_group_create, which only members call: creating the mesh is
 * O(group size) work per rank and never waits on ranks outside its groups. Every rank creates
 * its groups in the same order (dim 0, 1, ...), so a group's members all reach its creation
 * while working through that same order, and no cycle of waits can form. A group that spans
 * the whole world is the world's own group rather than a second copy of it.
 *
 * The process-wide default mesh of the original API (par_init_parallelism and friends) lives
 * at the end of this file.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/core.h"

typedef struct mesh_group {
  par_dims dims;
  par_group *group;
  int owned; /* 0 for the world group, which belongs to the world */
} mesh_group;

struct par_mesh {
  par_world *world;
  par_layout layout;
  int rank;
  int coords[PAR_LAYOUT_MAX_DIMS];
  int pp_dim; /* index of the dim "pp", or -1 */
  double timeout_s;

  pthread_mutex_t mu; /* guards groups[] (lookups may race with par_mesh_group_create) and
                         last_error */
  mesh_group *groups;
  int ngroups, capgroups;

  char describe[192];
  char last_error[PAR__ERRLEN];
};

/* ---------------------------------------------------------------------------------------- */
/* Groups                                                                                   */
/* ---------------------------------------------------------------------------------------- */

par_status par_group_info_get(par_group *group, par_group_info *out) {
  PAR_RETURN_ERROR_IF(!group || !out, PAR_ERR_NULL,
                      "par_group_info_get: group and out must not be NULL");
  out->group = group;
  out->ranks = par_group_ranks(group);
  out->size = par_group_size(group);
  out->index = par_group_index(group);
  return PAR_OK;
}

/* The entry for `dims`, or NULL. Called with m->mu held. */
static mesh_group *find_group(par_mesh *m, par_dims dims) {
  for (int i = 0; i < m->ngroups; i++)
    if (m->groups[i].dims == dims) return &m->groups[i];
  return NULL;
}

static par_status add_group(par_mesh *m, par_dims dims, par_group *g, int owned) {
  pthread_mutex_lock(&m->mu);
  if (m->ngroups == m->capgroups) {
    int cap = m->capgroups ? m->capgroups * 2 : 8;
    mesh_group *ng = realloc(m->groups, sizeof *ng * (size_t)cap);
    if (!ng) {
      pthread_mutex_unlock(&m->mu);
      return par__error(PAR_ERR_NOMEM, "mesh: out of memory for its group table");
    }
    m->groups = ng;
    m->capgroups = cap;
  }
  m->groups[m->ngroups++] = (mesh_group){dims, g, owned};
  pthread_mutex_unlock(&m->mu);
  return PAR_OK;
}

/* Creates this rank's group over `dims` and adds it to the mesh. Only members of that group
 * call this for it, which is every rank, each for its own group. */
static par_status create_group(par_mesh *m, par_dims dims, par_backend backend, double timeout_s,
                               par_group **out) {
  const par_layout *l = &m->layout;
  par_group *world_group = par_world_group(m->world);
  int size = par_layout_group_size(l, dims);
  int id = par_layout_group_id(l, dims, m->rank);

  /* Members in mesh order are ascending ranks, so a group of every rank is the world group;
   * reuse it unless the caller asked for a backend or timeout of its own. */
  if (size == l->world &&
      (backend == PAR_BACKEND_AUTO || backend == par_group_backend(world_group)) &&
      timeout_s <= 0) {
    if (out) *out = world_group;
    return add_group(m, dims, world_group, 0);
  }

  int *ranks = malloc(sizeof(int) * (size_t)size);
  PAR_RETURN_ERROR_IF(!ranks, PAR_ERR_NOMEM, "mesh: out of memory for %d ranks", size);
  par_status s;
  PAR_FORWARD_IF_ERROR_GOTO(par_layout_group_ranks(l, dims, id, ranks), s, fail_free);

  char dims_name[PAR_LAYOUT_MAX_DIMS * PAR_LAYOUT_NAME_MAX], name[64];
  par_layout_format_dims(l, dims, dims_name, sizeof dims_name);
  snprintf(name, sizeof name, "%.50s#%d", dims_name, id);
  par_group_options go = PAR_GROUP_OPTIONS_INIT;
  go.backend = backend;
  go.timeout_s = timeout_s;
  go.name = name;

  par_group *g = NULL;
  s = par_group_create(m->world, ranks, size, &go, &g);
  free(ranks);
  if (s < 0) {
    char detail[PAR__ERRLEN];
    par__error_keep(detail, NULL, s);
    return par__error(s, "mesh: creating group %s (%d members) failed: %s", name, size, detail);
  }
  int expect_index = par_layout_group_index(l, dims, m->rank);
  if (par_group_index(g) != expect_index) {
    int got = par_group_index(g);
    par_group_destroy(g);
    return par__error(PAR_ERR_INTERNAL, "mesh: group %s gave index %d, the layout says %d", name,
                      got, expect_index);
  }
  s = add_group(m, dims, g, 1);
  if (s < 0) par_group_destroy(g);
  if (s >= 0 && out) *out = g;
  return s;

fail_free:
  free(ranks);
  return s;
}

/* ---------------------------------------------------------------------------------------- */
/* Create and destroy                                                                       */
/* ---------------------------------------------------------------------------------------- */

static par_status check_backend(par_backend b, const char *what) {
  PAR_RETURN_ERROR_IF((unsigned)b >= PAR_BACKEND_COUNT, PAR_ERR_INVALID,
                      "mesh: invalid backend %d for %s", (int)b, what);
  return PAR_OK;
}

/* Ranks that disagree on the layout or the backends would ask for groups that never fill up
 * and wait out the timeout; one small all-reduce over the world finds that at once. Each value
 * goes in twice, as v and -v, so a single MAX gives both the largest and the smallest. */
static par_status agree(par_world *world, const par_layout *l, const par_backend *backends) {
  enum { MAXV = 2 + 2 * PAR_LAYOUT_MAX_DIMS };
  int64_t v[2 * MAXV];
  int n = 0;
  uint64_t h = PAR__FNV_OFFSET; /* of the dim names, each followed by ',' */
  for (int i = 0; i < l->ndims; i++) {
    h = par__fnv1a(l->name[i], strlen(l->name[i]), h);
    h = par__fnv1a(",", 1, h);
  }
  v[n++] = l->ndims;
  v[n++] = (int64_t)(h >> 2);
  for (int i = 0; i < l->ndims; i++) v[n++] = l->size[i];
  for (int i = 0; i < l->ndims; i++) v[n++] = backends ? (int64_t)backends[i] : 0;
  for (int i = 0; i < n; i++) v[n + i] = -v[i];
  par_group *wg = par_world_group(world);
  PAR_FORWARD_IF_ERROR(par_allreduce(wg, v, v, (size_t)(2 * n), PAR_I64, PAR_MAX));
  for (int i = 0; i < n; i++)
    PAR_RETURN_ERROR_IF(v[i] != -v[n + i], PAR_ERR_MISMATCH,
                        "mesh: the ranks of the world asked for different meshes (dim names, "
                        "sizes or backends differ); every rank must pass the same options");
  return PAR_OK;
}

/* Destroys a mesh that failed to build and returns its error s. The reason is kept across:
 * tearing down the groups made so far may record details of its own. */
static par_status abandon(par_mesh *m, par_status s) {
  char detail[PAR__ERRLEN];
  par__error_keep(detail, NULL, s);
  par_mesh_destroy(m);
  return par__error(s, "%s", detail);
}

/* Makes the mesh of layout `l` and creates one group per dim, then the describe line. */
static par_status mesh_build(par_world *world, const par_layout *l, const par_backend *backends,
                             double timeout_s, int parallel, par_mesh **out) {
  par_mesh *m = calloc(1, sizeof *m);
  PAR_RETURN_ERROR_IF(!m, PAR_ERR_NOMEM, "mesh: out of memory");
  pthread_mutex_init(&m->mu, NULL);
  m->world = world;
  m->layout = *l;
  m->rank = par_world_rank(world);
  m->timeout_s = timeout_s;
  for (int i = 0; i < l->ndims; i++) m->coords[i] = par_layout_coord(l, m->rank, i);
  m->pp_dim = par_layout_find(l, "pp");

  par_status s;
  PAR_FORWARD_IF_ERROR_GOTO(agree(world, l, backends), s, fail_destroy);
  PAR_FORWARD_IF_ERROR_GOTO(add_group(m, (1u << l->ndims) - 1, par_world_group(world), 0), s,
                            fail_destroy);
  for (int i = 0; i < l->ndims; i++)
    PAR_FORWARD_IF_ERROR_GOTO(
        create_group(m, 1u << i, backends ? backends[i] : PAR_BACKEND_AUTO, timeout_s, NULL), s,
        fail_destroy);

  if (parallel) {
    snprintf(m->describe, sizeof m->describe,
             "model parallel %d, pipeline parallel %d, data parallel %d (world %d)", l->size[2],
             l->size[1], l->size[0], l->world);
  } else {
    size_t len = (size_t)snprintf(m->describe, sizeof m->describe, "mesh");
    for (int i = 0; i < l->ndims && len < sizeof m->describe; i++)
      len += (size_t)snprintf(m->describe + len, sizeof m->describe - len, " %s=%d", l->name[i],
                              l->size[i]);
    if (len < sizeof m->describe)
      snprintf(m->describe + len, sizeof m->describe - len, " (world %d)", l->world);
  }
  /* One line for the job, not one per rank. */
  if (m->rank == 0) PAR__LOG_INFO("%s", m->describe);
  *out = m;
  return PAR_OK;

fail_destroy:
  return abandon(m, s);
}

par_status par_mesh_create(par_world *world, const par_mesh_options *opts, par_mesh **out) {
  PAR_RETURN_ERROR_IF(!out, PAR_ERR_NULL, "par_mesh_create: out is NULL");
  *out = NULL;
  PAR_RETURN_ERROR_IF(!world, PAR_ERR_NULL, "par_mesh_create: world is NULL");
  par_mesh_options defaults = PAR_MESH_OPTIONS_INIT;
  if (!opts) opts = &defaults;
  PAR_FORWARD_IF_ERROR(check_backend(opts->mp_backend, "mp"));
  PAR_FORWARD_IF_ERROR(check_backend(opts->pp_backend, "pp"));
  PAR_FORWARD_IF_ERROR(check_backend(opts->dp_backend, "dp"));

  par_layout l;
  char warning[256];
  par_status s = par_layout_init_parallel(&l, par_world_size(world), opts->mp, opts->pp, warning,
                                          sizeof warning);
  /* Every rank computes the same clamp; one warning for the job is enough. */
  if (warning[0] && par_world_rank(world) == 0) PAR__LOG_WARN("%s", warning);
  PAR_FORWARD_IF_ERROR(s);

  const par_backend backends[3] = {opts->dp_backend, opts->pp_backend, opts->mp_backend};
  return mesh_build(world, &l, backends, opts->timeout_s, 1, out);
}

par_status par_mesh_create_layout(par_world *world, const par_layout *layout,
                                  const par_backend *backends, par_mesh **out) {
  PAR_RETURN_ERROR_IF(!out, PAR_ERR_NULL, "par_mesh_create_layout: out is NULL");
  *out = NULL;
  PAR_RETURN_ERROR_IF(!world || !layout, PAR_ERR_NULL,
                      "par_mesh_create_layout: world and layout must not be NULL");
  PAR_RETURN_ERROR_IF(layout->ndims < 1 || layout->ndims > PAR_LAYOUT_MAX_DIMS, PAR_ERR_INVALID,
                      "par_mesh_create_layout: the layout has %d dims; make it with "
                      "par_layout_init",
                      layout->ndims);
  PAR_RETURN_ERROR_IF(layout->world != par_world_size(world), PAR_ERR_INVALID,
                      "par_mesh_create_layout: the layout is for %d ranks, the world has %d",
                      layout->world, par_world_size(world));
  /* Re-validate through par_layout_init, so a hand-filled struct gets the same checks. */
  const char *names[PAR_LAYOUT_MAX_DIMS];
  for (int i = 0; i < layout->ndims; i++) names[i] = layout->name[i];
  par_layout l;
  PAR_FORWARD_IF_ERROR(par_layout_init(&l, layout->world, layout->ndims, names, layout->size));
  for (int i = 0; backends && i < l.ndims; i++)
    PAR_FORWARD_IF_ERROR(check_backend(backends[i], l.name[i]));
  return mesh_build(world, &l, backends, 0.0, 0, out);
}

void par_mesh_destroy(par_mesh *mesh) {
  if (!mesh) return;
  /* Destroy in reverse order of creation, the mirror of the build. */
  for (int i = mesh->ngroups - 1; i >= 0; i--)
    if (mesh->groups[i].owned) par_group_destroy(mesh->groups[i].group);
  free(mesh->groups);
  pthread_mutex_destroy(&mesh->mu);
  free(mesh);
}

/* ---------------------------------------------------------------------------------------- */
/* Queries                                                                                  */
/* ---------------------------------------------------------------------------------------- */

const par_layout *par_mesh_layout(const par_mesh *mesh) { return mesh ? &mesh->layout : NULL; }
par_world *par_mesh_world(const par_mesh *mesh) { return mesh ? mesh->world : NULL; }
const char *par_mesh_last_error(const par_mesh *mesh) { return mesh ? mesh->last_error : ""; }
const char *par_mesh_describe(const par_mesh *mesh) { return mesh ? mesh->describe : ""; }

int par_mesh_coord(const par_mesh *mesh, const char *dim) {
  int i = mesh ? par_layout_find(&mesh->layout, dim) : -1;
  return i < 0 ? -1 : mesh->coords[i];
}

int par_mesh_dim_size(const par_mesh *mesh, const char *dim) {
  int i = mesh ? par_layout_find(&mesh->layout, dim) : -1;
  return i < 0 ? -1 : mesh->layout.size[i];
}

/* Parses `dims` and finds the mesh's group over them; *g is NULL when it does not exist yet. */
static par_status lookup(par_mesh *m, const char *dims, par_dims *set, par_group **g) {
  PAR_FORWARD_IF_ERROR(par_layout_parse_dims(&m->layout, dims, set));
  pthread_mutex_lock(&m->mu);
  mesh_group *e = find_group(m, *set);
  *g = e ? e->group : NULL;
  pthread_mutex_unlock(&m->mu);
  return PAR_OK;
}

par_status par_mesh_group(par_mesh *mesh, const char *dims, par_group_info *out) {
  PAR_RETURN_ERROR_IF(!mesh || !dims || !out, PAR_ERR_NULL,
                      "par_mesh_group: mesh, dims and out must not be NULL");
  par_dims set;
  par_group *g;
  par_status s = lookup(mesh, dims, &set, &g);
  if (s >= 0 && !g)
    s = par__error(PAR_ERR_STATE,
                   "par_mesh_group: the group over \"%.60s\" does not exist yet; create it with "
                   "par_mesh_group_create",
                   dims);
  if (s < 0) return par__error_keep(mesh->last_error, &mesh->mu, s);
  return par_group_info_get(g, out);
}

par_status par_mesh_group_create(par_mesh *mesh, const char *dims, const par_group_options *opts,
                                 par_group_info *out) {
  PAR_RETURN_ERROR_IF(!mesh || !dims || !out, PAR_ERR_NULL,
                      "par_mesh_group_create: mesh, dims and out must not be NULL");
  par_group_options defaults = PAR_GROUP_OPTIONS_INIT;
  if (!opts) opts = &defaults;
  par_dims set;
  par_group *g;
  par_status s = lookup(mesh, dims, &set, &g);
  if (s >= 0 && !g) {
    s = check_backend(opts->backend, dims);
    if (s >= 0)
      s = create_group(mesh, set, opts->backend,
                       opts->timeout_s > 0 ? opts->timeout_s : mesh->timeout_s, &g);
  }
  if (s < 0) return par__error_keep(mesh->last_error, &mesh->mu, s);
  return par_group_info_get(g, out);
}

/* ---------------------------------------------------------------------------------------- */
/* Pipeline stages                                                                          */
/* ---------------------------------------------------------------------------------------- */

int par_mesh_stage(const par_mesh *mesh) {
  if (!mesh) return -1;
  return mesh->pp_dim < 0 ? 0 : mesh->coords[mesh->pp_dim];
}

int par_mesh_num_stages(const par_mesh *mesh) {
  if (!mesh) return -1;
  return mesh->pp_dim < 0 ? 1 : mesh->layout.size[mesh->pp_dim];
}

int par_mesh_is_first_stage(const par_mesh *mesh) { return mesh && par_mesh_stage(mesh) == 0; }

int par_mesh_is_last_stage(const par_mesh *mesh) {
  return mesh && par_mesh_stage(mesh) == par_mesh_num_stages(mesh) - 1;
}

int par_mesh_next_stage_rank(const par_mesh *mesh) {
  if (!mesh || par_mesh_is_last_stage(mesh)) return -1;
  return par_layout_shift(&mesh->layout, mesh->rank, mesh->pp_dim, 1);
}

int par_mesh_prev_stage_rank(const par_mesh *mesh) {
  if (!mesh || par_mesh_is_first_stage(mesh)) return -1;
  return par_layout_shift(&mesh->layout, mesh->rank, mesh->pp_dim, -1);
}

/* ---------------------------------------------------------------------------------------- */
/* The process-wide default mesh                                                            */
/* ---------------------------------------------------------------------------------------- */

/* The original kept this as module state; here it is one mesh behind a mutex. The mutex is
 * held while the mesh is created, so a second initialisation waits and then finds it done. */
static pthread_mutex_t default_mu = PTHREAD_MUTEX_INITIALIZER;
static par_mesh *default_mesh;

par_status par_init_parallelism(par_world *world, const par_mesh_options *opts) {
  pthread_mutex_lock(&default_mu);
  par_status s;
  if (default_mesh)
    s = par__error(PAR_ERR_STATE,
                   "parallelism is already initialised (%s); call par_reset_parallelism() "
                   "first",
                   default_mesh->describe);
  else if (!world)
    s = par__error(PAR_ERR_STATE,
                   "the world is not initialised: call par_world_create() before "
                   "par_init_parallelism()");
  else
    s = par_mesh_create(world, opts, &default_mesh);
  pthread_mutex_unlock(&default_mu);
  return s;
}

int par_parallelism_is_initialized(void) {
  pthread_mutex_lock(&default_mu);
  int yes = default_mesh != NULL;
  pthread_mutex_unlock(&default_mu);
  return yes;
}

void par_reset_parallelism(void) {
  pthread_mutex_lock(&default_mu);
  par_mesh *m = default_mesh;
  default_mesh = NULL;
  pthread_mutex_unlock(&default_mu);
  par_mesh_destroy(m);
}

par_mesh *par_default_mesh(void) {
  pthread_mutex_lock(&default_mu);
  par_mesh *m = default_mesh;
  pthread_mutex_unlock(&default_mu);
  return m;
}

static par_status default_info(const char *dims, const char *fn, par_group_info *out) {
  PAR_RETURN_ERROR_IF(!out, PAR_ERR_NULL, "%s: out is NULL", fn);
  pthread_mutex_lock(&default_mu);
  par_status s;
  if (!default_mesh)
    s = par__error(PAR_ERR_STATE,
                   "%s: parallelism is not initialised; call par_init_parallelism() first", fn);
  else
    s = par_mesh_group(default_mesh, dims, out);
  pthread_mutex_unlock(&default_mu);
  return s;
}

par_status par_default_group_info(par_group_info *out) {
  return default_info("dp,pp,mp", "par_default_group_info", out);
}
par_status par_mp_group_info(par_group_info *out) {
  return default_info("mp", "par_mp_group_info", out);
}
par_status par_pp_group_info(par_group_info *out) {
  return default_info("pp", "par_pp_group_info", out);
}
par_status par_dp_group_info(par_group_info *out) {
  return default_info("dp", "par_dp_group_info", out);
}
