"""``LeWorld-PushT-v0`` (the dream), ``LeWorld-PushT-Real-v0`` (gym-pusht physics underneath) and
``LeWorld-PushT-Hidden-Real-v0`` (the real twin with hidden per-episode physics)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np

from leworld_env.envs.dream import DreamBatch
from leworld_env.envs.render import HumanWindow
from leworld_env.envs.task import (
    ACTION_SPACE,
    RENDER_FPS,
    TaskSetup,
    check_actions,
    check_render_size,
    compute_reward_batch,
    draw_frames,
    draw_scene,
    goal_terms,
    goal_vectors,
    make_setup,
    observation_space,
    start_and_goal,
)
from leworld_env.sim.pusht_sim import HiddenPhysics, PushTSim, sample_hidden_physics
from world_models.interface import WorldModel
from world_models.runtime import DEFAULT_MODEL

ENV_ARGUMENTS = """
    Arguments:
        model: a shipped model's name (default ``"pusht-tiny"``), a model folder, an ``.lq40``
            file, or a loaded :class:`~world_models.interface.WorldModel`.
        backend: ``"numba-q4"`` (default), ``"numba"``, ``"torch"``, or ``"esp32"`` / ``"fpga"``
            with ``port=`` (a device path or pyserial URL).
        goal: ``"fixed"``: gym-pusht's goal pose, success = coverage > 0.95; ``"dataset"``:
            the LeWM protocol, the goal is the real state 25 physics steps after the start,
            success = block within 20 px and pi/9 of it.
        reward: ``"coverage"``: gym-pusht's ``clip(coverage / 0.95, 0, 1)``; ``"latent"``: minus
            the root-mean-square distance between the latent and the goal latent; ``"success"``:
            1.0 on success, else 0.0.
        frameskip: physics steps per env step, a multiple of the model's (default: the model's, 5).
            Above it, the action is repeated for ``frameskip / model frameskip`` model steps, its
            relative target taken afresh from the agent's position at each (as the model learned).
        history: latents stacked in ``observation`` (default 1).
        max_episode_steps: truncate after this many env steps. Through ``gym.make`` this is
            Gymnasium's own ``TimeLimit`` (default 60 env steps = gym-pusht's 300 physics steps).
        render_mode: ``"rgb_array"`` or ``"human"`` (a pygame window).
        render_size: side of rendered frames in pixels (default 256).
"""


def _document(cls: type) -> type:
    cls.__doc__ = (cls.__doc__ or "") + ENV_ARGUMENTS
    return cls


class _PushTGoalEnv(gym.Env):
    """What both single envs share: arguments, spaces, ``compute_reward``, rendering."""

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["rgb_array", "human"], "render_fps": RENDER_FPS}

    def __init__(
        self,
        model: str | Path | WorldModel = DEFAULT_MODEL,
        backend: str | None = None,
        port: str | None = None,
        goal: str = "fixed",
        reward: str = "coverage",
        frameskip: int | None = None,
        history: int = 1,
        max_episode_steps: int | None = None,
        render_mode: str | None = None,
        render_size: int = 256,
    ) -> None:
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"unknown render_mode {render_mode!r}; choose one of: rgb_array, human")
        render_size = check_render_size(render_size)
        self.setup: TaskSetup = make_setup(model, backend, port, goal, reward, frameskip, history, max_episode_steps)
        self.world_model = self.setup.world_model
        self.observation_space = observation_space(self.setup.latent_dim, self.setup.history)
        self.action_space = ACTION_SPACE
        self.render_mode = render_mode
        self.render_size = render_size
        self._window: HumanWindow | None = None

    def compute_reward(self, achieved_goal: Any, desired_goal: Any, info: Any) -> np.ndarray | float:
        """The reward of goal vectors, one pair (a float) or a batch (an array); ``info`` is unused.

        The step's reward is exactly this, so HER may relabel ``desired_goal``. Goal vectors are
        (D + 4,) or batches (B, D + 4).
        """
        return compute_reward_batch(self.setup, achieved_goal, desired_goal)

    def _scene(self) -> np.ndarray:
        raise NotImplementedError

    def render(self) -> np.ndarray | None:
        """``rgb_array``: a (render_size, render_size, 3) frame; ``human``: draw to a pygame window."""
        if self.render_mode is None:
            gym.logger.warn("render() called without a render_mode; pass render_mode='rgb_array' or 'human'")
            return None
        frame = self._scene()
        if self.render_mode == "rgb_array":
            return frame
        if self._window is None:
            self._window = HumanWindow(type(self).__name__, self.metadata["render_fps"])
        self._window.show(frame)
        return None

    def close(self) -> None:
        if self._window is not None:
            self._window.close()
            self._window = None


@_document
class LeWorldPushTEnv(_PushTGoalEnv):
    """PushT in the dream: a learned world model steps the latent; no physics runs.

    ## Action space
    ``Box(-1, 1, (2,), float32)``: a relative move of the agent's PD target, times the
    model's action scale (100 px), held for one model step (the model's ``frameskip``
    physics steps) and repeated for ``frameskip / model frameskip`` of them; out-of-range
    values are clipped to [-1, 1], NaN or inf raises ``ValueError``.

    ## Observation space
    A dict (the convention of SB3's ``HerReplayBuffer``):

    * ``observation`` float32 (history * D,): the last ``history`` latents, oldest first;
    * ``achieved_goal`` float32 (D + 4,): the latent now and the block pose probed from
      it as (x / 512, y / 512, sin angle, cos angle);
    * ``desired_goal`` float32 (D + 4,): the goal frame's latent and the goal's exact block pose.

    ## Rewards
    ``compute_reward(achieved_goal, desired_goal, info)``; see ``reward`` below.

    ## Starting state
    A real state from the model's start bank (``starts.safetensors``: held-out states of
    real gym-pusht episodes), agent at rest; ``reset(options=...)`` takes ``bank_index``,
    ``start`` (5 numbers) or ``goal_state`` (5 numbers, dataset goal).

    ## Episode end
    Terminated on success, judged on the probed block pose; truncated after
    ``max_episode_steps``.

    ## Info
    ``is_success``, ``coverage`` (of the goal tee by the probed block), ``state`` (the
    probed agent x, y, block x, y, angle), ``goal_state``, ``step``.

    A step is ``frameskip / model frameskip`` calls of the model's ``predict``.
    ``render()`` draws the probed state in PushT's style, with the goal tee.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._batch = DreamBatch(self.setup, 1)
        self._here = np.zeros(1, np.int64)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        super().reset(seed=seed)
        self._batch.reset(self._here, [self.np_random], [options])
        if self.render_mode == "human":
            self.render()
        return self._observation(), self._info()

    def step(self, action: Any) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        actions = check_actions(action, 1)
        rewards, terminated, truncated = self._batch.step(self._here, actions)
        if self.render_mode == "human":
            self.render()
        return self._observation(), float(rewards[0]), bool(terminated[0]), bool(truncated[0]), self._info()

    def _observation(self) -> dict[str, np.ndarray]:
        return {key: value[0] for key, value in self._batch.observation(self._here).items()}

    def _info(self) -> dict[str, Any]:
        info = {key: value[0] for key, value in self._batch.info(self._here).items()}
        info["is_success"] = bool(info["is_success"])
        info["coverage"] = float(info["coverage"])
        info["step"] = int(info["step"])
        return info

    def _scene(self) -> np.ndarray:
        return draw_scene(self._batch.probed[0].astype(np.float64), self._batch.goal_state[0], self.render_size)


@_document
class LeWorldPushTRealEnv(_PushTGoalEnv):
    """PushT on real physics with the dream's spaces: gym-pusht steps, the model encodes each frame.

    Spaces, reward and arguments are those of :class:`LeWorldPushTEnv`, so a policy trained
    in the dream runs here unchanged. The differences: a step holds the action's target
    for the model's frameskip of gym-pusht physics steps (repeated as in the dream when
    ``frameskip`` is a multiple) and encodes the new frame with the same
    model and backend; ``achieved_goal``'s pose, the reward, ``is_success``, ``coverage``
    and ``state`` come from the simulator's exact state; ``info["probed_state"]`` is
    what the model's probe reads from the latent. Episodes start at rest from the same
    bank, so a seed gives the same start and goal in both envs.

    ## Hidden physics (``LeWorld-PushT-Hidden-Real-v0``, or ``hidden_physics=True``)
    Every reset draws the episode's :class:`~leworld_env.sim.pusht_sim.HiddenPhysics` (space damping,
    agent-block friction, block mass) from ``self.np_random``, after the start and goal, over
    :data:`~leworld_env.sim.pusht_sim.HIDDEN_PHYSICS_RANGES`; the same seed gives the same start, goal
    and physics. Spaces, reward, start and end are those above; nothing in the observation holds
    the physics, which shows only in how the block moves (it glides on after a push, turns more or
    less, is dragged along), so a policy must infer it from past steps: the memory task. The plain
    real twin is its Markov control.

    * Reset option ``physics``: a ``HiddenPhysics`` or a dict of some of ``damping``,
      ``friction``, ``block_mass`` (the rest gym-pusht's) sets the episode's physics
      explicitly, in either env.
    * ``info["physics"]`` (hidden only): float64 (3,), the episode's damping, friction and
      block mass in that order, for analysis and tests. An agent must not read it: it is the
      answer to the task.

    Arguments (besides those below):
        hidden_physics: draw the physics at every reset (default ``False``: gym-pusht's physics).
    """

    def __init__(self, hidden_physics: bool = False, **kwargs: Any) -> None:
        if not isinstance(hidden_physics, (bool, np.bool_)):
            raise ValueError(f"hidden_physics must be True or False, got {hidden_physics!r}")
        super().__init__(**kwargs)
        self.hidden_physics = bool(hidden_physics)
        config = self.world_model.config
        self.sim = PushTSim(config.image_size, config.frameskip, config.action_scale)
        latent_dim = self.setup.latent_dim
        self._z = np.zeros((self.setup.history, latent_dim), np.float32)
        self._achieved = np.zeros(latent_dim + 4, np.float32)
        self._desired = np.zeros(latent_dim + 4, np.float32)
        self._goal_state = np.zeros(5)
        self._steps = 0

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        super().reset(seed=seed)
        start, goal_state = start_and_goal(self.setup, self.np_random, options, extra=("physics",))
        physics = (options or {}).get("physics")
        self.sim.reset(state=start, physics=self._episode_physics(physics))
        size = self.setup.image_size
        z = self.world_model.encode(np.stack([self.sim.frame(), draw_frames(goal_state[None], size)[0]]))
        self._goal_state = goal_state
        self._desired = goal_vectors(z[1:], goal_state[None, 2:5])[0]
        self._z[:] = z[0]
        self._steps = 0
        self._observe(z[0])
        if self.render_mode == "human":
            self.render()
        return self._observation(), self._info()

    def _episode_physics(self, option: Any) -> HiddenPhysics:
        """The reset option's physics, else a draw from ``np_random`` (hidden), else gym-pusht's."""
        if option is not None:
            return HiddenPhysics.coerce(option)
        if self.hidden_physics:
            return sample_hidden_physics(self.np_random)
        return HiddenPhysics()

    def step(self, action: Any) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        actions = check_actions(action, 1)
        for _ in range(self.setup.predicts_per_step):
            self.sim.step(actions[0])
        z = self.world_model.encode(self.sim.frame()[None])[0]
        self._z = np.roll(self._z, -1, axis=0)
        self._z[-1] = z
        self._steps += 1
        self._observe(z)
        reward = float(self._terms.reward(self.setup.reward)[0])
        terminated = bool(self._terms.success[0])
        limit = self.setup.max_episode_steps
        truncated = limit is not None and self._steps >= limit and not terminated
        if self.render_mode == "human":
            self.render()
        return self._observation(), reward, terminated, truncated, self._info()

    def _observe(self, z: np.ndarray) -> None:
        # Reward, success and coverage all come from the goal vectors, as compute_reward sees them.
        self._achieved = goal_vectors(z[None], self.sim.block_pose[None])[0]
        self._terms = goal_terms(self._achieved[None], self._desired[None], self.setup.goal, self.setup.latent_dim)

    def _observation(self) -> dict[str, np.ndarray]:
        return {
            "observation": self._z.reshape(-1).copy(),
            "achieved_goal": self._achieved.copy(),
            "desired_goal": self._desired.copy(),
        }

    def _info(self) -> dict[str, Any]:
        info = {
            "is_success": bool(self._terms.success[0]),
            "coverage": float(self._terms.coverage[0]),
            "state": self.sim.state().vector(),
            "goal_state": self._goal_state.copy(),
            "step": self._steps,
            "probed_state": self.world_model.probe(self._z[-1:])[0].astype(np.float64),
        }
        if self.hidden_physics:
            info["physics"] = self.sim.physics.vector()  # for analysis only: an agent must not read it
        return info

    def _scene(self) -> np.ndarray:
        return draw_scene(self.sim.state().vector(), self._goal_state, self.render_size)

    def close(self) -> None:
        super().close()
        self.sim.close()
