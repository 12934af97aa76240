/* COBS encoding and decoding (see cobs.h). */
#include "cobs.h"

#include <stdio.h>
#include <string.h>

size_t lw_cobs_max_encoded(size_t n) { return n + n / 254u + 1u; }

/* One segment (bytes without a zero): 0xFF blocks of 254 bytes, then a block of the rest. */
static size_t encode_segment(const uint8_t *seg, size_t len, uint8_t *out, size_t o, size_t cap) {
    while (len >= 254u) {
        if (o + 255u > cap) return 0;
        out[o++] = 0xFF;
        memcpy(out + o, seg, 254u);
        o += 254u;
        seg += 254u;
        len -= 254u;
    }
    if (o + 1u + len > cap) return 0;
    out[o++] = (uint8_t)(len + 1u);
    memcpy(out + o, seg, len);
    return o + len;
}

size_t lw_cobs_encode(const uint8_t *in, size_t n, uint8_t *out, size_t cap) {
    size_t i = 0, o = 0;
    for (;;) {
        const uint8_t *zero = n > i ? memchr(in + i, 0, n - i) : NULL;
        size_t end = zero ? (size_t)(zero - in) : n;
        o = encode_segment(in + i, end - i, out, o, cap);
        if (o == 0) return 0;
        if (end == n) return o;
        i = end + 1u; /* the zero itself is what the block's code stands for */
    }
}

lw_status lw_cobs_decode(const uint8_t *in, size_t n, uint8_t *out, size_t *out_n, char *err) {
    size_t i = 0, o = 0;
    while (i < n) {
        size_t code = in[i];
        if (code == 0) {
            snprintf(err, LW_ERR_LEN, "zero byte at offset %lu inside a COBS frame", (unsigned long)i);
            return LW_BAD_PAYLOAD;
        }
        if (i + code > n) {
            snprintf(err, LW_ERR_LEN, "COBS block at offset %lu claims %lu bytes, only %lu remain", (unsigned long)i,
                     (unsigned long)(code - 1u), (unsigned long)(n - i - 1u));
            return LW_BAD_PAYLOAD;
        }
        if (code > 1u && memchr(in + i + 1u, 0, code - 1u) != NULL) {
            snprintf(err, LW_ERR_LEN, "zero byte inside a COBS block");
            return LW_BAD_PAYLOAD;
        }
        memmove(out + o, in + i + 1u, code - 1u);
        o += code - 1u;
        i += code;
        if (code != 0xFFu && i < n) out[o++] = 0;
    }
    *out_n = o;
    return LW_OK;
}
