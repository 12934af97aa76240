"""The bank of real start and goal states the environments draw episodes from.

A bank is a ``starts.safetensors`` file (numpy arrays, no pickle) beside a
model's weights:

* ``start`` float64 (N, 5): agent x, y, block x, y (px), block angle in [0, 2 pi);
* ``start_velocity`` float64 (N, 2): the agent's velocity (px/s) at the start, which the
  real twin restores (LeWM's evaluation sets it too);
* ``goal`` float64 (N, 5): the state of the same real episode ``goal_offset``
  physics steps later (the LeWM protocol's goal);
* ``action_mean``, ``action_std`` float64 (2,): the mean and standard deviation of the
  relative actions of the bank's source episodes, per axis: the action statistics CEM
  standardises its samples with (LeWM's ``StandardScaler``; see :mod:`agents.planning`);
* metadata (strings): ``goal_offset``, ``seed``, ``episodes``, ``policy``, ``stride``.

Pairs come from :func:`leworld_env.sim.episodes.collect_episode` runs (gym-pusht
physics, a scripted policy: the same policy as the model's training data) under a
seed that the model was not trained on, one pair every ``stride`` physics steps.
A pair whose start already passes the block-only test against its goal is
dropped: it would be an episode (nearly) won before the first action. A model
folder without its own bank uses the default model's (the states are physical,
not tied to a model).

An old bank without ``start_velocity`` still loads: its starts are at rest (a
warning says so). One without ``action_mean`` / ``action_std`` gives no action
statistics (planners then sample in the env's own action units).

Rebuild the shipped bank with ``python -m leworld_env.starts OUT_FOLDER --policy noisy-expert``.
"""

from __future__ import annotations

import argparse
import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load, save

from leworld_env.sim.episodes import EpisodeConfig, collect_episode
from leworld_env.sim.pusht_sim import lewm_success
from world_models.config import MIN_IMAGE_SIZE
from world_models.errors import LeWorldError
from world_models.files import atomic_write_bytes

STARTS_FILE = "starts.safetensors"
GOAL_OFFSET = 25  # physics steps between a start and its dataset goal (LeWM's PushT protocol)


@dataclass(frozen=True)
class StartBank:
    """Real start states and, for each, the real state ``goal_offset`` physics steps later.

    Attributes:
        start: (N, 5) agent x, y, block x, y, block angle.
        goal: (N, 5) the same fields ``goal_offset`` physics steps later.
        goal_offset: physics steps from a start to its goal.
        source: where the bank was read from (for messages).
        start_velocity: (N, 2) the agent's velocity at each start (``None``: zeros, at rest).
        action_mean: (2,) mean relative action of the source episodes, or ``None`` (unknown).
        action_std: (2,) its standard deviation per axis, or ``None``.
    """

    start: np.ndarray
    goal: np.ndarray
    goal_offset: int
    source: str = ""
    start_velocity: np.ndarray | None = None
    action_mean: np.ndarray | None = None
    action_std: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.start_velocity is None:
            object.__setattr__(self, "start_velocity", np.zeros((len(self), 2)))

    def __len__(self) -> int:
        return int(self.start.shape[0])

    def draw(self, rng: np.random.Generator) -> int:
        """An index into the bank, drawn from ``rng``."""
        return int(rng.integers(len(self)))

    def start_state(self, index: int) -> np.ndarray:
        """Entry ``index``'s start with the agent's velocity: float64 (7,) agent x, y, block x, y, angle, vx, vy."""
        return np.concatenate([self.start[index], self.start_velocity[index]])

    def action_stats(self) -> tuple[np.ndarray, np.ndarray] | None:
        """``(mean, std)`` of the source episodes' relative actions, or ``None`` when the bank has none."""
        if self.action_mean is None or self.action_std is None:
            return None
        return self.action_mean.copy(), self.action_std.copy()


def episode_states(episode: dict) -> np.ndarray:
    """A recorded episode's states (T + 1, 7): agent x, y, block x, y, angle, agent vx, vy."""
    obs = episode["observations"]
    return np.concatenate([obs["agent_pos"], obs["block_pose"], obs["agent_vel"]], axis=1)


def bank_from_episodes(episodes: list[dict], goal_offset: int = GOAL_OFFSET, stride: int = 10) -> StartBank:
    """Pairs (state at t, state at t + goal_offset) from collected episodes, one every ``stride`` steps,
    with the start's agent velocity and the episodes' action statistics."""
    starts, goals = [], []
    for episode in episodes:
        states = episode_states(episode)
        for t in range(0, states.shape[0] - goal_offset, stride):
            start, goal = states[t], states[t + goal_offset]
            if not lewm_success(start[2:5], goal[2:5]):
                starts.append(start)
                goals.append(goal[:5])
    if not starts:
        raise LeWorldError("no usable start/goal pairs: episodes too short or the block never moved")
    mean, std = action_statistics(episodes)
    starts_array = np.array(starts)
    return StartBank(starts_array[:, :5], np.array(goals), goal_offset, "", starts_array[:, 5:7], mean, std)


def action_statistics(episodes: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """Per-axis mean and standard deviation (float64 (2,) each) of the episodes' recorded relative
    actions: the data's action column, one row per physics step, as a ``StandardScaler`` fits it."""
    actions = np.concatenate([np.asarray(e["actions"], dtype=np.float64) for e in episodes])
    if actions.size == 0:
        raise LeWorldError("no actions in the episodes: cannot compute action statistics")
    return actions.mean(axis=0), np.maximum(actions.std(axis=0), 1e-6)


def build_start_bank(
    episodes: int = 60, seed: int = 2027, policy: str = "weak-expert", stride: int = 10
) -> tuple[StartBank, dict[str, str]]:
    """Collect ``episodes`` real episodes and turn them into a bank (and its metadata)."""
    config = EpisodeConfig(policy=policy, image_size=MIN_IMAGE_SIZE, seed=seed)  # the bank keeps states, not frames
    runs = [collect_episode(config, i) for i in range(episodes)]
    bank = bank_from_episodes(runs, GOAL_OFFSET, stride)
    meta = {
        "goal_offset": str(GOAL_OFFSET),
        "seed": str(seed),
        "episodes": str(episodes),
        "policy": policy,
        "stride": str(stride),
    }
    return bank, meta


def save_start_bank(path: Path, bank: StartBank, metadata: dict[str, str]) -> None:
    """Write a bank atomically."""
    tensors = {
        "start": np.ascontiguousarray(bank.start),
        "start_velocity": np.ascontiguousarray(bank.start_velocity, dtype=np.float64),
        "goal": np.ascontiguousarray(bank.goal),
    }
    stats = bank.action_stats()
    if stats is not None:
        tensors["action_mean"], tensors["action_std"] = (np.ascontiguousarray(x, dtype=np.float64) for x in stats)
    atomic_write_bytes(Path(path), save(tensors, metadata={**metadata, "goal_offset": str(bank.goal_offset)}))


def load_start_bank(path: Path) -> StartBank:
    """Read and check a bank; any problem is a :class:`LeWorldError` naming the file and field."""
    path = Path(path)
    try:
        data = path.read_bytes()
        tensors = load(data)
    except FileNotFoundError:
        raise LeWorldError(f"{path}: no start-state bank here") from None
    except (SafetensorError, ValueError, OSError) as err:
        raise LeWorldError(f"{path}: not a readable safetensors start-state bank ({err})") from None
    for name in ("start", "goal"):
        _check_tensor(path, name, tensors.get(name), 5)
    if tensors["start"].shape != tensors["goal"].shape:
        raise LeWorldError(f"{path}: 'start' {tensors['start'].shape} and 'goal' {tensors['goal'].shape} differ")
    velocity = _start_velocity(path, tensors)
    mean, std = _action_stats(path, tensors)
    offset = _read_metadata(data).get("goal_offset", str(GOAL_OFFSET))
    if not offset.isdigit() or int(offset) < 1:
        raise LeWorldError(f"{path}: metadata goal_offset must be a positive integer, got {offset!r}")
    return StartBank(tensors["start"], tensors["goal"], int(offset), str(path), velocity, mean, std)


def _check_tensor(path: Path, name: str, array: np.ndarray | None, width: int, rows: int | None = None) -> None:
    """A ``LeWorldError`` unless ``array`` is finite float64 [N >= 1, width] (N = ``rows`` when given)."""
    if array is None:
        raise LeWorldError(f"{path}: missing tensor {name!r} (expected float64 [N, {width}])")
    shape_ok = array.ndim == 2 and array.shape[1] == width and array.shape[0] >= 1
    if array.dtype != np.float64 or not shape_ok or (rows is not None and array.shape[0] != rows):
        expected = f"[{rows if rows is not None else 'N >= 1'}, {width}]"
        raise LeWorldError(f"{path}: tensor {name!r} must be float64 {expected}, got {array.dtype} {array.shape}")
    if not np.all(np.isfinite(array)):
        raise LeWorldError(f"{path}: tensor {name!r} holds NaN or inf values")


def _start_velocity(path: Path, tensors: dict[str, np.ndarray]) -> np.ndarray | None:
    """The bank's ``start_velocity``, checked; ``None`` (at rest, with a warning) for an old bank without it."""
    velocity = tensors.get("start_velocity")
    if velocity is None:
        warnings.warn(
            f"{path}: an old start bank without 'start_velocity'; its starts are at rest "
            "(rebuild it with python -m leworld_env.starts FOLDER)",
            stacklevel=3,
        )
        return None
    _check_tensor(path, "start_velocity", velocity, 2, rows=tensors["start"].shape[0])
    return velocity


def _action_stats(path: Path, tensors: dict[str, np.ndarray]) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The bank's ``action_mean`` and ``action_std`` (2,), checked, or ``(None, None)`` when it has neither."""
    mean, std = tensors.get("action_mean"), tensors.get("action_std")
    if mean is None and std is None:
        return None, None
    if mean is None or std is None:
        raise LeWorldError(f"{path}: 'action_mean' and 'action_std' come together; only one is here")
    for name, array in (("action_mean", mean), ("action_std", std)):
        _check_tensor(path, name, array.reshape(1, -1), 2)
    if not np.all(std > 0):
        raise LeWorldError(f"{path}: tensor 'action_std' must be > 0, got {std.tolist()}")
    return mean.reshape(2), std.reshape(2)


def _read_metadata(data: bytes) -> dict[str, str]:
    header_len = int.from_bytes(data[:8], "little")
    return json.loads(data[8 : 8 + header_len]).get("__metadata__", {}) or {}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Build a start-state bank from fresh real PushT episodes.")
    parser.add_argument("out", type=Path, help="model folder to write starts.safetensors into")
    parser.add_argument("--episodes", type=int, default=60)
    parser.add_argument("--seed", type=int, default=2027)
    parser.add_argument("--stride", type=int, default=10)
    parser.add_argument(
        "--policy", default="weak-expert", help="the data policy the model trained on (the shipped model: noisy-expert)"
    )
    args = parser.parse_args(argv)
    bank, meta = build_start_bank(args.episodes, args.seed, policy=args.policy, stride=args.stride)
    save_start_bank(args.out / STARTS_FILE, bank, meta)
    mean, std = bank.action_stats()
    print(
        f"{args.out / STARTS_FILE}: {len(bank)} start/goal pairs from {args.episodes} episodes (seed {args.seed}); "
        f"action mean {np.round(mean, 4).tolist()}, std {np.round(std, 4).tolist()}"
    )


if __name__ == "__main__":
    main()
