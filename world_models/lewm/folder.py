"""Model folders: ``config.json`` + ``model.safetensors`` (+ ``probe.safetensors``, ``probe.json``, and
``model.lq40`` from ``leworld quantize``).

Everything is written atomically (a temporary file, then ``os.replace``), and checked on load:

* checksums: ``config.json``'s ``weights_sha256`` is the SHA-256 of ``model.safetensors``, ``probe.json``'s
  of ``probe.safetensors`` (:mod:`world_models.files`). :func:`save_model` writes them, the loaders
  (:func:`load_model`, the numba backend's :func:`~world_models.backends.numba_engine.float_weights`) refuse
  a file that does not match. A folder written before checksums (``config.json`` format 1) has none and
  loads unchecked; a format-2 one must have both;
* values: :func:`save_model` refuses to write a NaN or infinite tensor, and every loader refuses to read one;
* shapes: :func:`load_model` compares every tensor's shape in the file with the config's (the model built
  on torch's ``meta`` device, which holds no memory) before it builds the model, so a config that asks for
  a far larger network than the file holds fails at once, and a missing or misshapen tensor is named;
* the probe lives in ``probe.safetensors``, and ``model.lq40`` carries a float32 copy of it:
  :func:`world_models.backends.lq40.save_folder_probe` (``leworld probe``) writes the probe and rewrites
  that copy, and the LQ40 reader refuses a ``model.lq40`` whose copy differs from the folder's
  ``probe.safetensors`` (:func:`world_models.backends.lq40.read_model`), so :func:`save_model` with a
  probe beside an old ``model.lq40`` is caught loudly, never used silently.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from world_models.errors import LeWorldError
from world_models.files import (
    MODEL_FILE,
    PROBE_FILE,
    PROBE_META,
    SHA256_KEY,
    atomic_write_bytes,
    check_finite_tensors,
    sha256_bytes,
)
from world_models.lewm.model import LeWM
from world_models.lewm.probe import Probe
from world_models.model_folder import read_model_folder

__all__ = [
    "MODEL_FILE",
    "PROBE_FILE",
    "PROBE_META",
    "atomic_save_tensors",
    "load_model",
    "load_state_checked",
    "save_model",
    "save_probe",
]

NOT_WRITTEN = "expected finite weights (the model diverged in training, or was edited); nothing was written"


def atomic_save_tensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> str:
    """:func:`safetensors.torch.save_file`, atomically; returns the SHA-256 of the bytes written."""
    from safetensors.torch import save

    blob = save({k: v.detach().contiguous() for k, v in tensors.items()}, metadata=metadata)
    atomic_write_bytes(Path(path), blob)
    return sha256_bytes(blob)


def check_state_shapes(expected: dict[str, Any], tensors: dict[str, torch.Tensor], source: Path) -> None:
    """Name every missing, unexpected or misshapen tensor of ``tensors`` against ``expected`` (a state dict,
    or one built on the ``meta`` device)."""
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    misshapen = [
        f"{k} {tuple(tensors[k].shape)} != {tuple(v.shape)}"
        for k, v in expected.items()
        if k in tensors and tuple(tensors[k].shape) != tuple(v.shape)
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


def load_state_checked(module: torch.nn.Module, tensors: dict[str, torch.Tensor], source: Path) -> None:
    """Load a state dict, naming every missing, unexpected or misshapen tensor."""
    expected = module.state_dict()
    check_state_shapes(expected, tensors, source)
    module.load_state_dict({k: v.to(expected[k].dtype) for k, v in tensors.items()})


def meta_state(make: Callable[[], torch.nn.Module]) -> dict[str, torch.Tensor]:
    """The state dict ``make()`` would have, built on the ``meta`` device: names and shapes, no memory
    (so a config that asks for a far larger network than the file holds allocates nothing)."""
    with torch.device("meta"):
        return make().state_dict()


def save_model(folder: Path, model: LeWM, probe: Probe | None = None, probe_info: dict[str, Any] | None = None) -> None:
    """Write a model folder: the weights, then ``config.json`` with their checksum, then the probe if given
    (:func:`save_probe`).

    Raises:
        LeWorldError: a tensor holds NaN or inf (named; nothing is written).
    """
    folder = Path(folder)
    state = model.state_dict()
    check_finite_tensors(state, f"refusing to write {folder / MODEL_FILE}", hint=NOT_WRITTEN)
    if probe is not None:
        check_finite_tensors(probe.state_dict(), f"refusing to write {folder / PROBE_FILE}", hint=NOT_WRITTEN)
    checksum = atomic_save_tensors(state, folder / MODEL_FILE, metadata={"format": "leworld-lewm"})
    model.cfg.save(folder, weights_sha256=checksum)
    if probe is not None:
        save_probe(folder, probe, probe_info)


def save_probe(folder: Path, probe: Probe, probe_info: dict[str, Any] | None = None) -> None:
    """Write a folder's probe: ``probe.safetensors`` and ``probe.json`` (its hidden width, ``probe_info``
    and the checksum). A ``model.lq40`` beside them is not touched here (this layer does not read LQ40):
    :func:`world_models.backends.lq40.save_folder_probe` writes both, and the LQ40 reader refuses a copy
    that differs from ``probe.safetensors``.

    Raises:
        LeWorldError: a probe tensor holds NaN or inf (nothing is written).
    """
    folder = Path(folder)
    state = probe.state_dict()
    check_finite_tensors(state, f"refusing to write {folder / PROBE_FILE}", hint=NOT_WRITTEN)
    checksum = atomic_save_tensors(state, folder / PROBE_FILE, metadata={"format": "leworld-probe"})
    info = {**(probe_info or {}), "hidden": probe.hidden, SHA256_KEY: checksum}
    atomic_write_bytes(folder / PROBE_META, json.dumps(info, indent=2).encode())


def load_model(folder: Path) -> tuple[LeWM, Probe | None, dict[str, Any]]:
    """Read a model folder; returns the model (eval mode), its probe (or None) and the probe's info
    (``probe.json``). Every file is checked (see the module docstring) before the model is built."""
    folder = Path(folder)

    def check_shapes(cfg: Any, weights: dict, probe: dict | None, info: dict) -> None:
        check_state_shapes(meta_state(lambda: LeWM(cfg)), weights, folder / MODEL_FILE)
        if probe is not None:
            check_state_shapes(meta_state(lambda: Probe(cfg.latent_dim, info["hidden"])), probe, folder / PROBE_FILE)

    cfg, weights, probe_weights, info = read_model_folder(folder, "pt", check_shapes)
    model = LeWM(cfg)  # built for real only now: every shape in the file fits the config
    load_state_checked(model, weights, folder / MODEL_FILE)
    probe = None
    if probe_weights is not None:
        probe = Probe(cfg.latent_dim, info["hidden"])
        load_state_checked(probe, probe_weights, folder / PROBE_FILE)
        probe.eval()
    return model.eval(), probe, info
