/*
 * store_server.c -- the rendezvous store's server: one thread running a single poll() loop
 * over a listening socket, a self-pipe that stop() writes to, and every client connection.
 * Sockets are non-blocking and every connection is a small state machine (authenticating,
 * ready, waiting in a GET, closing), so a GET that waits for its key never stops the server
 * from serving the other clients, one of which will eventually SET that key. The wire format
 * is in store_proto.h. parrun hosts this server in-process; otherwise rank 0 does.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/rand.h>

#include "bootstrap/bootstrap.h"
#include "bootstrap/store_proto.h"
#include "core/core.h"

/* A client has this long to answer the challenge; a silent connection must not linger. */
#define AUTH_TIMEOUT_S 30.0
/* Input buffered per connection: one largest frame plus some pipelined slack. */
#define IN_LIMIT (PAR__STORE_REQ_HDR + PAR__STORE_MAX_KEY + PAR__STORE_MAX_VAL + 65536u)
/* Stop parsing a connection's requests while this much output is unsent (slow reader). */
#define OUT_HIGH (4u * 1024u * 1024u)

/* ---------------------------------------------------------------------------------------- */
/* Key-value table: chained hash table keyed by byte strings                                */
/* ---------------------------------------------------------------------------------------- */

typedef struct entry {
  struct entry *next;
  uint64_t hash;
  uint32_t klen, vlen;
  uint8_t *val;
  uint8_t key[];
} entry;

typedef struct table {
  entry **buckets;
  size_t nbuckets, count;
} table;

static uint64_t hash_key(const uint8_t *k, size_t n) {
  uint64_t h = 1469598103934665603ull; /* FNV-1a */
  for (size_t i = 0; i < n; i++) h = (h ^ k[i]) * 1099511628211ull;
  return h;
}

static entry **table_slot(table *t, const uint8_t *key, uint32_t klen, uint64_t h) {
  entry **pp = &t->buckets[h & (t->nbuckets - 1)];
  for (; *pp; pp = &(*pp)->next)
    if ((*pp)->hash == h && (*pp)->klen == klen && !memcmp((*pp)->key, key, klen)) break;
  return pp;
}

static entry *table_find(table *t, const uint8_t *key, uint32_t klen) {
  return *table_slot(t, key, klen, hash_key(key, klen));
}

static void table_grow(table *t) {
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
static entry *table_set(table *t, const uint8_t *key, uint32_t klen, const void *val,
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

static void table_del(table *t, const uint8_t *key, uint32_t klen) {
  entry **pp = table_slot(t, key, klen, hash_key(key, klen));
  entry *e = *pp;
  if (!e) return;
  *pp = e->next;
  free(e->val);
  free(e);
  t->count--;
}

static void table_free(table *t) {
  for (size_t i = 0; i < t->nbuckets; i++)
    for (entry *e = t->buckets[i], *next; e; e = next) {
      next = e->next;
      free(e->val);
      free(e);
    }
  free(t->buckets);
}

/* ---------------------------------------------------------------------------------------- */
/* Connections                                                                              */
/* ---------------------------------------------------------------------------------------- */

typedef enum conn_state { C_AUTH, C_READY, C_WAIT, C_CLOSING } conn_state;

typedef struct conn {
  int fd;
  int dead;
  conn_state state;
  double deadline; /* C_AUTH: answer the challenge by then; C_WAIT: reply NOT_FOUND then */
  uint8_t nonce[PAR__STORE_NONCE_LEN];
  uint8_t *in;
  size_t in_len, in_cap;
  uint8_t *out;
  size_t out_off, out_len, out_cap; /* unsent bytes are out[out_off .. out_len) */
} conn;

struct par__store_server {
  int listen_fd;
  int wake[2]; /* self-pipe: stop() writes a byte, the loop sees it and returns */
  pthread_t thread;
  char *token;
  table tab;
  conn **conns;
  size_t nconns, cap_conns;
  struct pollfd *pfds;
  size_t cap_pfds;
  double accept_pause_until; /* out of descriptors: do not spin on a readable listener */
  int rescan;                /* a waiter was released: its buffered requests need parsing */
};

static void conn_free(conn *c) {
  if (c->fd >= 0) close(c->fd);
  free(c->in);
  free(c->out);
  free(c);
}

static void conn_flush(conn *c) {
  while (c->out_off < c->out_len) {
    ssize_t n = send(c->fd, c->out + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL);
    if (n > 0) {
      c->out_off += (size_t)n;
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
    c->dead = 1; /* the peer went away; nothing more to tell it */
    return;
  }
  c->out_off = c->out_len = 0;
  if (c->state == C_CLOSING) c->dead = 1;
}

/* Appends one response frame and tries to send it at once (latency matters in rendezvous). */
static void conn_reply(conn *c, uint8_t status, const void *payload, size_t len) {
  if (c->dead) return;
  size_t need = c->out_len + PAR__STORE_RESP_HDR + len;
  if (need > c->out_cap) {
    size_t cap = c->out_cap ? c->out_cap : 256;
    while (cap < need) cap *= 2;
    uint8_t *p = realloc(c->out, cap);
    if (!p) {
      c->dead = 1; /* cannot answer: dropping the client is the only honest outcome */
      return;
    }
    c->out = p;
    c->out_cap = cap;
  }
  uint8_t *h = c->out + c->out_len;
  memset(h, 0, PAR__STORE_RESP_HDR);
  h[0] = status;
  par__put_u32(h + 4, (uint32_t)len);
  if (len) memcpy(h + PAR__STORE_RESP_HDR, payload, len);
  c->out_len = need;
  conn_flush(c);
}

static void conn_reply_error(conn *c, const char *msg) {
  conn_reply(c, PAR__STORE_ERROR, msg, strlen(msg));
}

/* Drops the first n buffered input bytes (a request that has been answered). */
static void conn_consume(conn *c, size_t n) {
  memmove(c->in, c->in + n, c->in_len - n);
  c->in_len -= n;
}

/* ---------------------------------------------------------------------------------------- */
/* Requests                                                                                 */
/* ---------------------------------------------------------------------------------------- */

/* Answers every connection waiting in a GET for this key, now that it has a value. */
static void wake_waiters(par__store_server *srv, const entry *e) {
  for (size_t i = 0; i < srv->nconns; i++) {
    conn *w = srv->conns[i];
    if (w->dead || w->state != C_WAIT) continue;
    uint32_t klen = par__get_u32(w->in + 4);
    if (klen != e->klen || memcmp(w->in + PAR__STORE_REQ_HDR, e->key, klen)) continue;
    conn_reply(w, PAR__STORE_OK, e->val, e->vlen);
    conn_consume(w, PAR__STORE_REQ_HDR + klen);
    w->state = C_READY;
    srv->rescan = 1;
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

static void do_add(par__store_server *srv, conn *c, const uint8_t *key, uint32_t klen,
                   const uint8_t *arg) {
  int64_t cur = 0;
  entry *e = table_find(&srv->tab, key, klen);
  if (e && parse_i64(e->val, e->vlen, &cur) != 0) {
    char msg[160];
    snprintf(msg, sizeof msg, "store: ADD on key '%.*s' whose value is not an integer",
             (int)(klen > 100 ? 100 : klen), (const char *)key);
    conn_reply_error(c, msg);
    return;
  }
  /* Two's-complement wrap, computed unsigned so that overflow is defined. */
  int64_t nv = (int64_t)((uint64_t)cur + par__get_u64(arg));
  char text[32];
  int tl = snprintf(text, sizeof text, "%" PRId64, nv);
  e = table_set(&srv->tab, key, klen, text, (uint32_t)tl);
  if (!e) {
    conn_reply_error(c, "store: server out of memory");
    return;
  }
  uint8_t res[8];
  par__put_u64(res, (uint64_t)nv);
  conn_reply(c, PAR__STORE_OK, res, sizeof res);
  wake_waiters(srv, e);
}

/* Checks a request header; returns NULL if it is acceptable, else why not. */
static const char *check_header(const uint8_t *h, char *msg, size_t cap) {
  uint8_t op = h[0];
  uint32_t klen = par__get_u32(h + 4), vlen = par__get_u32(h + 8);
  if (op < PAR__STORE_SET || op > PAR__STORE_DEL || h[1] || h[2] || h[3]) {
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
static void conn_process(par__store_server *srv, conn *c) {
  while (!c->dead && c->state == C_READY && c->in_len >= PAR__STORE_REQ_HDR &&
         c->out_len - c->out_off < OUT_HIGH) {
    const uint8_t *h = c->in;
    char msg[160];
    if (check_header(h, msg, sizeof msg)) {
      /* The stream cannot be trusted past a bad header: answer why, then hang up. */
      conn_reply_error(c, msg);
      c->state = C_CLOSING;
      if (c->out_off == c->out_len) c->dead = 1;
      return;
    }
    uint32_t klen = par__get_u32(h + 4), vlen = par__get_u32(h + 8), arg = par__get_u32(h + 12);
    size_t need = PAR__STORE_REQ_HDR + (size_t)klen + vlen;
    if (c->in_len < need) return;
    const uint8_t *key = h + PAR__STORE_REQ_HDR, *val = key + klen;
    switch (h[0]) {
      case PAR__STORE_SET: {
        entry *e = table_set(&srv->tab, key, klen, val, vlen);
        if (!e) {
          conn_reply_error(c, "store: server out of memory");
          break;
        }
        conn_reply(c, PAR__STORE_OK, NULL, 0);
        wake_waiters(srv, e);
        break;
      }
      case PAR__STORE_GET: {
        entry *e = table_find(&srv->tab, key, klen);
        if (e) {
          conn_reply(c, PAR__STORE_OK, e->val, e->vlen);
        } else if (arg == 0) {
          conn_reply(c, PAR__STORE_NOT_FOUND, NULL, 0);
        } else {
          /* Keep the request buffered: wake_waiters matches against its key. */
          c->state = C_WAIT;
          c->deadline = par__now() + arg / 1000.0;
          return;
        }
        break;
      }
      case PAR__STORE_ADD:
        do_add(srv, c, key, klen, val);
        break;
      case PAR__STORE_DEL:
        table_del(&srv->tab, key, klen);
        conn_reply(c, PAR__STORE_OK, NULL, 0);
        break;
    }
    conn_consume(c, need);
  }
}

static void conn_check_auth(par__store_server *srv, conn *c) {
  if (c->in_len < PAR__STORE_MAC_LEN) return;
  uint8_t mac[PAR__STORE_MAC_LEN];
  int ok = par__store_mac(srv->token, c->nonce, mac) == 0 &&
           CRYPTO_memcmp(mac, c->in, PAR__STORE_MAC_LEN) == 0;
  conn_consume(c, PAR__STORE_MAC_LEN);
  if (ok) {
    c->state = C_READY;
    conn_reply(c, PAR__STORE_OK, NULL, 0);
    conn_process(srv, c);
  } else {
    PAR__LOG_DEBUG("store: refused a client with a wrong token");
    c->state = C_CLOSING;
    conn_reply(c, PAR__STORE_REJECT, PAR__STORE_AUTH_REJECT, strlen(PAR__STORE_AUTH_REJECT));
  }
}

static void conn_read(par__store_server *srv, conn *c) {
  for (;;) {
    if (c->in_len >= IN_LIMIT) break; /* resumes once buffered requests are served */
    if (c->in_cap - c->in_len < 4096 && c->in_cap < IN_LIMIT) {
      size_t cap = c->in_cap ? c->in_cap * 2 : 8192;
      if (cap > IN_LIMIT) cap = IN_LIMIT;
      uint8_t *p = realloc(c->in, cap);
      if (!p) {
        c->dead = 1;
        return;
      }
      c->in = p;
      c->in_cap = cap;
    }
    ssize_t n = recv(c->fd, c->in + c->in_len, c->in_cap - c->in_len, 0);
    if (n > 0) {
      c->in_len += (size_t)n;
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
    c->dead = 1; /* EOF or a reset: the client is gone (a waiting GET with it) */
    return;
  }
  if (c->state == C_AUTH) conn_check_auth(srv, c);
  if (c->state == C_READY) conn_process(srv, c);
}

/* ---------------------------------------------------------------------------------------- */
/* The loop                                                                                 */
/* ---------------------------------------------------------------------------------------- */

static void accept_all(par__store_server *srv) {
  for (;;) {
    int fd = accept4(srv->listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      if (errno != EAGAIN && errno != EWOULDBLOCK) {
        PAR__LOG_WARN("store: accept failed: %s; pausing new connections", strerror(errno));
        srv->accept_pause_until = par__now() + 0.1;
      }
      return;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    conn *c = calloc(1, sizeof *c);
    if (c && srv->nconns == srv->cap_conns) {
      size_t cap = srv->cap_conns ? srv->cap_conns * 2 : 16;
      conn **p = realloc(srv->conns, cap * sizeof *p);
      if (p) {
        srv->conns = p;
        srv->cap_conns = cap;
      }
    }
    if (!c || srv->nconns == srv->cap_conns || RAND_bytes(c->nonce, sizeof c->nonce) != 1) {
      PAR__LOG_WARN("store: dropping a connection (out of memory or randomness)");
      free(c);
      close(fd);
      continue;
    }
    c->fd = fd;
    c->state = C_AUTH;
    c->deadline = par__now() + AUTH_TIMEOUT_S;
    srv->conns[srv->nconns++] = c;
    uint8_t hello[PAR__STORE_MAGIC_LEN + PAR__STORE_NONCE_LEN];
    memcpy(hello, PAR__STORE_MAGIC, PAR__STORE_MAGIC_LEN);
    memcpy(hello + PAR__STORE_MAGIC_LEN, c->nonce, PAR__STORE_NONCE_LEN);
    /* The greeting is raw bytes, not a frame: queue it through the output buffer by hand. */
    c->out = malloc(256);
    if (!c->out) {
      c->dead = 1;
      continue;
    }
    c->out_cap = 256;
    memcpy(c->out, hello, sizeof hello);
    c->out_len = sizeof hello;
    conn_flush(c);
  }
}

/* Releases waiters and silent clients whose time is up; returns the poll timeout in ms. */
static int handle_deadlines(par__store_server *srv) {
  double now = par__now(), next = INFINITY;
  for (size_t i = 0; i < srv->nconns; i++) {
    conn *c = srv->conns[i];
    if (c->dead || (c->state != C_AUTH && c->state != C_WAIT)) continue;
    if (now >= c->deadline) {
      if (c->state == C_AUTH) {
        c->dead = 1;
        continue;
      }
      conn_reply(c, PAR__STORE_NOT_FOUND, NULL, 0);
      conn_consume(c, PAR__STORE_REQ_HDR + par__get_u32(c->in + 4));
      c->state = C_READY;
      srv->rescan = 1;
      continue;
    }
    if (c->deadline < next) next = c->deadline;
  }
  if (srv->accept_pause_until > now && srv->accept_pause_until < next)
    next = srv->accept_pause_until;
  if (next == INFINITY) return -1;
  double ms = ceil((next - now) * 1000.0);
  return ms > 60000.0 ? 60000 : (int)ms;
}

static void sweep_dead(par__store_server *srv) {
  size_t j = 0;
  for (size_t i = 0; i < srv->nconns; i++) {
    if (srv->conns[i]->dead)
      conn_free(srv->conns[i]);
    else
      srv->conns[j++] = srv->conns[i];
  }
  srv->nconns = j;
}

static void *server_main(void *arg) {
  par__store_server *srv = arg;
  for (;;) {
    while (srv->rescan) {
      srv->rescan = 0;
      for (size_t i = 0; i < srv->nconns; i++) conn_process(srv, srv->conns[i]);
    }
    sweep_dead(srv);
    int timeout = handle_deadlines(srv);
    if (srv->rescan) continue;
    sweep_dead(srv);

    size_t need = srv->nconns + 2;
    if (need > srv->cap_pfds) {
      struct pollfd *p = realloc(srv->pfds, need * 2 * sizeof *p);
      if (!p) {
        /* Cannot watch everyone: wait a moment and retry rather than stop serving. */
        usleep(10000);
        continue;
      }
      srv->pfds = p;
      srv->cap_pfds = need * 2;
    }
    struct pollfd *pf = srv->pfds;
    pf[0] = (struct pollfd){.fd = srv->wake[0], .events = POLLIN};
    int accepting = par__now() >= srv->accept_pause_until;
    pf[1] = (struct pollfd){.fd = accepting ? srv->listen_fd : -1, .events = POLLIN};
    size_t n = srv->nconns;
    for (size_t i = 0; i < n; i++) {
      conn *c = srv->conns[i];
      short ev = 0;
      if (c->state != C_CLOSING && c->in_len < IN_LIMIT) ev |= POLLIN;
      if (c->out_off < c->out_len) ev |= POLLOUT;
      pf[2 + i] = (struct pollfd){.fd = c->fd, .events = ev};
    }
    int r = poll(pf, (nfds_t)(n + 2), timeout);
    if (r < 0) {
      if (errno == EINTR) continue;
      PAR__LOG_ERROR("store: poll failed: %s; the store stops serving", strerror(errno));
      return NULL;
    }
    if (pf[0].revents) return NULL; /* stop() was called */
    for (size_t i = 0; i < n; i++) {
      conn *c = srv->conns[i];
      short re = pf[2 + i].revents;
      if (!re || c->dead) continue;
      if (re & POLLOUT) {
        conn_flush(c);
        if (c->state == C_READY) srv->rescan = 1; /* parsing may have paused on OUT_HIGH */
      }
      if (re & (POLLIN | POLLHUP | POLLERR)) conn_read(srv, c);
      if ((re & POLLNVAL)) c->dead = 1;
    }
    if (pf[1].revents & POLLIN) accept_all(srv);
  }
}

/* ---------------------------------------------------------------------------------------- */
/* Start and stop                                                                           */
/* ---------------------------------------------------------------------------------------- */

static par_status open_listener(const char *bind_host, int port, int *fd_out, int *bound_port) {
  struct addrinfo hints = {0}, *res = NULL;
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  char ps[16];
  snprintf(ps, sizeof ps, "%d", port);
  int gai = getaddrinfo(bind_host && *bind_host ? bind_host : NULL, ps, &hints, &res);
  PAR_RETURN_ERROR_IF(gai != 0, PAR_ERR_BOOTSTRAP, "store: cannot resolve bind address '%s': %s",
                      bind_host ? bind_host : "*", gai_strerror(gai));
  int err = 0, fd = -1;
  for (struct addrinfo *a = res; a; a = a->ai_next) {
    fd = socket(a->ai_family, a->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, a->ai_protocol);
    if (fd < 0) {
      err = errno;
      continue;
    }
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(fd, a->ai_addr, a->ai_addrlen) == 0 && listen(fd, 1024) == 0) break;
    err = errno;
    close(fd);
    fd = -1;
  }
  freeaddrinfo(res);
  PAR_RETURN_ERROR_IF(fd < 0, PAR_ERR_BOOTSTRAP, "store: cannot listen on %s:%d: %s",
                      bind_host ? bind_host : "*", port, strerror(err));
  struct sockaddr_storage ss;
  socklen_t sl = sizeof ss;
  if (getsockname(fd, (struct sockaddr *)&ss, &sl) != 0) {
    err = errno;
    close(fd);
    return par__error(PAR_ERR_SYSTEM, "store: getsockname failed: %s", strerror(err));
  }
  *bound_port = ss.ss_family == AF_INET6 ? ntohs(((struct sockaddr_in6 *)&ss)->sin6_port)
                                         : ntohs(((struct sockaddr_in *)&ss)->sin_port);
  *fd_out = fd;
  return PAR_OK;
}

par_status par__store_server_start(const char *bind_host, int port, const char *token,
                                   par__store_server **out, int *bound_port) {
  PAR_RETURN_ERROR_IF(!out, PAR_ERR_NULL, "store: server_start: out is NULL");
  *out = NULL;
  PAR_RETURN_ERROR_IF(port < 0 || port > 65535, PAR_ERR_INVALID, "store: invalid port %d", port);
  par__store_server *srv = calloc(1, sizeof *srv);
  PAR_RETURN_ERROR_IF(!srv, PAR_ERR_NOMEM, "store: out of memory");
  srv->wake[0] = srv->wake[1] = -1;
  par_status st;
  srv->token = strdup(token ? token : "");
  srv->tab.nbuckets = 64;
  srv->tab.buckets = calloc(srv->tab.nbuckets, sizeof *srv->tab.buckets);
  if (!srv->token || !srv->tab.buckets) {
    st = par__error(PAR_ERR_NOMEM, "store: out of memory");
    goto fail_free;
  }
  int bp = 0;
  st = open_listener(bind_host, port, &srv->listen_fd, &bp);
  if (st < 0) goto fail_free;
  if (pipe2(srv->wake, O_CLOEXEC | O_NONBLOCK) != 0) {
    st = par__error(PAR_ERR_SYSTEM, "store: pipe failed: %s", strerror(errno));
    goto fail_close_listener;
  }
  int rc = pthread_create(&srv->thread, NULL, server_main, srv);
  if (rc != 0) {
    st = par__error(PAR_ERR_SYSTEM, "store: cannot start the server thread: %s", strerror(rc));
    goto fail_close_pipe;
  }
  PAR__LOG_DEBUG("store: serving on %s:%d", bind_host ? bind_host : "*", bp);
  if (bound_port) *bound_port = bp;
  *out = srv;
  return PAR_OK;

fail_close_pipe:
  close(srv->wake[0]);
  close(srv->wake[1]);
fail_close_listener:
  close(srv->listen_fd);
fail_free:
  free(srv->tab.buckets);
  free(srv->token);
  free(srv);
  return st;
}

void par__store_server_stop(par__store_server *srv) {
  if (!srv) return;
  char b = 1;
  while (write(srv->wake[1], &b, 1) < 0 && errno == EINTR) {
  }
  pthread_join(srv->thread, NULL);
  for (size_t i = 0; i < srv->nconns; i++) conn_free(srv->conns[i]);
  free(srv->conns);
  free(srv->pfds);
  table_free(&srv->tab);
  close(srv->listen_fd);
  close(srv->wake[0]);
  close(srv->wake[1]);
  free(srv->token);
  free(srv);
}
