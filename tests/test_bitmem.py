"""The LeWorld memory's bit primitives against plain numpy references."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from numba_kernels import bitmem
from numba_kernels.bitmem import WORD_BITS, WORDS

MEMORY_BITS = WORDS * WORD_BITS


def random_memory(rng: np.random.Generator, num_envs: int) -> np.ndarray:
    return rng.integers(0, 2**32, size=(num_envs, WORDS), dtype=np.uint32)


def ref_pack(bits: np.ndarray) -> np.ndarray:
    """np.packbits, least significant bit first, read as little-endian uint32."""
    packed = np.packbits(bits.astype(np.uint8), axis=-1, bitorder="little")
    return np.ascontiguousarray(packed).view("<u4").astype(np.uint32)


def ref_bits_of(memory_row: np.ndarray) -> np.ndarray:
    """All 2**21 bits of one env's memory, bit a = bit a % 32 of word a // 32."""
    return np.unpackbits(memory_row.astype("<u4").view(np.uint8), bitorder="little")


def ref_from_bits(bits: np.ndarray) -> np.ndarray:
    return np.packbits(bits, bitorder="little").view("<u4").astype(np.uint32)


# ---------------------------------------------------------------- pack / unpack
def test_constants_and_new_memory():
    assert WORDS == 65536
    assert WORD_BITS == 32
    m = bitmem.new_memory(3)
    assert m.dtype == np.uint32
    assert m.shape == (3, WORDS)
    assert m.flags.c_contiguous
    assert not m.any()


@pytest.mark.parametrize("shape", [(64,), (3, 96), (2, 3, 32), (5, 0), (0, 64)])
def test_pack_matches_packbits_and_round_trips(shape):
    rng = np.random.default_rng(1)
    bits = rng.integers(0, 2, size=shape, dtype=np.uint8)
    words = bitmem.pack_bits(bits)
    assert words.dtype == np.uint32
    assert words.shape == (*shape[:-1], shape[-1] // 32)
    np.testing.assert_array_equal(words, ref_pack(bits))
    back = bitmem.unpack_bits(words)
    assert back.dtype == np.uint8
    np.testing.assert_array_equal(back, bits)
    np.testing.assert_array_equal(bitmem.pack_bits(bits.astype(bool)), words)


def test_pack_bit_order_is_lsb_first():
    bits = np.zeros(64, dtype=np.uint8)
    bits[0] = 1  # word 0, value 1
    bits[31] = 1  # word 0, value 2**31
    bits[32 + 4] = 1  # word 1, value 16
    np.testing.assert_array_equal(bitmem.pack_bits(bits), np.array([1 + 2**31, 16], dtype=np.uint32))
    unpacked = bitmem.unpack_bits(np.array([0x80000001, 0x10], dtype=np.uint32))
    np.testing.assert_array_equal(np.flatnonzero(unpacked), [0, 31, 36])


def test_unpack_matches_explicit_loop():
    rng = np.random.default_rng(2)
    words = rng.integers(0, 2**32, size=(4, 5), dtype=np.uint32)
    expected = np.array(
        [[(int(words[r, i // 32]) >> (i % 32)) & 1 for i in range(160)] for r in range(4)], dtype=np.uint8
    )
    np.testing.assert_array_equal(bitmem.unpack_bits(words), expected)
    np.testing.assert_array_equal(bitmem.pack_bits(expected), words)
    # a non-contiguous view gives the same answer
    np.testing.assert_array_equal(bitmem.unpack_bits(words[:, ::2]), bitmem.unpack_bits(words[:, ::2].copy()))


def addresses(rng: np.random.Generator, high: int, *edges: int) -> np.ndarray:
    """Six random start addresses below ``high``, the first ones replaced by the edge cases ``edges``."""
    start = rng.integers(0, high, size=6)
    start[: len(edges)] = edges
    return start


# ---------------------------------------------------------------- words
def test_read_words_matches_slicing_including_the_last_word():
    rng = np.random.default_rng(3)
    mem = random_memory(rng, 6)
    length = 7
    start = addresses(rng, WORDS - length + 1, 0, WORDS - length)  # the last one ends on the very last word
    got = bitmem.read_words(mem, start, length)
    assert got.dtype == np.uint32
    assert got.shape == (6, length)
    for e in range(6):
        np.testing.assert_array_equal(got[e], mem[e, start[e] : start[e] + length])
    last = bitmem.read_words(mem, np.full(6, WORDS - 1), 1)
    np.testing.assert_array_equal(last[:, 0], mem[:, -1])
    assert bitmem.read_words(mem, np.full(6, WORDS), 0).shape == (6, 0)


def test_write_words_matches_numpy_and_respects_mask():
    rng = np.random.default_rng(4)
    mem = random_memory(rng, 5)
    before = mem.copy()
    length = 9
    start = rng.integers(0, WORDS - length + 1, size=5)
    start[2] = WORDS - length
    values = rng.integers(0, 2**32, size=(5, length), dtype=np.uint32)
    mask = np.array([True, False, True, False, True])
    bitmem.write_words(mem, start, values, mask=mask)
    expected = before.copy()
    for e in np.flatnonzero(mask):
        expected[e, start[e] : start[e] + length] = values[e]
    np.testing.assert_array_equal(mem, expected)
    np.testing.assert_array_equal(mem[~mask], before[~mask])


def test_write_words_casts_fitting_ints_and_handles_aliasing():
    mem = bitmem.new_memory(2)
    bitmem.write_words(mem, np.array([0, 65534]), np.array([[1, 2**32 - 1], [3, 4]], dtype=np.int64))
    assert mem[0, :2].tolist() == [1, 2**32 - 1]
    assert mem[1, -2:].tolist() == [3, 4]
    # values that overlap the destination in the same row are read before being overwritten
    mem[:, :4] = np.arange(8, dtype=np.uint32).reshape(2, 4)
    bitmem.write_words(mem, np.array([1, 1]), mem[:, :3])
    assert mem[0, :4].tolist() == [0, 0, 1, 2]
    assert mem[1, :4].tolist() == [4, 4, 5, 6]


def test_masked_out_envs_may_hold_out_of_range_addresses():
    mem = bitmem.new_memory(2)
    bitmem.write_words(mem, np.array([-5, 10]), np.ones((2, 1), np.uint32), mask=np.array([False, True]))
    bitmem.write_bits(mem, np.array([MEMORY_BITS, 0]), np.ones((2, 1), np.uint8), mask=np.array([False, True]))
    assert not mem[0].any()
    assert mem[1, 10] == 1 and mem[1, 0] == 1


# ---------------------------------------------------------------- bits
def test_read_bits_matches_reference_across_word_boundaries():
    rng = np.random.default_rng(5)
    mem = random_memory(rng, 6)
    nbits = 77
    # from bit 0; from the last bit of a word; across three words; ending on the very last bit
    addr = addresses(rng, MEMORY_BITS - nbits + 1, 0, 31, 32 * 100 + 17, MEMORY_BITS - nbits)
    got = bitmem.read_bits(mem, addr, nbits)
    assert got.dtype == np.uint8
    assert got.shape == (6, nbits)
    for e in range(6):
        np.testing.assert_array_equal(got[e], ref_bits_of(mem[e])[addr[e] : addr[e] + nbits])
    last = bitmem.read_bits(mem, np.full(6, MEMORY_BITS - 1), 1)
    np.testing.assert_array_equal(last[:, 0], mem[:, -1] >> 31)


def test_write_bits_matches_reference_and_leaves_neighbours_alone():
    rng = np.random.default_rng(6)
    mem = random_memory(rng, 6)
    before = mem.copy()
    nbits = 45
    addr = np.array([0, 31, 32 * 7 + 5, MEMORY_BITS - nbits, 1000, 64], dtype=np.int64)
    bits = rng.integers(0, 2, size=(6, nbits), dtype=np.uint8)
    mask = np.array([True, True, True, True, False, True])
    bitmem.write_bits(mem, addr, bits, mask=mask)
    for e in range(6):
        ref = ref_bits_of(before[e])
        if mask[e]:
            ref[addr[e] : addr[e] + nbits] = bits[e]
        np.testing.assert_array_equal(mem[e], ref_from_bits(ref), err_msg=f"env {e}")
    np.testing.assert_array_equal(bitmem.read_bits(mem, addr, nbits)[mask], bits[mask])


def test_write_single_bits_into_all_ones_and_all_zeros():
    ones = np.full((2, WORDS), 0xFFFFFFFF, dtype=np.uint32)
    bitmem.write_bits(ones, np.array([33, MEMORY_BITS - 1]), np.zeros((2, 1), dtype=bool))
    assert ones[0, 1] == 0xFFFFFFFD
    assert ones[1, -1] == 0x7FFFFFFF
    assert bitmem.popcount(ones).tolist() == [MEMORY_BITS - 1, MEMORY_BITS - 1]
    zeros = bitmem.new_memory(1)
    bitmem.write_bits(zeros, np.array([63]), np.ones((1, 2), dtype=bool))
    assert zeros[0, :3].tolist() == [0, 2**31, 1]


@settings(max_examples=40, deadline=None)
@given(
    addresses=st.lists(st.integers(0, MEMORY_BITS - 1), min_size=1, max_size=3),
    nbits=st.integers(0, 100),
    seed=st.integers(0, 2**32 - 1),
)
def test_write_then_read_bits_round_trips(addresses, nbits, seed):
    rng = np.random.default_rng(seed)
    addr = np.minimum(np.array(addresses, dtype=np.int64), MEMORY_BITS - nbits)
    num_envs = len(addresses)
    mem = np.zeros((num_envs, WORDS), dtype=np.uint32)
    # random words around the written spans, so neighbour damage would show
    for e in range(num_envs):
        lo, hi = max(addr[e] // 32 - 2, 0), min(WORDS, (addr[e] + nbits) // 32 + 3)
        mem[e, lo:hi] = rng.integers(0, 2**32, size=hi - lo, dtype=np.uint32)
    before = mem.copy()
    bits = rng.integers(0, 2, size=(num_envs, nbits), dtype=np.uint8)
    bitmem.write_bits(mem, addr, bits)
    np.testing.assert_array_equal(bitmem.read_bits(mem, addr, nbits), bits)
    for e in range(num_envs):
        ref = ref_bits_of(before[e])
        ref[addr[e] : addr[e] + nbits] = bits[e]
        np.testing.assert_array_equal(mem[e], ref_from_bits(ref))


# ---------------------------------------------------------------- popcount
def test_popcount_matches_numpy():
    rng = np.random.default_rng(7)
    mem = random_memory(rng, 4)
    mem[1] = 0
    mem[2] = 0xFFFFFFFF
    got = bitmem.popcount(mem)
    assert got.dtype == np.int64
    expected = np.unpackbits(mem.view(np.uint8), axis=1).sum(axis=1)
    np.testing.assert_array_equal(got, expected)
    assert got[1] == 0 and got[2] == MEMORY_BITS


# ---------------------------------------------------------------- bad inputs
def _mem(num_envs: int = 2) -> np.ndarray:
    return bitmem.new_memory(num_envs)


BAD_CALLS = [
    # new_memory
    (lambda: bitmem.new_memory(-1), r"num_envs must be >= 0"),
    (lambda: bitmem.new_memory(2.0), r"num_envs must be an int"),
    # pack_bits / unpack_bits
    (lambda: bitmem.pack_bits(np.full(32, 2, np.uint8)), r"bits must hold only 0 and 1"),
    (lambda: bitmem.pack_bits(np.zeros(32, np.int64)), r"bits must be a bool or uint8.*int64"),
    (lambda: bitmem.pack_bits(np.zeros(33, np.uint8)), r"bits' last axis must be a multiple of 32"),
    (lambda: bitmem.pack_bits(np.uint8(1)), r"bits must have at least one axis"),
    (lambda: bitmem.unpack_bits(np.zeros(2, np.int32)), r"words must have dtype uint32, got int32"),
    (lambda: bitmem.unpack_bits(np.uint32(1)), r"words must have at least one axis"),
    # memory
    (lambda: bitmem.popcount(np.zeros((2, WORDS), np.int32)), r"memory must have dtype uint32, got int32"),
    (lambda: bitmem.popcount(np.zeros((2, 100), np.uint32)), r"memory must have shape \[E, 65536\], got \[2, 100\]"),
    (lambda: bitmem.popcount(np.zeros(WORDS, np.uint32)), r"memory must have shape"),
    (lambda: bitmem.popcount([[0] * 4]), r"memory must be a numpy uint32 array"),
    (lambda: bitmem.popcount(np.zeros((WORDS, 2), np.uint32).T), r"memory must be C-contiguous"),
    (lambda: bitmem.read_words(np.zeros((2, 2 * WORDS), np.uint32)[:, ::2], np.zeros(2, int), 1), r"C-contiguous"),
    # read_words / write_words
    (lambda: bitmem.read_words(_mem(), np.array([0, -1]), 1), r"start\[1\] = -1 is out of range"),
    (lambda: bitmem.read_words(_mem(), np.array([WORDS - 3, 0]), 4), r"start\[0\] = 65533 is out of range"),
    (lambda: bitmem.read_words(_mem(), np.array([0, 2**63], dtype=np.uint64), 1), r"start\[1\] = 9223372036854775808"),
    (lambda: bitmem.read_words(_mem(), np.array([0.0, 1.0]), 1), r"start must be an integer array.*float64"),
    (lambda: bitmem.read_words(_mem(), np.array([True, False]), 1), r"start must be an integer array.*bool"),
    (lambda: bitmem.read_words(_mem(), np.array([0, 1, 2]), 1), r"start must have shape \[2\].*got \[3\]"),
    (lambda: bitmem.read_words(_mem(), 0, 1), r"start must have shape \[2\]"),
    (lambda: bitmem.read_words(_mem(), np.zeros(2, int), -1), r"length must satisfy 0 <= length"),
    (lambda: bitmem.read_words(_mem(), np.zeros(2, int), WORDS + 1), r"length must satisfy"),
    (lambda: bitmem.read_words(_mem(), np.zeros(2, int), 1.5), r"length must be an int"),
    (lambda: bitmem.read_words(_mem(), np.zeros(2, int), True), r"length must be an int"),
    (lambda: bitmem.write_words(_mem(), np.array([0, WORDS - 1]), np.zeros((2, 2), np.uint32)), r"start\[1\] = 65535"),
    (lambda: bitmem.write_words(_mem(), np.zeros(2, int), np.zeros((3, 2), np.uint32)), r"values must have shape"),
    (lambda: bitmem.write_words(_mem(), np.zeros(2, int), np.zeros(2, np.uint32)), r"values must have shape"),
    (lambda: bitmem.write_words(_mem(), np.zeros(2, int), np.zeros((2, 1), np.float32)), r"values must be a uint32"),
    (lambda: bitmem.write_words(_mem(), np.zeros(2, int), np.full((2, 1), -1)), r"values must fit in uint32.*-1"),
    (lambda: bitmem.write_words(_mem(), np.zeros(2, int), np.full((2, 1), 2**32)), r"values must fit in uint32"),
    (lambda: bitmem.write_words(_mem(), np.zeros(2, int), np.zeros((2, 1), np.uint32), mask=np.ones(2)), r"mask must"),
    (
        lambda: bitmem.write_words(_mem(), np.zeros(2, int), np.zeros((2, 1), np.uint32), mask=np.ones(3, bool)),
        r"mask must have shape \[2\]",
    ),
    (lambda: bitmem.write_words(_readonly(), np.zeros(2, int), np.zeros((2, 1), np.uint32)), r"memory is read-only"),
    # read_bits / write_bits
    (lambda: bitmem.read_bits(_mem(), np.array([0, MEMORY_BITS - 7]), 8), r"bit_address\[1\] = 2097145"),
    (lambda: bitmem.read_bits(_mem(), np.array([-3, 0]), 1), r"bit_address\[0\] = -3"),
    (lambda: bitmem.read_bits(_mem(), np.zeros(2, int), -1), r"nbits must satisfy 0 <= nbits"),
    (lambda: bitmem.read_bits(_mem(), np.zeros(2, int), MEMORY_BITS + 1), r"nbits must satisfy"),
    (lambda: bitmem.read_bits(_mem(), np.zeros((2, 1), int), 1), r"bit_address must have shape \[2\]"),
    (lambda: bitmem.write_bits(_mem(), np.array([0, MEMORY_BITS]), np.ones((2, 1), bool)), r"bit_address\[1\]"),
    (lambda: bitmem.write_bits(_mem(), np.zeros(2, int), np.full((2, 3), 3, np.uint8)), r"bits must hold only 0"),
    (lambda: bitmem.write_bits(_mem(), np.zeros(2, int), np.ones((2, 3), np.int64)), r"bits must be a bool or uint8"),
    (lambda: bitmem.write_bits(_mem(), np.zeros(2, int), np.ones((1, 3), bool)), r"bits must have shape \[2, nbits\]"),
    (lambda: bitmem.write_bits(_mem(), np.zeros(2, int), np.ones((2, 3), bool), mask=[1, 0]), r"mask must be a bool"),
    (lambda: bitmem.write_bits(_readonly(), np.zeros(2, int), np.ones((2, 1), bool)), r"memory is read-only"),
]


def _readonly() -> np.ndarray:
    m = bitmem.new_memory(2)
    m.flags.writeable = False
    return m


@pytest.mark.parametrize(("call", "match"), BAD_CALLS, ids=[f"bad{i}" for i in range(len(BAD_CALLS))])
def test_bad_inputs_raise_value_error_naming_the_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_failed_write_leaves_memory_untouched():
    mem = bitmem.new_memory(2)
    with pytest.raises(ValueError, match=r"start\[1\]"):
        bitmem.write_words(mem, np.array([0, WORDS]), np.ones((2, 1), np.uint32))
    with pytest.raises(ValueError, match=r"bit_address\[1\]"):
        bitmem.write_bits(mem, np.array([0, MEMORY_BITS]), np.ones((2, 1), np.uint8))
    assert not mem.any()


def test_import_does_not_pull_in_torch():
    code = "import numba_kernels.bitmem, sys; assert 'torch' not in sys.modules"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
