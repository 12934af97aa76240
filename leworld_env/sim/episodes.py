"""One real PushT episode: a scripted policy drives :class:`~leworld_env.sim.pusht_sim.PushTSim`, recorded as arrays.

The dataset collector (:mod:`leworld_env.sim.collect`) and the environments' start
bank (:mod:`leworld_env.envs.starts`) both record episodes with
:func:`collect_episode`; this module is below both.

Every episode is a pure function of ``(seed, episode index)``: its physics seed
and its policy's random generator both come from
``np.random.SeedSequence(seed, spawn_key=(index,))`` (:func:`episode_seed`). With
``hidden_physics``, each episode's :class:`~leworld_env.sim.pusht_sim.HiddenPhysics`
is drawn from a third stream of the same pair (:func:`physics_generator`), so
the starts and the policy's draws are those of the plain episodes; the policy
never sees the physics.

An episode is a dict of the fields of Minari's ``EpisodeBuffer``, one row per
physics step (``T`` steps, ``T + 1`` observations): ``observations`` holds
``pixels``, ``agent_pos``, ``agent_vel`` and ``block_pose`` (:func:`observation_space`);
``infos`` holds ``coverage``, ``target`` (the PD target held) and ``contact``, and
``physics`` with ``hidden_physics``. The layout as read back is documented in
:mod:`world_models.data.dataset`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from gymnasium import spaces

from leworld_env.sim.policies import POLICIES, ScriptedPolicy, make_policy
from leworld_env.sim.pusht_sim import (
    DEFAULT_ACTION_SCALE,
    DEFAULT_FRAMESKIP,
    PHYSICS_DRAWS,
    SUCCESS_COVERAGE,
    HiddenPhysics,
    PushTSim,
    PushTState,
)
from numba_kernels.pusht_raster import WORLD_SIZE
from world_models.config import DEFAULT_IMAGE_SIZE, check_image_size
from world_models.data.dataset import INFO_FIELDS, OBSERVATION_FIELDS
from world_models.errors import LeWorldError


@dataclass(frozen=True)
class EpisodeConfig:
    """How to run and record one episode.

    Attributes:
        policy: a name from :data:`leworld_env.sim.policies.POLICIES`.
        image_size: frame side in pixels (:func:`~world_models.config.check_image_size`).
        frameskip: physics steps each action is held.
        action_scale: pixels per unit of relative action.
        max_steps: physics steps per episode at most (gym-pusht's own limit is 300);
            an episode also ends early when gym-pusht reports success.
        seed: base seed.
        hidden_physics: draw each episode's damping, contact friction and block mass from
            :data:`~leworld_env.sim.pusht_sim.HIDDEN_PHYSICS_RANGES` and record them in
            ``infos/physics``; otherwise every episode has gym-pusht's physics.
        physics_draw: with ``hidden_physics``, which distribution
            (:data:`~leworld_env.sim.pusht_sim.PHYSICS_DRAWS`): ``hidden`` (all three fields) or ``glide``
            (the delayed-glide task's damping, 0 or 0.2).
    """

    policy: str = "weak-expert"
    image_size: int = DEFAULT_IMAGE_SIZE
    frameskip: int = DEFAULT_FRAMESKIP
    action_scale: float = DEFAULT_ACTION_SCALE
    max_steps: int = 300
    seed: int = 0
    hidden_physics: bool = False
    physics_draw: str = "hidden"

    def validate(self) -> None:
        """Raise :class:`LeWorldError` naming the first bad field."""
        if self.policy not in POLICIES:
            raise LeWorldError(f"unknown policy {self.policy!r}; choose one of: {', '.join(sorted(POLICIES))}")
        check_image_size(self.image_size, "image size")
        if self.frameskip < 1:
            raise LeWorldError(f"frameskip must be at least 1 physics step, got {self.frameskip}")
        if self.max_steps < self.frameskip:
            raise LeWorldError(
                f"max steps ({self.max_steps}) must cover at least one held action (frameskip {self.frameskip})"
            )
        if not self.action_scale > 0:
            raise LeWorldError(f"action scale must be > 0 pixels, got {self.action_scale}")
        if self.physics_draw not in PHYSICS_DRAWS:
            raise LeWorldError(
                f"unknown physics draw {self.physics_draw!r}; choose one of: {', '.join(sorted(PHYSICS_DRAWS))}"
            )


def observation_space(image_size: int) -> spaces.Dict:
    """The recorded observation space (a frame plus the physical state)."""
    return spaces.Dict(
        {
            "pixels": spaces.Box(0, 255, (image_size, image_size, 3), np.uint8),
            "agent_pos": spaces.Box(0.0, WORLD_SIZE, (2,), np.float64),
            "agent_vel": spaces.Box(-np.inf, np.inf, (2,), np.float64),
            "block_pose": spaces.Box(
                np.array([-np.inf, -np.inf, 0.0]), np.array([np.inf, np.inf, 2 * np.pi]), (3,), np.float64
            ),
        }
    )


def episode_seed(seed: int, index: int) -> np.random.SeedSequence:
    """The seed sequence of episode ``index``: its physics seed and its policy's generator."""
    return np.random.SeedSequence(seed, spawn_key=(index,))


def physics_generator(seed: int, index: int) -> np.random.Generator:
    """The generator that draws episode ``index``'s hidden physics: a child of its seed sequence,
    independent of the start and of the policy's generator."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(index, 0)))


def episode_physics(config: EpisodeConfig, index: int) -> HiddenPhysics:
    """Episode ``index``'s physics: drawn from :func:`physics_generator` with ``hidden_physics``,
    else gym-pusht's."""
    if not config.hidden_physics:
        return HiddenPhysics()
    return PHYSICS_DRAWS[config.physics_draw](physics_generator(config.seed, index))


class EpisodeRecorder:
    """The arrays of one episode of at most ``steps`` physics steps, filled one physics step at a time.

    One attribute per field of :data:`~world_models.data.dataset.OBSERVATION_FIELDS` and
    :data:`~world_models.data.dataset.INFO_FIELDS`, plus ``actions``.
    """

    def __init__(self, steps: int, image_size: int) -> None:
        n, size = steps, image_size
        self.pixels = np.empty((n + 1, size, size, 3), np.uint8)
        self.agent_pos = np.empty((n + 1, 2))
        self.agent_vel = np.empty((n + 1, 2))
        self.block_pose = np.empty((n + 1, 3))
        self.coverage = np.empty(n + 1)
        self.target = np.empty((n + 1, 2))
        self.contact = np.empty(n + 1, bool)
        self.actions = np.empty((n, 2), np.float32)

    def record(self, t: int, sim: PushTSim, state: PushTState, aim: np.ndarray) -> None:
        """Observation ``t``: the frame, ``state``, the coverage, the PD target held and the contact."""
        self.pixels[t] = sim.frame()
        self.agent_pos[t], self.agent_vel[t], self.block_pose[t] = state.agent_pos, state.agent_vel, state.block_pose
        self.coverage[t] = sim.coverage()
        self.target[t] = aim
        self.contact[t] = sim.agent_block_gap() <= 1.0

    def episode(self, steps: int) -> dict:
        """The first ``steps`` physics steps as an ``EpisodeBuffer``'s fields (less ``id`` and ``seed``)."""
        covered = self.coverage[1 : steps + 1]
        terminations = covered > SUCCESS_COVERAGE
        truncations = np.zeros(steps, bool)
        truncations[-1] = not terminations[-1]
        return {
            "observations": {name: getattr(self, name)[: steps + 1] for name in OBSERVATION_FIELDS},
            "actions": self.actions[:steps],
            "rewards": np.clip(covered / SUCCESS_COVERAGE, 0.0, 1.0),
            "terminations": terminations,
            "truncations": truncations,
            "infos": {name: getattr(self, name)[: steps + 1] for name in INFO_FIELDS},
        }


def run_policy(config: EpisodeConfig, sim: PushTSim, policy: ScriptedPolicy, recorder: EpisodeRecorder) -> int:
    """Drive ``sim`` (just reset) with ``policy``, a new action every ``frameskip`` physics steps,
    recording every step; returns the physics steps taken (fewer than ``max_steps`` on success)."""
    state = sim.state()
    recorder.record(0, sim, state, state.agent_pos)
    for t in range(config.max_steps):
        if t % config.frameskip == 0:
            action = np.asarray(policy(state), dtype=np.float32)
            aim = sim.target_for(action)
        recorder.actions[t] = action
        sim.physics_step(aim)
        state = sim.state()
        recorder.record(t + 1, sim, state, aim)
        if recorder.coverage[t + 1] > SUCCESS_COVERAGE:
            return t + 1
    return config.max_steps


def episode_policy(config: EpisodeConfig, index: int) -> ScriptedPolicy:
    """Episode ``index``'s data policy, reset on its generator (from :func:`episode_seed`): what it
    drew at the start (the delayed-glide policy's ``delay``) can be read back without replaying it."""
    policy = make_policy(config.policy, config.action_scale, config.frameskip)
    policy.reset(np.random.default_rng(episode_seed(config.seed, index)))
    return policy


def collect_episode(config: EpisodeConfig, index: int) -> dict:
    """Run episode ``index`` of ``config`` and return it as arrays (an ``EpisodeBuffer``'s fields)."""
    physics_seed = int(episode_seed(config.seed, index).generate_state(1)[0])
    physics = episode_physics(config, index)
    sim = PushTSim(config.image_size, config.frameskip, config.action_scale, physics=physics)
    policy = episode_policy(config, index)
    sim.reset(seed=physics_seed)
    recorder = EpisodeRecorder(config.max_steps, config.image_size)
    steps = run_policy(config, sim, policy, recorder)
    sim.close()
    episode = {"id": index, "seed": physics_seed, **recorder.episode(steps)}
    if config.hidden_physics:
        episode["infos"]["physics"] = np.tile(physics.vector(), (steps + 1, 1))
    return episode
