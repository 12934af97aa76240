"""The bridge to the bit-exact Python reference (:mod:`numba_kernels.fixed_point`): its constants, the ROM
contents the units need (taken from the reference's own tables, or computed by calling its own jitted
scalar functions), and the reference results the simulations are compared with.

Nothing here re-derives the arithmetic: every table is the reference's array or the reference's
``round_shift`` applied to the reference's constant.
"""

from __future__ import annotations

import math

import numpy as np

from numba_kernels import fixed_point as fx

ACC_GUARD_BITS = fx.ACC_GUARD_BITS
COEF_BITS = fx.COEF_BITS
LUT_BITS = fx.LUT_BITS
LUT_STEP_BITS = fx.LUT_STEP_BITS
EXP2_INDEX_BITS = fx.EXP2_INDEX_BITS
PROB_BITS = fx.PROB_BITS
LOG2E_Q30 = fx.LOG2E_Q30
ISQRT_SEED_BITS = fx.ISQRT_SEED_BITS
DOT_LIMIT = fx.DOT_LIMIT
SCORE_LIMIT = fx.SCORE_LIMIT
DEFAULT_FRAC_BITS = 16


def round_shift(v: int, s: int) -> int:
    """The reference's ``round_shift`` (its jitted scalar function) on Python ints."""
    return int(fx.round_shift(np.int64(v), np.int64(s)))


def activation_rom(kind: str) -> tuple[list[int], int]:
    """(ROM entries Q.LUT_BITS, the input of entry 0) of ``"gelu"`` or ``"silu"``: the reference's tables."""
    if kind == "gelu":
        return [int(v) for v in fx.GELU_TABLE], -fx.GELU_RANGE
    if kind == "silu":
        return [int(v) for v in fx.SILU_TABLE], -fx.SILU_RANGE
    raise ValueError(f"activation must be 'gelu' or 'silu', got {kind!r}")


def activation_reference(kind: str, x: np.ndarray, frac: int) -> np.ndarray:
    """``gelu_fixed`` / ``silu_fixed`` of int32 x [R, C]."""
    fn = fx.gelu_fixed if kind == "gelu" else fx.silu_fixed
    return fn(np.ascontiguousarray(x, np.int32), frac)


def exp2_rom() -> list[int]:
    """The softmax's ROM of 2**(i / 256) in Q30 (``EXP2_TABLE``, 257 entries)."""
    return [int(v) for v in fx.EXP2_TABLE]


def isqrt_seeds() -> list[int]:
    """LayerNorm's inverse-square-root seed ROM (``ISQRT_SEEDS``, 49 entries)."""
    return [int(v) for v in fx.ISQRT_SEEDS]


def layer_norm_constants(d: int) -> tuple[int, int]:
    """(eps_q, sqrt_d_q) for rows of width d, from the reference."""
    return fx.layer_norm_constants(d)


def layer_norm_k_range(d: int, frac: int) -> tuple[int, int]:
    """The block-float shifts ``k`` LayerNorm can take on int32 rows of width d: (F - 24, top).

    ``k = max(bit_length(cmax) - 24, F - 24)`` with ``cmax <= 2 * d * 2**31`` (``c = d x - sum(x)``)."""
    top = (2 * d * 2**31).bit_length() - 24
    return frac - 24, max(top, frac - 24)


def layer_norm_eps_rom(d: int, frac: int) -> list[int]:
    """``round_shift(eps_q, 40 - 2F + 2k)`` for every k of :func:`layer_norm_k_range` (k = lowest first):
    the eps term of LayerNorm's sum of squares, by the reference's own ``round_shift``."""
    eps_q, _ = fx.layer_norm_constants(d)
    lo, hi = layer_norm_k_range(d, frac)
    return [round_shift(eps_q, 40 - 2 * frac + 2 * k) for k in range(lo, hi + 1)]


def inv_sqrt_reference(a: int) -> tuple[int, int]:
    """The reference's ``inv_sqrt`` of an int64 a >= 1: ``(r, s)``."""
    r, s = fx._inv_sqrt_py(np.int64(a), fx.ISQRT_SEEDS)
    return int(r), int(s)


def exp_neg_reference(u: np.ndarray, frac: int) -> np.ndarray:
    """``exp_neg`` (Q30) of int64 u <= 0."""
    return fx.exp_neg_int(np.asarray(u, np.int64), frac)


def softmax_reference(scores: np.ndarray, frac: int) -> np.ndarray:
    """The softmax inside ``attention_fixed`` on one query's int64 scores: ``p = exp_neg(score - max)``
    (the reference's jitted ``exp_neg``), ``recip = (2**61 + sum) // (2 * sum)``, ``round_shift(p * recip, 30)``.

    ``attention_fixed`` has the softmax inline; these are its lines, in the same order, on Python ints
    (the tests also check the whole attention through :func:`attention_reference`)."""
    scores = [int(v) for v in np.asarray(scores, np.int64)]
    top = max(scores)
    p = [int(v) for v in exp_neg_reference(np.array([s - top for s in scores], np.int64), frac)]
    total = sum(p)
    recip = ((1 << 61) + total) // (2 * total)
    return np.array([round_shift(v * recip, PROB_BITS) for v in p], np.int64)


def attention_reference(qkv: np.ndarray, heads: int, frac: int, first_query: int = 0) -> np.ndarray:
    """``attention_int`` of int32 qkv [B, T, 3D]."""
    return fx.attention_int(np.ascontiguousarray(qkv, np.int32), heads, frac, first_query)


def inv_sqrt_head_dim_q(head_dim: int) -> int:
    """``round(2**COEF_BITS / sqrt(head_dim))``, as ``attention_int`` computes it."""
    return round(2**COEF_BITS / math.sqrt(head_dim))
