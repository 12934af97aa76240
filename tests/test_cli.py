"""The ``leworld`` command: help everywhere, one-line errors, benchmarks that run."""

from __future__ import annotations

import json

import pytest

import agents
from leworld_env.cli import main
from tests.conftest import run_cli
from tests.test_collect import assert_one_line_error

COMMANDS = ["collect", "train", "probe", "quantize", "eval", "train-agent", "play", "bench", "device", "demo"]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_sub_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert f"leworld {command}" in capsys.readouterr().out


def test_unknown_command_is_one_line():
    assert_one_line_error(run_cli("colect"), "invalid choice")


def test_bench_data_reports_ratios(short_dataset, tmp_path):
    out = tmp_path / "bench.json"
    result = run_cli("bench", "data", "--dataset", str(short_dataset), "--batch-size", "32", "--json", str(out))
    assert result.returncode == 0, result.stderr
    rows = {row["name"]: row for row in json.loads(out.read_text())}
    assert rows["gym-pusht step, 96px pixels"]["value"] > 0
    clip_row = next(r for name, r in rows.items() if name.startswith("sample clips (L=4"))
    assert clip_row["value"] > 0 and clip_row["ratio"] > 0
    assert "x gym-pusht drawing" in result.stdout


def test_bench_train_reports_throughput(tmp_path):
    out = tmp_path / "train.json"
    result = run_cli("bench", "train", "--batch-size", "8", "--json", str(out))
    assert result.returncode == 0, result.stderr
    rows = {row["name"]: row for row in json.loads(out.read_text())}
    train_row = next(r for name, r in rows.items() if name.startswith("train step, tiny"))
    assert train_row["unit"] == "clips/s" and train_row["value"] > 0
    assert rows["encode (no grad), frames"]["ratio"] > 0


def test_bench_env_reports_steps_against_gym_pusht(tmp_path):
    out = tmp_path / "env.json"
    result = run_cli("bench", "env", "--quick", "--json", str(out))
    assert result.returncode == 0, result.stderr
    rows = {row["name"]: row for row in json.loads(out.read_text())}
    pixels = rows["gym-pusht, 96x96 pixels (physics steps)"]["value"]
    vector = rows["LeWorld-PushT-v0 vector, 64 envs, numba-q4"]
    assert pixels > 0 and vector["value"] > 0
    assert vector["ratio"] == pytest.approx(vector["value"] / pixels)
    assert "x gym-pusht pixels" in result.stdout


def test_bench_plan_times_decisions_per_backend(tmp_path):
    out = tmp_path / "plan.json"
    result = run_cli("bench", "plan", "--quick", "--json", str(out))
    assert result.returncode == 0, result.stderr
    rows = json.loads(out.read_text())
    backends = {row["name"].rsplit(", ", 1)[1] for row in rows if row["name"].startswith("cem decision")}
    assert backends == {"numba-q4", "numba", "torch"}
    assert all(row["value"] > 0 and row["unit"] == ("ms" if "distilled" in row["name"] else "s") for row in rows)
    # the shipped distilled planner: its plan with and without its refinement, and its decision
    named = {row["name"]: row for row in rows}
    shipped = agents.load_policy("distilled").refinement
    refined = named[f"distilled planner plan (MLP + {shipped.iterations} x {shipped.samples} refinement)"]
    alone = named["distilled planner plan (one MLP pass)"]
    decision = named["distilled planner decision, as shipped (mean over a 10-step LeWM episode, 2 plans)"]
    assert refined["value"] > alone["value"]  # the refinement's rollouts cost something
    # the shipped refinement polishes an episode's first plan only: one refined plan, one MLP plan, 10 steps
    assert decision["value"] == pytest.approx((refined["value"] + alone["value"]) / 10)
