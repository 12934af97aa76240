"""Quantization formats and the quantized linear kernels.

Q4_0 / Q8_0 bytes are compared with the ``gguf`` package's reference quantizer
(ggml's layout); every kernel path is compared with float32 numpy on the
weights it dequantizes to.
"""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType
from gguf.quants import dequantize, quantize

from numba_kernels import quant
from numba_kernels.linear import GELU, KINDS, NO_ACT, PARALLEL_MIN_WEIGHTS, SILU, SMALL_BATCH, QLinear


def random_weights(seed: int) -> np.ndarray:
    """Random rows of several magnitudes, with zero blocks, ties and a single-value block."""
    rng = np.random.default_rng(seed)
    rows, blocks = rng.integers(1, 40), rng.integers(1, 12)
    scale = 10.0 ** rng.uniform(-6, 3)
    w = (rng.standard_normal((rows, 32 * blocks)) * scale).astype(np.float32)
    w[0, :32] = 0.0
    if rows > 1:
        w[1] = np.round(w[1] * 4 / scale) * np.float32(scale / 4)  # many exact ties
    if rows > 2:
        w[2, :32] = 0.0
        w[2, 5] = -scale
    return w


@pytest.mark.parametrize("seed", range(12))
def test_q4_0_and_q8_0_bytes_equal_the_gguf_reference(seed):
    w = random_weights(seed)
    pairs = ((quant.quantize_q4_0, GGMLQuantizationType.Q4_0), (quant.quantize_q8_0, GGMLQuantizationType.Q8_0))
    for ours, qtype in pairs:
        reference = quantize(w, qtype)
        mine = ours(w)
        assert mine.dtype == np.uint8 and mine.shape == reference.shape
        np.testing.assert_array_equal(mine, reference)
    k = w.shape[1]
    np.testing.assert_array_equal(
        quant.dequantize_q4_0(quant.quantize_q4_0(w), k),
        dequantize(quantize(w, GGMLQuantizationType.Q4_0), GGMLQuantizationType.Q4_0),
    )
    np.testing.assert_array_equal(
        quant.dequantize_q8_0(quant.quantize_q8_0(w), k),
        dequantize(quantize(w, GGMLQuantizationType.Q8_0), GGMLQuantizationType.Q8_0),
    )


def test_q4_0_layout_low_nibble_is_element_j_high_is_j_plus_16():
    w = np.zeros((1, 32), np.float32)
    w[0, 0], w[0, 16], w[0, 31] = -8.0, 4.0, 1.0  # d = -8 / -8 = 1: codes = value + 8
    block = quant.quantize_q4_0(w)[0]
    assert block[:2].view(np.float16)[0] == 1.0
    assert block[2] == 0 | (12 << 4)  # element 0 -> code 0 (low), element 16 -> code 12 (high)
    assert block[2 + 15] >> 4 == 9  # element 31 -> code 9


def test_int8_and_ternary_round_trip_within_their_step():
    w = np.random.default_rng(0).standard_normal((20, 70)).astype(np.float32)
    q, scale = quant.quantize_int8(w)
    assert q.dtype == np.int8 and np.abs(q).max() == 127
    assert np.all(np.abs(quant.dequantize_int8(q, scale) - w) <= scale[:, None] / 2 + 1e-7)
    packed, tscale = quant.quantize_ternary(w)
    assert packed.shape == (20, 18) and quant.ternary_codes_valid(packed)
    values = quant.dequantize_ternary(packed, tscale, 70) / tscale[:, None]
    assert set(np.unique(values)) <= {-1.0, 0.0, 1.0}
    assert np.all(np.sign(values) * np.sign(w) >= 0)  # a kept weight keeps its sign
    assert not quant.ternary_codes_valid(np.array([[0b11]], np.uint8))


def test_quantizers_reject_bad_weights():
    with pytest.raises(ValueError, match="multiple of the block size 32"):
        quant.quantize_q4_0(np.zeros((2, 40), np.float32))
    with pytest.raises(ValueError, match="NaN or inf"):
        quant.quantize_q8_0(np.full((1, 32), np.inf, np.float32))
    with pytest.raises(ValueError, match="float32"):
        quant.quantize_int8(np.zeros((2, 4), np.float64))
    with pytest.raises(ValueError, match="2-D"):
        quant.quantize_ternary(np.zeros(4, np.float32))


def dequantized(layer: QLinear) -> np.ndarray:
    k = layer.in_features
    return {
        "f32": lambda: layer.weight,
        "q4_0": lambda: quant.dequantize_q4_0(layer.data, k),
        "q8_0": lambda: quant.dequantize_q8_0(layer.data, k),
        "i8": lambda: quant.dequantize_int8(layer.data.view(np.int8), layer.scale),
        "t2": lambda: quant.dequantize_ternary(layer.data, layer.scale, k),
    }[layer.kind]()


def gelu(x):
    from math import erf, sqrt

    return 0.5 * x * (1 + np.vectorize(erf)(x / sqrt(2)))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("rows", [1, 3, SMALL_BATCH + 1])
@pytest.mark.parametrize("stream", [True, False])
def test_linear_matches_numpy_on_its_dequantized_weights(kind, rows, stream):
    rng = np.random.default_rng(rows)
    n, k = 48, 96
    layer = QLinear.from_float(rng.standard_normal((n, k)).astype(np.float32), rng.standard_normal(n), kind)
    layer.stream_small_batches = stream and kind != "f32"  # the fused kernel, as a large layer would use
    np.testing.assert_array_equal(layer.dequantized(), dequantized(layer))
    x = rng.standard_normal((rows, k)).astype(np.float32)
    pre = x.astype(np.float64) @ dequantized(layer).T.astype(np.float64) + layer.bias
    np.testing.assert_allclose(layer(x), pre, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(layer(x, GELU), gelu(pre), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(layer(x, SILU), pre / (1 + np.exp(-pre)), rtol=1e-4, atol=1e-4)


def test_large_layers_take_the_threaded_kernel_and_agree():
    rng = np.random.default_rng(1)
    n, k = 1024, PARALLEL_MIN_WEIGHTS // 1024 + 32
    layer = QLinear.from_float(rng.standard_normal((n, k)).astype(np.float32), None, "q4_0")
    assert layer.stream_small_batches
    x = rng.standard_normal((2, k)).astype(np.float32)
    np.testing.assert_allclose(layer(x, NO_ACT), x @ dequantized(layer).T, rtol=1e-3, atol=1e-3)


def test_linear_rejects_bad_shapes_before_any_kernel_runs():
    layer = QLinear.from_float(np.zeros((8, 64), np.float32), None, "q4_0")
    with pytest.raises(ValueError, match=r"input must be \[M, 64\]"):
        layer(np.zeros((2, 32), np.float32))
    with pytest.raises(ValueError, match=r"q4_0 data must be uint8 \[8, 36\]"):
        QLinear("q4_0", 64, 8, np.zeros(8, np.float32), data=np.zeros((8, 35), np.uint8))
    with pytest.raises(ValueError, match="divisible by 32"):
        QLinear("q8_0", 40, 8, np.zeros(8, np.float32), data=np.zeros((8, 40), np.uint8))
    with pytest.raises(ValueError, match="unknown weight format 'q3'"):
        QLinear.from_float(np.zeros((8, 64), np.float32), None, "q3")
    with pytest.raises(ValueError, match=r"scale must be float32 \[8\]"):
        QLinear("i8", 64, 8, np.zeros(8, np.float32), data=np.zeros((8, 64), np.uint8))
