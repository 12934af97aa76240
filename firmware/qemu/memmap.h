/* The QEMU `virt` rv32 memory map used by this firmware (see README.md in this folder).
 *
 *   0x0010_0000  sifive_test finisher (leworld-bench.elf powers QEMU off through it)
 *   0x0200_0000  CLINT; mtime at 0x0200_BFF8, 10 MHz
 *   0x0C00_0000  PLIC (the UART is source 10; hart 0's M-mode is context 0)
 *   0x1000_0000  NS16550 UART (the protocol link; `-serial pty`)
 *   0x8000_0000  RAM: the image (.text .rodata .data), then .bss, the static buffers (.noinit) and
 *                the stack, all below LW_BOOT_CONFIG_ADDR (link.ld asserts it)
 *   0x8600_0000  boot config word, written by QEMU: -device loader,addr=0x86000000,data=K,data-len=4
 *                (K = 1 esp32, 2 fpga; 0, i.e. nothing loaded, means esp32)
 *   0x8600_1000  a preloaded .lq40 model: -device loader,file=model.lq40,addr=0x86001000 (at most
 *                LW_PRELOAD_MAX bytes; no "LQ40" magic there: the firmware starts without a model)
 *   top 2 MiB    QEMU's device tree (0x87E0_0000 with the default 128 MiB), never touched
 */
#ifndef LW_QEMU_MEMMAP_H
#define LW_QEMU_MEMMAP_H

#define LW_UART_BASE 0x10000000u
#define LW_CLINT_MTIME 0x0200BFF8u
#define LW_PLIC_BASE 0x0C000000u
#define LW_UART_IRQ 10u
#define LW_MTIME_HZ 10000000u
#define LW_BOOT_CONFIG_ADDR 0x86000000u
#define LW_PRELOAD_ADDR 0x86001000u
#define LW_PRELOAD_MAX (16u * 1024u * 1024u)

#endif
