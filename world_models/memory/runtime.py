"""LeWorld memory model folders, the runtime interface over them, and the latents they train on.

A folder holds ``config.json`` (``"kind": "leworld"``, the memory config, the
frozen encoder model it works with), ``model.safetensors`` (the networks) and
``memory.safetensors`` (``words``: uint32 [65536], the memory image with the
dynamics region written and the history region empty). ``world_models.load``
on such a folder opens the encoder model (:func:`encoder_model_of` names it) and
returns a :class:`LeWorldRuntime` over both: encode and probe go through the
encoder model (numba backend unless ``load`` is told ``backend="torch"``),
predict and rollout through the memory system with hard reads (torch networks,
numba bit-memory kernels). :func:`encode_dataset` opens an encoder model by name
and encodes a dataset with it (:func:`world_models.data.latents.encode_episodes`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from world_models.backends import open_model
from world_models.config import ModelConfig
from world_models.data import latents
from world_models.errors import LeWorldError
from world_models.files import atomic_write_bytes, read_safetensors
from world_models.interface import WorldModel
from world_models.lewm.folder import atomic_save_tensors, load_state_checked
from world_models.locate import DEFAULT_MODEL
from world_models.memory.model import LeWorldMemory, MemoryConfig, count_parameters

KIND = "leworld"
FORMAT_VERSION = 1
MODEL_FILE = "model.safetensors"
MEMORY_FILE = "memory.safetensors"


def is_leworld_folder(path: str | Path) -> bool:
    """True when ``path`` is a folder whose config.json says ``"kind": "leworld"``."""
    config = Path(path) / "config.json"
    if not config.is_file():
        return False
    try:
        return json.loads(config.read_text()).get("kind") == KIND
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        return False


def save_leworld(folder: Path, model: LeWorldMemory, encoder_model: str, info: dict[str, Any] | None = None) -> None:
    """Write a model folder (atomically, file by file)."""
    from safetensors.numpy import save

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    encoder = str(Path(encoder_model).resolve()) if Path(encoder_model).is_dir() else str(encoder_model)
    config = {
        "kind": KIND,
        "format_version": FORMAT_VERSION,
        "memory": model.cfg.to_dict(),
        "encoder_model": encoder,
        "parameters": count_parameters(model),
        "usage": model.usage.tolist(),
        "info": info or {},
    }
    atomic_save_tensors(model.state_dict(), folder / MODEL_FILE, metadata={"format": "leworld-memory"})
    atomic_write_bytes(folder / MEMORY_FILE, save({"words": model.dynamics_words()}))
    atomic_write_bytes(folder / "config.json", json.dumps(config, indent=2).encode())


def load_leworld(folder: str | Path) -> tuple[LeWorldMemory, dict[str, Any]]:
    """Read a folder written by :func:`save_leworld`: (model in eval mode, its config.json)."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    folder = Path(folder)
    if not is_leworld_folder(folder):
        raise LeWorldError(f'{folder}: not a LeWorld memory model folder (config.json with "kind": "leworld")')
    config = json.loads((folder / "config.json").read_text())
    if config.get("format_version") != FORMAT_VERSION:
        raise LeWorldError(f"{folder}: format_version {config.get('format_version')} is not {FORMAT_VERSION}")
    model = LeWorldMemory(MemoryConfig.from_dict(config.get("memory", {}), source=str(folder / "config.json")))
    load_state_checked(model, read_safetensors(folder / MODEL_FILE, "pt"), folder / MODEL_FILE)
    try:
        words = load_file(str(folder / MEMORY_FILE))["words"]
    except (SafetensorError, OSError, KeyError) as err:
        raise LeWorldError(f"{folder / MEMORY_FILE}: missing or unreadable ({err})") from None
    if words.dtype != np.uint32 or words.shape != (65536,):
        raise LeWorldError(f"{folder / MEMORY_FILE}: words must be uint32 [65536], got {words.dtype} {words.shape}")
    model.load_dynamics_words(words)
    model.eval()
    return model, config


def encoder_model_of(folder: str | Path) -> str:
    """The encoder model a memory model folder works with (its config.json's ``encoder_model``)."""
    folder = Path(folder)
    try:
        encoder = json.loads((folder / "config.json").read_text()).get("encoder_model")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        encoder = None
    if not isinstance(encoder, str):
        raise LeWorldError(f"{folder / 'config.json'}: no 'encoder_model' (the LeWM model whose latents it uses)")
    return encoder


def encode_dataset(
    dataset_dir: str | Path, model: str | Path = DEFAULT_MODEL, backend: str = "numba", progress: bool = False
) -> latents.LatentEpisodes:
    """Encode a ``leworld collect`` dataset with the encoder of ``model`` (a shipped name or model folder) on
    ``backend`` (``numba``, ``numba-q4`` or ``torch``): :func:`world_models.data.latents.encode_episodes`
    with the encoder model opened here; ``info`` records ``model`` and ``backend`` as given."""
    return latents.encode_episodes(dataset_dir, open_model(model, backend), progress, encoder_model=model)


class LeWorldRuntime(WorldModel):
    """The runtime interface over a LeWorld memory model folder (stateless per call).

    ``config`` is the encoder model's config with ``history`` set to the memory model's context
    (the history region is rebuilt from the ``z_hist`` / ``a_hist`` each call receives).

    Args:
        folder: the memory model folder.
        encoder: the frozen encoder model it works with (:func:`encoder_model_of` names it), opened on
            the backend of the caller's choice: encode and probe go through it.
        backend: the backend name this runtime reports (``load`` gives what it was asked for; ``torch``,
            the networks', by default).
    """

    def __init__(self, folder: str | Path, encoder: WorldModel, backend: str = "torch") -> None:
        self.path = Path(folder)
        self.backend = backend
        self.model, self.meta = load_leworld(self.path)
        self.encoder = encoder
        mem = self.model.cfg
        if self.encoder.config.latent_dim != mem.latent_dim:
            raise LeWorldError(
                f"{self.path}: latent_dim {mem.latent_dim} does not match encoder model "
                f"{self.meta['encoder_model']!r} ({self.encoder.config.latent_dim})"
            )
        base = self.encoder.config
        self.config = ModelConfig.from_dict(
            {**base.to_dict(), "history": mem.context, "extra": {**base.extra, "kind": KIND, "model": str(self.path)}}
        )
        self.has_probe = self.encoder.has_probe

    def _encode(self, pixels: np.ndarray) -> np.ndarray:
        return self.encoder._encode(pixels)

    def _probe_targets(self, z: np.ndarray) -> np.ndarray:
        return self.encoder._probe_targets(z)

    @torch.no_grad()
    def _rollout(self, z_hist: np.ndarray, a_hist: np.ndarray, a_future: np.ndarray) -> np.ndarray:
        pred, _ = self.model.rollout(
            torch.from_numpy(z_hist),
            torch.from_numpy(a_hist),
            torch.from_numpy(a_future),
            mode="hard",
            routing="deterministic",
        )
        return pred.numpy()

    def _predict(self, z_hist: np.ndarray, a_hist: np.ndarray) -> np.ndarray:
        return self._rollout(z_hist, a_hist, a_hist[:, -1:])[:, 0]
