/*
 * dtype.c -- names of the data types, reduction ops and backends.
 *
 * Everything that turns one of these enums into text or back lives here, so that the tools,
 * the environment parser and error messages agree on one spelling. Parsing is ASCII
 * case-insensitive and independent of the C locale. (The f16/bf16 conversions declared next
 * to the kernels in core.h live in reduce.c, beside the inline code the kernels vectorise, so
 * that a value converted by hand and one converted inside a reduction have the same bits.)
 */
#include <stddef.h>
#include <string.h>

#include "core/core.h"

/* ---------------------------------------------------------------------------------------- */
/* Name tables                                                                              */
/* ---------------------------------------------------------------------------------------- */

/* One entry per accepted spelling; the first entry for each value is its canonical name. */
typedef struct name_entry {
  const char *name;
  int value;
} name_entry;

static const name_entry dtype_names[] = {
    {"f32", PAR_F32},   {"float", PAR_F32},     {"float32", PAR_F32}, {"f64", PAR_F64},
    {"double", PAR_F64}, {"float64", PAR_F64},  {"f16", PAR_F16},     {"half", PAR_F16},
    {"float16", PAR_F16}, {"bf16", PAR_BF16},   {"bfloat16", PAR_BF16}, {"i8", PAR_I8},
    {"int8", PAR_I8},   {"u8", PAR_U8},         {"uint8", PAR_U8},    {"i32", PAR_I32},
    {"int", PAR_I32},   {"int32", PAR_I32},     {"i64", PAR_I64},     {"int64", PAR_I64},
};

static const name_entry op_names[] = {
    {"sum", PAR_SUM}, {"prod", PAR_PROD}, {"min", PAR_MIN}, {"max", PAR_MAX}, {"avg", PAR_AVG},
};

static const name_entry backend_names[] = {
    {"auto", PAR_BACKEND_AUTO},
    {"shm", PAR_BACKEND_SHM},
    {"mpi", PAR_BACKEND_MPI},
};

#define COUNT_OF(a) (sizeof(a) / sizeof((a)[0]))

/* ASCII-only case folding: strcasecmp follows the locale, and under a Turkish locale "INT"
 * would not match "int". */
static int ascii_lower(int c) { return (c >= 'A' && c <= 'Z') ? c - 'A' + 'a' : c; }

static int ascii_iequal(const char *a, const char *b) {
  for (; *a && *b; a++, b++) {
    if (ascii_lower((unsigned char)*a) != ascii_lower((unsigned char)*b)) return 0;
  }
  return *a == *b;
}

/* Returns the index of the entry matching name, or -1. */
static int find_name(const name_entry *table, size_t n, const char *name) {
  for (size_t i = 0; i < n; i++) {
    if (ascii_iequal(table[i].name, name)) return (int)i;
  }
  return -1;
}

/* The first (canonical) name listed for value, or NULL. */
static const char *canonical_name(const name_entry *table, size_t n, int value) {
  for (size_t i = 0; i < n; i++) {
    if (table[i].value == value) return table[i].name;
  }
  return NULL;
}

/* Writes "a|b|c, d|e, ..." (spellings of one value joined by '|', values by ", ") into buf,
 * for error messages that tell the user what would have been accepted. */
static void list_names(const name_entry *table, size_t n, char *buf, size_t cap) {
  size_t len = 0;
  buf[0] = '\0';
  for (size_t i = 0; i < n; i++) {
    const char *sep = i == 0 ? "" : (table[i].value == table[i - 1].value ? "|" : ", ");
    size_t need = strlen(sep) + strlen(table[i].name);
    if (len + need + 1 > cap) break;
    memcpy(buf + len, sep, strlen(sep));
    len += strlen(sep);
    memcpy(buf + len, table[i].name, strlen(table[i].name) + 1);
    len += strlen(table[i].name);
  }
}

/* The value of `name` in table, for parser `fn`; an unknown name is `status`, with the names
 * that would have been accepted. */
static par_status parse_name(const name_entry *table, size_t n, const char *fn, const char *what,
                             par_status status, const char *name, const void *out, int *value) {
  PAR_RETURN_ERROR_IF(name == NULL, PAR_ERR_NULL, "%s: name is NULL", fn);
  PAR_RETURN_ERROR_IF(out == NULL, PAR_ERR_NULL, "%s: out is NULL", fn);
  int i = find_name(table, n, name);
  if (i < 0) {
    char valid[256];
    list_names(table, n, valid, sizeof valid);
    return par__error(status, "unknown %s '%.64s' (valid: %s)", what, name, valid);
  }
  *value = table[i].value;
  return PAR_OK;
}

/* ---------------------------------------------------------------------------------------- */
/* Data types                                                                               */
/* ---------------------------------------------------------------------------------------- */

size_t par_dtype_size(par_dtype dt) {
  switch (dt) {
  case PAR_F32: return 4;
  case PAR_F64: return 8;
  case PAR_F16: return 2;
  case PAR_BF16: return 2;
  case PAR_I8: return 1;
  case PAR_U8: return 1;
  case PAR_I32: return 4;
  case PAR_I64: return 8;
  case PAR_DTYPE_COUNT: break;
  }
  return 0;
}

const char *par_dtype_name(par_dtype dt) {
  if (!par__dtype_valid(dt)) return NULL;
  return canonical_name(dtype_names, COUNT_OF(dtype_names), (int)dt);
}

par_status par_dtype_parse(const char *name, par_dtype *out) {
  int v = 0;
  PAR_FORWARD_IF_ERROR(parse_name(dtype_names, COUNT_OF(dtype_names), "par_dtype_parse", "dtype", PAR_ERR_DTYPE, name, out, &v));
  *out = (par_dtype)v;
  return PAR_OK;
}

/* ---------------------------------------------------------------------------------------- */
/* Reduction ops                                                                            */
/* ---------------------------------------------------------------------------------------- */

const char *par_op_name(par_op op) {
  if (!par__op_valid(op)) return NULL;
  return canonical_name(op_names, COUNT_OF(op_names), (int)op);
}

par_status par_op_parse(const char *name, par_op *out) {
  int v = 0;
  PAR_FORWARD_IF_ERROR(parse_name(op_names, COUNT_OF(op_names), "par_op_parse", "reduction op", PAR_ERR_OP, name, out, &v));
  *out = (par_op)v;
  return PAR_OK;
}

/* ---------------------------------------------------------------------------------------- */
/* Backends                                                                                 */
/* ---------------------------------------------------------------------------------------- */

const char *par_backend_name(par_backend b) {
  if ((unsigned)b >= PAR_BACKEND_COUNT) return NULL;
  return canonical_name(backend_names, COUNT_OF(backend_names), (int)b);
}

par_status par_backend_parse(const char *name, par_backend *out) {
  int v = 0;
  PAR_FORWARD_IF_ERROR(parse_name(backend_names, COUNT_OF(backend_names), "par_backend_parse", "backend", PAR_ERR_INVALID, name, out, &v));
  *out = (par_backend)v;
  return PAR_OK;
}
