"""Bit-memory primitives for the LeWorld memory.

Each environment owns an artificial memory of ``WORDS`` = 65,536 words of
``WORD_BITS`` = 32 bits (256 KiB). A batch of E environments is one numpy
``uint32`` array of shape [E, WORDS], C-contiguous; row e is environment e's
memory. Addresses are per environment (one start address per row) and never
wrap: an access that would run past the end of the memory is an error.

Bit order: bit i of a word is the bit of value ``1 << i`` (least significant
bit first), and bit address ``a`` names bit ``a % 32`` of word ``a // 32``.
So a bit string ``bits[0], bits[1], ...`` packs into words as

    word[w] = sum over i in 0..31 of bits[32 * w + i] << i,

which is ``np.packbits(bits, bitorder="little")`` read as little-endian
``uint32``. ``pack_bits``/``unpack_bits`` and ``read_bits``/``write_bits`` all
use this order.

The public functions check every argument in Python (dtype, shape, layout,
address bounds) and raise ``ValueError`` naming the argument before any
compiled kernel runs, so the kernels never index out of bounds. Nothing here
imports torch.
"""

from __future__ import annotations

import sys

import numpy as np
from numba import njit, prange

if sys.byteorder != "little":  # pack/unpack read words and bit bytes as little-endian integers
    raise ImportError("numba_kernels.bitmem needs a little-endian CPU (x86-64, ARM)")

WORDS = 65536
WORD_BITS = 32
MEMORY_BITS = WORDS * WORD_BITS
_UINT32_MAX = 0xFFFFFFFF


# ---------------------------------------------------------------- kernels
# Eight 0/1 bytes read as one little-endian uint64 hold bit i in byte i; multiplying by
# PACK_MAGIC gathers them into the top byte (bit i at position 56 + i); SPREAD_MAGIC copies a byte
# into all eight, SELECT_MASK keeps bit i in byte i, and adding 0x7F to each byte carries a set
# bit into the byte's top bit. Both are exact (no carries cross bytes) and LSB-first, as above.
PACK_MAGIC = np.uint64(0x0102040810204080)
SPREAD_MAGIC = np.uint64(0x0101010101010101)
SELECT_MASK = np.uint64(0x8040201008040201)
ROUND_UP = np.uint64(0x7F7F7F7F7F7F7F7F)


@njit(cache=True, parallel=True, error_model="numpy")
def _pack(bits8: np.ndarray, out: np.ndarray) -> None:
    """out[n, j] = the byte of bits bits8[n, j] (eight 0/1 bytes as a uint64), LSB first."""
    for n in prange(bits8.shape[0]):
        for j in range(bits8.shape[1]):
            out[n, j] = np.uint8((bits8[n, j] * PACK_MAGIC) >> np.uint64(56))


@njit(cache=True, parallel=True, error_model="numpy")
def _unpack(packed: np.ndarray, out8: np.ndarray) -> None:
    """out8[n, j] = eight 0/1 bytes (as a uint64) of the byte packed[n, j], LSB first."""
    for n in prange(packed.shape[0]):
        for j in range(packed.shape[1]):
            x = (np.uint64(packed[n, j]) * SPREAD_MAGIC) & SELECT_MASK
            out8[n, j] = ((x + ROUND_UP) >> np.uint64(7)) & SPREAD_MAGIC


@njit(cache=True, parallel=True)
def _read_words(memory: np.ndarray, start: np.ndarray, out: np.ndarray) -> None:
    for e in prange(memory.shape[0]):
        s = start[e]
        for j in range(out.shape[1]):
            out[e, j] = memory[e, s + j]


@njit(cache=True, parallel=True)
def _write_words(memory: np.ndarray, start: np.ndarray, values: np.ndarray, mask: np.ndarray) -> None:
    for e in prange(memory.shape[0]):
        if mask[e]:
            s = start[e]
            for j in range(values.shape[1]):
                memory[e, s + j] = values[e, j]


@njit(cache=True, parallel=True)
def _read_bits(memory: np.ndarray, bit_address: np.ndarray, out: np.ndarray) -> None:
    nbits = out.shape[1]
    for e in prange(memory.shape[0]):
        a = bit_address[e]
        j = 0
        while j < nbits:
            pos = a + j
            b0 = pos & 31
            count = min(32 - b0, nbits - j)
            word = np.int64(memory[e, pos >> 5])
            for t in range(count):
                out[e, j + t] = (word >> (b0 + t)) & 1
            j += count


@njit(cache=True, parallel=True)
def _write_bits(memory: np.ndarray, bit_address: np.ndarray, bits: np.ndarray, mask: np.ndarray) -> None:
    nbits = bits.shape[1]
    for e in prange(memory.shape[0]):
        if not mask[e]:
            continue
        a = bit_address[e]
        j = 0
        while j < nbits:
            pos = a + j
            w = pos >> 5
            b0 = pos & 31
            count = min(32 - b0, nbits - j)
            chunk = np.int64(0)
            for t in range(count):
                chunk |= np.int64(bits[e, j + t]) << (b0 + t)
            field = ((np.int64(1) << count) - 1) << b0
            memory[e, w] = (np.int64(memory[e, w]) & ~field) | chunk
            j += count


@njit(cache=True, parallel=True)
def _popcount(memory: np.ndarray, out: np.ndarray) -> None:
    for e in prange(memory.shape[0]):
        total = np.int64(0)
        for w in range(memory.shape[1]):
            x = np.int64(memory[e, w])
            x = x - ((x >> 1) & 0x55555555)
            x = (x & 0x33333333) + ((x >> 2) & 0x33333333)
            x = (x + (x >> 4)) & 0x0F0F0F0F
            total += ((x * 0x01010101) & 0xFFFFFFFF) >> 24
        out[e] = total


# ---------------------------------------------------------------- checks
def _check_count(func: str, name: str, value: object, limit: int) -> int:
    """A non-negative Python/numpy integer no larger than ``limit``."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{func}: {name} must be an int, got {value!r} of type {type(value).__name__}")
    if not 0 <= value <= limit:
        raise ValueError(f"{func}: {name} must satisfy 0 <= {name} <= {limit}, got {value}")
    return int(value)


def _check_memory(func: str, memory: object, writable: bool = False) -> np.ndarray:
    if not isinstance(memory, np.ndarray):
        raise ValueError(f"{func}: memory must be a numpy uint32 array [E, {WORDS}], got {type(memory).__name__}")
    if memory.dtype != np.uint32:
        raise ValueError(f"{func}: memory must have dtype uint32, got {memory.dtype}")
    if memory.ndim != 2 or memory.shape[1] != WORDS:
        raise ValueError(f"{func}: memory must have shape [E, {WORDS}], got {list(memory.shape)}")
    if not memory.flags.c_contiguous:
        raise ValueError(f"{func}: memory must be C-contiguous (use new_memory or np.ascontiguousarray)")
    if writable and not memory.flags.writeable:
        raise ValueError(f"{func}: memory is read-only, expected a writable array")
    return memory


def _check_mask(func: str, mask: object, num_envs: int) -> np.ndarray:
    if mask is None:
        return np.ones(num_envs, dtype=np.bool_)
    m = np.asarray(mask)
    if m.dtype != np.bool_:
        raise ValueError(f"{func}: mask must be a bool array [E], got dtype {m.dtype}")
    if m.shape != (num_envs,):
        raise ValueError(f"{func}: mask must have shape [{num_envs}] (one flag per env), got {list(m.shape)}")
    return np.ascontiguousarray(m)


def _check_addresses(
    func: str,
    name: str,
    addr: object,
    num_envs: int,
    span_name: str,
    span: int,
    limit: int,
    mask: np.ndarray | None = None,
) -> np.ndarray:
    """Per-env addresses with 0 <= addr[e] and addr[e] + span <= limit, for every env the mask selects."""
    a = np.asarray(addr)
    if a.dtype == np.bool_ or a.dtype.kind not in "iu":
        raise ValueError(f"{func}: {name} must be an integer array [E], got dtype {a.dtype}")
    if a.shape != (num_envs,):
        raise ValueError(f"{func}: {name} must have shape [{num_envs}] (one address per env), got {list(a.shape)}")
    wide = a.astype(np.uint64 if a.dtype.kind == "u" else np.int64)
    bad = (wide < 0) | (wide > limit - span)
    if mask is not None:
        bad &= mask
    if bad.any():
        e = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"{func}: {name}[{e}] = {int(a[e])} is out of range: need 0 <= {name} and "
            f"{name} + {span_name} <= {limit} ({span_name} = {span})"
        )
    return np.ascontiguousarray(wide.astype(np.int64))


def _check_bits(func: str, name: str, bits: object) -> np.ndarray:
    """A bool or uint8 array of 0/1 values, as contiguous uint8."""
    b = np.asarray(bits)
    if b.ndim == 0:
        raise ValueError(f"{func}: {name} must have at least one axis, got a scalar")
    if b.dtype == np.bool_:
        return np.ascontiguousarray(b).view(np.uint8)
    if b.dtype != np.uint8:
        raise ValueError(f"{func}: {name} must be a bool or uint8 array of 0/1, got dtype {b.dtype}")
    if b.size and b.max() > 1:
        raise ValueError(f"{func}: {name} must hold only 0 and 1, found the value {int(b.max())}")
    return np.ascontiguousarray(b)


def _rows(shape: tuple[int, ...]) -> int:
    """Number of rows once every axis but the last is flattened (reshape(-1, 0) is ambiguous)."""
    return int(np.prod(shape[:-1], dtype=np.int64))


# ---------------------------------------------------------------- public API
def new_memory(num_envs: int) -> np.ndarray:
    """A zeroed memory for ``num_envs`` environments: uint32 [num_envs, WORDS]."""
    if isinstance(num_envs, (bool, np.bool_)) or not isinstance(num_envs, (int, np.integer)):
        raise ValueError(f"new_memory: num_envs must be an int, got {num_envs!r} of type {type(num_envs).__name__}")
    if num_envs < 0:
        raise ValueError(f"new_memory: num_envs must be >= 0, got {num_envs}")
    return np.zeros((int(num_envs), WORDS), dtype=np.uint32)


def pack_bits(bits: np.ndarray) -> np.ndarray:
    """Pack bits [..., 32 * k] (bool, or uint8 holding 0/1) into uint32 words [..., k].

    Least significant bit first: bit i of word w is ``bits[..., 32 * w + i]``,
    i.e. ``word[..., w] = sum_i bits[..., 32 * w + i] << i``.
    """
    b = _check_bits("pack_bits", "bits", bits)
    if b.shape[-1] % WORD_BITS:
        raise ValueError(f"pack_bits: bits' last axis must be a multiple of {WORD_BITS}, got shape {list(b.shape)}")
    k = b.shape[-1] // WORD_BITS
    flat = np.ascontiguousarray(b.reshape(_rows(b.shape), b.shape[-1]))
    out = np.empty((flat.shape[0], k), dtype=np.uint32)
    _pack(flat.view(np.uint64), out.view(np.uint8))
    return out.reshape((*b.shape[:-1], k))


def unpack_bits(words: np.ndarray) -> np.ndarray:
    """Unpack uint32 words [..., k] into uint8 bits [..., 32 * k]; the exact inverse of ``pack_bits``."""
    w = np.asarray(words)
    if w.dtype != np.uint32:
        raise ValueError(f"unpack_bits: words must have dtype uint32, got {w.dtype}")
    if w.ndim == 0:
        raise ValueError("unpack_bits: words must have at least one axis [..., k], got a scalar")
    flat = np.ascontiguousarray(w.reshape(_rows(w.shape), w.shape[-1]))
    out = np.empty((flat.shape[0], flat.shape[1] * WORD_BITS), dtype=np.uint8)
    _unpack(flat.view(np.uint8), out.view(np.uint64))
    return out.reshape((*w.shape[:-1], w.shape[-1] * WORD_BITS))


def read_words(memory: np.ndarray, start: np.ndarray, length: int) -> np.ndarray:
    """Words ``memory[e, start[e] : start[e] + length]`` for every env e, as uint32 [E, length].

    Args:
        memory: uint32 [E, WORDS], C-contiguous.
        start: integer [E], one word address per env; 0 <= start[e] and start[e] + length <= WORDS.
        length: number of words to read, >= 0.
    """
    mem = _check_memory("read_words", memory)
    n = _check_count("read_words", "length", length, WORDS)
    s = _check_addresses("read_words", "start", start, mem.shape[0], "length", n, WORDS)
    out = np.empty((mem.shape[0], n), dtype=np.uint32)
    _read_words(mem, s, out)
    return out


def write_words(memory: np.ndarray, start: np.ndarray, values: np.ndarray, mask: np.ndarray | None = None) -> None:
    """Write ``values[e]`` at ``memory[e, start[e]:]`` in place, for every env e the mask selects.

    Args:
        memory: writable uint32 [E, WORDS], C-contiguous.
        start: integer [E]; 0 <= start[e] and start[e] + length <= WORDS for every selected env
            (envs the mask leaves out are not checked and not touched).
        values: [E, length], uint32 or any integer dtype whose values fit in uint32.
        mask: optional bool [E]; envs with False are left untouched. All envs write by default.
    """
    func = "write_words"
    mem = _check_memory(func, memory, writable=True)
    num_envs = mem.shape[0]
    v = np.asarray(values)
    if v.dtype == np.bool_ or v.dtype.kind not in "iu":
        raise ValueError(f"{func}: values must be a uint32 (or integer) array [E, length], got dtype {v.dtype}")
    if v.ndim != 2 or v.shape[0] != num_envs:
        raise ValueError(f"{func}: values must have shape [{num_envs}, length], got {list(v.shape)}")
    if v.shape[1] > WORDS:
        raise ValueError(f"{func}: values' length must be <= {WORDS}, got {v.shape[1]}")
    if v.dtype != np.uint32:
        if v.size and (v.min() < 0 or v.max() > _UINT32_MAX):
            bad = int(v.min()) if v.min() < 0 else int(v.max())
            raise ValueError(f"{func}: values must fit in uint32 (0..{_UINT32_MAX}), found {bad}")
        v = v.astype(np.uint32)
    elif np.may_share_memory(v, mem):
        v = v.copy()
    v = np.ascontiguousarray(v)
    m = _check_mask(func, mask, num_envs)
    s = _check_addresses(func, "start", start, num_envs, "length", v.shape[1], WORDS, mask=m)
    _write_words(mem, s, v, m)


def read_bits(memory: np.ndarray, bit_address: np.ndarray, nbits: int) -> np.ndarray:
    """Bits ``[bit_address[e], bit_address[e] + nbits)`` of each env's memory, as uint8 [E, nbits] of 0/1.

    Bit address ``a`` is bit ``a % 32`` (LSB first) of word ``a // 32``; a read may span word boundaries.

    Args:
        memory: uint32 [E, WORDS], C-contiguous.
        bit_address: integer [E]; 0 <= bit_address[e] and bit_address[e] + nbits <= WORDS * 32.
        nbits: number of bits to read, >= 0.
    """
    func = "read_bits"
    mem = _check_memory(func, memory)
    n = _check_count(func, "nbits", nbits, MEMORY_BITS)
    a = _check_addresses(func, "bit_address", bit_address, mem.shape[0], "nbits", n, MEMORY_BITS)
    out = np.empty((mem.shape[0], n), dtype=np.uint8)
    _read_bits(mem, a, out)
    return out


def write_bits(memory: np.ndarray, bit_address: np.ndarray, bits: np.ndarray, mask: np.ndarray | None = None) -> None:
    """Write ``bits[e]`` at bit address ``bit_address[e]`` in place; every other bit keeps its value.

    The inverse of ``read_bits``: afterwards ``read_bits(memory, bit_address, nbits)`` returns ``bits``
    for the envs written.

    Args:
        memory: writable uint32 [E, WORDS], C-contiguous.
        bit_address: integer [E]; 0 <= bit_address[e] and bit_address[e] + nbits <= WORDS * 32 for every
            selected env (envs the mask leaves out are not checked and not touched).
        bits: [E, nbits], bool or uint8 holding 0/1.
        mask: optional bool [E]; envs with False are left untouched. All envs write by default.
    """
    func = "write_bits"
    mem = _check_memory(func, memory, writable=True)
    num_envs = mem.shape[0]
    b = _check_bits(func, "bits", bits)
    if b.ndim != 2 or b.shape[0] != num_envs:
        raise ValueError(f"{func}: bits must have shape [{num_envs}, nbits], got {list(b.shape)}")
    if b.shape[1] > MEMORY_BITS:
        raise ValueError(f"{func}: bits' nbits must be <= {MEMORY_BITS}, got {b.shape[1]}")
    if np.may_share_memory(b, mem):
        b = b.copy()
    m = _check_mask(func, mask, num_envs)
    a = _check_addresses(func, "bit_address", bit_address, num_envs, "nbits", b.shape[1], MEMORY_BITS, mask=m)
    _write_bits(mem, a, b, m)


def popcount(memory: np.ndarray) -> np.ndarray:
    """Number of set bits in each env's memory, as int64 [E]."""
    mem = _check_memory("popcount", memory)
    out = np.empty(mem.shape[0], dtype=np.int64)
    _popcount(mem, out)
    return out
