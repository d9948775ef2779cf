/*
 * agree.c -- member agreement: what the members of a group compare before an op moves any
 * byte, and the message when they disagree. Every backend exchanges descriptions on the
 * synchronisation its ops already do (the shm backend in the op's first round, beside the
 * epoch; the mpi backend with the op's first exchange) and calls par__desc_check on what it
 * received; the packing, the comparison and the wording live here, once.
 *
 * A description is exact: kind, dtype, reduction, root and count, normalised so that fields
 * an op does not use (the reduction of a broadcast, the root of an allreduce) never differ.
 * It also packs into one 64-bit word, exactly for every op whose count is below 2^31 and root
 * below 2^20 -- so that the shm backend's compare is one load from a cache line it reads
 * anyway -- and into a hash with an escape bit otherwise, where equal words send the compare
 * to the full descriptions.
 */
#include <stdio.h>

#include "coll/group.h"

uint64_t par__desc_hash(const par__desc *d) {
  /* splitmix64's finaliser over both words, marked as a hash by the escape bit. */
  uint64_t h = d->call * 0x9e3779b97f4a7c15ull ^ d->count;
  h ^= h >> 30;
  h *= 0xbf58476d1ce4e5b9ull;
  h ^= h >> 27;
  h *= 0x94d049bb133111ebull;
  h ^= h >> 31;
  return h | PAR__DESC_ESCAPE;
}

int par__desc_unword(uint64_t w, par__desc *d) {
  if (w & PAR__DESC_ESCAPE) return 0;
  d->call = (w & 0xf) | ((w >> 4) & 0xf) << 8 | ((w >> 8) & 0xf) << 16 | ((w >> 12) & 0xfffff)
                                                                            << 32;
  d->count = w >> 32;
  d->seq = 0;
  return 1;
}

int par__desc_equal(const par__desc *a, const par__desc *b, int with_seq) {
  return a->call == b->call && a->count == b->count && (!with_seq || a->seq == b->seq);
}

/* "allreduce(count=10, f32, sum)", "broadcast(count=10, f32, root 1)", "barrier()". */
static void describe(const par__desc *d, int with_seq, char *out, size_t len) {
  par__op_kind kind = (par__op_kind)(d->call & 0xff);
  par_dtype dt = (par_dtype)((d->call >> 8) & 0xff);
  par_op red = (par_op)((d->call >> 16) & 0xff);
  int root = (int)(uint32_t)(d->call >> 32) - 1;
  int n = 0;
  if (kind == PAR__BARRIER)
    n = snprintf(out, len, "barrier()");
  else if (par__op_reduces(kind) && par__op_rooted(kind))
    n = snprintf(out, len, "%s(count=%llu, %s, %s, root %d)", par__op_kind_name(kind),
                 (unsigned long long)d->count, par_dtype_name(dt), par_op_name(red), root);
  else if (par__op_reduces(kind))
    n = snprintf(out, len, "%s(count=%llu, %s, %s)", par__op_kind_name(kind),
                 (unsigned long long)d->count, par_dtype_name(dt), par_op_name(red));
  else if (par__op_rooted(kind))
    n = snprintf(out, len, "%s(count=%llu, %s, root %d)", par__op_kind_name(kind),
                 (unsigned long long)d->count, par_dtype_name(dt), root);
  else
    n = snprintf(out, len, "%s(count=%llu, %s)", par__op_kind_name(kind),
                 (unsigned long long)d->count, par_dtype_name(dt));
  if (with_seq && n >= 0 && (size_t)n < len)
    snprintf(out + n, len - (size_t)n, " as op #%llu", (unsigned long long)d->seq);
}

par_status par__desc_mismatch(par_group *g, const par__desc *mine, int j,
                              const par__desc *theirs, int with_seq) {
  char a[128], b[128];
  describe(mine, with_seq, a, sizeof a);
  describe(theirs, with_seq, b, sizeof b);
  return par__error(PAR_ERR_MISMATCH,
                    "group '%s': members disagree: rank %d (member %d) issued %s but rank %d "
                    "(member %d) issued %s; nothing was transferred",
                    g->name, g->ranks[g->index], g->index, a, g->ranks[j], j, b);
}

par_status par__desc_check(par_group *g, const par__desc *mine, const par__desc *all,
                           int with_seq) {
  for (int j = 0; j < g->n; j++)
    if (!par__desc_equal(mine, &all[j], with_seq))
      return par__desc_mismatch(g, mine, j, &all[j], with_seq);
  return PAR_OK;
}
