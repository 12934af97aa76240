"""The batched dream as a stable-baselines3 ``VecEnv`` (same-step autoreset).

Kept apart from ``vector.py`` because stable-baselines3 imports torch, and the
Gymnasium envs do not need it.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from stable_baselines3.common.vec_env.base_vec_env import VecEnv, VecEnvIndices, VecEnvObs, VecEnvStepReturn

from leworld_env.envs.settings import TaskSettings
from leworld_env.envs.task import RENDER_FPS, check_actions, observation_space
from leworld_env.envs.vector import Batched
from leworld_env.sim.pusht_sim import ACTION_SPACE
from world_models.errors import ArgumentError


class LeWorldSB3VecEnv(Batched, VecEnv):
    """The batched dream as a stable-baselines3 ``VecEnv`` (SB3 rejects Gymnasium vector envs).

    Same-step autoreset as SB3 expects: when an episode ends, the returned observation is
    already the next episode's first one, the last one is in ``infos[i]["terminal_observation"]``,
    and ``infos[i]["TimeLimit.truncated"]`` tells a time limit from a success.
    ``seed(s)`` seeds env i with s + i at the next ``reset()``. Arguments: see
    :class:`~leworld_env.envs.vector.Batched`.
    """

    def __init__(self, num_envs: int = 1, *, settings: TaskSettings | None = None, **arguments: Any) -> None:
        self._build(num_envs, settings, arguments)
        space = observation_space(self.setup.latent_dim, self.setup.history)
        VecEnv.__init__(self, self.batch.num_envs, space, ACTION_SPACE)
        # VecEnv.__init__ overwrites metadata; keep the frame rate renderers and recorders read.
        self.metadata = {"render_modes": ["rgb_array"], "render_fps": RENDER_FPS}
        self._actions = np.zeros((self.num_envs, 2), np.float32)

    def reset(self) -> VecEnvObs:
        self._seed(list(self._seeds))
        indices = np.arange(self.num_envs)
        self.batch.reset(indices, self.rngs, [opts or None for opts in self._options])
        self._reset_seeds()
        self._reset_options()
        self.reset_infos = self._info_dicts()
        return self.batch.observation()

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = check_actions(actions, self.num_envs)

    def step_wait(self) -> VecEnvStepReturn:
        indices = np.arange(self.num_envs)
        rewards, terminated, truncated = self.batch.step(indices, self._actions)
        done = terminated | truncated
        infos = self._info_dicts()
        finished = np.flatnonzero(done)
        if finished.size:
            last = self.batch.observation(finished)
            for k, i in enumerate(finished):
                infos[i]["terminal_observation"] = {key: value[k] for key, value in last.items()}
                infos[i]["TimeLimit.truncated"] = bool(truncated[i] and not terminated[i])
            self.batch.reset(finished, self.rngs)
            fresh = self._info_dicts()
            for i in finished:  # as DummyVecEnv: the info of the episode that just began
                self.reset_infos[i] = fresh[i]
        return self.batch.observation(), rewards.astype(np.float32), done, infos

    def _info_dicts(self) -> list[dict[str, Any]]:
        batched = self.batch.info()
        return [{key: value[i] for key, value in batched.items()} for i in range(self.num_envs)]

    def close(self) -> None:
        pass

    def get_images(self) -> list[np.ndarray]:
        return list(self._frames())

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        return [getattr(self, attr_name) for _ in self._get_indices(indices)]

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        if list(self._get_indices(indices)) != list(range(self.num_envs)):
            raise ArgumentError(
                f"set_attr({attr_name!r}) for some envs only: the batched dream's envs share their "
                "attributes; set it for all of them (indices=None)"
            )
        setattr(self, attr_name, value)

    def env_method(self, method_name: str, *method_args: Any, indices: VecEnvIndices = None, **kwargs: Any) -> list:
        """Only ``compute_reward`` (what HER calls; it is the same for every env and takes batches):
        the envs of the batch are not separate objects whose methods could be called one by one."""
        if method_name == "compute_reward":
            result = self.compute_reward(*method_args, **kwargs)
            return [result for _ in self._get_indices(indices)]
        raise NotImplementedError(
            f"env_method({method_name!r}) is not available on LeWorldSB3VecEnv: its envs share one batch; "
            "only compute_reward is (use reset() / step() for the whole batch)"
        )

    def env_is_wrapped(self, wrapper_class: type[gym.Wrapper], indices: VecEnvIndices = None) -> list[bool]:
        return [False for _ in self._get_indices(indices)]
