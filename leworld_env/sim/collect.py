"""Collect real PushT trajectories into a Minari dataset (``leworld collect``).

Episodes are run and recorded by :func:`leworld_env.sim.episodes.collect_episode`, each a
pure function of ``(seed, episode index)`` (see :mod:`leworld_env.sim.episodes`): the
same seed therefore gives the same data whatever the number of worker processes.
This module adds what a dataset needs on top: the worker processes, Minari's
storage and metadata, and writing.

Jobs are streamed: at most :data:`IN_FLIGHT_PER_WORKER` episodes per worker are
submitted and not yet written, whatever ``episodes`` is, and they come back in
index order. Workers exit when the process that started them dies
(:func:`world_models.signals.die_with_parent`: on Linux ``PR_SET_PDEATHSIG``, elsewhere a
thread watching the parent), and SIGTERM is handled like Ctrl-C.

The dataset is written under a hidden temporary name beside the output folder,
``.NAME.partial-XXXXXXXX``, and renamed into place only when complete, so a crash
or Ctrl-C never leaves a half-written dataset under the final name. The partial
folder carries LeWorld's marker (:mod:`world_models.outputs`, kind ``dataset``, kept
in the finished dataset) and :data:`OWNER_FILE`, the host and process writing it;
a later run to the same ``NAME`` removes partial folders whose process is gone
(a killed run's), and reports partial folders it cannot attribute. ``--overwrite``
replaces only a dataset this tool wrote (:func:`world_models.data.dataset.is_leworld_dataset`).
The field layout is documented in :mod:`world_models.data.dataset`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import sys
import uuid
import warnings
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass
from importlib import metadata as importlib_metadata
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from leworld_env.sim.episodes import EpisodeConfig, collect_episode, observation_space
from leworld_env.sim.pusht_sim import (
    ACTION_SPACE,
    GLIDE_DAMPING,
    HIDDEN_PHYSICS_FIELDS,
    HIDDEN_PHYSICS_RANGES,
    HiddenPhysics,
)
from world_models.data.dataset import DATA_SUBDIR, METADATA_KEY, is_leworld_dataset
from world_models.errors import LeWorldError
from world_models.outputs import check_output_folder, marker_kind, removed_if_failed, write_marker
from world_models.signals import check_interrupt, die_with_parent, sigterm_as_ctrl_c

WRITE_CHUNK = 8  # episodes per HDF5 append
MAX_EPISODES = 1_000_000  # per dataset: already ~3.7 TB of raw 64 px frames at 300 steps an episode
IN_FLIGHT_PER_WORKER = 2  # episodes submitted to a worker process and not yet written, at most
OWNER_FILE = ".leworld-owner.json"  # in a partial folder: the host and process writing it


@dataclass(frozen=True)
class CollectConfig(EpisodeConfig):
    """What to collect: how to record each episode (the fields of
    :class:`~leworld_env.sim.episodes.EpisodeConfig`), and these.

    Attributes:
        episodes: number of episodes (1 to :data:`MAX_EPISODES`).
        jpeg: store frames JPEG-encoded (Minari's lossy option) instead of raw.
    """

    episodes: int = 100
    jpeg: bool = False

    def validate(self) -> None:
        """Raise :class:`LeWorldError` naming the first bad field."""
        if isinstance(self.episodes, bool) or not isinstance(self.episodes, int) or self.episodes <= 0:
            raise LeWorldError(f"episodes must be a positive whole number, got {self.episodes!r}")
        if self.episodes > MAX_EPISODES:
            raise LeWorldError(f"episodes {self.episodes} is above the {MAX_EPISODES:,} one dataset may hold")
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
    if config.physics_draw == "glide":
        ranges = {"damping": {"values": list(GLIDE_DAMPING), "distribution": "choice"}}
        return {"physics_fields": list(HIDDEN_PHYSICS_FIELDS), "physics_ranges": ranges, "physics_draw": "glide"}
    if config.physics_draw == "standard":
        ranges = {"damping": {"values": [HiddenPhysics().damping], "distribution": "choice"}}
        return {"physics_fields": list(HIDDEN_PHYSICS_FIELDS), "physics_ranges": ranges, "physics_draw": "standard"}
    ranges = {
        name: {"low": low, "high": high, "distribution": dist}
        for name, (low, high, dist) in HIDDEN_PHYSICS_RANGES.items()
    }
    return {"physics_fields": list(HIDDEN_PHYSICS_FIELDS), "physics_ranges": ranges}


# ------------------------------------------------------------------ workers
def _collect_one(args: tuple[CollectConfig, int]) -> dict:
    # Looks ``collect_episode`` up in this module at call time, so a test can replace it here.
    return collect_episode(*args)


def _init_worker(parent_pid: int | None = None) -> None:
    if parent_pid is not None:
        die_with_parent(parent_pid)
    # One process per core already: numba's own threads would only oversubscribe the CPU.
    import numba

    numba.set_num_threads(1)


def _stop_workers(pool: ProcessPoolExecutor) -> None:
    """Kill ``pool``'s worker processes now (on an error or an interrupt: their episodes are not wanted)."""
    for process in list((getattr(pool, "_processes", None) or {}).values()):
        with contextlib.suppress(Exception):
            process.kill()


def iterate_episodes(config: CollectConfig, workers: int = 1) -> Iterator[dict]:
    """Episodes in index order, computed in ``workers`` processes.

    Jobs are made as they are needed: at most ``IN_FLIGHT_PER_WORKER * workers`` episodes are
    submitted and not yet yielded, so memory does not grow with ``config.episodes``.
    """
    jobs = ((config, i) for i in range(config.episodes))
    if workers <= 1:
        yield from map(_collect_one, jobs)
        return
    limit = IN_FLIGHT_PER_WORKER * workers
    pool = ProcessPoolExecutor(
        max_workers=workers, mp_context=get_context("spawn"), initializer=_init_worker, initargs=(os.getpid(),)
    )
    pending: deque[Future] = deque()
    try:
        for job in jobs:
            pending.append(pool.submit(_collect_one, job))
            if len(pending) >= limit:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    except BrokenProcessPool as err:
        _stop_workers(pool)
        raise LeWorldError(
            f"a collect worker process died ({err}); out of memory? Try fewer --workers or a smaller --image-size"
        ) from None
    except BaseException:  # an error, Ctrl-C, SIGTERM, or the consumer stopped: drop the episodes in flight
        for future in pending:
            future.cancel()
        _stop_workers(pool)
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


# ------------------------------------------------------------------ the output folder
def _protected(path: Path) -> str | None:
    """Why replacing the existing folder ``path`` would delete something it must not, or None."""
    resolved = path.resolve()
    if path.is_symlink():
        return "it is a symbolic link (a link is never replaced); name a folder"
    cwd = Path.cwd().resolve()
    if resolved == cwd or resolved in cwd.parents:
        return "it is (or holds) the current directory; name a new folder"
    with contextlib.suppress(RuntimeError, KeyError, OSError):
        home = Path.home().resolve()
        if resolved == home or resolved in home.parents:
            return "it is (or holds) your home folder; name a new folder"
    return None


def check_output(out: str | Path, overwrite: bool) -> None:
    """Fail early, with the path in the message, if ``out`` cannot be written or may not be replaced.

    The rule is :func:`world_models.outputs.check_output_folder`'s (a missing folder must be
    creatable; an existing one must be empty, or with ``overwrite`` a dataset LeWorld wrote), where
    a dataset written before marker files also counts
    (:func:`world_models.data.dataset.is_leworld_dataset`). Never replaced, marked or not: a symbolic
    link, the current directory or a folder above it, the home folder or one above it.
    """
    if str(out) == "":
        raise LeWorldError("--out: an empty path; name the dataset folder to create")
    out = Path(out)
    if out.exists() or out.is_symlink():
        why = _protected(out)
        if why:
            raise LeWorldError(f"--out {out}: refusing to replace it: {why}")
        if overwrite and out.is_dir() and is_leworld_dataset(out):  # marked, or written before markers
            parent = out.absolute().parent
            if not os.access(parent, os.W_OK | os.X_OK):
                raise LeWorldError(f"--out {out}: cannot replace it: {parent} is not writable")
            return
    check_output_folder(out, "--out", "dataset", overwrite=overwrite)
    if out.exists() and not os.access(out.absolute().parent, os.W_OK | os.X_OK):
        raise LeWorldError(f"--out {out}: cannot replace it: {out.absolute().parent} is not writable")


def _is_empty_folder(path: Path) -> bool:
    try:
        return path.is_dir() and not path.is_symlink() and not any(path.iterdir())
    except OSError:
        return False


# ------------------------------------------------------------------ partial folders
def _process_start(pid: int) -> str | None:
    """The start time of process ``pid`` (clock ticks since boot, Linux), or None where unknown."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields[19] if len(fields) > 19 else None


def _process_gone(pid: int, started: str | None) -> bool:
    """Whether process ``pid`` (started at ``started``) no longer runs: missing, a zombie, or another
    process that reuses its number."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # it exists, another user's
    except (OSError, OverflowError, ValueError):
        return False
    with contextlib.suppress(OSError, IndexError):
        if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
            return True
    now = _process_start(pid)
    return started is not None and now is not None and now != started


def _write_owner(partial: Path) -> None:
    owner = {"pid": os.getpid(), "host": socket.gethostname(), "started": _process_start(os.getpid())}
    (partial / OWNER_FILE).write_text(json.dumps(owner))


def _owner_gone(partial: Path) -> bool | None:
    """True when ``partial``'s writer (its :data:`OWNER_FILE`) ran on this host and is gone; False when
    it still runs; None when the folder says nothing usable about its writer."""
    try:
        owner = json.loads((partial / OWNER_FILE).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return None
    if not isinstance(owner, dict) or owner.get("host") != socket.gethostname():
        return None
    pid, started = owner.get("pid"), owner.get("started")
    if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
        return None
    return _process_gone(pid, started if isinstance(started, str) else None)


def clean_stale_partials(out: Path, report: Callable[[str], None] | None = None) -> list[Path]:
    """Remove the ``.NAME.partial-*`` folders beside ``out`` that a run of this tool left when it was
    killed: each must carry LeWorld's dataset marker and name, in :data:`OWNER_FILE`, a process of
    this host that is gone. A run still going is left alone; partial datasets whose writer is unknown
    (another host's, one written before owner files) are reported, not touched. Returns the folders
    removed."""
    out = Path(out).absolute()
    report = report or _report
    removed = []
    prefix = f".{out.name}.partial-"
    try:
        candidates = sorted(p for p in out.parent.iterdir() if p.name.startswith(prefix))
    except OSError:
        return []
    for partial in candidates:
        if partial.is_symlink() or not partial.is_dir():
            continue
        gone = _owner_gone(partial) if marker_kind(partial) == "dataset" else None
        if gone:
            shutil.rmtree(partial, ignore_errors=True)
            if not partial.exists():
                removed.append(partial)
                report(f"removed {partial}: a partial dataset left by a collect run that was killed")
        elif gone is None and (marker_kind(partial) == "dataset" or (partial / DATA_SUBDIR).is_dir()):
            report(f"note: {partial} looks like a partial dataset of an interrupted run; remove it if no run uses it")
    return removed


def _report(message: str) -> None:
    print(f"leworld collect: {message}", file=sys.stderr)


# ------------------------------------------------------------------ writing
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
        check_interrupt()  # a SIGTERM whose exception a callback swallowed (numba compiling) still stops us
        chunk.append(EpisodeBuffer(**episode))
        if len(chunk) == WRITE_CHUNK:
            storage.update_episodes(chunk)
            chunk = []
        bar.update(1)
    if chunk:
        storage.update_episodes(chunk)
    bar.close()


def move_into_place(partial: Path, out: Path, overwrite: bool = False) -> None:
    """Rename the complete dataset ``partial`` to ``out``; an old ``out`` (``--overwrite``) is
    renamed aside first and deleted only once the new one is in place.

    ``out`` is checked again here (a collection can take hours): if it is no longer an empty folder or
    (with ``overwrite``) a dataset LeWorld wrote, it is left alone and the new dataset is kept beside it.
    """
    with contextlib.suppress(FileNotFoundError):
        (partial / OWNER_FILE).unlink()
    if not (out.exists() or out.is_symlink()):
        partial.rename(out)
        return
    if _protected(out) or not (_is_empty_folder(out) or (overwrite and is_leworld_dataset(out))):
        kept = out.parent / f"{out.name}.new-{uuid.uuid4().hex[:8]}"
        partial.rename(kept)
        raise LeWorldError(
            f"--out {out}: appeared or changed while collecting and is not a dataset LeWorld wrote; "
            f"left it alone and kept the new dataset in {kept}"
        )
    old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
    out.rename(old)
    try:
        partial.rename(out)
    except BaseException:
        old.rename(out)
        raise
    shutil.rmtree(old, ignore_errors=True)


def collect(
    config: CollectConfig,
    out: str | Path,
    workers: int = 1,
    overwrite: bool = False,
    progress: bool = True,
    report: Callable[[str], None] | None = None,
) -> Path:
    """Collect ``config.episodes`` episodes into a Minari dataset at ``out``.

    ``report`` receives one-line notes (a stale partial folder removed); by default they go to stderr.

    Returns:
        ``out``, which holds ``data/metadata.json``, ``data/main_data.hdf5`` and LeWorld's marker.

    Raises:
        LeWorldError: a bad config value, or an output that exists (without ``overwrite``), may not
            be replaced (see :func:`check_output`) or cannot be written.
    """
    config.validate()
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise LeWorldError(f"workers must be a whole number, at least 1, got {workers!r}")
    check_output(out, overwrite)
    out = Path(out).absolute()
    clean_stale_partials(out, report)

    partial = out.parent / f".{out.name}.partial-{uuid.uuid4().hex[:8]}"
    try:
        # Missing parent folders are created, and removed again if the collection fails.
        with sigterm_as_ctrl_c(), removed_if_failed(out.parent):
            try:
                partial.mkdir()
                write_marker(partial, "dataset")
                _write_owner(partial)
                storage = new_storage(partial / DATA_SUBDIR, config)
                storage.update_metadata(dataset_metadata(config, workers))
                write_episodes(storage, config, workers, progress)
                move_into_place(partial, out, overwrite)
            finally:
                if partial.exists():
                    shutil.rmtree(partial, ignore_errors=True)
    except OSError as err:
        raise LeWorldError(f"cannot write {out}: {err.strerror or err}") from None
    return out
