"""The public path of the SB3 adapter: ``from leworld_env.sb3 import LeWorldSB3VecEnv``.

The code is :mod:`leworld_env.envs.sb3`; this module only keeps the short import the README and
users' scripts use. It imports stable-baselines3 (and torch), so ``import leworld_env`` does not.
"""

from leworld_env.envs.sb3 import LeWorldSB3VecEnv

__all__ = ["LeWorldSB3VecEnv"]
