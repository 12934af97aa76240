/* Frame header, CRC and tensor payloads (see frame.h). */
#include "frame.h"

#include <stdio.h>
#include <string.h>

#include "crc32.h"

uint16_t lw_get_u16(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }

uint32_t lw_get_u32(const uint8_t *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

void lw_put_u16(uint8_t *p, uint16_t v) {
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}

void lw_put_u32(uint8_t *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}

void lw_put_u64(uint8_t *p, uint64_t v) {
    for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i));
}

void lw_load_f32(const uint8_t *src, float *dst, size_t n) {
    for (size_t i = 0; i < n; i++) {
        uint32_t bits = lw_get_u32(src + 4 * i);
        memcpy(&dst[i], &bits, 4);
    }
}

void lw_load_i32(const uint8_t *src, int32_t *dst, size_t n) {
    for (size_t i = 0; i < n; i++) dst[i] = (int32_t)lw_get_u32(src + 4 * i);
}

void lw_store_f32(uint8_t *dst, const float *src, size_t n) {
    for (size_t i = 0; i < n; i++) {
        uint32_t bits;
        memcpy(&bits, &src[i], 4);
        lw_put_u32(dst + 4 * i, bits);
    }
}

void lw_store_i32(uint8_t *dst, const int32_t *src, size_t n) {
    for (size_t i = 0; i < n; i++) lw_put_u32(dst + 4 * i, (uint32_t)src[i]);
}

lw_status lw_frame_parse(const uint8_t *raw, size_t n, size_t max_frame, lw_header *h, char *err) {
    if (n < LW_OVERHEAD) {
        snprintf(err, LW_ERR_LEN, "frame of %lu bytes is shorter than the 16-byte header and CRC", (unsigned long)n);
        return LW_BAD_PAYLOAD;
    }
    if (n > max_frame) {
        snprintf(err, LW_ERR_LEN, "frame of %lu bytes exceeds the largest frame, %lu bytes", (unsigned long)n,
                 (unsigned long)max_frame);
        return LW_BAD_PAYLOAD;
    }
    if (lw_crc32(0, raw, n - LW_CRC_SIZE) != lw_get_u32(raw + n - LW_CRC_SIZE)) {
        snprintf(err, LW_ERR_LEN, "CRC-32 mismatch: the frame was corrupted");
        return LW_BAD_PAYLOAD;
    }
    h->version = raw[0];
    h->command = raw[1];
    h->flags = raw[2];
    h->seq = lw_get_u32(raw + 4);
    h->length = lw_get_u32(raw + 8);
    if (raw[3] != 0 || (h->flags & ~LW_KNOWN_FLAGS) != 0) {
        snprintf(err, LW_ERR_LEN, "reserved header bits set (flags 0x%02x, reserved 0x%02x)", h->flags, raw[3]);
        return LW_BAD_PAYLOAD;
    }
    if (h->length != n - LW_OVERHEAD) {
        snprintf(err, LW_ERR_LEN, "header says %lu payload bytes, the frame holds %lu", (unsigned long)h->length,
                 (unsigned long)(n - LW_OVERHEAD));
        return LW_BAD_PAYLOAD;
    }
    return LW_OK;
}

size_t lw_frame_finish(uint8_t *raw, const lw_header *h) {
    raw[0] = h->version;
    raw[1] = h->command;
    raw[2] = h->flags;
    raw[3] = 0;
    lw_put_u32(raw + 4, h->seq);
    lw_put_u32(raw + 8, h->length);
    size_t n = LW_HEADER_SIZE + (size_t)h->length;
    lw_put_u32(raw + n, lw_crc32(0, raw, n));
    return n + LW_CRC_SIZE;
}

size_t lw_dtype_size(uint8_t dtype) {
    switch (dtype) {
    case LW_DTYPE_F32:
    case LW_DTYPE_I32:
        return 4;
    case LW_DTYPE_U8:
        return 1;
    default:
        return 0;
    }
}

/* The product of dims, or SIZE_MAX when any is 0 or it passes `limit` (the payload cannot hold it). */
static size_t bounded_count(const uint32_t *dims, uint8_t ndim, size_t limit) {
    size_t count = 1;
    for (uint8_t d = 0; d < ndim; d++) {
        if (dims[d] == 0 || dims[d] > limit || count > limit / dims[d]) return SIZE_MAX;
        count *= dims[d];
    }
    return count;
}

static void shape_text(char *text, size_t cap, const uint32_t *dims, uint8_t ndim) {
    size_t used = (size_t)snprintf(text, cap, "[");
    for (uint8_t d = 0; d < ndim && used < cap; d++) {
        used += (size_t)snprintf(text + used, cap - used, d ? ", %lu" : "%lu", (unsigned long)dims[d]);
    }
    if (used < cap) snprintf(text + used, cap - used, "]");
}

lw_status lw_tensors_parse(const uint8_t *payload, size_t n, lw_tensor *out, size_t count, char *err) {
    size_t offset = 0;
    for (size_t i = 0; i < count; i++) {
        lw_tensor *t = &out[i];
        if (offset + 2 > n) {
            snprintf(err, LW_ERR_LEN, "payload ends before tensor %lu", (unsigned long)i);
            return LW_BAD_PAYLOAD;
        }
        t->dtype = payload[offset];
        t->ndim = payload[offset + 1];
        size_t item = lw_dtype_size(t->dtype);
        if (item == 0) {
            snprintf(err, LW_ERR_LEN, "tensor %lu: unknown dtype code %u", (unsigned long)i, t->dtype);
            return LW_BAD_PAYLOAD;
        }
        if (t->ndim < 1 || t->ndim > LW_MAX_DIMS) {
            snprintf(err, LW_ERR_LEN, "tensor %lu: %u dims, expected 1 to %u", (unsigned long)i, t->ndim, LW_MAX_DIMS);
            return LW_BAD_PAYLOAD;
        }
        offset += 2;
        if (offset + 4u * t->ndim > n) {
            snprintf(err, LW_ERR_LEN, "payload ends inside tensor %lu's shape", (unsigned long)i);
            return LW_BAD_PAYLOAD;
        }
        for (uint8_t d = 0; d < t->ndim; d++) t->dims[d] = lw_get_u32(payload + offset + 4u * d);
        offset += 4u * t->ndim;
        size_t elements = bounded_count(t->dims, t->ndim, n);
        if (elements == SIZE_MAX || elements * item > n - offset) {
            char shape[64];
            shape_text(shape, sizeof shape, t->dims, t->ndim);
            snprintf(err, LW_ERR_LEN, "tensor %lu of shape %s does not fit the payload (%lu bytes)", (unsigned long)i,
                     shape, (unsigned long)n);
            return LW_BAD_PAYLOAD;
        }
        t->count = elements;
        t->data = payload + offset;
        offset += elements * item;
    }
    if (offset != n) {
        snprintf(err, LW_ERR_LEN, "%lu bytes after the last tensor", (unsigned long)(n - offset));
        return LW_BAD_PAYLOAD;
    }
    return LW_OK;
}

size_t lw_tensor_put_head(uint8_t *out, uint8_t dtype, uint8_t ndim, const uint32_t *dims) {
    out[0] = dtype;
    out[1] = ndim;
    for (uint8_t d = 0; d < ndim; d++) lw_put_u32(out + 2 + 4u * d, dims[d]);
    return 2u + 4u * ndim;
}
