"""How well each scripted data policy solves gym-pusht's fixed-goal task: the privileged ceiling.

Every episode is ``leworld collect``'s episode ``i`` of the seed (same starts for every policy, the
collector's own seeding), run for up to 300 physics steps with the policy seeing the exact state.
Success is gym-pusht's (coverage > 0.95 at any step; the collector stops there); the LeWM pose test
(block within 20 px and pi/9 of the goal at any step) is reported beside it. Steps/s counts the
policy's own planning, the simulator and drawing 8 px frames, on one process.

    python benchmarks/policy_success.py --policy expert --episodes 200 [--seed 0] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from agents.evaluate import wilson_interval
from leworld_env.sim.episodes import EpisodeConfig, collect_episode
from leworld_env.sim.policies import POLICIES
from leworld_env.sim.pusht_sim import lewm_success
from numba_kernels.pusht_raster import GOAL_POSE
from world_models.files import atomic_write_bytes


def measure(policy: str, episodes: int, seed: int, max_steps: int = 300) -> dict:
    """Success rate (with its 95 % interval), steps to success and steps/s of ``policy``."""
    config = EpisodeConfig(policy=policy, image_size=8, max_steps=max_steps, seed=seed)
    wins, pose_wins, steps_to_success, physics_steps = 0, 0, [], 0
    began = time.perf_counter()
    for index in tqdm(range(episodes), desc=policy, unit="episode"):
        episode = collect_episode(config, index)
        steps = len(episode["actions"])
        physics_steps += steps
        blocks = episode["observations"]["block_pose"]
        if episode["terminations"][-1]:
            wins += 1
            steps_to_success.append(steps)
        pose_wins += bool(np.any(lewm_success(blocks, GOAL_POSE)))
    seconds = time.perf_counter() - began
    return {
        "policy": policy,
        "episodes": episodes,
        "seed": seed,
        "success_rate": wins / episodes,
        "success_interval": wilson_interval(wins, episodes),
        "lewm_pose_rate": pose_wins / episodes,
        "mean_steps_to_success": float(np.mean(steps_to_success)) if steps_to_success else None,
        "physics_steps_per_second": physics_steps / seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--policy", choices=sorted(POLICIES), default="expert")
    parser.add_argument("--episodes", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_args()
    result = measure(args.policy, args.episodes, args.seed)
    low, high = result["success_interval"]
    print(
        f"{result['policy']}: success {result['success_rate']:.1%} (95% {low:.1%} - {high:.1%}) over "
        f"{result['episodes']} episodes; LeWM pose test {result['lewm_pose_rate']:.1%}; mean steps to "
        f"success {result['mean_steps_to_success']}; {result['physics_steps_per_second']:.0f} physics steps/s"
    )
    if args.json:
        atomic_write_bytes(args.json, json.dumps(result, indent=2).encode())


if __name__ == "__main__":
    main()
