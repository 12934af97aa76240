"""The C firmware (``firmware/``) as a device on this machine: built on demand, served on a pty.

``impl="c"`` is the host build, ``firmware/build``'s ``leworld-fw``: the firmware's portable core
(the protocol state machine and the model kernels, the same C that runs on the boards) behind a
pseudo-terminal. ``impl="qemu"`` runs the rv32 build under QEMU
(:func:`world_models.backends.devices.qemu.start_qemu`). Either way hosts open :attr:`FirmwareDevice.path`
exactly as they open a Python emulator's, so tests and ``leworld device emulate --impl c|qemu`` can
swap one for the other::

    with start_firmware("esp32", "c", "pusht-tiny") as device:
        env = gym.make("LeWorld-PushT-v0", backend="esp32", port=device.path)

:func:`build_firmware` runs ``make -C firmware BUILD=<cache>`` when the binary is missing or a source
is newer than it; the cache is ``$LEWORLD_FIRMWARE_BUILD`` or ``~/.cache/leworld/firmware/host``.
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import shlex
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO

from world_models.backends.devices.build import FIRMWARE_DIR, cache_build_dir, require_tool, run_make
from world_models.errors import LeWorldError

BUILD_ENV = "LEWORLD_FIRMWARE_BUILD"  # where the host build goes (default: the user's cache folder)
BINARY = "leworld-fw"
IMPLS = ("c", "qemu")
KINDS = ("esp32", "fpga")
SOURCE_DIRS = ("core", "host", "include")
START_TIMEOUT_S = 30.0  # the firmware prints its port within this long, or it failed to start
STOP_TIMEOUT_S = 10.0
FIRST_LINE = re.compile(r"^(esp32|fpga) emulator on (\S+)$")
STOPPED_LINE = re.compile(r"^stopped after (\d+) commands$")


def default_build_dir() -> Path:
    """Where the host build goes: ``$LEWORLD_FIRMWARE_BUILD``, else ``~/.cache/leworld/firmware/host``."""
    return cache_build_dir(BUILD_ENV, "host")


def _sources(root: Path) -> list[Path]:
    files = [root / "Makefile"]
    for folder in SOURCE_DIRS:
        files += sorted(p for p in (root / folder).rglob("*") if p.suffix in (".c", ".h"))
    return [p for p in files if p.is_file()]


def _up_to_date(binary: Path, root: Path) -> bool:
    if not binary.is_file():
        return False
    built = binary.stat().st_mtime
    return all(source.stat().st_mtime <= built for source in _sources(root))


def build_firmware(build_dir: str | Path | None = None, root: Path = FIRMWARE_DIR) -> Path:
    """The host firmware binary ``<build_dir>/leworld-fw``, (re)built with ``make`` when it is missing or
    any source under ``firmware/`` is newer.

    Raises:
        LeWorldError: no ``firmware/`` sources, no C compiler (``$CC`` or ``cc``) or ``make`` on PATH,
            or a build that fails (the first error line is quoted).
    """
    if not (root / "Makefile").is_file():
        raise LeWorldError(f"the firmware sources are missing: no {root / 'Makefile'}")
    build = Path(build_dir) if build_dir is not None else default_build_dir()
    binary = build.resolve() / BINARY
    # Checked without the lock: the Makefile links to a temporary name and renames it into place, so a
    # build running in another process leaves the old binary or the whole new one here, never half of one.
    if _up_to_date(binary, root):
        return binary
    compiler = shlex.split(os.environ.get("CC") or "cc") or ["cc"]
    require_tool(compiler[0], "building the firmware (the C compiler; set CC for another)", "gcc")
    make = require_tool("make", "building the firmware", "make")
    build.mkdir(parents=True, exist_ok=True)
    command = [make, "-C", str(root), f"BUILD={binary.parent}", str(binary)]
    run_make(command, binary.parent, "building the firmware", binary)  # make skips what another process built
    return binary


def _first_line(process: subprocess.Popen, what: str, timeout: float = START_TIMEOUT_S) -> str:
    """The first line ``process`` prints, within ``timeout``; a clear error if it exits or stays silent."""
    stdout: IO[str] = process.stdout  # type: ignore[assignment]
    ready, _, _ = select.select([stdout], [], [], timeout)
    line = stdout.readline() if ready else ""
    if line:
        return line.strip()
    if process.poll() is None:
        process.kill()
    _, err = process.communicate(timeout=STOP_TIMEOUT_S)
    problem = (err or "").strip().splitlines()
    reason = problem[-1] if problem else f"it printed nothing in {timeout:g} s"
    raise LeWorldError(f"the {what} did not start: {reason}")


class FirmwareDevice:
    """A firmware process serving the device protocol on a pty.

    Attributes:
        path: what a host passes as ``port=`` (``/dev/pts/N``).
        kind: ``esp32`` or ``fpga``.
        impl: ``c`` (the host build) or ``qemu``.
        process: the running process.
        executed: commands the device ran, as it reported when it stopped (``None`` before, or from QEMU).
    """

    def __init__(self, process: subprocess.Popen, path: str, kind: str, impl: str) -> None:
        self.process = process
        self.path = path
        self.kind = kind
        self.impl = impl
        self.executed: int | None = None

    @property
    def alive(self) -> bool:
        """Whether the process still runs."""
        return self.process.poll() is None

    def stats(self, timeout: float = 2.0) -> dict[str, int]:
        """The device's counters, over a link of its own (a HELLO makes that link's session current: call it
        when no other host is in the middle of calls)."""
        from world_models.backends.devices.client import DeviceLink

        with DeviceLink(self.path, timeout=timeout, retries=1) as link:
            return link.stats()

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> bool:
        """SIGTERM, then SIGKILL after ``timeout`` s; True when it exited by itself (idempotent)."""
        process = self.process
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
        clean = True
        try:
            out, _ = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            out, _ = process.communicate()
            clean = False
        except ValueError:  # communicate() was already called: the streams are closed
            out = ""
        for line in (out or "").splitlines():
            match = STOPPED_LINE.match(line.strip())
            if match:
                self.executed = int(match.group(1))
        return clean and process.returncode == 0

    def __enter__(self) -> FirmwareDevice:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"FirmwareDevice(kind={self.kind!r}, impl={self.impl!r}, path={self.path!r})"


def _start_host_build(
    kind: str, model: Path | None, args: Sequence[str], build_dir: str | Path | None
) -> FirmwareDevice:
    binary = build_firmware(build_dir)
    command = [str(binary), "--kind", kind, "--exit-with-stdin", *args]
    if model is not None:
        command += ["--model", str(model)]
    process = subprocess.Popen(
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        line = _first_line(process, f"{kind} firmware ({binary})")
        match = FIRST_LINE.match(line)
        if match is None or match.group(1) != kind:
            raise LeWorldError(f"the {kind} firmware ({binary}) printed {line!r}, expected '{kind} emulator on PATH'")
    except BaseException:
        if process.poll() is None:
            process.kill()
            process.communicate()
        raise
    return FirmwareDevice(process, match.group(2), kind, "c")


def _start_qemu(kind: str, model: Path | None) -> FirmwareDevice:
    try:
        from world_models.backends.devices.qemu import start_qemu
    except ImportError as err:
        raise LeWorldError(
            f"--impl qemu needs world_models.backends.devices.qemu (the QEMU rv32 platform), which is missing ({err})"
        ) from None
    process, path = start_qemu(kind, model)
    return FirmwareDevice(process, path, kind, "qemu")


def start_firmware(
    kind: str,
    impl: str = "c",
    model: str | Path | None = None,
    args: Sequence[str] = (),
    build_dir: str | Path | None = None,
) -> FirmwareDevice:
    """Start the firmware as an ``esp32`` or ``fpga`` device on a new pty; returns it serving.

    Args:
        kind: ``esp32`` (float path, ENCODE) or ``fpga`` (fixed point, int32 tensors, no ENCODE).
        impl: ``c`` (the host build, built on demand) or ``qemu`` (the rv32 build under QEMU).
        model: a shipped name, model folder or ``.lq40`` to hold from the start; ``None``: the first host
            sends it.
        args: more ``leworld-fw`` options for the host build (``--max-frame N``, ``--scratch N``,
            ``--cache N``, ``--max-rows N``, ``--row-us N``).
        build_dir: where the host build goes (default :func:`default_build_dir`).

    Raises:
        LeWorldError: an unknown kind or impl, no compiler, a failed build or start, no qemu module.
    """
    if kind not in KINDS:
        raise LeWorldError(f"unknown device kind {kind!r}; choose one of: {', '.join(KINDS)}")
    if impl not in IMPLS:
        raise LeWorldError(f"unknown firmware implementation {impl!r}; choose one of: {', '.join(IMPLS)}")
    path = None
    if model is not None:
        from world_models.locate import resolve_lq40

        path = resolve_lq40(model)
    if impl == "qemu":
        if args:
            raise LeWorldError(f"firmware options {list(args)} are for the host build (impl 'c'), not qemu")
        return _start_qemu(kind, path)
    return _start_host_build(kind, path, args, build_dir)


def wait_until_stopped(device: FirmwareDevice, poll_s: float = 0.2) -> None:
    """Block while the firmware runs (a KeyboardInterrupt ends the wait)."""
    while device.alive:
        time.sleep(poll_s)
