"""The training clip loader: model steps, episode splits, seeds, bad datasets."""

from __future__ import annotations

import shutil

import minari
import numpy as np
import pytest

from tests.conftest import run_cli
from tests.test_collect import assert_one_line_error
from world_models.data.dataset import PushTClips, load_dataset_info, split_episodes
from world_models.errors import DatasetError


def test_clips_are_model_steps_of_one_episode(short_dataset):
    clips = PushTClips(short_dataset, history=3, num_preds=1, split="all", seed=0)
    episodes = list(minari.MinariDataset(short_dataset / "data").iterate_episodes())
    batch = clips.sample(32)
    assert batch.pixels.shape == (32, 4, 64, 64, 3) and batch.pixels.dtype == np.uint8
    assert batch.actions.shape == (32, 4, 2) and not np.isnan(batch.actions).any()
    assert batch.state.shape == (32, 4, 5)
    fs = clips.frameskip
    for i in range(32):
        episode = episodes[batch.episode[i]]
        physics = (batch.start[i] + np.arange(4)) * fs
        np.testing.assert_array_equal(batch.pixels[i], episode.observations["pixels"][physics])
        np.testing.assert_array_equal(batch.actions[i], episode.actions[physics])
        np.testing.assert_allclose(batch.state[i, :, 2:], episode.observations["block_pose"][physics], rtol=1e-6)


def test_every_clip_fits_in_its_episode(short_dataset):
    clips = PushTClips(short_dataset, history=2, num_preds=2, split="all")
    # 60 physics steps, frameskip 5: 12 actions, so 12 - 4 + 1 = 9 clips per full episode.
    lengths = [len(e.actions) for e in minari.MinariDataset(short_dataset / "data").iterate_episodes()]
    assert len(clips) == sum(max(0, n // 5 - 4 + 1) for n in lengths)
    seen = {(int(b.episode[j]), int(b.start[j])) for b in clips.epoch(7) for j in range(len(b.episode))}
    assert len(seen) == len(clips)


def test_train_and_val_split_by_episode(short_dataset):
    train = PushTClips(short_dataset, split="train", val_fraction=0.2, split_seed=3)
    val = PushTClips(short_dataset, split="val", val_fraction=0.2, split_seed=3)
    assert set(train.episode_ids).isdisjoint(val.episode_ids)
    assert sorted([*train.episode_ids, *val.episode_ids]) == list(range(10))
    assert len(val.episode_ids) == 2
    assert set(np.unique(val.sample(64).episode)) <= set(val.episode_ids)
    train_ids, val_ids = split_episodes(2, 0.01, 0)
    assert len(train_ids) == 1 and len(val_ids) == 1


def test_sampling_follows_the_seed(short_dataset):
    a = PushTClips(short_dataset, split="all", seed=4).sample(16)
    b = PushTClips(short_dataset, split="all", seed=4).sample(16)
    c = PushTClips(short_dataset, split="all", seed=5).sample(16)
    np.testing.assert_array_equal(a.pixels, b.pixels)
    assert not np.array_equal(a.start * 100 + a.episode, c.start * 100 + c.episode)


def test_to_torch_keeps_values(short_dataset):
    import torch

    batch = PushTClips(short_dataset, split="all").sample(4)
    tensors = batch.to_torch()
    assert tensors["pixels"].dtype == torch.uint8
    np.testing.assert_array_equal(tensors["actions"].numpy(), batch.actions)


def test_clips_longer_than_every_episode(short_dataset):
    with pytest.raises(DatasetError, match="long enough"):
        PushTClips(short_dataset, history=10, num_preds=5, split="all")


def test_missing_and_foreign_datasets(tmp_path):
    with pytest.raises(DatasetError, match="no such dataset"):
        load_dataset_info(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="not a Minari dataset"):
        load_dataset_info(tmp_path / "empty")


def test_truncated_dataset(short_dataset, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(short_dataset, broken)
    h5 = broken / "data" / "main_data.hdf5"
    h5.write_bytes(h5.read_bytes()[: h5.stat().st_size // 2])
    with pytest.raises(DatasetError, match="truncated or corrupt"):
        PushTClips(broken, split="all")
    result = run_cli("bench", "data", "--dataset", str(broken))
    assert_one_line_error(result, str(h5), "truncated or corrupt")


def test_corrupt_metadata(short_dataset, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(short_dataset, broken)
    (broken / "data" / "metadata.json").write_text('{"total_episodes": 3, "leworld": ')
    with pytest.raises(DatasetError, match="unreadable metadata"):
        PushTClips(broken)
    (broken / "data" / "metadata.json").write_text('{"total_episodes": 3}')
    with pytest.raises(DatasetError, match="not written by leworld collect"):
        PushTClips(broken)


def test_example_script_runs(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "examples" / "collect_and_sample.py"
    result = subprocess.run(
        [sys.executable, str(script), "--out", str(tmp_path / "ex"), "--episodes", "2"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "clips of 4 model steps" in result.stdout
    assert (tmp_path / "ex" / "data" / "main_data.hdf5").is_file()


# ------------------------------------------------------------------ damaged datasets: DatasetError naming the field
def damaged_copy(source, tmp_path, name="damaged"):
    folder = tmp_path / name
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(source, folder)
    return folder


@pytest.mark.parametrize(
    ("edit", "fragment"),
    [
        (lambda meta: [meta], "expected a JSON object"),
        (lambda meta: {**meta, "total_episodes": float("inf")}, "total_episodes"),
        (lambda meta: {**meta, "total_episodes": "10"}, "total_episodes"),
        (lambda meta: {**meta, "total_steps": -1}, "total_steps"),
        (lambda meta: {**meta, "leworld": {**meta["leworld"], "image_size": 64.5}}, "leworld.image_size"),
        (lambda meta: {**meta, "leworld": {**meta["leworld"], "image_size": True}}, "leworld.image_size"),
        (lambda meta: {**meta, "leworld": {**meta["leworld"], "frameskip": None}}, "leworld.frameskip"),
        (lambda meta: {**meta, "leworld": {**meta["leworld"], "action_scale": float("nan")}}, "action_scale"),
        (lambda meta: {**meta, "leworld": {**meta["leworld"], "action_scale": -3}}, "action_scale"),
        (lambda meta: {**meta, "leworld": {**meta["leworld"], "policy": 7}}, "leworld.policy"),
        (lambda meta: {k: v for k, v in meta.items() if k != "total_steps"}, "missing field total_steps"),
        (lambda meta: {**meta, "leworld": {k: v for k, v in meta["leworld"].items() if k != "seed"}}, "seed"),
    ],
)
def test_damaged_metadata_names_the_field(short_dataset, tmp_path, edit, fragment):
    import json

    folder = damaged_copy(short_dataset, tmp_path)
    path = folder / "data" / "metadata.json"
    path.write_text(json.dumps(edit(json.loads(path.read_text()))))
    with pytest.raises(DatasetError, match=r"metadata\.json") as caught:
        load_dataset_info(folder)
    assert fragment in str(caught.value)


def test_deeply_nested_metadata_is_a_dataset_error(short_dataset, tmp_path):
    folder = damaged_copy(short_dataset, tmp_path)
    (folder / "data" / "metadata.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(DatasetError, match=r"metadata\.json"):
        load_dataset_info(folder)


def _rewrite(folder, episode, field, make):
    """Replace ``episode_E/FIELD`` of the HDF5 file with ``make(h5_group, name, old_dataset)``."""
    import h5py

    with h5py.File(folder / "data" / "main_data.hdf5", "r+") as f:
        group_name, name = (f"episode_{episode}/{field}").rsplit("/", 1)
        group = f[group_name]
        old = group[name][()]
        del group[name]
        make(group, name, old)


@pytest.mark.parametrize(
    ("field", "make", "fragment"),
    [
        ("observations/pixels", lambda g, n, old: g.create_dataset(n, data=old[:, :32]), "pixels"),
        ("observations/pixels", lambda g, n, old: g.create_dataset(n, data=old.astype(np.float32)), "pixels"),
        ("observations/agent_pos", lambda g, n, old: g.create_dataset(n, data=old[:-3]), "agent_pos"),
        ("observations/block_pose", lambda g, n, old: g.create_dataset(n, data=old.astype("S8")), "block_pose"),
        ("observations/agent_vel", lambda g, n, old: g.create_group(n), "agent_vel"),
        ("actions", lambda g, n, old: g.create_dataset(n, data=old[:, :1]), "actions"),
        # A declared size far beyond the file (chunked, never written): refused before any read.
        ("actions", lambda g, n, old: g.create_dataset(n, shape=(10**12, 2), dtype="f4", chunks=(1024, 2)), "actions"),
        ("actions", lambda g, n, old: g.create_dataset(n, data=np.full_like(old, np.nan)), "NaN"),
    ],
)
def test_damaged_episode_arrays_name_the_field(short_dataset, tmp_path, field, make, fragment):
    from world_models.data.dataset import read_episode

    folder = damaged_copy(short_dataset, tmp_path)
    _rewrite(folder, 0, field, make)
    with pytest.raises(DatasetError, match=r"main_data\.hdf5") as caught:
        PushTClips(folder, split="all")
    assert fragment in str(caught.value)
    if "pixels" not in field:
        with pytest.raises(DatasetError, match=fragment):
            read_episode(folder, 0)


def test_a_missing_episode_group_is_named(short_dataset, tmp_path):
    import h5py

    folder = damaged_copy(short_dataset, tmp_path)
    with h5py.File(folder / "data" / "main_data.hdf5", "r+") as f:
        del f["episode_3"]
    with pytest.raises(DatasetError, match="episode_3"):
        PushTClips(folder, split="all")
