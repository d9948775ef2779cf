/*
 * fuzz_store_server.c -- the store server's protocol engine (src/bootstrap/store_engine.c)
 * fed bytes as clients would send them, with no sockets. Three connections share one table:
 * the harness proves the token for the first two (a fuzzer cannot forge an HMAC), so the
 * fuzzer reaches requests, GETs that wait and are woken by another connection's SET or ADD,
 * and deadlines; the third gets raw bytes in the challenge. The input is a run of chunks:
 *   ctl u8, len u8, then len bytes for connection (ctl & 3) % 3;
 *   ctl & 4: the clock moves on 0.25 s and deadlines are handled first;
 *   ctl & 8: the connection's output is sent (else it piles up, as for a slow reader).
 * Every byte the engine sends is checked: the greeting, then well-formed response frames.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "bootstrap/store_engine.h"
#include "core/core.h"

#define TOKEN "fuzz-token"
#define NCONN 3

typedef struct sink {
  int greeted;
} sink;

/* Checks and discards the connection's output. */
static void drain(par__store_conn *c, sink *k) {
  const uint8_t *p = c->out + c->out_off, *end = c->out + c->out_len;
  if (!k->greeted && p < end) {
    if (end - p < PAR__STORE_MAGIC_LEN + PAR__STORE_NONCE_LEN ||
        memcmp(p, PAR__STORE_MAGIC, PAR__STORE_MAGIC_LEN) != 0)
      __builtin_trap();
    p += PAR__STORE_MAGIC_LEN + PAR__STORE_NONCE_LEN;
    k->greeted = 1;
  }
  while (p < end) {
    if (end - p < PAR__STORE_RESP_HDR) __builtin_trap(); /* frames are appended whole */
    uint32_t len = par__get_u32(p + 4);
    if (p[0] > PAR__STORE_REJECT || p[1] || p[2] || p[3] || len > PAR__STORE_MAX_RESP ||
        (size_t)(end - p) < PAR__STORE_RESP_HDR + (size_t)len)
      __builtin_trap();
    p += PAR__STORE_RESP_HDR + len;
  }
  par__store_conn_sent(c, c->out_len - c->out_off);
}

static void feed(par__store_engine *e, par__store_conn *c, const uint8_t *p, size_t n, double now) {
  while (n) {
    size_t room;
    uint8_t *dst = par__store_conn_input_space(c, &room);
    if (!dst) return; /* full, dead or closing: the server would stop reading too */
    size_t k = n < room ? n : room;
    memcpy(dst, p, k);
    par__store_conn_received(e, c, k, now);
    p += k;
    n -= k;
    if (c->dead || c->state == PAR__CONN_CLOSING) return;
  }
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc;
  (void)argv;
  setenv("PAR_LOG", "error", 1);
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  par__store_engine e;
  if (par__store_engine_init(&e, TOKEN) != PAR_OK) return 0;
  par__store_conn *conns[NCONN];
  sink sinks[NCONN] = {{0}};
  double now = 1000.0;
  for (int i = 0; i < NCONN; i++) {
    uint8_t nonce[PAR__STORE_NONCE_LEN] = {(uint8_t)i};
    conns[i] = par__store_engine_add(&e, -1, nonce, now + 5.0);
    if (!conns[i]) goto done;
    if (i < 2) {
      uint8_t mac[PAR__STORE_MAC_LEN];
      if (par__store_mac(TOKEN, nonce, mac) != 0) goto done;
      feed(&e, conns[i], mac, sizeof mac, now);
      if (conns[i]->state != PAR__CONN_READY) __builtin_trap();
    }
  }
  size_t off = 0;
  while (off + 2 <= size) {
    uint8_t ctl = data[off], len = data[off + 1];
    off += 2;
    size_t n = size - off < len ? size - off : len;
    if (ctl & 4) {
      now += 0.25;
      par__store_engine_deadlines(&e, now);
    }
    int i = (ctl & 3) % NCONN;
    feed(&e, conns[i], data + off, n, now);
    off += n;
    par__store_engine_rescan(&e, now);
    if (ctl & 8)
      for (int j = 0; j < NCONN; j++) drain(conns[j], &sinks[j]);
  }
  for (int j = 0; j < NCONN; j++) drain(conns[j], &sinks[j]);
  par__store_engine_deadlines(&e, now + 1e6);
  par__store_engine_rescan(&e, now + 1e6);
done:
  par__store_engine_sweep(&e);
  par__store_engine_fini(&e);
  return 0;
}
