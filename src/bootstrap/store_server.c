/*
 * store_server.c -- the rendezvous store's server: one thread running a single poll() loop
 * over a listening socket, a self-pipe that stop() writes to, and every client connection.
 * Sockets are non-blocking; the protocol itself (the token challenge, requests, GETs that
 * wait for their key) is the engine in store_engine.c, so a GET that waits never stops the
 * server from serving the other clients, one of which will eventually SET that key.
 *
 * Anyone on the host can connect, so connections that have not proved the token are kept
 * cheap and few: they get AUTH_TIMEOUT_S to answer the challenge, at most MAX_UNAUTH of them
 * are kept (a newcomer sheds the oldest), and when accept() runs out of descriptors the
 * oldest unproven one is shed to make room. Ranks whose connection was shed simply connect
 * again. When the server cannot take a client at all (no descriptor or memory left), it says
 * so through a refusal greeting instead of hanging up silently. parrun hosts this server
 * in-process; otherwise rank 0 does.
 */
#include <arpa/inet.h>
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

#include <openssl/rand.h>

#include "bootstrap/bootstrap.h"
#include "bootstrap/store_engine.h"
#include "bootstrap/store_proto.h"
#include "core/core.h"

/* A client has this long to answer the challenge. A rank answers within milliseconds of the
 * greeting; a silent connection must not hold a descriptor for long. */
#define AUTH_TIMEOUT_S 5.0
/* At most this many connections may be waiting to prove the token; a newcomer sheds the
 * oldest. A job's ranks connect and prove at once, so even thousands of ranks starting
 * together rarely have this many unproven at one moment, and a shed rank reconnects. */
#define MAX_UNAUTH 64

struct par__store_server {
  int listen_fd;
  int wake[2];    /* self-pipe: stop() writes a byte, the loop sees it and returns */
  int reserve_fd; /* held open so that, out of descriptors, a client can still be told why */
  pthread_t thread;
  par__store_engine eng;
  struct pollfd *pfds;
  size_t cap_pfds;
  double accept_pause_until; /* accept() failing: do not spin on a readable listener */
  int warned_shed;
};

/* ---------------------------------------------------------------------------------------- */
/* Sockets                                                                                  */
/* ---------------------------------------------------------------------------------------- */

static void conn_flush(par__store_conn *c) {
  while (!c->dead && c->out_off < c->out_len) {
    ssize_t n = send(c->fd, c->out + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL);
    if (n > 0) {
      par__store_conn_sent(c, (size_t)n);
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
    c->dead = 1; /* the peer went away; nothing more to tell it */
  }
}

static void conn_read(par__store_server *srv, par__store_conn *c) {
  for (;;) {
    size_t room;
    uint8_t *p = par__store_conn_input_space(c, &room);
    if (!p) break; /* full until buffered requests are served, or dropped without memory */
    ssize_t n = recv(c->fd, p, room, 0);
    if (n > 0) {
      par__store_conn_received(&srv->eng, c, (size_t)n, par__now());
      if (c->dead || c->state == PAR__CONN_CLOSING) break;
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
    c->dead = 1; /* EOF or a reset: the client is gone (a waiting GET with it) */
    return;
  }
  conn_flush(c);
}

/* Closes the oldest connection that has not proved the token; 0 when there is none. */
static int shed_oldest_unauthenticated(par__store_server *srv, const char *why) {
  for (size_t i = 0; i < srv->eng.nconns; i++) {
    par__store_conn *c = srv->eng.conns[i];
    if (c->dead || c->state != PAR__CONN_AUTH) continue;
    if (!srv->warned_shed) {
      srv->warned_shed = 1;
      PAR__LOG_WARN("store: shedding connections that have not proved the job token (%s)", why);
    }
    close(c->fd);
    c->fd = -1;
    c->dead = 1;
    return 1;
  }
  return 0;
}

/* Tells a client the server cannot take it, without allocating: the refusal greeting
 * (store_proto.h) and an ERROR frame with the reason. Then closes it. */
static void refuse(int fd, const char *why) {
  uint8_t buf[PAR__STORE_MAGIC_LEN + PAR__STORE_NONCE_LEN + PAR__STORE_RESP_HDR + 200] = {0};
  size_t len = strlen(why) < 200 ? strlen(why) : 200;
  memcpy(buf, PAR__STORE_MAGIC_REFUSE, PAR__STORE_MAGIC_LEN);
  uint8_t *h = buf + PAR__STORE_MAGIC_LEN + PAR__STORE_NONCE_LEN;
  h[0] = PAR__STORE_ERROR;
  par__put_u32(h + 4, (uint32_t)len);
  memcpy(h + PAR__STORE_RESP_HDR, why, len);
  ssize_t n =
      send(fd, buf, (size_t)(h + PAR__STORE_RESP_HDR + len - buf), MSG_NOSIGNAL | MSG_DONTWAIT);
  (void)n;
  close(fd);
}

/* Out of descriptors with nothing to shed: accept one pending client with the reserve
 * descriptor's slot, tell it why, and take the slot back. Returns 0 when a client was told. */
static int refuse_with_reserve(par__store_server *srv) {
  if (srv->reserve_fd < 0) return -1;
  close(srv->reserve_fd);
  srv->reserve_fd = -1;
  int fd = accept4(srv->listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
  if (fd >= 0)
    refuse(fd,
           "store: the server is out of file descriptors (ulimit -n) and cannot take "
           "another connection");
  srv->reserve_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
  return fd >= 0 ? 0 : -1;
}

static void accept_all(par__store_server *srv) {
  for (;;) {
    int fd = accept4(srv->listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      int err = errno;
      if (err == EINTR || err == ECONNABORTED) continue;
      if (err == EAGAIN || err == EWOULDBLOCK) return;
      if (err == EMFILE || err == ENFILE) {
        par__store_engine_sweep(&srv->eng); /* closes connections already dead */
        if (shed_oldest_unauthenticated(srv, "out of file descriptors")) continue;
        if (refuse_with_reserve(srv) == 0) continue;
      }
      PAR__LOG_WARN("store: accept failed: %s; pausing new connections", strerror(err));
      srv->accept_pause_until = par__now() + 0.1;
      return;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (par__store_engine_unauthenticated(&srv->eng) >= MAX_UNAUTH)
      shed_oldest_unauthenticated(srv, "too many at once");
    uint8_t nonce[PAR__STORE_NONCE_LEN];
    par__store_conn *c = NULL;
    if (RAND_bytes(nonce, sizeof nonce) != 1) {
      refuse(fd, "store: the server cannot draw a random challenge (OpenSSL RAND_bytes failed)");
      continue;
    }
    c = par__store_engine_add(&srv->eng, fd, nonce, par__now() + AUTH_TIMEOUT_S);
    if (!c) {
      refuse(fd, "store: the server is out of memory and cannot take another connection");
      continue;
    }
    conn_flush(c);
  }
}

/* ---------------------------------------------------------------------------------------- */
/* The loop                                                                                 */
/* ---------------------------------------------------------------------------------------- */

/* Releases waiters and silent clients whose time is up; returns the poll timeout in ms. */
static int handle_deadlines(par__store_server *srv) {
  double now = par__now();
  double next = par__store_engine_deadlines(&srv->eng, now);
  if (srv->accept_pause_until > now && srv->accept_pause_until < next)
    next = srv->accept_pause_until;
  if (next == INFINITY) return -1;
  double ms = ceil((next - now) * 1000.0);
  return ms > 60000.0 ? 60000 : (int)ms;
}

static void *server_main(void *arg) {
  par__store_server *srv = arg;
  par__store_engine *eng = &srv->eng;
  for (;;) {
    int timeout;
    do {
      par__store_engine_rescan(eng, par__now());
      timeout = handle_deadlines(srv);
    } while (eng->rescan);
    /* Replies queued for other connections (released GETs) go out now. */
    for (size_t i = 0; i < eng->nconns; i++) conn_flush(eng->conns[i]);
    par__store_engine_sweep(eng);

    size_t need = eng->nconns + 2;
    if (need > srv->cap_pfds) {
      struct pollfd *p = realloc(srv->pfds, need * 2 * sizeof *p);
      if (!p) {
        /* Cannot watch everyone: shed an unproven client, wait a moment, and retry rather
         * than stop serving. */
        shed_oldest_unauthenticated(srv, "out of memory");
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
    size_t n = eng->nconns;
    for (size_t i = 0; i < n; i++) {
      par__store_conn *c = eng->conns[i];
      short ev = 0;
      if (c->state != PAR__CONN_CLOSING && c->in_len < PAR__STORE_IN_LIMIT) ev |= POLLIN;
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
      par__store_conn *c = eng->conns[i];
      short re = pf[2 + i].revents;
      if (!re || c->dead) continue;
      if (re & POLLOUT) {
        conn_flush(c);
        if (c->state == PAR__CONN_READY) eng->rescan = 1; /* parsing may have paused */
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
  srv->wake[0] = srv->wake[1] = srv->reserve_fd = -1;
  par_status st = par__store_engine_init(&srv->eng, token);
  if (st < 0) {
    free(srv);
    return st;
  }
  /* OpenSSL sets up its generator and digests on first use: do it now, so that a process
   * short of memory fails here with a reason rather than refusing every client later. */
  uint8_t probe[PAR__STORE_MAC_LEN];
  if (RAND_bytes(probe, PAR__STORE_NONCE_LEN) != 1 || par__store_mac(token, probe, probe) != 0) {
    st = par__error(PAR_ERR_SYSTEM,
                    "store: OpenSSL cannot draw random bytes or compute "
                    "HMAC-SHA256 (out of memory?)");
    goto fail_free;
  }
  srv->cap_pfds = 64;
  srv->pfds = malloc(srv->cap_pfds * sizeof *srv->pfds);
  srv->reserve_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
  if (!srv->pfds || srv->reserve_fd < 0) {
    st = par__error(PAR_ERR_SYSTEM, "store: out of memory or descriptors");
    goto fail_free;
  }
  int bp = 0;
  PAR_FORWARD_IF_ERROR_GOTO(open_listener(bind_host, port, &srv->listen_fd, &bp), st, fail_free);
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
  if (srv->reserve_fd >= 0) close(srv->reserve_fd);
  free(srv->pfds);
  par__store_engine_fini(&srv->eng);
  free(srv);
  return st;
}

void par__store_server_stop(par__store_server *srv) {
  if (!srv) return;
  char b = 1;
  while (write(srv->wake[1], &b, 1) < 0 && errno == EINTR) {
  }
  pthread_join(srv->thread, NULL);
  par__store_engine_fini(&srv->eng);
  free(srv->pfds);
  if (srv->reserve_fd >= 0) close(srv->reserve_fd);
  close(srv->listen_fd);
  close(srv->wake[0]);
  close(srv->wake[1]);
  free(srv);
}

/* ---------------------------------------------------------------------------------------- */
/* Who may reach a tokenless store                                                          */
/* ---------------------------------------------------------------------------------------- */

/* 1 when every address bind_host resolves to is a loopback one (127/8, ::1, or ::ffff:127/8):
 * only processes on this host can reach the store then. */
static int loopback_only(const char *bind_host) {
  if (!bind_host || !*bind_host) return 0; /* the wildcard: every interface */
  struct addrinfo hints = {0}, *res = NULL;
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE;
  if (getaddrinfo(bind_host, NULL, &hints, &res) != 0) return 0;
  int only = res != NULL;
  for (struct addrinfo *a = res; a; a = a->ai_next) {
    if (a->ai_family == AF_INET) {
      uint32_t ip = ntohl(((const struct sockaddr_in *)a->ai_addr)->sin_addr.s_addr);
      only &= (ip >> 24) == 127;
    } else if (a->ai_family == AF_INET6) {
      const struct in6_addr *ip = &((const struct sockaddr_in6 *)a->ai_addr)->sin6_addr;
      only &= IN6_IS_ADDR_LOOPBACK(ip) || (IN6_IS_ADDR_V4MAPPED(ip) && ip->s6_addr[12] == 127);
    } else {
      only = 0;
    }
  }
  freeaddrinfo(res);
  return only;
}

par_status par__store_check_exposure(const char *bind_host, int port, const char *token,
                                     int allow_no_token) {
  if ((token && *token) || loopback_only(bind_host)) return PAR_OK;
  const char *h = bind_host && *bind_host ? bind_host : "*";
  PAR_RETURN_ERROR_IF(!allow_no_token, PAR_ERR_BOOTSTRAP,
                      "store: refusing to listen on %s:%d without a job token: any host that "
                      "can reach that address could join this job. Set PAR_TOKEN to one secret "
                      "on every rank, or use MASTER_ADDR=127.0.0.1 for a job on one host, or "
                      "set PAR_ALLOW_NO_TOKEN=1 to run unprotected anyway",
                      h, port);
  PAR__LOG_WARN(
      "store: listening on %s:%d without a job token (PAR_ALLOW_NO_TOKEN=1): any "
      "host that can reach that address can join this job",
      h, port);
  return PAR_OK;
}
