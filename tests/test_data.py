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
