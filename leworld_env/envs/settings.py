"""The arguments of every LeWorld PushT env, once: :class:`TaskSettings`, checked when it is built.

The dream and the real twin (``envs/pusht.py``), the Gymnasium vector env
(``envs/vector.py``) and the SB3 ``VecEnv`` (``envs/sb3.py``) all take the fields
of :class:`TaskSettings` as keyword arguments, or a ready one as ``settings=``
(keyword arguments then replace its fields); :meth:`TaskSettings.of` does that.
The checks that need the loaded model (its action size, frame size, probe and
frameskip) are in :func:`leworld_env.envs.task.make_setup`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from leworld_env.sim.pusht_sim import PHYSICS_DRAWS
from world_models.backends.devices.client import check_port
from world_models.config import MIN_IMAGE_SIZE
from world_models.errors import ArgumentError
from world_models.interface import WorldModel
from world_models.locate import DEFAULT_MODEL
from world_models.runtime import BACKENDS, DEFAULT_BACKEND, DEVICE_BACKENDS

GOALS = ("fixed", "dataset")
REWARDS = ("coverage", "latent", "success")
RENDER_MODES = ("rgb_array", "human")
DEFAULT_EPISODE_STEPS = 60  # gym-pusht's 300 physics steps at the default frameskip of 5
DEFAULT_RENDER_SIZE = 256


def check_choice(name: str, value: Any, valid: tuple[str, ...]) -> str:
    """``value`` if it is one of ``valid``, else an ``ArgumentError`` naming ``name`` and listing them."""
    if value not in valid:
        raise ArgumentError(f"unknown {name} {value!r}; choose one of: {', '.join(valid)}")
    return str(value)


def check_positive_int(name: str, value: Any) -> int:
    """``value`` as an int >= 1, or an ``ArgumentError`` (a ``ValueError``) naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ArgumentError(f"{name} must be a positive whole number, got {value!r}")
    return int(value)


def check_render_size(render_size: Any) -> int:
    """A rendered frame's side: a whole number of pixels >= :data:`~world_models.config.MIN_IMAGE_SIZE`."""
    if isinstance(render_size, bool) or not isinstance(render_size, (int, np.integer)) or render_size < MIN_IMAGE_SIZE:
        raise ArgumentError(f"render_size must be a whole number of pixels >= {MIN_IMAGE_SIZE}, got {render_size!r}")
    return int(render_size)


def check_backend(model: str | Path | WorldModel, backend: str | None, port: str | None) -> str | None:
    """The backend to load ``model`` on (``None``: :func:`world_models.load` picks), checked against ``port``."""
    if isinstance(model, WorldModel):
        if backend is not None and backend != model.backend:
            raise ArgumentError(f"model is already loaded on backend {model.backend!r}; backend={backend!r} disagrees")
        return backend
    if backend is not None:  # None: world_models.load picks (numba-q4 where the model has an .lq40)
        backend = check_choice("backend", backend, BACKENDS)
    if backend in DEVICE_BACKENDS:
        check_port(port, backend)
    if backend not in DEVICE_BACKENDS and port is not None:
        raise ArgumentError(
            f"port= is for the hardware backends ({', '.join(DEVICE_BACKENDS)}), not {backend or DEFAULT_BACKEND!r}"
        )
    return backend


def _number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def check_ensemble(ensemble: Any, penalty: Any, limit: Any) -> dict[str, Any]:
    """The ensemble fields, checked: folders as a tuple, a finite penalty >= 0, a limit > 0 or None,
    and neither of the last two without an ensemble."""
    if isinstance(ensemble, (str, Path)) or not isinstance(ensemble, (list, tuple)):
        raise ArgumentError(f"ensemble must be a list of model folders (predictor heads), got {ensemble!r}")
    if not all(isinstance(folder, (str, Path)) for folder in ensemble):
        raise ArgumentError(f"ensemble must hold model folder paths, got {list(ensemble)!r}")
    if not _number(penalty) or not np.isfinite(penalty) or penalty < 0:
        raise ArgumentError(f"disagreement_penalty must be a finite number >= 0, got {penalty!r}")
    if limit is not None and (not _number(limit) or not np.isfinite(limit) or limit <= 0):
        raise ArgumentError(f"disagreement_limit must be a finite number > 0 or None, got {limit!r}")
    if not ensemble and (penalty > 0 or limit is not None):
        raise ArgumentError("disagreement_penalty and disagreement_limit need ensemble= (predictor heads to disagree)")
    return {
        "ensemble": tuple(ensemble),
        "disagreement_penalty": float(penalty),
        "disagreement_limit": None if limit is None else float(limit),
    }


@dataclass(frozen=True)
class TaskSettings:
    """The arguments of the LeWorld PushT envs; each is checked when built (an ``ArgumentError``, also a
    ``ValueError``, naming it).

    Attributes:
        model: a shipped model's name (default ``"pusht-tiny"``), a model folder, an ``.lq40``
            file, or a loaded :class:`~world_models.interface.WorldModel`.
        backend: ``"numba-q4"`` (default), ``"numba"``, ``"torch"``, or ``"esp32"`` / ``"fpga"``
            with ``port=``; ``None`` lets :func:`world_models.load` pick.
        port: the board of a hardware backend: a device path (``/dev/ttyUSB0``) or a pyserial URL.
        goal: ``"fixed"``: gym-pusht's goal pose, success = coverage > 0.95; ``"dataset"``:
            the LeWM protocol, the goal is the real state 25 physics steps after the start,
            ``is_success`` (and termination, and the ``"success"`` reward) = the block within
            20 px and pi/9 of the goal's (the block-only test, read from the goal vectors); the
            info also reports ``success_strict``, LeWM's own test on the whole state (agent and
            block together within 20 px, block angle within pi/9:
            :func:`~leworld_env.sim.pusht_sim.lewm_eval_state`), and ``success_block``, the
            block-only test on the same state.
        reward: ``"coverage"``: gym-pusht's ``clip(coverage / 0.95, 0, 1)``; ``"latent"``: minus
            the root-mean-square distance between the latent and the goal latent; ``"success"``:
            1.0 on success, else 0.0.
        frameskip: physics steps per env step, a multiple of the model's (default ``None``: the
            model's, 5). Above it, the action is repeated for ``frameskip / model frameskip`` model
            steps, its relative target taken afresh from the agent's position at each (as the model
            learned).
        history: latents stacked in ``observation`` (default 1).
        max_episode_steps: truncate after this many env steps (``None``: never). Through
            ``gym.make`` this is Gymnasium's own ``TimeLimit`` (default 60 env steps = gym-pusht's
            300 physics steps); the vector envs default to 60 (:data:`DEFAULT_EPISODE_STEPS`); the
            single env classes built directly, to no limit.
        render_mode: ``None``, ``"rgb_array"`` or ``"human"`` (a pygame window; the batched envs
            take ``"rgb_array"`` only).
        render_size: side of rendered frames in pixels (default 256).
        hidden_physics: the real twin only: draw the episode's damping, friction and block mass
            at every reset (``LeWorld-PushT-Hidden-Real-v0``; default ``False``: gym-pusht's
            physics). The dream and the batched envs refuse ``True``.
        physics_draw: with ``hidden_physics``, how each episode's physics is drawn: ``"hidden"``
            (default: each field over its range, :func:`~leworld_env.sim.pusht_sim.sample_hidden_physics`)
            or ``"glide"`` (the delayed-glide task: damping 0 or 0.2 with equal odds,
            ``LeWorld-PushT-Glide-Real-v0``).
        terminate_on_success: end the episode (``terminated``) when ``is_success`` holds (default
            ``True``, gym-pusht's habit). ``False`` runs every episode to ``max_episode_steps``
            whatever happens, as LeWM's evaluation does (``leworld eval --protocol lewm`` sets it):
            success there counts at any step, and an episode that met the block-only test may
            still go on to meet the strict one.
        ensemble: the dream only: model folders of predictor heads on the model's encoder
            (:mod:`world_models.lewm.heads`); with them the dream reports ``info["disagreement"]``,
            the heads' and the model's disagreement about each step (:mod:`world_models.ensemble`;
            the dream itself still runs the model). Default ``()``: none.
        disagreement_penalty: subtracted from the reward times the step's disagreement (MOPO's
            uncertainty penalty; default 0). Needs ``ensemble``. ``compute_reward`` (HER's relabelling)
            reads only goal vectors, so it gives the reward without the penalty.
        disagreement_limit: end the episode (truncated) when a step's disagreement exceeds it
            (MOReL's halt; default ``None``: never). Needs ``ensemble``.
    """

    model: str | Path | WorldModel = DEFAULT_MODEL
    backend: str | None = None
    port: str | None = None
    goal: str = "fixed"
    reward: str = "coverage"
    frameskip: int | None = None
    history: int = 1
    max_episode_steps: int | None = None
    render_mode: str | None = None
    render_size: int = DEFAULT_RENDER_SIZE
    hidden_physics: bool = False
    physics_draw: str = "hidden"
    terminate_on_success: bool = True
    ensemble: tuple[str | Path, ...] = ()
    disagreement_penalty: float = 0.0
    disagreement_limit: float | None = None

    def __post_init__(self) -> None:
        for name in ("hidden_physics", "terminate_on_success"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise ArgumentError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if self.render_mode is not None and self.render_mode not in RENDER_MODES:
            raise ArgumentError(f"unknown render_mode {self.render_mode!r}; choose one of: {', '.join(RENDER_MODES)}")
        checked = {
            "hidden_physics": bool(self.hidden_physics),
            "terminate_on_success": bool(self.terminate_on_success),
            "render_size": check_render_size(self.render_size),
            "goal": check_choice("goal", self.goal, GOALS),
            "reward": check_choice("reward", self.reward, REWARDS),
            "history": check_positive_int("history", self.history),
            "physics_draw": check_choice("physics_draw", self.physics_draw, tuple(PHYSICS_DRAWS)),
        }
        for name in ("max_episode_steps", "frameskip"):
            value = getattr(self, name)
            checked[name] = None if value is None else check_positive_int(name, value)
        checked["backend"] = check_backend(self.model, self.backend, self.port)
        checked.update(check_ensemble(self.ensemble, self.disagreement_penalty, self.disagreement_limit))
        for name, value in checked.items():
            object.__setattr__(self, name, value)

    @classmethod
    def of(cls, settings: TaskSettings | None = None, **arguments: Any) -> TaskSettings:
        """``settings`` (default: all defaults) with the keyword ``arguments`` replacing its fields.

        How every env reads its arguments; a name that is not a field is a ``TypeError``.
        """
        if settings is None:
            return cls(**arguments)
        if not isinstance(settings, cls):
            raise TypeError(f"settings must be a {cls.__name__}, got {settings!r}")
        return dataclasses.replace(settings, **arguments) if arguments else settings

    def refuse_hidden_physics(self, env: str) -> None:
        """An ``ArgumentError`` if ``hidden_physics`` is set for ``env``, which has no physics to hide."""
        if self.hidden_physics:
            raise ArgumentError(
                f"hidden_physics=True is for the real twin (LeWorldPushTRealEnv, LeWorld-PushT-Hidden-Real-v0); "
                f"{env} runs no physics"
            )

    def refuse_ensemble(self, env: str) -> None:
        """An ``ArgumentError`` if an ensemble or its penalty is set for ``env``, which runs real physics."""
        if self.ensemble or self.disagreement_penalty > 0 or self.disagreement_limit is not None:
            raise ArgumentError(
                f"ensemble, disagreement_penalty and disagreement_limit are the dream's (how far its heads agree); "
                f"{env} runs real physics"
            )
