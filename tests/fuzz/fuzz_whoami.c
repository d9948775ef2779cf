/*
 * fuzz_whoami.c -- who-am-I (src/bootstrap/whoami.c) reading the variables a launcher sets:
 * the input is a list of values separated by '\n', given in turn to the variables below
 * (the rest are unset). Whatever they say, resolving must return a status, and a success
 * must describe a world that makes sense: 0 <= rank < size, 0 <= local rank < local size <=
 * size, and a store address whenever size > 1.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "bootstrap/bootstrap.h"
#include "core/core.h"

static const char *const names[] = {
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
    "PAR_STORE_ADDR",
    "PAR_TOKEN",
    "OMPI_COMM_WORLD_RANK",
    "OMPI_COMM_WORLD_SIZE",
    "PMI_RANK",
    "PMI_SIZE",
    "SLURM_PROCID",
    "SLURM_NTASKS",
    "SLURM_LOCALID",
    "SLURM_TASKS_PER_NODE",
    "SLURM_NODEID",
    "PAR_ALLOW_NO_TOKEN",
    "OMPI_COMM_WORLD_LOCAL_RANK",
    "MPI_LOCALNRANKS",
};
#define NVARS (sizeof names / sizeof names[0])

static char *values[NVARS];

static const char *fuzz_getenv(const char *name) {
  for (size_t i = 0; i < NVARS; i++)
    if (!strcmp(name, names[i])) return values[i];
  return NULL;
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc;
  (void)argv;
  setenv("PAR_LOG", "error", 1);
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  char *text = malloc(size + 1);
  if (!text) return 0;
  memcpy(text, data, size);
  text[size] = '\0';
  memset(values, 0, sizeof values);
  char *p = text;
  for (size_t i = 0; i < NVARS && p; i++) {
    char *nl = strchr(p, '\n');
    if (nl) *nl = '\0';
    values[i] = *p == '\x01' ? NULL : p; /* a lone \x01 leaves the variable unset */
    p = nl ? nl + 1 : NULL;
  }
  par__whoami who;
  if (par__whoami_resolve(NULL, fuzz_getenv, &who) == PAR_OK) {
    if (who.rank < 0 || who.rank >= who.size || who.local_rank < 0 ||
        who.local_rank >= who.local_size || who.local_size > who.size)
      __builtin_trap();
    if (who.size > 1 && (!who.store_host[0] || who.store_port < 1 || who.store_port > 65535))
      __builtin_trap();
    if (!memchr(who.store_host, '\0', sizeof who.store_host) ||
        !memchr(who.token, '\0', sizeof who.token))
      __builtin_trap();
  }
  free(text);
  return 0;
}
