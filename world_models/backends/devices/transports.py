"""The device side of a link: a pseudo-terminal or a TCP port, read with a deadline, written with one.

A transport moves bytes only; :class:`~world_models.backends.devices.emulator.Emulator`
finds the frames. ``recv`` returns ``b""`` when nothing came in time and
``None`` once the transport is closed for good; ``generation`` changes when a
new host connects (a partial frame from the old one is then dropped).
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import time
import tty
from typing import Protocol

from world_models.errors import LeWorldError

SEND_TIMEOUT_S = 5.0  # a host that reads nothing for this long loses the frame
READ_SIZE = 1 << 16


class Transport(Protocol):
    """What the emulator needs from a link."""

    path: str
    generation: int

    def recv(self, timeout: float) -> bytes | None:
        """Bytes that came in within ``timeout`` seconds: ``b""`` when none did, ``None`` once closed for good."""
        ...

    def send(self, data: bytes) -> None:
        """Send ``data`` to the host; bytes nobody takes within :data:`SEND_TIMEOUT_S` are lost, as on a wire."""
        ...

    def close(self) -> None:
        """Close the link for good (idempotent)."""
        ...


class PtyTransport:
    """A pseudo-terminal: the emulator holds the master side; hosts open :attr:`path` (``/dev/pts/N``).

    The emulator also keeps the slave side open, so a host closing and reopening the
    port (a reconnect) does not hang up the terminal. The slave is raw: no echo, no
    line discipline.
    """

    def __init__(self) -> None:
        try:
            self._master, self._slave = os.openpty()
        except OSError as err:
            raise LeWorldError(
                f"cannot open a pseudo-terminal for the emulator ({err.strerror or err}); "
                "serve on a TCP port instead (--tcp 0, or make_emulator(..., tcp=0))"
            ) from None
        try:
            tty.setraw(self._slave)
            os.set_blocking(self._master, False)
            self.path = os.ttyname(self._slave)
        except OSError as err:
            for fd in (self._master, self._slave):
                with contextlib.suppress(OSError):
                    os.close(fd)
            raise LeWorldError(f"cannot set up the emulator's pseudo-terminal ({err.strerror or err})") from None
        self.generation = 0
        self._closed = False

    def recv(self, timeout: float) -> bytes | None:
        if self._closed:
            return None
        try:
            ready, _, _ = select.select([self._master], [], [], timeout)
            return os.read(self._master, READ_SIZE) if ready else b""
        except BlockingIOError:
            return b""
        except (OSError, ValueError):
            return None if self._closed else b""

    def send(self, data: bytes) -> None:
        view, deadline = memoryview(data), time.monotonic() + SEND_TIMEOUT_S
        while view and not self._closed:
            try:
                view = view[os.write(self._master, view) :]
            except BlockingIOError:
                if time.monotonic() > deadline:
                    return  # nobody reads: the frame is lost, as on a wire
                with contextlib.suppress(OSError, ValueError):
                    select.select([], [self._master], [], 0.05)
            except (OSError, ValueError):
                return

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            for fd in (self._master, self._slave):
                with contextlib.suppress(OSError):
                    os.close(fd)


class TcpTransport:
    """A TCP port on ``host`` (default loopback); hosts connect with ``socket://HOST:PORT``.

    One host at a time: a new connection replaces the old one. Port 0 picks a free port.
    """

    def __init__(self, port: int = 0, host: str = "127.0.0.1") -> None:
        try:
            self._listener = socket.create_server((host, port))
        except OSError as err:
            raise LeWorldError(f"cannot listen on TCP port {port} of {host} ({err.strerror or err})") from None
        self.port = self._listener.getsockname()[1]
        self.path = f"socket://{host}:{self.port}"
        self.generation = 0
        self._conn: socket.socket | None = None
        self._closed = False

    def recv(self, timeout: float) -> bytes | None:
        if self._closed:
            return None
        watched = [self._listener] + ([self._conn] if self._conn is not None else [])
        try:
            ready, _, _ = select.select(watched, [], [], timeout)
        except (OSError, ValueError):
            return None if self._closed else b""
        if self._listener in ready:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return None if self._closed else b""
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn.settimeout(SEND_TIMEOUT_S)
            self.drop_connection()
            self._conn = conn
            self.generation += 1
            return b""
        if self._conn is not None and self._conn in ready:
            try:
                data = self._conn.recv(READ_SIZE)
            except OSError:
                data = b""
            if not data:
                self.drop_connection()
            return data
        return b""

    def send(self, data: bytes) -> None:
        if self._conn is None:
            return
        try:
            self._conn.sendall(data)
        except OSError:
            self.drop_connection()

    def drop_connection(self) -> None:
        """Close the current host's connection and keep listening (a transient link failure)."""
        if self._conn is not None:
            with contextlib.suppress(OSError):
                self._conn.close()
            self._conn = None

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.drop_connection()
            with contextlib.suppress(OSError):
                self._listener.close()
