"""A dataset's episodes as frozen-encoder latents (what the LeWorld memory model trains on).

:func:`encode_episodes` reads a ``leworld collect`` dataset the way
:class:`~world_models.data.dataset.PushTClips` does (every ``frameskip``-th frame, whole
held actions only) and encodes the frames with a frozen LeWM encoder, a model the caller
opened (:func:`world_models.memory.runtime.encode_dataset` opens one by name: default the shipped
``pusht-tiny`` on the ``numba`` backend, no torch).
:class:`LatentEpisodes` holds the result with episodes concatenated;
:func:`save_latents` / :func:`load_latents` store it as safetensors (atomic).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from world_models.data.dataset import DatasetInfo, data_path, load_dataset_info, split_episodes
from world_models.errors import DatasetError, LeWorldError, brief
from world_models.interface import WorldModel


@dataclass(frozen=True)
class LatentEpisodes:
    """Episodes of latents at model-step boundaries, concatenated.

    Attributes:
        z: float32 [N, D], the latent of every model-step frame.
        actions: float32 [N, 2]; ``actions[i]`` is applied at frame ``i`` (NaN at each episode's last frame).
        episode_starts: int64 [E + 1]; episode ``e`` is rows ``episode_starts[e]:episode_starts[e + 1]``.
        physics: float32 [E, P], per-episode hidden physics (P = 0 when the dataset has none).
        physics_names: the P column names of ``physics``.
        episode_ids: int64 [E], each episode's index in the source dataset.
        info: provenance (dataset, encoder model, frameskip, action scale).
    """

    z: np.ndarray
    actions: np.ndarray
    episode_starts: np.ndarray
    physics: np.ndarray
    physics_names: tuple[str, ...] = ()
    episode_ids: np.ndarray | None = None
    info: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        n, e = len(self.z), len(self.episode_starts) - 1
        if self.z.ndim != 2 or self.actions.shape != (n, 2):
            raise LeWorldError(f"latents: z {self.z.shape} and actions {self.actions.shape} must be [N, D] and [N, 2]")
        if e < 1 or self.episode_starts[0] != 0 or self.episode_starts[-1] != n:
            raise LeWorldError(f"latents: episode_starts must run from 0 to {n} over at least one episode")
        if self.physics.shape[0] != e:
            raise LeWorldError(f"latents: physics has {self.physics.shape[0]} rows for {e} episodes")
        if self.episode_ids is None:
            object.__setattr__(self, "episode_ids", np.arange(e, dtype=np.int64))

    @property
    def num_episodes(self) -> int:
        return len(self.episode_starts) - 1

    @property
    def latent_dim(self) -> int:
        return self.z.shape[1]

    def lengths(self) -> np.ndarray:
        """Frames per episode, int64 [E]."""
        return np.diff(self.episode_starts)

    def episode(self, e: int) -> tuple[np.ndarray, np.ndarray]:
        """(z [T, D], actions [T, 2]) of episode ``e``."""
        s, t = self.episode_starts[e], self.episode_starts[e + 1]
        return self.z[s:t], self.actions[s:t]

    def subset(self, episodes: np.ndarray) -> LatentEpisodes:
        """The given episodes (positions in this object), in that order."""
        episodes = np.asarray(episodes, dtype=np.int64)
        parts = [slice(self.episode_starts[e], self.episode_starts[e + 1]) for e in episodes]
        lengths = np.array([p.stop - p.start for p in parts], dtype=np.int64)
        return LatentEpisodes(
            z=np.concatenate([self.z[p] for p in parts]) if parts else self.z[:0],
            actions=np.concatenate([self.actions[p] for p in parts]) if parts else self.actions[:0],
            episode_starts=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
            physics=self.physics[episodes],
            physics_names=self.physics_names,
            episode_ids=self.episode_ids[episodes],
            info=dict(self.info),
        )

    def split(self, val_fraction: float, seed: int) -> tuple[LatentEpisodes, LatentEpisodes]:
        """(train, val) by episode, with :func:`~world_models.data.dataset.split_episodes`' seeded permutation."""
        train_ids, val_ids = split_episodes(self.num_episodes, val_fraction, seed)
        if len(train_ids) == 0 or len(val_ids) == 0:
            raise DatasetError(
                f"latents: {self.num_episodes} episode(s) cannot be split into train and val "
                f"(val_fraction={val_fraction}); collect at least 2 episodes"
            )
        return self.subset(train_ids), self.subset(val_ids)


def encode_episodes(
    dataset_dir: str | Path, encoder: WorldModel, progress: bool = False, *, encoder_model: str | Path | None = None
) -> LatentEpisodes:
    """Encode every episode of a ``leworld collect`` dataset with a frozen model's encoder.

    Frames are read as :class:`~world_models.data.dataset.PushTClips` reads them: every
    ``frameskip``-th frame and the action held from it, whole held actions only.
    A per-episode ``infos/physics`` field (hidden-physics datasets) is kept when present.

    Args:
        dataset_dir: the dataset.
        encoder: the encoder model, opened by the caller (any backend).
        progress: show a progress bar.
        encoder_model: the name ``info["encoder_model"]`` records (default: the encoder's path).
    """
    if not isinstance(encoder, WorldModel):
        raise LeWorldError(
            f"encode_episodes takes the encoder model (a WorldModel), got {encoder!r}; "
            "world_models.memory.runtime.encode_dataset opens one by name"
        )
    name = encoder_model if encoder_model is not None else getattr(encoder, "path", type(encoder).__name__)
    info = load_dataset_info(dataset_dir)
    if encoder.config.image_size != info.image_size:
        raise LeWorldError(
            f"{dataset_dir}: frames are {info.image_size}px but encoder model {name!r} "
            f"expects {encoder.config.image_size}px"
        )
    episodes = _encode_each_episode(info, encoder, progress)
    if not episodes:
        raise DatasetError(
            f"{dataset_dir}: no episode is at least one model step ({info.frameskip} physics steps) long"
        )
    zs, acts, phys, ids = (list(column) for column in zip(*episodes, strict=True))
    phys = [p for p in phys if p is not None]
    if phys and len(phys) != len(zs):
        raise DatasetError(f"{dataset_dir}: only {len(phys)} of {len(zs)} episodes have infos/physics")
    physics = np.stack(phys) if phys else np.zeros((len(zs), 0), np.float32)
    names = tuple(str(n) for n in info.leworld.get("physics_fields", ()))
    if physics.shape[1] and len(names) != physics.shape[1]:
        names = tuple(f"physics_{i}" for i in range(physics.shape[1]))
    return LatentEpisodes(
        z=np.concatenate(zs).astype(np.float32),
        actions=np.concatenate(acts),
        episode_starts=np.concatenate([[0], np.cumsum([len(a) for a in acts])]).astype(np.int64),
        physics=physics,
        physics_names=names if physics.shape[1] else (),
        episode_ids=np.array(ids, dtype=np.int64),
        info={
            "dataset": str(dataset_dir),
            "encoder_model": str(name),
            "encoder_backend": encoder.backend,
            "frameskip": info.frameskip,
            "action_scale": info.action_scale,
            "policy": info.policy,
        },
    )


def _encode_each_episode(
    info: DatasetInfo, encoder: WorldModel, progress: bool
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray | None, int]]:
    """(z [T, D], actions [T, 2], physics or None, episode index) of every episode at least one model step long."""
    import h5py
    from tqdm import tqdm

    fs = info.frameskip
    episodes = []
    h5_file = data_path(info.path) / "main_data.hdf5"
    try:
        with h5py.File(h5_file, "r") as f:
            for ep in tqdm(range(info.total_episodes), desc="encoding episodes", disable=not progress, unit="ep"):
                group = f[f"episode_{ep}"]
                n_actions = len(group["actions"]) // fs
                if n_actions < 1:
                    continue
                pixels = group["observations"]["pixels"][: n_actions * fs + 1][::fs]
                act = np.full((n_actions + 1, 2), np.nan, dtype=np.float32)
                act[:n_actions] = group["actions"][0 : n_actions * fs : fs]
                z = np.concatenate([encoder.encode(pixels[i : i + 256]) for i in range(0, len(pixels), 256)])
                physics = None
                if "infos" in group and "physics" in group["infos"]:
                    physics = np.asarray(group["infos"]["physics"][0], dtype=np.float32)
                episodes.append((z, act, physics, ep))
    except (OSError, KeyError, ValueError, TypeError) as err:
        raise DatasetError(f"{h5_file}: truncated or corrupt dataset ({err})") from None
    return episodes


def save_latents(latents: LatentEpisodes, path: str | Path) -> None:
    """Write ``latents`` to a safetensors file, atomically."""
    from safetensors.numpy import save

    from world_models.files import atomic_write_bytes

    tensors = {
        "z": latents.z,
        "actions": latents.actions,
        "episode_starts": latents.episode_starts,
        "physics": latents.physics,
        "episode_ids": latents.episode_ids,
    }
    meta = {"physics_names": json.dumps(list(latents.physics_names)), "info": json.dumps(latents.info)}
    atomic_write_bytes(Path(path), save({k: np.ascontiguousarray(v) for k, v in tensors.items()}, metadata=meta))


def load_latents(path: str | Path) -> LatentEpisodes:
    """Read a file written by :func:`save_latents`."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise LeWorldError(f"{path}: no such latents file")
    try:
        with safe_open(str(path), framework="numpy") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
            meta = f.metadata() or {}
        return LatentEpisodes(
            z=tensors["z"],
            actions=tensors["actions"],
            episode_starts=tensors["episode_starts"],
            physics=tensors["physics"],
            physics_names=tuple(json.loads(meta.get("physics_names", "[]"))),
            episode_ids=tensors["episode_ids"],
            info=json.loads(meta.get("info", "{}")),
        )
    except LeWorldError as err:
        raise LeWorldError(f"{path}: {err}") from None
    except (SafetensorError, OSError, KeyError, ValueError, TypeError, RecursionError) as err:
        raise LeWorldError(f"{path}: not a latents file ({brief(err)})") from None


@dataclass(frozen=True)
class Windows:
    """Context + future windows cut from episodes (numpy).

    Attributes:
        z: float32 [B, C + H, D]; position ``C - 1`` is the current state, ``C ..`` the future.
        actions: float32 [B, C + H, 2] (NaN at an episode's last frame replaced by 0).
        valid: bool [B, C + H]; False where the context reaches before the episode start (padded
            there with the episode's first latent and a zero action, as the dream env starts).
        episode: int64 [B], position of each window's episode in the LatentEpisodes.
        t0: int64 [B], frame index of the current state in its episode.
    """

    z: np.ndarray
    actions: np.ndarray
    valid: np.ndarray
    episode: np.ndarray
    t0: np.ndarray


def window_starts(latents: LatentEpisodes, horizon: int, min_t0: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Every (episode, t0) with ``min_t0 <= t0`` and ``t0 + horizon`` inside the episode."""
    eps, t0s = [], []
    for e, length in enumerate(latents.lengths()):
        t = np.arange(min_t0, length - horizon)
        eps.append(np.full(len(t), e, np.int64))
        t0s.append(t.astype(np.int64))
    episodes, starts = np.concatenate(eps), np.concatenate(t0s)
    if len(starts) == 0:
        longest = int(latents.lengths().max())
        raise DatasetError(
            f"no episode is long enough for windows of {min_t0} + {horizon} model steps "
            f"(the longest has {longest} frames; need at least {min_t0 + horizon + 1})"
        )
    return episodes, starts


def cut_windows(latents: LatentEpisodes, episodes: np.ndarray, t0s: np.ndarray, context: int, horizon: int) -> Windows:
    """The windows with current state ``t0`` of each given episode: ``context`` frames up to it, ``horizon`` after."""
    offsets = np.arange(-context + 1, horizon + 1)
    pos = t0s[:, None] + offsets[None, :]
    valid = pos >= 0
    rows = latents.episode_starts[episodes][:, None] + np.maximum(pos, 0)
    z = latents.z[rows]
    actions = np.where(valid[..., None], np.nan_to_num(latents.actions[rows]), 0.0).astype(np.float32)
    return Windows(z=z, actions=actions, valid=valid, episode=np.asarray(episodes), t0=np.asarray(t0s))
