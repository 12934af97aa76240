"""What the dream and the real twin share: the loaded task, spaces, goals, reward and success.

The arguments themselves are :class:`~leworld_env.envs.settings.TaskSettings`;
:func:`make_setup` loads what they name and checks them against the model.

A *goal vector* (``achieved_goal`` and ``desired_goal``) is a latent followed by
the block pose it shows, ``[z (D), x / 512, y / 512, sin angle, cos angle]``.
Both halves are needed: the latent for LeWM's latent-distance reward and for
planners, the pose for gym-pusht's coverage and the success tests. In the
dream the achieved pose is probed from the latent; in the real twin it is the
simulator's. :func:`goal_reward` reads only the two goal vectors, so
``compute_reward`` gives the step's reward exactly and HER can relabel goals.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from gymnasium import spaces

from leworld_env.envs.settings import TaskSettings
from leworld_env.envs.starts import STARTS_FILE, StartBank, load_start_bank
from leworld_env.sim.pusht_sim import SUCCESS_COVERAGE, lewm_success
from numba_kernels.pusht_geometry import tee_coverage_pairs
from numba_kernels.pusht_raster import GOAL_POSE, render_pusht
from world_models.config import check_image_size
from world_models.errors import ArgumentError, LeWorldError
from world_models.interface import WorldModel
from world_models.locate import DEFAULT_MODEL, SHIPPED_DIR, resolve_model
from world_models.pose import POSE_FEATURES, features_to_pose, pose_features
from world_models.runtime import DEVICE_BACKENDS, load

FIXED_GOAL_AGENT = (350.0, 160.0)  # where the agent stands in the fixed goal's frame: clear of the goal tee
RENDER_FPS = 10

_MODEL_CACHE: dict[tuple[str, str | None], WorldModel] = {}


def open_model(settings: TaskSettings) -> WorldModel:
    """The world model the settings name: a shipped name, a folder or ``.lq40`` path, or a loaded model.

    Models on CPU backends are shared between envs of one process (they hold no episode state).
    """
    model, backend = settings.model, settings.backend
    if isinstance(model, WorldModel):
        return model
    if backend in DEVICE_BACKENDS:
        return load(model, backend=backend, port=settings.port)
    key = (str(Path(model).resolve()) if Path(model).exists() else str(model), backend)
    if key not in _MODEL_CACHE:
        _MODEL_CACHE[key] = load(model, backend=backend)
    return _MODEL_CACHE[key]


def open_ensemble(world_model: WorldModel, heads: tuple[str | Path, ...]) -> WorldModel:
    """``world_model`` with predictor heads (model folders, each on its own default float backend) beside it."""
    from world_models.ensemble import PredictorEnsemble

    members = [world_model]
    for head in heads:
        key = (str(Path(head).resolve()), None)
        if key not in _MODEL_CACHE:
            _MODEL_CACHE[key] = load(head)
        members.append(_MODEL_CACHE[key])
    return PredictorEnsemble(members)


def model_folder(model: str | Path | WorldModel) -> Path | None:
    """The folder a model was read from, where there is one."""
    path = Path(getattr(model, "path", "")) if isinstance(model, WorldModel) else Path(model)
    if path.suffix == ".lq40":
        return path.parent
    try:
        return resolve_model(path) if str(path) else None
    except LeWorldError:
        return None


def open_start_bank(model: str | Path | WorldModel) -> StartBank:
    """The model folder's ``starts.safetensors``, else its encoder model's (a LeWorld memory model's
    frozen LeWM), else the default model's."""
    candidates = [model_folder(model)]
    encoder = getattr(model, "encoder", None)
    if isinstance(encoder, WorldModel):
        candidates.append(model_folder(encoder))
    for folder in candidates:
        if folder is not None and (folder / STARTS_FILE).is_file():
            return load_start_bank(folder / STARTS_FILE)
    return load_start_bank(SHIPPED_DIR / DEFAULT_MODEL / STARTS_FILE)


@dataclass
class TaskSetup:
    """Checked settings and what they resolve to (shared by every env class)."""

    settings: TaskSettings
    world_model: WorldModel
    bank: StartBank
    frameskip: int  # physics steps per env step: the settings', else the model's
    predicts_per_step: int  # model steps per env step

    @property
    def goal(self) -> str:
        return self.settings.goal

    @property
    def reward(self) -> str:
        return self.settings.reward

    @property
    def history(self) -> int:
        """Latents stacked in ``observation``."""
        return self.settings.history

    @property
    def max_episode_steps(self) -> int | None:
        return self.settings.max_episode_steps

    @property
    def latent_dim(self) -> int:
        return self.world_model.config.latent_dim

    @property
    def image_size(self) -> int:
        return self.world_model.config.image_size


def make_setup(settings: TaskSettings) -> TaskSetup:
    """Load the model and the start bank, and check the settings against the model (a ``ValueError`` naming it)."""
    world_model = open_model(settings)
    if settings.ensemble:
        world_model = open_ensemble(world_model, settings.ensemble)
    config, model = world_model.config, settings.model
    if config.action_dim != 2:
        raise ArgumentError(f"model {model}: action_dim is {config.action_dim}; PushT actions are 2-d (dx, dy)")
    check_image_size(config.image_size, f"model {model}: image_size")
    if not world_model.has_probe:
        raise ArgumentError(f"model {model}: has no probe (latent -> state); run leworld probe --model {model}")
    frameskip = config.frameskip if settings.frameskip is None else settings.frameskip
    if frameskip % config.frameskip:
        raise ArgumentError(
            f"frameskip {frameskip} must be a multiple of the model's frameskip {config.frameskip} "
            "(one env step is a whole number of model steps)"
        )
    return TaskSetup(
        settings=settings,
        world_model=world_model,
        bank=open_start_bank(world_model),
        frameskip=frameskip,
        predicts_per_step=frameskip // config.frameskip,
    )


# ------------------------------------------------------------------ spaces
def observation_space(latent_dim: int, history: int) -> spaces.Dict:
    """``observation``: the last ``history`` latents, oldest first, flat; goals: latent + pose features."""
    goal_box = spaces.Box(-np.inf, np.inf, (latent_dim + POSE_FEATURES,), np.float32)
    return spaces.Dict(
        {
            "observation": spaces.Box(-np.inf, np.inf, (history * latent_dim,), np.float32),
            "achieved_goal": goal_box,
            "desired_goal": goal_box,
        }
    )


REAL_KINDS = "biuf"  # numpy dtype kinds an action may have: bool, integers, floats (not complex, text, objects)


def _brief_value(value: Any, limit: int = 120) -> str:
    text = " ".join(repr(value).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_actions(actions: Any, batch: int) -> np.ndarray:
    """Actions as float32 (batch, 2), clipped to [-1, 1].

    Raises:
        ArgumentError: (a ``ValueError``) naming the value, when it is not ``batch`` pairs of finite real
            numbers: a complex, text or object array, a ragged list, NaN or inf.
    """
    expected = f"{batch} action(s) of shape (2,): finite real numbers in [-1, 1]"
    try:
        array = np.asarray(actions)
    except (ValueError, TypeError) as err:  # a ragged list, an object numpy cannot hold
        raise ArgumentError(f"action {_brief_value(actions)}: expected {expected} ({err})") from None
    if array.dtype.kind not in REAL_KINDS:
        raise ArgumentError(f"action {_brief_value(actions)} has dtype {array.dtype}; expected {expected}")
    if array.size != batch * 2:
        raise ArgumentError(f"expected {expected}, got an array of shape {array.shape}")
    array = array.reshape(batch, 2).astype(np.float64)
    if not np.all(np.isfinite(array)):
        raise ArgumentError(f"actions must be finite numbers in [-1, 1], got {_brief_value(array.tolist())}")
    return np.clip(array, -1.0, 1.0).astype(np.float32)


# ------------------------------------------------------------------ goals, reward, success
def goal_vectors(z: np.ndarray, block_pose: np.ndarray) -> np.ndarray:
    """Latents (B, D) and block poses (B, 3) -> goal vectors (B, D + 4) float32."""
    return np.concatenate([np.asarray(z, np.float32), pose_features(block_pose)], axis=-1)


def block_coverage(block_pose: np.ndarray, goal_pose: np.ndarray) -> np.ndarray:
    """Share of the goal tee covered by the block, for poses (B, 3) against goals (B, 3)."""
    return tee_coverage_pairs(block_pose, goal_pose)


def success(block_pose: np.ndarray, goal_pose: np.ndarray, goal: str, coverage: np.ndarray | None = None) -> np.ndarray:
    """``fixed``: gym-pusht's coverage > 0.95; ``dataset``: LeWM's 20 px / pi/9 test. Poses (B, 3)."""
    if goal == "fixed":
        coverage = block_coverage(block_pose, goal_pose) if coverage is None else coverage
        return coverage > SUCCESS_COVERAGE
    return np.asarray(lewm_success(block_pose, goal_pose))


def info_successes(info: dict[str, Any], goal: str) -> tuple[bool, bool]:
    """One env's step info -> (the protocol's success, the block-only success): with the dataset goal
    the info's ``success_strict`` (LeWM's test, agent and block) and ``success_block``; with the fixed
    goal ``is_success`` (coverage) and the block-only test against gym-pusht's goal pose."""
    if goal == "dataset":
        return bool(info["success_strict"]), bool(info["success_block"])
    state, target = np.asarray(info["state"]), np.asarray(info["goal_state"])
    return bool(info["is_success"]), bool(lewm_success(state[2:5], target[2:5]))


@dataclass(frozen=True)
class GoalTerms:
    """What a batch of goal-vector pairs says: coverage, success, and root-mean-square latent distance."""

    coverage: np.ndarray
    success: np.ndarray
    latent_distance: np.ndarray

    def reward(self, reward: str) -> np.ndarray:
        """``coverage``: gym-pusht's ``clip(coverage / 0.95, 0, 1)``; ``latent``: minus the distance;
        ``success``: 1.0 on success, else 0.0."""
        if reward == "latent":
            return -self.latent_distance
        if reward == "coverage":
            return np.clip(self.coverage / SUCCESS_COVERAGE, 0.0, 1.0)
        return self.success.astype(np.float64)


def goal_terms(achieved: np.ndarray, desired: np.ndarray, goal: str, latent_dim: int) -> GoalTerms:
    """Coverage, success and latent distance of goal vectors (B, D + 4), from nothing else."""
    achieved, desired = np.atleast_2d(achieved), np.atleast_2d(desired)
    difference = achieved[:, :latent_dim].astype(np.float64) - desired[:, :latent_dim]
    block, target = features_to_pose(achieved[:, latent_dim:]), features_to_pose(desired[:, latent_dim:])
    coverage = block_coverage(block, target)
    return GoalTerms(coverage, success(block, target, goal, coverage), np.sqrt(np.mean(difference**2, axis=-1)))


def goal_reward(achieved: np.ndarray, desired: np.ndarray, reward: str, goal: str, latent_dim: int) -> np.ndarray:
    """Rewards (B,) of goal vectors (B, D + 4); see :meth:`GoalTerms.reward`."""
    return goal_terms(achieved, desired, goal, latent_dim).reward(reward)


def compute_reward_batch(setup: TaskSetup, achieved: Any, desired: Any) -> np.ndarray | float:
    """``compute_reward`` for one pair of goal vectors (a float) or a batch (an array)."""
    achieved, desired = np.asarray(achieved, np.float32), np.asarray(desired, np.float32)
    rewards = goal_reward(achieved, desired, setup.reward, setup.goal, setup.latent_dim)
    return float(rewards[0]) if achieved.ndim == 1 else rewards


# ------------------------------------------------------------------ episodes
def start_and_goal(
    setup: TaskSetup, rng: np.random.Generator, options: dict[str, Any] | None, extra: tuple[str, ...] = ()
) -> tuple[np.ndarray, np.ndarray]:
    """A start state (7,) (agent xy, block pose, agent velocity) and a goal state (5,) (agent xy,
    block pose) for a new episode.

    Reset options: ``bank_index`` (int) picks a bank entry (its start with its recorded agent
    velocity); ``start`` (5 numbers, at rest, or 7 with the agent's velocity vx, vy) and
    ``goal_state`` (5 numbers, ``goal="dataset"`` only) give states directly. ``extra``: option
    names the caller handles itself (accepted here, not used).
    Without options a bank entry is drawn from ``rng``.
    """
    options = dict(options or {})
    known = ("bank_index", "start", "goal_state", *extra)
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ArgumentError(f"unknown reset option(s) {', '.join(map(repr, unknown))}; known: {', '.join(known)}")
    if "bank_index" in options:
        index = options["bank_index"]
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or not 0 <= index < len(setup.bank):
            raise ArgumentError(f"bank_index must be an integer in [0, {len(setup.bank)}), got {index!r}")
    else:
        index = setup.bank.draw(rng)
    start, goal_state = setup.bank.start_state(index), setup.bank.goal[index].copy()
    if "start" in options:
        start = _state_option("start", options["start"], with_velocity=True)
    if "goal_state" in options:
        if setup.goal != "dataset":
            raise ArgumentError("reset option goal_state needs goal='dataset'; the fixed goal is gym-pusht's")
        goal_state = _state_option("goal_state", options["goal_state"])
    if setup.goal == "fixed":
        goal_state = np.array([*FIXED_GOAL_AGENT, *GOAL_POSE])
    return start, goal_state


def _state_option(name: str, value: Any, with_velocity: bool = False) -> np.ndarray:
    """A state reset option as float64: 5 numbers, or (``with_velocity``) 7, returned as 7 (velocity 0 if absent)."""
    state = np.asarray(value, dtype=np.float64)
    shapes = ((5,), (7,)) if with_velocity else ((5,),)
    if state.shape not in shapes or not np.all(np.isfinite(state)):
        velocity = ", optionally followed by the agent's velocity vx, vy" if with_velocity else ""
        raise ArgumentError(
            f"reset option {name} must be 5 finite numbers (agent x, y, block x, y, angle{velocity}), got {value!r}"
        )
    if with_velocity and state.shape == (5,):
        state = np.concatenate([state, np.zeros(2)])
    return state


def draw_frames(states: np.ndarray, size: int) -> np.ndarray:
    """Model input frames (B, size, size, 3) of states (B, 5), drawn as the training data was."""
    states = np.atleast_2d(states)
    return render_pusht(states[:, :2], states[:, 2:5], size)


def draw_scene(state: np.ndarray, goal_state: np.ndarray, size: int) -> np.ndarray:
    """A frame for people: the state with the episode's goal tee drawn where it is."""
    return render_pusht(state[:2], state[2:5], size, goal_pose=goal_state[2:5])
