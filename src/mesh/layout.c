/*
 * layout.c -- the arithmetic of the parallel mesh, with no world and no communication.
 *
 * A layout is a row-major mesh of named dims (the last varies fastest) over the ranks of a
 * world. Everything a rank needs to know about its place in the mesh -- its coordinates, the
 * members of the group over any set of dims that holds it, its index there -- follows from the
 * sizes alone, so parlayout and the unit tests use these functions without starting anything,
 * and every rank computes its own groups without asking anyone. The validation messages of
 * the (dp, pp, mp) configuration live here too, so the library and parlayout say the same.
 */
#include <stdio.h>
#include <string.h>

#include "core/core.h"

/* ---------------------------------------------------------------------------------------- */
/* Construction and validation                                                              */
/* ---------------------------------------------------------------------------------------- */

/* Dim names are identifiers so that they can be listed with commas and printed in JSON
 * without escaping. */
static int name_valid(const char *name) {
  size_t n = strlen(name);
  if (n == 0 || n >= PAR_LAYOUT_NAME_MAX) return 0;
  for (size_t i = 0; i < n; i++) {
    char c = name[i];
    int ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_';
    if (!ok) return 0;
  }
  return 1;
}

par_status par_layout_init(par_layout *layout, int world, int ndims, const char *const *names,
                           const int *sizes) {
  PAR_RETURN_ERROR_IF(!layout || !names || !sizes, PAR_ERR_NULL,
                      "par_layout_init: layout, names and sizes must not be NULL");
  PAR_RETURN_ERROR_IF(world < 1, PAR_ERR_INVALID, "world size must be >= 1 (got %d)", world);
  PAR_RETURN_ERROR_IF(ndims < 1 || ndims > PAR_LAYOUT_MAX_DIMS, PAR_ERR_INVALID,
                      "a layout has 1 to %d dims (got %d)", PAR_LAYOUT_MAX_DIMS, ndims);

  par_layout l;
  memset(&l, 0, sizeof l);
  l.world = world;
  l.ndims = ndims;
  int derived = -1;
  long long product = 1;
  for (int i = 0; i < ndims; i++) {
    PAR_RETURN_ERROR_IF(!names[i], PAR_ERR_NULL, "the name of dim %d is NULL", i);
    PAR_RETURN_ERROR_IF(!name_valid(names[i]), PAR_ERR_INVALID,
                        "dim name '%.40s' is not 1 to %d characters of [A-Za-z0-9_]", names[i],
                        PAR_LAYOUT_NAME_MAX - 1);
    for (int j = 0; j < i; j++)
      PAR_RETURN_ERROR_IF(strcmp(names[i], names[j]) == 0, PAR_ERR_INVALID,
                          "dim name '%s' is used twice", names[i]);
    memcpy(l.name[i], names[i], strlen(names[i]) + 1);

    if (sizes[i] == -1) {
      PAR_RETURN_ERROR_IF(derived >= 0, PAR_ERR_INVALID,
                          "dims '%s' and '%s' both have size -1; at most one size is derived",
                          names[derived], names[i]);
      derived = i;
      continue;
    }
    PAR_RETURN_ERROR_IF(sizes[i] < 1, PAR_ERR_INVALID,
                        "dim '%s' has size %d; a size is >= 1, or -1 to derive it from the "
                        "world",
                        names[i], sizes[i]);
    l.size[i] = sizes[i];
    product *= sizes[i];
    /* Stop before the product can overflow; it already exceeds any int world. */
    PAR_RETURN_ERROR_IF(product > world, PAR_ERR_INVALID,
                        "the dim sizes multiply to more than the world size %d", world);
  }

  if (derived >= 0) {
    PAR_RETURN_ERROR_IF(world % product != 0, PAR_ERR_INVALID,
                        "world size %d is not divisible by %lld, the product of the sizes of "
                        "the dims other than '%s'",
                        world, product, l.name[derived]);
    l.size[derived] = (int)(world / product);
  } else {
    PAR_RETURN_ERROR_IF(product != world, PAR_ERR_INVALID,
                        "the dim sizes multiply to %lld, not to the world size %d", product, world);
  }
  *layout = l;
  return PAR_OK;
}

par_status par_layout_init_parallel(par_layout *layout, int world, int mp, int pp, char *warning,
                                    size_t cap) {
  if (warning && cap > 0) warning[0] = '\0';
  PAR_RETURN_ERROR_IF(!layout, PAR_ERR_NULL, "par_layout_init_parallel: layout is NULL");
  PAR_RETURN_ERROR_IF(world < 1, PAR_ERR_INVALID, "world size must be >= 1 (got %d)", world);
  PAR_RETURN_ERROR_IF(mp < 1, PAR_ERR_INVALID, "model parallel size must be >= 1 (got %d)", mp);
  PAR_RETURN_ERROR_IF(pp < 1, PAR_ERR_INVALID, "pipeline parallel size must be >= 1 (got %d)", pp);
  /* Kept from the original: a too large mp is a mistake common enough (a config written for
   * a bigger machine) to be forgiven with a warning; pp is not, since it changes the model's
   * partition. */
  if (mp > world) {
    if (warning && cap > 0)
      snprintf(warning, cap,
               "model parallel size %d is larger than the world size %d; using %d instead", mp,
               world, world);
    mp = world;
  }
  PAR_RETURN_ERROR_IF(world % mp != 0, PAR_ERR_INVALID,
                      "world size %d is not divisible by model parallel size %d", world, mp);
  long long mp_pp = (long long)mp * pp;
  PAR_RETURN_ERROR_IF(world % mp_pp != 0, PAR_ERR_INVALID,
                      "world size %d is not divisible by model parallel size * pipeline "
                      "parallel size %lld (mp %d, pp %d)",
                      world, mp_pp, mp, pp);

  static const char *const names[3] = {"dp", "pp", "mp"};
  const int sizes[3] = {-1, pp, mp};
  return par_layout_init(layout, world, 3, names, sizes);
}

/* ---------------------------------------------------------------------------------------- */
/* Dims by name                                                                             */
/* ---------------------------------------------------------------------------------------- */

int par_layout_find(const par_layout *layout, const char *name) {
  if (!layout || !name) return -1;
  for (int i = 0; i < layout->ndims; i++)
    if (strcmp(layout->name[i], name) == 0) return i;
  return -1;
}

void par_layout_format_dims(const par_layout *layout, par_dims dims, char *buf, size_t cap) {
  if (!buf || cap == 0) return;
  buf[0] = '\0';
  if (!layout) return;
  size_t len = 0;
  for (int i = 0; i < layout->ndims; i++) {
    if (!(dims & (1u << i))) continue;
    int n = snprintf(buf + len, cap - len, "%s%s", len ? "," : "", layout->name[i]);
    if (n < 0 || (size_t)n >= cap - len) return; /* truncated; buf stays terminated */
    len += (size_t)n;
  }
}

par_status par_layout_parse_dims(const par_layout *layout, const char *names, par_dims *out) {
  PAR_RETURN_ERROR_IF(!layout || !names || !out, PAR_ERR_NULL,
                      "par_layout_parse_dims: layout, names and out must not be NULL");
  char all[PAR_LAYOUT_MAX_DIMS * (PAR_LAYOUT_NAME_MAX + 1)];
  par_layout_format_dims(layout, (1u << layout->ndims) - 1, all, sizeof all);

  par_dims dims = 0;
  const char *p = names;
  for (;;) {
    while (*p == ' ') p++;
    const char *start = p;
    while (*p && *p != ',' && *p != ' ') p++;
    size_t len = (size_t)(p - start);
    while (*p == ' ') p++;
    PAR_RETURN_ERROR_IF(len == 0, PAR_ERR_INVALID, "empty dim name in \"%.60s\" (the dims are %s)",
                        names, all);
    PAR_RETURN_ERROR_IF(*p && *p != ',', PAR_ERR_INVALID,
                        "dim names in \"%.60s\" must be separated by commas", names);
    int found = -1;
    for (int i = 0; i < layout->ndims; i++)
      if (strlen(layout->name[i]) == len && memcmp(layout->name[i], start, len) == 0) found = i;
    PAR_RETURN_ERROR_IF(found < 0, PAR_ERR_INVALID, "unknown dim '%.*s' (the dims are %s)",
                        (int)(len > 40 ? 40 : len), start, all);
    PAR_RETURN_ERROR_IF(dims & (1u << found), PAR_ERR_INVALID,
                        "dim '%s' is listed twice in \"%.60s\"", layout->name[found], names);
    dims |= 1u << found;
    if (!*p) break;
    p++; /* the comma */
  }
  *out = dims;
  return PAR_OK;
}

/* ---------------------------------------------------------------------------------------- */
/* Coordinates                                                                              */
/* ---------------------------------------------------------------------------------------- */

/* The distance in ranks between neighbours along dim i: the product of the later sizes. */
static int dim_stride(const par_layout *l, int i) {
  int s = 1;
  for (int j = i + 1; j < l->ndims; j++) s *= l->size[j];
  return s;
}

static int rank_valid(const par_layout *l, int rank) { return rank >= 0 && rank < l->world; }

int par_layout_coord(const par_layout *layout, int rank, int dim) {
  if (!layout || !rank_valid(layout, rank) || dim < 0 || dim >= layout->ndims) return -1;
  return (rank / dim_stride(layout, dim)) % layout->size[dim];
}

int par_layout_rank(const par_layout *layout, const int *coords) {
  if (!layout || !coords) return -1;
  int rank = 0;
  for (int i = 0; i < layout->ndims; i++) {
    if (coords[i] < 0 || coords[i] >= layout->size[i]) return -1;
    rank = rank * layout->size[i] + coords[i];
  }
  return rank;
}

int par_layout_shift(const par_layout *layout, int rank, int dim, int delta) {
  int c = par_layout_coord(layout, rank, dim);
  if (c < 0) return -1;
  int n = layout->size[dim];
  int moved = (int)(((long long)c + delta % n + n) % n);
  return rank + (moved - c) * dim_stride(layout, dim);
}

/* ---------------------------------------------------------------------------------------- */
/* Groups over a set of dims                                                                */
/* ---------------------------------------------------------------------------------------- */

static int dims_valid(const par_layout *l, par_dims dims) { return (dims >> l->ndims) == 0; }

/* The row-major number of rank's coordinates restricted to the dims in (or not in) `dims`. */
static int sub_index(const par_layout *l, par_dims dims, int rank, int in_set) {
  int idx = 0;
  for (int i = 0; i < l->ndims; i++) {
    if (!!(dims & (1u << i)) != in_set) continue;
    idx = idx * l->size[i] + (rank / dim_stride(l, i)) % l->size[i];
  }
  return idx;
}

int par_layout_group_size(const par_layout *layout, par_dims dims) {
  if (!layout || !dims_valid(layout, dims)) return -1;
  int n = 1;
  for (int i = 0; i < layout->ndims; i++)
    if (dims & (1u << i)) n *= layout->size[i];
  return n;
}

int par_layout_group_count(const par_layout *layout, par_dims dims) {
  int n = par_layout_group_size(layout, dims);
  return n < 1 ? -1 : layout->world / n;
}

int par_layout_group_id(const par_layout *layout, par_dims dims, int rank) {
  if (!layout || !dims_valid(layout, dims) || !rank_valid(layout, rank)) return -1;
  return sub_index(layout, dims, rank, 0);
}

int par_layout_group_index(const par_layout *layout, par_dims dims, int rank) {
  if (!layout || !dims_valid(layout, dims) || !rank_valid(layout, rank)) return -1;
  return sub_index(layout, dims, rank, 1);
}

par_status par_layout_group_ranks(const par_layout *layout, par_dims dims, int id, int *ranks) {
  PAR_RETURN_ERROR_IF(!layout || !ranks, PAR_ERR_NULL,
                      "par_layout_group_ranks: layout and ranks must not be NULL");
  PAR_RETURN_ERROR_IF(!dims_valid(layout, dims), PAR_ERR_INVALID,
                      "dim set 0x%x names dims beyond the layout's %d", (unsigned)dims,
                      layout->ndims);
  int count = par_layout_group_count(layout, dims);
  PAR_RETURN_ERROR_IF(id < 0 || id >= count, PAR_ERR_INVALID,
                      "group number %d is out of range: there are %d groups", id, count);

  /* Decode the group number into the coordinates of the dims outside the set (row-major, so
   * from the last dim backwards), then enumerate the dims in the set the same way. */
  int coords[PAR_LAYOUT_MAX_DIMS];
  int rest = id;
  for (int i = layout->ndims - 1; i >= 0; i--) {
    if (dims & (1u << i)) continue;
    coords[i] = rest % layout->size[i];
    rest /= layout->size[i];
  }
  int size = par_layout_group_size(layout, dims);
  for (int k = 0; k < size; k++) {
    int r = k;
    for (int i = layout->ndims - 1; i >= 0; i--) {
      if (!(dims & (1u << i))) continue;
      coords[i] = r % layout->size[i];
      r /= layout->size[i];
    }
    ranks[k] = par_layout_rank(layout, coords);
  }
  return PAR_OK;
}
