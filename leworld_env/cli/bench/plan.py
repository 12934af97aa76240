"""``leworld bench plan``: time per planning decision for each CPU backend.

The reference is LeWM's own figure: about 1 s per CEM plan (300 samples x 30
iterations, horizon 5) on a GPU. Decisions are timed on a real start latent and
goal from the start bank, after one warm-up decision. Where a distilled planner
ships beside the model (:mod:`agents.distill`), its plan is timed too, with and without its
refinement, as a ratio to the numba-q4 CEM decision of the same run, and its mean decision over
a LeWM episode (10 steps, a plan every ``replan_every`` steps, the first ``plans`` of them refined)
against the 5 ms target.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from leworld_env.cli.bench.common import BenchRow

LEWM_SECONDS_PER_PLAN = 1.0


def bench_plan(model: str | Path = "pusht-tiny", quick: bool = False) -> list[BenchRow]:
    """Seconds per CEM decision (LeWM's settings) on each CPU backend, and per iCEM / MPPI decision."""
    import world_models
    from agents.planning import make_planner
    from leworld_env.envs.task import draw_frames, goal_vectors, open_start_bank

    bank = open_start_bank(model)
    rows = []
    decisions = 1 if quick else 3
    for backend in ("numba-q4", "numba", "torch"):
        wm = world_models.load(model, backend=backend)
        z = wm.encode(draw_frames(np.stack([bank.start[0], bank.goal[0]]), wm.config.image_size))
        obs = {
            "achieved_goal": goal_vectors(z[:1], bank.start[:1, 2:5])[0],
            "desired_goal": goal_vectors(z[1:], bank.goal[:1, 2:5])[0],
        }
        names = ("cem", "icem", "mppi") if backend == "numba-q4" else ("cem",)
        for name in names:
            planner = make_planner(name, wm, iterations=3) if quick else make_planner(name, wm)
            planner.predict(obs)  # warm-up: compilation, caches
            started = time.perf_counter()
            for _ in range(decisions):
                planner.predict(obs, episode_start=np.array([False]))
            seconds = (time.perf_counter() - started) / decisions
            label = f"{name} decision ({planner.samples} x {planner.iterations}, horizon {planner.horizon}), {backend}"
            rows.append(BenchRow(label, seconds, "s", "LeWM's ~1 s on a GPU", LEWM_SECONDS_PER_PLAN / seconds))
            if backend == "numba-q4" and name == "cem":
                cem_seconds, cem_obs, cem_wm = seconds, obs, wm
    rows += _distilled_rows(cem_wm, cem_obs, cem_seconds, 20 if quick else 1000)
    return rows


def _distilled_rows(wm: object, obs: dict, cem_seconds: float, decisions: int) -> list[BenchRow]:
    """Seconds per plan of the distilled planner beside the model, as shipped (with its refinement) and its
    MLP alone, and the shipped one's seconds per decision (a plan every ``replan_every`` steps); none when
    there is no distilled planner beside the model."""
    from agents.distill import load_distilled
    from agents.evaluate import PROTOCOLS, shipped_distilled_for
    from world_models.errors import LeWorldError

    try:
        student = load_distilled(shipped_distilled_for(wm), wm)
    except LeWorldError:  # no distilled planner beside this model
        return []
    rows = []
    shipped = student.refinement
    plan_ms = {}
    for refinement in [shipped, None] if shipped is not None else [None]:
        student.refinement = refinement
        start = np.array([True])  # a new episode at every call: every call plans
        student.predict(obs, episode_start=start)
        count = decisions if refinement is None else max(1, decisions // 20)
        started = time.perf_counter()
        for _ in range(count):
            student.predict(obs, episode_start=start)
        seconds = (time.perf_counter() - started) / count
        what = (
            "one MLP pass" if refinement is None else f"MLP + {refinement.iterations} x {refinement.samples} refinement"
        )
        reference = "CEM's numba-q4 decision, this run"
        rows.append(BenchRow(f"distilled planner plan ({what})", seconds * 1e3, "ms", reference, cem_seconds / seconds))
        plan_ms[refinement is not None] = seconds * 1e3
    student.refinement = shipped
    steps = PROTOCOLS["lewm"].env_steps(wm.config.frameskip)
    plans = -(-steps // student.replan_every)
    total_ms = sum(plan_ms[student.refines(k)] for k in range(plans))
    per_decision = total_ms / steps
    label = f"distilled planner decision, as shipped (mean over a {steps}-step LeWM episode, {plans} plans)"
    rows.append(BenchRow(label, per_decision, "ms", "the 5 ms target", 5.0 / per_decision))
    return rows
