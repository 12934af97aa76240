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
the probe reads there.

**Standardised actions.** A planner searches in standardised action units ``u``:
an env action is ``a = clip(mean + std * u, -1, 1)`` with the training data's
per-axis action ``mean`` and ``std`` (LeWM's ``StandardScaler``), so CEM's
initial std of 1 spreads its samples as the data's actions spread. The
statistics come from one place: the model's start bank (``action_mean`` /
``action_std`` in ``starts.safetensors``, computed from the bank's source
episodes, the training data's policy; :func:`data_action_stats`).
:func:`make_planner` gives them to CEM by default; without them (or for iCEM and
MPPI unless given) the transform is the identity: the env's own action units.

**Schedules.** ``replan_every`` = 1 (the default) plans at every env step and
executes the plan's first action (receding horizon); the rest warm-starts the next
decision. ``replan_every`` = k executes the first k actions of a plan before
planning again (k = ``horizon`` is LeWM's: the whole 5-step plan, 2 plans per
50-physics-step episode at frameskip 5); the unexecuted rest warm-starts the next plan.

The planner keeps each env's latent and action history itself, as the env
does: at an episode's start (``episode_start``, a new goal, or the first call)
the history is the start latent repeated with zero actions.

**A stateful model** (an episodic memory model, ``LeWorld-PushT-Glide-v0``'s): the planner keeps
its own 64K x 32-bit bit memory per env, written from what it is shown -- one record per step
from the latent before, its own action and the latent after, the records the env writes into
the env's memory -- and read at every new frame, so its history carries the env's readouts. A
candidate's rollout reads nothing new and writes nothing: the readout of the newest frame is
held over the horizon, as training holds readouts (``hold``, 24 frames). ``read_memory=False``
plans with an empty memory instead (the stateless ``predict``: the ablation).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from world_models.errors import ArgumentError
from world_models.interface import WorldModel
from world_models.pose import POSE_FEATURES, features_to_pose

PLANNERS = ("cem", "icem", "mppi")
OBSERVATION_KEYS = ("observation", "achieved_goal", "desired_goal")


def check_observation(observation: Any) -> dict[str, np.ndarray]:
    """A goal observation dict's arrays as float32, checked: ``achieved_goal`` and ``desired_goal`` present,
    and every array (those two and ``observation``, where given) real and finite.

    Raises:
        ArgumentError: naming the key, what it held and what was expected.
    """
    if not isinstance(observation, dict) or not all(k in observation for k in ("achieved_goal", "desired_goal")):
        got = sorted(map(str, observation)) if isinstance(observation, dict) else type(observation).__name__
        raise ArgumentError(f"expected a goal observation dict with keys {', '.join(OBSERVATION_KEYS)}, got {got}")
    arrays = {}
    for key in OBSERVATION_KEYS:
        if key not in observation:
            continue
        try:
            value = np.asarray(observation[key])
        except (TypeError, ValueError) as err:
            raise ArgumentError(f"observation[{key!r}] is not an array of numbers ({err})") from None
        if np.iscomplexobj(value) or not (np.issubdtype(value.dtype, np.number) or value.dtype == bool):
            raise ArgumentError(f"observation[{key!r}] is an array of {value.dtype}; expected real numbers")
        with np.errstate(over="ignore"):
            array = value.astype(np.float32)
        if not np.all(np.isfinite(array)):
            raise ArgumentError(
                f"observation[{key!r}] holds NaN or inf (or numbers beyond float32); expected finite numbers"
            )
        arrays[key] = array
    return arrays


def data_action_stats(world_model: WorldModel | str | Path) -> tuple[np.ndarray, np.ndarray] | None:
    """The training data's action ``(mean, std)`` for a model: its start bank's, or ``None`` where the
    bank has none (an old bank)."""
    from leworld_env.envs.task import open_start_bank

    return open_start_bank(world_model).action_stats()


def _check_action_stats(mean: Any, std: Any, action_dim: int) -> tuple[np.ndarray, np.ndarray]:
    """``(mean, std)`` as float32 (action_dim,): zeros and ones when both are ``None``."""
    if mean is None and std is None:
        return np.zeros(action_dim, np.float32), np.ones(action_dim, np.float32)
    if mean is None or std is None:
        raise ArgumentError(f"action_mean and action_std come together; got {mean!r} and {std!r}")
    mean, std = np.asarray(mean, np.float32), np.asarray(std, np.float32)
    if mean.shape != (action_dim,) or std.shape != (action_dim,):
        raise ArgumentError(f"action_mean and action_std must have {action_dim} numbers each, got {mean} and {std}")
    if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(std)) and np.all(std > 0)):
        raise ArgumentError(f"action_mean must be finite and action_std finite and > 0, got {mean} and {std}")
    return mean, std


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
        replan_every: env steps between plans, in [1, horizon]: 1 plans at every step (receding
            horizon), ``horizon`` executes the whole plan first (LeWM's schedule).
        action_mean, action_std: the data's per-axis action statistics (both or neither): the planner
            samples in standardised units ``u`` and executes ``clip(mean + std * u, -1, 1)``;
            neither = the identity.
        seed: seeds the planner's own generator.
        read_memory: with a stateful model, keep and read a bit memory per env (the module
            docstring); ``False`` plans with an empty memory. Ignored for a stateless model.
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
        replan_every: int = 1,
        action_mean: Any = None,
        action_std: Any = None,
        seed: int | None = 0,
        read_memory: bool = True,
    ) -> None:
        for field, value in (("horizon", horizon), ("samples", samples), ("iterations", iterations)):
            if int(value) < 1:
                raise ArgumentError(f"{field} must be >= 1, got {value}")
        if int(action_repeat) < 1:
            raise ArgumentError(f"action_repeat must be >= 1, got {action_repeat}")
        if state_cost_weight < 0:
            raise ArgumentError(f"state_cost_weight must be >= 0, got {state_cost_weight}")
        if isinstance(replan_every, bool) or not 1 <= int(replan_every) <= int(horizon):
            raise ArgumentError(f"replan_every must be in [1, horizon={horizon}], got {replan_every!r}")
        self.world_model = world_model
        self.config = world_model.config
        self.horizon = int(horizon)
        self.samples = int(samples)
        self.iterations = int(iterations)
        self.state_cost_weight = float(state_cost_weight)
        self.action_repeat = int(action_repeat)
        self.replan_every = int(replan_every)
        self.action_mean, self.action_std = _check_action_stats(action_mean, action_std, self.config.action_dim)
        # The action box [-1, 1] in standardised units.
        self._low = (-1.0 - self.action_mean) / self.action_std
        self._high = (1.0 - self.action_mean) / self.action_std
        self.rng = np.random.default_rng(seed)
        self.reads_memory = bool(read_memory) and bool(getattr(world_model, "stateful", False))
        if self.reads_memory and self.action_repeat != 1:
            raise ArgumentError(
                "a planner reading a stateful model's memory writes one record per env step; action_repeat must be 1"
            )
        self.plan_seconds: list[float] = []  # wall time of every plan
        self._envs: dict[int, dict[str, Any]] = {}

    # ------------------------------------------------------------------ action units
    def to_env(self, standardised: np.ndarray) -> np.ndarray:
        """Env actions ``clip(mean + std * u, -1, 1)`` (float32) of standardised actions ``u`` (..., A)."""
        actions = self.action_mean + self.action_std * np.asarray(standardised, np.float32)
        return np.clip(actions, -1.0, 1.0).astype(np.float32)

    def to_standardised(self, actions: np.ndarray) -> np.ndarray:
        """Standardised actions ``(a - mean) / std`` (float32) of env actions ``a`` (..., A)."""
        return ((np.asarray(actions, np.float32) - self.action_mean) / self.action_std).astype(np.float32)

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
        """One action per env for a goal observation dict (single or batched): the next action of the
        env's current plan, planned afresh every ``replan_every`` steps.

        Pass ``episode_start`` (SB3's ``evaluate_policy`` and ``leworld eval`` do): without it a
        new episode is recognised only by a new goal, and gym-pusht's fixed goal never changes.
        """
        arrays = check_observation(observation)
        single = arrays["achieved_goal"].ndim == 1
        achieved = np.atleast_2d(arrays["achieved_goal"])
        desired = np.atleast_2d(arrays["desired_goal"])
        d = self.config.latent_dim
        if achieved.shape[1] < d or desired.shape != achieved.shape:
            raise ArgumentError(
                f"expected achieved_goal and desired_goal of width >= {d} (latent first), "
                f"got {achieved.shape} and {desired.shape}"
            )
        starts = np.ones(len(achieved), bool) if episode_start is None else np.atleast_1d(episode_start)
        actions = np.empty((len(achieved), self.config.action_dim), np.float32)
        for i in range(len(achieved)):
            restart = episode_start is not None and bool(starts[i])
            env = self._observe(i, achieved[i, :d], desired[i, :d], desired[i, d:], restart)
            actions[i] = self._next_action(env)
        return (actions[0] if single else actions), None

    def observe_action(self, observation: dict[str, np.ndarray], action: Any, episode_start: bool = False) -> None:
        """Record a step the planner did not choose: it sees ``observation`` (one env's) and then
        ``action`` (env units) is taken, by a script or a person; its next ``predict`` plans afresh. A
        stateful model's planner writes the step into its memory as the env does."""
        arrays = check_observation(observation)
        d = self.config.latent_dim
        achieved, desired = arrays["achieved_goal"], arrays["desired_goal"]
        if achieved.ndim != 1 or achieved.shape[0] < d or desired.shape != achieved.shape:
            raise ArgumentError(f"observe_action takes one env's observation, got achieved_goal {achieved.shape}")
        action = np.asarray(action, np.float32)
        if action.shape != (self.config.action_dim,) or not np.all(np.isfinite(action)):
            raise ArgumentError(f"action must be {self.config.action_dim} finite numbers, got {action!r}")
        env = self._observe(0, achieved[:d], desired[:d], desired[d:], bool(episode_start))
        env["a"][-1] = np.clip(action, -1.0, 1.0)
        env["plan"], env["cursor"], env["warm"] = None, 0, np.zeros_like(env["warm"])

    def _observe(self, i: int, z: np.ndarray, goal: np.ndarray, goal_pose: np.ndarray, restart: bool) -> dict:
        """Env ``i``'s history after seeing latent ``z``: a new one at an episode's start, else shifted."""
        env = self._envs.get(i)
        if env is None or restart or not np.array_equal(env["goal"], goal):
            env = self._start(z, goal, goal_pose)
            self._envs[i] = env
        else:
            if self.reads_memory:  # the step just taken, as the env recorded it: z_{t-1}, a_{t-1} -> z_t
                self.world_model.observe(env["memory"], [0], env["z"][-1:], env["a"][-1:], z[None])
                env["readouts"] = np.concatenate([env["readouts"][1:], env["readouts"][-1:]])
            env["z"] = np.concatenate([env["z"][1:], z[None]])
            env["a"] = np.concatenate([env["a"][1:], np.zeros((1, self.config.action_dim), np.float32)])
        if self.reads_memory:  # the readout at the newest frame, from it and the one before
            before = env["z"][-2:-1] if len(env["z"]) > 1 else env["z"][-1:]
            env["readouts"][-1] = self.world_model.read(env["memory"], [0], before, env["z"][-1:])[0]
        return env

    def _next_action(self, env: dict[str, Any]) -> np.ndarray:
        """The next action of ``env``'s plan (planning first when ``replan_every`` actions of it ran),
        recorded as the history's newest action."""
        if env["plan"] is None or env["cursor"] >= self.replan_every:
            shift = env["cursor"]  # actions of the last plan already executed
            if env["plan"] is not None:
                padding = np.zeros((shift, self.config.action_dim), np.float32)
                env["warm"] = np.concatenate([env["plan"][shift:], padding])
            env["shift"] = shift
            began = time.perf_counter()
            env["plan"] = self._plan(env)
            self.plan_seconds.append(time.perf_counter() - began)
            env["cursor"], env["plans"] = 0, env["plans"] + 1
        action = self.to_env(env["plan"][env["cursor"]])
        env["cursor"] += 1
        env["a"][-1] = action
        return action

    def _start(self, z: np.ndarray, goal: np.ndarray, goal_pose: np.ndarray) -> dict[str, Any]:
        h, a = self.config.history, self.config.action_dim
        return {
            "z": np.repeat(z[None], h, axis=0),
            "a": np.zeros((h, a), np.float32),
            "goal": goal.copy(),
            "goal_pose": features_to_pose(goal_pose) if goal_pose.size == POSE_FEATURES else None,
            "warm": np.zeros((self.horizon, a), np.float32),  # standardised: the data's mean action
            "plan": None,  # the current plan, standardised (horizon, A)
            "cursor": 0,  # its actions executed so far
            "shift": 0,  # actions of the previous plan executed before this one was made
            "plans": 0,  # plans made this episode
            "extra": {},
        } | (
            {"memory": self.world_model.new_memory(1), "readouts": self.world_model.empty_readout(h)}
            if self.reads_memory
            else {}
        )

    # ------------------------------------------------------------------ costs
    def costs(self, env: dict[str, Any], sequences: np.ndarray) -> np.ndarray:
        """Cost of candidate sequences (S, horizon, A) in env action units from ``env``'s history; lower is better."""
        s = sequences.shape[0]
        steps = np.repeat(sequences, self.action_repeat, axis=1)
        z_hist = np.broadcast_to(env["z"], (s, *env["z"].shape))
        a_hist = np.repeat(env["a"][None], s, axis=0)
        a_hist[:, -1] = steps[:, 0]
        future = np.concatenate([steps[:, 1:], np.zeros_like(steps[:, :1])], axis=1)
        if self.reads_memory:
            final = self._rollout_held(env, a_hist, future)
        else:
            final = self.world_model.rollout(z_hist, a_hist, future)[:, -1]
        cost = np.mean((final - env["goal"]) ** 2, axis=1)
        if self.state_cost_weight > 0 and env["goal_pose"] is not None:
            block = self.world_model.probe(final)[:, 2:5].astype(np.float64)
            goal = env["goal_pose"]
            position = np.linalg.norm(block[:, :2] - goal[:2], axis=1) / 100.0
            angle = np.abs(np.remainder(block[:, 2] - goal[2] + np.pi, 2 * np.pi) - np.pi)
            cost = cost + self.state_cost_weight * (position**2 + angle**2)
        return cost

    def _rollout_held(self, env: dict[str, Any], a_hist: np.ndarray, future: np.ndarray) -> np.ndarray:
        """The latents (S, D) after ``future.shape[1]`` steps of a stateful model, the newest readout held."""
        count = len(a_hist)
        z = np.repeat(env["z"][None], count, axis=0)
        extra = np.repeat(env["readouts"][None], count, axis=0)
        a = a_hist
        for k in range(future.shape[1]):
            z_next = self.world_model.predict_with(z, a, extra)
            if k == future.shape[1] - 1:
                return z_next
            z = np.concatenate([z[:, 1:], z_next[:, None]], axis=1)
            a = np.concatenate([a[:, 1:], future[:, k : k + 1]], axis=1)
            extra = np.concatenate([extra[:, 1:], extra[:, -1:]], axis=1)
        raise ArgumentError("a rollout needs at least one step")

    def standardised_costs(self, env: dict[str, Any], candidates: np.ndarray) -> np.ndarray:
        """:meth:`costs` of standardised candidate sequences."""
        return self.costs(env, self.to_env(candidates))

    def _clip(self, candidates: np.ndarray) -> np.ndarray:
        """Standardised candidates clipped to the action box (float32)."""
        return np.clip(candidates, self._low, self._high).astype(np.float32)

    def _sample(self, mean: np.ndarray, std: np.ndarray, count: int, noise_exponent: float = 0.0) -> np.ndarray:
        """``count`` standardised Gaussian candidates around ``mean``, clipped to the action box; the
        first is ``mean`` itself, so the current plan always competes. ``noise_exponent`` > 0: the noise
        is coloured along time (:func:`colored_noise`); 0: white (the same draws as before it existed)."""
        noise = colored_noise(noise_exponent, count, *mean.shape, self.rng)
        candidates = self._clip(mean + std * noise)
        candidates[0] = mean
        return candidates

    def _plan(self, env: dict[str, Any]) -> np.ndarray:
        """A plan (horizon, A) in standardised units from ``env``'s history and warm start ``env["warm"]``."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(horizon={self.horizon}, samples={self.samples}, "
            f"iterations={self.iterations}, replan_every={self.replan_every}, backend={self.world_model.backend!r})"
        )


class CEMPlanner(LatentPlanner):
    """The cross-entropy method with LeWM's settings: 300 samples, 30 iterations, the best 30
    refit a diagonal Gaussian (in standardised action units), horizon 5, a warm start.

    The executed actions are the final mean's (its first, or its first ``replan_every``).
    Built with :func:`make_planner`, it standardises with the data's action statistics, as LeWM.
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
            _, _, mean, std = cem_round(self, env, mean, std, self.samples, self.topk)
        return mean


def cem_round(
    planner: LatentPlanner,
    env: dict[str, Any],
    mean: np.ndarray,
    std: np.ndarray,
    samples: int,
    topk: int,
    keep: np.ndarray | None = None,
    noise_exponent: float = 0.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One CEM round in standardised units: ``samples`` candidates around ``mean`` (the first is ``mean``
    itself, the second ``keep`` when given), their costs from ``env``'s history, and the Gaussian refit
    to the best ``topk``. ``noise_exponent`` > 0 draws the candidates' noise coloured along time
    (:func:`colored_noise`, iCEM's); 0 is white. Returns (candidates, costs, new mean, new std)."""
    candidates = planner._sample(mean, std, samples, noise_exponent)
    if keep is not None:
        candidates[1] = keep
    cost = planner.standardised_costs(env, candidates)
    elites = candidates[np.argsort(cost)[:topk]]
    return candidates, cost, elites.mean(axis=0), elites.std(axis=0) + 1e-3


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
        if kept is not None:  # last plan's elites, shifted by the actions executed since, like the mean
            shift = env["shift"]
            kept = np.concatenate([kept[:, shift:], np.zeros_like(kept[:, :shift])], axis=1)
        best, best_cost = mean, np.inf
        for it in range(self.iterations):
            count = max(2 * self.topk, int(self.samples * self.population_decay**-it))
            noise = colored_noise(self.noise_exponent, count, self.horizon, mean.shape[1], self.rng)
            candidates = self._clip(mean + std * noise)
            if kept is not None:
                candidates = np.concatenate([candidates, kept])
            if it == self.iterations - 1:
                candidates = np.concatenate([candidates, mean[None]])
            cost = self.standardised_costs(env, candidates)
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
            cost = self.standardised_costs(env, candidates)
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
        """Uniform actions in [-1, 1], one per env of a (checked) goal observation, single or batched."""
        achieved = check_observation(observation)["achieved_goal"]
        single = achieved.ndim == 1
        n = 1 if single else len(achieved)
        actions = self.rng.uniform(-1, 1, (n, self.action_dim)).astype(np.float32)
        return (actions[0] if single else actions), None


def make_planner(name: str, world_model: WorldModel, **kwargs: Any) -> LatentPlanner:
    """A planner by name (``cem``, ``icem``, ``mppi``) with its defaults, overridden by ``kwargs``.

    ``cem`` standardises its actions with the data's statistics (:func:`data_action_stats`) unless
    ``action_mean`` / ``action_std`` are given; ``icem`` and ``mppi`` sample in env action units
    unless they are given.
    """
    classes = {"cem": CEMPlanner, "icem": ICEMPlanner, "mppi": MPPIPlanner}
    if name not in classes:
        raise ArgumentError(f"unknown planner {name!r}; choose one of: {', '.join(PLANNERS)}")
    if name == "cem" and "action_mean" not in kwargs and "action_std" not in kwargs:
        stats = data_action_stats(world_model)
        if stats is not None:
            kwargs["action_mean"], kwargs["action_std"] = stats
    return classes[name](world_model, **kwargs)
