/*
 * parrun.h -- pieces of the parrun launcher shared between its files: the per-stream line
 * prefixer (output.c) used by the event loop (parrun.c).
 */
#ifndef PARRUN_H
#define PARRUN_H

#include <stddef.h>

/* One rank's stdout or stderr: a pipe read end whose lines are copied, each prefixed with
 * "[r] ", to parrun's own stdout or stderr. */
typedef struct pr_stream {
  int fd;   /* read end (non-blocking), -1 once closed */
  int dest; /* 1 or 2 */
  char prefix[24];
  size_t prefix_len;
  char *buf; /* the unfinished last line */
  size_t len, cap;
} pr_stream;

/* Sets up a stream; the prefix is "[rank] " with rank right-aligned in `width` columns. */
void pr_stream_init(pr_stream *s, int fd, int dest, int rank, int width);
/* Reads what the pipe holds now and writes every complete line out. At EOF (or a read
 * error) it writes the unfinished last line with a newline added, closes the pipe and
 * returns 1; otherwise returns 0. */
int pr_stream_read(pr_stream *s);
/* Stops reading: writes the unfinished line, closes the pipe, frees the buffer. */
void pr_stream_close(pr_stream *s);

/* Writes all of buf to fd, retrying on EINTR and short writes. A destination that is gone
 * (EPIPE: parrun's reader quit) is dropped silently: the job goes on. */
void pr_write_all(int fd, const char *buf, size_t len);

#endif /* PARRUN_H */
