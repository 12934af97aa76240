"""Which 64-px-class encoder lets a JEPA-trained LeWM latent see the block's angle?

Every variant is LeWM (``world_models.lewm.model.LeWM``: projector, adaLN-zero predictor, SIGReg
loss unchanged) trained with the package's own step (``world_models.lewm.train.train_step``,
``clip_and_step``, ``sigreg_generator``) on the same dataset, for the same wall-clock budget (or
the same number of steps with ``--steps``), the same batch, the same seed; only the encoder
differs. Afterwards: BatchNorm recalibration (``world_models.lewm.train.recalibrate``), the
project's probe (``encode_frames`` + ``fit_probe``, the same frames, steps and hidden width as
``fit_dataset_probe``) fitted on training episodes and scored on validation episodes, open-loop
latent MSE against copy-last on validation clips (``world_models.lewm.train.open_loop_errors``),
parameters, and no-grad encode time per frame.

Variants (``--variants``):

* ``vit16``: today's ``tiny`` preset (ViT patch 16, d96 x 4, 64 px, latent 64).
* ``vit8``: the same ViT at patch 8 (64 tokens instead of 16).
* ``vit16_96``: 96 px frames, patch 16 (36 tokens). The frames are redrawn at 96 px from the
  64-px dataset's stored states with the renderer that drew them (``render_pusht``; the same
  states, another frame size), so no second collect is needed; checked against the stored 64-px
  frames first.
* ``cnn``: a conv stem instead of the ViT: 4 x (conv 3x3 stride 2, padding 1, GELU),
  channels 32-64-128-128 (64 -> 4 x 4 px), flatten, Linear to the encoder width, LayerNorm, then
  LeWM's projector. No BatchNorm in the stem (recalibration covers the projectors only).
* ``vit16_z128``: ``tiny`` with latent 128.
* ``cnn_z128``: the conv stem with latent 128.
* ``cnn_gn``: the package's conv encoder (``ModelConfig(encoder="cnn")``, preset ``tiny_cnn``):
  the same stem with GroupNorm(8) after every conv.
* ``cnn_bn``: the study's stem with BatchNorm after every conv.

``--pose-weight W`` (default 0: pure LeWM) adds the pose-aware auxiliary loss the issue offers: a
small head (Linear 256, GELU, Linear 6) trained jointly regresses the probe's six targets (agent
xy, block xy, sin/cos of the angle) from every frame's latent ``z``, and ``W`` times its mean
squared error joins LeWM's loss. The head is the study's own (the probe that scores a variant is
fitted afresh afterwards, as for every variant); the result is named ``VARIANT_poseW``.

Run variants in separate processes to put them side by side on a 2-core machine (one thread
each), then print the table from the JSON files::

    python benchmarks/encoder_study.py --data DIR --variants vit16 cnn --budget-s 360 --threads 1 --out RUNS
    python benchmarks/encoder_study.py --table RUNS

The learning rate follows the trainer's schedule (warmup over the first 10 %, cosine to 5 %)
on elapsed time when the budget is wall-clock, on steps with ``--steps``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from numba_kernels.pusht_raster import render_pusht
from world_models.config import preset
from world_models.data.dataset import PushTClips, load_dataset_info
from world_models.files import atomic_write_bytes
from world_models.lewm.model import LeWM, count_parameters, init_weights, pose_head, projector
from world_models.lewm.probe import encode_frames, fit_probe
from world_models.lewm.train import (
    ROLLOUT_HORIZON,
    TrainConfig,
    open_loop_errors,
    recalibrate,
    sigreg_generator,
    train_step,
)
from world_models.pose import PROBE_FIELDS
from world_models.training import clip_and_step, set_lr, warmup_cosine


class ConvEncoder(nn.Module):
    """Pixels uint8 (N, H, W, 3) -> latents (N, D): a 4-layer stride-2 conv stem, then LeWM's projector."""

    def __init__(self, cfg, channels=(32, 64, 128, 128), norm: str = "") -> None:
        super().__init__()
        self.cfg = cfg
        layers, c_in = [], 3
        for c in channels:
            layers.append(nn.Conv2d(c_in, c, 3, stride=2, padding=1))
            if norm == "gn":
                layers.append(nn.GroupNorm(8, c))
            elif norm == "bn":
                layers.append(nn.BatchNorm2d(c))
            layers.append(nn.GELU())
            c_in = c
        self.stem = nn.Sequential(*layers)
        side = cfg.image_size // 2 ** len(channels)
        self.flat = nn.Linear(c_in * side * side, cfg.encoder_dim)
        self.norm = nn.LayerNorm(cfg.encoder_dim)
        self.projector = projector(cfg.encoder_dim, cfg.projector_hidden, cfg.latent_dim)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = pixels.permute(0, 3, 1, 2).float() / 127.5 - 1.0
        return self.projector(self.norm(self.flat(self.stem(x).flatten(1))))


VARIANTS = {
    # name: (encoder kind, image size, ModelConfig overrides of `tiny`)
    "vit16": ("vit", 64, {}),
    "vit8": ("vit", 64, {"patch_size": 8}),
    "vit16_96": ("vit", 96, {"image_size": 96}),
    "cnn": ("cnn", 64, {}),
    "vit16_z128": ("vit", 64, {"latent_dim": 128}),
    "cnn_z128": ("cnn", 64, {"latent_dim": 128}),
    "cnn_gn": ("conv", 64, {"encoder": "cnn"}),  # the package's own conv encoder (preset tiny_cnn)
    "cnn_bn": ("cnn_bn", 64, {}),
}


def build(name: str, data_info, seed: int) -> LeWM:
    kind, _size, overrides = VARIANTS[name]
    cfg = preset("tiny", **overrides)
    cfg = dataclasses.replace(cfg, frameskip=data_info.frameskip, action_scale=data_info.action_scale)
    torch.manual_seed(seed)
    model = LeWM(cfg)
    if kind.startswith("cnn"):
        model.encoder = ConvEncoder(cfg, norm=kind.partition("_")[2])
    init_weights(model)
    return model


def redraw(clips: PushTClips, size: int, check: bool = False) -> None:
    """Replace the clips' frames by frames drawn at ``size`` px from their stored states."""
    if check:  # the stored frames must be what the renderer draws from the stored states
        n = min(512, len(clips.pixels))
        again = render_pusht(clips.state[:n, :2], clips.state[:n, 2:], clips.info.image_size)
        diff = np.abs(again.astype(int) - clips.pixels[:n].astype(int))
        print(f"redraw check at {clips.info.image_size}px: {np.mean(diff > 0):.2e} of values differ, max {diff.max()}")
    out = np.empty((len(clips.state), size, size, 3), np.uint8)
    for i in range(0, len(out), 4096):
        out[i : i + 4096] = render_pusht(clips.state[i : i + 4096, :2], clips.state[i : i + 4096, 2:], size)
    clips.pixels = out


def clips_for(data: str, size: int, history: int, num_preds: int, split: str, seed: int, check=False) -> PushTClips:
    clips = PushTClips(data, history, num_preds, split, 0.1, seed=seed)
    if size != clips.info.image_size:
        redraw(clips, size, check)
    return clips


def encode_ms_per_frame(model: LeWM, pixels: np.ndarray, repeats: int = 3) -> float:
    model.eval()
    px = torch.from_numpy(pixels)
    with torch.no_grad():
        model.encode(px[:32])
        best = float("inf")
        for _ in range(repeats):
            tick = time.perf_counter()
            model.encode(px)
            best = min(best, time.perf_counter() - tick)
    return 1000.0 * best / len(px)


def pose_step(
    model: LeWM,
    head: nn.Module,
    pixels: torch.Tensor,
    actions: torch.Tensor,
    state: np.ndarray,
    generator: torch.Generator,
    args: argparse.Namespace,
) -> dict[str, torch.Tensor]:
    """LeWM's loss plus ``args.pose_weight`` x the head's error on every frame's latent; backward."""
    from world_models.lewm.probe import state_to_targets

    latents: list[torch.Tensor] = []
    hook = model.encoder.register_forward_hook(lambda _m, _i, output: latents.append(output))
    try:
        out = model(pixels, actions, generator)
    finally:
        hook.remove()
    targets = state_to_targets(state.reshape(-1, state.shape[-1]))  # frames in the encoder's order
    pose = torch.nn.functional.mse_loss(head(latents[0]), targets)
    (out["loss"] + args.pose_weight * pose).backward()
    return {**out, "pose": pose.detach()}


def run_variant(name: str, args: argparse.Namespace) -> dict:
    info = load_dataset_info(args.data)
    size = VARIANTS[name][1]
    model = build(name, info, args.seed)
    h = model.cfg.history
    cfg = TrainConfig(data=str(args.data), out="", batch_size=args.batch_size, seed=args.seed)
    train = clips_for(args.data, size, h, cfg.num_preds, "train", args.seed, check=size != info.image_size)
    train.rng = np.random.default_rng(args.seed)
    head = pose_head(model.cfg.latent_dim) if args.pose_weight > 0 else None
    trained = list(model.parameters()) + ([] if head is None else list(head.parameters()))
    optimizer = torch.optim.AdamW(trained, lr=cfg.lr, weight_decay=cfg.weight_decay)
    params = count_parameters(model)
    print(f"[{name}] params {params}", flush=True)

    model.train()
    losses, pose_losses, step, tick = [], [], 0, time.perf_counter()
    while True:
        elapsed = time.perf_counter() - tick
        frac = step / args.steps if args.steps else elapsed / args.budget_s
        if frac >= 1.0:
            break
        lr = warmup_cosine(int(frac * 10_000), 10_000, 1_000, cfg.lr, cfg.min_lr_ratio)
        batch = train.sample(cfg.batch_size)
        set_lr(optimizer, lr)
        optimizer.zero_grad(set_to_none=True)
        pixels, actions = torch.from_numpy(batch.pixels), torch.from_numpy(batch.actions)
        if head is None:
            out = train_step(model, pixels, actions, sigreg_generator(args.seed, step))
        else:
            out = pose_step(model, head, pixels, actions, batch.state, sigreg_generator(args.seed, step), args)
        clip_and_step(trained, optimizer, cfg.grad_clip)
        losses.append([out[k].item() for k in ("loss", "prediction", "sigreg")])
        if head is not None:
            pose_losses.append(out["pose"].item())
        step += 1
        if step % 100 == 0:
            print(f"[{name}] step {step} {elapsed:.0f}s loss {np.mean(losses[-100:], 0).round(4).tolist()}", flush=True)
    train_s = time.perf_counter() - tick
    last = np.mean(losses[-50:], axis=0)

    recalibrate(model, train, args.seed, batches=16)
    # The project's probe fit (fit_dataset_probe's steps), on clips drawn at this variant's size.
    probe_train = clips_for(args.data, size, h, 0, "train", args.seed)
    probe_val = clips_for(args.data, size, h, 0, "val", args.seed)
    z_train, s_train = encode_frames(model, probe_train, args.probe_frames)
    z_val, s_val = encode_frames(model, probe_val, args.probe_frames)
    _probe, r2 = fit_probe(z_train, s_train, z_val, s_val, steps=args.probe_steps, hidden=256, seed=args.seed)
    # Linear read-out too (ridge), to see how directly the latent holds each field.
    from world_models.lewm.probe import fit_ridge, r2_per_field, state_to_targets

    w = fit_ridge(z_train, s_train)
    x_val = torch.cat([z_val, torch.ones(len(z_val), 1)], dim=1)
    r2_linear = r2_per_field(x_val @ w, state_to_targets(s_val))

    val = clips_for(args.data, size, h, ROLLOUT_HORIZON, "val", args.seed)
    val.rng = np.random.default_rng(args.seed)
    errors = open_loop_errors(model, val, 8, 128)
    ms = encode_ms_per_frame(model, probe_val.pixels[:256])
    result = {
        "variant": name if head is None else f"{name}_pose{args.pose_weight:g}",
        "pose_weight": args.pose_weight,
        "final_pose_loss": float(np.mean(pose_losses[-50:])) if pose_losses else None,
        "encoder": VARIANTS[name][0],
        "config": model.cfg.to_dict(),
        "threads": torch.get_num_threads(),
        "budget_s": args.budget_s,
        "steps": step,
        "train_s": train_s,
        "frames_per_s": step * cfg.batch_size * train.clip_length / train_s,
        "final_loss": dict(zip(("loss", "prediction", "sigreg"), last.tolist(), strict=True)),
        "probe_r2": r2,
        "ridge_r2": r2_linear,
        "rollout_mse": errors["rollout"].tolist(),
        "copy_last_mse": errors["copy_last"].tolist(),
        "params": params,
        "encode_ms_per_frame": ms,
        "encoder_params": sum(p.numel() for p in model.encoder.parameters()),
    }
    print(f"[{name}] probe R^2 " + ", ".join(f"{k} {v:.3f}" for k, v in r2.items()), flush=True)
    return result


def table(folder: Path) -> str:
    rows = [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]
    head = ["variant", "steps", "train frames/s", "final loss (pred / sigreg)"]
    head += [f"R^2 {f}" for f in PROBE_FIELDS] + ["ridge sin/cos"]
    head += ["MSE h1 / copy", "MSE h5 / copy", "params (enc / total)", "encode ms/frame"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        fl = r["final_loss"]
        cells = [
            r["variant"],
            str(r["steps"]),
            f"{r['frames_per_s']:.0f}",
            f"{fl['loss']:.3f} ({fl['prediction']:.3f} / {fl['sigreg']:.2f})",
        ]
        cells += [f"{r['probe_r2'][f]:.2f}" for f in PROBE_FIELDS]
        cells += [f"{r['ridge_r2']['sin_angle']:.2f} / {r['ridge_r2']['cos_angle']:.2f}"]
        for k in (0, 4):
            cells.append(f"{r['rollout_mse'][k]:.3f} / {r['copy_last_mse'][k]:.3f}")
        cells.append(f"{r['encoder_params'] / 1e3:.0f} k / {r['params']['total'] / 1e6:.2f} M")
        cells.append(f"{r['encode_ms_per_frame']:.3f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", help="a leworld collect dataset (64 px)")
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=["vit16", "cnn"])
    p.add_argument("--budget-s", type=float, default=360.0, help="training wall-clock seconds per variant")
    p.add_argument("--steps", type=int, default=0, help="train a fixed number of steps instead of --budget-s")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--probe-frames", type=int, default=4000)
    p.add_argument("--probe-steps", type=int, default=1500)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--pose-weight", type=float, default=0.0, help="weight of the auxiliary pose loss (0: none)")
    p.add_argument("--out", type=Path, help="folder for one JSON per variant")
    p.add_argument("--table", type=Path, help="print the markdown table of a --out folder and exit")
    args = p.parse_args()
    if args.table:
        print(table(args.table))
        return
    if not (args.data and args.out):
        p.error("--data and --out are required unless --table")
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.variants:
        result = run_variant(name, args)
        atomic_write_bytes(args.out / f"{result['variant']}.json", json.dumps(result, indent=2).encode())


if __name__ == "__main__":
    main()
