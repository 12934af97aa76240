"""Weight quantization formats, byte for byte.

* ``Q4_0`` and ``Q8_0``: ggml's block formats. A row of K weights (K a
  multiple of 32) is cut into blocks of 32; each block stores its scale ``d``
  as an IEEE float16 (2 bytes, little-endian) and then

  - Q4_0: 16 bytes of 4-bit codes ``q`` in 0..15, weight = d * (q - 8); byte j
    holds element j in its low nibble and element j + 16 in its high nibble
    (18 bytes per block, 4.5 bits per weight);
  - Q8_0: 32 int8 codes, weight = d * q (34 bytes per block).

  The quantizers follow ggml's reference (``quantize_row_q4_0_ref``,
  ``quantize_row_q8_0_ref``) in float32 arithmetic and produce the same bytes
  as the ``gguf`` package's ``gguf.quants.quantize``.
* ``INT8`` per output channel: int8 codes with one float32 scale per row,
  weight = scale * q, scale = max|row| / 127 (symmetric, round half to even).
* ``ternary`` (TWN): codes in {-1, 0, +1} with one float32 scale per row;
  threshold 0.7 * mean|row|, scale = mean |w| over the kept weights. Four
  2-bit codes per byte, element j in bits 2*(j % 4) of byte j // 4;
  code 0 = 0, 1 = +1, 2 = -1 (3 is invalid).

Everything here takes float32 matrices [N, K] (N output rows) and returns
numpy arrays; nothing imports torch. Scales are decoded from float16 with
``F16_TO_F32``, a 65,536-entry table, because numba has no float16 on CPU.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

QK = 32  # weights per Q4_0 / Q8_0 block
Q4_0_BLOCK_BYTES = 2 + QK // 2
Q8_0_BLOCK_BYTES = 2 + QK
F16_TO_F32 = np.arange(65536, dtype=np.uint16).view(np.float16).astype(np.float32)
TERNARY_DECODE = np.array([0.0, 1.0, -1.0, 0.0], dtype=np.float32)


def _as_rows(w: np.ndarray, name: str, block: int = 1) -> np.ndarray:
    w = np.asarray(w)
    if w.ndim != 2:
        raise ValueError(f"{name} must be a 2-D float32 matrix [N, K], got shape {list(w.shape)}")
    if w.dtype != np.float32:
        raise ValueError(f"{name} must be float32, got {w.dtype}")
    if block > 1 and w.shape[1] % block:
        raise ValueError(f"{name}: row length K = {w.shape[1]} is not a multiple of the block size {block}")
    if not np.all(np.isfinite(w)):
        raise ValueError(f"{name} holds NaN or inf weights")
    return np.ascontiguousarray(w)


# ---------------------------------------------------------------- Q4_0
@njit(cache=True, parallel=True)
def _q4_0_scales(blocks: np.ndarray, d: np.ndarray) -> None:
    """d = (the block's element of largest magnitude, sign kept) / -8, in float32."""
    for b in prange(blocks.shape[0]):
        best = 0
        amax = np.float32(0.0)
        for j in range(QK):
            a = abs(blocks[b, j])
            if a > amax:
                amax, best = a, j
        d[b] = blocks[b, best] / np.float32(-8.0)


@njit(cache=True, inline="always")
def _write_scale(block: np.ndarray, d: np.float32, d16: np.uint16) -> np.float32:
    """Store a block's float16 scale in its first two bytes (little-endian); return 1 / scale (0 for 0)."""
    block[0] = d16 & 0xFF
    block[1] = d16 >> 8
    return np.float32(0.0) if d == 0 else np.float32(1.0) / d


@njit(cache=True, parallel=True)
def _q4_0_pack(blocks: np.ndarray, d: np.ndarray, d16: np.ndarray, out: np.ndarray) -> None:
    for b in prange(blocks.shape[0]):
        inv = _write_scale(out[b], d[b], d16[b])
        for j in range(QK // 2):
            lo = min(int(blocks[b, j] * inv + np.float32(8.5)), 15)
            hi = min(int(blocks[b, j + QK // 2] * inv + np.float32(8.5)), 15)
            out[b, 2 + j] = lo | (hi << 4)


def quantize_q4_0(w: np.ndarray) -> np.ndarray:
    """float32 [N, K] -> Q4_0 bytes uint8 [N, K // 32 * 18] (ggml's layout, row by row)."""
    w = _as_rows(w, "weights", QK)
    n, k = w.shape
    blocks = w.reshape(-1, QK)
    d = np.empty(blocks.shape[0], np.float32)
    _q4_0_scales(blocks, d)
    out = np.empty((blocks.shape[0], Q4_0_BLOCK_BYTES), np.uint8)
    _q4_0_pack(blocks, d, d.astype(np.float16).view(np.uint16), out)
    return out.reshape(n, k // QK * Q4_0_BLOCK_BYTES)


@njit(cache=True, parallel=True)
def _q4_0_unpack(data: np.ndarray, f16: np.ndarray, out: np.ndarray) -> None:
    for b in prange(data.shape[0]):
        d = f16[data[b, 0] | (np.int64(data[b, 1]) << 8)]
        for j in range(QK // 2):
            byte = data[b, 2 + j]
            out[b, j] = d * np.float32((byte & 0x0F) - 8)
            out[b, j + QK // 2] = d * np.float32((byte >> 4) - 8)


def dequantize_q4_0(data: np.ndarray, k: int) -> np.ndarray:
    """Q4_0 bytes [N, K // 32 * 18] -> float32 [N, K]."""
    data = np.ascontiguousarray(data, dtype=np.uint8)
    if k % QK or data.ndim != 2 or data.shape[1] != k // QK * Q4_0_BLOCK_BYTES:
        raise ValueError(f"Q4_0 data of shape {list(data.shape)} does not hold rows of {k} weights")
    out = np.empty((data.shape[0] * (k // QK), QK), np.float32)
    _q4_0_unpack(data.reshape(-1, Q4_0_BLOCK_BYTES), F16_TO_F32, out)
    return out.reshape(data.shape[0], k)


# ---------------------------------------------------------------- Q8_0
@njit(cache=True, parallel=True)
def _q8_0_pack(blocks: np.ndarray, d: np.ndarray, d16: np.ndarray, out: np.ndarray) -> None:
    for b in prange(blocks.shape[0]):
        inv = _write_scale(out[b], d[b], d16[b])
        for j in range(QK):
            x = blocks[b, j] * inv
            a = abs(x)
            floored = np.float32(np.floor(a))
            r = floored + np.float32(np.floor(np.float32(2.0) * (a - floored)))
            q = int(r) if x >= 0 else -int(r)
            out[b, 2 + j] = q & 0xFF


def quantize_q8_0(w: np.ndarray) -> np.ndarray:
    """float32 [N, K] -> Q8_0 bytes uint8 [N, K // 32 * 34] (ggml's layout; rounds half away from zero)."""
    w = _as_rows(w, "weights", QK)
    n, k = w.shape
    blocks = w.reshape(-1, QK)
    d = np.abs(blocks).max(axis=1) / np.float32(127)
    out = np.empty((blocks.shape[0], Q8_0_BLOCK_BYTES), np.uint8)
    _q8_0_pack(blocks, d, d.astype(np.float16).view(np.uint16), out)
    return out.reshape(n, k // QK * Q8_0_BLOCK_BYTES)


def dequantize_q8_0(data: np.ndarray, k: int) -> np.ndarray:
    """Q8_0 bytes [N, K // 32 * 34] -> float32 [N, K]."""
    data = np.ascontiguousarray(data, dtype=np.uint8)
    if k % QK or data.ndim != 2 or data.shape[1] != k // QK * Q8_0_BLOCK_BYTES:
        raise ValueError(f"Q8_0 data of shape {list(data.shape)} does not hold rows of {k} weights")
    blocks = data.reshape(-1, Q8_0_BLOCK_BYTES)
    d = F16_TO_F32[blocks[:, 0].astype(np.int64) | (blocks[:, 1].astype(np.int64) << 8)]
    q = blocks[:, 2:].view(np.int8).astype(np.float32)
    return (q * d[:, None]).reshape(data.shape[0], k)


# ---------------------------------------------------------------- INT8 per channel
def quantize_int8(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """float32 [N, K] -> (int8 codes [N, K], float32 scales [N]); weight = scale * code."""
    w = _as_rows(w, "weights")
    scale = (np.abs(w).max(axis=1) / np.float32(127)).astype(np.float32)
    safe = np.where(scale > 0, scale, np.float32(1))
    q = np.clip(np.rint(w / safe[:, None]), -127, 127).astype(np.int8)
    return q, scale


def dequantize_int8(q: np.ndarray, scale: np.ndarray) -> np.ndarray:
    return q.astype(np.float32) * scale[:, None].astype(np.float32)


# ---------------------------------------------------------------- ternary
def quantize_ternary(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """float32 [N, K] -> (packed 2-bit codes uint8 [N, ceil(K / 4)], float32 scales [N])."""
    w = _as_rows(w, "weights")
    n, k = w.shape
    mag = np.abs(w)
    keep = mag > np.float32(0.7) * mag.mean(axis=1, keepdims=True)
    counts = keep.sum(axis=1)
    scale = np.where(counts > 0, (mag * keep).sum(axis=1) / np.maximum(counts, 1), 0).astype(np.float32)
    codes = np.where(keep, np.where(w > 0, 1, 2), 0).astype(np.uint8)
    padded = np.zeros((n, -(-k // 4) * 4), np.uint8)
    padded[:, :k] = codes
    quads = padded.reshape(n, -1, 4)
    packed = quads[..., 0] | (quads[..., 1] << 2) | (quads[..., 2] << 4) | (quads[..., 3] << 6)
    return packed.astype(np.uint8), scale


def dequantize_ternary(packed: np.ndarray, scale: np.ndarray, k: int) -> np.ndarray:
    codes = np.stack([(packed >> s) & 3 for s in (0, 2, 4, 6)], axis=-1).reshape(packed.shape[0], -1)[:, :k]
    return TERNARY_DECODE[codes] * scale[:, None].astype(np.float32)


def ternary_codes_valid(packed: np.ndarray) -> bool:
    """True when no 2-bit code is 3 (the invalid code)."""
    return not any(np.any(((packed >> s) & 3) == 3) for s in (0, 2, 4, 6))
