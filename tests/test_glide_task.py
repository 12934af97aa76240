"""The delayed-glide task's data: its physics draw and its push-release-wander-push policy."""

import numpy as np
import pytest

from leworld_env.sim.episodes import EpisodeConfig, episode_physics, episode_policy, episode_seed
from leworld_env.sim.policies import GLIDE_DELAYS
from leworld_env.sim.pusht_sim import GLIDE_DAMPING, PushTSim, sample_glide_physics
from world_models.errors import LeWorldError


def run_glide_episode(damping: float, index: int, steps: int = 60) -> tuple[list[int], np.ndarray, int]:
    """(model steps where a release begins, block poses, the policy's delay) of one scripted episode."""
    physics_seed = int(episode_seed(5, index).generate_state(1)[0])
    policy = episode_policy(EpisodeConfig(policy="delayed-glide", seed=5), index)
    sim = PushTSim(64, 5, 100.0, physics={"damping": damping})
    state = sim.reset(seed=physics_seed)
    phases, poses = [], [state.block_pose.copy()]
    for _ in range(steps):
        action = policy(state)
        phases.append(policy.phase)
        state = sim.step(action)
        poses.append(state.block_pose.copy())
    sim.close()
    releases = [t for t in range(1, steps) if phases[t] == "release" and phases[t - 1] != "release"]
    return releases, np.array(poses), policy.delay


def test_glide_draw_gives_both_dampings_and_nothing_else():
    rng = np.random.default_rng(0)
    draws = [sample_glide_physics(rng) for _ in range(200)]
    dampings = {d.damping for d in draws}
    assert dampings == set(GLIDE_DAMPING)
    assert 60 < sum(d.damping > 0 for d in draws) < 140
    assert all(d.friction == 0.0 and d.block_mass == 1.0 for d in draws)
    config = EpisodeConfig(policy="delayed-glide", hidden_physics=True, physics_draw="glide", max_steps=500)
    assert {episode_physics(config, i).damping for i in range(20)} == set(GLIDE_DAMPING)


def test_the_standard_draw_is_gym_pushts_physics_every_episode():
    """The control of the glide task: the same data pipeline, physics recorded, nothing hidden."""
    from leworld_env.sim.collect import CollectConfig, physics_metadata
    from leworld_env.sim.pusht_sim import HiddenPhysics

    config = EpisodeConfig(policy="delayed-glide", hidden_physics=True, physics_draw="standard", max_steps=500)
    assert {episode_physics(config, i) for i in range(10)} == {HiddenPhysics()}
    meta = physics_metadata(CollectConfig(hidden_physics=True, physics_draw="standard"))
    assert meta["physics_draw"] == "standard" and meta["physics_ranges"]["damping"]["values"] == [0.0]


def test_unknown_physics_draw_is_named():
    with pytest.raises(LeWorldError, match=r"unknown physics draw 'sticky'.*glide, hidden"):
        EpisodeConfig(physics_draw="sticky").validate()


def test_the_block_stops_dead_without_damping_and_glides_with_it():
    releases, poses, delay = run_glide_episode(0.0, 1)
    assert delay in GLIDE_DELAYS and releases
    still = np.linalg.norm(poses[releases[0] + 10, :2] - poses[releases[0] + 1, :2])
    releases, poses, _ = run_glide_episode(0.2, 1)
    glide = np.linalg.norm(poses[releases[0] + 10, :2] - poses[releases[0] + 1, :2])
    assert still < 5.0 and glide > 30.0


def test_second_push_comes_after_the_delay():
    releases, _, delay = run_glide_episode(0.0, 1, steps=100)
    assert len(releases) == 2
    assert releases[1] - releases[0] >= delay + 2  # two release steps, the delay, then a new approach


def test_the_ablation_finds_both_releases_in_collected_data(tmp_path):
    """benchmarks/glide_memory_ablation.py starts its windows at the second release it reads from a
    dataset's infos/contact; in a collected episode both releases are there, the delay apart."""
    from benchmarks.glide_memory_ablation import releases
    from leworld_env.sim.collect import CollectConfig, collect
    from world_models.data.dataset import read_episode

    config = CollectConfig(
        policy="delayed-glide", episodes=1, max_steps=500, seed=3, hidden_physics=True, physics_draw="glide"
    )
    data = collect(config, tmp_path / "glide", progress=False)
    steps = read_episode(data, 0)
    found = releases(steps.contact)
    delay = episode_policy(EpisodeConfig(policy="delayed-glide", seed=3), 0).delay
    assert steps.contact.shape == (100,) and steps.contact.any() and not steps.contact.all()
    assert len(found) >= 2 and found[1] - found[0] >= delay + 2
    assert not steps.contact[found[0] : found[0] + delay].any()  # the wander keeps clear of the block


def test_the_real_twin_draws_the_glide_physics_when_told():
    from leworld_env.envs.pusht import LeWorldPushTRealEnv

    env = LeWorldPushTRealEnv(hidden_physics=True, physics_draw="glide")
    drawn = set()
    for seed in range(12):
        env.reset(seed=seed)
        drawn.add(float(env.sim.physics.damping))
    env.close()
    assert drawn == set(GLIDE_DAMPING)
    with pytest.raises(ValueError, match="physics_draw"):
        LeWorldPushTRealEnv(hidden_physics=True, physics_draw="sticky")


def test_the_glide_envs_run_the_shipped_memory_model_offline_on_numba():
    import gymnasium as gym

    import leworld_env

    dream = gym.make(leworld_env.GLIDE_ID)
    model = dream.unwrapped.world_model
    assert model.backend == "numba" and model.stateful and dream.spec.max_episode_steps == 100
    dream.reset(seed=0)
    for _ in range(4):
        dream.step(dream.action_space.sample())
    assert dream.unwrapped.episodes.memory.writes.sum() == 4 * dream.unwrapped.setup.predicts_per_step
    real = gym.make(leworld_env.GLIDE_REAL_ID)
    _, info = real.reset(seed=3)
    real.step(real.action_space.sample())
    _, _, _, _, info = real.step(real.action_space.sample())
    assert float(info["physics"][0]) in GLIDE_DAMPING
    assert real.unwrapped.memory.writes.sum() == 2 * real.unwrapped.setup.predicts_per_step
    dream.close()
    real.close()
