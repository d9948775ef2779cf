/*
 * tune.c -- the shared-memory backend's sizes, derived from the machine (machine.c) by rules,
 * each overridable by its PAR_SHM_* variable (docs/env.md). docs/PERFORMANCE.md ("Tuning from
 * the machine") gives the measurements behind each rule and why it holds on both cache
 * hierarchies par has met: AMD EPYC (Zen 3: 32 KiB L1d, 512 KiB L2 per core, 32 MiB L3 shared)
 * and Intel Xeon (2 MiB L2 per core, 260 MiB L3 shared). The constants measured on the first
 * machine (and on a Xeon with 1 MiB L2 and 35.8 MiB L3, where the same values were measured
 * best) are what the rules give there, exactly.
 *
 * Two shares drive the rules: a core's share of the L2 and of the L3, each the cache divided
 * by the CPUs that share it, counting only as many as the job may use (ranks of this job are
 * what competes for it as far as par can know). The L2 is private to a core (or a core's SMT
 * threads) on every x86 server made, so its reported size is what a rank really gets, in a VM
 * too; the L3 is shared with every core on the die, in a VM also with other guests' cores,
 * so a rule that trusts the L3 has a cap and an override.
 */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "core/core.h"

#define KIB ((size_t)1 << 10)
#define MIB ((size_t)1 << 20)

static size_t pow2_floor(size_t v) {
  size_t p = 1;
  while (v / 2 >= p) p *= 2;
  return v ? p : 0;
}

static size_t clamp(size_t v, size_t lo, size_t hi) { return v < lo ? lo : v > hi ? hi : v; }

static size_t share(size_t size, int shared_by, int cpus) {
  int by = shared_by < cpus ? shared_by : cpus;
  return size / (size_t)(by > 1 ? by : 1);
}

/* ---------------------------------------------------------------------------------------- */
/* The rules                                                                                */
/* ---------------------------------------------------------------------------------------- */

/*
 * Bytes per member per pipeline round. A round reads a chunk of each input it combines and
 * writes a chunk of result, about two chunks in flight per core, and it runs fastest when they
 * stay in that core's L2: chunk <= L2 per core / 2 (EPYC 256 KiB; 260 MiB Xeon 1 MiB).
 * Second, the segment holds 2 parity sets x 2 areas x chunk per member, 32 chunks for 8
 * members, and must leave the L3 room for the buffers the op reads and writes: at most a
 * quarter of it, chunk <= L3 / 128 (EPYC 256 KiB again; the 35.8 MiB Xeon 256 KiB where its
 * L2 alone would allow 512 KiB, and there 1 MiB rounds were measured 15-35% slower on 8 ranks;
 * the 260 MiB Xeon 2 MiB, so its L2 decides). A power of two from 64 KiB (below, a round's
 * synchronisation costs as much as its copying) to 1 MiB (an 8-member segment is then 32 MiB;
 * no larger round was ever measured faster). The L3 caps only where it was read: the default
 * is a guess, and a cap from a guess overrules the L2 the machine did report (a Zen 5 VM that
 * hides its L3, 1 MiB L2: 512 KiB rounds against 256 KiB, 8 ranks, 1 MiB all-reduce 970-1170
 * -> 870-975 us, broadcast 410-490 -> 340-360 us; 2 ranks unchanged).
 */
static size_t rule_chunk(const par__machine *m) {
  size_t l2 = share(m->l2, m->l2_shared_by, m->cpus);
  size_t by_l2 = l2 / 2, by_l3 = m->l3_from == PAR__FROM_DEFAULT ? SIZE_MAX : m->l3 / 128;
  return clamp(pow2_floor(by_l2 < by_l3 ? by_l2 : by_l3), 64 * KIB, 1 * MIB);
}

/*
 * All-reduce/reduce of at most this size take one round in which every member reads every
 * input whole, instead of reduce-scatter and all-gather rounds. The one round moves n times
 * the data but saves a round's synchronisation; that pays while a message still sits in the
 * writer's L1d when the readers fetch it, line by line from cache to cache: = L1d (EPYC
 * 32 KiB; Xeon 48 KiB), and never above the chunk (the round must fit the segment).
 */
static size_t rule_small_max(const par__machine *m, size_t chunk) {
  return clamp(m->l1d, 4 * KIB, chunk);
}

/*
 * Outputs from this size are written with par__copy_out (an AVX2 loop) instead of memcpy
 * (`rep movsb`): memcpy is faster between buffers that stay in cache, the loop when the
 * destination streams out to memory. An op of S bytes touches at least its input, its output
 * and its peers' data, ~3-4 S per member, so its output no longer stays in this core's L3
 * share from a quarter of that share: = L3 per core / 4 (EPYC 32 MiB / 2 / 4 = 4 MiB, and
 * 4 MiB on the 35.8 MiB Xeon, where it was measured; 260 MiB Xeon 32 MiB). From 1 MiB (L2
 * sized outputs never stream) to 64 MiB.
 */
static size_t rule_big_out(const par__machine *m) {
  size_t l3 = share(m->l3, m->l3_shared_by, m->cpus);
  return clamp(pow2_floor(l3 / 4), 1 * MIB, 64 * MIB);
}

/*
 * Single-copy all-reduce (process_vm_readv), whole message. Below the minimum a system call
 * per peer and the kernel's page pinning cost more than the segment copy they save; both costs
 * scale with the core's speed, not its caches, so it is a constant, 256 KiB (measured: the
 * two paths equal there on both machines measured). Above the maximum a member's input and
 * output (2 S) no longer fit its L3 share, the peers' reads go to memory page by page, and
 * the pipeline's cached rounds win: = L3 per core / 2 (EPYC 8 MiB; 35.8 MiB Xeon 8 MiB;
 * 260 MiB Xeon 64 MiB), capped at 64 MiB since a VM's L3 is shared with guests it cannot see.
 */
#define CMA_REDUCE_MIN (256 * KIB)
static size_t rule_cma_reduce_max(const par__machine *m) {
  size_t l3 = share(m->l3, m->l3_shared_by, m->cpus);
  return clamp(pow2_floor(l3 / 2), CMA_REDUCE_MIN, 64 * MIB);
}

/*
 * Single-copy all-gather (per member's block) and broadcast. The minimum is the system call's
 * cost again, lower than for all-reduce because a moved byte is copied once instead of read,
 * reduced and copied: a constant, 64 KiB. All-gather's maximum: the kernel copies a block in
 * one go while the pipeline, once running, copies into the segment and out of it at once; it
 * runs from about four rounds (both parity sets filled and drained), so = 4 chunks (EPYC and
 * 35.8 MiB Xeon 1 MiB, measured between 512 KiB and 2 MiB; 260 MiB Xeon 4 MiB).
 */
#define CMA_MOVE_MIN (64 * KIB)
static size_t rule_cma_move_max(size_t chunk) { return 4 * chunk; }

/*
 * Single copy at all. It replaces user copies through the segment (which run at memcpy's
 * speed, in the caches) by the kernel's copy, which pins every page it touches: a win only
 * while the kernel's copy costs at most about twice a memcpy (all-reduce: one kernel copy of
 * the peers' share in place of a copy in and a read from another core's cache; all-gather: one
 * in place of two). Measured: a 2-core Xeon whose kernel copies at 1-1.5x memcpy gained 10% to
 * 3x from single copy (docs/PERFORMANCE.md); a 2-core EPYC under Firecracker, whose kernel
 * copies 256 KiB at 3.4-4.9x memcpy (8 GB/s against 27-37 GB/s), lost at every size (2-rank
 * 1 MiB all-reduce 173 us against 93 us through the segment). Above the limit both windows
 * close (broadcast's too: its gains there were within the noise, its losses up to 60%).
 */
#define CMA_SLOWDOWN_MAX 2.0
static int cma_pays(const par__machine *m, double limit) {
  return !(m->cma_slowdown > limit); /* 0: not measured, keep the windows */
}

/*
 * Single-copy broadcast splits the message: the root writes part of it into each reader while
 * the readers read the rest, so every member copies about S/n at the kernel's speed, against
 * the segment pipeline's copy in (the root) and copy out (the readers), one after the other.
 * It pays while the kernel's copy costs up to about twice as much again as for all-gather: a
 * slowdown of 4 (the EPYC under Firecracker, 2.7-4.9: 1 MiB 73-83 us single copy, 55-273 us
 * through the segment, whose rounds there hand lines between the two cores' caches at very
 * uneven speed). Up to the size where outputs stream (stream_min): beyond, the segment's
 * rounds with non-temporal stores won there (64 MiB: 9.7 against 12.4 ms).
 */
#define CMA_BCAST_SLOWDOWN_MAX 4.0

/*
 * Outputs from this size may be written with non-temporal stores (par__copy_big times both
 * kernels and keeps the faster): they spare each line's read for ownership and leave the
 * caches alone, which pays only for an output the L3 could not have held anyway; a smaller
 * one is read again from the cache (by the program, by the next round) sooner than from
 * memory. = the whole L3 (EPYC 32 MiB: 64 MiB all-gathers 25% faster streamed, 4 MiB
 * broadcasts 40-130% slower; 260 MiB Xeon 256 MiB, so its 64 MiB ops keep the store loop, as
 * measured best on the 35.8 MiB Xeon), from 4 MiB to 1 GiB.
 */
static size_t rule_stream_min(const par__machine *m) {
  return clamp(pow2_floor(m->l3), 4 * MIB, 1024 * MIB);
}

/*
 * The round size of one group. Where the host runs more ranks than the job has cores, a round
 * is not done until every member has been scheduled to do its part, and each member that
 * waits sleeps and is woken again: a round then costs every member about a wake-up, whatever
 * its size, and the cache the chunk was sized for is shared by the ranks of a core anyway. So
 * a group whose own members outnumber the cores takes rounds as many times larger as it has
 * members per core (a power of two, at most 4), while the segment's data (4 chunks per
 * member) stays within SHM_OVERSUB_DATA and, where the L3 was read, within a quarter of it,
 * as rule_chunk's L3 cap keeps it (on the 35.8 MiB Xeon, 8 ranks on 2 cores, 1 MiB rounds
 * were 15-35% slower than 256 KiB ones: there the rounds stay as they are). Smaller groups
 * keep the machine's: the 8-rank training demo's 2-member groups gained nothing from larger
 * rounds and took 80 ms longer to reserve their segments.
 * 8 ranks on the 2-core Zen 5 VM, 512 KiB -> 2 MiB rounds, alternating launches, ms: 64 MiB
 * all-reduce 55 -> 41-55, reduce_scatter 33-37 -> 23, alltoall 35-49 -> 26, broadcast 19.7 ->
 * 17.3; 4 MiB all-reduce 2.8-3.0 -> 2.0-2.2; 1 MiB ops unchanged or faster. 3 ranks (2 per
 * core): 1 MiB rounds within the noise of 512 KiB ones, 1 MiB all-reduce 340-400 -> 300 us.
 * A chunk set by PAR_SHM_CHUNK is taken as it is.
 */
#define SHM_OVERSUB_DATA (64 * MIB)

size_t par__tune_group_chunk(const par__tuning *t, int n, int local_ranks, int cpus) {
  size_t chunk = t->shm_chunk;
  int members = n < local_ranks ? n : local_ranks;
  if ((t->from_env & PAR__TUNE_CHUNK) || cpus < 1 || members <= cpus) return chunk;
  int per_core = (members + cpus - 1) / cpus, k = 1;
  while (k * 2 <= per_core && k < 4) k *= 2;
  size_t data = t->l3_read && t->l3_read / 4 < SHM_OVERSUB_DATA ? t->l3_read / 4 : SHM_OVERSUB_DATA;
  size_t cap = pow2_floor(data / (4 * (size_t)n));
  size_t big = chunk * (size_t)k < cap ? chunk * (size_t)k : cap;
  return big > chunk ? big : chunk;
}

/* ---------------------------------------------------------------------------------------- */
/* Derivation, overrides, the once-per-process value                                        */
/* ---------------------------------------------------------------------------------------- */

static void take(size_t *field, size_t env_value, unsigned bit, unsigned *from_env) {
  if (env_value) *field = env_value, *from_env |= bit;
}

void par__tune_derive(const par__machine *m, const par__env *env, par__tuning *out) {
  memset(out, 0, sizeof *out);
  out->shm_chunk = rule_chunk(m);
  out->l3_read = m->l3_from == PAR__FROM_DEFAULT ? 0 : m->l3;
  out->small_max = rule_small_max(m, out->shm_chunk);
  out->big_out = rule_big_out(m);
  out->cma_reduce_min = CMA_REDUCE_MIN;
  out->cma_reduce_max = rule_cma_reduce_max(m);
  out->cma_move_min = CMA_MOVE_MIN;
  out->cma_move_max = rule_cma_move_max(out->shm_chunk);
  out->stream_min = rule_stream_min(m);
  out->cma_bcast_min = CMA_MOVE_MIN;
  out->cma_bcast_max = out->stream_min;
  /* Empty windows where the kernel's copy does not pay: a minimum above every size. */
  if (!cma_pays(m, CMA_SLOWDOWN_MAX)) out->cma_reduce_min = out->cma_move_min = SIZE_MAX;
  if (!cma_pays(m, CMA_BCAST_SLOWDOWN_MAX)) out->cma_bcast_min = SIZE_MAX;
  if (!env) return;
  /* An override replaces one value and nothing else: the others keep the machine's rule, so
   * that each variable means the same whatever else is set. A window whose min ends up above
   * its max is empty, which turns that single-copy path off. */
  take(&out->shm_chunk, env->shm_chunk, PAR__TUNE_CHUNK, &out->from_env);
  take(&out->small_max, env->shm_small_max, PAR__TUNE_SMALL_MAX, &out->from_env);
  take(&out->big_out, env->shm_big_out, PAR__TUNE_BIG_OUT, &out->from_env);
  take(&out->cma_reduce_min, env->shm_cma_reduce_min, PAR__TUNE_CMA_REDUCE_MIN, &out->from_env);
  take(&out->cma_reduce_max, env->shm_cma_reduce_max, PAR__TUNE_CMA_REDUCE_MAX, &out->from_env);
  take(&out->cma_move_min, env->shm_cma_move_min, PAR__TUNE_CMA_MOVE_MIN, &out->from_env);
  take(&out->cma_move_max, env->shm_cma_move_max, PAR__TUNE_CMA_MOVE_MAX, &out->from_env);
  take(&out->stream_min, env->shm_stream_min, PAR__TUNE_STREAM_MIN, &out->from_env);
  take(&out->cma_bcast_min, env->shm_cma_bcast_min, PAR__TUNE_CMA_BCAST_MIN, &out->from_env);
  take(&out->cma_bcast_max, env->shm_cma_bcast_max, PAR__TUNE_CMA_BCAST_MAX, &out->from_env);
}

void par__tuning_describe(const par__tuning *t, char *buf, size_t len) {
  static const struct {
    const char *name, *var;
    size_t off;
    unsigned bit;
  } f[] = {
      {"chunk", "PAR_SHM_CHUNK", offsetof(par__tuning, shm_chunk), PAR__TUNE_CHUNK},
      {"small_max", "PAR_SHM_SMALL_MAX", offsetof(par__tuning, small_max), PAR__TUNE_SMALL_MAX},
      {"big_out", "PAR_SHM_BIG_OUT", offsetof(par__tuning, big_out), PAR__TUNE_BIG_OUT},
      {"cma_reduce_min", "PAR_SHM_CMA_REDUCE_MIN", offsetof(par__tuning, cma_reduce_min),
       PAR__TUNE_CMA_REDUCE_MIN},
      {"cma_reduce_max", "PAR_SHM_CMA_REDUCE_MAX", offsetof(par__tuning, cma_reduce_max),
       PAR__TUNE_CMA_REDUCE_MAX},
      {"cma_move_min", "PAR_SHM_CMA_MOVE_MIN", offsetof(par__tuning, cma_move_min),
       PAR__TUNE_CMA_MOVE_MIN},
      {"cma_move_max", "PAR_SHM_CMA_MOVE_MAX", offsetof(par__tuning, cma_move_max),
       PAR__TUNE_CMA_MOVE_MAX},
      {"stream_min", "PAR_SHM_STREAM_MIN", offsetof(par__tuning, stream_min),
       PAR__TUNE_STREAM_MIN},
      {"cma_bcast_min", "PAR_SHM_CMA_BCAST_MIN", offsetof(par__tuning, cma_bcast_min),
       PAR__TUNE_CMA_BCAST_MIN},
      {"cma_bcast_max", "PAR_SHM_CMA_BCAST_MAX", offsetof(par__tuning, cma_bcast_max),
       PAR__TUNE_CMA_BCAST_MAX},
  };
  size_t used = 0;
  buf[0] = '\0';
  for (size_t i = 0; i < sizeof f / sizeof f[0] && used < len; i++) {
    char v[24];
    size_t value;
    memcpy(&value, (const char *)t + f[i].off, sizeof value);
    if (value == SIZE_MAX)
      snprintf(v, sizeof v, "off");
    else
      par__fmt_size(v, sizeof v, value);
    int n = snprintf(buf + used, len - used, "%s%s %s (%s)", i ? ", " : "", f[i].name, v,
                     t->from_env & f[i].bit ? f[i].var : "machine");
    if (n < 0) break;
    used += (size_t)n;
  }
}

static par__tuning tuning;
static pthread_once_t tuning_once = PTHREAD_ONCE_INIT;

static void tuning_init(void) {
  const par__machine *m = par__machine_get();
  par__tune_derive(m, par__env_get(), &tuning);
  if (par__log_enabled(PAR_LOG_DEBUG)) {
    char line[640];
    par__machine_describe(m, line, sizeof line);
    par__log(PAR_LOG_DEBUG, "machine: %s", line);
    par__tuning_describe(&tuning, line, sizeof line);
    /* Each process derives its own; a group takes its member 0's (shm.h), so they may differ. */
    par__log(PAR_LOG_DEBUG, "shm tuning: %s; a group takes its member 0's", line);
  }
}

const par__tuning *par__tuning_get(void) {
  pthread_once(&tuning_once, tuning_init);
  return &tuning;
}
