"""The bookkeeping of goal-conditioned PushT episodes, shared by the dream and the real twin.

:class:`Episodes` holds, for each of ``num_envs`` episodes, the latent history
(oldest first), the goal state and both goal vectors, what the goal vectors say
(coverage, success) and the step count; from them it gives the observation dict,
each step's reward, termination and truncation, and the info every env reports.
What moves the latents differs: the dream (:class:`~leworld_env.envs.dream.DreamBatch`,
a subclass) predicts them and probes the block pose from them; the real twin
encodes the simulator's frames and reads the simulator's pose. Both record here.
"""

from __future__ import annotations

import numpy as np

from leworld_env.envs.task import GoalTerms, TaskSetup, goal_terms, goal_vectors
from leworld_env.sim.pusht_sim import lewm_eval_state, lewm_success
from world_models.pose import POSE_FEATURES


class Episodes:
    """The state of ``num_envs`` episodes that an env reports: latent history, goals, what they say, step counts.

    Args:
        setup: the task.
        num_envs: episodes kept side by side.
        length: latents kept per episode, at least (and by default) the observation's ``history``.
    """

    def __init__(self, setup: TaskSetup, num_envs: int, length: int = 1) -> None:
        self.setup = setup
        self.num_envs = num_envs
        self.length = max(length, setup.history)
        latent_dim = setup.latent_dim
        self.z = np.zeros((num_envs, self.length, latent_dim), np.float32)
        self.goal_state = np.zeros((num_envs, 5))
        self.achieved = np.zeros((num_envs, latent_dim + POSE_FEATURES), np.float32)
        self.desired = np.zeros((num_envs, latent_dim + POSE_FEATURES), np.float32)
        self.steps = np.zeros(num_envs, np.int64)
        self.coverage = np.zeros(num_envs)
        self.success = np.zeros(num_envs, bool)

    def begin(
        self, indices: np.ndarray, z: np.ndarray, goal_state: np.ndarray, z_goal: np.ndarray, block_pose: np.ndarray
    ) -> None:
        """New episodes in ``indices``, at rest: the history is the start latent ``z`` (B, D) repeated.

        ``goal_state`` (B, 5) and its frame's latent ``z_goal`` (B, D) make the desired goal;
        ``block_pose`` (B, 3) is the start's block pose, as the env knows it.
        """
        self.z[indices] = z[:, None, :]
        self.steps[indices] = 0
        self.goal_state[indices] = goal_state
        self.desired[indices] = goal_vectors(z_goal, goal_state[:, 2:5])
        self.observe(indices, block_pose)

    def push(self, indices: np.ndarray, z: np.ndarray) -> None:
        """Append latents ``z`` (B, D) to the histories of ``indices``, dropping the oldest."""
        self.z[indices, :-1] = self.z[indices, 1:]
        self.z[indices, -1] = z

    def observe(self, indices: np.ndarray, block_pose: np.ndarray) -> GoalTerms:
        """Record the achieved goal of the newest latents with ``block_pose`` (B, 3), and what the goal
        vectors say (reward, termination and the info all come from them, as ``compute_reward`` sees them)."""
        self.achieved[indices] = goal_vectors(self.z[indices, -1], block_pose)
        terms = goal_terms(self.achieved[indices], self.desired[indices], self.setup.goal, self.setup.latent_dim)
        self.coverage[indices], self.success[indices] = terms.coverage, terms.success
        return terms

    def end_step(self, indices: np.ndarray, block_pose: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Close an env step of ``indices`` whose newest latents are in place and whose block poses are
        ``block_pose`` (B, 3); returns rewards, terminated (success, unless the settings'
        ``terminate_on_success`` is off) and truncated (the step limit, unless terminated)."""
        self.steps[indices] += 1
        terms = self.observe(indices, block_pose)
        terminated = terms.success.copy() if self.setup.settings.terminate_on_success else np.zeros(len(indices), bool)
        limit = self.setup.max_episode_steps
        truncated = self.steps[indices] >= limit if limit is not None else np.zeros(len(terminated), bool)
        return terms.reward(self.setup.reward), terminated, truncated & ~terminated

    # ------------------------------------------------------------------ what the agent sees
    def observation(self, indices: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """The observation dict of episodes ``indices`` (all by default), batched."""
        indices = np.arange(self.num_envs) if indices is None else np.asarray(indices)
        history = self.setup.history
        return {
            "observation": self.z[indices, -history:].reshape(len(indices), -1).copy(),
            "achieved_goal": self.achieved[indices].copy(),
            "desired_goal": self.desired[indices].copy(),
        }

    def episode_info(self, state: np.ndarray, indices: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Per-episode facts, batched: is_success, coverage, ``state`` (B, 5) as the env knows it, the goal
        state, the step; with the dataset goal also ``success_strict`` (LeWM's test on ``state``: agent
        and block) and ``success_block`` (the block-only test on ``state``)."""
        indices = np.arange(self.num_envs) if indices is None else np.asarray(indices)
        goal_state = self.goal_state[indices].copy()
        info = {
            "is_success": self.success[indices].copy(),
            "coverage": self.coverage[indices].copy(),
            "state": state,
            "goal_state": goal_state,
            "step": self.steps[indices].copy(),
        }
        if self.setup.goal == "dataset":
            info["success_strict"] = np.asarray(lewm_eval_state(state, goal_state), bool)
            info["success_block"] = np.asarray(lewm_success(state[:, 2:5], goal_state[:, 2:5]), bool)
        return info
