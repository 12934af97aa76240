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

from world_models.errors import LeWorldError
from world_models.interface import WorldModel

SHIPPED_DIR = Path(__file__).resolve().parent / "shipped"
DEFAULT_MODEL = "pusht-tiny"
BACKENDS = ("torch", "numba", "numba-q4", "esp32", "fpga")
DEVICE_BACKENDS = ("esp32", "fpga")  # behind a serial link; they take port=
DEFAULT_BACKEND = "numba-q4"
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


def load(name_or_path: str | Path = DEFAULT_MODEL, backend: str | None = None, **kwargs: Any) -> WorldModel:
    """Build a world model behind the runtime interface (:class:`~world_models.interface.WorldModel`).

    Args:
        name_or_path: a shipped model's name (default ``pusht-tiny``), a model folder, or
            (for ``numba-q4``, ``esp32`` and ``fpga``) an ``.lq40`` file.
        backend: ``numba-q4`` (the folder's ``model.lq40`` on numba kernels, no torch),
            ``numba`` (float32 weights on numba kernels, no torch) or ``torch`` (float32, torch);
            ``esp32`` and ``fpga``: the ``.lq40`` on a device behind a serial link (docs/protocol.md).
            ``None`` (default): ``numba-q4`` when the model has an ``.lq40`` (the shipped ones do),
            else ``numba``.
        kwargs: for ``esp32`` and ``fpga`` only: ``port`` (required: a device path such as
            ``/dev/ttyUSB0`` or a pyserial URL such as ``socket://HOST:PORT``), ``timeout``
            (seconds per call, 2), ``retries`` (3) and ``baud`` (921600).
    """
    if Path(name_or_path).is_dir():
        from world_models.memory.runtime import is_leworld_folder

        if is_leworld_folder(name_or_path):  # a LeWorld memory model: torch networks + numba memory
            from world_models.memory.runtime import LeWorldRuntime

            if backend not in (None, "torch", "numba") or kwargs:
                raise LeWorldError(
                    f"{name_or_path}: a LeWorld memory model runs on backend 'torch' or 'numba' "
                    f"(torch networks, numba memory kernels), got {backend!r}"
                )
            return LeWorldRuntime(name_or_path, backend or "torch")
    if backend is None:
        path = Path(name_or_path)
        has_lq40 = path.suffix == ".lq40" or (resolve_model(name_or_path) / LQ40_FILE).is_file()
        backend = DEFAULT_BACKEND if has_lq40 else "numba"
    if backend not in BACKENDS:
        raise LeWorldError(f"unknown backend {backend!r}; choose one of: {', '.join(BACKENDS)}")
    if backend in DEVICE_BACKENDS:
        from world_models.backends.devices.client import open_device_model

        options = dict(kwargs)
        return open_device_model(name_or_path, backend, options.pop("port", None), **options)
    if kwargs:
        raise LeWorldError(f"backend {backend!r} takes no options, got {', '.join(kwargs)}")
    if backend == "numba-q4":
        from world_models.backends.numba_engine import NumbaWorldModel

        return NumbaWorldModel.from_lq40(resolve_lq40(name_or_path))
    if backend == "numba":
        from world_models.backends.numba_engine import NumbaWorldModel

        return NumbaWorldModel.from_folder(resolve_model(name_or_path))
    from world_models.backends.torch_backend import TorchWorldModel

    return TorchWorldModel(resolve_model(name_or_path))
