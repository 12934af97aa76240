"""PPO in the dream, started from the distilled planner: a plan per action, the planner's cost as reward.

The LeWM protocol plans a whole sequence of ``horizon`` actions and runs it open loop; the distilled
student (:mod:`agents.distill`) is an MLP from what the planner reads to such a plan. This module
makes that MLP the actor of a stable-baselines3 PPO and trains it further in the dream, top to bottom:

1. **The env** (:class:`PlanDreamVecEnv`, an SB3 ``VecEnv``): one action is a whole plan,
   ``horizon x action_dim`` standardised numbers in the planner's action box; the dream rolls it out
   open loop with the world model (the planner's own imagination, batched over envs). Observation:
   :func:`agents.distill.plan_features` of the latent history, the actions in it and the goal latent
   (exactly the student's input). Reward: minus the planner's cost, the mean squared latent distance
   to the goal, after the episode's last plan (``reward="final"``, 0 before) or after every plan
   (``"every"``, CEM's objective plan by plan). Start: a (start,
   goal) pair of a *training* bank of real states (not the evaluation bank), the start's latent
   repeated and zero actions, as a real episode starts. End: after ``plans`` plans (LeWM's 10 steps:
   2 plans of 5), truncated, then reset automatically (SB3's convention: ``terminal_observation``).
2. **The agent**: SB3 ``PPO("MlpPolicy")`` whose policy network has the student's layers (GELU,
   tanh form, as the student) and is initialised with its weights (:func:`load_student_into`), so
   PPO starts from the student's plans, with a Gaussian of ``log_std_init`` around them; the value
   network is fresh. ``gamma = gae_lambda = 1`` by default, so the advantage is the episode's return
   to go minus the value: an untrained value only adds variance, never bias.
3. **The product**: the actor's mean written back as a distilled planner folder
   (:func:`student_from_policy`: ``policy.json`` + safetensors), so ``leworld eval --agent PATH``,
   ``leworld play`` and the refinement (``refine``) read it as they read the student.

``leworld train-agent --algo ppo-plan`` runs it from ``agents/hyperparams/ppo-plan.yml``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from gymnasium import spaces
from stable_baselines3.common.vec_env import VecEnv

from agents.distill import DistilledPlanner, feature_width, plan_features, run_plan
from world_models.errors import ArgumentError, LeWorldError
from world_models.interface import WorldModel

REWARDS = ("final", "every")  # minus the cost after the episode's last plan only / after every plan


# ------------------------------------------------------------------ the env
class PlanDreamVecEnv(VecEnv):
    """``num_envs`` dream episodes in which one action is a whole plan (see the module docstring).

    Args:
        world_model: the model that dreams (and whose latents the goals are).
        starts: (N, 5) real start states (agent x, y, block x, y, angle); goals: (N, 5) their goals.
        student: the planner whose schedule, action statistics and box the env uses (its horizon).
        num_envs: episodes run side by side.
        plans: plans per episode (LeWM's 10-step budget at a 5-step plan: 2).
        reward: ``"final"``: minus the cost after the episode's last plan, 0 before (what the LeWM test
            judges: where the episode ends); ``"every"``: minus each plan's cost (CEM's objective, plan by plan).
        seed: seeds the draw of (start, goal) pairs (``seed()`` reseeds it).
    """

    def __init__(
        self,
        world_model: WorldModel,
        starts: np.ndarray,
        goals: np.ndarray,
        student: DistilledPlanner,
        num_envs: int = 64,
        plans: int = 2,
        reward: str = "final",
        seed: int | None = 0,
    ) -> None:
        from leworld_env.envs.task import draw_frames

        starts, goals = np.asarray(starts, np.float64), np.asarray(goals, np.float64)
        if starts.ndim != 2 or starts.shape[1] != 5 or goals.shape != starts.shape or not len(starts):
            raise ArgumentError(f"starts and goals must be (N, 5) state arrays, got {starts.shape} and {goals.shape}")
        if reward not in REWARDS:
            raise ArgumentError(f"reward must be one of {', '.join(REWARDS)}, got {reward!r}")
        self.reward = reward
        if plans < 1 or num_envs < 1:
            raise ArgumentError(f"plans and num_envs must be >= 1, got {plans} and {num_envs}")
        self.world_model, self.student, self.plans_per_episode = world_model, student, plans
        config = world_model.config
        self.history, self.action_dim, self.horizon = config.history, config.action_dim, student.horizon
        frames = draw_frames(np.concatenate([starts, goals]), config.image_size)
        latents = np.concatenate([world_model.encode(frames[i : i + 256]) for i in range(0, len(frames), 256)])
        self.start_latents, self.goal_latents = latents[: len(starts)], latents[len(starts) :]
        width = feature_width(self.history, config.latent_dim, self.action_dim)
        observation_space = spaces.Box(-np.inf, np.inf, (width,), np.float32)
        low = np.tile(student._low, self.horizon).astype(np.float32)
        high = np.tile(student._high, self.horizon).astype(np.float32)
        self.render_mode = None  # nothing to draw: the dream of plans has no frames
        super().__init__(num_envs, observation_space, spaces.Box(low, high, dtype=np.float32))
        self.rng = np.random.default_rng(seed)
        self.z = np.zeros((num_envs, self.history, config.latent_dim), np.float32)
        self.a = np.zeros((num_envs, self.history, self.action_dim), np.float32)
        self.goal = np.zeros((num_envs, config.latent_dim), np.float32)
        self.plan_count = np.zeros(num_envs, np.int64)
        self.episode_return = np.zeros(num_envs)
        self._actions: np.ndarray | None = None

    # -- SB3's VecEnv
    def seed(self, seed: int | None = None) -> Sequence[None]:
        self.rng = np.random.default_rng(seed)
        return [None] * self.num_envs

    def reset(self) -> np.ndarray:
        self._start(np.arange(self.num_envs))
        return self._observations()

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = np.asarray(actions, np.float32).reshape(self.num_envs, self.horizon, self.action_dim)

    def step_wait(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[dict[str, Any]]]:
        if self._actions is None:
            raise ArgumentError("step_wait called without step_async")
        actions = self.student.to_env(self.student._clip(self._actions))
        self._actions = None
        latents, self.z, self.a = run_plan(self.world_model, self.z, self.a, actions)
        cost = np.mean((latents[:, -1] - self.goal) ** 2, axis=1)  # the planner's cost of the plan
        self.plan_count += 1
        done = self.plan_count >= self.plans_per_episode
        reward = -cost if self.reward == "every" else np.where(done, -cost, 0.0)
        self.episode_return += reward
        observations = self._observations()
        infos: list[dict[str, Any]] = [{} for _ in range(self.num_envs)]
        ended = np.flatnonzero(done)
        for i in ended:
            infos[i] = {
                "terminal_observation": observations[i].copy(),
                "TimeLimit.truncated": True,
                "episode": {"r": float(self.episode_return[i]), "l": int(self.plan_count[i]), "t": 0.0},
                "final_cost": float(cost[i]),
            }
        if len(ended):
            self._start(ended)
            observations[ended] = self._observations()[ended]
        return observations, reward.astype(np.float32), done, infos

    def close(self) -> None:
        pass

    def get_attr(self, attr_name: str, indices: Any = None) -> list[Any]:
        return [getattr(self, attr_name)] * len(self._indices(indices))

    def set_attr(self, attr_name: str, value: Any, indices: Any = None) -> None:
        setattr(self, attr_name, value)

    def env_method(self, method_name: str, *args: Any, indices: Any = None, **kwargs: Any) -> list[Any]:
        raise LeWorldError(f"PlanDreamVecEnv has no per-env method {method_name!r}")

    def env_is_wrapped(self, wrapper_class: Any, indices: Any = None) -> list[bool]:
        return [False] * len(self._indices(indices))

    def _indices(self, indices: Any) -> list[int]:
        if indices is None:
            return list(range(self.num_envs))
        return [indices] if isinstance(indices, int) else list(indices)

    # -- episodes
    def _start(self, envs: np.ndarray) -> None:
        pick = self.rng.integers(len(self.start_latents), size=len(envs))
        self.z[envs] = self.start_latents[pick][:, None]
        self.a[envs] = 0.0
        self.goal[envs] = self.goal_latents[pick]
        self.plan_count[envs] = 0
        self.episode_return[envs] = 0.0

    def _observations(self) -> np.ndarray:
        return plan_features(self.z, self.a, self.goal).astype(np.float32)

    def dream_cost(self, student: DistilledPlanner, count: int = 512) -> float:
        """The mean final cost (latent MSE to the goal after the episode's last plan) of ``student``'s own
        plans from the bank's first ``count`` pairs: a fixed, noise-free dream score of a policy."""
        count = min(count, len(self.start_latents))
        z = np.repeat(self.start_latents[:count, None], self.history, axis=1)
        a = np.zeros((count, self.history, self.action_dim), np.float32)
        goal = self.goal_latents[:count]
        for _ in range(self.plans_per_episode):
            _, z, a = run_plan(self.world_model, z, a, student.to_env(student.plans(plan_features(z, a, goal))))
        return float(np.mean((z[:, -1] - goal) ** 2))


# ------------------------------------------------------------------ student <-> PPO policy
def tanh_gelu() -> Any:
    """The student's activation as a torch module class (GELU, tanh form) for SB3's ``activation_fn``."""
    import torch

    class TanhGELU(torch.nn.GELU):
        def __init__(self) -> None:
            super().__init__(approximate="tanh")

    return TanhGELU


def student_hidden(student: DistilledPlanner) -> list[int]:
    """The student's hidden layer widths."""
    return [int(w.shape[0]) for w, _ in student.layers[:-1]]


def _policy_linears(policy: Any) -> list[Any]:
    import torch

    layers = [m for m in policy.mlp_extractor.policy_net if isinstance(m, torch.nn.Linear)]
    return [*layers, policy.action_net]


def load_student_into(policy: Any, student: DistilledPlanner) -> None:
    """Copy the student's layers into an SB3 actor-critic's policy network and action head.

    Raises:
        LeWorldError: when the policy's actor is not the student's shape.
    """
    import torch

    linears = _policy_linears(policy)
    shapes = [tuple(layer.weight.shape) for layer in linears]
    wanted = [tuple(w.shape) for w, _ in student.layers]
    if shapes != wanted:
        raise LeWorldError(f"the PPO actor's layers {shapes} do not match the student's {wanted}")
    with torch.no_grad():
        for layer, (weight, bias) in zip(linears, student.layers, strict=True):
            layer.weight.copy_(torch.from_numpy(weight))
            layer.bias.copy_(torch.from_numpy(bias))


def student_from_policy(policy: Any, template: DistilledPlanner, info: dict[str, Any]) -> DistilledPlanner:
    """The actor's mean plan as a distilled planner with ``template``'s schedule, statistics and refinement."""
    weights = {}
    for i, layer in enumerate(_policy_linears(policy)):
        weights[f"layer{i}.weight"] = layer.weight.detach().cpu().numpy().copy()
        weights[f"layer{i}.bias"] = layer.bias.detach().cpu().numpy().copy()
    return DistilledPlanner(
        template.world_model,
        weights,
        template.horizon,
        template.replan_every,
        template.action_mean,
        template.action_std,
        info,
        refinement=template.refinement,
    )


def separate_value_rate(policy: Any, scale: float) -> None:
    """Give the value network its own learning rate, ``scale`` x the actor's (one Adam, two groups)."""
    value = [*policy.mlp_extractor.value_net.parameters(), *policy.value_net.parameters()]
    ids = {id(p) for p in value}
    actor = [p for p in policy.parameters() if id(p) not in ids]
    lr = policy.optimizer.param_groups[0]["lr"]
    policy.optimizer = type(policy.optimizer)(
        [{"params": actor, "scale": 1.0}, {"params": value, "scale": scale}], lr=lr, **policy.optimizer_kwargs
    )


def plan_ppo_class() -> Any:
    """SB3's PPO whose learning-rate schedule keeps each optimizer group's ``scale``."""
    from stable_baselines3 import PPO

    class PlanPPO(PPO):
        def _update_learning_rate(self, optimizers: Any) -> None:
            super()._update_learning_rate(optimizers)
            for optimizer in optimizers if isinstance(optimizers, list) else [optimizers]:
                for group in optimizer.param_groups:
                    group["lr"] *= group.get("scale", 1.0)

    return PlanPPO


# ------------------------------------------------------------------ the recipe
@dataclass
class PlanPPOConfig:
    """What ``leworld train-agent --algo ppo-plan`` runs (``agents/hyperparams/ppo-plan.yml``)."""

    out: Path = Path("runs/ppo-plan")
    model: str = "pusht-tiny"
    backend: str | None = None
    seed: int = 0
    student: str = "distilled"  # the planner PPO starts from: "distilled" (shipped) or a folder
    bank_episodes: int = 150  # the training bank (as the distillation's: seed 7000, noisy-expert)
    bank_seed: int = 7000
    n_envs: int = 64
    n_timesteps: int = 150_000  # plans
    plans: int = 2
    reward: str = "final"
    learning_rate: float = 3e-5  # the actor's (it starts from the student: small steps)
    value_learning_rate: float = 1e-3  # the fresh value network's
    n_steps: int = 32
    batch_size: int = 512
    n_epochs: int = 5
    gamma: float = 1.0
    gae_lambda: float = 1.0
    clip_range: float = 0.1
    ent_coef: float = 0.0
    target_kl: float | None = 0.02
    log_std_init: float = -4.0  # std 0.018 in standardised units (0.2, the refinement's, ruins the plans)
    value_net: list[int] = field(default_factory=lambda: [256, 256])
    eval_every: int = 20_000  # plans between real-twin evaluations of the actor's mean (TensorBoard)
    eval_episodes: int = 20
    progress: bool = True


def train_plan_ppo(config: PlanPPOConfig) -> Path:
    """PPO from the student in the plan-level dream; writes ``OUT/model`` (a distilled planner folder)."""
    import torch
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.vec_env import VecMonitor

    import world_models
    from agents.distill import load_distilled, save_distilled, shipped_distilled, training_bank

    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    wm = world_models.load(config.model, backend=config.backend)
    source = shipped_distilled(config.model) if config.student == "distilled" else Path(config.student)
    student = load_distilled(source, wm)
    bank = training_bank(out, config.bank_episodes, config.bank_seed)
    env = VecMonitor(
        PlanDreamVecEnv(
            wm, bank.start, bank.goal, student, config.n_envs, config.plans, config.reward, seed=config.seed
        )
    )
    torch.manual_seed(config.seed)
    agent = plan_ppo_class()(
        "MlpPolicy",
        env,
        learning_rate=config.learning_rate,
        n_steps=config.n_steps,
        batch_size=config.batch_size,
        n_epochs=config.n_epochs,
        gamma=config.gamma,
        gae_lambda=config.gae_lambda,
        clip_range=config.clip_range,
        ent_coef=config.ent_coef,
        target_kl=config.target_kl,
        policy_kwargs={
            "net_arch": {"pi": student_hidden(student), "vf": list(config.value_net)},
            "activation_fn": tanh_gelu(),
            "log_std_init": config.log_std_init,
            "ortho_init": False,
        },
        seed=config.seed,
        device="cpu",
        tensorboard_log=str(out / "tb"),
        verbose=0,
    )
    load_student_into(agent.policy, student)
    separate_value_rate(agent.policy, config.value_learning_rate / config.learning_rate)
    info = {"algo": "ppo-plan", "student": str(source), "seed": config.seed, "model": str(config.model)}

    class RealTwinEvaluation(BaseCallback):
        """Every ``eval_every`` plans: the actor's mean plan (no refinement) on real episodes, to TensorBoard."""

        def __init__(self) -> None:
            super().__init__()
            self.next = 0

        def _on_step(self) -> bool:
            if self.num_timesteps >= self.next:
                self.next += config.eval_every
                self._evaluate()
            return True

        def _evaluate(self) -> None:
            from agents.evaluate import evaluate

            current = student_from_policy(self.model.policy, student, info)
            current.refinement = None
            self.logger.record("eval/dream_final_cost", env.venv.dream_cost(current))
            result = evaluate(
                current, "ppo-plan", seed=config.seed + 10_000, episodes=config.eval_episodes, progress=False
            )
            self.logger.record("eval/real_success_rate", result.success_rate)

    if config.eval_every > 0 and config.eval_episodes > 0:
        callback: Any = RealTwinEvaluation()
    else:
        callback = None
    agent.learn(
        total_timesteps=config.n_timesteps, callback=callback, tb_log_name="ppo-plan", progress_bar=config.progress
    )
    final = student_from_policy(agent.policy, student, {**info, "plans_trained": int(agent.num_timesteps)})
    return save_distilled(final, out / "model")
