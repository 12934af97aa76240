"""``leworld collect``: Minari datasets of real PushT, reproducible, written atomically."""

from __future__ import annotations

import json
import os

import h5py
import minari
import numpy as np
import pytest

from leworld_env.sim import collect as collect_module
from leworld_env.sim.collect import CollectConfig, collect
from tests.conftest import run_cli
from world_models.data.dataset import load_dataset_info
from world_models.errors import LeWorldError


def episodes_of(path):
    return list(minari.MinariDataset(path / "data").iterate_episodes())


def test_issue_command_writes_a_dataset_minari_loads(tmp_path):
    out = tmp_path / "ds"
    result = run_cli(
        "collect",
        "--episodes",
        "4",
        "--policy",
        "weak-expert",
        "--image-size",
        "64",
        "--seed",
        "0",
        "--out",
        str(out),
        "--quiet",
    )
    assert result.returncode == 0, result.stderr
    assert "wrote 4 episodes" in result.stdout
    dataset = minari.MinariDataset(out / "data")
    assert dataset.total_episodes == 4
    assert dataset.spec.dataset_id == "leworld-pusht-weak-expert-v0"
    for episode in dataset.iterate_episodes():
        steps = len(episode.actions)
        assert 0 < steps <= 300
        obs = episode.observations
        assert obs["pixels"].shape == (steps + 1, 64, 64, 3) and obs["pixels"].dtype == np.uint8
        assert obs["agent_pos"].shape == (steps + 1, 2)
        assert obs["agent_vel"].shape == (steps + 1, 2)
        assert obs["block_pose"].shape == (steps + 1, 3)
        assert episode.actions.shape == (steps, 2) and np.all(np.abs(episode.actions) <= 1.0)
        assert episode.infos["coverage"].shape == (steps + 1,)
        assert np.all((episode.infos["coverage"] >= 0.0) & (episode.infos["coverage"] <= 1.0))
        assert episode.infos["target"].shape == (steps + 1, 2)
        assert episode.truncations[-1] or episode.terminations[-1]
        # The frames are real renderings that change as the agent moves.
        assert obs["pixels"][0].std() > 0 and np.any(obs["pixels"][0] != obs["pixels"][-1])
    meta = json.loads((out / "data" / "metadata.json").read_text())["leworld"]
    assert meta["policy"] == "weak-expert" and meta["frameskip"] == 5 and meta["image_size"] == 64
    assert meta["seed"] == 0 and meta["version"]


def test_actions_are_held_for_frameskip_steps(weak_expert_dataset):
    for episode in episodes_of(weak_expert_dataset):
        holds = episode.actions[: len(episode.actions) // 5 * 5].reshape(-1, 5, 2)
        assert np.all(holds == holds[:, :1])
        assert len(np.unique(holds[:, 0], axis=0)) > 1


def test_same_seed_same_data_whatever_the_workers(weak_expert_dataset, tmp_path):
    again = collect(
        CollectConfig(policy="weak-expert", episodes=4, image_size=64, seed=0),
        tmp_path / "again",
        workers=2,
        progress=False,
    )
    for a, b in zip(episodes_of(weak_expert_dataset), episodes_of(again), strict=True):
        assert a.id == b.id
        for key in a.observations:
            np.testing.assert_array_equal(a.observations[key], b.observations[key])
        np.testing.assert_array_equal(a.actions, b.actions)
        np.testing.assert_array_equal(a.rewards, b.rewards)
        np.testing.assert_array_equal(a.infos["coverage"], b.infos["coverage"])


def test_another_seed_gives_other_data(short_dataset, tmp_path):
    other = collect(
        CollectConfig(policy="weak-expert", episodes=2, image_size=64, max_steps=60, seed=2),
        tmp_path / "other",
        progress=False,
    )
    a, b = episodes_of(short_dataset)[0], episodes_of(other)[0]
    assert not np.array_equal(a.actions, b.actions)


def test_weak_expert_data_is_full_of_contacts(weak_expert_dataset, tmp_path):
    random = collect(
        CollectConfig(policy="random", episodes=4, image_size=64, seed=0), tmp_path / "random", progress=False
    )
    expert_contact = np.mean(np.concatenate([e.infos["contact"] for e in episodes_of(weak_expert_dataset)]))
    random_contact = np.mean(np.concatenate([e.infos["contact"] for e in episodes_of(random)]))
    assert expert_contact > 0.2
    assert expert_contact > 3 * random_contact
    moved = [
        np.linalg.norm(e.observations["block_pose"][-1, :2] - e.observations["block_pose"][0, :2])
        for e in episodes_of(weak_expert_dataset)
    ]
    assert max(moved) > 50.0


def test_recorded_state_replays_on_gym_pusht(weak_expert_dataset):
    """The dataset is real physics: replaying its targets from its start reproduces it."""
    from leworld_env.sim.pusht_sim import PushTSim

    episode = episodes_of(weak_expert_dataset)[1]
    sim = PushTSim(64)
    sim.reset(seed=int(h5py.File(weak_expert_dataset / "data" / "main_data.hdf5")["episode_1"].attrs["seed"]))
    np.testing.assert_array_equal(sim.agent_pos, episode.observations["agent_pos"][0])
    for t in range(40):
        sim.physics_step(episode.infos["target"][t + 1])
    np.testing.assert_array_equal(sim.block_pose, episode.observations["block_pose"][40])
    np.testing.assert_array_equal(sim.frame(), episode.observations["pixels"][40])


# ------------------------------------------------------------------ bad input
def assert_one_line_error(result, *fragments):
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_unknown_policy(tmp_path):
    result = run_cli("collect", "--policy", "oracle", "--episodes", "1", "--out", str(tmp_path / "x"))
    assert_one_line_error(result, "unknown policy 'oracle'", "random", "weak-expert")
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("episodes", ["0", "-3"])
def test_episodes_must_be_positive(tmp_path, episodes):
    result = run_cli("collect", "--episodes", episodes, "--out", str(tmp_path / "x"))
    assert_one_line_error(result, "--episodes", "at least 1", episodes)


def test_unwritable_output(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    result = run_cli("collect", "--episodes", "1", "--max-steps", "10", "--out", str(blocker / "ds"))
    assert_one_line_error(result, "--out", str(blocker), "is a file, not a folder")
    result = run_cli("collect", "--episodes", "1", "--max-steps", "10", "--out", str(blocker / "deeper" / "ds"))
    assert_one_line_error(result, "--out", str(blocker))
    result = run_cli("collect", "--episodes", "1", "--max-steps", "10", "--out", str(blocker), "--overwrite")
    assert_one_line_error(result, "--out", str(blocker), "not a folder")
    assert blocker.read_text() == "not a folder"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through folder permissions")
def test_read_only_folder(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    result = run_cli("collect", "--episodes", "1", "--max-steps", "10", "--out", str(locked / "ds"))
    assert_one_line_error(result, "--out", str(locked), "not writable")


def test_missing_parent_folders_are_created(tmp_path):
    out = tmp_path / "new" / "nested" / "ds"
    result = run_cli("collect", "--episodes", "1", "--max-steps", "10", "--image-size", "64", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert load_dataset_info(out).total_episodes == 1


def test_existing_dataset_needs_overwrite(tmp_path):
    out = tmp_path / "ds"
    args = ("collect", "--episodes", "1", "--max-steps", "10", "--image-size", "64", "--quiet", "--out", str(out))
    assert run_cli(*args).returncode == 0
    before = (out / "data" / "main_data.hdf5").stat().st_mtime_ns
    assert_one_line_error(run_cli(*args), "exists and is not empty", "--overwrite")
    assert (out / "data" / "main_data.hdf5").stat().st_mtime_ns == before
    result = run_cli(*args, "--overwrite", "--seed", "5")
    assert result.returncode == 0, result.stderr
    assert load_dataset_info(out).seed == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


def test_failure_mid_collection_leaves_nothing(tmp_path, monkeypatch):
    real = collect_module.collect_episode

    def failing(config, index):
        if index == 3:
            raise KeyboardInterrupt
        return real(config, index)

    monkeypatch.setattr(collect_module, "collect_episode", failing)
    with pytest.raises(KeyboardInterrupt):
        collect(CollectConfig(episodes=5, image_size=64, max_steps=10), tmp_path / "ds", progress=False)
    assert list(tmp_path.iterdir()) == []


def test_bad_config_values_are_named():
    with pytest.raises(LeWorldError, match="max steps"):
        CollectConfig(max_steps=3, frameskip=5).validate()
    with pytest.raises(LeWorldError, match="image size"):
        CollectConfig(image_size=4).validate()
