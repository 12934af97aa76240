"""The transformer ops LeWM needs, on float32 numpy arrays, in torch's definitions.

Rows are the last axis (``[R, D]`` for R tokens of width D). Every function
allocates its output and returns it. The kernels run on the calling thread
(see :mod:`numba_kernels.linear` on sharing the cores with BLAS).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from numba_kernels.linear import activate

EPS = 1e-5  # torch's LayerNorm / BatchNorm default


@njit(cache=True, fastmath=True, error_model="numpy")
def _layer_norm(x, weight, bias, shift, scale, eps, out):
    d = x.shape[1]
    affine = weight.shape[0] > 0
    modulated = shift.shape[0] > 0
    for r in range(x.shape[0]):
        mean = np.float32(0.0)
        for j in range(d):
            mean += x[r, j]
        mean /= d
        var = np.float32(0.0)
        for j in range(d):
            var += (x[r, j] - mean) * (x[r, j] - mean)
        inv = np.float32(1.0) / np.float32(math.sqrt(var / d + eps))
        for j in range(d):
            v = (x[r, j] - mean) * inv
            if affine:
                v = v * weight[j] + bias[j]
            if modulated:
                v = v * (np.float32(1.0) + scale[r, j]) + shift[r, j]
            out[r, j] = v


_NONE_1 = np.zeros(0, np.float32)
_NONE_2 = np.zeros((0, 0), np.float32)


def layer_norm(x: np.ndarray, weight: np.ndarray | None = None, bias: np.ndarray | None = None) -> np.ndarray:
    """LayerNorm over the last axis of x [R, D] (affine when ``weight`` and ``bias`` are given)."""
    out = np.empty_like(x)
    w = _NONE_1 if weight is None else weight
    b = _NONE_1 if bias is None else bias
    _layer_norm(x, w, b, _NONE_2, _NONE_2, np.float32(EPS), out)
    return out


def modulated_layer_norm(x: np.ndarray, shift: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """adaLN: LayerNorm(x) * (1 + scale) + shift, per row (x, shift, scale [R, D], no affine)."""
    out = np.empty_like(x)
    _layer_norm(x, _NONE_1, _NONE_1, np.ascontiguousarray(shift), np.ascontiguousarray(scale), np.float32(EPS), out)
    return out


@njit(cache=True, fastmath=True, error_model="numpy")
def _batch_norm_act(x, mean, var, weight, bias, eps, act, out):
    for r in range(x.shape[0]):
        for j in range(x.shape[1]):
            v = (x[r, j] - mean[j]) / np.float32(math.sqrt(var[j] + eps)) * weight[j] + bias[j]
            out[r, j] = activate(v, act)


def batch_norm(
    x: np.ndarray, mean: np.ndarray, var: np.ndarray, weight: np.ndarray, bias: np.ndarray, act: int = 0
) -> np.ndarray:
    """BatchNorm1d in eval mode (running statistics) on x [R, C], then an activation (see ``linear``)."""
    out = np.empty_like(x)
    _batch_norm_act(x, mean, var, weight, bias, np.float32(EPS), act, out)
    return out


@njit(cache=True, fastmath=True, error_model="numpy")
def _group_norm_act(x, groups, weight, bias, eps, act, out):
    b_size, positions, channels = x.shape
    per = channels // groups
    count = positions * per
    for b in range(b_size):
        for g in range(groups):
            lo, hi = g * per, (g + 1) * per
            total = 0.0  # float64: a group spans thousands of values
            for p in range(positions):
                for c in range(lo, hi):
                    total += x[b, p, c]
            mean = total / count
            sq = 0.0
            for p in range(positions):
                for c in range(lo, hi):
                    sq += (x[b, p, c] - mean) * (x[b, p, c] - mean)
            m32 = np.float32(mean)
            inv = np.float32(1.0 / math.sqrt(sq / count + eps))
            for p in range(positions):
                for c in range(lo, hi):
                    out[b, p, c] = activate((x[b, p, c] - m32) * inv * weight[c] + bias[c], act)


def group_norm(x: np.ndarray, groups: int, weight: np.ndarray, bias: np.ndarray, act: int = 0) -> np.ndarray:
    """GroupNorm (torch's: biased variance, affine per channel) on channels-last x [B, S, C], then an
    activation (see ``linear``): each of ``groups`` consecutive channel groups is normalized over
    its channels and all S positions of a sample."""
    c = x.shape[2]
    if c % groups or weight.shape != (c,) or bias.shape != (c,):
        raise ValueError(
            f"group_norm: {c} channels in {groups} groups with weight/bias [{c}], got "
            f"{list(weight.shape)} / {list(bias.shape)}"
        )
    out = np.empty_like(x)
    _group_norm_act(np.ascontiguousarray(x), groups, weight, bias, EPS, act, out)
    return out


@njit(cache=True)
def _im2col(x, kernel, stride, padding, out):
    b_size, h, w, channels = x.shape
    side_h = (h + 2 * padding - kernel) // stride + 1
    side_w = (w + 2 * padding - kernel) // stride + 1
    for b in range(b_size):
        for oy in range(side_h):
            for ox in range(side_w):
                row = (b * side_h + oy) * side_w + ox
                for c in range(channels):
                    for ky in range(kernel):
                        iy = oy * stride - padding + ky
                        for kx in range(kernel):
                            ix = ox * stride - padding + kx
                            inside = 0 <= iy < h and 0 <= ix < w
                            out[row, (c * kernel + ky) * kernel + kx] = x[b, iy, ix, c] if inside else np.float32(0.0)


def conv_side(side: int, kernel: int, stride: int, padding: int) -> int:
    """Output side of a convolution over ``side`` pixels."""
    return (side + 2 * padding - kernel) // stride + 1


def im2col(x: np.ndarray, kernel: int, stride: int, padding: int) -> np.ndarray:
    """The patches a 2-D convolution reads, as rows: channels-last x [B, H, W, C] ->
    [B * Ho * Wo, C * kernel * kernel], rows in (sample, row, column) order, each patch flattened
    in (channel, kernel row, kernel column) order (torch's Conv2d weight layout), zeros outside."""
    b, h, w, c = x.shape
    side_h, side_w = conv_side(h, kernel, stride, padding), conv_side(w, kernel, stride, padding)
    if min(side_h, side_w) < 1:
        raise ValueError(f"im2col: a {h}x{w} input is smaller than a {kernel}x{kernel} kernel with padding {padding}")
    out = np.empty((b * side_h * side_w, c * kernel * kernel), np.float32)
    _im2col(np.ascontiguousarray(x, dtype=np.float32), kernel, stride, padding, out)
    return out


@njit(cache=True, fastmath=True, error_model="numpy")
def _act(x, act, out):
    for r in range(x.shape[0]):
        for j in range(x.shape[1]):
            out[r, j] = activate(x[r, j], act)


def apply_activation(x: np.ndarray, act: int) -> np.ndarray:
    """act(x) elementwise on x [R, D]: 1 = GELU, 2 = SiLU."""
    out = np.empty_like(x)
    _act(x, act, out)
    return out


@njit(cache=True, fastmath=True, error_model="numpy")
def _attention(qkv, heads, causal, first_query, out):
    b_size, t_len, three_d = qkv.shape
    d = three_d // 3
    hd = d // heads
    scale = np.float32(1.0 / math.sqrt(hd))
    weights = np.empty(t_len, np.float32)  # allocated once: one per (row, head) cost more than the maths
    for bh in range(b_size * heads):
        b = bh // heads
        h = bh % heads
        qo, ko, vo = h * hd, d + h * hd, 2 * d + h * hd
        for t in range(first_query, t_len):
            last = t + 1 if causal else t_len
            top = np.float32(-np.inf)
            for s in range(last):
                dot = np.float32(0.0)
                for j in range(hd):
                    dot += qkv[b, t, qo + j] * qkv[b, s, ko + j]
                weights[s] = dot * scale
                top = max(top, weights[s])
            total = np.float32(0.0)
            for s in range(last):
                weights[s] = np.float32(math.exp(weights[s] - top))
                total += weights[s]
            for j in range(hd):
                acc = np.float32(0.0)
                for s in range(last):
                    acc += weights[s] * qkv[b, s, vo + j]
                out[b, t - first_query, h * hd + j] = acc / total


BATCHED_ATTENTION_MIN_TOKENS = 8  # from this many tokens numpy's batched products and vector exp win


def _batched_attention(qkv: np.ndarray, heads: int, causal: bool, first_query: int) -> np.ndarray:
    """The same attention with numpy's stacked matrix products and its vectorized ``exp``: for the
    encoder's 17 tokens 4-5x faster than the scalar kernel, whose ``exp`` does not vectorize."""
    b, t, three_d = qkv.shape
    d = three_d // 3
    hd = d // heads
    q = qkv[:, first_query:, :d].reshape(b, t - first_query, heads, hd).transpose(0, 2, 1, 3)
    k = qkv[:, :, d : 2 * d].reshape(b, t, heads, hd).transpose(0, 2, 3, 1)
    v = qkv[:, :, 2 * d :].reshape(b, t, heads, hd).transpose(0, 2, 1, 3)
    scores = np.matmul(q, k) * np.float32(1.0 / math.sqrt(hd))
    if causal:
        scores[..., np.triu(np.ones((t, t), bool), 1)[first_query:]] = -np.inf
    scores -= scores.max(axis=-1, keepdims=True)
    np.exp(scores, out=scores)
    scores /= scores.sum(axis=-1, keepdims=True)
    out = np.matmul(scores, v).transpose(0, 2, 1, 3).reshape(b, t - first_query, d)
    return np.ascontiguousarray(out, dtype=np.float32)


def attention(qkv: np.ndarray, heads: int, causal: bool, first_query: int = 0) -> np.ndarray:
    """Multi-head softmax attention from packed projections.

    Args:
        qkv: float32 [B, T, 3 * D]: queries, keys, values side by side (torch's ``qkv`` Linear).
        heads: number of heads (D divisible by it).
        causal: each query sees keys up to its own position.
        first_query: outputs only for queries ``first_query..T-1`` (keys and values still cover all T).

    Returns:
        float32 [B, T - first_query, D].
    """
    b, t, three_d = qkv.shape
    if t >= BATCHED_ATTENTION_MIN_TOKENS:
        return _batched_attention(qkv, heads, causal, first_query)
    out = np.empty((b, t - first_query, three_d // 3), np.float32)
    _attention(np.ascontiguousarray(qkv), heads, causal, first_query, out)
    return out
