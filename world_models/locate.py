"""The model locator: where a model is, given its name or a path. No torch, no backend here.

A model is named by a shipped model's name (a folder under ``world_models/shipped``, default
:data:`DEFAULT_MODEL`), by a model folder's path, or (for the quantized backends) by an ``.lq40``
file's path. :func:`resolve_model` finds the folder, :func:`resolve_lq40` the ``.lq40``; every
module that needs to find a model asks here.
"""

from __future__ import annotations

from pathlib import Path

from world_models.errors import LeWorldError

SHIPPED_DIR = Path(__file__).resolve().parent / "shipped"
DEFAULT_MODEL = "pusht-tiny"
LQ40_FILE = "model.lq40"


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


def folder_kind(path: str | Path) -> str | None:
    """The ``"kind"`` a model folder's config.json names (``"episodic"``, ``"leworld"``), a shipped
    model's by name too; ``None`` for a LeWM folder, a file, or anything unreadable."""
    import json

    folder = Path(path) if Path(path).is_dir() else SHIPPED_DIR / str(path)
    try:
        kind = json.loads((folder / "config.json").read_text()).get("kind")
    except (OSError, UnicodeDecodeError, ValueError, AttributeError):
        return None
    return kind if isinstance(kind, str) else None


def resolve_lq40(name_or_path: str | Path, backend: str = "numba-q4") -> Path:
    """An ``.lq40`` file: given directly, or ``model.lq40`` inside a model folder or shipped model
    (``backend`` only names who needs it in the error)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    folder = resolve_model(name_or_path)
    if not (folder / LQ40_FILE).is_file():
        raise LeWorldError(
            f"{folder}: no {LQ40_FILE} for backend {backend!r}; make one with "
            f"leworld quantize --model {folder} --mode full --out {folder / LQ40_FILE}"
        )
    return folder / LQ40_FILE


def has_lq40(name_or_path: str | Path) -> bool:
    """True when ``name_or_path`` is an ``.lq40`` file's path or names a model folder holding one."""
    path = Path(name_or_path)
    return path.suffix == ".lq40" or (resolve_model(name_or_path) / LQ40_FILE).is_file()
