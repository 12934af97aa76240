/* lw_platform.h on QEMU `virt` rv32: the UART, the CLINT's mtime (10 MHz), minstret; and the trap
 * report crt0.S calls. */
#include "lw_platform.h"

#include "memmap.h"
#include "uart.h"

void lw_platform_write(const uint8_t *bytes, size_t n) { lw_uart_write(bytes, n); }

static uint64_t read_mtime(void) {
    volatile uint32_t *lo = (volatile uint32_t *)(uintptr_t)LW_CLINT_MTIME;
    volatile uint32_t *hi = lo + 1;
    uint32_t h, l;
    do {
        h = *hi;
        l = *lo;
    } while (h != *hi);
    return ((uint64_t)h << 32) | l;
}

uint64_t lw_platform_millis(void) { return read_mtime() / (LW_MTIME_HZ / 1000u); }

uint64_t lw_platform_instret(void) {
    uint32_t h, l, h2;
    do {
        __asm__ volatile("csrr %0, minstreth" : "=r"(h));
        __asm__ volatile("csrr %0, minstret" : "=r"(l));
        __asm__ volatile("csrr %0, minstreth" : "=r"(h2));
    } while (h != h2);
    return ((uint64_t)h << 32) | l;
}

static void put_hex(uint32_t v) {
    static const char digits[] = "0123456789abcdef";
    char text[11] = "0x";
    for (int i = 0; i < 8; i++) text[2 + i] = digits[(v >> (28 - 4 * i)) & 0xF];
    text[10] = 0;
    lw_uart_puts(text);
}

/* Called by crt0.S's trap vector on any exception; never returns (crt0 halts). The text sits between
 * two frame delimiters, so a host that reads it drops it as one bad frame. */
void lw_trap(uint32_t mcause, uint32_t mepc, uint32_t mtval);
void lw_trap(uint32_t mcause, uint32_t mepc, uint32_t mtval) {
    lw_uart_putc(0);
    lw_uart_puts("leworld-fw: trap mcause=");
    put_hex(mcause);
    lw_uart_puts(" mepc=");
    put_hex(mepc);
    lw_uart_puts(" mtval=");
    put_hex(mtval);
    lw_uart_puts("; halted\r\n");
    lw_uart_putc(0);
}
