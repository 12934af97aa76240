/* Start-up for rv32imafc on QEMU `virt`: hart 0 only, global and stack pointers, trap vector,
 * the FPU (mstatus.FS), .tbss/.bss cleared, the thread pointer (picolibc's errno), then main. */
    .section .text.init, "ax", @progbits
    .globl _start
_start:
    .option push
    .option norelax
    la gp, __global_pointer$
    .option pop
    csrr t0, mhartid
    bnez t0, .Lpark
    la sp, __stack_top
    la t0, lw_trap_entry
    csrw mtvec, t0
    csrw mie, zero
    li t0, 0x2000            /* mstatus.FS = Initial: float instructions no longer trap */
    csrs mstatus, t0
    fscsr zero               /* round to nearest, no flags */
    la t0, __tbss_start      /* .tbss and .bss, contiguous */
    la t1, __bss_end
1:  bgeu t0, t1, 2f
    sw zero, 0(t0)
    addi t0, t0, 4
    j 1b
2:  la tp, __tls_base
    call main
.Lpark:
    wfi
    j .Lpark

/* Any trap (there are no interrupts enabled): report it on the UART and halt. */
    .section .text, "ax", @progbits
    .balign 4
    .globl lw_trap_entry
lw_trap_entry:
    la sp, __trap_stack_top
    csrr a0, mcause
    csrr a1, mepc
    csrr a2, mtval
    call lw_trap
3:  wfi
    j 3b
