"""N dream episodes advanced together: one batched ``predict`` per model step for all of them.

The single dream env is a batch of one; the Gymnasium vector env and the SB3
``VecEnv`` differ only in when they reset finished episodes. Each episode draws
from its own generator, so episode ``i`` of a batch seeded ``s + i`` is the
same episode as a single env seeded ``s + i`` (up to the float rounding of a
batched matrix product).

An episode starts with the agent at rest: the model's latent history is the
start frame's latent repeated, with zero actions (a zero action holds the
agent's target where it stands), which is what the real twin does too.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from leworld_env.envs.task import (
    GoalTerms,
    TaskSetup,
    draw_frames,
    goal_terms,
    goal_vectors,
    start_and_goal,
)


class DreamBatch:
    """The state of ``num_envs`` dream episodes: latent and action histories, goals, step counts."""

    def __init__(self, setup: TaskSetup, num_envs: int) -> None:
        self.setup = setup
        self.num_envs = num_envs
        model = setup.world_model
        latent_dim = setup.latent_dim
        self.length = max(model.config.history, setup.history)
        self.z = np.zeros((num_envs, self.length, latent_dim), np.float32)
        self.a = np.zeros((num_envs, self.length, model.config.action_dim), np.float32)
        self.goal_state = np.zeros((num_envs, 5))
        self.achieved = np.zeros((num_envs, latent_dim + 4), np.float32)
        self.desired = np.zeros((num_envs, latent_dim + 4), np.float32)
        self.probed = np.zeros((num_envs, 5), np.float32)
        self.steps = np.zeros(num_envs, np.int64)
        self.coverage = np.zeros(num_envs)
        self.success = np.zeros(num_envs, bool)
        self._fixed_goal_latent: np.ndarray | None = None

    # ------------------------------------------------------------------ episodes
    def reset(
        self,
        indices: np.ndarray,
        rngs: list[np.random.Generator],
        options: list[dict[str, Any] | None] | None = None,
    ) -> None:
        """Start new episodes in ``indices``; env ``i`` draws from ``rngs[i]``."""
        indices = np.asarray(indices, dtype=np.int64)
        if indices.size == 0:
            return
        options = options or [None] * self.num_envs
        pairs = [start_and_goal(self.setup, rngs[i], options[i]) for i in indices]
        starts = np.array([p[0] for p in pairs])
        goals = np.array([p[1] for p in pairs])
        model, size = self.setup.world_model, self.setup.image_size
        if self.setup.goal == "fixed":
            if self._fixed_goal_latent is None:
                self._fixed_goal_latent = model.encode(draw_frames(goals[:1], size))[0]
            z0 = model.encode(draw_frames(starts, size))
            z_goal = np.broadcast_to(self._fixed_goal_latent, z0.shape)
        else:
            z_both = model.encode(draw_frames(np.concatenate([starts, goals]), size))
            z0, z_goal = z_both[: len(indices)], z_both[len(indices) :]
        self.z[indices] = z0[:, None, :]
        self.a[indices] = 0.0
        self.steps[indices] = 0
        self.goal_state[indices] = goals
        self.desired[indices] = goal_vectors(z_goal, goals[:, 2:5])
        self._observe(indices, z0)

    def step(self, indices: np.ndarray, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Advance episodes ``indices`` by one env step under checked ``actions`` (len(indices), 2).

        Returns rewards, terminated and truncated for those episodes.
        """
        indices = np.asarray(indices, dtype=np.int64)
        z, a = self.z[indices], self.a[indices]
        model = self.setup.world_model
        for _ in range(self.setup.predicts_per_step):
            a[:, -1] = actions
            z_next = model.predict(z, a)
            z[:, :-1], a[:, :-1] = z[:, 1:], a[:, 1:]
            z[:, -1], a[:, -1] = z_next, 0.0
        self.z[indices], self.a[indices] = z, a
        self.steps[indices] += 1
        terms = self._observe(indices, z[:, -1])
        rewards, terminated = terms.reward(self.setup.reward), terms.success.copy()
        limit = self.setup.max_episode_steps
        truncated = self.steps[indices] >= limit if limit is not None else np.zeros(len(indices), bool)
        return rewards, terminated, truncated & ~terminated

    def _observe(self, indices: np.ndarray, z: np.ndarray) -> GoalTerms:
        """Record the new latents' probed state and goal vector, and what the goal vectors say."""
        probed = self.setup.world_model.probe(z)
        self.probed[indices] = probed
        self.achieved[indices] = goal_vectors(z, probed[:, 2:5])
        terms = goal_terms(self.achieved[indices], self.desired[indices], self.setup.goal, self.setup.latent_dim)
        self.coverage[indices], self.success[indices] = terms.coverage, terms.success
        return terms

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

    def info(self, indices: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Per-episode facts, batched: is_success, coverage, the probed state, the goal state, the step."""
        indices = np.arange(self.num_envs) if indices is None else np.asarray(indices)
        return {
            "is_success": self.success[indices].copy(),
            "coverage": self.coverage[indices].copy(),
            "state": self.probed[indices].astype(np.float64),
            "goal_state": self.goal_state[indices].copy(),
            "step": self.steps[indices].copy(),
        }
