/*
 * test_store.c -- the rendezvous store, client and server together over loopback: the four
 * ops, a GET released by a SET from another thread, GET timeouts (and that the connection
 * stays usable after one), token refusal, length limits on both sides (a raw socket sends
 * what the client would refuse to), reserved header bytes, connect retries, a lost server,
 * one client shared by several threads, strangers that never prove the token (shed oldest
 * first, timed out in seconds), what the client makes of a refusal or a malformed answer,
 * the rule for tokenless stores, and the checks on records read from the store.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "bootstrap/bootstrap.h"
#include "bootstrap/store_proto.h"
#include "core/core.h"

#define TOKEN "0123456789abcdef0123456789abcdef"

typedef struct fixture {
  par__store_server *srv;
  int port;
} fixture;

static int setup(void **state) {
  fixture *f = calloc(1, sizeof *f);
  assert_non_null(f);
  assert_int_equal(par__store_server_start("127.0.0.1", 0, TOKEN, &f->srv, &f->port), PAR_OK);
  assert_true(f->port > 0);
  *state = f;
  return 0;
}

static int teardown(void **state) {
  fixture *f = *state;
  par__store_server_stop(f->srv);
  free(f);
  return 0;
}

static par__store *client(fixture *f) {
  par__store *s = NULL;
  assert_int_equal(par__store_connect("127.0.0.1", f->port, TOKEN, 5.0, &s), PAR_OK);
  assert_non_null(s);
  return s;
}

static void sleep_s(double s) {
  struct timespec ts = {(time_t)s, (long)((s - (double)(time_t)s) * 1e9)};
  nanosleep(&ts, NULL);
}

static void assert_detail_has(const char *needle) {
  const char *d = par__error_detail();
  if (!strstr(d, needle)) fail_msg("detail '%s' does not mention '%s'", d, needle);
}

/* ---- the four ops ------------------------------------------------------------------------ */

static void test_set_get_add_del(void **state) {
  fixture *f = *state;
  par__store *s = client(f);
  char buf[64];
  size_t len = 0;

  assert_int_equal(par__store_set(s, "greeting", "hello", 5), PAR_OK);
  assert_int_equal(par__store_get(s, "greeting", buf, sizeof buf, &len, 1.0), PAR_OK);
  assert_int_equal(len, 5);
  assert_memory_equal(buf, "hello", 5);

  /* A small buffer gets a prefix, and the full length is still reported. */
  memset(buf, 0, sizeof buf);
  assert_int_equal(par__store_get(s, "greeting", buf, 3, &len, 1.0), PAR_OK);
  assert_int_equal(len, 5);
  assert_memory_equal(buf, "hel\0", 4);

  /* Overwrite, and an empty value. */
  assert_int_equal(par__store_set(s, "greeting", "bye", 3), PAR_OK);
  assert_int_equal(par__store_get(s, "greeting", buf, sizeof buf, &len, 1.0), PAR_OK);
  assert_int_equal(len, 3);
  assert_memory_equal(buf, "bye", 3);
  assert_int_equal(par__store_set(s, "empty", NULL, 0), PAR_OK);
  assert_int_equal(par__store_get(s, "empty", buf, sizeof buf, &len, 1.0), PAR_OK);
  assert_int_equal(len, 0);

  int64_t v = 0;
  assert_int_equal(par__store_add(s, "counter", 5, &v), PAR_OK);
  assert_int_equal(v, 5);
  assert_int_equal(par__store_add(s, "counter", -7, &v), PAR_OK);
  assert_int_equal(v, -2);
  assert_int_equal(par__store_get(s, "counter", buf, sizeof buf, &len, 1.0), PAR_OK);
  assert_int_equal(len, 2);
  assert_memory_equal(buf, "-2", 2);
  /* A counter may start from a SET of a decimal value. */
  assert_int_equal(par__store_set(s, "base", "40", 2), PAR_OK);
  assert_int_equal(par__store_add(s, "base", 2, &v), PAR_OK);
  assert_int_equal(v, 42);
  /* ADD on a non-integer value is refused, and the connection stays usable. */
  assert_int_equal(par__store_add(s, "greeting", 1, &v), PAR_ERR_BOOTSTRAP);
  assert_detail_has("not an integer");

  assert_int_equal(par__store_del(s, "greeting"), PAR_OK);
  assert_int_equal(par__store_del(s, "never-set"), PAR_OK);
  assert_int_equal(par__store_get(s, "greeting", buf, sizeof buf, &len, 0.2), PAR_ERR_TIMEOUT);
  assert_detail_has("'greeting'");
  assert_int_equal(par__store_add(s, "greeting", 1, &v), PAR_OK);
  assert_int_equal(v, 1);
  par__store_close(s);
}

static void test_largest_value_round_trips(void **state) {
  fixture *f = *state;
  par__store *s = client(f);
  size_t n = PAR__STORE_MAX_VAL;
  uint8_t *big = malloc(n), *back = malloc(n);
  assert_non_null(big);
  assert_non_null(back);
  for (size_t i = 0; i < n; i++) big[i] = (uint8_t)(i * 131 + 7);
  char key[PAR__STORE_MAX_KEY + 1];
  memset(key, 'k', PAR__STORE_MAX_KEY);
  key[PAR__STORE_MAX_KEY] = '\0';
  assert_int_equal(par__store_set(s, key, big, n), PAR_OK);
  size_t len = 0;
  assert_int_equal(par__store_get(s, key, back, n, &len, 5.0), PAR_OK);
  assert_int_equal(len, n);
  assert_memory_equal(back, big, n);
  free(big);
  free(back);
  par__store_close(s);
}

/* ---- waiting GETs ------------------------------------------------------------------------ */

typedef struct waiter {
  fixture *f;
  const char *key;
  par_status st;
  char buf[32];
  size_t len;
  double waited;
} waiter;

static void *wait_for_key(void *arg) {
  waiter *w = arg;
  par__store *s = client(w->f);
  double t0 = par__now();
  w->st = par__store_get(s, w->key, w->buf, sizeof w->buf, &w->len, 10.0);
  w->waited = par__now() - t0;
  par__store_close(s);
  return NULL;
}

static void test_get_waits_for_later_set(void **state) {
  fixture *f = *state;
  waiter w1 = {.f = f, .key = "late"}, w2 = {.f = f, .key = "late"};
  pthread_t t1, t2;
  assert_int_equal(pthread_create(&t1, NULL, wait_for_key, &w1), 0);
  assert_int_equal(pthread_create(&t2, NULL, wait_for_key, &w2), 0);
  sleep_s(0.3);
  /* While both GETs wait, the server still serves this client. */
  par__store *s = client(f);
  int64_t v = 0;
  assert_int_equal(par__store_add(s, "other", 1, &v), PAR_OK);
  assert_int_equal(v, 1);
  assert_int_equal(par__store_set(s, "late", "arrived", 7), PAR_OK);
  pthread_join(t1, NULL);
  pthread_join(t2, NULL);
  par__store_close(s);
  waiter *ws[] = {&w1, &w2};
  for (int i = 0; i < 2; i++) {
    assert_int_equal(ws[i]->st, PAR_OK);
    assert_int_equal(ws[i]->len, 7);
    assert_memory_equal(ws[i]->buf, "arrived", 7);
    assert_true(ws[i]->waited >= 0.25);
    assert_true(ws[i]->waited < 5.0);
  }
}

static void test_get_timeout_keeps_connection_in_step(void **state) {
  fixture *f = *state;
  par__store *s = client(f);
  char buf[8];
  size_t len = 99;
  double t0 = par__now();
  assert_int_equal(par__store_get(s, "never", buf, sizeof buf, &len, 0.3), PAR_ERR_TIMEOUT);
  double took = par__now() - t0;
  assert_true(took >= 0.29);
  assert_true(took < 3.0);
  assert_detail_has("key 'never' did not appear");
  assert_int_equal(len, 99); /* untouched on failure */
  /* The next request on the same connection gets its own answer. */
  assert_int_equal(par__store_set(s, "after", "ok", 2), PAR_OK);
  assert_int_equal(par__store_get(s, "after", buf, sizeof buf, &len, 1.0), PAR_OK);
  assert_int_equal(len, 2);
  assert_memory_equal(buf, "ok", 2);
  par__store_close(s);
}

/* ---- authentication ---------------------------------------------------------------------- */

static void test_wrong_token_refused(void **state) {
  fixture *f = *state;
  par__store *s = NULL;
  par__error_clear();
  double t0 = par__now();
  assert_int_equal(par__store_connect("127.0.0.1", f->port, "not-the-token", 10.0, &s),
                   PAR_ERR_AUTH);
  assert_null(s);
  assert_string_equal(par__error_detail(), "store: wrong job token (PAR_TOKEN)");
  /* A refusal is final: no retrying until the timeout. */
  assert_true(par__now() - t0 < 2.0);
  assert_int_equal(par__store_connect("127.0.0.1", f->port, "", 10.0, &s), PAR_ERR_AUTH);
  /* The server keeps serving good clients after refusing bad ones. */
  s = client(f);
  assert_int_equal(par__store_set(s, "k", "v", 1), PAR_OK);
  par__store_close(s);
}

static void test_empty_token_on_both_sides(void **state) {
  (void)state;
  par__store_server *srv = NULL;
  int port = 0;
  assert_int_equal(par__store_server_start("127.0.0.1", 0, "", &srv, &port), PAR_OK);
  par__store *s = NULL;
  assert_int_equal(par__store_connect("127.0.0.1", port, NULL, 5.0, &s), PAR_OK);
  assert_int_equal(par__store_set(s, "k", "v", 1), PAR_OK);
  par__store_close(s);
  assert_int_equal(par__store_connect("127.0.0.1", port, TOKEN, 5.0, &s), PAR_ERR_AUTH);
  par__store_server_stop(srv);
}

/* ---- length limits ----------------------------------------------------------------------- */

/* Opens a raw connection and passes the challenge; returns the fd. */
static int raw_connect(fixture *f, const char *token) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  assert_true(fd >= 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)f->port)};
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  assert_int_equal(connect(fd, (struct sockaddr *)&a, sizeof a), 0);
  struct timeval tv = {5, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  uint8_t hello[PAR__STORE_MAGIC_LEN + PAR__STORE_NONCE_LEN], mac[PAR__STORE_MAC_LEN];
  assert_int_equal(recv(fd, hello, sizeof hello, MSG_WAITALL), (ssize_t)sizeof hello);
  assert_memory_equal(hello, PAR__STORE_MAGIC, PAR__STORE_MAGIC_LEN);
  assert_int_equal(par__store_mac(token, hello + PAR__STORE_MAGIC_LEN, mac), 0);
  assert_int_equal(send(fd, mac, sizeof mac, 0), (ssize_t)sizeof mac);
  return fd;
}

/* Reads one response frame; returns its status and copies the payload (NUL-terminated). */
static int raw_response(int fd, char *payload, size_t cap) {
  uint8_t h[PAR__STORE_RESP_HDR];
  assert_int_equal(recv(fd, h, sizeof h, MSG_WAITALL), (ssize_t)sizeof h);
  uint32_t len = par__get_u32(h + 4);
  assert_true(len < cap);
  if (len) assert_int_equal(recv(fd, payload, len, MSG_WAITALL), (ssize_t)len);
  payload[len] = '\0';
  return h[0];
}

static void send_header(int fd, uint8_t op, uint32_t klen, uint32_t vlen, uint32_t arg) {
  uint8_t h[PAR__STORE_REQ_HDR] = {0};
  h[0] = op;
  par__put_u32(h + 4, klen);
  par__put_u32(h + 8, vlen);
  par__put_u32(h + 12, arg);
  assert_int_equal(send(fd, h, sizeof h, 0), (ssize_t)sizeof h);
}

static void test_oversized_lengths_rejected(void **state) {
  fixture *f = *state;
  char msg[256];

  int fd = raw_connect(f, TOKEN);
  assert_int_equal(raw_response(fd, msg, sizeof msg), PAR__STORE_OK);
  send_header(fd, PAR__STORE_SET, 2000, 1, 0);
  assert_int_equal(raw_response(fd, msg, sizeof msg), PAR__STORE_ERROR);
  assert_string_equal(msg, "store: key length 2000 exceeds the limit of 1024 bytes");
  char c;
  assert_int_equal(recv(fd, &c, 1, 0), 0); /* then the server hangs up */
  close(fd);

  fd = raw_connect(f, TOKEN);
  assert_int_equal(raw_response(fd, msg, sizeof msg), PAR__STORE_OK);
  send_header(fd, PAR__STORE_SET, 1, 0xFFFFFFFFu, 0);
  assert_int_equal(raw_response(fd, msg, sizeof msg), PAR__STORE_ERROR);
  assert_string_equal(msg, "store: value length 4294967295 exceeds the limit of 1048576 bytes");
  assert_int_equal(recv(fd, &c, 1, 0), 0);
  close(fd);

  fd = raw_connect(f, TOKEN);
  assert_int_equal(raw_response(fd, msg, sizeof msg), PAR__STORE_OK);
  send_header(fd, 99, 1, 0, 0);
  assert_int_equal(raw_response(fd, msg, sizeof msg), PAR__STORE_ERROR);
  assert_string_equal(msg, "store: unknown request op 99");
  close(fd);

  /* The client refuses to send what the server would refuse. */
  par__store *s = client(f);
  uint8_t *big = calloc(1, PAR__STORE_MAX_VAL + 1);
  assert_non_null(big);
  assert_int_equal(par__store_set(s, "big", big, PAR__STORE_MAX_VAL + 1), PAR_ERR_INVALID);
  free(big);
  char longkey[PAR__STORE_MAX_KEY + 2];
  memset(longkey, 'x', sizeof longkey - 1);
  longkey[sizeof longkey - 1] = '\0';
  assert_int_equal(par__store_set(s, longkey, "v", 1), PAR_ERR_INVALID);
  assert_detail_has("exceeds the limit of 1024");
  /* ... and its connection is still good. */
  assert_int_equal(par__store_set(s, "small", "v", 1), PAR_OK);
  par__store_close(s);
}

static void test_reserved_header_bytes_named(void **state) {
  fixture *f = *state;
  char msg[256];
  int fd = raw_connect(f, TOKEN);
  assert_int_equal(raw_response(fd, msg, sizeof msg), PAR__STORE_OK);
  uint8_t h[PAR__STORE_REQ_HDR] = {PAR__STORE_GET, 1, 0, 0};
  assert_int_equal(send(fd, h, sizeof h, 0), (ssize_t)sizeof h);
  assert_int_equal(raw_response(fd, msg, sizeof msg), PAR__STORE_ERROR);
  assert_string_equal(msg,
                      "store: request header (op 2) has non-zero reserved bytes 01 00 00: "
                      "the client speaks another store protocol, or its stream is out of "
                      "step");
  char c;
  assert_int_equal(recv(fd, &c, 1, 0), 0);
  close(fd);
}

/* ---- strangers: connections that never prove the token ---------------------------------- */

/* Connects and reads the greeting, then says nothing. */
static int raw_silent(fixture *f) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  assert_true(fd >= 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)f->port)};
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  assert_int_equal(connect(fd, (struct sockaddr *)&a, sizeof a), 0);
  struct timeval tv = {10, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  uint8_t hello[PAR__STORE_MAGIC_LEN + PAR__STORE_NONCE_LEN];
  assert_int_equal(recv(fd, hello, sizeof hello, MSG_WAITALL), (ssize_t)sizeof hello);
  return fd;
}

/* 1 when the server has closed fd (EOF within `wait_s`), 0 when it is still open. */
static int closed_within(int fd, double wait_s) {
  struct pollfd p = {.fd = fd, .events = POLLIN};
  if (poll(&p, 1, (int)(wait_s * 1000)) <= 0) return 0;
  char c;
  return recv(fd, &c, 1, MSG_DONTWAIT) == 0;
}

static void test_strangers_shed_oldest_first(void **state) {
  fixture *f = *state;
  enum { N = 200 };
  int fds[N];
  for (int i = 0; i < N; i++) fds[i] = raw_silent(f);
  /* A rank still gets in at once, and works. */
  double t0 = par__now();
  par__store *s = client(f);
  assert_true(par__now() - t0 < 2.0);
  assert_int_equal(par__store_set(s, "k", "v", 1), PAR_OK);
  par__store_close(s);
  /* The oldest strangers were shed, the newest 64 are still held (until their 5 s). */
  assert_true(closed_within(fds[0], 2.0));
  assert_true(closed_within(fds[N - 66], 2.0));
  assert_false(closed_within(fds[N - 1], 0.05));
  assert_false(closed_within(fds[N - 60], 0.05));
  for (int i = 0; i < N; i++) close(fds[i]);
}

static void test_silent_stranger_timed_out(void **state) {
  fixture *f = *state;
  int fd = raw_silent(f);
  double t0 = par__now();
  assert_true(closed_within(fd, 15.0));
  double took = par__now() - t0;
  if (took < 4.0 || took > 12.0) fail_msg("a silent client was closed after %.2f s, want ~5", took);
  close(fd);
}

/* ---- what the client makes of a server's bytes (a socketpair plays the server) ---------- */

static int fake_server(const void *bytes, size_t n) {
  int sv[2];
  assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
  assert_int_equal(write(sv[1], bytes, n), (ssize_t)n);
  shutdown(sv[1], SHUT_WR);
  return sv[0]; /* sv[1] stays open: what the client sends lands there unread */
}

static void test_client_reports_refusal(void **state) {
  (void)state;
  const char *why = "store: the server is out of memory and cannot take another connection";
  uint8_t buf[256] = {0};
  memcpy(buf, PAR__STORE_MAGIC_REFUSE, PAR__STORE_MAGIC_LEN);
  uint8_t *h = buf + PAR__STORE_MAGIC_LEN + PAR__STORE_NONCE_LEN;
  h[0] = PAR__STORE_ERROR;
  par__put_u32(h + 4, (uint32_t)strlen(why));
  memcpy(h + PAR__STORE_RESP_HDR, why, strlen(why));
  par__store *s = NULL;
  int fd = fake_server(buf, (size_t)(h + PAR__STORE_RESP_HDR + strlen(why) - buf));
  assert_int_equal(par__store_open_fd(fd, "fake", TOKEN, 5.0, &s), PAR_ERR_BOOTSTRAP);
  assert_null(s);
  assert_detail_has("store fake refused the connection: store: the server is out of memory");
}

static void test_client_rejects_reserved_response_bytes(void **state) {
  (void)state;
  uint8_t buf[PAR__STORE_MAGIC_LEN + PAR__STORE_NONCE_LEN + 2 * PAR__STORE_RESP_HDR] = {0};
  memcpy(buf, PAR__STORE_MAGIC, PAR__STORE_MAGIC_LEN);
  uint8_t *ok = buf + PAR__STORE_MAGIC_LEN + PAR__STORE_NONCE_LEN; /* the verdict: OK */
  ok[PAR__STORE_RESP_HDR + 2] = 7; /* the SET's answer: OK, but a reserved byte set */
  par__store *s = NULL;
  assert_int_equal(par__store_open_fd(fake_server(buf, sizeof buf), "fake", TOKEN, 5.0, &s),
                   PAR_OK);
  assert_int_equal(par__store_set(s, "k", "v", 1), PAR_ERR_BOOTSTRAP);
  assert_detail_has("malformed response (non-zero reserved header bytes)");
  par__store_close(s);
}

/* ---- tokenless stores, and records read from the store ---------------------------------- */

static void test_tokenless_exposure(void **state) {
  (void)state;
  assert_int_equal(par__store_check_exposure("0.0.0.0", 29500, "", 0), PAR_ERR_BOOTSTRAP);
  assert_detail_has("refusing to listen on 0.0.0.0:29500 without a job token");
  assert_detail_has("PAR_ALLOW_NO_TOKEN=1");
  assert_int_equal(par__store_check_exposure("", 1, NULL, 0), PAR_ERR_BOOTSTRAP);
  assert_int_equal(par__store_check_exposure("::", 1, "", 0), PAR_ERR_BOOTSTRAP);
  assert_int_equal(par__store_check_exposure("0.0.0.0", 1, "", 1), PAR_OK);
  assert_int_equal(par__store_check_exposure("0.0.0.0", 1, TOKEN, 0), PAR_OK);
  assert_int_equal(par__store_check_exposure("127.0.0.1", 1, "", 0), PAR_OK);
  assert_int_equal(par__store_check_exposure("127.3.2.1", 1, "", 0), PAR_OK);
  assert_int_equal(par__store_check_exposure("::1", 1, "", 0), PAR_OK);
}

static void test_records_checked(void **state) {
  (void)state;
  char out[32];
  assert_int_equal(par__record_job_id("k", "exp.1_a-0f", 10, out, sizeof out), PAR_OK);
  assert_string_equal(out, "exp.1_a-0f");
  assert_int_equal(par__record_job_id("k", "", 0, out, sizeof out), PAR_ERR_PROTOCOL);
  assert_int_equal(par__record_job_id("k", "a/b", 3, out, sizeof out), PAR_ERR_PROTOCOL);
  assert_detail_has("k: byte 1 of the job id (0x2f)");
  assert_int_equal(par__record_job_id("k", "ab\0c", 4, out, sizeof out), PAR_ERR_PROTOCOL);
  char big[40];
  memset(big, 'a', sizeof big);
  assert_int_equal(par__record_job_id("k", big, 32, out, sizeof out), PAR_ERR_PROTOCOL);
  assert_int_equal(par__record_job_id("k", big, 31, out, sizeof out), PAR_OK);
  assert_int_equal(par__record_host_id("h", "node1/abc", 9, out, sizeof out), PAR_OK);
  assert_string_equal(out, "node1/abc");
  assert_int_equal(par__record_host_id("h", "a\0b", 3, out, sizeof out), PAR_ERR_PROTOCOL);
  assert_detail_has("h: byte 1 of the host id (0x00) is not printable");
}

static void test_raw_wrong_mac_gets_reason(void **state) {
  fixture *f = *state;
  char msg[256];
  int fd = raw_connect(f, "wrong");
  assert_int_equal(raw_response(fd, msg, sizeof msg), PAR__STORE_REJECT);
  assert_string_equal(msg, PAR__STORE_AUTH_REJECT);
  char c;
  assert_int_equal(recv(fd, &c, 1, 0), 0);
  close(fd);
}

static void test_waiting_client_disconnects(void **state) {
  fixture *f = *state;
  char msg[64];
  int fd = raw_connect(f, TOKEN);
  assert_int_equal(raw_response(fd, msg, sizeof msg), PAR__STORE_OK);
  send_header(fd, PAR__STORE_GET, 4, 0, 60000);
  assert_int_equal(send(fd, "gone", 4, 0), 4);
  sleep_s(0.1);
  close(fd); /* the server must drop the waiter, not answer into a closed socket */
  par__store *s = client(f);
  assert_int_equal(par__store_set(s, "gone", "x", 1), PAR_OK);
  char buf[4];
  size_t len;
  assert_int_equal(par__store_get(s, "gone", buf, sizeof buf, &len, 1.0), PAR_OK);
  assert_int_equal(len, 1);
  par__store_close(s);
}

/* ---- connecting -------------------------------------------------------------------------- */

typedef struct late_server {
  int port;
  par__store_server *srv;
  par_status st;
} late_server;

static void *start_late(void *arg) {
  late_server *l = arg;
  sleep_s(0.4);
  int bound = 0;
  l->st = par__store_server_start("127.0.0.1", l->port, TOKEN, &l->srv, &bound);
  return NULL;
}

static void test_connect_retries_until_server_is_up(void **state) {
  (void)state;
  /* Find a free port, then let a server take it only after the client starts trying. */
  par__store_server *tmp;
  int port = 0;
  assert_int_equal(par__store_server_start("127.0.0.1", 0, TOKEN, &tmp, &port), PAR_OK);
  par__store_server_stop(tmp);
  late_server l = {.port = port};
  pthread_t t;
  assert_int_equal(pthread_create(&t, NULL, start_late, &l), 0);
  par__store *s = NULL;
  double t0 = par__now();
  par_status st = par__store_connect("127.0.0.1", port, TOKEN, 10.0, &s);
  double took = par__now() - t0;
  pthread_join(t, NULL);
  assert_int_equal(l.st, PAR_OK);
  assert_int_equal(st, PAR_OK);
  assert_true(took >= 0.3);
  assert_int_equal(par__store_set(s, "k", "v", 1), PAR_OK);
  par__store_close(s);
  par__store_server_stop(l.srv);
}

static void test_connect_times_out(void **state) {
  (void)state;
  par__store_server *tmp;
  int port = 0;
  assert_int_equal(par__store_server_start("127.0.0.1", 0, TOKEN, &tmp, &port), PAR_OK);
  par__store_server_stop(tmp);
  par__store *s = NULL;
  double t0 = par__now();
  assert_int_equal(par__store_connect("127.0.0.1", port, TOKEN, 0.3, &s), PAR_ERR_TIMEOUT);
  double took = par__now() - t0;
  assert_true(took >= 0.29);
  assert_true(took < 2.0);
  assert_null(s);
  assert_detail_has("cannot connect to 127.0.0.1:");
}

static void test_server_gone(void **state) {
  (void)state;
  par__store_server *srv;
  int port = 0;
  assert_int_equal(par__store_server_start("127.0.0.1", 0, TOKEN, &srv, &port), PAR_OK);
  par__store *s = NULL;
  assert_int_equal(par__store_connect("127.0.0.1", port, TOKEN, 5.0, &s), PAR_OK);
  par__store_server_stop(srv);
  assert_int_equal(par__store_set(s, "k", "v", 1), PAR_ERR_BOOTSTRAP);
  assert_detail_has("SET 'k' failed");
  /* Later calls fail at once rather than talk to a dead socket. */
  assert_int_equal(par__store_del(s, "k"), PAR_ERR_BOOTSTRAP);
  assert_detail_has("lost earlier");
  par__store_close(s);
}

/* ---- one client, many threads ------------------------------------------------------------ */

#define ADDERS 4
#define ADDS 200

static void *adder(void *arg) {
  par__store *s = arg;
  for (int i = 0; i < ADDS; i++)
    if (par__store_add(s, "shared", 1, NULL) != PAR_OK) return (void *)1;
  return NULL;
}

static void test_client_shared_by_threads(void **state) {
  fixture *f = *state;
  par__store *s = client(f);
  pthread_t t[ADDERS];
  for (int i = 0; i < ADDERS; i++) assert_int_equal(pthread_create(&t[i], NULL, adder, s), 0);
  for (int i = 0; i < ADDERS; i++) {
    void *ret;
    pthread_join(t[i], &ret);
    assert_null(ret);
  }
  int64_t v = 0;
  assert_int_equal(par__store_add(s, "shared", 0, &v), PAR_OK);
  assert_int_equal(v, ADDERS * ADDS);
  par__store_close(s);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_set_get_add_del, setup, teardown),
      cmocka_unit_test_setup_teardown(test_largest_value_round_trips, setup, teardown),
      cmocka_unit_test_setup_teardown(test_get_waits_for_later_set, setup, teardown),
      cmocka_unit_test_setup_teardown(test_get_timeout_keeps_connection_in_step, setup, teardown),
      cmocka_unit_test_setup_teardown(test_wrong_token_refused, setup, teardown),
      cmocka_unit_test(test_empty_token_on_both_sides),
      cmocka_unit_test_setup_teardown(test_oversized_lengths_rejected, setup, teardown),
      cmocka_unit_test_setup_teardown(test_raw_wrong_mac_gets_reason, setup, teardown),
      cmocka_unit_test_setup_teardown(test_reserved_header_bytes_named, setup, teardown),
      cmocka_unit_test_setup_teardown(test_strangers_shed_oldest_first, setup, teardown),
      cmocka_unit_test_setup_teardown(test_silent_stranger_timed_out, setup, teardown),
      cmocka_unit_test(test_client_reports_refusal),
      cmocka_unit_test(test_client_rejects_reserved_response_bytes),
      cmocka_unit_test(test_tokenless_exposure),
      cmocka_unit_test(test_records_checked),
      cmocka_unit_test_setup_teardown(test_waiting_client_disconnects, setup, teardown),
      cmocka_unit_test(test_connect_retries_until_server_is_up),
      cmocka_unit_test(test_connect_times_out),
      cmocka_unit_test(test_server_gone),
      cmocka_unit_test_setup_teardown(test_client_shared_by_threads, setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
