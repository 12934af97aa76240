"""The transformer ops of the numba engine against torch's definitions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from numba_kernels.linear import GELU, SILU
from numba_kernels.nn_ops import apply_activation, attention, batch_norm, layer_norm, modulated_layer_norm

rng = np.random.default_rng(0)


def randn(*shape: int) -> np.ndarray:
    return rng.standard_normal(shape).astype(np.float32)


def test_layer_norms_match_torch():
    x, w, b, shift, scale = randn(7, 24), randn(24), randn(24), randn(7, 24), randn(7, 24)
    t = torch.from_numpy
    np.testing.assert_allclose(layer_norm(x, w, b), F.layer_norm(t(x), (24,), t(w), t(b)).numpy(), atol=1e-5)
    expected = F.layer_norm(t(x), (24,)) * (1 + t(scale)) + t(shift)
    np.testing.assert_allclose(modulated_layer_norm(x, shift, scale), expected.numpy(), atol=1e-5)


def test_batch_norm_and_activations_match_torch():
    x, mean, weight, bias = randn(5, 16), randn(16), randn(16), randn(16)
    var = np.abs(randn(16)) + 0.1
    t = torch.from_numpy
    expected = F.gelu(F.batch_norm(t(x), t(mean), t(var), t(weight), t(bias), training=False))
    np.testing.assert_allclose(batch_norm(x, mean, var, weight, bias, GELU), expected.numpy(), atol=2e-6)
    wide = randn(3, 1000) * 4
    np.testing.assert_allclose(apply_activation(wide, GELU), F.gelu(t(wide)).numpy(), atol=2e-6)
    np.testing.assert_allclose(apply_activation(wide, SILU), F.silu(t(wide)).numpy(), atol=2e-6)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("steps", [5, 17])  # the scalar kernel, and numpy's batched products
def test_attention_matches_torch_including_the_last_query_shortcut(causal, steps):
    b, heads, d = 3, 4, 32
    qkv = randn(b, steps, 3 * d)
    q, k, v = torch.from_numpy(qkv).view(b, steps, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
    expected = F.scaled_dot_product_attention(q, k, v, is_causal=causal).transpose(1, 2).reshape(b, steps, d)
    np.testing.assert_allclose(attention(qkv, heads, causal), expected.numpy(), atol=1e-5)
    np.testing.assert_allclose(
        attention(qkv, heads, causal, first_query=steps - 1), expected[:, -1:].numpy(), atol=1e-5
    )
