"""A fault-injecting link for the emulators: drop, corrupt, delay and duplicate frames, or die mid-call.

:class:`FaultyTransport` wraps a transport and applies a :class:`FaultPlan` to
whole frames in both directions (frames end at the 0x00 delimiter, so they
can be found without decoding them). What happens to a frame depends only on
the plan's seed, its direction and its number in that direction
(:meth:`FaultPlan.fate`), never on timing: frame 7 from the host is dropped
in every run, however many retries the frames before it took.

:class:`FaultRelay` applies a plan to any device behind a port (the C firmware, QEMU, a board): it
serves a new pty (or TCP port) for the host and forwards the frames, mistreated, to the device's port.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from world_models.backends.devices.transports import PtyTransport, TcpTransport, Transport
from world_models.errors import ArgumentError, LeWorldError

DIRECTIONS = {"in": 0, "out": 1}  # host to device, device to host
FAULTS = ("drop", "corrupt", "delay", "duplicate")
DEFAULT_MAX_PENDING = 1 << 20  # bytes held while looking for a delimiter, when the wrapper is not told


@dataclass(frozen=True)
class FaultPlan:
    """Which faults to inject, per frame.

    Attributes:
        drop: probability that a frame vanishes.
        corrupt: probability that one byte of a frame is flipped (its CRC then fails).
        duplicate: probability that a frame arrives twice.
        delay: probability that a frame is held for ``delay_s`` first.
        delay_s: how long a delayed frame is held.
        directions: ``"in"`` (host to device), ``"out"`` (device to host) or ``"both"``.
        skip: the first frames each way that pass untouched (a HELLO, say).
        die_after: the device dies when request frame number ``die_after`` (1-based, counting
            every frame in) arrives: that frame is swallowed and the transport closes for good.
        disconnect_after: as ``die_after``, but only the host's connection drops (TCP only); the
            device keeps listening and its state (a transient fault).
        seed: the generator's seed.
    """

    drop: float = 0.0
    corrupt: float = 0.0
    duplicate: float = 0.0
    delay: float = 0.0
    delay_s: float = 0.1
    directions: str = "both"
    skip: int = 0
    die_after: int | None = None
    disconnect_after: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("drop", "corrupt", "duplicate", "delay"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ArgumentError(f"{name} must be a probability in [0, 1], got {getattr(self, name)}")
        if self.directions not in ("in", "out", "both"):
            raise ArgumentError(f"directions must be 'in', 'out' or 'both', got {self.directions!r}")
        if self.die_after is not None and self.disconnect_after is not None:
            raise ArgumentError("give die_after or disconnect_after, not both")

    def rng(self, direction: str, number: int) -> np.random.Generator:
        """The generator of frame ``number`` (1-based) in ``direction``: seeded by (seed, direction, number)."""
        return np.random.default_rng((self.seed, DIRECTIONS[direction], number))

    def fate(self, direction: str, number: int) -> frozenset[str]:
        """The faults frame ``number`` (1-based, every frame that way counted) in ``direction`` gets:
        a subset of ``drop`` (alone), ``corrupt``, ``delay`` and ``duplicate``. A pure function of the
        plan, the direction and the number."""
        if self.directions not in ("both", direction) or number <= self.skip:
            return frozenset()
        drop, corrupt, delay, duplicate = self.rng(direction, number).random(4)
        if drop < self.drop:
            return frozenset({"drop"})
        chosen = zip(FAULTS[1:], (corrupt < self.corrupt, delay < self.delay, duplicate < self.duplicate), strict=True)
        return frozenset(name for name, hit in chosen if hit)


class FaultyTransport:
    """A transport that mistreats frames as ``plan`` says; :attr:`injected` counts what it did.

    ``max_pending``: the most bytes of an incoming frame held while waiting for its delimiter; beyond
    that they are passed on untouched (the device's decoder drops an oversize frame anyway).
    """

    def __init__(self, inner: Transport, plan: FaultPlan, max_pending: int = DEFAULT_MAX_PENDING) -> None:
        if plan.disconnect_after is not None and not hasattr(inner, "drop_connection"):
            raise ArgumentError(
                "FaultPlan(disconnect_after=...) needs a transport with connections (TCP); "
                f"{type(inner).__name__} has none (use die_after for a device that goes away)"
            )
        self.inner = inner
        self.plan = plan
        self.path = inner.path
        self.max_pending = max_pending
        self._pending = bytearray()  # an incoming frame not yet complete
        self._frames = {"in": 0, "out": 0}
        self._dead = False
        self._lock = threading.Lock()  # a relay mistreats the two directions in two threads
        self.injected = {"drop": 0, "corrupt": 0, "duplicate": 0, "delay": 0, "die": 0, "disconnect": 0}

    def _tally(self, fault: str) -> None:
        with self._lock:
            self.injected[fault] += 1

    @property
    def generation(self) -> int:
        """The inner transport's connection generation."""
        return self.inner.generation

    def _mistreat(self, frame: bytes, direction: str) -> list[bytes]:
        """What becomes of one frame (its delimiter included): zero, one or two frames, maybe late."""
        with self._lock:
            self._frames[direction] += 1
            number = self._frames[direction]
        fate = self.plan.fate(direction, number)
        if "drop" in fate:
            self._tally("drop")
            return []
        if "corrupt" in fate and len(frame) > 1:
            self._tally("corrupt")
            rng = self.plan.rng(direction, number)
            rng.random(4)  # the draws fate() used
            spoilt = bytearray(frame)
            i = int(rng.integers(0, len(frame) - 1))  # any byte but the delimiter
            flipped = spoilt[i] ^ int(rng.integers(1, 256))
            spoilt[i] = flipped or (0xFF if spoilt[i] != 0xFF else 0x01)  # no new zero: the framing holds
            frame = bytes(spoilt)
        if "delay" in fate:
            self._tally("delay")
            time.sleep(self.plan.delay_s)
        if "duplicate" in fate:
            self._tally("duplicate")
            return [frame, frame]
        return [frame]

    def recv(self, timeout: float) -> bytes | None:
        """The inner transport's bytes, each complete frame mistreated as planned (``None``: closed)."""
        if self._dead:
            return None
        data = self.inner.recv(timeout)
        if not data:
            return data
        self._pending += data
        out = bytearray()
        while (end := self._pending.find(b"\x00")) >= 0:
            frame = bytes(self._pending[: end + 1])
            del self._pending[: end + 1]
            if frame == b"\x00":  # a lone delimiter (a host resynchronising) is not a frame
                out += frame
                continue
            number = self._frames["in"] + 1
            if self.plan.die_after is not None and number >= self.plan.die_after:
                self._tally("die")
                self._dead = True
                self.inner.close()
                return None
            if self.plan.disconnect_after is not None and number == self.plan.disconnect_after:
                with self._lock:
                    self._frames["in"] += 1
                self._tally("disconnect")
                self._pending.clear()
                self.inner.drop_connection()  # type: ignore[attr-defined]  # checked in __init__
                return bytes(out)
            for piece in self._mistreat(frame, "in"):
                out += piece
        if len(self._pending) > self.max_pending:  # no frame is this long: pass the bytes on as they are
            out += self._pending
            self._pending.clear()
        return bytes(out)

    def send(self, data: bytes) -> None:
        """Send one frame (the emulator sends whole frames) as planned: dropped, spoilt, late or twice."""
        if self._dead:
            return
        for piece in self._mistreat(data, "out"):
            self.inner.send(piece)

    def close(self) -> None:
        """Close for good (the inner transport too)."""
        self._dead = True
        self.inner.close()


class FaultRelay:
    """A faulty link in front of a device's port: hosts open :attr:`path`, frames reach ``target`` as ``plan`` says.

    The relay serves a new pty (or, with ``tcp``, a TCP port of 127.0.0.1: ``disconnect_after`` then drops
    only the host's connection) wrapped in a :class:`FaultyTransport`, and forwards what passes to the
    device at ``target`` (a device path such as the C firmware's ``/dev/pts/N``, or any pyserial URL), in
    two background threads, one a direction. Frames are numbered as the Python emulators number them,
    so a plan's faults fall on the same frames. ``die_after`` closes the host's side for good (the device
    keeps running); :attr:`injected` counts what was done. Inside :meth:`paused` the relay leaves the
    device's port alone, so another link may talk to the device directly (its STATS, say).

    Args:
        target: the device's port.
        plan: the faults.
        tcp: serve on this TCP port (0: any free one) instead of a pty.
        max_frame: the largest frame (decoded bytes) that travels, for the bound on a partial frame.
    """

    def __init__(self, target: str, plan: FaultPlan, tcp: int | None = None, max_frame: int = 65536) -> None:
        import serial

        from world_models.backends.devices.protocol import max_encoded_size

        if plan.disconnect_after is not None and tcp is None:
            raise ArgumentError("FaultPlan(disconnect_after=...) needs a TCP relay: pass tcp=0")
        try:
            self._device: Any = serial.serial_for_url(target, timeout=0.05, write_timeout=5.0)
        except (serial.SerialException, ValueError, OSError) as err:
            raise LeWorldError(f"the fault relay cannot open the device's port {target!r} ({err})") from None
        try:
            front: Transport = PtyTransport() if tcp is None else TcpTransport(tcp)
        except BaseException:
            self._device.close()
            raise
        self.target = target
        self.transport = FaultyTransport(front, plan, max_encoded_size(max_frame) + 1)
        self.path = front.path
        self._stop = threading.Event()
        self._pause = threading.Event()
        self._idle = [threading.Event(), threading.Event()]  # each thread's: it is not touching the port
        self._threads = [
            threading.Thread(target=self._to_device, name="fault-relay-in", daemon=True),
            threading.Thread(target=self._to_host, name="fault-relay-out", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    @property
    def injected(self) -> dict[str, int]:
        """Faults done so far, by kind (:attr:`FaultyTransport.injected`)."""
        return self.transport.injected

    def _wait_while_paused(self, idle: threading.Event) -> None:
        while self._pause.is_set() and not self._stop.is_set():
            idle.set()
            time.sleep(0.005)
        idle.clear()

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Stop forwarding (both ways) while the block runs; frames the host sends meanwhile wait."""
        self._pause.set()
        try:
            for idle, thread in zip(self._idle, self._threads, strict=True):
                while thread.is_alive() and not idle.wait(0.05):
                    pass
            yield
        finally:
            self._pause.clear()

    def _to_device(self) -> None:
        while not self._stop.is_set():
            self._wait_while_paused(self._idle[0])
            data = self.transport.recv(0.05)
            if data is None:  # the host's side closed for good (die_after, or stop)
                return
            if data:
                try:
                    self._device.write(data)
                except Exception:  # the device went away: what it misses is lost, as on a wire
                    return

    def _to_host(self) -> None:
        pending = bytearray()
        while not self._stop.is_set():
            self._wait_while_paused(self._idle[1])
            try:
                data = self._device.read(max(1, self._device.in_waiting))
            except Exception:
                return
            pending += data
            while (end := pending.find(b"\x00")) >= 0:
                frame = bytes(pending[: end + 1])
                del pending[: end + 1]
                if frame == b"\x00":  # a lone delimiter is not a frame: passed on, not counted
                    self.transport.inner.send(frame)
                else:
                    self.transport.send(frame)

    def stop(self) -> None:
        """Stop forwarding and close both sides (idempotent)."""
        self._stop.set()
        self.transport.close()
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(timeout=5.0)
        with contextlib.suppress(Exception):
            self._device.close()

    def __enter__(self) -> FaultRelay:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
