"""A model folder's files, read and checked, as arrays: ``config.json``, ``model.safetensors``,
``probe.json``, ``probe.safetensors``. No torch here: the torch loader
(:func:`world_models.lewm.folder.load_model`) and the numba engine both read through
:func:`read_model_folder`, so both refuse the same damaged folders the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from world_models.config import CONFIG_FILE, read_config
from world_models.errors import LeWorldError
from world_models.files import (
    MODEL_FILE,
    PROBE_FILE,
    PROBE_META,
    SHA256_KEY,
    check_finite_tensors,
    check_sha256,
    checked_sha256,
    read_json_object,
    read_safetensors,
    short_repr,
)

MAX_PROBE_HIDDEN = 1 << 16  # the widest probe hidden layer a probe.json may declare


def read_model_folder(
    folder: Path,
    framework: str = "np",
    check_shapes: Callable[[Any, dict[str, Any], dict[str, Any] | None, dict[str, Any]], None] | None = None,
) -> tuple[Any, dict[str, Any], dict[str, Any] | None, dict[str, Any]]:
    """A model folder's checked files: (config, model tensors, probe tensors or None, ``probe.json``'s info).

    In order: ``config.json`` (:func:`world_models.config.read_config`) and ``probe.json``
    (:func:`read_probe_info`); each weights file's structure (:func:`read_safetensors`); then
    ``check_shapes(config, model tensors, probe tensors, info)`` when given (the caller's check of
    every tensor's name and shape against the config, so a missing tensor is named as such); then each
    file's checksum, then its values (finite). ``probe.json`` must carry a checksum where
    ``config.json`` does (both come from the same save).

    Raises:
        LeWorldError: naming the file, and the field or tensor, of the first problem.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise LeWorldError(f"{folder}: no such model folder")
    cfg, checksum = read_config(folder)
    files = [(folder / MODEL_FILE, checksum, folder / CONFIG_FILE)]
    info: dict[str, Any] = {}
    if (folder / PROBE_FILE).exists():
        info = read_probe_info(folder)
        probe_checksum = info.get(SHA256_KEY)
        if probe_checksum is None and checksum is not None:
            raise LeWorldError(
                f"{folder / PROBE_META}: missing field {SHA256_KEY} (the SHA-256 of {PROBE_FILE}), which a folder "
                f"whose {CONFIG_FILE} has one always carries: the file is damaged or was edited"
            )
        files.append((folder / PROBE_FILE, probe_checksum, folder / PROBE_META))
    tensors = [read_safetensors(path, framework) for path, _, _ in files]
    weights, probe = tensors[0], (tensors[1] if len(tensors) > 1 else None)
    if check_shapes is not None:
        check_shapes(cfg, weights, probe, info)
    for (path, expected, record), values in zip(files, tensors, strict=True):
        check_sha256(path, expected, str(record))
        check_finite_tensors(values, str(path))
    return cfg, weights, probe, info


def read_probe_info(folder: Path) -> dict[str, Any]:
    """A model folder's checked ``probe.json``: an object whose ``hidden`` (the probe's hidden width, 256
    when absent) is a whole number in [1, :data:`MAX_PROBE_HIDDEN`] and whose ``weights_sha256``, if
    present, is a SHA-256.

    Raises:
        LeWorldError: naming the file, the field, the value and what was expected.
    """
    path = Path(folder) / PROBE_META
    info = read_json_object(path, missing=f"{PROBE_FILE} needs it beside it (the probe's hidden width)")
    hidden = info.setdefault("hidden", 256)
    if isinstance(hidden, bool) or not isinstance(hidden, int) or not 1 <= hidden <= MAX_PROBE_HIDDEN:
        raise LeWorldError(
            f"{path}: field hidden must be a whole number from 1 to {MAX_PROBE_HIDDEN} (the probe's hidden "
            f"width), got {short_repr(hidden)}"
        )
    checked_sha256(info.get(SHA256_KEY), str(path))
    return info
