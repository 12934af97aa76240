"""``leworld device`` (emulate, info): the command-line side of the hardware backends.

``leworld bench device`` lives with the other benchmarks (``leworld_env.cli.bench.device``).
"""

from __future__ import annotations

import argparse
import signal
from types import FrameType

from world_models.argtypes import positive_int
from world_models.errors import LeWorldError

LATENCY_MODELS = ("none", "esp32-p4")
IMPLS = ("python", "c", "qemu")


def _nested(parser: argparse.ArgumentParser, dest: str) -> argparse._SubParsersAction:
    sub = parser.add_subparsers(dest=dest, metavar=dest.upper(), parser_class=type(parser))
    sub.required = True
    return sub


# ------------------------------------------------------------------ device
def add_device_parser(subparsers: argparse._SubParsersAction) -> None:
    """``leworld device emulate | info``."""
    p = subparsers.add_parser(
        "device",
        help="ESP32 / FPGA emulators and serial tools",
        description=(
            "emulate: serve the LeWorld device protocol (docs/protocol.md) on a pseudo-terminal or a TCP port, as "
            "an ESP32 (the numba-q4 engine, optionally as slow as an ESP32-P4) or an FPGA (bit-exact fixed-point "
            "arithmetic). --impl c serves the C firmware built for this machine instead, --impl qemu its rv32 "
            "build under QEMU. Point backend='esp32' or 'fpga' with port= at the printed path. info: greet a "
            "device and print what it says (HELLO) and its counters (STATS)."
        ),
    )
    actions = _nested(p, "action")
    e = actions.add_parser("emulate", help="serve the device protocol on a pty or a TCP port")
    e.add_argument("--kind", required=True, choices=["esp32", "fpga"], help="which device to emulate")
    where = e.add_mutually_exclusive_group()
    where.add_argument("--pty", action="store_true", help="serve on a new pseudo-terminal (the default)")
    where.add_argument("--tcp", type=int, metavar="PORT", help="serve on this TCP port of 127.0.0.1 (0: any free)")
    e.add_argument("--model", help="a model (shipped name, folder or .lq40) to hold from the start (default: none)")
    e.add_argument(
        "--latency", choices=LATENCY_MODELS, default="none", help="compute time model: none or esp32-p4 (none)"
    )
    e.add_argument("--baud", type=positive_int, help="link model: delay every frame as on a UART at this rate")
    e.add_argument(
        "--impl",
        choices=IMPLS,
        default="python",
        help="python (the emulators, default), c (the C firmware built for this machine, on a pty) or qemu "
        "(the firmware's rv32 build under QEMU)",
    )
    e.set_defaults(run=run_emulate)
    i = actions.add_parser("info", help="print a device's HELLO and STATS")
    i.add_argument("--port", required=True, help="device path or pyserial URL (socket://HOST:PORT)")
    i.add_argument("--timeout", type=float, default=2.0, help="seconds per call (2)")
    i.add_argument("--baud", type=positive_int, default=921_600, help="serial baud rate (921600)")
    i.set_defaults(run=run_info)


def _stop_on_sigterm() -> None:
    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


def run_emulate(args: argparse.Namespace) -> int:
    """Serve until Ctrl-C or SIGTERM; the first line printed names the port."""
    from world_models.backends.devices.emulator import make_emulator

    if getattr(args, "impl", "python") != "python":
        return run_firmware(args)
    if args.tcp is not None and not 0 <= args.tcp <= 65535:
        raise LeWorldError(f"--tcp must be a TCP port number in [0, 65535], got {args.tcp}")
    _stop_on_sigterm()  # before the (slow) model load: a SIGTERM then stops it cleanly too
    try:
        emulator = make_emulator(args.kind, args.model, args.latency, args.baud, args.tcp)
    except KeyboardInterrupt:
        print("stopped before serving", flush=True)
        return 0
    try:
        held = f"holding {args.model}" if args.model else "no model yet (the host sends it)"
        print(f"{args.kind} emulator on {emulator.path}", flush=True)
        print(
            f"  {held}; latency model {args.latency}; link model "
            f"{f'{args.baud} baud' if args.baud else 'none'}. Connect with "
            f"gym.make('LeWorld-PushT-v0', backend='{args.kind}', port='{emulator.path}'). Ctrl-C stops.",
            flush=True,
        )
        emulator.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        stats = emulator.device.stats()
        emulator.stop()
    print(f"stopped after {stats.get('executed', 0)} commands", flush=True)
    return 0


def run_firmware(args: argparse.Namespace) -> int:
    """``emulate --impl c|qemu``: the firmware on a pty until Ctrl-C or SIGTERM; the first line names the port."""
    from world_models.backends.devices.firmware import start_firmware, wait_until_stopped

    unsupported = [
        option
        for option, given in (
            ("--tcp", args.tcp is not None),
            ("--latency", args.latency != "none"),
            ("--baud", args.baud),
        )
        if given
    ]
    if unsupported:
        raise LeWorldError(
            f"{', '.join(unsupported)}: only with --impl python (the {args.impl} firmware serves a pty and computes "
            "at its own speed)"
        )
    _stop_on_sigterm()
    try:
        device = start_firmware(args.kind, args.impl, args.model)
    except KeyboardInterrupt:
        print("stopped before serving", flush=True)
        return 0
    stats: dict[str, int] = {}
    interrupted = False
    try:
        held = f"holding {args.model}" if args.model else "no model yet (the host sends it)"
        print(f"{args.kind} emulator on {device.path}", flush=True)
        print(
            f"  {args.impl} firmware; {held}. Connect with gym.make('LeWorld-PushT-v0', backend='{args.kind}', "
            f"port='{device.path}'). Ctrl-C stops.",
            flush=True,
        )
        wait_until_stopped(device)
    except KeyboardInterrupt:
        interrupted = True
        if args.impl != "c" and device.alive:
            try:  # QEMU prints no count when it stops: ask the device first
                stats = device.stats(timeout=1.0)
            except LeWorldError:
                pass
    finally:
        device.stop()
    if not interrupted:
        raise LeWorldError(f"the {args.impl} firmware stopped by itself (exit status {device.process.returncode})")
    if device.executed is None and "executed" in stats:
        stats["executed"] -= 1  # not counting the STATS just asked
    executed = device.executed if device.executed is not None else stats.get("executed")
    print(f"stopped after {executed} commands" if executed is not None else "stopped", flush=True)
    return 0


def run_info(args: argparse.Namespace) -> int:
    """Print HELLO's fields and the device's counters."""
    from world_models.backends.devices.client import DeviceLink

    with DeviceLink(args.port, timeout=args.timeout, retries=1, baud=args.baud) as link:
        for key, value in link.info.describe().items():
            print(f"{key:<14} {value}")
        for key, value in link.stats().items():
            print(f"{key:<14} {value}")
    return 0
