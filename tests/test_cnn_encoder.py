"""The conv-stem encoder (``encoder == "cnn"``) on every torch-free backend: layout, numba, LQ40, devices.

The model is the small one of tests/test_lewm.py with the conv stem (``conv_width`` 16: 16-32-64-64
channels), every weight random (tests/test_numba_backend.py's ``randomized_model``). Tolerances are
the ViT's: ``numba`` computes the same float32 model (other summation orders, a rational erf) and
agrees with torch to 1e-4 relative; a quantized file tracks float32 to the ViT tests' floors on the
predictor, and to cosine 0.99 on the encoder (INT8 or float32 in every mode).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import world_models
from numba_kernels.linear import GELU, QLinear
from numba_kernels.nn_ops import group_norm, im2col
from tests.conftest import run_cli
from tests.test_lewm import SMALL
from tests.test_lq40 import corrupt_header, load_blob
from tests.test_numba_backend import inputs, model_dir, save_randomized  # noqa: F401  (fixture)
from world_models.backends.devices.emulator import Device, encoder_macs
from world_models.backends.layout import check_tensors, linear_shapes
from world_models.backends.numba_engine import build_layers, float_weights
from world_models.backends.quantize import MODES, agreement, quantize_folder
from world_models.config import CONV_MULTIPLIERS, preset
from world_models.errors import LeWorldError

CNN = dataclasses.replace(SMALL, encoder="cnn", conv_width=16)


@pytest.fixture(scope="module")
def cnn_dir(tmp_path_factory):
    return save_randomized(tmp_path_factory.mktemp("models") / "cnn", CNN)


@pytest.fixture(scope="module")
def cnn_lq40(cnn_dir, tmp_path_factory):
    path = tmp_path_factory.mktemp("lq40") / "cnn.lq40"
    quantize_folder(cnn_dir, "full", path)
    return path


def clips(b: int = 8):
    """(pixels [B, history + 1, H, W, 3], actions [B, history + 1, 2]) for :func:`agreement`."""
    pixels, _, a = inputs(b)
    return np.stack([pixels] * (CNN.history + 1), axis=1), np.repeat(a[:, :1], CNN.history + 1, axis=1)


# ---------------------------------------------------------------- kernels
def test_im2col_and_group_norm_match_torch():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 7, 5, 6)).astype(np.float32)  # odd sides, channels last
    for kernel, stride, padding in ((3, 2, 1), (3, 1, 0), (2, 2, 0)):
        patches = im2col(x, kernel, stride, padding)
        expected = F.unfold(torch.from_numpy(x).permute(0, 3, 1, 2), kernel, padding=padding, stride=stride)
        np.testing.assert_array_equal(patches, expected.transpose(1, 2).reshape(patches.shape).numpy())
    w, b = rng.standard_normal(6).astype(np.float32), rng.standard_normal(6).astype(np.float32)
    out = group_norm(x.reshape(2, 35, 6), 3, w, b, GELU)
    ref = F.gelu(F.group_norm(torch.from_numpy(x).permute(0, 3, 1, 2), 3, torch.from_numpy(w), torch.from_numpy(b)))
    np.testing.assert_allclose(out.reshape(x.shape), ref.permute(0, 2, 3, 1).numpy(), atol=2e-6)
    with pytest.raises(ValueError, match="6 channels in 4 groups"):
        group_norm(x.reshape(2, 35, 6), 4, w, b)


# ---------------------------------------------------------------- float32
@pytest.mark.parametrize("b", [1, 12])  # the fused kernels, and the BLAS path
def test_numba_matches_torch(cnn_dir, b):
    reference = world_models.load(cnn_dir, backend="torch")
    candidate = world_models.load(cnn_dir, backend="numba")
    assert candidate.config.encoder == "cnn" and candidate.config == reference.config
    pixels, z, a = inputs(b)
    for method, args in (("encode", (pixels,)), ("predict", (z, a)), ("rollout", (z, a, a)), ("probe", (z[:, 0],))):
        expected = getattr(reference, method)(*args)
        np.testing.assert_allclose(
            getattr(candidate, method)(*args), expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max()
        )


# ---------------------------------------------------------------- LQ40
@pytest.mark.parametrize("mode", list(MODES))
def test_every_mode_round_trips_through_lq40_and_tracks_float32(cnn_dir, tmp_path, mode):
    pixels, actions = clips()
    result = quantize_folder(cnn_dir, mode, tmp_path / "m.lq40", calibration=(pixels, actions))
    assert result.formats["encoder.convs.0.conv"] == MODES[mode][0]  # 27 inputs: INT8 or float32 anyway
    wm = world_models.load(result.path, backend="numba-q4")
    assert wm.config == CNN
    scores = agreement(world_models.load(cnn_dir, backend="torch"), wm, pixels, actions)
    floor = 0.5 if mode == "ternary" else 0.9  # the ViT tests' floors for a random predictor
    assert scores["encode_cos"] > 0.99 and scores["predict_cos"] > floor, scores


def test_leworld_quantize_reports_cosines_for_a_cnn_model(cnn_dir, tmp_path, weak_expert_dataset):
    out = tmp_path / "q.lq40"
    args = ("--mode", "full", "--out", str(out), "--data", str(weak_expert_dataset), "--clips", "8")
    result = run_cli("quantize", "--model", str(cnn_dir), *args)
    assert result.returncode == 0, result.stderr
    assert "encode  cos vs f32: mean 0.9" in result.stdout and "predict cos vs f32: mean 0." in result.stdout


def test_vit_files_from_before_the_conv_stem_still_load(model_dir, tmp_path):  # noqa: F811
    """Files written before ``encoder`` and ``conv_width`` existed (the shipped model's) have neither field."""
    path = quantize_folder(model_dir, "full", tmp_path / "vit.lq40").path
    old = corrupt_header(
        path.read_bytes(),
        lambda h: [h["model"].pop(k) for k in ("encoder", "conv_width")] + [h["model"].update(format_version=1)],
    )
    wm = load_blob(old, tmp_path)
    assert wm.config.encoder == "vit"
    pixels = inputs(2)[0]
    np.testing.assert_array_equal(wm.encode(pixels), world_models.load(path, backend="numba-q4").encode(pixels))


# ---------------------------------------------------------------- layout
def test_a_wrong_shaped_conv_tensor_is_named(cnn_dir, cnn_lq40, tmp_path):
    cfg, state, probe_hidden = float_weights(cnn_dir)
    linears, others = build_layers(cfg, state, probe_hidden, {}, "m")
    check_tensors("m", cfg, linears, others, probe_hidden)  # the right shapes pass
    bad = dict(linears, **{"encoder.convs.1.conv": QLinear.from_float(np.zeros((32, 145), np.float32), None)})
    with pytest.raises(LeWorldError, match=r"m: encoder\.convs\.1\.conv is 32x145, the config needs 32x144"):
        check_tensors("m", cfg, bad, others, probe_hidden)
    norm = dict(others, **{"encoder.convs.2.norm.weight": np.ones(63, np.float32)})
    with pytest.raises(
        LeWorldError, match=r"encoder\.convs\.2\.norm\.weight has shape \[63\], the config needs \[64\]"
    ):
        check_tensors("m", cfg, linears, norm, probe_hidden)
    swapped = dict(state, **{"encoder.convs.1.conv.weight": state["encoder.convs.1.conv.weight"].swapaxes(0, 1)})
    with pytest.raises(LeWorldError, match=r"layer encoder\.convs\.1\.conv: encoder\.convs\.1\.conv\.weight has shape"):
        build_layers(cfg, swapped, probe_hidden, {}, "m")
    narrower = corrupt_header(cnn_lq40.read_bytes(), lambda h: h["model"].update(conv_width=8))
    with pytest.raises(LeWorldError, match=r"layer encoder\.convs\.0\.conv is stored as i8 \[16, 27\]"):
        load_blob(narrower, tmp_path)


def test_encoder_macs_count_the_conv_stem():
    for cfg in (preset("tiny_cnn"), CNN):
        channels = [cfg.conv_width * m for m in CONV_MULTIPLIERS]
        inputs_per_pixel = [3 * 9] + [c * 9 for c in channels[:-1]]  # 3x3 kernels
        sides = [cfg.image_size // 2 ** (i + 1) for i in range(len(channels))]
        convs = sum(s * s * c * k for s, c, k in zip(sides, channels, inputs_per_pixel, strict=True))
        flat = channels[-1] * sides[-1] ** 2 * cfg.encoder_dim
        projector = cfg.encoder_dim * cfg.projector_hidden + cfg.projector_hidden * cfg.latent_dim
        assert encoder_macs(cfg) == convs + flat + projector
        # the same count as every encoder linear layer's weights times the rows it runs on
        rows = {f"encoder.convs.{i}.conv": s * s for i, s in enumerate(sides)}
        shapes = linear_shapes(cfg)
        assert encoder_macs(cfg) == sum(
            rows.get(p, 1) * n * k for p, (n, k) in shapes.items() if p.startswith("encoder.")
        )
    assert encoder_macs(preset("tiny_cnn")) == 12_918_784


# ---------------------------------------------------------------- devices
def test_the_device_emulators_hold_a_cnn_model(cnn_lq40):
    _, z, a = inputs(4)
    pixels = inputs(2)[0]
    expected = world_models.load(cnn_lq40, backend="numba-q4")
    esp32 = Device("esp32", model=cnn_lq40)  # loading runs every command once (encode included)
    try:
        np.testing.assert_array_equal(esp32.engine.encode(pixels), expected.encode(pixels))
    finally:
        esp32.close()
    fpga = Device("fpga", model=cnn_lq40)  # the fixed-point predictor
    try:
        got, want = fpga.engine.predict(z, a), expected.predict(z, a)
        cos = (got * want).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1))
        assert cos.min() > 0.999, cos
    finally:
        fpga.close()
