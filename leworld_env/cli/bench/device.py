"""``leworld bench device``: the device protocol's cost over a pty, against in-process numba-q4 in the same run.

An ESP32 emulator runs in a thread of this process on a pseudo-terminal. A pty
moves bytes as fast as memory, so the emulator's link model delays each frame
by its time on a UART at the given baud rate (10 bits a byte); "raw pty" has no
link model and shows the protocol's own overhead (framing, CRC, two threads).
The emulator computes with the same numba-q4 engine as the reference, so the
ratio is the price of the link alone.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from leworld_env.cli.bench.common import BenchRow, rate

BAUDS: tuple[int | None, ...] = (None, 3_000_000, 921_600, 115_200)
BATCHES = (1, 16)


def _ms(fn: Callable[[], object], min_seconds: float) -> float:
    return 1000.0 / rate(fn, 1, min_seconds=min_seconds)


def _link_name(baud: int | None) -> str:
    return "raw pty" if baud is None else f"pty at {baud:,} baud"


def bench_device(model: str | Path = "pusht-tiny", quick: bool = False) -> list[BenchRow]:
    """Rows: in-process numba-q4 predict; per link, a STATS round trip and predict at batch 1 and 16 on the
    ESP32 emulator (ratio: its time / the in-process time); the FPGA emulator's predict and its error."""
    import world_models
    from world_models.backends.devices.client import DEFAULT_BAUD
    from world_models.backends.devices.emulator import LatencyModel, make_emulator

    min_s = 0.2 if quick else 0.5
    bauds = (None, 921_600) if quick else BAUDS
    reference = world_models.load(model, backend="numba-q4")
    cfg = reference.config
    rng = np.random.default_rng(0)
    inputs = {
        b: (
            rng.standard_normal((b, cfg.history, cfg.latent_dim)).astype(np.float32),
            rng.uniform(-1, 1, (b, cfg.history, cfg.action_dim)).astype(np.float32),
        )
        for b in BATCHES
    }
    rows: list[BenchRow] = []
    in_process = {}
    for b, (z, a) in inputs.items():
        in_process[b] = _ms(lambda z=z, a=a: reference.predict(z, a), min_s)
        rows.append(BenchRow(f"in-process numba-q4 predict, batch {b}", in_process[b], "ms"))
    for baud in bauds:
        with make_emulator("esp32", model, baud=baud) as emulator:
            emulator.start()
            wm = world_models.load(model, backend="esp32", port=emulator.path, baud=baud or DEFAULT_BAUD, timeout=5.0)
            try:
                link = _link_name(baud)
                round_trip = 1000 * _ms(wm.link.stats, min_s)
                rows.append(BenchRow(f"esp32 emulator, {link}: STATS round trip", round_trip, "us"))
                for b, (z, a) in inputs.items():
                    t = _ms(lambda wm=wm, z=z, a=a: wm.predict(z, a), min_s)
                    rows.append(
                        BenchRow(
                            f"esp32 emulator, {link}: predict, batch {b}",
                            t,
                            "ms",
                            "in-process time",
                            t / in_process[b],
                        )
                    )
                    rows.append(
                        BenchRow(f"esp32 emulator, {link}: predict throughput, batch {b}", b * 1000 / t, "latents/s")
                    )
            finally:
                wm.close()
    latency = LatencyModel.preset("esp32-p4")
    rows.append(BenchRow("esp32-p4 latency model: one predicted latent (modelled)", latency.predict_ms(cfg), "ms"))
    rows.append(BenchRow("esp32-p4 latency model: one encoded frame (modelled)", latency.encode_ms(cfg), "ms"))
    rows.extend(_fpga_rows(model, inputs, in_process, min_s))
    return rows


def _bank_inputs(model: str | Path, count: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Histories of real latents: three start-bank frames per row, encoded by numba-q4, with random actions."""
    import world_models
    from leworld_env.envs.task import draw_frames, open_start_bank

    encoder = world_models.load(model, backend="numba-q4")
    cfg = encoder.config
    bank = open_start_bank(model)
    rng = np.random.default_rng(1)
    states = bank.start[rng.integers(0, len(bank), count * cfg.history)]
    z = encoder.encode(draw_frames(states, cfg.image_size)).reshape(count, cfg.history, cfg.latent_dim)
    return z, rng.uniform(-1, 1, (count, cfg.history, cfg.action_dim)).astype(np.float32)


def _fpga_rows(
    model: str | Path, inputs: dict[int, tuple[np.ndarray, np.ndarray]], in_process: dict[int, float], min_s: float
) -> list[BenchRow]:
    """The FPGA emulator over a raw pty, and its fixed-point error on real latents against float32 arithmetic
    on the same weights (numba-q4) and against the float32 model (numba)."""
    import world_models
    from world_models.backends.devices.emulator import make_emulator

    try:
        import world_models.backends.devices.fixed_point
    except ImportError:
        return [BenchRow("fpga emulator: skipped (world_models.backends.devices.fixed_point is missing)", 0.0, "")]
    rows = []
    with make_emulator("fpga", model) as emulator:
        emulator.start()
        wm = world_models.load(model, backend="fpga", port=emulator.path, timeout=5.0)
        try:
            for b, (z, a) in inputs.items():
                t = _ms(lambda wm=wm, z=z, a=a: wm.predict(z, a), min_s)
                rows.append(
                    BenchRow(
                        f"fpga emulator, raw pty: predict, batch {b}", t, "ms", "in-process time", t / in_process[b]
                    )
                )
            z, a = _bank_inputs(model)
            fixed = wm.predict(z, a)
        finally:
            wm.close()
    references = {"numba-q4 (same weights, f32 arithmetic)": world_models.load(model, backend="numba-q4")}
    try:
        references["numba (f32 weights and arithmetic)"] = world_models.load(model, backend="numba")
    except world_models.LeWorldError:
        pass  # an .lq40 without float32 weights beside it
    for name, reference in references.items():
        expected = reference.predict(z, a)
        error = fixed - expected
        relative = float(np.sqrt(np.mean(error**2)) / np.sqrt(np.mean(expected**2)))
        rows.append(BenchRow(f"fpga predict vs {name}: max abs error", 1e6 * float(np.abs(error).max()), "x 1e-6"))
        rows.append(BenchRow(f"fpga predict vs {name}: relative RMS error", 1e6 * relative, "ppm"))
    return rows


if __name__ == "__main__":  # pragma: no cover
    from leworld_env.cli.bench.common import print_table

    start = time.perf_counter()
    print_table(bench_device(quick=True))
    print(f"{time.perf_counter() - start:.1f}s")
