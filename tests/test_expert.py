"""The scripted expert: the privileged ceiling for every learned agent on gym-pusht's fixed-goal task."""

from __future__ import annotations

import numpy as np
import pytest

from leworld_env.sim.episodes import EpisodeConfig, collect_episode
from leworld_env.sim.policies import make_policy
from numba_kernels.pusht_geometry import tee_coverage
from world_models.errors import ArgumentError


def solved(episode: dict) -> bool:
    """gym-pusht's success at the episode's last step (collection stops there on success)."""
    block = episode["observations"]["block_pose"][-1]
    return bool(episode["terminations"][-1]) and tee_coverage(block) > 0.95


@pytest.mark.parametrize("index", [0, 1, 2])
def test_expert_solves_seeded_gym_pusht_episodes(index):
    config = EpisodeConfig(policy="expert", image_size=8, max_steps=300, seed=0)
    episode = collect_episode(config, index)
    assert solved(episode), f"episode {index}: coverage {episode['infos']['coverage'][-1]:.3f}"
    assert len(episode["actions"]) < 300  # it ended on success, before the budget


def test_noisy_expert_is_noisy_and_a_pure_function_of_its_seed():
    config = EpisodeConfig(policy="noisy-expert", image_size=8, max_steps=60, seed=3)
    first, again = collect_episode(config, 0), collect_episode(config, 0)
    np.testing.assert_array_equal(first["actions"], again["actions"])
    plain = collect_episode(EpisodeConfig(policy="expert", image_size=8, max_steps=60, seed=3), 0)
    assert plain["seed"] == first["seed"]  # same start, other actions: the noise
    assert not np.array_equal(plain["actions"][: len(first["actions"])], first["actions"][: len(plain["actions"])])


def test_unknown_policy_names_the_choices():
    with pytest.raises(ArgumentError, match="expert"):
        make_policy("expret")
