/*
 * store_engine.c -- the rendezvous store's protocol engine (store_engine.h): a chained hash
 * table of byte-string keys, and every connection's state machine. Nothing here touches a
 * socket or reads the clock, so the same code runs in the server thread and in a fuzz
 * target. Every length read from the wire is checked against the limits in store_proto.h
 * before memory is sized or indexed by it; a request the engine cannot honour is answered
 * with the reason (a bad header, out of memory) before the connection closes, so a client
 * never has to guess why its store went quiet.
 */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include "bootstrap/store_engine.h"
#include "core/core.h"

/* ---------------------------------------------------------------------------------------- */
/* Key-value table                                                                          */
/* ---------------------------------------------------------------------------------------- */

typedef struct par__store_entry {
  struct par__store_entry *next;
  uint64_t hash;
  uint32_t klen, vlen;
  uint8_t *val;
  uint8_t key[];
} entry;

static uint64_t hash_key(const uint8_t *k, size_t n) { return par__fnv1a(k, n, PAR__FNV_OFFSET); }

static entry **table_slot(par__store_engine *t, const uint8_t *key, uint32_t klen, uint64_t h) {
  entry **pp = &t->buckets[h & (t->nbuckets - 1)];
  for (; *pp; pp = &(*pp)->next)
    if ((*pp)->hash == h && (*pp)->klen == klen && !memcmp((*pp)->key, key, klen)) break;
  return pp;
}

static entry *table_find(par__store_engine *t, const uint8_t *key, uint32_t klen) {
  return *table_slot(t, key, klen, hash_key(key, klen));
}

static void table_grow(par__store_engine *t) {
  size_t nb = t->nbuckets * 2;
  entry **b = calloc(nb, sizeof *b);
  if (!b) return; /* keep the old size: longer chains, still correct */
  for (size_t i = 0; i < t->nbuckets; i++)
    for (entry *e = t->buckets[i], *next; e; e = next) {
      next = e->next;
      e->next = b[e->hash & (nb - 1)];
      b[e->hash & (nb - 1)] = e;
    }
  free(t->buckets);
  t->buckets = b;
  t->nbuckets = nb;
}

/* Stores a copy of the value; returns the entry, or NULL when out of memory (the old value,
 * if any, is then kept). */
static entry *table_set(par__store_engine *t, const uint8_t *key, uint32_t klen, const void *val,
                        uint32_t vlen) {
  uint8_t *copy = malloc(vlen ? vlen : 1);
  if (!copy) return NULL;
  if (vlen) memcpy(copy, val, vlen);
  uint64_t h = hash_key(key, klen);
  entry **pp = table_slot(t, key, klen, h);
  entry *e = *pp;
  if (!e) {
    e = malloc(sizeof *e + klen);
    if (!e) {
      free(copy);
      return NULL;
    }
    e->next = NULL;
    e->hash = h;
    e->klen = klen;
    e->val = NULL;
    memcpy(e->key, key, klen);
    *pp = e;
    if (++t->count > 2 * t->nbuckets) table_grow(t);
  }
  free(e->val);
  e->val = copy;
  e->vlen = vlen;
  return e;
}

static void table_del(par__store_engine *t, const uint8_t *key, uint32_t klen) {
  entry **pp = table_slot(t, key, klen, hash_key(key, klen));
  entry *e = *pp;
  if (!e) return;
  *pp = e->next;
  free(e->val);
  free(e);
  t->count--;
}

/* ---------------------------------------------------------------------------------------- */
/* Output                                                                                   */
/* ---------------------------------------------------------------------------------------- */

/* Appends raw bytes to the output; 0 on success, -1 (connection marked dead) without memory:
 * a client that cannot be answered can only be dropped. */
static int out_append(par__store_conn *c, const void *p, size_t len) {
  if (c->dead) return -1;
  size_t need = c->out_len + len;
  if (need > c->out_cap) {
    /* Sent bytes at the front are dropped before the buffer grows. */
    if (c->out_off) {
      memmove(c->out, c->out + c->out_off, c->out_len - c->out_off);
      c->out_len -= c->out_off;
      c->out_off = 0;
      need = c->out_len + len;
    }
    size_t cap = c->out_cap ? c->out_cap : 256;
    while (cap < need) cap *= 2;
    if (cap != c->out_cap) {
      uint8_t *q = realloc(c->out, cap);
      if (!q) {
        c->dead = 1;
        return -1;
      }
      c->out = q;
      c->out_cap = cap;
    }
  }
  memcpy(c->out + c->out_len, p, len);
  c->out_len += len;
  return 0;
}

static void reply(par__store_conn *c, uint8_t status, const void *payload, size_t len) {
  uint8_t h[PAR__STORE_RESP_HDR] = {0};
  h[0] = status;
  par__put_u32(h + 4, (uint32_t)len);
  if (out_append(c, h, sizeof h) == 0 && len) out_append(c, payload, len);
}

static void reply_error(par__store_conn *c, const char *msg) {
  reply(c, PAR__STORE_ERROR, msg, strlen(msg));
}

/* Answers why, then closes once that is sent: the stream cannot be trusted any further. */
static void reply_error_close(par__store_conn *c, const char *msg) {
  reply_error(c, msg);
  c->state = PAR__CONN_CLOSING;
  if (c->out_off == c->out_len) c->dead = 1;
}

void par__store_conn_sent(par__store_conn *c, size_t n) {
  c->out_off += n;
  if (c->out_off < c->out_len) return;
  c->out_off = c->out_len = 0;
  if (c->state == PAR__CONN_CLOSING) c->dead = 1;
}

/* Drops the first n buffered input bytes (a request that has been answered). */
static void consume(par__store_conn *c, size_t n) {
  memmove(c->in, c->in + n, c->in_len - n);
  c->in_len -= n;
}

/* ---------------------------------------------------------------------------------------- */
/* Requests                                                                                 */
/* ---------------------------------------------------------------------------------------- */

/* Answers every connection waiting in a GET for this key, now that it has a value. */
static void wake_waiters(par__store_engine *e, const entry *en) {
  for (size_t i = 0; i < e->nconns; i++) {
    par__store_conn *w = e->conns[i];
    if (w->dead || w->state != PAR__CONN_WAIT) continue;
    uint32_t klen = par__get_u32(w->in + 4);
    if (klen != en->klen || memcmp(w->in + PAR__STORE_REQ_HDR, en->key, klen)) continue;
    reply(w, PAR__STORE_OK, en->val, en->vlen);
    consume(w, PAR__STORE_REQ_HDR + klen);
    w->state = PAR__CONN_READY;
    e->rescan = 1;
  }
}

/* Parses a decimal int64 value as ADD stores it; 0 on success. */
static int parse_i64(const uint8_t *p, uint32_t n, int64_t *out) {
  char buf[32];
  if (n == 0 || n >= sizeof buf) return -1;
  memcpy(buf, p, n);
  buf[n] = '\0';
  char *end;
  errno = 0;
  long long v = strtoll(buf, &end, 10);
  if (errno || *end != '\0') return -1;
  *out = (int64_t)v;
  return 0;
}

static void do_add(par__store_engine *e, par__store_conn *c, const uint8_t *key, uint32_t klen,
                   const uint8_t *arg) {
  int64_t cur = 0;
  entry *en = table_find(e, key, klen);
  if (en && parse_i64(en->val, en->vlen, &cur) != 0) {
    char msg[160];
    snprintf(msg, sizeof msg, "store: ADD on key '%.*s' whose value is not an integer",
             (int)(klen > 100 ? 100 : klen), (const char *)key);
    reply_error(c, msg);
    return;
  }
  /* Two's-complement wrap, computed unsigned so that overflow is defined. */
  int64_t nv = (int64_t)((uint64_t)cur + par__get_u64(arg));
  char text[32];
  int tl = snprintf(text, sizeof text, "%" PRId64, nv);
  en = table_set(e, key, klen, text, (uint32_t)tl);
  if (!en) {
    reply_error(c, "store: the server is out of memory (ADD not done)");
    return;
  }
  uint8_t res[8];
  par__put_u64(res, (uint64_t)nv);
  reply(c, PAR__STORE_OK, res, sizeof res);
  wake_waiters(e, en);
}

/* Checks a request header; returns NULL if it is acceptable, else why not. The reserved
 * bytes must be zero: they are where a later protocol would put flags, and a stream that
 * fell out of step shows up there too, so neither is read as a request of this version. */
static const char *check_header(const uint8_t *h, char *msg, size_t cap) {
  uint8_t op = h[0];
  uint32_t klen = par__get_u32(h + 4), vlen = par__get_u32(h + 8);
  if (h[1] || h[2] || h[3]) {
    snprintf(msg, cap,
             "store: request header (op %u) has non-zero reserved bytes %02x %02x %02x: the "
             "client speaks another store protocol, or its stream is out of step",
             (unsigned)op, h[1], h[2], h[3]);
    return msg;
  }
  if (op < PAR__STORE_SET || op > PAR__STORE_DEL) {
    snprintf(msg, cap, "store: unknown request op %u", (unsigned)op);
    return msg;
  }
  if (klen > PAR__STORE_MAX_KEY) {
    snprintf(msg, cap, "store: key length %" PRIu32 " exceeds the limit of %u bytes", klen,
             PAR__STORE_MAX_KEY);
    return msg;
  }
  if (vlen > PAR__STORE_MAX_VAL) {
    snprintf(msg, cap, "store: value length %" PRIu32 " exceeds the limit of %u bytes", vlen,
             PAR__STORE_MAX_VAL);
    return msg;
  }
  uint32_t want = op == PAR__STORE_ADD ? 8 : op == PAR__STORE_SET ? vlen : 0;
  if (vlen != want) {
    snprintf(msg, cap, "store: request op %u with a value of %" PRIu32 " bytes", (unsigned)op,
             vlen);
    return msg;
  }
  return NULL;
}

/* Serves the complete requests buffered on a ready connection, in order, until one has to
 * wait, the input runs out, or too much output is queued. */
static void process(par__store_engine *e, par__store_conn *c, double now) {
  while (!c->dead && c->state == PAR__CONN_READY && c->in_len >= PAR__STORE_REQ_HDR &&
         c->out_len - c->out_off < PAR__STORE_OUT_HIGH) {
    const uint8_t *h = c->in;
    char msg[224];
    if (check_header(h, msg, sizeof msg)) {
      reply_error_close(c, msg);
      return;
    }
    uint32_t klen = par__get_u32(h + 4), vlen = par__get_u32(h + 8), arg = par__get_u32(h + 12);
    size_t need = PAR__STORE_REQ_HDR + (size_t)klen + vlen;
    if (c->in_len < need) return;
    const uint8_t *key = h + PAR__STORE_REQ_HDR, *val = key + klen;
    switch (h[0]) {
      case PAR__STORE_SET: {
        entry *en = table_set(e, key, klen, val, vlen);
        if (!en) {
          snprintf(msg, sizeof msg,
                   "store: the server is out of memory (SET of %" PRIu32 " bytes not done)", vlen);
          reply_error(c, msg);
          break;
        }
        reply(c, PAR__STORE_OK, NULL, 0);
        wake_waiters(e, en);
        break;
      }
      case PAR__STORE_GET: {
        entry *en = table_find(e, key, klen);
        if (en) {
          reply(c, PAR__STORE_OK, en->val, en->vlen);
        } else if (arg == 0) {
          reply(c, PAR__STORE_NOT_FOUND, NULL, 0);
        } else {
          /* Keep the request buffered: wake_waiters matches against its key. */
          c->state = PAR__CONN_WAIT;
          c->deadline = now + arg / 1000.0;
          return;
        }
        break;
      }
      case PAR__STORE_ADD:
        do_add(e, c, key, klen, val);
        break;
      case PAR__STORE_DEL:
        table_del(e, key, klen);
        reply(c, PAR__STORE_OK, NULL, 0);
        break;
    }
    consume(c, need);
  }
}

static void check_auth(par__store_engine *e, par__store_conn *c, double now) {
  if (c->in_len < PAR__STORE_MAC_LEN) return;
  uint8_t mac[PAR__STORE_MAC_LEN];
  if (par__store_mac(e->token, c->nonce, mac) != 0) {
    reply_error_close(c, "store: the server cannot compute HMAC-SHA256 (out of memory?)");
    return;
  }
  int ok = CRYPTO_memcmp(mac, c->in, PAR__STORE_MAC_LEN) == 0;
  consume(c, PAR__STORE_MAC_LEN);
  if (!ok) {
    PAR__LOG_DEBUG("store: refused a client with a wrong token");
    c->state = PAR__CONN_CLOSING;
    reply(c, PAR__STORE_REJECT, PAR__STORE_AUTH_REJECT, strlen(PAR__STORE_AUTH_REJECT));
    return;
  }
  if (!e->token[0] && !e->warned_tokenless) {
    /* Anyone who can reach the port can do what this client did: say so, once. */
    e->warned_tokenless = 1;
    PAR__LOG_WARN(
        "store: admitted a client without a job token (PAR_TOKEN is unset): any "
        "process that can reach the store can join this job");
  }
  c->state = PAR__CONN_READY;
  reply(c, PAR__STORE_OK, NULL, 0);
  process(e, c, now);
}

/* ---------------------------------------------------------------------------------------- */
/* Connections                                                                              */
/* ---------------------------------------------------------------------------------------- */

par_status par__store_engine_init(par__store_engine *e, const char *token) {
  memset(e, 0, sizeof *e);
  e->token = strdup(token ? token : "");
  e->nbuckets = 64;
  e->buckets = calloc(e->nbuckets, sizeof *e->buckets);
  if (!e->token || !e->buckets) {
    free(e->token);
    free(e->buckets);
    return par__error(PAR_ERR_NOMEM, "store: out of memory");
  }
  return PAR_OK;
}

static void conn_free(par__store_conn *c) {
  if (c->fd >= 0) close(c->fd);
  free(c->in);
  free(c->out);
  free(c);
}

void par__store_engine_fini(par__store_engine *e) {
  for (size_t i = 0; i < e->nconns; i++) conn_free(e->conns[i]);
  free(e->conns);
  for (size_t i = 0; i < e->nbuckets; i++)
    for (entry *en = e->buckets[i], *next; en; en = next) {
      next = en->next;
      free(en->val);
      free(en);
    }
  free(e->buckets);
  free(e->token);
  memset(e, 0, sizeof *e);
}

par__store_conn *par__store_engine_add(par__store_engine *e, int fd,
                                       const uint8_t nonce[PAR__STORE_NONCE_LEN],
                                       double auth_deadline) {
  if (e->nconns == e->cap_conns) {
    size_t cap = e->cap_conns ? e->cap_conns * 2 : 16;
    par__store_conn **p = realloc(e->conns, cap * sizeof *p);
    if (!p) return NULL;
    e->conns = p;
    e->cap_conns = cap;
  }
  par__store_conn *c = calloc(1, sizeof *c);
  if (!c) return NULL;
  c->fd = fd;
  c->state = PAR__CONN_AUTH;
  c->deadline = auth_deadline;
  memcpy(c->nonce, nonce, PAR__STORE_NONCE_LEN);
  /* The greeting is raw bytes, not a frame. */
  if (out_append(c, PAR__STORE_MAGIC, PAR__STORE_MAGIC_LEN) != 0 ||
      out_append(c, nonce, PAR__STORE_NONCE_LEN) != 0) {
    free(c->out);
    free(c);
    return NULL;
  }
  e->conns[e->nconns++] = c;
  return c;
}

uint8_t *par__store_conn_input_space(par__store_conn *c, size_t *room) {
  if (c->dead || c->in_len >= PAR__STORE_IN_LIMIT) return NULL;
  if (c->in_cap - c->in_len < 4096 && c->in_cap < PAR__STORE_IN_LIMIT) {
    size_t cap = c->in_cap ? c->in_cap * 2 : 8192;
    if (cap > PAR__STORE_IN_LIMIT) cap = PAR__STORE_IN_LIMIT;
    uint8_t *p = realloc(c->in, cap);
    if (!p && c->in_cap == c->in_len) {
      char msg[160];
      snprintf(msg, sizeof msg,
               "store: the server is out of memory (cannot buffer %zu bytes of input); it "
               "closed this connection",
               cap);
      reply_error_close(c, msg);
      return NULL;
    }
    if (p) {
      c->in = p;
      c->in_cap = cap;
    }
  }
  *room = c->in_cap - c->in_len;
  return c->in + c->in_len;
}

void par__store_conn_received(par__store_engine *e, par__store_conn *c, size_t n, double now) {
  c->in_len += n;
  if (c->state == PAR__CONN_AUTH) check_auth(e, c, now);
  if (c->state == PAR__CONN_READY) process(e, c, now);
}

void par__store_engine_rescan(par__store_engine *e, double now) {
  while (e->rescan) {
    e->rescan = 0;
    for (size_t i = 0; i < e->nconns; i++) process(e, e->conns[i], now);
  }
}

double par__store_engine_deadlines(par__store_engine *e, double now) {
  double next = INFINITY;
  for (size_t i = 0; i < e->nconns; i++) {
    par__store_conn *c = e->conns[i];
    if (c->dead || (c->state != PAR__CONN_AUTH && c->state != PAR__CONN_WAIT)) continue;
    if (now >= c->deadline) {
      if (c->state == PAR__CONN_AUTH) {
        c->dead = 1; /* silent since the greeting: nothing to answer */
        continue;
      }
      reply(c, PAR__STORE_NOT_FOUND, NULL, 0);
      consume(c, PAR__STORE_REQ_HDR + par__get_u32(c->in + 4));
      c->state = PAR__CONN_READY;
      e->rescan = 1;
      continue;
    }
    if (c->deadline < next) next = c->deadline;
  }
  return next;
}

void par__store_engine_sweep(par__store_engine *e) {
  size_t j = 0;
  for (size_t i = 0; i < e->nconns; i++) {
    if (e->conns[i]->dead)
      conn_free(e->conns[i]);
    else
      e->conns[j++] = e->conns[i];
  }
  e->nconns = j;
}

size_t par__store_engine_unauthenticated(const par__store_engine *e) {
  size_t n = 0;
  for (size_t i = 0; i < e->nconns; i++)
    n += !e->conns[i]->dead && e->conns[i]->state == PAR__CONN_AUTH;
  return n;
}
