"""Evaluate a planner or an SB3 policy on real (or dreamed) PushT under a named protocol.

Protocols (``docs/evaluation.md`` has the exact text):

* ``lewm``: LeWM's PushT protocol. Start from a held-out real state (the model's start
  bank), goal = the real state 25 physics steps later in the same episode, a budget of
  50 physics steps, success = block within 20 px and pi/9 of the goal at any step.
* ``pusht``: gym-pusht's own task. Start from gym-pusht's random initial state (its
  ``reset(seed)``), goal = its fixed pose, a budget of 300 physics steps, success =
  coverage above 0.95 at any step.

Episode ``i`` of a run with seed ``s`` is fully determined by ``(s, i)``: the same start
and goal for every agent and both envs, so agents can be compared episode by episode.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

import leworld_env
from leworld_env.sim.pusht_sim import PushTSim, angle_difference
from world_models.errors import LeWorldError

ENVS = {"real": leworld_env.REAL_ID, "dream": leworld_env.DREAM_ID}


@dataclass(frozen=True)
class Protocol:
    """An evaluation protocol: which goal, how many physics steps, where episodes start."""

    name: str
    goal: str
    budget: int  # physics steps
    starts: str  # "bank": held-out dataset states; "pusht": gym-pusht's random initial state


PROTOCOLS = {
    "lewm": Protocol("lewm", goal="dataset", budget=50, starts="bank"),
    "pusht": Protocol("pusht", goal="fixed", budget=300, starts="pusht"),
}


@dataclass
class EpisodeResult:
    """One evaluated episode."""

    index: int
    success: bool
    steps: int
    final_coverage: float
    max_coverage: float
    final_position_error: float  # block, px
    final_angle_error: float  # block, radians
    final_latent_distance: float  # root-mean-square, latent units
    start: list[float]
    goal: list[float]


@dataclass
class EvaluationResult:
    """A whole run: the settings, per-episode results and the summary."""

    agent: str
    env: str
    protocol: str
    episodes: int
    seed: int
    model: str
    backend: str
    success_rate: float
    success_interval: tuple[float, float]
    mean_final_coverage: float
    mean_max_coverage: float
    mean_steps: float
    mean_final_position_error: float
    mean_decision_seconds: float
    decisions: int
    results: list[EpisodeResult] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    def table(self) -> str:
        """The summary as aligned text lines."""
        low, high = self.success_interval
        rows = [
            ("agent", self.agent),
            ("env / protocol", f"{self.env} / {self.protocol}"),
            ("episodes (seed)", f"{self.episodes} ({self.seed})"),
            ("model / backend", f"{self.model} / {self.backend}"),
            ("success rate", f"{self.success_rate:.1%}  (95% interval {low:.1%} - {high:.1%})"),
            ("coverage, final / best", f"{self.mean_final_coverage:.3f} / {self.mean_max_coverage:.3f}"),
            ("block position error, final", f"{self.mean_final_position_error:.1f} px"),
            ("steps per episode", f"{self.mean_steps:.1f}"),
            ("time per decision", f"{self.mean_decision_seconds * 1e3:.1f} ms over {self.decisions} decisions"),
        ]
        width = max(len(name) for name, _ in rows)
        return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def wilson_interval(successes: int, trials: int, z: float = 1.959964) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion (95 % by default)."""
    if trials == 0:
        return (0.0, 1.0)
    p = successes / trials
    denominator = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denominator
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denominator
    return (max(0.0, centre - half), min(1.0, centre + half))


def episode_options(protocol: Protocol, seed: int, episodes: int, bank_size: int) -> list[dict[str, Any]]:
    """Reset options of every episode of a run: bank entries drawn without replacement, or
    gym-pusht's own random starts."""
    if protocol.starts == "bank":
        # One permutation of the bank per seed: episode i is the same entry whatever N is.
        order = np.random.default_rng(seed).permutation(bank_size)
        return [{"bank_index": int(order[i % bank_size])} for i in range(episodes)]
    sim = PushTSim(image_size=8)
    starts = [sim.reset(seed=seed + i).vector() for i in range(episodes)]
    sim.close()
    return [{"start": start} for start in starts]


def make_eval_env(env: str, protocol: Protocol, model: str | Path, backend: str | None, **kwargs: Any) -> gym.Env:
    """The env of a protocol: its goal, and a time limit of its budget in env steps."""
    if env not in ENVS:
        raise LeWorldError(f"unknown env {env!r}; choose one of: {', '.join(ENVS)}")
    made = gym.make(ENVS[env], model=model, backend=backend, goal=protocol.goal, **kwargs)
    frameskip = made.unwrapped.setup.frameskip
    return gym.wrappers.TimeLimit(made.unwrapped, max_episode_steps=math.ceil(protocol.budget / frameskip))


def evaluate(
    agent: Any,
    agent_name: str,
    env: str = "real",
    protocol: str = "lewm",
    episodes: int = 50,
    seed: int = 0,
    model: str | Path = "pusht-tiny",
    backend: str | None = None,
    frames: list[np.ndarray] | None = None,
    progress: bool = True,
) -> EvaluationResult:
    """Run ``agent`` (anything with SB3's ``predict(obs, state, episode_start, deterministic)``).

    Args:
        frames: if a list is given, the first episode's rendered frames are appended to it.
    """
    if protocol not in PROTOCOLS:
        raise LeWorldError(f"unknown protocol {protocol!r}; choose one of: {', '.join(PROTOCOLS)}")
    spec = PROTOCOLS[protocol]
    render = {"render_mode": "rgb_array"} if frames is not None else {}
    environment = make_eval_env(env, spec, model, backend, **render)
    setup = environment.unwrapped.setup
    options = episode_options(spec, seed, episodes, len(setup.bank))
    results: list[EpisodeResult] = []
    decision_seconds: list[float] = []
    iterator = range(episodes)
    if progress:
        from tqdm import tqdm

        iterator = tqdm(iterator, desc=f"{agent_name} on {env} ({protocol})", unit="episode")
    try:
        for i in iterator:
            record = frames if i == 0 else None
            results.append(run_episode(environment, agent, i, seed + i, options[i], record, decision_seconds))
    finally:
        environment.close()
    settings = {"agent": agent_name, "env": env, "protocol": protocol, "seed": seed, "model": str(model)}
    return summarize(results, decision_seconds, backend=setup.world_model.backend, **settings)


def run_episode(
    environment: gym.Env,
    agent: Any,
    index: int,
    seed: int,
    options: dict[str, Any],
    frames: list[np.ndarray] | None,
    decision_seconds: list[float],
) -> EpisodeResult:
    """One episode until the env ends it; appends each decision's wall time to ``decision_seconds``
    and, when ``frames`` is a list, every rendered frame to it."""
    latent_dim = environment.unwrapped.setup.latent_dim
    obs, info = environment.reset(seed=seed, options=options)
    start, goal_state = info["state"].tolist(), info["goal_state"].tolist()
    coverages, episode_start, success, steps = [info["coverage"]], True, bool(info["is_success"]), 0
    if frames is not None:
        frames.append(environment.render())
    done = False
    while not done:
        began = time.perf_counter()
        action, _ = agent.predict(obs, episode_start=np.array([episode_start]), deterministic=True)
        decision_seconds.append(time.perf_counter() - began)
        episode_start = False
        obs, _, terminated, truncated, info = environment.step(action)
        steps += 1
        coverages.append(info["coverage"])
        success = success or bool(info["is_success"])
        done = terminated or truncated
        if frames is not None:
            frames.append(environment.render())
    block, target = np.asarray(info["state"])[2:5], np.asarray(info["goal_state"])[2:5]
    latent = obs["achieved_goal"][:latent_dim] - obs["desired_goal"][:latent_dim]
    return EpisodeResult(
        index=index,
        success=success,
        steps=steps,
        final_coverage=float(coverages[-1]),
        max_coverage=float(max(coverages)),
        final_position_error=float(np.linalg.norm(block[:2] - target[:2])),
        final_angle_error=float(angle_difference(block[2], target[2])),
        final_latent_distance=float(np.sqrt(np.mean(latent.astype(np.float64) ** 2))),
        start=start,
        goal=goal_state,
    )


def summarize(results: list[EpisodeResult], decision_seconds: list[float], **settings: Any) -> EvaluationResult:
    """The run's summary over its episodes; ``settings`` are the run's agent, env, protocol, seed,
    model and backend."""
    episodes = len(results)
    wins = sum(r.success for r in results)
    return EvaluationResult(
        **settings,
        episodes=episodes,
        success_rate=wins / episodes,
        success_interval=wilson_interval(wins, episodes),
        mean_final_coverage=float(np.mean([r.final_coverage for r in results])),
        mean_max_coverage=float(np.mean([r.max_coverage for r in results])),
        mean_steps=float(np.mean([r.steps for r in results])),
        mean_final_position_error=float(np.mean([r.final_position_error for r in results])),
        mean_decision_seconds=float(np.mean(decision_seconds)) if decision_seconds else 0.0,
        decisions=len(decision_seconds),
        results=results,
    )


def log_evaluation(result: EvaluationResult, logdir: Path, frames: list[np.ndarray]) -> None:
    """Write an evaluation to TensorBoard: ``eval/*`` summary scalars, ``episode/*`` per episode
    (step = episode index), ``plan/decision_ms``, and the first episode as ``eval/first_episode`` video."""
    from torch.utils.tensorboard import SummaryWriter

    from world_models.video import add_video

    writer = SummaryWriter(str(logdir))
    try:
        summary = {
            "eval/success_rate": result.success_rate,
            "eval/mean_final_coverage": result.mean_final_coverage,
            "eval/mean_max_coverage": result.mean_max_coverage,
            "eval/mean_final_position_error": result.mean_final_position_error,
            "eval/mean_steps": result.mean_steps,
            "plan/decision_ms": result.mean_decision_seconds * 1e3,
        }
        for tag, value in summary.items():
            writer.add_scalar(tag, value, 0)
        for episode in result.results:
            writer.add_scalar("episode/success", float(episode.success), episode.index)
            writer.add_scalar("episode/final_coverage", episode.final_coverage, episode.index)
            writer.add_scalar("episode/final_position_error", episode.final_position_error, episode.index)
            writer.add_scalar("episode/steps", episode.steps, episode.index)
        if frames:
            add_video(writer, "eval/first_episode", frames, 0, fps=10)
    finally:
        writer.close()


def load_agent(name: str, world_model: Any, seed: int = 0, **planner_kwargs: Any) -> Any:
    """``cem``, ``icem``, ``mppi``, ``random``, or a stable-baselines3 ``.zip`` (PPO or SAC)."""
    from agents.planning import PLANNERS, RandomAgent, make_planner

    if name in PLANNERS:
        return make_planner(name, world_model, seed=seed, **planner_kwargs)
    if name == "random":
        return RandomAgent(seed=seed)
    path = Path(name)
    if path.suffix != ".zip":
        raise LeWorldError(f"unknown agent {name!r}; choose one of: {', '.join(PLANNERS)}, random, or a PATH.zip")
    if not path.is_file():
        raise LeWorldError(f"{path}: no such SB3 model file")
    return load_sb3(path)


def load_sb3(path: Path) -> Any:
    """A saved SB3 PPO or SAC model (the algorithm is read from the file)."""
    import zipfile

    from stable_baselines3 import PPO, SAC

    try:
        with zipfile.ZipFile(path) as archive:
            data = json.loads(archive.read("data"))
        module = data["policy_class"]["__module__"]
    except (zipfile.BadZipFile, KeyError, TypeError, ValueError) as err:
        raise LeWorldError(f"{path}: not a stable-baselines3 model file ({err})") from None
    algorithms = {"stable_baselines3.sac.policies": SAC, "stable_baselines3.common.policies": PPO}
    if module not in algorithms:
        raise LeWorldError(f"{path}: a policy from {module}; leworld eval loads PPO and SAC models")
    algorithm = algorithms[module]
    # For acting, an off-policy model needs no replay buffer (HER's would also want an env).
    custom = {"replay_buffer_class": None, "replay_buffer_kwargs": {}, "buffer_size": 1} if algorithm is SAC else {}
    try:
        return algorithm.load(path, device="cpu", custom_objects=custom)
    except Exception as err:  # SB3 raises many kinds for a file it cannot read
        raise LeWorldError(f"{path}: stable-baselines3 could not load it as {algorithm.__name__} ({err})") from None
