/* zlib-compatible CRC-32, one table lookup per byte. The 1 KiB table is a const array computed
 * here at compile time so it lives in flash/rodata on the devices (no init call, no RAM). */
#include "crc32.h"

#define LW_CRC_POLY 0xEDB88320u

/* Entry i = CRC of the single byte i (8 shift/xor steps). */
#define LW_C1(c) (((c) & 1u) ? (LW_CRC_POLY ^ ((c) >> 1)) : ((c) >> 1))
#define LW_C8(i) LW_C1(LW_C1(LW_C1(LW_C1(LW_C1(LW_C1(LW_C1(LW_C1((uint32_t)(i)))))))))
#define LW_R4(i) LW_C8(i), LW_C8((i) + 1), LW_C8((i) + 2), LW_C8((i) + 3)
#define LW_R16(i) LW_R4(i), LW_R4((i) + 4), LW_R4((i) + 8), LW_R4((i) + 12)
#define LW_R64(i) LW_R16(i), LW_R16((i) + 16), LW_R16((i) + 32), LW_R16((i) + 48)

static const uint32_t lw_crc_table[256] = {LW_R64(0), LW_R64(64), LW_R64(128), LW_R64(192)};

uint32_t lw_crc32(uint32_t crc, const uint8_t *p, size_t n) {
    crc = ~crc; /* zlib keeps the running value inverted between calls */
    for (size_t i = 0; i < n; i++) {
        crc = lw_crc_table[(crc ^ p[i]) & 0xFFu] ^ (crc >> 8);
    }
    return ~crc;
}
