"""Replay an evaluated episode in a plain gym-pusht ``PushTEnv`` and check its outcome.

``leworld eval --json`` keeps, for every real-twin episode, the start (with the agent's
velocity), the 5 numbers gym-pusht's ``reset_to_state`` takes for it, the goal and the
absolute PD target of every physics step. :func:`replay_episode` needs nothing of
LeWorld's simulator: it resets gym-pusht's own env to ``reset_to_state``, sets the
agent's velocity (as :class:`~leworld_env.sim.pusht_sim.PushTSim` does after gym-pusht's
settling sub-step), steps every target, and applies LeWM's success test after every
``frameskip`` physics steps (one env step), as the evaluation did::

    from agents.replay import replay_results
    for outcome, episode in zip(replay_results("eval.json"), results["results"]):
        assert outcome.success == episode["success"]
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from gym_pusht.envs import PushTEnv

from leworld_env.envs.settings import check_positive_int
from leworld_env.sim.pusht_sim import lewm_eval_state, lewm_success
from world_models.errors import ArgumentError, LeWorldError


@dataclass(frozen=True)
class ReplayOutcome:
    """What a replay in plain gym-pusht gives.

    Attributes:
        success: LeWM's strict test held at some env step (0 = the start).
        success_block: the block-only test held at some env step.
        success_step: the first env step the strict test held (``None``: never).
        success_coverage: gym-pusht's own success (coverage > 0.95, its ``info["is_success"]``) at
            some env step after the start: the ``pusht`` protocol's test.
        final_state: gym-pusht's state observation at the end (agent x, y, block x, y, angle).
    """

    success: bool
    success_block: bool
    success_step: int | None
    success_coverage: bool
    final_state: np.ndarray


def _vector(episode: dict[str, Any], key: str, width: int) -> np.ndarray:
    """A float64 vector of ``width`` numbers from the episode's ``key``, or an ``ArgumentError`` naming it."""
    if key not in episode:
        raise ArgumentError(f"episode has no {key!r}; replay needs a leworld eval --json episode of the real twin")
    value = np.asarray(episode[key], dtype=np.float64)
    if value.shape != (width,) or not np.all(np.isfinite(value)):
        raise ArgumentError(f"episode {key!r} must be {width} finite numbers, got {episode[key]!r}")
    return value


def _targets(episode: dict[str, Any], frameskip: int) -> np.ndarray:
    """The episode's absolute targets (P, 2), P a multiple of ``frameskip``."""
    if episode.get("targets") is None:
        raise ArgumentError("episode has no 'targets' (a dream episode?); only real-twin episodes replay")
    targets = np.asarray(episode["targets"], dtype=np.float64).reshape(-1, 2)
    if not np.all(np.isfinite(targets)) or len(targets) % frameskip:
        raise ArgumentError(
            f"episode 'targets' must be finite (x, y) pairs, a multiple of frameskip {frameskip}, got {len(targets)}"
        )
    return targets


def replay_episode(episode: dict[str, Any], frameskip: int = 5) -> ReplayOutcome:
    """Replay one ``leworld eval --json`` episode (a dict of its ``results`` list) in gym-pusht's
    ``PushTEnv`` and judge it as the evaluation did: the tests after every ``frameskip`` physics steps.

    For a ``lewm`` run compare ``success`` and ``success_block`` with the episode's; for a ``pusht``
    run, ``success_coverage`` with its ``success`` and ``success_block`` with its ``success_block``.
    """
    frameskip = check_positive_int("frameskip", frameskip)
    start = _vector(episode, "start", 7)
    reset_state = _vector(episode, "reset_to_state", 5)
    goal = _vector(episode, "goal", 5)
    targets = _targets(episode, frameskip)
    env = PushTEnv(obs_type="state")
    try:
        state, _ = env.reset(options={"reset_to_state": reset_state})
        env.agent.velocity = (float(start[5]), float(start[6]))
        states, covered = [np.asarray(state, np.float64)], False
        for k, target in enumerate(targets):
            state, _, _, _, info = env.step(target)
            if (k + 1) % frameskip == 0:
                states.append(np.asarray(state, np.float64))
                covered = covered or bool(info["is_success"])
    finally:
        env.close()
    trajectory = np.stack(states)
    strict = np.asarray(lewm_eval_state(trajectory, goal))
    block = np.asarray(lewm_success(trajectory[:, 2:5], goal[2:5]))
    first = int(np.argmax(strict)) if strict.any() else None
    return ReplayOutcome(bool(strict.any()), bool(block.any()), first, covered, trajectory[-1])


def replay_results(results: str | Path | dict[str, Any]) -> list[ReplayOutcome]:
    """Replay every episode of a ``leworld eval --json`` file (or its parsed dict) of the real twin."""
    if not isinstance(results, dict):
        try:
            results = json.loads(Path(results).read_text())
        except (OSError, ValueError) as err:
            raise LeWorldError(f"{results}: not a readable leworld eval --json file ({err})") from None
    if results.get("env") != "real":
        raise LeWorldError(f"only real-twin evaluations replay in gym-pusht; this one ran on {results.get('env')!r}")
    frameskip = int(results.get("frameskip", 5))
    return [replay_episode(episode, frameskip) for episode in results.get("results", [])]
