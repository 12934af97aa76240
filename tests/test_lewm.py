"""The LeWM model: shapes, adaLN-zero, causality, SIGReg, presets, configs."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from world_models.config import PRESETS, ModelConfig, preset
from world_models.errors import LeWorldError
from world_models.lewm.model import LeWM, count_parameters, init_weights, sigreg

SMALL = dataclasses.replace(
    preset("tiny"),
    encoder_dim=32,
    encoder_depth=1,
    predictor_dim=32,
    predictor_depth=2,
    projector_hidden=64,
    latent_dim=16,
    sigreg_projections=64,
)


def small_model(seed: int = 0) -> LeWM:
    torch.manual_seed(seed)
    model = LeWM(SMALL)
    init_weights(model)
    return model


def batch(b: int = 6, length: int = 4, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (b, length, 64, 64, 3), dtype=torch.uint8, generator=gen)
    return pixels, torch.rand(b, length, 2, generator=gen) * 2 - 1


def test_shapes():
    model = small_model().eval()
    pixels, actions = batch()
    z = model.encode(pixels)
    assert z.shape == (6, 4, 16)
    assert model.predict(z[:, :3], actions[:, :3]).shape == (6, 16)
    assert model.rollout(z[:, :3], actions[:, :3], actions[:, :2]).shape == (6, 2, 16)
    out = model.loss(pixels, actions)
    assert set(out) == {"loss", "prediction", "sigreg"} and out["loss"].ndim == 0


def test_adaln_zero_starts_action_blind_and_learns_to_use_actions():
    model = small_model().eval()
    z = torch.randn(4, 3, 16)
    a1, a2 = torch.zeros(4, 3, 2), torch.ones(4, 3, 2)
    torch.testing.assert_close(model.predict(z, a1), model.predict(z, a2))  # gates are zero at init
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    pixels, actions = batch()
    model.loss(pixels, actions)["loss"].backward()
    opt.step()
    model.eval()
    assert not torch.allclose(model.predict(z, a1), model.predict(z, a2))


def test_predictor_is_causal():
    model = small_model()
    for block in model.predictor.blocks:  # open the gates so attention matters
        torch.nn.init.normal_(block.modulation[1].weight, std=0.5)
    model.eval()
    z, a = torch.randn(2, 3, 16), torch.randn(2, 3, 2)
    base = model.predictor(z, a)
    z2 = z.clone()
    z2[:, 2] += 5.0
    changed = model.predictor(z2, a)
    torch.testing.assert_close(changed[:, :2], base[:, :2])
    assert not torch.allclose(changed[:, 2], base[:, 2])


def test_sigreg_separates_gaussian_from_collapsed_latents():
    gen = torch.Generator().manual_seed(0)
    gaussian = torch.randn(512, 16, generator=gen)
    collapsed = torch.randn(512, 1, generator=gen).expand(512, 16) * 0.01
    low = sigreg(gaussian, 64, 17, torch.Generator().manual_seed(1))
    high = sigreg(collapsed, 64, 17, torch.Generator().manual_seed(1))
    assert high > 20 * low
    z = collapsed.clone().requires_grad_(True)
    sigreg(z, 64, 17).backward()
    assert z.grad.abs().sum() > 0


def test_loss_falls_on_a_fixed_batch():
    model = small_model()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    pixels, actions = batch(b=16)
    losses = []
    for step in range(40):
        out = model.loss(pixels, actions, torch.Generator().manual_seed(step))
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(out["loss"].item())
    assert sum(losses[-5:]) < 0.7 * sum(losses[:5])


@pytest.mark.parametrize("name", list(PRESETS))
def test_presets_build_and_count_parameters(name):
    cfg = preset(name)
    counts = count_parameters(LeWM(cfg))
    parts = {k: v for k, v in counts.items() if k != "total"}
    assert all(v > 0 for v in parts.values()) and sum(parts.values()) == counts["total"]
    if name == "baseline":
        assert (cfg.latent_dim, cfg.encoder_depth, cfg.predictor_depth) == (192, 6, 6)
    if name.startswith("slim_"):
        latent, enc, pred = name.removeprefix("slim_").split("_")
        assert (cfg.latent_dim, cfg.encoder_depth, cfg.predictor_depth) == (
            int(latent[:-1]),
            int(enc[:-1]),
            int(pred[:-1]),
        )


def test_config_round_trip_and_bad_configs(tmp_path):
    cfg = preset("tiny")
    assert ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(LeWorldError, match=r"unknown field.*colour"):
        ModelConfig.from_dict({**cfg.to_dict(), "colour": "blue"})
    with pytest.raises(LeWorldError, match="latent_dim must be int"):
        ModelConfig.from_dict({**cfg.to_dict(), "latent_dim": "64"})
    with pytest.raises(LeWorldError, match="not a multiple of patch_size"):
        dataclasses.replace(cfg, patch_size=10)
    with pytest.raises(LeWorldError, match="not divisible by encoder_heads"):
        dataclasses.replace(cfg, encoder_heads=5)
    with pytest.raises(LeWorldError, match="unknown preset 'huge'"):
        preset("huge")
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(LeWorldError, match=r"config\.json: unreadable"):
        ModelConfig.load(tmp_path)


def test_the_pose_loss_needs_targets_and_teaches_the_head_the_pose():
    """With ``pose_weight > 0`` the loss has a pose term fed by the frames' targets; training on a
    fixed batch lowers it, and a pure-LeWM config has no head and ignores targets."""
    cfg = dataclasses.replace(SMALL, encoder="cnn", conv_width=8, pose_weight=1.0)
    torch.manual_seed(0)
    model = LeWM(cfg)
    init_weights(model)
    pixels, actions = batch()
    targets = torch.rand(*pixels.shape[:2], 6, generator=torch.Generator().manual_seed(1))
    with pytest.raises(ValueError, match="needs pose_targets"):
        model.loss(pixels, actions)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    poses = []
    for step in range(30):
        out = model.loss(pixels, actions, torch.Generator().manual_seed(step), targets)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        poses.append(out["pose"].item())
    assert poses[-1] < 0.5 * poses[0]
    plain = small_model()
    assert not hasattr(plain, "pose_head") and "pose" not in plain.loss(pixels, actions, None, targets)
    with pytest.raises(LeWorldError, match="pose_weight must be >= 0"):
        dataclasses.replace(SMALL, pose_weight=-1.0)
    with pytest.raises(LeWorldError, match="GroupNorm groups"):
        dataclasses.replace(SMALL, encoder="cnn", conv_width=4)
