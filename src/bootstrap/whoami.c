/*
 * whoami.c -- works out this process's place in the world (rank, size, local rank and size)
 * and where the rendezvous store is, from explicit options or from whichever launcher
 * started it: parrun/torchrun, Open MPI, MPICH/Hydra (PMI), Slurm. The first source whose
 * rank variable is present wins, so a parrun job started inside an Slurm allocation is still
 * a parrun job. Every malformed value is an error that names its variable: guessing a rank
 * would make N processes each believe they are rank 0 and wait for each other forever.
 */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bootstrap/bootstrap.h"
#include "core/core.h"

typedef const char *(*getenv_fn_t)(const char *name);

/* A launcher's variables. Local rank/size list alternatives, tried in order. */
typedef struct env_source {
  const char *name;
  const char *rank, *size;
  const char *local_rank[3], *local_size[3];
} env_source;

static const env_source sources[] = {
    {"parrun/torchrun", "RANK", "WORLD_SIZE", {"LOCAL_RANK"}, {"LOCAL_WORLD_SIZE"}},
    {"Open MPI",
     "OMPI_COMM_WORLD_RANK",
     "OMPI_COMM_WORLD_SIZE",
     {"OMPI_COMM_WORLD_LOCAL_RANK"},
     {"OMPI_COMM_WORLD_LOCAL_SIZE"}},
    {"PMI",
     "PMI_RANK",
     "PMI_SIZE",
     {"MPI_LOCALRANKID", "PMI_LOCAL_RANK"},
     {"MPI_LOCALNRANKS", "PMI_LOCAL_SIZE"}},
    /* Slurm's local size is derived separately (slurm_local_size). */
    {"Slurm", "SLURM_PROCID", "SLURM_NTASKS", {"SLURM_LOCALID"}, {NULL}},
};

static const char *plain_getenv(const char *name) { return getenv(name); }

/* An empty variable counts as unset, so `export RANK=` clears it. */
static const char *env_str(getenv_fn_t get, const char *name) {
  const char *v = get(name);
  return v && *v ? v : NULL;
}

/* Parses a non-negative int (min_value or more) with nothing after it. */
static par_status parse_int(const char *name, const char *v, int min_value, int *out) {
  char *end;
  errno = 0;
  long x = strtol(v, &end, 10);
  PAR_RETURN_ERROR_IF(end == v || *end != '\0' || errno == ERANGE || x < min_value || x > INT_MAX,
                      PAR_ERR_BOOTSTRAP, "%s='%.60s' is not an integer >= %d", name, v, min_value);
  *out = (int)x;
  return PAR_OK;
}

/* Reads an integer variable: *out = -1 when unset. */
static par_status env_int(getenv_fn_t get, const char *name, int min_value, int *out) {
  const char *v = env_str(get, name);
  *out = -1;
  if (!v) return PAR_OK;
  return parse_int(name, v, min_value, out);
}

/* Reads the first set variable of a list: *out = -1 and *which = NULL when none is set. */
static par_status env_int_any(getenv_fn_t get, const char *const *names, int min_value, int *out,
                              const char **which) {
  *out = -1;
  *which = NULL;
  for (int i = 0; i < 3 && names[i]; i++) {
    PAR_FORWARD_IF_ERROR(env_int(get, names[i], min_value, out));
    if (*out >= 0) {
      *which = names[i];
      return PAR_OK;
    }
  }
  return PAR_OK;
}

/*
 * Slurm gives tasks per node as SLURM_NTASKS_PER_NODE (when requested) or as
 * SLURM_TASKS_PER_NODE, a list like "4(x2),3" over the nodes in order. This node's entry is
 * picked with SLURM_NODEID; a list that cannot be read leaves *out at -1.
 */
static par_status slurm_local_size(getenv_fn_t get, int *out, const char **which) {
  PAR_FORWARD_IF_ERROR(env_int(get, "SLURM_NTASKS_PER_NODE", 1, out));
  *which = "SLURM_NTASKS_PER_NODE";
  if (*out >= 0) return PAR_OK;
  *which = "SLURM_TASKS_PER_NODE";
  const char *v = env_str(get, "SLURM_TASKS_PER_NODE");
  if (!v) return PAR_OK;
  int node = -1;
  PAR_FORWARD_IF_ERROR(env_int(get, "SLURM_NODEID", 0, &node));
  if (node < 0) node = 0;
  const char *p = v;
  int index = 0;
  while (*p) {
    char *end;
    long count = strtol(p, &end, 10), repeat = 1;
    if (end == p || count < 1 || count > INT_MAX) return PAR_OK;
    p = end;
    if (p[0] == '(' && p[1] == 'x') {
      repeat = strtol(p + 2, &end, 10);
      if (end == p + 2 || *end != ')' || repeat < 1 || repeat > INT_MAX) return PAR_OK;
      p = end + 1;
    }
    if ((long)node - index < repeat) { /* node < index + repeat, without overflow */
      *out = (int)count;
      return PAR_OK;
    }
    if (repeat > INT_MAX - index) return PAR_OK; /* more nodes than an int counts */
    index += (int)repeat;
    if (*p == ',')
      p++;
    else if (*p)
      return PAR_OK;
  }
  return PAR_OK;
}

/* Parses "host:port" or "[v6addr]:port" into who->store_host/port. */
static par_status parse_addr(const char *what, const char *addr, par__whoami *who) {
  const char *colon, *host = addr;
  size_t hlen;
  if (addr[0] == '[') {
    const char *close = strchr(addr, ']');
    PAR_RETURN_ERROR_IF(!close || close[1] != ':', PAR_ERR_BOOTSTRAP,
                        "%s='%.100s' is not host:port", what, addr);
    host = addr + 1;
    hlen = (size_t)(close - host);
    colon = close + 1;
  } else {
    colon = strrchr(addr, ':');
    PAR_RETURN_ERROR_IF(!colon, PAR_ERR_BOOTSTRAP, "%s='%.100s' is not host:port", what, addr);
    hlen = (size_t)(colon - addr);
  }
  PAR_RETURN_ERROR_IF(hlen == 0 || hlen >= sizeof who->store_host, PAR_ERR_BOOTSTRAP,
                      "%s='%.100s': the host part is empty or too long", what, addr);
  int port = 0; /* gcc cannot see that parse_int sets it whenever it returns PAR_OK */
  if (parse_int(what, colon + 1, 1, &port) != PAR_OK || port > 65535)
    return par__error(PAR_ERR_BOOTSTRAP, "%s='%.100s': the port is not a number in 1..65535", what,
                      addr);
  memcpy(who->store_host, host, hlen);
  who->store_host[hlen] = '\0';
  who->store_port = port;
  return PAR_OK;
}

/* Fills rank/size/local_* from the first launcher whose variables are present. */
static par_status from_environment(getenv_fn_t get, par__whoami *who) {
  for (size_t i = 0; i < sizeof sources / sizeof sources[0]; i++) {
    const env_source *src = &sources[i];
    int rank, size, lrank, lsize;
    const char *lrank_var, *lsize_var = src->local_size[0];
    PAR_FORWARD_IF_ERROR(env_int(get, src->rank, 0, &rank));
    if (rank < 0) continue;
    PAR_FORWARD_IF_ERROR(env_int(get, src->size, 1, &size));
    PAR_RETURN_ERROR_IF(size < 0, PAR_ERR_BOOTSTRAP, "%s is set but %s is not", src->rank,
                        src->size);
    PAR_RETURN_ERROR_IF(rank >= size, PAR_ERR_BOOTSTRAP, "%s=%d is not less than %s=%d", src->rank,
                        rank, src->size, size);
    PAR_FORWARD_IF_ERROR(env_int_any(get, src->local_rank, 0, &lrank, &lrank_var));
    if (src->local_size[0])
      PAR_FORWARD_IF_ERROR(env_int_any(get, src->local_size, 1, &lsize, &lsize_var));
    else
      PAR_FORWARD_IF_ERROR(slurm_local_size(get, &lsize, &lsize_var));
    /* Without local information, assume one host: the whole world is local. */
    if (lsize < 0 && lrank < 0) {
      lrank = rank;
      lsize = size;
    } else if (lsize < 0) {
      lsize = size;
      lsize_var = src->size;
    } else if (lrank < 0) {
      return par__error(PAR_ERR_BOOTSTRAP, "%s is set but no local rank (%s) is", lsize_var,
                        src->local_rank[0]);
    }
    PAR_RETURN_ERROR_IF(lsize > size, PAR_ERR_BOOTSTRAP, "%s=%d is larger than %s=%d", lsize_var,
                        lsize, src->size, size);
    PAR_RETURN_ERROR_IF(lrank >= lsize, PAR_ERR_BOOTSTRAP, "%s=%d is not less than %s=%d",
                        lrank_var ? lrank_var : src->rank, lrank, lsize_var, lsize);
    who->rank = rank;
    who->size = size;
    who->local_rank = lrank;
    who->local_size = lsize;
    who->source = src->name;
    return PAR_OK;
  }
  who->rank = 0;
  who->size = who->local_size = 1;
  who->local_rank = 0;
  who->source = "none";
  return PAR_OK;
}

static par_status from_options(const par_world_options *o, par__whoami *who) {
  PAR_RETURN_ERROR_IF(o->size < 1 || o->rank < 0 || o->rank >= o->size, PAR_ERR_BOOTSTRAP,
                      "par_world_options: rank %d and size %d do not make 0 <= rank < size",
                      o->rank, o->size);
  who->rank = o->rank;
  who->size = o->size;
  who->local_rank = o->rank;
  who->local_size = o->size;
  who->source = "options";
  return PAR_OK;
}

/* The store address, from options, a launcher's PAR_STORE_ADDR, or MASTER_ADDR/MASTER_PORT
 * (then rank 0 hosts it; under torchrun on MASTER_PORT + 1). Leaves store_host "" when none
 * is given. */
static par_status store_address(const par_world_options *o, getenv_fn_t get, par__whoami *who) {
  const char *v;
  if (o && o->store_addr) return parse_addr("store_addr option", o->store_addr, who);
  if ((v = env_str(get, "PAR_STORE_ADDR"))) return parse_addr("PAR_STORE_ADDR", v, who);
  const char *maddr = env_str(get, "MASTER_ADDR"), *mport = env_str(get, "MASTER_PORT");
  if (!maddr && !mport) return PAR_OK;
  PAR_RETURN_ERROR_IF(!maddr, PAR_ERR_BOOTSTRAP, "MASTER_PORT is set but MASTER_ADDR is not");
  PAR_RETURN_ERROR_IF(!mport, PAR_ERR_BOOTSTRAP, "MASTER_ADDR is set but MASTER_PORT is not");
  PAR_RETURN_ERROR_IF(strlen(maddr) >= sizeof who->store_host, PAR_ERR_BOOTSTRAP,
                      "MASTER_ADDR is too long (%zu bytes)", strlen(maddr));
  int port = 0; /* as in parse_addr */
  if (parse_int("MASTER_PORT", mport, 1, &port) != PAR_OK || port > 65535)
    return par__error(PAR_ERR_BOOTSTRAP, "MASTER_PORT='%.60s' is not a port number in 1..65535",
                      mport);
  /* torchrun's agent already serves its own store on MASTER_PORT (TORCHELASTIC_RUN_ID marks
   * its ranks): par's store then takes the next port, by the same rule on every rank. */
  if (env_str(get, "TORCHELASTIC_RUN_ID")) {
    PAR_RETURN_ERROR_IF(port == 65535, PAR_ERR_BOOTSTRAP,
                        "under torchrun par's store takes MASTER_PORT + 1, and MASTER_PORT is "
                        "65535: set PAR_STORE_ADDR=host:port");
    port++;
  }
  snprintf(who->store_host, sizeof who->store_host, "%s", maddr);
  who->store_port = port;
  who->host_store = who->rank == 0;
  return PAR_OK;
}

par_status par__whoami_resolve(const par_world_options *opts,
                               const char *(*getenv_fn)(const char *name), par__whoami *who) {
  PAR_RETURN_ERROR_IF(!who, PAR_ERR_NULL, "whoami: output is NULL");
  getenv_fn_t get = getenv_fn ? getenv_fn : plain_getenv;
  memset(who, 0, sizeof *who);

  /* Rank and size: both from options, or both from the environment (a mix would combine
   * numbers that describe different worlds). */
  if (opts && (opts->rank != -1 || opts->size != -1)) {
    PAR_RETURN_ERROR_IF(opts->rank == -1 || opts->size == -1, PAR_ERR_BOOTSTRAP,
                        "par_world_options: rank (%d) and size (%d) must be set together",
                        opts->rank, opts->size);
    PAR_FORWARD_IF_ERROR(from_options(opts, who));
  } else {
    PAR_FORWARD_IF_ERROR(from_environment(get, who));
  }
  /* Explicit local rank/size override whatever the source said. */
  if (opts && opts->local_rank != -1) who->local_rank = opts->local_rank;
  if (opts && opts->local_size != -1) who->local_size = opts->local_size;
  PAR_RETURN_ERROR_IF(who->local_size < 1 || who->local_size > who->size || who->local_rank < 0 ||
                          who->local_rank >= who->local_size,
                      PAR_ERR_BOOTSTRAP,
                      "local rank %d and local size %d do not make 0 <= local rank < local "
                      "size <= size %d",
                      who->local_rank, who->local_size, who->size);

  PAR_FORWARD_IF_ERROR(store_address(opts, get, who));
  const char *token = opts && opts->token ? opts->token : env_str(get, "PAR_TOKEN");
  if (token) {
    PAR_RETURN_ERROR_IF(strlen(token) >= sizeof who->token, PAR_ERR_BOOTSTRAP,
                        "%s is too long (%zu bytes; at most %zu)",
                        opts && opts->token ? "the token option" : "PAR_TOKEN", strlen(token),
                        sizeof who->token - 1);
    snprintf(who->token, sizeof who->token, "%s", token);
  }

  int allow = -1;
  PAR_FORWARD_IF_ERROR(env_int(get, "PAR_ALLOW_NO_TOKEN", 0, &allow));
  PAR_RETURN_ERROR_IF(allow > 1, PAR_ERR_BOOTSTRAP, "PAR_ALLOW_NO_TOKEN=%d is not 0 or 1", allow);
  who->allow_no_token = allow == 1;

  if (who->size == 1) {
    /* A world of one needs no rendezvous; an address given anyway was still checked above. */
    who->store_host[0] = '\0';
    who->store_port = 0;
    who->host_store = 0;
  } else {
    PAR_RETURN_ERROR_IF(!who->store_host[0], PAR_ERR_BOOTSTRAP,
                        "a world of %d ranks (from %s) needs a rendezvous store, but none is "
                        "given: launch with parrun, or set MASTER_ADDR and MASTER_PORT (or "
                        "PAR_STORE_ADDR=host:port)",
                        who->size, who->source);
  }
  return PAR_OK;
}
