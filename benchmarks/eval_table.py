"""Markdown rows from ``leworld eval --json`` files, so the docs' tables are printed, not typed.

One row per file, in the order given: agent and schedule, model, the headline test (strict for
``lewm``, coverage for ``pusht``) and the block-only test with 95 % intervals, final block error,
angle error and latent distance (means over episodes), coverage final / best, plans and seconds a
plan. Files of different episodes are refused (their ``seed`` and ``episodes`` must agree), so a
table compares agents on the same held-out episodes::

    python benchmarks/eval_table.py runs/evals/cem_lewm_replan5.json runs/evals/random_lewm.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

HEADER = (
    "| run | model | success (95 % interval) | block-only success | block error, final | angle error, final "
    "| latent distance, final | coverage, final / best | plans, s a plan |\n|---|---|---|---|---|---|---|---|---|"
)


def percent(rate: float, interval: list[float]) -> str:
    return f"{100 * rate:.0f} % ({100 * interval[0]:.1f}-{100 * interval[1]:.1f} %)"


def row(path: Path) -> tuple[str, tuple[int, int, str]]:
    """The table row of one eval JSON, and the episodes it ran (seed, count, protocol)."""
    run = json.loads(path.read_text())
    results = run["results"]
    schedule = f", replan every {run['replan_every']}" if run.get("replan_every") else ""
    angle = np.mean([r["final_angle_error"] for r in results])
    latent = np.mean([r["final_latent_distance"] for r in results])
    plans = f"{run['plans']}, {run['mean_plan_seconds']:.2f} s" if run.get("plans") else "-"
    cells = [
        f"{run['agent']}{schedule} (`{path.name}`)",
        Path(run["model"]).name,
        percent(run["success_rate"], run["success_interval"]),
        percent(run["success_block_rate"], run["success_block_interval"]),
        f"{run['mean_final_position_error']:.1f} px",
        f"{angle:.2f} rad",
        f"{latent:.3f}",
        f"{run['mean_final_coverage']:.3f} / {run['mean_max_coverage']:.3f}",
        plans,
    ]
    return "| " + " | ".join(cells) + " |", (run["seed"], run["episodes"], run["protocol"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("files", nargs="+", type=Path)
    args = p.parse_args()
    rows, episodes = zip(*(row(f) for f in args.files), strict=True)
    if len(set(episodes)) > 1:
        sys.exit(f"the files ran different episodes (seed, count, protocol): {sorted(set(episodes))}")
    print(HEADER)
    print("\n".join(rows))


if __name__ == "__main__":
    main()
