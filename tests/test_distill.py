"""The distilled planner: CEM's plans learnt by a network in the dream, judged on real physics."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import agents
import world_models
from agents.distill import (
    DistillConfig,
    DistilledPlanner,
    LabellingCEM,
    Refinement,
    distill,
    feature_width,
    load_distilled,
    load_labels,
    plan_features,
    planning_cost_fn,
    save_distilled,
)
from agents.evaluate import evaluate, load_agent
from agents.planning import RandomAgent
from tests.conftest import run_cli
from tests.test_collect import assert_one_line_error
from world_models.errors import ArgumentError, LeWorldError

TINY_TEACHER = {"horizon": 5, "samples": 32, "topk": 4, "iterations": 3, "replan_every": 5}


@pytest.fixture(scope="module")
def wm():
    return world_models.load()


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("distill") / "run"
    config = DistillConfig(
        out=out, bank_episodes=6, episodes_per_round=[40, 20], teacher=dict(TINY_TEACHER), hidden=[128],
        fit_steps=150, batch_size=32, cost_weight=20.0, jobs_per_round=2, workers=1, progress=False,
        refine={"iterations": 1, "samples": 8, "topk": 2, "std": 0.2},
    )  # fmt: skip
    return config, distill(config)


def _random_weights(config, horizon: int, hidden: int = 16, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    width = feature_width(config.history, config.latent_dim, config.action_dim)
    return {
        "layer0.weight": rng.normal(0, 0.1, (hidden, width)).astype(np.float32),
        "layer0.bias": np.zeros(hidden, np.float32),
        "layer1.weight": rng.normal(0, 0.1, (horizon * config.action_dim, hidden)).astype(np.float32),
        "layer1.bias": np.zeros(horizon * config.action_dim, np.float32),
    }


def test_tiny_distillation_labels_fits_and_beats_random_on_real_episodes(wm, tiny_run):
    """Two rounds (the teacher drives, then the student): two labels an episode (LeWM's schedule: 2
    plans of 5 actions in 10 steps); the student's plans cost less (CEM's cost, through the model) on
    the labelled states than the data's mean action does; on real
    physics it ends nearer the goal latent (the teacher's cost) than random actions on the same episodes.
    (A run this small does not yet move the block better than random: 58 px against 42 px, measured.)"""
    config, final = tiny_run
    first, second = (load_labels(config.out / f"labels_round{k}.safetensors") for k in (0, 1))
    assert len(first["plan"]) == 2 * 40 and len(second["plan"]) == 2 * 20
    assert set(first["episode"]).isdisjoint(second["episode"])
    student = load_distilled(final, wm)
    assert student.refinement == Refinement(iterations=1, samples=8, topk=2, std=0.2)  # the YAML's refine
    assert load_distilled(config.out / "round1", wm).refinement is None  # a round's student is the MLP
    labels = {k: np.concatenate([first[k], second[k]]) for k in first}
    predicted = student.plans(plan_features(labels["z"], labels["a"], labels["goal"]))
    cost = planning_cost_fn(wm, student.action_mean, student.action_std, 5)
    states = [torch.from_numpy(labels[k]) for k in ("z", "a", "goal")]
    with torch.no_grad():
        student_cost = float(cost(*states, torch.from_numpy(predicted.reshape(len(predicted), -1))))
        mean_action_cost = float(cost(*states, torch.zeros(len(predicted), 10)))  # the data's mean action
    assert student_cost < mean_action_cost
    episodes = 6
    distilled = evaluate(student, "distilled", "real", "lewm", episodes, 0, progress=False)
    random = evaluate(RandomAgent(seed=0), "random", "real", "lewm", episodes, 0, progress=False)
    latent = np.mean([r.final_latent_distance for r in distilled.results])
    assert latent < np.mean([r.final_latent_distance for r in random.results])
    assert distilled.plans == 2 * episodes  # it plans on the teacher's schedule


def test_distillation_resumes_from_its_rounds(tiny_run):
    """A rerun in the same folder reuses the labelled rounds (nothing is labelled again): same labels,
    same student."""
    config, final = tiny_run
    before = {p.name: p.stat().st_mtime_ns for p in config.out.glob("labels_round*.safetensors")}
    weights = (final / "policy.safetensors").read_bytes()
    again = distill(config)
    assert {p.name: p.stat().st_mtime_ns for p in config.out.glob("labels_round*.safetensors")} == before
    assert (again / "policy.safetensors").read_bytes() == weights


def test_dagger_executes_the_students_plan_and_records_the_teachers(wm):
    student = DistilledPlanner(wm, _random_weights(wm.config, 5), horizon=5)
    teacher = LabellingCEM(wm, student=student, samples=16, topk=4, iterations=2, seed=0)
    z = np.random.default_rng(0).normal(size=64).astype(np.float32)
    goal = np.random.default_rng(1).normal(size=64).astype(np.float32)
    env = teacher._start(z, goal, np.zeros(4, np.float32))
    executed = teacher._plan(env)
    np.testing.assert_array_equal(executed, student.plan_for(env))
    recorded = teacher.records[0][3]
    assert recorded.shape == (5, 2) and not np.array_equal(recorded, executed)


def test_distilled_planner_files_round_trip_and_refuse_bad_ones(wm, tmp_path):
    student = DistilledPlanner(wm, _random_weights(wm.config, 5), horizon=5, info={"note": "random"})
    folder = save_distilled(student, tmp_path / "student")
    loaded = load_distilled(folder, wm)
    features = np.random.default_rng(0).normal(size=(3, feature_width(3, 64, 2))).astype(np.float32)
    np.testing.assert_array_equal(loaded.plans(features), student.plans(features))
    assert loaded.info == {"note": "random"} and loaded.replan_every == 5
    # A flipped weight, a wrong format, a model of another latent width: errors naming the file.
    data = json.loads((folder / "policy.json").read_text())
    (folder / "policy.json").write_text(json.dumps({**data, "weights_sha256": "0" * 64}))
    with pytest.raises(LeWorldError, match=r"policy\.safetensors"):
        load_distilled(folder, wm)
    (folder / "policy.json").write_text(json.dumps({**data, "format": "other"}))
    with pytest.raises(LeWorldError, match="expected format"):
        load_distilled(folder, wm)
    (folder / "policy.json").write_text(json.dumps(data))
    narrow = _random_weights(type("C", (), {"history": 3, "latent_dim": 32, "action_dim": 2})(), 5)
    with pytest.raises(LeWorldError, match="use the world model it was distilled from"):
        DistilledPlanner(wm, narrow, horizon=5)


def test_shipped_distilled_planner_wins_real_episodes(wm):
    """``agents.load_policy("distilled")`` loads the student shipped beside the model with its refinement,
    offline; on the strict LeWM test it wins held-out real episodes where random actions win fewer.
    Measured on these 8 episodes: refined student 6/8, random 1/8 (72 % and 6 % over 50, docs/results.md)."""
    policy = agents.load_policy("distilled")
    assert isinstance(policy, DistilledPlanner)
    assert policy.refinement == Refinement(iterations=6, samples=32, topk=4, std=0.4, plans=1, noise_exponent=2.0)
    episodes = 8
    distilled = evaluate(policy, "distilled", "real", "lewm", episodes, 0, progress=False)
    random = evaluate(RandomAgent(seed=0), "random", "real", "lewm", episodes, 0, progress=False)
    assert distilled.success_rate >= 3 / 8
    assert distilled.success_rate > random.success_rate


def test_leworld_eval_runs_the_distilled_planner(tmp_path):
    out = tmp_path / "eval.json"
    done = run_cli("eval", "--agent", "distilled", "--episodes", "2", "--json", str(out))
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    assert result["agent"] == "distilled" and result["replan_every"] == 5 and result["plans"] == 4
    # the shipped refinement polishes each episode's first plan: that decision, the longest, is many means long
    assert result["max_decision_seconds"] > 3 * result["mean_decision_seconds"]
    assert_one_line_error(
        run_cli("eval", "--agent", "distilled", "--horizon", "4", "--episodes", "1"), "options horizon apply to cem"
    )
    assert_one_line_error(
        run_cli("eval", "--agent", "distilled", "--samples", "1", "--episodes", "1"), "refinement samples must be >= 2"
    )
    assert_one_line_error(
        run_cli("eval", "--agent", "cem", "--refine-plans", "1", "--episodes", "1"),
        "--refine-plans applies to a distilled planner",
    )
    refused = run_cli("eval", "--agent", "distilled", "--refine-plans", "0", "--episodes", "1")
    assert refused.returncode != 0 and "expected a positive integer or 'all', got '0'" in refused.stderr


def _bank_state(wm, student, index: int = 0) -> dict:
    """A planning state of ``student`` at the start of real bank pair ``index`` (history = the start repeated)."""
    from leworld_env.envs.task import draw_frames, open_start_bank

    bank = open_start_bank(wm)
    z = wm.encode(draw_frames(np.stack([bank.start[index], bank.goal[index]]), wm.config.image_size))
    return student._start(z[0], z[1], np.zeros(4, np.float32))


def test_refinement_finds_plans_the_model_rates_cheaper(wm):
    """The refinement's plan never costs more than the student's own (it competes in every round); from a
    random, untrained student it finds far cheaper ones on real bank states; the same seed gives the same
    plan."""
    refinement = Refinement(iterations=2, samples=16, topk=4, std=0.5)
    student = DistilledPlanner(wm, _random_weights(wm.config, 5), horizon=5, refinement=refinement, seed=3)
    gains = []
    for index in range(4):
        env = _bank_state(wm, student, index)
        own = student.plan_for(env)
        refined = student._plan(env)
        own_cost, refined_cost = student.standardised_costs(env, np.stack([own, refined]))
        assert refined_cost <= own_cost
        gains.append(own_cost - refined_cost)
    assert np.mean(gains) > 0  # it found better plans, not only kept the student's
    again = DistilledPlanner(wm, _random_weights(wm.config, 5), horizon=5, refinement=refinement, seed=3)
    env = _bank_state(wm, again, 0)
    first = DistilledPlanner(wm, _random_weights(wm.config, 5), horizon=5, refinement=refinement, seed=3)
    np.testing.assert_array_equal(again._plan(env), first._plan(_bank_state(wm, first, 0)))


def test_refinement_of_an_episodes_first_plans_only(wm):
    """``plans=1`` refines an episode's first plan and runs the later ones as the student made them;
    a new episode refines its first plan again; ``plans=None`` refines every plan."""
    from leworld_env.envs.task import draw_frames, goal_vectors, open_start_bank

    bank = open_start_bank(wm)
    z = wm.encode(draw_frames(np.stack([bank.start[0], bank.goal[0]]), wm.config.image_size))
    obs = {
        "achieved_goal": goal_vectors(z[:1], bank.start[:1, 2:5])[0],
        "desired_goal": goal_vectors(z[1:], bank.goal[:1, 2:5])[0],
    }
    for plans, expected in ((1, [True, False, False, True, False, False]), (None, [True] * 6)):
        student = DistilledPlanner(
            wm, _random_weights(wm.config, 5), horizon=5, refinement=Refinement(1, 8, 2, 0.5, plans), seed=3
        )
        refined = []
        student.refine = lambda env, plan, calls=refined: calls.append(env["plans"]) or plan
        for step in range(30):  # two episodes of 15 steps: 3 plans each
            student.predict(obs, episode_start=np.array([step % 15 == 0]))
        assert len(student.plan_seconds) == 6
        assert [student.refines(k) for k in (0, 1, 2)] == expected[:3]
        assert len(refined) == sum(expected) and set(refined) <= ({0} if plans == 1 else {0, 1, 2})


def test_refinement_noise_is_white_as_before_or_coloured_along_the_plan(wm):
    """``noise_exponent`` 0 draws the very samples the refinement drew before the field existed (mean
    first, then mean + std x the generator's standard normals, clipped); 2 draws noise correlated along
    the plan (lag-one correlation ~0.3 over 5 steps, against ~0 for white)."""
    student = DistilledPlanner(wm, _random_weights(wm.config, 5), horizon=5, seed=0)
    mean, std = np.zeros((5, 2), np.float32), np.full((5, 2), 0.3, np.float32)
    white = student._sample(mean, std, 256)
    expected = student._clip(mean + std * np.random.default_rng(0).standard_normal((256, 5, 2)).astype(np.float32))
    np.testing.assert_array_equal(white[1:], expected[1:])
    np.testing.assert_array_equal(white[0], mean)
    coloured = student._sample(mean, std, 2048, noise_exponent=2.0)
    assert np.all(coloured[0] == mean)

    def lag_one(x):  # correlation of each action with the next, over samples and action dimensions
        return np.corrcoef(x[1:, :-1].ravel(), x[1:, 1:].ravel())[0, 1]

    assert abs(lag_one(student._sample(mean, std, 2048))) < 0.05 and lag_one(coloured) > 0.2
    with pytest.raises(ArgumentError, match="noise_exponent must be a number in"):
        Refinement(noise_exponent=-1)


def test_refinement_round_trips_and_bad_fields_name_the_file(wm, tmp_path):
    refinement = Refinement(iterations=3, samples=20, topk=5, std=0.25, plans=1, noise_exponent=2.0)
    student = DistilledPlanner(wm, _random_weights(wm.config, 5), horizon=5, refinement=refinement)
    folder = save_distilled(student, tmp_path / "student")
    assert load_distilled(folder, wm).refinement == refinement
    data = json.loads((folder / "policy.json").read_text())
    for bad, fragment in (
        ({"iterations": 0}, "refinement iterations must be a positive integer"),
        ({"samples": 4, "topk": 6}, "topk must be <= samples"),
        ({"std": -1}, "std must be a number > 0"),
        ({"plans": 0}, "refinement plans must be a positive integer or null"),
        ({"noise_exponent": "pink"}, "noise_exponent must be a number"),
        ({"sigma": 1}, "field 'refine' must be an object"),
    ):
        (folder / "policy.json").write_text(json.dumps({**data, "refine": bad}))
        with pytest.raises(LeWorldError, match=fragment) as caught:
            load_distilled(folder, wm)
        assert "policy.json" in str(caught.value)
    old = {k: v for k, v in data["refine"].items() if k != "noise_exponent"}  # a file from before the field
    (folder / "policy.json").write_text(json.dumps({**data, "refine": old}))
    assert load_distilled(folder, wm).refinement == Refinement(3, 20, 5, 0.25, 1, noise_exponent=0.0)
    (folder / "policy.json").write_text(json.dumps({**data, "refine": None}))
    assert load_distilled(folder, wm).refinement is None
    # --iterations / --samples set the refinement of a loaded student (top-k an eighth of the samples)
    agent = load_agent(str(folder), wm, iterations=4, samples=40)
    assert agent.refinement == Refinement(iterations=4, samples=40, topk=5, std=0.2)
    # --refine-plans: how many of an episode's plans the refinement polishes ("all": every one)
    assert load_agent(str(folder), wm, refine_plans=2).refinement == Refinement(plans=2)
    assert load_agent(str(folder), wm, refine_plans="all").refinement.plans is None
    with pytest.raises(LeWorldError, match="--refine-plans applies to a distilled planner"):
        load_agent("cem", wm, refine_plans=1)


def test_distilled_needs_one_beside_the_model(tmp_path):
    """A model folder of the user's without a distilled planner: a clear error, not another model's student."""
    import shutil

    from world_models.locate import SHIPPED_DIR

    model = tmp_path / "model"
    shutil.copytree(SHIPPED_DIR / "pusht-tiny", model, ignore=shutil.ignore_patterns("distilled"))
    with pytest.raises(LeWorldError, match="no distilled planner beside this model"):
        load_agent("distilled", world_models.load(model))
