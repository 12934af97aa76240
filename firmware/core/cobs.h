/* COBS (consistent overhead byte stuffing), as world_models/backends/devices/protocol.py does it
 * (docs/protocol.md §1): the encoded bytes hold no zero, so a 0x00 can end a frame. Byte for byte the
 * same encoding as protocol.cobs_encode, and the same refusals as protocol.cobs_decode. */
#ifndef LW_COBS_H
#define LW_COBS_H

#include <stddef.h>
#include <stdint.h>

#include "lw_status.h"

/* The most bytes COBS makes of n bytes, without the delimiter: n + n / 254 + 1. */
size_t lw_cobs_max_encoded(size_t n);

/* Encode in[0..n) into out (cap bytes; it must not overlap in). Returns the encoded length (no
 * delimiter), or 0 when cap is too small (every encoding is at least one byte long). */
size_t lw_cobs_encode(const uint8_t *in, size_t n, uint8_t *out, size_t cap);

/* Decode in[0..n) (no delimiter) into out, which may be in itself (decoding in place is safe: the
 * output never overtakes the input). LW_BAD_PAYLOAD, with the problem in err, for a zero byte or a
 * block that runs past the end; otherwise LW_OK and the decoded length in *out_n (at most n). */
lw_status lw_cobs_decode(const uint8_t *in, size_t n, uint8_t *out, size_t *out_n, char *err);

#endif
