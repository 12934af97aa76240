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


@dataclass(frozen=True)
class LayerEntry:
    """One layer's row of a :class:`ModelImage`'s layer table: its shape and where its words start.

    ``wide``: the codes are in the 8-bit code memory (Q8_0 / INT8), else in the 4-bit one (Q4_0)."""

    name: str
    n: int
    k: int
    block: int
    wide: bool
    code_base: int
    scale_base: int
    bias_base: int


@dataclass
class ModelImage:
    """Several layers packed into one set of memories for one shared P-lane array: a 4-bit code memory and a
    scale memory of 12-bit mantissas (the Q4_0 layers: "narrow"), an 8-bit code memory and a scale memory of
    18-bit mantissas (Q8_0 / INT8: "wide"), one bias memory, each layer's words at its own base addresses in
    its kind's memories, and the layer table a run-time-shaped sequencer reads
    (:class:`rtl.linear.LinearSequencer`). ``fmt`` is the array's format: wide enough for every layer (8-bit
    codes and 18-bit mantissas when any layer has them: a narrow code or mantissa is sign-extended on its way
    into the array); biases take 36 bits when every one fits, else 48. ``scale_mant_bits`` is each scale
    memory's mantissa width."""

    lanes: int
    fmt: MacFormat
    entries: list[LayerEntry]
    narrow_codes: list[int]
    wide_codes: list[int]
    narrow_scales: list[int]
    wide_scales: list[int]
    biases: list[int]
    scale_mant_bits: dict[str, int]

    def index(self, name: str) -> int:
        """The layer table's row for layer ``name``."""
        for i, entry in enumerate(self.entries):
            if entry.name == name:
                return i
        raise KeyError(f"no layer {name!r} in this image (it holds {[e.name for e in self.entries]})")

    @classmethod
    def from_layers(cls, layers: dict[str, FixedLinear], lanes: int) -> ModelImage:
        """Pack ``layers`` (name -> the reference's layer) for one array of ``lanes`` lanes."""
        wide_any = any(layer.bits > 4 for layer in layers.values())
        block_max = max(32, *(layer.block for layer in layers.values()))
        bias_bits = 36 if all(np.abs(layer.bias_acc).max() < 2**35 for layer in layers.values()) else 48
        mant = {"narrow": 12, "wide": 18}
        fmt = MacFormat(
            code_bits=8 if wide_any else 4,
            block_max=block_max,
            mant_bits=mant["wide"] if wide_any else mant["narrow"],
            bias_bits=bias_bits,
        )
        entries: list[LayerEntry] = []
        words: dict[str, list[int]] = {
            key: [] for key in ("narrow_codes", "wide_codes", "narrow_scales", "wide_scales")
        }
        biases: list[int] = []
        for name, layer in layers.items():
            kind = "wide" if layer.bits > 4 else "narrow"
            own = MacFormat(code_bits=layer.bits, block_max=block_max, mant_bits=mant[kind], bias_bits=bias_bits)
            image = LayerImage.from_fixed(layer, lanes, own)
            codes, scales = words[f"{kind}_codes"], words[f"{kind}_scales"]
            entries.append(
                LayerEntry(name, image.n, image.k, image.block, kind == "wide", len(codes), len(scales), len(biases))
            )
            codes += image.codes
            scales += image.scales
            biases += image.biases
        return cls(lanes, fmt, entries, **words, biases=biases, scale_mant_bits=mant)

    @classmethod
    def single(cls, image: LayerImage, name: str = "layer") -> ModelImage:
        """One :class:`LayerImage` as a one-row table (its codes and scales at the image's own widths)."""
        wide = image.fmt.code_bits > 4
        entry = LayerEntry(name, image.n, image.k, image.block, wide, 0, 0, 0)
        codes, scales = list(image.codes), list(image.scales)
        return cls(
            image.lanes,
            image.fmt,
            [entry],
            narrow_codes=[] if wide else codes,
            wide_codes=codes if wide else [],
            narrow_scales=[] if wide else scales,
            wide_scales=scales if wide else [],
            biases=image.biases,
            scale_mant_bits={"narrow": image.fmt.mant_bits, "wide": image.fmt.mant_bits},
        )
