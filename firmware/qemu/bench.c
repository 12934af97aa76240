/* Retired instructions per predicted latent, measured in the firmware itself under
 * `qemu-system-riscv32 -icount shift=0` (so minstret counts instructions; without -icount QEMU's
 * minstret is host time). Runs the float path (the esp32 kind) and the fixed-point path (the fpga
 * kind) of the preloaded model (memmap.h) straight through lw_model.h, with no protocol and no UART
 * traffic inside the measured region, and prints one line per measurement on the UART:
 *
 *   bench path=float op=predict rows=1 T=3 instret=N per_row=N
 *
 * then "bench done" and powers QEMU off (the sifive_test finisher at 0x100000). Inputs are
 * deterministic pseudo-random latents in [-1, 1) and actions in [-1, 1). */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "boot.h"
#include "lw_model.h"
#include "lw_platform.h"
#include "uart.h"

#define MAX_ROWS 8u
#define MAX_D 1024u
#define MAX_T 16u
#define SCRATCH_BYTES (32u * 1024u * 1024u)
#define FINISHER ((volatile uint32_t *)(uintptr_t)0x00100000u)

static uint8_t scratch[SCRATCH_BYTES] __attribute__((section(".noinit"), aligned(64)));
static uint64_t model_storage[65536]; /* 512 KiB: lw_model_struct_size() is checked at run time */
static float z[MAX_ROWS * MAX_T * MAX_D], a[MAX_ROWS * MAX_T * 64u], out[MAX_ROWS * MAX_D];
static int32_t zq[MAX_ROWS * MAX_T * MAX_D], aq[MAX_ROWS * MAX_T * 64u], outq[MAX_ROWS * MAX_D];
static uint8_t pixels[128u * 128u * 3u];

static uint32_t rng = 12345u;
static float uniform(void) { /* [-1, 1) */
    rng = rng * 1664525u + 1013904223u;
    return (float)(int32_t)(rng >> 8 & 0xFFFFFFu) / 8388608.0f - 1.0f;
}

static void finish(uint32_t code) {
    *FINISHER = code ? (0x3333u | code << 16) : 0x5555u;
    for (;;) __asm__ volatile("wfi");
}

static void say(const char *path, const char *op, uint32_t rows, uint32_t t, uint64_t n) {
    char line[160];
    snprintf(line, sizeof line, "bench path=%s op=%s rows=%lu T=%lu instret=%llu per_row=%llu\r\n", path, op,
             (unsigned long)rows, (unsigned long)t, (unsigned long long)n, (unsigned long long)(n / rows));
    lw_uart_puts(line);
}

static void fail(const char *what, const char *err) {
    lw_uart_puts("bench error: ");
    lw_uart_puts(what);
    lw_uart_puts(": ");
    lw_uart_puts(err);
    lw_uart_puts("\r\n");
    finish(1);
}

int main(void) {
    lw_uart_init();
    char err[LW_ERR_LEN];
    uint32_t size = lw_boot_model_size();
    if (size == 0u) fail("no model", "preload one at 0x86001000");
    if (lw_model_struct_size() > sizeof model_storage) fail("model struct", "larger than model_storage");
    lw_model *m = (lw_model *)(void *)model_storage;
    uint64_t t0 = lw_platform_instret();
    if (lw_model_load(m, lw_boot_model(), size, err) != LW_OK) fail("lw_model_load", err);
    uint64_t t1 = lw_platform_instret();
    say("any", "load", 1, 0, t1 - t0);
    lw_model_info info;
    lw_model_get_info(m, &info);
    uint32_t d = info.latent_dim, na = info.action_dim, t = info.history;
    if (d > MAX_D || t > MAX_T || na > 64u || info.image_size > 128u) fail("model", "too large for the bench's buffers");
    for (uint32_t i = 0; i < MAX_ROWS * t * d; i++) z[i] = uniform();
    for (uint32_t i = 0; i < MAX_ROWS * t * na; i++) a[i] = uniform();
    lw_arena arena = {scratch, sizeof scratch, 0};
    static const uint32_t batches[] = {1u, 1u, MAX_ROWS};
    for (uint32_t k = 0; k < sizeof batches / sizeof batches[0]; k++) {
        uint32_t b = batches[k];
        t0 = lw_platform_instret();
        lw_status st = lw_model_predict(m, &arena, z, a, b, t, out, err);
        t1 = lw_platform_instret();
        if (st != LW_OK) fail("lw_model_predict", err);
        say("float", "predict", b, t, t1 - t0);
    }
    if (info.fixed_point_ok) {
        if (lw_fixed_quantize(z, (size_t)MAX_ROWS * t * d, zq, err) != LW_OK) fail("quantize", err);
        if (lw_fixed_quantize(a, (size_t)MAX_ROWS * t * na, aq, err) != LW_OK) fail("quantize", err);
        for (uint32_t k = 0; k < sizeof batches / sizeof batches[0]; k++) {
            uint32_t b = batches[k];
            t0 = lw_platform_instret();
            lw_status st = lw_fixed_predict(m, &arena, zq, aq, b, t, outq, err);
            t1 = lw_platform_instret();
            if (st != LW_OK) fail("lw_fixed_predict", err);
            say("fixed", "predict", b, t, t1 - t0);
        }
    } else {
        lw_uart_puts("bench note: the model's predictor is not all Q4_0, no fixed-point path\r\n");
    }
    if (info.has_encoder_weights) {
        uint32_t s = info.image_size;
        for (uint32_t i = 0; i < s * s * 3u; i++) pixels[i] = (uint8_t)(uniform() * 127.0f + 128.0f);
        t0 = lw_platform_instret();
        lw_status st = lw_model_encode(m, &arena, pixels, 1, out, err);
        t1 = lw_platform_instret();
        if (st != LW_OK) fail("lw_model_encode", err);
        say("float", "encode", 1, 0, t1 - t0);
    }
    lw_uart_puts("bench done\r\n");
    finish(0);
}
