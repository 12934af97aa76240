"""One adaLN-zero transformer block of the predictor, composed from the units, bit-exact with
``FixedPointPredictor._predict_tokens`` (one iteration of its block loop) and ``_block_tail``::

    y   = LayerNorm(x, shift = mod[0], scale = mod[1])                  # per token
    qkv = Linear_qkv(y);  att = Attention(qkv)                         # causal, all T tokens
    (last block: from here on the last token only)
    x   = x + round(mod[2] * Linear_proj(att))                         # gated residual, saturated
    y   = LayerNorm(x, shift = mod[3], scale = mod[4])
    x   = x + round(mod[5] * Linear_mlp2(GELU(Linear_mlp0(y))))

``mod`` is the block's modulation (its ``modulation.1`` layer's output, [T, 6d]) and comes in with x. One
controller runs the phases in order, each unit reading and writing block-RAM buffers; the LayerNorm and
the gated residual units are shared by the two halves.
"""

from __future__ import annotations

from amaranth.hdl import Module, Signal, signed
from amaranth.lib import memory, wiring
from amaranth.lib.wiring import In, Out

from numba_kernels.fixed_point import FixedLinear
from rtl.activation import LutActivation
from rtl.arith import const_multiply
from rtl.attention import Attention
from rtl.elementwise import GatedAdd, StreamMap
from rtl.layernorm import LayerNorm
from rtl.layout import LayerImage
from rtl.linear import LinearEngine

PHASES = ("IDLE", "LN1", "QKV", "ATTENTION", "PROJ", "GATE1", "LN2", "MLP0", "GELU", "MLP2", "GATE2")


def _bits(n: int) -> int:
    return max(1, (n - 1).bit_length())


class AdaLNBlock(wiring.Component):
    """A whole predictor block on up to ``t_max`` tokens (start / done).

    Args:
        layers: the block's ``attn.qkv``, ``attn.proj``, ``mlp.0``, ``mlp.2`` as :class:`FixedLinear` (keys
            ``"qkv"``, ``"proj"``, ``"mlp0"``, ``"mlp2"``). heads: attention heads. t_max: most tokens.
        last: the predictor's last block (its tail runs on the last token only, its attention on the last
            query only). lanes: MAC lanes of each linear engine. frac: activation fraction bits.

    Ports: ``start`` with ``tokens``; ``x_waddr`` / ``x_wdata`` / ``x_wen`` load x [T, d] (row t at ``t*d``),
    ``mod_waddr`` / ... load the modulation [T, 6d]; ``out_raddr`` / ``out_rdata`` read the result [T', d]
    (T' = T, or 1 for the last block). ``x_mem`` / ``mod_mem`` / ``out_mem`` are those buffers. ``phase``
    is the running phase (an index into :data:`PHASES`); ``phase_cycles`` counts the cycles of each.
    """

    def __init__(
        self,
        layers: dict[str, FixedLinear],
        heads: int,
        t_max: int,
        last: bool = False,
        lanes: int = 16,
        frac: int = 16,
    ) -> None:
        self.d = d = layers["qkv"].in_features
        self.hidden = layers["mlp0"].out_features
        self.heads, self.t_max, self.last, self.lanes, self.frac = heads, t_max, last, lanes, frac
        self.engines = {
            name: LinearEngine(LayerImage.from_fixed(layers[name], lanes), rows_max=t_max)
            for name in ("qkv", "proj", "mlp0", "mlp2")
        }
        words = {"x": d, "mod": 6 * d, "y1": d, "qkv": 3 * d, "att": d, "pr": d, "x1": d, "y2": d}
        words |= {"h": self.hidden, "g": self.hidden, "m2": d, "out": d}
        self.buffers = {
            name: memory.Memory(shape=signed(32), depth=t_max * width, init=[]) for name, width in words.items()
        }
        self.x_mem, self.mod_mem, self.out_mem = self.buffers["x"], self.buffers["mod"], self.buffers["out"]
        super().__init__(
            {
                "start": In(1),
                "tokens": In(range(1, t_max + 1)),
                "busy": Out(1),
                "done": Out(1),
                "x_waddr": In(_bits(t_max * d)),
                "x_wdata": In(signed(32)),
                "x_wen": In(1),
                "mod_waddr": In(_bits(t_max * 6 * d)),
                "mod_wdata": In(signed(32)),
                "mod_wen": In(1),
                "out_raddr": In(_bits(t_max * d)),
                "out_rdata": Out(signed(32)),
                "phase": Out(range(len(PHASES))),
            }
        )

    def elaborate(self, platform) -> Module:
        m = Module()
        d, t_max = self.d, self.t_max
        buf = self.buffers
        for name, mem in buf.items():
            m.submodules[f"buf_{name}"] = mem
        eng = self.engines
        for name, e in eng.items():
            m.submodules[f"linear_{name}"] = e
        m.submodules.ln = ln = LayerNorm(d, self.frac, "modulated")
        m.submodules.attention = att = Attention(d, self.heads, t_max, self.frac)
        m.submodules.gate = gate = GatedAdd(d, t_max, self.frac)
        m.submodules.gelu = gelu = StreamMap(LutActivation("gelu", self.frac), t_max * self.hidden)

        # ports: one write port per buffer, read ports as the phases need them
        wr = {name: mem.write_port() for name, mem in buf.items()}
        rd = {name: mem.read_port() for name, mem in buf.items()}
        rd_b = {name: buf[name].read_port() for name in ("mod", "qkv")}
        m.d.comb += [
            wr["x"].addr.eq(self.x_waddr),
            wr["x"].data.eq(self.x_wdata),
            wr["x"].en.eq(self.x_wen),
            wr["mod"].addr.eq(self.mod_waddr),
            wr["mod"].data.eq(self.mod_wdata),
            wr["mod"].en.eq(self.mod_wen),
            rd["out"].addr.eq(self.out_raddr),
            self.out_rdata.eq(rd["out"].data),
        ]

        def write(m_: Module, name: str, addr, data, en) -> None:
            m_.d.comb += [wr[name].addr.eq(addr), wr[name].data.eq(data), wr[name].en.eq(en)]

        def read(m_: Module, name: str, addr, data, port=None, en=1) -> None:
            p = port if port is not None else rd[name]
            m_.d.comb += [p.addr.eq(addr), data.eq(p.data), p.en.eq(en)]

        tokens = Signal.like(self.tokens)
        rows_tail = Signal.like(self.tokens)  # T' = T, or 1 in the last block
        row0 = Signal(range(t_max))  # the tail's first token: 0, or T - 1 in the last block
        ln_row = Signal(range(t_max + 1))
        ln_started = Signal()
        m.d.sync += self.done.eq(0)

        # the shared LayerNorm, row by row: x row r at r * d, the modulation's scale / shift chunks of row m_row0 + r
        # (the row's base addresses are registered when its run starts: one adder in front of each address)
        x_base = Signal(_bits(t_max * d + 1))
        scale_base, shift_base = Signal(_bits(t_max * 6 * d + 1)), Signal(_bits(t_max * 6 * d + 1))

        def layer_norm(m_: Module, src: str, dst: str, rows, m_row0, scale_col: int, shift_col: int, next_phase: str):
            read(m_, src, x_base + ln.addr, ln.x_data)
            read(m_, "mod", scale_base + ln.addr, ln.coef_a)
            read(m_, "mod", shift_base + ln.addr, ln.coef_b, port=rd_b["mod"])
            write(m_, dst, x_base + ln.y_addr, ln.y_data, ln.y_en)
            with m_.If(~ln_started):
                mod_row = const_multiply(m_row0 + ln_row, 6 * d)
                m_.d.comb += ln.start.eq(1)
                m_.d.sync += [
                    ln_started.eq(1),
                    x_base.eq(const_multiply(ln_row, d)),
                    scale_base.eq(mod_row + scale_col * d),
                    shift_base.eq(mod_row + shift_col * d),
                ]
            with m_.If(ln.done):
                m_.d.sync += [ln_row.eq(ln_row + 1), ln_started.eq(0)]
                with m_.If(ln_row == rows - 1):
                    m_.d.sync += ln_row.eq(0)
                    m_.next = next_phase

        def linear(m_: Module, name: str, src: str, dst: str, rows, next_phase: str):
            e = eng[name]
            read(m_, src, e.x_addr, e.x_data, en=e.x_en)
            write(m_, dst, e.out_addr, e.out_data, e.out_en)
            m_.d.comb += [e.rows.eq(rows), e.start.eq(~e.busy & ~ln_started)]
            m_.d.sync += ln_started.eq(1)
            with m_.If(e.done):
                m_.d.sync += ln_started.eq(0)
                m_.next = next_phase

        def gated(m_: Module, x_src: str, y_src: str, dst: str, x_row0, gate_col: int, next_phase: str):
            read(m_, x_src, gate.x_addr, gate.x_data)
            read(m_, "mod", gate.g_addr, gate.g_data)
            read(m_, y_src, gate.y_addr, gate.y_data)
            write(m_, dst, gate.out_addr, gate.out_data, gate.out_en)
            m_.d.comb += [
                gate.rows.eq(rows_tail),
                gate.x_row0.eq(x_row0),
                gate.m_row0.eq(row0),
                gate.gate_col.eq(gate_col),
                gate.start.eq(~gate.busy & ~ln_started),
            ]
            m_.d.sync += ln_started.eq(1)
            with m_.If(gate.done):
                m_.d.sync += ln_started.eq(0)
                m_.next = next_phase

        with m.FSM() as fsm:
            with m.State("IDLE"):
                with m.If(self.start):
                    m.d.sync += [
                        tokens.eq(self.tokens),
                        rows_tail.eq(1 if self.last else self.tokens),
                        row0.eq(self.tokens - 1 if self.last else 0),
                        ln_row.eq(0),
                        ln_started.eq(0),
                    ]
                    m.next = "LN1"
            with m.State("LN1"):
                layer_norm(m, "x", "y1", tokens, 0, 1, 0, "QKV")
            with m.State("QKV"):
                linear(m, "qkv", "y1", "qkv", tokens, "ATTENTION")
            with m.State("ATTENTION"):
                read(m, "qkv", att.qkv_addr_a, att.qkv_data_a)
                read(m, "qkv", att.qkv_addr_b, att.qkv_data_b, port=rd_b["qkv"])
                write(m, "att", att.out_addr, att.out_data, att.out_en)
                m.d.comb += [
                    att.tokens.eq(tokens),
                    att.first_query.eq(row0),
                    att.start.eq(~att.busy & ~ln_started),
                ]
                m.d.sync += ln_started.eq(1)
                with m.If(att.done):
                    m.d.sync += ln_started.eq(0)
                    m.next = "PROJ"
            with m.State("PROJ"):
                linear(m, "proj", "att", "pr", rows_tail, "GATE1")
            with m.State("GATE1"):
                gated(m, "x", "pr", "x1", row0, 2, "LN2")
            with m.State("LN2"):
                layer_norm(m, "x1", "y2", rows_tail, row0, 4, 3, "MLP0")
            with m.State("MLP0"):
                linear(m, "mlp0", "y2", "h", rows_tail, "GELU")
            with m.State("GELU"):
                read(m, "h", gelu.in_addr, gelu.in_data)
                write(m, "g", gelu.out_addr, gelu.out_data, gelu.out_en)
                m.d.comb += [
                    gelu.count.eq(const_multiply(rows_tail, self.hidden)),
                    gelu.start.eq(~gelu.busy & ~ln_started),
                ]
                m.d.sync += ln_started.eq(1)
                with m.If(gelu.done):
                    m.d.sync += ln_started.eq(0)
                    m.next = "MLP2"
            with m.State("MLP2"):
                linear(m, "mlp2", "g", "m2", rows_tail, "GATE2")
            with m.State("GATE2"):
                gated(m, "x1", "m2", "out", 0, 5, "IDLE")
                with m.If(gate.done):
                    m.d.sync += self.done.eq(1)
        for index, name in enumerate(PHASES):
            with m.If(fsm.ongoing(name)):
                m.d.comb += self.phase.eq(index)
        m.d.comb += self.busy.eq(~fsm.ongoing("IDLE"))
        return m
