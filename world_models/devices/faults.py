"""A fault-injecting link for the emulators: drop, corrupt, delay and duplicate frames, or die mid-call.

:class:`FaultyTransport` wraps a transport and applies a :class:`FaultPlan` to
whole frames in both directions (frames end at the 0x00 delimiter, so they
can be found without decoding them). Every random choice comes from one
generator seeded by the plan: the same plan and the same traffic give the
same faults.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from world_models.devices.transports import Transport


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
                raise ValueError(f"{name} must be a probability in [0, 1], got {getattr(self, name)}")
        if self.directions not in ("in", "out", "both"):
            raise ValueError(f"directions must be 'in', 'out' or 'both', got {self.directions!r}")


class FaultyTransport:
    """A transport that mistreats frames as ``plan`` says; :attr:`injected` counts what it did."""

    def __init__(self, inner: Transport, plan: FaultPlan) -> None:
        self.inner = inner
        self.plan = plan
        self.path = inner.path
        self._rng = np.random.default_rng(plan.seed)
        self._pending = bytearray()  # an incoming frame not yet complete
        self._frames = {"in": 0, "out": 0}
        self._dead = False
        self.injected = {"drop": 0, "corrupt": 0, "duplicate": 0, "delay": 0, "die": 0, "disconnect": 0}

    @property
    def generation(self) -> int:
        return self.inner.generation

    def _applies(self, direction: str) -> bool:
        return self.plan.directions in ("both", direction) and self._frames[direction] > self.plan.skip

    def _mistreat(self, frame: bytes, direction: str) -> list[bytes]:
        """What becomes of one frame (its delimiter included): zero, one or two frames, maybe late."""
        self._frames[direction] += 1
        if not self._applies(direction):
            return [frame]
        plan, rng = self.plan, self._rng
        draws = rng.random(4)
        if draws[0] < plan.drop:
            self.injected["drop"] += 1
            return []
        if draws[1] < plan.corrupt and len(frame) > 1:
            self.injected["corrupt"] += 1
            spoilt = bytearray(frame)
            i = int(rng.integers(0, len(frame) - 1))  # any byte but the delimiter
            flipped = spoilt[i] ^ int(rng.integers(1, 256))
            spoilt[i] = flipped or (0xFF if spoilt[i] != 0xFF else 0x01)  # no new zero: the framing holds
            frame = bytes(spoilt)
        if draws[2] < plan.delay:
            self.injected["delay"] += 1
            time.sleep(plan.delay_s)
        if draws[3] < plan.duplicate:
            self.injected["duplicate"] += 1
            return [frame, frame]
        return [frame]

    def recv(self, timeout: float) -> bytes | None:
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
                self.injected["die"] += 1
                self._dead = True
                self.inner.close()
                return None
            if self.plan.disconnect_after is not None and number == self.plan.disconnect_after:
                self._frames["in"] += 1
                self.injected["disconnect"] += 1
                self._pending.clear()
                drop = getattr(self.inner, "drop_connection", None)
                if drop is None:
                    raise ValueError("disconnect_after needs a transport with connections (TCP)")
                drop()
                return bytes(out)
            for piece in self._mistreat(frame, "in"):
                out += piece
        return bytes(out)

    def send(self, data: bytes) -> None:
        if self._dead:
            return
        for piece in self._mistreat(data, "out"):
            self.inner.send(piece)

    def close(self) -> None:
        self._dead = True
        self.inner.close()
