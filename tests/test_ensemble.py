"""Predictor ensembles: heads trained on the model's latents, and the dream's disagreement penalty."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

import leworld_env
from world_models.ensemble import PredictorEnsemble, disagreement
from world_models.errors import LeWorldError
from world_models.lewm.folder import load_model, save_model
from world_models.lewm.heads import train_head
from world_models.locate import SHIPPED_DIR

BASE = SHIPPED_DIR / "pusht-tiny"


def _head(folder, scale: float, seed: int = 0):
    """The shipped model with its predictor's weights perturbed by ``scale`` (0: an exact copy)."""
    model, probe, info = load_model(BASE)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.predictor.parameters():
            parameter.add_(scale * torch.randn(parameter.shape, generator=generator) * parameter.std().nan_to_num())
    save_model(folder, model, probe, info)
    return folder


def _episode(penalty: float, heads, limit=None, steps: int = 4):
    env = gym.make(
        leworld_env.DREAM_ID, backend="numba", goal="dataset", reward="latent", ensemble=heads,
        disagreement_penalty=penalty, disagreement_limit=limit, max_episode_steps=10,
    )  # fmt: skip
    env.reset(seed=3, options={"bank_index": 5})
    rewards, spreads, truncations = [], [], []
    actions = np.random.default_rng(0).uniform(-1, 1, (steps, 2)).astype(np.float32)
    for action in actions:
        _, reward, _, truncated, info = env.step(action)
        rewards.append(reward)
        spreads.append(info["disagreement"])
        truncations.append(truncated)
        if truncated:
            break
    env.close()
    return np.array(rewards), np.array(spreads), truncations


def test_disagreement_penalty_lowers_the_reward_where_the_heads_disagree(tmp_path):
    same = [_head(tmp_path / "copy", 0.0)]
    apart = [_head(tmp_path / "apart", 0.3)]
    plain, spread, _ = _episode(0.0, apart)
    penalised, spread_again, _ = _episode(2.0, apart)
    assert np.all(spread > 0) and np.array_equal(spread, spread_again)
    np.testing.assert_allclose(penalised, plain - 2.0 * spread, rtol=1e-6, atol=1e-6)
    assert np.all(penalised < plain)
    # Heads that agree (an exact copy) cost nothing: the same rewards as without the penalty.
    copy_plain, copy_spread, _ = _episode(0.0, same)
    copy_penalised, _, _ = _episode(2.0, same)
    assert np.all(copy_spread == 0) and np.array_equal(copy_plain, copy_penalised)
    # MOReL's halt: past the limit the episode ends (truncated) at that step.
    _, _, truncations = _episode(0.0, apart, limit=float(spread[0]) / 2)
    assert truncations == [True]


def test_ensemble_settings_are_checked():
    with pytest.raises(ValueError, match="need ensemble"):
        gym.make(leworld_env.DREAM_ID, disagreement_penalty=1.0)
    with pytest.raises(ValueError, match="disagreement_penalty must be"):
        gym.make(leworld_env.DREAM_ID, ensemble=[str(BASE)], disagreement_penalty=-1.0)
    with pytest.raises(ValueError, match="ensemble must be a list"):
        gym.make(leworld_env.DREAM_ID, ensemble=str(BASE))
    with pytest.raises(LeWorldError, match="at least 2 members"):
        PredictorEnsemble([object()])


def test_disagreement_is_the_rms_of_the_members_spread():
    predictions = np.stack([np.zeros((2, 4)), np.ones((2, 4)) * 2])
    np.testing.assert_allclose(disagreement(predictions), [1.0, 1.0])


def test_tiny_ensemble_run_trains_heads_that_predict_the_latents(short_dataset, tmp_path):
    """Two heads trained briefly on the latents of ten short episodes: each predicts them far better
    than it did untrained, they disagree (different seeds and resamples), and the ensemble of the model
    and both heads runs in the dream."""
    from world_models.memory.runtime import encode_dataset

    latents = encode_dataset(short_dataset)
    heads, losses = [], []
    for seed in (1, 2):
        losses.append(train_head(BASE, latents, tmp_path / f"head{seed}", seed, steps=150, batch_size=64))
        heads.append(str(tmp_path / f"head{seed}"))
    untrained = train_head(BASE, latents, tmp_path / "untrained", 3, steps=1, batch_size=64, learning_rate=1e-6)
    for loss in losses:
        assert loss["head"] < 0.5 * untrained["head"]
    _, spread, _ = _episode(1.0, heads)
    assert np.all(spread > 0)
