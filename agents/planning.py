"""Latent planners: CEM, iCEM and MPPI over the runtime interface's batched ``rollout``.

Each planner is a policy with stable-baselines3's ``predict(observation, state,
episode_start, deterministic)`` signature, so SB3's ``evaluate_policy`` and
``leworld eval`` run it like a trained agent. It reads the goal-conditioned
observation of ``LeWorld-PushT-v0`` or its real twin: the newest latent is
``achieved_goal[:D]``, the goal latent ``desired_goal[:D]``.

Planning happens in the model's latent space (LeWM's recipe): candidate action
sequences of ``horizon`` model steps are rolled out from the current latent
history in one batch, and a sequence's cost is the squared latent distance to
the goal at the end of the horizon, optionally plus a cost on the physical state
the probe reads there. The first action of the chosen sequence is executed and
the rest warm-starts the next decision (receding horizon).

The planner keeps each env's latent and action history itself, as the env
does: at an episode's start (``episode_start``, a new goal, or the first call)
the history is the start latent repeated with zero actions.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from world_models.errors import ArgumentError
from world_models.interface import WorldModel
from world_models.pose import POSE_FEATURES, features_to_pose

PLANNERS = ("cem", "icem", "mppi")


class LatentPlanner:
    """Shared machinery: histories per env, the cost of candidate sequences, SB3's ``predict``.

    Args:
        world_model: any backend behind the runtime interface.
        horizon: planned model steps (LeWM: 5).
        samples: candidate sequences per iteration.
        iterations: optimisation rounds per decision.
        state_cost_weight: weight of the probed-state cost (block position error / 100 px, squared,
            plus the angle error in radians, squared) added to the latent cost; 0 = LeWM's latent cost only.
        action_repeat: model steps each env action lasts (the env's frameskip / the model's). The
            planner then sees one latent per env step, not per model step: its history holds latents
            ``action_repeat`` model steps apart, which the model was not trained on. Keep it 1 unless
            you know the model copes.
        seed: seeds the planner's own generator.
    """

    name = "planner"

    def __init__(
        self,
        world_model: WorldModel,
        horizon: int = 5,
        samples: int = 300,
        iterations: int = 30,
        state_cost_weight: float = 0.0,
        action_repeat: int = 1,
        seed: int | None = 0,
    ) -> None:
        for field, value in (("horizon", horizon), ("samples", samples), ("iterations", iterations)):
            if int(value) < 1:
                raise ArgumentError(f"{field} must be >= 1, got {value}")
        if int(action_repeat) < 1:
            raise ArgumentError(f"action_repeat must be >= 1, got {action_repeat}")
        if state_cost_weight < 0:
            raise ArgumentError(f"state_cost_weight must be >= 0, got {state_cost_weight}")
        self.world_model = world_model
        self.config = world_model.config
        self.horizon = int(horizon)
        self.samples = int(samples)
        self.iterations = int(iterations)
        self.state_cost_weight = float(state_cost_weight)
        self.action_repeat = int(action_repeat)
        self.rng = np.random.default_rng(seed)
        self.plan_seconds: list[float] = []  # wall time of every decision
        self._envs: dict[int, dict[str, Any]] = {}

    # ------------------------------------------------------------------ SB3 policy interface
    def reset(self) -> None:
        """Forget every env's history and warm start."""
        self._envs.clear()

    def predict(
        self,
        observation: dict[str, np.ndarray],
        state: Any = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = True,
    ) -> tuple[np.ndarray, None]:
        """Plan one action per env for a goal observation dict (single or batched).

        Pass ``episode_start`` (SB3's ``evaluate_policy`` and ``leworld eval`` do): without it a
        new episode is recognised only by a new goal, and gym-pusht's fixed goal never changes.
        """
        single = np.ndim(observation["achieved_goal"]) == 1
        achieved = np.atleast_2d(np.asarray(observation["achieved_goal"], np.float32))
        desired = np.atleast_2d(np.asarray(observation["desired_goal"], np.float32))
        d = self.config.latent_dim
        if achieved.shape[1] < d or desired.shape != achieved.shape:
            raise ArgumentError(
                f"expected achieved_goal and desired_goal of width >= {d} (latent first), "
                f"got {achieved.shape} and {desired.shape}"
            )
        starts = np.ones(len(achieved), bool) if episode_start is None else np.atleast_1d(episode_start)
        actions = np.empty((len(achieved), self.config.action_dim), np.float32)
        for i in range(len(achieved)):
            env = self._envs.get(i)
            z, goal = achieved[i, :d], desired[i, :d]
            restart = episode_start is not None and bool(starts[i])
            if env is None or restart or not np.array_equal(env["goal"], goal):
                env = self._start(z, goal, desired[i, d:])
                self._envs[i] = env
            else:
                env["z"] = np.concatenate([env["z"][1:], z[None]])
                env["a"] = np.concatenate([env["a"][1:], np.zeros((1, self.config.action_dim), np.float32)])
            began = time.perf_counter()
            plan = self._plan(env)
            self.plan_seconds.append(time.perf_counter() - began)
            actions[i] = plan[0]
            env["a"][-1] = plan[0]
            env["warm"] = np.concatenate([plan[1:], np.zeros((1, self.config.action_dim), np.float32)])
        return (actions[0] if single else actions), None

    def _start(self, z: np.ndarray, goal: np.ndarray, goal_pose: np.ndarray) -> dict[str, Any]:
        h, a = self.config.history, self.config.action_dim
        return {
            "z": np.repeat(z[None], h, axis=0),
            "a": np.zeros((h, a), np.float32),
            "goal": goal.copy(),
            "goal_pose": features_to_pose(goal_pose) if goal_pose.size == POSE_FEATURES else None,
            "warm": np.zeros((self.horizon, a), np.float32),
            "extra": {},
        }

    # ------------------------------------------------------------------ costs
    def costs(self, env: dict[str, Any], sequences: np.ndarray) -> np.ndarray:
        """Cost of candidate sequences (S, horizon, A) from ``env``'s history; lower is better."""
        s = sequences.shape[0]
        steps = np.repeat(sequences, self.action_repeat, axis=1)
        z_hist = np.broadcast_to(env["z"], (s, *env["z"].shape))
        a_hist = np.repeat(env["a"][None], s, axis=0)
        a_hist[:, -1] = steps[:, 0]
        future = np.concatenate([steps[:, 1:], np.zeros_like(steps[:, :1])], axis=1)
        final = self.world_model.rollout(z_hist, a_hist, future)[:, -1]
        cost = np.mean((final - env["goal"]) ** 2, axis=1)
        if self.state_cost_weight > 0 and env["goal_pose"] is not None:
            block = self.world_model.probe(final)[:, 2:5].astype(np.float64)
            goal = env["goal_pose"]
            position = np.linalg.norm(block[:, :2] - goal[:2], axis=1) / 100.0
            angle = np.abs(np.remainder(block[:, 2] - goal[2] + np.pi, 2 * np.pi) - np.pi)
            cost = cost + self.state_cost_weight * (position**2 + angle**2)
        return cost

    def _sample(self, mean: np.ndarray, std: np.ndarray, count: int) -> np.ndarray:
        """``count`` Gaussian candidates around ``mean``, clipped to the action box; the first is
        ``mean`` itself, so the current plan always competes."""
        noise = self.rng.standard_normal((count, *mean.shape)).astype(np.float32)
        candidates = np.clip(mean + std * noise, -1.0, 1.0)
        candidates[0] = mean
        return candidates

    def _plan(self, env: dict[str, Any]) -> np.ndarray:
        raise NotImplementedError

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(horizon={self.horizon}, samples={self.samples}, "
            f"iterations={self.iterations}, backend={self.world_model.backend!r})"
        )


class CEMPlanner(LatentPlanner):
    """The cross-entropy method with LeWM's settings: 300 samples, 30 iterations, the best 30
    refit a diagonal Gaussian, horizon 5, receding horizon with a warm start.

    The executed action is the final mean's first action.
    """

    name = "cem"

    def __init__(self, world_model: WorldModel, topk: int = 30, init_std: float = 1.0, **kwargs: Any) -> None:
        super().__init__(world_model, **kwargs)
        if not 1 <= topk <= self.samples:
            raise ArgumentError(f"topk must be in [1, samples={self.samples}], got {topk}")
        self.topk = topk
        self.init_std = init_std

    def _plan(self, env: dict[str, Any]) -> np.ndarray:
        mean = env["warm"].copy()
        std = np.full_like(mean, self.init_std)
        for _ in range(self.iterations):
            candidates = self._sample(mean, std, self.samples)
            elites = candidates[np.argsort(self.costs(env, candidates))[: self.topk]]
            mean, std = elites.mean(axis=0), elites.std(axis=0) + 1e-3
        return mean


def colored_noise(exponent: float, count: int, horizon: int, action_dim: int, rng: np.random.Generator) -> np.ndarray:
    """Gaussian noise (count, horizon, action_dim) with power spectrum ~ 1 / f^exponent along time, unit variance."""
    if exponent == 0 or horizon < 2:
        return rng.standard_normal((count, horizon, action_dim)).astype(np.float32)
    freqs = np.fft.rfftfreq(horizon)
    freqs[0] = freqs[1]
    scale = freqs ** (-exponent / 2.0)
    spectrum = rng.standard_normal((count, action_dim, freqs.size)) + 1j * rng.standard_normal(
        (count, action_dim, freqs.size)
    )
    signal = np.fft.irfft(spectrum * scale, n=horizon, axis=-1)
    signal /= signal.std(axis=-1, keepdims=True) + 1e-8
    return np.transpose(signal, (0, 2, 1)).astype(np.float32)


class ICEMPlanner(CEMPlanner):
    """iCEM (Pinneri et al., 2020): CEM with colored noise, a shrinking population, elites kept
    between iterations and decisions, and momentum on the Gaussian.

    Defaults: 300 samples decaying by ``population_decay`` per iteration, 10 iterations, the best
    30 refit (``topk``, as CEM), noise exponent 2, 30 % of the elites kept, momentum 0.1. The
    executed action is the first of the best sequence seen.
    """

    name = "icem"

    def __init__(
        self,
        world_model: WorldModel,
        iterations: int = 10,
        noise_exponent: float = 2.0,
        population_decay: float = 1.25,
        keep_elites: float = 0.3,
        momentum: float = 0.1,
        **kwargs: Any,
    ) -> None:
        super().__init__(world_model, iterations=iterations, **kwargs)
        self.noise_exponent, self.population_decay = noise_exponent, population_decay
        self.keep_elites, self.momentum = keep_elites, momentum

    def _plan(self, env: dict[str, Any]) -> np.ndarray:
        mean = env["warm"].copy()
        std = np.full_like(mean, self.init_std)
        kept = env["extra"].get("elites")
        if kept is not None:  # last decision's elites, shifted one step like the mean
            kept = np.concatenate([kept[:, 1:], np.zeros_like(kept[:, :1])], axis=1)
        best, best_cost = mean, np.inf
        for it in range(self.iterations):
            count = max(2 * self.topk, int(self.samples * self.population_decay**-it))
            noise = colored_noise(self.noise_exponent, count, self.horizon, mean.shape[1], self.rng)
            candidates = np.clip(mean + std * noise, -1.0, 1.0)
            if kept is not None:
                candidates = np.concatenate([candidates, kept])
            if it == self.iterations - 1:
                candidates = np.concatenate([candidates, mean[None]])
            cost = self.costs(env, candidates)
            order = np.argsort(cost)
            elites = candidates[order[: self.topk]]
            if cost[order[0]] < best_cost:
                best, best_cost = candidates[order[0]], cost[order[0]]
            kept = elites[: max(1, int(self.keep_elites * self.topk))]
            mean = self.momentum * mean + (1 - self.momentum) * elites.mean(axis=0)
            std = self.momentum * std + (1 - self.momentum) * (elites.std(axis=0) + 1e-3)
        env["extra"]["elites"] = kept
        return best


class MPPIPlanner(LatentPlanner):
    """Model-predictive path integral control: candidates around the nominal sequence, averaged
    with weights ``exp(-cost / temperature)`` (costs scaled to [0, 1] per iteration).

    Defaults: 300 samples, 10 iterations, noise std 0.5, temperature 0.1. The executed action
    is the final nominal sequence's first action.
    """

    name = "mppi"

    def __init__(
        self,
        world_model: WorldModel,
        iterations: int = 10,
        noise_std: float = 0.5,
        temperature: float = 0.1,
        **kwargs: Any,
    ) -> None:
        super().__init__(world_model, iterations=iterations, **kwargs)
        if not temperature > 0 or not noise_std > 0:
            raise ArgumentError(f"temperature and noise_std must be > 0, got {temperature}, {noise_std}")
        self.noise_std, self.temperature = noise_std, temperature

    def _plan(self, env: dict[str, Any]) -> np.ndarray:
        nominal = env["warm"].copy()
        std = np.full_like(nominal, self.noise_std)
        for _ in range(self.iterations):
            candidates = self._sample(nominal, std, self.samples)
            cost = self.costs(env, candidates)
            spread = cost.max() - cost.min()
            weights = np.exp(-(cost - cost.min()) / (self.temperature * (spread if spread > 0 else 1.0)))
            nominal = np.tensordot(weights / weights.sum(), candidates, axes=1).astype(np.float32)
        return nominal


class RandomAgent:
    """Uniform random actions from its own seeded generator, with SB3's ``predict`` signature
    (the baseline the planners are compared with)."""

    name = "random"

    def __init__(self, seed: int | None = 0, action_dim: int = 2) -> None:
        self.rng = np.random.default_rng(seed)
        self.action_dim = action_dim
        self.plan_seconds: list[float] = []

    def reset(self) -> None:
        pass

    def predict(
        self,
        observation: dict[str, np.ndarray],
        state: Any = None,
        episode_start: Any = None,
        deterministic: bool = True,
    ) -> tuple[np.ndarray, None]:
        single = np.ndim(observation["achieved_goal"]) == 1
        n = 1 if single else len(observation["achieved_goal"])
        actions = self.rng.uniform(-1, 1, (n, self.action_dim)).astype(np.float32)
        return (actions[0] if single else actions), None


def make_planner(name: str, world_model: WorldModel, **kwargs: Any) -> LatentPlanner:
    """A planner by name (``cem``, ``icem``, ``mppi``) with its defaults, overridden by ``kwargs``."""
    classes = {"cem": CEMPlanner, "icem": ICEMPlanner, "mppi": MPPIPlanner}
    if name not in classes:
        raise ArgumentError(f"unknown planner {name!r}; choose one of: {', '.join(PLANNERS)}")
    return classes[name](world_model, **kwargs)
