"""Tests that need a toolchain (a C compiler, the RISC-V cross compiler, QEMU, yosys, Amaranth).

On a newcomer's machine without one they skip, naming what is missing and the Debian package or
pip extra that provides it. ``.ci/run`` sets ``LEWORLD_REQUIRE_TOOLCHAINS=1``, which turns every
such skip into a failure, so CI never skips them silently.
"""

from __future__ import annotations

import importlib.util
import os
import shutil

import pytest

REQUIRE_ENV = "LEWORLD_REQUIRE_TOOLCHAINS"

# Executable -> the Debian package that provides it (what .ci/run installs).
DEBIAN_PACKAGES = {
    "cc": "gcc",
    "make": "make",
    "riscv64-unknown-elf-gcc": "gcc-riscv64-unknown-elf picolibc-riscv64-unknown-elf",
    "qemu-system-riscv32": "qemu-system-misc",
    "yosys": "yosys",
    "nextpnr-ice40": "nextpnr-ice40",
    "iverilog": "iverilog",
    "verilator": "verilator",
}


def _missing(reason: str) -> None:
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{reason}, and {REQUIRE_ENV}=1 forbids skipping", pytrace=False)
    pytest.skip(reason)


def require_tools(*tools: str) -> None:
    """Skip (or, under ``LEWORLD_REQUIRE_TOOLCHAINS=1``, fail) unless every executable is on PATH."""
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        packages = " ".join(dict.fromkeys(DEBIAN_PACKAGES.get(tool, tool) for tool in missing))
        _missing(f"needs {', '.join(missing)} (Debian: apt-get install {packages})")


def require_modules(*modules: str) -> None:
    """Skip (or fail, as :func:`require_tools`) unless every Python module imports."""
    missing = [name for name in modules if importlib.util.find_spec(name) is None]
    if missing:
        _missing(f"needs the Python module(s) {', '.join(missing)} (pip install -e '.[dev]')")
