/*
 * recorder.c -- the flight recorder: each group keeps the last PAR__FLIGHT_LEN ops it started
 * (op number, kind, count, dtype, root or peer, state, start time), and when an op times out,
 * loses a peer or is aborted, the record goes to the log at error level, so that the user
 * sees which op each rank was in and which member it waited for (as torch's flight recorder
 * shows). Recording costs a few stores per op: the start time is the one the op's deadline
 * was computed from, and no lock is taken (ops of a group run one at a time, and the record
 * is read by the thread whose op just failed).
 */
#include <stdio.h>
#include <string.h>

#include "coll/group.h"

static int worth_reporting(par_status st) {
  return st == PAR_ERR_TIMEOUT || st == PAR_ERR_PEER_LOST || st == PAR_ERR_ABORTED;
}

/* "allreduce #12 (count 256, f32, sum)", "send #3 to member 1 (rank 5) (count 8, f32)". */
static void describe(const par_group *g, par__op_kind kind, uint64_t seq, size_t count,
                     par_dtype dt, par_op red, int root, char *out, size_t len) {
  char where[64] = "";
  if (kind == PAR__SEND || kind == PAR__RECV)
    snprintf(where, sizeof where, " %s member %d (rank %d)", kind == PAR__SEND ? "to" : "from",
             root, root >= 0 && root < g->n ? g->ranks[root] : -1);
  else if (par__op_rooted(kind))
    snprintf(where, sizeof where, ", root %d (rank %d)", root,
             root >= 0 && root < g->n ? g->ranks[root] : -1);
  int reduction = par__op_reduces(kind);
  if (kind == PAR__BARRIER)
    snprintf(out, len, "barrier #%llu", (unsigned long long)seq);
  else
    snprintf(out, len, "%s #%llu%s (count %zu, %s%s%s)", par__op_kind_name(kind),
             (unsigned long long)seq, kind == PAR__SEND || kind == PAR__RECV ? where : "", count,
             par_dtype_name(dt), reduction ? ", " : "", reduction ? par_op_name(red) : "");
  if (par__op_rooted(kind)) {
    size_t n = strlen(out);
    if (n < len) snprintf(out + n, len - n, "%s", where);
  }
}

void par__flight_report(par_group *g, par_status st, const char *detail) {
  if (!worth_reporting(st) || atomic_exchange(&g->flight.shown, 1)) return;
  const par__flight *f = &g->flight;
  double now = par__now();
  uint64_t n = f->next < PAR__FLIGHT_LEN ? f->next : PAR__FLIGHT_LEN;
  PAR__LOG_ERROR("flight recorder of group '%s' (rank %d, member %d of %d): %s", g->name,
                 g->ranks[g->index], g->index, g->n, detail);
  PAR__LOG_ERROR("  its last %llu ops, oldest first (collectives are numbered per group, "
                 "send/recv per peer):",
                 (unsigned long long)n);
  for (uint64_t i = f->next - n; i < f->next; i++) {
    const par__flight_entry *e = &f->ring[i % PAR__FLIGHT_LEN];
    char what[160];
    describe(g, (par__op_kind)e->kind, e->seq, e->count, (par_dtype)e->dt, (par_op)e->red,
             e->root, what, sizeof what);
    if (e->state == PAR__FLIGHT_RUNNING)
      PAR__LOG_ERROR("    %-60s running for %.3f s", what, now - e->start);
    else if (e->state == PAR__FLIGHT_FAILED)
      PAR__LOG_ERROR("    %-60s FAILED (%s), started %.3f s ago", what,
                     par_status_name(e->status), now - e->start);
    else
      PAR__LOG_ERROR("    %-60s done, started %.3f s ago", what, now - e->start);
  }
  pthread_mutex_lock(&g->mu);
  int queued = 0;
  for (par_work *w = g->head; w; w = w->next) queued++;
  int listed = 0;
  for (par_work *w = g->head; w && listed < 8; w = w->next, listed++) {
    char what[160];
    describe(g, w->op.kind, w->op.seq, w->op.count, w->op.dt, w->op.op, w->op.root, what,
             sizeof what);
    PAR__LOG_ERROR("    %-60s queued", what);
  }
  if (queued > listed) PAR__LOG_ERROR("    and %d more ops queued", queued - listed);
  pthread_mutex_unlock(&g->mu);
}
