"""The LeWorld memory ablation table: LeWorld vs the matched LeWM predictor, and LeWorld with parts removed.

Per seed: train LeWorld (three phases, ``--steps`` split 30/50/20) and the plain
LeWM predictor at matched parameter count (``--steps`` steps, the same open-loop
loss), then score every row on the held-out episodes: normalised open-loop error
(MSE / MSE of copying the last latent) at horizons 1, 5 and 10 with hard reads.
Prints the table as markdown (mean +- std across seeds) and writes every number
to ``--out`` (JSON).

    python benchmarks/memory_ablation.py --data DIR --seeds 0 1 2 --steps 3000 --out results.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from world_models.data.latents import load_latents, save_latents
from world_models.files import atomic_write_bytes
from world_models.memory.evaluate import hard_soft_gap, open_loop_error
from world_models.memory.model import ABLATIONS, count_parameters
from world_models.memory.runtime import encode_dataset, load_leworld
from world_models.memory.train import MemoryTrainConfig, train_baseline, train_leworld

HORIZONS = (1, 5, 10)
ROWS = ("lewm_baseline", "leworld_full", *ABLATIONS)


def run_seed(args: argparse.Namespace, latents, seed: int) -> dict:
    """Train both models for one seed and score every row."""
    steps = [max(1, round(args.steps * f)) for f in (0.3, 0.5, 0.2)]
    cfg = MemoryTrainConfig(
        data=str(args.data),
        out=str(args.work / f"seed{seed}"),
        memory_preset=args.memory_preset,
        phase_steps=tuple(steps),
        batch_size=args.batch_size,
        horizon=args.horizon,
        seed=seed,
    )
    tick = time.perf_counter()
    folder = train_leworld(cfg, latents=latents, resume=(Path(cfg.out) / "checkpoint.pt").exists(), progress=True)
    leworld_s = time.perf_counter() - tick
    model, _ = load_leworld(folder)
    params = count_parameters(model)["total"]
    tick = time.perf_counter()
    baseline = train_baseline(latents, cfg, params, args.steps, progress=True)
    baseline_s = time.perf_counter() - tick
    _, val = latents.split(cfg.val_fraction, seed)
    result = {
        "params": {"leworld": params, "lewm_baseline": sum(p.numel() for p in baseline.parameters())},
        "baseline_width": baseline.cfg.predictor_dim,
        "train_seconds": {"leworld": leworld_s, "lewm_baseline": baseline_s},
        "usage": model.usage.tolist(),
        "hard_soft_gap": hard_soft_gap(model, val, HORIZONS, seed=seed),
        "rows": {},
    }
    result["rows"]["lewm_baseline"] = open_loop_error(baseline, val, HORIZONS, seed=seed)
    result["rows"]["leworld_full"] = open_loop_error(model, val, HORIZONS, seed=seed)
    for ablation in ABLATIONS:
        result["rows"][ablation] = open_loop_error(model, val, HORIZONS, ablation=ablation, seed=seed)
    return result


def markdown_table(per_seed: dict[int, dict]) -> str:
    """Rows x horizons, mean +- std of the normalised error across seeds."""
    lines = ["| model | " + " | ".join(f"h={h}" for h in HORIZONS) + " |", "|---" * (len(HORIZONS) + 1) + "|"]
    for row in ROWS:
        cells = []
        for h in HORIZONS:
            values = np.array([r["rows"][row]["normalised"][f"h{h}"] for r in per_seed.values()])
            cells.append(f"{values.mean():.3f} ± {values.std(ddof=1) if len(values) > 1 else 0.0:.3f}")
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    first = next(iter(per_seed.values()))
    lines.append("")
    lines.append(
        f"parameters: LeWorld {first['params']['leworld']:,}, LeWM baseline {first['params']['lewm_baseline']:,} "
        f"(width {first['baseline_width']}); seeds {', '.join(map(str, per_seed))}; "
        f"normalised error = MSE / MSE of copying the last latent, hard reads, held-out episodes"
    )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, type=Path, help="leworld collect dataset, or a latents .safetensors")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=3000, help="training steps per model (LeWorld: over 3 phases)")
    p.add_argument("--memory-preset", default="tiny")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--horizon", type=int, default=8)
    p.add_argument("--work", type=Path, default=None, help="run folders (default: OUT's stem + _runs)")
    p.add_argument("--out", type=Path, default=Path("memory_ablation.json"))
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    args.work = args.work or args.out.with_name(args.out.stem + "_runs")
    args.work.mkdir(parents=True, exist_ok=True)
    cache = args.work / "latents.safetensors"
    if args.data.suffix == ".safetensors":
        latents = load_latents(args.data)
    elif cache.is_file():
        latents = load_latents(cache)
    else:
        latents = encode_dataset(args.data, progress=True)
        save_latents(latents, cache)
    per_seed = {}
    for seed in args.seeds:
        per_seed[seed] = run_seed(args, latents, seed)
        atomic_write_bytes(args.out, json.dumps({"data": str(args.data), "seeds": per_seed}, indent=2).encode())
    print(markdown_table(per_seed))


if __name__ == "__main__":
    main()
