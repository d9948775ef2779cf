/*
 * world.c -- this process's world: who it is (bootstrap/whoami.c), the rendezvous store
 * (hosted by parrun, or by rank 0 under torchrun-style launchers), the job id that names
 * shared-memory segments, host ids that tell which ranks share a host, and the world group.
 * A runtime that started the process (MPI under mpirun or srun; see par__runtime) replaces
 * who-am-I and the store's rendezvous when this build has one.
 */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "coll/group.h"

/* Sized so that "host/boot" always fits host_id: Linux host names have at most HOST_NAME_MAX
 * bytes, and a boot id is 36. */
static void read_host_id(char *out, size_t len) {
  char host[HOST_NAME_MAX + 1] = "localhost", boot[64] = "";
  gethostname(host, sizeof host - 1);
  FILE *f = fopen("/proc/sys/kernel/random/boot_id", "r");
  if (f) {
    if (!fgets(boot, sizeof boot, f)) boot[0] = '\0';
    fclose(f);
    boot[strcspn(boot, "\n")] = '\0';
  }
  snprintf(out, len, "%s/%s", host, boot);
}

/*
 * The job id names shared-memory segments (/par-<job id>-<group>), so two jobs on one host
 * must never share one, even when both were given the same PAR_JOB_ID. PAR_JOB_ID is only a
 * prefix the user can recognise: the id is the one the store's host published under
 * par/job_id (parrun does so before it starts the ranks), else "<PAR_JOB_ID>-<8 random hex
 * digits>" (or just the digits) that rank 0 draws and publishes before it joins. A value
 * read from the store is checked before it names anything.
 */
/* Rank 0, before it joins: keeps the store host's job id, or publishes one of its own. */
static par_status publish_job_id(par_world *w) {
  char buf[sizeof w->job_id];
  size_t len = 0;
  par_status s = par__store_get(w->store, "par/job_id", buf, sizeof buf, &len, 1e-3);
  if (s == PAR_OK) return PAR_OK;
  if (s != PAR_ERR_TIMEOUT) return s;
  PAR_FORWARD_IF_ERROR(par__job_id_compose(w->job_id, sizeof w->job_id));
  return par__store_set(w->store, "par/job_id", w->job_id, strlen(w->job_id));
}

/* After everyone joined: the job id is in the store. */
static par_status read_job_id(par_world *w) {
  char buf[sizeof w->job_id + 1];
  size_t len = 0;
  PAR_FORWARD_IF_ERROR(par__store_get(w->store, "par/job_id", buf, sizeof buf, &len, w->timeout_s));
  return par__record_job_id("store key 'par/job_id'", buf, len, w->job_id, sizeof w->job_id);
}

/* The join timed out: names the ranks that never registered (their par/host key is missing),
 * the first few of them, and how many did join (joins before this world's generation, worlds
 * created earlier on the same store, do not count). */
static par_status name_missing(par_world *w, int64_t generation) {
  char buf[32], list[160] = "";
  size_t len = 0, off = 0;
  int64_t joined = -1;
  if (par__store_get(w->store, "par/joined", buf, sizeof buf - 1, &len, 1e-3) == PAR_OK) {
    buf[len < sizeof buf ? len : sizeof buf - 1] = '\0';
    joined = strtoll(buf, NULL, 10) - generation * w->size;
  }
  int named = 0, first = -1;
  for (int r = 0; r < w->size && named < 6; r++) {
    char key[32];
    snprintf(key, sizeof key, "par/host/%d", r);
    par_status s = par__store_get(w->store, key, buf, sizeof buf, &len, 1e-3);
    if (s == PAR_OK) continue;
    if (s != PAR_ERR_TIMEOUT) return s;
    if (first < 0) first = r;
    int k = snprintf(list + off, sizeof list - off, "%s%d", named ? ", " : "", r);
    if (k > 0 && (size_t)k < sizeof list - off) off += (size_t)k;
    named++;
  }
  int missing = joined >= 0 ? w->size - (int)joined : named;
  if (named == 0)
    return par__error(PAR_ERR_TIMEOUT, "the world's %d ranks did not all join within %g s", w->size,
                      w->timeout_s);
  if (missing == 1 && named == 1)
    return par__error(PAR_ERR_TIMEOUT,
                      "rank %d never joined the world within %g s (%d of %d ranks did)", first,
                      w->timeout_s, w->size - 1, w->size);
  return par__error(PAR_ERR_TIMEOUT, "%d ranks never joined the world within %g s: ranks %s%s",
                    missing > named ? missing : named, w->timeout_s, list,
                    missing > named ? ", ..." : "");
}

/* Every rank registers its host and counts itself in; all wait until the count is full, so
 * a rank that never starts is named after one timeout, here, rather than as a store key
 * that did not appear somewhere later. A process may create a world again on the same store
 * (parrun's outlives each world): the count keeps growing, and each full `size` of it is one
 * generation with a key of its own. No rank can count itself into the next generation before
 * this one is full, since it would first have to finish this join. */
static par_status join_world(par_world *w) {
  char key[48];
  snprintf(key, sizeof key, "par/host/%d", w->rank);
  PAR_FORWARD_IF_ERROR(par__store_set(w->store, key, w->host_id, strlen(w->host_id)));
  if (w->rank == 0) PAR_FORWARD_IF_ERROR(publish_job_id(w));
  int64_t v = 0;
  PAR_FORWARD_IF_ERROR(par__store_add(w->store, "par/joined", 1, &v));
  int64_t generation = (v - 1) / w->size;
  snprintf(key, sizeof key, "par/joined/all/%lld", (long long)generation);
  if (v == (generation + 1) * w->size) PAR_FORWARD_IF_ERROR(par__store_set(w->store, key, "1", 1));
  char buf[4];
  size_t len;
  par_status s = par__store_get(w->store, key, buf, sizeof buf, &len, w->timeout_s);
  if (s == PAR_ERR_TIMEOUT) return name_missing(w, generation);
  PAR_FORWARD_IF_ERROR(s);
  return read_job_id(w);
}

static par_status world_connect(par_world *w, const par__whoami *who) {
  if (who->size == 1 && !who->store_host[0]) return par__job_id_compose(w->job_id, sizeof w->job_id);
  if (who->host_store && who->rank == 0) {
    int port = 0;
    PAR_FORWARD_IF_ERROR(par__store_check_exposure(who->store_host, who->store_port, who->token,
                                                   who->allow_no_token));
    PAR_FORWARD_IF_ERROR(par__store_server_start(who->store_host, who->store_port, who->token,
                                                 &w->server, &port));
  }
  PAR_FORWARD_IF_ERROR(
      par__store_connect(who->store_host, who->store_port, who->token, w->timeout_s, &w->store));
  return join_world(w);
}

/* Rank, size, store and job id from the options or the launcher's environment. */
static par_status world_from_store(par_world *w, const par_world_options *opts,
                                   const char **source) {
  par__whoami who;
  PAR_FORWARD_IF_ERROR(par__whoami_resolve(opts, NULL, &who));
  w->rank = who.rank;
  w->size = who.size;
  w->local_rank = who.local_rank;
  w->local_size = who.local_size;
  w->store_peers = who.size;
  *source = who.source;
  return world_connect(w, &who);
}

/* The runtime of a backend that started this process, or NULL. */
static const par__runtime *find_runtime(const par_world_options *opts) {
  for (int i = 0; par__backend_at(i); i++) {
    const par__runtime *rt = par__backend_at(i)->runtime;
    if (rt && rt->detect(opts)) return rt;
  }
  return NULL;
}

par_status par_world_create(const par_world_options *opts, par_world **out) {
  PAR_RETURN_ERROR_IF(!out, PAR_ERR_NULL, "par_world_create: out is NULL");
  *out = NULL;
  par_world_options defaults = PAR_WORLD_OPTIONS_INIT;
  if (!opts) opts = &defaults;

  par_world *w = calloc(1, sizeof *w);
  PAR_RETURN_ERROR_IF(!w, PAR_ERR_NOMEM, "par_world_create: out of memory");
  pthread_mutex_init(&w->mu, NULL);
  w->timeout_s = opts->timeout_s > 0 ? opts->timeout_s : par__env_get()->timeout_s;
  read_host_id(w->host_id, sizeof w->host_id);

  /* A runtime that started this process (MPI under mpirun) gives the world; else the store. */
  const par__runtime *rt = find_runtime(opts);
  const char *source = NULL;
  par_status s;
  if (rt) {
    w->rt = rt;
    source = rt->name;
    s = rt->world_init(w);
  } else {
    s = world_from_store(w, opts, &source);
  }
  for (int i = 0; s >= 0 && par__backend_at(i); i++)
    if (par__backend_at(i)->world_init) s = par__backend_at(i)->world_init(w);
  if (s >= 0) {
    par__log_set_rank(w->size > 1 ? w->rank : -1);
    int *all = malloc(sizeof(int) * (size_t)w->size);
    if (!all) {
      s = par__error(PAR_ERR_NOMEM, "par_world_create: out of memory");
    } else {
      for (int i = 0; i < w->size; i++) all[i] = i;
      par_group_options go = PAR_GROUP_OPTIONS_INIT;
      go.name = "world";
      s = par__group_create(w, all, w->size, &go, 1, &w->world_group);
      free(all);
    }
  }
  if (s < 0) {
    /* Keep the reason: tearing down what was made may record details of its own. */
    char detail[PAR__ERRLEN];
    par__error_keep(detail, NULL, s);
    par_world_destroy(w);
    return par__error(s, "%s", detail);
  }
  PAR__LOG_DEBUG("world: rank %d of %d (local %d of %d) from %s, job %s", w->rank, w->size,
                 w->local_rank, w->local_size, source, w->job_id);
  *out = w;
  return PAR_OK;
}

void par_world_destroy(par_world *w) {
  if (!w) return;
  if (w->world_group) par__group_free(w->world_group);
  if (w->store) {
    /* Rank 0 may host the store: it keeps it up until every rank has said goodbye. The rank
     * that completes the count says so under a key rank 0 waits on. */
    int64_t v = 0;
    if (par__store_add(w->store, "par/bye", 1, &v) >= 0 && v == w->store_peers)
      par__store_set(w->store, "par/bye/done", "1", 1);
    if (w->server) {
      char buf[4];
      size_t len;
      par__store_get(w->store, "par/bye/done", buf, sizeof buf, &len, 10.0);
    }
  }
  par__store_close(w->store);
  par__store_server_stop(w->server);
  if (w->host_ids) {
    for (int i = 0; i < w->size; i++) free(w->host_ids[i]);
    free(w->host_ids);
  }
  free(w->created);
  for (int i = 0; par__backend_at(i); i++)
    if (par__backend_at(i)->world_fini) par__backend_at(i)->world_fini(w);
  if (w->rt) w->rt->world_fini(w);
  pthread_mutex_destroy(&w->mu);
  free(w);
}

par_status par__world_host_id(par_world *w, int rank, const char **out) {
  /* A runtime fills every rank's id up front; the store's are fetched on first use. */
  pthread_mutex_lock(&w->mu);
  char *have = w->host_ids ? w->host_ids[rank] : NULL;
  pthread_mutex_unlock(&w->mu);
  if (have || rank == w->rank || !w->store) {
    *out = have ? have : w->host_id;
    return PAR_OK;
  }
  pthread_mutex_lock(&w->mu);
  if (!w->host_ids) w->host_ids = calloc((size_t)w->size, sizeof(char *));
  have = w->host_ids ? w->host_ids[rank] : NULL;
  pthread_mutex_unlock(&w->mu);
  PAR_RETURN_ERROR_IF(!w->host_ids, PAR_ERR_NOMEM, "out of memory");
  if (!have) {
    char key[32], buf[sizeof w->host_id];
    size_t len = 0;
    snprintf(key, sizeof key, "par/host/%d", rank);
    PAR_FORWARD_IF_ERROR(par__store_get(w->store, key, buf, sizeof buf, &len, w->timeout_s));
    char id[sizeof w->host_id];
    PAR_FORWARD_IF_ERROR(par__record_host_id(key, buf, len, id, sizeof id));
    have = strdup(id);
    PAR_RETURN_ERROR_IF(!have, PAR_ERR_NOMEM, "out of memory");
    pthread_mutex_lock(&w->mu);
    if (w->host_ids[rank]) {
      free(have);
      have = w->host_ids[rank];
    } else {
      w->host_ids[rank] = have;
    }
    pthread_mutex_unlock(&w->mu);
  }
  *out = have;
  return PAR_OK;
}

int par_world_rank(const par_world *w) { return w ? w->rank : -1; }
int par_world_size(const par_world *w) { return w ? w->size : -1; }
int par_world_local_rank(const par_world *w) { return w ? w->local_rank : -1; }
int par_world_local_size(const par_world *w) { return w ? w->local_size : -1; }
par_group *par_world_group(par_world *w) { return w ? w->world_group : NULL; }
const char *par_world_last_error(const par_world *w) { return w ? w->last_error : ""; }

/* ---------------------------------------------------------------------------------------- */
/* Memory the ranks of a host share: the first backend that offers it                       */
/* ---------------------------------------------------------------------------------------- */

par_status par_alloc(par_world *w, size_t bytes, void **out) {
  PAR_RETURN_ERROR_IF(!w, PAR_ERR_NULL, "par_alloc: world is NULL");
  if (!out)
    return par__error_keep(w->last_error, &w->mu,
                           par__error(PAR_ERR_NULL, "par_alloc: out is NULL"));
  *out = NULL;
  if (bytes == 0)
    return par__error_keep(w->last_error, &w->mu,
                           par__error(PAR_ERR_INVALID, "par_alloc: size is 0"));
  for (int i = 0; par__backend_at(i); i++)
    if (par__backend_at(i)->alloc_mem)
      return par__error_keep(w->last_error, &w->mu, par__backend_at(i)->alloc_mem(w, bytes, out));
  return par__error_keep(w->last_error, &w->mu,
                         par__error(PAR_ERR_UNSUPPORTED,
                                    "par_alloc: no backend of this build offers it"));
}

par_status par_free(par_world *w, void *p) {
  if (!p) return PAR_OK;
  PAR_RETURN_ERROR_IF(!w, PAR_ERR_NULL, "par_free: world is NULL");
  for (int i = 0; par__backend_at(i); i++) {
    const par__backend *be = par__backend_at(i);
    par_status s = be->free_mem ? be->free_mem(w, p) : PAR_ERR_INVALID;
    if (s != PAR_ERR_INVALID) return par__error_keep(w->last_error, &w->mu, s);
  }
  return par__error_keep(w->last_error, &w->mu,
                         par__error(PAR_ERR_INVALID,
                                    "par_free: %p was not returned by par_alloc", p));
}
