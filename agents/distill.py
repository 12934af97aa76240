"""Amortised planning: the CEM planner distilled into a network that plans in one forward pass.

The student is a planner too (:class:`DistilledPlanner`, a
:class:`~agents.planning.LatentPlanner`): it keeps each env's latent and action history
as CEM does, and where CEM would search it maps what CEM reads -- the model's latent
history, the actions in it, the goal latent -- to a whole plan of ``horizon`` standardised
actions with a small MLP (numpy at run time, no torch). It runs on CEM's schedule
(``replan_every`` = 5 by default: the plan executed open loop, then a new one), so it
imitates exactly the planner it is judged against.

Training, top to bottom (:func:`distill`):

1. **Starts.** A training bank of real (start, goal) pairs, collected with a seed the
   evaluation bank does not use (:func:`~leworld_env.envs.starts.build_start_bank`).
2. **Labels in the dream.** Episodes of the dream env from those starts, under the LeWM
   protocol's budget; at every plan CEM (the teacher, LeWM's settings) plans from the
   episode's history and the pair (history, plan) is recorded (:class:`LabellingCEM`).
   Round 0 executes the teacher's plans; every later round executes the current student's
   (DAgger: the teacher relabels the states the student reaches).
3. **Fit.** The student regresses the teacher's plans (mean squared error in standardised
   action units) on all labels so far, and (``cost_weight`` > 0) minimises the teacher's own cost
   of its plans -- the squared latent distance to the goal after the plan, differentiated
   through the frozen torch model -- on the labelled states and on unlabelled ones
   (:func:`dream_states`: every training-bank start, and where the previous student's first
   plan leads in the dream). Labels alone are memorised, not generalised (``docs/design.md``).
   10 % of episodes are held out for the validation losses.
4. **Refinement at run time** (optional, :class:`Refinement`, ``refine`` in ``policy.json``). The
   student's plan starts a search of CEM rounds in the model, and the cheapest plan found runs: the
   student says where to look, the model checks it. The shipped student refines an episode's first
   plan only (6 rounds of 32 samples with noise coloured along the plan: 192 rollouts against the
   teacher's 9,000; the later plans are the MLP's), which is where a 10-step LeWM episode is decided
   (``docs/results.md``).

Everything is seeded: the bank by ``seed``, the teacher's samples per episode by
``(seed, round, episode)``, the student's initialisation and batches by ``seed``.

Files (no pickle): ``policy.json`` (format, sizes, the schedule, the action statistics,
what it was distilled from, the refinement, the SHA-256 of the weights) and ``policy.safetensors`` (the
MLP's weights). :func:`load_distilled` reads them; ``agents.load_policy("distilled")`` and
``leworld eval --agent distilled`` read the one shipped beside the default model.
"""

from __future__ import annotations

import functools
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from agents.planning import CEMPlanner, LatentPlanner, cem_round, data_action_stats
from world_models.errors import ArgumentError, LeWorldError
from world_models.files import (
    atomic_write_bytes,
    check_finite_tensors,
    check_sha256,
    read_json_object,
    read_safetensors,
    sha256_bytes,
)
from world_models.interface import WorldModel
from world_models.training import cosine_decay

FORMAT = "leworld-distilled-planner"
VERSION = 1
POLICY_JSON = "policy.json"
WEIGHTS_FILE = "policy.safetensors"
DISTILLED_NAME = "distilled"  # the shipped student's name (a folder beside the default model)
LABELS_FILE = "labels.safetensors"


# ------------------------------------------------------------------ what the student reads
def plan_features(z: Any, a: Any, goal: Any) -> Any:
    """The student's input for histories ``z`` (N, H, D), ``a`` (N, H, A) and goal latents (N, D): (N, F),
    float32 numpy, or torch tensors for torch inputs (the fit's cost term differentiates through them).

    ``[z flattened, the history's executed actions a[:, :-1] flattened, goal, goal - z[:, -1]]``:
    everything CEM's cost reads (the history's newest action slot is the one a plan fills, so it is left out).
    """
    if hasattr(z, "detach"):  # torch tensors
        import torch

        concatenate = functools.partial(torch.cat, dim=1)
    else:
        z, a, goal = (np.asarray(x, np.float32) for x in (z, a, goal))
        concatenate = functools.partial(np.concatenate, axis=1)
    n = z.shape[0]
    return concatenate([z.reshape(n, -1), a[:, :-1].reshape(n, -1), goal, goal - z[:, -1]])


def run_plan(world_model: WorldModel, z: np.ndarray, a: np.ndarray, actions: np.ndarray) -> tuple[np.ndarray, ...]:
    """Roll plans of env actions ``actions`` (N, horizon, A) out open loop from histories ``z`` (N, H, D) and
    ``a`` (N, H, A) (the newest action slot is the plan's first action's): returns the latents after each
    step (N, horizon, D) and the histories the next plan reads (the newest ``H`` latents; the last ``H - 1``
    actions, the newest slot zero). Needs ``horizon >= H``."""
    h = a.shape[1]
    first = np.array(a, np.float32, copy=True)
    first[:, -1] = actions[:, 0]
    future = np.concatenate([actions[:, 1:], np.zeros_like(actions[:, :1])], axis=1)
    latents = world_model.rollout(z, first, future)
    reached = np.zeros_like(first)
    reached[:, :-1] = actions[:, -(h - 1) :]
    return latents, np.ascontiguousarray(latents[:, -h:], np.float32), reached


def feature_width(history: int, latent_dim: int, action_dim: int) -> int:
    """Width of :func:`plan_features` for a model's history, latent and action sizes."""
    return history * latent_dim + (history - 1) * action_dim + 2 * latent_dim


def _gelu(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + np.tanh(0.7978845608028654 * (x + 0.044715 * x**3)))


@dataclass(frozen=True)
class Refinement:
    """CEM rounds that polish a student's plan before it runs (TD-MPC's policy prior, at a small budget).

    Each round samples ``samples`` standardised plans around the current mean (std ``std``; the mean
    and the best plan so far among them), refits mean and std to the best ``topk``; the cheapest plan
    seen is the one executed. ``plans``: only an episode's first ``plans`` plans are refined, later ones
    run as the student made them (``None``: every plan). ``noise_exponent``: the samples' noise is
    coloured along the plan (power ~ 1 / f^exponent, iCEM's; 0: white), so a sample moves the whole plan
    smoothly rather than each action on its own. On LeWM's 10-step episodes the first plan is
    the one that counts (``docs/results.md``), so the shipped student spends its budget there.
    """

    iterations: int = 2
    samples: int = 32
    topk: int = 4
    std: float = 0.2
    plans: int | None = None
    noise_exponent: float = 0.0

    def __post_init__(self) -> None:
        for name in ("iterations", "samples", "topk"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ArgumentError(f"refinement {name} must be a positive integer, got {value!r}")
        plans = self.plans
        if plans is not None and (isinstance(plans, bool) or not isinstance(plans, int) or plans < 1):
            raise ArgumentError(f"refinement plans must be a positive integer or null (every plan), got {plans!r}")
        if self.samples < 2:
            raise ArgumentError(f"refinement samples must be >= 2 (the current plan and the best), got {self.samples}")
        if self.topk > self.samples:
            raise ArgumentError(f"refinement topk must be <= samples ({self.samples}), got {self.topk}")
        if isinstance(self.std, bool) or not isinstance(self.std, (int, float)) or not 0 < self.std < float("inf"):
            raise ArgumentError(f"refinement std must be a number > 0, got {self.std!r}")
        beta = self.noise_exponent
        if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not 0 <= beta <= 10:
            raise ArgumentError(f"refinement noise_exponent must be a number in [0, 10], got {beta!r}")

    @classmethod
    def from_dict(cls, data: Any, source: str) -> Refinement:
        """A refinement from ``policy.json``'s ``refine`` object (``source`` names the file in errors)."""
        fields = {"iterations", "samples", "topk", "std", "plans", "noise_exponent"}
        if not isinstance(data, dict) or not set(data) <= fields:
            raise LeWorldError(
                f"{source}: field 'refine' must be an object with keys among {sorted(fields)}, got {data!r}"
            )
        try:
            return cls(**data)
        except ArgumentError as err:
            raise LeWorldError(f"{source}: {err}") from None


class DistilledPlanner(LatentPlanner):
    """A planner whose plan is one MLP forward pass (see the module docstring).

    Args:
        world_model: the model whose latents it reads (its history, latent and action sizes must match).
        weights: ``layer{i}.weight`` (out, in) and ``layer{i}.bias`` (out,) float32 arrays, GELU between layers.
        horizon: actions per plan (the last layer's width / action_dim).
        replan_every: env steps between plans (default: the whole plan, as the teacher).
        action_mean, action_std: the standardisation the plans are in (the teacher's).
        info: what it was distilled from (kept in ``policy.json``).
        refinement: a few CEM rounds that polish the student's plan in the model before it runs
            (:class:`Refinement`); ``None`` runs the student's plan as it is.
        seed: seeds the refinement's samples.
    """

    name = DISTILLED_NAME

    def __init__(
        self,
        world_model: WorldModel,
        weights: dict[str, np.ndarray],
        horizon: int = 5,
        replan_every: int | None = None,
        action_mean: Any = None,
        action_std: Any = None,
        info: dict[str, Any] | None = None,
        folder: Path | None = None,
        refinement: Refinement | None = None,
        seed: int | None = 0,
    ) -> None:
        replan_every = horizon if replan_every is None else replan_every
        super().__init__(
            world_model,
            horizon=horizon,
            samples=1,
            iterations=1,
            replan_every=replan_every,
            action_mean=action_mean,
            action_std=action_std,
            seed=seed,
        )
        if refinement is not None and not isinstance(refinement, Refinement):
            raise ArgumentError(f"refinement must be a Refinement or None, got {type(refinement).__name__}")
        self.refinement = refinement
        self.layers = _check_layers(weights, self.config, horizon, folder)
        self.info = dict(info or {})
        self.folder = folder

    def plans(self, features: np.ndarray) -> np.ndarray:
        """Plans (N, horizon, A) in standardised units for :func:`plan_features` rows (N, F)."""
        x = np.asarray(features, np.float32)
        for i, (weight, bias) in enumerate(self.layers):
            x = x @ weight.T + bias
            if i < len(self.layers) - 1:
                x = _gelu(x)
        return self._clip(x.reshape(len(x), self.horizon, self.config.action_dim))

    def plan_for(self, env: dict[str, Any]) -> np.ndarray:
        """The plan (horizon, A) for one env's history (the same dict :class:`LatentPlanner` keeps)."""
        return self.plans(plan_features(env["z"][None], env["a"][None], env["goal"][None]))[0]

    def _plan(self, env: dict[str, Any]) -> np.ndarray:
        plan = self.plan_for(env)
        return self.refine(env, plan) if self.refines(env["plans"]) else plan

    def refines(self, plan_index: int) -> bool:
        """Whether the episode's plan number ``plan_index`` (0: its first) is refined."""
        r = self.refinement
        return r is not None and (r.plans is None or plan_index < r.plans)

    def refine(self, env: dict[str, Any], plan: np.ndarray) -> np.ndarray:
        """The cheapest plan (horizon, A) that the refinement's CEM rounds around ``plan`` find from
        ``env``'s history, by the planner's own cost; ``plan`` itself competes in every round, so the
        result never costs more than it."""
        r = self.refinement or Refinement()
        mean, std = plan, np.full_like(plan, r.std)
        best, best_cost = plan, np.inf
        for _ in range(r.iterations):
            candidates, cost, mean, std = cem_round(
                self, env, mean, std, r.samples, r.topk, keep=best, noise_exponent=r.noise_exponent
            )
            if cost.min() < best_cost:
                best, best_cost = candidates[cost.argmin()].copy(), float(cost.min())
        return best

    def __repr__(self) -> str:
        sizes = [w.shape[1] for w, _ in self.layers] + [self.layers[-1][0].shape[0]]
        r = self.refinement
        first = "" if r is None or r.plans is None else f" on the first {r.plans} plan(s)"
        colour = "" if r is None or not r.noise_exponent else f", noise 1/f^{r.noise_exponent:g}"
        refine = f", refinement={r.iterations}x{r.samples}{first}{colour}" if r is not None else ""
        return f"DistilledPlanner(layers={sizes}, horizon={self.horizon}, replan_every={self.replan_every}{refine})"


def _check_layers(weights: dict[str, np.ndarray], config: Any, horizon: int, source: Path | None) -> list:
    """``layer{i}.weight`` / ``.bias`` pairs as float32 (weight (out, in), bias (out,)), chained, the first
    reading :func:`plan_features` of ``config``'s sizes, the last writing ``horizon`` actions."""
    where = source or "distilled weights"
    count = sum(1 for k in weights if k.endswith(".weight"))
    layers = []
    for i in range(count):
        w, b = weights.get(f"layer{i}.weight"), weights.get(f"layer{i}.bias")
        if w is None or b is None or w.ndim != 2 or b.shape != (w.shape[0],):
            raise LeWorldError(f"{where}: layer{i}: expected a weight (out, in) and a bias (out,)")
        if layers and w.shape[1] != layers[-1][0].shape[0]:
            raise LeWorldError(
                f"{where}: layer{i} reads {w.shape[1]} numbers; layer{i - 1} writes {layers[-1][0].shape[0]}"
            )
        layers.append((np.ascontiguousarray(w, np.float32), np.ascontiguousarray(b, np.float32)))
    if not layers or len(weights) != 2 * count:
        raise LeWorldError(
            f"{where}: expected tensors layer0.weight, layer0.bias, ... and nothing else, got {sorted(weights)}"
        )
    width = feature_width(config.history, config.latent_dim, config.action_dim)
    if layers[0][0].shape[1] != width:
        raise LeWorldError(
            f"{where}: the student reads {layers[0][0].shape[1]} features; this world model gives {width} "
            f"(history {config.history}, latent {config.latent_dim}, actions {config.action_dim}): "
            "use the world model it was distilled from"
        )
    if layers[-1][0].shape[0] != horizon * config.action_dim:
        raise LeWorldError(
            f"{where}: the last layer writes {layers[-1][0].shape[0]} numbers; "
            f"expected horizon {horizon} x {config.action_dim}"
        )
    return layers


# ------------------------------------------------------------------ files
def save_distilled(student: DistilledPlanner, folder: Path) -> Path:
    """Write ``policy.json`` and ``policy.safetensors`` into ``folder`` (each atomically; the JSON last,
    carrying the weights' checksum, so a reader never pairs new JSON with old weights)."""
    from safetensors.numpy import save

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for i, (weight, bias) in enumerate(student.layers):
        tensors[f"layer{i}.weight"], tensors[f"layer{i}.bias"] = weight, bias
    data = save(tensors)
    atomic_write_bytes(folder / WEIGHTS_FILE, data)
    config = {
        "format": FORMAT,
        "version": VERSION,
        "horizon": student.horizon,
        "replan_every": student.replan_every,
        "action_mean": student.action_mean.tolist(),
        "action_std": student.action_std.tolist(),
        "history": student.config.history,
        "latent_dim": student.config.latent_dim,
        "action_dim": student.config.action_dim,
        "info": student.info,
        "refine": None if student.refinement is None else asdict(student.refinement),
        "weights_sha256": sha256_bytes(data),
    }
    atomic_write_bytes(folder / POLICY_JSON, (json.dumps(config, indent=2) + "\n").encode())
    return folder


def is_distilled_folder(path: Path) -> bool:
    """True when ``path`` (a folder, or its ``policy.json``) holds a distilled planner."""
    path = Path(path)
    folder = path.parent if path.name == POLICY_JSON else path
    return (folder / POLICY_JSON).is_file() and (folder / WEIGHTS_FILE).is_file()


def shipped_distilled(model: str | Path = "pusht-tiny") -> Path:
    """The distilled planner shipped beside a model: ``MODEL_FOLDER/distilled``."""
    from world_models.locate import resolve_model

    return resolve_model(model) / DISTILLED_NAME


def load_distilled(path: Path | str, world_model: WorldModel) -> DistilledPlanner:
    """A distilled planner from its folder (or ``policy.json``), checked against ``world_model``. No pickle.

    Raises:
        LeWorldError: naming the file and the field that is wrong.
    """
    path = Path(path)
    folder = path.parent if path.name == POLICY_JSON else path
    source = folder / POLICY_JSON
    data = read_json_object(source, "distilled planner")
    if data.get("format") != FORMAT or data.get("version") != VERSION:
        raise LeWorldError(
            f"{source}: expected format {FORMAT!r} version {VERSION}, "
            f"got {data.get('format')!r} {data.get('version')!r}"
        )
    for key in ("horizon", "replan_every"):
        if not isinstance(data.get(key), int) or isinstance(data.get(key), bool) or data[key] < 1:
            raise LeWorldError(f"{source}: field {key!r} must be a positive integer, got {data.get(key)!r}")
    sha = data.get("weights_sha256")
    if not isinstance(sha, str):
        raise LeWorldError(f"{source}: field 'weights_sha256' must be the SHA-256 of {WEIGHTS_FILE}, got {sha!r}")
    check_sha256(folder / WEIGHTS_FILE, sha, str(source))
    tensors = read_safetensors(folder / WEIGHTS_FILE)
    check_finite_tensors(tensors, str(folder / WEIGHTS_FILE))
    refine = data.get("refine")
    refinement = None if refine is None else Refinement.from_dict(refine, str(source))
    try:
        return DistilledPlanner(
            world_model,
            tensors,
            data["horizon"],
            data["replan_every"],
            data.get("action_mean"),
            data.get("action_std"),
            data.get("info"),
            folder,
            refinement,
        )
    except ValueError as err:  # ArgumentError: the schedule or the statistics
        raise LeWorldError(f"{source}: {err}") from None


# ------------------------------------------------------------------ labels
class LabellingCEM(CEMPlanner):
    """CEM that records every plan it makes with the history it planned from; with a ``student`` the
    student's plan is the one executed (DAgger), the teacher's only recorded."""

    def __init__(self, world_model: WorldModel, student: DistilledPlanner | None = None, **kwargs: Any) -> None:
        super().__init__(world_model, **kwargs)
        self.student = student
        self.records: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []

    def _plan(self, env: dict[str, Any]) -> np.ndarray:
        plan = super()._plan(env)
        self.records.append((env["z"].copy(), env["a"].copy(), env["goal"].copy(), plan.copy()))
        return plan if self.student is None else self.student.plan_for(env)


@dataclass
class LabelJob:
    """One worker's share of a labelling round (plain data: it crosses a process boundary)."""

    model: str
    backend: str | None
    starts: np.ndarray  # (N, 7)
    goals: np.ndarray  # (N, 5)
    episode_ids: list[int]
    seed: int
    round: int
    teacher: dict[str, Any]
    budget_steps: int
    student: str | None = None  # a distilled folder: the student drives


def run_label_job(job: LabelJob) -> dict[str, np.ndarray]:
    """Dream episodes of ``job``, CEM recording its plans: ``z``, ``a``, ``goal``, ``plan`` and ``episode`` arrays."""
    import gymnasium as gym

    import leworld_env
    import world_models

    wm = world_models.load(job.model, backend=job.backend)
    student = load_distilled(job.student, wm) if job.student else None
    stats = data_action_stats(wm)
    mean, std = stats if stats is not None else (None, None)
    teacher = LabellingCEM(wm, student=student, action_mean=mean, action_std=std, **job.teacher)
    env = gym.make(
        leworld_env.DREAM_ID, model=wm, goal="dataset", terminate_on_success=False, max_episode_steps=job.budget_steps
    )
    episodes = []
    try:
        for start, goal, episode in zip(job.starts, job.goals, job.episode_ids, strict=True):
            teacher.rng = np.random.default_rng((job.seed, job.round, episode))
            observation, _ = env.reset(options={"start": start, "goal_state": goal})
            before, first = len(teacher.records), True
            for _ in range(job.budget_steps):
                action, _ = teacher.predict(observation, episode_start=np.array([first]))
                first = False
                observation, _, terminated, truncated, _ = env.step(action)
                if terminated or truncated:
                    break
            episodes += [episode] * (len(teacher.records) - before)
    finally:
        env.close()
    z, a, goal, plan = (np.stack([r[i] for r in teacher.records]) for i in range(4))
    return {"z": z, "a": a, "goal": goal, "plan": plan, "episode": np.asarray(episodes, np.int64)}


def collect_labels(jobs: list[LabelJob], workers: int, progress: bool = True) -> dict[str, np.ndarray]:
    """Run label jobs (in ``workers`` processes when > 1) and concatenate their arrays."""
    from tqdm import tqdm

    if workers <= 1:
        results = [run_label_job(job) for job in tqdm(jobs, desc="labelling", unit="job", disable=not progress)]
    else:
        import multiprocessing

        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            results = list(
                tqdm(
                    pool.imap(run_label_job, jobs), total=len(jobs), desc="labelling", unit="job", disable=not progress
                )
            )
    return {key: np.concatenate([r[key] for r in results]) for key in results[0]}


def save_labels(path: Path, labels: dict[str, np.ndarray]) -> None:
    """Labels to a safetensors file, atomically."""
    from safetensors.numpy import save

    atomic_write_bytes(path, save({k: np.ascontiguousarray(v) for k, v in labels.items()}))


def load_labels(path: Path) -> dict[str, np.ndarray]:
    """Labels written by :func:`save_labels`, checked for the fields and matching row counts."""
    labels = read_safetensors(path)
    keys = ("z", "a", "goal", "plan", "episode")
    if sorted(labels) != sorted(keys) or len({len(labels[k]) for k in keys}) != 1:
        raise LeWorldError(f"{path}: expected arrays {', '.join(keys)} with one row per label, got {sorted(labels)}")
    return labels


def dream_states(
    world_model: WorldModel, bank: Any, student: DistilledPlanner | None = None, batch: int = 256
) -> dict[str, np.ndarray]:
    """Planning states without labels, for the cost term: every bank pair's start (its frame's latent
    repeated, zero actions: how an episode starts) and, with a ``student``, after them the states its
    first plan reaches in the dream (:func:`with_second_plans`)."""
    from leworld_env.envs.task import draw_frames

    config = world_model.config
    h = config.history
    out: dict[str, list[np.ndarray]] = {"z": [], "a": [], "goal": []}
    for first in range(0, len(bank), batch):
        rows = slice(first, first + batch)
        n = len(bank.start[rows])
        z_both = world_model.encode(draw_frames(np.concatenate([bank.start[rows], bank.goal[rows]]), config.image_size))
        out["z"].append(np.repeat(z_both[:n, None], h, axis=1))
        out["a"].append(np.zeros((n, h, config.action_dim), np.float32))
        out["goal"].append(z_both[n:])
    starts = {k: np.concatenate(v).astype(np.float32) for k, v in out.items()}
    return starts if student is None else with_second_plans(world_model, student, starts)


def with_second_plans(
    world_model: WorldModel, student: DistilledPlanner, starts: dict[str, np.ndarray], batch: int = 1024
) -> dict[str, np.ndarray]:
    """Planning states ``starts`` (``z`` (N, H, D), ``a`` (N, H, A), ``goal`` (N, D)) and, after them, the
    states ``student``'s first plan reaches from each in the dream (the latent history after ``horizon``
    steps and the actions in it: what its second plan reads)."""
    out: dict[str, list[np.ndarray]] = {k: [starts[k]] for k in ("z", "a", "goal")}
    for first in range(0, len(starts["z"]), batch):
        z, a, goal = (starts[k][first : first + batch] for k in ("z", "a", "goal"))
        actions = student.to_env(student.plans(plan_features(z, a, goal)))
        _, z_next, reached = run_plan(world_model, z, a, actions)
        out["z"].append(z_next)
        out["a"].append(reached)
        out["goal"].append(goal)
    return {k: np.concatenate(v).astype(np.float32) for k, v in out.items()}


# ------------------------------------------------------------------ the student's fit
def fit_student(
    world_model: WorldModel,
    labels: dict[str, np.ndarray],
    hidden: list[int],
    steps: int,
    batch_size: int,
    learning_rate: float,
    seed: int,
    action_mean: Any,
    action_std: Any,
    horizon: int,
    log: Any = None,
    progress: bool = True,
    cost_weight: float = 0.0,
    states: dict[str, np.ndarray] | None = None,
) -> tuple[DistilledPlanner, dict[str, float]]:
    """Regress the teacher's plans with an MLP (AdamW, cosine schedule); returns the student and its losses.

    Episodes are split 90 / 10 (by episode id) into fit and validation sets. ``cost_weight`` > 0 adds
    the teacher's own objective on the student's plans, differentiated through the model (torch):
    the squared latent distance to the goal at the plan's end, weighted by ``cost_weight``, on the
    fit labels' states and on ``states`` (unlabelled planning states: :func:`dream_states`).
    """
    import torch
    from tqdm import tqdm

    generator = torch.Generator().manual_seed(seed)
    x_all = torch.from_numpy(plan_features(labels["z"], labels["a"], labels["goal"]))
    y_all = torch.from_numpy(labels["plan"].reshape(len(labels["plan"]), -1).astype(np.float32))
    episodes = np.unique(labels["episode"])
    held = np.random.default_rng(seed).permutation(episodes)[: max(1, len(episodes) // 10)]
    valid = torch.from_numpy(np.isin(labels["episode"], held))
    if bool(valid.all()):
        valid[:] = False
    x, y, xv, yv = x_all[~valid], y_all[~valid], x_all[valid], y_all[valid]
    torch.manual_seed(seed)
    net = torch_mlp([x.shape[1], *hidden, y.shape[1]])
    planning_cost = planning_cost_fn(world_model, action_mean, action_std, horizon) if cost_weight > 0 else None
    fit_rows = ~valid.numpy()
    cost_z, cost_a, cost_g = (
        torch.from_numpy(np.concatenate([labels[k][fit_rows]] + ([states[k]] if states else [])))
        for k in ("z", "a", "goal")
    )
    optimizer = torch.optim.AdamW(net.parameters(), lr=learning_rate, weight_decay=1e-4)
    schedule = cosine_decay(optimizer, steps)
    losses: dict[str, float] = {}
    for step in tqdm(range(steps), desc="fitting the student", unit="step", disable=not progress):
        index = torch.randint(len(x), (min(batch_size, len(x)),), generator=generator)
        output = net(x[index])
        loss = torch.nn.functional.mse_loss(output, y[index])
        if planning_cost is not None:
            pick = torch.randint(len(cost_z), (min(batch_size, len(cost_z)),), generator=generator)
            z, a, g = cost_z[pick], cost_a[pick], cost_g[pick]
            loss = loss + cost_weight * planning_cost(z, a, g, net(plan_features(z, a, g)))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 100 == 0 or step == steps - 1:
            with torch.no_grad():
                losses = {"fit": float(torch.nn.functional.mse_loss(net(x), y))}
                if len(xv):
                    losses["validation"] = float(torch.nn.functional.mse_loss(net(xv), yv))
                if planning_cost is not None and len(xv):
                    held = valid.numpy()
                    z, a, g = (torch.from_numpy(labels[k][held]) for k in ("z", "a", "goal"))
                    losses["validation_cost"] = float(planning_cost(z, a, g, net(xv)))
                    losses["teacher_cost"] = float(planning_cost(z, a, g, yv))
            if log is not None:
                for name, value in losses.items():
                    log.add_scalar(f"distill/{name}_loss", value, step)
    student = DistilledPlanner(world_model, mlp_weights(net), horizon, None, action_mean, action_std)
    return student, losses


def torch_mlp(sizes: list[int], layers: list[tuple[np.ndarray, np.ndarray]] | None = None) -> Any:
    """The student's network as a torch ``Sequential`` (Linear layers of ``sizes``, tanh-form GELU between
    them), initialised with ``layers`` ((weight, bias) pairs, as :attr:`DistilledPlanner.layers`) when given."""
    import torch

    modules: list[torch.nn.Module] = []
    for i in range(len(sizes) - 1):
        modules.append(torch.nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            modules.append(torch.nn.GELU(approximate="tanh"))
    net = torch.nn.Sequential(*modules)
    if layers is not None:
        linears = [m for m in net if isinstance(m, torch.nn.Linear)]
        if [tuple(layer.weight.shape) for layer in linears] != [tuple(w.shape) for w, _ in layers]:
            raise ArgumentError(f"layers {[w.shape for w, _ in layers]} do not fit sizes {sizes}")
        with torch.no_grad():
            for layer, (weight, bias) in zip(linears, layers, strict=True):
                layer.weight.copy_(torch.from_numpy(np.asarray(weight, np.float32)))
                layer.bias.copy_(torch.from_numpy(np.asarray(bias, np.float32)))
    return net


def mlp_weights(net: Any) -> dict[str, np.ndarray]:
    """A :func:`torch_mlp`'s weights as the student's ``layer{i}.weight`` / ``layer{i}.bias`` float32 arrays."""
    import torch

    linears = [m for m in net if isinstance(m, torch.nn.Linear)]
    weights = {}
    for i, layer in enumerate(linears):
        weights[f"layer{i}.weight"] = layer.weight.detach().numpy().copy()
        weights[f"layer{i}.bias"] = layer.bias.detach().numpy().copy()
    return weights


def planning_cost_fn(world_model: WorldModel, action_mean: Any, action_std: Any, horizon: int) -> Any:
    """CEM's cost of plans, differentiable: ``cost(z (B,H,D), a (B,H,A), goal (B,D), plans (B, horizon*A))``,
    the mean squared latent distance to the goal after the plan, rolled out by the torch model (frozen)."""
    import torch

    from world_models.backends.torch_backend import TorchWorldModel
    from world_models.locate import resolve_model

    folder = getattr(world_model, "path", None)
    if folder is None or not (Path(folder).is_dir() or Path(folder).suffix == ".lq40"):
        raise LeWorldError("cost_weight > 0 needs a world model read from a folder (its torch weights)")
    folder = Path(folder).parent if Path(folder).suffix == ".lq40" else Path(folder)
    model = TorchWorldModel(resolve_model(folder)).model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    mean = torch.as_tensor(np.zeros(2) if action_mean is None else action_mean, dtype=torch.float32)
    std = torch.as_tensor(np.ones(2) if action_std is None else action_std, dtype=torch.float32)

    def cost(z: Any, a: Any, goal: Any, plans: Any) -> Any:
        actions = torch.clamp(mean + std * plans.view(len(plans), horizon, -1), -1.0, 1.0)
        history = a.clone()
        history[:, -1] = actions[:, 0]
        future = torch.cat([actions[:, 1:], torch.zeros_like(actions[:, :1])], dim=1)
        final = model.rollout(z, history, future)[:, -1]
        return torch.mean((final - goal) ** 2)

    return cost


TRAIN_BANK_FILE = "train_starts.safetensors"


def training_bank(out: Path, episodes: int, seed: int, stride: int = 10) -> Any:
    """The training bank of (start, goal) pairs kept in ``OUT/train_starts.safetensors``: read when it is
    there (a rerun reuses it), else collected from ``episodes`` real noisy-expert episodes of ``seed``
    (never the evaluation bank's), a pair every ``stride`` steps, and written."""
    from leworld_env.envs.starts import build_start_bank, load_start_bank, save_start_bank

    path = Path(out) / TRAIN_BANK_FILE
    if path.is_file():
        return load_start_bank(path)
    bank, meta = build_start_bank(episodes=episodes, seed=seed, policy="noisy-expert", stride=stride)
    save_start_bank(path, bank, meta)
    return bank


# ------------------------------------------------------------------ the whole recipe
@dataclass
class DistillConfig:
    """What ``leworld train-agent --algo distill`` runs (``agents/hyperparams/distill.yml``)."""

    out: Path = Path("runs/distill")
    model: str = "pusht-tiny"
    backend: str | None = None
    seed: int = 0
    bank_episodes: int = 150  # real episodes the training bank's (start, goal) pairs come from
    bank_seed: int = 7000  # != the evaluation bank's (2027)
    episodes_per_round: list[int] = field(default_factory=lambda: [800])  # 0: teacher drives; later: student, 0 = refit
    budget_steps: int = 10  # env steps per dream episode (LeWM: 50 physics steps at frameskip 5)
    teacher: dict[str, Any] = field(
        default_factory=lambda: {"horizon": 5, "samples": 300, "iterations": 30, "replan_every": 5}
    )
    hidden: list[int] = field(default_factory=lambda: [512, 512, 512])
    fit_steps: int = 2000
    batch_size: int = 256
    learning_rate: float = 1e-3
    cost_weight: float = 20.0  # > 0: add the teacher's cost of the student's plans (through the torch model)
    refine: dict[str, Any] | None = None  # the final student's Refinement fields (None: its plans as they are)
    workers: int = 1
    jobs_per_round: int = 16
    progress: bool = True


def distill(config: DistillConfig) -> Path:
    """Collect labels round by round and fit the student after each; returns ``OUT/model``.

    Each round's labels are kept (``OUT/labels_round{k}.safetensors``): a rerun with the same ``OUT``
    reuses the rounds it finds (resume), so a stopped run loses at most one round.
    """
    from torch.utils.tensorboard import SummaryWriter

    import world_models

    refinement = None if config.refine is None else Refinement(**config.refine)  # checked before hours of labels
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    wm = world_models.load(config.model, backend=config.backend)
    stats = data_action_stats(wm)
    mean, std = stats if stats is not None else (None, None)
    bank = training_bank(out, config.bank_episodes, config.bank_seed)
    order = np.random.default_rng(config.seed).permutation(len(bank))
    log = SummaryWriter(str(out / "tb"))
    labels: dict[str, np.ndarray] | None = None
    student_path: Path | None = None
    first = 0
    history = []
    for k, count in enumerate(config.episodes_per_round):
        path = out / f"labels_round{k}.safetensors"
        if count == 0:  # a refit only: the cost term's states from the last student, no new labels
            round_labels = {key: value[:0] for key, value in labels.items()}
        elif path.is_file():
            round_labels = load_labels(path)
        else:
            ids = [int(order[(first + i) % len(bank)]) for i in range(count)]
            ids_unique = [first + i for i in range(count)]  # episode ids: unique across rounds
            chunks = np.array_split(np.arange(count), min(config.jobs_per_round, count))
            jobs = [
                LabelJob(
                    str(config.model),
                    config.backend,
                    np.stack([bank.start_state(ids[i]) for i in chunk]),
                    bank.goal[[ids[i] for i in chunk]],
                    [ids_unique[i] for i in chunk],
                    config.seed,
                    k,
                    dict(config.teacher),
                    config.budget_steps,
                    None if student_path is None else str(student_path),
                )
                for chunk in chunks
                if len(chunk)
            ]
            began = time.perf_counter()
            round_labels = collect_labels(jobs, config.workers, config.progress)
            history.append({"round": k, "labels": len(round_labels["plan"]), "seconds": time.perf_counter() - began})
            save_labels(path, round_labels)
        first += count
        labels = (
            round_labels
            if labels is None
            else {key: np.concatenate([labels[key], round_labels[key]]) for key in labels}
        )
        previous = load_distilled(student_path, wm) if student_path is not None else None
        states = dream_states(wm, bank, previous) if config.cost_weight > 0 else None
        student, losses = fit_student(
            wm,
            labels,
            config.hidden,
            config.fit_steps,
            config.batch_size,
            config.learning_rate,
            config.seed + k,
            mean,
            std,
            int(config.teacher.get("horizon", 5)),
            log,
            config.progress,
            config.cost_weight,
            states,
        )
        student.info = {
            "model": str(config.model),
            "teacher": dict(config.teacher),
            "labels": len(labels["plan"]),
            "rounds": k + 1,
            "seed": config.seed,
            "losses": losses,
        }
        student_path = save_distilled(student, out / f"round{k}")
        log.add_scalar("distill/labels", len(labels["plan"]), k)
    log.close()
    student.refinement = refinement
    final = save_distilled(student, out / "model")
    atomic_write_bytes(
        out / "distill.json",
        (json.dumps({"config": _jsonable(asdict(config)), "rounds": history}, indent=2) + "\n").encode(),
    )
    return final


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return str(value) if isinstance(value, Path) else value
