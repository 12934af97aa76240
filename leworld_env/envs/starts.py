"""The bank of real start and goal states the environments draw episodes from.

A bank is a ``starts.safetensors`` file (numpy arrays, no pickle) beside a
model's weights:

* ``start`` float64 (N, 5): agent x, y, block x, y (px), block angle in [0, 2 pi);
* ``goal`` float64 (N, 5): the state of the same real episode ``goal_offset``
  physics steps later (the LeWM protocol's goal);
* metadata (strings): ``goal_offset``, ``seed``, ``episodes``, ``policy``, ``stride``.

Pairs come from :func:`leworld_env.sim.episodes.collect_episode` runs (gym-pusht
physics, a scripted policy) under a seed that the shipped model was not
trained on, one pair every ``stride`` physics steps. A pair whose start already
passes the LeWM success test against its goal is dropped: it would be an
episode won before the first action. A model folder without its own bank uses
the default model's (the states are physical, not tied to a model).

Rebuild the shipped bank with ``python -m leworld_env.envs.starts OUT_FOLDER``.
"""

from __future__ import annotations

import argparse
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
    """

    start: np.ndarray
    goal: np.ndarray
    goal_offset: int
    source: str = ""

    def __len__(self) -> int:
        return int(self.start.shape[0])

    def draw(self, rng: np.random.Generator) -> int:
        """An index into the bank, drawn from ``rng``."""
        return int(rng.integers(len(self)))


def bank_from_episodes(episodes: list[dict], goal_offset: int = GOAL_OFFSET, stride: int = 10) -> StartBank:
    """Pairs (state at t, state at t + goal_offset) from collected episodes, one every ``stride`` steps."""
    starts, goals = [], []
    for episode in episodes:
        obs = episode["observations"]
        states = np.concatenate([obs["agent_pos"], obs["block_pose"]], axis=1)
        for t in range(0, states.shape[0] - goal_offset, stride):
            start, goal = states[t], states[t + goal_offset]
            if not lewm_success(start[2:], goal[2:]):
                starts.append(start)
                goals.append(goal)
    if not starts:
        raise LeWorldError("no usable start/goal pairs: episodes too short or the block never moved")
    return StartBank(np.array(starts), np.array(goals), goal_offset)


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
    tensors = {"start": np.ascontiguousarray(bank.start), "goal": np.ascontiguousarray(bank.goal)}
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
        array = tensors.get(name)
        if array is None:
            raise LeWorldError(f"{path}: missing tensor {name!r} (expected float64 [N, 5])")
        if array.dtype != np.float64 or array.ndim != 2 or array.shape[1] != 5 or array.shape[0] < 1:
            raise LeWorldError(f"{path}: tensor {name!r} must be float64 [N >= 1, 5], got {array.dtype} {array.shape}")
        if not np.all(np.isfinite(array)):
            raise LeWorldError(f"{path}: tensor {name!r} holds NaN or inf values")
    if tensors["start"].shape != tensors["goal"].shape:
        raise LeWorldError(f"{path}: 'start' {tensors['start'].shape} and 'goal' {tensors['goal'].shape} differ")
    offset = _read_metadata(data).get("goal_offset", str(GOAL_OFFSET))
    if not offset.isdigit() or int(offset) < 1:
        raise LeWorldError(f"{path}: metadata goal_offset must be a positive integer, got {offset!r}")
    return StartBank(tensors["start"], tensors["goal"], int(offset), str(path))


def _read_metadata(data: bytes) -> dict[str, str]:
    import json

    header_len = int.from_bytes(data[:8], "little")
    return json.loads(data[8 : 8 + header_len]).get("__metadata__", {}) or {}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Build a start-state bank from fresh real PushT episodes.")
    parser.add_argument("out", type=Path, help="model folder to write starts.safetensors into")
    parser.add_argument("--episodes", type=int, default=60)
    parser.add_argument("--seed", type=int, default=2027)
    parser.add_argument("--stride", type=int, default=10)
    args = parser.parse_args(argv)
    bank, meta = build_start_bank(args.episodes, args.seed, stride=args.stride)
    save_start_bank(args.out / STARTS_FILE, bank, meta)
    print(f"{args.out / STARTS_FILE}: {len(bank)} start/goal pairs from {args.episodes} episodes (seed {args.seed})")


if __name__ == "__main__":
    main()
