"""``LeWorld-PushT-v0`` (the dream), ``LeWorld-PushT-Real-v0`` (gym-pusht physics underneath) and
``LeWorld-PushT-Hidden-Real-v0`` (the real twin with hidden per-episode physics)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np

from leworld_env.envs.dream import DreamBatch
from leworld_env.envs.episode import Episodes
from leworld_env.envs.render import HumanWindow
from leworld_env.envs.settings import RENDER_MODES, TaskSettings
from leworld_env.envs.task import (
    RENDER_FPS,
    TaskSetup,
    check_actions,
    compute_reward_batch,
    draw_frames,
    draw_scene,
    make_setup,
    observation_space,
    start_and_goal,
)
from leworld_env.sim.pusht_sim import ACTION_SPACE, PHYSICS_DRAWS, HiddenPhysics, PushTSim
from world_models.interface import WorldModel

_HERE = np.zeros(1, np.int64)  # the one episode of a single env, as an index into its bookkeeping


def _first(batched: dict[str, np.ndarray]) -> dict[str, Any]:
    """Episode 0's entries of a batched dict."""
    return {key: value[0] for key, value in batched.items()}


class _PushTGoalEnv(gym.Env):
    """What both single envs share: settings, spaces, the episode's bookkeeping, ``compute_reward``, rendering.

    Arguments: the fields of :class:`~leworld_env.envs.settings.TaskSettings` as keywords, or
    ``settings=`` a ready one (keywords then replace its fields).
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": list(RENDER_MODES), "render_fps": RENDER_FPS}
    runs_physics: ClassVar[bool] = False  # only an env that runs physics can hide it (hidden_physics)
    episodes: Episodes

    def __init__(
        self, model: str | Path | WorldModel | None = None, *, settings: TaskSettings | None = None, **arguments: Any
    ) -> None:
        if model is not None:  # the first positional argument, as before TaskSettings
            arguments["model"] = model
        self.settings = TaskSettings.of(settings, **arguments)
        if not self.runs_physics:
            self.settings.refuse_hidden_physics(type(self).__name__)
        else:
            self.settings.refuse_ensemble(type(self).__name__)
        self.setup: TaskSetup = make_setup(self.settings)
        self.world_model = self.setup.world_model
        self.observation_space = observation_space(self.setup.latent_dim, self.setup.history)
        self.action_space = ACTION_SPACE
        self.render_mode = self.settings.render_mode
        self.render_size = self.settings.render_size
        self._window: HumanWindow | None = None

    def compute_reward(self, achieved_goal: Any, desired_goal: Any, info: Any) -> np.ndarray | float:
        """The reward of goal vectors, one pair (a float) or a batch (an array); ``info`` is unused.

        The step's reward is exactly this, so HER may relabel ``desired_goal``. Goal vectors are
        (D + 4,) or batches (B, D + 4).
        """
        return compute_reward_batch(self.setup, achieved_goal, desired_goal)

    def _observation(self) -> dict[str, np.ndarray]:
        return _first(self.episodes.observation(_HERE))

    def _info(self) -> dict[str, Any]:
        info = _first(self._batched_info())
        for key in ("is_success", "success_strict", "success_block"):
            if key in info:
                info[key] = bool(info[key])
        info["coverage"] = float(info["coverage"])
        info["step"] = int(info["step"])
        return info

    def _batched_info(self) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def _started(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """What ``reset`` returns once the episode has begun (drawn first in ``human`` mode)."""
        if self.render_mode == "human":
            self.render()
        return self._observation(), self._info()

    def _stepped(
        self, outcome: tuple[np.ndarray, np.ndarray, np.ndarray]
    ) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        """What ``step`` returns, from the episode's rewards, terminated and truncated (batches of one)."""
        rewards, terminated, truncated = outcome
        observation, info = self._started()
        return observation, float(rewards[0]), bool(terminated[0]), bool(truncated[0]), info

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
    ``compute_reward(achieved_goal, desired_goal, info)``; see ``reward`` in
    :class:`~leworld_env.envs.settings.TaskSettings`.

    ## Starting state
    A real state from the model's start bank (``starts.safetensors``: held-out states of
    real gym-pusht episodes); the model's history is its frame's latent repeated with zero
    actions (a frame shows no velocity). ``reset(options=...)`` takes ``bank_index``,
    ``start`` (5 numbers, or 7 with the agent's velocity) or ``goal_state`` (5 numbers,
    dataset goal).

    ## Episode end
    Terminated on success, judged on the probed block pose (unless ``terminate_on_success``
    is off); truncated after ``max_episode_steps``.

    ## Info
    ``is_success``, ``coverage`` (of the goal tee by the probed block), ``state`` (the
    probed agent x, y, block x, y, angle), ``goal_state``, ``step``; with the dataset goal
    also ``success_strict`` (LeWM's test on the probed state: agent and block) and
    ``success_block`` (the block-only test on it).

    ## Arguments
    The fields of :class:`~leworld_env.envs.settings.TaskSettings` (model, backend, goal, reward,
    frameskip, history, max_episode_steps, render_mode, render_size, ...) as keywords, or
    ``settings=`` a ready one (keywords then replace its fields); ``hidden_physics=True`` is refused.

    A step is ``frameskip / model frameskip`` calls of the model's ``predict``. A stateful model (an
    episodic memory model, ``LeWorld-PushT-Glide-v0``) reads the episode's bit memory before each call
    and writes the predicted transition after it (``self.episodes.memory``, emptied at reset).
    ``render()`` draws the probed state in PushT's style, with the goal tee.
    """

    def __init__(
        self, model: str | Path | WorldModel | None = None, *, settings: TaskSettings | None = None, **arguments: Any
    ) -> None:
        super().__init__(model, settings=settings, **arguments)
        self.episodes: DreamBatch = DreamBatch(self.setup, 1)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        super().reset(seed=seed)
        self.episodes.reset(_HERE, [self.np_random], [options])
        return self._started()

    def step(self, action: Any) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        return self._stepped(self.episodes.step(_HERE, check_actions(action, 1)))

    def _batched_info(self) -> dict[str, np.ndarray]:
        return self.episodes.info(_HERE)

    def _scene(self) -> np.ndarray:
        return draw_scene(self.episodes.probed[0].astype(np.float64), self.episodes.goal_state[0], self.render_size)


class LeWorldPushTRealEnv(_PushTGoalEnv):
    """PushT on real physics with the dream's spaces: gym-pusht steps, the model encodes each frame.

    Spaces, reward and arguments are those of :class:`LeWorldPushTEnv`, so a policy trained
    in the dream runs here unchanged. The differences: a step holds the action's target
    for the model's frameskip of gym-pusht physics steps (repeated as in the dream when
    ``frameskip`` is a multiple) and encodes the new frame with the same
    model and backend; ``achieved_goal``'s pose, the reward, ``is_success``, ``coverage``
    and ``state`` come from the simulator's exact state; ``info["probed_state"]`` is
    what the model's probe reads from the latent. Episodes start from the same bank, so a
    seed gives the same start and goal in both envs; the simulator starts with the start's
    recorded agent velocity (LeWM's evaluation restores it too), ``info["agent_vel"]`` is
    the agent's velocity now (px/s), and ``info["targets"]`` float64 (physics steps, 2) the
    absolute PD targets gym-pusht's ``step`` took during the last env step (none after a
    reset): what replays the episode in a plain gym-pusht ``PushTEnv``.

    ## Hidden physics (``LeWorld-PushT-Hidden-Real-v0``, or ``hidden_physics=True``)
    Every reset draws the episode's :class:`~leworld_env.sim.pusht_sim.HiddenPhysics` (space damping,
    agent-block friction, block mass) from ``self.np_random``, after the start and goal, over
    :data:`~leworld_env.sim.pusht_sim.HIDDEN_PHYSICS_RANGES`; the same seed gives the same start, goal
    and physics. Spaces, reward, start and end are those above; nothing in the observation holds
    the physics, which shows only in how the block moves (it glides on after a push, turns more or
    less, is dragged along), so a policy must infer it from past steps: the memory task. The plain
    real twin is its Markov control.

    * ``physics_draw="glide"`` (``LeWorld-PushT-Glide-Real-v0``): the delayed-glide task's draw instead,
      damping 0 (the block stops dead) or 0.2 (it glides) with equal odds, gym-pusht's friction and mass.
    * A stateful ``model`` (an episodic memory model; the glide ids use the shipped one) gets one bit
      memory (``self.memory``), emptied at reset and written once per model step from the frames
      before and after it.
    * Reset option ``physics``: a ``HiddenPhysics`` or a dict of some of ``damping``,
      ``friction``, ``block_mass`` (the rest gym-pusht's) sets the episode's physics
      explicitly, in either env.
    * ``info["physics"]`` (hidden only): float64 (3,), the episode's damping, friction and
      block mass in that order, for analysis and tests. An agent must not read it: it is the
      answer to the task.

    ## Arguments
    Those of :class:`LeWorldPushTEnv` (:class:`~leworld_env.envs.settings.TaskSettings`), and its
    ``hidden_physics`` too.
    """

    runs_physics: ClassVar[bool] = True

    def __init__(
        self, hidden_physics: bool | None = None, *, settings: TaskSettings | None = None, **arguments: Any
    ) -> None:
        if hidden_physics is not None:  # the first positional argument, as before TaskSettings
            arguments["hidden_physics"] = hidden_physics
        super().__init__(settings=settings, **arguments)
        self.hidden_physics = self.settings.hidden_physics
        config = self.world_model.config
        self.sim = PushTSim(config.image_size, config.frameskip, config.action_scale)
        self.episodes = Episodes(self.setup, 1)
        self._targets = np.zeros((0, 2))
        model = self.world_model  # a stateful model carries its memory from the real frames, as in the dream
        self.memory = model.new_memory(1) if getattr(model, "stateful", False) else None

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        super().reset(seed=seed)
        start, goal_state = start_and_goal(self.setup, self.np_random, options, extra=("physics",))
        physics = (options or {}).get("physics")
        self.sim.reset(state=start, physics=self._episode_physics(physics))
        self._targets = np.zeros((0, 2))
        size = self.setup.image_size
        z = self.world_model.encode(np.stack([self.sim.frame(), draw_frames(goal_state[None], size)[0]]))
        self.episodes.begin(_HERE, z[:1], goal_state[None], z[1:], self.sim.block_pose[None])
        if self.memory is not None:
            self.memory.reset()
        return self._started()

    def _episode_physics(self, option: Any) -> HiddenPhysics:
        """The reset option's physics, else a draw from ``np_random`` (hidden), else gym-pusht's."""
        if option is not None:
            return HiddenPhysics.coerce(option)
        if self.hidden_physics:
            return PHYSICS_DRAWS[self.settings.physics_draw](self.np_random)
        return HiddenPhysics()

    def step(self, action: Any) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        actions = check_actions(action, 1)
        targets = []
        z = self.episodes.z[0, -1:]
        for _ in range(self.setup.predicts_per_step):
            self.sim.step(actions[0])
            targets += [self.sim.last_target] * self.sim.frameskip  # one target held over the model step
            if self.memory is not None:  # one record per model step, from the frames before and after it
                z_next = self.world_model.encode(self.sim.frame()[None])
                self.world_model.observe(self.memory, _HERE, z, actions, z_next)
                z = z_next
        self._targets = np.array(targets)
        if self.memory is None:
            z = self.world_model.encode(self.sim.frame()[None])
        self.episodes.push(_HERE, z)
        return self._stepped(self.episodes.end_step(_HERE, self.sim.block_pose[None]))

    def _batched_info(self) -> dict[str, np.ndarray]:
        info = self.episodes.episode_info(self.sim.state().vector()[None], _HERE)
        info["agent_vel"] = self.sim.agent_vel[None]
        info["targets"] = self._targets[None].copy()
        info["probed_state"] = self.world_model.probe(self.episodes.z[0, -1:]).astype(np.float64)
        if self.hidden_physics:
            info["physics"] = self.sim.physics.vector()[None]  # for analysis only: an agent must not read it
        return info

    def _scene(self) -> np.ndarray:
        return draw_scene(self.sim.state().vector(), self.episodes.goal_state[0], self.render_size)

    def close(self) -> None:
        super().close()
        self.sim.close()
