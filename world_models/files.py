"""Files: atomic writes (readers see the old file or the new one, never half of one) and the checked
safetensors reader. No torch here (the reader imports it only when asked for torch tensors)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from world_models.errors import LeWorldError


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
