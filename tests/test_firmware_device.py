"""The C firmware (firmware/, the host build on a pty): the protocol answered as the Python emulators answer
it, env episodes against the in-process references (numba-q4 within 1e-5, the fixed-point reference
exactly), memory limits (rows split to fit the scratch, TOO_LARGE, max_rows, the reply cache's depth),
ACKs, and the build / start / ``leworld device emulate --impl c`` plumbing.

The fault-injection tests of tests/test_device_backend.py also run against this firmware (``impl`` "c"),
through :class:`~world_models.backends.devices.faults.FaultRelay`."""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

import leworld_env  # noqa: F401  (registers the env ids)
import world_models
from tests.device_helpers import device_inputs, env_trace, sigterm_and_wait
from tests.toolchains import require_tools
from world_models.backends.devices import protocol as wire
from world_models.backends.devices.client import DeviceError, DeviceLink
from world_models.backends.devices.emulator import Device, make_emulator
from world_models.backends.devices.faults import FaultPlan, FaultRelay
from world_models.backends.devices.firmware import BUILD_ENV, FIRMWARE_DIR, build_firmware, start_firmware
from world_models.backends.devices.protocol import (
    HELLO_REQUEST,
    LOAD_REQUEST,
    PROTOCOL_VERSION,
    Capability,
    Command,
    ErrorCode,
    Frame,
    FrameDecoder,
    LoadOp,
    ProtocolError,
    decode_frame,
    encode_frame,
    pack_tensors,
    unpack_error,
    unpack_stats,
    unpack_tensors,
)
from world_models.errors import LeWorldError
from world_models.interface import WorldModel
from world_models.locate import resolve_lq40

MODEL = "pusht-tiny"
LQ40 = resolve_lq40(MODEL)
V = PROTOCOL_VERSION
FAST = {"timeout": 2.0, "retries": 2}


# ---------------------------------------------------------------------- shared with test_device_backend.py
@pytest.fixture(scope="session")
def firmware_build(tmp_path_factory) -> Path:
    """The host firmware, built once per session (into $LEWORLD_FIRMWARE_BUILD when set, else a temporary
    folder, which the variable then names for subprocesses such as the CLI)."""
    require_tools("cc", "make")
    build = Path(os.environ.get(BUILD_ENV) or tmp_path_factory.getbasetemp() / "firmware-build")
    os.environ[BUILD_ENV] = str(build)
    return build_firmware(build)


@dataclass
class Served:
    """A device under test: where hosts connect, its counters, and the faults injected on its link."""

    path: str
    stats: Callable[[], dict[str, int]]
    injected: dict[str, int] = field(default_factory=dict)


@contextlib.contextmanager
def serve(
    impl: str,
    kind: str = "esp32",
    model: str | None = MODEL,
    faults: FaultPlan | None = None,
    tcp: int | None = None,
    args: Sequence[str] = (),
) -> Iterator[Served]:
    """A Python emulator or the C firmware, with ``faults`` on its link (the emulator's own FaultyTransport,
    or a FaultRelay in front of the firmware; ``tcp`` serves the host on a TCP port)."""
    if impl == "python":
        with make_emulator(kind, model, faults=faults, tcp=tcp) as emulator:
            emulator.start()
            yield Served(emulator.path, emulator.device.stats, getattr(emulator.transport, "injected", {}))
        return
    with start_firmware(kind, "c", model, args) as device:
        if faults is None and tcp is None:
            yield Served(device.path, device.stats)
            return
        with FaultRelay(device.path, faults or FaultPlan(), tcp=tcp) as relay:

            def stats() -> dict[str, int]:
                with relay.paused():  # the relay and a direct link would read the same pty
                    return device.stats()

            yield Served(relay.path, stats, relay.injected)


class RawLink:
    """Frames to and from a device's port without retries or checks, to compare exact answers."""

    def __init__(self, path: str) -> None:
        import serial

        self.port = serial.serial_for_url(path, timeout=0.02)
        self.decoder = FrameDecoder()
        self.port.write(b"\x00")

    def close(self) -> None:
        self.port.close()

    def __enter__(self) -> RawLink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def read(self, done: Callable[[list[Frame]], bool], timeout: float = 5.0) -> list[Frame]:
        """Frames received until ``done(frames)`` or ``timeout``."""
        frames: list[Frame] = []
        deadline = time.monotonic() + timeout
        while not done(frames) and time.monotonic() < deadline:
            self.decoder.feed(self.port.read(max(1, self.port.in_waiting)))
            while True:
                try:
                    frame = self.decoder.next_frame()
                except ProtocolError:
                    continue
                if frame is None:
                    break
                frames.append(frame)
        return frames

    def ask(self, frame: Frame, timeout: float = 5.0) -> list[Frame]:
        """Send one request; every frame up to its (non-ACK) answer."""
        self.port.write(encode_frame(frame))

        def answered(frames: list[Frame]) -> bool:
            return any(f.seq == frame.seq and f.command == frame.command and not f.is_ack for f in frames)

        frames = self.read(answered, timeout)
        assert answered(frames), f"no answer to {frame} in {timeout} s: {frames}"
        return frames

    def answer(self, frame: Frame) -> Frame:
        """The one non-ACK answer to a request."""
        return [f for f in self.ask(frame) if not f.is_ack][-1]

    def hello(self, session: int) -> wire.Hello:
        reply = self.answer(Frame(Command.HELLO, 0, HELLO_REQUEST.pack(V, V, 0, session)))
        assert not reply.is_error, unpack_error(reply.payload)
        return wire.Hello.unpack(reply.payload)

    def stats(self, seq: int) -> dict[str, int]:
        return unpack_stats(self.answer(Frame(Command.STATS, seq)).payload)


def _code(frame: Frame) -> int:
    return unpack_error(frame.payload)[0] if frame.is_error else 0


def _python_answers(device: Device, frame: Frame) -> list[Frame]:
    sent: list[bytes] = []
    device.handle(frame, sent.append)
    return [decode_frame(s[:-1]) for s in sent]


@pytest.fixture(scope="module")
def reference() -> WorldModel:
    return world_models.load(MODEL, backend="numba-q4")


@pytest.fixture(scope="module")
def fixed():
    from world_models.backends.devices.fixed_point import FixedPointPredictor

    return FixedPointPredictor.from_lq40(LQ40)


# ---------------------------------------------------------------------- the core's parsers, through ctypes
class _Header(ctypes.Structure):
    _fields_ = [
        ("version", ctypes.c_uint8),
        ("command", ctypes.c_uint8),
        ("flags", ctypes.c_uint8),
        ("seq", ctypes.c_uint32),
        ("length", ctypes.c_uint32),
    ]


@pytest.fixture(scope="module")
def lwcore(firmware_build) -> ctypes.CDLL:
    """The firmware core as a shared library (the Makefile's liblwcore.so)."""
    target = firmware_build.parent / "liblwcore.so"
    command = ["make", "-C", str(FIRMWARE_DIR), f"BUILD={target.parent}", str(target)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    lib = ctypes.CDLL(str(target))
    lib.lw_cobs_encode.restype = ctypes.c_size_t
    lib.lw_cobs_encode.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_size_t]
    lib.lw_cobs_decode.argtypes = [
        ctypes.c_char_p,
        ctypes.c_size_t,
        ctypes.c_char_p,
        ctypes.POINTER(ctypes.c_size_t),
        ctypes.c_char_p,
    ]
    lib.lw_tensors_parse.argtypes = [
        ctypes.c_char_p,
        ctypes.c_size_t,
        ctypes.c_void_p,
        ctypes.c_size_t,
        ctypes.c_char_p,
    ]
    lib.lw_frame_parse.argtypes = [
        ctypes.c_char_p,
        ctypes.c_size_t,
        ctypes.c_size_t,
        ctypes.POINTER(_Header),
        ctypes.c_char_p,
    ]
    return lib


def _mutated(rng: np.random.Generator, data: bytes) -> bytes:
    spoilt = bytearray(data)
    for _ in range(int(rng.integers(1, 4))):
        if spoilt:
            spoilt[int(rng.integers(0, len(spoilt)))] = int(rng.integers(0, 256))
    return bytes(spoilt)


def test_cobs_frames_and_tensors_parse_as_protocol_py_does(lwcore):
    """The C encoder gives protocol.cobs_encode's bytes; the C decoders accept exactly what protocol.py accepts,
    and refuse the rest with its messages (random, mutated and edge-length inputs)."""
    rng = np.random.default_rng(0)
    err = ctypes.create_string_buffer(256)
    tensor_room = ctypes.create_string_buffer(256)
    for i in range(2000):
        n = [0, 1, 253, 254, 255, 508][i] if i < 6 else int(rng.integers(0, 1200))
        data = (rng.integers(0, 256, n) * (rng.random(n) > rng.random())).astype(np.uint8).tobytes()
        out = ctypes.create_string_buffer(n + n // 254 + 2)
        size = lwcore.lw_cobs_encode(data, n, out, len(out))
        assert out.raw[:size] == wire.cobs_encode(data), i
        encoded = wire.cobs_encode(data)
        junk = _mutated(rng, encoded) if i % 2 else rng.integers(0, 256, int(rng.integers(0, 300)), np.uint8).tobytes()
        decoded, decoded_size = ctypes.create_string_buffer(max(1, len(junk))), ctypes.c_size_t()
        status = lwcore.lw_cobs_decode(junk, len(junk), decoded, ctypes.byref(decoded_size), err)
        try:
            expected = wire.cobs_decode(junk)
        except ProtocolError as problem:
            assert status == ErrorCode.BAD_PAYLOAD and err.value.decode() == str(problem), (i, err.value)
        else:
            assert status == 0 and decoded.raw[: decoded_size.value] == expected, (i, err.value)
        frame = wire.frame_bytes(Frame(int(rng.integers(0, 9)), int(rng.integers(0, 2**32)), data[:100]))
        frame = _mutated(rng, frame) if i % 3 else frame
        header = _Header()
        status = lwcore.lw_frame_parse(frame, len(frame), 4096, ctypes.byref(header), err)
        try:
            parsed = wire.parse_frame_bytes(frame, 4096)
        except ProtocolError as problem:
            assert status == ErrorCode.BAD_PAYLOAD and err.value.decode() == str(problem), (i, err.value)
        else:
            assert status == 0, (i, err.value)
            assert (header.command, header.seq, header.length) == (parsed.command, parsed.seq, len(parsed.payload))
        z = rng.standard_normal((2, int(rng.integers(1, 4)))).astype(np.float32)
        payload = pack_tensors(z, np.zeros((1, 2, 2, 3), np.uint8), wire.to_fixed(z, 16))
        payload = _mutated(rng, payload) if i % 2 else payload[: int(rng.integers(0, len(payload) + 1))]
        status = lwcore.lw_tensors_parse(payload, len(payload), tensor_room, 3, err)
        try:
            unpack_tensors(payload, 3)
        except ProtocolError as problem:
            assert status == ErrorCode.BAD_PAYLOAD and err.value.decode() == str(problem), (i, err.value)
        else:
            assert status == 0, (i, err.value)


# ---------------------------------------------------------------------- HELLO and limits
def test_hello_advertises_the_firmware_its_capabilities_and_memory_limits(firmware_build):
    with start_firmware("esp32", "c", None, ["--scratch", str(8 << 20)]) as device:
        with DeviceLink(device.path, **FAST) as link:
            info = link.info
    assert (info.version, info.kind_name, info.name) == (2, "esp32", "leworld-fw esp32 (host)")
    assert info.capabilities == Capability.PREDICT | Capability.ROLLOUT | Capability.ENCODE | Capability.RESUMABLE_LOAD
    assert (info.cache_depth, info.cache_sessions, info.max_rows, info.frac_bits) == (16, 4, 0, 0)
    assert 0 < info.scratch_bytes <= 8 << 20 and (info.model_size, info.model_crc) == (0, 0)
    assert (info.max_frame, info.max_model) == (65536, 16 << 20)
    with start_firmware("fpga", "c", MODEL, ["--max-rows", "7", "--max-frame", "4096"]) as device:
        with DeviceLink(device.path, **FAST) as link:
            info = link.info
    assert info.kind_name == "fpga" and info.capabilities & Capability.FIXED_POINT
    assert not info.capabilities & Capability.ENCODE and info.frac_bits == 16 and info.max_rows == 7
    assert info.max_frame == 4096 and info.model_size == LQ40.stat().st_size
    assert info.model_crc == zlib.crc32(LQ40.read_bytes())
    python = Device("fpga")  # the Python emulators advertise theirs the same way
    try:
        emulator = python.hello()
    finally:
        python.close()
    assert (emulator.cache_depth, emulator.cache_sessions, emulator.frac_bits) == (16, 4, 16)
    assert emulator.capabilities & Capability.FIXED_POINT and emulator.scratch_bytes == 0


def test_a_smaller_reply_cache_is_advertised_and_honoured(firmware_build):
    with start_firmware("esp32", "c", None, ["--cache", str(2 * 4 * 65536)]) as device, RawLink(device.path) as link:
        assert link.hello(5).cache_depth == 2
        first = link.answer(Frame(Command.STATS, 1))
        assert link.answer(Frame(Command.STATS, 1)) == first  # a retry within the depth: from the cache
        link.answer(Frame(Command.STATS, 2))
        link.answer(Frame(Command.STATS, 3))
        stale = link.answer(Frame(Command.STATS, 1))  # pushed out by 2 and 3: refused, never run again
        assert _code(stale) == ErrorCode.STALE_SEQUENCE


# ---------------------------------------------------------------------- the protocol, as the emulators answer it
def test_bad_requests_get_the_same_codes_as_from_the_python_emulator(firmware_build):
    blob = LQ40.read_bytes()
    crc = zlib.crc32(blob)
    cases = [
        Frame(Command.HELLO, 0, HELLO_REQUEST.pack(V, V, 0, 99)),
        Frame(0x55, 1),
        Frame(Command.PREDICT, 2, b"junk"),
        Frame(Command.ROLLOUT, 3, b""),
        Frame(Command.STATS, 4, b"x"),
        Frame(Command.LOAD_MODEL, 5, b"\x01"),
        Frame(Command.STATS, 2),  # at or below the last one run
        Frame(Command.STATS, 9, version=V + 1),
        Frame(Command.HELLO, 0, HELLO_REQUEST.pack(V + 1, V + 2, 0, 99)),
        Frame(Command.HELLO, 0, b"short"),
        Frame(Command.RESET, 10, b""),
        Frame(Command.LOAD_MODEL, 11, LOAD_REQUEST.pack(LoadOp.CHUNK, 0, crc) + b"x"),  # no BEGIN
        Frame(Command.LOAD_MODEL, 12, LOAD_REQUEST.pack(LoadOp.BEGIN, 64 << 20, crc)),  # above max_model
        Frame(Command.LOAD_MODEL, 13, LOAD_REQUEST.pack(LoadOp.BEGIN, len(blob), crc)),
        Frame(Command.LOAD_MODEL, 14, LOAD_REQUEST.pack(LoadOp.CHUNK, 5, crc) + b"x"),  # wrong offset
        Frame(Command.LOAD_MODEL, 15, LOAD_REQUEST.pack(7, 0, crc)),  # unknown op
        Frame(Command.LOAD_MODEL, 16, LOAD_REQUEST.pack(LoadOp.CHUNK, 0, crc) + blob[:100]),
        Frame(Command.LOAD_MODEL, 17, LOAD_REQUEST.pack(LoadOp.COMMIT, len(blob), crc)),  # 100 bytes held
        Frame(Command.LOAD_MODEL, 18, LOAD_REQUEST.pack(LoadOp.BEGIN, 8, zlib.crc32(b"LQ40junk"))),
        Frame(Command.LOAD_MODEL, 19, LOAD_REQUEST.pack(LoadOp.CHUNK, 0, zlib.crc32(b"LQ40junk")) + b"LQ40junk"),
        Frame(Command.LOAD_MODEL, 20, LOAD_REQUEST.pack(LoadOp.CHUNK, 8, zlib.crc32(b"LQ40junk")) + b"x"),  # past size
        Frame(Command.LOAD_MODEL, 21, LOAD_REQUEST.pack(LoadOp.COMMIT, 8, zlib.crc32(b"LQ40junk"))),  # not a model
        Frame(Command.ENCODE, 22, pack_tensors(np.zeros((1, 64, 64, 3), np.uint8))),  # still no model
        Frame(Command.STATS, 23, flags=wire.Flag.RESPONSE),  # an echo: ignored
    ]
    python = Device("esp32")
    try:
        with start_firmware("esp32", "c") as device, RawLink(device.path) as link:
            for request in cases:
                ours = _python_answers(python, request)
                if request.is_response:
                    link.port.write(encode_frame(request))
                    assert not ours and not link.read(lambda frames: bool(frames), timeout=0.3)
                    continue
                theirs = [f for f in link.ask(request) if not f.is_ack]
                assert [(f.seq, f.command, f.flags, _code(f)) for f in theirs] == [
                    (f.seq, f.command, f.flags, _code(f)) for f in ours if not f.is_ack
                ], (request, [unpack_error(f.payload) if f.is_error else f for f in theirs])
            counters = link.stats(25)
    finally:
        python.close()
    assert counters["frames_ignored"] == 1 and counters["stale"] == 1


def test_each_session_keeps_its_cache_so_a_returning_host_retry_does_not_run_twice(firmware_build):
    with start_firmware("esp32", "c") as device, RawLink(device.path) as link:
        link.hello(11)
        first = link.answer(Frame(Command.STATS, 1))
        link.hello(22)
        b_first = link.answer(Frame(Command.STATS, 1))
        link.answer(Frame(Command.STATS, 2))
        link.hello(11)
        assert link.answer(Frame(Command.STATS, 1)) == first  # A's retry: from A's cache, byte for byte
        stale = link.answer(Frame(Command.STATS, 1, b"x"))  # same number, another payload: not a retry
        assert _code(stale) == ErrorCode.STALE_SEQUENCE
        link.hello(22)
        assert link.answer(Frame(Command.STATS, 1)) == b_first
        stats = link.stats(3)
        assert stats["stats"] == 4 and stats["duplicates"] == 2 and stats["stale"] == 1
        for session in range(100, 104):  # four newer sessions push out 11 and 22
            link.hello(session)
        link.hello(11)
        assert unpack_stats(link.answer(Frame(Command.STATS, 1)).payload)["stats"] == 5  # a new session: it ran


def test_reset_forgets_caches_transfers_and_counters_but_not_sequence_numbers(firmware_build):
    blob = LQ40.read_bytes()
    with start_firmware("esp32", "c", MODEL) as device, RawLink(device.path) as link:
        link.hello(7)
        link.answer(Frame(Command.LOAD_MODEL, 1, LOAD_REQUEST.pack(LoadOp.BEGIN, len(blob), 1234)))
        link.answer(Frame(Command.LOAD_MODEL, 2, LOAD_REQUEST.pack(LoadOp.CHUNK, 0, 1234) + blob[:500]))
        assert link.stats(3)["load_held"] == 500
        reset = link.answer(Frame(Command.RESET, 4, b"\x00"))
        assert not reset.is_error and link.answer(Frame(Command.RESET, 4, b"\x00")) == reset  # its answer is cached
        stats = link.stats(5)
        assert stats["load_held"] == 0 and stats["stats"] == 1 and "reset" not in stats and "load_model" not in stats
        assert stats["model_size"] == len(blob)  # the model stays
        assert _code(link.answer(Frame(Command.STATS, 3))) == ErrorCode.STALE_SEQUENCE  # numbers are kept
        link.answer(Frame(Command.RESET, 6, b"\x01"))  # and unload
        assert link.stats(7)["model_size"] == 0 and link.hello(7).model_size == 0


def test_load_model_keeps_the_previous_model_when_the_new_one_is_bad(firmware_build, reference):
    junk = b"LQ40" + bytes(range(256)) * 4
    with start_firmware("esp32", "c", MODEL) as device:
        with DeviceLink(device.path, **FAST) as link:
            with pytest.raises(DeviceError, match=r"refused LOAD_MODEL: BAD_MODEL: the loaded model: ") as caught:
                link.load_model(junk)
            assert caught.value.code == ErrorCode.BAD_MODEL
            assert link.hello().model_size == LQ40.stat().st_size
        wm = world_models.load(MODEL, backend="esp32", port=device.path, **FAST)
        try:
            assert not wm.ensure_model()
            z, a, _ = device_inputs(3)
            np.testing.assert_allclose(wm.predict(z, a), reference.predict(z, a), rtol=1e-5, atol=1e-5)
        finally:
            wm.close()


@pytest.mark.parametrize("kind", ["esp32", "fpga"])
def test_fuzz_any_payload_for_any_command_gets_the_emulators_code(firmware_build, kind):
    """Random payloads (and mutated good ones) for every command, with a model: the firmware answers every
    one, never INTERNAL, with the code the Python emulator gives."""
    rng = np.random.default_rng(3)
    z, a, future = device_inputs(2)
    good = {
        Command.PREDICT: pack_tensors(z, a),
        Command.ROLLOUT: pack_tensors(z, a, future),
        Command.ENCODE: pack_tensors(np.zeros((1, 64, 64, 3), np.uint8)),
        Command.STATS: b"",
        Command.RESET: b"\x00",
        Command.LOAD_MODEL: LOAD_REQUEST.pack(LoadOp.BEGIN, 10, 10),
    }
    python = Device(kind, LQ40)
    try:
        with start_firmware(kind, "c", MODEL) as device, RawLink(device.path) as link:
            link.hello(42)
            _python_answers(python, Frame(Command.HELLO, 0, HELLO_REQUEST.pack(V, V, 0, 42)))
            # An answer above max_frame (16 x 16 latents of 64 floats: 65,550 bytes) is refused by both
            # before anything runs: no ACK, and no rows counted for rows never answered.
            z16, a16, f16 = device_inputs(16, horizon=16)
            dtype = np.int32 if kind == "fpga" else np.float32
            big = Frame(Command.ROLLOUT, 1, pack_tensors(*(x.astype(dtype) for x in (z16, a16, f16))))
            ours, theirs = _python_answers(python, big), link.ask(big)
            assert [(f.flags, _code(f)) for f in theirs] == [(f.flags, _code(f)) for f in ours]
            assert _code(theirs[-1]) == ErrorCode.TOO_LARGE and len(theirs) == 1
            assert unpack_error(theirs[-1].payload) == unpack_error(ours[-1].payload)
            (answer,) = _python_answers(python, Frame(Command.STATS, 2))
            mine, yours = link.stats(2), unpack_stats(answer.payload)
            clocks = ("uptime_ms", "instret")  # times differ; counters never counted are absent from both
            mine, yours = ({k: v for k, v in c.items() if k not in clocks} for c in (mine, yours))
            assert mine == yours and mine["rollout"] == 1 and "rows_predicted" not in mine, (mine, yours)
            for seq in range(3, 303):
                command = Command(int(rng.choice(list(good))))
                payload = bytearray(good[command])
                if rng.random() < 0.5 or not payload:
                    payload = bytearray(rng.integers(0, 256, int(rng.integers(0, 80)), dtype=np.uint8).tobytes())
                else:
                    for _ in range(int(rng.integers(1, 4))):
                        payload[int(rng.integers(0, len(payload)))] = int(rng.integers(0, 256))
                request = Frame(command, seq, bytes(payload))
                (ours,) = [f for f in _python_answers(python, request) if not f.is_ack]
                theirs = link.answer(request)
                assert _code(theirs) == _code(ours), (request, unpack_error(theirs.payload) if theirs.is_error else "")
                assert _code(theirs) != ErrorCode.INTERNAL
                if not ours.is_error and command in (Command.PREDICT, Command.ROLLOUT):
                    (mine,), (yours,) = unpack_tensors(theirs.payload, 1), unpack_tensors(ours.payload, 1)
                    assert mine.dtype == yours.dtype and mine.shape == yours.shape
    finally:
        python.close()


def test_garbage_oversize_and_corrupted_frames_are_dropped_with_bounded_memory(firmware_build):
    with start_firmware("esp32", "c", None, ["--max-frame", "256"]) as device, RawLink(device.path) as link:
        link.hello(3)
        link.port.write(b"\x01" * 5000)  # far past the largest frame: dropped up to the next delimiter
        link.port.write(b"\x01" * 5000 + b"\x00")
        link.port.write(b"\x07garbage\x00")  # a bad COBS frame
        spoilt = bytearray(encode_frame(Frame(Command.STATS, 1)))
        spoilt[3] ^= 0x40  # a bad CRC: not answered
        link.port.write(bytes(spoilt))
        assert link.read(lambda frames: bool(frames), timeout=0.3) == []
        too_big = encode_frame(Frame(Command.PREDICT, 1, b"x" * 300))  # delimited but above max_frame
        link.port.write(too_big)
        stats = link.stats(1)
    assert stats["frames_bad"] == 4 and stats["executed"] == 1


# ---------------------------------------------------------------------- env episodes against the references
def test_env_episode_on_the_esp32_firmware_matches_numba_q4(firmware_build):
    with start_firmware("esp32", "c") as device:
        env = gym.make("LeWorld-PushT-v0", backend="esp32", port=device.path)
        wm = env.unwrapped.world_model
        try:
            assert wm.info.name == "leworld-fw esp32 (host)"
            device_trace = env_trace(env, seed=5, steps=30)
            z, a, future = device_inputs(6)
            rollout = wm.rollout(z, a, future)
            pixels = np.random.default_rng(1).integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
            encoded = wm.encode(pixels)
            stats = wm.stats()
        finally:
            wm.close()
            env.close()
    local_env = gym.make("LeWorld-PushT-v0", backend="numba-q4")
    try:
        local_trace = env_trace(local_env, seed=5, steps=30)
        reference = local_env.unwrapped.world_model
        np.testing.assert_allclose(rollout, reference.rollout(z, a, future), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(encoded, reference.encode(pixels), rtol=1e-5, atol=1e-5)
    finally:
        local_env.close()
    assert len(device_trace) == len(local_trace) > 10
    # a 30-step dream episode feeds every prediction back in: the multi-step limit (1e-4, as for 5-step
    # rollouts), not the one-step one (the 5,000-episode model's episode reached 1.7e-5 on one latent)
    for ours, theirs in zip(device_trace, local_trace, strict=True):
        for key in ours:
            np.testing.assert_allclose(ours[key], theirs[key], rtol=1e-4, atol=1e-4, err_msg=key)
    assert stats["predict"] >= len(device_trace) - 1 and stats["encode"] >= 1 and stats["load_model"] >= 3


def test_env_episode_on_the_fpga_firmware_is_the_fixed_point_reference_exactly(firmware_build, fixed):
    from tests.test_device_backend import FixedPointReference

    with start_firmware("fpga", "c") as device:
        env = gym.make("LeWorld-PushT-v0", backend="fpga", port=device.path)
        wm = env.unwrapped.world_model
        try:
            assert wm.fixed_point_link  # int32 on the wire, both ways
            device_trace = env_trace(env, seed=7, steps=30)
            z, a, future = device_inputs(5)
            device_rollout = wm.rollout(z, a, future)
            device_predict = wm.predict(z, a)
            stats = wm.stats()
        finally:
            wm.close()
            env.close()
        with RawLink(device.path) as link:  # the float32 path of the same device: the same numbers
            link.hello(9)
            (as_float,) = unpack_tensors(link.answer(Frame(Command.PREDICT, 1, pack_tensors(z, a))).payload, 1)
            q = (wire.to_fixed(z, 16), wire.to_fixed(a, 16))
            (as_int,) = unpack_tensors(link.answer(Frame(Command.PREDICT, 2, pack_tensors(*q))).payload, 1)
    reference = FixedPointReference(LQ40)
    local_env = gym.make("LeWorld-PushT-v0", model=reference)
    try:
        local_trace = env_trace(local_env, seed=7, steps=30)
    finally:
        local_env.close()
    assert len(device_trace) == len(local_trace) > 10
    for i, (ours, theirs) in enumerate(zip(device_trace, local_trace, strict=True)):
        host = {"desired_goal"} | ({"observation", "achieved_goal", "state"} if i == 0 else set())
        for key in ours:
            if key in host:  # encoded on the host in float32 (BLAS): a few ULP
                np.testing.assert_allclose(ours[key], theirs[key], rtol=0, atol=1e-3, err_msg=key)
            else:
                assert np.array_equal(ours[key], theirs[key]), (i, key)
    assert np.array_equal(device_rollout, fixed.rollout(z, a, future))
    assert np.array_equal(device_predict, fixed.predict(z, a)) and np.array_equal(as_float, fixed.predict(z, a))
    assert as_int.dtype == np.int32 and np.array_equal(as_int, fixed.predict_fixed(*q))
    assert stats["predict"] >= len(device_trace) - 1 and "encode" not in stats


# ---------------------------------------------------------------------- memory limits and ACKs
def _predicts_one_row(scratch: int) -> bool:
    z, a, _ = device_inputs(1)
    try:
        device = start_firmware("esp32", "c", MODEL, ["--scratch", str(scratch)])
    except LeWorldError:  # too little scratch even for the model's tables
        return False
    with device, RawLink(device.path) as link:
        link.hello(1)
        return not link.answer(Frame(Command.PREDICT, 1, pack_tensors(z, a))).is_error


def test_rows_beyond_the_scratch_run_in_parts_and_one_row_too_large_is_refused(firmware_build, reference):
    sizes = [1 << k for k in range(12, 27)]
    fits = next(s for s in sizes if _predicts_one_row(s))  # the smallest power of two that runs one row
    z, a, future = device_inputs(64, seed=4)
    with start_firmware("esp32", "c", MODEL, ["--scratch", str(fits)]) as device:
        wm = world_models.load(MODEL, backend="esp32", port=device.path, **FAST)
        try:
            np.testing.assert_allclose(wm.predict(z, a), reference.predict(z, a), rtol=1e-5, atol=1e-5)
            z, a, future = z[:32], a[:32], future[:32]  # 32 rows x 4 steps: as much as one frame answers
            np.testing.assert_allclose(wm.rollout(z, a, future), reference.rollout(z, a, future), rtol=1e-5, atol=1e-5)
            stats = wm.stats()
        finally:
            wm.close()
    assert stats["predict"] == 1 and stats["rollout"] == 1  # one call each, split inside the device
    assert stats["rows_predicted"] == 64 + 32 * 4
    with start_firmware("esp32", "c", MODEL, ["--scratch", str(fits)]) as device, RawLink(device.path) as link:
        tables = fits - link.hello(1).scratch_bytes  # what the two model tables take of the scratch
    z1, a1, _ = device_inputs(1)
    with start_firmware("esp32", "c", MODEL, ["--scratch", str(tables + 1024)]) as device, RawLink(device.path) as link:
        assert link.hello(1).scratch_bytes == 1024
        refused = link.answer(Frame(Command.PREDICT, 1, pack_tensors(z1, a1)))
    code, message = unpack_error(refused.payload)
    assert code == ErrorCode.TOO_LARGE and "scratch" in message, message


def test_max_rows_makes_the_host_split_its_batches(firmware_build, reference):
    z, a, _ = device_inputs(10)
    with start_firmware("esp32", "c", MODEL, ["--max-rows", "4"]) as device:
        wm = world_models.load(MODEL, backend="esp32", port=device.path, **FAST)
        try:
            np.testing.assert_allclose(wm.predict(z, a), reference.predict(z, a), rtol=1e-5, atol=1e-5)
            assert wm.stats()["predict"] == 3  # 4 + 4 + 2 rows
        finally:
            wm.close()
        with RawLink(device.path) as link:
            link.hello(2)
            code, message = unpack_error(link.answer(Frame(Command.PREDICT, 1, pack_tensors(z[:5], a[:5]))).payload)
    assert code == ErrorCode.TOO_LARGE and "at most 4" in message


def test_a_long_command_is_acknowledged_first(firmware_build):
    z, a, _ = device_inputs(2)
    with start_firmware("esp32", "c", MODEL, ["--row-us", "200000"]) as device, RawLink(device.path) as link:
        link.hello(1)
        frames = link.ask(Frame(Command.PREDICT, 1, pack_tensors(z, a)))
    assert [f.is_ack for f in frames] == [True, False]
    (ms,) = struct.unpack("<I", frames[0].payload)
    assert ms >= 400  # 2 rows at the announced 200 ms a row


# ---------------------------------------------------------------------- build, start, stop, CLI
def test_the_firmware_stops_on_sigterm_and_when_stdin_closes(firmware_build):
    device = start_firmware("esp32", "c")
    with DeviceLink(device.path, **FAST) as link:
        link.stats()
    assert device.stop() and device.executed == 1
    device = start_firmware("esp32", "c")
    device.process.stdin.close()  # as when the process that started it dies
    assert device.process.wait(timeout=5) == 0


def test_build_and_start_mistakes_are_one_line_errors(firmware_build, tmp_path, monkeypatch):
    with pytest.raises(LeWorldError, match="unknown device kind 'tpu'"):
        start_firmware("tpu")
    with pytest.raises(LeWorldError, match="unknown firmware implementation 'rust'"):
        start_firmware("esp32", "rust")
    monkeypatch.setitem(sys.modules, "world_models.backends.devices.qemu", None)  # as if the module were missing
    with pytest.raises(LeWorldError, match=r"--impl qemu needs world_models.backends.devices.qemu"):
        start_firmware("esp32", "qemu")
    monkeypatch.setenv("CC", "no-such-cc")
    with pytest.raises(LeWorldError, match=r"needs 'no-such-cc'.*apt-get"):
        build_firmware(tmp_path / "fresh")
    monkeypatch.delenv("CC")
    bad = tmp_path / "bad.lq40"
    bad.write_bytes(b"LQ40" + b"\x00" * 60)
    with pytest.raises(LeWorldError, match=r"did not start: leworld-fw: cannot hold model .*bad.lq40"):
        start_firmware("esp32", "c", bad)


SLOW_LINKER = """#!/bin/sh
# A stand-in compiler that writes its -o file in two halves, 0.3 s apart (as a slow linker would).
out=""
while [ $# -gt 0 ]; do
    if [ "$1" = "-o" ]; then out="$2"; shift; fi
    shift
done
printf 'first half, ' > "$out"
sleep 0.3
printf 'second half' >> "$out"
"""


@pytest.mark.parametrize("makefile", ["firmware", "firmware/qemu"])
def test_a_binary_being_linked_is_never_seen_half_written(tmp_path, makefile):
    """Both Makefiles link to a temporary name and rename it into place, so a process that finds the
    binary while another builds it (firmware.py's date check runs outside the build lock) reads the
    old file or the whole new one."""
    require_tools("make")
    tools = tmp_path / "tools"
    tools.mkdir()
    for name in ("fake-gcc", "fake-objdump", "fake-size"):  # the qemu Makefile's $(CROSS) tools
        (tools / name).write_text(SLOW_LINKER if name == "fake-gcc" else "#!/bin/sh\n")
        (tools / name).chmod(0o755)
    build = tmp_path / "build"
    target = build / ("leworld-fw" if makefile == "firmware" else "leworld-fw.elf")
    command = ["make", "-s", "-C", str(FIRMWARE_DIR.parent / makefile), f"BUILD={build}", str(target)]
    command += [f"CC={tools / 'fake-gcc'}"] if makefile == "firmware" else [f"CROSS={tools}/fake-"]
    make = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = set()
    while make.poll() is None:
        with contextlib.suppress(FileNotFoundError):
            seen.add(target.read_text())
        time.sleep(0.01)
    _, err = make.communicate()
    assert make.returncode == 0, err
    seen.add(target.read_text())
    assert seen == {"first half, second half"}, seen
    assert not list(build.glob("*.tmp"))


def test_device_emulate_impl_c_serves_a_pty_until_sigterm(firmware_build, reference):
    command = [sys.executable, "-m", "leworld_env.cli", "device", "emulate", "--kind", "esp32", "--impl", "c"]
    process = subprocess.Popen([*command, "--model", MODEL], stdout=subprocess.PIPE, text=True)
    try:
        ready, _, _ = select.select([process.stdout], [], [], 60.0)
        assert ready, "the command printed nothing in 60 s"
        first = process.stdout.readline()
        assert first.startswith("esp32 emulator on /dev/pts/"), first
        port = first.split(" on ")[1].strip()
        wm = world_models.load(MODEL, backend="esp32", port=port, **FAST)
        try:
            assert not wm.ensure_model() and wm.info.name == "leworld-fw esp32 (host)"
            z, a, _ = device_inputs(3)
            np.testing.assert_allclose(wm.predict(z, a), reference.predict(z, a), rtol=1e-5, atol=1e-5)
        finally:
            wm.close()
    finally:
        out = sigterm_and_wait(process)
    assert process.returncode == 0 and "stopped after 1 commands" in out, out
    refused = subprocess.run([*command, "--tcp", "0"], capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and "--tcp: only with --impl python" in refused.stderr
    assert refused.stderr.count("\n") == 1, refused.stderr
