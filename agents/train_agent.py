"""Train a stable-baselines3 agent in imagination, judged on real physics (``leworld train-agent``).

The whole recipe, top to bottom:

1. hyperparameters from ``agents/hyperparams/<algo>.yml`` (rl-zoo style), overridable;
2. the batched dream, ``LeWorldSB3VecEnv`` (one predict per step for all envs), under
   ``VecMonitor`` for episode statistics;
3. an ``EvalCallback`` on the real twin (gym-pusht physics, the same spaces) every
   ``eval_every`` steps: it logs ``eval/mean_reward`` and ``eval/success_rate`` to
   TensorBoard, then one real episode as the video ``eval/real_episode``, and keeps the
   best model; a ``CheckpointCallback`` saves every ``checkpoint_every`` steps;
4. ``model.learn``; the final model goes to ``OUT/model.zip``. ``resume=True`` continues
   from the newest checkpoint in ``OUT/checkpoints``. SAC's replay buffer is not kept: after
   a resume SAC collects ``learning_starts`` fresh steps before it trains again.

SB3's ``.zip`` is SB3's own format (hyperparameters serialized by cloudpickle, weights by
``torch.save``): load only files you trust, as SB3 says.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from world_models.errors import LeWorldError

HYPERPARAMS_DIR = Path(__file__).resolve().parent / "hyperparams"
ALGOS = ("ppo", "sac", "her-sac")
ENV_ID = "LeWorld-PushT-v0"


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
    progress: bool = True
    hyperparams: Path | None = None  # a YAML file instead of the shipped one


def load_hyperparams(algo: str, path: Path | None = None) -> dict[str, Any]:
    """The YAML entry for ``LeWorld-PushT-v0`` (mappings only; nothing is evaluated)."""
    if algo not in ALGOS:
        raise LeWorldError(f"unknown algo {algo!r}; choose one of: {', '.join(ALGOS)}")
    path = path or HYPERPARAMS_DIR / f"{algo}.yml"
    try:
        document = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as err:
        raise LeWorldError(f"{path}: unreadable hyperparameter file ({err})") from None
    if not isinstance(document, dict) or not isinstance(document.get(ENV_ID), dict):
        raise LeWorldError(f"{path}: expected a mapping with an entry {ENV_ID!r}")
    return dict(document[ENV_ID])


def latest_checkpoint(folder: Path) -> Path | None:
    """The checkpoint with the most steps in ``folder`` (``agent_<steps>_steps.zip``)."""
    found = [
        (int(m.group(1)), p) for p in folder.glob("agent_*_steps.zip") if (m := re.search(r"_(\d+)_steps", p.name))
    ]
    return max(found)[1] if found else None


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
                **env_kwargs,
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


def train_agent(config: TrainAgentConfig) -> Path:
    """Train as configured; returns the path of the final ``model.zip``."""
    import gymnasium as gym
    import torch
    from stable_baselines3 import PPO, SAC, HerReplayBuffer
    from stable_baselines3.common.callbacks import CallbackList, CheckpointCallback, EvalCallback
    from stable_baselines3.common.monitor import Monitor
    from stable_baselines3.common.vec_env import DummyVecEnv, VecMonitor

    import leworld_env
    from leworld_env.envs.sb3 import LeWorldSB3VecEnv

    params = load_hyperparams(config.algo, config.hyperparams)
    n_envs = int(config.n_envs or params.pop("n_envs", 16))  # the CLI's value, else the YAML's
    timesteps = int(config.timesteps or params.pop("n_timesteps", 100_000))
    for key in ("n_envs", "n_timesteps"):  # not algorithm arguments
        params.pop(key, None)
    policy = params.pop("policy", "MultiInputPolicy")
    env_kwargs = dict(params.pop("env_kwargs", {}) or {})
    if params.get("replay_buffer_class") == "HerReplayBuffer":
        params["replay_buffer_class"] = HerReplayBuffer
    algorithm = PPO if config.algo == "ppo" else SAC

    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    try:
        dream = LeWorldSB3VecEnv(num_envs=n_envs, model=config.model, backend=config.backend, **env_kwargs)
        real = gym.make(leworld_env.REAL_ID, model=config.model, backend=config.backend, **env_kwargs)
    except ValueError as err:
        raise LeWorldError(str(err)) from None
    dream.seed(config.seed)
    train_env = VecMonitor(dream)
    eval_env = DummyVecEnv([lambda: Monitor(real)])
    eval_env.seed(config.seed + 10_000)

    callbacks = CallbackList(
        [
            EvalCallback(
                eval_env,
                callback_after_eval=episode_video_callback(config, env_kwargs),
                eval_freq=max(1, config.eval_every // n_envs),
                n_eval_episodes=config.eval_episodes,
                best_model_save_path=str(out / "best"),
                log_path=str(out / "eval"),
                deterministic=True,
                verbose=0,
            ),
            CheckpointCallback(
                save_freq=max(1, config.checkpoint_every // n_envs),
                save_path=str(out / "checkpoints"),
                name_prefix="agent",
            ),
        ]
    )
    checkpoint = latest_checkpoint(out / "checkpoints") if config.resume else None
    if config.resume and checkpoint is None:
        raise LeWorldError(f"{out / 'checkpoints'}: no checkpoint to resume from; run without --resume")
    try:
        if checkpoint is not None:
            agent = algorithm.load(checkpoint, env=train_env, device="cpu", tensorboard_log=str(out / "tb"))
            remaining = max(0, timesteps - agent.num_timesteps)
            if algorithm is SAC:
                # The replay buffer is not checkpointed: collect afresh before training again
                # (and let HER see whole episodes before it samples).
                agent.learning_starts = agent.num_timesteps + int(params.get("learning_starts", 100))
            print(f"resuming from {checkpoint.name} at {agent.num_timesteps} steps; {remaining} to go")
        else:
            agent = algorithm(
                policy, train_env, seed=config.seed, device="cpu", tensorboard_log=str(out / "tb"), verbose=0, **params
            )
            remaining = timesteps
    except (TypeError, ValueError, KeyError) as err:
        source = checkpoint or config.hyperparams or HYPERPARAMS_DIR / f"{config.algo}.yml"
        raise LeWorldError(f"{source}: {algorithm.__name__} cannot be built from it ({err})") from None
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
    final = out / "model.zip"
    agent.save(out / "model.partial.zip")
    (out / "model.partial.zip").replace(final)  # atomic: a crash never leaves half a model.zip
    train_env.close()
    eval_env.close()
    return final
