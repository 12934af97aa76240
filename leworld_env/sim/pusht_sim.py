"""Real PushT: gym-pusht's physics with LeWorld's conventions on top.

This module wraps ``gym_pusht.envs.PushTEnv`` (it never forks its physics) and
adds what a world-model pipeline needs:

* reset to an exact physical state (agent xy, block xy, block angle, and
  optionally the agent's velocity);
* the full state, agent velocity included;
* relative actions: ``a`` in [-1, 1]^2 sets the absolute PD target
  ``agent_xy + a * action_scale`` (LeWM's convention, 100 px by default),
  clipped to the 512x512 world and held for ``frameskip`` physics steps;
* frames drawn straight at 64, 96 or 224 px by :func:`numba_kernels.render_pusht`;
* gym-pusht's coverage, LeWM's success test (:func:`lewm_eval_state`) and the looser
  block-only one (:func:`lewm_success`).

Vocabulary: a *physics step* is one call of gym-pusht's ``step`` (0.1 s of
simulated time, ten 0.01 s pymunk sub-steps); a *model step* is ``frameskip``
physics steps under one held action.

gym-pusht quirks worked around here (see docs/pusht.md):

* ``reset(options={"reset_to_state": s})`` sets the block's position *before*
  its angle, and pymunk rotates a body about its centre of gravity, which for
  the tee sits 45 px from the body origin. The block therefore lands away from
  the requested pose whenever the angle is not 0. We pass a compensated
  position so the block's origin ends exactly where it was asked to be.
* With ``render_mode="human"``, pixel observations are ``None`` (``_render``
  draws to the window and returns nothing). We never ask gym-pusht for pixels:
  frames come from our own renderer whatever the render mode.
* gym-pusht's coverage (shapely/GEOS polygon overlay) differs in the last bit
  between processes for the same pose, which would make "same seed, same data"
  false. We compute the same quantity exactly with
  :func:`numba_kernels.tee_coverage` (agreement ~1e-14, tested), which also
  works after ``reset``, where gym-pusht reports none.
* gym-pusht's action space is [0, 512]^2 but nothing enforces it: an absolute
  target outside the world drives the agent into the walls. Our relative
  actions clip the target to the world.

Hidden physics (:class:`HiddenPhysics`, docs/pusht.md): the space damping, the
agent-block contact friction and the block's mass can be set per episode; the
defaults are gym-pusht's own values, so ``PushTSim()`` is gym-pusht unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from gym_pusht.envs import PushTEnv
from gymnasium import spaces

from numba_kernels.pusht_geometry import tee_coverage
from numba_kernels.pusht_raster import GOAL_POSE, WORLD_SIZE, render_pusht
from world_models.config import DEFAULT_IMAGE_SIZE, check_image_size
from world_models.errors import ArgumentError

DEFAULT_ACTION_SCALE = 100.0
DEFAULT_FRAMESKIP = 5
# The relative action of :meth:`PushTSim.step`, of the datasets and of the envs (one definition).
ACTION_SPACE = spaces.Box(-1.0, 1.0, (2,), np.float32)
SUCCESS_COVERAGE = 0.95  # gym-pusht's threshold
LEWM_POSITION_TOLERANCE = 20.0  # px
LEWM_ANGLE_TOLERANCE = math.pi / 9.0
# Vector from the tee's body origin to its centre of gravity, in body coordinates
# (gym-pusht's ``add_tee``: the mean of the bar's and the stem's centroids).
TEE_CENTER_OF_GRAVITY = np.array([0.0, 45.0])


HIDDEN_PHYSICS_FIELDS = ("damping", "friction", "block_mass")
# name -> (low, high, distribution) that sample_hidden_physics draws from; see docs/pusht.md for the measured effect.
HIDDEN_PHYSICS_RANGES: dict[str, tuple[float, float, str]] = {
    "damping": (1e-5, 0.2, "log-uniform"),
    "friction": (0.0, 0.5, "uniform"),
    "block_mass": (0.25, 4.0, "log-uniform"),
}


@dataclass(frozen=True)
class HiddenPhysics:
    """Per-episode physics of PushT that no single frame shows; the defaults are gym-pusht's.

    Attributes:
        damping: pymunk's ``space.damping``, the fraction of its velocity a free body keeps per
            second, in [0, 1]. gym-pusht's 0.0 stops the block the moment the agent leaves it;
            near 0.2 it glides tens of pixels after a push.
        friction: Coulomb friction coefficient of the agent-block contact, >= 0. gym-pusht's 0.0
            (its shapes keep pymunk's default; its ``body.friction = 1`` sets nothing) lets the agent
            slide along the block; with friction an oblique push drags the block and turns it.
        block_mass: mass of the block, > 0, its moment of inertia kept at gym-pusht's 3000. The
            agent is kinematic, so this does not slow the block: it sets how an off-centre push
            splits between sliding (light block) and turning (heavy block).
    """

    damping: float = 0.0
    friction: float = 0.0
    block_mass: float = 1.0

    def __post_init__(self) -> None:
        for name in HIDDEN_PHYSICS_FIELDS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
                raise ArgumentError(f"physics {name} must be a number, got {value!r}")
            object.__setattr__(self, name, float(value))
        if not 0.0 <= self.damping <= 1.0:
            raise ArgumentError(
                f"physics damping must be in [0, 1] (fraction of velocity kept per second), got {self.damping}"
            )
        if not 0.0 <= self.friction < math.inf:
            raise ArgumentError(f"physics friction must be a finite number >= 0, got {self.friction}")
        if not 0.0 < self.block_mass < math.inf:
            raise ArgumentError(f"physics block_mass must be a finite number > 0, got {self.block_mass}")

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> HiddenPhysics:
        """From a dict of some of ``damping``, ``friction``, ``block_mass`` (the rest default)."""
        if not isinstance(values, Mapping):
            raise ArgumentError(f"physics must be a HiddenPhysics or a dict, got {values!r}")
        unknown = sorted(set(values) - set(HIDDEN_PHYSICS_FIELDS))
        if unknown:
            raise ArgumentError(
                f"unknown physics key(s) {', '.join(map(repr, unknown))}; known: {', '.join(HIDDEN_PHYSICS_FIELDS)}"
            )
        return cls(**values)

    @classmethod
    def coerce(cls, value: HiddenPhysics | Mapping[str, Any]) -> HiddenPhysics:
        """``value`` itself if it is a :class:`HiddenPhysics`, else :meth:`from_mapping`."""
        return value if isinstance(value, cls) else cls.from_mapping(value)

    def vector(self) -> np.ndarray:
        """float64 (3,): the values in :data:`HIDDEN_PHYSICS_FIELDS` order."""
        return np.array([getattr(self, name) for name in HIDDEN_PHYSICS_FIELDS], dtype=np.float64)

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def sample_hidden_physics(rng: np.random.Generator) -> HiddenPhysics:
    """Draw each field from :data:`HIDDEN_PHYSICS_RANGES`, in field order, with ``rng`` alone."""
    values = {}
    for name in HIDDEN_PHYSICS_FIELDS:
        low, high, distribution = HIDDEN_PHYSICS_RANGES[name]
        if distribution == "log-uniform":
            values[name] = float(np.exp(rng.uniform(math.log(low), math.log(high))))
        else:
            values[name] = float(rng.uniform(low, high))
    return HiddenPhysics(**values)


# The delayed-glide task's damping: per episode, the block stops dead (0) or glides (0.2), with equal odds.
GLIDE_DAMPING = (0.0, 0.2)


def sample_glide_physics(rng: np.random.Generator) -> HiddenPhysics:
    """The delayed-glide task's physics: damping one of :data:`GLIDE_DAMPING` with equal odds, gym-pusht's
    friction and mass (one ``rng.integers`` draw)."""
    return HiddenPhysics(damping=GLIDE_DAMPING[int(rng.integers(len(GLIDE_DAMPING)))])


def sample_standard_physics(rng: np.random.Generator) -> HiddenPhysics:
    """gym-pusht's physics every episode (the block stops dead): the delayed-glide task's control, the
    same pipeline with nothing hidden (``rng`` is not drawn from)."""
    return HiddenPhysics()


# name -> the sampler of a hidden-physics distribution (``leworld collect --physics-draw``).
PHYSICS_DRAWS = {"hidden": sample_hidden_physics, "glide": sample_glide_physics, "standard": sample_standard_physics}


@dataclass(frozen=True)
class PushTState:
    """The physical state of a PushT scene.

    Attributes:
        agent_pos: agent (x, y), world pixels.
        agent_vel: agent velocity (vx, vy), pixels per second.
        block_pose: block body origin (x, y) and angle in radians, angle wrapped to [0, 2 pi).
    """

    agent_pos: np.ndarray
    agent_vel: np.ndarray
    block_pose: np.ndarray

    def vector(self) -> np.ndarray:
        """(agent_x, agent_y, block_x, block_y, block_angle), gym-pusht's state observation."""
        return np.concatenate([self.agent_pos, self.block_pose])


def wrap_angle(angle: np.ndarray | float) -> np.ndarray | float:
    """Wrap an angle to [0, 2 pi), the convention of gym-pusht's state observation."""
    return np.mod(angle, 2.0 * np.pi)


def angle_difference(a: np.ndarray | float, b: np.ndarray | float) -> np.ndarray | float:
    """Smallest absolute difference between two angles, in [0, pi]."""
    d = np.mod(np.asarray(a) - np.asarray(b), 2.0 * np.pi)
    return np.minimum(d, 2.0 * np.pi - d)


def lewm_success(block_pose: np.ndarray, goal_block_pose: np.ndarray) -> np.ndarray:
    """The block-only test: block position error < 20 px and angle error < pi/9.

    Looser than LeWM's own :func:`lewm_eval_state`, which also counts the agent's position.
    Works on single poses (3,) or batches (..., 3).
    """
    block_pose = np.asarray(block_pose, dtype=np.float64)
    goal_block_pose = np.asarray(goal_block_pose, dtype=np.float64)
    position_error = np.linalg.norm(block_pose[..., :2] - goal_block_pose[..., :2], axis=-1)
    angle_error = angle_difference(block_pose[..., 2], goal_block_pose[..., 2])
    return (position_error < LEWM_POSITION_TOLERANCE) & (angle_error < LEWM_ANGLE_TOLERANCE)


def lewm_eval_state(state: np.ndarray, goal_state: np.ndarray) -> np.ndarray:
    """LeWM's success test (its PushT ``eval_state``) on states (agent x, y, block x, y, angle).

    Success: the Euclidean norm of the difference of (agent x, agent y, block x, block y) to
    the goal's is below 20 px, and the block's angle error below pi/9. Works on single states
    (5,) or batches (..., 5); anything after the fifth field (a velocity) is ignored.
    """
    state = np.asarray(state, dtype=np.float64)
    goal_state = np.asarray(goal_state, dtype=np.float64)
    if state.shape[-1] < 5 or goal_state.shape[-1] < 5:
        raise ArgumentError(
            f"states have 5 fields (agent x, y, block x, y, angle), got shapes {state.shape} and {goal_state.shape}"
        )
    position_error = np.linalg.norm(state[..., :4] - goal_state[..., :4], axis=-1)
    angle_error = angle_difference(state[..., 4], goal_state[..., 4])
    return (position_error < LEWM_POSITION_TOLERANCE) & (angle_error < LEWM_ANGLE_TOLERANCE)


def legacy_reset_position(block_xy: np.ndarray, angle: float) -> np.ndarray:
    """The position to pass to gym-pusht's ``reset_to_state`` so that the block's
    origin ends at ``block_xy``.

    gym-pusht sets the position first (at angle 0, so the centre of gravity lands
    at ``p + cog``), then the angle, which pymunk applies about the centre of
    gravity; the origin ends at ``p + cog - R(angle) cog``. Solving for ``p``.
    """
    c, s = math.cos(angle), math.sin(angle)
    rotated_cog = np.array(
        [
            c * TEE_CENTER_OF_GRAVITY[0] - s * TEE_CENTER_OF_GRAVITY[1],
            s * TEE_CENTER_OF_GRAVITY[0] + c * TEE_CENTER_OF_GRAVITY[1],
        ]
    )
    return np.asarray(block_xy, dtype=np.float64) - TEE_CENTER_OF_GRAVITY + rotated_cog


def gym_pusht_reset_state(state: np.ndarray) -> np.ndarray:
    """What to pass as gym-pusht's ``reset(options={"reset_to_state": ...})`` so that the scene starts at
    ``state`` (agent x, y, block x, y, angle; anything after is ignored): float64 (5,), the block's
    position compensated by :func:`legacy_reset_position`."""
    state = np.asarray(state, dtype=np.float64)
    return np.concatenate([state[:2], legacy_reset_position(state[2:4], float(state[4])), state[4:5]])


class PushTSim:
    """gym-pusht physics driven by relative, held actions, with fast frames.

    Args:
        image_size: side of the frames returned by :meth:`frame`, in pixels (any
            size >= :data:`~world_models.config.MIN_IMAGE_SIZE`, checked by
            :func:`~world_models.config.check_image_size`; 64, 96 and 224 are the ones the models use).
        frameskip: physics steps per model step (an action is held that long).
        action_scale: pixels per unit of relative action.
        draw_goal: draw gym-pusht's goal tee into frames, as gym-pusht does.
        physics: the hidden physics applied at every reset (gym-pusht's own by default);
            ``reset(physics=...)`` replaces it.
    """

    def __init__(
        self,
        image_size: int = DEFAULT_IMAGE_SIZE,
        frameskip: int = DEFAULT_FRAMESKIP,
        action_scale: float = DEFAULT_ACTION_SCALE,
        draw_goal: bool = True,
        physics: HiddenPhysics | Mapping[str, Any] | None = None,
    ) -> None:
        image_size = check_image_size(image_size)
        if int(frameskip) < 1:
            raise ArgumentError(f"frameskip must be >= 1 physics step, got {frameskip}")
        if not action_scale > 0:
            raise ArgumentError(f"action_scale must be > 0 pixels, got {action_scale}")
        self.image_size = image_size
        self.frameskip = int(frameskip)
        self.action_scale = float(action_scale)
        self.draw_goal = draw_goal
        self.physics = HiddenPhysics() if physics is None else HiddenPhysics.coerce(physics)
        # The raw env, unwrapped: no TimeLimit, no order enforcing, no pixel rendering.
        self.env = PushTEnv(obs_type="state", render_mode="rgb_array")
        self.last_contacts = 0
        self.last_target: np.ndarray | None = None  # the absolute target of the last physics step
        self._frame_buffer = np.empty((1, self.image_size, self.image_size, 3), dtype=np.uint8)

    # ----------------------------------------------------------------- state
    @property
    def goal_pose(self) -> np.ndarray:
        """gym-pusht's fixed goal pose of the block (x, y, angle)."""
        return np.array(GOAL_POSE)

    @property
    def agent_pos(self) -> np.ndarray:
        return np.array(self.env.agent.position, dtype=np.float64)

    @property
    def agent_vel(self) -> np.ndarray:
        return np.array(self.env.agent.velocity, dtype=np.float64)

    @property
    def block_pose(self) -> np.ndarray:
        block = self.env.block
        return np.array([block.position[0], block.position[1], wrap_angle(block.angle)], dtype=np.float64)

    def state(self) -> PushTState:
        """The full physical state now."""
        return PushTState(self.agent_pos, self.agent_vel, self.block_pose)

    def coverage(self) -> float:
        """Fraction of the goal tee's area covered by the block (gym-pusht's reward basis),
        computed exactly and deterministically by :func:`numba_kernels.tee_coverage`."""
        return tee_coverage(self.block_pose)

    def agent_block_gap(self) -> float:
        """Distance in pixels between the agent's disc and the block (0 or less: touching)."""
        agent = self.env.agent.position
        distance = min(shape.point_query(agent).distance for shape in self.env._block_shapes)
        return float(distance - self.env.agent.shapes.copy().pop().radius)

    def is_success(self) -> bool:
        """gym-pusht's success: coverage above 0.95."""
        return self.coverage() > SUCCESS_COVERAGE

    # ----------------------------------------------------------------- reset
    def reset(
        self,
        seed: int | None = None,
        state: np.ndarray | None = None,
        physics: HiddenPhysics | Mapping[str, Any] | None = None,
    ) -> PushTState:
        """Start a new episode.

        Args:
            seed: seeds gym-pusht's ``np_random`` (used for random starts).
            state: ``(agent_x, agent_y, block_x, block_y, block_angle)`` to start
                from, optionally followed by the agent's velocity ``(vx, vy)``.
                ``None`` draws gym-pusht's own random start.
            physics: replaces :attr:`physics` (a :class:`HiddenPhysics` or a dict of
                some of its fields) from this episode on; ``None`` keeps it.

        Returns:
            The state after gym-pusht's settling sub-step (equal to ``state``
            unless the requested bodies overlap and push each other apart).
        """
        if physics is not None:
            self.physics = HiddenPhysics.coerce(physics)
        # gym-pusht builds a new space at reset from ``env.damping``; friction and mass go on its new bodies.
        self.env.damping = self.physics.damping
        if state is None:
            self.env.reset(seed=seed)
        else:
            state = np.asarray(state, dtype=np.float64)
            if state.shape not in ((5,), (7,)) or not np.all(np.isfinite(state)):
                raise ArgumentError(
                    "state must be 5 finite numbers (agent_x, agent_y, block_x, block_y, block_angle), "
                    f"optionally followed by the agent velocity (vx, vy); got {state!r}"
                )
            self.env.reset(seed=seed, options={"reset_to_state": gym_pusht_reset_state(state)})
            if state.shape == (7,):
                self.env.agent.velocity = (float(state[5]), float(state[6]))
        self._apply_body_physics()
        self.last_contacts = 0
        self.last_target = None
        return self.state()

    def _apply_body_physics(self) -> None:
        """Friction and mass on the bodies gym-pusht's reset just built (pymunk multiplies the two
        shapes' friction, so the agent's is 1 and the block's carries the coefficient; walls stay 0)."""
        for shape in self.env.agent.shapes:
            shape.friction = 1.0
        for shape in self.env._block_shapes:
            shape.friction = self.physics.friction
        self.env.block.mass = self.physics.block_mass

    # ------------------------------------------------------------------ step
    def target_for(self, action: np.ndarray) -> np.ndarray:
        """The absolute PD target of a relative action from the agent's position now."""
        action = np.asarray(action, dtype=np.float64)
        if action.shape != (2,):
            raise ArgumentError(f"a relative action has shape (2,), got {action.shape}")
        if not np.all(np.isfinite(action)):
            raise ArgumentError(f"action must be finite, got {action!r}")
        action = np.clip(action, -1.0, 1.0)
        return np.clip(self.agent_pos + action * self.action_scale, 0.0, WORLD_SIZE)

    def physics_step(self, target: np.ndarray) -> None:
        """One gym-pusht physics step towards an absolute target (x, y) in pixels (kept in :attr:`last_target`)."""
        self.last_target = np.array(target, dtype=np.float64)
        self.env.step(self.last_target)
        self.last_contacts = int(self.env.n_contact_points)

    def step(self, action: np.ndarray) -> PushTState:
        """One model step: hold the relative action's target for ``frameskip`` physics steps."""
        target = self.target_for(action)
        for _ in range(self.frameskip):
            self.physics_step(target)
        return self.state()

    # ---------------------------------------------------------------- frames
    def frame(self, size: int | None = None) -> np.ndarray:
        """The scene now as uint8 RGB (size, size, 3); ``image_size`` by default."""
        size = self.image_size if size is None else int(size)
        out = self._frame_buffer if size == self.image_size else None
        frame = render_pusht(self.agent_pos[None], self.block_pose[None], size, draw_goal=self.draw_goal, out=out)
        return frame[0].copy()

    def close(self) -> None:
        self.env.close()
