"""A scripted expert for real PushT that plans pushes on a private copy of the physics.

The policy sees the privileged physical state (:class:`PushTState`: agent position and
velocity, block pose) and keeps its own pymunk space built exactly like gym-pusht's
(same walls, agent disc, tee, PD controller), so it can *try* pushes before making them.

One cycle of the policy:

1. **Plan.** For every push primitive of a fixed library (a contact point on the tee's edge,
   in the block's frame, and a push direction: the face's inward normal, or across a corner),
   put the agent at the primitive's *entry* point (outside the block, behind the contact) in
   the private space, push along the direction and record the block's pose after every physics
   step. The primitive's score is the best pose cost reached on the way plus a price on the
   path the agent has to walk to the entry. The best few are then re-simulated as they will be
   run (the target stopped at a few distances, the agent at rest) and the best that still improves
   the pose is chosen, with its stop distance. Near the goal, if none improves, the library is
   screened again with slower, finer pushes.
2. **Navigate** to the entry point, around the block: a shortest path over a ring of waypoints
   that surrounds the tee (visibility checked against the tee inflated by the agent's radius and
   a margin), recomputed every model step in the block's frame, so it follows the block.
3. **Push** along the direction, the target advancing a fixed distance per model step up to the
   stop distance. Every model step the stop distance is re-optimised (a handful of candidates,
   each simulated from the exact current state to rest), so noise and model lag are corrected.
4. Back to 1. When no primitive improves the pose the agent holds still near the goal, and
   steps towards the middle of the world elsewhere (a block squeezed against a wall, say).

Pose cost: ``|cog - goal_cog| + angle_weight * |angle - goal_angle| + coverage_weight * (1 - coverage)``
(pixels), where cog is the tee's centre of gravity; the coverage term makes the last pushes aim at
gym-pusht's own success measure (coverage > 0.95 needs ~2 px and ~1.7 degrees).

Noise: ``noise`` (std, action units) is added to every relative action, as in DINO-WM's data.
Under noise the agent keeps further from the block, pushes faster and only takes pushes that
promise more than the noise can undo. ``final_noise`` can lower the noise once the block is near
the goal (gym-pusht's success needs ~2 px precision, which 15 px of noise per step rarely allows).

All randomness (only the action noise) comes from the generator given to :meth:`reset`; the
private space is rebuilt at every reset, so an episode is a pure function of its seed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pymunk
from gym_pusht.envs import PushTEnv

from leworld_env.sim.pusht_sim import TEE_CENTER_OF_GRAVITY as COG
from leworld_env.sim.pusht_sim import HiddenPhysics, PushTState
from numba_kernels.pusht_geometry import tee_coverage
from numba_kernels.pusht_raster import AGENT_RADIUS, GOAL_POSE, TEE_RECTS
from numba_kernels.pusht_raster import WORLD_SIZE as WORLD

# Agent centres the walls allow (walls: segments at 5 and 506 of radius 2; agent radius 15).
REACH_LO, REACH_HI = 23.0, 488.0
# Convex hull of the tee, body coordinates, in order around it.
TEE_HULL = np.array([[-60.0, 0.0], [60.0, 0.0], [60.0, 30.0], [15.0, 120.0], [-15.0, 120.0], [-60.0, 30.0]])
KP, KV, DT, SUBSTEPS = 100.0, 20.0, 0.01, 10  # gym-pusht's PD gains and physics sub-stepping


# --------------------------------------------------------------------------- geometry
def rotation(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, -s], [s, c]])


def to_world(points: np.ndarray, pose: np.ndarray) -> np.ndarray:
    """Body-frame points (..., 2) to world coordinates for block pose (x, y, angle)."""
    return points @ rotation(pose[2]).T + pose[:2]


def to_body(points: np.ndarray, pose: np.ndarray) -> np.ndarray:
    """World points (..., 2) to the body frame of block pose (x, y, angle)."""
    return (points - pose[:2]) @ rotation(pose[2])


def tee_clearance(points: np.ndarray) -> np.ndarray:
    """Distance from body-frame points (..., 2) to the tee (negative inside)."""
    u, v = points[..., 0:1], points[..., 1:2]
    x0, x1, y0, y1 = TEE_RECTS[:, 0], TEE_RECTS[:, 1], TEE_RECTS[:, 2], TEE_RECTS[:, 3]
    dx = np.maximum(x0 - u, u - x1)
    dy = np.maximum(y0 - v, v - y1)
    outside = np.hypot(np.maximum(dx, 0.0), np.maximum(dy, 0.0))
    inside = np.minimum(np.maximum(dx, dy), 0.0)
    return np.min(outside + inside, axis=-1)


def segment_clearance(a: np.ndarray, b: np.ndarray, samples: int = 40) -> np.ndarray:
    """Smallest tee clearance along body-frame segments a -> b (both (..., 2)), sampled."""
    t = np.linspace(0.0, 1.0, samples)[:, None]
    pts = a[..., None, :] + (b - a)[..., None, :] * t
    return tee_clearance(pts).min(axis=-1)


def offset_polygon(polygon: np.ndarray, distance: float) -> np.ndarray:
    """Vertices of a convex polygon pushed out so that each edge moves ``distance`` outwards."""
    n = len(polygon)
    centre = polygon.mean(axis=0)
    out = []
    for k in range(n):
        p_prev, p, p_next = polygon[k - 1], polygon[k], polygon[(k + 1) % n]
        normals = []
        for a, b in ((p_prev, p), (p, p_next)):
            e = (b - a) / np.linalg.norm(b - a)
            nrm = np.array([e[1], -e[0]])
            if np.dot(nrm, (a + b) / 2 - centre) < 0:
                nrm = -nrm
            normals.append(nrm)
        bis = normals[0] + normals[1]
        out.append(p + distance * bis / (1.0 + np.dot(normals[0], normals[1])))
    return np.array(out)


def ring_waypoints(distance: float, per_edge: int = 2) -> np.ndarray:
    """Waypoints on the tee's convex hull offset by ``distance``: the vertices and points along long edges."""
    ring = offset_polygon(TEE_HULL, distance)
    pts = []
    n = len(ring)
    for k in range(n):
        a, b = ring[k], ring[(k + 1) % n]
        pieces = max(1, round(np.linalg.norm(b - a) / 60.0)) if per_edge else 1
        for j in range(pieces):
            pts.append(a + (b - a) * j / pieces)
    return np.array(pts)


@dataclass(frozen=True)
class Primitive:
    """A push in the block's frame: agent walks to ``entry``, then pushes along ``direction``."""

    contact: np.ndarray  # body frame, on the tee's edge
    direction: np.ndarray  # body frame, unit
    entry: np.ndarray  # body frame, where the push starts (clear of the tee)


def default_primitives(entry_clearance: float) -> list[Primitive]:
    """The push library: face-normal pushes at points along every face, and pushes across the corners."""
    faces: list[tuple[np.ndarray, np.ndarray]] = []  # (contact, outward normal)
    for x in np.linspace(-56.0, 56.0, 9):
        faces.append((np.array([x, 0.0]), np.array([0.0, -1.0])))  # bar top
    for sx in (-1.0, 1.0):
        for y in (5.0, 15.0, 25.0):
            faces.append((np.array([60.0 * sx, y]), np.array([sx, 0.0])))  # bar ends
        for x in (34.0, 45.0, 56.0):
            faces.append((np.array([x * sx, 30.0]), np.array([0.0, 1.0])))  # bar underside
        for y in (50.0, 70.0, 90.0, 110.0):
            faces.append((np.array([15.0 * sx, y]), np.array([sx, 0.0])))  # stem sides
    for x in (-10.0, 0.0, 10.0):
        faces.append((np.array([x, 120.0]), np.array([0.0, 1.0])))  # stem bottom
    pairs = [(c, -n) for c, n in faces]
    # Across the hull corners, perpendicular to the cog-corner line: the most torque per push.
    for corner in TEE_HULL:
        r = corner - COG
        perp = np.array([-r[1], r[0]]) / np.linalg.norm(r)
        for d in (perp, -perp):
            pairs.append((corner.copy(), d))
    prims = []
    for c, d in pairs:
        entry = None
        for t in np.arange(AGENT_RADIUS + 2.0, 200.0, 2.0):
            p = c - d * t
            # The agent must fit at the entry and on the way out of it (away from the push).
            if tee_clearance(p) >= entry_clearance and segment_clearance(p, p - d * 30.0) >= entry_clearance - 1:
                entry = p
                break
        if entry is None:
            continue
        # Skip pushes whose path hits another part of the tee long before the contact.
        approach = segment_clearance(entry, c - d * (AGENT_RADIUS + 3.0))
        if approach < AGENT_RADIUS - 1.0:
            continue
        prims.append(Primitive(c, d, entry))
    return prims


def prim_gap(prim: Primitive) -> float:
    """Distance the agent travels from a primitive's entry before it touches the contact point."""
    return float(np.linalg.norm(prim.contact - prim.entry)) - AGENT_RADIUS


# --------------------------------------------------------------------------- private physics
class PhysicsModel:
    """A pymunk space built like gym-pusht's, driven like :class:`PushTSim` (PD towards a target)."""

    def __init__(self, physics: HiddenPhysics | None = None) -> None:
        physics = HiddenPhysics() if physics is None else physics
        self.space = pymunk.Space()
        self.space.gravity = 0, 0
        self.space.damping = physics.damping
        walls = [
            PushTEnv.add_segment(self.space, (5, 506), (5, 5), 2),
            PushTEnv.add_segment(self.space, (5, 5), (506, 5), 2),
            PushTEnv.add_segment(self.space, (506, 5), (506, 506), 2),
            PushTEnv.add_segment(self.space, (5, 506), (506, 506), 2),
        ]
        self.space.add(*walls)
        self.agent = PushTEnv.add_circle(self.space, (256, 400), 15)
        self.block, shapes = PushTEnv.add_tee(self.space, (256, 300), 0)
        for shape in self.agent.shapes:
            shape.friction = 1.0
        for shape in shapes:
            shape.friction = physics.friction
        self.block.mass = physics.block_mass

    def set_state(self, agent_pos: np.ndarray, agent_vel: np.ndarray, block_pose: np.ndarray) -> None:
        self.agent.position = (float(agent_pos[0]), float(agent_pos[1]))
        self.agent.velocity = (float(agent_vel[0]), float(agent_vel[1]))
        self.block.angle = float(block_pose[2])  # angle first: pymunk turns the body about its cog
        self.block.position = (float(block_pose[0]), float(block_pose[1]))
        self.block.velocity = (0.0, 0.0)
        self.block.angular_velocity = 0.0

    def agent_xy(self) -> np.ndarray:
        p = self.agent.position
        return np.array([p.x, p.y])

    def block_pose(self) -> np.ndarray:
        p = self.block.position
        return np.array([p.x, p.y, self.block.angle])

    def physics_step(self, target: np.ndarray) -> None:
        """One gym-pusht physics step (ten PD sub-steps) towards absolute target (x, y)."""
        tx, ty = float(target[0]), float(target[1])
        agent, space = self.agent, self.space
        for _ in range(SUBSTEPS):
            p, v = agent.position, agent.velocity
            agent.velocity = (
                v.x + (KP * (tx - p.x) + KV * (0.0 - v.x)) * DT,
                v.y + (KP * (ty - p.y) + KV * (0.0 - v.y)) * DT,
            )
            space.step(DT)


# --------------------------------------------------------------------------- the policy
class ExpertPolicy:
    """Plan-and-push expert for PushT using the privileged physical state.

    Args:
        goal_pose: goal block pose (x, y, angle) of the body origin, gym-pusht's convention.
        action_scale: pixels per unit of relative action (the simulator's).
        noise: std of the Gaussian noise added to every relative action (action units).
        frameskip: physics steps per model step (the simulator's).
        angle_weight: pixels of cost per radian of angle error.
        coverage_weight: cost of a coverage shortfall (1 - coverage), so the last pushes aim at
            gym-pusht's own success measure.
        travel_weight: cost per pixel the agent walks to reach a push.
        push_speed: how far the push target advances per model step, pixels (plus twice the noise's
            pixels, ``2 * noise * action_scale``, under noise).
        fine_speed: the same once the pose cost is below ``fine_cost``.
        precise_speed: the push speed of a second search near the goal, when no push found at
            ``fine_speed`` improves the pose (finer steps find pixel-sized moves).
        fine_cost: pose cost under which the pose counts as near the goal (fine pushes, ``final_noise``,
            and no pushing for its own sake when no push improves the pose).
        objective: what the stop-distance search minimises: ``"final"`` the cost at rest after the push,
            ``"min"`` the best cost along it (success counts at any step). "final" did better under
            noise too (67/200 against 53/200 tuning episodes at noise 0.15).
        final_noise: action noise std once the pose cost is below ``fine_cost`` (``None``: ``noise``).
            ``0`` keeps noisy data for most of an episode but lets the last, pixel-precise pushes
            (gym-pusht's 0.95 coverage needs ~2 px and ~1.7 degrees) succeed.
        margin: clearance kept between the agent's disc and the block while walking around it
            (``None``: 8 px plus the noise's pixels).
        arrive: how close (px) to a push's entry point the agent must be to start the push (plus the
            current noise's pixels).
        physics: the hidden physics of the private model (gym-pusht's by default); set it to the
            episode's physics when collecting with hidden physics (see :meth:`set_physics`).
        hold_when_done: hold still once the goal's coverage exceeds ``done_coverage``.
        done_coverage: coverage at which the policy stops pushing (when ``hold_when_done``).
        verify_top: how many screened pushes that still improve when re-simulated as they will be run
            (stopped, then at rest) are compared before choosing.
        verify_max: how many screened pushes at most are re-simulated per plan.
    """

    def __init__(
        self,
        goal_pose: Sequence[float] = tuple(GOAL_POSE),
        action_scale: float = 100.0,
        noise: float = 0.0,
        frameskip: int = 5,
        angle_weight: float = 80.0,
        coverage_weight: float = 20.0,
        travel_weight: float = 0.05,
        push_speed: float = 50.0,
        fine_speed: float = 50.0,
        precise_speed: float = 10.0,
        fine_cost: float = 30.0,
        objective: str = "final",
        final_noise: float | None = None,
        margin: float | None = None,
        arrive: float | None = None,
        physics: HiddenPhysics | None = None,
        hold_when_done: bool = True,
        done_coverage: float = 0.97,
        verify_top: int = 3,
        verify_max: int = 10,
    ) -> None:
        self.goal_pose = np.asarray(goal_pose, dtype=np.float64)
        if self.goal_pose.shape != (3,):
            raise ValueError(f"goal_pose must be (x, y, angle), got {goal_pose!r}")
        self.action_scale = float(action_scale)
        self.noise = float(noise)
        self.frameskip = int(frameskip)
        self.angle_weight = float(angle_weight)
        self.coverage_weight = float(coverage_weight)
        self.travel_weight = float(travel_weight)
        self.push_speed = float(push_speed)
        self.fine_speed = float(fine_speed)
        self.precise_speed = float(precise_speed)
        self.fine_cost = float(fine_cost)
        if objective not in ("min", "final"):
            raise ValueError(f"objective must be 'min' or 'final', got {objective!r}")
        self.objective = objective
        self.speed = self.push_speed
        self.final_noise = self.noise if final_noise is None else float(final_noise)
        # Under noise the agent wanders ~noise * action_scale px per model step: keep further off the block,
        # and accept a push start further from the entry (the push is re-planned from the exact state anyway).
        jitter = self.noise * self.action_scale
        self.margin = 8.0 + jitter if margin is None else float(margin)
        self.arrive = 6.0 if arrive is None else float(arrive)
        self.hold_when_done = hold_when_done
        self.verify_top = int(verify_top)
        self.verify_max = int(verify_max)
        self.done_coverage = float(done_coverage)
        self.goal_cog = to_world(COG, self.goal_pose)
        self.physics = HiddenPhysics() if physics is None else physics
        self.model = PhysicsModel(self.physics)
        # Navigation geometry, all in the block's frame (pose independent).
        self.nav_clearance = AGENT_RADIUS + self.margin
        self.primitives = default_primitives(self.nav_clearance + 2.0)
        self.entries = np.array([p.entry for p in self.primitives])
        self.nodes = ring_waypoints(self.nav_clearance + 12.0)
        k = len(self.nodes)
        ii, jj = np.meshgrid(np.arange(k), np.arange(k), indexing="ij")
        vis = segment_clearance(self.nodes[ii], self.nodes[jj]) >= self.nav_clearance
        self.node_len = np.where(vis, np.linalg.norm(self.nodes[ii] - self.nodes[jj], axis=-1), np.inf)
        np.fill_diagonal(self.node_len, 0.0)
        ce = len(self.entries)
        ei, nj = np.meshgrid(np.arange(ce), np.arange(k), indexing="ij")
        vis = segment_clearance(self.entries[ei], self.nodes[nj]) >= self.nav_clearance
        self.entry_node_len = np.where(vis, np.linalg.norm(self.entries[ei] - self.nodes[nj], axis=-1), np.inf)
        self.rng = np.random.default_rng(0)
        self.reset(self.rng)

    def set_physics(self, physics: HiddenPhysics) -> None:
        """Use this hidden physics in the private model from the next :meth:`reset` on."""
        self.physics = physics
        self.model = PhysicsModel(physics)

    # ------------------------------------------------------------------ interface
    def reset(self, rng: np.random.Generator) -> None:
        self.rng = rng
        # A fresh private space: pymunk keeps contact caches, which would otherwise carry over.
        self.model = PhysicsModel(self.physics)
        self.phase = "plan"
        self.primitive: Primitive | None = None
        self.plan_pose = np.zeros(3)
        self.nav_steps = 0
        self.push_step = 0
        self.stop = 0.0
        self.entry_world = np.zeros(2)
        self.dir_world = np.zeros(2)
        self.stats = {"plans": 0, "sim_physics_steps": 0}
        self._graph_key: tuple | None = None
        self._graph: tuple = ()

    def __call__(self, state: PushTState) -> np.ndarray:
        action = self._act(state)
        std = self.current_noise(state.block_pose)
        if std > 0.0:
            action = action + self.rng.normal(0.0, std, size=2)
        return np.clip(action, -1.0, 1.0)

    def current_noise(self, pose: np.ndarray) -> float:
        """Std of the action noise at this block pose: ``final_noise`` once the pose cost is below
        ``fine_cost``, ``noise`` otherwise."""
        if self.final_noise == self.noise:
            return self.noise
        return self.final_noise if self.pose_cost(pose) < self.fine_cost else self.noise

    # ------------------------------------------------------------------ cost
    def pose_cost(self, pose: np.ndarray) -> float:
        """Cost of a block pose: cog distance + angle_weight * angle error + coverage_weight * (1 - coverage)."""
        c, s = math.cos(pose[2]), math.sin(pose[2])
        cx, cy = pose[0] - s * COG[1], pose[1] + c * COG[1]
        dpos = math.hypot(cx - self.goal_cog[0], cy - self.goal_cog[1])
        dang = abs((pose[2] - self.goal_pose[2] + math.pi) % (2.0 * math.pi) - math.pi)
        coverage = tee_coverage(np.array([pose[0], pose[1], pose[2]]), self.goal_pose)
        return dpos + self.angle_weight * dang + self.coverage_weight * (1.0 - coverage)

    def coverage(self, pose: np.ndarray) -> float:
        return float(tee_coverage(np.asarray(pose, dtype=np.float64), self.goal_pose))

    # ------------------------------------------------------------------ control
    def _relative(self, agent: np.ndarray, target: np.ndarray) -> np.ndarray:
        """Relative action that sets the PD target to ``target`` (direction kept when clipped)."""
        # Keep targets where the agent's disc fits inside the walls (a kinematic agent would pass through them).
        target = np.clip(target, REACH_LO, REACH_HI)
        a = (target - agent) / self.action_scale
        norm = float(np.max(np.abs(a)))
        return a / norm if norm > 1.0 else a

    def _push_steps(self, stop: float) -> int:
        return max(1, math.ceil(stop / self.speed - 1e-9))

    def _push_target(self, k: int, stop: float) -> np.ndarray:
        return self.entry_world + self.dir_world * min(stop, (k + 1) * self.speed)

    def _act(self, state: PushTState) -> np.ndarray:
        pose = state.block_pose
        if self.hold_when_done and self.coverage(pose) > self.done_coverage:
            self.phase = "plan"
            return np.zeros(2)
        for _ in range(3):  # a phase may end at once and hand over to the next
            if self.phase == "plan":
                if not self._plan(state):
                    if self.pose_cost(pose) < self.fine_cost:
                        return np.zeros(2)  # nothing left to gain: hold
                    # Stuck (squeezed between block and wall, say): step towards the middle of the world.
                    to_centre = np.array([WORLD / 2, WORLD / 2]) - state.agent_pos
                    step = 30.0 * to_centre / max(float(np.linalg.norm(to_centre)), 1e-6)
                    return self._relative(state.agent_pos, state.agent_pos + step)
            if self.phase == "navigate":
                moved = (
                    np.linalg.norm(pose[:2] - self.plan_pose[:2]) > 3.0
                    or abs((pose[2] - self.plan_pose[2] + math.pi) % (2 * math.pi) - math.pi) > 0.03
                )
                if moved or self.nav_steps > 15:
                    self.phase = "plan"
                    continue
                entry_world = to_world(self.primitive.entry, pose)
                jitter = self.current_noise(pose) * self.action_scale
                if np.linalg.norm(state.agent_pos - entry_world) < self.arrive + jitter:
                    self.entry_world = entry_world
                    self.dir_world = rotation(pose[2]) @ self.primitive.direction
                    self.push_step = 0
                    self.phase = "push"
                else:
                    self.nav_steps += 1
                    waypoint = self._next_waypoint(state.agent_pos, pose)
                    if waypoint is None:
                        self.phase = "plan"
                        continue
                    return self._relative(state.agent_pos, waypoint)
            if self.phase == "push":
                # ceil(stop / speed) steps advance the target, one more holds it so the agent comes to rest.
                if self.push_step >= self._push_steps(self.stop) + 1:
                    self.phase = "plan"
                    continue
                if self.push_step < self._push_steps(self.stop):
                    self.stop = self._refine_stop(state)
                target = self._push_target(self.push_step, self.stop)
                self.push_step += 1
                return self._relative(state.agent_pos, target)
        return np.zeros(2)

    # ------------------------------------------------------------------ navigation
    def _lengths(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """(len(a), len(b)) lengths of the body-frame segments a[i] -> b[j]; inf where one comes near the block."""
        ii, jj = np.meshgrid(np.arange(len(a)), np.arange(len(b)), indexing="ij")
        vis = segment_clearance(a[ii], b[jj]) >= self.nav_clearance
        return np.where(vis, np.linalg.norm(a[ii] - b[jj], axis=-1), np.inf)

    def _nav_graph(self, pose: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The waypoint ring for this block pose, in the body frame.

        Waypoints outside the reachable area are moved onto its edge (their visibility recomputed),
        and dropped if that puts them against the block. Returns (nodes, usable, node-node lengths,
        entry-node lengths); lengths are inf where a segment is blocked.
        """
        key = tuple(np.round(pose, 6))
        if self._graph_key == key:
            return self._graph
        nodes_world = to_world(self.nodes, pose)
        clipped = np.clip(nodes_world, REACH_LO, REACH_HI)
        if np.array_equal(clipped, nodes_world):
            graph = (self.nodes, np.ones(len(self.nodes), bool), self.node_len, self.entry_node_len)
        else:
            nodes = to_body(clipped, pose)
            usable = tee_clearance(nodes) >= self.nav_clearance
            node_len = self._lengths(nodes, nodes)
            np.fill_diagonal(node_len, 0.0)
            node_len[~usable, :] = np.inf
            node_len[:, ~usable] = np.inf
            entry_node_len = self._lengths(self.entries, nodes)
            entry_node_len[:, ~usable] = np.inf
            graph = (nodes, usable, node_len, entry_node_len)
        self._graph_key, self._graph = key, graph
        return graph

    def _start_threshold(self, agent_body: np.ndarray) -> tuple[float, float]:
        """(clearance of the agent, clearance its first segment must keep: less when it already is close)."""
        start_clear = float(tee_clearance(agent_body))
        return start_clear, min(self.nav_clearance, start_clear - 0.5)

    def _travel(self, agent_body: np.ndarray, pose: np.ndarray) -> np.ndarray:
        """Shortest walking distance from the agent (body frame) to every primitive's entry; inf if none."""
        nodes, usable, node_len, entry_node_len = self._nav_graph(pose)
        _, threshold = self._start_threshold(agent_body)
        start_len = np.linalg.norm(nodes - agent_body, axis=1)
        vis = segment_clearance(np.broadcast_to(agent_body, nodes.shape), nodes) >= threshold
        dist = np.where(vis & usable, start_len, np.inf)
        for _ in range(len(nodes)):
            new = np.minimum(dist, np.min(dist[:, None] + node_len, axis=0))
            if np.array_equal(new, dist):
                break
            dist = new
        via = np.min(dist[None, :] + entry_node_len, axis=1)
        direct_vis = segment_clearance(np.broadcast_to(agent_body, self.entries.shape), self.entries) >= threshold
        direct = np.where(direct_vis, np.linalg.norm(self.entries - agent_body, axis=1), np.inf)
        entries_world = to_world(self.entries, pose)
        entry_ok = np.all((entries_world >= REACH_LO) & (entries_world <= REACH_HI), axis=1)
        return np.where(entry_ok, np.minimum(direct, via), np.inf)

    def _next_waypoint(self, agent: np.ndarray, pose: np.ndarray) -> np.ndarray | None:
        """Where to walk now on the shortest path to the current primitive's entry (world); None if no path."""
        agent_body = to_body(agent, pose)
        entry = self.primitive.entry
        start_clear, threshold = self._start_threshold(agent_body)
        if segment_clearance(agent_body, entry) >= threshold:
            return to_world(entry, pose)
        nodes, usable, node_len, entry_node_len = self._nav_graph(pose)
        # Distance from every node to the entry.
        to_entry = entry_node_len[self._entry_index].copy()
        for _ in range(len(nodes)):
            new = np.minimum(to_entry, np.min(node_len + to_entry[None, :], axis=1))
            if np.array_equal(new, to_entry):
                break
            to_entry = new
        start_len = np.linalg.norm(nodes - agent_body, axis=1)
        vis = segment_clearance(np.broadcast_to(agent_body, nodes.shape), nodes) >= threshold
        total = np.where(vis & usable, start_len + to_entry, np.inf)
        if not np.isfinite(total.min()):
            if start_clear < self.nav_clearance:  # hemmed in next to the block: step straight away from it
                away = agent_body - COG
                return to_world(agent_body + 30.0 * away / max(np.linalg.norm(away), 1e-6), pose)
            return None
        best = int(np.argmin(total))
        if start_len[best] < 10.0:  # already at that waypoint: head for the next one
            if np.isfinite(entry_node_len[self._entry_index, best]):
                return to_world(entry, pose)
            nxt = node_len[best] + to_entry
            nxt[best] = np.inf
            if np.isfinite(nxt.min()):
                return to_world(nodes[int(np.argmin(nxt))], pose)
        return to_world(nodes[best], pose)

    # ------------------------------------------------------------------ planning
    def _simulate_push(
        self,
        agent_pos: np.ndarray,
        agent_vel: np.ndarray,
        pose: np.ndarray,
        entry_world: np.ndarray,
        dir_world: np.ndarray,
        k0: int,
        stop: float,
        extra_steps: int,
        early_exit: bool = False,
    ) -> tuple[float, float, float]:
        """Run the push controller in the private model, from push step ``k0`` until the target has
        reached ``stop`` and then been held ``extra_steps`` model steps.

        Args:
            early_exit: stop once the cost is 40 above the best seen (for coarse screening).

        Returns:
            (best cost along the way, agent progress along the push at that moment, cost at the end).
        """
        model = self.model
        model.set_state(agent_pos, agent_vel, pose)
        n_push = max(0, self._push_steps(stop) - k0)
        best, best_progress = math.inf, 0.0
        k = k0
        cost = math.inf
        for _ in range(n_push + extra_steps):
            agent = model.agent_xy()
            target = entry_world + dir_world * min(stop, (k + 1) * self.speed)
            a = self._relative(agent, target)
            target = np.clip(agent + a * self.action_scale, 0.0, WORLD)
            k += 1
            for _ in range(self.frameskip):
                model.physics_step(target)
                self.stats["sim_physics_steps"] += 1
                cost = self.pose_cost(model.block_pose())
                if cost < best:
                    best = cost
                    best_progress = float(np.dot(model.agent_xy() - entry_world, dir_world))
                elif early_exit and cost > best + 40.0:
                    return best, best_progress, cost
        return best, best_progress, cost

    def _plan(self, state: PushTState) -> bool:
        """Choose the next push; False when none improves the pose.

        Pushes are screened at the current push speed; near the goal, when none improves, they are
        screened again at ``precise_speed``, whose finer steps can find the last pixel-sized moves.
        """
        self.stats["plans"] += 1
        now = self.pose_cost(state.block_pose)
        # Under noise, coarse pushes go faster so that the noise is a smaller share of each push.
        jitter = self.current_noise(state.block_pose) * self.action_scale
        self.speed = self.fine_speed if now < self.fine_cost else self.push_speed + 2.0 * jitter
        if self._plan_at_speed(state, now):
            return True
        if now < self.fine_cost and self.precise_speed < self.speed:
            self.speed = self.precise_speed
            return self._plan_at_speed(state, now)
        return False

    def _plan_at_speed(self, state: PushTState, now: float) -> bool:
        """Screen every primitive at ``self.speed``, verify the best few, commit to the best one."""
        pose = state.block_pose
        agent_body = to_body(state.agent_pos, pose)
        travel = self._travel(agent_body, pose)
        rot = rotation(pose[2])
        max_push = float(np.clip(1.5 * now + 40.0, 40.0, 300.0))
        improving: list[tuple[float, int, float]] = []
        # Under noise a push must promise more than the noise can undo.
        min_gain = 0.2 + 0.5 * self.current_noise(pose) * self.action_scale
        fallback_score, fallback = math.inf, None
        zero = np.zeros(2)
        for i, prim in enumerate(self.primitives):
            if not np.isfinite(travel[i]):
                continue
            entry_world = to_world(prim.entry, pose)
            dir_world = rot @ prim.direction
            cost, progress, _ = self._simulate_push(
                entry_world, zero, pose, entry_world, dir_world, 0, max_push, 1, early_exit=True
            )
            score = cost + self.travel_weight * travel[i]
            if cost < now - min_gain:
                improving.append((score, i, progress))
            if score < fallback_score and progress > prim_gap(prim):
                fallback_score, fallback = score, (i, progress)
        if not improving:
            # Nothing improves the pose (a block stuck against a wall, say): take the best push anyway,
            # unless the pose is already good.
            if fallback is None or now < self.fine_cost:
                return False
            best = fallback
        else:
            # The screening scored the best pose *along* a long push; check the best few as they will
            # be run (stopped, then at rest) and keep the best that still improves.
            improving.sort()
            best, best_score, checked = None, math.inf, 0
            for _, i, progress in improving[: self.verify_max]:
                prim = self.primitives[i]
                entry_world = to_world(prim.entry, pose)
                cost, stop = self._best_stop(
                    entry_world,
                    zero,
                    pose,
                    entry_world,
                    rot @ prim.direction,
                    0,
                    max(progress, 1.0),
                    (-8.0, -4.0, -2.0, -1.0, 0.0, 1.0, 2.0, 4.0, 8.0),
                )
                if cost < now - min_gain:
                    checked += 1
                    score = cost + self.travel_weight * travel[i]
                    if score < best_score:
                        best_score, best = score, (i, stop)
                    if checked >= self.verify_top:
                        break
            if best is None:
                return False
        i, progress = best
        self.primitive = self.primitives[i]
        self._entry_index = i
        self.stop = max(progress, 1.0)
        self.plan_pose = pose.copy()
        self.nav_steps = 0
        self.phase = "navigate"
        return True

    def _best_stop(
        self,
        agent_pos: np.ndarray,
        agent_vel: np.ndarray,
        pose: np.ndarray,
        entry_world: np.ndarray,
        dir_world: np.ndarray,
        k0: int,
        stop0: float,
        deltas: Sequence[float],
    ) -> tuple[float, float]:
        """Best stop distance among ``stop0 + deltas`` for a push under way at step ``k0``: (cost, stop).

        ``objective`` "final" scores the pose at rest after the push, "min" the best pose along it.
        """
        done = k0 * self.speed
        use_min = self.objective == "min"
        best_cost, best_stop = math.inf, stop0
        for delta in deltas:
            stop = stop0 + delta
            if stop <= done - self.speed + 1.0 or stop <= 0.0:
                continue
            m, _, f = self._simulate_push(agent_pos, agent_vel, pose, entry_world, dir_world, k0, stop, 1)
            cost = m if use_min else f
            if cost < best_cost - 1e-9:
                best_cost, best_stop = cost, stop
        return best_cost, best_stop

    def _refine_stop(self, state: PushTState) -> float:
        """Re-optimise the stop distance of the current push from the exact state (MPC on one number)."""
        _, stop = self._best_stop(
            state.agent_pos,
            state.agent_vel,
            state.block_pose,
            self.entry_world,
            self.dir_world,
            self.push_step,
            self.stop,
            (-16.0, -8.0, -4.0, -2.0, -1.0, 0.0, 1.0, 2.0, 4.0, 8.0, 16.0),
        )
        return stop
