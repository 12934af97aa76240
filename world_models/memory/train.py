"""Train the LeWorld memory model in three phases (``leworld train --world-model leworld``).

Top to bottom, one file: latents (the dataset encoded once by the frozen
encoder, cached in ``OUT/latents.safetensors``) -> the dynamics region's
transitions (a seeded subsample sorted by a coarse key) -> the model ->

* phase 1, pre-train (teacher forced, one step): codec reconstruction;
  SLMs supervised to address targets (cross-entropy on high and low bytes);
  the BLM predicting z_{t+1} from hard reads at the target addresses. After it the
  dynamics region is written and the codec frozen.
* phase 2, joint: open-loop rollouts with soft reads; prediction loss +
  load-balance + address-diversity; Gumbel temperature annealed.
* phase 3, info-request refinement: the query path (BLM query head, SLM FiLM)
  trains on the rollout loss *with* the query; the branch with a zero query runs
  under ``no_grad`` and only measures the gain (loss without - loss with).

TensorBoard per phase (``phase{1,2,3}/...``), resumable atomic checkpoints
(``OUT/checkpoint.pt``, read with ``weights_only=True`` and checked key by key;
written on Ctrl-C and SIGTERM too), a progress bar, all randomness from the
seed. ``--out`` is checked before any work, a run that fails before its first
checkpoint leaves no empty folder, and a non-finite loss, gradient norm or
weight stops the run with an error (nothing non-finite is written). The
matched-size LeWM baseline trains here too.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from world_models.argtypes import positive_int
from world_models.config import ModelConfig
from world_models.data.latents import (
    LatentEpisodes,
    cut_windows,
    load_latents,
    save_latents,
    window_starts,
)
from world_models.errors import LeWorldError
from world_models.lewm.model import Predictor
from world_models.memory.model import (
    DYN_RECORDS,
    HIST_WORDS,
    NUM_SLMS,
    RECORD_WORDS,
    LeWorldMemory,
    Memory,
    MemoryConfig,
    count_parameters,
    history_region,
    init_weights,
    memory_preset,
    transition_vector,
)
from world_models.signals import sigterm_as_ctrl_c, uninterrupted
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

LATENTS_FILE = "latents.safetensors"
PHASES = (1, 2, 3)
# The keys of a memory-model checkpoint (besides the RNG states) and their types.
CHECKPOINT_FIELDS: dict[str, type] = {
    "model": dict,
    "dyn_bits": torch.Tensor,
    "optimizer": dict,
    "phase": int,
    "step": int,
    "memory_config": str,
}


@dataclass
class MemoryTrainConfig:
    """Settings of a three-phase run (the architecture's live in :class:`MemoryConfig`).

    A value out of its field's range raises :class:`~world_models.errors.ArgumentError` here.
    """

    data: str
    out: str
    memory_preset: str = "tiny"
    phase_steps: tuple[int, int, int] = setting((1000, 2000, 500), minimum=1)
    batch_size: int = setting(64, minimum=1)
    horizon: int = setting(8, minimum=1)  # open-loop steps per training window (phases 2, 3)
    lr: float = setting(1e-3, above=0.0)
    weight_decay: float = setting(0.01, minimum=0.0)
    grad_clip: float = setting(1.0, above=0.0)
    val_fraction: float = setting(0.1, minimum=0.0)
    seed: int = 0
    encoder_model: str = "pusht-tiny"
    load_balance_weight: float = setting(0.01, minimum=0.0)
    diversity_weight: float = setting(0.01, minimum=0.0)
    tau_start: float = setting(1.0, above=0.0)
    tau_end: float = setting(0.3, above=0.0)
    log_every: int = setting(25, minimum=1)
    checkpoint_every: int = setting(500, minimum=1)
    threads: int = setting(0, minimum=0)

    def __post_init__(self) -> None:
        check_settings(self)


# ------------------------------------------------------------------ data
def load_or_encode(cfg: MemoryTrainConfig, out: Path, progress: bool) -> LatentEpisodes:
    """The dataset's latents: ``OUT/latents.safetensors`` if present, else encoded and written there."""
    from world_models.memory.runtime import encode_dataset

    path = out / LATENTS_FILE
    if path.is_file():
        cached = load_latents(path)
        source = (cached.info.get("dataset"), cached.info.get("encoder_model"))
        if Path(cfg.data).suffix == ".safetensors" or source == (str(cfg.data), str(cfg.encoder_model)):
            return cached
        raise LeWorldError(
            f"{path}: latents of {source[0]!r} encoded by {source[1]!r}, but this run asks for {str(cfg.data)!r} "
            f"with {str(cfg.encoder_model)!r}; use a new --out, or delete the file to encode again"
        )
    if Path(cfg.data).suffix == ".safetensors":
        latents = load_latents(cfg.data)
    else:
        latents = encode_dataset(cfg.data, cfg.encoder_model, progress=progress)
    save_latents(latents, path)
    return latents


def sample_windows(
    latents: LatentEpisodes, batch: int, context: int, horizon: int, rng: np.random.Generator
) -> dict[str, torch.Tensor]:
    """``batch`` random windows (context + horizon) as tensors; current states t0 >= 1."""
    episodes, t0s = window_starts(latents, horizon)
    pick = rng.integers(0, len(t0s), batch)
    w = cut_windows(latents, episodes[pick], t0s[pick], context, horizon)
    return {
        "z": torch.from_numpy(w.z),
        "a": torch.from_numpy(w.actions),
        "valid": torch.from_numpy(w.valid),
        "episode": torch.from_numpy(w.episode),
    }


def dynamics_transitions(latents: LatentEpisodes, seed: int) -> torch.Tensor:
    """The dynamics region's contents: up to 6144 training transitions (z_t, a_t, z_{t+1} - z_t).

    Rule: a seeded uniform subsample (without replacement) of every transition of the
    training episodes, sorted by the projection of z_t on the first principal
    component of the sample, so nearby addresses hold similar states.
    """
    rows = np.concatenate(
        [np.arange(s, e - 1) for s, e in zip(latents.episode_starts[:-1], latents.episode_starts[1:], strict=True)]
    )
    rng = np.random.default_rng(seed + 7919)
    rows = np.sort(rng.choice(rows, size=min(len(rows), DYN_RECORDS), replace=False))
    z, a, z_next = latents.z[rows], latents.actions[rows], latents.z[rows + 1]
    centred = z - z.mean(0)
    key = centred @ np.linalg.svd(centred, full_matrices=False)[2][0]
    order = np.argsort(key, kind="stable")
    x = transition_vector(torch.from_numpy(z[order]), torch.from_numpy(a[order]), torch.from_numpy(z_next[order]))
    return x.float()


# ------------------------------------------------------------------ phase 1
def address_targets(
    z_ctx: torch.Tensor, a_ctx: torch.Tensor, hist_valid: torch.Tensor, dyn: torch.Tensor, cfg: MemoryConfig
) -> torch.Tensor:
    """Word starts [B, 3] the SLMs are supervised to (-1: no target).

    SLM-0: the previous transition's history record (record 0). SLM-1: the dynamics
    record nearest to (z_t, a_t). SLM-2: the history record of this context's earlier
    transition (not the last) whose start state is nearest to z_t.
    """
    _, c, d = z_ctx.shape
    z_t, a_t = z_ctx[:, -1], a_ctx[:, -1]
    t0 = torch.where(hist_valid[:, 0], 0, -1)
    za = dyn[:, : d + a_t.shape[1]]
    nearest = torch.cdist(torch.cat([z_t, a_t], -1), za).argmin(-1)
    t1 = (HIST_WORDS + RECORD_WORDS * nearest).clamp(max=65536 - cfg.range_words[1])
    # history record j holds transition (c - 2 - j) -> (c - 1 - j) of the context
    hc = hist_valid.shape[1]
    j = torch.arange(hc)
    pos = (c - 2 - j).clamp(min=0)
    dist = (z_ctx[:, pos] - z_t[:, None]).pow(2).sum(-1)
    ok = hist_valid & (j >= 1)[None]
    dist = dist.masked_fill(~ok, float("inf"))
    t2 = torch.where(ok.any(1), RECORD_WORDS * dist.argmin(1), -1)
    return torch.stack([t0, t1, t2], dim=1)


def phase1_loss(model: LeWorldMemory, batch: dict[str, torch.Tensor], dyn: torch.Tensor) -> dict[str, torch.Tensor]:
    """Teacher-forced one-step losses on windows of context + 1."""
    cfg = model.cfg
    c = cfg.context
    z, a, valid = batch["z"], batch["a"], batch["valid"]
    b = z.shape[0]
    z_ctx, a_ctx = z[:, :c], a[:, :c]
    # codec: reconstruct real transitions (this batch's and the dynamics set's)
    x = torch.cat([transition_vector(z[:, :-1], a[:, :-1], z[:, 1:])[valid[:, :-1] & valid[:, 1:]], dyn[:256]])
    recon = F.mse_loss(model.codec.decode(model.codec.encode(x)), x)
    memory = Memory(model.codec, model.dynamics_bits(dyn), b, hard=False)
    hist = history_region(model.context_records(z_ctx, a_ctx, valid[:, :c]), c - 1, c - 1, b)
    memory.set_history(hist)
    targets = address_targets(z_ctx, a_ctx, memory.hist_valid, dyn, cfg)
    h = cfg.blm_history
    out = model.step(
        memory,
        z_ctx[:, -h:],
        a_ctx[:, -h:],
        z_ctx[:, -2],
        torch.zeros(b, cfg.query_dim),
        routing="forced",
        forced_mask=torch.ones(b, NUM_SLMS),
        forced_starts=targets,
    )
    prediction = F.mse_loss(out.z_next, z[:, c])
    ce = []
    for k in range(NUM_SLMS):
        t = targets[:, k]
        hi = torch.where(t >= 0, t // 256, -100)
        lo = torch.where(t >= 0, t % 256, -100)
        if (t >= 0).any():
            ce.append(F.cross_entropy(out.high[k], hi) + F.cross_entropy(out.low[k], lo))
    address = torch.stack(ce).mean()
    hits = (out.starts == targets).float()[targets >= 0].mean()
    return {
        "loss": prediction + address + recon,
        "prediction": prediction,
        "address_ce": address,
        "codec_recon": recon,
        "address_hit_rate": hits.detach(),
    }


# ------------------------------------------------------------------ phases 2 and 3
def rollout_loss(
    model: LeWorldMemory, batch: dict[str, torch.Tensor], horizon: int, **kw: Any
) -> tuple[torch.Tensor, list]:
    c = model.cfg.context
    z, a, valid = batch["z"], batch["a"], batch["valid"]
    pred, outs = model.rollout(z[:, :c], a[:, :c], a[:, c : c + horizon], ctx_valid=valid[:, :c], **kw)
    return F.mse_loss(pred, z[:, c : c + horizon]), outs


def routing_stats(outs: list) -> dict[str, torch.Tensor]:
    """Load-balance and address-diversity losses, and what to log, from a rollout's step outputs."""
    mask = torch.stack([o.mask for o in outs])  # [H, B, 3]
    prob = torch.sigmoid(torch.stack([o.route_logits for o in outs]))
    f = mask.detach().mean((0, 1))
    p = prob.mean((0, 1))
    load_balance = NUM_SLMS * ((f / (f.sum() + 1e-6)) * (p / (p.sum() + 1e-6))).sum()
    entropies = []
    for k in range(NUM_SLMS):
        for logits in ([o.high[k] for o in outs], [o.low[k] for o in outs]):
            mean_p = torch.softmax(torch.cat(logits), dim=-1).mean(0)
            entropies.append(-(mean_p * torch.log(mean_p + 1e-9)).sum() / math.log(256))
    diversity = 1 - torch.stack(entropies).mean()
    pc = prob.detach().clamp(1e-6, 1 - 1e-6)
    starts = torch.stack([o.starts for o in outs])  # [H, B, 3]
    stats = {
        "load_balance": load_balance,
        "address_diversity": diversity,
        "routing_entropy": (-(pc * pc.log() + (1 - pc) * (1 - pc).log())).mean() / math.log(2),
    }
    for k in range(NUM_SLMS):
        stats[f"usage/slm{k}"] = f[k]
        stats[f"coverage/slm{k}"] = torch.tensor(len(torch.unique(starts[..., k])) / starts[..., k].numel())
    return stats


def query_parameters(model: LeWorldMemory) -> list[nn.Parameter]:
    """The info-request path: the BLM's query head and every SLM's FiLM."""
    return [*model.blm.query_head.parameters(), *(p for slm in model.slms for p in slm.film.parameters())]


def trainable(model: LeWorldMemory, phase: int) -> list[nn.Parameter]:
    """Phase 1: everything; phase 2: all but the (frozen) codec; phase 3: the query path."""
    if phase == 1:
        return list(model.parameters())
    if phase == 2:
        return [p for n, p in model.named_parameters() if not n.startswith("codec.")]
    return query_parameters(model)


def tau_at(step: int, total: int, cfg: MemoryTrainConfig) -> float:
    """Gumbel temperature: exponential from ``tau_start`` to ``tau_end`` over phase 2."""
    return cfg.tau_start * (cfg.tau_end / cfg.tau_start) ** min(1.0, step / max(1, total - 1))


def lr_at(step: int, total: int, lr: float) -> float:
    """Linear warmup over 5% of the phase, then cosine to 5%."""
    return warmup_cosine(step, total, max(1, total // 20), lr, 0.05)


def phase_step(
    model: LeWorldMemory,
    phase: int,
    batch: dict[str, torch.Tensor],
    dyn: torch.Tensor,
    cfg: MemoryTrainConfig,
    step: int,
    generator: torch.Generator,
) -> dict[str, torch.Tensor]:
    """The loss of one step of ``phase`` (call ``backward`` on ``["loss"]``)."""
    if phase == 1:
        return phase1_loss(model, batch, dyn)
    if phase == 2:
        tau = tau_at(step, cfg.phase_steps[1], cfg)
        pred, outs = rollout_loss(model, batch, cfg.horizon, routing="sample", tau=tau, generator=generator)
        stats = routing_stats(outs)
        loss = (
            pred + cfg.load_balance_weight * stats["load_balance"] + cfg.diversity_weight * stats["address_diversity"]
        )
        return {"loss": loss, "prediction": pred, "tau": torch.tensor(tau), **stats}
    with_query, outs = rollout_loss(model, batch, cfg.horizon, routing="deterministic")
    with torch.no_grad():  # the baseline branch: no gradient, so it cannot be made worse on purpose
        without_query, _ = rollout_loss(model, batch, cfg.horizon, routing="deterministic", zero_query=True)
    stats = routing_stats(outs)
    return {
        "loss": with_query,
        "prediction_with_query": with_query,
        "prediction_without_query": without_query,
        "info_gain": (without_query - with_query).detach(),
        **{k: v for k, v in stats.items() if k.startswith(("usage", "routing", "coverage"))},
    }


@torch.no_grad()
def measure_usage(model: LeWorldMemory, latents: LatentEpisodes, cfg: MemoryTrainConfig, batches: int = 4) -> None:
    """Set ``model.usage``: the share of steps each SLM is on under deterministic routing, on training windows."""
    rng = np.random.default_rng(cfg.seed + 1)
    masks = []
    for _ in range(batches):
        batch = sample_windows(latents, cfg.batch_size, model.cfg.context, cfg.horizon, rng)
        _, outs = rollout_loss(model, batch, cfg.horizon, routing="deterministic")
        masks.append(torch.stack([o.mask for o in outs]).mean((0, 1)))
    model.usage.copy_(torch.stack(masks).mean(0))


# ------------------------------------------------------------------ checkpoints
def save_checkpoint(
    out: Path,
    model: LeWorldMemory,
    optimizer: torch.optim.Optimizer,
    phase: int,
    step: int,
    rng: np.random.Generator,
) -> None:
    """Write ``OUT/checkpoint.pt``: the model, its dynamics bits, ``optimizer``, where the run is, the RNGs."""
    payload = {
        "model": model.state_dict(),
        "dyn_bits": model.dyn_bits,
        "optimizer": optimizer.state_dict(),
        "phase": phase,
        "step": step,
        "memory_config": json.dumps(model.cfg.to_dict()),
    }
    write_checkpoint(out, payload, rng.bit_generator.state)


# ------------------------------------------------------------------ setup
@dataclass
class MemoryRun:
    """A three-phase run, as it goes from step to step and phase to phase."""

    out: Path
    latents: LatentEpisodes  # all of the dataset's
    train_lat: LatentEpisodes
    val_lat: LatentEpisodes
    dyn: torch.Tensor  # the dynamics region's transitions
    model: LeWorldMemory
    rng: np.random.Generator  # the window sampler's
    generator: torch.Generator  # phase 2's Gumbel noise
    writer: Any  # the SummaryWriter
    phase: int  # 1, 2, 3; 4 once all are done
    step: int  # steps done in ``phase``
    offset: int  # steps of the phases before ``phase`` (TensorBoard's step is offset + step)
    state: dict[str, Any] | None  # the checkpoint resumed from, until its phase has started
    rng_state: dict[str, Any]  # ``rng`` at the start of the next step (what a checkpoint keeps)
    optimizer: torch.optim.Optimizer | None = None  # the current phase's
    saved: str | None = None  # where OUT/checkpoint.pt is ("phase 2, step 500"; None: none written)


def prepare_latents(
    cfg: MemoryTrainConfig, out: Path, latents: LatentEpisodes | None, progress: bool
) -> tuple[LatentEpisodes, LatentEpisodes, LatentEpisodes, torch.Tensor]:
    """All latents, the training and validation split, and the dynamics region's transitions.

    Raises:
        LeWorldError: the episodes are too short for ``cfg.horizon`` (with the lengths).
    """
    if latents is None:
        latents = load_or_encode(cfg, out, progress)
    train_lat, val_lat = latents.split(cfg.val_fraction, cfg.seed)
    window_starts(train_lat, cfg.horizon)  # a dataset too short fails here, with the lengths
    window_starts(val_lat, cfg.horizon)
    return latents, train_lat, val_lat, dynamics_transitions(train_lat, cfg.seed)


def read_checkpoint(path: Path) -> dict[str, Any]:
    """The checkpoint ``path`` of a memory-model run, checked (its keys, their types, the phase).

    Raises:
        LeWorldError: naming the file and what is wrong with it.
    """
    state = load_checkpoint(path, CHECKPOINT_FIELDS)
    if not 1 <= state["phase"] <= len(PHASES) + 1:
        raise LeWorldError(f"{path}: 'phase' is {state['phase']}, expected 1 to {len(PHASES) + 1}")
    return state


def start_run(cfg: MemoryTrainConfig, latents: LatentEpisodes | None, resume: bool, progress: bool) -> MemoryRun:
    """Latents, model and RNGs, from the checkpoint in ``OUT`` with ``resume``, from the seed otherwise
    (the checkpoint is read first: a bad one fails before the dataset is encoded)."""
    from torch.utils.tensorboard import SummaryWriter

    mcfg = memory_preset(cfg.memory_preset)  # an unknown name fails here, with the list
    out = Path(cfg.out)
    ckpt_path = out / CHECKPOINT
    state = read_checkpoint(ckpt_path) if resume else None
    latents, train_lat, val_lat, dyn = prepare_latents(cfg, out, latents, progress)

    torch.manual_seed(cfg.seed)
    model = LeWorldMemory(dataclasses.replace(mcfg, latent_dim=latents.latent_dim))
    init_weights(model)
    rng = np.random.default_rng(cfg.seed)
    phase, step = 1, 0
    if state is not None:
        restore(ckpt_path, "model", model.load_state_dict, state["model"])
        restore(ckpt_path, "dyn_bits", model.dyn_bits.copy_, state["dyn_bits"])
        phase, step = state["phase"], state["step"]
        restore_rng(state, rng, ckpt_path)
    writer = SummaryWriter(str(out / "tb"))
    if state is None:
        log_parameter_counts(count_parameters(model), writer)
    generator = torch.Generator().manual_seed(cfg.seed + 17)
    offset = sum(cfg.phase_steps[: phase - 1])
    at = rng.bit_generator.state  # where the next step draws from
    run = MemoryRun(
        out, latents, train_lat, val_lat, dyn, model, rng, generator, writer, phase, step, offset, state, at
    )
    if state is not None:
        run.saved = where(phase, step)
    return run


def where(phase: int, step: int) -> str:
    """A place in a three-phase run, as messages name it."""
    return f"phase {phase}, step {step}" if phase <= len(PHASES) else "the end of phase 3"


# ------------------------------------------------------------------ main loop
def train_leworld(
    cfg: MemoryTrainConfig,
    latents: LatentEpisodes | None = None,
    resume: bool = False,
    progress: bool = True,
) -> Path:
    """Run the three phases and write ``OUT/model`` (config.json with ``"kind": "leworld"``,
    model.safetensors, memory.safetensors); returns that folder.

    ``--out`` is checked first (:func:`~world_models.training.check_run_folder`), then, in the
    run folder (:func:`~world_models.training.run_folder`: removed again if the run fails before
    it wrote anything), setup (:func:`start_run`), each phase (:func:`run_phase`: its steps,
    then :func:`end_phase`), then :func:`finish`. Ctrl-C or SIGTERM saves a checkpoint first.

    Raises:
        LeWorldError: a bad ``--out``, dataset, encoder model or checkpoint.
        Diverged: a non-finite loss, gradient norm or weight (nothing non-finite is written).
    """
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    memory_preset(cfg.memory_preset)  # an unknown name fails here, with the list
    check_run_folder(cfg.out, resume)
    with sigterm_as_ctrl_c(), run_folder(cfg.out):
        run = start_run(cfg, latents, resume, progress)
        try:
            run_phases(run, cfg, progress)
            return finish(run, cfg)
        finally:
            run.writer.close()


def run_phases(run: MemoryRun, cfg: MemoryTrainConfig, progress: bool) -> None:
    """The phases left, under a progress bar; on Ctrl-C or SIGTERM a checkpoint of the finished steps first."""
    from tqdm import tqdm

    initial = run.offset + run.step
    bar = tqdm(total=sum(cfg.phase_steps), initial=initial, desc="leworld", unit="step", disable=not progress)
    try:
        while run.phase <= 3:
            run_phase(run, cfg, bar)
    except KeyboardInterrupt:
        if run.optimizer is not None:  # an unfinished step is redone on resume, from the same windows
            run.rng.bit_generator.state = run.rng_state
            with uninterrupted():  # a second Ctrl-C waits for the checkpoint
                save_checkpoint(run.out, run.model, run.optimizer, run.phase, run.step, run.rng)
        print(f"\ninterrupted in phase {run.phase} at step {run.step}; checkpoint saved, continue with --resume")
        raise
    finally:
        bar.close()
        run.writer.flush()


def start_phase(run: MemoryRun, cfg: MemoryTrainConfig) -> list[nn.Parameter]:
    """Freeze the codec after phase 1, make the phase's optimizer (its state from the checkpoint
    when resuming inside this phase); the parameters it trains."""
    if run.phase >= 2:
        run.model.codec.requires_grad_(False)
    params = trainable(run.model, run.phase)
    run.optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if run.state is not None and run.state["phase"] == run.phase and run.step > 0:
        restore(run.out / CHECKPOINT, "optimizer", run.optimizer.load_state_dict, run.state["optimizer"])
    return params


def run_phase(run: MemoryRun, cfg: MemoryTrainConfig, bar: Any) -> None:
    """The steps of ``run.phase`` from ``run.step`` on, logged and checkpointed on their schedules,
    then :func:`end_phase`.

    Raises:
        Diverged: a non-finite loss or gradient norm (before the optimizer steps), or non-finite
            weights at a checkpoint (before it is written).
    """
    phase, total = run.phase, cfg.phase_steps[run.phase - 1]
    params = start_phase(run, cfg)
    horizon = 1 if phase == 1 else cfg.horizon
    tick = time.perf_counter()
    while run.step < total:
        losses, grad_norm = optimize(run, cfg, params, horizon, total)
        with uninterrupted():  # a checkpoint never holds half a step
            run.optimizer.step()
            run.step += 1
            run.rng_state = run.rng.bit_generator.state
        bar.update(1)
        if run.step % cfg.log_every == 0 or run.step == total:
            now = time.perf_counter()
            log_step(run, losses, grad_norm, cfg.log_every / (now - tick))
            bar.set_postfix(phase=phase, loss=f"{losses['loss'].item():.4f}")
            tick = now
        if run.step % cfg.checkpoint_every == 0 and run.step < total:
            checkpoint(run, cfg)
    end_phase(run, cfg, total)


def checkpoint(run: MemoryRun, cfg: MemoryTrainConfig) -> None:
    """Check the weights, then write ``OUT/checkpoint.pt`` at ``run.phase``, ``run.step``.

    Raises:
        Diverged: a weight or an optimizer state is not finite (the checkpoint on disk stays as it was).
    """
    at = where(run.phase, run.step)
    state = {"model": run.model.state_dict(), "optimizer": run.optimizer.state_dict()}
    check_finite_weights(state, at=at, lr=cfg.lr, checkpoint=run.out / CHECKPOINT, saved=run.saved)
    save_checkpoint(run.out, run.model, run.optimizer, run.phase, run.step, run.rng)
    run.saved = at


def optimize(
    run: MemoryRun, cfg: MemoryTrainConfig, params: list[nn.Parameter], horizon: int, total: int
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Everything of one step of ``run.phase`` (of ``total`` steps) on fresh windows but the optimizer's
    own step (the caller's); its losses and gradient norm (before clipping).

    Raises:
        Diverged: the loss or the gradient norm is not finite.
    """
    batch = sample_windows(run.train_lat, cfg.batch_size, run.model.cfg.context, horizon, run.rng)
    set_lr(run.optimizer, lr_at(run.step, total, cfg.lr))
    run.optimizer.zero_grad(set_to_none=True)
    losses = phase_step(run.model, run.phase, batch, run.dyn, cfg, run.step, run.generator)
    losses["loss"].backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
    at = where(run.phase, run.step + 1)
    check_finite(losses["loss"], grad_norm, at=at, lr=cfg.lr, checkpoint=run.out / CHECKPOINT, saved=run.saved)
    return losses, grad_norm


def log_step(run: MemoryRun, losses: dict[str, torch.Tensor], grad_norm: torch.Tensor, steps_per_s: float) -> None:
    """The ``phase{N}/...`` scalars of a step."""
    at = run.offset + run.step
    for key, value in losses.items():
        run.writer.add_scalar(f"phase{run.phase}/{key}", float(value.detach()), at)
    run.writer.add_scalar(f"phase{run.phase}/grad_norm", float(grad_norm), at)
    run.writer.add_scalar(f"phase{run.phase}/steps_per_s", steps_per_s, at)


def end_phase(run: MemoryRun, cfg: MemoryTrainConfig, total: int) -> None:
    """After a phase: write the dynamics region (after phase 1), measure SLM usage, log the validation
    error, and checkpoint the start of the next phase."""
    from world_models.memory.evaluate import open_loop_error

    if run.phase == 1:
        run.model.write_dynamics(run.dyn)
    measure_usage(run.model, run.train_lat, cfg)
    errors = open_loop_error(run.model, run.val_lat, horizons=(1, cfg.horizon), seed=cfg.seed, max_windows=256)
    for key, value in errors["normalised"].items():
        run.writer.add_scalar(f"phase{run.phase}/val_normalised_error_{key}", value, run.offset + total)
    run.offset += total
    run.phase, run.step, run.state = run.phase + 1, 0, None
    checkpoint(run, cfg)


def finish(run: MemoryRun, cfg: MemoryTrainConfig) -> Path:
    """Log the hard/soft read gap on validation and write the model folder; returns it."""
    from world_models.memory.evaluate import hard_soft_gap
    from world_models.memory.runtime import save_leworld

    gap = hard_soft_gap(run.model, run.val_lat, seed=cfg.seed)
    for key, value in gap.items():
        run.writer.add_scalar(f"eval/hard_soft_{key}", value, run.offset)
    run.writer.close()
    folder = run.out / "model"
    kept = run.out / CHECKPOINT
    check_finite_weights(run.model.state_dict(), at="the end", lr=cfg.lr, checkpoint=kept, saved=run.saved)
    save_leworld(
        folder,
        run.model,
        encoder_model=run.latents.info.get("encoder_model", cfg.encoder_model),
        info={**run.latents.info, "seed": cfg.seed, "phase_steps": list(cfg.phase_steps), "hard_soft_gap": gap},
    )
    print(f"hard/soft read gap on validation: {gap}")
    print(f"model written to {folder}")
    return folder


# ------------------------------------------------------------------ the matched LeWM baseline
class BaselinePredictor(nn.Module):
    """The plain LeWM predictor (:class:`world_models.lewm.model.Predictor`) on the same latents and context,
    with the same rollout interface as :class:`LeWorldMemory` (no memory, no ablations)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.predictor = Predictor(cfg)

    def rollout(
        self,
        z_ctx: torch.Tensor,
        a_ctx: torch.Tensor,
        a_future: torch.Tensor,
        *,
        ablation: str | None = None,
        **_: Any,
    ) -> tuple[torch.Tensor, list]:
        """Open loop under ``a_future`` from the last ``history`` context steps; (predictions, no step outputs).

        The other keywords of :meth:`LeWorldMemory.rollout` (``ctx_valid``, ``mode``, ``routing``, ...)
        are accepted and have no effect: the baseline has no memory.
        """
        if ablation is not None:
            raise LeWorldError(f"the LeWM baseline has no ablation {ablation!r}; it takes ablation=None")
        h = self.cfg.history
        z, a, out = z_ctx[:, -h:], a_ctx[:, -h:], []
        for i in range(a_future.shape[1]):
            nxt = self.predictor(z, a)[:, -1]
            out.append(nxt)
            z = torch.cat([z, nxt[:, None]], 1)[:, -h:]
            a = torch.cat([a, a_future[:, i : i + 1]], 1)[:, -h:]
        return torch.stack(out, 1), []


def baseline_config(dim: int, latent_dim: int, context: int, depth: int) -> ModelConfig:
    """The baseline predictor's config at width ``dim`` (heads 4, projector hidden 2 * dim)."""
    return ModelConfig(
        latent_dim=latent_dim,
        predictor_dim=dim,
        predictor_depth=depth,
        predictor_heads=4,
        projector_hidden=2 * dim,
        history=context,
    )


def matched_baseline_config(target_params: int, latent_dim: int, context: int, depth: int) -> ModelConfig:
    """The baseline width (a multiple of 4) whose parameter count is nearest to ``target_params``."""
    best, best_gap = None, None
    with torch.device("meta"):
        for dim in range(16, 2049, 4):
            cfg = baseline_config(dim, latent_dim, context, depth)
            n = sum(p.numel() for p in BaselinePredictor(cfg).parameters())
            if best_gap is None or abs(n - target_params) < best_gap:
                best, best_gap = cfg, abs(n - target_params)
            if n > target_params:
                break
    return best


def train_baseline(
    latents: LatentEpisodes, cfg: MemoryTrainConfig, target_params: int, steps: int, progress: bool = False
) -> BaselinePredictor:
    """Train the matched-size LeWM predictor on ``latents`` (its training episodes) with the same
    open-loop loss and horizon as phase 2; returns it in eval mode."""
    from tqdm import tqdm

    mcfg = dataclasses.replace(memory_preset(cfg.memory_preset), latent_dim=latents.latent_dim)
    train_lat, _ = latents.split(cfg.val_fraction, cfg.seed)
    bcfg = matched_baseline_config(target_params, mcfg.latent_dim, mcfg.context, mcfg.blm_depth)
    torch.manual_seed(cfg.seed)
    model = BaselinePredictor(bcfg)
    from world_models.lewm.model import init_weights as lewm_init

    lewm_init(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    rng = np.random.default_rng(cfg.seed)
    c = mcfg.context
    for step in tqdm(range(steps), desc="baseline", disable=not progress):
        batch = sample_windows(train_lat, cfg.batch_size, c, cfg.horizon, rng)
        set_lr(optimizer, lr_at(step, steps, cfg.lr))
        optimizer.zero_grad(set_to_none=True)
        pred, _ = model.rollout(batch["z"][:, :c], batch["a"][:, :c], batch["a"][:, c : c + cfg.horizon])
        loss = F.mse_loss(pred, batch["z"][:, c : c + cfg.horizon])
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        check_finite(loss, grad_norm, at=f"baseline step {step + 1}", lr=cfg.lr, checkpoint=Path(), saved=None)
        optimizer.step()
    model.eval()
    return model


# ------------------------------------------------------------------ command line
def add_arguments(p: argparse.ArgumentParser) -> None:
    """The memory model's options of ``leworld train`` (its ``--world-model leworld``), as a group."""
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


def config_from_args(args: argparse.Namespace) -> MemoryTrainConfig:
    """The :class:`MemoryTrainConfig` of ``leworld train --world-model leworld``.

    Reads the shared options (``--data``, ``--out``, ``--steps``, ``--batch-size``, ``--lr``,
    ``--seed``, ``--checkpoint-every``, ``--threads``) and those of :func:`add_arguments`.

    Raises:
        LeWorldError: an unknown memory preset (with the list).
        ArgumentError: a setting out of its range (:class:`MemoryTrainConfig`).
    """
    memory_preset(args.memory_preset)  # an unknown name fails here, with the list
    steps = args.phase_steps
    if steps is None:
        steps = [max(1, round(args.steps * f)) for f in (0.3, 0.5, 0.2)]
    return MemoryTrainConfig(
        **shared_settings(args),
        memory_preset=args.memory_preset,
        phase_steps=tuple(steps),
        horizon=args.horizon,
        encoder_model=args.encoder_model,
    )
