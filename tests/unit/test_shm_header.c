/*
 * test_shm_header.c -- a member attaching to a group's segment trusts nothing in its header
 * (another process wrote it): only this version's header for this many members, whose every
 * offset follows from the member count and the chunk size and whose size is the mapping's,
 * is accepted; any other field value is PAR_ERR_PROTOCOL.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "backends/shm/shm.h"

static void test_valid(void **state) {
  (void)state;
  int ns[] = {1, 2, 3, 8, 64};
  size_t chunks[] = {4096, 256u << 10, SHM_MAX_CHUNK};
  for (size_t i = 0; i < sizeof ns / sizeof ns[0]; i++)
    for (size_t c = 0; c < sizeof chunks / sizeof chunks[0]; c++) {
      shm_header h;
      par__shm_layout(&h, ns[i], chunks[c]);
      h.magic = SHM_MAGIC;
      assert_int_equal(par__shm_header_check(&h, h.size, ns[i]), PAR_OK);
      assert_true(h.off_p2p + (size_t)ns[i] * ns[i] * h.p2p_stride <= h.size);
    }
}

static void test_each_field(void **state) {
  (void)state;
  shm_header good;
  par__shm_layout(&good, 3, 256u << 10);
  good.magic = SHM_MAGIC;
  /* Each field changed alone, by one and by a lot. */
  size_t offs[] = {offsetof(shm_header, chunk),      offsetof(shm_header, p2p_chunk),
                   offsetof(shm_header, p2p_slots),  offsetof(shm_header, size),
                   offsetof(shm_header, off_ctrl),   offsetof(shm_header, off_data),
                   offsetof(shm_header, off_p2p),    offsetof(shm_header, p2p_stride),
                   offsetof(shm_header, magic)};
  uint64_t deltas[] = {1, 4096, 1ull << 40, (uint64_t)-4096};
  for (size_t i = 0; i < sizeof offs / sizeof offs[0]; i++)
    for (size_t d = 0; d < sizeof deltas / sizeof deltas[0]; d++) {
      shm_header h = good;
      uint64_t v;
      memcpy(&v, (char *)&h + offs[i], sizeof v);
      v += deltas[d];
      memcpy((char *)&h + offs[i], &v, sizeof v);
      assert_int_equal(par__shm_header_check(&h, good.size, 3), PAR_ERR_PROTOCOL);
    }
  shm_header h = good;
  h.version++;
  assert_int_equal(par__shm_header_check(&h, good.size, 3), PAR_ERR_PROTOCOL);
  assert_non_null(strstr(par__error_detail(), "version"));
  h = good;
  assert_int_equal(par__shm_header_check(&h, good.size, 4), PAR_ERR_PROTOCOL);
  assert_non_null(strstr(par__error_detail(), "3 members"));
  assert_int_equal(par__shm_header_check(&h, good.size - 4096, 3), PAR_ERR_PROTOCOL);
  assert_int_equal(par__shm_header_check(&h, good.size + 4096, 3), PAR_ERR_PROTOCOL);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_valid),
      cmocka_unit_test(test_each_field),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
