"""``leworld bench kernels``: quantized kernels and the numba backends, each against a reference measured
in the same run (a memory copy, float32 numpy/BLAS, the torch backend)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from leworld_env.cli.bench.common import BenchRow, memcpy_gbps, rate


def _seconds(fn, min_seconds: float = 0.5) -> float:
    return 1.0 / rate(fn, 1, min_seconds=min_seconds)


def bench_kernels(model: str | Path = "pusht-tiny", size: int = 4096, quick: bool = False) -> list[BenchRow]:
    """Q4_0 matvec / matmul throughput against memory copy and float32 BLAS; numba-q4 and numba predict
    and encode time against the torch backend at batch 1, 16 and 256."""
    import numba

    import world_models
    from numba_kernels.linear import QLinear

    min_s = 0.2 if quick else 0.5
    rng = np.random.default_rng(0)
    rows = [BenchRow("numba threads", float(numba.get_num_threads()), "threads")]
    copy = memcpy_gbps()
    rows.append(BenchRow("memory copy (numpy, 1 thread)", copy, "GB/s"))
    weight = rng.standard_normal((size, size)).astype(np.float32)
    layer = QLinear.from_float(weight, None, "q4_0")
    x1 = rng.standard_normal((1, size)).astype(np.float32)
    threads = numba.get_num_threads()
    for n in sorted({1, threads}):
        numba.set_num_threads(n)
        t = _seconds(lambda: layer(x1), min_s)
        rows.append(
            BenchRow(
                f"Q4_0 matvec {size}x{size}, {n} thread(s)",
                layer.data.nbytes / t / 1e9,
                "GB/s",
                "memory copy",
                layer.data.nbytes / t / 1e9 / copy,
            )
        )
    numba.set_num_threads(threads)
    t_f32 = _seconds(lambda: x1 @ weight.T, min_s)
    rows.append(
        BenchRow(
            f"f32 matvec {size}x{size} (numpy BLAS)",
            weight.nbytes / t_f32 / 1e9,
            "GB/s",
            "memory copy",
            weight.nbytes / t_f32 / 1e9 / copy,
        )
    )
    xb = rng.standard_normal((256, size)).astype(np.float32)
    t_q = _seconds(lambda: layer(xb), min_s)
    t_f = _seconds(lambda: xb @ weight.T, min_s)
    flops = 2 * 256 * size * size
    rows.append(BenchRow(f"Q4_0 matmul 256x{size}x{size}", flops / t_q / 1e9, "GFLOP/s", "f32 BLAS", t_f / t_q))
    rows.append(BenchRow(f"f32 matmul 256x{size}x{size} (numpy BLAS)", flops / t_f / 1e9, "GFLOP/s"))

    backends = {name: world_models.load(model, backend=name) for name in ("torch", "numba", "numba-q4")}
    cfg = backends["torch"].config
    for batch in (1, 16, 256):
        z = rng.standard_normal((batch, cfg.history, cfg.latent_dim)).astype(np.float32)
        a = rng.uniform(-1, 1, (batch, cfg.history, cfg.action_dim)).astype(np.float32)
        px = rng.integers(0, 256, (batch, cfg.image_size, cfg.image_size, 3), dtype=np.uint8)
        ref_p = _seconds(lambda wm=backends["torch"], z=z, a=a: wm.predict(z, a), min_s)
        ref_e = _seconds(lambda wm=backends["torch"], px=px: wm.encode(px), min_s)
        rows.append(BenchRow(f"torch f32 predict, batch {batch}", ref_p * 1e3, "ms"))
        for name in ("numba-q4", "numba"):
            t = _seconds(lambda wm=backends[name], z=z, a=a: wm.predict(z, a), min_s)
            rows.append(BenchRow(f"{name} predict, batch {batch}", t * 1e3, "ms", "torch speed", ref_p / t))
        rows.append(BenchRow(f"torch f32 encode, batch {batch}", ref_e * 1e3, "ms"))
        for name in ("numba-q4", "numba"):
            t = _seconds(lambda wm=backends[name], px=px: wm.encode(px), min_s)
            rows.append(BenchRow(f"{name} encode, batch {batch}", t * 1e3, "ms", "torch speed", ref_e / t))
    return rows


if __name__ == "__main__":  # pragma: no cover
    from leworld_env.cli.bench.common import print_table

    start = time.perf_counter()
    print_table(bench_kernels())
    print(f"{time.perf_counter() - start:.1f}s")
