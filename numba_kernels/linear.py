"""``y = act(x @ W.T + b)`` with W stored as float32, Q4_0, Q8_0, INT8 or ternary.

Only weights are quantized; activations stay float32, as on the devices.

* Few input rows (``M <= SMALL_BATCH``, e.g. one environment's 3 tokens) in
  a layer of at least ``STREAM_MIN_BYTES`` as float32: a fused numba kernel
  decodes each weight block as it reads it and keeps 32 per-lane partial sums
  across a row's blocks (one horizontal sum per output, not per block), so the
  quantized bytes are the only weight traffic. Threads split the output rows
  when a layer is large enough to pay for them. Smaller layers fit in cache
  as float32, where streaming saves nothing: they take the path below.
* Many input rows, or a small layer: the layer is decoded by a numba kernel into a float32
  matrix, on its first batched call, and kept (a host holds the float copy of
  the layers it runs this way; the streaming path never makes one); numpy's
  BLAS multiplies with it. BLAS runs its own threads, so the kernels around it
  run on the calling thread: two thread pools spinning on the same cores
  slowed a batch-256 predict tenfold.

:class:`QLinear` holds one layer; shapes are checked in Python before any
compiled code runs, so a kernel never reads out of bounds.
"""

from __future__ import annotations

import math
import types
from dataclasses import dataclass, field

import numpy as np
from numba import njit, prange

from numba_kernels.quant import (
    F16_TO_F32,
    Q4_0_BLOCK_BYTES,
    Q8_0_BLOCK_BYTES,
    QK,
    TERNARY_DECODE,
    quantize_int8,
    quantize_q4_0,
    quantize_q8_0,
    quantize_ternary,
)

KINDS = ("f32", "q4_0", "q8_0", "i8", "t2")
F32, Q4_0, Q8_0, I8, T2 = range(len(KINDS))
NO_ACT, GELU, SILU = 0, 1, 2
SMALL_BATCH = 4  # at most this many input rows use the fused kernel
STREAM_MIN_BYTES = 1 << 20  # layers whose float32 weights are smaller run every batch size on BLAS
PARALLEL_MIN_WEIGHTS = 1 << 20  # fused kernel: smaller layers run on the calling thread
_INV_SQRT2 = np.float32(1.0 / math.sqrt(2.0))
# erf(x) ~ x * P(x^2) / Q(x^2) on [-4, 4] (the rational approximation Eigen and XLA use for float32;
# max abs error 4.2e-7 against math.erf). Unlike libm's erf it vectorizes.
_ERF_P = (
    -2.72614225801306e-10,
    2.77068142495902e-08,
    -2.10102402082508e-06,
    -5.69250639462346e-05,
    -7.34990630326855e-04,
    -2.95459980854025e-03,
    -1.60960333262415e-02,
)
_ERF_Q = (
    -1.45660718464996e-05,
    -2.13374055278905e-04,
    -1.68282697438203e-03,
    -7.37332916720468e-03,
    -1.42647390514189e-02,
)


@njit(cache=True, inline="always")
def erf(x):
    """float32 erf by a rational approximation (abs error < 5e-7)."""
    x = min(max(x, np.float32(-4.0)), np.float32(4.0))
    x2 = x * x
    p = np.float32(_ERF_P[0])
    for c in _ERF_P[1:]:
        p = p * x2 + np.float32(c)
    q = np.float32(_ERF_Q[0])
    for c in _ERF_Q[1:]:
        q = q * x2 + np.float32(c)
    return x * p / q


@njit(cache=True, inline="always")
def activate(v, act):
    """act(v) for one float32: NO_ACT, GELU (erf form, as torch.nn.GELU(), to ~1e-6) or SILU."""
    if act == GELU:
        return np.float32(0.5) * v * (np.float32(1.0) + erf(v * _INV_SQRT2))
    if act == SILU:
        return v / (np.float32(1.0) + np.float32(math.exp(-v)))
    return v


@njit(cache=True, inline="always")
def _f16(wb, n, o, f16):
    return f16[np.int64(wb[n, o]) | (np.int64(wb[n, o + 1]) << 8)]


@njit(cache=True, inline="always")
def _dot_row(kind, wb, wf, scale, f16, n, x, m, k, lanes):
    """Row n of the weights dotted with x[m], decoding each block as it is read."""
    for j in range(QK):
        lanes[j] = 0.0
    if kind == Q4_0:
        for b in range(k // QK):
            o = b * Q4_0_BLOCK_BYTES
            d = _f16(wb, n, o, f16)
            base = b * QK
            for j in range(QK // 2):
                byte = np.int32(wb[n, o + 2 + j])
                lanes[j] += d * np.float32((byte & 0x0F) - 8) * x[m, base + j]
                lanes[j + QK // 2] += d * np.float32((byte >> 4) - 8) * x[m, base + QK // 2 + j]
    elif kind == Q8_0:
        for b in range(k // QK):
            o = b * Q8_0_BLOCK_BYTES
            d = _f16(wb, n, o, f16)
            base = b * QK
            for j in range(QK):
                v = np.int32(wb[n, o + 2 + j])
                lanes[j] += d * np.float32(v - ((v >> 7) << 8)) * x[m, base + j]
    else:  # F32, I8, T2: one scale per row, applied at the end
        s = np.float32(0.0)
        if kind == F32:
            for j in range(k):
                s += wf[n, j] * x[m, j]
            return s
        if kind == I8:
            for j in range(k):
                v = np.int32(wb[n, j])
                s += np.float32(v - ((v >> 7) << 8)) * x[m, j]
        else:
            for j in range(k):
                s += TERNARY_DECODE[(wb[n, j >> 2] >> (2 * (j & 3))) & 3] * x[m, j]
        return s * scale[n]
    s = np.float32(0.0)
    for j in range(QK):
        s += lanes[j]
    return s


def _fused_impl(x, kind, wb, wf, scale, bias, act, f16, out, chunks):
    m_rows, k = x.shape
    n_rows = out.shape[1]
    per_chunk = (n_rows + chunks - 1) // chunks
    for c in prange(chunks):
        lanes = np.empty(QK, np.float32)
        for n in range(c * per_chunk, min((c + 1) * per_chunk, n_rows)):
            for m in range(m_rows):
                out[m, n] = activate(_dot_row(kind, wb, wf, scale, f16, n, x, m, k, lanes) + bias[n], act)


def _named(func, name: str):
    """A copy of ``func`` under another name: numba's on-disk cache is keyed by the function's name, so a
    serial and a parallel compilation of one function would overwrite each other's cache entries."""
    copy = types.FunctionType(func.__code__, func.__globals__, name, func.__defaults__, func.__closure__)
    copy.__qualname__ = name
    return copy


_fused_serial = njit(cache=True, fastmath=True, error_model="numpy")(_named(_fused_impl, "_fused_serial"))
_fused_parallel = njit(cache=True, fastmath=True, error_model="numpy", parallel=True)(
    _named(_fused_impl, "_fused_parallel")
)


@njit(cache=True)
def _decode(kind, wb, scale, f16, out):
    """Quantized rows -> float32 weights out [N, K] (on the calling thread: BLAS runs next)."""
    k = out.shape[1]
    for n in range(out.shape[0]):
        if kind == Q4_0:
            for b in range(k // QK):
                o = b * Q4_0_BLOCK_BYTES
                d = _f16(wb, n, o, f16)
                for j in range(QK // 2):
                    byte = np.int32(wb[n, o + 2 + j])
                    out[n, b * QK + j] = d * np.float32((byte & 0x0F) - 8)
                    out[n, b * QK + QK // 2 + j] = d * np.float32((byte >> 4) - 8)
        elif kind == Q8_0:
            for b in range(k // QK):
                o = b * Q8_0_BLOCK_BYTES
                d = _f16(wb, n, o, f16)
                for j in range(QK):
                    v = np.int32(wb[n, o + 2 + j])
                    out[n, b * QK + j] = d * np.float32(v - ((v >> 7) << 8))
        elif kind == I8:
            for j in range(k):
                v = np.int32(wb[n, j])
                out[n, j] = scale[n] * np.float32(v - ((v >> 7) << 8))
        else:
            for j in range(k):
                out[n, j] = scale[n] * TERNARY_DECODE[(wb[n, j >> 2] >> (2 * (j & 3))) & 3]


@njit(cache=True, fastmath=True, error_model="numpy")
def _bias_act(y, bias, act):
    for m in range(y.shape[0]):
        for n in range(y.shape[1]):
            y[m, n] = activate(y[m, n] + bias[n], act)


def _empty(*shape: int, dtype=np.float32) -> np.ndarray:
    return np.zeros(shape, dtype)


@dataclass
class QLinear:
    """One linear layer: ``out_features x in_features`` weights in format ``kind``, and a float32 bias.

    Build one with :meth:`from_float` (quantizes) or from stored arrays:
    ``weight`` float32 [N, K] for ``f32``; ``data`` uint8 rows for the others
    (Q4_0 / Q8_0 blocks, int8 codes viewed as uint8, packed 2-bit codes);
    ``scale`` float32 [N] for ``i8`` and ``t2``.
    """

    kind: str
    in_features: int
    out_features: int
    bias: np.ndarray
    weight: np.ndarray = field(default_factory=lambda: _empty(0, 0))
    data: np.ndarray = field(default_factory=lambda: _empty(0, 0, dtype=np.uint8))
    scale: np.ndarray = field(default_factory=lambda: _empty(0))

    def __post_init__(self) -> None:
        n, k = self.out_features, self.in_features
        if self.kind not in KINDS:
            raise ValueError(f"unknown weight format {self.kind!r}; expected one of {', '.join(KINDS)}")
        if self.kind in ("q4_0", "q8_0") and k % QK:
            raise ValueError(f"{self.kind} needs in_features divisible by {QK}, got {k}")
        name, shape, dtype = {
            "f32": ("weight", (n, k), np.float32),
            "q4_0": ("data", (n, k // QK * Q4_0_BLOCK_BYTES), np.uint8),
            "q8_0": ("data", (n, k // QK * Q8_0_BLOCK_BYTES), np.uint8),
            "i8": ("data", (n, k), np.uint8),
            "t2": ("data", (n, -(-k // 4)), np.uint8),
        }[self.kind]
        array = getattr(self, name)
        if array.dtype == np.int8:
            array = array.view(np.uint8)
        if array.shape != shape or array.dtype != dtype:
            raise ValueError(
                f"{self.kind} {name} must be {np.dtype(dtype).name} {list(shape)}, "
                f"got {array.dtype} {list(array.shape)}"
            )
        setattr(self, name, np.ascontiguousarray(array))
        if self.kind in ("i8", "t2") and np.shape(self.scale) != (n,):
            raise ValueError(f"{self.kind} scale must be float32 [{n}], got {list(np.shape(self.scale))}")
        if np.shape(self.bias) != (n,):
            raise ValueError(f"bias must be float32 [{n}], got {list(np.shape(self.bias))}")
        self.bias = np.ascontiguousarray(self.bias, dtype=np.float32)
        self.scale = np.ascontiguousarray(self.scale, dtype=np.float32)
        self._code = KINDS.index(self.kind)
        self._decoded: np.ndarray | None = None  # float32 weights for the BLAS path, decoded once
        # Small batches stream the quantized bytes through the fused kernel only where that saves
        # memory traffic: a layer whose float32 copy fits in cache runs faster on BLAS.
        self.stream_small_batches = self._code != F32 and 4 * n * k >= STREAM_MIN_BYTES

    @classmethod
    def from_float(cls, weight: np.ndarray, bias: np.ndarray | None, kind: str = "f32") -> QLinear:
        """Quantize a float32 [N, K] weight to ``kind``."""
        weight = np.ascontiguousarray(weight, dtype=np.float32)
        n, k = weight.shape
        b = np.zeros(n, np.float32) if bias is None else np.asarray(bias, np.float32)
        if kind == "f32":
            return cls(kind, k, n, b, weight=weight)
        if kind == "q4_0":
            return cls(kind, k, n, b, data=quantize_q4_0(weight))
        if kind == "q8_0":
            return cls(kind, k, n, b, data=quantize_q8_0(weight))
        if kind == "i8":
            q, s = quantize_int8(weight)
            return cls(kind, k, n, b, data=q.view(np.uint8), scale=s)
        if kind == "t2":
            q, s = quantize_ternary(weight)
            return cls(kind, k, n, b, data=q, scale=s)
        raise ValueError(f"unknown weight format {kind!r}; expected one of {', '.join(KINDS)}")

    @property
    def nbytes(self) -> int:
        """Bytes of stored weights, scales and bias."""
        return self.weight.nbytes + self.data.nbytes + self.scale.nbytes + self.bias.nbytes

    def dequantized(self) -> np.ndarray:
        """The float32 [N, K] weights this layer computes with."""
        if self._code == F32:
            return self.weight
        w = np.empty((self.out_features, self.in_features), np.float32)
        _decode(self._code, self.data, self.scale, F16_TO_F32, w)
        return w

    def __call__(self, x: np.ndarray, act: int = NO_ACT) -> np.ndarray:
        """x float32 [M, in_features] -> act(x @ W.T + b), float32 [M, out_features]."""
        if x.ndim != 2 or x.shape[1] != self.in_features:
            raise ValueError(f"input must be [M, {self.in_features}], got {list(x.shape)}")
        x = np.ascontiguousarray(x, dtype=np.float32)
        if self.stream_small_batches and x.shape[0] <= SMALL_BATCH:
            out = np.empty((x.shape[0], self.out_features), np.float32)
            args = (x, self._code, self.data, self.weight, self.scale, self.bias, act, F16_TO_F32, out)
            if self.in_features * self.out_features < PARALLEL_MIN_WEIGHTS:
                _fused_serial(*args, 1)
            else:
                _fused_parallel(*args, min(self.out_features, 64))
            return out
        if self._decoded is None:
            self._decoded = self.dequantized()
        out = x @ self._decoded.T
        _bias_act(out, self.bias, act)
        return out
