/*
 * parlayout -- prints the groups a (world, mp, pp) configuration gives, without starting
 * anything.
 *
 *     parlayout --world 8 --mp 2 --pp 2 [--json]
 *
 * It validates with the library's own par_layout_init_parallel, so an invalid configuration
 * fails here with the message par_init_parallelism would give, and a clamped mp prints the
 * same warning. Exit status: 0 on success, 1 for an invalid configuration, 2 for bad usage.
 */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "par.h"

static void usage(FILE *f) {
  fprintf(f,
          "usage: parlayout --world N [--mp M] [--pp P] [--json]\n"
          "       parlayout --version\n"
          "\n"
          "Prints the model (mp), pipeline (pp) and data (dp) parallel groups of N ranks laid\n"
          "out as rank = (d*PP + p)*MP + m, without starting anything. mp and pp default to\n"
          "1; dp = N / (mp*pp). --json prints one JSON object instead of text.\n");
}

/* Parses a whole decimal int; 0 when `s` is not one. */
static int parse_int(const char *s, int *out) {
  char *end;
  errno = 0;
  long v = strtol(s, &end, 10);
  if (errno || end == s || *end || v < INT_MIN || v > INT_MAX) return 0;
  *out = (int)v;
  return 1;
}

/* Prints the groups of one dim as [[a,b],[c,d]]. */
static int print_groups(const par_layout *l, const char *dim) {
  par_dims dims;
  if (par_layout_parse_dims(l, dim, &dims) != PAR_OK) return -1;
  int size = par_layout_group_size(l, dims), count = par_layout_group_count(l, dims);
  int *ranks = malloc(sizeof(int) * (size_t)size);
  if (!ranks) return -1;
  putchar('[');
  for (int id = 0; id < count; id++) {
    if (par_layout_group_ranks(l, dims, id, ranks) != PAR_OK) {
      free(ranks);
      return -1;
    }
    printf("%s[", id ? "," : "");
    for (int k = 0; k < size; k++) printf("%s%d", k ? "," : "", ranks[k]);
    putchar(']');
  }
  putchar(']');
  free(ranks);
  return 0;
}

int main(int argc, char **argv) {
  int world = -1, mp = 1, pp = 1, json = 0;
  for (int i = 1; i < argc; i++) {
    const char *arg = argv[i];
    int *target = NULL;
    if (strcmp(arg, "--json") == 0) {
      json = 1;
      continue;
    }
    if (strcmp(arg, "-h") == 0 || strcmp(arg, "--help") == 0) {
      usage(stdout);
      return 0;
    }
    if (strcmp(arg, "--version") == 0) {
      printf("parlayout (par) %s\n", par_version_string());
      return 0;
    }
    /* Accept both "--mp 2" and "--mp=2". */
    const char *value = NULL;
    static const char *const names[] = {"--world", "--mp", "--pp"};
    int *targets[] = {&world, &mp, &pp};
    for (int k = 0; k < 3; k++) {
      size_t n = strlen(names[k]);
      if (strncmp(arg, names[k], n) != 0) continue;
      if (arg[n] == '=') {
        value = arg + n + 1;
      } else if (arg[n] == '\0') {
        if (i + 1 >= argc) {
          fprintf(stderr, "parlayout: %s needs a value\n", arg);
          return 2;
        }
        value = argv[++i];
      } else {
        continue;
      }
      target = targets[k];
      break;
    }
    if (!target) {
      fprintf(stderr, "parlayout: unknown argument '%s'\n", arg);
      usage(stderr);
      return 2;
    }
    if (!parse_int(value, target)) {
      fprintf(stderr, "parlayout: '%s' is not an integer\n", value);
      return 2;
    }
  }
  if (world == -1) {
    fprintf(stderr, "parlayout: --world is required\n");
    usage(stderr);
    return 2;
  }

  par_layout l;
  char warning[256];
  par_status s = par_layout_init_parallel(&l, world, mp, pp, warning, sizeof warning);
  if (warning[0]) fprintf(stderr, "parlayout: warning: %s\n", warning);
  if (s != PAR_OK) {
    fprintf(stderr, "parlayout: error: %s\n", par_last_error());
    return 1;
  }
  int dp = l.size[0];
  pp = l.size[1];
  mp = l.size[2];

  static const char *const dims[] = {"mp", "pp", "dp"};
  if (json) {
    printf("{\"world\":%d,\"mp\":%d,\"pp\":%d,\"dp\":%d,\"groups\":{", world, mp, pp, dp);
    for (int k = 0; k < 3; k++) {
      printf("%s\"%s\":", k ? "," : "", dims[k]);
      if (print_groups(&l, dims[k]) != 0) return 1;
    }
    printf("}}\n");
  } else {
    printf("world %d: model parallel %d, pipeline parallel %d, data parallel %d\n", world, mp, pp,
           dp);
    printf("rank = (d*%d + p)*%d + m\n", pp, mp);
    for (int k = 0; k < 3; k++) {
      par_dims d;
      if (par_layout_parse_dims(&l, dims[k], &d) != PAR_OK) return 1;
      printf("%s: %d group%s of %d: ", dims[k], par_layout_group_count(&l, d),
             par_layout_group_count(&l, d) == 1 ? "" : "s", par_layout_group_size(&l, d));
      if (print_groups(&l, dims[k]) != 0) return 1;
      putchar('\n');
    }
  }
  return fflush(stdout) == 0 ? 0 : 1;
}
