"""The one runtime interface, and ``load``.

Every backend returns an object with these methods (numpy in, numpy out), so
nothing above ``world_models`` knows which backend it holds::

    encode(pixels uint8 [B, H, W, 3]) -> z float32 [B, D]
    predict(z_hist [B, T, D], a_hist [B, T, A]) -> z_next [B, D]
    rollout(z_hist [B, T, D], a_hist [B, T, A], a_future [B, H, A]) -> z [B, H, D]
    probe(z [B, D]) -> state [B, 5]   (agent x, y, block x, y, angle)
    config                            (a ModelConfig)

Inputs are checked: wrong dtype, shape, image size, or non-finite values raise
``ValueError`` naming the argument and what was expected.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from world_models.config import ModelConfig
from world_models.errors import LeWorldError

SHIPPED_DIR = Path(__file__).resolve().parent / "shipped"
DEFAULT_MODEL = "pusht-tiny"
BACKENDS = ("torch", "numba", "numba-q4", "esp32", "fpga")
AVAILABLE_BACKENDS = ("torch",)


def shipped_models() -> list[str]:
    """Names of the models inside the package."""
    if not SHIPPED_DIR.is_dir():
        return []
    return sorted(p.name for p in SHIPPED_DIR.iterdir() if (p / "config.json").is_file())


def resolve_model(name_or_path: str | Path) -> Path:
    """A shipped model's folder by name, or a model folder path."""
    path = Path(name_or_path)
    if path.is_dir():
        return path
    shipped = SHIPPED_DIR / str(name_or_path)
    if (shipped / "config.json").is_file():
        return shipped
    raise LeWorldError(
        f"no model {str(name_or_path)!r}: not a folder, and not a shipped model "
        f"({', '.join(shipped_models()) or 'none shipped'})"
    )


def _check_finite(name: str, x: np.ndarray) -> None:
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name} holds NaN or inf values")


class TorchWorldModel:
    """The runtime interface over a torch :class:`~world_models.lewm.LeWM` (CPU, no gradients)."""

    backend = "torch"

    def __init__(self, folder: Path) -> None:
        from world_models.io import load_model

        self.path = folder
        self.model, self._probe, self.probe_info = load_model(folder)
        self.config: ModelConfig = self.model.cfg

    # ------------------------------------------------------------ checks
    def _pixels(self, pixels: Any) -> torch.Tensor:
        pixels = np.asarray(pixels)
        size = self.config.image_size
        if pixels.dtype != np.uint8:
            raise ValueError(f"pixels must be uint8 RGB, got dtype {pixels.dtype}")
        if pixels.ndim != 4 or pixels.shape[1:] != (size, size, 3):
            raise ValueError(f"pixels must have shape [B, {size}, {size}, 3] for this model, got {list(pixels.shape)}")
        return torch.from_numpy(np.ascontiguousarray(pixels))

    def _sequence(self, name: str, x: Any, last: int) -> torch.Tensor:
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 3 or x.shape[2] != last or x.shape[1] < 1:
            raise ValueError(f"{name} must have shape [B, T, {last}], got {list(x.shape)}")
        _check_finite(name, x)
        return torch.from_numpy(np.ascontiguousarray(x))

    def _history(self, z_hist: Any, a_hist: Any) -> tuple[torch.Tensor, torch.Tensor]:
        z = self._sequence("z_hist", z_hist, self.config.latent_dim)
        a = self._sequence("a_hist", a_hist, self.config.action_dim)
        if z.shape[:2] != a.shape[:2]:
            raise ValueError(f"z_hist {list(z.shape)} and a_hist {list(a.shape)} must agree on [B, T]")
        return z, a

    # ------------------------------------------------------------ interface
    @torch.no_grad()
    def encode(self, pixels: Any) -> np.ndarray:
        return self.model.encode(self._pixels(pixels)).numpy()

    @torch.no_grad()
    def predict(self, z_hist: Any, a_hist: Any) -> np.ndarray:
        z, a = self._history(z_hist, a_hist)
        return self.model.predict(z, a).numpy()

    @torch.no_grad()
    def rollout(self, z_hist: Any, a_hist: Any, a_future: Any) -> np.ndarray:
        z, a = self._history(z_hist, a_hist)
        future = self._sequence("a_future", a_future, self.config.action_dim)
        if future.shape[0] != z.shape[0]:
            raise ValueError(f"a_future has batch {future.shape[0]}, z_hist has {z.shape[0]}")
        return self.model.rollout(z, a, future).numpy()

    @torch.no_grad()
    def probe(self, z: Any) -> np.ndarray:
        if self._probe is None:
            raise LeWorldError(f"{self.path}: this model has no probe.safetensors; run leworld probe")
        z = np.asarray(z, dtype=np.float32)
        if z.ndim != 2 or z.shape[1] != self.config.latent_dim:
            raise ValueError(f"z must have shape [B, {self.config.latent_dim}], got {list(z.shape)}")
        _check_finite("z", z)
        return self._probe.state(torch.from_numpy(z)).numpy()


def load(name_or_path: str | Path = DEFAULT_MODEL, backend: str = "torch", **kwargs: Any) -> TorchWorldModel:
    """Build a world model behind the runtime interface.

    Args:
        name_or_path: a shipped model's name (default ``pusht-tiny``) or a model folder.
        backend: ``torch`` today; ``numba``, ``numba-q4``, ``esp32`` and ``fpga`` arrive with later issues.
    """
    if backend not in BACKENDS:
        raise LeWorldError(f"unknown backend {backend!r}; choose one of: {', '.join(BACKENDS)}")
    if backend not in AVAILABLE_BACKENDS:
        raise LeWorldError(f"backend {backend!r} is not available yet; available: {', '.join(AVAILABLE_BACKENDS)}")
    if kwargs:
        raise LeWorldError(f"backend {backend!r} takes no options, got {', '.join(kwargs)}")
    return TorchWorldModel(resolve_model(name_or_path))
