/*
 * registry.c -- the backends this build has, in the order `auto` tries them for a group: the
 * first whose can_serve() accepts the group carries it. Adding a backend is a folder under
 * src/backends/ and one line here (docs/internals.md).
 */
#include "coll/group.h"

extern const par__backend par__shm_backend;
extern const par__backend par__mpi_backend;

static const par__backend *const backends[] = {
    &par__shm_backend, /* one host: shared memory */
#ifdef PAR_HAVE_MPI
    &par__mpi_backend, /* across hosts, in worlds started by MPI (built when MPI is found) */
#endif
    NULL,
};

const par__backend *par__backend_at(int i) {
  return i >= 0 && i < (int)(sizeof backends / sizeof *backends) ? backends[i] : NULL;
}

const par__backend *par__backend_get(par_backend b) {
  for (int i = 0; backends[i]; i++)
    if (backends[i]->id == b) return backends[i];
  return NULL;
}
