/*
 * version.c -- the version of the library itself, for programs that want to know which
 * libpar they loaded (par_version) or to print it (the tools' --version). Both come from the
 * PAR_VERSION_* macros of the par.h this library was compiled with, the one place the number
 * is written.
 */
#include "par.h"

#define STR_(x) #x
#define STR(x) STR_(x)

int par_version(void) { return PAR_VERSION_NUMBER; }

const char *par_version_string(void) {
  return STR(PAR_VERSION_MAJOR) "." STR(PAR_VERSION_MINOR) "." STR(PAR_VERSION_PATCH);
}
