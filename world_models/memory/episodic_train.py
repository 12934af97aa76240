"""Train the episodic bit memory and its predictor together, and read it back as the predictor's extra input.

One step: B whole episodes (cropped to the shortest length in the data, from frame 0, so every read
sees the episode's own history); the memory writes every transition and reads at every frame
(:func:`~world_models.memory.episodic.soft_readout`); the predictor
(:func:`~world_models.memory.conditioned.conditioned_predictor`, context ``history``)
takes the readout beside the action, and LeWM's teacher-forced loss on
``windows`` windows drawn from those episodes, plus the records' reconstruction term, trains both
through the straight-through bits. Each window takes the readout as a rollout holds it, up to
``hold`` frames stale (:func:`~world_models.memory.conditioned.held_rows`): with every frame's own
readout the predictor learned to lean on what the last transitions wrote, which a rollout that holds
the start frame's readout no longer gives (measured: error grew with the horizon, 0.55 against 0.36).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from world_models.config import ModelConfig
from world_models.data.latents import LatentEpisodes
from world_models.errors import LeWorldError
from world_models.lewm.model import Predictor
from world_models.memory.conditioned import conditioned_predictor, held_rows
from world_models.memory.episodic import EpisodicConfig, EpisodicMemory, hard_reads, soft_readout, st_one_hot
from world_models.training import cosine_decay

MODES = ("hard", "soft", "zeroed", "shuffled")


@dataclass(frozen=True)
class EpisodicTrainConfig:
    """How to train the episodic memory with its predictor (see the module docstring)."""

    history: int = 3
    steps: int = 3000
    episodes: int = 32
    windows: int = 256
    learning_rate: float = 1e-3
    seed: int = 0
    hold: int = 24
    privileged_weight: float = 0.0


def episode_tensors(latents: LatentEpisodes, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every episode's first ``length`` frames: z (E, length, D), actions (E, length, 2) (NaN -> 0)."""
    if latents.lengths().min() < length:
        raise LeWorldError(f"latents: an episode has fewer than {length} frames")
    rows = latents.episode_starts[:-1, None] + np.arange(length)[None, :]
    return torch.from_numpy(latents.z[rows].astype(np.float32)), torch.from_numpy(np.nan_to_num(latents.actions[rows]))


def readouts(
    memory: EpisodicMemory, z: torch.Tensor, a: torch.Tensor, soft: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Readout channels (B, L, C) at every frame of episodes z, a, and the reconstruction loss: the
    straight-through read of training, or with ``soft`` the read softmax's mixture of every chunk."""
    record, chunks, recon = memory.transitions(z, a)
    logits, query = memory.reads(z)
    weights = torch.softmax(logits, dim=-1) if soft else st_one_hot(logits)
    return memory.readout(soft_readout(memory, record, chunks, weights, query)), recon


def train_episodic(
    latents: LatentEpisodes,
    base: ModelConfig,
    memory_cfg: EpisodicConfig,
    cfg: EpisodicTrainConfig,
    progress: bool = False,
    privileged: np.ndarray | None = None,
) -> tuple[EpisodicMemory, Predictor, dict[str, float]]:
    """Train the memory and a fresh predictor on ``latents``; returns both (eval mode) and the last losses.

    ``privileged`` (float [E, P], P <= channels), with ``cfg.privileged_weight > 0``: per-episode facts
    the first P readout channels regress at every frame (RMA's adaptation module: the facts supervise
    training only; at inference the memory has its own writes and nothing else). The regression's
    best guess before the facts show is their mean, after, the facts.
    """
    from tqdm import tqdm

    length = int(latents.lengths().min())
    if length < cfg.history + 2:
        raise LeWorldError(f"latents: episodes of {length} frames are too short for a context of {cfg.history}")
    z_all, a_all = episode_tensors(latents, length)
    use_privileged = privileged is not None and cfg.privileged_weight > 0
    if use_privileged:
        facts = torch.as_tensor(np.asarray(privileged, np.float32))
        if facts.ndim != 2 or len(facts) != len(z_all) or facts.shape[1] > memory_cfg.channels:
            expected = f"[episodes = {len(z_all)}, P <= {memory_cfg.channels}]"
            raise LeWorldError(f"privileged facts must be {expected}, got {list(facts.shape)}")
    torch.manual_seed(cfg.seed)
    memory = EpisodicMemory(memory_cfg)
    predictor = conditioned_predictor(base, cfg.history, memory_cfg.channels, cfg.seed)
    params = [*memory.parameters(), *predictor.parameters()]
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=1e-3)
    schedule = cosine_decay(optimizer, cfg.steps)
    generator = torch.Generator().manual_seed(cfg.seed)
    h = cfg.history
    last: dict[str, float] = {}
    for _ in tqdm(range(cfg.steps), desc=f"episodic memory seed {cfg.seed}", unit="step", disable=not progress):
        batch = torch.randint(len(z_all), (min(cfg.episodes, len(z_all)),), generator=generator)
        z, a = z_all[batch], a_all[batch]
        extra, recon = readouts(memory, z, a)
        b = torch.randint(len(batch), (cfg.windows,), generator=generator)
        t = torch.randint(h - 1, length - 1, (cfg.windows,), generator=generator)
        frames = t[:, None] + torch.arange(-h + 1, 2)[None, :]  # (W, h + 1)
        held = held_rows(frames[:, :h], torch.zeros(cfg.windows, dtype=torch.long), cfg.hold, generator)
        uw = torch.cat([a[b[:, None], frames[:, :h]], extra[b[:, None], held]], dim=-1)
        zw = z[b[:, None], frames]
        prediction = torch.nn.functional.mse_loss(predictor(zw[:, :h], uw), zw[:, 1:])
        loss = prediction + memory_cfg.recon_weight * recon
        last = {"prediction": prediction.item(), "recon": recon.item()}
        if use_privileged:
            target = facts[batch][:, None, :].expand(-1, length, -1)
            fact_loss = torch.nn.functional.mse_loss(extra[..., : facts.shape[1]], target)
            loss = loss + cfg.privileged_weight * fact_loss
            last["privileged"] = fact_loss.item()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    return memory.eval(), predictor.eval(), last


@torch.no_grad()
def memory_extra(memory: EpisodicMemory, latents: LatentEpisodes, mode: str = "hard", seed: int = 0) -> np.ndarray:
    """The readout channels at every frame of ``latents`` (float32 [N, C]), as the predictor's extra input.

    ``mode``: ``hard`` (all episodes frame by frame on the numba bit memory: the inference path),
    ``soft`` (the training read, every chunk weighted by the read softmax), ``zeroed`` (every read finds
    an empty memory), ``shuffled`` (each episode's queries read the hard memory another episode wrote; a seeded
    derangement of the episodes).
    """
    if mode not in MODES:
        raise LeWorldError(f"memory readout mode {mode!r}: expected one of {', '.join(MODES)}")
    lengths, count = latents.lengths(), latents.num_episodes
    frames = np.minimum(np.arange(lengths.max())[None, :], lengths[:, None] - 1)  # edge-padded
    rows = latents.episode_starts[:-1, None] + frames
    z, a = latents.z[rows], np.nan_to_num(latents.actions[rows])
    if mode == "zeroed":
        reads = np.zeros((*rows.shape, memory.readout.in_features), np.float32)
    elif mode == "soft":
        extra = readouts(memory, torch.from_numpy(z.astype(np.float32)), torch.from_numpy(a), soft=True)[0].numpy()
        return np.concatenate([extra[e, : lengths[e]] for e in range(count)])
    elif mode == "shuffled":
        other = (np.arange(count) + 1 + np.random.default_rng(seed).integers(max(1, count - 1))) % count
        reads = hard_reads(memory, z[other], a[other], lengths[other], z_query=z)
    else:
        reads = hard_reads(memory, z, a, lengths)
    extra = memory.readout(torch.from_numpy(reads)).numpy()
    return np.concatenate([extra[e, : lengths[e]] for e in range(count)])
