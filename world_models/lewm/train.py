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
written atomically every ``--checkpoint-every`` steps and on Ctrl-C or SIGTERM;
``--resume`` continues from one. A torch file is unavoidable for optimizer
state; it is read with ``weights_only=True`` and checked key by key.

``--out`` is checked before any work; a run that fails before its first
checkpoint leaves no folder behind. A non-finite loss, gradient norm or weight
stops the run with an error (every process at the same step): no checkpoint
or model with NaN weights is ever written, and the last good checkpoint stays.
"""

from __future__ import annotations

import argparse
import dataclasses
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
from world_models.argtypes import non_negative_float, non_negative_int, positive_float, positive_int
from world_models.config import ModelConfig, preset
from world_models.data.dataset import PushTClips, load_dataset_info
from world_models.errors import ArgumentError, LeWorldError
from world_models.lewm.folder import save_model
from world_models.lewm.model import LeWM, count_parameters, init_weights, local_statistics, recalibrate_batchnorm
from world_models.lewm.probe import apply_ridge, fit_dataset_probe, fit_ridge
from world_models.pose import state_to_targets
from world_models.signals import check_interrupt, sigterm_as_ctrl_c, uninterrupted
from world_models.training import (
    CHECKPOINT,
    check_finite,
    check_finite_weights,
    check_run_folder,
    check_settings,
    load_checkpoint,
    log_parameter_counts,
    restore,
    restore_rng,
    run_folder,
    set_lr,
    setting,
    shared_settings,
    warmup_cosine,
    write_checkpoint,
)
from world_models.video import add_video

ROLLOUT_HORIZON = 5
# The keys of a LeWM checkpoint (besides the RNG states) and their types.
CHECKPOINT_FIELDS: dict[str, type] = {"model": dict, "optimizer": dict, "step": int, "config": str}


@dataclass
class TrainConfig:
    """Training settings (the model's live in :class:`ModelConfig`).

    A value out of its field's range (a learning rate that is not a finite number above 0, ...)
    raises :class:`~world_models.errors.ArgumentError` here.
    """

    data: str
    out: str
    preset: str = "tiny"
    steps: int = setting(6000, minimum=1)
    batch_size: int = setting(128, minimum=1)  # global, split across processes
    lr: float = setting(1e-3, above=0.0)
    weight_decay: float = setting(0.05, minimum=0.0)
    warmup: int = setting(300, minimum=0)
    min_lr_ratio: float = setting(0.05, minimum=0.0)
    grad_clip: float = setting(1.0, above=0.0)
    num_preds: int = setting(1, minimum=1)
    val_fraction: float = setting(0.1, minimum=0.0)
    val_every: int = setting(500, minimum=1)
    val_batches: int = setting(4, minimum=1)
    checkpoint_every: int = setting(500, minimum=1)
    log_every: int = setting(25, minimum=1)
    seed: int = 0
    probe_steps: int = setting(1500, minimum=1)
    probe_clips: int = setting(4000, minimum=1)
    recalibration_batches: int = setting(16, minimum=1)  # of 256 clips at the end; validation uses half
    threads: int = setting(0, minimum=0)  # 0: torch's default
    pose_weight: float | None = None  # None: the preset's (0 for all but tiny_cnn_pose)

    def __post_init__(self) -> None:
        check_settings(self)
        if self.pose_weight is not None and not (math.isfinite(self.pose_weight) and self.pose_weight >= 0):
            raise ArgumentError(f"pose_weight must be a finite number of at least 0, got {self.pose_weight!r}")


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
    """This process's rows of a global batch of ``batch_size`` split across ``world`` processes.

    Raises:
        ArgumentError: ``batch_size`` does not split evenly.
    """
    if batch_size % world:
        raise ArgumentError(f"batch size {batch_size} must be divisible by the {world} processes")
    per = batch_size // world
    return slice(rank * per, (rank + 1) * per)


def all_processes_agree(ok: bool) -> bool:
    """True when ``ok`` holds in every process of the group (``ok`` itself in a single process)."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return ok
    flag = torch.tensor([1.0 if ok else 0.0])
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item() > 0)


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
    pose_targets: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Forward and backward on this process's part of a global batch.

    ``module`` is a :class:`LeWM` or its DDP wrapper; afterwards the gradients
    are those of the loss on the global batch (DDP averages the per-process
    gradients, and SIGReg/BatchNorm already see the global batch). ``pose_targets``
    feed the pose head of a model that has one (see :meth:`LeWM.loss`).
    """
    out = module(pixels, actions, generator, pose_targets)
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
    payload = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "step": step,
        "config": json.dumps(model.cfg.to_dict()),
    }
    write_checkpoint(out, payload, rng_state)


# ------------------------------------------------------------------ setup
@dataclass
class Run:
    """A LeWM training run, as it goes from step to step."""

    model: LeWM
    optimizer: torch.optim.Optimizer
    train_clips: PushTClips
    val_clips: PushTClips
    rng: np.random.Generator  # the training sampler's, the same in every process
    step: int  # steps done
    rng_state: dict[str, Any]  # ``rng`` at the start of step ``step + 1``: what a checkpoint keeps
    writer: Any  # the SummaryWriter, in process 0 only (None elsewhere)
    saved_step: int | None = None  # the step OUT/checkpoint.pt holds (None: none written)


def load_clips(cfg: TrainConfig, model_cfg: ModelConfig, progress: bool) -> tuple[PushTClips, PushTClips, ModelConfig]:
    """Training and validation clips, and ``model_cfg`` with the dataset's frameskip, action scale and origin.

    Raises:
        LeWorldError: the dataset's frames are not the size the model expects.
    """
    data_info = load_dataset_info(cfg.data)
    if data_info.image_size != model_cfg.image_size:
        raise LeWorldError(
            f"{cfg.data}: frames are {data_info.image_size}px but preset {cfg.preset!r} expects "
            f"{model_cfg.image_size}px; collect with --image-size {model_cfg.image_size}"
        )
    train_clips = PushTClips(cfg.data, model_cfg.history, cfg.num_preds, "train", cfg.val_fraction, progress=progress)
    val_clips = PushTClips(cfg.data, model_cfg.history, ROLLOUT_HORIZON, "val", cfg.val_fraction, seed=cfg.seed)
    model_cfg = dataclasses.replace(
        model_cfg,
        frameskip=data_info.frameskip,
        action_scale=data_info.action_scale,
        extra={**model_cfg.extra, "preset": cfg.preset, "dataset": str(cfg.data), "dataset_policy": data_info.policy},
    )
    return train_clips, val_clips, model_cfg


def start_run(cfg: TrainConfig, model_cfg: ModelConfig | None, resume: bool, progress: bool, rank: int) -> Run:
    """Data, model and optimizer, from the checkpoint in ``OUT`` with ``resume``, from the seed otherwise."""
    from torch.utils.tensorboard import SummaryWriter

    out = Path(cfg.out)
    ckpt_path = out / CHECKPOINT
    state = load_checkpoint(ckpt_path, CHECKPOINT_FIELDS) if resume else None
    if state is not None:
        model_cfg = restore(
            ckpt_path,
            "config",
            lambda text: ModelConfig.from_dict(json.loads(text), source=str(ckpt_path)),
            state["config"],
        )
    if model_cfg is None:
        model_cfg = preset(cfg.preset)
        if cfg.pose_weight is not None:
            model_cfg = dataclasses.replace(model_cfg, pose_weight=cfg.pose_weight)
    train_clips, val_clips, model_cfg = load_clips(cfg, model_cfg, progress and rank == 0)

    torch.manual_seed(cfg.seed)
    model = LeWM(model_cfg)
    init_weights(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    rng = np.random.default_rng(cfg.seed)  # the same in every process: all draw the global batch
    step = 0
    if state is not None:
        restore(ckpt_path, "model", model.load_state_dict, state["model"])
        restore(ckpt_path, "optimizer", optimizer.load_state_dict, state["optimizer"])
        step = state["step"]
        restore_rng(state, rng, ckpt_path)
    train_clips.rng = rng
    writer = SummaryWriter(str(out / "tb")) if rank == 0 else None
    if rank == 0 and step == 0:
        log_parameter_counts(count_parameters(model), writer)
    saved = step if state is not None else None
    return Run(model, optimizer, train_clips, val_clips, rng, step, rng.bit_generator.state, writer, saved)


# ------------------------------------------------------------------ main loop
def train(cfg: TrainConfig, model_cfg: ModelConfig | None = None, resume: bool = False, progress: bool = True) -> Path:
    """Train and write ``OUT/model``; returns that folder.

    ``--out`` is checked first (:func:`~world_models.training.check_run_folder`), then, in the run
    folder (:func:`~world_models.training.run_folder`: removed again if the run fails before its
    first checkpoint), setup (:func:`start_run`), the steps (:func:`run_steps`: each a
    :func:`train_step`, logged, validated and checkpointed on its schedule), then :func:`finish`.
    Ctrl-C or SIGTERM saves a checkpoint of the finished steps first.

    Raises:
        LeWorldError: a bad ``--out``, dataset or checkpoint.
        Diverged: a non-finite loss, gradient norm or weight (nothing non-finite is written).
    """
    rank, world = setup_distributed()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    check_run_folder(cfg.out, resume)
    if dist.is_initialized():
        dist.barrier()  # every process has checked --out before process 0 creates it
    with sigterm_as_ctrl_c(), run_folder(cfg.out, leader=rank == 0):
        run = start_run(cfg, model_cfg, resume, progress, rank)
        try:
            train_steps(run, cfg, progress, rank, world)
            folder = Path(cfg.out) / "model"
            if rank == 0:
                with local_statistics():
                    finish(run.model, cfg, folder, run.writer, run.train_clips)
        finally:
            if run.writer is not None:
                run.writer.close()
    if dist.is_initialized():
        dist.barrier()
    return folder


def train_steps(run: Run, cfg: TrainConfig, progress: bool, rank: int, world: int) -> None:
    """:func:`run_steps` under a progress bar; on Ctrl-C or SIGTERM process 0 saves a checkpoint first."""
    from tqdm import tqdm

    part = local_slice(cfg.batch_size, rank, world)
    module = wrap_distributed(run.model)
    bar = tqdm(total=cfg.steps, initial=run.step, desc="training", unit="step", disable=not (progress and rank == 0))
    run.model.train()
    try:
        run_steps(run, module, part, cfg, bar)
    except KeyboardInterrupt:
        if rank == 0:  # an unfinished step is redone on resume, from the same batch
            with uninterrupted():  # a second Ctrl-C waits for the checkpoint
                save_checkpoint(Path(cfg.out), run.model, run.optimizer, run.step, run.rng_state)
            print(f"\ninterrupted at step {run.step}; checkpoint saved, continue with --resume")
        raise
    finally:
        bar.close()
        if run.writer is not None:
            run.writer.flush()


def run_steps(run: Run, module: torch.nn.Module, part: slice, cfg: TrainConfig, bar: Any) -> None:
    """Steps from ``run.step`` to ``cfg.steps``; process 0 logs, validates and checkpoints on their schedules.

    Raises:
        Diverged: a non-finite loss or gradient norm (before the optimizer steps), or non-finite
            weights at a checkpoint (before it is written).
    """
    leader = run.writer is not None  # process 0
    tick, clips_done = time.perf_counter(), 0
    while run.step < cfg.steps:
        check_interrupt()  # a signal whose exception a callback swallowed still stops the run here
        lr = lr_at(run.step, cfg)
        out_step, grad_norm = optimize(run, module, part, lr, cfg)
        with uninterrupted():  # a checkpoint never holds half a step
            run.optimizer.step()
            run.step += 1
            run.rng_state = run.rng.bit_generator.state  # where step ``step + 1`` will draw from
        clips_done += cfg.batch_size
        bar.update(1)
        last = run.step == cfg.steps
        if leader and (run.step % cfg.log_every == 0 or last):
            now = time.perf_counter()
            log_step(run.writer, bar, run.step, out_step, lr, grad_norm, clips_done / (now - tick))
            tick, clips_done = now, 0
        if leader and (run.step % cfg.val_every == 0 or last):
            with local_statistics():
                validate(run.model, run.train_clips, run.val_clips, cfg, run.writer, run.step)
        if run.step % cfg.checkpoint_every == 0 or last:
            checkpoint(run, cfg, leader)


def saved_at(run: Run) -> str | None:
    """Where the kept checkpoint is, for a divergence message (None: none was written)."""
    return None if run.saved_step is None else f"step {run.saved_step}"


def checkpoint(run: Run, cfg: TrainConfig, leader: bool) -> None:
    """Check the weights in every process (the same in all), then process 0 writes ``OUT/checkpoint.pt``.

    Raises:
        Diverged: a weight is not finite (the checkpoint on disk stays as it was).
    """
    out = Path(cfg.out)
    state = {"model": run.model.state_dict(), "optimizer": run.optimizer.state_dict()}
    check_finite_weights(state, at=f"step {run.step}", lr=cfg.lr, checkpoint=out / CHECKPOINT, saved=saved_at(run))
    if leader:
        save_checkpoint(out, run.model, run.optimizer, run.step, run.rng_state)
    run.saved_step = run.step


def optimize(
    run: Run, module: torch.nn.Module, part: slice, lr: float, cfg: TrainConfig
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Everything of one step at learning rate ``lr`` but the optimizer's own step (the caller's);
    the step's losses and gradient norm (before clipping).

    Every process draws the global batch and keeps its ``part``; the forward and
    backward go through this module's :func:`train_step` (looked up at call time).

    Raises:
        Diverged: the loss or the gradient norm is not finite in some process (all raise).
    """
    batch = run.train_clips.sample(cfg.batch_size)
    pixels = torch.from_numpy(batch.pixels[part])
    actions = torch.from_numpy(batch.actions[part])
    pose = torch.from_numpy(state_to_targets(batch.state[part])) if run.model.cfg.pose_weight > 0 else None
    set_lr(run.optimizer, lr)
    run.optimizer.zero_grad(set_to_none=True)
    out_step = train_step(module, pixels, actions, sigreg_generator(cfg.seed, run.step), pose)
    grad_norm = torch.nn.utils.clip_grad_norm_(run.model.parameters(), cfg.grad_clip)
    check_finite(
        out_step["loss"],
        grad_norm,
        at=f"step {run.step + 1}",
        lr=cfg.lr,
        checkpoint=Path(cfg.out) / CHECKPOINT,
        saved=saved_at(run),
        agree=all_processes_agree,
    )
    return out_step, grad_norm


def log_step(
    writer: Any,
    bar: Any,
    step: int,
    out_step: dict[str, torch.Tensor],
    lr: float,
    grad_norm: torch.Tensor,
    clips_per_s: float,
) -> None:
    """The ``train/...`` scalars of a step, and the loss on the progress bar."""
    for key in ("loss", "prediction", "sigreg", "pose"):
        if key in out_step:
            writer.add_scalar(f"train/{key}", out_step[key].item(), step)
    writer.add_scalar("train/lr", lr, step)
    writer.add_scalar("train/grad_norm", float(grad_norm), step)
    writer.add_scalar("train/clips_per_s", clips_per_s, step)
    bar.set_postfix(loss=f"{out_step['loss'].item():.4f}")


def recalibrate(model: LeWM, clips: PushTClips, seed: int, batches: int, batch_size: int = 256) -> None:
    """BatchNorm recalibration on training clips drawn from their own generator (the training
    sampler's sequence is left untouched)."""
    rng = np.random.default_rng(seed)
    chosen = [clips.clip(clips.starts[rng.integers(0, len(clips.starts), batch_size)]) for _ in range(batches)]
    recalibrate_batchnorm(model, ((torch.from_numpy(b.pixels), torch.from_numpy(b.actions)) for b in chosen))


def validate(model: LeWM, train_clips: PushTClips, val_clips: PushTClips, cfg: TrainConfig, writer, step: int) -> None:
    recalibrate(model, train_clips, cfg.seed, batches=max(1, cfg.recalibration_batches // 2))
    with torch.no_grad():
        losses = {"loss": 0.0, "prediction": 0.0, "sigreg": 0.0}
        if model.cfg.pose_weight > 0:
            losses["pose"] = 0.0
        for i in range(cfg.val_batches):
            batch = val_clips.sample(min(cfg.batch_size, 256))
            h = model.cfg.history
            out = model.loss(
                torch.from_numpy(batch.pixels[:, : h + 1]),
                torch.from_numpy(batch.actions[:, : h + 1]),
                sigreg_generator(cfg.seed, -1 - i),
                torch.from_numpy(state_to_targets(batch.state[:, : h + 1])),
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
    recalibrate(model, train_clips, cfg.seed, batches=cfg.recalibration_batches)
    probe, r2, info = fit_dataset_probe(
        model, cfg.data, cfg.val_fraction, frames=cfg.probe_clips, steps=cfg.probe_steps, seed=cfg.seed
    )
    for name, value in r2.items():
        writer.add_scalar(f"probe/r2_{name}", value, cfg.steps)
    at = f"step {cfg.steps} (BatchNorm recalibrated)"
    kept = Path(cfg.out) / CHECKPOINT
    check_finite_weights(model.state_dict(), at=at, lr=cfg.lr, checkpoint=kept, saved=f"step {cfg.steps}")
    save_model(folder, model, probe, info)
    print("probe R^2 on validation episodes: " + ", ".join(f"{k} {v:.3f}" for k, v in r2.items()))
    print(f"model written to {folder}")


# ------------------------------------------------------------------ command line
def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``leworld train`` up to ``--resume``: the shared ones and LeWM's.

    ``--world-model`` is here so that ``--help`` lists it next to ``--preset``; the
    ``leworld train`` command picks the trainer by it, and adds the memory model's options
    (:func:`world_models.memory.train.add_arguments`) and ``--quiet`` after these.
    """
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
    p.add_argument("--lr", type=positive_float, default=defaults.lr, help=f"peak learning rate ({defaults.lr:g})")
    p.add_argument("--val-every", type=positive_int, default=defaults.val_every)
    p.add_argument("--checkpoint-every", type=positive_int, default=defaults.checkpoint_every)
    p.add_argument("--probe-steps", type=positive_int, default=defaults.probe_steps)
    p.add_argument(
        "--recalibration-batches",
        type=positive_int,
        default=defaults.recalibration_batches,
        help="batches of 256 clips that recompute BatchNorm statistics at the end (validation: half; "
        f"{defaults.recalibration_batches})",
    )
    p.add_argument(
        "--pose-weight",
        type=non_negative_float,
        help="weight of the pose-aware auxiliary loss (not LeWM's; default: the preset's, 0 but for tiny_cnn_pose)",
    )
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument("--threads", type=non_negative_int, default=0, help="torch threads per process (0: default)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The :class:`TrainConfig` of ``--world-model lewm``.

    Raises:
        ArgumentError: a batch too small for BatchNorm.
        LeWorldError: an unknown preset (with the list).
    """
    if args.batch_size < 2:
        raise ArgumentError(f"--batch-size must be at least 2 (BatchNorm needs a batch), got {args.batch_size}")
    preset(args.preset)  # an unknown name fails here, with the list
    return TrainConfig(
        **shared_settings(args),
        preset=args.preset,
        steps=args.steps,
        val_every=args.val_every,
        probe_steps=args.probe_steps,
        recalibration_batches=args.recalibration_batches,
        pose_weight=args.pose_weight,
        warmup=min(300, max(1, args.steps // 10)),
    )


def main() -> None:
    """Entry point for ``torchrun -m world_models.lewm.train`` (the LeWM trainer; ``--world-model lewm`` only)."""
    import sys

    parser = argparse.ArgumentParser(prog="world_models.lewm.train", description=__doc__.splitlines()[0])
    add_arguments(parser)
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args()
    if args.world_model != "lewm":
        parser.error("--world-model leworld trains in one process: run leworld train --world-model leworld")
    try:
        train(config_from_args(args), resume=args.resume, progress=not args.quiet)
    except LeWorldError as err:
        print(f"train: error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: the checkpoint is saved
        print("train: interrupted", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
