"""LeWorld's Gymnasium side: the environments, real PushT glue, data collection, the ``leworld`` CLI.

Importing this package registers (Gymnasium 1.x loads no plugin entry points)::

    LeWorld-PushT-v0        the dream: a learned world model steps the latent
                            (also a vector_entry_point: gym.make_vec(..., vectorization_mode="vector_entry_point"))
    LeWorld-PushT-Real-v0   the same spaces on gym-pusht physics
    LeWorld-PushT-Hidden-Real-v0
                            the real twin with per-episode hidden physics (damping, friction,
                            block mass) drawn at every reset: the memory-dependent task
    LeWorld-PushT-Glide-Real-v0
                            the delayed-glide task on real physics: damping 0 or 0.2 per
                            episode, 100-step episodes (docs/leworld_memory.md)
    LeWorld-PushT-Glide-v0  its dream: the shipped episodic memory model (pusht-glide-memory),
                            one bit memory per episode, on the numba backend

``gym.make("leworld_env:LeWorld-PushT-v0")`` imports it on the way.
"""

import gymnasium as gym

from leworld_env.envs.settings import DEFAULT_EPISODE_STEPS
from leworld_env.sim.pusht_sim import (
    HiddenPhysics,
    PushTSim,
    PushTState,
    lewm_eval_state,
    lewm_success,
    sample_hidden_physics,
)

DREAM_ID = "LeWorld-PushT-v0"
REAL_ID = "LeWorld-PushT-Real-v0"
HIDDEN_REAL_ID = "LeWorld-PushT-Hidden-Real-v0"
GLIDE_REAL_ID = "LeWorld-PushT-Glide-Real-v0"
GLIDE_ID = "LeWorld-PushT-Glide-v0"
GLIDE_MODEL = "pusht-glide-memory"  # the shipped episodic memory model of the delayed-glide task
GLIDE_EPISODE_STEPS = 100  # as the task's data (leworld collect --policy delayed-glide)


_DREAM = {"entry_point": "leworld_env.envs.pusht:LeWorldPushTEnv",
          "vector_entry_point": "leworld_env.envs.vector:LeWorldPushTVectorEnv"}  # fmt: skip
_REAL = {"entry_point": "leworld_env.envs.pusht:LeWorldPushTRealEnv"}
_GLIDE_REAL = {"hidden_physics": True, "physics_draw": "glide", "model": GLIDE_MODEL}
_ENVS = {  # id -> (env classes, episode steps, keyword arguments)
    DREAM_ID: (_DREAM, DEFAULT_EPISODE_STEPS, {}),
    REAL_ID: (_REAL, DEFAULT_EPISODE_STEPS, {}),
    HIDDEN_REAL_ID: (_REAL, DEFAULT_EPISODE_STEPS, {"hidden_physics": True}),
    GLIDE_REAL_ID: (_REAL, GLIDE_EPISODE_STEPS, _GLIDE_REAL),
    GLIDE_ID: (_DREAM, GLIDE_EPISODE_STEPS, {"model": GLIDE_MODEL}),
}


def _register() -> None:
    for env_id, (classes, steps, kwargs) in _ENVS.items():
        if env_id not in gym.registry:
            gym.register(id=env_id, **classes, max_episode_steps=steps, kwargs=kwargs)


_register()

__all__ = [
    "DREAM_ID",
    "GLIDE_ID",
    "GLIDE_MODEL",
    "GLIDE_REAL_ID",
    "HIDDEN_REAL_ID",
    "REAL_ID",
    "HiddenPhysics",
    "PushTSim",
    "PushTState",
    "lewm_eval_state",
    "lewm_success",
    "sample_hidden_physics",
]
