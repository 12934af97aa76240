"""Model folders: ``config.json`` + ``model.safetensors`` (+ ``probe.safetensors``, ``probe.json``).

Everything is written atomically (a temporary file, then ``os.replace``), and
checked on load: a missing or misshapen tensor is an error that names it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from world_models.config import ModelConfig
from world_models.errors import LeWorldError
from world_models.files import _commit, _temporary_beside, atomic_write_bytes, read_safetensors
from world_models.lewm.model import LeWM
from world_models.lewm.probe import Probe

MODEL_FILE = "model.safetensors"
PROBE_FILE = "probe.safetensors"
PROBE_META = "probe.json"


def atomic_save_tensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    """:func:`safetensors.torch.save_file`, atomically."""
    path = Path(path)
    tmp = _temporary_beside(path)
    try:
        save_file({k: v.detach().contiguous() for k, v in tensors.items()}, tmp, metadata=metadata)
        _commit(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_state_checked(module: torch.nn.Module, tensors: dict[str, torch.Tensor], source: Path) -> None:
    """Load a state dict, naming every missing, unexpected or misshapen tensor."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    misshapen = [
        f"{k} {tuple(tensors[k].shape)} != {tuple(v.shape)}"
        for k, v in expected.items()
        if k in tensors and tensors[k].shape != v.shape
    ]
    problems = []
    if missing:
        problems.append(f"missing tensors: {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
    if unexpected:
        problems.append(f"unexpected tensors: {', '.join(unexpected[:5])}{' ...' if len(unexpected) > 5 else ''}")
    if misshapen:
        problems.append(f"shapes that do not fit the config: {', '.join(misshapen[:5])}")
    if problems:
        raise LeWorldError(f"{source}: " + "; ".join(problems))
    module.load_state_dict({k: v.to(expected[k].dtype) for k, v in tensors.items()})


def save_model(folder: Path, model: LeWM, probe: Probe | None = None, probe_info: dict[str, Any] | None = None) -> None:
    """Write a model folder (config, weights, and the probe if given)."""
    folder = Path(folder)
    model.cfg.save(folder)
    atomic_save_tensors(model.state_dict(), folder / MODEL_FILE, metadata={"format": "leworld-lewm"})
    if probe is not None:
        atomic_save_tensors(probe.state_dict(), folder / PROBE_FILE, metadata={"format": "leworld-probe"})
        info = {"hidden": probe.hidden, **(probe_info or {})}
        atomic_write_bytes(folder / PROBE_META, json.dumps(info, indent=2).encode())


def load_model(folder: Path) -> tuple[LeWM, Probe | None, dict[str, Any]]:
    """Read a model folder; returns the model (eval mode), its probe (or None) and the probe's info."""
    folder = Path(folder)
    if not folder.is_dir():
        raise LeWorldError(f"{folder}: no such model folder")
    cfg = ModelConfig.load(folder)
    model = LeWM(cfg)
    load_state_checked(model, read_safetensors(folder / MODEL_FILE, "pt"), folder / MODEL_FILE)
    model.eval()
    probe, info = None, {}
    if (folder / PROBE_FILE).exists():
        try:
            info = json.loads((folder / PROBE_META).read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise LeWorldError(f"{folder / PROBE_META}: unreadable ({err})") from None
        probe = Probe(cfg.latent_dim, int(info.get("hidden", 256)))
        load_state_checked(probe, read_safetensors(folder / PROBE_FILE, "pt"), folder / PROBE_FILE)
        probe.eval()
    return model, probe, info
