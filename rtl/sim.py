"""Drive each unit in Amaranth's simulator (``amaranth.sim.Simulator``) and return its results and cycle
counts: the harnesses the tests and ``benchmarks/rtl_synth.py`` share.

Every ``run_*`` function builds a fresh design, loads its memories, runs it to ``done`` (or drains its
stream) and returns numpy arrays in the reference's dtypes, so a test is one ``np.array_equal``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from amaranth.hdl import Module, signed
from amaranth.lib import memory
from amaranth.sim import Simulator

from numba_kernels.fixed_point import FixedLinear
from rtl.activation import LutActivation
from rtl.attention import Attention
from rtl.block import PHASES, AdaLNBlock
from rtl.elementwise import ChannelAffine, GatedAdd
from rtl.layernorm import LayerNorm
from rtl.layout import LayerImage
from rtl.linear import LinearLayer
from rtl.mac import MacArray, MacFormat, MacLane
from rtl.predictor import Predictor
from rtl.softmax import ExpNeg, Softmax

CLOCK_PERIOD = 1e-8
TIMEOUT_CYCLES = 2_000_000


@dataclass
class Run:
    """A simulation's outputs and the cycles from ``start`` to ``done`` (or first beat to last output)."""

    out: np.ndarray
    cycles: int


def _simulate(design, testbench) -> None:
    sim = Simulator(design)
    sim.add_clock(CLOCK_PERIOD)
    sim.add_testbench(testbench)
    sim.run()


async def _until_done(ctx, dut, on_cycle=None) -> int:
    """Pulse ``start``, then tick until ``done``; ``on_cycle(ctx)`` runs before each tick. Returns the cycles."""
    ctx.set(dut.start, 1)
    await ctx.tick()
    ctx.set(dut.start, 0)
    cycles = 1
    while not ctx.get(dut.done):
        if on_cycle is not None:
            on_cycle(ctx)
        await ctx.tick()
        cycles += 1
        if cycles > TIMEOUT_CYCLES:
            raise TimeoutError(f"{type(dut).__name__} never raised done")
    return cycles


# ---------------------------------------------------------------- MAC lane / array
def lane_beats(layer: FixedLinear, row: int, x: np.ndarray) -> list[dict]:
    """The beats of output ``row`` of ``layer`` on activations x [K] (what a sequencer would send)."""
    k = layer.in_features
    return [
        {
            "x": int(x[j]),
            "code": int(layer.codes[row, j]),
            "mant": int(layer.mant[row, j // layer.block]),
            "shift": int(layer.shift[row, j // layer.block]),
            "bias": int(layer.bias_acc[row]),
            "first": j == 0,
            "block_end": j % layer.block == layer.block - 1,
            "last": j == k - 1,
        }
        for j in range(k)
    ]


async def _stream(ctx, dut, beats: list, n_out: int, rng: np.random.Generator | None) -> tuple[list, int]:
    """Send ``beats`` into ``dut.i`` and collect ``n_out`` payloads from ``dut.o``; with ``rng``, random
    gaps on the input and random backpressure on the output."""
    got, sent, cycles = [], 0, 0
    while len(got) < n_out:
        ready_out = 1 if rng is None else int(rng.integers(0, 4) > 0)
        valid = sent < len(beats) and (rng is None or rng.integers(0, 5) > 0)
        ctx.set(dut.o.ready, ready_out)
        ctx.set(dut.i.valid, int(valid))
        if valid:
            ctx.set(dut.i.payload, beats[sent])
        accepted = valid and ctx.get(dut.i.ready)
        if ctx.get(dut.o.valid) and ready_out:
            got.append(ctx.get(dut.o.payload))
        await ctx.tick()
        cycles += 1
        sent += int(accepted)
        if cycles > TIMEOUT_CYCLES:
            raise TimeoutError(f"{type(dut).__name__} stopped producing")
    return got, cycles


def run_mac_lane(layer: FixedLinear, x: np.ndarray, rows: list[int] | None = None, seed: int | None = None) -> Run:
    """Outputs ``rows`` (default all) of ``layer`` on x [K], one after the other through one :class:`MacLane`."""
    rows = list(range(layer.out_features)) if rows is None else rows
    fmt = MacFormat(
        code_bits=max(4, layer.bits), block_max=max(32, layer.block), mant_bits=12 if layer.bits == 4 else 18
    )
    dut = MacLane(fmt)
    beats = [b for r in rows for b in lane_beats(layer, r, np.asarray(x))]
    res: dict = {}

    async def tb(ctx):
        res["out"], res["cycles"] = await _stream(
            ctx, dut, beats, len(rows), None if seed is None else np.random.default_rng(seed)
        )

    _simulate(dut, tb)
    return Run(np.array(res["out"], np.int64).astype(np.int32), res["cycles"])


def run_mac_array(layer: FixedLinear, x: np.ndarray, lanes: int, seed: int | None = None) -> Run:
    """All outputs of ``layer`` on x [K] through a :class:`MacArray` of ``lanes`` (beats and scale entries
    made here, as the sequencer would), with optional random gaps on both input streams."""
    image = LayerImage.from_fixed(layer, lanes)
    dut = MacArray(lanes, image.fmt)
    x = np.asarray(x)
    beats = []
    for g in range(image.groups):
        for j in range(layer.in_features):
            beats.append(
                {
                    "x": int(x[j]),
                    "code": [int(layer.codes[g * lanes + lane, j]) for lane in range(lanes)],
                    "first": j == 0,
                    "block_end": j % layer.block == layer.block - 1,
                    "last": j == layer.in_features - 1,
                }
            )
    entries = [
        {"mant": int(layer.mant[n, b]), "shift": int(layer.shift[n, b]), "bias": int(layer.bias_acc[n])}
        for g in range(image.groups)
        for b in range(image.blocks)
        for n in range(g * lanes, (g + 1) * lanes)
    ]
    res: dict = {}

    async def tb(ctx):
        rng = None if seed is None else np.random.default_rng(seed)
        got, sent, fed, cycles = [], 0, 0, 0
        while len(got) < layer.out_features:
            beat_valid = sent < len(beats) and (rng is None or rng.integers(0, 5) > 0)
            scale_valid = fed < len(entries) and (rng is None or rng.integers(0, 5) > 0)
            ctx.set(dut.i.valid, int(beat_valid))
            ctx.set(dut.scales.valid, int(scale_valid))
            if beat_valid:
                ctx.set(dut.i.payload, beats[sent])
            if scale_valid:
                ctx.set(dut.scales.payload, entries[fed])
            took_beat = beat_valid and ctx.get(dut.i.ready)
            took_scale = scale_valid and ctx.get(dut.scales.ready)
            if ctx.get(dut.o.valid):
                got.append(ctx.get(dut.o.payload))
            await ctx.tick()
            sent, fed, cycles = sent + int(took_beat), fed + int(took_scale), cycles + 1
            if cycles > TIMEOUT_CYCLES:
                raise TimeoutError("MacArray stopped producing")
        res["out"], res["cycles"] = got, cycles

    _simulate(dut, tb)
    return Run(np.array(res["out"], np.int64).astype(np.int32), res["cycles"])


# ---------------------------------------------------------------- a whole layer from block RAM
def run_linear(layer: FixedLinear, x: np.ndarray, lanes: int) -> Run:
    """``layer`` on int32 x [rows, K] by :class:`LinearLayer` (sequencer + array + memories) -> [rows, N]."""
    x = np.atleast_2d(np.asarray(x))
    runs = run_layer_table(LinearLayer(LayerImage.from_fixed(layer, lanes), rows_max=x.shape[0]), [(0, x)])
    return runs[0]


def run_layer_table(dut: LinearLayer, calls: list[tuple[int, np.ndarray]]) -> list[Run]:
    """Several runs of one :class:`LinearLayer` in one simulation, each ``(table row, int32 x [rows, K])``: the
    layer's shape and weights are picked at each start. -> one :class:`Run` per call ([rows, N])."""
    results: list[Run] = []

    async def tb(ctx):
        for index, x in calls:
            x = np.atleast_2d(np.asarray(x))
            rows, n = x.shape[0], dut.image.entries[index].n
            for i, v in enumerate(x.ravel()):
                ctx.set(dut.x_mem.data[i], int(v))
            ctx.set(dut.rows, rows)
            ctx.set(dut.layer, index)
            cycles = await _until_done(ctx, dut)
            out = np.array([ctx.get(dut.y_mem.data[i]) for i in range(rows * n)], np.int64).reshape(rows, n)
            results.append(Run(out.astype(np.int32), cycles))
            await ctx.tick()

    _simulate(dut, tb)
    return results


# ---------------------------------------------------------------- LayerNorm
def _rom_port(top: Module, name: str, values: np.ndarray, addr, data) -> None:
    mem = memory.Memory(shape=signed(32), depth=len(values), init=[int(v) for v in values])
    top.submodules[name] = mem
    port = mem.read_port()
    top.d.comb += [port.addr.eq(addr), data.eq(port.data)]


def run_layer_norm(
    x: np.ndarray,
    frac: int = 16,
    weight: np.ndarray | None = None,
    bias: np.ndarray | None = None,
    shift: np.ndarray | None = None,
    scale: np.ndarray | None = None,
) -> Run:
    """:class:`LayerNorm` on each row of int32 x [R, D] (a fresh run per row) -> [R, D]; cycles of the last row.

    ``weight`` / ``bias`` [D] (affine) or ``shift`` / ``scale`` [R, D] (modulated), as ``layer_norm_int``."""
    x = np.atleast_2d(np.asarray(x, np.int32))
    rows, d = x.shape
    mode = "affine" if weight is not None else "modulated" if shift is not None else "plain"
    out = np.zeros_like(x)
    cycles = 0
    for r in range(rows):
        if mode == "affine":
            coef_a, coef_b = np.asarray(weight), np.asarray(bias)
        elif mode == "modulated":
            coef_a, coef_b = np.asarray(scale)[r], np.asarray(shift)[r]
        else:
            coef_a = coef_b = np.zeros(d, np.int32)
        top = Module()
        top.submodules.dut = dut = LayerNorm(d, frac, mode)
        _rom_port(top, "x_mem", x[r], dut.addr, dut.x_data)
        _rom_port(top, "a_mem", coef_a, dut.addr, dut.coef_a)
        _rom_port(top, "b_mem", coef_b, dut.addr, dut.coef_b)
        res: dict = {}

        def collect(ctx, row=r, dut=dut):
            if ctx.get(dut.y_en):
                out[row, ctx.get(dut.y_addr)] = ctx.get(dut.y_data)

        async def tb(ctx, dut=dut, res=res, collect=collect):
            res["cycles"] = await _until_done(ctx, dut, collect)

        _simulate(top, tb)
        cycles = res["cycles"]
    return Run(out, cycles)


# ---------------------------------------------------------------- activations, exp, softmax
def run_activation(kind: str, x: np.ndarray, frac: int = 16, seed: int | None = None) -> Run:
    """:class:`LutActivation` on int32 x (any shape) -> the same shape; optional random stalls."""
    x = np.asarray(x, np.int32)
    dut = LutActivation(kind, frac)
    res: dict = {}

    async def tb(ctx):
        rng = None if seed is None else np.random.default_rng(seed)
        res["out"], res["cycles"] = await _stream(ctx, dut, [int(v) for v in x.ravel()], x.size, rng)

    _simulate(dut, tb)
    return Run(np.array(res["out"], np.int64).astype(np.int32).reshape(x.shape), res["cycles"])


def run_exp(u: np.ndarray, frac: int = 16, seed: int | None = None) -> Run:
    """:class:`ExpNeg` on int64 u <= 0 -> int64 Q30."""
    u = np.asarray(u, np.int64).ravel()
    dut = ExpNeg(frac)
    res: dict = {}

    async def tb(ctx):
        rng = None if seed is None else np.random.default_rng(seed)
        res["out"], res["cycles"] = await _stream(ctx, dut, [int(v) for v in u], u.size, rng)

    _simulate(dut, tb)
    return Run(np.array(res["out"], np.int64), res["cycles"])


def run_softmax(scores: np.ndarray, frac: int = 16, t_max: int | None = None) -> Run:
    """:class:`Softmax` of one query's int64 scores [T] -> int64 Q30 probabilities [T]."""
    scores = np.asarray(scores, np.int64).ravel()
    t_max = t_max or scores.size
    top = Module()
    top.submodules.dut = dut = Softmax(t_max, frac)
    mem = memory.Memory(shape=signed(64), depth=t_max, init=[int(v) for v in scores])
    top.submodules.scores = mem
    port = mem.read_port()
    top.d.comb += [port.addr.eq(dut.score_addr), dut.score_data.eq(port.data)]
    out = np.zeros(scores.size, np.int64)
    res: dict = {}

    def collect(ctx):
        if ctx.get(dut.p_en):
            out[ctx.get(dut.p_addr)] = ctx.get(dut.p_data)

    async def tb(ctx):
        ctx.set(dut.count, scores.size)
        res["cycles"] = await _until_done(ctx, dut, collect)

    _simulate(top, tb)
    return Run(out, res["cycles"])


# ---------------------------------------------------------------- attention
def run_attention(qkv: np.ndarray, heads: int, frac: int = 16, first_query: int = 0) -> Run:
    """:class:`Attention` on int32 qkv [T, 3d] (one sequence) -> int32 [T - first_query, d]."""
    qkv = np.asarray(qkv, np.int32)
    tokens, three_d = qkv.shape
    d = three_d // 3
    top = Module()
    top.submodules.dut = dut = Attention(d, heads, tokens, frac)
    mem = memory.Memory(shape=signed(32), depth=qkv.size, init=[int(v) for v in qkv.ravel()])
    top.submodules.qkv = mem
    for addr, data in ((dut.qkv_addr_a, dut.qkv_data_a), (dut.qkv_addr_b, dut.qkv_data_b)):
        port = mem.read_port()
        top.d.comb += [port.addr.eq(addr), data.eq(port.data)]
    out = np.zeros((tokens - first_query) * d, np.int64)
    res: dict = {}

    def collect(ctx):
        if ctx.get(dut.out_en):
            out[ctx.get(dut.out_addr)] = ctx.get(dut.out_data)

    async def tb(ctx):
        ctx.set(dut.tokens, tokens)
        ctx.set(dut.first_query, first_query)
        res["cycles"] = await _until_done(ctx, dut, collect)

    _simulate(top, tb)
    return Run(out.reshape(tokens - first_query, d).astype(np.int32), res["cycles"])


# ---------------------------------------------------------------- a whole block
def run_block(block: AdaLNBlock, x: np.ndarray, mod: np.ndarray) -> tuple[Run, dict[str, int]]:
    """:class:`AdaLNBlock` on int32 x [T, d] and its modulation [T, 6d] -> (int32 [T', d], cycles per phase)."""
    x, mod = np.asarray(x, np.int32), np.asarray(mod, np.int32)
    tokens = x.shape[0]
    rows_out = 1 if block.last else tokens
    res: dict = {}
    phases: dict[str, int] = {}

    def count(ctx):
        name = PHASES[ctx.get(block.phase)]
        phases[name] = phases.get(name, 0) + 1

    async def tb(ctx):
        for i, v in enumerate(x.ravel()):
            ctx.set(block.x_mem.data[i], int(v))
        for i, v in enumerate(mod.ravel()):
            ctx.set(block.mod_mem.data[i], int(v))
        ctx.set(block.tokens, tokens)
        res["cycles"] = await _until_done(ctx, block, count)
        res["out"] = np.array([ctx.get(block.out_mem.data[i]) for i in range(rows_out * block.d)], np.int64)

    _simulate(block, tb)
    return Run(res["out"].reshape(rows_out, block.d).astype(np.int32), res["cycles"]), phases


# ---------------------------------------------------------------- gated residual
def run_gated_add(x: np.ndarray, gate: np.ndarray, y: np.ndarray, frac: int = 16) -> Run:
    """:class:`GatedAdd` on int32 x, gate, y [R, d] (the gate as chunk 2 of a [R, 6d] modulation) -> [R, d]."""
    x, gate, y = (np.asarray(v, np.int32) for v in (x, gate, y))
    rows, d = x.shape
    mod = np.zeros((rows, 6, d), np.int32)
    mod[:, 2] = gate
    top = Module()
    top.submodules.dut = dut = GatedAdd(d, rows, frac)
    for name, values, addr, data in (
        ("x", x, dut.x_addr, dut.x_data),
        ("g", mod, dut.g_addr, dut.g_data),
        ("y", y, dut.y_addr, dut.y_data),
    ):
        _rom_port(top, f"{name}_mem", values.ravel(), addr, data)
    out = np.zeros(rows * d, np.int64)
    res: dict = {}

    def collect(ctx):
        if ctx.get(dut.out_en):
            out[ctx.get(dut.out_addr)] = ctx.get(dut.out_data)

    async def tb(ctx):
        ctx.set(dut.rows, rows)
        ctx.set(dut.gate_col, 2)
        res["cycles"] = await _until_done(ctx, dut, collect)

    _simulate(top, tb)
    return Run(out.reshape(rows, d).astype(np.int32), res["cycles"])


def run_channel_affine(x: np.ndarray, scale: np.ndarray, offset: np.ndarray) -> Run:
    """:class:`ChannelAffine` on int32 x [R, C] with scale [C] (Q.COEF_BITS) and offset [C] or [R, C] -> [R, C]."""
    x = np.asarray(x, np.int32)
    rows, c = x.shape
    top = Module()
    top.submodules.dut = dut = ChannelAffine(scale, offset, rows_max=rows)
    _rom_port(top, "x_mem", x.ravel(), dut.x_addr, dut.x_data)
    out = np.zeros(rows * c, np.int64)
    res: dict = {}

    def collect(ctx):
        if ctx.get(dut.out_en):
            out[ctx.get(dut.out_addr)] = ctx.get(dut.out_data)

    async def tb(ctx):
        ctx.set(dut.rows, rows)
        res["cycles"] = await _until_done(ctx, dut, collect)

    _simulate(top, tb)
    return Run(out.reshape(rows, c).astype(np.int32), res["cycles"])


# ---------------------------------------------------------------- the whole predictor
def run_predictor(pred: Predictor, z_q: np.ndarray, a_q: np.ndarray) -> tuple[Run, dict[str, int]]:
    """:class:`~rtl.predictor.Predictor` on one window (int32 z [T, D], a [T, A]) -> (int32 [D], cycles per step)."""
    z_q, a_q = np.asarray(z_q, np.int32), np.asarray(a_q, np.int32)
    tokens = z_q.shape[0]
    res: dict = {}
    phases: dict[str, int] = {}

    def count(ctx):
        name = pred.phases[ctx.get(pred.phase)]
        phases[name] = phases.get(name, 0) + 1

    async def tb(ctx):
        for mem, values in ((pred.z_mem, z_q), (pred.a_mem, a_q)):
            for i, v in enumerate(values.ravel()):
                ctx.set(mem.data[i], int(v))
        ctx.set(pred.tokens, tokens)
        res["cycles"] = await _until_done(ctx, pred, count)
        width = pred.widths["out"]
        res["out"] = np.array([ctx.get(pred.out_mem.data[i]) for i in range(width)], np.int64)

    _simulate(pred, tb)
    return Run(res["out"].astype(np.int32), res["cycles"]), phases
