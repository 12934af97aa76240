"""The backends behind ``world_models.load``.

In-process (:data:`LOCAL_BACKENDS`, opened by :func:`open_model`): ``torch``
(:mod:`~world_models.backends.torch_backend`), ``numba`` and ``numba-q4``
(:mod:`~world_models.backends.numba_engine`, the ``.lq40`` file read by
:mod:`~world_models.backends.lq40`, its tensors laid out by :mod:`~world_models.backends.layout`).
Behind a serial link: ``esp32`` and ``fpga`` (:mod:`world_models.backends.devices`).
Importing this package loads no backend: each is imported when it is opened.
"""

from __future__ import annotations

from pathlib import Path

from world_models.errors import LeWorldError
from world_models.interface import WorldModel
from world_models.locate import resolve_lq40, resolve_model

LOCAL_BACKENDS = ("torch", "numba", "numba-q4")


def open_model(name_or_path: str | Path, backend: str) -> WorldModel:
    """A model on an in-process backend: ``numba-q4`` (the ``.lq40``, given or the folder's
    ``model.lq40``), ``numba`` or ``torch`` (the float32 weights of a model folder).

    ``name_or_path``: a shipped model's name, a model folder, or (``numba-q4``) an ``.lq40`` file.
    """
    if backend == "numba-q4":
        from world_models.backends.numba_engine import NumbaWorldModel

        return NumbaWorldModel.from_lq40(resolve_lq40(name_or_path))
    if backend == "numba":
        from world_models.backends.numba_engine import NumbaWorldModel

        return NumbaWorldModel.from_folder(resolve_model(name_or_path))
    if backend == "torch":
        from world_models.backends.torch_backend import TorchWorldModel

        return TorchWorldModel(resolve_model(name_or_path))
    raise LeWorldError(f"unknown in-process backend {backend!r}; choose one of: {', '.join(LOCAL_BACKENDS)}")
