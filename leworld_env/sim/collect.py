"""Collect real PushT trajectories into a Minari dataset (``leworld collect``).

Episodes are run and recorded by :func:`leworld_env.sim.episodes.collect_episode`, each a
pure function of ``(seed, episode index)`` (see :mod:`leworld_env.sim.episodes`): the
same seed therefore gives the same data whatever the number of worker processes.
This module adds what a dataset needs on top: the worker processes, Minari's
storage and metadata, and writing.

The dataset is written under a hidden temporary name beside the output folder
and renamed into place only when complete, so a crash or Ctrl-C never leaves a
half-written dataset under the final name. The field layout is documented in
:mod:`world_models.data.dataset`.
"""

from __future__ import annotations

import os
import shutil
import uuid
import warnings
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from importlib import metadata as importlib_metadata
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from leworld_env.sim.episodes import EpisodeConfig, collect_episode, observation_space
from leworld_env.sim.pusht_sim import ACTION_SPACE, HIDDEN_PHYSICS_FIELDS, HIDDEN_PHYSICS_RANGES
from world_models.data.dataset import DATA_SUBDIR, METADATA_KEY
from world_models.errors import LeWorldError

WRITE_CHUNK = 8  # episodes per HDF5 append


@dataclass(frozen=True)
class CollectConfig(EpisodeConfig):
    """What to collect: how to record each episode (the fields of
    :class:`~leworld_env.sim.episodes.EpisodeConfig`), and these.

    Attributes:
        episodes: number of episodes.
        jpeg: store frames JPEG-encoded (Minari's lossy option) instead of raw.
    """

    episodes: int = 100
    jpeg: bool = False

    def validate(self) -> None:
        """Raise :class:`LeWorldError` naming the first bad field."""
        if self.episodes <= 0:
            raise LeWorldError(f"episodes must be a positive number, got {self.episodes}")
        super().validate()


def package_version() -> str:
    try:
        return importlib_metadata.version("leworld")
    except importlib_metadata.PackageNotFoundError:
        return "0+unknown"


def physics_metadata(config: CollectConfig) -> dict:
    """With ``hidden_physics``: the names of ``infos/physics``' columns and the ranges they were drawn from."""
    if not config.hidden_physics:
        return {}
    ranges = {
        name: {"low": low, "high": high, "distribution": dist}
        for name, (low, high, dist) in HIDDEN_PHYSICS_RANGES.items()
    }
    return {"physics_fields": list(HIDDEN_PHYSICS_FIELDS), "physics_ranges": ranges}


def _collect_one(args: tuple[CollectConfig, int]) -> dict:
    # Looks ``collect_episode`` up in this module at call time, so a test can replace it here.
    return collect_episode(*args)


def _init_worker() -> None:
    # One process per core already: numba's own threads would only oversubscribe the CPU.
    import numba

    numba.set_num_threads(1)


def iterate_episodes(config: CollectConfig, workers: int = 1) -> Iterator[dict]:
    """Episodes in index order, computed in ``workers`` processes."""
    jobs = [(config, i) for i in range(config.episodes)]
    if workers <= 1:
        yield from map(_collect_one, jobs)
        return
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn"), initializer=_init_worker)
    try:
        yield from pool.map(_collect_one, jobs, chunksize=1)
    finally:  # on an error or Ctrl-C, drop the episodes not yet started
        pool.shutdown(wait=True, cancel_futures=True)


def check_output(out: Path, overwrite: bool) -> None:
    """Fail early, with the path in the message, if ``out`` cannot be written."""
    if out.exists() and not overwrite:
        raise LeWorldError(f"{out} already exists; pass --overwrite to replace it")
    if out.exists() and not out.is_dir():
        raise LeWorldError(f"{out} exists and is not a folder")
    # Missing parent folders are created (like mkdir -p); the nearest existing one must be writable.
    existing = out.parent
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise LeWorldError(f"cannot write {out}: {existing} is not a writable folder")


def dataset_metadata(config: CollectConfig, workers: int) -> dict[str, Any]:
    """The dataset's Minari metadata, with LeWorld's own section under :data:`METADATA_KEY`."""
    from minari import __version__ as minari_version

    hidden = config.hidden_physics
    return {
        "dataset_id": f"leworld-pusht-{'hidden-' if hidden else ''}{config.policy}-v0",
        "minari_version": minari_version,
        "algorithm_name": config.policy,
        "author": {"LeWorld"},
        "code_permalink": "leworld collect",
        "description": (
            ("Hidden physics per episode (infos/physics). " if hidden else "")
            + f"Real PushT (gym-pusht physics) driven by the {config.policy} policy with relative actions "
            f"(x{config.action_scale:g} px) held for {config.frameskip} physics steps; "
            f"{config.image_size}px frames. Fields: see world_models/data.py."
        ),
        "requirements": ["gym-pusht", "pymunk<7"],
        METADATA_KEY: {
            **asdict(config),
            **physics_metadata(config),
            "workers": workers,
            "version": package_version(),
        },
    }


def new_storage(folder: Path, config: CollectConfig) -> Any:
    """An empty Minari HDF5 storage in ``folder`` for ``config``'s episodes (Minari's warnings silenced)."""
    from minari.dataset.minari_storage import MinariStorage

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return MinariStorage.new(
            folder,
            observation_space=observation_space(config.image_size),
            action_space=ACTION_SPACE,
            data_format="hdf5",
            jpeg_encoding=config.jpeg,
        )


def write_episodes(storage: Any, config: CollectConfig, workers: int, progress: bool) -> None:
    """Collect the episodes in ``workers`` processes and append them to ``storage``, :data:`WRITE_CHUNK` at a time."""
    from minari.data_collector import EpisodeBuffer
    from tqdm import tqdm

    chunk: list = []
    bar = tqdm(total=config.episodes, desc=f"collecting {config.policy}", unit="ep", disable=not progress)
    for episode in iterate_episodes(config, workers):
        chunk.append(EpisodeBuffer(**episode))
        if len(chunk) == WRITE_CHUNK:
            storage.update_episodes(chunk)
            chunk = []
        bar.update(1)
    if chunk:
        storage.update_episodes(chunk)
    bar.close()


def move_into_place(partial: Path, out: Path) -> None:
    """Rename the complete dataset ``partial`` to ``out``; an old ``out`` (``--overwrite``) is
    renamed aside first and deleted only once the new one is in place."""
    if out.exists():
        old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
        out.rename(old)
        partial.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        partial.rename(out)


def collect(
    config: CollectConfig,
    out: str | Path,
    workers: int = 1,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Collect ``config.episodes`` episodes into a Minari dataset at ``out``.

    Returns:
        ``out``, which holds ``data/metadata.json`` and ``data/main_data.hdf5``.

    Raises:
        LeWorldError: a bad config value, or an output that exists (without
            ``overwrite``) or cannot be written.
    """
    config.validate()
    if workers < 1:
        raise LeWorldError(f"workers must be at least 1, got {workers}")
    out = Path(out).absolute()
    check_output(out, overwrite)

    partial = out.parent / f".{out.name}.partial-{uuid.uuid4().hex[:8]}"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        partial.mkdir()
        storage = new_storage(partial / DATA_SUBDIR, config)
        storage.update_metadata(dataset_metadata(config, workers))
        write_episodes(storage, config, workers, progress)
        move_into_place(partial, out)
    except OSError as err:
        raise LeWorldError(f"cannot write {out}: {err.strerror or err}") from None
    finally:
        if partial.exists():
            shutil.rmtree(partial, ignore_errors=True)
    return out
