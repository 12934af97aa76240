"""N dream episodes advanced together: one batched ``predict`` per model step for all of them.

The single dream env is a batch of one; the Gymnasium vector env and the SB3
``VecEnv`` differ only in when they reset finished episodes. Each episode draws
from its own generator, so episode ``i`` of a batch seeded ``s + i`` is the
same episode as a single env seeded ``s + i`` (up to the float rounding of a
batched matrix product).

An episode starts from one frame: the model's latent history is the start
frame's latent repeated, with zero actions (a zero action holds the agent's
target where it stands), which is what the real twin does too. A frame shows no
velocity, so the start's recorded agent velocity (which the real twin restores)
does not reach the dream.

A stateful world model (an episodic memory model, ``model.stateful``) gets one bit memory per
episode here: emptied when the episode starts, read before each model step (the readout rides
beside each history step's action), written with each predicted transition, never rebuilt.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from leworld_env.envs.episode import Episodes
from leworld_env.envs.task import TaskSetup, draw_frames, start_and_goal
from world_models.ensemble import PredictorEnsemble


class DreamBatch(Episodes):
    """``num_envs`` dream episodes: :class:`~leworld_env.envs.episode.Episodes` whose latents the
    model predicts, with the action history it reads and the state the probe reads from each latent."""

    def __init__(self, setup: TaskSetup, num_envs: int) -> None:
        model = setup.world_model
        super().__init__(setup, num_envs, model.config.history)
        self.a = np.zeros((num_envs, self.length, model.config.action_dim), np.float32)
        self.probed = np.zeros((num_envs, 5), np.float32)
        self.disagreement = np.zeros(num_envs, np.float32)  # the last step's, with an ensemble
        self._fixed_goal_latent: np.ndarray | None = None
        self.memory = model.new_memory(num_envs) if getattr(model, "stateful", False) else None
        if self.memory is not None:  # each history step's readout channels, beside its action
            self.extra = np.zeros((num_envs, self.length, model.channels), np.float32)

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
        starts = np.array([p[0][:5] for p in pairs])  # the model sees a frame: the agent's velocity is not in it
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
        self.a[indices] = 0.0
        self.disagreement[indices] = 0.0
        if self.memory is not None:
            self.memory.reset(indices)
            self.extra[indices] = model.empty_readout(len(indices))[:, None]
        self.begin(indices, z0, goals, z_goal, self._probe(indices, z0))

    def step(self, indices: np.ndarray, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Advance episodes ``indices`` by one env step under checked ``actions`` (len(indices), 2).

        Returns rewards, terminated and truncated for those episodes.
        """
        indices = np.asarray(indices, dtype=np.int64)
        z, a = self.z[indices], self.a[indices]
        model = self.setup.world_model
        ensemble = model if isinstance(model, PredictorEnsemble) else None
        spread = np.zeros(len(indices), np.float32)  # the step's largest disagreement
        for _ in range(self.setup.predicts_per_step):
            a[:, -1] = actions
            if self.memory is not None:
                z_next = self._remember(indices, z, a)
            elif ensemble is None:
                z_next = model.predict(z, a)
            else:
                z_next, disagreement = ensemble.predict_with_disagreement(z, a)
                spread = np.maximum(spread, disagreement)
            z[:, :-1], a[:, :-1] = z[:, 1:], a[:, 1:]
            z[:, -1], a[:, -1] = z_next, 0.0
        self.z[indices], self.a[indices] = z, a
        rewards, terminated, truncated = self.end_step(indices, self._probe(indices, z[:, -1]))
        if ensemble is None:
            return rewards, terminated, truncated
        self.disagreement[indices] = spread
        settings = self.setup.settings
        rewards = rewards - settings.disagreement_penalty * spread
        if settings.disagreement_limit is not None:
            truncated = truncated | ((spread > settings.disagreement_limit) & ~terminated)
        return rewards, terminated, truncated

    def _remember(self, indices: np.ndarray, z: np.ndarray, a: np.ndarray) -> np.ndarray:
        """One model step of a stateful model: read each episode's memory at the last frame, predict
        with the readouts beside the actions, write the predicted transition; returns z_next."""
        model, extra = self.setup.world_model, self.extra[indices]
        extra[:, -1] = model.read(self.memory, indices, z[:, max(-2, -z.shape[1])], z[:, -1])
        z_next = model.predict_with(z, a, extra)
        model.observe(self.memory, indices, z[:, -1], a[:, -1], z_next)
        extra[:, :-1] = extra[:, 1:]
        self.extra[indices] = extra
        return z_next

    def _probe(self, indices: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Record the state the probe reads from latents ``z`` (B, D); returns its block poses (B, 3)."""
        probed = self.setup.world_model.probe(z)
        self.probed[indices] = probed
        return probed[:, 2:5]

    def info(self, indices: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Per-episode facts of ``indices`` (all by default), batched, ``state`` being the probed one
        (see :meth:`~leworld_env.envs.episode.Episodes.episode_info`)."""
        indices = np.arange(self.num_envs) if indices is None else np.asarray(indices)
        info = self.episode_info(self.probed[indices].astype(np.float64), indices)
        if isinstance(self.setup.world_model, PredictorEnsemble):
            info["disagreement"] = self.disagreement[indices].copy()
        return info
