"""Held-out checks of a world model behind the runtime interface, and its model card.

``probe_r2`` and ``open_loop_errors`` are what the tests and the model card
report; ``python -m world_models.evaluate --model M --data D --run RUN`` writes
``M/MODEL_CARD.md`` from measured values only.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from world_models.config import ModelConfig
from world_models.data.dataset import PushTClips
from world_models.lewm.probe import PROBE_FIELDS, r2_per_field, state_to_targets

HORIZONS = 5


def probe_r2(wm: Any, data: str | Path) -> dict[str, float]:
    """R^2 per field of ``wm.probe(wm.encode(frame))`` against the true state, over every
    model-step frame of a dataset."""
    clips = PushTClips(data, wm.config.history, 0, split="all")
    z = np.concatenate([wm.encode(clips.pixels[i : i + 512]) for i in range(0, len(clips.pixels), 512)])
    predicted = torch.from_numpy(wm.probe(z))
    return r2_per_field(state_to_targets(predicted), state_to_targets(clips.state))


def open_loop_errors(wm: Any, data: str | Path, horizons: int = HORIZONS) -> dict[str, list[float]]:
    """Mean squared latent error per horizon of ``wm.rollout`` and of copying the last latent,
    over every clip of ``history + horizons`` model steps in a dataset."""
    h = wm.config.history
    clips = PushTClips(data, h, horizons, split="all", seed=0)
    rollout, copy_last, count = np.zeros(horizons), np.zeros(horizons), 0
    for start in range(0, len(clips), 256):
        batch = clips.clip(clips.starts[start : start + 256])
        b, length = batch.pixels.shape[:2]
        z = wm.encode(batch.pixels.reshape(b * length, *batch.pixels.shape[2:])).reshape(b, length, -1)
        pred = wm.rollout(z[:, :h], batch.actions[:, :h], batch.actions[:, h:])
        rollout += ((pred - z[:, h:]) ** 2).mean(axis=2).sum(axis=0)
        copy_last += ((z[:, h - 1 : h] - z[:, h:]) ** 2).mean(axis=2).sum(axis=0)
        count += b
    return {"rollout": (rollout / count).tolist(), "copy_last": (copy_last / count).tolist(), "clips": count}


def run_summary(run: Path) -> tuple[list[tuple[int, float]], float]:
    """(step, training loss) pairs of a run, merged over every event file (a resumed run writes
    several), and the wall-clock seconds spent training (gaps between sessions excluded)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    by_step: dict[int, tuple[float, float]] = {}
    for path in sorted((run / "tb").glob("events.out.tfevents.*")):
        acc = EventAccumulator(str(path), size_guidance={"scalars": 0})
        acc.Reload()
        if "train/loss" in acc.Tags()["scalars"]:
            for e in acc.Scalars("train/loss"):
                by_step[e.step] = (e.value, e.wall_time)
    ordered = sorted(by_step.items())
    wall = 0.0
    for (_, (_, t0)), (_, (_, t1)) in itertools.pairwise(ordered):
        wall += t1 - t0 if t1 - t0 < 600 else 0.0  # a pause longer than 10 min is not training
    return [(step, value) for step, (value, _) in ordered], wall


def encoder_summary(cfg: ModelConfig) -> tuple[str, str]:
    """The model card's words for a config's encoder: (kind, for the title line; its shape, for the model line)."""
    if cfg.encoder == "cnn":
        channels = "-".join(str(c) for c in cfg.conv_channels)
        return "conv encoder", (
            f"encoder {len(cfg.conv_channels)} x conv 3x3 stride 2 ({channels} channels, GroupNorm) "
            f"+ linear to {cfg.encoder_dim}d"
        )
    return "ViT encoder", f"patch {cfg.patch_size}, encoder {cfg.encoder_dim}d x {cfg.encoder_depth}"


def loss_summary(cfg: ModelConfig) -> str:
    """The model card's words for the training loss: LeWM's, and the pose loss where it was used."""
    lewm = f"LeWM's (next-latent MSE + {cfg.sigreg_weight:g} x SIGReg)"
    if cfg.pose_weight > 0:
        return (
            f"{lewm} + {cfg.pose_weight:g} x the pose-aware auxiliary loss (a head regressing agent xy, "
            "block xy and the angle's sin/cos from every encoded and predicted latent; not in LeWM, see "
            "docs/design.md)"
        )
    return lewm


def write_model_card(model_dir: Path, data: Path, run: Path | None, commands: list[str]) -> str:
    """Measure, then write ``MODEL_CARD.md`` into the model folder; returns its text."""
    import world_models
    from world_models.data.dataset import load_dataset_info
    from world_models.lewm.model import count_parameters

    wm = world_models.load(model_dir, backend="torch")
    r2_fresh = probe_r2(wm, data)
    errors = open_loop_errors(wm, data)
    probe_info = json.loads((model_dir / "probe.json").read_text())
    fresh = load_dataset_info(data)
    cfg = wm.config
    params = count_parameters(wm.model)
    run_info = ""
    if run is not None and (run / "tb").is_dir():
        steps, wall = run_summary(run)
        run_info = f"- Steps: {steps[-1][0]}, final training loss {steps[-1][1]:.4f}, wall time {wall / 60:.0f} min\n"
    rows_r2 = "\n".join(f"| {f} | {probe_info['r2_val'][f]:.3f} | {r2_fresh[f]:.3f} |" for f in PROBE_FIELDS)
    rows_ol = "\n".join(
        f"| {k + 1} | {errors['rollout'][k]:.4f} | {errors['copy_last'][k]:.4f} | "
        f"{errors['rollout'][k] / errors['copy_last'][k]:.2f} |"
        for k in range(len(errors["rollout"]))
    )
    preset_name = cfg.extra.get("preset", "?")
    encoder_kind, encoder_shape = encoder_summary(cfg)
    text = f"""# {model_dir.name}: LeWM {preset_name} world model of PushT

A LeWM JEPA ({encoder_kind}, adaLN-zero predictor, SIGReg) trained from {cfg.image_size} px
frames of real PushT (gym-pusht physics) with this package's own pipeline, on a
machine with {os.cpu_count()} CPU cores and no GPU.
Measured values only: this card is written by `python -m world_models.evaluate`.

## Model

- Preset `{preset_name}`: {cfg.image_size} px frames, {encoder_shape},
  latent {cfg.latent_dim},
  predictor {cfg.predictor_dim}d x {cfg.predictor_depth}, history {cfg.history}
- Parameters: {", ".join(f"{k} {v:,}" for k, v in params.items())}
- Actions: relative moves in [-1, 1]^2 x {cfg.action_scale:g} px, held for {cfg.frameskip} physics steps
- Training data: `{cfg.extra.get("dataset", "?")}` ({cfg.extra.get("dataset_policy", "?")} policy)
- Loss: {loss_summary(cfg)}
{run_info}
## Probe R^2 (latent -> physical state)

Validation: the {probe_info.get("val_frames", "?")} held-out frames of the training data's validation episodes.
Fresh: {len(PushTClips(data, cfg.history, 0, split="all").pixels)} model-step frames of {fresh.total_episodes} episodes
collected with seed {fresh.seed} (policy {fresh.policy}), never seen in training.

| field | validation | fresh |
|---|---|---|
{rows_r2}

## Open-loop prediction (fresh episodes, {errors["clips"]} clips)

Mean squared latent error of an autoregressive rollout from {cfg.history} observed
frames under the true actions, against copying the last observed latent.

| horizon (model steps) | rollout MSE | copy-last MSE | ratio |
|---|---|---|---|
{rows_ol}

## Reproduce

```bash
{chr(10).join(commands)}
```
"""
    (model_dir / "MODEL_CARD.md").write_text(text)
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description="Write MODEL_CARD.md for a model folder from measurements.")
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True, help="fresh held-out dataset")
    parser.add_argument("--run", type=Path, help="the training run folder (for steps and wall time)")
    parser.add_argument("--command", action="append", default=[], help="a reproduction command (repeat)")
    args = parser.parse_args()
    print(write_model_card(args.model, args.data, args.run, args.command))


if __name__ == "__main__":
    main()
