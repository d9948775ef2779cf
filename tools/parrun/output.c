/*
 * output.c -- parrun's output path: every line a rank writes to stdout or stderr reaches
 * parrun's stdout or stderr whole, prefixed with the rank. Lines are written with one
 * write() each batch, so lines of different ranks interleave but never mix inside a line.
 */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "parrun.h"

/* A line longer than this without a newline is written in pieces (each prefixed), so a rank
 * that prints a huge unterminated line cannot make parrun hold it all in memory. */
#define MAX_LINE 65536

void pr_write_all(int fd, const char *buf, size_t len) {
  while (len) {
    ssize_t n = write(fd, buf, len);
    if (n > 0) {
      buf += n;
      len -= (size_t)n;
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      /* Our stdout was handed to us non-blocking: wait for room instead of spinning. */
      struct pollfd p = {.fd = fd, .events = POLLOUT};
      poll(&p, 1, 1000);
      continue;
    }
    return; /* EPIPE or another hard error: the destination is gone */
  }
}

void pr_stream_init(pr_stream *s, int fd, int dest, int rank, int width) {
  memset(s, 0, sizeof *s);
  s->fd = fd;
  s->dest = dest;
  int n = snprintf(s->prefix, sizeof s->prefix, "[%*d] ", width, rank);
  s->prefix_len = n > 0 && (size_t)n < sizeof s->prefix ? (size_t)n : 0;
}

/* Writes the lines in data[0, len) (the last one ends in '\n') with prefixes, in one write. */
static void emit_lines(pr_stream *s, const char *data, size_t len) {
  size_t lines = 0;
  for (size_t i = 0; i < len; i++) lines += data[i] == '\n';
  size_t total = len + lines * s->prefix_len;
  char *out = malloc(total);
  if (!out) {
    /* Degrade to unbatched writes rather than losing output. */
    for (size_t i = 0, start = 0; i < len; i++)
      if (data[i] == '\n') {
        pr_write_all(s->dest, s->prefix, s->prefix_len);
        pr_write_all(s->dest, data + start, i + 1 - start);
        start = i + 1;
      }
    return;
  }
  size_t o = 0, start = 0;
  for (size_t i = 0; i < len; i++)
    if (data[i] == '\n') {
      memcpy(out + o, s->prefix, s->prefix_len);
      o += s->prefix_len;
      memcpy(out + o, data + start, i + 1 - start);
      o += i + 1 - start;
      start = i + 1;
    }
  pr_write_all(s->dest, out, o);
  free(out);
}

/* Writes the unfinished line, terminated, so the next prefix starts a fresh line. */
static void flush_partial(pr_stream *s) {
  if (!s->len) return;
  if (s->len == s->cap) {
    char *p = realloc(s->buf, s->cap + 1);
    if (!p) {
      emit_lines(s, "\n", 1);
      s->len = 0;
      return;
    }
    s->buf = p;
    s->cap++;
  }
  s->buf[s->len++] = '\n';
  emit_lines(s, s->buf, s->len);
  s->len = 0;
}

int pr_stream_read(pr_stream *s) {
  if (s->fd < 0) return 1;
  /* A bounded number of reads per call, so one chatty rank cannot starve the others. */
  for (int round = 0; round < 16; round++) {
    if (s->cap - s->len < 4096) {
      size_t cap = s->cap ? s->cap * 2 : 8192;
      char *p = realloc(s->buf, cap);
      if (!p) {
        flush_partial(s); /* make room by writing out what we hold */
        if (s->cap == 0) {
          pr_stream_close(s);
          return 1;
        }
      } else {
        s->buf = p;
        s->cap = cap;
      }
    }
    ssize_t n = read(s->fd, s->buf + s->len, s->cap - s->len);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return 0;
    if (n <= 0) {
      pr_stream_close(s);
      return 1;
    }
    size_t old = s->len;
    s->len += (size_t)n;
    /* Write out everything up to the last newline; keep the rest for the next read. */
    char *last = NULL;
    for (size_t i = s->len; i > old; i--)
      if (s->buf[i - 1] == '\n') {
        last = s->buf + i - 1;
        break;
      }
    if (last) {
      size_t upto = (size_t)(last - s->buf) + 1;
      emit_lines(s, s->buf, upto);
      memmove(s->buf, s->buf + upto, s->len - upto);
      s->len -= upto;
    }
    if (s->len >= MAX_LINE) flush_partial(s);
  }
  return 0;
}

void pr_stream_close(pr_stream *s) {
  flush_partial(s);
  if (s->fd >= 0) close(s->fd);
  s->fd = -1;
  free(s->buf);
  s->buf = NULL;
  s->len = s->cap = 0;
}
