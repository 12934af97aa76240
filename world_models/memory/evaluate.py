"""Open-loop evaluation of the LeWorld memory model (and the matched LeWM baseline) on held-out episodes.

:func:`open_loop_error` rolls a model out open loop under the true actions from
windows of held-out episodes, after a context of real steps (so the history
region holds the episode's own past), and reports per horizon the *normalised
error*: MSE(prediction, true latent) / MSE(copy of the last context latent, true
latent), both averaged over windows and latent dimensions. Below 1 beats
standing still. Ablations are flags of the LeWorld model at evaluation
(:data:`~world_models.memory.model.ABLATIONS`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from world_models.data.latents import LatentEpisodes, cut_windows, window_starts
from world_models.errors import LeWorldError
from world_models.memory.model import ABLATIONS, LeWorldMemory


def _other_episode_rows(episodes: np.ndarray) -> torch.Tensor:
    """For each row, a row of a different episode (itself when the batch holds one episode only)."""
    n = len(episodes)
    rows = np.arange(n)
    for b in range(n):
        for shift in range(1, n):
            if episodes[(b + shift) % n] != episodes[b]:
                rows[b] = (b + shift) % n
                break
    return torch.from_numpy(rows)


@torch.no_grad()
def open_loop_error(
    model: torch.nn.Module,
    latents: LatentEpisodes,
    horizons: tuple[int, ...] = (1, 5, 10),
    ablation: str | None = None,
    seed: int = 0,
    mode: str = "hard",
    max_windows: int = 1024,
    batch_size: int = 128,
) -> dict[str, Any]:
    """Normalised open-loop error of ``model`` on the episodes of ``latents`` (held out).

    Args:
        model: a :class:`~world_models.memory.model.LeWorldMemory` or the
            :class:`~world_models.memory.train.BaselinePredictor` (``ablation=None`` only).
        latents: held-out episodes.
        horizons: model steps after the context to score (1-based).
        ablation: None, or one of ``memory_zeroed``, ``memory_shuffled``, ``random_routing``,
            ``all_slms_on``, ``single_slm``, ``info_off``.
        seed: picks the windows (at most ``max_windows``, every (episode, t0) with t0 >= 1) and
            the random routing draws.
        mode: ``hard`` (inference reads, numba kernels) or ``soft`` (the training read).

    Returns:
        ``{"normalised": {"h1": ..}, "mse": {..}, "copy_mse": {..}, "windows": n, "usage": [..] | None}``.
    """
    if ablation is not None and ablation not in ABLATIONS:
        raise LeWorldError(f"unknown ablation {ablation!r}; choose one of: {', '.join(ABLATIONS)}")
    if not horizons or min(horizons) < 1:
        raise LeWorldError(f"horizons must be positive model steps, got {horizons}")
    model.eval()
    is_memory = isinstance(model, LeWorldMemory)
    context = model.cfg.context if is_memory else model.cfg.history
    h_max = max(horizons)
    episodes, t0s = window_starts(latents, h_max)
    rng = np.random.default_rng(seed)
    if len(t0s) > max_windows:
        pick = np.sort(rng.choice(len(t0s), max_windows, replace=False))
        episodes, t0s = episodes[pick], t0s[pick]
    generator = torch.Generator().manual_seed(seed)
    se, se_copy, masks = np.zeros(h_max), np.zeros(h_max), []
    for i in range(0, len(t0s), batch_size):
        w = cut_windows(latents, episodes[i : i + batch_size], t0s[i : i + batch_size], context, h_max)
        z, a, valid = torch.from_numpy(w.z), torch.from_numpy(w.actions), torch.from_numpy(w.valid)
        kw: dict[str, Any] = {"ctx_valid": valid[:, :context], "ablation": ablation}
        if is_memory:
            kw |= {"mode": mode, "routing": "deterministic", "generator": generator}
            if ablation == "memory_shuffled":
                kw["hist_rows"] = _other_episode_rows(w.episode)
        pred, outs = model.rollout(z[:, :context], a[:, :context], a[:, context : context + h_max], **kw)
        target = z[:, context : context + h_max]
        se += ((pred - target) ** 2).mean(-1).sum(0).numpy()
        se_copy += ((z[:, context - 1 : context] - target) ** 2).mean(-1).sum(0).numpy()
        if outs:
            masks.append(torch.stack([o.mask for o in outs]).mean(0).sum(0))
    n = len(t0s)
    mse, copy_mse = se / n, se_copy / n
    usage = (torch.stack(masks).sum(0) / n).tolist() if masks else None
    return {
        "normalised": {f"h{h}": float(mse[h - 1] / max(copy_mse[h - 1], 1e-12)) for h in horizons},
        "mse": {f"h{h}": float(mse[h - 1]) for h in horizons},
        "copy_mse": {f"h{h}": float(copy_mse[h - 1]) for h in horizons},
        "windows": n,
        "usage": usage,
    }


@torch.no_grad()
def hard_soft_gap(
    model: LeWorldMemory, latents: LatentEpisodes, horizons: tuple[int, ...] = (1, 5, 10), seed: int = 0
) -> dict[str, float]:
    """Normalised open-loop error with hard reads minus with soft reads, per horizon (``h1``, ...),
    on at most 256 held-out windows (horizon 1 only when the episodes are too short for the rest)."""
    h_max = max(horizons)
    try:
        window_starts(latents, h_max)
    except LeWorldError:
        horizons = (1,)
    hard = open_loop_error(model, latents, horizons, seed=seed, mode="hard", max_windows=256)
    soft = open_loop_error(model, latents, horizons, seed=seed, mode="soft", max_windows=256)
    return {k: hard["normalised"][k] - soft["normalised"][k] for k in hard["normalised"]}
