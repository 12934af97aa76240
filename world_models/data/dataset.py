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

DATA_SUBDIR = "data"
METADATA_KEY = "leworld"
OBSERVATION_FIELDS = ("pixels", "agent_pos", "agent_vel", "block_pose")
INFO_FIELDS = ("coverage", "target", "contact")


def data_path(path: str | Path) -> Path:
    """The Minari ``data`` folder of a dataset given as ``DIR`` or ``DIR/data``."""
    path = Path(path)
    return path if path.name == DATA_SUBDIR and (path / "metadata.json").exists() else path / DATA_SUBDIR


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


def load_dataset_info(path: str | Path) -> DatasetInfo:
    """Read and check a dataset's metadata.

    Raises:
        DatasetError: the folder or its metadata is missing, unreadable, or not
            written by ``leworld collect``.
    """
    root = Path(path)
    meta_file = data_path(root) / "metadata.json"
    if not root.exists():
        raise DatasetError(f"{root}: no such dataset folder")
    if not meta_file.is_file():
        raise DatasetError(f"{root}: not a Minari dataset (missing {meta_file.relative_to(root.parent)})")
    try:
        metadata = json.loads(meta_file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DatasetError(f"{meta_file}: unreadable metadata ({err})") from None
    lw = metadata.get(METADATA_KEY)
    if not isinstance(lw, dict):
        raise DatasetError(f"{meta_file}: no '{METADATA_KEY}' section; this dataset was not written by leworld collect")
    try:
        info = DatasetInfo(
            path=root,
            total_episodes=int(metadata["total_episodes"]),
            total_steps=int(metadata["total_steps"]),
            image_size=int(lw["image_size"]),
            frameskip=int(lw["frameskip"]),
            action_scale=float(lw["action_scale"]),
            policy=str(lw["policy"]),
            seed=int(lw["seed"]),
            leworld=lw,
        )
    except (KeyError, TypeError, ValueError) as err:
        raise DatasetError(f"{meta_file}: missing or malformed field {err}") from None
    if info.total_episodes <= 0:
        raise DatasetError(f"{meta_file}: the dataset holds no episodes")
    if info.frameskip < 1 or info.image_size < 8:
        raise DatasetError(f"{meta_file}: frameskip {info.frameskip} / image size {info.image_size} out of range")
    return info


@dataclass(frozen=True)
class EpisodeSteps:
    """One dataset episode at model-step boundaries (for replay).

    Attributes:
        state: float64 (K + 1, 5): agent x, y, block x, y, angle at model steps 0..K.
        actions: float32 (K, 2): the relative action held over model step k.
        frameskip: physics steps per model step.
    """

    state: np.ndarray
    actions: np.ndarray
    frameskip: int


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
            group = f[f"episode_{int(index)}"]
            n_actions = len(group["actions"]) // fs
            frames = slice(0, n_actions * fs + 1, fs)
            obs = group["observations"]
            state = np.concatenate([obs["agent_pos"][frames], obs["block_pose"][frames]], axis=1)
            actions = np.asarray(group["actions"][0 : n_actions * fs : fs], dtype=np.float32)
    except (OSError, KeyError, ValueError, TypeError) as err:
        raise DatasetError(f"{h5_file}: truncated or corrupt dataset ({err})") from None
    if n_actions < 1:
        raise DatasetError(f"{h5_file}: episode {index} is shorter than one model step ({fs} physics steps)")
    return EpisodeSteps(state=state.astype(np.float64), actions=actions, frameskip=fs)


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
                    group = f[f"episode_{ep}"]
                    obs = group["observations"]
                    n_actions = len(group["actions"]) // fs  # whole held actions only
                    frames = slice(0, n_actions * fs + 1, fs)
                    # Minari's auto-chunked layout reads far faster whole than strided.
                    px = obs["pixels"][: n_actions * fs + 1][::fs]
                    if px.ndim != 4 or px.shape[1:] != (self.info.image_size, self.info.image_size, 3):
                        raise DatasetError(
                            f"{h5_file}: episode {ep} pixels have shape {px.shape}, expected "
                            f"(T, {self.info.image_size}, {self.info.image_size}, 3)"
                        )
                    act = np.full((n_actions + 1, 2), np.nan, dtype=np.float32)
                    act[:n_actions] = group["actions"][0 : n_actions * fs : fs]
                    pose = obs["block_pose"][frames]
                    pixels.append(px)
                    actions.append(act)
                    states.append(np.concatenate([obs["agent_pos"][frames], pose], axis=1).astype(np.float32))
                    vels.append(obs["agent_vel"][frames].astype(np.float32))
                    episode.append(np.full(n_actions + 1, ep, dtype=np.int64))
                    step.append(np.arange(n_actions + 1, dtype=np.int64))
                    # A clip needs L frames and the action at each of them.
                    n_starts = n_actions - self.clip_length + 1
                    if n_starts > 0:
                        starts.append(offset + np.arange(n_starts))
                    offset += n_actions + 1
        except DatasetError:
            raise
        except (OSError, KeyError, ValueError, TypeError) as err:
            raise DatasetError(f"{h5_file}: truncated or corrupt dataset ({err})") from None
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
