"""The ``torch`` backend: the runtime interface over a torch :class:`~world_models.lewm.model.LeWM` (CPU)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from world_models.config import ModelConfig
from world_models.interface import WorldModel


class TorchWorldModel(WorldModel):
    """A model folder (``config.json`` + ``model.safetensors`` + probe) run by torch in float32."""

    backend = "torch"

    def __init__(self, folder: Path) -> None:
        from world_models.lewm.folder import load_model

        self.path = Path(folder)
        self.model, self._probe, self.probe_info = load_model(self.path)
        self.config: ModelConfig = self.model.cfg
        self.has_probe = self._probe is not None

    @torch.no_grad()
    def _encode(self, pixels: np.ndarray) -> np.ndarray:
        return self.model.encode(torch.from_numpy(pixels)).numpy()

    @torch.no_grad()
    def _predict(self, z_hist: np.ndarray, a_hist: np.ndarray) -> np.ndarray:
        return self.model.predict(torch.from_numpy(z_hist), torch.from_numpy(a_hist)).numpy()

    @torch.no_grad()
    def _probe_targets(self, z: np.ndarray) -> np.ndarray:
        return self._probe(torch.from_numpy(z)).numpy()
