/* The device side of docs/protocol.md (lw_device.h), a port of world_models/backends/devices/emulator.py:
 * HELLO and sessions, the per-session response cache, sequence numbers, LOAD_MODEL into a double
 * buffer, PREDICT / ROLLOUT / ENCODE on lw_model (float for the esp32 kind, fixed point for fpga),
 * STATS, RESET, ACKs. One device per program (its state is static); nothing is allocated: the
 * platform's buffers are carved once in lw_device_init.
 *
 * Scratch layout: two lw_model structs (the active model and the one a COMMIT checks), then the
 * inference arena; without a cfg->cache, the response cache takes up to half of what is left, at the
 * end. A command's rows are run in as few parts as the arena allows (rows are independent): a part
 * the arena cannot hold is halved, and only a single row that does not fit is answered TOO_LARGE. */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "cobs.h"
#include "crc32.h"
#include "frame.h"
#include "json.h" /* lw_msg: 64-bit numbers in messages */
#include "lw_device.h"
#include "lw_model.h"
#include "lw_platform.h"

#define FIRMWARE_VERSION ((0u << 16) | (1u << 8) | 0u) /* major << 16 | minor << 8 | patch */
#define MIN_FRAME (LW_OVERHEAD + 64u)                  /* the smallest max_frame a host accepts */
#define MAX_FRAME (16u << 20)                          /* the largest */
#define HELLO_HEAD 40u
#define ACK_MIN_MS 50u
#define ALIGN 16u
#define LOAD_US_PER_KB 10000u /* a first guess of the time a COMMIT takes (CRC and checks), generous */
#define CTL_SIZE (LW_OVERHEAD + 2u + LW_MAX_ERROR_MESSAGE)

enum {
    CAP_PREDICT = 0x01,
    CAP_ROLLOUT = 0x02,
    CAP_ENCODE = 0x04,
    CAP_RESUMABLE_LOAD = 0x08,
    CAP_FIXED_POINT = 0x10 /* takes and answers int32 fixed-point tensors (dtype 3) */
};

enum { LOAD_BEGIN = 0, LOAD_CHUNK = 1, LOAD_COMMIT = 2 };

/* STATS counters, named as the Python emulator names them. */
enum {
    C_FRAMES_IN,
    C_FRAMES_OUT,
    C_FRAMES_BAD,
    C_FRAMES_IGNORED,
    C_HELLO,
    C_EXECUTED,
    C_LOAD_MODEL,
    C_PREDICT,
    C_ROLLOUT,
    C_ENCODE,
    C_STATS,
    C_RESET,
    C_DUPLICATES,
    C_STALE,
    C_ERRORS,
    C_ROWS_PREDICTED,
    C_ROWS_ENCODED,
    C_LOAD_BYTES,
    C_COUNT
};

static const char *const counter_names[C_COUNT] = {
    "frames_in", "frames_out", "frames_bad", "frames_ignored", "hello",     "executed",
    "load_model", "predict",   "rollout",    "encode",         "stats",     "reset",
    "duplicates", "stale",     "errors",     "rows_predicted", "rows_encoded", "load_bytes",
};

typedef struct {
    uint32_t seq;
    uint32_t crc; /* CRC-32 of the request's payload */
    uint32_t size; /* bytes of the cached response frame (decoded) */
    uint8_t command;
    uint8_t valid;
} cache_entry;

typedef struct {
    uint32_t id;
    uint32_t last_seq; /* the last sequence number run */
    uint32_t next;     /* the ring position the next response takes (the oldest one) */
    uint64_t stamp;    /* when it last said HELLO: the oldest session is forgotten first */
    uint8_t used;
    cache_entry entries[LW_DEVICE_CACHE_DEPTH];
    uint8_t *slots; /* depth decoded frames of max_frame bytes */
} session;

typedef struct {
    uint32_t t;    /* history steps used */
    uint32_t h;    /* horizon (1 for PREDICT and ENCODE) */
    uint32_t rows; /* rows that were known to fit the arena at once */
} fit_memo;

typedef struct {
    lw_device_config cfg;
    uint8_t ready;
    size_t max_encoded;
    uint32_t depth; /* responses kept per session */
    session sessions[LW_DEVICE_SESSIONS];
    uint32_t current;
    uint64_t clock;
    /* receiving */
    size_t rx_len;
    uint8_t skipping; /* inside an oversize frame: drop bytes up to the next delimiter */
    /* the model, double-buffered: index `active` is in use, the other takes a transfer */
    lw_model *model[2];
    uint8_t *file[2];
    uint32_t active;
    uint8_t has_model;
    uint32_t model_size;
    uint32_t model_crc;
    lw_model_info info;
    /* a LOAD_MODEL transfer in progress */
    uint8_t transfer_open;
    uint32_t transfer_size;
    uint32_t transfer_crc;
    uint32_t held;
    /* inference */
    uint8_t *arena_base;
    size_t arena_size;
    fit_memo fit[3]; /* PREDICT, ROLLOUT, ENCODE */
    uint32_t predict_us;
    uint32_t encode_us;
    uint32_t load_us_per_kb;
    /* counters */
    uint64_t counters[C_COUNT];
    uint32_t touched; /* bit i: counter i was counted (STATS lists only those, as the emulator) */
    uint64_t started_ms;
} device;

static device dev;
static uint8_t ctl[CTL_SIZE]; /* answers that are never cached: HELLO, STALE_SEQUENCE, versions, ACKs */

/* ------------------------------------------------------------------ helpers */
static void fail(char *err, const char *fmt, ...) {
    va_list args;
    va_start(args, fmt);
    vsnprintf(err, LW_ERR_LEN, fmt, args);
    va_end(args);
}

static void count(uint32_t counter, uint64_t n) {
    dev.counters[counter] += n;
    dev.touched |= 1u << counter;
}

static size_t align_up(size_t n) { return (n + ALIGN - 1u) & ~(size_t)(ALIGN - 1u); }

static void *take(lw_arena *arena, size_t bytes) {
    size_t start = align_up(arena->used);
    if (start > arena->size || bytes > arena->size - start) return NULL;
    arena->used = start + bytes;
    return arena->base + start;
}

static uint32_t min_u32(uint32_t a, uint32_t b) { return a < b ? a : b; }

/* Bytes of a float32 / int32 block of a * b * c elements, in uint64_t (size_t is 32 bits on rv32),
 * UINT64_MAX when even that overflows. */
static uint64_t f32_bytes(uint64_t a, uint64_t b, uint64_t c) {
    uint64_t n = a;
    if (b && n > UINT64_MAX / b) return UINT64_MAX;
    n *= b;
    if (c && n > UINT64_MAX / c) return UINT64_MAX;
    n *= c;
    return n > UINT64_MAX / 4u ? UINT64_MAX : n * 4u;
}

/* take() of f32_bytes(a, b, c): NULL when the block does not fit the arena (or a size_t). */
static void *take_f32(lw_arena *arena, uint64_t a, uint64_t b, uint64_t c) {
    uint64_t bytes = f32_bytes(a, b, c);
    if (bytes > arena->size) return NULL;
    return take(arena, (size_t)bytes);
}

static uint8_t *slot_of(const session *s, uint32_t index) {
    return s->slots + (size_t)index * dev.cfg.max_frame;
}

static const char *kind_name(void) { return dev.cfg.kind == LW_KIND_FPGA ? "fpga" : "esp32"; }

static uint16_t capabilities(void) {
    uint16_t caps = CAP_PREDICT | CAP_ROLLOUT | CAP_RESUMABLE_LOAD;
    return (uint16_t)(caps | (dev.cfg.kind == LW_KIND_FPGA ? CAP_FIXED_POINT : CAP_ENCODE));
}

/* ------------------------------------------------------------------ sending */
static void send_raw(const uint8_t *raw, size_t n) {
    size_t cap = dev.max_encoded + 1u;
    size_t m = lw_cobs_encode(raw, n, dev.cfg.frame_out, cap);
    if (m == 0) return; /* cannot happen: a frame is at most max_frame bytes */
    dev.cfg.frame_out[m] = 0;
    lw_platform_write(dev.cfg.frame_out, m + 1u);
}

/* Header and CRC around the payload already at raw + 12; returns the frame's size. */
static size_t build_reply(uint8_t *raw, const lw_header *req, uint8_t flags, size_t payload_len) {
    count(C_FRAMES_OUT, 1);
    lw_header h = {LW_PROTOCOL_VERSION, req->command, (uint8_t)(LW_FLAG_RESPONSE | flags), req->seq,
                   (uint32_t)payload_len};
    return lw_frame_finish(raw, &h);
}

/* An error response (code u16, message) into raw, whose payload may take `cap` bytes. */
static size_t build_error(uint8_t *raw, size_t cap, const lw_header *req, lw_status code, const char *message) {
    count(C_ERRORS, 1);
    size_t m = strlen(message);
    if (m > LW_MAX_ERROR_MESSAGE) m = LW_MAX_ERROR_MESSAGE;
    if (m > cap - 2u) m = cap - 2u;
    lw_put_u16(raw + LW_HEADER_SIZE, (uint16_t)code);
    memcpy(raw + LW_HEADER_SIZE + 2u, message, m);
    return build_reply(raw, req, LW_FLAG_ERROR, 2u + m);
}

static size_t ctl_cap(void) {
    size_t cap = CTL_SIZE - LW_OVERHEAD;
    return cap < dev.cfg.max_frame - LW_OVERHEAD ? cap : dev.cfg.max_frame - LW_OVERHEAD;
}

static void send_error_now(const lw_header *req, lw_status code, const char *message) {
    send_raw(ctl, build_error(ctl, ctl_cap(), req, code, message));
}

/* An ACK announcing `ms` before a long command (none below ACK_MIN_MS). */
static void ack(const lw_header *req, uint64_t ms) {
    if (ms < ACK_MIN_MS) return;
    lw_put_u32(ctl + LW_HEADER_SIZE, ms > 0xFFFFFFFFu ? 0xFFFFFFFFu : (uint32_t)ms);
    send_raw(ctl, build_reply(ctl, req, LW_FLAG_ACK, 4u));
}

/* ------------------------------------------------------------------ sessions */
static void clear_cache(session *s) {
    for (uint32_t i = 0; i < LW_DEVICE_CACHE_DEPTH; i++) s->entries[i].valid = 0;
}

/* Make `id` the current session: one remembered resumes, a new one replaces the oldest. */
static void switch_session(uint32_t id) {
    uint32_t pick = LW_DEVICE_SESSIONS;
    for (uint32_t i = 0; i < LW_DEVICE_SESSIONS; i++) {
        if (dev.sessions[i].used && dev.sessions[i].id == id) pick = i;
    }
    if (pick == LW_DEVICE_SESSIONS) {
        for (uint32_t i = 0; i < LW_DEVICE_SESSIONS && pick == LW_DEVICE_SESSIONS; i++) {
            if (!dev.sessions[i].used) pick = i;
        }
        if (pick == LW_DEVICE_SESSIONS) { /* all taken: forget the one that said HELLO longest ago */
            pick = 0;
            for (uint32_t i = 1; i < LW_DEVICE_SESSIONS; i++) {
                if (dev.sessions[i].stamp < dev.sessions[pick].stamp) pick = i;
            }
        }
        session *s = &dev.sessions[pick];
        s->id = id;
        s->last_seq = 0;
        s->next = 0;
        s->used = 1;
        clear_cache(s);
    }
    dev.sessions[pick].stamp = ++dev.clock;
    dev.current = pick;
}

static const cache_entry *find_cached(const session *s, uint32_t seq) {
    for (uint32_t i = 0; i < dev.depth; i++) {
        if (s->entries[i].valid && s->entries[i].seq == seq) return &s->entries[i];
    }
    return NULL;
}

/* ------------------------------------------------------------------ HELLO */
static void hello(const lw_header *req, const uint8_t *p) {
    char err[LW_ERR_LEN];
    count(C_HELLO, 1);
    if (req->length != 8u) {
        send_error_now(req, LW_BAD_PAYLOAD, "HELLO takes 8 bytes");
        return;
    }
    if (!(p[0] <= LW_PROTOCOL_VERSION && LW_PROTOCOL_VERSION <= p[1])) {
        fail(err, "the host speaks versions %u to %u; this device speaks %u", p[0], p[1], LW_PROTOCOL_VERSION);
        send_error_now(req, LW_UNSUPPORTED_VERSION, err);
        return;
    }
    uint32_t id = lw_get_u32(p + 4);
    if (id != dev.sessions[dev.current].id) switch_session(id);
    uint8_t *out = ctl + LW_HEADER_SIZE;
    out[0] = LW_PROTOCOL_VERSION;
    out[1] = dev.cfg.kind;
    lw_put_u16(out + 2, capabilities());
    lw_put_u32(out + 4, FIRMWARE_VERSION);
    lw_put_u32(out + 8, dev.cfg.max_frame);
    lw_put_u32(out + 12, dev.cfg.max_model);
    lw_put_u32(out + 16, dev.has_model ? dev.model_size : 0u);
    lw_put_u32(out + 20, dev.has_model ? dev.model_crc : 0u);
    lw_put_u16(out + 24, (uint16_t)dev.depth);
    lw_put_u16(out + 26, (uint16_t)LW_DEVICE_SESSIONS);
    lw_put_u32(out + 28, dev.arena_size > 0xFFFFFFFFu ? 0xFFFFFFFFu : (uint32_t)dev.arena_size);
    lw_put_u32(out + 32, dev.cfg.max_rows);
    out[36] = dev.cfg.kind == LW_KIND_FPGA ? (uint8_t)LW_FRAC_BITS : 0u;
    out[37] = out[38] = out[39] = 0;
    size_t name = strlen(dev.cfg.name);
    if (name > ctl_cap() - HELLO_HEAD) name = ctl_cap() - HELLO_HEAD;
    memcpy(out + HELLO_HEAD, dev.cfg.name, name);
    send_raw(ctl, build_reply(ctl, req, 0, HELLO_HEAD + name));
}

/* ------------------------------------------------------------------ commands */
typedef struct {
    const lw_header *req;
    const uint8_t *payload;
    size_t n;
    uint8_t *out; /* the response payload */
    size_t cap;   /* its room: max_frame - 16 */
    size_t len;   /* bytes written */
    char *err;
} call;

static lw_status need_model(char *err) {
    if (dev.has_model) return LW_OK;
    fail(err, "no model loaded; send LOAD_MODEL");
    return LW_NO_MODEL;
}

/* bytes is 64-bit: an answer's size is computed in uint64_t (f32_bytes), never in a 32-bit size_t. */
static lw_status answer_fits(call *c, uint64_t bytes) {
    if (bytes <= c->cap) return LW_OK;
    char num[24] = "more than 2^64";
    lw_msg m;
    if (bytes != UINT64_MAX) {
        lw_msg_init(&m, num, sizeof num);
        lw_msg_u64(&m, bytes); /* not %llu: every libc's printf here has %lu, not all have %llu */
    }
    fail(c->err, "the answer (%s bytes) exceeds the frame", num);
    return LW_TOO_LARGE;
}

static lw_status rows_allowed(uint32_t rows, char *err) {
    if (dev.cfg.max_rows == 0 || rows <= dev.cfg.max_rows) return LW_OK;
    fail(err, "%lu rows in one call; this device takes at most %lu (HELLO's max_rows)", (unsigned long)rows,
         (unsigned long)dev.cfg.max_rows);
    return LW_TOO_LARGE;
}

/* ---- LOAD_MODEL */
static void reset_fit(void) { memset(dev.fit, 0, sizeof dev.fit); }

/* Check the .lq40 in the spare buffer (size bytes) and make it the active model; the old one stays
 * active when it fails. */
static lw_status install_spare(uint32_t size, uint32_t crc, const char *source, char *err) {
    uint32_t spare = 1u - dev.active;
    char why[LW_ERR_LEN];
    why[0] = 0;
    if (lw_model_load(dev.model[spare], dev.file[spare], size, why) != LW_OK) {
        fail(err, "%s: %s", source, why);
        return LW_BAD_MODEL;
    }
    lw_model_info info;
    lw_model_get_info(dev.model[spare], &info);
    if (dev.cfg.kind == LW_KIND_FPGA && !info.fixed_point_ok) {
        fail(err, "%s: the fixed-point (FPGA) predictor needs a Q4 predictor (make one with leworld quantize "
                  "--mode full)", source);
        return LW_BAD_MODEL;
    }
    dev.active = spare;
    dev.has_model = 1;
    dev.model_size = size;
    dev.model_crc = crc;
    dev.info = info;
    reset_fit();
    return LW_OK;
}

static lw_status put_load_answer(call *c, uint32_t held, uint32_t crc) {
    lw_put_u32(c->out, held);
    lw_put_u32(c->out + 4, crc);
    c->len = 8;
    return LW_OK;
}

static lw_status commit(call *c, uint32_t crc) {
    uint32_t got = dev.held, size = dev.transfer_size;
    dev.transfer_open = 0;
    dev.held = 0;
    uint32_t actual = lw_crc32(0, dev.file[1u - dev.active], got);
    if (got != size || actual != crc) {
        fail(c->err, "received %lu of %lu bytes with CRC-32 %08lx, expected %08lx; send BEGIN again", (unsigned long)got,
             (unsigned long)size, (unsigned long)actual, (unsigned long)crc);
        return LW_LOAD_CHECKSUM;
    }
    ack(c->req, (uint64_t)size / 1024u * dev.load_us_per_kb / 1000u);
    uint64_t start = lw_platform_millis();
    lw_status st = install_spare(size, crc, "the loaded model", c->err);
    if (st != LW_OK) return st;
    uint64_t kb = size / 1024u + 1u, elapsed_us = (lw_platform_millis() - start) * 1000u;
    uint64_t measured = 2u * elapsed_us / kb; /* announce twice the last time taken */
    dev.load_us_per_kb = measured > 0xFFFFFFFFu ? 0xFFFFFFFFu : (uint32_t)measured;
    return put_load_answer(c, size, crc);
}

static lw_status do_load(call *c) {
    if (c->n < 12u) {
        fail(c->err, "LOAD_MODEL takes at least 12 bytes");
        return LW_BAD_PAYLOAD;
    }
    uint8_t op = c->payload[0];
    uint32_t first = lw_get_u32(c->payload + 4), crc = lw_get_u32(c->payload + 8);
    const uint8_t *data = c->payload + 12;
    size_t n = c->n - 12u;
    if (op == LOAD_BEGIN) {
        if (first > dev.cfg.max_model) {
            fail(c->err, "a model of %lu bytes; this device holds %lu", (unsigned long)first,
                 (unsigned long)dev.cfg.max_model);
            return LW_TOO_LARGE;
        }
        if (!dev.transfer_open || dev.transfer_size != first || dev.transfer_crc != crc) {
            dev.transfer_open = 1; /* a new transfer; the same one resumes where it stopped */
            dev.transfer_size = first;
            dev.transfer_crc = crc;
            dev.held = 0;
        }
        return put_load_answer(c, dev.held, crc);
    }
    if (!dev.transfer_open || dev.transfer_crc != crc) {
        fail(c->err, "no transfer of CRC-32 %08lx in progress; send BEGIN", (unsigned long)crc);
        return LW_LOAD_OFFSET;
    }
    if (op == LOAD_CHUNK) {
        if (first != dev.held) {
            fail(c->err, "chunk at offset %lu; expected %lu", (unsigned long)first, (unsigned long)dev.held);
            return LW_LOAD_OFFSET;
        }
        if ((uint64_t)first + n > dev.transfer_size) {
            fail(c->err, "chunk runs past the announced size %lu", (unsigned long)dev.transfer_size);
            return LW_TOO_LARGE;
        }
        memcpy(dev.file[1u - dev.active] + dev.held, data, n);
        dev.held += (uint32_t)n;
        count(C_LOAD_BYTES, n);
        return put_load_answer(c, dev.held, crc);
    }
    if (op == LOAD_COMMIT) return commit(c, crc);
    fail(c->err, "unknown LOAD_MODEL operation %u", op);
    return LW_BAD_PAYLOAD;
}

/* ---- PREDICT / ROLLOUT / ENCODE */
typedef struct {
    uint8_t command;
    uint8_t dtype;       /* of the inputs and the answer: LW_DTYPE_F32, or LW_DTYPE_I32 on the fpga */
    const lw_tensor *z;  /* z_hist [B, T, D], or pixels [B, S, S, 3] for ENCODE */
    const lw_tensor *a;  /* a_hist [B, T, A] */
    const lw_tensor *f;  /* a_future [B, H, A] */
    uint32_t t;          /* history steps used: the last min(T, history) */
    uint32_t h;          /* horizon; 1 for PREDICT and ENCODE */
    uint8_t *answer;     /* the answer tensor's data */
} job;

static int all_finite(const lw_tensor *t) {
    for (size_t i = 0; i < t->count; i++) {
        if ((lw_get_u32(t->data + 4 * i) & 0x7F800000u) == 0x7F800000u) return 0;
    }
    return 1;
}

static void dims_text(char *text, size_t cap, const lw_tensor *t) {
    size_t used = (size_t)snprintf(text, cap, "[");
    for (uint8_t d = 0; d < t->ndim && used < cap; d++) {
        used += (size_t)snprintf(text + used, cap - used, d ? ", %lu" : "%lu", (unsigned long)t->dims[d]);
    }
    if (used < cap) snprintf(text + used, cap - used, "]");
}

static int dtype_ok(uint8_t dtype) {
    return dtype == LW_DTYPE_F32 || (dtype == LW_DTYPE_I32 && dev.cfg.kind == LW_KIND_FPGA);
}

static const char *dtype_words(void) {
    return dev.cfg.kind == LW_KIND_FPGA ? "float32 (or int32 fixed point)" : "float32";
}

static lw_status check_histories(const lw_tensor *z, const lw_tensor *a, char *err) {
    if (z->dtype != a->dtype || !dtype_ok(z->dtype) || z->ndim != 3 || a->ndim != 3) {
        fail(err, "z_hist and a_hist must be %s [B, T, D] and [B, T, A]", dtype_words());
        return LW_BAD_INPUT;
    }
    if (z->dims[2] != dev.info.latent_dim || a->dims[2] != dev.info.action_dim || z->dims[0] != a->dims[0] ||
        z->dims[1] != a->dims[1]) {
        char zs[64], as[64];
        dims_text(zs, sizeof zs, z);
        dims_text(as, sizeof as, a);
        fail(err, "z_hist %s and a_hist %s; the model needs [B, T, %lu] and [B, T, %lu]", zs, as,
             (unsigned long)dev.info.latent_dim, (unsigned long)dev.info.action_dim);
        return LW_BAD_INPUT;
    }
    if (z->dtype == LW_DTYPE_F32 && !(all_finite(z) && all_finite(a))) {
        fail(err, "z_hist or a_hist holds NaN or inf");
        return LW_BAD_INPUT;
    }
    return LW_OK;
}

/* Rows [first, first + n) of a tensor [B, steps, width], keeping its last `keep` steps, into dst
 * (int32 or float32 as the job computes). Float inputs to the fixed-point path are quantized. */
static lw_status copy_rows(const job *j, const lw_tensor *t, uint32_t first, uint32_t n, uint32_t keep, void *dst,
                           lw_arena *arena, char *err) {
    uint32_t steps = t->dims[1], width = t->dims[2];
    size_t row = (size_t)keep * width, skip = (size_t)(steps - keep) * width;
    const uint8_t *src = t->data + ((size_t)first * steps * width + skip) * 4u;
    int quantize = dev.cfg.kind == LW_KIND_FPGA && j->dtype == LW_DTYPE_F32;
    float *staging = quantize ? take(arena, row * sizeof(float)) : NULL;
    if (quantize && staging == NULL) {
        fail(err, "no scratch left for one row");
        return LW_TOO_LARGE;
    }
    for (uint32_t r = 0; r < n; r++, src += (size_t)steps * width * 4u) {
        if (dev.cfg.kind == LW_KIND_ESP32) {
            lw_load_f32(src, (float *)dst + r * row, row);
        } else if (!quantize) {
            lw_load_i32(src, (int32_t *)dst + r * row, row);
        } else {
            lw_load_f32(src, staging, row);
            lw_status st = lw_fixed_quantize(staging, row, (int32_t *)dst + r * row, err);
            if (st != LW_OK) return st;
        }
    }
    return LW_OK;
}

/* The answer rows [first, first + n) from the part's output. */
static void store_rows(const job *j, uint32_t first, uint32_t n, const void *out) {
    size_t width = (size_t)j->h * dev.info.latent_dim, count_ = (size_t)n * width;
    uint8_t *dst = j->answer + (size_t)first * width * 4u;
    if (dev.cfg.kind == LW_KIND_ESP32) {
        lw_store_f32(dst, (const float *)out, count_);
    } else if (j->dtype == LW_DTYPE_I32) {
        lw_store_i32(dst, (const int32_t *)out, count_);
    } else {
        const float scale = 1.0f / (float)(1u << LW_FRAC_BITS); /* exact: a power of two */
        const int32_t *q = (const int32_t *)out;
        for (size_t i = 0; i < count_; i++) {
            float v = (float)q[i] * scale;
            uint32_t bits;
            memcpy(&bits, &v, 4);
            lw_put_u32(dst + 4 * i, bits);
        }
    }
}

static lw_status no_room(uint32_t n, char *err) {
    fail(err, "%lu row(s) of this call need more than the device's %lu bytes of scratch", (unsigned long)n,
         (unsigned long)dev.arena_size);
    return LW_TOO_LARGE;
}

/* What is left of `arena` after its allocations, as a fresh arena for lw_model (NULL base: nothing). */
static lw_arena rest_of(const lw_arena *arena) {
    size_t start = align_up(arena->used);
    lw_arena rest = {NULL, 0, 0};
    if (start <= arena->size) rest = (lw_arena){arena->base + start, arena->size - start, 0};
    return rest;
}

static lw_status run_encode_part(const job *j, uint32_t first, uint32_t n, lw_arena *arena, void *out, char *err) {
    size_t frame = (size_t)dev.info.image_size * dev.info.image_size * 3u;
    lw_arena rest = rest_of(arena);
    lw_status st = lw_model_encode(dev.model[dev.active], &rest, j->z->data + (size_t)first * frame, n, (float *)out, err);
    if (st == LW_OK) store_rows(j, first, n, out);
    return st;
}

/* One part of a job: rows [first, first + n), every buffer from the arena. */
static lw_status run_part(const job *j, uint32_t first, uint32_t n, char *err) {
    lw_arena arena = {dev.arena_base, dev.arena_size, 0};
    const lw_model *m = dev.model[dev.active];
    uint32_t d = dev.info.latent_dim, a = dev.info.action_dim;
    int rollout = j->command == LW_CMD_ROLLOUT;
    void *out = take_f32(&arena, n, j->h, d);
    if (out == NULL) return no_room(n, err);
    if (j->command == LW_CMD_ENCODE) return run_encode_part(j, first, n, &arena, out, err);
    void *z = take_f32(&arena, n, j->t, d);
    void *ah = take_f32(&arena, n, j->t, a);
    void *f = rollout ? take_f32(&arena, n, j->h, a) : NULL;
    if (z == NULL || ah == NULL || (rollout && f == NULL)) return no_room(n, err);
    size_t mark = arena.used; /* staging for quantization is given back after each copy */
    lw_status st = copy_rows(j, j->z, first, n, j->t, z, &arena, err);
    arena.used = mark;
    if (st == LW_OK) st = copy_rows(j, j->a, first, n, j->t, ah, &arena, err);
    arena.used = mark;
    if (st == LW_OK && rollout) st = copy_rows(j, j->f, first, n, j->h, f, &arena, err);
    arena.used = mark;
    if (st != LW_OK) return st;
    lw_arena rest = rest_of(&arena);
    if (dev.cfg.kind == LW_KIND_ESP32) {
        st = rollout ? lw_model_rollout(m, &rest, z, ah, f, n, j->t, j->h, (float *)out, err)
                     : lw_model_predict(m, &rest, z, ah, n, j->t, (float *)out, err);
    } else {
        st = rollout ? lw_fixed_rollout(m, &rest, z, ah, f, n, j->t, j->h, (int32_t *)out, err)
                     : lw_fixed_predict(m, &rest, z, ah, n, j->t, (int32_t *)out, err);
    }
    if (st == LW_OK) store_rows(j, first, n, out);
    return st;
}

static fit_memo *memo_of(uint8_t command) {
    return &dev.fit[command == LW_CMD_PREDICT ? 0 : command == LW_CMD_ROLLOUT ? 1 : 2];
}

/* All rows, in parts as large as the arena takes: a part answered TOO_LARGE is halved, and the size
 * that worked is remembered for this shape (history steps, horizon) until another model loads. */
static lw_status run_rows(const job *j, uint32_t rows, char *err) {
    fit_memo *memo = memo_of(j->command);
    int known = memo->rows && memo->t == j->t && memo->h == j->h, halved = 0;
    uint32_t step = known ? min_u32(memo->rows, rows) : rows, first = 0;
    while (first < rows) {
        uint32_t n = min_u32(step, rows - first);
        lw_status st = run_part(j, first, n, err);
        if (st == LW_TOO_LARGE && n > 1u) {
            step = n / 2u;
            halved = 1;
            continue;
        }
        if (st != LW_OK) return st;
        first += n;
    }
    if (halved) *memo = (fit_memo){j->t, j->h, step};
    return LW_OK;
}

static void learn(uint32_t *estimate_us, uint64_t start_ms, uint64_t rows) {
    uint64_t us = (lw_platform_millis() - start_ms) * 1000u / (rows ? rows : 1u);
    uint64_t next = *estimate_us ? (3u * (uint64_t)*estimate_us + us) / 4u : us;
    *estimate_us = next > 0xFFFFFFFFu ? 0xFFFFFFFFu : (uint32_t)next;
}

/* Announce, run and store a job whose answer tensor has `ndim` dims. */
static lw_status run_job(call *c, job *j, uint32_t rows, const uint32_t *dims, uint8_t ndim) {
    /* The answer's size in uint64_t, checked against the frame before anything is written. */
    size_t head = 2u + 4u * ndim;
    uint64_t data = f32_bytes(rows, j->h, dev.info.latent_dim);
    uint64_t bytes = data == UINT64_MAX ? UINT64_MAX : head + data;
    lw_status st = rows_allowed(rows, c->err);
    if (st == LW_OK) st = answer_fits(c, bytes);
    if (st != LW_OK) return st;
    uint64_t work = (uint64_t)rows * j->h;
    uint32_t *estimate = j->command == LW_CMD_ENCODE ? &dev.encode_us : &dev.predict_us;
    ack(c->req, work * *estimate * 5u / 4u / 1000u);
    lw_tensor_put_head(c->out, j->dtype, ndim, dims);
    j->answer = c->out + head;
    uint64_t start = lw_platform_millis();
    count(j->command == LW_CMD_ENCODE ? C_ROWS_ENCODED : C_ROWS_PREDICTED, work);
    st = run_rows(j, rows, c->err);
    if (st != LW_OK) return st;
    learn(estimate, start, work);
    c->len = (size_t)bytes; /* at most c->cap */
    return LW_OK;
}

static uint32_t used_steps(uint32_t t) { return t < dev.info.history ? t : dev.info.history; }

static lw_status do_predict(call *c) {
    lw_tensor t[2];
    lw_status st = need_model(c->err);
    if (st == LW_OK) st = lw_tensors_parse(c->payload, c->n, t, 2, c->err);
    if (st == LW_OK) st = check_histories(&t[0], &t[1], c->err);
    if (st != LW_OK) return st;
    job j = {LW_CMD_PREDICT, t[0].dtype, &t[0], &t[1], NULL, used_steps(t[0].dims[1]), 1, NULL};
    uint32_t dims[2] = {t[0].dims[0], dev.info.latent_dim};
    return run_job(c, &j, t[0].dims[0], dims, 2);
}

static lw_status do_rollout(call *c) {
    lw_tensor t[3];
    lw_status st = need_model(c->err);
    if (st == LW_OK) st = lw_tensors_parse(c->payload, c->n, t, 3, c->err);
    if (st == LW_OK) st = check_histories(&t[0], &t[1], c->err);
    if (st != LW_OK) return st;
    const lw_tensor *f = &t[2];
    uint32_t b = t[0].dims[0];
    if (f->dtype != t[0].dtype || f->ndim != 3 || f->dims[0] != b) {
        fail(c->err, "a_future must be %s [%lu, H, %lu]", dtype_words(), (unsigned long)b,
             (unsigned long)dev.info.action_dim);
        return LW_BAD_INPUT;
    }
    if (f->dims[2] != dev.info.action_dim || (f->dtype == LW_DTYPE_F32 && !all_finite(f))) {
        fail(c->err, "a_future must be finite [B, H, %lu]", (unsigned long)dev.info.action_dim);
        return LW_BAD_INPUT;
    }
    job j = {LW_CMD_ROLLOUT, t[0].dtype, &t[0], &t[1], f, used_steps(t[0].dims[1]), f->dims[1], NULL};
    uint32_t dims[3] = {b, f->dims[1], dev.info.latent_dim};
    return run_job(c, &j, b, dims, 3);
}

static lw_status do_encode(call *c) {
    if (!(capabilities() & CAP_ENCODE)) {
        fail(c->err, "the %s device does not encode frames", kind_name());
        return LW_UNSUPPORTED;
    }
    lw_tensor t;
    lw_status st = need_model(c->err);
    if (st == LW_OK) st = lw_tensors_parse(c->payload, c->n, &t, 1, c->err);
    if (st != LW_OK) return st;
    uint32_t s = dev.info.image_size;
    if (t.dtype != LW_DTYPE_U8 || t.ndim != 4 || t.dims[1] != s || t.dims[2] != s || t.dims[3] != 3) {
        fail(c->err, "pixels must be uint8 [B, %lu, %lu, 3]", (unsigned long)s, (unsigned long)s);
        return LW_BAD_INPUT;
    }
    if (!dev.info.has_encoder_weights) {
        fail(c->err, "the loaded model has no encoder weights");
        return LW_UNSUPPORTED;
    }
    job j = {LW_CMD_ENCODE, LW_DTYPE_F32, &t, NULL, NULL, 1, 1, NULL};
    uint32_t dims[2] = {t.dims[0], dev.info.latent_dim};
    return run_job(c, &j, t.dims[0], dims, 2);
}

/* ---- STATS and RESET */
static lw_status put_stat(call *c, uint16_t *entries, const char *key, uint64_t value) {
    size_t k = strlen(key);
    if (c->len + 1u + k + 8u > c->cap) {
        fail(c->err, "the answer (more than %lu bytes) exceeds the frame", (unsigned long)c->cap);
        return LW_TOO_LARGE;
    }
    c->out[c->len] = (uint8_t)k;
    memcpy(c->out + c->len + 1u, key, k);
    lw_put_u64(c->out + c->len + 1u + k, value);
    c->len += 1u + k + 8u;
    (*entries)++;
    return LW_OK;
}

static lw_status do_stats(call *c) {
    if (c->n != 0) {
        fail(c->err, "STATS takes no payload");
        return LW_BAD_PAYLOAD;
    }
    uint16_t entries = 0;
    lw_status st = LW_OK;
    c->len = 2;
    for (uint32_t i = 0; i < C_COUNT && st == LW_OK; i++) {
        if (dev.touched & (1u << i)) st = put_stat(c, &entries, counter_names[i], dev.counters[i]);
    }
    if (st == LW_OK) st = put_stat(c, &entries, "model_size", dev.has_model ? dev.model_size : 0u);
    if (st == LW_OK) st = put_stat(c, &entries, "model_crc32", dev.has_model ? dev.model_crc : 0u);
    if (st == LW_OK) st = put_stat(c, &entries, "load_held", dev.transfer_open ? dev.held : 0u);
    if (st == LW_OK) st = put_stat(c, &entries, "uptime_ms", lw_platform_millis() - dev.started_ms);
    if (st == LW_OK) st = put_stat(c, &entries, "instret", lw_platform_instret());
    if (st != LW_OK) return st;
    lw_put_u16(c->out, entries);
    return LW_OK;
}

static lw_status do_reset(call *c) {
    if (c->n != 1u) {
        fail(c->err, "RESET takes 1 byte");
        return LW_BAD_PAYLOAD;
    }
    for (uint32_t i = 0; i < LW_DEVICE_SESSIONS; i++) clear_cache(&dev.sessions[i]); /* not their numbers */
    dev.transfer_open = 0;
    dev.held = 0;
    memset(dev.counters, 0, sizeof dev.counters);
    dev.touched = 0;
    dev.started_ms = lw_platform_millis();
    if (c->payload[0] & 0x01u) {
        dev.has_model = 0;
        dev.model_size = 0;
        dev.model_crc = 0;
    }
    c->len = 0;
    return LW_OK;
}

/* Run a command (sequence checks passed); its response, errors included, is built at raw. */
static size_t execute(const lw_header *req, const uint8_t *payload, uint8_t *raw) {
    char err[LW_ERR_LEN];
    lw_status (*handler)(call *) = NULL;
    uint32_t counter = C_COUNT;
    switch (req->command) {
    case LW_CMD_LOAD_MODEL: handler = do_load; counter = C_LOAD_MODEL; break;
    case LW_CMD_PREDICT: handler = do_predict; counter = C_PREDICT; break;
    case LW_CMD_ROLLOUT: handler = do_rollout; counter = C_ROLLOUT; break;
    case LW_CMD_ENCODE: handler = do_encode; counter = C_ENCODE; break;
    case LW_CMD_STATS: handler = do_stats; counter = C_STATS; break;
    case LW_CMD_RESET: handler = do_reset; counter = C_RESET; break;
    default: break;
    }
    size_t cap = dev.cfg.max_frame - LW_OVERHEAD;
    if (handler == NULL) {
        fail(err, "unknown command 0x%02x", req->command);
        return build_error(raw, cap, req, LW_UNKNOWN_COMMAND, err);
    }
    count(C_EXECUTED, 1);
    count(counter, 1);
    err[0] = 0;
    call c = {req, payload, req->length, raw + LW_HEADER_SIZE, cap, 0, err};
    lw_status st = handler(&c);
    if (st != LW_OK) return build_error(raw, cap, req, st, err[0] ? err : "failed");
    return build_reply(raw, req, 0, c.len);
}

/* ------------------------------------------------------------------ frames */
static void handle(const uint8_t *raw, const lw_header *req) {
    char err[LW_ERR_LEN];
    const uint8_t *payload = raw + LW_HEADER_SIZE;
    count(C_FRAMES_IN, 1);
    if (req->flags & LW_FLAG_RESPONSE) { /* an echo, or another device's frame */
        count(C_FRAMES_IGNORED, 1);
        return;
    }
    if (req->version != LW_PROTOCOL_VERSION) {
        fail(err, "protocol version %u is not spoken here; this device speaks %u", req->version, LW_PROTOCOL_VERSION);
        send_error_now(req, LW_UNSUPPORTED_VERSION, err);
        return;
    }
    if (req->command == LW_CMD_HELLO) {
        hello(req, payload);
        return;
    }
    session *s = &dev.sessions[dev.current];
    uint32_t crc = lw_crc32(0, payload, req->length);
    const cache_entry *cached = find_cached(s, req->seq);
    if (cached != NULL && cached->command == req->command && cached->crc == crc) {
        count(C_DUPLICATES, 1);
        send_raw(slot_of(s, (uint32_t)(cached - s->entries)), cached->size);
        return;
    }
    if (req->seq == 0 || req->seq <= s->last_seq) {
        count(C_STALE, 1);
        fail(err, "sequence %lu is not after the last one run (%lu); not run again", (unsigned long)req->seq,
             (unsigned long)s->last_seq);
        send_error_now(req, LW_STALE_SEQUENCE, err);
        return;
    }
    s->last_seq = req->seq;
    uint32_t index = s->next;
    s->next = (index + 1u) % dev.depth;
    s->entries[index].valid = 0;
    uint8_t *out = slot_of(s, index);
    size_t n = execute(req, payload, out);
    s->entries[index] = (cache_entry){req->seq, crc, (uint32_t)n, req->command, 1};
    send_raw(out, n);
}

/* The COBS bytes collected in frame_in (a delimiter ended them): decode in place, check, answer. */
static void frame_done(void) {
    char err[LW_ERR_LEN];
    size_t n = 0;
    lw_header req;
    if (lw_cobs_decode(dev.cfg.frame_in, dev.rx_len, dev.cfg.frame_in, &n, err) != LW_OK ||
        lw_frame_parse(dev.cfg.frame_in, n, dev.cfg.max_frame, &req, err) != LW_OK) {
        count(C_FRAMES_BAD, 1); /* not answered: its sequence number cannot be trusted */
        return;
    }
    handle(dev.cfg.frame_in, &req);
}

void lw_device_feed(const uint8_t *bytes, size_t n) {
    size_t i = 0;
    if (!dev.ready) return;
    while (i < n) {
        const uint8_t *zero = memchr(bytes + i, 0, n - i);
        size_t end = zero ? (size_t)(zero - bytes) : n, len = end - i;
        if (!dev.skipping && dev.rx_len + len > dev.max_encoded) { /* longer than any frame: drop it */
            count(C_FRAMES_BAD, 1);
            dev.skipping = 1;
            dev.rx_len = 0;
        }
        if (!dev.skipping) {
            memcpy(dev.cfg.frame_in + dev.rx_len, bytes + i, len);
            dev.rx_len += len;
        }
        if (zero == NULL) return;
        if (dev.skipping) {
            dev.skipping = 0;
        } else if (dev.rx_len > 0) { /* empty frames (a lone delimiter) are ignored */
            frame_done();
        }
        dev.rx_len = 0;
        i = end + 1u;
    }
}

/* ------------------------------------------------------------------ set-up */
size_t lw_device_cache_bytes(uint32_t max_frame) {
    return (size_t)LW_DEVICE_CACHE_DEPTH * LW_DEVICE_SESSIONS * max_frame;
}

static lw_status check_config(const lw_device_config *cfg, char *err) {
    if (cfg == NULL) {
        fail(err, "no device config");
        return LW_INTERNAL;
    }
    if (cfg->kind != LW_KIND_ESP32 && cfg->kind != LW_KIND_FPGA) {
        fail(err, "unknown device kind %u; expected 1 (esp32) or 2 (fpga)", cfg->kind);
        return LW_INTERNAL;
    }
    if (cfg->max_frame < MIN_FRAME || cfg->max_frame > MAX_FRAME) {
        fail(err, "max_frame %lu is outside %lu..%lu", (unsigned long)cfg->max_frame, (unsigned long)MIN_FRAME,
             (unsigned long)MAX_FRAME);
        return LW_INTERNAL;
    }
    if (!cfg->frame_in || !cfg->frame_out || !cfg->model_active || !cfg->model_transfer || !cfg->scratch ||
        cfg->max_model == 0) {
        fail(err, "a device buffer is missing (frame_in, frame_out, model_active, model_transfer or scratch)");
        return LW_INTERNAL;
    }
    if (((uintptr_t)cfg->scratch % ALIGN) != 0) {
        fail(err, "scratch must be %u-byte aligned", ALIGN);
        return LW_INTERNAL;
    }
    return LW_OK;
}

/* Place the two model structs, the response cache and the arena. */
static lw_status carve(char *err) {
    size_t model_bytes = align_up(lw_model_struct_size()), slot_ring = (size_t)LW_DEVICE_SESSIONS * dev.cfg.max_frame;
    if (2u * model_bytes > dev.cfg.scratch_size) {
        fail(err, "scratch of %lu bytes cannot hold two models' tables (%lu bytes)", (unsigned long)dev.cfg.scratch_size,
             (unsigned long)(2u * model_bytes));
        return LW_INTERNAL;
    }
    dev.model[0] = (lw_model *)(void *)dev.cfg.scratch;
    dev.model[1] = (lw_model *)(void *)(dev.cfg.scratch + model_bytes);
    uint8_t *base = dev.cfg.scratch + 2u * model_bytes, *cache = dev.cfg.cache;
    size_t room = dev.cfg.scratch_size - 2u * model_bytes, depth;
    if (cache != NULL) {
        depth = dev.cfg.cache_size / slot_ring;
    } else {
        depth = room / 2u / slot_ring;
        depth = depth > LW_DEVICE_CACHE_DEPTH ? LW_DEVICE_CACHE_DEPTH : depth;
        room -= depth * slot_ring;
        cache = base + room;
    }
    dev.depth = (uint32_t)(depth > LW_DEVICE_CACHE_DEPTH ? LW_DEVICE_CACHE_DEPTH : depth);
    if (dev.depth == 0) {
        fail(err, "no room for a response cache of one %lu-byte frame per session (give cache of %lu bytes)",
             (unsigned long)dev.cfg.max_frame, (unsigned long)lw_device_cache_bytes(dev.cfg.max_frame));
        return LW_INTERNAL;
    }
    for (uint32_t i = 0; i < LW_DEVICE_SESSIONS; i++) dev.sessions[i].slots = cache + (size_t)i * dev.depth * dev.cfg.max_frame;
    dev.arena_base = base;
    dev.arena_size = room & ~(size_t)(ALIGN - 1u);
    return LW_OK;
}

lw_status lw_device_init(const lw_device_config *cfg, char *err) {
    memset(&dev, 0, sizeof dev);
    lw_status st = check_config(cfg, err);
    if (st != LW_OK) return st;
    dev.cfg = *cfg;
    if (dev.cfg.name == NULL) dev.cfg.name = cfg->kind == LW_KIND_FPGA ? "leworld-fw fpga" : "leworld-fw esp32";
    dev.max_encoded = lw_cobs_max_encoded(cfg->max_frame);
    st = carve(err);
    if (st != LW_OK) return st;
    dev.file[0] = cfg->model_active;
    dev.file[1] = cfg->model_transfer;
    dev.sessions[0].used = 1; /* before any HELLO, requests count in session 0, as on the emulators */
    dev.predict_us = cfg->predict_row_us;
    dev.encode_us = cfg->encode_row_us;
    dev.load_us_per_kb = LOAD_US_PER_KB;
    dev.started_ms = lw_platform_millis();
    dev.ready = 1;
    return LW_OK;
}

lw_status lw_device_install(const uint8_t *lq40, uint32_t size, char *err) {
    if (!dev.ready) {
        fail(err, "lw_device_init first");
        return LW_INTERNAL;
    }
    if (size > dev.cfg.max_model) {
        fail(err, "a model of %lu bytes; this device holds %lu", (unsigned long)size, (unsigned long)dev.cfg.max_model);
        return LW_TOO_LARGE;
    }
    uint8_t *spare = dev.file[1u - dev.active];
    if (spare != lq40) memmove(spare, lq40, size);
    dev.transfer_open = 0; /* its buffer now holds this model */
    dev.held = 0;
    return install_spare(size, lw_crc32(0, spare, size), "the preloaded model", err);
}

uint64_t lw_device_counter(const char *name) {
    for (uint32_t i = 0; i < C_COUNT; i++) {
        if (strcmp(name, counter_names[i]) == 0) return dev.counters[i];
    }
    return 0;
}
