/*
 * bootstrap.h -- who am I (rank, size, local rank/size from options or the launcher's
 * environment) and the rendezvous store: a small TCP key-value store that demands the job
 * token. Internal to libpar; parrun links it too (it hosts the store).
 */
#ifndef PAR_BOOTSTRAP_H
#define PAR_BOOTSTRAP_H

#include <stddef.h>
#include <stdint.h>

#include "par.h"

/* ---------------------------------------------------------------------------------------- */
/* Who am I                                                                                 */
/* ---------------------------------------------------------------------------------------- */

typedef struct par__whoami {
  int rank, size, local_rank, local_size;
  char store_host[256]; /* "" when there is no store (world of 1) */
  int store_port;
  int host_store;       /* 1: this process (rank 0) must host the store itself */
  char token[256];      /* "" when no token was given */
  int allow_no_token;   /* PAR_ALLOW_NO_TOKEN=1: a tokenless store may listen beyond loopback */
  const char *source;   /* "options", "parrun/torchrun", "Open MPI", "PMI", "Slurm", "none" */
} par__whoami;

/*
 * Fills *who from, in order: explicit options (fields != -1 / non-NULL); RANK WORLD_SIZE
 * LOCAL_RANK LOCAL_WORLD_SIZE; OMPI_COMM_WORLD_RANK/SIZE/LOCAL_RANK/LOCAL_SIZE; PMI_RANK
 * PMI_SIZE (MPI_LOCALRANKID / PMI_LOCAL_RANK / PMI_LOCAL_SIZE when present); SLURM_PROCID
 * SLURM_NTASKS SLURM_LOCALID (SLURM_NTASKS_PER_NODE / SLURM_TASKS_PER_NODE for the local
 * size when simple); none: a world of 1. The store comes from opts->store_addr, else
 * PAR_STORE_ADDR ("host:port", hosted by a launcher such as parrun), else MASTER_ADDR and
 * MASTER_PORT (rank 0 hosts it: host_store = 1). The token from opts->token, else PAR_TOKEN;
 * allow_no_token from PAR_ALLOW_NO_TOKEN (0 or 1).
 * `getenv_fn` reads a variable (NULL: getenv); tests pass their own. Returns
 * PAR_ERR_BOOTSTRAP with a detail naming the variable when a value is malformed or
 * inconsistent (rank >= size, a size > 1 without any store address, ...).
 */
par_status par__whoami_resolve(const par_world_options *opts,
                               const char *(*getenv_fn)(const char *name), par__whoami *who);

/* ---------------------------------------------------------------------------------------- */
/* Store client                                                                             */
/* ---------------------------------------------------------------------------------------- */

typedef struct par__store par__store;

/* Connects (retrying until timeout_s: the server may not be up yet) and authenticates with the
 * token (HMAC-SHA256 of a server nonce). A wrong token gives PAR_ERR_AUTH with a clear detail. */
par_status par__store_connect(const char *host, int port, const char *token, double timeout_s,
                              par__store **out);
/* The same challenge on an already connected stream socket (taken over: closed on failure),
 * once, bounded by timeout_s; `label` names the peer in messages. For tests and fuzzers. */
par_status par__store_open_fd(int fd, const char *label, const char *token, double timeout_s,
                              par__store **out);
void par__store_close(par__store *s);
/* Sets key to the value (overwrites). Thread-safe. */
par_status par__store_set(par__store *s, const char *key, const void *val, size_t len);
/* Waits until key exists (at most timeout_s), then copies up to cap bytes into buf and the
 * full length into *len. PAR_ERR_TIMEOUT naming the key when it does not appear. Thread-safe. */
par_status par__store_get(par__store *s, const char *key, void *buf, size_t cap, size_t *len,
                          double timeout_s);
/* Atomically adds delta to the integer at key (missing = 0) and returns the new value. */
par_status par__store_add(par__store *s, const char *key, int64_t delta, int64_t *newval);
/* Deletes a key (missing is fine). */
par_status par__store_del(par__store *s, const char *key);

/* ---------------------------------------------------------------------------------------- */
/* Store server                                                                             */
/* ---------------------------------------------------------------------------------------- */

typedef struct par__store_server par__store_server;

/* Starts a server thread listening on bind_host:port (port 0: any free port; the port chosen
 * is returned in *bound_port). Every connection must pass the token challenge first; one that
 * fails is told why and closed. Lengths from the wire are bounded before they are trusted. */
par_status par__store_server_start(const char *bind_host, int port, const char *token,
                                   par__store_server **out, int *bound_port);
void par__store_server_stop(par__store_server *srv);

/* The rule for a store about to listen on bind_host: without a job token it would admit
 * anyone who can reach it, so beyond loopback (a wildcard address, a host name, an interface
 * address) it refuses with PAR_ERR_BOOTSTRAP and says how to proceed, unless allow_no_token,
 * when it warns instead. A loopback address, or any token, passes. */
par_status par__store_check_exposure(const char *bind_host, int port, const char *token,
                                     int allow_no_token);

/* ---------------------------------------------------------------------------------------- */
/* Records read from the store (records.c)                                                  */
/* ---------------------------------------------------------------------------------------- */

/* Checks a job id another process wrote (1..cap-1 bytes of [A-Za-z0-9_.-]) and copies it,
 * NUL-terminated, into out. PAR_ERR_PROTOCOL naming `what` (the key) when it is not one. */
par_status par__record_job_id(const char *what, const void *buf, size_t len, char *out,
                              size_t cap);
/* Checks a host id (1..cap-1 printable bytes, no NUL) and copies it into out likewise. */
/* A fresh job id: "<PAR_JOB_ID>-<8 random hex digits>", or the digits alone; PAR_JOB_ID must
 * be a valid job id short enough to leave room for them (else PAR_ERR_PROTOCOL naming it). */
par_status par__job_id_compose(char *out, size_t cap);
par_status par__record_host_id(const char *what, const void *buf, size_t len, char *out,
                               size_t cap);

#endif /* PAR_BOOTSTRAP_H */
