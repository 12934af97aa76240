"""Train a LeWM world model on a ``leworld collect`` dataset (``leworld train``).

Top to bottom, one file: data -> model -> AdamW with warmup + cosine and
gradient clipping -> TensorBoard -> validation (loss, open-loop rollout error
per horizon against the copy-last-latent baseline, an image strip of real
frames vs frames drawn from the probed predicted state) -> resumable
checkpoints -> the final model folder with its probe.

Several processes: ``torchrun --nproc_per_node=N -m world_models.lewm.train ...``
(gloo on CPU). The batch is split across processes, SIGReg sees the global
batch (gathered with gradients) and BatchNorm takes global statistics, so N
processes compute what one would on the same global batch.

Checkpoints (``OUT/checkpoint.pt``: model, optimizer, step, RNG states) are
written atomically every ``--checkpoint-every`` steps and on Ctrl-C;
``--resume`` continues from one. A torch file is unavoidable for optimizer
state; it is read with ``weights_only=True``.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from numba_kernels.pusht_raster import render_pusht
from world_models.argtypes import non_negative_int, positive_int
from world_models.config import ModelConfig, preset
from world_models.data.dataset import PushTClips, load_dataset_info
from world_models.errors import LeWorldError
from world_models.lewm.folder import atomic_write_bytes, save_model
from world_models.lewm.model import LeWM, count_parameters, init_weights, local_statistics, recalibrate_batchnorm
from world_models.lewm.probe import apply_ridge, fit_dataset_probe, fit_ridge
from world_models.video import add_video

CHECKPOINT = "checkpoint.pt"
ROLLOUT_HORIZON = 5


@dataclass
class TrainConfig:
    """Training settings (the model's live in :class:`ModelConfig`)."""

    data: str
    out: str
    preset: str = "tiny"
    steps: int = 6000
    batch_size: int = 128  # global, split across processes
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup: int = 300
    min_lr_ratio: float = 0.05
    grad_clip: float = 1.0
    num_preds: int = 1
    val_fraction: float = 0.1
    val_every: int = 500
    val_batches: int = 4
    checkpoint_every: int = 500
    log_every: int = 25
    seed: int = 0
    probe_steps: int = 1500
    probe_clips: int = 4000
    threads: int = 0  # 0: torch's default


def warmup_cosine(step: int, total: int, warmup: int, lr: float, floor: float) -> float:
    """Linear warmup over ``warmup`` steps, then cosine down to ``floor * lr`` at ``total``."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup, then cosine down to ``min_lr_ratio * lr``."""
    return warmup_cosine(step, cfg.steps, cfg.warmup, cfg.lr, cfg.min_lr_ratio)


def setup_distributed() -> tuple[int, int]:
    """(rank, world size); joins the torchrun group (gloo) when launched by torchrun."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ and not dist.is_initialized():
        dist.init_process_group("gloo")
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def sigreg_generator(seed: int, step: int) -> torch.Generator:
    """The same SIGReg directions in every process at a given step."""
    return torch.Generator().manual_seed(seed * 1_000_003 + step)


def local_slice(batch_size: int, rank: int, world: int) -> slice:
    if batch_size % world:
        raise LeWorldError(f"batch size {batch_size} must be divisible by the {world} processes")
    per = batch_size // world
    return slice(rank * per, (rank + 1) * per)


def wrap_distributed(model: LeWM) -> torch.nn.Module:
    """DistributedDataParallel in a process group of more than one, the model itself otherwise."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        return torch.nn.parallel.DistributedDataParallel(model)
    return model


def train_step(
    module: torch.nn.Module,
    pixels: torch.Tensor,
    actions: torch.Tensor,
    generator: torch.Generator,
) -> dict[str, torch.Tensor]:
    """Forward and backward on this process's part of a global batch.

    ``module`` is a :class:`LeWM` or its DDP wrapper; afterwards the gradients
    are those of the loss on the global batch (DDP averages the per-process
    gradients, and SIGReg/BatchNorm already see the global batch).
    """
    out = module(pixels, actions, generator)
    out["loss"].backward()
    return out


# ------------------------------------------------------------------ evaluation
@torch.no_grad()
def open_loop_errors(model: LeWM, clips: PushTClips, batches: int, batch_size: int) -> dict[str, np.ndarray]:
    """MSE per horizon of the rollout and of copying the last latent, on validation clips."""
    model.eval()
    h = model.cfg.history
    rollout, copy_last = np.zeros(ROLLOUT_HORIZON), np.zeros(ROLLOUT_HORIZON)
    for _ in range(batches):
        batch = clips.sample(batch_size)
        px, act = torch.from_numpy(batch.pixels), torch.from_numpy(batch.actions)
        z = model.encode(px)
        pred = model.rollout(z[:, :h], act[:, :h], act[:, h:])
        target = z[:, h:]
        rollout += ((pred - target) ** 2).mean(dim=(0, 2)).numpy()
        copy_last += ((z[:, h - 1 : h] - target) ** 2).mean(dim=(0, 2)).numpy()
    model.train()
    return {"rollout": rollout / batches, "copy_last": copy_last / batches}


@torch.no_grad()
def open_loop_frames(model: LeWM, train: PushTClips, val: PushTClips, rows: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Observed frames and frames drawn from the ridge-probed imagined state, (rows, horizon, S, S, 3) each.

    The imagination is open loop: ``history`` real frames, then the predictor alone under
    the clip's actions for ``ROLLOUT_HORIZON`` model steps (as DreamerV3's open-loop videos).
    """
    model.eval()
    h = model.cfg.history
    rng = np.random.default_rng(0)  # its own draws: the training sampler's sequence stays untouched
    fit = train.clip(train.starts[rng.integers(0, len(train.starts), 512)])
    z_fit = model.encode(torch.from_numpy(fit.pixels[:, 0]))
    weights = fit_ridge(z_fit, torch.from_numpy(fit.state[:, 0]))
    batch = val.clip(val.starts[rng.integers(0, len(val.starts), rows)])
    px, act = torch.from_numpy(batch.pixels), torch.from_numpy(batch.actions)
    z = model.encode(px)
    pred = model.rollout(z[:, :h], act[:, :h], act[:, h:])
    states = apply_ridge(weights, pred).numpy().astype(np.float64)
    size = model.cfg.image_size
    drawn = render_pusht(states[..., :2].reshape(-1, 2), states[..., 2:].reshape(-1, 3), size)
    model.train()
    return batch.pixels[:, h:], drawn.reshape(rows, ROLLOUT_HORIZON, size, size, 3)


def image_strip(real: np.ndarray, imagined: np.ndarray) -> np.ndarray:
    """One image: per clip, observed frames over imagined ones, horizons left to right."""
    rows, horizon, size = real.shape[:3]
    pairs = np.concatenate([real, imagined], axis=2)  # (rows, H, 2*size, size, 3)
    return pairs.transpose(0, 2, 1, 3, 4).reshape(rows * 2 * size, horizon * size, 3)


def open_loop_video(real: np.ndarray, imagined: np.ndarray) -> list[np.ndarray]:
    """One frame per horizon: the clips stacked, each observed | imagined side by side."""
    pairs = np.concatenate([real, imagined], axis=3)  # (rows, H, size, 2*size, 3)
    return [np.concatenate(list(pairs[:, t]), axis=0) for t in range(real.shape[1])]


# ------------------------------------------------------------------ checkpoints
def save_checkpoint(
    out: Path, model: LeWM, optimizer: torch.optim.Optimizer, step: int, rng_state: dict[str, Any]
) -> None:
    """``rng_state`` is the sampler's state at the start of step ``step`` (so a resumed run draws the same batch)."""
    buffer = io.BytesIO()
    torch.save(
        {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "step": step,
            "torch_rng": torch.get_rng_state(),
            "numpy_rng": json.dumps(rng_state),
            "config": json.dumps(model.cfg.to_dict()),
        },
        buffer,
    )
    atomic_write_bytes(out / CHECKPOINT, buffer.getvalue())


def load_checkpoint(path: Path) -> dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a torch file can fail in many ways; all mean "unusable checkpoint"
        raise LeWorldError(f"{path}: unreadable checkpoint ({err})") from None


# ------------------------------------------------------------------ main loop
def train(cfg: TrainConfig, model_cfg: ModelConfig | None = None, resume: bool = False, progress: bool = True) -> Path:
    """Train and write ``OUT/model``; returns that folder.

    ``cfg`` may also be a :class:`~world_models.memory.train.MemoryTrainConfig`
    (``--world-model leworld``): the three-phase LeWorld memory training runs instead.
    """
    if not isinstance(cfg, TrainConfig):
        from world_models.memory.train import train_leworld

        return train_leworld(cfg, resume=resume, progress=progress)
    from torch.utils.tensorboard import SummaryWriter
    from tqdm import tqdm

    rank, world = setup_distributed()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    ckpt_path = out / CHECKPOINT
    if not resume and ckpt_path.exists():
        raise LeWorldError(f"{out} already holds a training run; pass --resume to continue it or pick another --out")
    if resume and not ckpt_path.exists():
        raise LeWorldError(f"{ckpt_path}: no checkpoint to resume from")
    state = load_checkpoint(ckpt_path) if resume else None
    if state is not None:
        model_cfg = ModelConfig.from_dict(json.loads(state["config"]), source=str(ckpt_path))
    model_cfg = model_cfg or preset(cfg.preset)

    data_info = load_dataset_info(cfg.data)
    if data_info.image_size != model_cfg.image_size:
        raise LeWorldError(
            f"{cfg.data}: frames are {data_info.image_size}px but preset {cfg.preset!r} expects "
            f"{model_cfg.image_size}px; collect with --image-size {model_cfg.image_size}"
        )
    train_clips = PushTClips(
        cfg.data, model_cfg.history, cfg.num_preds, "train", cfg.val_fraction, progress=progress and rank == 0
    )
    val_clips = PushTClips(cfg.data, model_cfg.history, ROLLOUT_HORIZON, "val", cfg.val_fraction, seed=cfg.seed)
    model_cfg = dataclasses.replace(
        model_cfg,
        frameskip=data_info.frameskip,
        action_scale=data_info.action_scale,
        extra={**model_cfg.extra, "preset": cfg.preset, "dataset": str(cfg.data), "dataset_policy": data_info.policy},
    )

    torch.manual_seed(cfg.seed)
    model = LeWM(model_cfg)
    init_weights(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    rng = np.random.default_rng(cfg.seed)  # the same in every process: all draw the global batch
    step = 0
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step = int(state["step"])
        torch.set_rng_state(state["torch_rng"])
        rng.bit_generator.state = json.loads(state["numpy_rng"])
    train_clips.rng = rng
    writer = SummaryWriter(str(out / "tb")) if rank == 0 else None
    if rank == 0 and step == 0:
        counts = count_parameters(model)
        print("parameters: " + ", ".join(f"{k} {v:,}" for k, v in counts.items()))
        for name, value in counts.items():
            writer.add_scalar(f"params/{name}", value, 0)

    part = local_slice(cfg.batch_size, rank, world)
    module = wrap_distributed(model)
    bar = tqdm(total=cfg.steps, initial=step, desc="training", unit="step", disable=not (progress and rank == 0))
    model.train()
    tick, clips_done = time.perf_counter(), 0
    rng_state = rng.bit_generator.state
    try:
        while step < cfg.steps:
            batch = train_clips.sample(cfg.batch_size)  # every process draws the global batch, keeps its part
            pixels = torch.from_numpy(batch.pixels[part])
            actions = torch.from_numpy(batch.actions[part])
            lr = lr_at(step, cfg)
            for group in optimizer.param_groups:
                group["lr"] = lr
            optimizer.zero_grad(set_to_none=True)
            out_step = train_step(module, pixels, actions, sigreg_generator(cfg.seed, step))
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            step += 1
            rng_state = rng.bit_generator.state  # where step ``step + 1`` will draw from
            clips_done += cfg.batch_size
            bar.update(1)
            if writer is not None and (step % cfg.log_every == 0 or step == cfg.steps):
                now = time.perf_counter()
                for key in ("loss", "prediction", "sigreg"):
                    writer.add_scalar(f"train/{key}", out_step[key].item(), step)
                writer.add_scalar("train/lr", lr, step)
                writer.add_scalar("train/grad_norm", float(grad_norm), step)
                writer.add_scalar("train/clips_per_s", clips_done / (now - tick), step)
                bar.set_postfix(loss=f"{out_step['loss'].item():.4f}")
                tick, clips_done = now, 0
            if writer is not None and (step % cfg.val_every == 0 or step == cfg.steps):
                with local_statistics():
                    validate(model, train_clips, val_clips, cfg, writer, step)
            if rank == 0 and (step % cfg.checkpoint_every == 0 or step == cfg.steps):
                save_checkpoint(out, model, optimizer, step, rng_state)
    except KeyboardInterrupt:
        if rank == 0:  # an unfinished step is redone on resume, from the same batch
            save_checkpoint(out, model, optimizer, step, rng_state)
            print(f"\ninterrupted at step {step}; checkpoint saved, continue with --resume")
        raise
    finally:
        bar.close()
        if writer is not None:
            writer.flush()
    folder = out / "model"
    if rank == 0:
        with local_statistics():
            finish(model, cfg, folder, writer, train_clips)
        writer.close()
    if dist.is_initialized():
        dist.barrier()
    return folder


def recalibrate(model: LeWM, clips: PushTClips, seed: int, batches: int = 8, batch_size: int = 256) -> None:
    """BatchNorm recalibration on training clips drawn from their own generator (the training
    sampler's sequence is left untouched)."""
    rng = np.random.default_rng(seed)
    chosen = [clips.clip(clips.starts[rng.integers(0, len(clips.starts), batch_size)]) for _ in range(batches)]
    recalibrate_batchnorm(model, ((torch.from_numpy(b.pixels), torch.from_numpy(b.actions)) for b in chosen))


def validate(model: LeWM, train_clips: PushTClips, val_clips: PushTClips, cfg: TrainConfig, writer, step: int) -> None:
    recalibrate(model, train_clips, cfg.seed)
    with torch.no_grad():
        losses = {"loss": 0.0, "prediction": 0.0, "sigreg": 0.0}
        for i in range(cfg.val_batches):
            batch = val_clips.sample(min(cfg.batch_size, 256))
            h = model.cfg.history
            out = model.loss(
                torch.from_numpy(batch.pixels[:, : h + 1]),
                torch.from_numpy(batch.actions[:, : h + 1]),
                sigreg_generator(cfg.seed, -1 - i),
            )
            for key in losses:
                losses[key] += out[key].item() / cfg.val_batches
    for key, value in losses.items():
        writer.add_scalar(f"val/{key}", value, step)
    errors = open_loop_errors(model, val_clips, cfg.val_batches, 128)
    for k in range(ROLLOUT_HORIZON):
        writer.add_scalar(f"rollout/mse_h{k + 1}", errors["rollout"][k], step)
        writer.add_scalar(f"rollout/copy_last_mse_h{k + 1}", errors["copy_last"][k], step)
        writer.add_scalar(f"rollout/ratio_h{k + 1}", errors["rollout"][k] / max(errors["copy_last"][k], 1e-12), step)
    real, imagined = open_loop_frames(model, train_clips, val_clips)
    writer.add_image("rollout/real_vs_imagined", image_strip(real, imagined), step, dataformats="HWC")
    add_video(writer, "rollout/open_loop_video", open_loop_video(real, imagined), step, fps=4)
    model.train()


def finish(model: LeWM, cfg: TrainConfig, folder: Path, writer, train_clips: PushTClips) -> None:
    """Recalibrate BatchNorm, fit the probe on training episodes, score it on validation episodes,
    write the model folder."""
    recalibrate(model, train_clips, cfg.seed, batches=16)
    probe, r2, info = fit_dataset_probe(
        model, cfg.data, cfg.val_fraction, frames=cfg.probe_clips, steps=cfg.probe_steps, seed=cfg.seed
    )
    for name, value in r2.items():
        writer.add_scalar(f"probe/r2_{name}", value, cfg.steps)
    save_model(folder, model, probe, info)
    print("probe R^2 on validation episodes: " + ", ".join(f"{k} {v:.3f}" for k, v in r2.items()))
    print(f"model written to {folder}")


# ------------------------------------------------------------------ command line
def add_arguments(p: argparse.ArgumentParser) -> None:
    defaults = TrainConfig(data="", out="")
    p.add_argument("--data", required=True, help="dataset folder from leworld collect")
    p.add_argument("--out", required=True, help="run folder: checkpoint.pt, tb/, model/")
    p.add_argument("--preset", default=defaults.preset, help="tiny, slim_*, baseline (see world_models/config.py)")
    p.add_argument(
        "--world-model",
        default="lewm",
        choices=["lewm", "leworld"],
        help="lewm (from pixels), or leworld (the memory model: three phases on the --encoder-model's latents)",
    )
    p.add_argument("--steps", type=positive_int, default=defaults.steps)
    p.add_argument("--batch-size", type=positive_int, default=defaults.batch_size, help="global batch, in clips")
    p.add_argument("--lr", type=float, default=defaults.lr)
    p.add_argument("--val-every", type=positive_int, default=defaults.val_every)
    p.add_argument("--checkpoint-every", type=positive_int, default=defaults.checkpoint_every)
    p.add_argument("--probe-steps", type=positive_int, default=defaults.probe_steps)
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument("--threads", type=non_negative_int, default=0, help="torch threads per process (0: default)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    g = p.add_argument_group(
        "leworld memory model (--world-model leworld; --preset, --val-every and --probe-steps are LeWM's only)"
    )
    g.add_argument("--memory-preset", default="tiny", help="tiny (CPU) or seed (the seed card's sizes)")
    g.add_argument(
        "--phase-steps",
        type=positive_int,
        nargs=3,
        metavar=("PRETRAIN", "JOINT", "INFO"),
        help="steps of phases 1, 2, 3 (default: --steps split 30/50/20 percent)",
    )
    g.add_argument("--horizon", type=positive_int, default=8, help="open-loop steps per training window (8)")
    g.add_argument("--encoder-model", default="pusht-tiny", help="frozen encoder model the latents come from")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def memory_config_from_args(args: argparse.Namespace) -> Any:
    """The :class:`~world_models.memory.train.MemoryTrainConfig` of ``--world-model leworld``."""
    from world_models.memory.model import memory_preset
    from world_models.memory.train import MemoryTrainConfig

    memory_preset(args.memory_preset)  # an unknown name fails here, with the list
    if not args.lr > 0:
        raise LeWorldError(f"--lr must be above 0, got {args.lr}")
    steps = args.phase_steps
    if steps is None:
        steps = [max(1, round(args.steps * f)) for f in (0.3, 0.5, 0.2)]
    return MemoryTrainConfig(
        data=str(args.data),
        out=str(args.out),
        memory_preset=args.memory_preset,
        phase_steps=tuple(steps),
        batch_size=args.batch_size,
        horizon=args.horizon,
        lr=args.lr,
        seed=args.seed,
        encoder_model=args.encoder_model,
        checkpoint_every=args.checkpoint_every,
        threads=args.threads,
    )


def config_from_args(args: argparse.Namespace) -> Any:
    """``TrainConfig`` for ``--world-model lewm``, ``MemoryTrainConfig`` for ``leworld``."""
    if args.world_model == "leworld":
        return memory_config_from_args(args)
    if args.batch_size < 2:
        raise LeWorldError(f"--batch-size must be at least 2 (BatchNorm needs a batch), got {args.batch_size}")
    preset(args.preset)  # an unknown name fails here, with the list
    return TrainConfig(
        data=str(args.data),
        out=str(args.out),
        preset=args.preset,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        val_every=args.val_every,
        checkpoint_every=args.checkpoint_every,
        probe_steps=args.probe_steps,
        seed=args.seed,
        threads=args.threads,
        warmup=min(300, max(1, args.steps // 10)),
    )


def main() -> None:
    """Entry point for ``torchrun -m world_models.lewm.train``."""
    import sys

    parser = argparse.ArgumentParser(prog="world_models.lewm.train", description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args()
    try:
        train(config_from_args(args), resume=args.resume, progress=not args.quiet)
    except LeWorldError as err:
        print(f"train: error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
