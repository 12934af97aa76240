"""Memory images: a linear layer's codes, block scales and biases packed into the words the
:class:`rtl.linear.LinearLayer` memories hold for a P-lane array.

Layout (group ``g`` = outputs ``g*P .. g*P + P - 1``, lane ``l`` = output ``g*P + l``, ``nb`` blocks a row):

* codes: word ``g*K + k`` holds lane l's code for input k in bits ``[c*l, c*l + c)`` (c = code bits): the
  P codes of one beat are one read;
* scales: word ``(g*nb + b)*P + l`` holds output ``g*P + l``'s block-b mantissa (low ``mant_bits``) and shift
  (above it): one word per scaler job, in job order;
* biases: word ``n`` holds output n's bias in the accumulator format (``bias_bits``);
* activations: plain int32 words, element i at address i (row r of a multi-row run at ``r * K``).

Every field is two's complement; a value that does not fit its field raises ``ValueError`` (so the
hardware never sees a truncated weight).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from numba_kernels.fixed_point import FixedLinear
from rtl.mac import MacFormat


def _field(value: int, bits: int, what: str) -> int:
    if not -(2 ** (bits - 1)) <= value < 2 ** (bits - 1):
        raise ValueError(f"{what} {value} does not fit a {bits}-bit signed field")
    return value & ((1 << bits) - 1)


def pack_words(values: np.ndarray, bits: int, what: str) -> list[int]:
    """Rows of signed ints [W, L] -> W words of L ``bits``-wide fields (field l at bit ``bits * l``)."""
    words = []
    for row in np.asarray(values, np.int64):
        word = 0
        for lane, v in enumerate(row):
            word |= _field(int(v), bits, what) << (bits * lane)
        words.append(word)
    return words


def unpack_words(words: list[int], bits: int, lanes: int) -> np.ndarray:
    """The inverse of :func:`pack_words`: words -> signed ints [W, lanes]."""
    out = np.empty((len(words), lanes), np.int64)
    mask, sign = (1 << bits) - 1, 1 << (bits - 1)
    for w, word in enumerate(words):
        for lane in range(lanes):
            v = (word >> (bits * lane)) & mask
            out[w, lane] = v - (1 << bits) if v & sign else v
    return out


@dataclass
class LayerImage:
    """A linear layer packed for a P-lane array: memory words and the shape the sequencer loops over.

    ``scales`` is in job order: for each group and block, lanes 0..P-1 (``mant`` / ``shift`` arrays are
    [N, nb]: row g*P + l, column b)."""

    n: int
    k: int
    block: int
    lanes: int
    fmt: MacFormat
    codes: list[int]
    scales: list[int]
    biases: list[int]

    @property
    def groups(self) -> int:
        return self.n // self.lanes

    @property
    def blocks(self) -> int:
        return self.k // self.block

    @classmethod
    def from_fixed(cls, layer: FixedLinear, lanes: int, fmt: MacFormat | None = None) -> LayerImage:
        """Pack a :class:`~numba_kernels.fixed_point.FixedLinear` (the reference's layer) for ``lanes`` lanes."""
        fmt = fmt or (MacFormat() if layer.bits == 4 else MacFormat.q8(block_max=max(32, layer.block)))
        n, k = layer.codes.shape
        if n % lanes:
            raise ValueError(f"{n} outputs do not split into groups of {lanes} lanes")
        if layer.bits > fmt.code_bits or layer.block > fmt.block_max:
            raise ValueError(f"a {layer.bits}-bit layer with blocks of {layer.block} needs a wider MAC format")
        lo, hi = fmt.shift_range
        if layer.shift.min() < lo or layer.shift.max() > hi:
            raise ValueError(f"block shifts {layer.shift.min()}..{layer.shift.max()} outside the lane's {lo}..{hi}")
        groups, nb = n // lanes, k // layer.block
        codes = layer.codes.astype(np.int64).reshape(groups, lanes, k).transpose(0, 2, 1).reshape(-1, lanes)
        mant = layer.mant.astype(np.int64).reshape(groups, lanes, nb).transpose(0, 2, 1).reshape(-1, lanes)
        shift = layer.shift.astype(np.int64).reshape(groups, lanes, nb).transpose(0, 2, 1).reshape(-1, lanes)
        for v, bits, what in ((mant, fmt.mant_bits, "mantissa"), (shift, fmt.shift_bits, "shift")):
            if v.min() < -(2 ** (bits - 1)) or v.max() >= 2 ** (bits - 1):
                raise ValueError(f"a block {what} does not fit {bits} bits")
        scale_fields = (shift << fmt.mant_bits) | (mant & ((1 << fmt.mant_bits) - 1))  # shift's sign on top
        scale_bits = fmt.mant_bits + fmt.shift_bits
        return cls(
            n=n,
            k=k,
            block=layer.block,
            lanes=lanes,
            fmt=fmt,
            codes=pack_words(codes, fmt.code_bits, "code"),
            scales=pack_words(scale_fields.reshape(-1, 1), scale_bits, "scale"),
            biases=pack_words(layer.bias_acc.astype(np.int64).reshape(-1, 1), fmt.bias_bits, "bias"),
        )
