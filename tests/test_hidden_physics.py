"""Hidden per-episode physics: the simulator, ``leworld collect --hidden-physics``, LeWorld-PushT-Hidden-Real-v0,
and ``leworld bench memory``."""

from __future__ import annotations

import json

import gymnasium as gym
import h5py
import minari
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import leworld_env
from leworld_env.cli import main
from leworld_env.envs.pusht import LeWorldPushTRealEnv
from leworld_env.sim.collect import CollectConfig, collect
from leworld_env.sim.pusht_sim import (
    HIDDEN_PHYSICS_FIELDS,
    HIDDEN_PHYSICS_RANGES,
    HiddenPhysics,
    PushTSim,
    angle_difference,
    sample_hidden_physics,
)
from tests.conftest import run_cli

# The agent just below the tee's stem (block at rest, angle 0): one held action pushes it up.
PUSH_START = np.array([256.0, 345.0, 256.0, 200.0, 0.0])


def scripted_push(physics: HiddenPhysics | None, start: np.ndarray = PUSH_START, push=(0.0, -0.8)) -> np.ndarray:
    """Block poses: at rest, after one pushing model step, after one model step of the agent backing off."""
    sim = PushTSim(64, physics=physics)
    poses = [sim.reset(state=start).block_pose]
    sim.step(np.array(push))
    poses.append(sim.block_pose)
    sim.step(-np.asarray(push) / np.abs(push).max())
    poses.append(sim.block_pose)
    return np.array(poses)


# ------------------------------------------------------------------ the simulator
def test_default_physics_is_gym_pusht_bit_for_bit():
    """PushTSim() and HiddenPhysics() are gym-pusht unchanged, also after an episode with other physics."""
    from gym_pusht.envs import PushTEnv

    sims = [PushTSim(64), PushTSim(64, physics=HiddenPhysics()), PushTSim(64)]
    sims[2].reset(state=PUSH_START, physics={"damping": 0.1, "friction": 0.3, "block_mass": 2.0})
    sims[2].step(np.array([0.0, -1.0]))
    for sim in sims:
        sim.reset(state=PUSH_START, physics=HiddenPhysics() if sim is sims[2] else None)
    raw = PushTEnv(obs_type="state")
    raw.reset(options={"reset_to_state": PUSH_START})  # angle 0: gym-pusht's reset lands exactly
    for action in np.random.default_rng(0).uniform(-1, 1, (12, 2)) * [0.3, 1.0] - [0, 0.3]:
        target = sims[0].target_for(action)
        vectors = [sim.step(action).vector() for sim in sims]
        for _ in range(5):
            raw.step(target)
        expected = np.array([*raw.agent.position, *raw.block.position, raw.block.angle % (2 * np.pi)])
        for vector in vectors:
            np.testing.assert_array_equal(vector, expected)
    assert np.linalg.norm(vectors[0][2:4] - PUSH_START[2:4]) > 10  # the script did push the block


def test_same_physics_and_actions_give_identical_states():
    physics = HiddenPhysics(damping=0.05, friction=0.3, block_mass=2.0)
    actions = np.random.default_rng(1).uniform(-1, 1, (10, 2)) - [0, 0.4]
    runs = []
    for _ in range(2):
        sim = PushTSim(64, physics=physics)
        sim.reset(state=PUSH_START)
        runs.append(np.array([sim.step(a).vector() for a in actions]))
    np.testing.assert_array_equal(runs[0], runs[1])
    plain = PushTSim(64)
    plain.reset(state=PUSH_START)
    assert not np.array_equal(runs[0], np.array([plain.step(a).vector() for a in actions]))


def test_damping_makes_the_block_glide_after_the_push():
    still, glide = scripted_push(HiddenPhysics(damping=0.0)), scripted_push(HiddenPhysics(damping=0.1))
    assert np.linalg.norm(still[1, :2] - still[0, :2]) > 50  # the push moved it
    after_still = np.linalg.norm(still[2, :2] - still[1, :2])
    after_glide = np.linalg.norm(glide[2, :2] - glide[1, :2])
    assert after_still < 1.0 and after_glide > 20.0, (after_still, after_glide)


def test_friction_and_mass_change_how_a_push_turns_the_block():
    oblique = {"start": np.array([236.0, 340.0, 256.0, 200.0, 0.0]), "push": (0.6, -0.8)}
    slippery = scripted_push(HiddenPhysics(friction=0.0), **oblique)
    grippy = scripted_push(HiddenPhysics(friction=0.5), **oblique)
    turn = [np.degrees(angle_difference(p[1, 2], p[0, 2])) for p in (slippery, grippy)]
    assert turn[1] - turn[0] > 10.0, turn
    off_centre = {"start": np.array([266.0, 345.0, 256.0, 200.0, 0.0])}
    light = scripted_push(HiddenPhysics(block_mass=0.25), **off_centre)
    heavy = scripted_push(HiddenPhysics(block_mass=4.0), **off_centre)
    turn = [np.degrees(angle_difference(p[1, 2], p[0, 2])) for p in (light, heavy)]
    assert turn[1] - turn[0] > 5.0, turn


def test_sample_hidden_physics_follows_the_ranges_and_the_seed():
    draws = [sample_hidden_physics(np.random.default_rng(seed)) for seed in range(200)]
    assert sample_hidden_physics(np.random.default_rng(7)) == draws[7]
    values = np.array([d.vector() for d in draws])
    for column, name in enumerate(HIDDEN_PHYSICS_FIELDS):
        low, high, _ = HIDDEN_PHYSICS_RANGES[name]
        assert low <= values[:, column].min() and values[:, column].max() <= high
        assert len(np.unique(values[:, column])) == 200
    # log-uniform damping: about as many draws below 1e-3 as in [1e-3, 0.2]
    assert 0.3 < np.mean(values[:, 0] < 1e-3) < 0.65
    assert HiddenPhysics().vector().tolist() == [0.0, 0.0, 1.0]


@pytest.mark.parametrize(
    ("values", "match"),
    [
        ({"damping": -0.1}, r"damping must be in \[0, 1\].*got -0.1"),
        ({"damping": 1.5}, r"damping must be in \[0, 1\].*got 1.5"),
        ({"friction": float("nan")}, "friction must be a finite number >= 0, got nan"),
        ({"block_mass": 0}, "block_mass must be a finite number > 0, got 0.0"),
        ({"damping": "0.1"}, "damping must be a number, got '0.1'"),
        ({"mass": 2.0}, "unknown physics key.*'mass'.*known: damping, friction, block_mass"),
    ],
)
def test_bad_physics_is_a_value_error_naming_the_value(values, match):
    with pytest.raises(ValueError, match=match):
        HiddenPhysics.from_mapping(values)
    with pytest.raises(ValueError, match=match):
        PushTSim(64).reset(state=PUSH_START, physics=values)


# ------------------------------------------------------------------ collection
def test_collect_hidden_physics_is_recorded_and_reproducible(tmp_path):
    out = tmp_path / "cli"
    args = ("collect", "--hidden-physics", "--episodes", "3", "--max-steps", "15", "--image-size", "64")
    result = run_cli(*args, "--seed", "4", "--workers", "2", "--quiet", "--out", str(out))
    assert result.returncode == 0, result.stderr
    config = CollectConfig(episodes=3, max_steps=15, image_size=64, seed=4, hidden_physics=True)
    again = collect(config, tmp_path / "one-worker", workers=1, progress=False)
    episodes = list(minari.MinariDataset(out / "data").iterate_episodes())
    for a, b in zip(episodes, minari.MinariDataset(again / "data").iterate_episodes(), strict=True):
        for key in a.observations:
            np.testing.assert_array_equal(a.observations[key], b.observations[key])
        np.testing.assert_array_equal(a.actions, b.actions)
        for key in a.infos:
            np.testing.assert_array_equal(a.infos[key], b.infos[key])
    physics = [e.infos["physics"] for e in episodes]
    for p, episode in zip(physics, episodes, strict=True):
        assert p.shape == (len(episode.actions) + 1, 3) and p.dtype == np.float64
        assert np.all(p == p[0])
        HiddenPhysics(*p[0])  # valid values
    assert len({tuple(p[0]) for p in physics}) == 3
    # The recorded physics, seed and targets replay the episode.
    with h5py.File(out / "data" / "main_data.hdf5") as f:
        seed = int(f["episode_2"].attrs["seed"])
    sim = PushTSim(64)
    sim.reset(seed=seed, physics=HiddenPhysics(*physics[2][0]))
    for t in range(15):
        sim.physics_step(episodes[2].infos["target"][t + 1])
    np.testing.assert_array_equal(sim.block_pose, episodes[2].observations["block_pose"][15])
    meta = json.loads((out / "data" / "metadata.json").read_text())
    assert meta["dataset_id"] == "leworld-pusht-hidden-weak-expert-v0"
    lw = meta["leworld"]
    assert lw["hidden_physics"] is True and lw["physics_fields"] == list(HIDDEN_PHYSICS_FIELDS)
    assert lw["physics_ranges"]["damping"] == {"low": 1e-5, "high": 0.2, "distribution": "log-uniform"}
    # The starts and the policy's generator are those of the plain dataset with the same seed.
    plain = collect_one_plain(tmp_path)
    np.testing.assert_array_equal(plain.observations["agent_pos"][0], episodes[0].observations["agent_pos"][0])
    assert "physics" not in plain.infos


def collect_one_plain(tmp_path):
    config = CollectConfig(episodes=1, max_steps=5, image_size=64, seed=4)
    path = collect(config, tmp_path / "plain", progress=False)
    return next(iter(minari.MinariDataset(path / "data").iterate_episodes()))


# ------------------------------------------------------------------ the env
def test_hidden_env_passes_gymnasium_and_sb3_checkers():
    env = gym.make(leworld_env.HIDDEN_REAL_ID)
    assert env.unwrapped.hidden_physics
    gym_check_env(env.unwrapped, skip_render_check=False)
    sb3_check_env(env.unwrapped, warn=False)
    env.close()


def test_info_physics_is_drawn_per_reset_fixed_by_the_seed_and_not_observed():
    env = LeWorldPushTRealEnv(hidden_physics=True, goal="dataset")
    plain = LeWorldPushTRealEnv(goal="dataset")
    seen = []
    for seed in (0, 1, 2):
        obs, info = env.reset(seed=seed)
        plain_obs, plain_info = plain.reset(seed=seed)
        seen.append(info["physics"])
        assert info["physics"].shape == (3,) and info["physics"].dtype == np.float64
        HiddenPhysics(*info["physics"])
        # Same start and goal as the Markov twin: the physics is drawn after them, and not observed.
        np.testing.assert_array_equal(info["goal_state"], plain_info["goal_state"])
        np.testing.assert_array_equal(obs["observation"], plain_obs["observation"])
        assert "physics" not in plain_info and plain.sim.physics == HiddenPhysics()
    assert len({tuple(p) for p in seen}) == 3
    np.testing.assert_array_equal(env.reset(seed=1)[1]["physics"], seen[1])
    _, _, _, _, info = env.step(np.zeros(2, np.float32))
    np.testing.assert_array_equal(info["physics"], seen[1])  # constant over the episode
    _, info = env.reset(seed=1, options={"physics": {"damping": 0.02}, "bank_index": 3})
    assert info["physics"].tolist() == [0.02, 0.0, 1.0]
    plain.reset(seed=1, options={"physics": HiddenPhysics(friction=0.4)})
    assert plain.sim.physics.friction == 0.4


def test_bad_reset_options_of_the_hidden_env():
    env = LeWorldPushTRealEnv(hidden_physics=True)
    with pytest.raises(ValueError, match=r"unknown physics key.*'mass'"):
        env.reset(options={"physics": {"mass": 2.0}})
    with pytest.raises(ValueError, match=r"damping must be in \[0, 1\].*got -1.0"):
        env.reset(options={"physics": {"damping": -1.0}})
    with pytest.raises(ValueError, match=r"unknown reset option.*'physic'.*physics"):
        env.reset(options={"physic": {}})
    with pytest.raises(ValueError, match="hidden_physics must be True or False, got 'yes'"):
        LeWorldPushTRealEnv(hidden_physics="yes")


# ------------------------------------------------------------------ the bench
def test_bench_memory_quick_prints_ratios(capsys):
    assert main(["bench", "memory", "--quick"]) == 0
    out = capsys.readouterr().out
    assert "memory copy" in out
    for kernel in ("pack", "unpack", "read 4096 bits", "write 4096 bits", "read 128 words", "write 128 words"):
        for envs in ("1 env,", "64 envs,", "256 envs,"):
            assert any(kernel in line and envs in line and "x numpy" in line for line in out.splitlines()), (
                kernel,
                envs,
            )
    stateful = [line for line in out.splitlines() if "per-env bit memories" in line]
    assert len(stateful) == 1 and "16 envs" in stateful[0] and "x memory taken out" in stateful[0]
