/*
 * mpi_world.c -- a world started by MPI (the par__runtime of this backend). A process
 * launched by mpirun, mpiexec or srun, or one whose program initialised MPI itself, takes its
 * rank and size from MPI_COMM_WORLD and needs neither parrun nor MASTER_ADDR.
 *
 * Rendezvous goes over MPI: the ranks all-gather their host ids (hostname and boot id, as in
 * store-started worlds), from which each learns its local rank and local size; rank 0 draws
 * the job id and broadcasts it. The shm backend meets its peers through a key-value store, so
 * on every host where ranks share it the first of them serves a store on loopback with a
 * fresh token and sends port and token to the others over MPI: no address needs configuring,
 * and nothing listens beyond the host.
 */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "backends/mpi/mpi_backend.h"

#define TAG_STORE 7

/* ---------------------------------------------------------------------------------------- */
/* Detection                                                                                */
/* ---------------------------------------------------------------------------------------- */

static const char *env(const char *name) {
  const char *v = getenv(name);
  return v && *v ? v : NULL;
}

/* The launcher's idea of the world size, and which variable said so; -1 when none did. */
static int launcher_size(const char **var) {
  static const char *const vars[] = {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE",
                                     "SLURM_NTASKS"};
  for (size_t i = 0; i < sizeof vars / sizeof vars[0]; i++) {
    const char *v = env(vars[i]);
    if (!v) continue;
    char *end;
    long n = strtol(v, &end, 10);
    if (*end == '\0' && n >= 1 && n <= INT_MAX) {
      *var = vars[i];
      return (int)n;
    }
  }
  return -1;
}

static int detect(const par_world_options *o) {
  /* Rank and size or a store given in code mean the caller arranged the world. */
  if (o->rank != -1 || o->size != -1 || o->store_addr) return 0;
  /* parrun and torchrun set RANK: their jobs use the store even where MPI is about. */
  if (env("RANK")) return 0;
  int init = 0, fin = 0;
  MPI_Initialized(&init);
  MPI_Finalized(&fin);
  if (init && !fin) return 1;
  /* A store given to the launcher wins, as it does for the other launchers. */
  if (env("PAR_STORE_ADDR") || env("MASTER_ADDR")) return 0;
  /* Started by an MPI launcher (a finalised MPI then fails with a clear message). */
  return env("OMPI_COMM_WORLD_RANK") || env("PMI_RANK") || env("PMIX_RANK") || env("SLURM_PROCID");
}

/* ---------------------------------------------------------------------------------------- */
/* Waiting on world-level requests                                                          */
/* ---------------------------------------------------------------------------------------- */

/* Waits for all n requests until the deadline. On failure the requests are left as they
 * are: the caller parks them with the memory they use. */
static par_status world_wait(MPI_Request *reqs, int n, double deadline, double timeout_s,
                             const char *what) {
  double sleep_s = 10e-6;
  for (;;) {
    int done = 0;
    par__mpi_lock();
    int rc = MPI_Testall(n, reqs, &done, MPI_STATUSES_IGNORE);
    par__mpi_unlock();
    if (rc != MPI_SUCCESS) return par__mpi_error(PAR_ERR_BOOTSTRAP, rc, "%s", what);
    if (done) return PAR_OK;
    if (par__now() >= deadline)
      return par__error(PAR_ERR_TIMEOUT, "%s: not every rank arrived within %.3g s", what,
                        timeout_s);
    struct timespec ts = {0, (long)(sleep_s * 1e9)};
    nanosleep(&ts, NULL);
    if (sleep_s < 1e-3) sleep_s *= 2;
  }
}

/* A collective into `buf`: abandoned on failure, it could still write buf, so buf is parked
 * with it rather than freed. */
static par_status world_coll(MPI_Request *req, void *buf, double deadline, double timeout_s,
                             const char *what) {
  par_status s = world_wait(req, 1, deadline, timeout_s, what);
  if (s < 0) par__mpi_park(buf, req);
  return s;
}

mpi_world *par__mpi_world_of(par_world *w) {
  return w && w->rt == &par__mpi_runtime ? w->rt_state : NULL;
}

/* ---------------------------------------------------------------------------------------- */
/* Bootstrap                                                                                */
/* ---------------------------------------------------------------------------------------- */

/* Every rank's host id, then this rank's place among the ranks of its host. */
static par_status gather_hosts(par_world *w, mpi_world *mw, double deadline, int *leader,
                               int **local) {
  size_t idlen = sizeof w->host_id;
  char *all = calloc((size_t)w->size, idlen);
  PAR_RETURN_ERROR_IF(!all, PAR_ERR_NOMEM, "mpi: out of memory for %d host ids", w->size);
  MPI_Request req;
  par__mpi_lock();
  int rc =
      MPI_Iallgather(w->host_id, (int)idlen, MPI_CHAR, all, (int)idlen, MPI_CHAR, mw->comm, &req);
  par__mpi_unlock();
  if (rc != MPI_SUCCESS) {
    free(all);
    return par__mpi_error(PAR_ERR_BOOTSTRAP, rc, "mpi: all-gathering host ids failed");
  }
  par_status s = world_coll(&req, all, deadline, w->timeout_s, "mpi: all-gathering host ids");
  if (s < 0) return s;

  w->host_ids = calloc((size_t)w->size, sizeof(char *));
  *local = malloc(sizeof(int) * (size_t)w->size);
  if (!w->host_ids || !*local) {
    free(all);
    return par__error(PAR_ERR_NOMEM, "mpi: out of memory for %d host ids", w->size);
  }
  w->local_rank = 0;
  w->local_size = 0;
  *leader = -1;
  for (int r = 0; r < w->size; r++) {
    char *id = all + (size_t)r * idlen;
    id[idlen - 1] = '\0';
    w->host_ids[r] = strdup(id);
    if (!w->host_ids[r]) {
      free(all);
      return par__error(PAR_ERR_NOMEM, "mpi: out of memory for host ids");
    }
    if (strcmp(id, w->host_id) != 0) continue;
    if (*leader < 0) *leader = r;
    if (r < w->rank) w->local_rank++;
    (*local)[w->local_size++] = r;
  }
  free(all);
  return PAR_OK;
}

static par_status agree_job_id(par_world *w, mpi_world *mw, double deadline) {
  /* Rank 0's choice is everyone's: PAR_JOB_ID as a prefix of a fresh id, so that two jobs
   * given the same PAR_JOB_ID never share segment names. A bad PAR_JOB_ID fails rank 0 only:
   * the others then time out naming it. */
  char *id = calloc(1, sizeof w->job_id);
  PAR_RETURN_ERROR_IF(!id, PAR_ERR_NOMEM, "mpi: out of memory");
  par_status made = w->rank == 0 ? par__job_id_compose(id, sizeof w->job_id) : PAR_OK;
  if (made < 0) {
    free(id);
    return made;
  }
  MPI_Request req;
  par__mpi_lock();
  int rc = MPI_Ibcast(id, (int)sizeof w->job_id, MPI_CHAR, 0, mw->comm, &req);
  par__mpi_unlock();
  if (rc != MPI_SUCCESS) {
    free(id);
    return par__mpi_error(PAR_ERR_BOOTSTRAP, rc, "mpi: broadcasting the job id failed");
  }
  par_status s = world_coll(&req, id, deadline, w->timeout_s, "mpi: broadcasting the job id");
  if (s < 0) return s;
  id[sizeof w->job_id - 1] = '\0';
  memcpy(w->job_id, id, sizeof w->job_id);
  free(id);
  return PAR_OK;
}

/* The host's first rank serves a store on loopback and tells the others where and how. */
static par_status host_store(par_world *w, mpi_world *mw, double deadline, int leader,
                             const int *local) {
  enum { MSG = 128 };
  int n = w->local_size - 1;
  if (n <= 0) return PAR_OK; /* alone on the host: no shm group needs to meet anyone */
  char *msg = calloc(1, MSG);
  MPI_Request *reqs = malloc(sizeof(MPI_Request) * (size_t)n);
  if (!msg || !reqs) {
    free(msg);
    free(reqs);
    return par__error(PAR_ERR_NOMEM, "mpi: out of memory");
  }
  par_status s = PAR_OK, served = PAR_OK;
  int nreq = 0, rc = MPI_SUCCESS;
  if (w->rank == leader) {
    char token[65];
    int port = 0;
    par__random_hex(token, 64);
    served = par__store_server_start("127.0.0.1", 0, token, &w->server, &port);
    /* A failure is sent too (port 0), so the others fail at once instead of timing out. */
    snprintf(msg, MSG, "%d %s", served < 0 ? 0 : port, token);
    par__mpi_lock();
    for (int i = 0; i < w->local_size && rc == MPI_SUCCESS; i++)
      if (local[i] != w->rank)
        rc = MPI_Isend(msg, MSG, MPI_CHAR, local[i], TAG_STORE, mw->comm, &reqs[nreq++]);
    par__mpi_unlock();
  } else {
    par__mpi_lock();
    rc = MPI_Irecv(msg, MSG, MPI_CHAR, leader, TAG_STORE, mw->comm, &reqs[nreq++]);
    par__mpi_unlock();
  }
  if (rc != MPI_SUCCESS) {
    nreq--;
    s = par__mpi_error(PAR_ERR_BOOTSTRAP, rc, "mpi: handing out this host's store address");
  } else {
    s = world_wait(reqs, nreq, deadline, w->timeout_s,
                   "mpi: handing out this host's store address");
  }
  if (s < 0) {
    /* Requests still pending may use msg: it stays with them until MPI is finalised. */
    MPI_Request none = MPI_REQUEST_NULL;
    par__mpi_lock();
    for (int i = 0; i < nreq; i++)
      if (reqs[i] != MPI_REQUEST_NULL && w->rank != leader) MPI_Cancel(&reqs[i]);
    par__mpi_unlock();
    for (int i = 0; i < nreq; i++)
      if (reqs[i] != MPI_REQUEST_NULL) par__mpi_park(NULL, &reqs[i]);
    par__mpi_park(msg, &none);
    free(reqs);
    return served < 0 ? served : s;
  }
  free(reqs);
  PAR_FORWARD_IF_ERROR(served);

  int port = 0;
  char token[80] = "";
  msg[MSG - 1] = '\0';
  int fields = sscanf(msg, "%d %79s", &port, token);
  free(msg);
  PAR_RETURN_ERROR_IF(fields != 2, PAR_ERR_PROTOCOL, "mpi: malformed store address from rank %d",
                      leader);
  PAR_RETURN_ERROR_IF(port <= 0, PAR_ERR_BOOTSTRAP,
                      "mpi: rank %d, the first on this host, could not start the host's store",
                      leader);
  double left = deadline - par__now();
  PAR_FORWARD_IF_ERROR(
      par__store_connect("127.0.0.1", port, token, left > 0.001 ? left : 0.001, &w->store));
  w->store_peers = w->local_size;
  return PAR_OK;
}

static par_status world_init(par_world *w) {
  mpi_world *mw = calloc(1, sizeof *mw);
  PAR_RETURN_ERROR_IF(!mw, PAR_ERR_NOMEM, "mpi: out of memory");
  mw->comm = MPI_COMM_NULL;
  par_status s = par__mpi_acquire();
  if (s < 0) {
    free(mw);
    return s;
  }
  w->rt_state = mw; /* from here on world_fini releases what was acquired */
  double deadline = par__now() + w->timeout_s;

  par__mpi_lock();
  int rc = MPI_Comm_dup(MPI_COMM_WORLD, &mw->comm);
  if (rc == MPI_SUCCESS) rc = MPI_Comm_set_errhandler(mw->comm, MPI_ERRORS_RETURN);
  if (rc == MPI_SUCCESS) rc = MPI_Comm_rank(mw->comm, &w->rank);
  if (rc == MPI_SUCCESS) rc = MPI_Comm_size(mw->comm, &w->size);
  par__mpi_unlock();
  if (rc != MPI_SUCCESS)
    return par__mpi_error(PAR_ERR_BOOTSTRAP, rc, "mpi: cannot set up MPI_COMM_WORLD");

  /* A launcher that promised more ranks than MPI sees: the program was not started by an MPI
   * launcher that this MPI library understands (e.g. srun without --mpi=pmix). */
  const char *var = NULL;
  int want = launcher_size(&var);
  PAR_RETURN_ERROR_IF(want > 0 && want != w->size, PAR_ERR_BOOTSTRAP,
                      "mpi: %s=%d, but MPI_COMM_WORLD has %d rank%s: start the program with "
                      "mpirun (or srun --mpi=pmix), or with parrun",
                      var, want, w->size, w->size == 1 ? "" : "s");

  int leader = -1, *local = NULL;
  s = gather_hosts(w, mw, deadline, &leader, &local);
  if (s >= 0) s = agree_job_id(w, mw, deadline);
  if (s >= 0) s = host_store(w, mw, deadline, leader, local);
  free(local);
  if (s >= 0)
    PAR__LOG_DEBUG("mpi: world of %d from MPI_COMM_WORLD (%s, %s initialised MPI)", w->size,
                   par__mpi_level_name(par__mpi_thread_level()),
                   par__mpi_owned() ? "par" : "the program");
  return s;
}

static void world_fini(par_world *w) {
  mpi_world *mw = w->rt_state;
  if (!mw) return;
  if (mw->comm != MPI_COMM_NULL) {
    par__mpi_lock();
    MPI_Comm_free(&mw->comm);
    par__mpi_unlock();
  }
  free(mw);
  w->rt_state = NULL;
  par__mpi_release();
}

const par__runtime par__mpi_runtime = {
    .name = "MPI",
    .detect = detect,
    .world_init = world_init,
    .world_fini = world_fini,
};
