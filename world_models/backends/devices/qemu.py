"""The C firmware's rv32 build (``firmware/qemu``) under QEMU's ``virt`` machine, as a device on a pty.

The rv32imafc bare-metal build of the same portable core that the host build and the boards run,
on ``qemu-system-riscv32 -machine virt``, its UART on a pseudo-terminal. Hosts open the returned path
exactly as they open an emulator's::

    process, path = start_qemu("fpga", Path("world_models/shipped/pusht-tiny/model.lq40"))
    env = gym.make("LeWorld-PushT-v0", backend="fpga", port=path)

The device's kind and the model are placed in RAM by QEMU before the start (``-device loader``; the
memory map is ``firmware/qemu/memmap.h``): one build serves both kinds. QEMU's UART moves about
15-30 kB/s, so preload the model rather than sending it (1 MB would take about a minute).

:func:`instructions_per_latent` runs ``leworld-bench.elf`` under ``-icount shift=0`` (one instruction
per virtual nanosecond, so the ``minstret`` counter counts instructions) and returns the retired
instructions per predicted latent of the float (esp32) and fixed-point (fpga) paths;
``benchmarks/firmware_icount.py`` turns them into an ESP32-P4 estimate.

The elf is built on demand with ``make -C firmware/qemu BUILD=<dir>`` (``$LEWORLD_FIRMWARE_RV32_BUILD``,
by default ``~/.cache/leworld/firmware/rv32``); ``make`` itself decides whether anything is out of date.

    python -m world_models.backends.devices.qemu --kind esp32 [--model M] [--icount]
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import shlex
import subprocess
import time
from pathlib import Path

from world_models.backends.devices.build import FIRMWARE_DIR, cache_build_dir, require_tool, run_make
from world_models.errors import LeWorldError
from world_models.signals import die_with_parent_preexec

QEMU_DIR = FIRMWARE_DIR / "qemu"
BUILD_ENV = "LEWORLD_FIRMWARE_RV32_BUILD"
ELF = "leworld-fw.elf"
BENCH_ELF = "leworld-bench.elf"
QEMU = "qemu-system-riscv32"
CROSS_GCC = "riscv64-unknown-elf-gcc"
KINDS = {"esp32": 1, "fpga": 2}  # the boot config word (firmware/qemu/memmap.h)
BOOT_CONFIG_ADDR = 0x8600_0000
PRELOAD_ADDR = 0x8600_1000
PRELOAD_MAX = 16 * 1024 * 1024
START_TIMEOUT_S = 30.0
BENCH_TIMEOUT_S = 600.0
PTY_LINE = re.compile(r"char device redirected to (/dev/\S+?)(?: \(label [^)]*\))?\s*$", re.MULTILINE)
BENCH_LINE = re.compile(r"^bench path=(\w+) op=(\w+) rows=(\d+) T=(\d+) instret=(\d+) per_row=(\d+)\s*$", re.MULTILINE)
# Debian packages, for the error that names a missing tool.
PACKAGES = {
    QEMU: "qemu-system-misc",
    CROSS_GCC: "gcc-riscv64-unknown-elf picolibc-riscv64-unknown-elf",
    "make": "make",
}


def default_build_dir() -> Path:
    """Where the rv32 build goes: ``$LEWORLD_FIRMWARE_RV32_BUILD``, else ``~/.cache/leworld/firmware/rv32``."""
    return cache_build_dir(BUILD_ENV, "rv32")


def _require(tool: str, what: str) -> str:
    return require_tool(tool, what, PACKAGES.get(tool, tool))


def build_rv32(build_dir: str | Path | None = None, root: Path = FIRMWARE_DIR) -> Path:
    """The build folder holding ``leworld-fw.elf`` and ``leworld-bench.elf``, brought up to date by ``make``.

    Raises:
        LeWorldError: no ``firmware/qemu`` sources, no ``make`` or cross compiler on PATH, or a build
            that fails (its first error line is quoted).
    """
    if not (root / "qemu" / "Makefile").is_file():
        raise LeWorldError(f"the rv32 firmware sources are missing: no {root / 'qemu' / 'Makefile'}")
    make = _require("make", "building the rv32 firmware")
    _require(CROSS_GCC, "building the rv32 firmware")
    build = (Path(build_dir) if build_dir is not None else default_build_dir()).resolve()
    build.mkdir(parents=True, exist_ok=True)
    hint = " (is picolibc installed? Debian: picolibc-riscv64-unknown-elf)"
    command = [make, "-C", str(root / "qemu"), f"-j{os.cpu_count() or 1}", f"BUILD={build}"]  # two elfs at once
    run_make(command, build, "building the rv32 firmware", build / ELF, hint)
    return build


def _model_bytes(model: Path | None) -> int:
    if model is None:
        return 0
    model = Path(model)
    if not model.is_file():
        raise LeWorldError(f"no model file {str(model)!r} to preload into QEMU")
    size = model.stat().st_size
    if size > PRELOAD_MAX:
        raise LeWorldError(
            f"the model {str(model)!r} is {size} bytes; the QEMU firmware preloads at most {PRELOAD_MAX}"
        )
    return size


def qemu_command(elf: Path, kind: str | None, model: Path | None, *, icount: bool, serial: str) -> list[str]:
    """The ``qemu-system-riscv32`` command line: ``virt``, no D extension (as the ESP32-P4's rv32imafc),
    no default devices, the UART on ``serial``, the boot config word and the model preloaded."""
    command = [
        _require(QEMU, "running the rv32 firmware"),
        "-machine", "virt",
        "-cpu", "rv32,d=off",
        "-m", "128M",
        "-nodefaults",
        "-bios", "none",
        "-kernel", str(elf),
        "-display", "none",
        "-monitor", "none",
        "-serial", serial,
    ]  # fmt: skip
    if kind is not None:
        command += ["-device", f"loader,addr={BOOT_CONFIG_ADDR:#x},data={KINDS[kind]},data-len=4"]
    if model is not None:
        file = str(Path(model).resolve()).replace(",", ",,")  # QEMU's option syntax doubles commas
        command += ["-device", f"loader,file={file},addr={PRELOAD_ADDR:#x},force-raw=on"]
    if icount:
        command += ["-icount", "shift=0"]
    return command


def _read_until(
    process: subprocess.Popen, pattern: re.Pattern[str], timeout: float
) -> tuple[re.Match[str] | None, str]:
    """Read the process's (merged) output until ``pattern`` matches, it exits, or ``timeout`` passes."""
    fd = process.stdout.fileno()  # type: ignore[union-attr]
    text, deadline = "", time.monotonic() + timeout
    while True:
        match = pattern.search(text)
        if match is not None:
            return match, text
        left = deadline - time.monotonic()
        if left <= 0:
            return None, text
        ready, _, _ = select.select([fd], [], [], min(left, 0.5))
        if ready:
            chunk = os.read(fd, 4096)
            if not chunk:  # the process closed its output: it has exited
                return pattern.search(text), text
            text += chunk.decode("utf-8", "replace")
        elif process.poll() is not None:
            return pattern.search(text), text


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.kill()
    with contextlib.suppress(Exception):
        process.communicate(timeout=10)


def start_qemu(
    kind: str, model: Path | None, *, icount: bool = False, build_dir: str | Path | None = None
) -> tuple[subprocess.Popen, str]:
    """Start the rv32 firmware as an ``esp32`` or ``fpga`` device under QEMU; returns (process, pty path).

    Args:
        kind: ``esp32`` (float path, ENCODE) or ``fpga`` (fixed point, int32 tensors, no ENCODE).
        model: an ``.lq40`` file preloaded into RAM (the firmware installs it at start); ``None``: it starts
            without a model and the first host sends it (slowly: QEMU's UART moves ~15-30 kB/s).
        icount: run with ``-icount shift=0`` (deterministic, one instruction per virtual nanosecond;
            STATS' ``instret`` then counts instructions, idle time included).
        build_dir: where the elf is built (default :func:`default_build_dir`).

    The process's stdout carries QEMU's merged stdout and stderr (text); stop it with SIGTERM
    (:class:`~world_models.backends.devices.firmware.FirmwareDevice` does). On Linux it also dies
    with the thread that started it, however that ends (SIGKILL included:
    :func:`world_models.signals.die_with_parent_preexec`), so start it from a long-lived thread. The firmware prints
    nothing on a good start; a refused preloaded model is reported on the UART between two frame
    delimiters (hosts drop it as one bad frame) and it then starts without a model.

    Raises:
        LeWorldError: an unknown kind, a missing model file or one above 16 MiB, a missing tool
            (make, the cross compiler, QEMU), a failed build, or a QEMU that does not start.
    """
    if kind not in KINDS:
        raise LeWorldError(f"unknown device kind {kind!r}; choose one of: {', '.join(KINDS)}")
    _model_bytes(model)
    _require(QEMU, "running the rv32 firmware")
    elf = build_rv32(build_dir) / ELF
    command = qemu_command(elf, kind, model, icount=icount, serial="pty")
    # QEMU dies with this process, even a SIGKILLed one (nothing else would end it: its stdin is
    # /dev/null and its pty outlives any host).
    process = subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=die_with_parent_preexec(),
    )
    try:
        match, text = _read_until(process, PTY_LINE, START_TIMEOUT_S)
    except BaseException:
        _stop(process)
        raise
    if match is None:
        _stop(process)
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        reason = lines[-1] if lines else f"it printed no pty path in {START_TIMEOUT_S:g} s"
        raise LeWorldError(f"QEMU did not start the {kind} firmware ({shlex.join(command)}): {reason}")
    return process, match.group(1)


def run_bench(model: Path, *, build_dir: str | Path | None = None, timeout: float = BENCH_TIMEOUT_S) -> list[dict]:
    """Run ``leworld-bench.elf`` on ``model`` under ``-icount shift=0``; its measurements, one dict each
    (``path`` float / fixed / any, ``op`` predict / encode / load, ``rows``, ``T``, ``instret``, ``per_row``)."""
    _model_bytes(model)
    _require(QEMU, "running the rv32 firmware")
    elf = build_rv32(build_dir) / BENCH_ELF
    command = qemu_command(elf, None, model, icount=True, serial="stdio")
    try:
        result = subprocess.run(
            command, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        raise LeWorldError(f"the rv32 benchmark took over {timeout:g} s ({shlex.join(command)})") from None
    out = result.stdout + result.stderr
    if result.returncode != 0 or "bench done" not in out:
        lines = [line.strip() for line in out.splitlines() if line.strip()]
        raise LeWorldError(
            f"the rv32 benchmark failed (exit {result.returncode}): {lines[-1] if lines else 'no output'}"
        )
    keys = ("path", "op", "rows", "T", "instret", "per_row")
    return [
        {k: (v if k in ("path", "op") else int(v)) for k, v in zip(keys, m.groups(), strict=True)}
        for m in BENCH_LINE.finditer(out)
    ]


def instructions_per_latent(model: Path, *, build_dir: str | Path | None = None) -> dict[str, int]:
    """Retired rv32imafc instructions per predicted latent at batch 1: ``{"float": N, "fixed": N}``
    (``fixed`` absent when the model has no fixed-point path), plus ``encode`` per frame (float).

    Measured inside the firmware around ``lw_model_predict`` / ``lw_fixed_predict`` (no protocol,
    no UART), under ``-icount shift=0``; inputs are pseudo-random latents and actions in [-1, 1).
    """
    result: dict[str, int] = {}
    for row in run_bench(model, build_dir=build_dir):
        if row["op"] == "predict" and row["rows"] == 1:
            result.setdefault(row["path"], row["per_row"])
        elif row["op"] == "encode" and row["rows"] == 1:
            result.setdefault("encode", row["per_row"])
    return result


def main(argv: list[str] | None = None) -> int:
    """Serve the rv32 firmware on a pty until Ctrl-C (prints '<kind> emulator on /dev/pts/N' first)."""
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kind", choices=sorted(KINDS), default="esp32")
    parser.add_argument("--model", type=Path, default=None, help="an .lq40 to preload")
    parser.add_argument("--icount", action="store_true", help="-icount shift=0 (minstret counts instructions)")
    args = parser.parse_args(argv)
    try:
        process, path = start_qemu(args.kind, args.model, icount=args.icount)
    except LeWorldError as err:
        print(f"error: {err}")
        return 2
    print(f"{args.kind} emulator on {path}", flush=True)
    try:
        process.wait()
    except KeyboardInterrupt:
        process.terminate()
        process.wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
