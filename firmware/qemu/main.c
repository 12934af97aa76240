/* The firmware on QEMU `virt` rv32: every buffer static, the kind from the boot config word, a model
 * preloaded by QEMU installed at start, then every byte the UART receives goes to the device core.
 *
 * Boot is silent on success: the UART is the protocol link, and QEMU keeps what the firmware sends
 * before a host opens the pty. A problem (a bad config word, a refused preloaded model) is printed
 * between two frame delimiters, which a host drops as one undecodable frame. */
#include <stddef.h>
#include <stdint.h>

#include "boot.h"
#include "lw_device.h"
#include "lw_platform.h"
#include "memmap.h"
#include "uart.h"

#define MAX_FRAME 65536u
#define MAX_MODEL (16u * 1024u * 1024u) /* as the emulators and the host build */
#define FRAME_BUFFER (MAX_FRAME + MAX_FRAME / 254u + 2u)
#define CACHE_BYTES ((size_t)LW_DEVICE_CACHE_DEPTH * LW_DEVICE_SESSIONS * MAX_FRAME)
#define SCRATCH_BYTES (40u * 1024u * 1024u)
#define READ_CHUNK 256u

#define NOINIT(align) __attribute__((section(".noinit"), aligned(align)))
static uint8_t frame_in[FRAME_BUFFER] NOINIT(16);
static uint8_t frame_out[FRAME_BUFFER] NOINIT(16);
static uint8_t model_active[MAX_MODEL] NOINIT(64);
static uint8_t model_transfer[MAX_MODEL] NOINIT(64);
static uint8_t cache[CACHE_BYTES] NOINIT(64);
static uint8_t scratch[SCRATCH_BYTES] NOINIT(64);

static lw_device_config config;

static void report(const char *what, const char *detail) {
    lw_uart_putc(0);
    lw_uart_puts("leworld-fw (qemu-rv32): ");
    lw_uart_puts(what);
    if (detail != NULL) {
        lw_uart_puts(": ");
        lw_uart_puts(detail);
    }
    lw_uart_puts("\r\n");
    lw_uart_putc(0);
}

static void halt(void) {
    for (;;) __asm__ volatile("wfi");
}

int main(void) {
    lw_uart_init();
    uint8_t kind = lw_boot_kind();
    if (kind == 0) {
        report("the boot config word at 0x86000000 must be 0 or 1 (esp32) or 2 (fpga)", "halted");
        halt();
    }
    config = (lw_device_config){
        .kind = kind,
        .name = kind == LW_KIND_FPGA ? "leworld-fw fpga (qemu-rv32)" : "leworld-fw esp32 (qemu-rv32)",
        .max_frame = MAX_FRAME,
        .max_model = MAX_MODEL,
        .frame_in = frame_in,
        .frame_out = frame_out,
        .model_active = model_active,
        .model_transfer = model_transfer,
        .scratch = scratch,
        .scratch_size = sizeof scratch,
        .cache = cache,
        .cache_size = sizeof cache,
    };
    char err[LW_ERR_LEN];
    if (lw_device_init(&config, err) != LW_OK) {
        report("cannot start the device", err);
        halt();
    }
    uint32_t size = lw_boot_model_size();
    if (size != 0u && lw_device_install(lw_boot_model(), size, err) != LW_OK) {
        report("the preloaded model was refused; starting without one", err);
    }
    static uint8_t chunk[READ_CHUNK];
    for (;;) {
        size_t n = lw_uart_read_available(chunk, sizeof chunk);
        if (n != 0u) {
            lw_device_feed(chunk, n);
        } else {
            lw_uart_wait();
        }
    }
}
