"""Collect real PushT trajectories into a Minari dataset (``leworld collect``).

Every episode is a pure function of ``(seed, episode index)``: its physics seed
and its policy's random generator both come from
``np.random.SeedSequence(seed, spawn_key=(index,))``. The same seed therefore
gives the same data whatever the number of worker processes. With
``hidden_physics``, each episode's :class:`~leworld_env.sim.pusht_sim.HiddenPhysics`
is drawn from a third stream of the same pair (:func:`physics_generator`), so
the starts and the policy's draws are those of the plain dataset; the policy
never sees the physics.

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

import numpy as np
from gymnasium import spaces

from leworld_env.sim.policies import POLICIES, make_policy
from leworld_env.sim.pusht_sim import (
    HIDDEN_PHYSICS_FIELDS,
    HIDDEN_PHYSICS_RANGES,
    SUCCESS_COVERAGE,
    HiddenPhysics,
    PushTSim,
    sample_hidden_physics,
)
from numba_kernels.pusht_raster import WORLD_SIZE
from world_models.data.dataset import DATA_SUBDIR, METADATA_KEY
from world_models.errors import LeWorldError

WRITE_CHUNK = 8  # episodes per HDF5 append


@dataclass(frozen=True)
class CollectConfig:
    """What to collect.

    Attributes:
        policy: a name from :data:`leworld_env.sim.policies.POLICIES`.
        episodes: number of episodes.
        image_size: frame side in pixels.
        frameskip: physics steps each action is held.
        action_scale: pixels per unit of relative action.
        max_steps: physics steps per episode at most (gym-pusht's own limit is 300);
            an episode also ends early when gym-pusht reports success.
        seed: base seed.
        jpeg: store frames JPEG-encoded (Minari's lossy option) instead of raw.
        hidden_physics: draw each episode's damping, contact friction and block mass from
            :data:`~leworld_env.sim.pusht_sim.HIDDEN_PHYSICS_RANGES` and record them in
            ``infos/physics``; otherwise every episode has gym-pusht's physics.
    """

    policy: str = "weak-expert"
    episodes: int = 100
    image_size: int = 96
    frameskip: int = 5
    action_scale: float = 100.0
    max_steps: int = 300
    seed: int = 0
    jpeg: bool = False
    hidden_physics: bool = False

    def validate(self) -> None:
        """Raise :class:`LeWorldError` naming the first bad field."""
        if self.policy not in POLICIES:
            raise LeWorldError(f"unknown policy {self.policy!r}; choose one of: {', '.join(sorted(POLICIES))}")
        if self.episodes <= 0:
            raise LeWorldError(f"episodes must be a positive number, got {self.episodes}")
        if self.image_size < 8:
            raise LeWorldError(f"image size must be at least 8 pixels, got {self.image_size}")
        if self.frameskip < 1:
            raise LeWorldError(f"frameskip must be at least 1 physics step, got {self.frameskip}")
        if self.max_steps < self.frameskip:
            raise LeWorldError(
                f"max steps ({self.max_steps}) must cover at least one held action (frameskip {self.frameskip})"
            )
        if not self.action_scale > 0:
            raise LeWorldError(f"action scale must be > 0 pixels, got {self.action_scale}")


def package_version() -> str:
    try:
        return importlib_metadata.version("leworld")
    except importlib_metadata.PackageNotFoundError:
        return "0+unknown"


def observation_space(image_size: int) -> spaces.Dict:
    """The dataset's observation space (a frame plus the physical state)."""
    return spaces.Dict(
        {
            "pixels": spaces.Box(0, 255, (image_size, image_size, 3), np.uint8),
            "agent_pos": spaces.Box(0.0, WORLD_SIZE, (2,), np.float64),
            "agent_vel": spaces.Box(-np.inf, np.inf, (2,), np.float64),
            "block_pose": spaces.Box(
                np.array([-np.inf, -np.inf, 0.0]), np.array([np.inf, np.inf, 2 * np.pi]), (3,), np.float64
            ),
        }
    )


ACTION_SPACE = spaces.Box(-1.0, 1.0, (2,), np.float32)


def episode_seed(seed: int, index: int) -> np.random.SeedSequence:
    return np.random.SeedSequence(seed, spawn_key=(index,))


def physics_generator(seed: int, index: int) -> np.random.Generator:
    """The generator that draws episode ``index``'s hidden physics: a child of its seed sequence,
    independent of the start and of the policy's generator."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(index, 0)))


def episode_physics(config: CollectConfig, index: int) -> HiddenPhysics:
    """Episode ``index``'s physics: drawn from :func:`physics_generator` with ``hidden_physics``,
    else gym-pusht's."""
    if not config.hidden_physics:
        return HiddenPhysics()
    return sample_hidden_physics(physics_generator(config.seed, index))


def collect_episode(config: CollectConfig, index: int) -> dict:
    """Run one episode and return it as arrays (an ``EpisodeBuffer``'s fields)."""
    seq = episode_seed(config.seed, index)
    physics_seed = int(seq.generate_state(1)[0])
    rng = np.random.default_rng(seq)
    physics = episode_physics(config, index)
    sim = PushTSim(config.image_size, config.frameskip, config.action_scale, physics=physics)
    policy = make_policy(config.policy, config.action_scale)
    policy.reset(rng)
    state = sim.reset(seed=physics_seed)

    n = config.max_steps
    size = config.image_size
    pixels = np.empty((n + 1, size, size, 3), np.uint8)
    agent_pos = np.empty((n + 1, 2))
    agent_vel = np.empty((n + 1, 2))
    block_pose = np.empty((n + 1, 3))
    coverage = np.empty(n + 1)
    target = np.empty((n + 1, 2))
    contact = np.empty(n + 1, bool)
    actions = np.empty((n, 2), np.float32)

    def record(t: int, aim: np.ndarray) -> None:
        pixels[t] = sim.frame()
        agent_pos[t], agent_vel[t], block_pose[t] = state.agent_pos, state.agent_vel, state.block_pose
        coverage[t] = sim.coverage()
        target[t] = aim
        contact[t] = sim.agent_block_gap() <= 1.0

    record(0, state.agent_pos)
    steps = n
    for t in range(n):
        if t % config.frameskip == 0:
            action = np.asarray(policy(state), dtype=np.float32)
            aim = sim.target_for(action)
        actions[t] = action
        sim.physics_step(aim)
        state = sim.state()
        record(t + 1, aim)
        if coverage[t + 1] > SUCCESS_COVERAGE:
            steps = t + 1
            break
    sim.close()
    rewards = np.clip(coverage[1 : steps + 1] / SUCCESS_COVERAGE, 0.0, 1.0)
    terminations = coverage[1 : steps + 1] > SUCCESS_COVERAGE
    truncations = np.zeros(steps, bool)
    truncations[-1] = not terminations[-1]
    obs = {"pixels": pixels, "agent_pos": agent_pos, "agent_vel": agent_vel, "block_pose": block_pose}
    infos = {"coverage": coverage, "target": target, "contact": contact}
    if config.hidden_physics:
        infos["physics"] = np.tile(physics.vector(), (n + 1, 1))
    return {
        "id": index,
        "seed": physics_seed,
        "observations": {k: v[: steps + 1] for k, v in obs.items()},
        "actions": actions[:steps],
        "rewards": rewards,
        "terminations": terminations,
        "truncations": truncations,
        "infos": {k: v[: steps + 1] for k, v in infos.items()},
    }


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
    from minari import __version__ as minari_version
    from minari.data_collector import EpisodeBuffer
    from minari.dataset.minari_storage import MinariStorage
    from tqdm import tqdm

    config.validate()
    if workers < 1:
        raise LeWorldError(f"workers must be at least 1, got {workers}")
    out = Path(out).absolute()
    check_output(out, overwrite)

    partial = out.parent / f".{out.name}.partial-{uuid.uuid4().hex[:8]}"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        partial.mkdir()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            storage = MinariStorage.new(
                partial / DATA_SUBDIR,
                observation_space=observation_space(config.image_size),
                action_space=ACTION_SPACE,
                data_format="hdf5",
                jpeg_encoding=config.jpeg,
            )
        storage.update_metadata(
            {
                "dataset_id": f"leworld-pusht-{'hidden-' if config.hidden_physics else ''}{config.policy}-v0",
                "minari_version": minari_version,
                "algorithm_name": config.policy,
                "author": {"LeWorld"},
                "code_permalink": "leworld collect",
                "description": (
                    ("Hidden physics per episode (infos/physics). " if config.hidden_physics else "")
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
        )
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
        if out.exists():  # --overwrite: swap, then drop the old dataset
            old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
            out.rename(old)
            partial.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            partial.rename(out)
    except OSError as err:
        raise LeWorldError(f"cannot write {out}: {err.strerror or err}") from None
    finally:
        if partial.exists():
            shutil.rmtree(partial, ignore_errors=True)
    return out
