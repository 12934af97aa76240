"""The device protocol on the wire: COBS, CRC-32, the header, payloads, the streaming decoder (and its fuzz),
and the device's answers to malformed requests."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from world_models.backends.devices.emulator import MAX_SESSIONS, Device
from world_models.backends.devices.faults import FaultPlan, FaultyTransport
from world_models.backends.devices.protocol import (
    HEADER,
    HELLO_REQUEST,
    OVERHEAD,
    PROTOCOL_VERSION,
    Command,
    ErrorCode,
    Flag,
    Frame,
    FrameDecoder,
    Hello,
    ProtocolError,
    cobs_decode,
    cobs_encode,
    decode_frame,
    encode_frame,
    frame_bytes,
    max_encoded_size,
    pack_stats,
    pack_tensors,
    parse_frame_bytes,
    unpack_error,
    unpack_stats,
    unpack_tensors,
)

V = PROTOCOL_VERSION  # the one version this protocol speaks (2)
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ---------------------------------------------------------------------- COBS
@FUZZ
@given(st.binary(max_size=2000))
def test_cobs_round_trip_has_no_zero_and_bounded_overhead(data):
    encoded = cobs_encode(data)
    assert 0 not in encoded
    assert len(encoded) <= max_encoded_size(len(data))
    assert cobs_decode(encoded) == data


@pytest.mark.parametrize("size", [0, 1, 253, 254, 255, 508, 1000])
def test_cobs_edge_lengths(size):
    for fill in (b"\x00", b"\x01"):
        data = fill * size
        assert cobs_decode(cobs_encode(data)) == data


def test_cobs_rejects_zero_and_overrun():
    with pytest.raises(ProtocolError, match="zero byte"):
        cobs_decode(b"\x03a\x00")
    with pytest.raises(ProtocolError, match="claims"):
        cobs_decode(b"\x05ab")


# ---------------------------------------------------------------------- frames
def test_frame_round_trip_and_layout():
    frame = Frame(Command.PREDICT, 7, b"\x00\x01payload\x00", Flag.RESPONSE)
    raw = frame_bytes(frame)
    assert raw[: HEADER.size] == struct.pack("<BBBBII", PROTOCOL_VERSION, 0x03, 0x01, 0, 7, len(frame.payload))
    assert struct.unpack("<I", raw[-4:])[0] == zlib.crc32(raw[:-4])
    wire = encode_frame(frame)
    assert wire.endswith(b"\x00") and 0 not in wire[:-1]
    assert decode_frame(wire[:-1]) == frame


def test_every_single_byte_flip_is_caught():
    raw = frame_bytes(Frame(Command.STATS, 3, b"abc"))
    for i in range(len(raw)):
        for bit in (0x01, 0x80):
            spoilt = bytearray(raw)
            spoilt[i] ^= bit
            with pytest.raises(ProtocolError):
                parse_frame_bytes(bytes(spoilt))


def _with_crc(raw: bytes) -> bytes:
    return raw + struct.pack("<I", zlib.crc32(raw))


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"short", "shorter than"),
        (_with_crc(HEADER.pack(1, 3, 0, 0, 1, 5) + b"abc"), "header says 5 payload bytes"),
        (_with_crc(HEADER.pack(1, 3, 0x40, 0, 1, 0)), "reserved header bits"),
        (_with_crc(HEADER.pack(1, 3, 0, 9, 1, 0)), "reserved header bits"),
        (HEADER.pack(1, 3, 0, 0, 1, 0) + b"\x00\x00\x00\x00", "CRC-32 mismatch"),
    ],
)
def test_header_errors_name_the_problem(raw, message):
    with pytest.raises(ProtocolError, match=message):
        parse_frame_bytes(raw)


def test_decoder_streams_split_frames_and_recovers_after_garbage():
    frames = [Frame(Command.PREDICT, i + 1, bytes(range(i * 37 % 256)) * 3) for i in range(5)]
    stream = (
        b"".join(encode_frame(f) for f in frames[:2])
        + b"\x07garbage\x00"
        + b"".join(encode_frame(f) for f in frames[2:])
    )
    decoder, got, errors = FrameDecoder(), [], 0
    for i in range(0, len(stream), 7):  # in awkward pieces
        decoder.feed(stream[i : i + 7])
        while True:
            try:
                frame = decoder.next_frame()
            except ProtocolError:
                errors += 1
                continue
            if frame is None:
                break
            got.append(frame)
    assert got == frames and errors == 1


def test_decoder_drops_an_oversize_frame_with_bounded_memory():
    decoder = FrameDecoder(max_frame=256)
    decoder.feed(b"\x01" * 5000)
    with pytest.raises(ProtocolError, match="longer than the largest frame"):
        decoder.next_frame()
    decoder.feed(b"\x01" * 5000 + b"\x00")  # the rest of the long frame: skipped silently
    assert decoder.next_frame() is None
    assert len(decoder._buffer) == 0
    good = Frame(Command.STATS, 1)
    decoder.feed(encode_frame(good))
    assert decoder.next_frame() == good


def test_decoder_rejects_a_large_but_delimited_frame():
    decoder = FrameDecoder(max_frame=64)
    decoder.feed(encode_frame(Frame(Command.PREDICT, 1, b"x" * 200)))
    with pytest.raises(ProtocolError):
        decoder.next_frame()


def _drain(decoder: FrameDecoder) -> list[Frame]:
    out = []
    for _ in range(10_000):
        try:
            frame = decoder.next_frame()
        except ProtocolError:
            continue
        if frame is None:
            return out
        out.append(frame)
    raise AssertionError("the decoder did not settle")


@FUZZ
@given(st.binary(max_size=3000), st.lists(st.integers(1, 300), max_size=20))
def test_fuzz_decoder_sees_only_protocol_errors(data, cuts):
    """Arbitrary bytes in arbitrary pieces: good frames or ProtocolError, nothing else, memory bounded."""
    decoder = FrameDecoder(max_frame=512)
    position = 0
    for cut in [*cuts, len(data)]:
        decoder.feed(data[position : position + cut])
        position += cut
        for frame in _drain(decoder):
            assert isinstance(frame, Frame)
        assert len(decoder._buffer) <= decoder.max_encoded + 300
    try:
        assert isinstance(decode_frame(data), Frame)
    except ProtocolError:
        pass


@FUZZ
@given(st.integers(0, 2**32 - 1), st.binary(max_size=200), st.integers(0, 10**6), st.integers(1, 255))
def test_fuzz_mutated_frames_are_caught(seq, payload, where, xor):
    """A valid frame with one byte changed (anywhere, to anything) never decodes to a different frame."""
    frame = Frame(Command.ROLLOUT, seq, payload)
    wire = bytearray(encode_frame(frame))
    i = where % len(wire)
    wire[i] ^= xor
    decoder = FrameDecoder()
    decoder.feed(bytes(wire) + b"\x00")
    for got in _drain(decoder):
        assert got == frame  # only if the flip left the frame intact (it never does), or it was the delimiter


# ---------------------------------------------------------------------- payloads
def test_tensors_round_trip_and_layout():
    z = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    px = np.arange(12, dtype=np.uint8).reshape(1, 2, 2, 3)
    payload = pack_tensors(z, px)
    assert payload[:14] == struct.pack("<BB3I", 1, 3, 2, 3, 4)
    got = unpack_tensors(payload, 2)
    assert np.array_equal(got[0], z) and got[0].dtype == np.float32
    assert np.array_equal(got[1], px) and got[1].dtype == np.uint8


@pytest.mark.parametrize(
    ("payload", "count", "message"),
    [
        (b"", 1, "ends before tensor 0"),
        (b"\x09\x01\x01\x00\x00\x00", 1, "unknown dtype"),
        (b"\x01\x05", 1, "5 dims"),
        (b"\x01\x02\x01\x00", 1, "inside tensor 0's shape"),
        (struct.pack("<BBI", 1, 1, 0), 1, "does not fit"),
        (struct.pack("<BBI", 1, 1, 1_000_000_000) + b"\x00" * 4, 1, "does not fit"),
        (pack_tensors(np.zeros(2, np.float32)) + b"x", 1, "1 bytes after the last tensor"),
    ],
)
def test_tensor_payload_errors(payload, count, message):
    with pytest.raises(ProtocolError, match=message):
        unpack_tensors(payload, count)


def test_pack_refuses_other_dtypes():
    with pytest.raises(ValueError, match="float32 or uint8"):
        pack_tensors(np.zeros(3, np.float64))


def test_stats_hello_error_round_trip():
    stats = {"predict": 3, "frames_in": 10}
    assert unpack_stats(pack_stats(stats)) == stats
    hello = Hello(1, 2, 3, 0x000100, 65536, 1 << 24, 1234, 0xDEADBEEF, "board")
    assert Hello.unpack(hello.pack()) == hello
    with pytest.raises(ProtocolError):
        Hello.unpack(b"\x01")
    with pytest.raises(ProtocolError):
        unpack_stats(b"\x02\x00\x03abc")


@FUZZ
@given(st.binary(max_size=200))
def test_fuzz_payload_parsers_raise_only_protocol_errors(data):
    for parse in (lambda d: unpack_tensors(d, 2), unpack_stats, Hello.unpack, unpack_error):
        try:
            parse(data)
        except ProtocolError:
            pass


# ---------------------------------------------------------------------- the device side
@pytest.fixture(scope="module")
def bare_device():
    device = Device("esp32")
    yield device
    device.close()


def _ask(device: Device, frame: Frame) -> list[Frame]:
    sent: list[bytes] = []
    device.handle(frame, sent.append)
    return [decode_frame(s[:-1]) for s in sent]


def test_device_answers_bad_requests_with_codes(bare_device):
    hello = _ask(bare_device, Frame(Command.HELLO, 0, HELLO_REQUEST.pack(V, V, 0, 99)))[0]
    assert hello.is_response and not hello.is_error
    cases = [
        (Frame(0x55, 1), ErrorCode.UNKNOWN_COMMAND),
        (Frame(Command.PREDICT, 2, b"junk"), ErrorCode.NO_MODEL),
        (Frame(Command.STATS, 3, b"x"), ErrorCode.BAD_PAYLOAD),
        (Frame(Command.LOAD_MODEL, 4, b"\x01"), ErrorCode.BAD_PAYLOAD),
        (Frame(Command.STATS, 2), ErrorCode.STALE_SEQUENCE),
        (Frame(Command.STATS, 9, version=V + 1), ErrorCode.UNSUPPORTED_VERSION),
        (Frame(Command.HELLO, 0, HELLO_REQUEST.pack(V + 1, V + 2, 0, 99)), ErrorCode.UNSUPPORTED_VERSION),
    ]
    for request, code in cases:
        (answer,) = _ask(bare_device, request)
        assert answer.is_error and answer.seq == request.seq
        assert unpack_error(answer.payload)[0] == code, unpack_error(answer.payload)


def test_device_answers_a_repeated_sequence_from_its_cache(bare_device):
    _ask(bare_device, Frame(Command.HELLO, 0, HELLO_REQUEST.pack(V, V, 0, 1234)))  # a new session
    before = dict(bare_device.counters)
    first = _ask(bare_device, Frame(Command.STATS, 1))
    again = _ask(bare_device, Frame(Command.STATS, 1))
    assert first == again
    stats = unpack_stats(_ask(bare_device, Frame(Command.STATS, 2))[0].payload)
    assert stats["stats"] - before.get("stats", 0) == 2
    assert stats["duplicates"] - before.get("duplicates", 0) == 1


@FUZZ
@given(st.sampled_from(list(Command)), st.binary(max_size=300))
def test_fuzz_device_always_answers_cleanly(bare_device, command, payload):
    """Any payload for any command: the device answers (an error code or a result); it never raises."""
    _ask(bare_device, Frame(Command.HELLO, 0, HELLO_REQUEST.pack(V, V, 0, 77)))
    seq = bare_device.last_seq + 1
    answers = _ask(bare_device, Frame(command, 0 if command == Command.HELLO else seq, payload))
    assert answers and all(a.is_response for a in answers)
    if answers[-1].is_error:
        assert unpack_error(answers[-1].payload)[0] != ErrorCode.INTERNAL


def test_overhead_constant():
    assert OVERHEAD == HEADER.size + 4 == 16


def _hello(device: Device, session: int) -> None:
    (answer,) = _ask(device, Frame(Command.HELLO, 0, HELLO_REQUEST.pack(V, V, 0, session)))
    assert not answer.is_error


def test_each_session_keeps_its_own_cache_so_a_returning_host_retry_does_not_run_twice():
    """Host A's answer is lost; host B says HELLO and runs its own commands; A reconnects (HELLO, same
    session) and retries: the retry is answered from A's cache, not run a second time."""
    device = Device("esp32")
    try:
        _hello(device, 11)
        first = _ask(device, Frame(Command.STATS, 1))  # A's STATS 1 runs; say its answer is lost
        _hello(device, 22)
        b_first = _ask(device, Frame(Command.STATS, 1))  # B numbers from 1 in its own session
        _ask(device, Frame(Command.STATS, 2))
        _hello(device, 11)
        assert _ask(device, Frame(Command.STATS, 1)) == first  # A's retry: from A's cache
        assert device.counters["stats"] == 3 and device.counters["duplicates"] == 1
        (stale,) = _ask(device, Frame(Command.STATS, 1, b"x"))  # same number, other payload: not a retry
        assert unpack_error(stale.payload)[0] == ErrorCode.STALE_SEQUENCE
        _hello(device, 22)
        assert _ask(device, Frame(Command.STATS, 1)) == b_first  # B's numbering and cache were kept too
        assert device.last_seq == 2 and device.counters["stats"] == 3
        for session in range(100, 100 + MAX_SESSIONS):  # bounded: the oldest sessions are forgotten
            _hello(device, session)
        assert len(device.sessions) == MAX_SESSIONS and 11 not in device.sessions and 22 not in device.sessions
    finally:
        device.close()


def test_a_fault_plan_is_a_pure_function_of_seed_direction_and_frame_number():
    plan = FaultPlan(drop=0.2, corrupt=0.2, duplicate=0.2, delay=0.2, skip=2, directions="in", seed=5)
    fates = [plan.fate("in", n) for n in range(1, 200)]
    assert fates == [plan.fate("in", n) for n in range(1, 200)]  # asked again, in any order: the same
    assert fates[:2] == [frozenset(), frozenset()] and all(not plan.fate("out", n) for n in range(1, 50))
    assert all(fate == {"drop"} or "drop" not in fate for fate in fates)
    assert all(any(kind in fate for fate in fates) for kind in ("drop", "corrupt", "delay", "duplicate"))
    assert [FaultPlan(drop=0.5, seed=6).fate("in", n) for n in range(1, 50)] != [
        FaultPlan(drop=0.5, seed=5).fate("in", n) for n in range(1, 50)
    ]


class _Pipe:
    """A transport stand-in: recv hands out the queued chunks."""

    path = "pipe"
    generation = 0

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks

    def recv(self, timeout: float) -> bytes | None:
        return self.chunks.pop(0) if self.chunks else b""

    def send(self, data: bytes) -> None:
        pass

    def close(self) -> None:
        pass


def test_faulty_transport_holds_a_bounded_partial_frame_and_checks_disconnect_needs_tcp():
    pipe = _Pipe([b"\x01" * 3000 for _ in range(10)])
    faulty = FaultyTransport(pipe, FaultPlan(), max_pending=4096)
    passed = sum(len(faulty.recv(0.0) or b"") for _ in range(10))
    assert len(faulty._pending) <= 4096 + 3000 and passed + len(faulty._pending) == 30_000
    with pytest.raises(ValueError, match=r"disconnect_after=.*needs a transport with connections \(TCP\)"):
        FaultyTransport(pipe, FaultPlan(disconnect_after=2))
