/*
 * shm_alloc.c -- the shm backend's par_alloc / par_free: memory that the other ranks on this
 * host can read directly. The world holds the backend's list of regions (be_world[shm]).
 * Each allocation is its own shared-memory file named after the job, the owner's rank and a
 * per-rank id, so a peer can map it from the (rank, id) pair a collective publishes; the
 * shared-memory backend then reads contributions in place instead of copying them through the
 * group's segment. Peers' mappings are cached, and dropped once their owner has freed them
 * (see forget_freed): a buffer is freed only when no op may read it any more.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "backends/shm/shm.h"

typedef struct shm_region {
  struct shm_region *next;
  int rank; /* owner */
  uint32_t id;
  char *base;
  size_t size;
  char name[96];
} shm_region;

/* This world's regions: this rank's own and peers' it has mapped. */
typedef struct shm_world {
  pthread_mutex_t mu; /* guards regions and next_id */
  shm_region *regions;
  uint32_t next_id;
  _Atomic int own; /* this rank's live regions: collectives skip the lookup at 0 */
} shm_world;

static shm_world *world_of(par_world *w) { return w->be_world[PAR_BACKEND_SHM]; }

par_status par__shm_world_init(par_world *w) {
  shm_world *sw = calloc(1, sizeof *sw);
  PAR_RETURN_ERROR_IF(!sw, PAR_ERR_NOMEM, "shm: out of memory");
  pthread_mutex_init(&sw->mu, NULL);
  w->be_world[PAR_BACKEND_SHM] = sw;
  return PAR_OK;
}

static void region_name(par_world *w, int rank, uint32_t id, char *out, size_t cap) {
  snprintf(out, cap, "/par-%s-m%d.%u", w->job_id, rank, id);
}

par_status par__shm_alloc(par_world *w, size_t bytes, void **out) {
  shm_world *sw = world_of(w);
  shm_region *r = calloc(1, sizeof *r);
  PAR_RETURN_ERROR_IF(!r, PAR_ERR_NOMEM, "par_alloc: out of memory");
  pthread_mutex_lock(&sw->mu);
  r->id = ++sw->next_id;
  pthread_mutex_unlock(&sw->mu);
  r->rank = w->rank;
  r->size = bytes;
  region_name(w, w->rank, r->id, r->name, sizeof r->name);

  int fd = shm_open(r->name, O_CREAT | O_EXCL | O_RDWR, 0600);
  if (fd < 0) {
    int e = errno;
    par__error(PAR_ERR_SYSTEM, "par_alloc: cannot create %s: %s", r->name, strerror(e));
    free(r);
    return PAR_ERR_SYSTEM;
  }
  int e = ftruncate(fd, (off_t)bytes) < 0 ? errno : posix_fallocate(fd, 0, (off_t)bytes);
  if (e) {
    close(fd);
    shm_unlink(r->name);
    free(r);
    return par__error(PAR_ERR_NOMEM, "par_alloc: cannot reserve %zu bytes: %s", bytes,
                      strerror(e));
  }
  /* Populated now: a first touch later would cost a page fault per 4 KiB inside collectives. */
  void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, 0);
  close(fd);
  if (p == MAP_FAILED) {
    int e = errno;
    shm_unlink(r->name);
    free(r);
    return par__error(PAR_ERR_NOMEM, "par_alloc: cannot map %zu bytes: %s", bytes, strerror(e));
  }
  r->base = p;
  pthread_mutex_lock(&sw->mu);
  r->next = sw->regions;
  sw->regions = r;
  pthread_mutex_unlock(&sw->mu);
  atomic_fetch_add(&sw->own, 1);
  *out = p;
  return PAR_OK;
}

par_status par__shm_free(par_world *w, void *p) {
  shm_world *sw = world_of(w);
  pthread_mutex_lock(&sw->mu);
  shm_region **pp = &sw->regions;
  while (*pp && !((*pp)->rank == w->rank && (*pp)->base == p)) pp = &(*pp)->next;
  shm_region *r = *pp;
  if (r) *pp = r->next;
  pthread_mutex_unlock(&sw->mu);
  PAR_RETURN_ERROR_IF(!r, PAR_ERR_INVALID, "par_free: %p was not returned by par_alloc", p);
  atomic_fetch_sub(&sw->own, 1);
  munmap(r->base, r->size);
  shm_unlink(r->name);
  free(r);
  return PAR_OK;
}

int par__shm_region_find(par_world *w, const void *p, size_t len, uint32_t *id,
                         uint64_t *off) {
  shm_world *sw = world_of(w);
  *id = 0;
  *off = 0;
  /* Every collective asks: without a par_alloc'ed buffer it costs one load, not a lock. */
  if (!p || !atomic_load_explicit(&sw->own, memory_order_relaxed)) return 0;
  const char *c = p;
  pthread_mutex_lock(&sw->mu);
  for (shm_region *r = sw->regions; r; r = r->next)
    if (r->rank == w->rank && c >= r->base && c - r->base <= (ptrdiff_t)r->size &&
        len <= r->size - (size_t)(c - r->base)) {
      *id = r->id;
      *off = (uint64_t)(c - r->base);
      break;
    }
  pthread_mutex_unlock(&sw->mu);
  return *id != 0;
}

/*
 * Drops this process's mappings of rank's buffers that their owner has freed (their files are
 * gone), so that freed memory goes back to the system while the job runs. Safe: an owner frees
 * a buffer only after every op that used it returned there, and every op that reads a peer's
 * buffer in place ends with a synchronisation after the reads, so nobody here still reads it.
 * Called when a new buffer of that rank is mapped: the mappings kept stay bounded by the
 * buffers the owner holds, plus one. Called with sw->mu held.
 */
static void forget_freed(par_world *w, shm_world *sw, int rank) {
  for (shm_region **pp = &sw->regions; *pp;) {
    shm_region *r = *pp;
    int gone = 0;
    if (r->rank == rank && r->rank != w->rank) {
      int fd = shm_open(r->name, O_RDWR, 0);
      gone = fd < 0 && errno == ENOENT;
      if (fd >= 0) close(fd);
    }
    if (!gone) {
      pp = &r->next;
      continue;
    }
    *pp = r->next;
    munmap(r->base, r->size);
    free(r);
  }
}

par_status par__shm_region_map(par_world *w, int rank, uint32_t id, char **base,
                               size_t *size) {
  shm_world *sw = world_of(w);
  pthread_mutex_lock(&sw->mu);
  for (shm_region *r = sw->regions; r; r = r->next)
    if (r->rank == rank && r->id == id) {
      *base = r->base;
      *size = r->size;
      pthread_mutex_unlock(&sw->mu);
      return PAR_OK;
    }
  pthread_mutex_unlock(&sw->mu);

  shm_region *r = calloc(1, sizeof *r);
  PAR_RETURN_ERROR_IF(!r, PAR_ERR_NOMEM, "out of memory");
  r->rank = rank;
  r->id = id;
  region_name(w, rank, id, r->name, sizeof r->name);
  int fd = shm_open(r->name, O_RDWR, 0);
  struct stat sb;
  if (fd < 0 || fstat(fd, &sb) < 0) {
    int e = errno;
    if (fd >= 0) close(fd);
    par__error(PAR_ERR_SYSTEM, "cannot map rank %d's buffer %s: %s", rank, r->name, strerror(e));
    free(r);
    return PAR_ERR_SYSTEM;
  }
  r->size = (size_t)sb.st_size;
  /* Populated: the ops that write into it would otherwise take its page faults, one per page
   * on first touch (and par__copy_big's first pieces would time them). */
  void *p = mmap(NULL, r->size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, 0);
  close(fd);
  if (p == MAP_FAILED) {
    int e = errno;
    free(r);
    return par__error(PAR_ERR_SYSTEM, "cannot map rank %d's buffer: %s", rank, strerror(e));
  }
  r->base = p;
  pthread_mutex_lock(&sw->mu);
  forget_freed(w, sw, rank);
  r->next = sw->regions;
  sw->regions = r;
  pthread_mutex_unlock(&sw->mu);
  *base = r->base;
  *size = r->size;
  return PAR_OK;
}

void par__shm_world_fini(par_world *w) {
  shm_world *sw = world_of(w);
  if (!sw) return;
  shm_region *r = sw->regions;
  while (r) {
    shm_region *next = r->next;
    munmap(r->base, r->size);
    if (r->rank == w->rank) shm_unlink(r->name);
    free(r);
    r = next;
  }
  pthread_mutex_destroy(&sw->mu);
  free(sw);
  w->be_world[PAR_BACKEND_SHM] = NULL;
}
