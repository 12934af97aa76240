/* The device: docs/protocol.md's state machine over a byte stream, independent of the platform.
 *
 * A platform layer fills an lw_device_config with every buffer the device will ever use, calls
 * lw_device_init once, optionally lw_device_install (a model preloaded in memory), then hands every
 * byte it receives to lw_device_feed; responses leave through lw_platform_write (lw_platform.h).
 */
#ifndef LW_DEVICE_H
#define LW_DEVICE_H

#include <stddef.h>
#include <stdint.h>

#include "lw_status.h"

enum { LW_KIND_ESP32 = 1, LW_KIND_FPGA = 2 };

typedef struct {
    uint8_t kind;              /* LW_KIND_ESP32 or LW_KIND_FPGA */
    const char *name;          /* HELLO's name, e.g. "leworld-fw esp32 (host)" */
    uint32_t max_frame;        /* largest decoded frame taken and sent (65536 as the emulators) */
    uint32_t max_model;        /* largest .lq40 held */
    uint8_t *frame_in;         /* max_frame + max_frame / 254 + 2 bytes: the receive buffer */
    uint8_t *frame_out;        /* max_frame + max_frame / 254 + 2 bytes: the encoded response */
    uint8_t *model_active;     /* max_model bytes: the model in use */
    uint8_t *model_transfer;   /* max_model bytes: a LOAD_MODEL in progress (swapped on COMMIT) */
    uint8_t *scratch;          /* inference scratch, 16-byte aligned */
    size_t scratch_size;
    /* Optional (zero-initialise for the defaults): */
    uint8_t *cache;            /* the response cache, lw_device_cache_bytes(max_frame) bytes for the full 16
                                * responses x 4 sessions (less memory keeps fewer responses a session, as
                                * HELLO then says); NULL: the cache takes up to half of scratch */
    size_t cache_size;
    uint32_t max_rows;         /* the most rows (batch entries) one PREDICT / ROLLOUT / ENCODE takes, as HELLO
                                * says; 0: as many as fit a frame (rows beyond the scratch are run in parts) */
    uint32_t predict_row_us;   /* first guess of microseconds per predicted latent, for ACKs (0: none until
                                * measured); every command's measured time refines it */
    uint32_t encode_row_us;    /* the same per encoded frame */
} lw_device_config;

/* Bytes of a full response cache (LW_DEVICE_CACHE_DEPTH x LW_DEVICE_SESSIONS frames of max_frame). */
#define LW_DEVICE_CACHE_DEPTH 16u
#define LW_DEVICE_SESSIONS 4u
size_t lw_device_cache_bytes(uint32_t max_frame);

lw_status lw_device_init(const lw_device_config *cfg, char *err);

/* Install an .lq40 already in memory (copied into model_active), as `--model` on the emulators. */
lw_status lw_device_install(const uint8_t *lq40, uint32_t size, char *err);

/* Consume received bytes; complete frames are answered before this returns. */
void lw_device_feed(const uint8_t *bytes, size_t n);

/* A STATS counter by name ("executed", "predict", ...; 0 for one never counted), for the platform's
 * own reporting (the host build prints "stopped after N commands"). */
uint64_t lw_device_counter(const char *name);

#endif
