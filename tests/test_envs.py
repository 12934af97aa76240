"""LeWorld-PushT-v0 and its real twin: Gymnasium and SB3 checks, vector envs, physics, bad input."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import leworld_env
from leworld_env.envs.pusht import LeWorldPushTEnv, LeWorldPushTRealEnv
from leworld_env.envs.starts import STARTS_FILE, load_start_bank
from leworld_env.envs.task import FIXED_GOAL_AGENT
from leworld_env.sim.pusht_sim import PushTSim
from numba_kernels.pusht_raster import GOAL_POSE
from world_models.errors import LeWorldError
from world_models.pose import features_to_pose, pose_features

DREAM, REAL = leworld_env.DREAM_ID, leworld_env.REAL_ID


def actions(n_steps: int, n_envs: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, (n_steps, n_envs, 2)).astype(np.float32)


# --------------------------------------------------------------------------- checkers
@pytest.mark.parametrize("env_id", [DREAM, REAL])
@pytest.mark.parametrize("goal", ["fixed", "dataset"])
def test_gymnasium_and_sb3_checkers_pass(env_id, goal):
    env = gym.make(env_id, goal=goal, reward="coverage")
    gym_check_env(env.unwrapped, skip_render_check=False)
    sb3_check_env(env.unwrapped, warn=False)
    env.close()


@pytest.mark.parametrize("reward", ["latent", "success"])
def test_checkers_pass_for_every_reward(reward):
    env = gym.make(DREAM, reward=reward)
    gym_check_env(env.unwrapped)
    sb3_check_env(env.unwrapped, warn=False)


def test_make_without_import_and_without_torch():
    """``leworld_env:`` ids import the plugin; the default numba-q4 backend never imports torch."""
    code = (
        "import sys, gymnasium as gym\n"
        "env = gym.make('leworld_env:LeWorld-PushT-v0')\n"
        "obs, info = env.reset(seed=0)\n"
        "obs, r, te, tr, info = env.step(env.action_space.sample())\n"
        "assert obs['observation'].shape == (64,), obs['observation'].shape\n"
        "print('torch' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


# --------------------------------------------------------------------------- dream semantics
def test_spaces_and_goal_vectors():
    env = LeWorldPushTEnv(goal="fixed")
    obs, info = env.reset(seed=3)
    d = env.setup.latent_dim
    assert obs["observation"].shape == (d,) and obs["achieved_goal"].shape == (d + 4,)
    # The fixed goal is gym-pusht's pose, exactly, with the agent parked clear of it.
    np.testing.assert_allclose(features_to_pose(obs["desired_goal"][d:]), GOAL_POSE, atol=1e-4)
    np.testing.assert_allclose(info["goal_state"], [*FIXED_GOAL_AGENT, *GOAL_POSE])
    # The achieved pose is the probe's reading of the latent.
    probed = env.world_model.probe(obs["achieved_goal"][None, :d])[0]
    np.testing.assert_allclose(obs["achieved_goal"][d:], pose_features(probed[2:5]), atol=1e-6)
    np.testing.assert_allclose(info["state"], probed, atol=1e-4)


def test_dataset_goal_comes_from_the_bank():
    env = LeWorldPushTEnv(goal="dataset")
    bank = env.setup.bank
    obs, info = env.reset(seed=0, options={"bank_index": 5})
    np.testing.assert_array_equal(info["goal_state"], bank.goal[5])
    d = env.setup.latent_dim
    np.testing.assert_allclose(features_to_pose(obs["desired_goal"][d:]), bank.goal[5, 2:5], atol=1e-4)
    expected = env.world_model.encode(leworld_env.envs.task.draw_frames(bank.goal[5][None], 64))[0]
    np.testing.assert_allclose(obs["desired_goal"][:d], expected, atol=1e-4)  # encoded in a batch of 2


def test_same_seed_same_episode_and_different_seed_differs():
    a, b = LeWorldPushTEnv(goal="dataset"), LeWorldPushTEnv(goal="dataset")
    acts = actions(6, 1)[:, 0]
    runs = []
    for env, seed in ((a, 11), (b, 11), (b, 12)):
        obs, _ = env.reset(seed=seed)
        trace = [obs["observation"]]
        for act in acts:
            trace.append(env.step(act)[0]["observation"])
        runs.append(np.stack(trace))
    np.testing.assert_array_equal(runs[0], runs[1])
    assert not np.allclose(runs[0][0], runs[2][0])


def test_reward_is_compute_reward_and_vectorised():
    env = LeWorldPushTEnv(reward="latent", goal="dataset")
    env.reset(seed=1)
    obs, reward, *_ = env.step([0.3, -0.2])
    assert reward == env.compute_reward(obs["achieved_goal"], obs["desired_goal"], {})
    assert reward < 0
    batch = env.compute_reward(
        np.stack([obs["achieved_goal"], obs["desired_goal"]]), np.stack([obs["desired_goal"]] * 2), [{}, {}]
    )
    assert batch.shape == (2,) and batch[0] == reward and batch[1] == 0.0


def test_coverage_reward_is_one_at_the_goal_pose():
    env = LeWorldPushTEnv(reward="coverage", goal="fixed")
    obs, _ = env.reset(seed=0)
    assert env.compute_reward(obs["desired_goal"], obs["desired_goal"], {}) == pytest.approx(1.0)
    moved = obs["desired_goal"].copy()
    moved[-4] += 100 / 512  # the block 100 px to the right
    assert env.compute_reward(moved, obs["desired_goal"], {}) < 0.5


def test_out_of_range_actions_are_clipped_and_nan_rejected():
    a, b = LeWorldPushTEnv(), LeWorldPushTEnv()
    a.reset(seed=4)
    b.reset(seed=4)
    np.testing.assert_array_equal(a.step([5.0, -7.0])[0]["observation"], b.step([1.0, -1.0])[0]["observation"])
    for bad in ([np.nan, 0.0], [0.0, np.inf]):
        with pytest.raises(ValueError, match="finite"):
            a.step(bad)
    with pytest.raises(ValueError, match="shape"):
        a.step([0.1, 0.2, 0.3])


def test_real_twin_repeats_the_action_like_the_dream():
    """frameskip 10 = the action applied for two model steps, its target taken afresh at each."""
    twin = LeWorldPushTRealEnv(frameskip=10)
    _, info = twin.reset(seed=0, options={"bank_index": 7})
    reference = PushTSim(image_size=64)
    reference.reset(state=[*info["state"], *info["agent_vel"]])  # the start's recorded agent velocity too
    _, _, _, _, info = twin.step([1.0, -0.5])
    reference.step([1.0, -0.5])
    reference.step([1.0, -0.5])
    np.testing.assert_array_equal(info["state"], reference.state().vector())


def test_frameskip_is_whole_model_steps():
    single, double = LeWorldPushTEnv(), LeWorldPushTEnv(frameskip=10)
    single.reset(seed=2)
    double.reset(seed=2)
    single.step([0.5, 0.5])
    twice = single.step([0.5, 0.5])[0]["observation"]
    np.testing.assert_allclose(double.step([0.5, 0.5])[0]["observation"], twice, atol=1e-6)
    with pytest.raises(ValueError, match="multiple of the model's frameskip 5"):
        LeWorldPushTEnv(frameskip=7)


def test_history_stacks_latents_oldest_first():
    env = LeWorldPushTEnv(history=3)
    obs, _ = env.reset(seed=0)
    d = env.setup.latent_dim
    assert obs["observation"].shape == (3 * d,)
    np.testing.assert_array_equal(obs["observation"][:d], obs["observation"][2 * d :])  # at rest: repeated
    after = env.step([1.0, 0.0])[0]
    np.testing.assert_array_equal(after["observation"][:d], obs["observation"][d : 2 * d])
    np.testing.assert_array_equal(after["observation"][2 * d :], after["achieved_goal"][:d])


def test_time_limit_through_gym_make_and_directly():
    env = gym.make(DREAM, max_episode_steps=3)
    env.reset(seed=0)
    ends = [env.step([0.0, 0.0])[3] for _ in range(3)]
    assert ends == [False, False, True]
    direct = LeWorldPushTEnv(max_episode_steps=2)
    direct.reset(seed=0)
    assert [direct.step([0.0, 0.0])[3] for _ in range(2)] == [False, True]


def test_render_draws_the_probed_state():
    env = LeWorldPushTEnv(render_mode="rgb_array", render_size=128)
    env.reset(seed=0)
    first = env.render()
    assert first.shape == (128, 128, 3) and first.dtype == np.uint8
    assert len(np.unique(first.reshape(-1, 3), axis=0)) > 4  # background, goal, block, agent, walls
    for _ in range(3):
        env.step([1.0, 1.0])
    assert not np.array_equal(env.render(), first)
    human = LeWorldPushTEnv(render_mode="human", render_size=64)  # SDL's dummy driver in tests
    human.reset(seed=0)
    assert human.render() is None
    human.close()
    assert env.metadata["render_fps"] > 0


# --------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"backend": "cuda"}, "unknown backend 'cuda'; choose one of: torch, numba, numba-q4, esp32, fpga"),
        ({"goal": "random"}, "unknown goal 'random'; choose one of: fixed, dataset"),
        ({"reward": "dense"}, "unknown reward 'dense'; choose one of: coverage, latent, success"),
        ({"backend": "esp32"}, "backend 'esp32' needs port="),
        ({"backend": "numba", "port": "loop://"}, "port= is for the hardware backends"),
        ({"history": 0}, "history must be a positive whole number"),
        ({"render_mode": "ansi"}, "unknown render_mode 'ansi'"),
    ],
)
def test_bad_arguments_name_the_valid_ones(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        LeWorldPushTEnv(**kwargs)


def test_batched_envs_check_render_size_too():
    from leworld_env.envs.vector import LeWorldPushTVectorEnv

    with pytest.raises(ValueError, match="render_size must be a whole number of pixels >= 8"):
        LeWorldPushTVectorEnv(num_envs=2, render_size=3)


def test_a_model_too_small_to_draw_for_is_refused():
    from world_models.config import ModelConfig
    from world_models.interface import WorldModel

    class Stub(WorldModel):
        backend = "stub"
        config = ModelConfig(image_size=4, patch_size=4)

    with pytest.raises(ValueError, match="image_size 4 is below the 8 px"):
        LeWorldPushTEnv(model=Stub())


def test_unknown_model_lists_shipped_ones():
    with pytest.raises(LeWorldError, match="pusht-tiny"):
        LeWorldPushTEnv(model="no-such-model")


def test_model_with_the_wrong_action_size_is_refused(tmp_path):
    import torch

    from tests.test_lewm import SMALL
    from world_models.lewm.folder import save_model
    from world_models.lewm.model import LeWM, init_weights
    from world_models.lewm.probe import Probe

    torch.manual_seed(0)
    config = dataclasses.replace(SMALL, action_dim=3)
    model = LeWM(config)
    init_weights(model)
    save_model(tmp_path / "m3", model, Probe(config.latent_dim, hidden=16), {"r2_val": {}})
    with pytest.raises(ValueError, match="action_dim is 3; PushT actions are 2-d"):
        LeWorldPushTEnv(model=tmp_path / "m3", backend="numba")


def test_a_model_folder_without_a_bank_uses_the_default_one(tmp_path):
    from tests.test_lewm import SMALL, small_model
    from world_models.lewm.folder import save_model
    from world_models.lewm.probe import Probe

    save_model(tmp_path / "m", small_model(), Probe(SMALL.latent_dim, hidden=16), {"r2_val": {}})
    env = LeWorldPushTEnv(model=tmp_path / "m", backend="numba", goal="dataset")
    assert env.setup.bank.source.endswith(f"pusht-tiny/{STARTS_FILE}")
    obs, _ = env.reset(seed=0)
    assert obs["observation"].shape == (SMALL.latent_dim,)


def test_bad_reset_options():
    env = LeWorldPushTEnv()
    with pytest.raises(ValueError, match="unknown reset option"):
        env.reset(options={"start_state": [0, 0, 0, 0, 0]})
    with pytest.raises(ValueError, match=r"bank_index must be an integer in \[0, "):
        env.reset(options={"bank_index": 10**9})
    with pytest.raises(ValueError, match="5 finite numbers"):
        env.reset(options={"start": [1, 2, 3]})
    with pytest.raises(ValueError, match="needs goal='dataset'"):
        env.reset(options={"goal_state": [100, 100, 200, 200, 0]})


def test_corrupt_start_bank_is_a_clean_error(tmp_path):
    bad = tmp_path / STARTS_FILE
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(LeWorldError, match=str(bad)):
        load_start_bank(bad)


# --------------------------------------------------------------------------- vector envs
def test_make_vec_matches_single_envs_under_the_same_seeds():
    n, steps = 64, 8
    vec = gym.make_vec(DREAM, num_envs=n, vectorization_mode="vector_entry_point", goal="dataset")
    assert vec.metadata["autoreset_mode"] == gym.vector.AutoresetMode.NEXT_STEP
    obs, _ = vec.reset(seed=100)
    acts = actions(steps, n, seed=5)
    trace, rewards = [obs["observation"]], []
    for k in range(steps):
        obs, reward, *_ = vec.step(acts[k])
        trace.append(obs["observation"])
        rewards.append(reward)
    single = LeWorldPushTEnv(goal="dataset")
    # Batched and single predicts round differently (a matrix product vs a matrix-vector
    # kernel); over 8 model steps the latents (unit scale) agree to 2e-3.
    for i in range(n):
        o, _ = single.reset(seed=100 + i)
        np.testing.assert_allclose(o["observation"], trace[0][i], atol=1e-4)
        for k in range(steps):
            o, r, te, tr, _ = single.step(acts[k, i])
            np.testing.assert_allclose(o["observation"], trace[k + 1][i], atol=2e-3)
            assert r == pytest.approx(rewards[k][i], abs=2e-2)
            if te or tr:
                break
    vec.close()


def test_vector_env_autoresets_on_the_next_step():
    """The step after an episode ends starts the next one: action ignored, reward 0, a fresh start
    drawn from the env's own generator (as a single env's next reset() would)."""
    runs = []
    for reset_action in (0.0, 1.0):
        vec = gym.make_vec(DREAM, num_envs=3, vectorization_mode="vector_entry_point", max_episode_steps=2)
        vec.reset(seed=40)
        vec.step(np.full((3, 2), 0.5))
        _, _, _, truncated, _ = vec.step(np.full((3, 2), 0.5))
        assert truncated.all()
        runs.append(vec.step(np.full((3, 2), reset_action)))  # the reset step
    (obs, reward, terminated, truncated, infos), (obs_other, *_) = runs
    assert not (terminated | truncated).any() and np.all(reward == 0)
    np.testing.assert_array_equal(infos["step"], 0)
    np.testing.assert_array_equal(obs["observation"], obs_other["observation"])  # the action was ignored
    single = LeWorldPushTEnv(max_episode_steps=2)
    for i in range(3):
        single.reset(seed=40 + i)
        single.step([0.5, 0.5])
        single.step([0.5, 0.5])
        fresh, fresh_info = single.reset()  # no seed: the same generator continues
        np.testing.assert_allclose(obs["observation"][i], fresh["observation"], atol=1e-4)
        np.testing.assert_array_equal(infos["goal_state"][i], fresh_info["goal_state"])


def test_sb3_vec_env_resets_on_the_same_step():
    from leworld_env.envs.sb3 import LeWorldSB3VecEnv

    venv = LeWorldSB3VecEnv(num_envs=4, max_episode_steps=3)
    venv.seed(9)
    first = venv.reset()
    assert first["observation"].shape == (4, 64)
    for _ in range(2):
        _, _, dones, _ = venv.step(np.zeros((4, 2)))
        assert not dones.any()
    obs, rewards, dones, infos = venv.step(np.zeros((4, 2)))
    assert dones.all() and rewards.dtype == np.float32
    for i in range(4):
        assert infos[i]["TimeLimit.truncated"] is True
        assert set(infos[i]["terminal_observation"]) == {"observation", "achieved_goal", "desired_goal"}
        assert not np.array_equal(infos[i]["terminal_observation"]["observation"], obs["observation"][i])
    assert venv.metadata["render_fps"] > 0
    # reset_infos describe the episodes that just began (as DummyVecEnv keeps them).
    assert all(venv.reset_infos[i]["step"] == 0 for i in range(4))
    with pytest.raises(ValueError, match="share their attributes"):
        venv.set_attr("render_size", 64, indices=[0])
    with pytest.raises(NotImplementedError, match="only compute_reward"):
        venv.env_method("reset", indices=[0])
    rewards = venv.env_method("compute_reward", obs["achieved_goal"], obs["desired_goal"], None, indices=[0])
    assert len(rewards) == 1 and rewards[0].shape == (4,)
    # Seeded like Gymnasium: env i of seed 9 is a single env seeded 9 + i.
    single = LeWorldPushTEnv()
    o, _ = single.reset(seed=11)
    np.testing.assert_allclose(first["observation"][2], o["observation"], atol=1e-4)


def test_ppo_runs_2048_steps_on_the_sb3_adapter(tmp_path):
    import torch
    from stable_baselines3 import PPO

    from leworld_env.envs.sb3 import LeWorldSB3VecEnv

    torch.manual_seed(0)
    venv = LeWorldSB3VecEnv(num_envs=16, max_episode_steps=20)
    agent = PPO("MultiInputPolicy", venv, n_steps=128, batch_size=256, n_epochs=2, seed=0, device="cpu")
    before = [p.detach().clone() for p in agent.policy.parameters()]
    agent.learn(2048)
    assert agent.num_timesteps >= 2048
    assert any(not torch.equal(a, b) for a, b in zip(before, agent.policy.parameters(), strict=True))
    agent.save(tmp_path / "ppo")
    action, _ = PPO.load(tmp_path / "ppo", device="cpu").predict(venv.reset(), deterministic=True)
    assert action.shape == (16, 2)


def test_her_sac_trains_on_the_sb3_adapter():
    from stable_baselines3 import SAC, HerReplayBuffer

    from leworld_env.envs.sb3 import LeWorldSB3VecEnv

    venv = LeWorldSB3VecEnv(num_envs=2, max_episode_steps=10, reward="success")
    agent = SAC(
        "MultiInputPolicy",
        venv,
        replay_buffer_class=HerReplayBuffer,
        replay_buffer_kwargs={"n_sampled_goal": 4, "goal_selection_strategy": "future"},
        learning_starts=40,
        batch_size=32,
        seed=0,
        device="cpu",
    )
    agent.learn(80)
    assert agent.num_timesteps >= 80


# --------------------------------------------------------------------------- the real twin
def test_real_twin_is_gym_pusht_physics():
    """The twin's states equal gym-pusht's own env driven by the same absolute targets."""
    from gym_pusht.envs import PushTEnv

    twin = LeWorldPushTRealEnv(goal="dataset")
    _, info = twin.reset(seed=0, options={"bank_index": 3})
    start = twin.setup.bank.start[3]
    reference = PushTSim(image_size=64)
    reference.reset(state=twin.setup.bank.start_state(3))  # with the start's recorded agent velocity
    raw: PushTEnv = reference.env
    np.testing.assert_allclose(info["state"], start, atol=1e-9)
    for act in actions(10, 1, seed=2)[:, 0]:
        _, _, terminated, _, info = twin.step(act)
        target = np.clip(np.asarray(raw.agent.position) + np.clip(act, -1, 1).astype(np.float64) * 100, 0, 512)
        for _ in range(5):
            raw.step(target)
        expected = np.array([*raw.agent.position, *raw.block.position, raw.block.angle % (2 * np.pi)])
        np.testing.assert_allclose(info["state"], expected, atol=1e-9)
        if terminated:
            break


def test_real_twin_and_dream_share_starts_goals_and_encoder():
    dream, real = LeWorldPushTEnv(goal="dataset"), LeWorldPushTRealEnv(goal="dataset")
    d_obs, d_info = dream.reset(seed=21)
    r_obs, r_info = real.reset(seed=21)
    np.testing.assert_array_equal(d_info["goal_state"], r_info["goal_state"])
    np.testing.assert_array_equal(d_obs["desired_goal"], r_obs["desired_goal"])
    np.testing.assert_array_equal(d_obs["observation"], r_obs["observation"])  # the same start frame, encoded
    # The real twin reports the true pose; the dream's is probed from the same latent.
    np.testing.assert_allclose(r_info["probed_state"], d_info["state"], atol=1e-4)
