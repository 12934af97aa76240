"""The distilled planner refit by the planner's own cost through the model (agents.refit)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import world_models
from agents.distill import (
    dream_states,
    load_distilled,
    plan_features,
    planning_cost_fn,
    shipped_distilled,
    with_second_plans,
)
from agents.refit import RefitConfig, refit, refit_student
from leworld_env.envs.starts import load_start_bank
from leworld_env.envs.task import open_start_bank
from world_models.errors import ArgumentError


@pytest.fixture(scope="module")
def wm():
    return world_models.load()


@pytest.fixture(scope="module")
def student(wm):
    return load_distilled(shipped_distilled(), wm)


class _Pairs:
    def __init__(self, bank, rows):
        self.start, self.goal = bank.start[rows], bank.goal[rows]

    def __len__(self):
        return len(self.start)


def _cost(wm, planner, states) -> float:
    cost = planning_cost_fn(wm, planner.action_mean, planner.action_std, planner.horizon)
    z, a, goal = (torch.from_numpy(states[k]) for k in ("z", "a", "goal"))
    with torch.no_grad():
        plans = torch.from_numpy(planner.plans(plan_features(states["z"], states["a"], states["goal"])))
        return float(cost(z, a, goal, plans.reshape(len(plans), -1)))


def test_second_plan_states_are_where_the_first_plan_leads_in_the_dream(wm, student):
    """The refit's states: the starts as given, then the latent history the student's first plan reaches
    (the model's rollout of it), with that plan's last actions as the history's actions."""
    from agents.distill import run_plan

    starts = dream_states(wm, _Pairs(open_start_bank(wm), np.arange(6)))
    states = with_second_plans(wm, student, starts, batch=4)
    for key in ("z", "a", "goal"):
        np.testing.assert_array_equal(states[key][:6], starts[key])
        np.testing.assert_array_equal(states["goal"][6:], starts["goal"])
    actions = student.to_env(student.plans(plan_features(starts["z"], starts["a"], starts["goal"])))
    _, z_next, reached = run_plan(wm, starts["z"], starts["a"], actions)
    # batches of 4 against one of 6: BLAS may round differently by batch size (and thread count)
    np.testing.assert_allclose(states["a"][6:], reached, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(states["z"][6:], z_next, rtol=1e-4, atol=1e-4)


def test_refit_lowers_the_planning_cost_of_the_students_plans(wm, student):
    """A short refit on a few pairs lowers the cost of a student's plans on those pairs' states (the
    quantity it descends), keeps the student's schedule and refinement, and reports the held-out cost.
    The student is the shipped one with its plans halved (a worse one for the refit to mend)."""
    from agents.distill import DistilledPlanner

    layers = [(w, b) for w, b in student.layers[:-1]] + [(0.5 * student.layers[-1][0], 0.5 * student.layers[-1][1])]
    weights = {f"layer{i}.{k}": v for i, (w, b) in enumerate(layers) for k, v in (("weight", w), ("bias", b))}
    student = DistilledPlanner(wm, weights, student.horizon, student.replan_every, student.action_mean,
                               student.action_std, refinement=student.refinement)  # fmt: skip
    bank = open_start_bank(wm)
    pairs = _Pairs(bank, np.arange(40))
    refit_planner, losses = refit_student(wm, student, pairs, steps=30, batch_size=32, learning_rate=1e-4,
                                          refresh=10, progress=False)  # fmt: skip
    fit_states = with_second_plans(wm, student, dream_states(wm, _Pairs(bank, np.arange(36))))
    assert _cost(wm, refit_planner, fit_states) < 0.9 * _cost(wm, student, fit_states)
    assert refit_planner.refinement == student.refinement and refit_planner.horizon == student.horizon
    assert refit_planner.replan_every == student.replan_every
    np.testing.assert_array_equal(refit_planner.action_mean, student.action_mean)
    assert {"held_cost_before", "held_cost", "fit_cost"} <= set(losses) and losses["held_cost_before"] > 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"steps": 0}, "steps must be an integer >= 1"), ({"held_fraction": 1.0}, "held_fraction must be in (0, 1)")],
)
def test_refit_refuses_bad_settings(wm, student, kwargs, message):
    pairs = _Pairs(open_start_bank(wm), np.arange(10))
    with pytest.raises(ArgumentError, match=message.replace("(", r"\(").replace(")", r"\)")):
        refit_student(wm, student, pairs, **{"steps": 5, **kwargs}, progress=False)
    with pytest.raises(ArgumentError, match="cannot hold"):
        refit_student(wm, student, _Pairs(open_start_bank(wm), np.arange(1)), steps=1, progress=False)


def test_tiny_refit_run_writes_a_distilled_folder_and_logs_its_curves(wm, student, tmp_path):
    """The recipe end to end on a two-episode bank: the folder loads as a distilled planner whose weights
    moved from the source's, the bank is kept, and TensorBoard has the dream cost and the real success."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    config = RefitConfig(out=out, bank_episodes=2, stride=5, steps=20, batch_size=32, learning_rate=1e-3,
                         refresh=10, eval_every=10, eval_episodes=2, progress=False)  # fmt: skip
    final = refit(config)
    trained = load_distilled(final, wm)
    assert trained.refinement == student.refinement and trained.info["refit"]["steps"] == 20
    assert any(not np.allclose(w, w0) for (w, _), (w0, _) in zip(trained.layers, student.layers, strict=True))
    assert len(load_start_bank(out / "train_starts.safetensors")) == trained.info["refit"]["pairs"] > 0
    events = EventAccumulator(str(out / "tb")).Reload()
    assert {"refit/fit_cost", "refit/held_cost", "refit/real_success_rate"} <= set(events.Tags()["scalars"])
    assert [e.step for e in events.Scalars("refit/real_success_rate")] == [0, 10, 20]


def test_leworld_train_agent_refit_writes_a_planner_and_refuses_bad_input(tmp_path):
    """``leworld train-agent --algo refit`` runs the YAML's recipe and writes a planner ``leworld eval
    --agent`` reads; a bad field names the file, the field and what was expected; a second run into the
    same folder is refused unless ``--resume``, which reuses the folder's training bank."""
    import yaml

    from tests.conftest import run_cli
    from tests.test_collect import assert_one_line_error

    entry = yaml.safe_load((Path(__file__).parents[1] / "agents/hyperparams/refit.yml").read_text())
    tiny = {**entry["LeWorld-PushT-v0"], "bank_episodes": 2, "stride": 5, "steps": 4, "batch_size": 16}
    hyperparams = tmp_path / "tiny.yml"
    hyperparams.write_text(yaml.safe_dump({"LeWorld-PushT-v0": tiny}))
    out = tmp_path / "run"
    args = ("train-agent", "--algo", "refit", "--hyperparams", str(hyperparams), "--out", str(out))
    result = run_cli(*args, "--eval-episodes", "1", "--no-progress")
    assert result.returncode == 0, result.stderr
    assert (out / "model" / "policy.json").is_file() and f"leworld eval --agent {out / 'model'}" in result.stdout
    evaluation = run_cli("eval", "--agent", str(out / "model"), "--episodes", "1", "--refine-plans", "1")
    assert evaluation.returncode == 0, evaluation.stderr
    bad = tmp_path / "bad.yml"
    bad.write_text(yaml.safe_dump({"LeWorld-PushT-v0": {**tiny, "held_fraction": 1.5}}))
    result = run_cli("train-agent", "--algo", "refit", "--hyperparams", str(bad), "--out", str(tmp_path / "b"))
    assert_one_line_error(result, str(bad), "'held_fraction'", "(0, 1)")
    assert_one_line_error(run_cli(*args, "--no-progress"), str(out))
    bank = (out / "train_starts.safetensors").read_bytes()
    again = run_cli(*args, "--resume", "--eval-episodes", "1", "--no-progress")
    assert again.returncode == 0, again.stderr
    assert (out / "train_starts.safetensors").read_bytes() == bank and (out / "model" / "policy.json").is_file()


def test_a_fresh_student_is_untrained_and_the_refit_teaches_it(wm):
    """``student: fresh``: a new MLP of the asked widths with the data's action statistics, which a short
    refit improves on its own states; bad widths and horizons are named."""
    from agents.refit import fresh_student

    fresh = fresh_student(wm, [32, 32], 5, seed=0)
    assert [w.shape[0] for w, _ in fresh.layers] == [32, 32, 10] and fresh.refinement is None
    assert fresh.replan_every == 5 and fresh.info["init"] == "fresh"
    again = fresh_student(wm, [32, 32], 5, seed=0)
    assert all(np.array_equal(w, w0) for (w, _), (w0, _) in zip(fresh.layers, again.layers, strict=True))
    bank = open_start_bank(wm)
    trained, _ = refit_student(wm, fresh, _Pairs(bank, np.arange(40)), steps=30, batch_size=32,
                               learning_rate=3e-3, refresh=10, progress=False)  # fmt: skip
    states = with_second_plans(wm, fresh, dream_states(wm, _Pairs(bank, np.arange(36))))
    assert _cost(wm, trained, states) < 0.9 * _cost(wm, fresh, states)
    with pytest.raises(ArgumentError, match="hidden must be a list"):
        fresh_student(wm, [], 5, seed=0)
    with pytest.raises(ArgumentError, match="horizon must be an integer >= the model's history"):
        fresh_student(wm, [8], 1, seed=0)
