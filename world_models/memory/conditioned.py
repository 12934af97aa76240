"""A LeWM predictor with C extra input channels beside the action: the memory ablation's common model.

Every row of the delayed-glide ablation (benchmarks/glide_memory_ablation.py) is this one predictor
(:class:`~world_models.lewm.model.Predictor`, ``action_dim = 2 + C``) trained the same way on the
same frozen latents; only what the extra channels carry differs: zeros (no memory), the episode's
true damping bit (the oracle), or a memory's readout. A row with a longer context is the same
predictor with ``history = 16`` and zeros.

The extra channels are given per frame, aligned with :attr:`LatentEpisodes.z`: ``extra[i]`` rides
with ``actions[i]``, the action applied at frame ``i``. Training is LeWM's teacher-forced loss
(every window of ``history`` latents predicts the latent after each of its positions); evaluation is
an open-loop rollout from a chosen frame with the true actions (:func:`rollout`).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from world_models.config import ModelConfig
from world_models.data.latents import LatentEpisodes, window_starts
from world_models.errors import LeWorldError
from world_models.lewm.model import Predictor, init_weights
from world_models.training import cosine_decay


def step_inputs(latents: LatentEpisodes, extra: np.ndarray) -> np.ndarray:
    """float32 [N, 2 + C]: each frame's action (0 at an episode's last frame) and its extra channels."""
    extra = np.asarray(extra, np.float32)
    if extra.ndim != 2 or len(extra) != len(latents.z):
        raise LeWorldError(f"extra channels must be [N = {len(latents.z)}, C], got {list(extra.shape)}")
    return np.concatenate([np.nan_to_num(latents.actions), extra], axis=1).astype(np.float32)


def conditioned_predictor(base: ModelConfig, history: int, channels: int, seed: int) -> Predictor:
    """A freshly initialised predictor of ``base``'s sizes that sees ``history`` latents and 2 + C inputs."""
    torch.manual_seed(seed)
    predictor = Predictor(dataclasses.replace(base, history=history, action_dim=2 + channels))
    init_weights(predictor)
    return predictor


def window_rows(latents: LatentEpisodes, history: int) -> np.ndarray:
    """int64 [W, history + 1]: the rows of every whole window of ``history + 1`` frames of one episode."""
    episodes, t0s = window_starts(latents, horizon=1, min_t0=history - 1)
    return latents.episode_starts[episodes][:, None] + t0s[:, None] + np.arange(-history + 1, 2)[None, :]


def held_rows(rows: torch.Tensor, first: torch.Tensor, hold: int, generator: torch.Generator) -> torch.Tensor:
    """The rows whose extra channels a window's positions take when they are held as in a rollout.

    rows (W, h): each window's input rows; first (W,): the first row of its episode. Each window
    draws an anchor 0 .. ``hold`` rows before its last input row (not before ``first``); positions
    from the anchor on take the anchor's extra channels, earlier ones their own. A rollout of H steps
    (:func:`windows_from`) holds frame t0's channels for up to H - 1 rows, so ``hold = H - 1`` trains
    on every staleness it will see; an anchor never lies after its position (no future reads)."""
    back = torch.randint(hold + 1, (len(rows), 1), generator=generator)
    anchor = torch.maximum(rows[:, -1:] - back, first[:, None])
    return torch.minimum(rows, anchor)


def train_conditioned(
    latents: LatentEpisodes,
    extra: np.ndarray,
    base: ModelConfig,
    history: int = 3,
    steps: int = 3000,
    batch_size: int = 256,
    learning_rate: float = 1e-3,
    seed: int = 0,
    progress: bool = False,
    hold: int = 0,
) -> Predictor:
    """Train a :func:`conditioned_predictor` on every window of ``latents`` with ``extra`` beside the actions.

    AdamW with a cosine schedule, as the ensemble heads (:mod:`world_models.lewm.heads`); batches are
    drawn from a ``torch.Generator`` seeded with ``seed``. ``hold > 0`` feeds each window the extra
    channels as a rollout would hold them (:func:`held_rows`): for channels that change within an
    episode (a memory's readout) teacher forcing otherwise trains on fresher channels than any
    rollout gives.
    """
    from tqdm import tqdm

    inputs = torch.from_numpy(step_inputs(latents, extra))
    z = torch.from_numpy(np.ascontiguousarray(latents.z, np.float32))
    rows = torch.from_numpy(window_rows(latents, history))
    firsts = torch.from_numpy(latents.episode_starts[np.searchsorted(latents.episode_starts, rows[:, 0], "right") - 1])
    predictor = conditioned_predictor(base, history, inputs.shape[1] - 2, seed)
    optimizer = torch.optim.AdamW(predictor.parameters(), lr=learning_rate, weight_decay=1e-3)
    schedule = cosine_decay(optimizer, steps)
    generator = torch.Generator().manual_seed(seed)
    predictor.train()
    for _ in tqdm(range(steps), desc=f"predictor h={history} seed {seed}", unit="step", disable=not progress):
        pick = torch.randint(len(rows), (min(batch_size, len(rows)),), generator=generator)
        r = rows[pick]
        u = inputs[r[:, :-1]]
        if hold > 0:
            u = torch.cat([u[..., :2], inputs[held_rows(r[:, :-1], firsts[pick], hold, generator), 2:]], dim=-1)
        loss = torch.nn.functional.mse_loss(predictor(z[r[:, :-1]], u), z[r[:, 1:]])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    return predictor.eval()


@torch.no_grad()
def rollout(predictor: Predictor, z_context: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    """Open loop: z_context (B, h, D) up to frame t0 and inputs (B, h + H - 1, A) for frames t0 - h + 1 ..
    t0 + H - 1 -> the predicted latents (B, H, D) of frames t0 + 1 .. t0 + H, each fed back as context."""
    h = z_context.shape[1]
    horizon = inputs.shape[1] - h + 1
    z = z_context
    out = []
    for k in range(horizon):
        nxt = predictor(z[:, -h:], inputs[:, k : k + h])[:, -1]
        out.append(nxt)
        z = torch.cat([z, nxt[:, None]], dim=1)
    return torch.stack(out, dim=1)


def windows_from(
    latents: LatentEpisodes, extra: np.ndarray, episodes: np.ndarray, t0s: np.ndarray, history: int, horizon: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For each (episode, t0): the context z (W, history, D), the inputs (W, history + horizon - 1, A)
    :func:`rollout` takes, and the true future z (W, horizon, D). Every frame must lie inside its episode.

    The future frames' extra channels are frame t0's: a rollout reads the memory as it stood when
    planning began and writes nothing (no real step happens)."""
    lengths = latents.lengths()[episodes]
    if np.any(t0s - history + 1 < 0) or np.any(t0s + horizon >= lengths):
        raise LeWorldError(f"windows of {history} + {horizon} frames must lie inside their episodes")
    base = latents.episode_starts[episodes][:, None] + t0s[:, None]
    inputs = step_inputs(latents, extra)
    z_rows = base + np.arange(-history + 1, horizon + 1)[None, :]
    u_rows = base + np.arange(-history + 1, horizon)[None, :]
    z = torch.from_numpy(latents.z[z_rows].astype(np.float32))
    u = inputs[u_rows]
    u[:, history:, 2:] = u[:, history - 1 : history, 2:]
    return z[:, :history], torch.from_numpy(u), z[:, history:]
