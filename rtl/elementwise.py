"""Elementwise units over activation buffers: adaLN-zero's gated residual (:class:`GatedAdd`, bit-exact with
``numba_kernels.fixed_point.gated_add``) and a memory-to-memory driver for a stream unit such as GELU
(:class:`StreamMap`).
"""

from __future__ import annotations

import numpy as np
from amaranth.hdl import Module, Signal, signed
from amaranth.lib import memory, wiring
from amaranth.lib.wiring import In, Out

from numba_kernels.fixed_point import COEF_BITS
from rtl.arith import const_multiply, pipelined_multiply, round_shift_const, saturate


def _bits(n: int) -> int:
    return max(1, (n - 1).bit_length())


def multiply_add_write(m: Module, unit, issuing, n, addend, a, b, shift: int, name: str) -> None:
    """The shared pipeline of the elementwise units: for the element ``n`` issued this cycle (``issuing``),
    whose operands ``addend``, ``a``, ``b`` arrive one cycle later (synchronous reads), write
    ``saturate32(addend + round_shift(a * b, shift))`` at ``n`` through ``unit.out_*``, and drive ``unit.busy``
    and ``unit.done`` (one pulse after the last write). Stages: read (1) -> operands (2) -> partials (3) ->
    product (4) -> sum (5) -> saturated write; one element a cycle."""
    valid = [Signal(name=f"{name}_v{i}") for i in range(6)]
    index = [Signal.like(n, name=f"{name}_n{i}") for i in range(6)]
    adds = [Signal(signed(32), name=f"{name}_c{i}") for i in range(5)]
    m.d.comb += [valid[0].eq(issuing), index[0].eq(n), adds[1].eq(addend)]
    for i in range(5):
        m.d.sync += [valid[i + 1].eq(valid[i]), index[i + 1].eq(index[i])]
        if 1 <= i < 4:
            m.d.sync += adds[i + 1].eq(adds[i])
    mul_a, mul_b = Signal(signed(32), name=f"{name}_a"), Signal(signed(32), name=f"{name}_b")
    m.d.sync += [mul_a.eq(a), mul_b.eq(b)]
    product = pipelined_multiply(m, mul_a, mul_b, name=name)
    total = Signal(signed(66 - shift), name=f"{name}_total")  # |a * b| <= 2**62
    m.d.sync += [
        total.eq(adds[4] + round_shift_const(product, shift)),
        unit.out_en.eq(valid[5]),
        unit.out_addr.eq(index[5]),
        unit.out_data.eq(saturate(total, 32)),
        unit.done.eq(0),
    ]
    busy = issuing
    for v in valid[1:]:
        busy = busy | v
    m.d.comb += unit.busy.eq(busy | unit.out_en)
    with m.If(unit.out_en & ~busy):  # the last write lands this cycle
        m.d.sync += unit.done.eq(1)


class GatedAdd(wiring.Component):
    """``out[r, j] = saturate32(x[x_row0 + r, j] + round_shift(gate[m_row0 + r, j] * y[r, j], F))`` for ``rows``
    rows of width d (start / done), one element a cycle.

    The gate is column block ``gate_col`` of a modulation buffer with rows of ``chunks * d`` (adaLN's six
    chunks, or three where the modulation is split over two memories), so ``gate[r, j]`` is read at
    ``r * chunks * d + gate_col * d + j``. Ports: ``start`` with ``rows``, ``x_row0``,
    ``m_row0``, ``gate_col``; three synchronous read ports (``x_*``, ``g_*``, ``y_*``: addr out, data in); the
    output write port ``out_*`` (row r at ``r * d``).
    """

    def __init__(self, d: int, t_max: int, frac: int = 16, chunks: int = 6) -> None:
        self.d, self.t_max, self.frac, self.chunks = d, t_max, frac, chunks
        super().__init__(
            {
                "start": In(1),
                "rows": In(range(1, t_max + 1)),
                "x_row0": In(range(t_max)),
                "m_row0": In(range(t_max)),
                "gate_col": In(range(chunks)),
                "busy": Out(1),
                "done": Out(1),
                "x_addr": Out(_bits(t_max * d)),
                "x_data": In(signed(32)),
                "g_addr": Out(_bits(t_max * chunks * d)),
                "g_data": In(signed(32)),
                "y_addr": Out(_bits(t_max * d)),
                "y_data": In(signed(32)),
                "out_addr": Out(_bits(t_max * d)),
                "out_data": Out(signed(32)),
                "out_en": Out(1),
            }
        )

    def elaborate(self, platform) -> Module:
        m = Module()
        d = self.d
        count = Signal(range(self.t_max * d + 1))
        n = Signal.like(count)  # element index r*d + j
        j = Signal(range(d + 1))
        x_base, g_base = Signal.like(self.x_addr), Signal.like(self.g_addr)
        issuing = Signal()
        m.d.comb += [self.x_addr.eq(x_base + j), self.g_addr.eq(g_base + j), self.y_addr.eq(n)]
        with m.If(self.start & ~self.busy):
            m.d.sync += [
                count.eq(const_multiply(self.rows, d)),
                n.eq(0),
                j.eq(0),
                x_base.eq(const_multiply(self.x_row0, d)),
                g_base.eq(const_multiply(self.m_row0, self.chunks * d) + const_multiply(self.gate_col, d)),
                issuing.eq(1),
            ]
        with m.Elif(issuing):
            m.d.sync += [n.eq(n + 1), j.eq(j + 1)]
            with m.If(j == d - 1):
                m.d.sync += [j.eq(0), x_base.eq(x_base + d), g_base.eq(g_base + self.chunks * d)]
            with m.If(n == count - 1):
                m.d.sync += issuing.eq(0)
        multiply_add_write(m, self, issuing, n, self.x_data, self.g_data, self.y_data, self.frac, "gate")
        return m


class ChannelAffine(wiring.Component):
    """``out[r, j] = saturate32(round_shift(x[r, j] * scale[j], COEF_BITS) + offset[r, j])`` for ``rows`` rows of
    width c (start / done), one element a cycle; bit-exact with ``numba_kernels.fixed_point.channel_affine``
    (a BatchNorm folded at load: ``offset`` [c] the same for every row) and, with every scale ``2**COEF_BITS``,
    with ``add_saturated`` (the positional embedding: ``offset`` [rows_max, c], one row per token).

    Args:
        scale: int32 [c] in Q.COEF_BITS. offset: int32 [c] or [rows_max, c], activation format (ROMs).
        rows_max: the most rows.

    Ports: ``start`` with ``rows``; ``x_addr`` / ``x_data`` (a synchronous read port), ``out_addr`` /
    ``out_data`` / ``out_en`` (a write port; row r at ``r * c``).
    """

    def __init__(self, scale: np.ndarray, offset: np.ndarray, rows_max: int = 1) -> None:
        scale, offset = np.asarray(scale, np.int64), np.asarray(offset, np.int64)
        self.c = c = scale.shape[0]
        self.rows_max = rows_max
        self.per_row = offset.ndim == 2
        if offset.shape[-1] != c or (self.per_row and offset.shape[0] < rows_max):
            raise ValueError(f"offset {offset.shape} does not match scale [{c}] and {rows_max} rows")
        self.scale = [int(v) for v in scale]
        self.offset = [int(v) for v in offset[:rows_max].ravel()] if self.per_row else [int(v) for v in offset]
        super().__init__(
            {
                "start": In(1),
                "rows": In(range(1, rows_max + 1)),
                "busy": Out(1),
                "done": Out(1),
                "x_addr": Out(_bits(rows_max * c)),
                "x_data": In(signed(32)),
                "out_addr": Out(_bits(rows_max * c)),
                "out_data": Out(signed(32)),
                "out_en": Out(1),
            }
        )

    def elaborate(self, platform) -> Module:
        m = Module()
        c = self.c
        m.submodules.scale_rom = scale_rom = memory.Memory(shape=signed(32), depth=c, init=self.scale)
        m.submodules.offset_rom = offset_rom = memory.Memory(shape=signed(32), depth=len(self.offset), init=self.offset)
        scale_rd, offset_rd = scale_rom.read_port(), offset_rom.read_port()
        count = Signal(range(self.rows_max * c + 1))
        n = Signal.like(count)  # element index r*c + j
        j = Signal(range(c + 1))
        issuing = Signal()
        m.d.comb += [self.x_addr.eq(n), scale_rd.addr.eq(j), offset_rd.addr.eq(n if self.per_row else j)]
        with m.If(self.start & ~self.busy):
            m.d.sync += [count.eq(const_multiply(self.rows, c)), n.eq(0), j.eq(0), issuing.eq(1)]
        with m.Elif(issuing):
            m.d.sync += [n.eq(n + 1), j.eq(j + 1)]
            with m.If(j == c - 1):
                m.d.sync += j.eq(0)
            with m.If(n == count - 1):
                m.d.sync += issuing.eq(0)
        multiply_add_write(m, self, issuing, n, offset_rd.data, self.x_data, scale_rd.data, COEF_BITS, "affine")
        return m


class StreamMap(wiring.Component):
    """Read ``count`` words from a buffer in order, pass them through a stream unit (``unit.i`` / ``unit.o``),
    write the results in order (start / done). The unit must never stall while its output is accepted
    (true of :class:`~rtl.activation.LutActivation`), so one word moves each cycle.

    Ports: ``start`` with ``count``; ``in_addr`` / ``in_data`` (a synchronous read port), ``out_addr`` /
    ``out_data`` / ``out_en`` (a write port).
    """

    def __init__(self, unit: wiring.Component, depth: int) -> None:
        self.unit, self.depth = unit, depth
        super().__init__(
            {
                "start": In(1),
                "count": In(range(1, depth + 1)),
                "busy": Out(1),
                "done": Out(1),
                "in_addr": Out(_bits(depth)),
                "in_data": In(signed(32)),
                "out_addr": Out(_bits(depth)),
                "out_data": Out(signed(32)),
                "out_en": Out(1),
            }
        )

    def elaborate(self, platform) -> Module:
        m = Module()
        m.submodules.unit = unit = self.unit
        count, n, out_n = Signal.like(self.count), Signal(range(self.depth + 1)), Signal(range(self.depth + 1))
        issuing, r_valid, in_valid = Signal(), Signal(), Signal()
        # the word read is registered before the unit (a block RAM's output is slow: no logic behind it)
        m.d.comb += [self.in_addr.eq(n), unit.o.ready.eq(1), unit.i.valid.eq(in_valid)]
        m.d.sync += [r_valid.eq(issuing), in_valid.eq(r_valid), unit.i.payload.eq(self.in_data), self.done.eq(0)]
        with m.If(self.start & ~self.busy):
            m.d.sync += [count.eq(self.count), n.eq(0), out_n.eq(0), issuing.eq(1)]
        with m.Elif(issuing):
            m.d.sync += n.eq(n + 1)
            with m.If(n == count - 1):
                m.d.sync += issuing.eq(0)
        m.d.comb += [
            self.out_addr.eq(out_n),
            self.out_data.eq(unit.o.payload),
            self.out_en.eq(unit.o.valid),
            self.busy.eq(issuing | r_valid | in_valid | (out_n != count)),
        ]
        with m.If(unit.o.valid):
            m.d.sync += out_n.eq(out_n + 1)
            with m.If(out_n == count - 1):
                m.d.sync += self.done.eq(1)
        return m
