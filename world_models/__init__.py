"""World models of PushT: data, the LeWM model, training, the probe, and ``load``.

``world_models.load(name_or_path, backend="torch")`` returns an object with the
runtime interface (``encode``, ``predict``, ``rollout``, ``probe``, ``config``);
see :mod:`world_models.runtime`; :mod:`world_models.locate` finds models by name
(``DEFAULT_MODEL``, ``shipped_models``). The torch-based names load lazily, so data
tools (``leworld collect``) start without importing torch.
"""

from __future__ import annotations

import importlib
from typing import Any

from world_models.data.dataset import ClipBatch, PushTClips, load_dataset_info
from world_models.errors import DatasetError, LeWorldError

_LAZY = {
    "PRESETS": "world_models.config",
    "ModelConfig": "world_models.config",
    "preset": "world_models.config",
    "DEFAULT_MODEL": "world_models.locate",
    "TorchWorldModel": "world_models.backends.torch_backend",
    "WorldModel": "world_models.interface",
    "load": "world_models.runtime",
    "shipped_models": "world_models.locate",
}

__all__ = ["ClipBatch", "DatasetError", "LeWorldError", "PushTClips", "load_dataset_info", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'world_models' has no attribute {name!r}")
