"""The ``lewm`` protocol, exactly LeWM's: the strict test, restored velocities, standardised CEM,
both schedules, and results that replay in plain gym-pusht."""

from __future__ import annotations

import dataclasses
import json
import math
import warnings

import numpy as np
import pytest
from safetensors.numpy import save

import world_models
from agents.evaluate import PROTOCOLS, evaluate, load_agent, make_eval_env, run_episode
from agents.planning import CEMPlanner, RandomAgent, make_planner
from agents.replay import replay_episode, replay_results
from leworld_env.envs.pusht import LeWorldPushTEnv, LeWorldPushTRealEnv
from leworld_env.envs.starts import (
    STARTS_FILE,
    action_statistics,
    bank_from_episodes,
    load_start_bank,
    save_start_bank,
)
from leworld_env.sim.episodes import EpisodeConfig, collect_episode
from leworld_env.sim.pusht_sim import PushTSim, lewm_eval_state, lewm_success
from tests.conftest import run_cli
from tests.test_collect import assert_one_line_error
from world_models.errors import ArgumentError, LeWorldError
from world_models.locate import SHIPPED_DIR

GOAL = np.array([200.0, 220.0, 256.0, 256.0, 0.5])


@pytest.fixture(scope="module")
def wm():
    return world_models.load()


# --------------------------------------------------------------------------- the strict test
def test_strict_test_counts_the_agent_and_the_block_together():
    """LeWM's eval_state: ||(agent xy, block xy) - goal's|| < 20 px and block angle error < pi/9."""
    agent_off = np.add(GOAL, [30.0, 0, 0, 0, 0])  # block exactly on its goal, agent 30 px away
    assert not lewm_eval_state(agent_off, GOAL)
    assert lewm_success(agent_off[2:], GOAL[2:])  # the block-only test passes: a separate column
    assert lewm_eval_state(GOAL, GOAL)
    assert lewm_eval_state(np.add(GOAL, [10.0, 0, 10.0, 0, 0]), GOAL)  # norm 14.1 px
    assert not lewm_eval_state(np.add(GOAL, [15.0, 0, 15.0, 0, 0]), GOAL)  # each 15 px, together 21.2 px
    assert not lewm_eval_state(np.add(GOAL, [0, 0, 0, 0, math.pi / 9 + 1e-3]), GOAL)  # angle just over pi/9
    assert lewm_eval_state(np.add(GOAL, [0, 0, 0, 0, math.pi / 9 - 1e-3]), GOAL)
    assert lewm_eval_state([*GOAL[:4], 0.5 + 2 * math.pi - 0.1], GOAL)  # the angle wraps
    batch = lewm_eval_state(np.stack([GOAL, agent_off, GOAL]), GOAL)
    assert batch.tolist() == [True, False, True]
    with_velocity = np.concatenate([GOAL, [300.0, -40.0]])  # a 7-vector: the velocity is not judged
    assert lewm_eval_state(with_velocity, GOAL)
    with pytest.raises(ArgumentError, match="5 fields"):
        lewm_eval_state(GOAL[:3], GOAL)


def test_real_twin_reports_both_tests_from_its_exact_state():
    """Agent 30 px off a goal whose block pose is the start's: block-only success, strict failure."""
    env = LeWorldPushTRealEnv(goal="dataset")
    start = np.array([100.0, 100.0, 300.0, 300.0, 1.0])
    goal = np.add(start, [30.0, 0, 0, 0, 0])
    _, info = env.reset(seed=0, options={"start": start, "goal_state": goal})
    assert info["success_block"] is True and info["success_strict"] is False
    assert info["is_success"] is True  # is_success (and termination, and reward) stay the block-only test
    _, info = env.reset(seed=0, options={"start": start, "goal_state": start})
    assert info["success_strict"] is True and info["success_block"] is True
    dream = LeWorldPushTEnv(goal="dataset")
    _, info = dream.reset(seed=0)
    expected = bool(lewm_eval_state(info["state"], info["goal_state"]))
    assert info["success_strict"] is expected  # the dream judges its probed state
    assert "success_strict" not in LeWorldPushTEnv(goal="fixed").reset(seed=0)[1]


def test_the_lewm_protocol_runs_its_whole_budget():
    """A goal met at the first step ends a default episode, not a lewm-protocol one."""
    start = np.array([100.0, 100.0, 300.0, 300.0, 1.0])
    options = {"start": start, "goal_state": start}  # agent at rest, a zero action keeps it there
    default = LeWorldPushTRealEnv(goal="dataset")
    default.reset(seed=0, options=options)
    assert default.step([0.0, 0.0])[2] is True
    lewm = make_eval_env("real", PROTOCOLS["lewm"], "pusht-tiny", None)
    lewm.reset(seed=0, options=options)
    ends = [lewm.step([0.0, 0.0])[2:4] for _ in range(10)]
    assert ends == [(False, False)] * 9 + [(False, True)]  # 10 env steps = 50 physics steps
    with pytest.raises(ValueError, match="terminate_on_success must be True or False"):
        LeWorldPushTEnv(terminate_on_success="no")


# --------------------------------------------------------------------------- velocities in the bank
def test_the_real_twin_starts_with_the_banks_velocity():
    twin = LeWorldPushTRealEnv(goal="dataset")
    bank = twin.setup.bank
    index = int(np.argmax(np.linalg.norm(bank.start_velocity, axis=1)))
    assert np.linalg.norm(bank.start_velocity[index]) > 10  # px/s: a moving start
    _, info = twin.reset(seed=0, options={"bank_index": index})
    np.testing.assert_allclose(info["state"], bank.start[index], atol=1e-9)
    np.testing.assert_array_equal(info["agent_vel"], bank.start_velocity[index])
    assert info["targets"].shape == (0, 2)
    _, _, _, _, info = twin.step([0.0, 0.0])
    np.testing.assert_array_equal(info["targets"], np.repeat(bank.start[index][None, :2], 5, axis=0))
    at_rest = PushTSim(image_size=64)
    at_rest.reset(state=bank.start[index])
    at_rest.step([0.0, 0.0])
    assert not np.allclose(at_rest.state().vector(), info["state"], atol=1e-3)  # the velocity mattered


def test_the_bank_keeps_the_recorded_velocity_and_action_statistics(tmp_path):
    episode = collect_episode(EpisodeConfig(image_size=8, max_steps=80, seed=5), 0)
    bank = bank_from_episodes([episode], stride=10)
    observations = episode["observations"]
    states = np.concatenate([observations["agent_pos"], observations["block_pose"]], axis=1)
    assert len(bank) >= 3
    for start, velocity in zip(bank.start, bank.start_velocity, strict=True):
        (t,) = np.flatnonzero(np.all(states == start, axis=1))  # the recorded step this start is
        np.testing.assert_array_equal(velocity, observations["agent_vel"][t])
    assert np.any(bank.start_velocity != 0)
    mean, std = bank.action_stats()
    np.testing.assert_allclose(mean, episode["actions"].astype(np.float64).mean(axis=0))
    np.testing.assert_allclose(std, episode["actions"].astype(np.float64).std(axis=0))
    np.testing.assert_array_equal(action_statistics([episode])[0], mean)
    save_start_bank(tmp_path / STARTS_FILE, bank, {"seed": "5"})
    again = load_start_bank(tmp_path / STARTS_FILE)
    np.testing.assert_array_equal(again.start_velocity, bank.start_velocity)
    np.testing.assert_array_equal(again.action_stats()[1], std)
    np.testing.assert_array_equal(again.start_state(0), [*bank.start[0], *bank.start_velocity[0]])


def test_an_old_bank_without_velocity_loads_at_rest(tmp_path):
    states = np.array([[100.0, 100.0, 300.0, 300.0, 1.0], [120.0, 90.0, 250.0, 260.0, 2.0]])
    old = tmp_path / STARTS_FILE
    old.write_bytes(save({"start": states, "goal": states + 10}, metadata={"goal_offset": "25"}))
    with pytest.warns(UserWarning, match="without 'start_velocity'; its starts are at rest"):
        bank = load_start_bank(old)
    np.testing.assert_array_equal(bank.start_velocity, np.zeros((2, 2)))
    assert bank.action_stats() is None
    half = tmp_path / "half.safetensors"
    half.write_bytes(
        save({"start": states, "goal": states, "start_velocity": np.zeros((2, 2)), "action_std": np.ones(2)})
    )
    with pytest.raises(LeWorldError, match="'action_mean' and 'action_std' come together"):
        load_start_bank(half)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the shipped bank is a new one: no warning
        shipped = load_start_bank(SHIPPED_DIR / "pusht-tiny" / STARTS_FILE)
    assert len(shipped) > 100 and np.any(shipped.start_velocity != 0) and shipped.action_stats() is not None


# --------------------------------------------------------------------------- standardised CEM
def test_standardised_actions_map_back_to_env_actions(wm):
    mean, std = np.array([0.2, -0.1]), np.array([0.5, 0.25])
    planner = CEMPlanner(wm, action_mean=mean, action_std=std)
    actions = np.random.default_rng(0).uniform(-1, 1, (50, 2)).astype(np.float32)
    np.testing.assert_allclose(planner.to_env(planner.to_standardised(actions)), actions, atol=1e-6)
    np.testing.assert_allclose(planner.to_env(np.zeros(2)), mean, atol=1e-7)  # u = 0 is the data's mean
    np.testing.assert_allclose(planner.to_env([1.0, -2.0]), [0.7, -0.6], atol=1e-6)  # a = mean + std * u
    np.testing.assert_array_equal(planner.to_env([10.0, -10.0]), [1.0, -1.0])  # clipped to the box
    with pytest.raises(ArgumentError, match="action_std finite and > 0"):
        CEMPlanner(wm, action_mean=mean, action_std=[0.5, 0.0])


def test_cem_samples_with_the_datas_spread_and_still_finds_its_optimum(wm):
    """First-iteration samples spread like the data's actions (init std 1 in standardised units), and
    a known cost on env actions is still minimised exactly (the refit maps back)."""
    target = np.array([[0.5, -0.3]] * 5, np.float32)
    mean, std = np.array([0.1, -0.05]), np.array([0.3, 0.2])
    seen: list[np.ndarray] = []

    class Quadratic(CEMPlanner):
        def costs(self, env, sequences):
            seen.append(sequences)
            return np.sum((sequences - target) ** 2, axis=(1, 2))

    planner = Quadratic(wm, samples=2000, iterations=20, topk=100, seed=1, action_mean=mean, action_std=std)
    obs = {"achieved_goal": np.zeros(68, np.float32), "desired_goal": np.ones(68, np.float32)}
    action, _ = planner.predict(obs)
    first = seen[0].reshape(-1, 2)
    np.testing.assert_allclose(first.mean(axis=0), mean, atol=0.02)
    np.testing.assert_allclose(first.std(axis=0), std, rtol=0.05)
    assert np.all(np.abs(seen[-1]) <= 1.0)
    np.testing.assert_allclose(action, target[0], atol=0.02)


def test_cem_takes_the_banks_action_statistics_and_the_others_do_not(wm):
    cem = make_planner("cem", wm)
    bank = load_start_bank(SHIPPED_DIR / "pusht-tiny" / STARTS_FILE)
    np.testing.assert_allclose(cem.action_mean, bank.action_mean, rtol=1e-6)
    np.testing.assert_allclose(cem.action_std, bank.action_std, rtol=1e-6)
    for name in ("icem", "mppi"):
        other = make_planner(name, wm)
        np.testing.assert_array_equal(other.action_std, 1.0)
    assert make_planner("cem", wm, action_mean=[0, 0], action_std=[1, 1]).action_std.tolist() == [1.0, 1.0]


# --------------------------------------------------------------------------- schedules
@pytest.mark.parametrize(("replan_every", "plans"), [(5, 2), (1, 10), (2, 5)])
def test_the_schedule_executes_the_planned_sequence(wm, replan_every, plans):
    env = LeWorldPushTEnv(goal="dataset", terminate_on_success=False)
    planner = make_planner("cem", wm, samples=16, iterations=2, topk=4, replan_every=replan_every)
    obs, _ = env.reset(seed=0)
    executed, planned = [], []
    for step in range(10):
        action, _ = planner.predict(obs, episode_start=np.array([step == 0]))
        if planner._envs[0]["cursor"] == 1:  # a plan was just made
            planned.append(planner.to_env(planner._envs[0]["plan"]))
        executed.append(action)
        obs, *_ = env.step(action)
    assert len(planner.plan_seconds) == plans == len(planned)
    expected = np.concatenate([plan[:replan_every] for plan in planned])
    np.testing.assert_array_equal(np.stack(executed), expected)
    with pytest.raises(ArgumentError, match=r"replan_every must be in \[1, horizon=5\], got 6"):
        make_planner("cem", wm, replan_every=6)


def test_evaluation_reports_plans_per_episode(wm):
    runs = {}
    for every in (5, 1):
        agent = load_agent("cem", wm, seed=0, samples=16, iterations=2, topk=4, replan_every=every)
        runs[every] = evaluate(agent, "cem", "dream", "lewm", episodes=2, seed=0, progress=False)
    assert [r.plans for r in runs[5].results] == [2, 2] and runs[5].plans == 4 and runs[5].replan_every == 5
    assert [r.plans for r in runs[1].results] == [10, 10] and runs[1].decisions == 20
    assert "a plan every 5 env step(s): 4 plans" in runs[5].table()
    assert runs[5].results[0].targets is None  # the dream has no physics to replay


def test_replan_every_on_the_command_line_is_checked():
    result = run_cli("eval", "--agent", "cem", "--episodes", "1", "--samples", "8", "--replan-every", "6")
    assert_one_line_error(result, "replan_every must be in [1, horizon=5], got 6")


# --------------------------------------------------------------------------- replayable results
class _Scripted:
    """Plays a fixed sequence of relative actions, then zeros."""

    def __init__(self, actions: np.ndarray) -> None:
        self.actions, self.k = actions, 0

    def predict(self, obs, episode_start=None, deterministic=True):
        self.k = 0 if episode_start is not None and episode_start[0] else self.k
        action = self.actions[self.k] if self.k < len(self.actions) else np.zeros(2, np.float32)
        self.k += 1
        return action, None


def test_evaluated_episodes_replay_in_plain_gym_pusht():
    """leworld eval's JSON: a plain gym-pusht PushTEnv, reset to each start and stepped with each
    absolute target, reaches the same states and the same outcomes."""
    run = evaluate(RandomAgent(seed=3), "random", "real", "lewm", episodes=4, seed=0, progress=False)
    data = json.loads(run.to_json())
    assert data["frameskip"] == 5 and len(data["results"][0]["targets"]) == 50
    for outcome, episode in zip(replay_results(data), data["results"], strict=True):
        assert (outcome.success, outcome.success_block) == (episode["success"], episode["success_block"])
        np.testing.assert_allclose(outcome.final_state, episode["final_state"], atol=1e-9)
    # A goal the episode reaches: the state 3 env steps on under a known sequence, from a moving start.
    environment = make_eval_env("real", PROTOCOLS["lewm"], "pusht-tiny", None)
    start = environment.unwrapped.setup.bank.start_state(11)
    sequence = np.array([[0.6, -0.2], [0.3, 0.5], [-0.4, 0.1]], np.float32)
    sim = PushTSim(image_size=8)
    sim.reset(state=start)
    for action in sequence:
        sim.step(action)
    options = {"start": start, "goal_state": sim.state().vector()}
    result = run_episode(environment, _Scripted(sequence), 0, 0, options, None, [])
    assert result.success and result.success_step == 3 and result.steps == 10
    replayed = replay_episode(json.loads(json.dumps(dataclasses.asdict(result))), frameskip=5)
    assert replayed.success and replayed.success_step == 3 and replayed.success_block
    np.testing.assert_allclose(replayed.final_state, result.final_state, atol=1e-9)
    with pytest.raises(ArgumentError, match="no 'targets'"):
        replay_episode({**dataclasses.asdict(result), "targets": None})
