/*
 * fuzz_store_client.c -- the store client (src/bootstrap/store.c) reading a server's bytes.
 * The input is everything the "server" says, written in advance into one end of a socket
 * pair whose other end the client takes over; the client then runs the challenge and a
 * GET, SET, ADD, DEL and a second GET, each reading its answer from what is left. Whatever
 * the bytes, the client must return a status (never crash, hang or read out of bounds); a
 * GET's copy must stay within the caller's buffer.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "bootstrap/bootstrap.h"
#include "core/core.h"

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc;
  (void)argv;
  setenv("PAR_LOG", "error", 1);
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size > 65536) return 0; /* must fit in the socket buffer, written before reading */
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) return 0;
  int big = 1 << 18;
  setsockopt(sv[1], SOL_SOCKET, SO_SNDBUF, &big, sizeof big);
  setsockopt(sv[0], SOL_SOCKET, SO_RCVBUF, &big, sizeof big);
  size_t off = 0;
  while (off < size) {
    ssize_t n = write(sv[1], data + off, size - off);
    if (n <= 0) break;
    off += (size_t)n;
  }
  shutdown(sv[1], SHUT_WR); /* the "server" has said all it will: EOF after the data */
  par__store *s = NULL;
  if (par__store_open_fd(sv[0], "fuzz", "fuzz-token", 2.0, &s) == PAR_OK) {
    char buf[16];
    size_t len = 0;
    int64_t v = 0;
    par__store_get(s, "a", buf, sizeof buf, &len, 0.001);
    par__store_set(s, "b", "value", 5);
    par__store_add(s, "c", 3, &v);
    par__store_del(s, "d");
    par__store_get(s, "e", buf, 4, &len, 0.001);
    par__store_close(s);
  }
  close(sv[1]);
  return 0;
}
