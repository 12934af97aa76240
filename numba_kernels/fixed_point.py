"""Integer kernels of the FPGA's fixed-point predictor: every op in integer arithmetic, bit-exact.

Number formats (``F`` = the activation fraction bits, 16 by default; see ``docs/fpga_fixed_point.md``):

* Activations: int32 holding ``value * 2**F`` (two's complement Q(31-F).F), saturated to the int32
  range whenever an op stores one. Intermediates are int64.
* Linear weights: integer codes (Q4_0: -8..7, Q8_0 and INT8: -128..127) in blocks (32 weights for
  Q4_0 / Q8_0, the whole row for INT8), each block with one scale ``d = M * 2**E``: ``M`` a signed
  integer mantissa and ``E`` a power of two. A Q4_0 / Q8_0 fp16 scale is exactly such a pair
  (11-bit mantissa, the hidden bit included); an INT8 float32 row scale is rounded once, at load, to a
  16-bit mantissa. A block computes ``s = sum(code * x)`` as a shift-add tree (one shifted copy of x
  per set bit of the code, the sign bit subtracted: :func:`shift_add`), then ``s * M`` (a constant
  multiplier: a shift-add tree too), then shifts it into a row accumulator of ``F + ACC_GUARD_BITS``
  fraction bits (left exactly, or right with rounding). The bias is added there, and one rounding
  shift by ``ACC_GUARD_BITS`` gives the output.
* Multiplicative constants (LayerNorm gains, BatchNorm folded scales) are int32 with ``COEF_BITS`` (20)
  fraction bits; additive constants (biases, positional embeddings) are in the activation format.
* Rounding: every right shift rounds half up (``(v + 2**(s-1)) >> s``, an arithmetic shift), the one
  cheap rounding in hardware. Conversions of float constants at load round half to even (``np.rint``).

Non-linear ops: LayerNorm with an exact integer mean (no division: ``d * x - sum(x)``), a block-float
normalization of the centred values (the shift a leading-zero count gives) and an integer inverse
square root (a 49-entry seed ROM and three Newton steps); GELU and SiLU from ROMs with linear
interpolation; softmax as ``2 ** (u * log2 e)`` with a 257-entry ROM of ``2 ** (i / 256)``, one
integer division per query for the reciprocal of the sum. The ROMs are built at import from float64
maths (``math.erf``, ``math.exp``, ``math.sqrt``) rounded to integers; their checksums are pinned by
the tests (:data:`ROM_CRC32`), so a platform whose libm rounded one entry differently would be caught.

Every kernel works row by row, with no state shared between rows and no threads: a row's output
never depends on the other rows, the batch size or the thread count.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numba import njit

from numba_kernels.quant import Q4_0_BLOCK_BYTES, Q8_0_BLOCK_BYTES, QK

ACC_GUARD_BITS = 16  # fraction bits of a linear layer's accumulator beyond the activation format's
COEF_BITS = 20  # fraction bits of multiplicative constants
LUT_BITS = 24  # fraction bits of the GELU / SiLU ROM entries
LUT_STEP_BITS = 6  # GELU / SiLU ROM knots every 2**-6
EXP2_INDEX_BITS = 8  # softmax: 2**(i / 256), i = 0..256
PROB_BITS = 30  # softmax probabilities are Q30
MIN_FRAC_BITS, MAX_FRAC_BITS = LUT_STEP_BITS, LUT_BITS
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
LN_EPS = 1e-5  # torch's LayerNorm / BatchNorm default
GELU_RANGE = 8  # GELU(x) = 0 below -8 and x above 8 (error < 1e-14)
SILU_RANGE = 16  # SiLU(x) = 0 below -16 and x above 16 (error < 2e-6)
ISQRT_SEED_BITS = 45  # inverse square root: r * 2**-45 ~ 1 / sqrt(m), m in [2**28, 2**30]
LOG2E_Q30 = 1549082005  # round(log2(e) * 2**30)
# Attention scores: the q . k accumulator saturates at +-DOT_LIMIT (each int32 x int32 product is at most
# 2**62 in magnitude, so a saturated accumulator plus one product stays inside int64), and
# round(q . k * 2**-F) saturates at +-SCORE_LIMIT before its Q.20 scale (SCORE_LIMIT * 2**20 < 2**62).
# Below the limits (every real input: see docs/fpga_fixed_point.md) nothing saturates and no bit changes.
DOT_LIMIT = 2**62 - 1
SCORE_LIMIT = 2 ** (62 - COEF_BITS) - 1


# ---------------------------------------------------------------- scalar helpers
@njit(cache=True, inline="always")
def round_shift(v, s):
    """``v * 2**-s`` rounded half up for s > 0; exactly ``v << -s`` for s <= 0.

    Computed as ``((v >> (s - 1)) + 1) >> 1`` (arithmetic shifts), which equals ``(v + 2**(s-1)) >> s`` and
    cannot overflow; beyond 63 bits the result is 0, as |v| < 2**63.
    """
    v = np.int64(v)
    if s <= 0:
        return v << np.int64(-s)
    if s > 63:
        return np.int64(0)
    return ((v >> np.int64(s - 1)) + np.int64(1)) >> np.int64(1)


@njit(cache=True, inline="always")
def saturate32(v):
    """Clamp an int64 to the int32 range (what the hardware's saturating store does)."""
    return min(max(v, np.int64(INT32_MIN)), np.int64(INT32_MAX))


@njit(cache=True, inline="always")
def bit_length(v):
    """Bits of a non-negative integer (a leading-zero count in hardware)."""
    n = 0
    while v >> np.int64(n):
        n += 1
    return n


@njit(cache=True, inline="always")
def _select(x, c, bit):
    """x << bit where bit ``bit`` of c is set, else 0 (an AND with a mask: a multiplexer)."""
    return (x << np.int64(bit)) & -((c >> np.int64(bit)) & np.int64(1))


@njit(cache=True, inline="always")
def shift_add4(code, x):
    """``code * x`` for a 4-bit two's complement code (-8..7) as the FPGA computes it, with no multiplier:
    x shifted by each set bit's position, the sign bit's copy subtracted."""
    x, c = np.int64(x), np.int64(code)
    return _select(x, c, 0) + _select(x, c, 1) + _select(x, c, 2) - _select(x, c, 3)


@njit(cache=True, inline="always")
def shift_add8(code, x):
    """``code * x`` for an 8-bit two's complement code (-128..127), as :func:`shift_add4`."""
    x, c = np.int64(x), np.int64(code)
    low = _select(x, c, 0) + _select(x, c, 1) + _select(x, c, 2) + _select(x, c, 3)
    return low + _select(x, c, 4) + _select(x, c, 5) + _select(x, c, 6) - _select(x, c, 7)


@njit(cache=True)
def shift_add(code, x, bits):
    """``code * x`` by the shift-add tree of a ``bits``-wide code (4 or 8)."""
    return shift_add4(code, x) if bits == 4 else shift_add8(code, x)


# ---------------------------------------------------------------- linear layers
@njit(cache=True)
def block_linear(x, codes_t, mant_t, shift_t, bias_acc, block, bits, out):
    """``out = saturate(round((x @ W.T) * 2**-ACC_GUARD_BITS + bias))`` over block-scaled integer weights.

    Args:
        x: int32 [M, K] activations.
        codes_t: int8 [K, N] weight codes, transposed (the inner loop runs over outputs).
        mant_t: int64 [K // block, N] block mantissas M.
        shift_t: int64 [K // block, N] block shifts ``E + ACC_GUARD_BITS`` (left if >= 0, else right, rounded).
        bias_acc: int64 [N] bias in the accumulator format (F + ACC_GUARD_BITS fraction bits).
        block: weights per block. bits: code width (4 or 8).
        out: int32 [M, N].
    """
    m_rows, k = x.shape
    n_out = codes_t.shape[1]
    block_sum = np.empty(n_out, np.int64)
    acc = np.empty(n_out, np.int64)
    for m in range(m_rows):
        acc[:] = bias_acc
        for b in range(k // block):
            block_sum[:] = 0
            for j in range(b * block, (b + 1) * block):
                xj = np.int64(x[m, j])
                if bits == 4:
                    for n in range(n_out):
                        block_sum[n] += shift_add4(codes_t[j, n], xj)
                else:
                    for n in range(n_out):
                        block_sum[n] += shift_add8(codes_t[j, n], xj)
            for n in range(n_out):
                acc[n] += round_shift(block_sum[n] * mant_t[b, n], -shift_t[b, n])
        for n in range(n_out):
            out[m, n] = saturate32(round_shift(acc[n], ACC_GUARD_BITS))


# ---------------------------------------------------------------- elementwise
@njit(cache=True)
def gated_add(x, gate, y, frac, out):
    """adaLN-zero's residual: out = saturate(x + round(gate * y * 2**-F)), all int32 [R, C]."""
    for r in range(x.shape[0]):
        for j in range(x.shape[1]):
            out[r, j] = saturate32(np.int64(x[r, j]) + round_shift(np.int64(gate[r, j]) * np.int64(y[r, j]), frac))


@njit(cache=True)
def channel_affine(x, scale_q, offset, out):
    """Per-channel ``x * scale + offset``: scale int32 [C] in Q.COEF_BITS, offset int32 [C] in the activation format
    (BatchNorm in eval mode, folded at load)."""
    for r in range(x.shape[0]):
        for j in range(x.shape[1]):
            v = round_shift(np.int64(x[r, j]) * np.int64(scale_q[j]), COEF_BITS) + np.int64(offset[j])
            out[r, j] = saturate32(v)


@njit(cache=True)
def lut_activation(x, table, lo, frac, out):
    """A ROM with linear interpolation: ``table[i]`` (Q.LUT_BITS) is f(lo + i * 2**-LUT_STEP_BITS);
    0 below the table, the identity above it (GELU, SiLU). x, out int32 [R, C]."""
    sub = frac - LUT_STEP_BITS  # fraction bits of x below a knot
    mask = (np.int64(1) << np.int64(sub)) - 1
    top = np.int64(table.shape[0] - 1) << np.int64(sub)
    origin = np.int64(lo) << np.int64(frac)
    for r in range(x.shape[0]):
        for j in range(x.shape[1]):
            t = np.int64(x[r, j]) - origin
            if t < 0:
                out[r, j] = 0
            elif t >= top:
                out[r, j] = x[r, j]
            else:
                i = t >> np.int64(sub)
                v = table[i] + round_shift((table[i + 1] - table[i]) * (t & mask), sub)
                out[r, j] = saturate32(round_shift(v, LUT_BITS - frac))


# ---------------------------------------------------------------- layer norm
@njit(cache=True, inline="always")
def inv_sqrt(a, seeds):
    """1 / sqrt(a) for an int64 a >= 1, as ``(r, s)`` with 1 / sqrt(a) ~ r * 2**-45 * 2**(-s / 2).

    ``a`` is normalized by an even shift s to m in [2**28, 2**30]; a ROM indexed by m's top bits seeds
    r, and three Newton steps r <- r * (3 - m r**2) / 2 take it to ~31 correct bits.
    """
    s = bit_length(a) - 30
    if s & 1:
        s += 1
    m = round_shift(a, s)
    r = seeds[(m >> np.int64(24)) - 16]
    three = np.int64(3) << np.int64(30)
    for _ in range(3):
        t = round_shift(r * r, 31)  # r**2 * 2**-31
        p = round_shift(m * t, 29)  # m r**2 in Q30 (1.0 = 2**30)
        r = round_shift(r * (three - p), 31)
    return r, s


@njit(cache=True)
def layer_norm_fixed(x, weight, bias, shift, scale, eps_q, sqrt_d_q, seeds, frac, out):
    """LayerNorm over the last axis of int32 x [R, D], then either an affine (``weight`` Q.COEF_BITS and
    ``bias`` [D], when ``weight`` is not empty) or adaLN's ``* (1 + scale) + shift`` (int32 [R, D] each,
    when ``shift`` is not empty).

    With c = D * x - sum(x) (the exact centred values, times D):
    ``y = c * sqrt(D) / sqrt(sum(c**2) + eps * D**3)``. ``eps_q`` = round(eps * D**3 * 2**40),
    ``sqrt_d_q`` = round(sqrt(D) * 2**24). The c are brought to 24 bits by one shift k before squaring
    (no lower than 24 - F bits to the left, so the eps term stays below 2**62 for D up to 1024).
    """
    d = x.shape[1]
    affine = weight.shape[0] > 0
    modulated = shift.shape[0] > 0
    c = np.empty(d, np.int64)
    for r in range(x.shape[0]):
        total = np.int64(0)
        for j in range(d):
            total += x[r, j]
        cmax = np.int64(0)
        for j in range(d):
            c[j] = np.int64(d) * np.int64(x[r, j]) - total
            cmax = max(cmax, abs(c[j]))
        k = max(bit_length(cmax) - 24, frac - 24)  # at the floor the shift is an exact left shift
        sq = np.int64(0)
        for j in range(d):
            c[j] = round_shift(c[j], k)
            sq += c[j] * c[j]
        a = sq + round_shift(eps_q, 40 - 2 * frac + 2 * k)
        rinv, s = inv_sqrt(a, seeds)
        g = round_shift(rinv * sqrt_d_q, 31)  # sqrt(D) / sqrt(m) * 2**38
        out_shift = 38 + s // 2 - frac
        for j in range(d):
            v = round_shift(c[j] * g, out_shift)
            if affine:
                v = round_shift(v * np.int64(weight[j]), COEF_BITS) + np.int64(bias[j])
            if modulated:
                one_plus = (np.int64(1) << np.int64(frac)) + np.int64(scale[r, j])
                v = round_shift(v * one_plus, frac) + np.int64(shift[r, j])
            out[r, j] = saturate32(v)


# ---------------------------------------------------------------- attention
@njit(cache=True, inline="always")
def exp_neg(u, frac, exp2_table):
    """exp(u) in Q30 for u <= 0 (int, F fraction bits): 2**(u log2 e) = 2**n * 2**f, n = floor, f from the ROM."""
    if u < -(np.int64(32) << np.int64(frac)):
        return np.int64(0)  # exp(-32) * 2**30 rounds to 0
    w = round_shift(u * np.int64(LOG2E_Q30), frac - 2)  # u log2 e, 32 fraction bits
    n = w >> np.int64(32)
    f = w & np.int64(0xFFFFFFFF)
    i = f >> np.int64(32 - EXP2_INDEX_BITS)
    rem = f & ((np.int64(1) << np.int64(32 - EXP2_INDEX_BITS)) - 1)
    v = exp2_table[i] + round_shift((exp2_table[i + 1] - exp2_table[i]) * rem, 32 - EXP2_INDEX_BITS)
    return round_shift(v, -n)


@njit(cache=True)
def attention_fixed(qkv, heads, first_query, frac, inv_sqrt_hd_q, exp2_table, out):
    """Causal multi-head softmax attention on int32 qkv [B, T, 3D] -> out int32 [B, T - first_query, D].

    score = round(q . k * 2**-F) * inv_sqrt_hd_q (Q.COEF_BITS of 1 / sqrt(head_dim)); p = exp(score - max)
    in Q30; the probabilities are normalized by one reciprocal per query, 2**60 // sum(p) (rounded);
    out = sum(p * v) rounded to F bits.

    No int64 wraps for any int32 input: the q . k accumulator saturates at +-DOT_LIMIT (a saturating
    accumulator: each product is added, then clamped) and round(q . k * 2**-F) at +-SCORE_LIMIT, so
    scores stay below 2**62 and their differences inside int64; sum(p * v) is bounded by
    sum(p) * 2**31 < 2**62 since the normalized p (Q30) sum to about 2**30.
    """
    b_size, t_len, three_d = qkv.shape
    d = three_d // 3
    hd = d // heads
    scores = np.empty(t_len, np.int64)
    for b in range(b_size):
        for h in range(heads):
            qo, ko, vo = h * hd, d + h * hd, 2 * d + h * hd
            for t in range(first_query, t_len):
                top = np.int64(-(2**62))
                for s in range(t + 1):
                    dot = np.int64(0)
                    for j in range(hd):
                        dot += np.int64(qkv[b, t, qo + j]) * np.int64(qkv[b, s, ko + j])
                        dot = min(max(dot, np.int64(-DOT_LIMIT)), np.int64(DOT_LIMIT))
                    score = min(max(round_shift(dot, frac), np.int64(-SCORE_LIMIT)), np.int64(SCORE_LIMIT))
                    scores[s] = round_shift(score * inv_sqrt_hd_q, COEF_BITS)
                    top = max(top, scores[s])
                total = np.int64(0)
                for s in range(t + 1):
                    scores[s] = exp_neg(scores[s] - top, frac, exp2_table)
                    total += scores[s]
                recip = ((np.int64(1) << np.int64(61)) + total) // (2 * total)  # 2**60 / total, rounded
                for s in range(t + 1):
                    scores[s] = round_shift(scores[s] * recip, PROB_BITS)
                for j in range(hd):
                    acc = np.int64(0)
                    for s in range(t + 1):
                        acc += scores[s] * np.int64(qkv[b, s, vo + j])
                    out[b, t - first_query, h * hd + j] = saturate32(round_shift(acc, PROB_BITS))


# ---------------------------------------------------------------- ROMs (built once, at import)
def _rom(values: np.ndarray, bits: int) -> np.ndarray:
    return np.rint(np.asarray(values, np.float64) * 2.0**bits).astype(np.int64)


def _gelu(x: float) -> float:
    return 0.5 * x * (1.0 + math.erf(x / math.sqrt(2.0)))


def _silu(x: float) -> float:
    return x / (1.0 + math.exp(-x))


def _knots(limit: int) -> list[float]:
    return [-limit + i / 2**LUT_STEP_BITS for i in range(2 * limit * 2**LUT_STEP_BITS + 1)]


GELU_TABLE = _rom([_gelu(x) for x in _knots(GELU_RANGE)], LUT_BITS)
SILU_TABLE = _rom([_silu(x) for x in _knots(SILU_RANGE)], LUT_BITS)
EXP2_TABLE = _rom([2.0 ** (i / 2**EXP2_INDEX_BITS) for i in range(2**EXP2_INDEX_BITS + 1)], PROB_BITS)
ISQRT_SEEDS = np.array([round(2**ISQRT_SEED_BITS / math.sqrt((i + 16.5) * 2**24)) for i in range(49)], np.int64)
ROM_CRC32 = {"GELU_TABLE": 2052759462, "SILU_TABLE": 2355510408, "EXP2_TABLE": 1662937605, "ISQRT_SEEDS": 1609867796}


# ---------------------------------------------------------------- python wrappers
def to_fixed(x: np.ndarray, frac: int) -> np.ndarray:
    """float -> int32 ``round(x * 2**frac)``, half to even, saturated (x is scaled exactly, in float64)."""
    v = np.rint(np.asarray(x, np.float64) * 2.0**frac)
    return np.clip(v, INT32_MIN, INT32_MAX).astype(np.int32)


def add_saturated(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """int32 x + y (broadcast), saturated to int32."""
    return np.clip(x.astype(np.int64) + y, INT32_MIN, INT32_MAX).astype(np.int32)


def to_float(x: np.ndarray, frac: int) -> np.ndarray:
    """int32 fixed point -> float32 ``x * 2**-frac`` (exact while |x| < 2**24)."""
    return (np.asarray(x, np.float64) * 2.0**-frac).astype(np.float32)


def gelu_fixed(x: np.ndarray, frac: int) -> np.ndarray:
    """GELU (erf form) of int32 fixed point x [R, C]."""
    out = np.empty_like(x)
    lut_activation(x, GELU_TABLE, -GELU_RANGE, frac, out)
    return out


def silu_fixed(x: np.ndarray, frac: int) -> np.ndarray:
    """SiLU of int32 fixed point x [R, C]."""
    out = np.empty_like(x)
    lut_activation(x, SILU_TABLE, -SILU_RANGE, frac, out)
    return out


def _empty32(*shape: int) -> np.ndarray:
    return np.zeros(shape, np.int32)


def layer_norm_constants(d: int) -> tuple[int, int]:
    """(eps_q, sqrt_d_q) of :func:`layer_norm_fixed` for rows of width d."""
    return round(LN_EPS * d**3 * 2**40), round(math.sqrt(d) * 2**24)


def layer_norm_int(
    x: np.ndarray,
    frac: int,
    weight: np.ndarray | None = None,
    bias: np.ndarray | None = None,
    shift: np.ndarray | None = None,
    scale: np.ndarray | None = None,
) -> np.ndarray:
    """Integer LayerNorm of int32 x [R, D]: plain, affine (weight Q.COEF_BITS, bias) or modulated (shift, scale)."""
    x = np.ascontiguousarray(x, np.int32)
    eps_q, sqrt_d_q = layer_norm_constants(x.shape[1])
    out = np.empty_like(x)
    w = _empty32(0) if weight is None else np.ascontiguousarray(weight, np.int32)
    b = _empty32(0) if bias is None else np.ascontiguousarray(bias, np.int32)
    sh = _empty32(0, 0) if shift is None else np.ascontiguousarray(shift, np.int32)
    sc = _empty32(0, 0) if scale is None else np.ascontiguousarray(scale, np.int32)
    layer_norm_fixed(x, w, b, sh, sc, np.int64(eps_q), np.int64(sqrt_d_q), ISQRT_SEEDS, frac, out)
    return out


def inv_sqrt_int(a: int) -> float:
    """1 / sqrt(a) by the integer kernel, as a float (for tests and docs)."""
    r, s = _inv_sqrt_py(np.int64(a), ISQRT_SEEDS)
    return float(r) * 2.0 ** (-ISQRT_SEED_BITS) * 2.0 ** (-s / 2)


@njit(cache=True)
def _inv_sqrt_py(a, seeds):
    return inv_sqrt(a, seeds)


def attention_int(qkv: np.ndarray, heads: int, frac: int, first_query: int = 0) -> np.ndarray:
    """Causal attention on int32 qkv [B, T, 3D] -> int32 [B, T - first_query, D]."""
    b, t, three_d = qkv.shape
    hd = three_d // 3 // heads
    out = np.empty((b, t - first_query, three_d // 3), np.int32)
    inv_q = round(2**COEF_BITS / math.sqrt(hd))
    attention_fixed(np.ascontiguousarray(qkv, np.int32), heads, first_query, frac, np.int64(inv_q), EXP2_TABLE, out)
    return out


def exp_neg_int(u: np.ndarray, frac: int) -> np.ndarray:
    """exp(u) in Q30 for int64 u <= 0 with ``frac`` fraction bits (for tests)."""
    return _exp_neg_many(np.ascontiguousarray(u, np.int64), frac, EXP2_TABLE)


@njit(cache=True)
def _exp_neg_many(u, frac, table):
    out = np.empty_like(u)
    for i in range(u.shape[0]):
        out[i] = exp_neg(u[i], frac, table)
    return out


# ---------------------------------------------------------------- weights
def fp16_mantissa_exponent(bits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """IEEE float16 bit patterns -> (signed int mantissa M, exponent E) with value = M * 2**E exactly.

    Normal: M = +-(1024 + fraction), E = exponent - 25; subnormal: M = +-fraction, E = -24.
    Inf and NaN raise ValueError.
    """
    bits = np.asarray(bits, np.int64)
    sign = np.where(bits >> 15, -1, 1)
    exponent, fraction = (bits >> 10) & 0x1F, bits & 0x3FF
    if np.any(exponent == 31):
        raise ValueError("a block scale is inf or NaN")
    mant = np.where(exponent > 0, 1024 + fraction, fraction) * sign
    return mant.astype(np.int64), np.where(exponent > 0, exponent - 25, -24).astype(np.int64)


def f32_mantissa_exponent(scale: np.ndarray, bits: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """float32 scales -> (M, E) with M a ``bits``-bit signed mantissa (rounded half to even), value ~ M * 2**E."""
    frac, exp = np.frexp(np.asarray(scale, np.float64))
    mant = np.rint(frac * 2.0**bits).astype(np.int64)
    return mant, (exp - bits).astype(np.int64)


@dataclass
class FixedLinear:
    """A linear layer in the FPGA's form: int8 codes [N, K] of ``bits`` width in blocks of ``block``, each block
    with mantissa and shift (int64 [N, K // block]), and the bias in the accumulator format."""

    kind: str
    codes: np.ndarray
    mant: np.ndarray
    shift: np.ndarray
    bias_acc: np.ndarray
    block: int
    bits: int

    def __post_init__(self) -> None:
        # The kernel's layout: outputs innermost, so the shift-add trees of one input run across outputs.
        self._codes_t = np.ascontiguousarray(self.codes.T)
        self._mant_t = np.ascontiguousarray(self.mant.T, dtype=np.int64)
        self._shift_t = np.ascontiguousarray(self.shift.T, dtype=np.int64)

    @property
    def out_features(self) -> int:
        return self.codes.shape[0]

    @property
    def in_features(self) -> int:
        return self.codes.shape[1]

    @classmethod
    def from_codes(
        cls, kind: str, codes: np.ndarray, mant: np.ndarray, exp: np.ndarray, bias: np.ndarray, frac: int, bits: int
    ) -> FixedLinear:
        """Codes int [N, K], block mantissas / exponents [N, nb], float32 bias [N] -> a layer for activations with
        ``frac`` fraction bits. Raises ValueError when the accumulator could overflow int64."""
        block = codes.shape[1] // mant.shape[1]
        shift = exp + ACC_GUARD_BITS
        # Worst case |accumulator| with every activation at the int32 limit must stay inside int64.
        block_worst = np.abs(mant).astype(np.float64) * block * 2 ** (bits - 1) * 2.0**31  # s * M, before shifting
        if np.any(block_worst >= 2.0**62) or np.any((block_worst * 2.0**shift).sum(axis=1) >= 2.0**62):
            raise ValueError("block scales too large for the int64 accumulator")
        bias_acc = np.rint(np.asarray(bias, np.float64) * 2.0 ** (frac + ACC_GUARD_BITS)).astype(np.int64)
        return cls(kind, np.ascontiguousarray(codes, np.int8), mant, shift, bias_acc, block, bits)

    @classmethod
    def from_quantized(
        cls, kind: str, data: np.ndarray, scale: np.ndarray, bias: np.ndarray, n: int, k: int, frac: int
    ) -> FixedLinear:
        """A stored layer (``q4_0`` / ``q8_0`` block bytes, or ``i8`` codes with float32 row scales; see
        :mod:`numba_kernels.quant`) -> its fixed-point form."""
        if kind == "q4_0":
            blocks = np.asarray(data, np.uint8).reshape(n * (k // QK), Q4_0_BLOCK_BYTES)
            nib = blocks[:, 2:].astype(np.int16)
            codes = np.concatenate([nib & 0x0F, nib >> 4], axis=1) - 8
            mant, exp = fp16_mantissa_exponent(blocks[:, 0].astype(np.int64) | (blocks[:, 1].astype(np.int64) << 8))
            return cls.from_codes(kind, codes.reshape(n, k), mant.reshape(n, -1), exp.reshape(n, -1), bias, frac, 4)
        if kind == "q8_0":
            blocks = np.asarray(data, np.uint8).reshape(n * (k // QK), Q8_0_BLOCK_BYTES)
            codes = blocks[:, 2:].view(np.int8)
            mant, exp = fp16_mantissa_exponent(blocks[:, 0].astype(np.int64) | (blocks[:, 1].astype(np.int64) << 8))
            return cls.from_codes(kind, codes.reshape(n, k), mant.reshape(n, -1), exp.reshape(n, -1), bias, frac, 8)
        if kind == "i8":
            codes = np.asarray(data).view(np.int8).reshape(n, k)
            mant, exp = f32_mantissa_exponent(scale)
            return cls.from_codes(kind, codes, mant[:, None], exp[:, None], bias, frac, 8)
        raise ValueError(f"weight format {kind!r} has no fixed-point form (q4_0, q8_0 or i8)")

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """int32 [M, K] -> int32 [M, N]."""
        if x.ndim != 2 or x.shape[1] != self.in_features or x.dtype != np.int32:
            raise ValueError(f"input must be int32 [M, {self.in_features}], got {x.dtype} {list(x.shape)}")
        out = np.empty((x.shape[0], self.out_features), np.int32)
        args = (self._codes_t, self._mant_t, self._shift_t, self.bias_acc, self.block, self.bits)
        block_linear(np.ascontiguousarray(x), *args, out)
        return out

    def dequantized(self) -> np.ndarray:
        """The exact weights as float64 [N, K] (codes * M * 2**E), for tests."""
        scale = self.mant.astype(np.float64) * 2.0 ** (self.shift - ACC_GUARD_BITS)
        return (self.codes.reshape(self.out_features, -1, self.block) * scale[:, :, None]).reshape(self.codes.shape)


def gated_add_int(x: np.ndarray, gate: np.ndarray, y: np.ndarray, frac: int) -> np.ndarray:
    """adaLN-zero's gated residual ``x + gate * y`` on int32 [R, C] arrays."""
    out = np.empty_like(x)
    gated_add(x, np.ascontiguousarray(gate), np.ascontiguousarray(y), frac, out)
    return out


def channel_affine_int(x: np.ndarray, scale_q: np.ndarray, offset: np.ndarray) -> np.ndarray:
    """Per-channel ``x * scale + offset`` on int32 [R, C] (scale Q.COEF_BITS, offset in x's format)."""
    out = np.empty_like(x)
    channel_affine(x, scale_q, offset, out)
    return out
