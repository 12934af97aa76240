"""GELU / SiLU by ROM lookup with linear interpolation, bit-exact with ``numba_kernels.fixed_point.lut_activation``.

The reference, per element (``table`` Q.24 of f at knots every 2**-6 from ``lo``; ``sub = F - 6``)::

    t = x - (lo << F)
    t < 0                 -> 0            (below the table)
    t >= (len - 1) << sub -> x            (above it: the identity)
    else i = t >> sub;  v = table[i] + round_shift((table[i+1] - table[i]) * (t & mask), sub)
         out = saturate32(round_shift(v, 24 - F))

The ROM is the reference's own ``GELU_TABLE`` / ``SILU_TABLE`` (1,025 / 2,049 entries), read at ``i`` and
``i + 1`` through two read ports (one true dual-port block RAM). A six-stage pipeline (index and range
tests; ROM read; ROM words registered; their difference; the interpolation product; the interpolated
value; the rounding, saturation and select), one element a cycle.
"""

from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal, signed
from amaranth.lib import memory, stream, wiring
from amaranth.lib.wiring import In, Out

from rtl.arith import round_shift_const, saturate
from rtl.reference import LUT_BITS, LUT_STEP_BITS, activation_rom


class LutActivation(wiring.Component):
    """``gelu_fixed`` / ``silu_fixed`` as a stream unit: int32 in, int32 out, latency 6, one per cycle.

    Args:
        kind: ``"gelu"`` or ``"silu"``. frac: activation fraction bits F (6..24).

    Streams ``i`` / ``o`` (payload int32); backpressure stalls the pipeline (``i.ready = ~o.valid | o.ready``).
    """

    LATENCY = 6

    def __init__(self, kind: str, frac: int = 16) -> None:
        self.kind, self.frac = kind, frac
        self.table, self.lo = activation_rom(kind)
        super().__init__({"i": In(stream.Signature(signed(32))), "o": Out(stream.Signature(signed(32)))})

    def elaborate(self, platform) -> Module:
        m = Module()
        frac, table = self.frac, self.table
        sub = frac - LUT_STEP_BITS
        entry_bits = max(abs(v) for v in table).bit_length() + 1
        m.submodules.rom = rom = memory.Memory(shape=signed(entry_bits), depth=len(table), init=table)
        lo_port, hi_port = rom.read_port(), rom.read_port()

        en = Signal()
        m.d.comb += [en.eq(~self.o.valid | self.o.ready), self.i.ready.eq(en), lo_port.en.eq(en), hi_port.en.eq(en)]

        # 1: position in the table, range tests, ROM addresses (the ROM answers in stage 2)
        t = Signal(signed(34))
        m.d.comb += t.eq(self.i.payload - (self.lo << frac))
        top = (len(table) - 1) << sub
        index = (t >> sub)[: len(lo_port.addr)]
        m.d.comb += [lo_port.addr.eq(index), hi_port.addr.eq(Mux(t < top, index + 1, index))]
        stages = 5
        valid = [Signal(name=f"v{i}") for i in range(stages + 1)]
        below = [Signal(name=f"below{i}") for i in range(stages + 1)]
        above = [Signal(name=f"above{i}") for i in range(stages + 1)]
        xs = [Signal(signed(32), name=f"x{i}") for i in range(stages + 1)]
        rems = [Signal(max(1, sub) + 1, name=f"rem{i}") for i in range(stages + 1)]
        m.d.comb += [
            valid[0].eq(self.i.valid),
            below[0].eq(t < 0),
            above[0].eq(t >= top),
            xs[0].eq(self.i.payload),
            rems[0].eq(t[:sub] if sub else 0),
        ]
        lo2, hi2 = Signal(signed(entry_bits)), Signal(signed(entry_bits))  # the ROM words, registered
        base3, diff3 = Signal(signed(entry_bits)), Signal(signed(entry_bits + 1))
        base4, prod4 = Signal(signed(entry_bits)), Signal(signed(entry_bits + 1 + len(rems[0])))
        v5 = Signal(signed(entry_bits + 1))
        with m.If(en):
            for i in range(stages):
                m.d.sync += [
                    valid[i + 1].eq(valid[i]),
                    below[i + 1].eq(below[i]),
                    above[i + 1].eq(above[i]),
                    xs[i + 1].eq(xs[i]),
                    rems[i + 1].eq(rems[i]),
                ]
            m.d.sync += [
                lo2.eq(lo_port.data),  # 1 -> 2 (the ROM answered in stage 1)
                hi2.eq(hi_port.data),
                base3.eq(lo2),  # 2 -> 3
                diff3.eq(hi2 - lo2),
                base4.eq(base3),  # 3 -> 4: the interpolation product
                prod4.eq(diff3 * rems[3]),
                v5.eq(base4 + round_shift_const(prod4, sub)),  # 4 -> 5
            ]
            value = saturate(round_shift_const(v5, LUT_BITS - frac), 32)
            m.d.sync += [
                self.o.valid.eq(valid[5]),  # 5 -> 6
                self.o.payload.eq(Mux(below[5], 0, Mux(above[5], xs[5], value))),
            ]
        return m
