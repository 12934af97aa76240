"""Train a stable-baselines3 agent in imagination, judged on real physics (``leworld train-agent``).

The whole recipe, top to bottom:

1. hyperparameters from ``agents/hyperparams/<algo>.yml`` (rl-zoo style), overridable; every field is
   checked (its kind and range) before anything else runs;
2. the batched dream, ``LeWorldSB3VecEnv`` (one predict per step for all envs), under
   ``VecMonitor`` for episode statistics;
3. an ``EvalCallback`` on the real twin (gym-pusht physics, the same spaces) every
   ``eval_every`` steps: it logs ``eval/mean_reward`` and ``eval/success_rate`` to
   TensorBoard, then one real episode as the video ``eval/real_episode``, and keeps the
   best agent in ``OUT/best``; a checkpoint goes to ``OUT/checkpoints/agent_<steps>_steps`` every
   ``checkpoint_every`` steps, at the end, and on Ctrl-C or SIGTERM;
4. ``model.learn``; the final agent goes to ``OUT/model``.

Every agent is written as an agent folder (:mod:`agents.policy_files`: ``agent.json`` and
safetensors, no pickle), never as SB3's ``.zip``, so reading one back runs no code from the file.
``resume=True`` continues from the newest checkpoint: the algorithm is built again from the YAML
hyperparameters, then the checkpoint restores the policy's weights, the optimizers' state, SAC's
entropy coefficient, ``num_timesteps`` and the update counters. Not restored: SAC's replay buffer
(after a resume SAC collects ``learning_starts`` fresh steps before it trains again), the random
generators, the envs' episodes in progress (they start afresh) and, after Ctrl-C, the steps of
PPO's unfinished rollout (counted, never trained on).

The output folder is marked as a LeWorld ``agent-run``; an existing non-empty one is refused unless
``resume`` (continue it) or ``overwrite`` (replace an agent-run).
"""

from __future__ import annotations

import math
import re
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from world_models.errors import LeWorldError
from world_models.signals import sigterm_as_ctrl_c

HYPERPARAMS_DIR = Path(__file__).resolve().parent / "hyperparams"
ALGOS = ("ppo", "sac", "her-sac", "distill", "refit", "ppo-plan")
ENV_ID = "LeWorld-PushT-v0"
CHECKPOINT = re.compile(r"^agent_(\d+)_steps$")


@dataclass
class TrainAgentConfig:
    """What ``leworld train-agent`` runs."""

    algo: str = "ppo"
    out: Path = Path("runs/agent")
    timesteps: int | None = None  # None: the YAML's n_timesteps
    n_envs: int | None = None  # None: the YAML's
    seed: int = 0
    model: str = "pusht-tiny"
    backend: str | None = None
    eval_every: int = 10_000
    eval_episodes: int = 10
    checkpoint_every: int = 50_000
    resume: bool = False
    overwrite: bool = False  # replace an existing agent-run folder at ``out``
    progress: bool = True
    hyperparams: Path | None = None  # a YAML file instead of the shipped one
    workers: int = 1  # distill: processes labelling in parallel


# ------------------------------------------------------------------ hyperparameters
Check = tuple[str, Callable[[Any], bool]]  # what was expected, and the test


def _integer(minimum: int) -> Check:
    return f"an integer >= {minimum}", lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= minimum


def _number(low: float, high: float = math.inf, low_open: bool = False) -> Check:
    bounds = f"in {'(' if low_open else '['}{low}, {high}]" if high < math.inf else f"{'>' if low_open else '>='} {low}"

    def test(value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            return False
        return (value > low if low_open else value >= low) and value <= high

    return f"a number {bounds}", test


def _optional(check: Check) -> Check:
    return f"{check[0]}, or null", lambda v: v is None or check[1](v)


def _mapping(value: Any) -> bool:
    return isinstance(value, dict) and all(isinstance(k, str) for k in value)


def _ent_coef(value: Any) -> bool:
    if isinstance(value, str):
        return value == "auto" or (value.startswith("auto_") and _number(0, low_open=True)[1](_float(value[5:])))
    return _number(0, low_open=True)[1](value)


def _float(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _train_freq(value: Any) -> bool:
    if isinstance(value, list):
        return len(value) == 2 and _integer(1)[1](value[0]) and value[1] in ("step", "episode")
    return _integer(1)[1](value)


BOOL: Check = ("true or false", lambda v: isinstance(v, bool))
MAPPING: Check = ("a mapping", _mapping)
# Fields every algorithm reads (LeWorld's own: n_envs, n_timesteps, policy, env_kwargs).
COMMON_FIELDS: dict[str, Check] = {
    "n_envs": _integer(1),
    "n_timesteps": _integer(1),
    "policy": ("'MultiInputPolicy' (the observation is a dict)", lambda v: v == "MultiInputPolicy"),
    "env_kwargs": _optional(MAPPING),
    "policy_kwargs": _optional(MAPPING),
    "learning_rate": _number(0, low_open=True),
    "batch_size": _integer(1),
    "gamma": _number(0, 1),
    "use_sde": BOOL,
    "sde_sample_freq": _integer(-1),
    "stats_window_size": _integer(1),
}
PPO_FIELDS: dict[str, Check] = {
    "n_steps": _integer(1),
    "n_epochs": _integer(1),
    "gae_lambda": _number(0, 1),
    "clip_range": _number(0, low_open=True),
    "clip_range_vf": _optional(_number(0, low_open=True)),
    "normalize_advantage": BOOL,
    "ent_coef": _number(0),
    "vf_coef": _number(0),
    "max_grad_norm": _number(0, low_open=True),
    "target_kl": _optional(_number(0, low_open=True)),
}
SAC_FIELDS: dict[str, Check] = {
    "buffer_size": _integer(1),
    "learning_starts": _integer(0),
    "tau": _number(0, 1, low_open=True),
    "train_freq": ("an integer >= 1, or [integer >= 1, 'step' or 'episode']", _train_freq),
    "gradient_steps": ("an integer >= 1, or -1 (as many as env steps)", lambda v: _integer(-1)[1](v) and v != 0),
    "n_steps": _integer(1),
    "ent_coef": ("a number > 0, 'auto' or 'auto_<initial value>'", _ent_coef),
    "target_update_interval": _integer(1),
    "target_entropy": ("a finite number or 'auto'", lambda v: v == "auto" or _number(-math.inf)[1](v)),
    "use_sde_at_warmup": BOOL,
    "optimize_memory_usage": BOOL,
    "replay_buffer_class": ("'HerReplayBuffer', or null", lambda v: v in (None, "HerReplayBuffer")),
    "replay_buffer_kwargs": _optional(MAPPING),
}


def _teacher(value: Any) -> bool:
    known = {"horizon", "samples", "topk", "iterations", "replan_every", "init_std", "state_cost_weight"}
    return _mapping(value) and set(value) <= known and all(_number(0)[1](v) for v in value.values())


def _refinement(value: Any) -> bool:
    """A mapping :class:`agents.distill.Refinement` accepts (its fields' rules have one owner)."""
    from agents.distill import Refinement

    try:
        Refinement.from_dict(value, "refine")
    except LeWorldError:
        return False
    return True


LAYER_WIDTHS: Check = ("a list of layer widths >= 1", lambda v: isinstance(v, list) and all(map(_integer(1)[1], v)))


# The distilled planner's recipe (agents.distill.DistillConfig's fields; no SB3 algorithm here).
DISTILL_FIELDS: dict[str, Check] = {
    "bank_episodes": _integer(1),
    "bank_seed": _integer(0),
    "episodes_per_round": (
        "a list of integers, the first >= 1 (round 0: the teacher drives), the rest >= 0 (0: refit only)",
        lambda v: isinstance(v, list) and len(v) > 0 and _integer(1)[1](v[0]) and all(_integer(0)[1](x) for x in v),
    ),
    "budget_steps": _integer(1),
    "teacher": (
        "a mapping of CEM's settings (horizon, samples, topk, iterations, replan_every, init_std, "
        "state_cost_weight) to numbers",
        _teacher,
    ),
    "hidden": LAYER_WIDTHS,
    "fit_steps": _integer(1),
    "batch_size": _integer(1),
    "learning_rate": _number(0, low_open=True),
    "cost_weight": _number(0),
    "refine": (
        "a mapping of the refinement's iterations, samples (>= 2), topk (<= samples), std (> 0), plans "
        "(the episode's first plans refined; null: every plan) and noise_exponent (in [0, 10]; 0: white noise)",
        _refinement,
    ),
    "jobs_per_round": _integer(1),
}


def _plan_reward(value: Any) -> bool:
    from agents.plan_ppo import REWARDS  # the env owns its rewards

    return value in REWARDS


# PPO from the distilled planner, one plan an action (agents.plan_ppo.PlanPPOConfig's fields).
PLAN_PPO_FIELDS: dict[str, Check] = {
    "student": ("'distilled' (shipped beside the model) or a planner folder", lambda v: bool(v and isinstance(v, str))),
    "bank_episodes": _integer(1),
    "bank_seed": _integer(0),
    "n_envs": _integer(1),
    "n_timesteps": _integer(1),
    "plans": _integer(1),
    "reward": ("'final' (the cost after the episode's last plan) or 'every' (each plan's cost)", _plan_reward),
    "learning_rate": _number(0, low_open=True),
    "value_learning_rate": _number(0, low_open=True),
    "n_steps": _integer(1),
    "batch_size": _integer(1),
    "n_epochs": _integer(1),
    "gamma": _number(0, 1),
    "gae_lambda": _number(0, 1),
    "clip_range": _number(0, low_open=True),
    "ent_coef": _number(0),
    "target_kl": _optional(_number(0, low_open=True)),
    "log_std_init": _number(-20, 2),
    "value_net": LAYER_WIDTHS,
}


# The distilled planner refit by the planner's cost (agents.refit.RefitConfig's fields).
REFIT_FIELDS: dict[str, Check] = {
    "student": (
        "'distilled' (shipped beside the model), a planner folder, or 'fresh' (a new MLP)",
        lambda v: bool(v and isinstance(v, str)),
    ),
    "hidden": LAYER_WIDTHS,
    "horizon": _integer(1),
    "bank_episodes": _integer(1),
    "bank_seed": _integer(0),
    "stride": _integer(1),
    "steps": _integer(1),
    "batch_size": _integer(1),
    "learning_rate": _number(0, low_open=True),
    "refresh": _integer(1),
    "held_fraction": ("a number in (0, 1)", lambda v: _number(0, 1)[1](v) and 0 < v < 1),
}


def algorithm_fields(algo: str) -> dict[str, Check]:
    """Every field an ``algo`` YAML entry may have, with what it must be."""
    if algo == "distill":
        return DISTILL_FIELDS
    if algo == "refit":
        return REFIT_FIELDS
    if algo == "ppo-plan":
        return PLAN_PPO_FIELDS
    return {**COMMON_FIELDS, **(PPO_FIELDS if algo == "ppo" else SAC_FIELDS)}


def check_hyperparams(algo: str, entry: Any, source: Path) -> dict[str, Any]:
    """A YAML entry, checked field by field; returns it with ``policy_kwargs`` decoded (classes by name)
    and ``train_freq`` as SB3's tuple.

    Raises:
        LeWorldError: naming ``source``, the field, its value and what was expected.
    """
    from agents.policy_files import decode_policy_kwargs, json_data

    if not isinstance(entry, dict):
        raise LeWorldError(f"{source}: entry {ENV_ID!r}: expected a mapping, got {type(entry).__name__} {entry!r}")
    fields = algorithm_fields(algo)
    params = {}
    for key, value in entry.items():
        if key not in fields:
            raise LeWorldError(
                f"{source}: unknown field {key!r} for {algo} (LeWorld reads these only: {', '.join(fields)})"
            )
        expected, test = fields[key]
        if not test(value):
            hint = " (YAML reads 3e-4 as text: write 0.0003)" if isinstance(value, str) and "number" in expected else ""
            raise LeWorldError(f"{source}: field {key!r} is {value!r}; expected {expected}{hint}")
        params[key] = value
    if params.get("policy_kwargs") is not None:
        params["policy_kwargs"] = decode_policy_kwargs(params["policy_kwargs"], f"{source}: field 'policy_kwargs'")
    if params.get("env_kwargs") is not None:
        params["env_kwargs"] = json_data(params["env_kwargs"], f"{source}: field 'env_kwargs'")
    if isinstance(params.get("train_freq"), list):
        params["train_freq"] = tuple(params["train_freq"])
    return params


def load_hyperparams(algo: str, path: Path | None = None) -> dict[str, Any]:
    """The checked YAML entry for ``LeWorld-PushT-v0`` (mappings only; nothing is evaluated).

    Raises:
        LeWorldError: an unknown ``algo``, an unreadable file, or a field of the wrong kind (naming the
            file, the field, its value and what was expected).
    """
    if algo not in ALGOS:
        raise LeWorldError(f"unknown algo {algo!r}; choose one of: {', '.join(ALGOS)}")
    path = Path(path or HYPERPARAMS_DIR / f"{algo}.yml")
    try:
        document = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError, RecursionError) as err:
        reason = str(err).replace("\n", " ")
        raise LeWorldError(f"{path}: unreadable hyperparameter file ({reason})") from None
    if not isinstance(document, dict) or ENV_ID not in document:
        got = (
            f"a mapping without it (keys: {list(document)[:5]})"
            if isinstance(document, dict)
            else type(document).__name__
        )
        raise LeWorldError(f"{path}: expected a mapping with an entry {ENV_ID!r}, got {got}")
    return check_hyperparams(algo, document[ENV_ID], path)


def check_config(config: TrainAgentConfig) -> None:
    """The config's own numbers (the CLI checks them too; Python callers may not)."""
    for name in ("timesteps", "n_envs"):
        value = getattr(config, name)
        if value is not None and not _integer(1)[1](value):
            raise LeWorldError(f"{name} must be an integer >= 1 (or None: the YAML's), got {value!r}")
    for name in ("eval_every", "eval_episodes", "checkpoint_every"):
        value = getattr(config, name)
        if not _integer(1)[1](value):
            raise LeWorldError(f"{name} must be an integer >= 1, got {value!r}")
    if config.resume and config.overwrite:
        raise LeWorldError("--resume continues the run in --out and --overwrite replaces it: pass one of them")


# ------------------------------------------------------------------ checkpoints
def latest_checkpoint(folder: Path) -> Path | None:
    """The complete checkpoint with the most steps in ``folder`` (an ``agent_<steps>_steps`` agent folder)."""
    from agents.policy_files import AGENT_JSON

    if not Path(folder).is_dir():
        return None
    found = [
        (int(m.group(1)), p)
        for p in Path(folder).iterdir()
        if (m := CHECKPOINT.match(p.name)) and (p / AGENT_JSON).is_file()
    ]
    return max(found)[1] if found else None


def save_checkpoint(agent: Any, folder: Path, info: dict[str, Any]) -> Path:
    """``folder/agent_<steps>_steps``: the agent with its training state (resumable)."""
    from agents.policy_files import save_agent

    return save_agent(agent, Path(folder) / f"agent_{agent.num_timesteps}_steps", info, training=True)


def _resume_point(config: TrainAgentConfig, out: Path) -> Path | None:
    """The checkpoint ``resume`` continues from (None without ``resume``), checked before any long work."""
    from agents.policy_files import read_agent_config

    if not config.resume:
        return None
    folder = out / "checkpoints"
    checkpoint = latest_checkpoint(folder)
    if checkpoint is None:
        old = sorted(folder.glob("agent_*_steps.zip")) if folder.is_dir() else []
        hint = (
            f"; it has only SB3 .zip checkpoints of an older LeWorld ({old[-1].name}), which are not loaded "
            "(loading one unpickles it, and a crafted file runs code)"
            if old
            else ""
        )
        raise LeWorldError(f"{folder}: no checkpoint to resume from{hint}; run without --resume")
    algorithm = "PPO" if config.algo == "ppo" else "SAC"
    found = read_agent_config(checkpoint)["algorithm"]
    if found != algorithm:
        raise LeWorldError(f"{checkpoint}: a {found} checkpoint; --algo {config.algo} trains {algorithm}")
    return checkpoint


def _best_reward(folder: Path) -> float | None:
    """The mean reward the best agent in ``folder`` was saved with, if it is there."""
    from agents.policy_files import agent_folder, read_agent_config

    if agent_folder(folder) is None:
        return None
    try:
        value = read_agent_config(folder)["info"].get("mean_reward")
    except (LeWorldError, AttributeError):
        return None
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


# ------------------------------------------------------------------ callbacks
def episode_video_callback(config: TrainAgentConfig, env_kwargs: dict[str, Any]) -> Any:
    """A callback for after each evaluation: one real-twin episode of the current policy, rendered and
    logged to the run's TensorBoard as ``eval/real_episode`` (an animated GIF summary; no moviepy)."""
    import gymnasium as gym
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.logger import TensorBoardOutputFormat

    import leworld_env
    from world_models.video import add_video

    class EpisodeVideo(BaseCallback):
        def _on_step(self) -> bool:
            writers = [f.writer for f in self.logger.output_formats if isinstance(f, TensorBoardOutputFormat)]
            if not writers:
                return True
            env = gym.make(
                leworld_env.REAL_ID,
                model=config.model,
                backend=config.backend,
                render_mode="rgb_array",
                render_size=128,
                **real_kwargs(env_kwargs),
            )
            try:
                obs, _ = env.reset(seed=config.seed + 20_000)
                frames, done = [env.render()], False
                while not done:
                    action, _ = self.model.predict(obs, deterministic=True)
                    obs, _, terminated, truncated, _ = env.step(action)
                    frames.append(env.render())
                    done = terminated or truncated
            finally:
                env.close()
            add_video(writers[0], "eval/real_episode", frames, self.num_timesteps, fps=10)
            return True

    return EpisodeVideo()


DREAM_ONLY = ("ensemble", "disagreement_penalty", "disagreement_limit")


def real_kwargs(env_kwargs: dict[str, Any]) -> dict[str, Any]:
    """The env arguments the real twin takes: the dream's without its ensemble (the real twin has physics)."""
    return {k: v for k, v in env_kwargs.items() if k not in DREAM_ONLY}


def disagreement_callback() -> Any:
    """A callback that logs the dream's mean ensemble disagreement per step as ``dream/disagreement``
    (beside SB3's ``rollout/ep_rew_mean`` and the EvalCallback's ``eval/success_rate``)."""
    from stable_baselines3.common.callbacks import BaseCallback

    class Disagreement(BaseCallback):
        def _on_step(self) -> bool:
            values = [info["disagreement"] for info in self.locals.get("infos", ()) if "disagreement" in info]
            if values:
                self.logger.record_mean("dream/disagreement", float(np.mean(values)))
            return True

    return Disagreement()


def checkpoint_callback(folder: Path, every: int, info: dict[str, Any]) -> Any:
    """A callback that writes :func:`save_checkpoint` every ``every`` calls (calls = steps / envs)."""
    from stable_baselines3.common.callbacks import BaseCallback

    class Checkpoints(BaseCallback):
        def _on_step(self) -> bool:
            if self.n_calls % every == 0:
                save_checkpoint(self.model, folder, info)
            return True

    return Checkpoints()


def best_agent_callback(folder: Path, info: dict[str, Any]) -> Any:
    """A callback for EvalCallback's new best: the agent to ``folder``, with its mean reward in ``info``."""
    from stable_baselines3.common.callbacks import BaseCallback

    from agents.policy_files import save_agent

    class BestAgent(BaseCallback):
        def _on_step(self) -> bool:
            save_agent(self.model, folder, {**info, "mean_reward": float(self.parent.best_mean_reward)})
            return True

    return BestAgent()


# ------------------------------------------------------------------ the run
@dataclass
class _Plan:
    """What the checked hyperparameters and config resolve to."""

    params: dict[str, Any]
    n_envs: int
    timesteps: int
    policy: str
    env_kwargs: dict[str, Any]
    source: Path


def _plan(config: TrainAgentConfig) -> _Plan:
    params = load_hyperparams(config.algo, config.hyperparams)
    n_envs = config.n_envs or params.get("n_envs", 16)  # the CLI's value, else the YAML's
    timesteps = config.timesteps or params.get("n_timesteps", 100_000)
    for key in ("n_envs", "n_timesteps"):  # not algorithm arguments
        params.pop(key, None)
    return _Plan(
        params=params,
        n_envs=n_envs,
        timesteps=timesteps,
        policy=params.pop("policy", "MultiInputPolicy"),
        env_kwargs=dict(params.pop("env_kwargs", None) or {}),
        source=Path(config.hyperparams or HYPERPARAMS_DIR / f"{config.algo}.yml"),
    )


def check_output(config: TrainAgentConfig) -> Path | None:
    """The output folder may be written (new, empty, ``resume``, or an agent-run with ``overwrite``);
    returns the checkpoint to resume from. Runs before any long work."""
    from world_models.outputs import check_output_folder, replace_folder

    out = Path(config.out)
    try:
        check_output_folder(out, "--out", "agent-run", overwrite=config.overwrite, reuse=config.resume)
    except LeWorldError as err:
        if config.overwrite or "not empty" not in str(err):
            raise
        raise LeWorldError(f"{err}; or --resume to continue the run there") from None
    checkpoint = _resume_point(config, out)
    if config.overwrite:
        replace_folder(out, "agent-run")
    return checkpoint


def train_agent(config: TrainAgentConfig) -> Path:
    """Train as configured; returns the final agent folder ``OUT/model``.

    Ctrl-C or SIGTERM writes a checkpoint of the steps so far (``--resume`` continues from it), then
    re-raises KeyboardInterrupt.

    Raises:
        LeWorldError: a bad config or hyperparameter file, an output folder that may not be written, or
            no checkpoint to resume from; all before any long work.
    """
    from world_models.outputs import removed_if_failed, write_marker

    check_config(config)
    if config.algo == "distill":
        return _distill(config)
    if config.algo == "ppo-plan":
        return _plan_ppo(config)
    if config.algo == "refit":
        return _refit(config)
    plan = _plan(config)
    checkpoint = check_output(config)
    out = Path(config.out)
    with removed_if_failed(out), sigterm_as_ctrl_c():
        write_marker(out, "agent-run")
        return _run(config, plan, checkpoint, out)


def _distill(config: TrainAgentConfig) -> Path:
    """``--algo distill``: CEM distilled into a planner network (:func:`agents.distill.distill`)."""
    from agents.distill import DistillConfig, distill

    if config.timesteps is not None or config.n_envs is not None:
        raise LeWorldError(
            "--timesteps and --envs are PPO/SAC's; a distillation's size is the YAML's episodes_per_round"
        )
    params = load_hyperparams("distill", config.hyperparams)
    recipe = DistillConfig(**_recipe_settings(config), workers=config.workers, **params)
    return _recipe_run(config, "distill-run", lambda: distill(recipe), reuse=config.resume)


def _refit(config: TrainAgentConfig) -> Path:
    """``--algo refit``: the distilled planner refit by the planner's cost through the model (:mod:`agents.refit`)."""
    from agents.refit import RefitConfig, refit

    if config.timesteps is not None or config.n_envs is not None:
        raise LeWorldError("--timesteps and --envs are PPO/SAC's; a refit's size is the YAML's steps")
    params = load_hyperparams("refit", config.hyperparams)
    recipe = RefitConfig(**_recipe_settings(config, evaluations=True), **params)
    # --resume reuses OUT's training bank (its collection is half the run) and fits again from the source
    return _recipe_run(config, "refit-run", lambda: refit(recipe), reuse=config.resume)


def _plan_ppo(config: TrainAgentConfig) -> Path:
    """``--algo ppo-plan``: PPO from the distilled planner, a plan an action (:mod:`agents.plan_ppo`)."""
    from agents.plan_ppo import PlanPPOConfig, train_plan_ppo

    if config.resume:
        raise LeWorldError(
            "--algo ppo-plan keeps no checkpoints (a run takes minutes): start it again with --overwrite"
        )
    params = load_hyperparams("ppo-plan", config.hyperparams)
    for name, value in (("n_timesteps", config.timesteps), ("n_envs", config.n_envs)):
        if value is not None:
            params[name] = value
    recipe = PlanPPOConfig(**_recipe_settings(config, evaluations=True), **params)
    return _recipe_run(config, "ppo-plan-run", lambda: train_plan_ppo(recipe))


def _recipe_settings(config: TrainAgentConfig, evaluations: bool = False) -> dict[str, Any]:
    """What every non-SB3 recipe config takes from the command line (and, with ``evaluations``, its
    real-twin evaluation schedule)."""
    settings = {
        "out": Path(config.out),
        "model": config.model,
        "backend": config.backend,
        "seed": config.seed,
        "progress": config.progress,
    }
    if evaluations:
        settings |= {"eval_every": config.eval_every, "eval_episodes": config.eval_episodes}
    return settings


def _recipe_run(config: TrainAgentConfig, kind: str, run: Callable[[], Path], reuse: bool = False) -> Path:
    """Run a recipe that is not an SB3 agent-run in ``--out``, marked as a ``kind`` folder: the folder checked
    (new, empty, ``reuse``, or replaced with ``--overwrite``), SIGTERM as Ctrl-C, nothing empty left on failure."""
    from world_models.outputs import check_output_folder, removed_if_failed, replace_folder, write_marker

    out = Path(config.out)
    check_output_folder(out, "--out", kind, overwrite=config.overwrite, reuse=reuse)
    if config.overwrite:
        replace_folder(out, kind)
    with removed_if_failed(out), sigterm_as_ctrl_c():
        write_marker(out, kind)
        return run()


def _run(config: TrainAgentConfig, plan: _Plan, checkpoint: Path | None, out: Path) -> Path:
    import gymnasium as gym
    import torch
    from stable_baselines3.common.callbacks import CallbackList, EvalCallback
    from stable_baselines3.common.monitor import Monitor
    from stable_baselines3.common.vec_env import DummyVecEnv, VecMonitor

    import leworld_env
    from agents.policy_files import save_agent
    from leworld_env.envs.sb3 import LeWorldSB3VecEnv

    torch.manual_seed(config.seed)
    try:
        dream = LeWorldSB3VecEnv(num_envs=plan.n_envs, model=config.model, backend=config.backend, **plan.env_kwargs)
        real = gym.make(leworld_env.REAL_ID, model=config.model, backend=config.backend, **real_kwargs(plan.env_kwargs))
    except (TypeError, ValueError) as err:
        raise LeWorldError(f"{plan.source}: field 'env_kwargs': {err}") from None
    dream.seed(config.seed)
    train_env = VecMonitor(dream)
    eval_env = DummyVecEnv([lambda: Monitor(real)])
    eval_env.seed(config.seed + 10_000)
    info = {
        "env_id": ENV_ID,
        "algo": config.algo,
        "model": str(config.model),
        "backend": config.backend,
        "env_kwargs": plan.env_kwargs,
        "seed": config.seed,
    }
    evaluation = EvalCallback(
        eval_env,
        callback_on_new_best=best_agent_callback(out / "best", info),
        callback_after_eval=episode_video_callback(config, plan.env_kwargs),
        eval_freq=max(1, config.eval_every // plan.n_envs),
        n_eval_episodes=config.eval_episodes,
        log_path=str(out / "eval"),
        deterministic=True,
        verbose=0,
    )
    agent, remaining = _build_agent(config, plan, train_env, checkpoint, out)
    if checkpoint is not None and (best := _best_reward(out / "best")) is not None:
        evaluation.best_mean_reward = best  # a resumed run keeps the best agent unless it beats it
    callbacks = CallbackList(
        [
            evaluation,
            checkpoint_callback(out / "checkpoints", max(1, config.checkpoint_every // plan.n_envs), info),
            disagreement_callback(),
        ]
    )
    try:
        with warnings.catch_warnings():
            # EvalCallback warns that the eval env's type differs from the training env's: by design,
            # the agent trains in the dream and is judged on real physics.
            warnings.filterwarnings("ignore", message="Training and eval env are not of the same type")
            agent.learn(
                total_timesteps=remaining,
                callback=callbacks,
                reset_num_timesteps=checkpoint is None,
                tb_log_name=config.algo,
                progress_bar=config.progress,
            )
    except KeyboardInterrupt:
        saved = save_checkpoint(agent, out / "checkpoints", info)
        print(
            f"\ninterrupted at {agent.num_timesteps} steps; checkpoint {saved}, continue with --resume", file=sys.stderr
        )
        raise
    save_checkpoint(agent, out / "checkpoints", info)  # --resume with more --timesteps continues from here
    final = save_agent(agent, out / "model", info)
    train_env.close()
    eval_env.close()
    return final


def _build_agent(
    config: TrainAgentConfig, plan: _Plan, train_env: Any, checkpoint: Path | None, out: Path
) -> tuple[Any, int]:
    """The algorithm from the hyperparameters, restored from ``checkpoint`` when resuming; and the steps to go."""
    from stable_baselines3 import PPO, SAC, HerReplayBuffer

    from agents.policy_files import restore_training

    params = dict(plan.params)
    if params.get("replay_buffer_class") == "HerReplayBuffer":
        params["replay_buffer_class"] = HerReplayBuffer
    algorithm = PPO if config.algo == "ppo" else SAC
    try:
        agent = algorithm(
            plan.policy, train_env, seed=config.seed, device="cpu", tensorboard_log=str(out / "tb"), verbose=0, **params
        )
    except (TypeError, ValueError, KeyError, AssertionError) as err:
        raise LeWorldError(f"{plan.source}: {algorithm.__name__} cannot be built from it ({err})") from None
    if checkpoint is None:
        return agent, plan.timesteps
    restore_training(agent, checkpoint)
    remaining = max(0, plan.timesteps - agent.num_timesteps)
    if algorithm is SAC:
        # The replay buffer is not checkpointed: collect afresh before training again
        # (and let HER see whole episodes before it samples).
        agent.learning_starts = agent.num_timesteps + int(plan.params.get("learning_starts", 100))
    print(f"resuming from {checkpoint.name} at {agent.num_timesteps} steps; {remaining} to go")
    return agent, remaining
