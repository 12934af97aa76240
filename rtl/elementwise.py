"""Elementwise units over activation buffers: adaLN-zero's gated residual (:class:`GatedAdd`, bit-exact with
``numba_kernels.fixed_point.gated_add``) and a memory-to-memory driver for a stream unit such as GELU
(:class:`StreamMap`).
"""

from __future__ import annotations

from amaranth.hdl import Module, Signal, signed
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from rtl.arith import const_multiply, pipelined_multiply, round_shift_const, saturate


def _bits(n: int) -> int:
    return max(1, (n - 1).bit_length())


class GatedAdd(wiring.Component):
    """``out[r, j] = saturate32(x[x_row0 + r, j] + round_shift(gate[m_row0 + r, j] * y[r, j], F))`` for ``rows``
    rows of width d (start / done), one element a cycle.

    The gate is column block ``gate_col`` of a modulation buffer with rows of ``6 d`` (adaLN's six chunks),
    so ``gate[r, j]`` is read at ``r * 6d + gate_col * d + j``. Ports: ``start`` with ``rows``, ``x_row0``,
    ``m_row0``, ``gate_col``; three synchronous read ports (``x_*``, ``g_*``, ``y_*``: addr out, data in); the
    output write port ``out_*`` (row r at ``r * d``).
    """

    def __init__(self, d: int, t_max: int, frac: int = 16) -> None:
        self.d, self.t_max, self.frac = d, t_max, frac
        super().__init__(
            {
                "start": In(1),
                "rows": In(range(1, t_max + 1)),
                "x_row0": In(range(t_max)),
                "m_row0": In(range(t_max)),
                "gate_col": In(range(6)),
                "busy": Out(1),
                "done": Out(1),
                "x_addr": Out(_bits(t_max * d)),
                "x_data": In(signed(32)),
                "g_addr": Out(_bits(t_max * 6 * d)),
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
                g_base.eq(const_multiply(self.m_row0, 6 * d) + const_multiply(self.gate_col, d)),
                issuing.eq(1),
            ]
        with m.Elif(issuing):
            m.d.sync += [n.eq(n + 1), j.eq(j + 1)]
            with m.If(j == d - 1):
                m.d.sync += [j.eq(0), x_base.eq(x_base + d), g_base.eq(g_base + 6 * d)]
            with m.If(n == count - 1):
                m.d.sync += issuing.eq(0)
        # read (1) -> operands (2) -> partials (3) -> product (4) -> sum (5) -> saturated write
        valid = [Signal(name=f"gv{i}") for i in range(6)]
        index = [Signal.like(n, name=f"gn{i}") for i in range(6)]
        xs = [Signal(signed(32), name=f"gx{i}") for i in range(5)]
        m.d.comb += [valid[0].eq(issuing), index[0].eq(n), xs[1].eq(self.x_data)]
        for i in range(5):
            m.d.sync += [valid[i + 1].eq(valid[i]), index[i + 1].eq(index[i])]
            if 1 <= i < 4:
                m.d.sync += xs[i + 1].eq(xs[i])
        mul_a, mul_b = Signal(signed(32)), Signal(signed(32))
        m.d.sync += [mul_a.eq(self.g_data), mul_b.eq(self.y_data)]
        product = pipelined_multiply(m, mul_a, mul_b, name="gate")
        total = Signal(signed(66 - self.frac))  # x + round(gate * y * 2**-F): |gate * y| <= 2**62
        m.d.sync += [
            total.eq(xs[4] + round_shift_const(product, self.frac)),
            self.out_en.eq(valid[5]),
            self.out_addr.eq(index[5]),
            self.out_data.eq(saturate(total, 32)),
            self.done.eq(0),
        ]
        busy = issuing
        for v in valid[1:]:
            busy = busy | v
        m.d.comb += self.busy.eq(busy | self.out_en)
        with m.If(self.out_en & ~busy):  # the last write lands this cycle
            m.d.sync += self.done.eq(1)
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
