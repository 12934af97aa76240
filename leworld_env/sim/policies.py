"""Scripted data-collection policies for real PushT.

Each policy maps the physical state to a relative action in [-1, 1]^2 (held for
one model step) and draws all its randomness from the ``np.random.Generator``
it is given, so an episode is a pure function of its seed.

* ``random``: uniform actions. Explores the whole board, rarely touches the block.
* ``expert`` / ``noisy-expert``: :class:`~leworld_env.sim.expert.ExpertPolicy`, which plans
  pushes on a private copy of gym-pusht's physics and solves the fixed-goal task; the noisy one
  adds action noise away from the goal, as DINO-WM's data has.
* ``weak-expert``: walks to a contact point behind the block and pushes through
  it, towards the goal most of the time and in a random direction otherwise, off
  centre so the block turns too, with noise on every action. It rarely solves the
  task but keeps the agent on the block, so the data is full of contacts.
* ``delayed-glide``: :class:`DelayedGlidePolicy`, the delayed-glide task's data (docs/leworld_memory.md):
  push and release, wander without contact for 8, 24 or 48 model steps, push and release again.
"""

from __future__ import annotations

import math
from typing import Protocol

import numpy as np

from leworld_env.sim.expert import ExpertPolicy
from leworld_env.sim.pusht_sim import PushTState
from world_models.errors import ArgumentError

# The delayed-glide task's delays: model steps between the first release and the second approach.
GLIDE_DELAYS = (8, 24, 48)


class ScriptedPolicy(Protocol):
    """What the collector needs from a policy."""

    def reset(self, rng: np.random.Generator) -> None: ...

    def __call__(self, state: PushTState) -> np.ndarray: ...


class RandomPolicy:
    """Uniform relative actions in [-1, 1]^2."""

    def reset(self, rng: np.random.Generator) -> None:
        self.rng = rng

    def __call__(self, state: PushTState) -> np.ndarray:
        return self.rng.uniform(-1.0, 1.0, size=2)


class WeakExpertPolicy:
    """Approach the block from behind, then push through it, with noise.

    Distances are measured from the tee's centre of gravity, whose farthest
    point is ~77 px away; the agent aims ``STANDOFF`` px behind it (outside the
    tee with the agent's 15 px radius), clipped to the area the agent can reach.
    An approach that has not arrived after ``max_approach`` model steps (a block
    against a wall, say) is abandoned for a new push.

    Args:
        action_scale: pixels per unit of relative action (the simulator's).
        goal_xy: where most pushes head (gym-pusht's goal position).
        goal_bias: probability that a push heads for the goal rather than a random direction.
        noise: standard deviation of the Gaussian noise added to every action.
        push_steps: (min, max) model steps a push lasts before a new contact point is chosen.
        max_approach: model steps an approach may take before a new push is planned.
    """

    STANDOFF = 95.0
    REACHABLE = (25.0, 487.0)  # agent centres the walls allow

    def __init__(
        self,
        action_scale: float = 100.0,
        goal_xy: tuple[float, float] = (256.0, 256.0),
        goal_bias: float = 0.7,
        noise: float = 0.15,
        push_steps: tuple[int, int] = (3, 8),
        max_approach: int = 12,
    ) -> None:
        self.action_scale = action_scale
        self.goal_xy = np.asarray(goal_xy, dtype=np.float64)
        self.goal_bias = goal_bias
        self.noise = noise
        self.push_steps = push_steps
        self.max_approach = max_approach

    def reset(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self.phase = "plan"
        self.steps_left = 0
        self.direction = np.array([1.0, 0.0])
        self.offset = 0.0

    @staticmethod
    def center_of_gravity(block_pose: np.ndarray) -> np.ndarray:
        x, y, angle = block_pose
        return np.array([x - 45.0 * math.sin(angle), y + 45.0 * math.cos(angle)])

    def _plan_push(self, center: np.ndarray) -> None:
        """Choose a push direction and an off-centre contact offset."""
        if self.rng.random() < self.goal_bias:
            to_goal = self.goal_xy - center
            angle = math.atan2(to_goal[1], to_goal[0]) + self.rng.normal(0.0, 0.4)
        else:
            angle = self.rng.uniform(-math.pi, math.pi)
        self.direction = np.array([math.cos(angle), math.sin(angle)])
        self.offset = self.rng.uniform(-40.0, 40.0)  # off-centre pushes turn the block
        self.phase = "approach"
        self.steps_left = self.max_approach

    def approach(self, state: PushTState, center: np.ndarray) -> np.ndarray:
        """One step towards the contact point behind the block (around it when on the wrong side);
        switches to ``push`` on arrival and back to ``plan`` when the approach takes too long."""
        normal = np.array([-self.direction[1], self.direction[0]])
        self.steps_left -= 1
        contact = np.clip(center - self.direction * self.STANDOFF + normal * self.offset, *self.REACHABLE)
        from_block = state.agent_pos - center
        if np.dot(from_block, self.direction) > -0.5 * self.STANDOFF:
            # On the wrong side: walk around the block, not through it.
            side = 1.0 if np.dot(from_block, normal) >= 0.0 else -1.0
            waypoint = center + normal * side * 1.3 * self.STANDOFF - self.direction * 0.5 * self.STANDOFF
            action = (np.clip(waypoint, *self.REACHABLE) - state.agent_pos) / self.action_scale
        else:
            action = (contact - state.agent_pos) / self.action_scale
            if np.linalg.norm(contact - state.agent_pos) < 15.0:
                self.phase = "push"
                self.steps_left = int(self.rng.integers(self.push_steps[0], self.push_steps[1] + 1))
        if self.phase == "approach" and self.steps_left <= 0:
            self.phase = "plan"  # unreachable or too slow: plan another push next step
        return action

    PUSH_SPEED = (0.3, 0.8)  # relative action along the push direction, drawn per step

    def end_push(self) -> None:
        """What follows a push: a new one is planned."""
        self.phase = "plan"

    def act(self, state: PushTState) -> np.ndarray:
        """The action before noise: plan, approach or push."""
        center = self.center_of_gravity(state.block_pose)
        if self.phase == "plan":
            self._plan_push(center)
        if self.phase == "approach":
            action = self.approach(state, center)
        if self.phase == "push":
            action = self.direction * self.rng.uniform(*self.PUSH_SPEED)
            self.steps_left -= 1
            if self.steps_left <= 0:
                self.end_push()
        return action

    def __call__(self, state: PushTState) -> np.ndarray:
        action = self.act(state) + self.rng.normal(0.0, self.noise, size=2)
        return np.clip(action, -1.0, 1.0)


class DelayedGlidePolicy(WeakExpertPolicy):
    """The delayed-glide task's data policy: push and release, wander for ``K`` steps, push and release again.

    Each episode draws its delay ``K`` from :data:`GLIDE_DELAYS`. A push walks behind the block
    (:meth:`WeakExpertPolicy.approach`, near its centre so it slides more than it turns), drives
    through it towards the board's centre for ``push_steps`` model steps at speed 0.7-0.9, then
    releases: the agent backs away, so what the block does next is the physics alone (it stops dead
    without damping and glides tens of pixels with it). After the first release the agent wanders
    ``K`` steps keeping clear of the block (it is pushed away from the block's centre of gravity and
    from the walls), then pushes again; after the second release it wanders until the episode ends.
    ``phase`` and ``releases`` say where it is.
    """

    CLEARANCE = 130.0  # px from the block's centre of gravity the wandering agent keeps
    PUSH_SPEED = (0.7, 0.9)

    def __init__(self, action_scale: float = 100.0, noise: float = 0.05) -> None:
        super().__init__(action_scale, goal_xy=(256.0, 256.0), goal_bias=1.0, noise=noise, push_steps=(2, 3))

    def reset(self, rng: np.random.Generator) -> None:
        super().reset(rng)
        self.delay = int(rng.choice(GLIDE_DELAYS))
        self.releases = 0
        self.release_left = 0
        self.wander_left = 0

    def _plan_push(self, center: np.ndarray) -> None:
        super()._plan_push(center)
        self.offset = self.rng.uniform(-10.0, 10.0)

    def _wander(self, state: PushTState, center: np.ndarray) -> np.ndarray:
        action = self.rng.uniform(-0.5, 0.5, size=2)
        away = state.agent_pos - center
        distance = float(np.linalg.norm(away))
        if distance < self.CLEARANCE:
            action += 0.8 * away / max(distance, 1e-6)
        inward = (np.array([256.0, 256.0]) - state.agent_pos) / 256.0
        return action + 0.3 * inward

    def end_push(self) -> None:
        self.phase, self.releases, self.release_left = "release", self.releases + 1, 2

    def act(self, state: PushTState) -> np.ndarray:
        if self.phase == "release":
            self.release_left -= 1
            if self.release_left <= 0:
                self.phase = "wander"
                self.wander_left = self.delay if self.releases == 1 else 10**9
            return -self.direction * 0.6
        if self.phase == "wander":
            self.wander_left -= 1
            if self.wander_left <= 0:
                self.phase = "plan"
            return self._wander(state, self.center_of_gravity(state.block_pose))
        return super().act(state)


# The expert's action noise for data: DINO-WM's data is noisy; near the goal the noise is off, so the
# last pixel-precise pushes still succeed (docs/data.md has the measured success of both).
NOISY_EXPERT_NOISE = 0.15

POLICIES: dict[str, type] = {
    "random": RandomPolicy,
    "weak-expert": WeakExpertPolicy,
    "expert": ExpertPolicy,
    "noisy-expert": ExpertPolicy,
    "delayed-glide": DelayedGlidePolicy,
}


def make_policy(name: str, action_scale: float = 100.0, frameskip: int = 5) -> ScriptedPolicy:
    """Build a scripted policy by name (one of :data:`POLICIES`) for gym-pusht's fixed goal.

    ``expert`` plans on a private copy of the physics without noise; ``noisy-expert`` is the same
    planner with Gaussian action noise (std :data:`NOISY_EXPERT_NOISE`) away from the goal.
    """
    if name not in POLICIES:
        raise ArgumentError(f"unknown policy {name!r}; choose one of: {', '.join(sorted(POLICIES))}")
    if name == "weak-expert":
        return WeakExpertPolicy(action_scale=action_scale)
    if name == "expert":
        return ExpertPolicy(action_scale=action_scale, frameskip=frameskip)
    if name == "delayed-glide":
        return DelayedGlidePolicy(action_scale=action_scale)
    if name == "noisy-expert":
        return ExpertPolicy(action_scale=action_scale, frameskip=frameskip, noise=NOISY_EXPERT_NOISE, final_noise=0.0)
    return RandomPolicy()
