/* Polled NS16550 UART on QEMU `virt` (0x10000000). */
#ifndef LW_QEMU_UART_H
#define LW_QEMU_UART_H

#include <stddef.h>
#include <stdint.h>

void lw_uart_init(void);
void lw_uart_putc(uint8_t c);
void lw_uart_write(const uint8_t *bytes, size_t n);
void lw_uart_puts(const char *s);
/* Copies up to `cap` bytes already received into buf without waiting; returns how many. */
size_t lw_uart_read_available(uint8_t *buf, size_t cap);
/* Sleeps (wfi) until the receiver has data. Interrupts stay masked (mstatus.MIE = 0): the PLIC's
 * pending UART interrupt only wakes the hart, so an idle firmware costs QEMU no host CPU. */
void lw_uart_wait(void);

#endif
