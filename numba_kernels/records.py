"""Attention pooling over packed 128-bit records, the episodic memory's read (no unpacking to floats).

A record is 4 uint32 words (:mod:`numba_kernels.bitmem`'s bit order: bit b is bit ``b % 32`` of
word ``b // 32``) holding 128 signs, +1 for a set bit and -1 for a clear one; bit 127 is the written
flag, so a record of all zeros is empty. For each env, :func:`pool_records` scores every written
record r of its words as ``query . r`` (a query of 128 floats), and returns the softmax-weighted
mean of the written records' signs: 128 floats, all 0 where none is written. This is
``softmax(query @ R.T) @ R`` over the written rows R of the unpacked signs, without building R.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

RECORD_WORDS = 4
RECORD_BITS = 128


@njit(cache=True, parallel=True, fastmath=False)
def _pool(words: np.ndarray, query: np.ndarray, out: np.ndarray) -> None:
    envs, records = words.shape[0], words.shape[1] // RECORD_WORDS
    for e in prange(envs):
        scores = np.empty(records, np.float32)
        top = -np.inf
        for r in range(records):
            base = r * RECORD_WORDS
            if (words[e, base + 3] >> 31) & 1 == 0:
                scores[r] = -np.inf
                continue
            s = np.float32(0.0)
            for b in range(RECORD_BITS):
                q = query[e, b]
                s += q if (words[e, base + (b >> 5)] >> (b & 31)) & 1 else -q
            scores[r] = s
            top = max(top, s)
        out[e, :] = 0.0
        if top == -np.inf:
            continue
        total = np.float32(0.0)
        for r in range(records):
            if scores[r] == -np.inf:
                continue
            w = np.float32(np.exp(scores[r] - top))
            total += w
            base = r * RECORD_WORDS
            for b in range(RECORD_BITS):
                out[e, b] += w if (words[e, base + (b >> 5)] >> (b & 31)) & 1 else -w
        for b in range(RECORD_BITS):
            out[e, b] /= total


def pool_records(words: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Softmax attention of ``query`` (float32 [E, 128]) over each env's records (uint32 [E, 4 k]):
    the pooled signs, float32 [E, 128] (0 for an env without a written record)."""
    words = np.ascontiguousarray(words, np.uint32)
    query = np.ascontiguousarray(query, np.float32)
    if words.ndim != 2 or words.shape[1] % RECORD_WORDS:
        raise ValueError(f"words must be uint32 [E, 4 k] (k records of 4 words), got {list(words.shape)}")
    if query.shape != (words.shape[0], RECORD_BITS):
        raise ValueError(f"query must be float32 [{words.shape[0]}, {RECORD_BITS}], got {list(query.shape)}")
    out = np.empty((words.shape[0], RECORD_BITS), np.float32)
    _pool(words, query, out)
    return out
