"""The one runtime interface, and ``load``.

Every backend returns an object with these methods (numpy in, numpy out), so
nothing above ``world_models`` knows which backend it holds::

    encode(pixels uint8 [B, H, W, 3]) -> z float32 [B, D]
    predict(z_hist [B, T, D], a_hist [B, T, A]) -> z_next [B, D]
    rollout(z_hist [B, T, D], a_hist [B, T, A], a_future [B, H, A]) -> z [B, H, D]
    probe(z [B, D]) -> state [B, 5]   (agent x, y, block x, y, angle)
    config                            (a ModelConfig)

Inputs are checked: wrong dtype, shape, image size, or non-finite values raise
``ArgumentError`` (a ``ValueError``) naming the argument and what was expected.

Here: :func:`load` and the list of backends. Finding a model by name is :mod:`world_models.locate`'s
(``DEFAULT_MODEL`` and ``shipped_models``, public names, are re-exported from it);
opening one on an in-process backend is :func:`world_models.backends.open_model`'s.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from world_models.backends import LOCAL_BACKENDS, open_model
from world_models.errors import LeWorldError
from world_models.interface import WorldModel
from world_models.locate import DEFAULT_MODEL, folder_kind, has_lq40, resolve_model, shipped_models

__all__ = [
    "BACKENDS",
    "DEFAULT_BACKEND",
    "DEFAULT_MODEL",
    "DEVICE_BACKENDS",
    "MEMORY_BACKENDS",
    "load",
    "shipped_models",
]

DEVICE_BACKENDS = ("esp32", "fpga")  # behind a serial link; they take port=
BACKENDS = (*LOCAL_BACKENDS, *DEVICE_BACKENDS)
DEFAULT_BACKEND = "numba-q4"
MEMORY_BACKENDS = ("torch", "numba")  # what backend= may be for a LeWorld memory model: its encoder's


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
            For a LeWorld memory model folder (``"kind": "leworld"``) ``backend`` is its encoder's:
            ``numba`` (also the default, ``None``) or ``torch`` runs the frozen encoder model (encode,
            probe) on that backend; the memory networks always run on torch and the bit memory on
            numba kernels. Any other backend, and any option, is refused.
            For an episodic memory model folder (``"kind": "episodic"``, docs/leworld_memory.md):
            ``numba`` (the default) runs encoder, predictor and memory on numba kernels, ``torch`` the
            encoder and predictor on torch; it returns a stateful
            :class:`~world_models.memory.episodic_runtime.EpisodicRuntime`.
        kwargs: for ``esp32`` and ``fpga`` only: ``port`` (required: a device path such as
            ``/dev/ttyUSB0`` or a pyserial URL such as ``socket://HOST:PORT``), ``timeout``
            (seconds per call, 2), ``retries`` (3) and ``baud`` (921600).
    """
    if folder_kind(name_or_path) == "episodic":  # an episodic memory model (a folder, or shipped by name)
        from world_models.memory.episodic_runtime import EpisodicRuntime
        from world_models.memory.runtime import encoder_model_of

        folder = resolve_model(name_or_path)
        if backend not in (None, "numba", "torch") or kwargs:
            raise LeWorldError(
                f"{folder}: an episodic memory model takes backend 'numba' (the default) or 'torch', got {backend!r}"
            )
        return EpisodicRuntime(folder, open_model(encoder_model_of(folder), backend or "numba"), backend or "numba")
    if Path(name_or_path).is_dir():
        from world_models.memory.runtime import LeWorldRuntime, encoder_model_of, is_leworld_folder

        if is_leworld_folder(name_or_path):  # a LeWorld memory model: torch networks + numba memory
            if backend not in (None, *MEMORY_BACKENDS) or kwargs:
                raise LeWorldError(
                    f"{name_or_path}: a LeWorld memory model takes backend 'torch' or 'numba' (the backend of "
                    f"its encoder; torch networks, numba memory kernels), got {backend!r}"
                )
            encoder = open_model(encoder_model_of(name_or_path), backend or "numba")
            return LeWorldRuntime(name_or_path, encoder, backend or "torch")
    if backend is None:
        backend = DEFAULT_BACKEND if has_lq40(name_or_path) else "numba"
    if backend not in BACKENDS:
        raise LeWorldError(f"unknown backend {backend!r}; choose one of: {', '.join(BACKENDS)}")
    if backend in DEVICE_BACKENDS:
        from world_models.backends.devices.client import open_device_model

        options = dict(kwargs)
        return open_device_model(name_or_path, backend, options.pop("port", None), **options)
    if kwargs:
        raise LeWorldError(f"backend {backend!r} takes no options, got {', '.join(kwargs)}")
    return open_model(name_or_path, backend)
