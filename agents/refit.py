"""The distilled planner refit by the planner's own cost, through the model, on many real start states.

The distillation (:mod:`agents.distill`) fits its student to 1,600 CEM plans with CEM's cost as a
second term, on the ~4,000 planning states it has; its plans then cost far more on states it did not
see than on those it did. This recipe continues from a student with the cost alone, on a training
bank ten times larger, and with states that follow the student:

1. **States.** A training bank of real noisy-expert episodes (the distillation's seed, never an
   evaluation bank's) cut into (start, goal) pairs every ``stride`` steps. The planning states are
   every pair's start (its frame's latent repeated, zero actions: how an episode starts) and where
   the *current* student's first plan leads from it in the dream (the second plan's state), rebuilt
   every ``refresh`` steps (:func:`agents.distill.dream_states`). The last ``held_fraction`` of the
   pairs (the bank keeps an episode's pairs together: the last episodes) are held out.
2. **Loss.** For a batch of states the MLP plans (standardised actions), the frozen torch model
   rolls each plan out and the loss is CEM's cost, the squared latent distance to the goal at the
   plan's end (:func:`agents.distill.planning_cost_fn`); its gradient flows through the model into
   the MLP (an analytic policy gradient, as a Dreamer actor's, with no critic: the model is
   differentiable and the horizon one plan). AdamW, cosine schedule.
3. **Out.** ``OUT/model``: a distilled planner folder with the student's refinement and horizon, so
   ``leworld eval --agent OUT/model`` and ``agents.load_policy`` read it as they read the student.
   TensorBoard (``OUT/tb``): ``refit/fit_cost`` (the batch's, every 100 steps), ``refit/held_cost``
   (the held pairs' starts and the source student's second-plan states, a fixed set, every ``refresh``
   steps) and, every ``eval_every`` steps,
   ``refit/real_success_rate`` (the MLP alone on ``eval_episodes`` real-twin episodes of the strict
   LeWM test, eval seed 10,000 + ``seed``: not the reported ones), also at the start and the end.

With ``student: fresh`` the same loop trains a new MLP from torch's initialisation: no CEM plan is
used anywhere, and the result is a policy trained only in the dream by the model's gradient (a
model-based actor, as Dreamer's with the critic replaced by the one-plan cost).

``leworld train-agent --algo refit`` (``agents/hyperparams/refit.yml``) runs it; results in
docs/results.md.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from agents.distill import (
    DistilledPlanner,
    dream_states,
    feature_width,
    load_distilled,
    mlp_weights,
    plan_features,
    planning_cost_fn,
    save_distilled,
    shipped_distilled,
    torch_mlp,
    training_bank,
    with_second_plans,
)
from agents.planning import data_action_stats
from world_models.errors import ArgumentError
from world_models.files import atomic_write_bytes
from world_models.interface import WorldModel
from world_models.training import cosine_decay


@dataclass
class RefitConfig:
    """What ``leworld train-agent --algo refit`` runs (``agents/hyperparams/refit.yml``)."""

    out: Path = Path("runs/refit")
    model: str = "pusht-tiny"
    backend: str | None = None
    seed: int = 0
    student: str = "distilled"  # the planner refit: "distilled" (shipped beside the model), a folder, or
    # "fresh": a new MLP of `hidden` widths planning `horizon` actions (no CEM labels anywhere)
    hidden: list[int] = field(default_factory=lambda: [512, 512, 512])  # "fresh" only
    horizon: int = 5  # "fresh" only (its schedule: the whole plan, as CEM's under LeWM's protocol)
    bank_episodes: int = 2000  # real noisy-expert episodes of bank_seed (the distillation's: 7000)
    bank_seed: int = 7000
    stride: int = 2  # a (start, goal) pair every `stride` steps of an episode
    steps: int = 4000
    batch_size: int = 256
    learning_rate: float = 3e-4  # it starts from a student: a smaller step than the distillation's fit
    refresh: int = 500  # steps between rebuilding the second-plan states with the current student
    held_fraction: float = 0.1
    eval_every: int = 1000  # steps between real-twin evaluations, besides the first and last (0: none)
    eval_episodes: int = 50
    progress: bool = True


class _Pairs:
    """A slice of a start bank (the fields :func:`dream_states` reads)."""

    def __init__(self, bank: Any, rows: np.ndarray) -> None:
        self.start, self.goal = bank.start[rows], bank.goal[rows]

    def __len__(self) -> int:
        return len(self.start)


def _weights(student: DistilledPlanner) -> dict[str, np.ndarray]:
    """The student's layers as the ``layer{i}.weight`` / ``layer{i}.bias`` mapping its constructor takes."""
    out = {}
    for i, (weight, bias) in enumerate(student.layers):
        out[f"layer{i}.weight"], out[f"layer{i}.bias"] = weight, bias
    return out


def fresh_student(world_model: WorldModel, hidden: list[int], horizon: int, seed: int) -> DistilledPlanner:
    """A new, untrained student for ``world_model``: an MLP of ``hidden`` widths (torch's default init under
    ``seed``) planning ``horizon`` actions, standardised by the data's action statistics, replanning after
    the whole plan, with no refinement."""
    import torch

    config = world_model.config
    if not hidden or any(not isinstance(w, int) or w < 1 for w in hidden):
        raise ArgumentError(f"refit hidden must be a list of layer widths >= 1, got {hidden!r}")
    if not isinstance(horizon, int) or horizon < config.history:
        raise ArgumentError(
            f"refit horizon must be an integer >= the model's history ({config.history}), got {horizon!r}"
        )
    torch.manual_seed(seed)
    width = feature_width(config.history, config.latent_dim, config.action_dim)
    sizes = [width, *hidden, horizon * config.action_dim]
    stats = data_action_stats(world_model)
    mean, std = stats if stats is not None else (None, None)
    return DistilledPlanner(world_model, mlp_weights(torch_mlp(sizes)), horizon, None, mean, std,
                            info={"init": "fresh", "seed": seed})  # fmt: skip


def refit_student(
    world_model: WorldModel,
    student: DistilledPlanner,
    bank: Any,
    steps: int,
    batch_size: int = 256,
    learning_rate: float = 3e-4,
    refresh: int = 500,
    seed: int = 0,
    held_fraction: float = 0.1,
    log: Any = None,
    progress: bool = True,
    on_step: Any = None,
) -> tuple[DistilledPlanner, dict[str, float]]:
    """Descend the planner's cost of ``student``'s plans on ``bank``'s planning states (module docstring).

    Returns the refit student (the source's horizon, schedule, action statistics and refinement) and the
    last losses (``fit_cost``, ``held_cost``; ``held_cost_before``: the source's). ``on_step(step, student)``
    is called after each step with a function building the current student (for evaluations).

    Raises:
        ArgumentError: a bank too small to hold pairs out, or bad sizes.
    """
    import torch
    from tqdm import tqdm

    for name, value in (("steps", steps), ("batch_size", batch_size), ("refresh", refresh)):
        if not isinstance(value, int) or value < 1:
            raise ArgumentError(f"refit {name} must be an integer >= 1, got {value!r}")
    if not 0.0 < held_fraction < 1.0:
        raise ArgumentError(f"refit held_fraction must be in (0, 1), got {held_fraction!r}")
    n = len(bank)
    first_held = round((1.0 - held_fraction) * n)
    if first_held < 1 or first_held >= n:
        raise ArgumentError(f"a bank of {n} pairs cannot hold {held_fraction:.0%} out; collect more episodes")
    rows = np.arange(n)
    fit_pairs, held_pairs = _Pairs(bank, rows < first_held), _Pairs(bank, rows >= first_held)

    def tensors(states: dict[str, np.ndarray]) -> tuple[Any, ...]:
        return tuple(torch.from_numpy(states[k]) for k in ("z", "a", "goal"))

    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    sizes = [student.layers[0][0].shape[1], *(int(w.shape[0]) for w, _ in student.layers)]
    net = torch_mlp(sizes, student.layers)
    cost = planning_cost_fn(world_model, student.action_mean, student.action_std, student.horizon)
    held = tensors(dream_states(world_model, held_pairs, student))
    starts = dream_states(world_model, fit_pairs)  # the frames encoded once; the second plans' states follow

    def held_cost() -> float:
        with torch.no_grad():
            return float(cost(*held, net(plan_features(*held))))

    def current() -> DistilledPlanner:
        return DistilledPlanner(
            world_model,
            mlp_weights(net),
            student.horizon,
            student.replan_every,
            student.action_mean,
            student.action_std,
            refinement=student.refinement,
        )

    losses = {"held_cost_before": held_cost()}
    optimizer = torch.optim.AdamW(net.parameters(), lr=learning_rate, weight_decay=1e-4)
    schedule = cosine_decay(optimizer, steps)
    states: tuple[Any, ...] = ()
    for step in tqdm(range(steps), desc="refitting the student", unit="step", disable=not progress):
        if step % refresh == 0:
            states = tensors(with_second_plans(world_model, current(), starts))
        pick = torch.randint(len(states[0]), (min(batch_size, len(states[0])),), generator=generator)
        z, a, goal = (x[pick] for x in states)
        loss = cost(z, a, goal, net(plan_features(z, a, goal)))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        losses["fit_cost"] = float(loss.detach())
        last = step == steps - 1
        if log is not None and (step % 100 == 0 or last):
            log.add_scalar("refit/fit_cost", losses["fit_cost"], step)
        if step % refresh == 0 or last:  # the held states are ~10 % of the bank's: a rollout of thousands
            losses["held_cost"] = held_cost()
            if log is not None:
                log.add_scalar("refit/held_cost", losses["held_cost"], step)
        if on_step is not None:
            on_step(step, current)
    return current(), losses


def refit(config: RefitConfig) -> Path:
    """Refit ``config.student`` (module docstring); returns ``OUT/model``."""
    import torch
    from torch.utils.tensorboard import SummaryWriter

    import world_models
    from agents.evaluate import evaluate

    torch.set_flush_denormal(True)  # the cost's backward through the model meets denormals: 2x faster without
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    wm = world_models.load(config.model, backend=config.backend)
    if config.student == "fresh":
        student, origin = fresh_student(wm, config.hidden, config.horizon, config.seed), "fresh"
    else:
        path = shipped_distilled(config.model) if config.student == "distilled" else Path(config.student)
        student = load_distilled(path, wm)
        origin = "distilled" if config.student == "distilled" else str(path)  # not this machine's path
    bank = training_bank(out, config.bank_episodes, config.bank_seed, config.stride)
    log = SummaryWriter(str(out / "tb"))
    curve: list[dict[str, float]] = []

    def real_success(step: int, planner: DistilledPlanner) -> None:
        planner.refinement = None
        result = evaluate(planner, "refit", seed=10_000 + config.seed, episodes=config.eval_episodes, progress=False)
        log.add_scalar("refit/real_success_rate", result.success_rate, step)
        curve.append({"step": step, "real_success_rate": result.success_rate})

    evaluating = config.eval_every > 0 and config.eval_episodes > 0

    def on_step(step: int, current: Any) -> None:
        done = step + 1
        if evaluating and (done % config.eval_every == 0 or done == config.steps):
            real_success(done, current())

    if evaluating:
        real_success(0, DistilledPlanner(wm, _weights(student), student.horizon, student.replan_every,
                                         student.action_mean, student.action_std))  # fmt: skip
    began = time.perf_counter()
    refit_planner, losses = refit_student(
        wm,
        student,
        bank,
        config.steps,
        config.batch_size,
        config.learning_rate,
        config.refresh,
        config.seed,
        config.held_fraction,
        log,
        config.progress,
        on_step,
    )
    log.close()
    settings = {k: v for k, v in asdict(config).items() if k not in ("out", "progress")}
    refit_planner.info = {
        **student.info,
        "refit": {"from": origin, **settings, "pairs": len(bank), "losses": losses},
    }
    final = save_distilled(refit_planner, out / "model")
    summary = {
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(config).items()},
        "source": origin,
        "pairs": len(bank),
        "losses": losses,
        "seconds": time.perf_counter() - began,
        "real_success_curve": curve,
    }
    atomic_write_bytes(out / "refit.json", (json.dumps(summary, indent=2) + "\n").encode())
    return final
