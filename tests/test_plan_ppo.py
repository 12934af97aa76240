"""PPO from the distilled planner, in a dream where one action is a whole plan (agents.plan_ppo)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import world_models
from agents.distill import DistilledPlanner, Refinement, load_distilled, shipped_distilled
from agents.plan_ppo import (
    PlanDreamVecEnv,
    PlanPPOConfig,
    load_student_into,
    plan_ppo_class,
    student_from_policy,
    student_hidden,
    tanh_gelu,
    train_plan_ppo,
)
from leworld_env.envs.starts import load_start_bank
from leworld_env.envs.task import open_start_bank
from tests.test_distill import _random_weights
from world_models.errors import ArgumentError


@pytest.fixture(scope="module")
def wm():
    return world_models.load()


@pytest.fixture(scope="module")
def bank(wm):
    return open_start_bank(wm)


def _env(wm, bank, student, **kwargs) -> PlanDreamVecEnv:
    return PlanDreamVecEnv(wm, bank.start[:32], bank.goal[:32], student, **kwargs)


def test_a_plan_step_costs_what_the_planner_says_and_episodes_end_after_their_plans(wm, bank):
    """The env's reward is minus the planner's own cost of the plan from the same history (the CEM code
    path, not the env's); "final" pays only after the episode's last plan; after ``plans`` plans an
    episode ends (truncated, its last observation kept) and starts again from a bank pair."""
    student = DistilledPlanner(wm, _random_weights(wm.config, 5), horizon=5)
    env = _env(wm, bank, student, num_envs=4, plans=2, reward="every", seed=0)
    observation = env.reset()
    assert observation.shape == (4, env.observation_space.shape[0]) and env.action_space.shape == (10,)
    plans = np.random.default_rng(0).normal(0, 0.5, (4, 5, 2)).astype(np.float32)
    histories = [{"z": env.z[i], "a": env.a[i], "goal": env.goal[i], "goal_pose": None} for i in range(4)]
    expected = [student.standardised_costs(histories[i], plans[i : i + 1])[0] for i in range(4)]
    _, reward, done, _ = env.step(plans.reshape(4, 10))
    np.testing.assert_allclose(-reward, expected, rtol=1e-4)
    assert not done.any()
    final = _env(wm, bank, student, num_envs=4, plans=2, reward="final", seed=0)
    final.reset()
    _, first, done, _ = final.step(plans.reshape(4, 10))
    assert np.all(first == 0) and not done.any()
    observation, second, done, infos = final.step(plans.reshape(4, 10))
    assert done.all() and np.all(second < 0)
    assert all(info["TimeLimit.truncated"] and info["episode"]["l"] == 2 for info in infos)
    assert not np.array_equal(infos[0]["terminal_observation"], observation[0])
    np.testing.assert_array_equal(final.a, 0.0)  # a fresh start: no actions in the history
    with pytest.raises(ArgumentError, match="reward must be one of"):
        _env(wm, bank, student, reward="probe")


def test_the_bank_pairs_drawn_follow_the_seed(wm, bank):
    student = DistilledPlanner(wm, _random_weights(wm.config, 5), horizon=5)
    one, two, other = (_env(wm, bank, student, num_envs=8, seed=s) for s in (3, 3, 4))
    np.testing.assert_array_equal(one.reset(), two.reset())
    other.reset()
    assert not np.array_equal(one.goal, other.goal)


def test_ppo_starts_from_the_students_plans_and_writes_them_back(wm, bank):
    """The PPO actor initialised from a student plans as the student does (deterministic predict = the
    student's clipped plan), and the actor read back is the student, weight for weight."""
    weights = _random_weights(wm.config, 5, hidden=16)
    weights["layer1.weight"] *= 20  # plans reaching past the action box: both clip the same way
    student = DistilledPlanner(wm, weights, horizon=5, refinement=Refinement(1, 8, 2, 0.2))
    env = _env(wm, bank, student, num_envs=4)
    kwargs = {"net_arch": {"pi": student_hidden(student), "vf": [8]}, "activation_fn": tanh_gelu()}
    agent = plan_ppo_class()("MlpPolicy", env, n_steps=4, batch_size=8, policy_kwargs=kwargs, device="cpu", seed=0)
    load_student_into(agent.policy, student)
    observation = env.reset()
    action, _ = agent.predict(observation, deterministic=True)
    expected = student._clip(student.plans(observation)).reshape(4, 10)
    assert np.any(expected == student._high[0]) or np.any(expected == student._low[0])
    np.testing.assert_allclose(action, expected, atol=1e-5)
    back = student_from_policy(agent.policy, student, {"algo": "ppo-plan"})
    for (w, b), (w0, b0) in zip(back.layers, student.layers, strict=True):
        np.testing.assert_array_equal(w, w0)
        np.testing.assert_array_equal(b, b0)
    assert back.refinement == student.refinement and back.info == {"algo": "ppo-plan"}


def test_tiny_plan_ppo_run_trains_the_shipped_student_and_writes_a_distilled_folder(wm, tmp_path):
    """A few hundred plans of PPO from the shipped student: the written folder loads as a distilled
    planner (the student's refinement kept), its weights moved from the student's, and the run logged the
    real-twin success and the dream's cost beside PPO's own curves."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    config = PlanPPOConfig(
        out=out, bank_episodes=2, n_envs=8, n_timesteps=128, n_steps=8, batch_size=32, n_epochs=2,
        learning_rate=1e-3, eval_every=64, eval_episodes=2, progress=False,
    )  # fmt: skip
    final = train_plan_ppo(config)
    trained, source = load_distilled(final, wm), load_distilled(shipped_distilled(), wm)
    assert trained.refinement == source.refinement and trained.info["algo"] == "ppo-plan"
    assert trained.info["plans_trained"] >= 128
    assert any(not np.allclose(w, w0) for (w, _), (w0, _) in zip(trained.layers, source.layers, strict=True))
    assert len(load_start_bank(out / "train_starts.safetensors")) > 0
    events = EventAccumulator(str(next((out / "tb").glob("*")))).Reload()
    tags = set(events.Tags()["scalars"])
    assert {"eval/real_success_rate", "eval/dream_final_cost", "rollout/ep_rew_mean"} <= tags
    cost = events.Scalars("eval/dream_final_cost")
    assert len(cost) >= 2 and all(0 < e.value < 10 for e in cost)


def test_leworld_train_agent_ppo_plan_writes_a_planner_and_refuses_bad_input(tmp_path):
    """``leworld train-agent --algo ppo-plan`` runs the YAML's recipe and writes a distilled planner that
    ``leworld eval --agent`` reads; a bad field names the file, the field and what was expected, and
    ``--resume`` (no checkpoints) is refused, each in one line."""
    import yaml

    from tests.conftest import run_cli
    from tests.test_collect import assert_one_line_error

    entry = yaml.safe_load((Path(__file__).parents[1] / "agents/hyperparams/ppo-plan.yml").read_text())
    tiny = {**entry["LeWorld-PushT-v0"], "bank_episodes": 2, "n_envs": 8, "n_steps": 8, "batch_size": 32, "n_epochs": 1}
    hyperparams = tmp_path / "tiny.yml"
    hyperparams.write_text(yaml.safe_dump({"LeWorld-PushT-v0": tiny}))
    out = tmp_path / "run"
    args = ("train-agent", "--algo", "ppo-plan", "--hyperparams", str(hyperparams), "--out", str(out))
    result = run_cli(*args, "--timesteps", "64", "--eval-every", "64", "--eval-episodes", "1", "--no-progress")
    assert result.returncode == 0, result.stderr
    assert (out / "model" / "policy.json").is_file() and f"leworld eval --agent {out / 'model'}" in result.stdout
    evaluation = run_cli("eval", "--agent", str(out / "model"), "--episodes", "1", "--refine-plans", "1")
    assert evaluation.returncode == 0, evaluation.stderr
    bad = tmp_path / "bad.yml"
    bad.write_text(yaml.safe_dump({"LeWorld-PushT-v0": {**tiny, "reward": "probe"}}))
    result = run_cli("train-agent", "--algo", "ppo-plan", "--hyperparams", str(bad), "--out", str(tmp_path / "b"))
    assert_one_line_error(result, str(bad), "'reward'", "'final'")
    assert_one_line_error(run_cli(*args, "--resume"), "--algo ppo-plan keeps no checkpoints")
