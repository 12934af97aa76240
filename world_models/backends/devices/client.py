"""The host side: a :class:`DeviceLink` over pyserial, and :class:`DeviceWorldModel` (backends ``esp32``, ``fpga``).

Every call has a deadline: ``timeout`` seconds for the device to answer, plus
the time the frames need on the wire at ``baud``, plus what the device
announces in its first ACK (at most ``max_ack_s``; one extension per attempt).
An unanswered call is sent again with the same sequence number, at most
``retries`` times; the device answers a repeated sequence number from its
cache, so a retried command never runs twice. A broken link (a closed pty, a
dropped TCP connection) is reopened and greeted (HELLO, same session) before
the retry; a different device answering there is an error. When the sequence
numbers run out (2^32 - 1 calls) the link starts a new session. When all
attempts fail the call raises :class:`DeviceTimeoutError` (the device is
silent) or :class:`DeviceError` (the device is gone, another device answers,
or it answered with an error code or a malformed payload).

The host speaks protocol version 2 only (no device shipped version 1). On an FPGA that advertises
FIXED_POINT, PREDICT and ROLLOUT carry int32 fixed point (HELLO's ``frac_bits``): the host quantizes
as the fixed-point reference does and the device's integers come back exactly.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from world_models.backends.devices import protocol as wire
from world_models.backends.devices.protocol import Capability, Command, ErrorCode, Frame, Hello, LoadOp, ProtocolError
from world_models.errors import ArgumentError, LeWorldError
from world_models.interface import WorldModel
from world_models.locate import resolve_lq40

DEFAULT_TIMEOUT = 2.0
DEFAULT_RETRIES = 3
DEFAULT_BAUD = 921_600
DEFAULT_MAX_ACK_S = 60.0  # the most one ACK may extend an attempt's deadline by
# Room kept in a frame beyond the rows' own bytes: the tensors' dtype / ndim / batch-dimension fields
# (which tensor_nbytes of one row leaves out), with ample slack.
TENSOR_HEADS_ROOM = 64
POLL_S = 0.02  # pyserial read timeout: how often a waiting call checks its deadline
PORT_HINT = "a device path such as /dev/ttyUSB0, or a pyserial URL such as socket://HOST:PORT"
HOST_VERSIONS = (wire.PROTOCOL_VERSION, wire.PROTOCOL_VERSION)  # the protocol versions this host speaks (2 only)
_SESSIONS = itertools.count(1)


class DeviceError(LeWorldError, ConnectionError):
    """The device answered with an error, speaks another protocol, is another kind, or is gone.

    Also a ``ConnectionError`` (an ``OSError``), as pyserial's errors are, so code written for a serial
    link catches it. ``code`` is the device's :class:`~world_models.backends.devices.protocol.ErrorCode`,
    or ``None`` for problems found on the host (a port that does not open, a link that stays down, a
    timeout).
    """

    code: int | None = None

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class DeviceTimeoutError(DeviceError, TimeoutError):
    """The device did not answer a command within its deadline, on any attempt (a ``TimeoutError``
    and a :class:`DeviceError`)."""


class _LinkDown(Exception):
    """The serial link failed (closed, unplugged, disconnected); reconnecting may help."""


def _port_errors() -> tuple[type[BaseException], ...]:
    """What a failing port raises: pyserial's errors, OSError, and termios.error (a pty whose other side
    closed makes ``tcdrain`` in ``flush`` fail with EIO, and termios.error is no OSError)."""
    import serial

    try:
        import termios
    except ImportError:  # not POSIX
        return (serial.SerialException, OSError)
    return (serial.SerialException, OSError, termios.error)


def _new_session() -> int:
    """A session id unlikely to repeat across processes and links (not random: pid, clock, counter)."""
    session = (os.getpid() * 1_000_003 + time.time_ns() // 1000 + next(_SESSIONS) * 7919) & 0xFFFFFFFF
    return session or 1


def _positive_seconds(value: object) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and 0 < value < math.inf


def check_port(port: object, backend: str | None = None) -> str:
    """The one rule for a device's port: a non-empty string, a device path or a pyserial URL; returns it.

    ``backend`` (``esp32``, ``fpga``) names who needs it in the error.

    Raises:
        ArgumentError: (a ``LeWorldError`` and a ``ValueError``) when ``port`` is missing or not a string.
    """
    if isinstance(port, str) and port:
        return port
    who = f"backend {backend!r}" if backend else "a device link"
    raise ArgumentError(f"{who} needs port= ({PORT_HINT}), got {port!r}")


def _check_options(timeout: float, retries: int, baud: int, max_ack_s: float = DEFAULT_MAX_ACK_S) -> None:
    if not _positive_seconds(timeout):
        raise LeWorldError(f"timeout must be a positive number of seconds, got {timeout!r}")
    if not _positive_seconds(max_ack_s):
        raise LeWorldError(f"max_ack_s must be a positive number of seconds, got {max_ack_s!r}")
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise LeWorldError(f"retries must be a whole number >= 0, got {retries!r}")
    if isinstance(baud, bool) or not isinstance(baud, int) or baud < 1:
        raise LeWorldError(f"baud must be a positive whole number of bits per second, got {baud!r}")


class DeviceLink:
    """One host's link to one device: framing, deadlines, retries, reconnects, HELLO.

    Args:
        port: a device path (``/dev/ttyUSB0``, ``/dev/pts/3``) or any pyserial URL
            (``socket://HOST:PORT``, ``loop://``, ``rfc2217://...``).
        timeout: seconds the device may take to answer a call (beyond the frames' wire time).
        retries: how many times an unanswered call is sent again (same sequence number).
        baud: the serial line's rate, used for the port and for the wire-time allowance.
        max_ack_s: the most seconds one ACK may add to an attempt's deadline (a device announcing
            more gets this much; a device sending more ACKs gets no more time).
    """

    def __init__(
        self,
        port: str,
        timeout: float = DEFAULT_TIMEOUT,
        retries: int = DEFAULT_RETRIES,
        baud: int = DEFAULT_BAUD,
        max_ack_s: float = DEFAULT_MAX_ACK_S,
    ) -> None:
        _check_options(timeout, retries, baud, max_ack_s)
        self.port = check_port(port)
        self.timeout, self.retries, self.baud = float(timeout), retries, baud
        self.max_ack_s = float(max_ack_s)
        self.session = _new_session()
        self._identity: tuple[int, str] | None = None  # (kind, name) of the first HELLO's device
        self.counters = {"calls": 0, "retries": 0, "reconnects": 0, "bad_frames": 0, "ignored_frames": 0}
        self._seq = 0
        self._serial: Any = None
        self._decoder = wire.FrameDecoder(wire.HOST_MAX_FRAME)
        self._open()
        try:
            self.info = self.hello()
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ the port
    def _open(self) -> None:
        import serial

        try:
            self._serial = serial.serial_for_url(
                self.port, baudrate=self.baud, timeout=POLL_S, write_timeout=self.timeout + 1.0
            )
        except (serial.SerialException, ValueError, OSError) as err:
            raise DeviceError(f"cannot open port {self.port!r} ({err}); expected {PORT_HINT}") from None
        self._decoder.reset()
        try:
            self._serial.reset_input_buffer()
            self._serial.write(b"\x00")  # a delimiter: the device drops any partial frame it holds
        except _port_errors() as err:
            self._drop_port()
            raise DeviceError(f"cannot use port {self.port!r} ({err})") from None

    def _drop_port(self) -> None:
        if self._serial is not None:
            try:
                self._serial.close()
            except Exception:  # closing a dead port may fail in many ways; it is closed either way
                pass
            self._serial = None

    def close(self) -> None:
        """Close the port (idempotent)."""
        self._drop_port()

    def __enter__(self) -> DeviceLink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _wire_s(self, nbytes: int) -> float:
        return nbytes * 10.0 / self.baud

    # ------------------------------------------------------------------ one exchange
    def _write(self, data: bytes) -> None:
        import serial

        if self._serial is None:
            raise _LinkDown("the port is closed")
        try:
            self._serial.write(data)
            self._serial.flush()
        except serial.SerialTimeoutException:
            return  # the device does not take bytes: like a lost frame, the deadline decides
        except _port_errors() as err:
            raise _LinkDown(str(err)) from None

    def _read_frames(self) -> list[Frame]:
        if self._serial is None:
            raise _LinkDown("the port is closed")
        try:
            chunk = self._serial.read(1)
            if chunk and self._serial.in_waiting:
                chunk += self._serial.read(self._serial.in_waiting)
        except _port_errors() as err:
            raise _LinkDown(str(err)) from None
        self._decoder.feed(chunk)
        frames = []
        while True:
            try:
                frame = self._decoder.next_frame()
            except ProtocolError:
                self.counters["bad_frames"] += 1
                continue
            if frame is None:
                return frames
            frames.append(frame)

    def _attempt(self, command: int, seq: int, data: bytes, answer_bytes: int) -> Frame | None:
        """Send a request once and wait for its response; ``None`` when the deadline passes.

        The deadline is ``timeout`` plus the frames' wire time; the first well-formed ACK may move it
        to now + ``timeout`` + the announced time, capped at ``max_ack_s``. Later ACKs are ignored,
        so no device can hold a call longer than that.
        """
        self._write(data)
        deadline = time.monotonic() + self.timeout + self._wire_s(len(data) + answer_bytes)
        extended = False
        while time.monotonic() < deadline:
            for frame in self._read_frames():
                if not frame.is_response or frame.seq != seq or frame.command != command:
                    self.counters["ignored_frames"] += 1  # an echo, a late answer to an earlier call
                    continue
                if frame.is_ack:
                    if not extended and len(frame.payload) == wire.ACK_PAYLOAD.size:
                        (ms,) = wire.ACK_PAYLOAD.unpack(frame.payload)
                        extra = min(ms / 1000.0, self.max_ack_s)
                        deadline = max(deadline, time.monotonic() + self.timeout + extra)
                        extended = True
                    else:
                        self.counters["ignored_frames"] += 1
                    continue
                return frame
        return None

    def _reconnect(self) -> None:
        """Reopen the port and greet the device again (same session: its response cache stays valid)."""
        self._drop_port()
        self.counters["reconnects"] += 1
        try:
            self._open()
        except DeviceError as err:
            raise _LinkDown(str(err)) from None
        reply = self._attempt(Command.HELLO, wire.HELLO_SEQUENCE, self._hello_frame(), 64)
        if reply is None:
            raise _LinkDown("no answer to HELLO after reopening the port")
        try:
            self.info = self._check_hello(reply)
        except DeviceError:
            self._drop_port()  # another device (or firmware) answers there: do not send it the command
            raise

    def _exchange(self, command: int, seq: int, payload: bytes, answer_bytes: int) -> Frame:
        data = wire.encode_frame(Frame(command, seq, payload))
        name = Command(command).name
        problem = ""
        for attempt in range(self.retries + 1):
            if attempt:
                self.counters["retries"] += 1
            try:
                if self._serial is None:
                    self._reconnect()
                reply = self._attempt(command, seq, data, answer_bytes)
                if reply is not None:
                    return reply
                problem = "timeout"
            except _LinkDown as err:
                self._drop_port()
                problem = f"link down: {err}"
                time.sleep(min(0.05 * 2**attempt, self.timeout))
        attempts = f"{self.retries + 1} attempt(s)"
        if problem.startswith("link down"):
            raise DeviceError(f"the device at {self.port!r} is gone: {name} failed after {attempts} ({problem})")
        raise DeviceTimeoutError(
            f"no answer from the device at {self.port!r} to {name} (sequence {seq}) after {attempts} "
            f"of {self.timeout:g} s"
        )

    def _raise_for_error(self, reply: Frame, name: str) -> None:
        if reply.is_error:
            try:
                code, message = wire.unpack_error(reply.payload)
            except ProtocolError as err:
                raise DeviceError(f"the device at {self.port!r} sent a malformed error to {name}: {err}") from None
            label = ErrorCode(code).name if code in ErrorCode._value2member_map_ else str(code)
            raise DeviceError(f"the device at {self.port!r} refused {name}: {label}: {message}", code)

    def call(self, command: int, payload: bytes = b"", answer_bytes: int = 64) -> bytes:
        """Run one command on the device and return its response payload.

        ``answer_bytes``: the size of the expected response, for the wire-time allowance.
        """
        if command == Command.HELLO:
            raise ArgumentError("use hello() for HELLO")
        if self._seq >= wire.MAX_SEQUENCE:
            # The device refuses sequence numbers at or below the last one run, so numbering cannot
            # wrap within a session: start a new one (the device then starts counting afresh).
            self.session = _new_session()
            self._seq = 0
            self.counters["new_sessions"] = self.counters.get("new_sessions", 0) + 1
            self.hello()
        self._seq += 1
        self.counters["calls"] += 1
        reply = self._exchange(command, self._seq, payload, answer_bytes)
        self._raise_for_error(reply, Command(command).name)
        return reply.payload

    # ------------------------------------------------------------------ HELLO and friends
    def _hello_payload(self) -> bytes:
        return wire.HELLO_REQUEST.pack(*HOST_VERSIONS, 0, self.session)

    def _hello_frame(self) -> bytes:
        return wire.encode_frame(Frame(Command.HELLO, wire.HELLO_SEQUENCE, self._hello_payload()))

    def _check_hello(self, reply: Frame) -> Hello:
        self._raise_for_error(reply, "HELLO")
        try:
            info = Hello.unpack(reply.payload)
        except ProtocolError as err:
            raise DeviceError(f"the device at {self.port!r} sent a malformed HELLO: {err}") from None
        if not HOST_VERSIONS[0] <= info.version <= HOST_VERSIONS[1]:
            raise DeviceError(
                f"the device at {self.port!r} speaks protocol version {info.version}; this host speaks "
                f"{HOST_VERSIONS[0]} to {HOST_VERSIONS[1]}: update the firmware or leworld",
                ErrorCode.UNSUPPORTED_VERSION,
            )
        if not wire.OVERHEAD + 64 <= info.max_frame <= wire.HOST_MAX_FRAME:
            raise DeviceError(f"the device at {self.port!r} claims an unusable largest frame of {info.max_frame} bytes")
        if self._identity is None:
            self._identity = (info.kind, info.name)
        elif (info.kind, info.name) != self._identity:
            kind, name = self._identity
            raise DeviceError(
                f"another device answers at {self.port!r}: {info.kind_name} ({info.name}), where this link "
                f"was opened to {wire.kind_name(kind)} ({name}); open a new link"
            )
        if self._serial is not None:
            self._serial.write_timeout = self.timeout + self._wire_s(wire.max_encoded_size(info.max_frame) + 1)
        return info

    def hello(self) -> Hello:
        """Greet the device (protocol version check; starts this link's session) and return what it says.

        Raises :class:`DeviceError` when a device of another kind or name answers than the first HELLO's.
        """
        reply = self._exchange(Command.HELLO, wire.HELLO_SEQUENCE, self._hello_payload(), 64)
        self.info = self._check_hello(reply)
        return self.info

    def stats(self) -> dict[str, int]:
        """The device's counters (STATS)."""
        try:
            return wire.unpack_stats(self.call(Command.STATS, b"", 4096))
        except ProtocolError as err:
            raise DeviceError(f"the device at {self.port!r} sent malformed STATS: {err}") from None

    def reset(self, unload: bool = False) -> None:
        """RESET: drop the device's response cache, any partial model transfer and its counters."""
        self.call(Command.RESET, wire.RESET_REQUEST.pack(wire.RESET_UNLOAD if unload else 0))

    def load_model(self, blob: bytes, chunk: int | None = None) -> int:
        """Send an ``.lq40`` in chunks (resuming a transfer of the same file); returns the bytes sent."""
        size, crc = len(blob), zlib.crc32(blob)
        if size > self.info.max_model:
            raise DeviceError(
                f"the model is {size} bytes; the device at {self.port!r} holds at most {self.info.max_model}",
                ErrorCode.TOO_LARGE,
            )
        largest = self.info.max_frame - wire.OVERHEAD - wire.LOAD_REQUEST.size
        chunk = largest if chunk is None else max(1, min(chunk, largest))
        held = self._load_step(LoadOp.BEGIN, size, crc, b"", size)
        sent = 0
        while held < size:
            piece = blob[held : held + chunk]
            now = self._load_step(LoadOp.CHUNK, held, crc, piece, size)
            if now <= held:  # a device that keeps answering the same count would loop forever
                raise DeviceError(
                    f"the device at {self.port!r} makes no progress loading the model: it holds {now} of "
                    f"{size} bytes after a chunk at offset {held}"
                )
            held = now
            sent += len(piece)
        self._load_step(LoadOp.COMMIT, size, crc, b"", size)
        self.info = dataclasses.replace(self.info, model_size=size, model_crc=crc)
        return sent

    def _load_step(self, op: LoadOp, first: int, crc: int, data: bytes, size: int) -> int:
        """One LOAD_MODEL call; the bytes the device holds, checked (a malformed answer is a DeviceError)."""
        reply = self.call(Command.LOAD_MODEL, wire.LOAD_REQUEST.pack(op, first, crc) + data)
        if len(reply) != wire.LOAD_RESPONSE.size:
            raise DeviceError(
                f"the device at {self.port!r} sent a malformed LOAD_MODEL {op.name} answer: {len(reply)} bytes, "
                f"expected {wire.LOAD_RESPONSE.size}"
            )
        held, echoed = wire.LOAD_RESPONSE.unpack(reply)
        if echoed != crc or held > size:
            raise DeviceError(
                f"the device at {self.port!r} answered LOAD_MODEL {op.name} with {held} bytes held of CRC-32 "
                f"{echoed:08x}; expected at most {size} of {crc:08x}"
            )
        return held


# ---------------------------------------------------------------------- the backend
class DeviceWorldModel(WorldModel):
    """The runtime interface on a device: PREDICT / ROLLOUT (and ENCODE where the device has it) over a link.

    The ``.lq40`` is also opened in-process on numba-q4 for the config, the probe and, when
    the device cannot encode (the FPGA), encoding. The device gets the model (LOAD_MODEL)
    when the one it holds has another size or CRC-32. Batches larger than the device's
    frame, or than the rows it takes per call (HELLO's ``max_rows``), are split into several
    calls (rows are independent). An ``fpga`` device with FIXED_POINT is sent int32 fixed point.
    """

    def __init__(self, path: str | Path, backend: str, port: str, **link_options: float) -> None:
        """``link_options``: :class:`DeviceLink`'s ``timeout``, ``retries``, ``baud`` and ``max_ack_s``."""
        from world_models.backends.numba_engine import NumbaWorldModel

        self.path = Path(path)
        self.backend = backend
        self.local = NumbaWorldModel.from_lq40(self.path)
        self.config = self.local.config
        self.has_probe = self.local.has_probe
        self._blob = self.path.read_bytes()
        self.link = DeviceLink(port, **link_options)
        try:
            if self.link.info.kind_name != backend:
                raise DeviceError(
                    f"the device at {port!r} is an {self.link.info.kind_name} ({self.link.info.name}); "
                    f"open it with backend={self.link.info.kind_name!r}, not {backend!r}"
                )
            self.ensure_model()
        except BaseException:
            self.link.close()
            raise

    @property
    def info(self) -> Hello:
        """What the device said in its last HELLO."""
        return self.link.info

    def ensure_model(self) -> bool:
        """LOAD_MODEL this model unless the device holds it already; True when it was sent."""
        info = self.link.info
        if (info.model_size, info.model_crc) == (len(self._blob), zlib.crc32(self._blob)):
            return False
        self.link.load_model(self._blob)
        return True

    def close(self) -> None:
        """Close the link."""
        self.link.close()

    def stats(self) -> dict[str, int]:
        """The device's counters."""
        return self.link.stats()

    def _can(self, capability: Capability) -> bool:
        return bool(self.link.info.capabilities & capability)

    def _call(self, command: Command, payload: bytes, answer_bytes: int) -> bytes:
        """A call; a device that lost its model (a reboot) gets it again, once."""
        try:
            return self.link.call(command, payload, answer_bytes)
        except DeviceError as err:
            if err.code != ErrorCode.NO_MODEL:
                raise
            self.link.hello()
            self.ensure_model()
            return self.link.call(command, payload, answer_bytes)

    def _rows_per_call(self, inputs: list[np.ndarray], answer_shape: tuple[int, ...]) -> int:
        """How many rows of ``inputs`` (and their answers) fit one frame, and the device's ``max_rows``;
        0 when not even one does."""
        request_row = sum(wire.tensor_nbytes(x.shape[1:], x.dtype) for x in inputs)
        answer_row = wire.tensor_nbytes(answer_shape, np.float32)  # int32 answers take as much
        room = self.link.info.max_frame - wire.OVERHEAD - TENSOR_HEADS_ROOM
        rows = max(0, room // max(request_row, answer_row, 1))
        return min(rows, self.link.info.max_rows) if self.link.info.max_rows else rows

    @property
    def fixed_point_link(self) -> bool:
        """Whether PREDICT and ROLLOUT carry int32 fixed point: an fpga device advertising FIXED_POINT."""
        info = self.link.info
        return self.backend == "fpga" and bool(info.capabilities & Capability.FIXED_POINT) and 0 < info.frac_bits < 31

    def _to_wire(self, name: str, x: np.ndarray) -> np.ndarray:
        """``x`` as sent: float32, or on a fixed-point link its int32 fixed point (refused outside the range)."""
        if not self.fixed_point_link:
            return x
        frac = self.link.info.frac_bits
        limit = 2.0 ** (31 - frac)
        if np.any(np.abs(x) >= limit):
            raise ArgumentError(
                f"{name} holds values outside the fixed-point range (|x| < {limit:g} at {frac} fraction bits)"
            )
        return wire.to_fixed(x, frac)

    def _from_wire(self, out: np.ndarray) -> np.ndarray:
        return wire.from_fixed(out, self.link.info.frac_bits) if out.dtype == np.int32 else out

    def _batched(
        self,
        command: Command,
        inputs: list[np.ndarray],
        answer_shape: tuple[int, ...],
        dtype: type = np.float32,
    ) -> np.ndarray:
        """Run ``command`` over row slices of ``inputs`` that fit a frame; the answers (``dtype``: float32, or
        int32 on a fixed-point link) stacked [B, *answer_shape]."""
        batch = inputs[0].shape[0]
        answer_row = wire.tensor_nbytes(answer_shape, np.float32)
        rows = self._rows_per_call(inputs, answer_shape)
        out = np.empty((batch, *answer_shape), dtype)
        for start in range(0, batch, rows):
            part = [x[start : start + rows] for x in inputs]
            n = part[0].shape[0]
            reply = self._call(command, wire.pack_tensors(*part), n * answer_row)
            try:
                (result,) = wire.unpack_tensors(reply, 1)
            except ProtocolError as err:
                raise DeviceError(
                    f"the device at {self.link.port!r} sent a malformed {command.name} answer: {err}"
                ) from None
            finite = result.dtype != np.float32 or np.all(np.isfinite(result))
            if result.dtype != dtype or result.shape != (n, *answer_shape) or not finite:
                expected = "finite float32" if dtype == np.float32 else np.dtype(dtype).name
                raise DeviceError(
                    f"the device at {self.link.port!r} answered {command.name} with {result.dtype} "
                    f"{list(result.shape)}; expected {expected} {[n, *answer_shape]}"
                )
            out[start : start + n] = result
        return out

    def _fits(self, inputs: list[np.ndarray], answer_shape: tuple[int, ...]) -> bool:
        return self._rows_per_call(inputs, answer_shape) >= 1

    def _encode(self, pixels: np.ndarray) -> np.ndarray:
        if not self._can(Capability.ENCODE) or not self._fits([pixels], (self.config.latent_dim,)):
            return self.local._encode(pixels)
        return self._batched(Command.ENCODE, [pixels], (self.config.latent_dim,))

    def _answer_dtype(self) -> type:
        return np.int32 if self.fixed_point_link else np.float32

    def _predict(self, z_hist: np.ndarray, a_hist: np.ndarray) -> np.ndarray:
        inputs = [self._to_wire("z_hist", z_hist), self._to_wire("a_hist", a_hist)]
        if not self._fits(inputs, (self.config.latent_dim,)):
            raise DeviceError(f"one history of {list(z_hist.shape[1:])} does not fit the device's frame")
        out = self._batched(Command.PREDICT, inputs, (self.config.latent_dim,), self._answer_dtype())
        return self._from_wire(out)

    def _rollout(self, z_hist: np.ndarray, a_hist: np.ndarray, a_future: np.ndarray) -> np.ndarray:
        answer = (a_future.shape[1], self.config.latent_dim)
        if not self._can(Capability.ROLLOUT) or not self._fits([z_hist, a_hist, a_future], answer):
            return super()._rollout(z_hist, a_hist, a_future)  # one PREDICT per step
        names = ("z_hist", "a_hist", "a_future")
        inputs = [self._to_wire(name, x) for name, x in zip(names, (z_hist, a_hist, a_future), strict=True)]
        return self._from_wire(self._batched(Command.ROLLOUT, inputs, answer, self._answer_dtype()))

    def _probe_targets(self, z: np.ndarray) -> np.ndarray:
        return self.local._probe_targets(z)


def open_device_model(name_or_path: str | Path, backend: str, port: str | None, **options: Any) -> DeviceWorldModel:
    """``load(name_or_path, backend="esp32" | "fpga", port=..., timeout=..., retries=..., baud=..., max_ack_s=...)``."""
    known = {"timeout", "retries", "baud", "max_ack_s"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise LeWorldError(
            f"backend {backend!r} takes port=, timeout=, retries=, baud= and max_ack_s=, got unknown "
            f"{', '.join(unknown)}"
        )
    port = check_port(port, backend)
    return DeviceWorldModel(resolve_lq40(name_or_path, backend), backend, port, **options)
