"""The state probe: a small head from frozen latents to the physical state.

Targets are ``agent x, agent y, block x, block y`` (divided by 512) and
``sin, cos`` of the block angle. The envs use the probe for reward, success and
drawing; its R^2 per field on held-out episodes says how much of the physical
state the latent holds.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from world_models import pose
from world_models.pose import PROBE_FIELDS


def state_to_targets(state: np.ndarray | torch.Tensor) -> torch.Tensor:
    """(…, 5) agent xy, block xy, angle -> (…, 6) probe targets (:func:`world_models.pose.state_to_targets`)."""
    if isinstance(state, torch.Tensor):
        state = state.detach().cpu().numpy()
    return torch.from_numpy(pose.state_to_targets(state))


def targets_to_state(targets: torch.Tensor) -> torch.Tensor:
    """(…, 6) probe outputs -> (…, 5) agent xy, block xy (px), angle (:func:`world_models.pose.targets_to_state`)."""
    return torch.from_numpy(pose.targets_to_state(targets.detach().cpu().numpy()))


class Probe(nn.Module):
    """Latent (…, D) -> probe targets (…, 6): an MLP over standardised latents."""

    def __init__(self, latent_dim: int, hidden: int = 256) -> None:
        super().__init__()
        self.hidden = hidden
        self.register_buffer("z_mean", torch.zeros(latent_dim))
        self.register_buffer("z_std", torch.ones(latent_dim))
        self.net = nn.Sequential(nn.Linear(latent_dim, hidden), nn.GELU(), nn.Linear(hidden, len(PROBE_FIELDS)))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net((z - self.z_mean) / self.z_std)

    def state(self, z: torch.Tensor) -> torch.Tensor:
        """Latents -> physical state (agent xy, block xy, angle)."""
        return targets_to_state(self(z))


def r2_per_field(pred: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    """Coefficient of determination for each probe field."""
    sse = ((pred - target) ** 2).sum(0)
    sst = ((target - target.mean(0)) ** 2).sum(0)
    r2 = 1.0 - sse / sst.clamp_min(1e-12)
    return {name: float(v) for name, v in zip(PROBE_FIELDS, r2, strict=True)}


def fit_probe(
    z_train: torch.Tensor,
    state_train: torch.Tensor,
    z_val: torch.Tensor | None = None,
    state_val: torch.Tensor | None = None,
    steps: int = 1500,
    hidden: int = 256,
    seed: int = 0,
) -> tuple[Probe, dict[str, float]]:
    """Fit a probe with Adam (full batch; latents stay frozen) and report R^2 per field on the val set."""
    gen = torch.Generator().manual_seed(seed)
    z_train = z_train.detach().float()
    probe = Probe(z_train.shape[1], hidden)
    with torch.no_grad():
        probe.z_mean.copy_(z_train.mean(0))
        probe.z_std.copy_(z_train.std(0).clamp_min(1e-6))
        for layer in probe.net:
            if isinstance(layer, nn.Linear):
                bound = 1.0 / layer.in_features**0.5
                layer.weight.copy_(torch.empty_like(layer.weight).uniform_(-bound, bound, generator=gen))
                layer.bias.zero_()
    targets = state_to_targets(state_train)
    opt = torch.optim.Adam(probe.parameters(), lr=3e-3, weight_decay=1e-5)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for _ in range(steps):
        loss = nn.functional.mse_loss(probe(z_train), targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    probe.eval()
    metrics: dict[str, float] = {}
    if z_val is not None and state_val is not None:
        with torch.no_grad():
            metrics = r2_per_field(probe(z_val.float()), state_to_targets(state_val))
    return probe, metrics


def encode_frames(model: torch.nn.Module, clips, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Latents and states of up to ``count`` frames of a split (the first frame of shuffled clips)."""
    model.eval()
    zs, states = [], []
    with torch.no_grad():
        for batch in clips.epoch(256):
            zs.append(model.encode(torch.from_numpy(batch.pixels[:, 0])))
            states.append(torch.from_numpy(batch.state[:, 0]))
            if sum(len(z) for z in zs) >= count:
                break
    return torch.cat(zs)[:count], torch.cat(states)[:count]


def fit_dataset_probe(
    model: torch.nn.Module,
    data: str,
    val_fraction: float = 0.1,
    frames: int = 4000,
    steps: int = 1500,
    seed: int = 0,
    hidden: int = 256,
) -> tuple[Probe, dict[str, float], dict]:
    """Fit a probe on a dataset's training episodes; R^2 per field on its validation episodes.

    Returns the probe, the R^2 dict, and the info written to ``probe.json``.
    """
    from world_models.data.dataset import PushTClips

    history = model.cfg.history
    train = PushTClips(data, history, 0, "train", val_fraction, seed=seed)
    val = PushTClips(data, history, 0, "val", val_fraction, seed=seed)
    z_train, s_train = encode_frames(model, train, frames)
    z_val, s_val = encode_frames(model, val, frames)
    probe, r2 = fit_probe(z_train, s_train, z_val, s_val, steps=steps, hidden=hidden, seed=seed)
    info = {"r2_val": r2, "train_frames": len(z_train), "val_frames": len(z_val), "data": str(data)}
    return probe, r2, info


def fit_ridge(z: torch.Tensor, state: torch.Tensor, ridge: float = 1e-3) -> torch.Tensor:
    """A closed-form linear probe (weights (D+1, 6)), for quick looks during training."""
    x = torch.cat([z.double(), torch.ones(len(z), 1, dtype=torch.float64)], dim=1)
    y = state_to_targets(state).double()
    a = x.T @ x + ridge * torch.eye(x.shape[1], dtype=torch.float64)
    return torch.linalg.solve(a, x.T @ y).float()


def apply_ridge(weights: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    return targets_to_state(torch.cat([z, torch.ones(*z.shape[:-1], 1)], dim=-1) @ weights)
