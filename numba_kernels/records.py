"""Packed 128-bit records in the bit memory: write them, and pool them by attention without unpacking.

A record is 4 uint32 words (:mod:`numba_kernels.bitmem`'s bit order: bit b is bit ``b % 32`` of
word ``b // 32``) holding 128 signs, +1 for a set bit and -1 for a clear one; bit 127 is the written
flag, so a record of all zeros is empty.

* :func:`write_records` packs one record of signs per env into its memory at a word address.
* :func:`pool_records` scores each written record r of ``count`` records from an env's address as
  ``query . r`` (a query of 128 floats) and returns the softmax-weighted mean of their signs: 128
  floats, all 0 where none is written. This is ``softmax(query @ R.T) @ R`` over the written rows R
  of the unpacked signs, without building R.

Both run on the calling thread: per env they touch a few hundred words, and between the BLAS calls of
a predictor step an OpenMP parallel region waits for OpenBLAS's spinning threads (measured on 2
cores: ~5 ms a region, against 0.04 ms of work), so these kernels stay serial.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from numba_kernels.bitmem import WORDS

RECORD_WORDS = 4
RECORD_BITS = 128


@njit(cache=True)
def _write(memory: np.ndarray, start: np.ndarray, signs: np.ndarray, mask: np.ndarray) -> None:
    for e in range(memory.shape[0]):
        if not mask[e]:
            continue
        for w in range(RECORD_WORDS):
            value = np.uint32(0)
            for i in range(32):
                if signs[e, 32 * w + i] > 0:
                    value |= np.uint32(1) << np.uint32(i)
            memory[e, start[e] + w] = value


@njit(cache=True, fastmath=False)
def _pool(memory: np.ndarray, envs: np.ndarray, start: np.ndarray, count: int, query: np.ndarray, out: np.ndarray):
    scores = np.empty(count, np.float32)
    for k in range(envs.shape[0]):
        e = envs[k]
        top = -np.inf
        for r in range(count):
            base = start[k] + r * RECORD_WORDS
            if (memory[e, base + 3] >> 31) & 1 == 0:
                scores[r] = -np.inf
                continue
            s = np.float32(0.0)
            for b in range(RECORD_BITS):
                q = query[k, b]
                s += q if (memory[e, base + (b >> 5)] >> (b & 31)) & 1 else -q
            scores[r] = s
            top = max(top, s)
        out[k, :] = 0.0
        if top == -np.inf:
            continue
        total = np.float32(0.0)
        for r in range(count):
            if scores[r] == -np.inf:
                continue
            w = np.float32(np.exp(scores[r] - top))
            total += w
            base = start[k] + r * RECORD_WORDS
            for b in range(RECORD_BITS):
                out[k, b] += w if (memory[e, base + (b >> 5)] >> (b & 31)) & 1 else -w
        for b in range(RECORD_BITS):
            out[k, b] /= total


def _check_memory(memory: np.ndarray) -> None:
    if not (isinstance(memory, np.ndarray) and memory.dtype == np.uint32 and memory.ndim == 2
            and memory.shape[1] == WORDS and memory.flags.c_contiguous):  # fmt: skip
        raise ValueError(f"memory must be a C-contiguous uint32 [E, {WORDS}] array")


def write_records(memory: np.ndarray, start: np.ndarray, signs: np.ndarray, mask: np.ndarray) -> None:
    """Write record ``signs[e]`` (float [E, 128]: > 0 sets a bit) at word ``start[e]`` of env e's memory,
    for every env the mask (bool [E]) selects; in place."""
    _check_memory(memory)
    envs = memory.shape[0]
    start = np.ascontiguousarray(start, np.int64)
    signs = np.ascontiguousarray(signs, np.float32)
    mask = np.ascontiguousarray(mask, np.bool_)
    if start.shape != (envs,) or mask.shape != (envs,) or signs.shape != (envs, RECORD_BITS):
        raise ValueError(f"start, mask and signs must be [{envs}], [{envs}] and [{envs}, {RECORD_BITS}]")
    if np.any(mask & ((start < 0) | (start + RECORD_WORDS > WORDS))):
        raise ValueError(f"a start address leaves no room for a record in {WORDS} words")
    _write(memory, start, signs, mask)


def pool_records(memory: np.ndarray, envs: np.ndarray, start: np.ndarray, count: int, query: np.ndarray) -> np.ndarray:
    """Softmax attention of ``query[k]`` (float32 [n, 128]) over the ``count`` records from word
    ``start[k]`` of env ``envs[k]``'s memory: the pooled signs, float32 [n, 128] (0 where none is written)."""
    _check_memory(memory)
    envs = np.ascontiguousarray(envs, np.int64)
    start = np.ascontiguousarray(start, np.int64)
    query = np.ascontiguousarray(query, np.float32)
    n = envs.shape[0]
    if query.shape != (n, RECORD_BITS) or start.shape != (n,):
        raise ValueError(f"query must be float32 [{n}, {RECORD_BITS}] and start [{n}], got {list(query.shape)}")
    if np.any((envs < 0) | (envs >= memory.shape[0])) or np.any((start < 0) | (start + count * RECORD_WORDS > WORDS)):
        raise ValueError("an env or a start address lies outside the memory")
    out = np.empty((n, RECORD_BITS), np.float32)
    _pool(memory, envs, start, int(count), query, out)
    return out
