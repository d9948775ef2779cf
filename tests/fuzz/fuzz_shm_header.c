/*
 * fuzz_shm_header.c -- the check a member runs on a group segment's header before using it
 * (src/backends/shm/shm.c, par__shm_header_check): the header is written by another process.
 * Input: one byte for the member count (1..64), eight for the size of the mapping, then the
 * header's bytes. A header the check accepts must describe a layout whose every area lies
 * inside the mapping: control lines, data sets and point-to-point channels, in that order.
 */
#include <stdint.h>
#include <string.h>

#include "backends/shm/shm.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 9) return 0;
  int n = 1 + data[0] % 64;
  uint64_t mapped;
  memcpy(&mapped, data + 1, sizeof mapped);
  shm_header h;
  memset(&h, 0, sizeof h);
  memcpy(&h, data + 9, size - 9 < sizeof h ? size - 9 : sizeof h);
  if (par__shm_header_check(&h, (size_t)mapped, n) != PAR_OK) return 0;
  uint64_t N = (uint64_t)n;
  if (h.n != N || h.size != mapped) __builtin_trap();
  if (h.off_ctrl < sizeof(shm_header) || h.off_ctrl + N * sizeof(shm_ctrl) > h.off_data)
    __builtin_trap();
  if (h.chunk == 0 || h.off_data + N * 4 * h.chunk > h.off_p2p) __builtin_trap();
  if (h.p2p_stride < sizeof(shm_chan) + h.p2p_slots * (sizeof(shm_slot) + h.p2p_chunk))
    __builtin_trap();
  if (h.off_p2p + N * N * h.p2p_stride > h.size) __builtin_trap();
  return 0;
}
