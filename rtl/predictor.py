"""The whole predictor as one design, bit-exact with ``FixedPointPredictor.predict_fixed``: a window of T <= history
(latent, action) pairs in, the next latent out (all int32 fixed point).

One of each unit, time-shared by a controller that runs the predictor's ops in order (one unit at a time):

* one :class:`~rtl.linear.LinearEngine` for all 21 linear layers: one P-lane MAC array, the Q4 codes in a 4-bit
  code memory and the Q8_0 / INT8 codes in an 8-bit one, one scale and one bias memory, and a layer table the
  sequencer reads at each start (:class:`~rtl.layout.ModelImage`);
* one adaLN-modulated :class:`~rtl.layernorm.LayerNorm` (the six block norms) and one affine one (the final norm,
  its weight and bias in ROM);
* :class:`~rtl.attention.Attention`, :class:`~rtl.elementwise.GatedAdd` (the six gated residuals),
  :class:`~rtl.elementwise.ChannelAffine` twice (the positional embedding's saturating add and the projector's
  folded BatchNorm), one GELU and one SiLU (:class:`~rtl.activation.LutActivation` behind a
  :class:`~rtl.elementwise.StreamMap`).

The program (:data:`PROGRAM` is built per model by :func:`program`)::

    x    = input(z)                                    # per token, T rows
    cond = SiLU(mlp.2(SiLU(mlp.0(conv(a)))))            # the action encoder
    mod_i = blocks.i.modulation.1(cond)                 # i = 0, 1, 2
    x    = x + pos_embed[:T]                           # in place
    x    = block_i(x, mod_i)                            # the last block on the last token only
    out  = projector.3(GELU(BatchNorm(projector.0(LayerNorm(x)))))

Activations live in memories of int32 words (row r of a [T, w] activation at ``r * w``), each unit reading
and writing them through the controller's per-step port multiplexers. Activations whose lifetimes do not
overlap share a memory (:data:`PLACEMENT`); each modulation is split over two memories, its chunks 0, 2, 4
(the attention half's shift and gate, the MLP half's scale) in one and 1, 3, 5 in the other, so that a
LayerNorm reads its scale and shift from two memories at once and no memory needs a second read port.

Ports: write z [T, D] and a [T, A] through ``z_w*`` / ``a_w*`` while idle, pulse ``start`` with ``tokens``, wait
for ``done``, read the latent through ``out_raddr`` / ``out_rdata``. ``phase`` is the running step (an index
into :attr:`Predictor.phases`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from amaranth.hdl import Module, Signal, signed
from amaranth.lib import memory, wiring
from amaranth.lib.wiring import In, Out

from numba_kernels.fixed_point import COEF_BITS
from rtl.activation import LutActivation
from rtl.arith import const_multiply
from rtl.attention import Attention
from rtl.elementwise import ChannelAffine, GatedAdd, StreamMap
from rtl.layernorm import LayerNorm
from rtl.layout import ModelImage
from rtl.linear import LinearEngine
from world_models.backends.devices.fixed_point import FixedPointPredictor


def _bits(n: int) -> int:
    return max(1, (n - 1).bit_length())


@dataclass(frozen=True)
class Step:
    """One step of the predictor's program: ``op`` on the unit of that name, reading ``src`` (and ``src2``),
    writing ``dst``. ``layer`` names a linear layer; ``block`` the block whose modulation a norm or gate
    reads; ``col`` the modulation chunk (a gate's) or chunks (a norm's scale, shift); ``tail``: the last block's
    steps after attention, on the last token only."""

    name: str
    op: str
    src: str
    dst: str
    layer: str = ""
    src2: str = ""
    block: int = 0
    col: tuple[int, ...] = ()
    tail: bool = False


def program(depth: int) -> list[Step]:
    """The predictor's steps for ``depth`` blocks, in the order ``FixedPointPredictor`` runs them."""
    p = "predictor"
    ae = f"{p}.action_encoder"
    steps = [
        Step("INPUT", "linear", "z", "x", f"{p}.input"),
        Step("AE_CONV", "linear", "a", "c0", f"{ae}.conv"),
        Step("AE_MLP0", "linear", "c0", "c1", f"{ae}.mlp.0"),
        Step("AE_SILU0", "silu", "c1", "c1s"),
        Step("AE_MLP2", "linear", "c1s", "c2", f"{ae}.mlp.2"),
        Step("AE_SILU2", "silu", "c2", "cond"),
    ]
    steps += [Step(f"MOD{i}", "linear", "cond", f"mod{i}", f"{p}.blocks.{i}.modulation.1") for i in range(depth)]
    steps.append(Step("POS", "pos", "x", "x"))  # in place: each word is read before it is written
    for i in range(depth):
        b, last = f"{p}.blocks.{i}", i == depth - 1
        steps += [
            Step(f"B{i}_LN1", "norm", "x", "y", block=i, col=(1, 0)),
            Step(f"B{i}_QKV", "linear", "y", "qkv", f"{b}.attn.qkv"),
            Step(f"B{i}_ATTENTION", "attention", "qkv", "att", tail=last),
            Step(f"B{i}_PROJ", "linear", "att", "pr", f"{b}.attn.proj", tail=last),
            Step(f"B{i}_GATE1", "gate", "x", "x1", src2="pr", block=i, col=(2,), tail=last),
            Step(f"B{i}_LN2", "norm", "x1", "y", block=i, col=(4, 3), tail=last),
            Step(f"B{i}_MLP0", "linear", "y", "h", f"{b}.mlp.0", tail=last),
            Step(f"B{i}_GELU", "gelu", "h", "g", tail=last),
            Step(f"B{i}_MLP2", "linear", "g", "m2", f"{b}.mlp.2", tail=last),
            Step(f"B{i}_GATE2", "gate", "x1", "x", src2="m2", block=i, col=(5,), tail=last),
        ]
    steps += [
        Step("FINAL_NORM", "final_norm", "x", "fn", tail=True),
        Step("PROJ0", "linear", "fn", "p0", f"{p}.projector.0", tail=True),
        Step("BATCHNORM", "batchnorm", "p0", "p1", tail=True),
        Step("PROJ_GELU", "gelu", "p1", "p2", tail=True),
        Step("PROJ3", "linear", "p2", "out", f"{p}.projector.3", tail=True),
    ]
    return steps


# Where each activation lives: buffers whose lifetimes do not overlap share a memory (s1 and s2 alternate as a
# step's input and output, s3 holds the block's x1 across the MLP); a step never reads and writes the same
# memory except the positional add, which writes each word after reading it. The modulations are not here:
# each is split over two memories (see Predictor).
PLACEMENT = {
    **dict.fromkeys(("c0", "c1s", "cond", "y", "att", "g", "fn", "p1"), "s1"),
    **dict.fromkeys(("c1", "c2", "qkv", "pr", "h", "m2", "p0", "p2"), "s2"),
    "x1": "s3",
    **{name: name for name in ("z", "a", "x", "out")},
}
IN_PLACE = ("pos",)


class Predictor(wiring.Component):
    """The whole fixed-point predictor of ``fpga`` (a :class:`FixedPointPredictor`) on ``lanes`` MAC lanes.

    Ports: ``start`` with ``tokens`` (1..history); ``z_waddr`` / ``z_wdata`` / ``z_wen`` and ``a_*`` load the
    window (row t at ``t * D`` / ``t * A``); ``out_raddr`` / ``out_rdata`` read the predicted latent [D];
    ``busy`` / ``done``; ``phase`` (the running step: ``phases[phase]``, 0 = idle).
    """

    def __init__(self, fpga: FixedPointPredictor, lanes: int = 16) -> None:
        cfg = fpga.config
        self.fpga, self.lanes, self.frac = fpga, lanes, fpga.frac_bits
        self.t_max, self.d, self.depth, self.heads = (
            cfg.history,
            cfg.predictor_dim,
            cfg.predictor_depth,
            cfg.predictor_heads,
        )
        self.steps = program(self.depth)
        self.phases = ["IDLE"] + [s.name for s in self.steps]
        self.image = ModelImage.from_layers(fpga.layers, lanes)
        self.engine = LinearEngine(self.image, rows_max=self.t_max)
        lin = fpga.layers
        widths = {"z": cfg.latent_dim, "a": cfg.action_dim}
        for s in self.steps:
            if s.op == "linear":
                widths.setdefault(s.src, lin[s.layer].in_features)
                widths[s.dst] = lin[s.layer].out_features
        d = self.d
        self.hidden = lin["predictor.blocks.0.mlp.0"].out_features
        widths |= {"c1s": widths["c1"], "cond": widths["c2"], "x": d, "x1": d, "fn": d}
        widths |= {"p1": widths["p0"], "p2": widths["p0"]}
        self.widths = widths  # logical buffer -> words a row
        words: dict[str, int] = {}
        for name, width in widths.items():
            if not name.startswith("mod"):
                words[PLACEMENT[name]] = max(words.get(PLACEMENT[name], 0), self.t_max * width)
        for i in range(self.depth):  # modulation i: chunks 0, 2, 4 in mod{i}a, chunks 1, 3, 5 in mod{i}b
            words[f"mod{i}a"] = words[f"mod{i}b"] = self.t_max * 3 * d
        self._check_placement()
        # the modulations in distributed (LUT) RAM: with the weights in 191 block RAMs, the 85k's 208 hold
        # the other activations and the ROMs but not these 2 x 3 x 864 words as well
        self.buffers = {
            name: memory.Memory(
                shape=signed(32),
                depth=n,
                init=[],
                attrs={"ram_style": "distributed"} if name.startswith("mod") else None,
            )
            for name, n in words.items()
        }
        self.z_mem, self.a_mem, self.out_mem = self.buffers["z"], self.buffers["a"], self.buffers["out"]
        t_max = self.t_max
        super().__init__(
            {
                "start": In(1),
                "tokens": In(range(1, t_max + 1)),
                "busy": Out(1),
                "done": Out(1),
                "z_waddr": In(_bits(t_max * widths["z"])),
                "z_wdata": In(signed(32)),
                "z_wen": In(1),
                "a_waddr": In(_bits(t_max * widths["a"])),
                "a_wdata": In(signed(32)),
                "a_wen": In(1),
                "out_raddr": In(_bits(widths["out"])),
                "out_rdata": Out(signed(32)),
                "phase": Out(range(len(self.phases))),
            }
        )

    def _check_placement(self) -> None:
        """No step may read a memory it writes (but the in-place ones): a shared memory has one write port."""
        for s in self.steps:
            if s.op in IN_PLACE or s.dst.startswith("mod"):
                continue
            reads = {PLACEMENT[name] for name in (s.src, s.src2) if name}
            if PLACEMENT[s.dst] in reads:
                raise ValueError(f"step {s.name} reads and writes memory {PLACEMENT[s.dst]}")

    def elaborate(self, platform) -> Module:
        m = Module()
        fpga, d, t_max, frac = self.fpga, self.d, self.t_max, self.frac
        buf = self.buffers
        for name, mem in buf.items():
            m.submodules[f"buf_{name}"] = mem
        m.submodules.linear = eng = self.engine
        m.submodules.ln = ln = LayerNorm(d, frac, "modulated")
        m.submodules.final_ln = fln = LayerNorm(d, frac, "affine")
        m.submodules.attention = att = Attention(d, self.heads, t_max, frac)
        m.submodules.gate = gate = GatedAdd(d, t_max, frac, chunks=3)
        stream_depth = t_max * max(self.hidden, self.widths["c1"], self.widths["p0"])
        m.submodules.gelu = gelu = StreamMap(LutActivation("gelu", frac), stream_depth)
        m.submodules.silu = silu = StreamMap(LutActivation("silu", frac), stream_depth)
        one = np.full(d, 2**COEF_BITS, np.int64)
        m.submodules.pos = pos = ChannelAffine(one, fpga.pos_embed[:t_max], rows_max=t_max)
        m.submodules.batchnorm = bn = ChannelAffine(fpga.bn_scale, fpga.bn_offset, rows_max=1)
        m.submodules.norm_w = norm_w = memory.Memory(shape=signed(32), depth=d, init=[int(v) for v in fpga.norm_weight])
        m.submodules.norm_b = norm_b = memory.Memory(shape=signed(32), depth=d, init=[int(v) for v in fpga.norm_bias])

        wr = {name: mem.write_port() for name, mem in buf.items()}
        rd = {name: mem.read_port() for name, mem in buf.items()}
        qkv_b = buf[PLACEMENT["qkv"]].read_port()  # attention reads two words of qkv a cycle
        m.d.comb += [
            wr["z"].addr.eq(self.z_waddr),
            wr["z"].data.eq(self.z_wdata),
            wr["z"].en.eq(self.z_wen),
            wr["a"].addr.eq(self.a_waddr),
            wr["a"].data.eq(self.a_wdata),
            wr["a"].en.eq(self.a_wen),
            rd["out"].addr.eq(self.out_raddr),
            self.out_rdata.eq(rd["out"].data),
        ]

        def write(name: str, addr, data, en) -> None:
            p = wr[PLACEMENT.get(name, name)]
            m.d.comb += [p.addr.eq(addr), p.data.eq(data), p.en.eq(en)]

        def read(name: str, addr, data, port=None, en=1) -> None:
            p = port if port is not None else rd[PLACEMENT.get(name, name)]
            m.d.comb += [p.addr.eq(addr), data.eq(p.data), p.en.eq(en)]

        def mod_chunk(block: int, col: int) -> tuple[str, int]:
            """Modulation chunk ``col`` (0..5) of block ``block``: its memory and its offset in a row of 3 d."""
            return f"mod{block}{'ab'[col % 2]}", (col // 2) * d

        tokens = Signal.like(self.tokens)
        tail_rows = Signal.like(self.tokens)  # 1 from the last block's attention on
        last_row = Signal(range(t_max))  # T - 1: the last block's query, its gates' and norm's modulation row
        started = Signal()  # the step's unit has been started (it is running, or done this cycle)
        ln_row = Signal(range(t_max + 1))
        x_base = Signal(_bits(t_max * d + 1))
        scale_base, shift_base = Signal(_bits(t_max * 3 * d + 1)), Signal(_bits(t_max * 3 * d + 1))
        odd, in_chunk = Signal(), Signal(range(d))  # a modulation layer's outputs: chunk parity, place in it
        ptr_a, ptr_b = Signal(_bits(t_max * 3 * d + 1)), Signal(_bits(t_max * 3 * d + 1))
        m.d.sync += self.done.eq(0)

        def run(unit, next_state: str) -> None:
            """Start ``unit`` once on entering the step; move on when it is done."""
            m.d.comb += unit.start.eq(~unit.busy & ~started)
            m.d.sync += started.eq(1)
            with m.If(unit.done):
                m.d.sync += started.eq(0)
                m.next = next_state

        def step_logic(s: Step, next_state: str) -> None:
            rows = tail_rows if s.tail else tokens
            row0 = last_row if s.tail else 0  # the first modulation row a tail step reads
            if s.op == "linear":
                read(s.src, eng.x_addr, eng.x_data, en=eng.x_en)
                if s.dst.startswith("mod"):
                    # the outputs come in order, d a chunk: even chunks to memory a, odd ones to b, each in turn
                    for half, ptr in (("a", ptr_a), ("b", ptr_b)):
                        write(f"{s.dst}{half}", ptr, eng.out_data, eng.out_en & (odd == (half == "b")))
                    with m.If(~started):
                        m.d.sync += [odd.eq(0), in_chunk.eq(0), ptr_a.eq(0), ptr_b.eq(0)]
                    with m.Elif(eng.out_en):
                        m.d.sync += in_chunk.eq(in_chunk + 1)
                        with m.If(odd):
                            m.d.sync += ptr_b.eq(ptr_b + 1)
                        with m.Else():
                            m.d.sync += ptr_a.eq(ptr_a + 1)
                        with m.If(in_chunk == d - 1):
                            m.d.sync += [in_chunk.eq(0), odd.eq(~odd)]
                else:
                    write(s.dst, eng.out_addr, eng.out_data, eng.out_en)
                m.d.comb += [eng.rows.eq(rows), eng.layer.eq(self.image.index(s.layer))]
                run(eng, next_state)
            elif s.op in ("silu", "gelu"):
                unit = silu if s.op == "silu" else gelu
                width = self.widths[s.src]
                read(s.src, unit.in_addr, unit.in_data)
                write(s.dst, unit.out_addr, unit.out_data, unit.out_en)
                m.d.comb += unit.count.eq(const_multiply(rows, width))
                run(unit, next_state)
            elif s.op in ("pos", "batchnorm"):
                unit = pos if s.op == "pos" else bn
                read(s.src, unit.x_addr, unit.x_data)
                write(s.dst, unit.out_addr, unit.out_data, unit.out_en)
                m.d.comb += unit.rows.eq(rows)
                run(unit, next_state)
            elif s.op == "attention":
                read("qkv", att.qkv_addr_a, att.qkv_data_a)
                read("qkv", att.qkv_addr_b, att.qkv_data_b, port=qkv_b)
                write(s.dst, att.out_addr, att.out_data, att.out_en)
                m.d.comb += [att.tokens.eq(tokens), att.first_query.eq(row0)]
                run(att, next_state)
            elif s.op == "gate":
                mod, offset = mod_chunk(s.block, s.col[0])
                read(s.src, gate.x_addr, gate.x_data)
                read(mod, gate.g_addr, gate.g_data)
                read(s.src2, gate.y_addr, gate.y_data)
                write(s.dst, gate.out_addr, gate.out_data, gate.out_en)
                # the first gate of the last block reads x at the last token; every other reads from row 0
                x_row0 = row0 if s.tail and s.src == "x" else 0
                m.d.comb += [
                    gate.rows.eq(rows),
                    gate.x_row0.eq(x_row0),
                    gate.m_row0.eq(row0),
                    gate.gate_col.eq(offset // d),
                ]
                run(gate, next_state)
            elif s.op == "norm":
                layer_norm(s, rows, row0, next_state)
            elif s.op == "final_norm":
                read(s.src, fln.addr, fln.x_data)
                read_rom(norm_w, fln.addr, fln.coef_a)
                read_rom(norm_b, fln.addr, fln.coef_b)
                write(s.dst, fln.y_addr, fln.y_data, fln.y_en)
                run(fln, next_state)
            else:  # pragma: no cover - program() makes only the ops above
                raise ValueError(f"unknown op {s.op!r}")

        rom_ports: dict[int, object] = {}

        def read_rom(mem, addr, data) -> None:
            if id(mem) not in rom_ports:
                rom_ports[id(mem)] = mem.read_port()
            port = rom_ports[id(mem)]
            m.d.comb += [port.addr.eq(addr), data.eq(port.data)]

        def layer_norm(s: Step, rows, row0, next_state: str) -> None:
            """The modulated LayerNorm row by row: x row r at r*d, the scale / shift chunks of row row0 + r."""
            (scale_mem, scale_off), (shift_mem, shift_off) = (mod_chunk(s.block, col) for col in s.col)
            read(s.src, x_base + ln.addr, ln.x_data)
            read(scale_mem, scale_base + ln.addr, ln.coef_a)
            read(shift_mem, shift_base + ln.addr, ln.coef_b)
            write(s.dst, x_base + ln.y_addr, ln.y_data, ln.y_en)
            with m.If(~started):
                mod_row = const_multiply(row0 + ln_row, 3 * d)
                m.d.comb += ln.start.eq(1)
                m.d.sync += [
                    started.eq(1),
                    x_base.eq(const_multiply(ln_row, d)),
                    scale_base.eq(mod_row + scale_off),
                    shift_base.eq(mod_row + shift_off),
                ]
            with m.If(ln.done):
                m.d.sync += [ln_row.eq(ln_row + 1), started.eq(0)]
                with m.If(ln_row == rows - 1):
                    m.d.sync += ln_row.eq(0)
                    m.next = next_state

        with m.FSM() as fsm:
            with m.State("IDLE"):
                with m.If(self.start):
                    m.d.sync += [
                        tokens.eq(self.tokens),
                        tail_rows.eq(1),
                        last_row.eq(self.tokens - 1),
                        ln_row.eq(0),
                        started.eq(0),
                    ]
                    m.next = self.steps[0].name
            for i, s in enumerate(self.steps):
                with m.State(s.name):
                    nxt = self.steps[i + 1].name if i + 1 < len(self.steps) else "IDLE"
                    step_logic(s, nxt)
                    if nxt == "IDLE":
                        with m.If(self.engine.done):
                            m.d.sync += self.done.eq(1)
        for index, name in enumerate(self.phases):
            with m.If(fsm.ongoing(name)):
                m.d.comb += self.phase.eq(index)
        m.d.comb += self.busy.eq(~fsm.ongoing("IDLE"))
        return m
