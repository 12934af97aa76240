"""What every ``leworld bench`` target shares: a row of results, a timer, a memory-copy reference, output.

Every figure is printed next to a reference measured in the same run (gym-pusht
itself, torch, or a plain memory copy), so the ratios carry over between machines
even where the absolute numbers do not.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np


@dataclass
class BenchRow:
    """One measured figure, and optionally its ratio to a reference measured in the same run."""

    name: str
    value: float
    unit: str
    reference: str = ""
    ratio: float | None = None


def rate(fn: Callable[[], object], repeats: int, min_seconds: float = 0.3) -> float:
    """Calls per second of ``fn``, over at least ``repeats`` calls and ``min_seconds``."""
    fn()  # warm up (numba compile, caches)
    calls = 0
    start = time.perf_counter()
    while True:
        for _ in range(repeats):
            fn()
        calls += repeats
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return calls / elapsed


def memcpy_gbps(nbytes: int = 64 << 20) -> float:
    """Single-thread memory copy bandwidth, GB/s: the reference for memory-bound kernels."""
    src = np.ones(nbytes, np.uint8)
    dst = np.empty_like(src)
    return rate(lambda: np.copyto(dst, src), 3) * nbytes / 1e9


def print_table(rows: list[BenchRow]) -> None:
    """The rows as aligned text, ratios last."""
    width = max(len(r.name) for r in rows)
    for r in rows:
        ratio = f"  {r.ratio:7.2f}x {r.reference}" if r.ratio is not None else ""
        print(f"{r.name:<{width}}  {r.value:12,.1f} {r.unit:<10}{ratio}")


def is_bench_result(path: Path) -> bool:
    """True when ``path`` is a JSON list of benchmark rows (a previous ``--json``, safe to replace)."""
    try:
        rows = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return False
    return isinstance(rows, list) and all(isinstance(r, dict) and {"name", "value", "unit"} <= set(r) for r in rows)


def check_json_path(path: Path) -> None:
    """Before measuring: ``--json`` is a new file or a previous benchmark result, never anything else."""
    from world_models.outputs import check_output_file

    check_output_file(path, "--json", is_previous=is_bench_result)


def write_json(rows: list[BenchRow], path: Path) -> None:
    """The rows as a JSON list, written atomically."""
    from world_models.files import atomic_write_bytes

    atomic_write_bytes(path, json.dumps([asdict(r) for r in rows], indent=2).encode())
