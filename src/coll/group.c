/*
 * group.c -- creating and destroying groups. Only the members take part: each names the
 * group by a hash of its member list and how many groups with that list it has made before,
 * so members agree on the name without any non-member being involved, and the backend meets
 * its peers under that name in the store.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "coll/group.h"

/* FNV-1a of the member list (each rank as 4 little-endian bytes) and its length. */
static uint64_t hash_ranks(const int *ranks, int n) {
  uint64_t h = PAR__FNV_OFFSET;
  for (int i = 0; i < n; i++) {
    uint32_t r = (uint32_t)ranks[i];
    unsigned char le[4] = {(unsigned char)r, (unsigned char)(r >> 8), (unsigned char)(r >> 16),
                           (unsigned char)(r >> 24)};
    h = par__fnv1a(le, sizeof le, h);
  }
  uint32_t m = (uint32_t)n;
  unsigned char len[4] = {(unsigned char)m, (unsigned char)(m >> 8), (unsigned char)(m >> 16),
                          (unsigned char)(m >> 24)};
  return par__fnv1a(len, sizeof len, h);
}

/* How many groups with this member list this rank created before; counts this one. */
static par_status next_creation(par_world *w, uint64_t h, uint32_t *count) {
  pthread_mutex_lock(&w->mu);
  for (size_t i = 0; i < w->ncreated; i++)
    if (w->created[i].hash == h) {
      *count = w->created[i].count++;
      pthread_mutex_unlock(&w->mu);
      return PAR_OK;
    }
  if (w->ncreated == w->capcreated) {
    size_t cap = w->capcreated ? w->capcreated * 2 : 16;
    par__created *c = realloc(w->created, cap * sizeof *c);
    if (!c) {
      pthread_mutex_unlock(&w->mu);
      return par__error(PAR_ERR_NOMEM, "out of memory");
    }
    w->created = c;
    w->capcreated = cap;
  }
  w->created[w->ncreated++] = (par__created){h, 1};
  *count = 0;
  pthread_mutex_unlock(&w->mu);
  return PAR_OK;
}

static par_status check_members(par_world *w, const int *ranks, int n, int *index) {
  PAR_RETURN_ERROR_IF(!ranks, PAR_ERR_NULL, "par_group_create: ranks is NULL");
  PAR_RETURN_ERROR_IF(n < 1 || n > w->size, PAR_ERR_INVALID,
                      "par_group_create: %d members given; a group has 1 to %d (the world size)",
                      n, w->size);
  *index = -1;
  /* A bitmap finds duplicates in O(n) even for large worlds. */
  unsigned char *seen = calloc(((size_t)w->size + 7) / 8, 1);
  PAR_RETURN_ERROR_IF(!seen, PAR_ERR_NOMEM, "out of memory");
  for (int i = 0; i < n; i++) {
    int r = ranks[i];
    if (r < 0 || r >= w->size) {
      free(seen);
      return par__error(PAR_ERR_RANK,
                        "par_group_create: member %d is rank %d, outside the world of %d", i, r,
                        w->size);
    }
    if (seen[r / 8] & (1u << (r % 8))) {
      free(seen);
      return par__error(PAR_ERR_INVALID, "par_group_create: rank %d is listed twice", r);
    }
    seen[r / 8] |= (unsigned char)(1u << (r % 8));
    if (r == w->rank) *index = i;
  }
  free(seen);
  PAR_RETURN_ERROR_IF(*index < 0, PAR_ERR_NOT_MEMBER,
                      "par_group_create: rank %d is not in the member list; only members create "
                      "a group",
                      w->rank);
  return PAR_OK;
}

/* The backend asked for, when it can carry the group; under `auto` the first in the
 * registry that can (shm on one host, then mpi in worlds MPI started). */
static par_status choose_backend(par_group *g, par_backend want) {
  if (want == PAR_BACKEND_AUTO) want = par__env_get()->backend;
  if (want != PAR_BACKEND_AUTO) {
    const par__backend *be = par__backend_get(want);
    PAR_RETURN_ERROR_IF(!be, PAR_ERR_UNSUPPORTED, "group '%s': backend %s is not built", g->name,
                        par_backend_name(want));
    PAR_FORWARD_IF_ERROR(be->can_serve(g));
    g->be = be;
    return PAR_OK;
  }
  char why[PAR__ERRLEN] = "";
  size_t off = 0;
  for (int i = 0; par__backend_at(i); i++) {
    const par__backend *be = par__backend_at(i);
    par_status s = be->can_serve(g);
    if (s == PAR_OK) {
      g->be = be;
      return PAR_OK;
    }
    if (s != PAR_ERR_UNSUPPORTED) return s;
    int k = snprintf(why + off, sizeof why - off, "%s%s", off ? "; " : "", par__error_detail());
    if (k > 0) off += (size_t)k < sizeof why - off ? (size_t)k : sizeof why - off - 1;
  }
  return par__error(PAR_ERR_UNSUPPORTED, "group '%s': no backend of this build can carry it: %s",
                    g->name, why);
}

par_status par__group_create(par_world *w, const int *ranks, int n,
                             const par_group_options *opts, int is_world, par_group **out) {
  par_group_options defaults = PAR_GROUP_OPTIONS_INIT;
  if (!opts) opts = &defaults;
  int index = -1;
  PAR_FORWARD_IF_ERROR(check_members(w, ranks, n, &index));
  PAR_RETURN_ERROR_IF((unsigned)opts->backend >= PAR_BACKEND_COUNT, PAR_ERR_INVALID,
                      "par_group_create: invalid backend %d", (int)opts->backend);

  par_group *g = calloc(1, sizeof *g);
  int *copy = malloc(sizeof(int) * (size_t)n);
  uint64_t *p2p_seq = calloc(2 * (size_t)n, sizeof *p2p_seq);
  if (!g || !copy || !p2p_seq) {
    free(g);
    free(copy);
    free(p2p_seq);
    return par__error(PAR_ERR_NOMEM, "par_group_create: out of memory");
  }
  memcpy(copy, ranks, sizeof(int) * (size_t)n);
  g->world = w;
  g->n = n;
  g->index = index;
  g->ranks = copy;
  g->p2p_seq = p2p_seq;
  g->is_world = is_world;
  g->timeout_s = opts->timeout_s > 0 ? opts->timeout_s : w->timeout_s;
  snprintf(g->name, sizeof g->name, "%s", opts->name ? opts->name : "group");
  par__wait_policy_init(&g->wait, w->local_size);
  pthread_mutex_init(&g->mu, NULL);
  pthread_cond_init(&g->cv, NULL);

  uint64_t h = hash_ranks(ranks, n);
  uint32_t count = 0;
  par_status s;
  PAR_FORWARD_IF_ERROR_GOTO(next_creation(w, h, &count), s, fail_free);
  snprintf(g->uid, sizeof g->uid, "%016llx.%u", (unsigned long long)h, count);
  PAR_FORWARD_IF_ERROR_GOTO(choose_backend(g, opts->backend), s, fail_free);
  g->create_deadline = par__now() + g->timeout_s;
  s = g->be->group_init(g);
  if (s < 0) {
    g->be = NULL; /* nothing of the backend's to release */
    goto fail_free;
  }
  g->backend = g->be->id;
  PAR__LOG_DEBUG("group '%s' (%s): %d members, my index %d, backend %s", g->name, g->uid, n,
                 index, g->be->name);
  PAR__LOG_DEBUG("group '%s': %d local ranks, %s: waiters spin %u times, yield %u times, then "
                 "sleep",
                 g->name, w->local_size,
                 g->wait.oversubscribed ? "oversubscribed" : "not oversubscribed", g->wait.spin,
                 g->wait.yields);
  *out = g;
  return PAR_OK;

fail_free:
  par__group_free(g);
  return s;
}

void par__group_free(par_group *g) {
  if (!g) return;
  if (g->be) {
    /* Pending async work must not outlive the group: make it fail fast, then drain. */
    pthread_mutex_lock(&g->mu);
    int pending = g->head != NULL || g->running;
    pthread_mutex_unlock(&g->mu);
    if (pending) par_group_abort(g);
    par__work_shutdown(g);
    g->be->group_fini(g);
  }
  pthread_cond_destroy(&g->cv);
  pthread_mutex_destroy(&g->mu);
  free(g->ranks);
  free(g->p2p_seq);
  free(g);
}

par_status par_group_create(par_world *w, const int *ranks, int n, const par_group_options *opts,
                            par_group **out) {
  PAR_RETURN_ERROR_IF(!w, PAR_ERR_NULL, "par_group_create: world is NULL");
  if (!out)
    return par__error_keep(w->last_error, &w->mu,
                           par__error(PAR_ERR_NULL, "par_group_create: out is NULL"));
  *out = NULL;
  return par__error_keep(w->last_error, &w->mu, par__group_create(w, ranks, n, opts, 0, out));
}

void par_group_destroy(par_group *g) {
  if (!g || g->is_world) return;
  par__group_free(g);
}

void par_group_abort(par_group *g) {
  if (!g) return;
  atomic_store(&g->aborted, 1);
  if (g->be && g->be->abort) g->be->abort(g);
}

int par_group_size(const par_group *g) { return g ? g->n : -1; }
int par_group_index(const par_group *g) { return g ? g->index : -1; }
int par_group_global_rank(const par_group *g, int index) {
  return g && index >= 0 && index < g->n ? g->ranks[index] : -1;
}
const int *par_group_ranks(const par_group *g) { return g ? g->ranks : NULL; }
const char *par_group_name(const par_group *g) { return g ? g->name : ""; }
par_backend par_group_backend(const par_group *g) { return g ? g->backend : PAR_BACKEND_AUTO; }
const char *par_group_last_error(const par_group *g) { return g ? g->last_error : ""; }

par_status par_group_set_timeout(par_group *g, double timeout_s) {
  PAR_RETURN_ERROR_IF(!g, PAR_ERR_NULL, "par_group_set_timeout: group is NULL");
  if (!(timeout_s > 0))
    return par__error_keep(g->last_error, &g->mu,
                           par__error(PAR_ERR_INVALID,
                                      "par_group_set_timeout: timeout %g must be > 0", timeout_s));
  pthread_mutex_lock(&g->mu);
  g->timeout_s = timeout_s;
  pthread_mutex_unlock(&g->mu);
  return PAR_OK;
}
