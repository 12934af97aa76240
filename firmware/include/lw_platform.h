/* What a platform layer (host pty, QEMU virt rv32, ESP-IDF) gives the portable core.
 * The core never allocates: the platform hands it every buffer at start (lw_device.h). */
#ifndef LW_PLATFORM_H
#define LW_PLATFORM_H

#include <stddef.h>
#include <stdint.h>

/* Write n bytes to the serial link; returns once they are queued or sent. */
void lw_platform_write(const uint8_t *bytes, size_t n);

/* Milliseconds since start (STATS' uptime_ms). */
uint64_t lw_platform_millis(void);

/* Retired instructions since start (RISC-V minstret; 0 where the platform has no counter). */
uint64_t lw_platform_instret(void);

#endif
