"""Predictor heads for an ensemble: new predictors trained on a frozen model's latents.

Each head is a fresh :class:`~world_models.lewm.model.Predictor` (its own seed, its own bootstrap
resample of the windows), trained with LeWM's teacher-forced prediction loss (every window of
``history`` latents predicts the latent after each of its positions) on latents a frozen encoder
wrote (:func:`world_models.data.latents.encode_episodes`). A head is saved as a whole model folder
(the base model's encoder, probe and config; the head's predictor), so every float backend loads
it and :class:`~world_models.ensemble.PredictorEnsemble` combines it with the base model.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import torch

from world_models.data.latents import LatentEpisodes, cut_windows, window_starts
from world_models.errors import LeWorldError
from world_models.interface import WorldModel
from world_models.lewm.folder import load_model, save_model
from world_models.lewm.model import init_weights
from world_models.training import cosine_decay


def _windows(
    latents: LatentEpisodes, history: int, rows: np.ndarray | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """All whole windows of ``history + 1`` latents: z (N, h + 1, D) and actions (N, h + 1, 2)."""
    episodes, starts = window_starts(latents, horizon=1, min_t0=history - 1)
    if rows is not None:
        episodes, starts = episodes[rows], starts[rows]
    windows = cut_windows(latents, episodes, starts, context=history, horizon=1)
    return torch.from_numpy(windows.z), torch.from_numpy(windows.actions)


def prediction_loss(predictor: torch.nn.Module, z: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """LeWM's teacher-forced loss on windows z (B, h + 1, D), a (B, h + 1, 2)."""
    h = z.shape[1] - 1
    return torch.nn.functional.mse_loss(predictor(z[:, :h], a[:, :h]), z[:, 1:])


def train_head(
    base: Path,
    latents: LatentEpisodes,
    out: Path,
    seed: int,
    steps: int = 3000,
    batch_size: int = 256,
    learning_rate: float = 1e-3,
    progress: bool = False,
) -> dict[str, float]:
    """Train one head on a bootstrap resample of ``latents``' windows; write it as a model folder ``out``.

    Returns the head's and the base predictor's loss on every window (the base's is the reference:
    a head far above it is not yet a predictor of these latents).
    """
    from tqdm import tqdm

    model, probe, probe_info = load_model(Path(base))
    history = model.cfg.history
    z_all, a_all = _windows(latents, history)
    if len(z_all) < 2:
        raise LeWorldError(f"latents: {len(z_all)} windows of {history + 1} latents; need more episodes")
    generator = torch.Generator().manual_seed(seed)
    sample = torch.randint(len(z_all), (len(z_all),), generator=generator)  # the bootstrap
    z, a = z_all[sample], a_all[sample]
    torch.manual_seed(seed)
    predictor = type(model.predictor)(model.cfg)
    init_weights(predictor)
    optimizer = torch.optim.AdamW(predictor.parameters(), lr=learning_rate, weight_decay=1e-3)
    schedule = cosine_decay(optimizer, steps)
    predictor.train()
    for _ in tqdm(range(steps), desc=f"head seed {seed}", unit="step", disable=not progress):
        index = torch.randint(len(z), (min(batch_size, len(z)),), generator=generator)
        loss = prediction_loss(predictor, z[index], a[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    predictor.eval()
    with torch.no_grad():
        losses = {
            "head": float(prediction_loss(predictor, z_all, a_all)),
            "base": float(prediction_loss(model.predictor, z_all, a_all)),
        }
    model.predictor = predictor
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_model(out, model, probe, probe_info)
    if (Path(base) / "starts.safetensors").is_file():
        shutil.copyfile(Path(base) / "starts.safetensors", out / "starts.safetensors")
    return losses


class FrozenEncoder(WorldModel):
    """A model folder's torch encoder behind the runtime interface's ``encode`` (all this layer may
    load; :func:`~world_models.data.latents.encode_episodes` reads a dataset through it)."""

    backend = "torch"

    def __init__(self, folder: Path) -> None:
        self.path = Path(folder)
        self.model = load_model(self.path)[0]
        self.config = self.model.cfg

    @torch.no_grad()
    def _encode(self, pixels: np.ndarray) -> np.ndarray:
        return self.model.encode(torch.from_numpy(pixels)).numpy()


def main(argv: list[str] | None = None) -> None:
    """``python -m world_models.lewm.heads --data DATASET --out FOLDER [--model pusht-tiny] [--count 2]``:
    encode the dataset with the model's encoder, train ``count`` heads (seeds 1 .. count), write
    ``FOLDER/head{seed}`` and print each head's and the base predictor's loss."""
    import argparse
    import json

    from world_models.data.latents import encode_episodes
    from world_models.locate import DEFAULT_MODEL, resolve_model

    parser = argparse.ArgumentParser(prog="python -m world_models.lewm.heads", description=main.__doc__)
    parser.add_argument("--data", required=True, help="a leworld collect dataset")
    parser.add_argument("--out", required=True, type=Path, help="folder for the heads (head1, head2, ...)")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="the base model (its encoder, probe and config)")
    parser.add_argument("--count", type=int, default=2, help="heads to train (2)")
    parser.add_argument("--steps", type=int, default=3000, help="optimizer steps per head (3000)")
    parser.add_argument("--batch-size", type=int, default=256, help="windows per step (256)")
    args = parser.parse_args(argv)
    try:
        base = resolve_model(args.model)
        latents = encode_episodes(args.data, FrozenEncoder(base), progress=True, encoder_model=str(base))
        for seed in range(1, args.count + 1):
            out = args.out / f"head{seed}"
            losses = train_head(base, latents, out, seed, args.steps, args.batch_size, progress=True)
            print(json.dumps({"folder": str(out), "loss": losses["head"], "base_loss": losses["base"]}))
    except LeWorldError as err:
        parser.exit(1, f"error: {err}\n")


if __name__ == "__main__":
    main()
