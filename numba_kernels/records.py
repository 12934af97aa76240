"""Packed 128-bit records in the bit memory: write them, and pool them (attention or max) without unpacking.

A record is 4 uint32 words (:mod:`numba_kernels.bitmem`'s bit order: bit b is bit ``b % 32`` of
word ``b // 32``) holding 128 signs, +1 for a set bit and -1 for a clear one; bit 127 is the written
flag, so a record of all zeros is empty.

* :func:`write_records` packs one record of signs per env into its memory at a word address.
* :func:`pool_records` scores each written record r of ``count`` records from an env's address as
  ``query . r`` (a query of 128 floats) and returns the softmax-weighted mean of their signs: 128
  floats, all 0 where none is written. This is ``softmax(query @ R.T) @ R`` over the written rows R
  of the unpacked signs, without building R.
* :func:`max_pool_records` projects each written record r linearly (``W r + b``, P outputs) and
  returns the elementwise max over the written records: P floats, all 0 where none is written. The
  projection runs through byte tables (:func:`byte_tables`, ggml's trick for packed weights, here
  for packed inputs): a record's 16 bytes each index a table of 256 precomputed P-vectors, so a
  record costs 16 P-vector additions instead of 128 x P multiply-adds.

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


@njit(cache=True, fastmath=False)
def _max_pool(memory, envs, start, count, tables, bias, out):
    width = bias.shape[0]
    acc = np.empty(width, np.float32)
    for k in range(envs.shape[0]):
        e = envs[k]
        any_written = False
        for r in range(count):
            base = start[k] + r * RECORD_WORDS
            if (memory[e, base + 3] >> 31) & 1 == 0:
                continue
            acc[:] = bias
            for j in range(RECORD_BITS // 8):
                byte = (memory[e, base + (j >> 2)] >> np.uint32(8 * (j & 3))) & np.uint32(0xFF)
                for p in range(width):
                    acc[p] += tables[j, byte, p]
            if not any_written:
                out[k, :] = acc
                any_written = True
            else:
                for p in range(width):
                    out[k, p] = max(out[k, p], acc[p])
        if not any_written:
            out[k, :] = 0.0


def byte_tables(weight: np.ndarray) -> np.ndarray:
    """A record projection's weight (float [P, 128]) as byte tables float32 [16, 256, P]: entry [j, v]
    is W's columns 8j .. 8j + 7 applied to the signs of byte value v (bit i of v set: +1, clear: -1),
    so ``W r`` of a packed record is the sum over its 16 bytes of their entries."""
    weight = np.asarray(weight, np.float64)
    if weight.ndim != 2 or weight.shape[1] != RECORD_BITS:
        raise ValueError(f"weight must be [P, {RECORD_BITS}], got {list(weight.shape)}")
    signs = np.where((np.arange(256)[:, None] >> np.arange(8)[None, :]) & 1, 1.0, -1.0)  # [256, 8]
    columns = weight.T.reshape(RECORD_BITS // 8, 8, -1)  # [16, 8, P]
    return np.ascontiguousarray(np.einsum("vi,jip->jvp", signs, columns), np.float32)


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


def max_pool_records(
    memory: np.ndarray, envs: np.ndarray, start: np.ndarray, count: int, tables: np.ndarray, bias: np.ndarray
) -> np.ndarray:
    """The elementwise max of ``W r + b`` over the written records among the ``count`` records from word
    ``start[k]`` of env ``envs[k]``'s memory, W given as :func:`byte_tables` (float32 [16, 256, P]):
    float32 [n, P], 0 where none is written."""
    _check_memory(memory)
    envs = np.ascontiguousarray(envs, np.int64)
    start = np.ascontiguousarray(start, np.int64)
    bias = np.ascontiguousarray(bias, np.float32)
    tables = np.ascontiguousarray(tables, np.float32)
    n = envs.shape[0]
    if tables.shape != (RECORD_BITS // 8, 256, bias.shape[0]) or start.shape != (n,):
        raise ValueError(f"tables must be float32 [16, 256, P] with bias [P], and start [{n}]")
    if np.any((envs < 0) | (envs >= memory.shape[0])) or np.any((start < 0) | (start + count * RECORD_WORDS > WORDS)):
        raise ValueError("an env or a start address lies outside the memory")
    out = np.empty((n, bias.shape[0]), np.float32)
    _max_pool(memory, envs, start, int(count), tables, bias, out)
    return out
