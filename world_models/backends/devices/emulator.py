"""Device emulators: the device side of docs/protocol.md, served on a pseudo-terminal or a TCP port.

``esp32`` runs the numba-q4 engine on the loaded ``.lq40`` (PREDICT, ROLLOUT,
ENCODE), optionally sleeping as long as an ESP32-P4 would take
(:class:`LatencyModel`). ``fpga`` runs the fixed-point reference
(:class:`world_models.backends.devices.fixed_point.FixedPointPredictor`, PREDICT and ROLLOUT
only), bit-exact with the hardware's arithmetic; it takes float32 tensors or the int32 fixed-point
ones it advertises (FIXED_POINT, ``frac_bits``) and answers in the dtype it was asked in. An optional link model delays
every frame by its time on a UART at ``baud`` (10 bits a byte), so
benchmarks over a pty mean something.

A retried command never runs twice: the device keeps, per session (the
last :data:`MAX_SESSIONS` hosts that said HELLO), its last :data:`CACHE_SIZE`
responses by sequence number and answers a repeated request (same sequence
number, command and payload) from there.
"""

from __future__ import annotations

import math
import tempfile
import threading
import time
import warnings
import zlib
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from world_models.backends.devices import protocol as wire
from world_models.backends.devices.protocol import Capability, Command, ErrorCode, Frame, Hello, LoadOp, ProtocolError
from world_models.backends.devices.transports import PtyTransport, TcpTransport, Transport
from world_models.backends.layout import CONV_KERNEL, conv_stem
from world_models.config import ModelConfig
from world_models.errors import LeWorldError
from world_models.locate import resolve_lq40

KINDS = ("esp32", "fpga")
CACHE_SIZE = 16  # responses kept per session for retried sequence numbers
MAX_SESSIONS = 4  # sessions (hosts) whose sequence numbers and responses the device remembers
STOP_TIMEOUT_S = 10.0  # Emulator.stop waits this long for a command in progress
ACK_MIN_MS = 50  # commands expected to take longer are acknowledged first
WARM_UP_MS = 30_000  # announced before installing a model: numba compiles its kernels on first use
FIRMWARE = (0, 1, 0)
MAX_MODEL = 16 << 20  # the largest .lq40 a device takes (PSRAM / BRAM budget)
FRAC_BITS = 16  # the fpga emulator's fixed-point format (Q15.16), as FixedPointPredictor's default
MODEL_FILE = "model.lq40"


# ---------------------------------------------------------------------- latency
def predictor_macs(cfg: ModelConfig) -> int:
    """Multiply-accumulates of the predictor's linear layers for one predicted latent (full history)."""
    d, z, a, e = cfg.predictor_dim, cfg.latent_dim, cfg.action_dim, cfg.action_embed_dim
    hidden = int(d * cfg.mlp_ratio)
    per_block = 3 * d * d + d * d + 2 * d * hidden + 6 * d * d  # qkv, proj, mlp, adaLN modulation
    per_token = z * d + a * e + e * 4 * d + 4 * d * d + cfg.predictor_depth * per_block
    return cfg.history * per_token + d * cfg.projector_hidden + cfg.projector_hidden * z


def encoder_macs(cfg: ModelConfig) -> int:
    """Multiply-accumulates of the encoder's linear layers for one frame: the ViT's (patch embedding,
    blocks) or the conv stem's (each convolution at every output pixel, then ``flat``), and the projector."""
    projector = cfg.encoder_dim * cfg.projector_hidden + cfg.projector_hidden * cfg.latent_dim
    return (_conv_stem_macs(cfg) if cfg.encoder == "cnn" else _vit_macs(cfg)) + projector


def _vit_macs(cfg: ModelConfig) -> int:
    d, tokens = cfg.encoder_dim, cfg.num_patches + 1
    hidden = int(d * cfg.mlp_ratio)
    patches = cfg.num_patches * 3 * cfg.patch_size**2 * d
    return patches + cfg.encoder_depth * tokens * (4 * d * d + 2 * d * hidden)


def _conv_stem_macs(cfg: ModelConfig) -> int:
    convs = sum(side * side * c_out * c_in * CONV_KERNEL**2 for c_in, c_out, side in conv_stem(cfg))
    return convs + cfg.conv_channels[-1] * cfg.conv_side**2 * cfg.encoder_dim


# The LeWM model collection reports 152 ms (slim_48d_2e_2p) to 828 ms (slim_192d_4e_4p) per predict
# on an ESP32-P4. The latency model is the straight line through those two points in predictor MACs.
ESP32_P4_ANCHORS = (("slim_48d_2e_2p", 152.0), ("slim_192d_4e_4p", 828.0))


@dataclass(frozen=True)
class LatencyModel:
    """Milliseconds a device takes: ``fixed_ms + per_mac_ms * MACs`` per predicted latent or encoded frame."""

    name: str = "none"
    fixed_ms: float = 0.0
    per_mac_ms: float = 0.0

    @classmethod
    def preset(cls, name: str) -> LatencyModel:
        """``none`` or ``esp32-p4`` (the line through the collection's published ESP32-P4 figures)."""
        if name == "none":
            return cls()
        if name == "esp32-p4":
            from world_models.config import preset

            (small, ms_small), (large, ms_large) = ESP32_P4_ANCHORS
            m_small, m_large = predictor_macs(preset(small)), predictor_macs(preset(large))
            slope = (ms_large - ms_small) / (m_large - m_small)
            return cls(name, ms_small - slope * m_small, slope)
        raise LeWorldError(f"unknown latency model {name!r}; choose one of: none, esp32-p4")

    def predict_ms(self, cfg: ModelConfig) -> float:
        """Milliseconds per predicted latent (one row, one step)."""
        return 0.0 if self.name == "none" else max(1.0, self.fixed_ms + self.per_mac_ms * predictor_macs(cfg))

    def encode_ms(self, cfg: ModelConfig) -> float:
        """Milliseconds per encoded frame (no published figure: the same line, in encoder MACs)."""
        return 0.0 if self.name == "none" else max(1.0, self.fixed_ms + self.per_mac_ms * encoder_macs(cfg))


def link_seconds(nbytes: int, baud: int | None) -> float:
    """Seconds ``nbytes`` take on a UART at ``baud`` (8N1: 10 bits a byte); 0 without a link model."""
    return nbytes * 10.0 / baud if baud else 0.0


# ---------------------------------------------------------------------- engines
class CommandError(Exception):
    """A command the device refuses: becomes an error response with ``code``."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code


def require_fixed_point() -> Any:
    """The fixed-point reference class, or a clear error where this checkout lacks it."""
    try:
        from world_models.backends.devices.fixed_point import FixedPointPredictor
    except ImportError as err:
        raise LeWorldError(
            f"the fpga emulator needs world_models.backends.devices.fixed_point (the fixed-point reference), "
            f"which is missing ({err})"
        ) from None
    return FixedPointPredictor


def _open_engine(kind: str, path: Path) -> Any:
    """The engine behind a kind: numba-q4 for esp32, the fixed-point reference for fpga."""
    if kind == "esp32":
        from world_models.backends.numba_engine import NumbaWorldModel

        return NumbaWorldModel.from_lq40(path)
    return require_fixed_point().from_lq40(path)


def _warm_up(engine: Any, kind: str) -> None:
    """Run every command's kernels once on zeros, so the first real call does not wait for numba to compile
    them (seconds on a busy machine, where a host's deadline is a couple of seconds)."""
    cfg = engine.config
    z = np.zeros((1, cfg.history, cfg.latent_dim), np.float32)
    a = np.zeros((1, cfg.history, cfg.action_dim), np.float32)
    engine.predict(z, a)
    engine.rollout(z, a, a[:, :1])
    if kind == "esp32":
        engine.encode(np.zeros((1, cfg.image_size, cfg.image_size, 3), np.uint8))


CAPABILITIES = {
    "esp32": Capability.PREDICT | Capability.ROLLOUT | Capability.ENCODE | Capability.RESUMABLE_LOAD,
    "fpga": Capability.PREDICT | Capability.ROLLOUT | Capability.RESUMABLE_LOAD | Capability.FIXED_POINT,
}


# ---------------------------------------------------------------------- the device
@dataclass
class SessionState:
    """What the device remembers of one host's session: the last sequence number run and its responses.

    ``cache`` maps a sequence number to ``(command, CRC-32 of the request payload, response frame)``.
    """

    last_seq: int = 0
    cache: OrderedDict[int, tuple[int, int, bytes]] = field(default_factory=OrderedDict)


class Device:
    """The protocol's device side, independent of the link: ``handle`` a frame, ``send`` the answers.

    Args:
        kind: ``esp32`` or ``fpga``.
        model: an ``.lq40`` to hold from the start (as if flashed), or ``None``.
        latency: a :class:`LatencyModel` (default: none).
        baud: the link model's baud rate (for the ACK's time estimate), or ``None``.
        max_frame: the largest frame (decoded bytes) the device takes and sends.
    """

    def __init__(
        self,
        kind: str,
        model: Path | None = None,
        latency: LatencyModel | None = None,
        baud: int | None = None,
        max_frame: int = wire.DEFAULT_MAX_FRAME,
    ) -> None:
        if kind not in KINDS:
            raise LeWorldError(f"unknown device kind {kind!r}; choose one of: {', '.join(KINDS)}")
        self.kind = kind
        self.latency = latency or LatencyModel()
        self.baud = baud
        self.max_frame = max_frame
        self.capabilities = CAPABILITIES[kind]
        self._flash = tempfile.TemporaryDirectory(prefix=f"leworld-{kind}-")
        self.engine: Any = None
        self.config: ModelConfig | None = None
        self.model_size = 0
        self.model_crc = 0
        self.session = 0
        self.sessions: OrderedDict[int, SessionState] = OrderedDict({0: SessionState()})  # oldest first
        self._interrupt = threading.Event()  # set by Emulator.stop: a modelled latency ends early
        self._partial = bytearray()
        self._partial_id: tuple[int, int] | None = None  # (size, crc) of the transfer in progress
        self._started = time.monotonic()
        self.counters: dict[str, int] = {}
        self.lock = threading.RLock()  # handle() holds it; stats() may be read from another thread
        if kind == "fpga":
            require_fixed_point()
        if model is not None:
            try:
                self._install(Path(model).read_bytes(), str(model))
            except (CommandError, OSError) as err:
                raise LeWorldError(f"cannot hold model {model}: {err}") from None

    # ------------------------------------------------------------------ bookkeeping
    @property
    def state(self) -> SessionState:
        """The current session's state (the session of the last HELLO)."""
        return self.sessions[self.session]

    @property
    def last_seq(self) -> int:
        """The last sequence number run in the current session."""
        return self.state.last_seq

    @property
    def cache(self) -> OrderedDict[int, tuple[int, int, bytes]]:
        """The current session's response cache (sequence -> command, payload CRC-32, response frame)."""
        return self.state.cache

    def count(self, key: str, n: int = 1) -> None:
        """Add ``n`` to counter ``key`` (reported by STATS)."""
        self.counters[key] = self.counters.get(key, 0) + n

    def interrupt(self) -> None:
        """End any modelled latency now (the answer is sent at once); used when the emulator stops."""
        self._interrupt.set()

    def stats(self) -> dict[str, int]:
        """Counters: frames in / out / bad, commands executed (in total and per command), duplicates, ..."""
        with self.lock:
            return self._snapshot()

    def _snapshot(self) -> dict[str, int]:
        return {
            **self.counters,
            "model_size": self.model_size,
            "model_crc32": self.model_crc,
            "load_held": len(self._partial),
            "uptime_ms": int((time.monotonic() - self._started) * 1000),
        }

    def hello(self) -> Hello:
        """What this device says in answer to HELLO (version, kind, capabilities, limits, model held).

        The emulators compute in host memory: no fixed scratch arena and no row limit (both 0)."""
        return Hello(
            wire.PROTOCOL_VERSION,
            int(wire.DeviceKind.ESP32 if self.kind == "esp32" else wire.DeviceKind.FPGA),
            int(self.capabilities),
            wire.pack_version(*FIRMWARE),
            self.max_frame,
            MAX_MODEL,
            self.model_size,
            self.model_crc,
            f"leworld {self.kind} emulator",
            cache_depth=CACHE_SIZE,
            cache_sessions=MAX_SESSIONS,
            frac_bits=FRAC_BITS if self.capabilities & Capability.FIXED_POINT else 0,
        )

    def close(self) -> None:
        """Drop the engine and the emulated flash (the temporary folder holding the loaded model)."""
        self.engine = None
        self._flash.cleanup()

    # ------------------------------------------------------------------ frames
    def handle(self, frame: Frame, send: Callable[[bytes], None]) -> None:
        """Answer one request frame (an ACK first for long commands); a repeated request (same sequence
        number, command and payload) is answered from the session's cache without running it again."""
        with self.lock:
            self.count("frames_in")
            if frame.is_response:
                self.count("frames_ignored")  # an echo or another device's frame
                return
            if frame.version != wire.PROTOCOL_VERSION:
                message = (
                    f"protocol version {frame.version} is not spoken here; this device speaks {wire.PROTOCOL_VERSION}"
                )
                send(self._error(frame, ErrorCode.UNSUPPORTED_VERSION, message))
                return
            if frame.command == Command.HELLO:
                send(self._hello(frame))
                return
            state, payload_crc = self.state, zlib.crc32(frame.payload)
            cached = state.cache.get(frame.seq)
            if cached is not None and cached[:2] == (frame.command, payload_crc):
                self.count("duplicates")
                send(cached[2])
                return
            if frame.seq == 0 or frame.seq <= state.last_seq:
                self.count("stale")
                message = f"sequence {frame.seq} is not after the last one run ({state.last_seq}); not run again"
                send(self._error(frame, ErrorCode.STALE_SEQUENCE, message))
                return
            state.last_seq = frame.seq
            response = self._execute(frame, send)
            state.cache[frame.seq] = (frame.command, payload_crc, response)
            while len(state.cache) > CACHE_SIZE:
                state.cache.popitem(last=False)
            send(response)

    def _reply(self, frame: Frame, payload: bytes, flags: int = 0) -> bytes:
        self.count("frames_out")
        return wire.encode_frame(Frame(frame.command, frame.seq, payload, wire.Flag.RESPONSE | flags))

    def _error(self, frame: Frame, code: ErrorCode, message: str) -> bytes:
        self.count("errors")
        return self._reply(frame, wire.pack_error(code, message), wire.Flag.ERROR)

    def _hello(self, frame: Frame) -> bytes:
        self.count("hello")
        if len(frame.payload) != wire.HELLO_REQUEST.size:
            return self._error(frame, ErrorCode.BAD_PAYLOAD, f"HELLO takes {wire.HELLO_REQUEST.size} bytes")
        low, high, _, session = wire.HELLO_REQUEST.unpack(frame.payload)
        if not low <= wire.PROTOCOL_VERSION <= high:
            message = f"the host speaks versions {low} to {high}; this device speaks {wire.PROTOCOL_VERSION}"
            return self._error(frame, ErrorCode.UNSUPPORTED_VERSION, message)
        if session != self.session:  # another host, or one coming back: switch to its session's state
            if session in self.sessions:
                self.sessions.move_to_end(session)
            else:  # a new session: its sequence numbers start again
                self.sessions[session] = SessionState()
                while len(self.sessions) > MAX_SESSIONS:
                    self.sessions.popitem(last=False)
            self.session = session
        return self._reply(frame, self.hello().pack())

    def _execute(self, frame: Frame, send: Callable[[bytes], None]) -> bytes:
        handlers = {
            Command.LOAD_MODEL: self._load,
            Command.PREDICT: self._predict,
            Command.ROLLOUT: self._rollout,
            Command.ENCODE: self._encode,
            Command.STATS: self._stats,
            Command.RESET: self._reset,
        }
        try:
            handler = handlers[Command(frame.command)]
        except (ValueError, KeyError):
            return self._error(frame, ErrorCode.UNKNOWN_COMMAND, f"unknown command {frame.command:#04x}")
        self.count("executed")
        self.count(Command(frame.command).name.lower())

        def ack(ms: float) -> None:
            if ms >= ACK_MIN_MS:
                send(self._reply(frame, wire.ACK_PAYLOAD.pack(min(int(ms), 0xFFFFFFFF)), wire.Flag.ACK))

        try:
            payload = handler(frame.payload, ack)
        except CommandError as err:
            return self._error(frame, err.code, str(err))
        except ProtocolError as err:
            return self._error(frame, ErrorCode.BAD_PAYLOAD, str(err))
        except (ValueError, LeWorldError) as err:  # the engine's own input checks (a value out of range)
            return self._error(frame, ErrorCode.BAD_INPUT, str(err))
        except Exception as err:  # a device answers; it does not crash on a bad request
            return self._error(frame, ErrorCode.INTERNAL, f"{type(err).__name__}: {err}")
        if len(payload) + wire.OVERHEAD > self.max_frame:
            return self._error(frame, ErrorCode.TOO_LARGE, f"the answer ({len(payload)} bytes) exceeds the frame")
        return self._reply(frame, payload)

    # ------------------------------------------------------------------ commands
    def _install(self, blob: bytes, source: str, ack: Callable[[float], None] | None = None) -> None:
        from world_models.files import atomic_write_bytes

        path = Path(self._flash.name) / MODEL_FILE
        atomic_write_bytes(path, blob)
        if ack is not None:
            ack(WARM_UP_MS)  # loading compiles the kernels: let the host wait for it
        try:
            engine = _open_engine(self.kind, path)
        except LeWorldError as err:
            raise CommandError(ErrorCode.BAD_MODEL, f"{source}: {err}") from None
        _warm_up(engine, self.kind)
        self.engine, self.config = engine, engine.config
        self.model_size, self.model_crc = len(blob), zlib.crc32(blob)

    def _load(self, payload: bytes, ack: Callable[[float], None]) -> bytes:
        if len(payload) < wire.LOAD_REQUEST.size:
            raise ProtocolError(f"LOAD_MODEL takes at least {wire.LOAD_REQUEST.size} bytes")
        op, first, crc = wire.LOAD_REQUEST.unpack_from(payload)
        data = payload[wire.LOAD_REQUEST.size :]
        if op == LoadOp.BEGIN:
            if first > MAX_MODEL:
                raise CommandError(ErrorCode.TOO_LARGE, f"a model of {first} bytes; this device holds {MAX_MODEL}")
            if self._partial_id != (first, crc):  # a new transfer; the same one resumes where it stopped
                self._partial_id, self._partial = (first, crc), bytearray()
            return wire.LOAD_RESPONSE.pack(len(self._partial), crc)
        if self._partial_id is None or self._partial_id[1] != crc:
            raise CommandError(ErrorCode.LOAD_OFFSET, f"no transfer of CRC-32 {crc:08x} in progress; send BEGIN")
        size = self._partial_id[0]
        if op == LoadOp.CHUNK:
            if first != len(self._partial):
                raise CommandError(ErrorCode.LOAD_OFFSET, f"chunk at offset {first}; expected {len(self._partial)}")
            if first + len(data) > size:
                raise CommandError(ErrorCode.TOO_LARGE, f"chunk runs past the announced size {size}")
            self._partial += data
            self.count("load_bytes", len(data))
            return wire.LOAD_RESPONSE.pack(len(self._partial), crc)
        if op == LoadOp.COMMIT:
            blob, self._partial, self._partial_id = bytes(self._partial), bytearray(), None
            if len(blob) != size or zlib.crc32(blob) != crc:
                message = f"received {len(blob)} of {size} bytes with CRC-32 {zlib.crc32(blob):08x}, expected {crc:08x}"
                raise CommandError(ErrorCode.LOAD_CHECKSUM, message + "; send BEGIN again")
            self._install(blob, "the loaded model", ack)
            return wire.LOAD_RESPONSE.pack(len(blob), crc)
        raise ProtocolError(f"unknown LOAD_MODEL operation {op}")

    def _model(self) -> tuple[Any, ModelConfig]:
        if self.engine is None or self.config is None:
            raise CommandError(ErrorCode.NO_MODEL, "no model loaded; send LOAD_MODEL")
        return self.engine, self.config

    def _dtypes(self) -> tuple[np.dtype, ...]:
        """The tensor dtypes PREDICT and ROLLOUT take: float32, and int32 fixed point where advertised."""
        if self.capabilities & Capability.FIXED_POINT:
            return (np.dtype(np.float32), np.dtype(np.int32))
        return (np.dtype(np.float32),)

    def _dtype_words(self) -> str:
        return "float32 (or int32 fixed point)" if self.capabilities & Capability.FIXED_POINT else "float32"

    def _histories(self, z: np.ndarray, a: np.ndarray, cfg: ModelConfig) -> tuple[np.ndarray, np.ndarray]:
        if z.dtype != a.dtype or z.dtype not in self._dtypes() or z.ndim != 3 or a.ndim != 3:
            words = self._dtype_words()
            raise CommandError(ErrorCode.BAD_INPUT, f"z_hist and a_hist must be {words} [B, T, D] and [B, T, A]")
        if z.shape[2] != cfg.latent_dim or a.shape[2] != cfg.action_dim or z.shape[:2] != a.shape[:2]:
            message = f"z_hist {list(z.shape)} and a_hist {list(a.shape)}; the model needs [B, T, {cfg.latent_dim}]"
            raise CommandError(ErrorCode.BAD_INPUT, f"{message} and [B, T, {cfg.action_dim}]")
        if z.dtype == np.float32 and not (np.all(np.isfinite(z)) and np.all(np.isfinite(a))):
            raise CommandError(ErrorCode.BAD_INPUT, "z_hist or a_hist holds NaN or inf")
        return z[:, -cfg.history :], a[:, -cfg.history :]

    def _answer_fits(self, *shape: int) -> None:
        """A float32 / int32 answer tensor of ``shape`` fits a frame, else TOO_LARGE before anything runs:
        no ACK, no rows counted (the firmware checks the same, in the same place)."""
        nbytes = 2 + 4 * len(shape) + 4 * math.prod(shape)
        if nbytes + wire.OVERHEAD > self.max_frame:
            raise CommandError(ErrorCode.TOO_LARGE, f"the answer ({nbytes} bytes) exceeds the frame")

    def _respond_after(self, start: float, compute_ms: float, result: np.ndarray) -> bytes:
        if result.dtype != np.int32:
            result = result.astype(np.float32, copy=False)
        payload = wire.pack_tensors(result)
        remaining = compute_ms / 1000.0 - (time.monotonic() - start)
        if remaining > 0:
            self._interrupt.wait(remaining)
        return payload

    def _predict(self, payload: bytes, ack: Callable[[float], None]) -> bytes:
        engine, cfg = self._model()
        z, a = self._histories(*wire.unpack_tensors(payload, 2), cfg)
        self._answer_fits(z.shape[0], cfg.latent_dim)
        ms = self.latency.predict_ms(cfg) * z.shape[0]
        ack(ms + 1000 * link_seconds(z.shape[0] * cfg.latent_dim * 4, self.baud))
        start = time.monotonic()
        self.count("rows_predicted", z.shape[0])
        result = engine.predict_fixed(z, a) if z.dtype == np.int32 else engine.predict(z, a)
        return self._respond_after(start, ms, result)

    def _rollout(self, payload: bytes, ack: Callable[[float], None]) -> bytes:
        engine, cfg = self._model()
        z, a, future = wire.unpack_tensors(payload, 3)
        z, a = self._histories(z, a, cfg)
        if future.dtype != z.dtype or future.ndim != 3 or future.shape[0] != z.shape[0]:
            words = self._dtype_words()
            raise CommandError(ErrorCode.BAD_INPUT, f"a_future must be {words} [{z.shape[0]}, H, {cfg.action_dim}]")
        if future.shape[2] != cfg.action_dim or (future.dtype == np.float32 and not np.all(np.isfinite(future))):
            raise CommandError(ErrorCode.BAD_INPUT, f"a_future must be finite [B, H, {cfg.action_dim}]")
        self._answer_fits(z.shape[0], future.shape[1], cfg.latent_dim)
        rows = z.shape[0] * future.shape[1]
        ms = self.latency.predict_ms(cfg) * rows
        ack(ms + 1000 * link_seconds(rows * cfg.latent_dim * 4, self.baud))
        start = time.monotonic()
        self.count("rows_predicted", rows)
        fixed = z.dtype == np.int32
        result = engine.rollout_fixed(z, a, future) if fixed else engine.rollout(z, a, future)
        return self._respond_after(start, ms, result)

    def _encode(self, payload: bytes, ack: Callable[[float], None]) -> bytes:
        if not self.capabilities & Capability.ENCODE:
            raise CommandError(ErrorCode.UNSUPPORTED, f"the {self.kind} device does not encode frames")
        engine, cfg = self._model()
        (pixels,) = wire.unpack_tensors(payload, 1)
        size = cfg.image_size
        if pixels.dtype != np.uint8 or pixels.ndim != 4 or pixels.shape[1:] != (size, size, 3):
            raise CommandError(ErrorCode.BAD_INPUT, f"pixels must be uint8 [B, {size}, {size}, 3]")
        self._answer_fits(pixels.shape[0], cfg.latent_dim)
        ms = self.latency.encode_ms(cfg) * pixels.shape[0]
        ack(ms + 1000 * link_seconds(pixels.shape[0] * cfg.latent_dim * 4, self.baud))
        start = time.monotonic()
        self.count("rows_encoded", pixels.shape[0])
        return self._respond_after(start, ms, engine.encode(pixels))

    def _stats(self, payload: bytes, ack: Callable[[float], None]) -> bytes:
        if payload:
            raise ProtocolError("STATS takes no payload")
        return wire.pack_stats(self.stats())

    def _reset(self, payload: bytes, ack: Callable[[float], None]) -> bytes:
        if len(payload) != wire.RESET_REQUEST.size:
            raise ProtocolError(f"RESET takes {wire.RESET_REQUEST.size} byte")
        (flags,) = wire.RESET_REQUEST.unpack(payload)
        for state in self.sessions.values():  # every session's responses (not their sequence numbers);
            state.cache.clear()  # this command's own answer is cached again by handle()
        self._partial, self._partial_id = bytearray(), None
        self.counters.clear()
        self._started = time.monotonic()
        if flags & wire.RESET_UNLOAD:
            self.engine, self.config, self.model_size, self.model_crc = None, None, 0, 0
        return b""


# ---------------------------------------------------------------------- the server
class Emulator:
    """A :class:`Device` served on a transport, in a background thread (:meth:`start`) or in the foreground.

    ``baud``: the link model (every frame waits its time on a UART at this rate), or ``None``.
    """

    def __init__(self, device: Device, transport: Transport, baud: int | None = None) -> None:
        self.device = device
        self.transport = transport
        self.baud = baud
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def path(self) -> str:
        """What a host passes as ``port=``: a ``/dev/pts/N`` path or a ``socket://`` URL."""
        return self.transport.path

    def _send(self, data: bytes) -> None:
        self._stop.wait(link_seconds(len(data), self.baud))
        self.transport.send(data)

    def serve_forever(self) -> None:
        """Answer frames until :meth:`stop` or until the transport closes."""
        decoder = wire.FrameDecoder(self.device.max_frame)
        generation = self.transport.generation
        while not self._stop.is_set():
            data = self.transport.recv(0.05)
            if data is None:
                break
            if self.transport.generation != generation:
                generation = self.transport.generation
                decoder.reset()
            if not data:
                continue
            decoder.feed(data)
            while True:
                try:
                    frame = decoder.next_frame()
                except ProtocolError:
                    with self.device.lock:
                        self.device.count("frames_bad")
                    continue
                if frame is None:
                    break
                self._stop.wait(link_seconds(wire.max_encoded_size(len(frame.payload) + wire.OVERHEAD) + 1, self.baud))
                self.device.handle(frame, self._send)

    def start(self) -> Emulator:
        """Serve in a daemon thread; returns ``self``."""
        self._thread = threading.Thread(target=self.serve_forever, name=f"{self.device.kind}-emulator", daemon=True)
        self._thread.start()
        return self

    @property
    def alive(self) -> bool:
        """Whether the background thread (:meth:`start`) is serving."""
        return self._thread is not None and self._thread.is_alive()

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> bool:
        """Stop serving, close the transport and drop the device's state; True when all was closed.

        A command in progress has its modelled latency cut short. If the serving thread still runs
        after ``timeout`` seconds (a long computation), the transport and the device are left open
        for it, since closing them under it could make it write to a reused file descriptor: a
        :class:`RuntimeWarning` says so, and this returns False (call again to retry).
        """
        self._stop.set()
        self.device.interrupt()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=timeout)
            if thread.is_alive():
                warnings.warn(
                    f"the {self.device.kind} emulator on {self.path} is still running a command after "
                    f"{timeout:g} s; its port stays open until it ends",
                    RuntimeWarning,
                    stacklevel=2,
                )
                return False
        self.transport.close()
        self.device.close()
        return True

    def __enter__(self) -> Emulator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def make_emulator(
    kind: str,
    model: str | Path | None = None,
    latency: str = "none",
    baud: int | None = None,
    tcp: int | None = None,
    faults: Any = None,
    max_frame: int = wire.DEFAULT_MAX_FRAME,
) -> Emulator:
    """An emulator (not yet started) on a new pty, or on TCP port ``tcp`` (0: any free port).

    ``model``: a shipped name, model folder or ``.lq40`` to hold from the start; ``faults``: a
    :class:`~world_models.backends.devices.faults.FaultPlan` to wrap the transport in.
    """
    if baud is not None and baud < 1:
        raise LeWorldError(f"baud must be a positive number of bits per second, got {baud}")
    if faults is not None and getattr(faults, "disconnect_after", None) is not None and tcp is None:
        raise LeWorldError(
            "FaultPlan(disconnect_after=...) drops the host's connection, which only a TCP emulator has: "
            "pass tcp=0 (a pty has no connection to drop; use die_after for a device that goes away)"
        )
    path = None
    if model is not None:
        path = resolve_lq40(model)
    device = Device(kind, path, LatencyModel.preset(latency), baud, max_frame)
    try:
        transport: Transport = PtyTransport() if tcp is None else TcpTransport(tcp)
    except BaseException:
        device.close()
        raise
    if faults is not None:
        from world_models.backends.devices.faults import FaultyTransport

        transport = FaultyTransport(transport, faults, wire.max_encoded_size(max_frame) + 1)
    return Emulator(device, transport, baud)
