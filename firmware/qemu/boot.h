/* What QEMU placed in RAM before the start (memmap.h): the device kind and a preloaded model. */
#ifndef LW_QEMU_BOOT_H
#define LW_QEMU_BOOT_H

#include <stdint.h>

/* The kind from the boot config word: LW_KIND_ESP32 (word 0 or 1), LW_KIND_FPGA (2); 0 for any other
 * word (a misconfiguration). */
uint8_t lw_boot_kind(void);

/* The preloaded .lq40 at LW_PRELOAD_ADDR: its size in bytes from its own header ("LQ40", u32 header
 * length, a JSON header whose top-level "data_size" the core's JSON reader reads; the data starts at
 * the next multiple of 64 after 8 + header length), or 0 when there is no magic there or the header
 * does not describe a size that fits. */
uint32_t lw_boot_model_size(void);

static inline const uint8_t *lw_boot_model(void) { return (const uint8_t *)(uintptr_t)0x86001000u; }

#endif
