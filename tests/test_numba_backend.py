"""The torch-free backends (``numba``, ``numba-q4``) against the torch backend, and ``leworld quantize``.

Tolerances: ``numba`` computes the same float32 model with other summation
orders and a rational erf (|error| < 5e-7), so it agrees with torch to 1e-4
relative on latents. ``numba-q4`` agrees to the cosine thresholds the issue
sets (measured on the shipped model in test_shipped_model.py).
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

import world_models
from tests.conftest import run_cli
from tests.test_lewm import SMALL
from world_models.backends.quantize import MODES, agreement, layer_formats, quantize_folder, wanda_prune
from world_models.config import ModelConfig
from world_models.errors import LeWorldError
from world_models.lewm.folder import save_model
from world_models.lewm.model import LeWM, init_weights
from world_models.lewm.probe import Probe


def randomized_model(seed: int = 0, cfg: ModelConfig = SMALL) -> LeWM:
    """A model of ``cfg`` (default: the small one) with every weight random (adaLN gates and
    BatchNorm statistics included), so that every path of the forward pass matters."""
    torch.manual_seed(seed)  # built as tests.test_lewm.small_model builds it, then overwritten
    model = LeWM(cfg)
    init_weights(model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * (0.3 if "weight" in name else 0.1))
        for name, buf in model.named_buffers():
            if name.endswith("running_mean"):
                buf.copy_(torch.randn(buf.shape, generator=gen) * 0.1)
            elif name.endswith("running_var"):
                buf.copy_(torch.rand(buf.shape, generator=gen) + 0.5)
    return model.eval()


def save_randomized(folder, cfg: ModelConfig = SMALL):
    """:func:`randomized_model` of ``cfg`` with a random probe, saved into ``folder`` by the package's
    ``save_model``; returns ``folder``."""
    probe = Probe(cfg.latent_dim, hidden=32)
    with torch.no_grad():
        for p in probe.parameters():
            p.normal_(0, 0.3)
    save_model(folder, randomized_model(cfg=cfg), probe, {"r2_val": {}})
    return folder


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_randomized(tmp_path_factory.mktemp("models") / "random")


def inputs(b: int = 4, seed: int = 0):
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (b, 64, 64, 3), dtype=np.uint8)
    z = rng.standard_normal((b, SMALL.history, SMALL.latent_dim)).astype(np.float32)
    a = rng.uniform(-1, 1, (b, SMALL.history, 2)).astype(np.float32)
    return pixels, z, a


@pytest.mark.parametrize("b", [1, 12])  # the fused kernels, and the BLAS path
def test_numba_backend_matches_torch(model_dir, b):
    reference = world_models.load(model_dir, backend="torch")
    candidate = world_models.load(model_dir, backend="numba")
    pixels, z, a = inputs(b)
    for method, args in (("encode", (pixels,)), ("predict", (z, a)), ("rollout", (z, a, a)), ("probe", (z[:, 0],))):
        expected = getattr(reference, method)(*args)
        np.testing.assert_allclose(
            getattr(candidate, method)(*args), expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max()
        )
    assert candidate.backend == "numba" and candidate.config == reference.config


@pytest.mark.parametrize("steps", [1, 2])
def test_numba_rollout_with_a_short_history_matches_torch(model_dir, steps):
    """The engine's rollout reuses each token's position-free features as the window slides;
    it must equal torch's step-by-step loop from histories shorter than the window too."""
    reference = world_models.load(model_dir, backend="torch")
    candidate = world_models.load(model_dir, backend="numba")
    _, z, a = inputs(5, seed=3)
    future = np.random.default_rng(4).uniform(-1, 1, (5, 6, 2)).astype(np.float32)
    expected = reference.rollout(z[:, :steps], a[:, :steps], future)
    np.testing.assert_allclose(
        candidate.rollout(z[:, :steps], a[:, :steps], future), expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max()
    )


@pytest.mark.parametrize("steps", [1, 3])
def test_numba_rollout_from_one_shared_history_matches_torch(model_dir, steps):
    """A planner's candidates share the history but the last action: the engine computes the shared
    tokens once (on one row) and must still match torch row by row."""
    reference = world_models.load(model_dir, backend="torch")
    candidate = world_models.load(model_dir, backend="numba")
    _, z, a = inputs(1, seed=5)
    z = np.repeat(z[:, :steps], 6, axis=0)
    a = np.repeat(a[:, :steps], 6, axis=0)
    rng = np.random.default_rng(6)
    a[:, -1] = rng.uniform(-1, 1, (6, 2))
    future = rng.uniform(-1, 1, (6, 4, 2)).astype(np.float32)
    expected = reference.rollout(z, a, future)
    np.testing.assert_allclose(candidate.rollout(z, a, future), expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


@pytest.mark.parametrize("mode", list(MODES))
def test_every_mode_round_trips_through_lq40_and_tracks_float32(model_dir, tmp_path, mode):
    pixels, _, a = inputs(8)
    clips_px = np.stack([pixels] * (SMALL.history + 1), axis=1)
    clips_a = np.repeat(a[:, :1], SMALL.history + 1, axis=1)
    result = quantize_folder(model_dir, mode, tmp_path / "m.lq40", calibration=(clips_px, clips_a))
    assert result.nbytes == (tmp_path / "m.lq40").stat().st_size
    wm = world_models.load(tmp_path / "m.lq40", backend="numba-q4")
    assert wm.backend == "numba-q4"
    scores = agreement(world_models.load(model_dir, backend="torch"), wm, clips_px, clips_a)
    floor = 0.5 if mode == "ternary" else 0.9  # a random model with tiny layers; real numbers: test_shipped_model
    assert scores["encode_cos"] > floor and scores["predict_cos"] > floor, scores
    if mode in ("full", "ternary"):
        assert result.compression > 2.0


def test_layer_formats_follow_the_mode():
    formats = layer_formats(SMALL, "full")
    assert formats["encoder.blocks.0.attn.qkv"] == "i8"
    assert formats["predictor.blocks.0.mlp.0"] == "q4_0"
    assert formats["predictor.projector.3"] == "q8_0"  # boundary layers keep 8 bits
    assert formats["predictor.action_encoder.conv"] == "i8"  # input width 2 is no multiple of 32
    assert layer_formats(SMALL, "q4-pred")["encoder.patch_embed"] == "f32"
    with pytest.raises(LeWorldError, match=r"unknown quantization mode 'q2'.*full"):
        layer_formats(SMALL, "q2")


def test_wanda_prunes_each_row_by_weight_times_activation_norm():
    w = np.array([[1.0, 2.0, 3.0, 4.0, 5.0], [5.0, 4.0, 3.0, 2.0, 1.0]], np.float32)
    norms = np.array([10.0, 1.0, 1.0, 1.0, 0.01], np.float32)
    pruned = wanda_prune(w, norms, 0.4)  # 2 of 5 per row
    # row 0 scores 10, 2, 3, 4, 0.05: drop columns 4 and 1; row 1 scores 50, 4, 3, 2, 0.01: drop 4 and 3.
    np.testing.assert_array_equal(pruned, [[1, 0, 3, 4, 0], [5, 4, 3, 0, 0]])
    # plain magnitude pruning would have dropped column 0 of row 0 (|1| is the smallest); WANDA keeps it.
    assert pruned[0, 0] == 1.0


def test_wanda_modes_need_calibration_data(model_dir, tmp_path):
    with pytest.raises(LeWorldError, match="needs calibration data"):
        quantize_folder(model_dir, "wanda20-q4", tmp_path / "m.lq40")


def test_numba_q4_runs_where_torch_cannot_be_imported(tmp_path):
    code = """
import sys
sys.modules["torch"] = None  # any `import torch` now raises ImportError
import numpy as np
import world_models
wm = world_models.load()  # the shipped model, default backend numba-q4
assert wm.backend == "numba-q4", wm.backend
c = wm.config
rng = np.random.default_rng(0)
z = wm.encode(rng.integers(0, 256, (2, c.image_size, c.image_size, 3), dtype=np.uint8))
zh = np.stack([z] * c.history, axis=1)
a = np.zeros((2, c.history, c.action_dim), np.float32)
assert wm.predict(zh, a).shape == (2, c.latent_dim)
assert wm.rollout(zh, a, np.zeros((2, 4, c.action_dim), np.float32)).shape == (2, 4, c.latent_dim)
assert wm.probe(z).shape == (2, 5)
print("ok without torch")
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "ok without torch" in result.stdout


def test_leworld_quantize_prints_size_and_cosines(model_dir, tmp_path, weak_expert_dataset):
    out = tmp_path / "q.lq40"
    result = run_cli(
        "quantize",
        "--model",
        str(model_dir),
        "--mode",
        "full",
        "--out",
        str(out),
        "--data",
        str(weak_expert_dataset),
        "--clips",
        "16",
    )
    assert result.returncode == 0, result.stderr
    assert out.is_file()
    assert "compression" in result.stdout
    assert "encode  cos vs f32: mean 0." in result.stdout and "predict cos vs f32: mean 0." in result.stdout
    mine = tmp_path / "mine.lq40"
    mine.write_text("not an LQ40 file")  # only a previous .lq40 is replaced without --overwrite
    again = run_cli("quantize", "--model", str(model_dir), "--out", str(mine))
    assert again.returncode == 2 and "not a previous result" in again.stderr
    assert mine.read_text() == "not an LQ40 file"
    bad = run_cli("quantize", "--model", str(model_dir), "--out", str(tmp_path / "q.bin"))
    assert bad.returncode == 2 and "must end in .lq40" in bad.stderr
