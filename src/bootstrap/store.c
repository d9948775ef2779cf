/*
 * store.c -- the rendezvous store's client. One TCP connection per client, one request at a
 * time under a mutex (so a GET that waits holds the connection: threads that must not wait
 * behind it open their own client). Every read and write is bounded by a deadline through
 * poll(). A GET carries its wait to the server, which answers NOT_FOUND when the wait runs
 * out; the client waits a little longer than that and, if the server stays silent, gives
 * the connection up, since its reply could otherwise arrive as the answer to a later
 * request. The wire format is in store_proto.h.
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
#include <time.h>
#include <unistd.h>

#include "bootstrap/bootstrap.h"
#include "bootstrap/store_proto.h"
#include "core/core.h"

/* How much longer than a GET's own wait the client gives the server to answer. */
#define GET_GRACE_S 5.0

struct par__store {
  pthread_mutex_t mu;
  int fd; /* -1 once the connection is lost */
  char addr[300];
};

/* ---------------------------------------------------------------------------------------- */
/* Deadline-bounded I/O                                                                     */
/* ---------------------------------------------------------------------------------------- */

/* Waits until fd is ready for `events` or the deadline passes: 1 ready, 0 timeout, -1 error. */
static int wait_fd(int fd, short events, double deadline) {
  for (;;) {
    double left = deadline - par__now();
    if (left <= 0) return 0;
    struct pollfd p = {.fd = fd, .events = events};
    double ms = ceil(left * 1000.0);
    int r = poll(&p, 1, ms > 1e9 ? 1000000000 : (int)ms);
    if (r > 0) return 1;
    if (r < 0 && errno != EINTR) return -1;
  }
}

/* Reads exactly n bytes: 0 done, -1 error or EOF (errno set; 0 for EOF), -2 timeout. */
static int read_full(int fd, void *buf, size_t n, double deadline) {
  uint8_t *p = buf;
  while (n) {
    ssize_t r = recv(fd, p, n, MSG_DONTWAIT);
    if (r > 0) {
      p += r;
      n -= (size_t)r;
      continue;
    }
    if (r == 0) {
      errno = 0;
      return -1;
    }
    if (errno == EINTR) continue;
    if (errno != EAGAIN && errno != EWOULDBLOCK) return -1;
    int w = wait_fd(fd, POLLIN, deadline);
    if (w == 0) return -2;
    if (w < 0) return -1;
  }
  return 0;
}

static int write_full(int fd, const void *buf, size_t n, double deadline) {
  const uint8_t *p = buf;
  while (n) {
    ssize_t r = send(fd, p, n, MSG_DONTWAIT | MSG_NOSIGNAL);
    if (r > 0) {
      p += r;
      n -= (size_t)r;
      continue;
    }
    if (r < 0 && errno == EINTR) continue;
    if (r < 0 && errno != EAGAIN && errno != EWOULDBLOCK) return -1;
    int w = wait_fd(fd, POLLOUT, deadline);
    if (w == 0) return -2;
    if (w < 0) return -1;
  }
  return 0;
}

static const char *io_why(int rc) {
  if (rc == -2) return "timed out";
  return errno ? strerror(errno) : "connection closed by the server";
}

/* Why read_response failed. */
static const char *resp_why(int rc) {
  switch (rc) {
    case -3:
      return "oversized response";
    case -4:
      return "out of memory";
    case -5:
      return "malformed response (non-zero reserved header bytes)";
    default:
      return io_why(rc);
  }
}

/* ---------------------------------------------------------------------------------------- */
/* Connecting                                                                               */
/* ---------------------------------------------------------------------------------------- */

/* One TCP connection attempt to any address of host:port, bounded by the deadline. Returns
 * the connected fd, or -1 with errno set. */
static int tcp_connect(const char *host, int port, double deadline) {
  struct addrinfo hints = {0}, *res = NULL;
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV;
  char ps[16];
  snprintf(ps, sizeof ps, "%d", port);
  int gai = getaddrinfo(host, ps, &hints, &res);
  if (gai != 0) {
    errno = gai == EAI_SYSTEM ? errno : EHOSTUNREACH;
    return -1;
  }
  int fd = -1, err = ECONNREFUSED;
  for (struct addrinfo *a = res; a && fd < 0; a = a->ai_next) {
    fd = socket(a->ai_family, a->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, a->ai_protocol);
    if (fd < 0) {
      err = errno;
      continue;
    }
    /* Non-blocking connect: a blocking one to an unreachable host can outlast any timeout. */
    if (connect(fd, a->ai_addr, a->ai_addrlen) != 0) {
      if (errno != EINPROGRESS) {
        err = errno;
        close(fd);
        fd = -1;
        continue;
      }
      int w = wait_fd(fd, POLLOUT, deadline), soerr = 0;
      socklen_t sl = sizeof soerr;
      if (w <= 0 || getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) != 0 || soerr) {
        err = w == 0 ? ETIMEDOUT : soerr ? soerr : errno;
        close(fd);
        fd = -1;
        continue;
      }
    }
  }
  freeaddrinfo(res);
  if (fd < 0) {
    errno = err;
    return -1;
  }
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  return fd;
}

/* Reads one response header and its payload (malloc'ed, NUL-terminated for messages).
 * Returns 0, or an io rc (-1/-2); a payload over the limit is -3, no memory -4, non-zero
 * reserved header bytes -5 (see resp_why). */
static int read_response(int fd, double deadline, uint8_t *status, uint8_t **payload,
                         uint32_t *len) {
  uint8_t h[PAR__STORE_RESP_HDR];
  int rc = read_full(fd, h, sizeof h, deadline);
  if (rc) return rc;
  *status = h[0];
  *len = par__get_u32(h + 4);
  if (h[1] || h[2] || h[3]) return -5; /* reserved: another protocol, or out of step */
  if (*len > PAR__STORE_MAX_RESP) return -3;
  *payload = malloc(*len + 1);
  if (!*payload) return -4;
  rc = read_full(fd, *payload, *len, deadline);
  if (rc) {
    free(*payload);
    *payload = NULL;
    return rc;
  }
  (*payload)[*len] = '\0';
  return 0;
}

/* The server could not take this client and said why (the refusal greeting). */
static par_status refused(int fd, const char *addr, double deadline) {
  uint8_t status;
  uint8_t *msg = NULL;
  uint32_t len;
  int rc = read_response(fd, deadline, &status, &msg, &len);
  par_status st = par__error(PAR_ERR_BOOTSTRAP, "store %s refused the connection: %s", addr,
                             rc    ? resp_why(rc)
                             : len ? (const char *)msg
                                   : "no reason given");
  free(msg);
  return st;
}

/* The challenge: read the greeting, answer with the MAC, read the verdict. Returns PAR_OK,
 * PAR_ERR_AUTH or PAR_ERR_PROTOCOL (final), or another error after which connecting may be
 * retried. */
static par_status handshake(int fd, const char *addr, const char *token, double deadline) {
  uint8_t hello[PAR__STORE_MAGIC_LEN + PAR__STORE_NONCE_LEN], mac[PAR__STORE_MAC_LEN];
  int rc = read_full(fd, hello, sizeof hello, deadline);
  PAR_RETURN_ERROR_IF(rc, PAR_ERR_BOOTSTRAP, "store %s: no greeting from the server: %s", addr,
                      io_why(rc));
  if (memcmp(hello, PAR__STORE_MAGIC_REFUSE, PAR__STORE_MAGIC_LEN) == 0)
    return refused(fd, addr, deadline);
  PAR_RETURN_ERROR_IF(memcmp(hello, PAR__STORE_MAGIC, PAR__STORE_MAGIC_LEN) != 0, PAR_ERR_PROTOCOL,
                      "store %s: the server is not a par store", addr);
  PAR_RETURN_ERROR_IF(par__store_mac(token, hello + PAR__STORE_MAGIC_LEN, mac) != 0, PAR_ERR_SYSTEM,
                      "store %s: HMAC-SHA256 failed", addr);
  rc = write_full(fd, mac, sizeof mac, deadline);
  PAR_RETURN_ERROR_IF(rc, PAR_ERR_BOOTSTRAP, "store %s: cannot send the token proof: %s", addr,
                      io_why(rc));
  uint8_t status;
  uint8_t *msg = NULL;
  uint32_t len;
  rc = read_response(fd, deadline, &status, &msg, &len);
  PAR_RETURN_ERROR_IF(rc, PAR_ERR_BOOTSTRAP, "store %s: no answer to the token proof: %s", addr,
                      rc < -2 ? resp_why(rc) : io_why(rc));
  par_status st = PAR_OK;
  int tokenless = !token || !*token;
  if (status == PAR__STORE_REJECT)
    st = par__error(PAR_ERR_AUTH, "%s%s", len ? (const char *)msg : PAR__STORE_AUTH_REJECT,
                    tokenless ? "; this process has no job token (PAR_TOKEN is unset)" : "");
  else if (status == PAR__STORE_ERROR)
    st = par__error(PAR_ERR_BOOTSTRAP, "store %s: %s", addr, len ? (const char *)msg : "error");
  else if (status != PAR__STORE_OK)
    st = par__error(PAR_ERR_PROTOCOL, "store %s: unexpected handshake status %u", addr,
                    (unsigned)status);
  free(msg);
  return st;
}

static par_status client_new(const char *addr, int fd, par__store **out) {
  par__store *s = calloc(1, sizeof *s);
  PAR_RETURN_ERROR_IF(!s, PAR_ERR_NOMEM, "store: out of memory");
  int rc = pthread_mutex_init(&s->mu, NULL);
  if (rc != 0) {
    free(s);
    return par__error(PAR_ERR_SYSTEM, "store: mutex init failed: %s", strerror(rc));
  }
  snprintf(s->addr, sizeof s->addr, "%s", addr);
  s->fd = fd;
  *out = s;
  return PAR_OK;
}

par_status par__store_open_fd(int fd, const char *label, const char *token, double timeout_s,
                              par__store **out) {
  PAR_RETURN_ERROR_IF(!out || !label, PAR_ERR_NULL, "store: open_fd: NULL argument");
  *out = NULL;
  par_status st = handshake(fd, label, token, par__now() + timeout_s);
  if (st == PAR_OK) st = client_new(label, fd, out);
  if (st < 0) close(fd);
  return st;
}

par_status par__store_connect(const char *host, int port, const char *token, double timeout_s,
                              par__store **out) {
  PAR_RETURN_ERROR_IF(!out || !host, PAR_ERR_NULL, "store: connect: NULL argument");
  *out = NULL;
  PAR_RETURN_ERROR_IF(port <= 0 || port > 65535, PAR_ERR_INVALID, "store: invalid port %d", port);
  if (timeout_s <= 0) timeout_s = par__env_get()->timeout_s;
  char addr[300];
  snprintf(addr, sizeof addr, strchr(host, ':') ? "[%s]:%d" : "%s:%d", host, port);

  /* The server may not be listening yet (rank 0 still starting), or may have shed or
   * refused this connection: retry with backoff, and report the last reason. */
  double deadline = par__now() + timeout_s, backoff = 0.01;
  par_status st = PAR_OK;
  char last[PAR__ERRLEN] = "";
  for (;;) {
    int fd = tcp_connect(host, port, deadline);
    if (fd >= 0) {
      st = handshake(fd, addr, token, deadline);
      if (st == PAR_OK) {
        st = client_new(addr, fd, out);
        if (st < 0) close(fd);
        return st;
      }
      close(fd);
      if (st == PAR_ERR_AUTH || st == PAR_ERR_PROTOCOL) return st;
      snprintf(last, sizeof last, "%s", par__error_detail());
    } else {
      snprintf(last, sizeof last, "%s", strerror(errno));
    }
    double left = deadline - par__now();
    if (left <= 0)
      return par__error(PAR_ERR_TIMEOUT, "store: cannot connect to %s within %.1f s: %s", addr,
                        timeout_s, last);
    double nap = backoff < left ? backoff : left;
    struct timespec ts = {(time_t)nap, (long)((nap - floor(nap)) * 1e9)};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
    backoff = backoff * 2 > 0.5 ? 0.5 : backoff * 2;
  }
}

void par__store_close(par__store *s) {
  if (!s) return;
  if (s->fd >= 0) close(s->fd);
  pthread_mutex_destroy(&s->mu);
  free(s);
}

/* ---------------------------------------------------------------------------------------- */
/* Requests                                                                                 */
/* ---------------------------------------------------------------------------------------- */

static const char *op_name(uint8_t op) {
  switch (op) {
    case PAR__STORE_SET:
      return "SET";
    case PAR__STORE_GET:
      return "GET";
    case PAR__STORE_ADD:
      return "ADD";
    default:
      return "DEL";
  }
}

/* Drops a connection whose request/response pairing can no longer be trusted. */
static void lose(par__store *s) {
  close(s->fd);
  s->fd = -1;
}

/* Sends one request and reads its response; caller holds s->mu. On PAR_OK, *payload is
 * malloc'ed (caller frees) and *status is the server's status. */
static par_status roundtrip(par__store *s, uint8_t op, const char *key, const void *val,
                            uint32_t vlen, uint32_t arg, double deadline, uint8_t *status,
                            uint8_t **payload, uint32_t *len) {
  size_t klen = strlen(key);
  PAR_RETURN_ERROR_IF(s->fd < 0, PAR_ERR_BOOTSTRAP,
                      "store %s: the connection was lost earlier; %s '%.100s' not sent", s->addr,
                      op_name(op), key);
  uint8_t h[PAR__STORE_REQ_HDR] = {0};
  h[0] = op;
  par__put_u32(h + 4, (uint32_t)klen);
  par__put_u32(h + 8, vlen);
  par__put_u32(h + 12, arg);
  int rc = write_full(s->fd, h, sizeof h, deadline);
  if (!rc) rc = write_full(s->fd, key, klen, deadline);
  if (!rc && vlen) rc = write_full(s->fd, val, vlen, deadline);
  if (!rc) rc = read_response(s->fd, deadline, status, payload, len);
  if (rc) {
    const char *why = resp_why(rc);
    par_status st = rc == -2 ? PAR_ERR_TIMEOUT : PAR_ERR_BOOTSTRAP;
    lose(s);
    return par__error(st, "store %s: %s '%.100s' failed: %s", s->addr, op_name(op), key, why);
  }
  if (*status == PAR__STORE_ERROR) {
    par_status st = par__error(PAR_ERR_BOOTSTRAP, "store %s: %s '%.100s': %s", s->addr, op_name(op),
                               key, (const char *)*payload);
    free(*payload);
    *payload = NULL;
    return st;
  }
  return PAR_OK;
}

static par_status check_key(const char *key) {
  PAR_RETURN_ERROR_IF(!key, PAR_ERR_NULL, "store: key is NULL");
  size_t klen = strlen(key);
  PAR_RETURN_ERROR_IF(klen > PAR__STORE_MAX_KEY, PAR_ERR_INVALID,
                      "store: key of %zu bytes exceeds the limit of %u", klen, PAR__STORE_MAX_KEY);
  return PAR_OK;
}

/* Runs one request under the mutex and checks it came back OK (or NOT_FOUND for GET). */
static par_status request(par__store *s, uint8_t op, const char *key, const void *val,
                          uint32_t vlen, uint32_t arg, double deadline, uint8_t *status,
                          uint8_t **payload, uint32_t *len) {
  PAR_RETURN_ERROR_IF(!s, PAR_ERR_NULL, "store: client is NULL");
  PAR_FORWARD_IF_ERROR(check_key(key));
  pthread_mutex_lock(&s->mu);
  par_status st = roundtrip(s, op, key, val, vlen, arg, deadline, status, payload, len);
  pthread_mutex_unlock(&s->mu);
  if (st < 0) return st;
  if (*status == PAR__STORE_OK || (op == PAR__STORE_GET && *status == PAR__STORE_NOT_FOUND))
    return PAR_OK;
  free(*payload);
  *payload = NULL;
  return par__error(PAR_ERR_PROTOCOL, "store %s: unexpected status %u for %s '%.100s'", s->addr,
                    (unsigned)*status, op_name(op), key);
}

static double op_deadline(void) { return par__now() + par__env_get()->timeout_s; }

par_status par__store_set(par__store *s, const char *key, const void *val, size_t len) {
  PAR_RETURN_ERROR_IF(!val && len, PAR_ERR_NULL, "store: SET '%.100s': value is NULL",
                      key ? key : "");
  PAR_RETURN_ERROR_IF(len > PAR__STORE_MAX_VAL, PAR_ERR_INVALID,
                      "store: SET '%.100s': value of %zu bytes exceeds the limit of %u",
                      key ? key : "", len, PAR__STORE_MAX_VAL);
  uint8_t status, *payload = NULL;
  uint32_t plen;
  PAR_FORWARD_IF_ERROR(request(s, PAR__STORE_SET, key, val, (uint32_t)len, 0, op_deadline(),
                               &status, &payload, &plen));
  free(payload);
  return PAR_OK;
}

par_status par__store_get(par__store *s, const char *key, void *buf, size_t cap, size_t *len,
                          double timeout_s) {
  PAR_RETURN_ERROR_IF(!buf && cap, PAR_ERR_NULL, "store: GET: buffer is NULL");
  if (timeout_s <= 0) timeout_s = par__env_get()->timeout_s;
  /* The server enforces the wait (so the connection stays in step); the client allows it a
   * grace period on top before it concludes the server itself is stuck. */
  double ms = ceil(timeout_s * 1000.0);
  uint32_t wait_ms = ms >= 4e9 ? 4000000000u : ms < 1 ? 1u : (uint32_t)ms;
  uint8_t status, *payload = NULL;
  uint32_t plen = 0;
  PAR_FORWARD_IF_ERROR(request(s, PAR__STORE_GET, key, NULL, 0, wait_ms,
                               par__now() + timeout_s + GET_GRACE_S, &status, &payload, &plen));
  if (status == PAR__STORE_NOT_FOUND) {
    free(payload);
    return par__error(PAR_ERR_TIMEOUT, "store %s: key '%.100s' did not appear within %.3g s",
                      s->addr, key, timeout_s);
  }
  if (buf) memcpy(buf, payload, plen < cap ? plen : cap);
  if (len) *len = plen;
  free(payload);
  return PAR_OK;
}

par_status par__store_add(par__store *s, const char *key, int64_t delta, int64_t *newval) {
  uint8_t arg[8], status, *payload = NULL;
  uint32_t plen = 0;
  par__put_u64(arg, (uint64_t)delta);
  PAR_FORWARD_IF_ERROR(
      request(s, PAR__STORE_ADD, key, arg, 8, 0, op_deadline(), &status, &payload, &plen));
  par_status st = PAR_OK;
  if (plen != 8)
    st = par__error(PAR_ERR_PROTOCOL, "store %s: ADD '%.100s' answered %" PRIu32 " bytes", s->addr,
                    key, plen);
  else if (newval)
    *newval = (int64_t)par__get_u64(payload);
  free(payload);
  return st;
}

par_status par__store_del(par__store *s, const char *key) {
  uint8_t status, *payload = NULL;
  uint32_t plen;
  PAR_FORWARD_IF_ERROR(
      request(s, PAR__STORE_DEL, key, NULL, 0, 0, op_deadline(), &status, &payload, &plen));
  free(payload);
  return PAR_OK;
}
