"""The LeWorld device protocol on the wire: COBS framing, CRC-32, the header, and payloads.

docs/protocol.md is the byte-by-byte description. In short, a frame is::

    COBS( header (12 bytes) | payload (length bytes) | CRC-32 of header and payload (4 bytes) ) 0x00

    header = version u8, command u8, flags u8, reserved u8 (0), sequence u32, length u32   (little-endian)

Every decoding problem (a bad COBS block, a short or oversize frame, a CRC
mismatch, a header that disagrees with the frame, a payload that does not
parse) is a :class:`ProtocolError` and nothing else. This module is pure
Python and numpy: no torch, no serial port.

Version 2 (the only one spoken; no device shipped version 1) added HELLO's memory limits (reply-cache
depth, sessions, scratch bytes, rows per call, fixed-point fraction bits) and the int32 fixed-point
tensor dtype (code 3) that FPGA devices take and answer, so their link carries the exact integers.
"""

from __future__ import annotations

import math
import struct
import zlib
from dataclasses import dataclass
from enum import IntEnum, IntFlag

import numpy as np

from world_models.errors import ArgumentError

PROTOCOL_VERSION = 2
DELIMITER = 0
HEADER = struct.Struct("<BBBBII")  # version, command, flags, reserved, sequence, payload length
CRC = struct.Struct("<I")
OVERHEAD = HEADER.size + CRC.size  # 16 bytes around every payload
DEFAULT_MAX_FRAME = 65536  # decoded bytes (header + payload + CRC) a device takes by default
HOST_MAX_FRAME = 16 << 20  # the most a host accepts from any device
HELLO_SEQUENCE = 0  # HELLO always travels with sequence 0; every other command uses 1 .. 2^32 - 1
MAX_SEQUENCE = 0xFFFFFFFF


class ProtocolError(ValueError):
    """Bytes that are not a well-formed frame or payload of this protocol."""


class Command(IntEnum):
    """Command codes (the header's ``command`` byte)."""

    HELLO = 0x01
    LOAD_MODEL = 0x02
    PREDICT = 0x03
    ROLLOUT = 0x04
    ENCODE = 0x05
    STATS = 0x06
    RESET = 0x07


class Flag(IntFlag):
    """Header flags: every frame a device sends has RESPONSE; ERROR and ACK qualify it."""

    RESPONSE = 0x01
    ERROR = 0x02
    ACK = 0x04


KNOWN_FLAGS = int(Flag.RESPONSE | Flag.ERROR | Flag.ACK)


class ErrorCode(IntEnum):
    """Codes of error responses (payload: code u16, UTF-8 message)."""

    UNSUPPORTED_VERSION = 1
    UNKNOWN_COMMAND = 2
    BAD_PAYLOAD = 3
    NO_MODEL = 4
    BAD_INPUT = 5
    UNSUPPORTED = 6
    TOO_LARGE = 7
    LOAD_OFFSET = 8
    LOAD_CHECKSUM = 9
    BAD_MODEL = 10
    STALE_SEQUENCE = 11
    INTERNAL = 12


class Capability(IntFlag):
    """What a device can do (HELLO's capabilities bit field)."""

    PREDICT = 0x01
    ROLLOUT = 0x02
    ENCODE = 0x04
    RESUMABLE_LOAD = 0x08
    FIXED_POINT = 0x10  # takes and answers int32 fixed-point tensors (dtype 3) with HELLO's frac_bits


class DeviceKind(IntEnum):
    """HELLO's device kind byte."""

    ESP32 = 1
    FPGA = 2


KIND_NAMES = {DeviceKind.ESP32: "esp32", DeviceKind.FPGA: "fpga"}


def kind_name(code: int) -> str:
    """``esp32`` / ``fpga``, or ``unknown(N)``."""
    try:
        return KIND_NAMES[DeviceKind(code)]
    except ValueError:
        return f"unknown({code})"


# ---------------------------------------------------------------------- COBS
def cobs_encode(data: bytes) -> bytes:
    """Consistent overhead byte stuffing: ``data`` without any zero byte (at most 1 + len/254 bytes longer)."""
    out = bytearray()
    for segment in bytes(data).split(b"\x00"):
        while len(segment) >= 254:
            out.append(0xFF)
            out += segment[:254]
            segment = segment[254:]
        out.append(len(segment) + 1)
        out += segment
    return bytes(out)


def cobs_decode(encoded: bytes) -> bytes:
    """Undo :func:`cobs_encode`; a zero byte or a block running past the end is a :class:`ProtocolError`."""
    out = bytearray()
    i, n = 0, len(encoded)
    while i < n:
        code = encoded[i]
        end = i + code
        if code == 0:
            raise ProtocolError(f"zero byte at offset {i} inside a COBS frame")
        if end > n:
            raise ProtocolError(f"COBS block at offset {i} claims {code - 1} bytes, only {n - i - 1} remain")
        block = encoded[i + 1 : end]
        if 0 in block:
            raise ProtocolError("zero byte inside a COBS block")
        out += block
        i = end
        if code != 0xFF and i < n:
            out.append(0)
    return bytes(out)


def max_encoded_size(decoded: int) -> int:
    """The most bytes COBS makes of ``decoded`` bytes (without the delimiter)."""
    return decoded + decoded // 254 + 1


# ---------------------------------------------------------------------- frames
@dataclass(frozen=True)
class Frame:
    """One decoded frame."""

    command: int
    seq: int
    payload: bytes = b""
    flags: int = 0
    version: int = PROTOCOL_VERSION

    @property
    def is_response(self) -> bool:
        """Sent by a device (the RESPONSE flag); a host's requests never have it."""
        return bool(self.flags & Flag.RESPONSE)

    @property
    def is_error(self) -> bool:
        """An error response (the ERROR flag): the payload is a code and a message (:func:`unpack_error`)."""
        return bool(self.flags & Flag.ERROR)

    @property
    def is_ack(self) -> bool:
        """An acknowledgement (the ACK flag): the payload is the device's u32 estimate of milliseconds to go."""
        return bool(self.flags & Flag.ACK)


def frame_bytes(frame: Frame) -> bytes:
    """The decoded bytes of a frame: header, payload, CRC-32."""
    if not (0 <= frame.seq <= MAX_SEQUENCE and 0 <= frame.command <= 0xFF and 0 <= frame.flags <= 0xFF):
        raise ArgumentError(f"frame field out of range: command {frame.command}, flags {frame.flags}, seq {frame.seq}")
    raw = HEADER.pack(frame.version, frame.command, frame.flags, 0, frame.seq, len(frame.payload)) + frame.payload
    return raw + CRC.pack(zlib.crc32(raw))


def encode_frame(frame: Frame) -> bytes:
    """A frame ready for the wire: COBS-encoded and followed by the 0x00 delimiter."""
    return cobs_encode(frame_bytes(frame)) + b"\x00"


def parse_frame_bytes(raw: bytes, max_frame: int = HOST_MAX_FRAME) -> Frame:
    """Check decoded frame bytes (length, CRC, header) and return the frame."""
    if len(raw) < OVERHEAD:
        raise ProtocolError(f"frame of {len(raw)} bytes is shorter than the {OVERHEAD}-byte header and CRC")
    if len(raw) > max_frame:
        raise ProtocolError(f"frame of {len(raw)} bytes exceeds the largest frame, {max_frame} bytes")
    (crc,) = CRC.unpack_from(raw, len(raw) - CRC.size)
    if zlib.crc32(raw[: -CRC.size]) != crc:
        raise ProtocolError("CRC-32 mismatch: the frame was corrupted")
    version, command, flags, reserved, seq, length = HEADER.unpack_from(raw)
    if reserved != 0 or flags & ~KNOWN_FLAGS:
        raise ProtocolError(f"reserved header bits set (flags {flags:#04x}, reserved {reserved:#04x})")
    if length != len(raw) - OVERHEAD:
        raise ProtocolError(f"header says {length} payload bytes, the frame holds {len(raw) - OVERHEAD}")
    return Frame(command, seq, bytes(raw[HEADER.size : -CRC.size]), flags, version)


def decode_frame(encoded: bytes, max_frame: int = HOST_MAX_FRAME) -> Frame:
    """One frame from its COBS bytes (without the delimiter)."""
    if len(encoded) > max_encoded_size(max_frame):
        raise ProtocolError(f"encoded frame of {len(encoded)} bytes exceeds the largest frame, {max_frame} bytes")
    return parse_frame_bytes(cobs_decode(encoded), max_frame)


class FrameDecoder:
    """Frames from a byte stream, fed in pieces of any size.

    :meth:`next_frame` returns the next good frame, ``None`` when it needs more
    bytes, or raises :class:`ProtocolError` once for each bad frame (which is then
    gone: the next call goes on with the bytes after it). Bytes beyond the largest
    frame are dropped up to the next delimiter, so memory stays bounded.
    """

    def __init__(self, max_frame: int = HOST_MAX_FRAME) -> None:
        self.max_frame = max_frame
        self.max_encoded = max_encoded_size(max_frame)
        self._buffer = bytearray()
        self._scanned = 0  # bytes of the buffer known to hold no delimiter
        self._skipping = False  # inside an oversize frame: drop bytes up to the next delimiter

    def feed(self, data: bytes) -> None:
        """Append received bytes."""
        self._buffer += data

    def reset(self) -> None:
        """Forget any partial frame (after a reconnect)."""
        self._buffer.clear()
        self._scanned = 0
        self._skipping = False

    def next_frame(self) -> Frame | None:
        """The next good frame, ``None`` if more bytes are needed; a bad frame raises :class:`ProtocolError`."""
        while True:
            end = self._buffer.find(b"\x00", self._scanned)
            if end < 0:
                self._scanned = len(self._buffer)
                if self._skipping:
                    self._buffer.clear()
                    self._scanned = 0
                elif len(self._buffer) > self.max_encoded:
                    self.reset()
                    self._skipping = True
                    raise ProtocolError(f"frame longer than the largest frame ({self.max_frame} bytes); dropped")
                return None
            chunk = bytes(self._buffer[:end])
            del self._buffer[: end + 1]
            self._scanned = 0
            if self._skipping:
                self._skipping = False
                continue
            if chunk:  # empty frames (a lone delimiter, sent to resynchronise) are skipped
                return decode_frame(chunk, self.max_frame)


# ---------------------------------------------------------------------- tensors
TENSOR_DTYPES = {1: np.dtype("<f4"), 2: np.dtype("u1"), 3: np.dtype("<i4")}
TENSOR_CODES = {np.dtype(np.float32): 1, np.dtype(np.uint8): 2, np.dtype(np.int32): 3}
MAX_DIMS = 4
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1


def to_fixed(x: np.ndarray, frac_bits: int) -> np.ndarray:
    """float -> the int32 fixed point of dtype 3: ``round(x * 2**frac_bits)``, half to even, saturated
    (the product exact in float64): what ``FixedPointPredictor.quantize`` computes."""
    v = np.rint(np.asarray(x, np.float64) * 2.0**frac_bits)
    return np.clip(v, INT32_MIN, INT32_MAX).astype(np.int32)


def from_fixed(q: np.ndarray, frac_bits: int) -> np.ndarray:
    """int32 fixed point -> float32 ``q * 2**-frac_bits`` (exact while ``|q| < 2**24``)."""
    return (np.asarray(q, np.float64) * 2.0**-frac_bits).astype(np.float32)


def tensor_nbytes(shape: tuple[int, ...], dtype: np.dtype) -> int:
    """Bytes one tensor takes in a payload (its 2 + 4 * ndim byte head and its data)."""
    return 2 + 4 * len(shape) + math.prod(shape) * np.dtype(dtype).itemsize


def pack_tensors(*arrays: np.ndarray) -> bytes:
    """float32, uint8 or int32 arrays (1 to 4 dims) -> payload bytes: per tensor dtype u8, ndim u8, dims u32, data."""
    parts = []
    for array in arrays:
        array = np.asarray(array)
        code = TENSOR_CODES.get(array.dtype)
        if code is None or not 1 <= array.ndim <= MAX_DIMS:
            raise ArgumentError(
                f"a tensor must be float32 or uint8 (or int32 fixed point) with 1 to 4 dims, got {array.dtype} "
                f"{array.shape}"
            )
        parts.append(struct.pack(f"<BB{array.ndim}I", code, array.ndim, *array.shape))
        parts.append(np.ascontiguousarray(array, dtype=TENSOR_DTYPES[code]).tobytes())
    return b"".join(parts)


def unpack_tensors(payload: bytes, count: int) -> list[np.ndarray]:
    """Exactly ``count`` tensors filling ``payload``; anything else is a :class:`ProtocolError`."""
    arrays, offset, size = [], 0, len(payload)
    for i in range(count):
        if offset + 2 > size:
            raise ProtocolError(f"payload ends before tensor {i}")
        code, ndim = payload[offset], payload[offset + 1]
        if code not in TENSOR_DTYPES:
            raise ProtocolError(f"tensor {i}: unknown dtype code {code}")
        if not 1 <= ndim <= MAX_DIMS:
            raise ProtocolError(f"tensor {i}: {ndim} dims, expected 1 to {MAX_DIMS}")
        offset += 2
        if offset + 4 * ndim > size:
            raise ProtocolError(f"payload ends inside tensor {i}'s shape")
        shape = struct.unpack_from(f"<{ndim}I", payload, offset)
        offset += 4 * ndim
        dtype = TENSOR_DTYPES[code]
        nbytes = math.prod(shape) * dtype.itemsize
        if 0 in shape or offset + nbytes > size:
            raise ProtocolError(f"tensor {i} of shape {list(shape)} does not fit the payload ({size} bytes)")
        arrays.append(np.frombuffer(payload, dtype, math.prod(shape), offset).reshape(shape).copy())
        offset += nbytes
    if offset != size:
        raise ProtocolError(f"{size - offset} bytes after the last tensor")
    return arrays


# ---------------------------------------------------------------------- command payloads
HELLO_REQUEST = struct.Struct("<BBHI")  # lowest and highest version the host speaks, reserved, session
# version, kind, capabilities, firmware, max_frame, max_model, model size, model crc, cache depth, cache sessions,
# scratch bytes, max rows, frac bits, 3 reserved bytes (40 bytes; the device's name follows)
HELLO_RESPONSE = struct.Struct("<BBHIIIIIHHIIB3x")
LOAD_REQUEST = struct.Struct("<BxxxII")  # op, then (size, crc) for BEGIN and COMMIT, (offset, crc) for CHUNK
LOAD_RESPONSE = struct.Struct("<II")  # bytes held, the file's CRC-32
ERROR_HEAD = struct.Struct("<H")
ACK_PAYLOAD = struct.Struct("<I")  # milliseconds until the response, estimated
RESET_REQUEST = struct.Struct("<B")  # bit 0: also unload the model
RESET_UNLOAD = 0x01


class LoadOp(IntEnum):
    """LOAD_MODEL's first payload byte."""

    BEGIN = 0
    CHUNK = 1
    COMMIT = 2


def pack_version(major: int, minor: int, patch: int) -> int:
    """A firmware version as u32: major << 16 | minor << 8 | patch."""
    return (major & 0xFFFF) << 16 | (minor & 0xFF) << 8 | (patch & 0xFF)


def version_text(packed: int) -> str:
    """A packed firmware version (:func:`pack_version`) as ``major.minor.patch``."""
    return f"{packed >> 16}.{(packed >> 8) & 0xFF}.{packed & 0xFF}"


@dataclass(frozen=True)
class Hello:
    """What HELLO tells about a device.

    The limits after ``name`` (0 where a device states none): ``cache_depth`` responses kept per
    session and ``cache_sessions`` sessions remembered (§5), ``scratch_bytes`` of inference memory,
    ``max_rows`` batch rows one PREDICT / ROLLOUT / ENCODE takes (0: as many as fit a frame), and
    ``frac_bits``, the fraction bits of its int32 fixed-point tensors (devices with FIXED_POINT).
    """

    version: int
    kind: int
    capabilities: int
    firmware: int
    max_frame: int
    max_model: int
    model_size: int
    model_crc: int
    name: str
    cache_depth: int = 0
    cache_sessions: int = 0
    scratch_bytes: int = 0
    max_rows: int = 0
    frac_bits: int = 0

    def pack(self) -> bytes:
        """The HELLO response payload: the 40-byte :data:`HELLO_RESPONSE` head, then the name in UTF-8."""
        head = HELLO_RESPONSE.pack(
            self.version,
            self.kind,
            self.capabilities,
            self.firmware,
            self.max_frame,
            self.max_model,
            self.model_size,
            self.model_crc,
            self.cache_depth,
            self.cache_sessions,
            self.scratch_bytes,
            self.max_rows,
            self.frac_bits,
        )
        return head + self.name.encode()

    @classmethod
    def unpack(cls, payload: bytes) -> Hello:
        """Parse a HELLO response payload; shorter than the head is a :class:`ProtocolError`."""
        if len(payload) < HELLO_RESPONSE.size:
            raise ProtocolError(f"HELLO response of {len(payload)} bytes, expected at least {HELLO_RESPONSE.size}")
        *fields, depth, sessions, scratch, rows, frac = HELLO_RESPONSE.unpack_from(payload)
        name = payload[HELLO_RESPONSE.size :].decode("utf-8", errors="replace")
        return cls(*fields, name, depth, sessions, scratch, rows, frac)

    @property
    def kind_name(self) -> str:
        """``esp32``, ``fpga`` or ``unknown(N)``."""
        return kind_name(self.kind)

    def describe(self) -> dict[str, object]:
        """Human-readable fields."""
        caps = [c.name.lower() for c in Capability if self.capabilities & c and c.name]
        return {
            "name": self.name,
            "kind": self.kind_name,
            "protocol": self.version,
            "firmware": version_text(self.firmware),
            "capabilities": ",".join(caps) or "none",
            "max_frame": self.max_frame,
            "max_model": self.max_model,
            "model_size": self.model_size,
            "model_crc32": f"{self.model_crc:08x}",
            "reply_cache": f"{self.cache_depth} responses x {self.cache_sessions} sessions",
            "scratch": self.scratch_bytes or "unbounded",
            "max_rows": self.max_rows or "frame-bound",
            "frac_bits": self.frac_bits or "none",
        }


def pack_error(code: int, message: str) -> bytes:
    """An error response payload: ``code`` u16, then ``message`` in UTF-8, cut to 1024 bytes."""
    return ERROR_HEAD.pack(code) + message.encode()[:1024]


def unpack_error(payload: bytes) -> tuple[int, str]:
    """``(code, message)`` of an error response payload; shorter than 2 bytes is a :class:`ProtocolError`."""
    if len(payload) < ERROR_HEAD.size:
        raise ProtocolError(f"error response of {len(payload)} bytes, expected at least {ERROR_HEAD.size}")
    (code,) = ERROR_HEAD.unpack_from(payload)
    return code, payload[ERROR_HEAD.size :].decode("utf-8", errors="replace")


def pack_stats(stats: dict[str, int]) -> bytes:
    """count u16, then per entry: key length u8, ASCII key, value u64."""
    parts = [struct.pack("<H", len(stats))]
    for key, value in stats.items():
        raw = key.encode("ascii")
        parts.append(struct.pack("<B", len(raw)) + raw + struct.pack("<Q", max(0, int(value))))
    return b"".join(parts)


def unpack_stats(payload: bytes) -> dict[str, int]:
    """Undo :func:`pack_stats`; a truncated entry or trailing bytes are a :class:`ProtocolError`."""
    if len(payload) < 2:
        raise ProtocolError("STATS response shorter than its 2-byte count")
    (count,) = struct.unpack_from("<H", payload)
    stats, offset = {}, 2
    for _ in range(count):
        if offset >= len(payload):
            raise ProtocolError("STATS response ends before its last entry")
        length = payload[offset]
        end = offset + 1 + length + 8
        if end > len(payload):
            raise ProtocolError("STATS response ends inside an entry")
        key = payload[offset + 1 : offset + 1 + length].decode("ascii", errors="replace")
        (stats[key],) = struct.unpack_from("<Q", payload, offset + 1 + length)
        offset = end
    if offset != len(payload):
        raise ProtocolError(f"{len(payload) - offset} bytes after the last STATS entry")
    return stats
