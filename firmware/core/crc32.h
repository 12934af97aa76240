/* CRC-32 as zlib computes it (IEEE 802.3, reflected polynomial 0xEDB88320, init and final xor
 * 0xFFFFFFFF folded into the call): lw_crc32(0, p, n) == zlib.crc32(p[:n]), and chaining
 * lw_crc32(lw_crc32(0, a, na), b, nb) equals the CRC of a followed by b, as zlib.crc32(b, crc) does. */
#ifndef LW_CRC32_H
#define LW_CRC32_H

#include <stddef.h>
#include <stdint.h>

uint32_t lw_crc32(uint32_t crc, const uint8_t *p, size_t n);

#endif
