/*
 * wait.c -- what every backend's waits share: the policy (spin, yield, then sleep) and the
 * words for a wait that ends badly, so a timeout, a lost peer or an abort reads the same
 * whichever backend carried the op.
 */
#include "coll/group.h"

#define SPIN_ROUNDS 20000u /* a few tens of microseconds: a peer's post usually lands in it */
#define YIELDS_OVERSUBSCRIBED 16u

void par__wait_policy_init(par__wait_policy *p, int local_size) {
  const par__env *env = par__env_get();
  int over = par__oversubscribed(local_size);
  p->oversubscribed = over;
  p->spin = env->spin >= 0 ? (unsigned)env->spin : over ? 0u : SPIN_ROUNDS;
  p->yields = over ? YIELDS_OVERSUBSCRIBED : 0u;
}

par_status par__op_check_abort(par_group *g, const char *what, uint64_t seq) {
  int by = g->be && g->be->aborted_by ? g->be->aborted_by(g) : -1;
  if (by < 0 && !atomic_load(&g->aborted)) return PAR_OK;
  atomic_store(&g->aborted, 1);
  if (by >= 0 && by < g->n)
    return par__error(PAR_ERR_ABORTED,
                      "%s on group '%s' (op #%llu): the group was aborted by member %d (rank %d)",
                      what, g->name, (unsigned long long)seq, by, g->ranks[by]);
  return par__error(PAR_ERR_ABORTED, "%s on group '%s' (op #%llu): the group was aborted", what,
                    g->name, (unsigned long long)seq);
}

par_status par__op_timed_out(par_group *g, const char *what, uint64_t seq, double waited,
                             int who, const char *why) {
  if (who < 0 || who >= g->n)
    return par__error(PAR_ERR_TIMEOUT,
                      "%s on group '%s' (op #%llu) timed out after %.3g s: not every member has "
                      "joined it",
                      what, g->name, (unsigned long long)seq, waited);
  return par__error(PAR_ERR_TIMEOUT,
                    "%s on group '%s' (op #%llu) timed out after %.3g s waiting for member %d "
                    "(rank %d%s%s)",
                    what, g->name, (unsigned long long)seq, waited, who, g->ranks[who],
                    why ? ", " : "", why ? why : "");
}

par_status par__op_peer_lost(par_group *g, const char *what, uint64_t seq, int who,
                             const char *how) {
  return par__error(PAR_ERR_PEER_LOST, "%s on group '%s' (op #%llu): member %d (rank %d, %s) died",
                    what, g->name, (unsigned long long)seq, who, g->ranks[who], how);
}

par_status par__op_peer_failed(par_group *g, const char *what, uint64_t seq, int who) {
  return par__error(PAR_ERR_ABORTED,
                    "%s on group '%s' (op #%llu): an earlier op failed on member %d (rank %d), "
                    "so the group is out of step and was given up; destroy it",
                    what, g->name, (unsigned long long)seq, who, g->ranks[who]);
}
