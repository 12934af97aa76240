"""Retired instructions per predicted latent of the C firmware's rv32imafc build, and what that means
on an ESP32-P4.

``leworld-bench.elf`` (firmware/qemu/bench.c) runs the firmware's own model code, the float path (the
esp32 kind) and the fixed-point path (the fpga kind), on the preloaded ``.lq40`` under
``qemu-system-riscv32 -icount shift=0``, where ``minstret`` counts retired instructions; it reads the
counter around each ``lw_model_predict`` / ``lw_fixed_predict`` call (no protocol, no UART inside the
measured region). The build is rv32imafc / ilp32f with no D extension, as the ESP32-P4's cores, so the
float path's float64 steps (exp, layer-norm variance) are software routines and counted as such.

It also runs the whole firmware (``leworld-fw.elf``, ``-icount shift=0``) and reads STATS' ``instret``
around one PREDICT of batch 1 over the link, less the same around a STATS alone: the instructions of one
PREDICT end to end (frame decoding, CRC-32, the model, the answer's encoding and UART writes). The
firmware sleeps in ``wfi`` while it waits for bytes, so idle time adds next to nothing to the counter.

The ESP32-P4 figure is an estimate, not a measurement: instructions / (IPC x clock), with the clock
(360 MHz by default) and IPC (1.0 by default: one instruction a cycle for the in-order RV32 core) as
stated assumptions. It ignores cache misses and PSRAM latency (the weights, about 1 MB for pusht-tiny,
would live in PSRAM), and the chip's SIMD / AI extensions, which this portable C does not use.

    python benchmarks/firmware_icount.py [--model pusht-tiny] [--mhz 360] [--ipc 1.0]
"""

from __future__ import annotations

import argparse
import json
import struct

import numpy as np

from world_models.backends.devices import protocol as wire
from world_models.backends.devices.client import DeviceLink
from world_models.backends.devices.qemu import run_bench, start_qemu
from world_models.locate import resolve_lq40

EMULATOR_MS_PER_LATENT = 138.0  # the esp32 emulator's latency model for pusht-tiny (docs/protocol.md §7)


def _dims(lq40) -> tuple[int, int, int]:
    """(latent_dim, action_dim, history) from the .lq40's JSON header."""
    blob = lq40.read_bytes()
    (n,) = struct.unpack_from("<I", blob, 4)
    model = json.loads(blob[8 : 8 + n])["model"]
    return model["latent_dim"], model["action_dim"], model["history"]


def protocol_instructions(kind: str, lq40, repeats: int = 3) -> int:
    """Instructions of one batch-1 PREDICT over the link (STATS instret deltas; the least of ``repeats``)."""
    process, path = start_qemu(kind, lq40, icount=True)
    try:
        with DeviceLink(path, timeout=10.0) as link:
            d, a, t = _dims(lq40)
            info = link.info
            rng = np.random.default_rng(0)
            best = None
            for _ in range(repeats):
                z = rng.uniform(-1, 1, (1, t, d)).astype(np.float32)
                act = rng.uniform(-1, 1, (1, t, a)).astype(np.float32)
                s0 = link.stats()["instret"]
                s1 = link.stats()["instret"]
                link.call(wire.Command.PREDICT, wire.pack_tensors(z, act), 1024)
                s2 = link.stats()["instret"]
                n = (s2 - s1) - (s1 - s0)
                best = n if best is None else min(best, n)
            assert info.model_size, "the firmware holds no model"
            return int(best)
    finally:
        process.terminate()
        process.communicate(timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="pusht-tiny", help="a shipped name, model folder or .lq40")
    parser.add_argument("--mhz", type=float, default=360.0, help="assumed ESP32-P4 clock (MHz)")
    parser.add_argument("--ipc", type=float, default=1.0, help="assumed instructions per cycle")
    args = parser.parse_args()
    lq40 = resolve_lq40(args.model)
    rows = run_bench(lq40)
    print(f"model {lq40}; rv32imafc under QEMU -icount shift=0; ESP32-P4 assumed {args.mhz:g} MHz, IPC {args.ipc:g}")
    print(f"{'path':6} {'op':8} {'rows':>4} {'instructions':>14} {'per row':>12} {'P4 ms/row':>10}")
    for r in rows:
        ms = r["per_row"] / (args.ipc * args.mhz * 1e6) * 1e3
        print(f"{r['path']:6} {r['op']:8} {r['rows']:>4} {r['instret']:>14,} {r['per_row']:>12,} {ms:>10.1f}")
    for kind in ("esp32", "fpga"):
        n = protocol_instructions(kind, lq40)
        ms = n / (args.ipc * args.mhz * 1e6) * 1e3
        print(f"{kind:6} PREDICT over the link, batch 1, end to end: {n:,} instructions, {ms:.1f} ms on the P4")
    print(f"(the esp32 emulator's --latency esp32-p4 model charges {EMULATOR_MS_PER_LATENT:g} ms per predicted latent)")


if __name__ == "__main__":
    main()
