/* Frames and payloads of the LeWorld device protocol (docs/protocol.md §1 to §3), as
 * world_models/backends/devices/protocol.py checks them: the 12-byte header, the CRC-32, tensors.
 * Everything is little-endian on the wire whatever the CPU. Nothing here allocates. */
#ifndef LW_FRAME_H
#define LW_FRAME_H

#include <stddef.h>
#include <stdint.h>

#include "lw_status.h"

#define LW_PROTOCOL_VERSION 2u
#define LW_HEADER_SIZE 12u
#define LW_CRC_SIZE 4u
#define LW_OVERHEAD 16u /* header and CRC around every payload */
#define LW_MAX_DIMS 4u
#define LW_MAX_ERROR_MESSAGE 1024u

enum { LW_FLAG_RESPONSE = 0x01, LW_FLAG_ERROR = 0x02, LW_FLAG_ACK = 0x04, LW_KNOWN_FLAGS = 0x07 };

enum {
    LW_CMD_HELLO = 0x01,
    LW_CMD_LOAD_MODEL = 0x02,
    LW_CMD_PREDICT = 0x03,
    LW_CMD_ROLLOUT = 0x04,
    LW_CMD_ENCODE = 0x05,
    LW_CMD_STATS = 0x06,
    LW_CMD_RESET = 0x07
};

/* Tensor dtype codes (§3): float32, uint8, int32 fixed point (HELLO's frac_bits fraction bits). */
enum { LW_DTYPE_F32 = 1, LW_DTYPE_U8 = 2, LW_DTYPE_I32 = 3 };

typedef struct {
    uint8_t version;
    uint8_t command;
    uint8_t flags;
    uint32_t seq;
    uint32_t length; /* payload bytes */
} lw_header;

typedef struct {
    uint8_t dtype;
    uint8_t ndim;
    uint32_t dims[LW_MAX_DIMS];
    size_t count;        /* elements: the product of dims */
    const uint8_t *data; /* count elements, little-endian, C order, unaligned */
} lw_tensor;

/* Little-endian loads and stores at any alignment. */
uint16_t lw_get_u16(const uint8_t *p);
uint32_t lw_get_u32(const uint8_t *p);
void lw_put_u16(uint8_t *p, uint16_t v);
void lw_put_u32(uint8_t *p, uint32_t v);
void lw_put_u64(uint8_t *p, uint64_t v);
void lw_load_f32(const uint8_t *src, float *dst, size_t n);
void lw_load_i32(const uint8_t *src, int32_t *dst, size_t n);
void lw_store_f32(uint8_t *dst, const float *src, size_t n);
void lw_store_i32(uint8_t *dst, const int32_t *src, size_t n);

/* Check decoded frame bytes as protocol.parse_frame_bytes does: at least 16 and at most max_frame
 * bytes, the CRC-32, no unknown flag or reserved bit, a length that matches. The payload is
 * raw + LW_HEADER_SIZE. LW_BAD_PAYLOAD with the problem in err otherwise. */
lw_status lw_frame_parse(const uint8_t *raw, size_t n, size_t max_frame, lw_header *h, char *err);

/* Write h's header into raw[0..12) and the CRC-32 after its payload, which the caller has put at
 * raw + LW_HEADER_SIZE (h->length bytes). Returns the frame's size, h->length + 16. */
size_t lw_frame_finish(uint8_t *raw, const lw_header *h);

/* Exactly `count` tensors filling payload[0..n), as protocol.unpack_tensors: a known dtype, 1 to 4
 * dims each >= 1, data inside the payload, nothing after the last. LW_BAD_PAYLOAD otherwise. */
lw_status lw_tensors_parse(const uint8_t *payload, size_t n, lw_tensor *out, size_t count, char *err);

/* Bytes of one element of a dtype code (0 for an unknown code). */
size_t lw_dtype_size(uint8_t dtype);

/* A tensor's head (dtype, ndim, dims) written at out; returns its size, 2 + 4 * ndim. */
size_t lw_tensor_put_head(uint8_t *out, uint8_t dtype, uint8_t ndim, const uint32_t *dims);

#endif
