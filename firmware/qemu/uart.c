/* NS16550 driver: polled transmit and receive, FIFOs on (QEMU hands the receiver up to the FIFO's
 * trigger level of bytes at a time, so the 14-byte level moves data fastest). The receive interrupt is
 * routed through the PLIC to hart 0 with interrupts globally masked, only so that wfi sleeps until a
 * byte arrives: no trap is ever taken. */
#include "uart.h"

#include "memmap.h"

enum { RBR_THR = 0, IER = 1, FCR = 2, LCR = 3, MCR = 4, LSR = 5, DLL = 0, DLM = 1 };
enum { LSR_DR = 0x01, LSR_THRE = 0x20 };

#define PLIC_REG(offset) ((volatile uint32_t *)(uintptr_t)(LW_PLIC_BASE + (offset)))
#define PLIC_PRIORITY(irq) PLIC_REG(4u * (irq))
#define PLIC_ENABLE_CTX0 PLIC_REG(0x2000u)
#define PLIC_THRESHOLD_CTX0 PLIC_REG(0x200000u)
#define PLIC_CLAIM_CTX0 PLIC_REG(0x200004u)
#define MIE_MEIE (1u << 11)

static inline volatile uint8_t *reg(unsigned r) { return (volatile uint8_t *)(uintptr_t)(LW_UART_BASE + r); }

/* QEMU 7.2's 16550 flushes both FIFOs when FCR's enable bit changes, without asking the chardev for
 * more input; a byte that arrived before this start (a host's opening frame delimiter) has then made
 * QEMU stop polling the pty, and with the vCPU asleep in wfi nothing would wake it again. A read of
 * the data register is what makes QEMU take input again, so init ends with one while the receiver is
 * empty (it returns 0 and drops nothing; a byte landing in the instant between the check and the read
 * would be lost, which costs the host one retry at boot, never a stall). */
void lw_uart_init(void) {
    *reg(IER) = 0x00;
    *reg(FCR) = 0xC7; /* FIFOs on and cleared, receive trigger level 14 */
    *reg(LCR) = 0x80; /* divisor latch: QEMU ignores the rate, a board would not */
    *reg(DLL) = 0x01;
    *reg(DLM) = 0x00;
    *reg(LCR) = 0x03; /* 8N1 */
    *reg(MCR) = 0x0B; /* DTR, RTS, OUT2 (the interrupt line on a PC; harmless here) */
    *PLIC_PRIORITY(LW_UART_IRQ) = 1u;
    *PLIC_THRESHOLD_CTX0 = 0u;
    PLIC_ENABLE_CTX0[LW_UART_IRQ / 32u] |= 1u << (LW_UART_IRQ % 32u);
    __asm__ volatile("csrs mie, %0" ::"r"(MIE_MEIE)); /* wakes wfi; mstatus.MIE stays 0: no traps */
    *reg(IER) = 0x01; /* received data available (and the FIFO's character timeout) */
    if (!(*reg(LSR) & LSR_DR)) (void)*reg(RBR_THR);
}

void lw_uart_putc(uint8_t c) {
    while (!(*reg(LSR) & LSR_THRE)) {
    }
    *reg(RBR_THR) = c;
}

void lw_uart_write(const uint8_t *bytes, size_t n) {
    for (size_t i = 0; i < n; i++) lw_uart_putc(bytes[i]);
}

void lw_uart_puts(const char *s) {
    while (*s) lw_uart_putc((uint8_t)*s++);
}

size_t lw_uart_read_available(uint8_t *buf, size_t cap) {
    size_t n = 0;
    while (n < cap && (*reg(LSR) & LSR_DR)) buf[n++] = *reg(RBR_THR);
    return n;
}

void lw_uart_wait(void) {
    while (!(*reg(LSR) & LSR_DR)) {
        /* A byte that arrived since the check left the PLIC's interrupt pending: wfi returns at once. */
        __asm__ volatile("wfi");
        uint32_t irq = *PLIC_CLAIM_CTX0; /* take it, so that the next wfi sleeps again */
        if (irq != 0u) *PLIC_CLAIM_CTX0 = irq;
    }
}
