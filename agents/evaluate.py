"""Evaluate a planner or an SB3 policy on real (or dreamed) PushT under a named protocol.

Protocols (``docs/evaluation.md`` has the exact text):

* ``lewm``: LeWM's PushT protocol. Start from a held-out real state with its agent velocity
  (the model's start bank), goal = the real state 25 physics steps later in the same episode,
  a budget of 50 physics steps run in full, success = LeWM's ``eval_state`` (agent and block
  within 20 px together, block angle within pi/9) at any step; the looser block-only test
  (block within 20 px and pi/9) is reported beside it.
* ``pusht``: gym-pusht's own task. Start from gym-pusht's random initial state (its
  ``reset(seed)``), goal = its fixed pose, a budget of 300 physics steps, success =
  coverage above 0.95 at any step (the episode ends there).

Episode ``i`` of a run with seed ``s`` is fully determined by ``(s, i)``: the same start
and goal for every agent and both envs, so agents can be compared episode by episode.
On the real twin every episode's start, goal and absolute PD targets are kept, so
:mod:`agents.replay` can replay it in a plain gym-pusht ``PushTEnv``.
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
from leworld_env.envs.task import info_successes, start_and_goal
from leworld_env.sim.pusht_sim import PushTSim, angle_difference, gym_pusht_reset_state
from world_models.errors import LeWorldError

ENVS = {"real": leworld_env.REAL_ID, "dream": leworld_env.DREAM_ID}
STRICT_TEST = "agent and block within 20 px together, block angle within pi/9 (LeWM's eval_state)"
BLOCK_TEST = "block within 20 px, block angle within pi/9"
COVERAGE_TEST = "coverage of the goal tee > 0.95 (gym-pusht's)"


@dataclass(frozen=True)
class Protocol:
    """An evaluation protocol: which goal, how many physics steps, where episodes start, whether
    success ends an episode."""

    name: str
    goal: str
    budget: int  # physics steps
    starts: str  # "bank": held-out dataset states; "pusht": gym-pusht's random initial state
    terminate_on_success: bool  # False: every episode runs the whole budget (LeWM's)

    def env_steps(self, frameskip: int) -> int:
        """Env steps of the budget at ``frameskip`` physics steps each (LeWM's 50 at 5: 10)."""
        return math.ceil(self.budget / frameskip)

    @property
    def success_test(self) -> str:
        """The headline success test, in words."""
        return STRICT_TEST if self.goal == "dataset" else COVERAGE_TEST


PROTOCOLS = {
    "lewm": Protocol("lewm", goal="dataset", budget=50, starts="bank", terminate_on_success=False),
    "pusht": Protocol("pusht", goal="fixed", budget=300, starts="pusht", terminate_on_success=True),
}


@dataclass
class EpisodeResult:
    """One evaluated episode.

    ``success`` is the protocol's test at any step (``lewm``: LeWM's strict ``eval_state``;
    ``pusht``: coverage), ``success_block`` the block-only test at any step; ``*_step`` the first
    env step each held (``None``: never). ``start`` is the requested start (agent x, y, block x,
    y, angle, agent vx, vy), ``reset_to_state`` the 5 numbers gym-pusht's ``reset_to_state``
    takes for it, ``goal`` the goal state; ``actions`` the relative action of every env step and
    ``targets`` the absolute PD target of every physics step (what gym-pusht's ``step`` took;
    ``None`` in the dream). ``final_state`` is the state at the end (probed in the dream).
    """

    index: int
    success: bool
    success_block: bool
    success_step: int | None
    success_block_step: int | None
    steps: int
    plans: int | None  # plans the agent made (planners only)
    final_coverage: float
    max_coverage: float
    final_position_error: float  # block, px
    final_angle_error: float  # block, radians
    final_latent_distance: float  # root-mean-square, latent units
    start: list[float]
    reset_to_state: list[float]
    goal: list[float]
    final_state: list[float]
    actions: list[list[float]]
    targets: list[list[float]] | None


@dataclass
class EvaluationResult:
    """A whole run: the settings, per-episode results and the summary.

    ``success_rate`` is the protocol's headline test (``success_test`` says which),
    ``success_block_rate`` the block-only test; both with 95 % Wilson intervals.
    """

    agent: str
    env: str
    protocol: str
    episodes: int
    seed: int
    model: str
    backend: str
    frameskip: int  # physics steps per env step
    replan_every: int | None  # env steps between plans (planners only)
    success_test: str
    success_rate: float
    success_interval: tuple[float, float]
    success_block_rate: float
    success_block_interval: tuple[float, float]
    mean_final_coverage: float
    mean_max_coverage: float
    mean_steps: float
    mean_final_position_error: float
    mean_decision_seconds: float
    max_decision_seconds: float  # the longest decision (a planner's: a step that plans)
    decisions: int
    plans: int | None
    mean_plan_seconds: float | None
    results: list[EpisodeResult] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    def table(self) -> str:
        """The summary as aligned text lines."""
        rows = [
            ("agent", self.agent),
            ("env / protocol", f"{self.env} / {self.protocol}"),
            ("episodes (seed)", f"{self.episodes} ({self.seed})"),
            ("model / backend", f"{self.model} / {self.backend}"),
            ("success rate", f"{_rate(self.success_rate, self.success_interval)}  {self.success_test}"),
            ("block-only success rate", f"{_rate(self.success_block_rate, self.success_block_interval)}  {BLOCK_TEST}"),
            ("coverage, final / best", f"{self.mean_final_coverage:.3f} / {self.mean_max_coverage:.3f}"),
            ("block position error, final", f"{self.mean_final_position_error:.1f} px"),
            ("steps per episode", f"{self.mean_steps:.1f}"),
            (
                "time per decision",
                f"{self.mean_decision_seconds * 1e3:.1f} ms over {self.decisions} decisions "
                f"(longest {self.max_decision_seconds * 1e3:.1f} ms)",
            ),
        ]
        if self.replan_every is not None and self.plans is not None:
            rows.append(
                (
                    "schedule",
                    f"a plan every {self.replan_every} env step(s): {self.plans} plans, "
                    f"{(self.mean_plan_seconds or 0.0) * 1e3:.1f} ms each",
                )
            )
        width = max(len(name) for name, _ in rows)
        return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def _rate(rate: float, interval: tuple[float, float]) -> str:
    low, high = interval
    return f"{rate:.1%}  (95% interval {low:.1%} - {high:.1%})"


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
    """The env of a protocol: its goal, whether success ends an episode, and a time limit of its
    budget in env steps."""
    if env not in ENVS:
        raise LeWorldError(f"unknown env {env!r}; choose one of: {', '.join(ENVS)}")
    made = gym.make(
        ENVS[env],
        model=model,
        backend=backend,
        goal=protocol.goal,
        terminate_on_success=protocol.terminate_on_success,
        **kwargs,
    )
    frameskip = made.unwrapped.setup.frameskip
    return gym.wrappers.TimeLimit(made.unwrapped, max_episode_steps=protocol.env_steps(frameskip))


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
    plan_seconds = getattr(agent, "plan_seconds", None)
    planned_before = len(plan_seconds) if plan_seconds is not None else 0
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
    settings = {
        "agent": agent_name,
        "env": env,
        "protocol": protocol,
        "seed": seed,
        "model": str(model),
        "frameskip": setup.frameskip,
        "replan_every": getattr(agent, "replan_every", None),
        "success_test": spec.success_test,
        "plan_seconds": None if plan_seconds is None else plan_seconds[planned_before:],
    }
    return summarize(results, decision_seconds, backend=setup.world_model.backend, **settings)


class _EpisodeTrace:
    """What one episode records step by step: coverages, the first success of each test, actions, targets."""

    def __init__(self, goal: str, info: dict[str, Any], real: bool) -> None:
        self.goal = goal
        self.coverages: list[float] = []
        self.success_step: int | None = None
        self.block_step: int | None = None
        self.actions: list[list[float]] = []
        self.targets: list[list[float]] | None = [] if real else None
        self.steps = 0
        self.observe(info)

    def observe(self, info: dict[str, Any]) -> None:
        """Record the info of env step ``self.steps`` (0: the reset)."""
        self.coverages.append(float(info["coverage"]))
        strict, block = info_successes(info, self.goal)
        if strict and self.success_step is None:
            self.success_step = self.steps
        if block and self.block_step is None:
            self.block_step = self.steps

    def step(self, action: np.ndarray, info: dict[str, Any]) -> None:
        """Record one env step: its relative action, its physics steps' targets, then its info."""
        self.steps += 1
        self.actions.append(np.asarray(action, np.float64).reshape(-1).tolist())
        if self.targets is not None:
            self.targets.extend(np.asarray(info["targets"], np.float64).tolist())
        self.observe(info)


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
    setup = environment.unwrapped.setup
    plan_seconds = getattr(agent, "plan_seconds", None)
    planned_before = len(plan_seconds) if plan_seconds is not None else 0
    obs, info = environment.reset(seed=seed, options=options)
    start = start_and_goal(setup, np.random.default_rng(seed), options)[0]
    trace = _EpisodeTrace(setup.goal, info, real=environment.unwrapped.runs_physics)
    if frames is not None:
        frames.append(environment.render())
    done, episode_start = False, True
    while not done:
        began = time.perf_counter()
        action, _ = agent.predict(obs, episode_start=np.array([episode_start]), deterministic=True)
        decision_seconds.append(time.perf_counter() - began)
        episode_start = False
        obs, _, terminated, truncated, info = environment.step(action)
        trace.step(np.clip(action, -1.0, 1.0), info)
        done = terminated or truncated
        if frames is not None:
            frames.append(environment.render())
    plans = None if plan_seconds is None else len(plan_seconds) - planned_before
    return episode_result(index, trace, obs, info, start, setup.latent_dim, plans)


def episode_result(
    index: int,
    trace: _EpisodeTrace,
    obs: dict[str, np.ndarray],
    info: dict[str, Any],
    start: np.ndarray,
    latent_dim: int,
    plans: int | None,
) -> EpisodeResult:
    """The :class:`EpisodeResult` of a finished episode's trace, last observation and info."""
    state, goal_state = np.asarray(info["state"], np.float64), np.asarray(info["goal_state"], np.float64)
    latent = obs["achieved_goal"][:latent_dim] - obs["desired_goal"][:latent_dim]
    return EpisodeResult(
        index=index,
        success=trace.success_step is not None,
        success_block=trace.block_step is not None,
        success_step=trace.success_step,
        success_block_step=trace.block_step,
        steps=trace.steps,
        plans=plans,
        final_coverage=trace.coverages[-1],
        max_coverage=max(trace.coverages),
        final_position_error=float(np.linalg.norm(state[2:4] - goal_state[2:4])),
        final_angle_error=float(angle_difference(state[4], goal_state[4])),
        final_latent_distance=float(np.sqrt(np.mean(latent.astype(np.float64) ** 2))),
        start=np.asarray(start, np.float64).tolist(),
        reset_to_state=gym_pusht_reset_state(start).tolist(),
        goal=goal_state.tolist(),
        final_state=state.tolist(),
        actions=trace.actions,
        targets=trace.targets,
    )


def summarize(
    results: list[EpisodeResult],
    decision_seconds: list[float],
    plan_seconds: list[float] | None = None,
    **settings: Any,
) -> EvaluationResult:
    """The run's summary over its episodes; ``settings`` are the run's agent, env, protocol, seed,
    model, backend, frameskip, replan_every and success_test; ``plan_seconds`` the planner's plan times."""
    episodes = len(results)
    wins = sum(r.success for r in results)
    block_wins = sum(r.success_block for r in results)
    return EvaluationResult(
        **settings,
        episodes=episodes,
        success_rate=wins / episodes,
        success_interval=wilson_interval(wins, episodes),
        success_block_rate=block_wins / episodes,
        success_block_interval=wilson_interval(block_wins, episodes),
        mean_final_coverage=float(np.mean([r.final_coverage for r in results])),
        mean_max_coverage=float(np.mean([r.max_coverage for r in results])),
        mean_steps=float(np.mean([r.steps for r in results])),
        mean_final_position_error=float(np.mean([r.final_position_error for r in results])),
        mean_decision_seconds=float(np.mean(decision_seconds)) if decision_seconds else 0.0,
        max_decision_seconds=float(np.max(decision_seconds)) if decision_seconds else 0.0,
        decisions=len(decision_seconds),
        plans=None if plan_seconds is None else len(plan_seconds),
        mean_plan_seconds=float(np.mean(plan_seconds)) if plan_seconds else None,
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
            "eval/success_block_rate": result.success_block_rate,
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
            writer.add_scalar("episode/success_block", float(episode.success_block), episode.index)
            writer.add_scalar("episode/final_coverage", episode.final_coverage, episode.index)
            writer.add_scalar("episode/final_position_error", episode.final_position_error, episode.index)
            writer.add_scalar("episode/steps", episode.steps, episode.index)
        if frames:
            add_video(writer, "eval/first_episode", frames, 0, fps=10)
    finally:
        writer.close()


def load_agent(name: str, world_model: Any, seed: int = 0, trust_pickle: bool = False, **planner_kwargs: Any) -> Any:
    """An agent by name: ``cem``, ``icem``, ``mppi``, ``random``, ``distilled`` (the distilled planner beside
    the model, :mod:`agents.distill`) or a distilled planner's folder, an agent folder (``leworld train-agent``'s
    ``OUT/model``, ``OUT/best`` or a checkpoint; also its ``agent.json`` or ``policy.safetensors``), or,
    only with ``trust_pickle``, a stable-baselines3 ``.zip`` (PPO or SAC).

    An agent folder is read without pickle. SB3's ``.zip`` is unpickled (cloudpickle) as it loads: a
    crafted file runs code, so it is refused unless ``trust_pickle``.

    Raises:
        LeWorldError: an unknown name, a file that is not an agent, an agent trained for other
            observations than ``world_model`` gives, or a ``.zip`` without ``trust_pickle``.
    """
    from agents.distill import DISTILLED_NAME, is_distilled_folder
    from agents.planning import PLANNERS, RandomAgent, make_planner
    from agents.policy_files import agent_folder, load_policy

    if name in PLANNERS:
        if "refine_plans" in planner_kwargs:
            raise LeWorldError("--refine-plans applies to a distilled planner, not to cem, icem or mppi")
        return make_planner(name, world_model, seed=seed, **planner_kwargs)
    if name == "random":
        return RandomAgent(seed=seed)
    path = Path(name)
    if name == DISTILLED_NAME or is_distilled_folder(path):
        where = shipped_distilled_for(world_model) if name == DISTILLED_NAME else path
        return _distilled(where, world_model, planner_kwargs)
    if agent_folder(path) is not None:
        agent = load_policy(path)
        check_agent_fits(agent, world_model)
        return agent
    if path.suffix == ".zip":
        if not trust_pickle:
            raise LeWorldError(
                f"{path}: a stable-baselines3 .zip is unpickled as it loads (cloudpickle), and a crafted file runs "
                "code; pass --trust-pickle (trust_pickle=True) only for a file you made or trust, or use an agent "
                "folder (leworld train-agent writes OUT/model; agents.policy_files.save_agent converts a loaded model)"
            )
        if not path.is_file():
            raise LeWorldError(f"{path}: no such SB3 model file")
        return load_sb3(path)
    if path.exists():
        raise LeWorldError(f"{path}: not an agent folder (no agent.json and policy.safetensors) and not an SB3 .zip")
    raise LeWorldError(
        f"unknown agent {name!r}; choose one of: {', '.join(PLANNERS)}, random, an agent folder "
        "(leworld train-agent's OUT/model), or an SB3 PATH.zip with --trust-pickle"
    )


def shipped_distilled_for(world_model: Any) -> Path:
    """The distilled planner beside ``world_model``'s folder (``MODEL/distilled``; the default model's
    when the model came from no folder).

    Raises:
        LeWorldError: when there is none there, saying how to make one.
    """
    from agents.distill import DISTILLED_NAME, is_distilled_folder, shipped_distilled
    from leworld_env.envs.task import model_folder

    folder = model_folder(world_model)
    candidate = folder / DISTILLED_NAME if folder is not None else shipped_distilled()
    if not is_distilled_folder(candidate):
        raise LeWorldError(
            f"no distilled planner beside this model (expected {candidate}); make one with leworld train-agent "
            f"--algo distill --model {folder or 'MODEL'} --out RUN and pass --agent RUN/model"
        )
    return candidate


def _distilled(path: Path, world_model: Any, planner_kwargs: dict[str, Any]) -> Any:
    """A distilled planner; ``replan_every`` sets its schedule, ``iterations`` and ``samples`` its refinement
    (:class:`~agents.distill.Refinement`: rounds and samples a round, top-k an eighth of the samples),
    ``refine_plans`` how many of an episode's plans are refined (``"all"``: every one)."""
    import dataclasses

    from agents.distill import Refinement, load_distilled

    unused = sorted(set(planner_kwargs) - {"replan_every", "iterations", "samples", "topk", "refine_plans"})
    if unused:
        raise LeWorldError(
            f"{path}: options {', '.join(unused)} apply to cem, icem and mppi; a distilled planner takes "
            "--replan-every, and --iterations / --samples / --refine-plans for the search that refines its plans"
        )
    agent = load_distilled(path, world_model)
    if "replan_every" in planner_kwargs:
        every = planner_kwargs["replan_every"]
        if not 1 <= every <= agent.horizon:
            raise LeWorldError(f"--replan-every must be in [1, {agent.horizon}] for {path}, got {every}")
        agent.replan_every = int(every)
    given = {k: planner_kwargs[k] for k in ("iterations", "samples") if k in planner_kwargs}
    if given:
        given["topk"] = max(1, min(given.get("samples", (agent.refinement or Refinement()).samples) // 8, 30))
    if "refine_plans" in planner_kwargs:
        plans = planner_kwargs["refine_plans"]
        given["plans"] = None if plans == "all" else plans
    if given:
        try:
            agent.refinement = dataclasses.replace(agent.refinement or Refinement(), **given)
        except ValueError as err:
            raise LeWorldError(f"{path}: {err}") from None
    return agent


def check_agent_fits(agent: Any, world_model: Any) -> None:
    """An agent folder reads the latents ``world_model`` writes: goals of its latent width plus the pose
    features, and an observation of whole latents.

    Raises:
        LeWorldError: naming the agent's folder, both widths, and the world model it was trained with.
    """
    from agents.policy_files import space_shapes
    from world_models.pose import POSE_FEATURES

    config = getattr(world_model, "config", None)
    shapes = space_shapes(agent.observation_space)
    if config is None or not isinstance(shapes, dict):
        return
    width = config.latent_dim
    goals = [shapes.get(key) for key in ("achieved_goal", "desired_goal")]
    observation = shapes.get("observation")
    if goals == [[width + POSE_FEATURES]] * 2 and observation is not None and observation[0] % width == 0:
        return
    raise LeWorldError(
        f"{agent.folder}: the agent reads observations of shapes {shapes}; this world model's latents are "
        f"{width} wide (goals {width + POSE_FEATURES}); evaluate it with the world model it was trained in "
        f"({agent.info.get('model', 'see its agent.json')})"
    )


def load_sb3(path: Path) -> Any:
    """A saved SB3 PPO or SAC ``.zip`` (the algorithm is read from the file's JSON part).

    This unpickles the file: a crafted one runs code. Call it only for files you made or trust
    (:func:`load_agent` calls it only with ``trust_pickle``).
    """
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
