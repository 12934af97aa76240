"""The batched dream as a Gymnasium ``VectorEnv`` (next-step autoreset); the SB3 ``VecEnv`` is in ``sb3.py``.

Both step every episode with one batched ``predict`` per model step. Sub-env
``i`` has its own generator, seeded ``seed + i`` as Gymnasium's
``SyncVectorEnv`` and SB3's ``VecEnv.seed`` do, so a batch matches that many
single ``LeWorld-PushT-v0`` envs under the same seeds.
"""

from __future__ import annotations

from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
from gymnasium.utils import seeding
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from leworld_env.envs.dream import DreamBatch
from leworld_env.envs.settings import DEFAULT_EPISODE_STEPS, TaskSettings, check_positive_int
from leworld_env.envs.task import (
    RENDER_FPS,
    check_actions,
    compute_reward_batch,
    draw_scene,
    make_setup,
    observation_space,
)
from leworld_env.sim.pusht_sim import ACTION_SPACE
from world_models.errors import ArgumentError

BATCHED_RENDER_MODES = (None, "rgb_array")
# What a batched env's keyword arguments replace when no settings= is given: a 60-step limit, as gym.make's.
BATCHED_DEFAULTS = TaskSettings(max_episode_steps=DEFAULT_EPISODE_STEPS)


class Batched:
    """Settings, the batch, per-env generators and rendering, shared by both vector classes.

    Arguments: ``num_envs``, and the fields of :class:`~leworld_env.envs.settings.TaskSettings` as
    keywords or ``settings=`` a ready one (keywords then replace its fields). Without ``settings=``,
    ``max_episode_steps`` defaults to 60 env steps; ``render_mode`` is ``None`` or ``"rgb_array"``;
    ``hidden_physics=True`` is refused (the dream runs no physics).
    """

    def _build(self, num_envs: int, settings: TaskSettings | None, arguments: dict[str, Any]) -> None:
        render_mode = arguments.get("render_mode", None if settings is None else settings.render_mode)
        if render_mode not in BATCHED_RENDER_MODES:
            raise ArgumentError(f"render_mode {render_mode!r} is not supported by a batched env; use 'rgb_array'")
        self.settings = TaskSettings.of(BATCHED_DEFAULTS if settings is None else settings, **arguments)
        self.settings.refuse_hidden_physics(type(self).__name__)
        self.setup = make_setup(self.settings)
        self.world_model = self.setup.world_model
        self.batch = DreamBatch(self.setup, check_positive_int("num_envs", num_envs))
        self.rngs: list[np.random.Generator | None] = [None] * self.batch.num_envs
        self.render_mode = self.settings.render_mode
        self.render_size = self.settings.render_size

    def _seed(self, seeds: list[int | None]) -> None:
        for i, seed in enumerate(seeds):
            if seed is not None or self.rngs[i] is None:
                self.rngs[i] = seeding.np_random(seed)[0]

    def compute_reward(self, achieved_goal: Any, desired_goal: Any, info: Any) -> np.ndarray | float:
        """As the single env's: the reward of goal vectors (one pair or a batch)."""
        return compute_reward_batch(self.setup, achieved_goal, desired_goal)

    def _frames(self) -> tuple[np.ndarray, ...]:
        batch = self.batch
        return tuple(
            draw_scene(batch.probed[i].astype(np.float64), batch.goal_state[i], self.render_size)
            for i in range(batch.num_envs)
        )


class LeWorldPushTVectorEnv(Batched, VectorEnv):
    """``num_envs`` dream episodes of ``LeWorld-PushT-v0`` in one batch (next-step autoreset).

    Observations, rewards and infos are batched along the first axis; ``infos`` follows
    Gymnasium's vector convention (``infos["coverage"]`` with a mask ``infos["_coverage"]``).
    An episode that ends at step t is reset at step t + 1: that call ignores its action and
    returns the new episode's first observation with reward 0 (Gymnasium's ``NEXT_STEP``).
    ``render()`` returns one frame per env. Arguments: see :class:`Batched`.
    """

    metadata: ClassVar[dict[str, Any]] = {
        "autoreset_mode": AutoresetMode.NEXT_STEP,
        "render_modes": ["rgb_array"],
        "render_fps": RENDER_FPS,
    }

    def __init__(self, num_envs: int = 1, *, settings: TaskSettings | None = None, **arguments: Any) -> None:
        self._build(num_envs, settings, arguments)
        self.num_envs = self.batch.num_envs
        self.single_observation_space = observation_space(self.setup.latent_dim, self.setup.history)
        self.single_action_space = ACTION_SPACE
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self._autoreset = np.zeros(self.num_envs, bool)

    def reset(
        self, *, seed: int | list[int | None] | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Reset every sub-env (or those in ``options["reset_mask"]``); ``seed`` int s seeds env i with s + i."""
        if seed is None:
            seeds: list[int | None] = [None] * self.num_envs
        elif isinstance(seed, (int, np.integer)):
            seeds = [int(seed) + i for i in range(self.num_envs)]
        else:
            seeds = list(seed)
            if len(seeds) != self.num_envs:
                raise ArgumentError(f"seed list has {len(seeds)} entries for {self.num_envs} envs")
        options = dict(options or {})
        mask = np.asarray(options.pop("reset_mask", np.ones(self.num_envs, bool)), dtype=bool)
        if mask.shape != (self.num_envs,):
            raise ArgumentError(f"options['reset_mask'] must be {self.num_envs} booleans, got shape {mask.shape}")
        self._seed([s if m else None for s, m in zip(seeds, mask, strict=True)])
        indices = np.flatnonzero(mask)
        self.batch.reset(indices, self.rngs, [options or None] * self.num_envs)
        self._autoreset[indices] = False
        return self.batch.observation(), self._infos()

    def step(self, actions: Any) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        actions = check_actions(actions, self.num_envs)
        if any(rng is None for rng in self.rngs):
            raise gym.error.ResetNeeded("call reset() before step()")
        rewards = np.zeros(self.num_envs)
        terminated = np.zeros(self.num_envs, bool)
        truncated = np.zeros(self.num_envs, bool)
        stepping = np.flatnonzero(~self._autoreset)
        restarting = np.flatnonzero(self._autoreset)
        if stepping.size:
            rewards[stepping], terminated[stepping], truncated[stepping] = self.batch.step(stepping, actions[stepping])
        self.batch.reset(restarting, self.rngs)
        self._autoreset = terminated | truncated
        return self.batch.observation(), rewards, terminated, truncated, self._infos()

    def _infos(self) -> dict[str, Any]:
        infos: dict[str, Any] = {}
        for key, value in self.batch.info().items():
            infos[key] = value
            infos[f"_{key}"] = np.ones(self.num_envs, bool)
        return infos

    def render(self) -> tuple[np.ndarray, ...] | None:
        return self._frames() if self.render_mode == "rgb_array" else None
