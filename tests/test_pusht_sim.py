"""Real PushT glue: exact resets, relative actions, frames, coverage, success."""

from __future__ import annotations

import math

import gym_pusht  # noqa: F401  (registers gym_pusht/PushT-v0)
import gymnasium as gym
import numpy as np
import pytest
from gym_pusht.envs import PushTEnv

from leworld_env.sim.pusht_sim import (
    PushTSim,
    angle_difference,
    legacy_reset_position,
    lewm_success,
)
from numba_kernels import render_pusht

STATES = [
    [100.0, 100.0, 300.0, 300.0, 1.0],
    [400.0, 420.0, 200.0, 250.0, 0.0],
    [80.0, 450.0, 250.0, 180.0, 4.5],
    [450.0, 60.0, 330.0, 330.0, 2 * math.pi - 0.3],
]


@pytest.mark.parametrize("state", STATES)
def test_reset_to_state_lands_exactly(state):
    sim = PushTSim(image_size=64)
    got = sim.reset(state=state)
    np.testing.assert_allclose(got.vector(), state, atol=1e-9)
    np.testing.assert_array_equal(got.agent_vel, [0.0, 0.0])


def test_gym_pusht_legacy_reset_misses_the_pose_we_compensate():
    """The quirk we work around: gym-pusht's own reset puts the block elsewhere."""
    raw = PushTEnv(obs_type="state")
    obs, _ = raw.reset(options={"reset_to_state": np.array(STATES[0])})
    assert np.linalg.norm(obs[2:4] - STATES[0][2:4]) > 30.0
    compensated = legacy_reset_position(np.array(STATES[0][2:4]), STATES[0][4])
    obs, _ = raw.reset(options={"reset_to_state": np.array([*STATES[0][:2], *compensated, STATES[0][4]])})
    np.testing.assert_allclose(obs[2:4], STATES[0][2:4], atol=1e-9)


def test_reset_sets_agent_velocity_and_rejects_bad_states():
    sim = PushTSim(image_size=64)
    got = sim.reset(state=[*STATES[1], 30.0, -12.5])
    np.testing.assert_allclose(got.agent_vel, [30.0, -12.5])
    for bad in ([1.0, 2.0, 3.0], [np.nan, 0, 0, 0, 0], [0, 0, 0, 0, np.inf, 0, 0]):
        with pytest.raises(ValueError, match="state must be 5 finite numbers"):
            sim.reset(state=bad)


def test_random_reset_follows_the_seed():
    a, b = PushTSim(64), PushTSim(64)
    np.testing.assert_array_equal(a.reset(seed=7).vector(), b.reset(seed=7).vector())
    assert not np.array_equal(a.reset(seed=7).vector(), a.reset(seed=8).vector())


@pytest.mark.parametrize("frameskip", [1, 5])
def test_relative_actions_reproduce_gym_pusht_with_absolute_targets(frameskip):
    """Our relative, held actions are gym-pusht fed the equivalent absolute targets."""
    rng = np.random.default_rng(0)
    actions = rng.uniform(-1.3, 1.3, size=(24, 2))  # some out of range: clipped
    sim = PushTSim(image_size=64, frameskip=frameskip, action_scale=100.0)
    sim.reset(seed=3)
    targets, ours = [], []
    for a in actions:
        targets.append(sim.target_for(a))
        ours.append(np.concatenate([sim.step(a).vector(), [sim.coverage()]]))

    raw = gym.make("gym_pusht/PushT-v0", obs_type="state", max_episode_steps=10_000)
    raw.reset(seed=3)
    theirs = []
    for target in targets:
        for _ in range(frameskip):
            obs, _, _, _, info = raw.step(target)
        theirs.append(np.concatenate([obs, [info["coverage"]]]))
    ours, theirs = np.array(ours), np.array(theirs)
    np.testing.assert_array_equal(ours[:, :5], theirs[:, :5])  # the physics, bit for bit
    np.testing.assert_allclose(ours[:, 5], theirs[:, 5], atol=1e-12)  # coverage, see tee_coverage
    # The trajectory is not trivial: the agent travelled.
    assert np.abs(np.diff(np.array(ours)[:, :2], axis=0)).max() > 10.0


def test_relative_target_is_scaled_clipped_and_checked():
    sim = PushTSim(image_size=64, action_scale=100.0)
    sim.reset(state=[50.0, 480.0, 300.0, 300.0, 0.0])
    np.testing.assert_allclose(sim.target_for([0.5, -0.25]), [100.0, 455.0])
    np.testing.assert_allclose(sim.target_for([-2.0, 3.0]), [0.0, 512.0])  # action and world clipped
    with pytest.raises(ValueError, match="finite"):
        sim.target_for([np.nan, 0.0])
    with pytest.raises(ValueError, match="shape"):
        sim.target_for([0.0, 0.0, 0.0])


@pytest.mark.parametrize("size", [64, 96, 224])
def test_frames_have_the_asked_size_and_show_the_scene(size):
    sim = PushTSim(image_size=size)
    sim.reset(state=STATES[0])
    frame = sim.frame()
    assert frame.shape == (size, size, 3) and frame.dtype == np.uint8
    sim.reset(state=STATES[1])
    assert np.abs(frame.astype(int) - sim.frame().astype(int)).sum() > 0


def test_frames_match_gym_pusht_drawing():
    """Drawn straight at 96 px, our frames stay close to gym-pusht's 512 px drawing resized."""
    raw = PushTEnv(obs_type="pixels", observation_width=96, observation_height=96)

    def error(ours: np.ndarray, theirs: np.ndarray) -> float:
        # Inside the walls: their anti-aliasing differs from ours on the 1-px border.
        return float(np.abs(ours.astype(int) - theirs.astype(int))[4:-4, 4:-4].mean())

    errors = []
    for seed in range(8):
        pixels, _ = raw.reset(seed=seed)
        pixels, *_ = raw.step(np.array([256.0, 256.0]))
        agent = np.array(raw.agent.position)
        block = np.array([*raw.block.position, raw.block.angle])
        errors.append(error(render_pusht(agent, block, 96), pixels))
        # A block misplaced by 12 px (2 frame pixels) costs far more than drawing differences.
        assert error(render_pusht(agent, block + np.array([12.0, 0.0, 0.0]), 96), pixels) > 2 * errors[-1]
    assert max(errors) < 1.0, errors


def test_batched_render_equals_single_frames():
    agents = np.array([[100.0, 100.0], [300.0, 400.0]])
    blocks = np.array([[250.0, 250.0, 0.3], [200.0, 300.0, 5.0]])
    batch = render_pusht(agents, blocks, 64)
    for i in range(2):
        np.testing.assert_array_equal(batch[i], render_pusht(agents[i], blocks[i], 64))


def test_coverage_and_success_at_the_goal():
    sim = PushTSim(image_size=64)
    goal = sim.goal_pose
    sim.reset(state=[60.0, 60.0, *goal])
    assert sim.coverage() > 0.99 and sim.is_success()
    sim.reset(state=[60.0, 60.0, goal[0] + 60.0, goal[1], goal[2]])
    assert 0.0 < sim.coverage() < 0.95 and not sim.is_success()


def test_lewm_success_test():
    goal = np.array([256.0, 256.0, 0.1])
    assert lewm_success([256.0 + 19.0, 256.0, 0.1], goal)
    assert not lewm_success([256.0 + 21.0, 256.0, 0.1], goal)
    assert lewm_success([256.0, 256.0, 2 * math.pi - 0.1], goal)  # 0.2 rad across the wrap
    assert not lewm_success([256.0, 256.0, 0.1 + math.pi / 9 + 0.01], goal)
    batch = lewm_success(np.array([[256.0, 256.0, 0.1], [400.0, 256.0, 0.1]]), goal)
    np.testing.assert_array_equal(batch, [True, False])
    assert angle_difference(0.1, 2 * math.pi - 0.1) == pytest.approx(0.2)


def test_exact_coverage_matches_gym_pusht():
    """Our deterministic coverage is gym-pusht's shapely coverage, to rounding."""
    from numba_kernels import tee_coverage

    sim = PushTSim(image_size=64)
    rng = np.random.default_rng(0)
    poses = np.column_stack([rng.uniform(150, 360, (300, 2)), rng.uniform(0, 2 * np.pi, 300)])
    theirs = []
    for pose in poses:
        sim.reset(state=[30.0, 30.0, *pose])
        theirs.append(sim.env._get_coverage())
    theirs = np.array(theirs)
    assert (theirs > 0.0).mean() > 0.5 and (theirs > 0.5).any()  # overlaps of all sizes were tested
    np.testing.assert_allclose(tee_coverage(poses), theirs, atol=1e-12)
    assert tee_coverage(poses[0]) == tee_coverage(poses)[0]


def test_coverage_pairs_are_rigid_motion_invariant():
    """The batched kernel the envs use (a goal per row): moving block and goal together by the same
    rigid motion changes nothing, so each row equals the coverage of the block moved into gym-pusht's
    fixed goal frame (which test_exact_coverage_matches_gym_pusht checks against shapely)."""
    from numba_kernels.pusht_geometry import tee_coverage, tee_coverage_pairs
    from numba_kernels.pusht_raster import GOAL_POSE

    rng = np.random.default_rng(3)
    goals = np.column_stack([rng.uniform(150, 360, (64, 2)), rng.uniform(0, 2 * np.pi, 64)])
    blocks = goals + np.column_stack([rng.normal(0, 30, (64, 2)), rng.normal(0, 0.5, 64)])
    pairs = tee_coverage_pairs(blocks, goals)
    turn = GOAL_POSE[2] - goals[:, 2]
    c, s = np.cos(turn), np.sin(turn)
    dx, dy = blocks[:, 0] - goals[:, 0], blocks[:, 1] - goals[:, 1]
    moved = np.column_stack([GOAL_POSE[0] + c * dx - s * dy, GOAL_POSE[1] + s * dx + c * dy, blocks[:, 2] + turn])
    np.testing.assert_allclose(pairs, tee_coverage(moved), atol=1e-9)
    assert 0.0 < pairs.min() < pairs.max() < 1.0
    np.testing.assert_allclose(tee_coverage_pairs(goals, goals), 1.0, atol=1e-12)
    with pytest.raises(ValueError, match="two \\(B, 3\\) arrays"):
        tee_coverage_pairs(blocks, goals[:3])
