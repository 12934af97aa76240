"""Model folders and the runtime interface: round trips, bad files, bad inputs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import world_models
from tests.test_lewm import SMALL, small_model
from world_models.errors import LeWorldError
from world_models.lewm.folder import load_model, save_model
from world_models.lewm.probe import Probe, fit_probe, r2_per_field, state_to_targets, targets_to_state


@pytest.fixture
def model_dir(tmp_path):
    model = small_model().eval()
    probe = Probe(SMALL.latent_dim, hidden=32)
    save_model(tmp_path / "m", model, probe, {"r2_val": {}})
    return tmp_path / "m"


def frames(n: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 64, 64, 3), dtype=np.uint8)


def test_round_trip_gives_the_same_outputs(model_dir):
    model = small_model().eval()
    wm = world_models.load(model_dir, backend="torch")
    px = frames()
    np.testing.assert_allclose(wm.encode(px), model.encode(torch.from_numpy(px)).detach().numpy(), rtol=1e-6)
    z = np.random.default_rng(1).normal(size=(3, 3, SMALL.latent_dim)).astype(np.float32)
    a = np.random.default_rng(2).uniform(-1, 1, (3, 3, 2)).astype(np.float32)
    expected = model.predict(torch.from_numpy(z), torch.from_numpy(a)).detach().numpy()
    np.testing.assert_allclose(wm.predict(z, a), expected, rtol=1e-5, atol=1e-6)
    roll = wm.rollout(z, a, a[:, :2])
    assert roll.shape == (3, 2, SMALL.latent_dim)
    np.testing.assert_allclose(roll[:, 0], expected, rtol=1e-5, atol=1e-6)
    state = wm.probe(z[:, 0])
    assert state.shape == (3, 5) and np.all((state[:, 4] >= 0) & (state[:, 4] < 2 * np.pi))


def test_missing_and_misshapen_tensors_are_named(model_dir):
    tensors = load_file(model_dir / "model.safetensors")
    name = "predictor.blocks.0.attn.qkv.weight"
    save_file({k: v for k, v in tensors.items() if k != name}, model_dir / "model.safetensors")
    with pytest.raises(LeWorldError, match=f"missing tensors: {name}"):
        load_model(model_dir)
    tensors[name] = torch.zeros(3, 3)
    save_file(tensors, model_dir / "model.safetensors")
    with pytest.raises(LeWorldError, match="shapes that do not fit"):
        load_model(model_dir)
    (model_dir / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(LeWorldError, match="not a readable safetensors file"):
        load_model(model_dir)


def test_config_that_does_not_fit_the_weights(model_dir):
    config = json.loads((model_dir / "config.json").read_text())
    (model_dir / "config.json").write_text(json.dumps({**config, "latent_dim": 32}))
    with pytest.raises(LeWorldError, match="shapes that do not fit"):
        load_model(model_dir)
    (model_dir / "config.json").write_text(json.dumps({**config, "wings": 2}))
    with pytest.raises(LeWorldError, match="unknown field"):
        load_model(model_dir)


@pytest.mark.parametrize("backend", ["torch", "numba"])
def test_bad_runtime_inputs(model_dir, backend):
    wm = world_models.load(model_dir, backend=backend)
    with pytest.raises(ValueError, match="uint8"):
        wm.encode(frames().astype(np.float32))
    with pytest.raises(ValueError, match=r"\[B, 64, 64, 3\]"):
        wm.encode(np.zeros((2, 96, 96, 3), np.uint8))
    z = np.zeros((2, 3, SMALL.latent_dim), np.float32)
    a = np.zeros((2, 3, 2), np.float32)
    bad = a.copy()
    bad[0, 1, 0] = np.nan
    with pytest.raises(ValueError, match="a_hist holds NaN"):
        wm.predict(z, bad)
    with pytest.raises(ValueError, match="z_hist must have shape"):
        wm.predict(z[..., :5], a)
    with pytest.raises(ValueError, match="must agree"):
        wm.predict(z, a[:1])
    with pytest.raises(ValueError, match="z holds NaN"):
        wm.probe(np.full((1, SMALL.latent_dim), np.inf, np.float32))


def test_default_backend_is_numba_q4_with_an_lq40_else_numba(model_dir):
    assert world_models.load(model_dir).backend == "numba"  # a freshly trained folder: no model.lq40
    assert world_models.load().backend == "numba-q4"  # the shipped model carries one


def test_unknown_names_and_backends(model_dir):
    with pytest.raises(LeWorldError, match=r"unknown backend 'cuda'.*numba-q4"):
        world_models.load(model_dir, backend="cuda")
    with pytest.raises(LeWorldError, match="backend 'esp32' needs port="):
        world_models.load(model_dir, backend="esp32")
    with pytest.raises(LeWorldError, match=r"no model\.lq40 for backend 'numba-q4'; make one with leworld quantize"):
        world_models.load(model_dir, backend="numba-q4")
    with pytest.raises(LeWorldError, match="no model 'nope'"):
        world_models.load("nope")


def test_probe_targets_round_trip_and_r2():
    state = torch.tensor([[10.0, 20.0, 300.0, 400.0, 6.0], [500.0, 1.0, 2.0, 3.0, 0.5]])
    torch.testing.assert_close(targets_to_state(state_to_targets(state)), state, rtol=1e-5, atol=1e-4)
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(600, 8, generator=gen)
    states = torch.cat([z[:, :4] * 50 + 256, torch.remainder(z[:, 4:5], 2 * torch.pi)], dim=1)
    _, r2 = fit_probe(z[:500], states[:500], z[500:], states[500:], steps=300)
    assert min(r2[f] for f in ("agent_x", "agent_y", "block_x", "block_y")) > 0.9
    perfect = r2_per_field(state_to_targets(states), state_to_targets(states))
    assert all(v == pytest.approx(1.0) for v in perfect.values())
