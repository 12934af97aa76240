"""PushT trajectory datasets (Minari, HDF5) and the training clip loader.

A LeWorld PushT dataset is a Minari dataset folder ``DIR`` holding
``DIR/data/metadata.json`` and ``DIR/data/main_data.hdf5``; ``leworld collect``
writes it and :class:`minari.MinariDataset` reads it (``MinariDataset(DIR / "data")``).
One Minari step is one *physics step* of gym-pusht. Per episode of T steps:

=====================================  ===========  ==========  ===================================
field                                  shape        dtype       meaning
=====================================  ===========  ==========  ===================================
``observations/pixels``                (T+1,S,S,3)  uint8       RGB frame, S = image size
``observations/agent_pos``             (T+1, 2)     float64     agent x, y (px)
``observations/agent_vel``             (T+1, 2)     float64     agent vx, vy (px/s)
``observations/block_pose``            (T+1, 3)     float64     block origin x, y (px), angle [0, 2pi)
``actions``                            (T, 2)       float32     relative action in [-1, 1]^2, held
``rewards``                            (T,)         float64     gym-pusht reward, clip(cov/0.95, 0, 1)
``terminations`` / ``truncations``     (T,)         bool        success (cov > 0.95) / step limit
``infos/coverage``                     (T+1,)       float64     gym-pusht coverage of the observation
``infos/target``                       (T+1, 2)     float64     absolute PD target that led here
``infos/contact``                      (T+1,)       bool        agent touching the block
``infos/physics``                      (T+1, 3)     float64     damping, friction, block mass (hidden physics only)
=====================================  ===========  ==========  ===================================

Actions are held for ``frameskip`` physics steps starting at step 0, so a *model
step* ``k`` spans physics steps ``k*frameskip .. (k+1)*frameskip - 1``. The
metadata key ``leworld`` records policy, frameskip, image size, action scale,
seed, step limit and package version; with ``hidden_physics`` also
``physics_fields`` (the columns of ``infos/physics``) and ``physics_ranges``
(each field's low, high and distribution). ``infos/physics`` is constant over an
episode and is the answer to the memory task: models may use it as a probe
target, policies must not read it.

:class:`PushTClips` keeps the frames at model-step boundaries of one split in
memory and samples random clips of ``history + num_preds`` model steps.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from world_models.errors import ArgumentError, DatasetError
from world_models.files import read_json_object, short_repr

DATA_SUBDIR = "data"
METADATA_KEY = "leworld"
OBSERVATION_FIELDS = ("pixels", "agent_pos", "agent_vel", "block_pose")
INFO_FIELDS = ("coverage", "target", "contact")


def data_path(path: str | Path) -> Path:
    """The Minari ``data`` folder of a dataset given as ``DIR`` or ``DIR/data``."""
    path = Path(path)
    return path if path.name == DATA_SUBDIR and (path / "metadata.json").exists() else path / DATA_SUBDIR


MINARI_FILES = ("metadata.json", "main_data.hdf5")  # what Minari's HDF5 storage writes in DIR/data


def is_leworld_dataset(folder: str | Path) -> bool:
    """Whether ``folder`` is a dataset ``leworld collect`` wrote (so ``--overwrite`` may replace it):
    the one place that decides it.

    Either it carries LeWorld's marker of kind ``dataset`` (:mod:`world_models.outputs`; every
    dataset written since markers exist), or, for datasets written before, it holds nothing but
    ``data/`` with Minari's files in it, and ``data/metadata.json`` has LeWorld's
    :data:`METADATA_KEY` section. A symbolic link is never one.
    """
    from world_models.outputs import MARKER, marker_kind

    folder = Path(folder)
    if folder.is_symlink() or not folder.is_dir():
        return False
    if marker_kind(folder) == "dataset":
        return True
    data = folder / DATA_SUBDIR
    try:
        if {p.name for p in folder.iterdir()} - {MARKER} != {DATA_SUBDIR} or data.is_symlink():
            return False
        if not {p.name for p in data.iterdir()} <= set(MINARI_FILES):
            return False
        metadata = json.loads((data / "metadata.json").read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return False
    return isinstance(metadata, dict) and isinstance(metadata.get(METADATA_KEY), dict)


@dataclass(frozen=True)
class DatasetInfo:
    """What a LeWorld dataset says about itself."""

    path: Path
    total_episodes: int
    total_steps: int
    image_size: int
    frameskip: int
    action_scale: float
    policy: str
    seed: int
    leworld: dict[str, Any]


def _field(section: dict[str, Any], name: str, kind: str, where: Path, label: str) -> Any:
    """``section[name]``, which must be a whole number (``kind`` "int"), a finite number ("float") or a string."""
    if name not in section:
        raise DatasetError(f"{where}: missing field {label}{name}")
    value = section[name]
    ok = {
        "int": isinstance(value, int) and not isinstance(value, bool),
        "float": isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value),
        "str": isinstance(value, str),
    }[kind]
    if not ok:
        expected = {"int": "a whole number", "float": "a finite number", "str": "a string"}[kind]
        raise DatasetError(f"{where}: field {label}{name} must be {expected}, got {short_repr(value)}")
    return value


def load_dataset_info(path: str | Path) -> DatasetInfo:
    """Read and check a dataset's metadata.

    Raises:
        DatasetError: the folder or its metadata is missing, unreadable, or not
            written by ``leworld collect``; a field is missing or of the wrong kind.
    """
    root = Path(path)
    meta_file = data_path(root) / "metadata.json"
    if not root.exists():
        raise DatasetError(f"{root}: no such dataset folder")
    if not meta_file.is_file():
        raise DatasetError(f"{root}: not a Minari dataset (missing {meta_file.relative_to(root.parent)})")
    metadata = read_json_object(meta_file, what="metadata", error=DatasetError)
    lw = metadata.get(METADATA_KEY)
    if not isinstance(lw, dict):
        raise DatasetError(f"{meta_file}: no '{METADATA_KEY}' section; this dataset was not written by leworld collect")
    label = f"{METADATA_KEY}."
    info = DatasetInfo(
        path=root,
        total_episodes=_field(metadata, "total_episodes", "int", meta_file, ""),
        total_steps=_field(metadata, "total_steps", "int", meta_file, ""),
        image_size=_field(lw, "image_size", "int", meta_file, label),
        frameskip=_field(lw, "frameskip", "int", meta_file, label),
        action_scale=float(_field(lw, "action_scale", "float", meta_file, label)),
        policy=_field(lw, "policy", "str", meta_file, label),
        seed=_field(lw, "seed", "int", meta_file, label),
        leworld=lw,
    )
    if info.total_episodes <= 0:
        raise DatasetError(f"{meta_file}: the dataset holds no episodes (total_episodes {info.total_episodes})")
    if info.total_steps < info.total_episodes:
        raise DatasetError(
            f"{meta_file}: total_steps {info.total_steps} is fewer than one step per episode "
            f"({info.total_episodes} episodes)"
        )
    if info.frameskip < 1 or info.image_size < 8:
        raise DatasetError(f"{meta_file}: frameskip {info.frameskip} / image size {info.image_size} out of range")
    if not info.action_scale > 0:
        raise DatasetError(f"{meta_file}: {label}action_scale must be > 0, got {info.action_scale}")
    return info


# What reading an HDF5 file that is damaged may raise (h5py reports many problems as RuntimeError,
# a declared size too large to hold as MemoryError).
H5_ERRORS = (OSError, KeyError, ValueError, TypeError, AttributeError, RuntimeError, IndexError, MemoryError)


def _episode_fields(f: Any, ep: int, info: DatasetInfo, h5_file: Path, pixels: bool) -> tuple[Any, Any, int]:
    """Episode ``ep``'s ``observations`` group, its ``actions`` dataset and its step count T, checked:
    every field read (``pixels`` too when asked) is an HDF5 dataset of the documented kind and
    length (T + 1 observations, T actions), and T is no more than the metadata's total_steps."""
    import h5py

    name = f"episode_{int(ep)}"
    if name not in f or not isinstance(f[name], h5py.Group):
        raise DatasetError(f"{h5_file}: no group {name} (the metadata declares {info.total_episodes} episodes)")
    group = f[name]
    obs = group.get("observations")
    actions = group.get("actions")
    if not isinstance(obs, h5py.Group) or not isinstance(actions, h5py.Dataset):
        raise DatasetError(f"{h5_file}: {name} lacks the observations group or the actions dataset")
    steps = actions.shape[0] if actions.ndim >= 1 else -1
    if actions.shape != (steps, 2) or actions.dtype.kind != "f" or not 0 < steps <= info.total_steps:
        raise DatasetError(
            f"{h5_file}: {name}/actions is {actions.dtype} {actions.shape}; expected floats (T, 2) with "
            f"0 < T <= total_steps {info.total_steps}"
        )
    size = info.image_size
    expected = {
        "agent_pos": ((steps + 1, 2), "f"),
        "agent_vel": ((steps + 1, 2), "f"),
        "block_pose": ((steps + 1, 3), "f"),
    }
    if pixels:
        frames = obs.get("pixels")
        if isinstance(frames, h5py.Dataset) and frames.dtype.kind == "O":
            raise DatasetError(
                f"{h5_file}: {name}'s frames are JPEG-encoded (collect --jpeg); the clip loader reads raw "
                "frames: collect without --jpeg"
            )
        expected["pixels"] = ((steps + 1, size, size, 3), "u")
    for field, (shape, kind) in expected.items():
        data = obs.get(field)
        if not isinstance(data, h5py.Dataset) or data.shape != shape or data.dtype.kind != kind:
            got = f"{data.dtype} {data.shape}" if isinstance(data, h5py.Dataset) else "missing"
            want = "uint8" if kind == "u" else "floats"
            raise DatasetError(f"{h5_file}: {name}/observations/{field} is {got}; expected {want} {shape}")
    return obs, actions, steps


def _finite(array: np.ndarray, what: str, h5_file: Path) -> np.ndarray:
    if not np.all(np.isfinite(array)):
        raise DatasetError(f"{h5_file}: {what} holds NaN or infinite values")
    return array


@dataclass(frozen=True)
class EpisodeSteps:
    """One dataset episode at model-step boundaries (for replay).

    Attributes:
        state: float64 (K + 1, 5): agent x, y, block x, y, angle at model steps 0..K.
        actions: float32 (K, 2): the relative action held over model step k.
        frameskip: physics steps per model step.
        contact: bool (K,): whether the agent touched the block during model step k (any of its
            physics steps; ``infos/contact``), all False for a dataset without it.
    """

    state: np.ndarray
    actions: np.ndarray
    frameskip: int
    contact: np.ndarray


def read_episode(path: str | Path, index: int) -> EpisodeSteps:
    """Episode ``index`` of a ``leworld collect`` dataset, cut at its held actions' boundaries.

    Raises:
        DatasetError: no such episode, or the file is truncated or corrupt.
    """
    import h5py

    info = load_dataset_info(path)
    if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or not 0 <= index < info.total_episodes:
        raise DatasetError(f"{path}: no episode {index!r}; the dataset holds episodes 0..{info.total_episodes - 1}")
    fs = info.frameskip
    h5_file = data_path(info.path) / "main_data.hdf5"
    try:
        with h5py.File(h5_file, "r") as f:
            obs, actions_data, steps = _episode_fields(f, int(index), info, h5_file, pixels=False)
            n_actions = steps // fs
            frames = slice(0, n_actions * fs + 1, fs)
            state = np.concatenate([obs["agent_pos"][frames], obs["block_pose"][frames]], axis=1)
            actions = np.asarray(actions_data[0 : n_actions * fs : fs], dtype=np.float32)
            touching = f[f"episode_{int(index)}"].get("infos/contact")
            if isinstance(touching, h5py.Dataset) and touching.shape == (steps + 1,):
                contact = np.asarray(touching[1 : n_actions * fs + 1], bool).reshape(n_actions, fs).any(axis=1)
            else:
                contact = np.zeros(n_actions, bool)
    except DatasetError:
        raise
    except H5_ERRORS as err:
        raise DatasetError(f"{h5_file}: truncated or corrupt dataset ({type(err).__name__}: {err})") from None
    if n_actions < 1:
        raise DatasetError(f"{h5_file}: episode {index} is shorter than one model step ({fs} physics steps)")
    _finite(state, f"episode {index}'s agent_pos / block_pose", h5_file)
    _finite(actions, f"episode {index}'s actions", h5_file)
    return EpisodeSteps(state=state.astype(np.float64), actions=actions, frameskip=fs, contact=contact)


@dataclass(frozen=True)
class ClipBatch:
    """A batch of clips of L model steps (numpy; see :meth:`to_torch`).

    Attributes:
        pixels: uint8 (B, L, S, S, 3).
        actions: float32 (B, L, 2); ``actions[:, t]`` is applied at frame ``t``.
        state: float32 (B, L, 5): agent x, y, block x, y, angle.
        agent_vel: float32 (B, L, 2).
        episode: int64 (B,) episode id of each clip.
        start: int64 (B,) model-step index of each clip's first frame.
    """

    pixels: np.ndarray
    actions: np.ndarray
    state: np.ndarray
    agent_vel: np.ndarray
    episode: np.ndarray
    start: np.ndarray

    def to_torch(self, device: str = "cpu") -> dict[str, Any]:
        """The arrays as torch tensors (pixels stay uint8; normalise on the model's device)."""
        import torch

        return {
            name: torch.from_numpy(np.ascontiguousarray(getattr(self, name))).to(device)
            for name in ("pixels", "actions", "state", "agent_vel", "episode", "start")
        }


def split_episodes(total_episodes: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Episode ids for training and validation: a seeded permutation, split by episode.

    At least one episode goes to each side when there are two or more.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ArgumentError(f"val_fraction must be in [0, 1), got {val_fraction}")
    order = np.random.default_rng(seed).permutation(total_episodes)
    n_val = round(total_episodes * val_fraction)
    if val_fraction > 0.0 and total_episodes >= 2:
        n_val = min(max(n_val, 1), total_episodes - 1)
    return np.sort(order[n_val:]), np.sort(order[:n_val])


class PushTClips:
    """Random clips of ``history + num_preds`` model steps from one split of a dataset.

    The frames at model-step boundaries of the chosen split are read once into
    memory (a progress bar shows it); sampling is then a gather from contiguous
    arrays, far faster than a model trains (``leworld bench data`` measures it).

    Args:
        path: dataset folder (``DIR`` or ``DIR/data``).
        history: context length in model steps (LeWM: 3).
        num_preds: steps predicted after the context (LeWM: 1).
        split: ``"train"``, ``"val"`` or ``"all"``.
        val_fraction: share of episodes held out for validation.
        split_seed: seed of the episode permutation (the same for both splits).
        seed: seed of clip sampling.
        progress: show a progress bar while reading.
    """

    def __init__(
        self,
        path: str | Path,
        history: int = 3,
        num_preds: int = 1,
        split: str = "train",
        val_fraction: float = 0.1,
        split_seed: int = 0,
        seed: int = 0,
        progress: bool = False,
    ) -> None:
        if history < 1 or num_preds < 0:
            raise ArgumentError(f"history must be >= 1 and num_preds >= 0, got {history} and {num_preds}")
        if split not in ("train", "val", "all"):
            raise ArgumentError(f"split must be 'train', 'val' or 'all', got {split!r}")
        self.info = load_dataset_info(path)
        self.history = history
        self.num_preds = num_preds
        self.clip_length = history + num_preds
        self.frameskip = self.info.frameskip
        train_ids, val_ids = split_episodes(self.info.total_episodes, val_fraction, split_seed)
        ids = {"train": train_ids, "val": val_ids, "all": np.arange(self.info.total_episodes)}[split]
        if len(ids) == 0:
            raise DatasetError(f"{self.info.path}: the '{split}' split is empty (val_fraction={val_fraction})")
        self.episode_ids = ids
        self._read(progress)
        self.rng = np.random.default_rng(seed)

    def _read(self, progress: bool) -> None:
        import h5py
        from tqdm import tqdm

        fs = self.frameskip
        pixels, actions, states, vels, episode, step, starts = [], [], [], [], [], [], []
        offset = 0
        h5_file = data_path(self.info.path) / "main_data.hdf5"
        try:
            with h5py.File(h5_file, "r") as f:
                for ep in tqdm(self.episode_ids, desc="reading episodes", disable=not progress, unit="ep"):
                    obs, actions_data, steps = _episode_fields(f, int(ep), self.info, h5_file, pixels=True)
                    n_actions = steps // fs  # whole held actions only
                    frames = slice(0, n_actions * fs + 1, fs)
                    # Minari's auto-chunked layout reads far faster whole than strided.
                    px = obs["pixels"][: n_actions * fs + 1][::fs]
                    act = np.full((n_actions + 1, 2), np.nan, dtype=np.float32)
                    act[:n_actions] = actions_data[0 : n_actions * fs : fs]
                    pose = obs["block_pose"][frames]
                    state = np.concatenate([obs["agent_pos"][frames], pose], axis=1).astype(np.float32)
                    vel = obs["agent_vel"][frames].astype(np.float32)
                    for what, array in (("actions", act[:n_actions]), ("state", state), ("agent_vel", vel)):
                        _finite(array, f"episode {ep}'s {what}", h5_file)
                    pixels.append(px)
                    actions.append(act)
                    states.append(state)
                    vels.append(vel)
                    episode.append(np.full(n_actions + 1, ep, dtype=np.int64))
                    step.append(np.arange(n_actions + 1, dtype=np.int64))
                    # A clip needs L frames and the action at each of them.
                    n_starts = n_actions - self.clip_length + 1
                    if n_starts > 0:
                        starts.append(offset + np.arange(n_starts))
                    offset += n_actions + 1
        except DatasetError:
            raise
        except H5_ERRORS as err:
            raise DatasetError(f"{h5_file}: truncated or corrupt dataset ({type(err).__name__}: {err})") from None
        self.pixels = np.concatenate(pixels)
        self.actions = np.concatenate(actions)
        self.state = np.concatenate(states)
        self.agent_vel = np.concatenate(vels)
        self.episode = np.concatenate(episode)
        self.step = np.concatenate(step)
        if not starts:
            raise DatasetError(
                f"{self.info.path}: no episode is long enough for clips of {self.clip_length} model steps "
                f"({self.clip_length * self.frameskip} physics steps)"
            )
        self.starts = np.concatenate(starts)

    def __len__(self) -> int:
        """Number of distinct clips."""
        return len(self.starts)

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.pixels, self.actions, self.state, self.agent_vel))

    def clip(self, starts: np.ndarray) -> ClipBatch:
        """The clips beginning at the given positions of :attr:`starts`' index space."""
        idx = np.asarray(starts)[:, None] + np.arange(self.clip_length)
        return ClipBatch(
            pixels=self.pixels[idx],
            actions=self.actions[idx],
            state=self.state[idx],
            agent_vel=self.agent_vel[idx],
            episode=self.episode[idx[:, 0]],
            start=self.step[idx[:, 0]],
        )

    def sample(self, batch_size: int) -> ClipBatch:
        """``batch_size`` clips drawn uniformly with replacement."""
        return self.clip(self.starts[self.rng.integers(0, len(self.starts), size=batch_size)])

    def epoch(self, batch_size: int, drop_last: bool = False):
        """Every clip once, in a random order, in batches."""
        order = self.rng.permutation(self.starts)
        stop = len(order) - len(order) % batch_size if drop_last else len(order)
        for i in range(0, stop, batch_size):
            yield self.clip(order[i : i + batch_size])

    def batches_per_epoch(self, batch_size: int) -> int:
        return math.ceil(len(self.starts) / batch_size)
