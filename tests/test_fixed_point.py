"""The fixed-point (FPGA) reference predictor: bit-exact, batch-independent, and close to the float backends.

Tolerances (measured by benchmarks/fixed_point_error.py on 424 held-out clips, docs/fpga_fixed_point.md):
against ``numba-q4`` (the same Q4 weights in float32) predict has relative L2 at most 9e-5 and cosine
1.000000, a 5-step rollout relative L2 at most 1.1e-3; against float32 ``numba`` the Q4 weights
themselves cost cosine 0.9993 mean, 0.994 worst. The thresholds leave 10x margins on the relative L2s,
3x on 1 - cosine.
"""

from __future__ import annotations

import math
import zlib

import numpy as np
import pytest

import world_models
from leworld_env.sim.collect import CollectConfig, collect_episode
from numba_kernels import fixed_point as fx
from numba_kernels.nn_ops import attention
from numba_kernels.quant import F16_TO_F32, quantize_q4_0
from world_models.backends.devices.fixed_point import FixedPointPredictor
from world_models.errors import LeWorldError
from world_models.locate import SHIPPED_DIR, resolve_lq40

F = 16
rng = np.random.default_rng(0)


@pytest.fixture(scope="module")
def fixed() -> FixedPointPredictor:
    return FixedPointPredictor.from_lq40(resolve_lq40("pusht-tiny"))


@pytest.fixture(scope="module")
def f32():
    return world_models.load("pusht-tiny", backend="numba")


@pytest.fixture(scope="module")
def clips(f32):
    """(z_hist [N, 3, D], a_hist [N, 3, 2], a_future [N, 5, 2]) of real latents: two fresh weak-expert episodes
    (a seed no training data used), one frame per model step, encoded by the float32 encoder."""
    cfg = f32.config
    config = CollectConfig(policy="weak-expert", episodes=2, image_size=cfg.image_size, max_steps=300, seed=2026)
    zs, hist, future = [], [], []
    for index in range(2):
        episode = collect_episode(config, index)
        z = f32.encode(episode["observations"]["pixels"][:: cfg.frameskip])
        a = episode["actions"][:: cfg.frameskip]
        for t in range(cfg.history, min(len(z), len(a) - 4)):
            zs.append(z[t - cfg.history : t])
            hist.append(a[t - cfg.history : t])
            future.append(a[t : t + 5])
    return np.stack(zs), np.stack(hist).astype(np.float32), np.stack(future).astype(np.float32)


def cosine(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    x, y = x.reshape(-1, x.shape[-1]).astype(np.float64), y.reshape(-1, y.shape[-1]).astype(np.float64)
    return (x * y).sum(1) / (np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1))


def rel_l2(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    x, y = x.reshape(-1, x.shape[-1]).astype(np.float64), y.reshape(-1, y.shape[-1]).astype(np.float64)
    return np.linalg.norm(x - y, axis=1) / np.linalg.norm(y, axis=1)


# ---------------------------------------------------------------- the predictor
def test_a_row_is_bit_exact_alone_and_anywhere_in_a_shuffled_batch_of_64(fixed, clips):
    z, a, future = (x[:64] for x in clips)
    batch = fixed.predict(z, a)
    order = np.random.default_rng(1).permutation(64)
    shuffled = fixed.predict(z[order], a[order])
    np.testing.assert_array_equal(shuffled, batch[order])
    for i in (0, 17, 63):
        np.testing.assert_array_equal(fixed.predict(z[i : i + 1], a[i : i + 1])[0], batch[i])
    rolled = fixed.rollout(z[:16], a[:16], future[:16])
    p = order[order < 16]
    np.testing.assert_array_equal(fixed.rollout(z[p], a[p], future[p]), rolled[p])
    np.testing.assert_array_equal(fixed.rollout(z[5:6], a[5:6], future[5:6])[0], rolled[5])


def test_two_instances_give_the_same_bits(fixed, clips):
    other = FixedPointPredictor.from_lq40(SHIPPED_DIR / "pusht-tiny" / "model.lq40")
    z, a, future = (x[:8] for x in clips)
    np.testing.assert_array_equal(other.predict(z, a), fixed.predict(z, a))
    np.testing.assert_array_equal(other.rollout(z, a, future), fixed.rollout(z, a, future))


def test_outputs_are_the_fixed_point_integers(fixed, clips):
    z, a, _ = clips
    out = fixed.predict(z[:8], a[:8])
    assert out.dtype == np.float32 and out.shape == (8, fixed.config.latent_dim)
    q = fixed.predict_fixed(fixed.quantize(z[:8]), fixed.quantize(a[:8]))
    assert q.dtype == np.int32
    np.testing.assert_array_equal(out * np.float32(2**F), q.astype(np.float32))


def test_agrees_with_numba_q4_and_float32_numba_on_real_latents(fixed, f32, clips):
    q4 = world_models.load("pusht-tiny", backend="numba-q4")
    z, a, future = clips
    ours = fixed.predict(z, a)
    assert rel_l2(ours, q4.predict(z, a)).max() < 1e-3
    assert cosine(ours, q4.predict(z, a)).min() > 0.99999
    rolled = fixed.rollout(z, a, future)
    assert rel_l2(rolled, q4.rollout(z, a, future)).max() < 1e-2
    assert cosine(rolled, q4.rollout(z, a, future)).min() > 0.9999
    cos = cosine(ours, f32.predict(z, a))  # dominated by the Q4 weights themselves
    assert cos.mean() > 0.998 and cos.min() > 0.98, (cos.mean(), cos.min())


def test_history_and_rollout_semantics_match_world_model(fixed, clips):
    z, a, future = (x[:4] for x in clips)
    longer_z = np.concatenate([z[:, :2] + 1, z], axis=1)  # 5 steps: only the last 3 count
    longer_a = np.concatenate([a[:, :2] - 0.5, a], axis=1)
    np.testing.assert_array_equal(fixed.predict(longer_z, longer_a), fixed.predict(z, a))
    assert fixed.predict(z[:, -1:], a[:, -1:]).shape == (4, fixed.config.latent_dim)  # T = 1 works
    # rollout == predicting step by step and feeding back, as WorldModel._rollout does
    rolled = fixed.rollout(z[:, -2:], a[:, -2:], future)
    zw, aw = z[:, -2:], a[:, -2:]
    for k in range(future.shape[1]):
        step = fixed.predict(zw, aw)
        np.testing.assert_array_equal(rolled[:, k], step)
        zw = np.concatenate([zw, step[:, None]], axis=1)[:, -3:]
        aw = np.concatenate([aw, future[:, k : k + 1]], axis=1)[:, -3:]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((np.zeros((2, 3, 63)), np.zeros((2, 3, 2))), r"z_hist must have shape \[B, T, 64\]"),
        ((np.zeros((2, 3, 64)), np.zeros((2, 3, 3))), r"a_hist must have shape \[B, T, 2\]"),
        ((np.zeros((2, 0, 64)), np.zeros((2, 0, 2))), r"z_hist must have shape"),
        ((np.zeros((2, 3, 64)), np.zeros((2, 2, 2))), r"must agree on \[B, T\]"),
        ((np.full((1, 3, 64), np.nan), np.zeros((1, 3, 2))), "z_hist holds NaN or inf"),
        ((np.zeros((1, 3, 64)), np.full((1, 3, 2), np.inf)), "a_hist holds NaN or inf"),
        ((np.full((1, 3, 64), 1e6), np.zeros((1, 3, 2))), "outside the fixed-point range"),
    ],
)
def test_bad_inputs_raise_value_errors(fixed, args, message):
    with pytest.raises(ValueError, match=message):
        fixed.predict(*args)


def test_bad_rollout_inputs_raise_value_errors(fixed):
    z, a = np.zeros((2, 3, 64), np.float32), np.zeros((2, 3, 2), np.float32)
    with pytest.raises(ValueError, match="a_future has batch 3"):
        fixed.rollout(z, a, np.zeros((3, 5, 2)))
    with pytest.raises(ValueError, match=r"a_future must have shape \[B, T, 2\]"):
        fixed.rollout(z, a, np.zeros((2, 5)))
    with pytest.raises(ValueError, match=r"z_q must be int32 \[B, T, 64\]"):
        fixed.predict_fixed(z, fixed.quantize(a))
    with pytest.raises(ValueError, match="future_q has batch 1, expected 2"):
        fixed.rollout_fixed(fixed.quantize(z), fixed.quantize(a), np.zeros((1, 5, 2), np.int32))


def test_bad_files_and_non_q4_predictors_raise_leworld_errors(tmp_path):
    from world_models.backends.quantize import quantize_folder

    with pytest.raises(LeWorldError, match="no model"):
        FixedPointPredictor.from_lq40(tmp_path / "missing.lq40")
    junk = tmp_path / "junk.lq40"
    junk.write_bytes(b"not an lq40 file at all")
    with pytest.raises(LeWorldError, match=r"junk\.lq40"):
        FixedPointPredictor.from_lq40(junk)
    ternary = tmp_path / "ternary.lq40"
    quantize_folder(SHIPPED_DIR / "pusht-tiny", "ternary", ternary)
    with pytest.raises(LeWorldError, match=r"ternary\.lq40: .*needs a Q4 predictor: layer predictor\.\S+ is t2"):
        FixedPointPredictor.from_lq40(ternary)
    with pytest.raises(ValueError, match=r"frac_bits must be in 6\.\.24"):
        FixedPointPredictor.from_lq40("pusht-tiny", frac_bits=4)


# ---------------------------------------------------------------- the integer kernels
def test_round_shift_rounds_half_up_and_shift_add_multiplies_exactly():
    values = np.array([5, -5, 6, -6, 7, -7, 3, -3, 2**40 + 3, -(2**40) - 3, 2**62, -(2**62)], np.int64)
    for s in (0, 1, 2, 5, 40, 63, 70):
        expected = [v if s == 0 else (v + 2 ** (s - 1)) // 2**s for v in values.tolist()]
        got = [fx.round_shift.py_func(v, s) for v in values]  # the same source numba compiles
        assert got == expected, s
    xs = [0, 1, -1, 12345, -99999, 2**31 - 1, -(2**31)]
    assert all(fx.shift_add(c, x, 4) == c * x for c in range(-8, 8) for x in xs)
    assert all(fx.shift_add(c, x, 8) == c * x for c in range(-128, 128) for x in xs)


def test_fp16_scales_are_exact_mantissa_and_shift():
    bits = np.arange(65536)
    finite = ((bits >> 10) & 0x1F) != 31
    mant, exp = fx.fp16_mantissa_exponent(bits[finite])
    np.testing.assert_array_equal(mant * 2.0**exp, F16_TO_F32[finite].astype(np.float64))
    assert np.abs(mant).max() < 2**11


def test_q4_shift_add_matvec_equals_the_exact_integer_product():
    n, k = 48, 96
    weight = (rng.standard_normal((n, k)) * 0.05).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32)
    layer = fx.FixedLinear.from_quantized("q4_0", quantize_q4_0(weight), np.zeros(0), bias, n, k, F)
    x = fx.to_fixed(rng.standard_normal((5, k)) * 3, F)
    # The exact products in numpy int64: codes . x per block, times the mantissa, shifted, summed.
    codes = layer.codes.astype(np.int64).reshape(n, k // 32, 32)
    block_sums = np.einsum("nbj,mbj->mnb", codes, x.astype(np.int64).reshape(5, k // 32, 32))
    products = block_sums * layer.mant[None]
    right = np.maximum(-layer.shift, 0)[None]
    shifted = np.where(
        right > 0, (products + (1 << np.maximum(right - 1, 0))) >> right, products << np.maximum(layer.shift, 0)[None]
    )
    acc = shifted.sum(axis=2) + layer.bias_acc
    expected = (acc + (1 << (fx.ACC_GUARD_BITS - 1))) >> fx.ACC_GUARD_BITS
    np.testing.assert_array_equal(layer(x), expected)
    # ... which is the float layer on the same Q4 weights, to the activation step
    float_out = (x / 2.0**F) @ layer.dequantized().T + bias
    np.testing.assert_allclose(layer(x) / 2.0**F, float_out, atol=1e-4)


def test_layer_norms_match_float():
    x = rng.standard_normal((7, 96)) * 3 + 1
    xq = fx.to_fixed(x, F)
    xf = xq / 2.0**F
    normed = (xf - xf.mean(1, keepdims=True)) / np.sqrt(xf.var(1, keepdims=True) + fx.LN_EPS)
    np.testing.assert_allclose(fx.layer_norm_int(xq, F) / 2.0**F, normed, atol=2e-5)
    w, b = rng.standard_normal(96), rng.standard_normal(96)
    wq, bq = fx.to_fixed(w, fx.COEF_BITS), fx.to_fixed(b, F)
    affine = fx.layer_norm_int(xq, F, weight=wq, bias=bq) / 2.0**F
    np.testing.assert_allclose(affine, normed * wq / 2.0**fx.COEF_BITS + bq / 2.0**F, atol=5e-5)
    shift, scale = fx.to_fixed(rng.standard_normal((7, 96)), F), fx.to_fixed(rng.standard_normal((7, 96)) * 0.5, F)
    modulated = fx.layer_norm_int(xq, F, shift=shift, scale=scale) / 2.0**F
    np.testing.assert_allclose(modulated, normed * (1 + scale / 2.0**F) + shift / 2.0**F, atol=5e-5)
    tiny = fx.to_fixed(np.full((1, 96), 0.25) + np.arange(96) * 2.0**-F, F)  # variance far below eps
    xf = tiny / 2.0**F
    expected = (xf - xf.mean()) / np.sqrt(xf.var() + fx.LN_EPS)
    np.testing.assert_allclose(fx.layer_norm_int(tiny, F) / 2.0**F, expected, atol=2e-5)


def test_inverse_square_root_has_thirty_bits():
    for a in [1, 2, 3, 10, 96, 2**20 + 7, 2**40 + 12345, 3 * 2**55, 2**62 - 1]:
        assert abs(fx.inv_sqrt_int(a) * math.sqrt(a) - 1) < 2e-9, a


def test_gelu_silu_and_exp_match_float():
    x = np.concatenate([np.linspace(-20, 20, 4001), rng.standard_normal(1000) * 4])[None]
    xq = fx.to_fixed(x, F)
    xf = xq / 2.0**F
    gelu = np.array([0.5 * v * (1 + math.erf(v / math.sqrt(2))) for v in xf[0]])
    silu = xf[0] / (1 + np.exp(-xf[0]))
    np.testing.assert_allclose(fx.gelu_fixed(xq, F)[0] / 2.0**F, gelu, atol=4e-5)
    np.testing.assert_allclose(fx.silu_fixed(xq, F)[0] / 2.0**F, silu, atol=4e-5)
    u = fx.to_fixed(-np.abs(rng.standard_normal(2000)) * 6, F).astype(np.int64)
    np.testing.assert_allclose(fx.exp_neg_int(u, F) / 2.0**30, np.exp(u / 2.0**F), atol=2e-6)


@pytest.mark.parametrize("first_query", [0, 2])
def test_softmax_attention_matches_float(first_query):
    qkv = fx.to_fixed(rng.standard_normal((3, 3, 3 * 96)) * 2, F)
    expected = attention((qkv / 2.0**F).astype(np.float32), 4, causal=True, first_query=first_query)
    np.testing.assert_allclose(fx.attention_int(qkv, 4, F, first_query) / 2.0**F, expected, atol=5e-5)


def test_attention_saturates_instead_of_wrapping_at_the_int32_limits():
    """q . k of int32 extremes overflows int64 (24 products of ~2**62): the accumulator saturates, so the
    query still attends to the key it agrees with, exactly, instead of to a wrapped-around score."""
    d, hd = 96, 24
    qkv = np.zeros((1, 2, 3 * d), np.int32)
    qkv[0, 1, :d] = fx.INT32_MAX  # the query of token 1
    qkv[0, 0, d : 2 * d] = fx.INT32_MAX  # key 0 agrees with it (q . k = +24 * 2**62 before saturation)
    qkv[0, 1, d : 2 * d] = fx.INT32_MIN  # key 1 opposes it
    qkv[0, 0, 2 * d :] = np.arange(d) * 1000 - 40_000  # value 0
    qkv[0, 1, 2 * d :] = 7  # value 1
    wrapped = (hd * fx.INT32_MAX**2 + 2**63) % 2**64 - 2**63  # what an unchecked int64 sum would hold
    assert wrapped != hd * fx.INT32_MAX**2
    out = fx.attention_int(qkv, 4, F)
    np.testing.assert_array_equal(out[0, 1], qkv[0, 0, 2 * d :])  # all weight on key 0
    np.testing.assert_array_equal(out[0, 0], qkv[0, 0, 2 * d :])  # token 0 sees only itself


def test_roms_are_the_pinned_integers():
    """The FPGA's ROMs must hold exactly these integers (little-endian int64 CRC32s)."""
    for name, crc in fx.ROM_CRC32.items():
        assert zlib.crc32(getattr(fx, name).astype("<i8").tobytes()) == crc, name
