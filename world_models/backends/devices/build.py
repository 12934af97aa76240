"""Building the C firmware: where builds go, the tools they need, ``make`` under a lock.

Shared by the host build (:mod:`world_models.backends.devices.firmware`) and the rv32 build
(:mod:`world_models.backends.devices.qemu`).
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

from world_models.errors import LeWorldError

FIRMWARE_DIR = Path(__file__).resolve().parents[3] / "firmware"
BUILD_TIMEOUT_S = 600.0


def cache_build_dir(env: str, name: str) -> Path:
    """``$<env>``, else ``$XDG_CACHE_HOME/leworld/firmware/<name>`` (``~/.cache`` by default)."""
    if os.environ.get(env):
        return Path(os.environ[env])
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "leworld" / "firmware" / name


def require_tool(tool: str, what: str, package: str) -> str:
    """The path of ``tool``, or a LeWorldError saying what needs it and the Debian package that has it."""
    path = shutil.which(tool)
    if path is None:
        raise LeWorldError(f"{what} needs {tool!r}, which is not on PATH (Debian: apt-get install {package})")
    return path


@contextlib.contextmanager
def _build_lock(build: Path) -> Iterator[None]:
    """One build at a time per folder (tests in several processes may ask at once)."""
    import fcntl

    with open(build / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def run_make(command: list[str], build: Path, what: str, output: Path, hint: str = "") -> None:
    """Run a ``make`` command under ``build``'s lock (one build per folder at a time; make itself skips
    what is up to date) and check that it made ``output``.

    Raises:
        LeWorldError: ``what`` failed or took over ``BUILD_TIMEOUT_S``, quoting the first error line, then
            ``hint`` where the line mentions ``picolibc``.
    """
    with _build_lock(build):
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S, check=False)
        except subprocess.TimeoutExpired:
            raise LeWorldError(f"{what} took over {BUILD_TIMEOUT_S:g} s ({shlex.join(command)})") from None
    if result.returncode != 0 or not output.is_file():
        lines = [line.strip() for line in (result.stderr + result.stdout).splitlines() if line.strip()]
        first = next((line for line in lines if "error" in line.lower()), lines[-1] if lines else "no output")
        extra = hint if hint and "picolibc" in first else ""
        raise LeWorldError(f"{what} failed ({shlex.join(command)} exited {result.returncode}): {first}{extra}")
