"""The model that ships inside the package: loads offline, its probe reads the state, it beats copy-last.

Checked on episodes collected fresh here, with a seed the training data never used.
Thresholds: the model card measures position R^2 of 0.91-0.94 on 50 fresh episodes
(3,050 frames) and 0.85-0.94 on the training data's held-out episodes. The test's
12 fresh episodes of 200 steps (~490 frames) are a noisier sample: over five seeds
(2026, 7, 8, 9, 10) the smallest position R^2 was 0.865-0.93. The test asks for 0.8:
clearly useful, and below every measured value. The block angle is not tested: its
R^2 is ~0.1-0.26 (the tiny model barely encodes it; see MODEL_CARD.md).
"""

from __future__ import annotations

import numpy as np
import pytest

import world_models
from leworld_env.sim.collect import CollectConfig, collect
from world_models.evaluate import open_loop_errors, probe_r2
from world_models.locate import DEFAULT_MODEL, SHIPPED_DIR

R2_POSITION_MIN = 0.8  # agent and block x, y


@pytest.fixture(scope="module")
def shipped():
    return world_models.load()


@pytest.fixture(scope="module")
def fresh_episodes(tmp_path_factory, shipped):
    """Fresh episodes of the policy the shipped model trained on, under a seed its data never used."""
    out = tmp_path_factory.mktemp("fresh") / "ds"
    policy = shipped.config.extra["dataset_policy"]
    config = CollectConfig(policy=policy, episodes=12, image_size=64, max_steps=200, seed=2026)
    return collect(config, out, progress=False)


def test_default_model_ships_inside_the_package(shipped):
    assert DEFAULT_MODEL in world_models.shipped_models()
    assert shipped.path == SHIPPED_DIR / DEFAULT_MODEL / "model.lq40"
    folder = shipped.path.parent
    assert (folder / "MODEL_CARD.md").is_file()
    size = sum(p.stat().st_size for p in folder.iterdir())
    assert size < 8 * 2**20, f"shipped model is {size / 2**20:.1f} MiB"


def test_probe_reads_the_state_of_fresh_episodes(shipped, fresh_episodes):
    r2 = probe_r2(shipped, fresh_episodes)
    positions = [r2[f] for f in ("agent_x", "agent_y", "block_x", "block_y")]
    assert min(positions) > R2_POSITION_MIN, r2


def test_shipped_lq40_keeps_the_cosines_the_issue_asks_for(shipped, fresh_episodes):
    """INT8 encoder + Q4_0 predictor (mode full) against the float32 torch model on fresh episodes.
    Measured: encode 0.9975, predict 0.9993 (README); the issue asks >= 0.995 and >= 0.998."""
    from world_models.backends.lq40 import read_lq40
    from world_models.backends.quantize import agreement, held_out_clips

    assert shipped.backend == "numba-q4"
    header, _ = read_lq40(shipped.path)
    assert header["quantization"]["mode"] == "full"
    reference = world_models.load(backend="torch")
    scores = agreement(reference, shipped, *held_out_clips(fresh_episodes, reference.config, clips=256))
    assert scores["encode_cos"] >= 0.995, scores
    assert scores["predict_cos"] >= 0.998, scores


def test_open_loop_beats_copy_last_at_horizons_1_to_5(shipped, fresh_episodes):
    errors = open_loop_errors(shipped, fresh_episodes, horizons=5)
    assert errors["clips"] > 50
    assert np.all(np.array(errors["rollout"]) < np.array(errors["copy_last"])), errors
