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
(``OUT/checkpoint.pt``, read with ``weights_only=True``), a progress bar, all
randomness from the seed. The matched-size LeWM baseline trains here too.
"""

from __future__ import annotations

import dataclasses
import io
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

from world_models.config import ModelConfig
from world_models.data.latents import (
    LatentEpisodes,
    cut_windows,
    encode_dataset,
    load_latents,
    save_latents,
    window_starts,
)
from world_models.errors import LeWorldError
from world_models.files import atomic_write_bytes
from world_models.lewm.model import Predictor
from world_models.lewm.train import load_checkpoint, warmup_cosine
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

CHECKPOINT = "checkpoint.pt"
LATENTS_FILE = "latents.safetensors"
PHASES = (1, 2, 3)


@dataclass
class MemoryTrainConfig:
    """Settings of a three-phase run (the architecture's live in :class:`MemoryConfig`)."""

    data: str
    out: str
    memory_preset: str = "tiny"
    phase_steps: tuple[int, int, int] = (1000, 2000, 500)
    batch_size: int = 64
    horizon: int = 8  # open-loop steps per training window (phases 2, 3)
    lr: float = 1e-3
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    val_fraction: float = 0.1
    seed: int = 0
    encoder_model: str = "pusht-tiny"
    load_balance_weight: float = 0.01
    diversity_weight: float = 0.01
    tau_start: float = 1.0
    tau_end: float = 0.3
    log_every: int = 25
    checkpoint_every: int = 500
    threads: int = 0


# ------------------------------------------------------------------ data
def load_or_encode(cfg: MemoryTrainConfig, out: Path, progress: bool) -> LatentEpisodes:
    """The dataset's latents: ``OUT/latents.safetensors`` if present, else encoded and written there."""
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
def save_checkpoint(out: Path, model: LeWorldMemory, optimizer, phase: int, step: int, rng: np.random.Generator):
    buffer = io.BytesIO()
    torch.save(
        {
            "model": model.state_dict(),
            "dyn_bits": model.dyn_bits,
            "optimizer": optimizer.state_dict(),
            "phase": phase,
            "step": step,
            "torch_rng": torch.get_rng_state(),
            "numpy_rng": json.dumps(rng.bit_generator.state),
            "memory_config": json.dumps(model.cfg.to_dict()),
        },
        buffer,
    )
    atomic_write_bytes(out / CHECKPOINT, buffer.getvalue())


# ------------------------------------------------------------------ main loop
def train_leworld(
    cfg: MemoryTrainConfig,
    latents: LatentEpisodes | None = None,
    resume: bool = False,
    progress: bool = True,
) -> Path:
    """Run the three phases and write ``OUT/model`` (config.json with ``"kind": "leworld"``,
    model.safetensors, memory.safetensors); returns that folder."""
    from torch.utils.tensorboard import SummaryWriter
    from tqdm import tqdm

    from world_models.memory.evaluate import hard_soft_gap, open_loop_error
    from world_models.memory.runtime import save_leworld

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    mcfg = memory_preset(cfg.memory_preset)  # an unknown name fails here, with the list
    out = Path(cfg.out)
    ckpt_path = out / CHECKPOINT
    if not resume and ckpt_path.exists():
        raise LeWorldError(f"{out} already holds a training run; pass --resume to continue it or pick another --out")
    if resume and not ckpt_path.exists():
        raise LeWorldError(f"{ckpt_path}: no checkpoint to resume from")
    out.mkdir(parents=True, exist_ok=True)
    if latents is None:
        latents = load_or_encode(cfg, out, progress)
    mcfg = dataclasses.replace(mcfg, latent_dim=latents.latent_dim)
    train_lat, val_lat = latents.split(cfg.val_fraction, cfg.seed)
    window_starts(train_lat, cfg.horizon)  # a dataset too short fails here, with the lengths
    window_starts(val_lat, cfg.horizon)
    dyn = dynamics_transitions(train_lat, cfg.seed)

    torch.manual_seed(cfg.seed)
    model = LeWorldMemory(mcfg)
    init_weights(model)
    rng = np.random.default_rng(cfg.seed)
    phase, step = 1, 0
    state = load_checkpoint(ckpt_path) if resume else None
    if state is not None:
        model.load_state_dict(state["model"])
        model.dyn_bits.copy_(state["dyn_bits"])
        phase, step = int(state["phase"]), int(state["step"])
        torch.set_rng_state(state["torch_rng"])
        rng.bit_generator.state = json.loads(state["numpy_rng"])
    writer = SummaryWriter(str(out / "tb"))
    counts = count_parameters(model)
    if state is None:
        print("parameters: " + ", ".join(f"{k} {v:,}" for k, v in counts.items()))
        for name, value in counts.items():
            writer.add_scalar(f"params/{name}", value, 0)
    generator = torch.Generator().manual_seed(cfg.seed + 17)
    offset = sum(cfg.phase_steps[: phase - 1])
    bar = tqdm(total=sum(cfg.phase_steps), initial=offset + step, desc="leworld", unit="step", disable=not progress)
    try:
        while phase <= 3:
            total = cfg.phase_steps[phase - 1]
            if phase >= 2:
                model.codec.requires_grad_(False)
            params = trainable(model, phase)
            optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
            if state is not None and int(state["phase"]) == phase and step > 0:
                optimizer.load_state_dict(state["optimizer"])
            horizon = 1 if phase == 1 else cfg.horizon
            tick = time.perf_counter()
            while step < total:
                rng_state = rng.bit_generator.state
                batch = sample_windows(train_lat, cfg.batch_size, mcfg.context, horizon, rng)
                for group in optimizer.param_groups:
                    group["lr"] = lr_at(step, total, cfg.lr)
                optimizer.zero_grad(set_to_none=True)
                losses = phase_step(model, phase, batch, dyn, cfg, step, generator)
                losses["loss"].backward()
                grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                optimizer.step()
                step += 1
                bar.update(1)
                if step % cfg.log_every == 0 or step == total:
                    now = time.perf_counter()
                    for key, value in losses.items():
                        writer.add_scalar(f"phase{phase}/{key}", float(value.detach()), offset + step)
                    writer.add_scalar(f"phase{phase}/grad_norm", float(grad_norm), offset + step)
                    writer.add_scalar(f"phase{phase}/steps_per_s", cfg.log_every / (now - tick), offset + step)
                    bar.set_postfix(phase=phase, loss=f"{losses['loss'].item():.4f}")
                    tick = now
                if step % cfg.checkpoint_every == 0 and step < total:
                    save_checkpoint(out, model, optimizer, phase, step, rng)
            if phase == 1:
                model.write_dynamics(dyn)
            measure_usage(model, train_lat, cfg)
            errors = open_loop_error(model, val_lat, horizons=(1, cfg.horizon), seed=cfg.seed, max_windows=256)
            for key, value in errors["normalised"].items():
                writer.add_scalar(f"phase{phase}/val_normalised_error_{key}", value, offset + total)
            offset += total
            phase, step, state = phase + 1, 0, None
            save_checkpoint(out, model, optimizer, phase, 0, rng)
    except KeyboardInterrupt:
        save_checkpoint(out, model, optimizer, phase, step, rng)
        rng.bit_generator.state = rng_state
        print(f"\ninterrupted in phase {phase} at step {step}; checkpoint saved, continue with --resume")
        raise
    finally:
        bar.close()
    gap = hard_soft_gap(model, val_lat, seed=cfg.seed)
    for key, value in gap.items():
        writer.add_scalar(f"eval/hard_soft_{key}", value, offset)
    writer.close()
    folder = out / "model"
    save_leworld(
        folder,
        model,
        encoder_model=latents.info.get("encoder_model", cfg.encoder_model),
        info={**latents.info, "seed": cfg.seed, "phase_steps": list(cfg.phase_steps), "hard_soft_gap": gap},
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
        ctx_valid: torch.Tensor | None = None,
        ablation: str | None = None,
        **_: Any,
    ) -> tuple[torch.Tensor, list]:
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
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, steps, cfg.lr)
        optimizer.zero_grad(set_to_none=True)
        pred, _ = model.rollout(batch["z"][:, :c], batch["a"][:, :c], batch["a"][:, c : c + cfg.horizon])
        loss = F.mse_loss(pred, batch["z"][:, c : c + cfg.horizon])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
    model.eval()
    return model
