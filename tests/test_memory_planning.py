"""A planner over a stateful model keeps the env's memory itself and plans with what it reads (issue #17):
its records are the env's, in the real twin and in the dream; steps it did not choose (a scripted prefix)
go in too; the readout changes the plans' costs once the memory holds the physics, and not before."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

import leworld_env
from agents.planning import make_planner
from world_models.errors import ArgumentError

SMALL = {"samples": 8, "iterations": 1, "topk": 2, "replan_every": 2}
PUSH = np.array([0.6, 0.2], np.float32)


@pytest.fixture(scope="module")
def real():
    env = gym.make(leworld_env.GLIDE_REAL_ID, goal="dataset", terminate_on_success=False)
    yield env
    env.close()


def _drive(env, planner, scripted: int, planned: int, seed: int = 0, options: dict | None = None):
    """``scripted`` steps the planner is told of, then ``planned`` it chooses; the planner sees the last frame."""
    observation, _ = env.reset(seed=seed, options=options)
    for t in range(scripted):
        planner.observe_action(observation, PUSH * (-1) ** (t // 3), episode_start=t == 0)
        observation, *_ = env.step(PUSH * (-1) ** (t // 3))
    for t in range(planned):
        action, _ = planner.predict(observation, episode_start=np.array([scripted == 0 and t == 0]))
        observation, *_ = env.step(action)
    planner.observe_action(observation, np.zeros(2, np.float32))  # shows the planner the last frame
    return planner._envs[0]


def test_the_planner_writes_the_records_the_real_twin_writes(real):
    wm = real.unwrapped.world_model
    planner = make_planner("cem", wm, **SMALL)
    assert planner.reads_memory
    state = _drive(real, planner, scripted=5, planned=4)
    env_memory = real.unwrapped.memory
    assert env_memory.writes.sum() == 9
    np.testing.assert_array_equal(state["memory"].writes, env_memory.writes)
    np.testing.assert_array_equal(state["memory"].words, env_memory.words)


def test_the_planner_reads_what_the_dream_reads():
    env = gym.make(leworld_env.GLIDE_ID, goal="dataset", terminate_on_success=False)
    planner = make_planner("cem", env.unwrapped.world_model, **SMALL)
    state = _drive(env, planner, scripted=3, planned=4, seed=3)
    batch = env.unwrapped.episodes
    np.testing.assert_array_equal(state["memory"].words, batch.memory.words)
    # the dream reads a frame's readout when it predicts from it, the planner when it sees it: the
    # readouts of the frames before the newest agree (the dream reads the newest at its next step)
    np.testing.assert_allclose(state["readouts"][:-1], batch.extra[0, :-1], atol=1e-6)
    assert not np.allclose(state["readouts"], env.unwrapped.world_model.empty_readout(3))
    env.close()


def test_the_readout_changes_the_costs_once_the_memory_holds_the_physics(real):
    wm = real.unwrapped.world_model
    candidates = np.random.default_rng(0).uniform(-1, 1, (16, 5, 2)).astype(np.float32)
    costs = {}
    for reads in (True, False):
        planner = make_planner("cem", wm, read_memory=reads, **SMALL)
        observation, _ = real.reset(seed=1, options={"physics": {"damping": 0.2}})
        planner.observe_action(observation, PUSH, episode_start=True)
        costs["start", reads] = planner.costs(planner._envs[0], candidates)
        state = _drive(real, planner, scripted=12, planned=0, seed=1, options={"physics": {"damping": 0.2}})
        costs["later", reads] = planner.costs(state, candidates)
    assert not make_planner("cem", wm, read_memory=False, **SMALL).reads_memory
    # an empty memory reads as the stateless predict's readout: the same costs
    np.testing.assert_allclose(costs["start", True], costs["start", False], rtol=1e-4, atol=1e-6)
    # a memory of 12 gliding steps: other predictions, other costs
    assert np.abs(costs["later", True] - costs["later", False]).max() > 1e-3


def test_observe_action_refuses_what_it_cannot_record(real):
    planner = make_planner("cem", real.unwrapped.world_model, **SMALL)
    observation, _ = real.reset(seed=0)
    with pytest.raises(ArgumentError, match="action must be 2 finite numbers"):
        planner.observe_action(observation, np.array([np.nan, 0.0]))
    batched = {k: np.stack([v, v]) for k, v in observation.items()}
    with pytest.raises(ArgumentError, match="one env's observation"):
        planner.observe_action(batched, PUSH)
    with pytest.raises(ArgumentError, match="action_repeat must be 1"):
        make_planner("cem", real.unwrapped.world_model, action_repeat=2, **SMALL)


def test_the_glide_planning_benchmark_replays_its_prefix_and_scores_an_episode(real):
    """benchmarks/glide_planning.py, one episode with a tiny CEM: the scripted prefix reaches its second
    push, the replay into the env lands on the same block pose, and the planner acts for the budget."""
    from benchmarks.glide_planning import planned_episode, scripted_run

    script = None
    for seed in range(10):
        script = scripted_run(real, bank_index=seed, rng=np.random.default_rng(seed))
        if script is not None:
            break
    assert script is not None and len(script["actions"]) > 0 and script["budget"] > 20  # push, release, settle
    pushed = np.linalg.norm(script["handover_pose"][:2] - script["goal_state"][2:4])
    assert pushed >= 30.0  # a fair episode: the push moved the block
    planner = make_planner("cem", real.unwrapped.world_model, **SMALL)
    result = planned_episode(real, planner, seed, script)
    assert result["replay_error"] == 0.0
    assert len(planner.plan_seconds) == -(-script["budget"] // 2)  # a plan every replan_every = 2 steps
    assert 0 <= result["final_position_error"] < 600 and isinstance(result["success"], bool)
