"""Files: atomic writes (readers see the old file or the new one, never half of one), the checked
safetensors reader, the SHA-256 checksums of weight files, and the finite-values check every weight
loader shares (:func:`check_finite_tensors`). No torch here (the reader imports it only when asked for
torch tensors). A model folder's files are read by :mod:`world_models.model_folder`.

Checksums: a model folder's ``config.json`` carries ``weights_sha256``, the SHA-256 (lowercase hex)
of ``model.safetensors``, and ``probe.json`` carries ``weights_sha256`` of ``probe.safetensors``;
:func:`world_models.lewm.folder.save_model` writes both. Loaders check them with
:func:`check_sha256`: a file that does not match is refused (a flipped bit, a changed or swapped
file). A folder written before checksums existed has none, and loads unchecked.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from world_models.errors import LeWorldError, brief

MODEL_FILE = "model.safetensors"
PROBE_FILE = "probe.safetensors"
PROBE_META = "probe.json"
SHA256_KEY = "weights_sha256"  # in config.json (of model.safetensors) and probe.json (of probe.safetensors)
_SHA256 = re.compile(r"[0-9a-f]{64}")


def _fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _temporary_beside(path: Path) -> str:
    """A new empty file next to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    return tmp


def _commit(tmp: str, path: Path) -> None:
    """Flush, give the permissions a plain ``open`` would (mkstemp makes 0600), and rename into place."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_folder(path.parent)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never half."""
    path = Path(path)
    tmp = _temporary_beside(path)
    try:
        Path(tmp).write_bytes(data)
        _commit(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_safetensors(path: Path, framework: str = "np") -> dict[str, Any]:
    """Every tensor of a safetensors file, as ``framework``'s arrays (``"np"``: numpy, ``"pt"``: torch).

    Raises:
        LeWorldError: naming the file, when it is missing or not a readable safetensors file.
    """
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise LeWorldError(f"{path}: missing")
    try:
        with safe_open(path, framework=framework) as f:
            return {name: f.get_tensor(name) for name in f.keys()}
    except (SafetensorError, OSError, ValueError) as err:
        raise LeWorldError(f"{path}: not a readable safetensors file ({err})") from None


def read_json_object(
    path: Path, what: str = "JSON", missing: str | None = None, error: type[LeWorldError] = LeWorldError
) -> dict[str, Any]:
    """A JSON file that must hold an object: the one reader of LeWorld's JSON files (configs, probe and
    agent descriptions, dataset metadata).

    Raises:
        ``error`` (a LeWorldError): naming the file, when it is missing (``missing`` says what to do),
            unreadable or not ``what`` JSON, or not an object.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise error(f"{path}: missing" + (f"; {missing}" if missing else "")) from None
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as err:  # JSONDecodeError is a ValueError
        raise error(f"{path}: unreadable {what} ({brief(err)})") from None
    if not isinstance(data, dict):
        raise error(f"{path}: expected a JSON object, got {type(data).__name__} {short_repr(data)}")
    return data


def short_repr(value: Any, limit: int = 60) -> str:
    """``repr(value)``, cut to ``limit`` characters, for an error message to quote a value."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def sha256_bytes(data: bytes) -> str:
    """SHA-256 of ``data``, lowercase hex."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    """SHA-256 of a file's bytes, lowercase hex.

    Raises:
        LeWorldError: naming the file, when it cannot be read.
    """
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    except OSError as err:
        raise LeWorldError(f"{path}: cannot read ({err.strerror or err})") from None
    return digest.hexdigest()


def checked_sha256(value: Any, record: str) -> str | None:
    """A checksum field read from ``record`` (a JSON file): None when absent, else 64 lowercase hex digits.

    Raises:
        LeWorldError: naming the record, the field and the value.
    """
    if value is None:
        return None
    if not isinstance(value, str) or not _SHA256.fullmatch(value):
        raise LeWorldError(f"{record}: field {SHA256_KEY} must be 64 lowercase hex digits (a SHA-256), got {value!r}")
    return value


def check_sha256(path: Path, expected: str | None, record: str) -> None:
    """``path``'s SHA-256 must be ``expected`` (the checksum ``record`` stores); None checks nothing.

    Raises:
        LeWorldError: naming the file and the record, when they differ.
    """
    if expected is None:
        return
    path = Path(path)
    if not path.is_file():
        raise LeWorldError(f"{path}: missing")
    actual = sha256_file(path)
    if actual != expected:
        raise LeWorldError(
            f"{path}: {path.name} does not match the checksum in {Path(record).name}: the file is corrupt or was "
            f"changed ({SHA256_KEY} {expected}, file {actual}); restore both from the same save"
        )


FINITE_HINT = "expected finite weights (a corrupt file, or a model that diverged in training)"


def check_finite_tensors(tensors: Mapping[str, Any], source: str, hint: str = FINITE_HINT) -> None:
    """Every tensor (numpy arrays or torch tensors) holds finite values only: the one check every
    weight reader and writer shares (model folders, the numba backend, the LQ40 reader).

    Raises:
        LeWorldError: naming ``source`` and the first tensor that holds NaN or inf, then ``hint``.
    """
    for name, value in tensors.items():
        if hasattr(value, "isfinite") and not isinstance(value, np.ndarray):  # a torch tensor
            finite = bool(value.isfinite().all())
        else:
            finite = bool(np.all(np.isfinite(np.asarray(value))))
        if not finite:
            raise LeWorldError(f"{source}: tensor {name!r} holds NaN or inf; {hint}")
