/*
 * par_join.c -- a small job for tests/scripts/test_store_guard.sh: every rank may first open
 * idle TCP connections to the job's rendezvous store (as a stranger on the host could) and
 * keep them open, then joins the world, checks a few all-reduces and prints its job id.
 * Usage: par_join [--flood N] [--iters K] [--worlds W] (W worlds one after the other, on the
 * same store). Exit 0 when the rank joined and every result was right; 1 with the library's
 * message when joining failed; 2 on a wrong result.
 */
#include <netdb.h>
#include <par.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include "coll/group.h" /* the world's job id, which the public API does not show */

/* Opens up to n connections to host:port that never say a word; returns how many. */
static int flood(const char *host, const char *port, int n) {
  struct addrinfo hints = {0}, *res = NULL;
  hints.ai_socktype = SOCK_STREAM;
  if (getaddrinfo(host, port, &hints, &res) != 0) return 0;
  int opened = 0;
  for (int i = 0; i < n; i++) {
    int fd = socket(res->ai_family, SOCK_STREAM, 0);
    if (fd < 0) break;
    struct timeval tv = {2, 0};
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    if (connect(fd, res->ai_addr, res->ai_addrlen) != 0) {
      close(fd);
      continue;
    }
    opened++; /* deliberately kept open (and silent) until the process exits */
  }
  freeaddrinfo(res);
  return opened;
}

/* Joins a world, checks `iters` all-reduces, prints the job id, leaves. */
static int one_world(int iters) {
  par_world *w;
  double t0 = par__now();
  if (par_world_create(NULL, &w) != PAR_OK) {
    fprintf(stderr, "world: %s\n", par_last_error());
    return 1;
  }
  int rank = par_world_rank(w), size = par_world_size(w);
  par_group *g = par_world_group(w);
  for (int it = 0; it < iters; it++) {
    int64_t v[256];
    for (int k = 0; k < 256; k++) v[k] = rank + it + k;
    par_status s = par_allreduce(g, v, v, 256, PAR_I64, PAR_SUM);
    if (s != PAR_OK) {
      fprintf(stderr, "allreduce: %s\n", par_group_last_error(g));
      return 1;
    }
    for (int k = 0; k < 256; k++)
      if (v[k] != (int64_t)size * (size - 1) / 2 + (int64_t)size * (it + k)) {
        fprintf(stderr, "allreduce %d: element %d is %lld\n", it, k, (long long)v[k]);
        return 2;
      }
  }
  printf("rank %d of %d joined in %.2f s, job %s\n", rank, size, par__now() - t0, w->job_id);
  fflush(stdout);
  par_world_destroy(w);
  return 0;
}

int main(int argc, char **argv) {
  int nflood = 0, iters = 20, worlds = 1;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!strcmp(argv[i], "--flood"))
      nflood = atoi(argv[i + 1]);
    else if (!strcmp(argv[i], "--iters"))
      iters = atoi(argv[i + 1]);
    else if (!strcmp(argv[i], "--worlds"))
      worlds = atoi(argv[i + 1]);
  }
  if (nflood > 0) {
    char host[256] = "127.0.0.1", port[16] = "";
    const char *addr = getenv("PAR_STORE_ADDR");
    if (addr && strrchr(addr, ':')) {
      snprintf(host, sizeof host, "%.*s", (int)(strrchr(addr, ':') - addr), addr);
      snprintf(port, sizeof port, "%s", strrchr(addr, ':') + 1);
    } else if (getenv("MASTER_ADDR") && getenv("MASTER_PORT")) {
      snprintf(host, sizeof host, "%s", getenv("MASTER_ADDR"));
      snprintf(port, sizeof port, "%s", getenv("MASTER_PORT"));
    }
    int got = flood(host, port, nflood);
    fprintf(stderr, "flooded the store with %d idle connections\n", got);
  }
  for (int k = 0; k < worlds; k++) {
    int rc = one_world(iters);
    if (rc) return rc;
  }
  return 0;
}
