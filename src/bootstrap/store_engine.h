/*
 * store_engine.h -- the store server's protocol engine: the key-value table and every
 * connection's state machine (the token challenge, requests, GETs waiting for their key),
 * with no sockets and no clock of its own. The server loop (store_server.c) appends the bytes
 * it receives to a connection's input, tells the engine, and sends what the engine left in
 * the connection's output; the fuzz target tests/fuzz/fuzz_store_server.c drives the very
 * same code with bytes of its own. The wire format is in store_proto.h. Internal to
 * src/bootstrap; not thread-safe (one server thread owns an engine).
 */
#ifndef PAR_STORE_ENGINE_H
#define PAR_STORE_ENGINE_H

#include <stddef.h>
#include <stdint.h>

#include "bootstrap/store_proto.h"
#include "par.h"

/* Input buffered per connection: one largest frame plus some pipelined slack. */
#define PAR__STORE_IN_LIMIT (PAR__STORE_REQ_HDR + PAR__STORE_MAX_KEY + PAR__STORE_MAX_VAL + 65536u)
/* Requests are not parsed while this much output is unsent (a slow reader). */
#define PAR__STORE_OUT_HIGH (4u * 1024u * 1024u)

typedef enum par__store_conn_state {
  PAR__CONN_AUTH,    /* greeted; the client has not proved the token yet */
  PAR__CONN_READY,   /* serving requests */
  PAR__CONN_WAIT,    /* a GET waits for its key (the request stays buffered) */
  PAR__CONN_CLOSING, /* told why it is dropped: close once the output is sent */
} par__store_conn_state;

typedef struct par__store_conn {
  int fd;   /* the server's socket (-1 in a fuzz target); the engine never reads or writes it */
  int dead; /* to be freed by par__store_engine_sweep */
  par__store_conn_state state;
  double deadline; /* AUTH: prove the token by then; WAIT: answer NOT_FOUND then */
  uint8_t nonce[PAR__STORE_NONCE_LEN];
  uint8_t *in;
  size_t in_len, in_cap;
  uint8_t *out;
  size_t out_off, out_len, out_cap; /* unsent bytes are out[out_off .. out_len) */
} par__store_conn;

struct par__store_entry;

typedef struct par__store_engine {
  char *token;
  struct par__store_entry **buckets;
  size_t nbuckets, count;
  par__store_conn **conns; /* in the order they were added: the oldest first */
  size_t nconns, cap_conns;
  int rescan;           /* a waiter was released: its buffered requests need parsing */
  int warned_tokenless; /* the first client admitted without a token was logged */
} par__store_engine;

/* Sets up an empty engine that admits clients proving `token` ("" or NULL: the empty key). */
par_status par__store_engine_init(par__store_engine *e, const char *token);
/* Frees every connection (closing its fd when >= 0) and the table. */
void par__store_engine_fini(par__store_engine *e);

/* Adds a connection with the greeting (magic + nonce) queued in its output; it must prove
 * the token by auth_deadline. NULL when out of memory (nothing was added). */
par__store_conn *par__store_engine_add(par__store_engine *e, int fd,
                                       const uint8_t nonce[PAR__STORE_NONCE_LEN],
                                       double auth_deadline);

/* Where the next received bytes go: at least one byte of room, *room set. NULL when the
 * input is full until buffered requests are served, or when no memory could be found (the
 * client is then told so and the connection closes). */
uint8_t *par__store_conn_input_space(par__store_conn *c, size_t *room);
/* The server put n bytes at the input space: answer the challenge, serve requests. */
void par__store_conn_received(par__store_engine *e, par__store_conn *c, size_t n, double now);
/* The server sent n bytes of the output. */
void par__store_conn_sent(par__store_conn *c, size_t n);

/* Serves connections whose GET was answered by another client's SET (until none is left). */
void par__store_engine_rescan(par__store_engine *e, double now);
/* Ends waits and challenges whose time is up; returns the next deadline (INFINITY: none). */
double par__store_engine_deadlines(par__store_engine *e, double now);
/* Frees dead connections, keeping the others in order. */
void par__store_engine_sweep(par__store_engine *e);
/* Connections still to prove the token. */
size_t par__store_engine_unauthenticated(const par__store_engine *e);

#endif /* PAR_STORE_ENGINE_H */
