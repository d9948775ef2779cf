/*
 * store_proto.h -- the wire format of the rendezvous store, shared by the client (store.c)
 * and the server (store_server.c). Internal to src/bootstrap.
 *
 * Handshake (before anything else on a connection):
 *   server -> client  "PARSTOR1" (8 bytes) + nonce (32 random bytes)
 *   client -> server  HMAC-SHA256(key = job token, data = nonce) (32 bytes)
 *   server -> client  a response frame: OK, or REJECT with a message, after which the server
 *                     closes the connection.
 * A server that cannot take a client at all (out of descriptors or memory) greets it with
 * "PARSTOR0" + 32 zero bytes instead, then an ERROR frame with the reason, and closes; the
 * client reports the reason (and may try again) instead of guessing at a silent hang-up.
 * Requests (client -> server), one at a time per connection:
 *   header 16 bytes:  op u8, 3 reserved bytes (zero: anything else is refused with its own
 *                     message), key length u32, value length u32, arg u32
 *   then the key, then the value. arg is the GET wait in milliseconds (0 otherwise).
 *   SET: value = the bytes to store. GET: no value. ADD: value = int64 delta (8 bytes).
 *   DEL: no value.
 * Responses (server -> client):
 *   header 8 bytes:   status u8, 3 reserved zero bytes, payload length u32; then the payload.
 *   OK + value (GET), OK + int64 (ADD), OK + nothing (SET, DEL), NOT_FOUND (a GET whose wait
 *   ran out), ERROR + message (a bad request; the server closes after an oversized length).
 * Integers are big-endian. Lengths read from the wire are checked against the limits below
 * before any memory is sized by them.
 */
#ifndef PAR_STORE_PROTO_H
#define PAR_STORE_PROTO_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <openssl/evp.h>
#include <openssl/hmac.h>

#define PAR__STORE_MAGIC "PARSTOR1"
#define PAR__STORE_MAGIC_REFUSE "PARSTOR0"
#define PAR__STORE_MAGIC_LEN 8
#define PAR__STORE_NONCE_LEN 32
#define PAR__STORE_MAC_LEN 32
#define PAR__STORE_REQ_HDR 16
#define PAR__STORE_RESP_HDR 8
#define PAR__STORE_MAX_KEY 1024u
#define PAR__STORE_MAX_VAL (1024u * 1024u)
/* The longest response payload: a value, or an error message (far shorter). */
#define PAR__STORE_MAX_RESP PAR__STORE_MAX_VAL

/* The message a client gets when its token is wrong; the client reports it verbatim. */
#define PAR__STORE_AUTH_REJECT "store: wrong job token (PAR_TOKEN)"

enum par__store_op {
  PAR__STORE_SET = 1,
  PAR__STORE_GET = 2,
  PAR__STORE_ADD = 3,
  PAR__STORE_DEL = 4,
};

enum par__store_resp {
  PAR__STORE_OK = 0,
  PAR__STORE_NOT_FOUND = 1,
  PAR__STORE_ERROR = 2,
  PAR__STORE_REJECT = 3,
};

static inline void par__put_u32(uint8_t *p, uint32_t v) {
  p[0] = (uint8_t)(v >> 24);
  p[1] = (uint8_t)(v >> 16);
  p[2] = (uint8_t)(v >> 8);
  p[3] = (uint8_t)v;
}

static inline uint32_t par__get_u32(const uint8_t *p) {
  return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | (uint32_t)p[3];
}

static inline void par__put_u64(uint8_t *p, uint64_t v) {
  par__put_u32(p, (uint32_t)(v >> 32));
  par__put_u32(p + 4, (uint32_t)v);
}

static inline uint64_t par__get_u64(const uint8_t *p) {
  return (uint64_t)par__get_u32(p) << 32 | par__get_u32(p + 4);
}

/* HMAC-SHA256(token, nonce) into mac[32]. Returns 0 on success. An empty token is a valid
 * (if weak) key: both sides then agree on the MAC of the empty key. */
static inline int par__store_mac(const char *token, const uint8_t *nonce, uint8_t *mac) {
  static const unsigned char empty[1] = {0};
  size_t tlen = token ? strlen(token) : 0;
  const void *key = tlen ? (const void *)token : (const void *)empty;
  unsigned int maclen = 0;
  if (!HMAC(EVP_sha256(), key, (int)tlen, nonce, PAR__STORE_NONCE_LEN, mac, &maclen)) return -1;
  return maclen == PAR__STORE_MAC_LEN ? 0 : -1;
}

#endif /* PAR_STORE_PROTO_H */
