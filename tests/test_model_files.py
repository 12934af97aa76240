"""Model folder files: finite weights, checksums, every config field, bounds before allocation,
malformed ``probe.json`` and LQ40 headers, the probe copy inside ``model.lq40``, and the CLI's output checks.

Every model here is the small random one of tests.test_numba_backend (no training).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import world_models
from tests.test_lewm import SMALL
from tests.test_numba_backend import randomized_model, save_randomized
from world_models.backends.lq40 import MAGIC, is_lq40, read_lq40, replace_probe, save_folder_probe
from world_models.backends.quantize import quantize_folder
from world_models.config import FORMAT_1_LATER_FIELDS, MAX_DEPTH, MAX_IMAGE_SIZE, ModelConfig, preset
from world_models.errors import LeWorldError
from world_models.files import SHA256_KEY, sha256_file
from world_models.lewm import folder as folder_module
from world_models.lewm.folder import load_model, save_model
from world_models.lewm.probe import Probe

BACKENDS = ["torch", "numba"]


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """A small random model with a probe, saved by save_model, with a model.lq40 quantized from it."""
    folder = save_randomized(tmp_path_factory.mktemp("models") / "random")
    quantize_folder(folder, "full", folder / "model.lq40")
    return folder


@pytest.fixture
def model_dir(source, tmp_path) -> Path:
    """A fresh copy of :func:`source` to edit."""
    return Path(shutil.copytree(source, tmp_path / "m"))


def random_probe(seed: int, hidden: int = 32) -> Probe:
    gen = torch.Generator().manual_seed(seed)
    probe = Probe(SMALL.latent_dim, hidden=hidden)
    with torch.no_grad():
        for p in probe.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
        probe.z_mean.copy_(torch.randn(SMALL.latent_dim, generator=gen) * 0.1)
    return probe.eval()


def edit_json(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def load(folder: Path, backend: str):
    return world_models.load(folder, backend=backend)


# ------------------------------------------------------------------ non-finite weights
def test_save_model_refuses_a_nan_tensor_and_writes_nothing(tmp_path):
    model = randomized_model()
    with torch.no_grad():
        model.predictor.norm.bias[3] = float("nan")
    with pytest.raises(LeWorldError, match=r"refusing to write .*model\.safetensors.*'predictor\.norm\.bias'.*NaN"):
        save_model(tmp_path / "m", model)
    assert not (tmp_path / "m" / "model.safetensors").exists()
    probe = random_probe(0)
    with torch.no_grad():
        probe.net[0].weight[0, 0] = float("inf")
    with pytest.raises(LeWorldError, match=r"probe\.safetensors.*'net\.0\.weight'.*NaN or inf"):
        save_model(tmp_path / "p", randomized_model(), probe)
    assert not (tmp_path / "p").exists()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["model.safetensors", "probe.safetensors"])
def test_loaders_refuse_non_finite_weights(model_dir, backend, name):
    """Weights written by safetensors directly (checksum updated, so only the values are wrong)."""
    path = model_dir / name
    tensors = load_file(path)
    key = sorted(k for k, v in tensors.items() if v.is_floating_point())[0]
    tensors[key] = tensors[key].clone().reshape(-1)
    tensors[key][0] = float("nan")
    tensors[key] = tensors[key].reshape(load_file(path)[key].shape)
    save_file(tensors, path)
    record = model_dir / ("config.json" if name == "model.safetensors" else "probe.json")
    edit_json(record, **{SHA256_KEY: sha256_file(path)})
    with pytest.raises(LeWorldError, match=rf"{name}: tensor '{key}' holds NaN or inf"):
        load(model_dir, backend)


# ------------------------------------------------------------------ checksums
WEIGHTS_AND_RECORDS = [("model.safetensors", "config.json"), ("probe.safetensors", "probe.json")]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("name", "record"), WEIGHTS_AND_RECORDS)
def test_a_flipped_byte_in_the_weights_is_a_checksum_error(model_dir, backend, name, record):
    path = model_dir / name
    blob = bytearray(path.read_bytes())
    blob[-5] ^= 0x01  # inside the last tensor's data: still a valid safetensors file, every shape right
    path.write_bytes(bytes(blob))
    with pytest.raises(LeWorldError, match=rf"{name} does not match the checksum in {record}: the file is corrupt"):
        load(model_dir, backend)


def test_save_model_writes_the_checksums(model_dir):
    config = json.loads((model_dir / "config.json").read_text())
    probe = json.loads((model_dir / "probe.json").read_text())
    assert config[SHA256_KEY] == sha256_file(model_dir / "model.safetensors")
    assert probe[SHA256_KEY] == sha256_file(model_dir / "probe.safetensors")
    assert config["format_version"] == 2


def test_a_format_1_folder_without_checksums_loads_a_format_2_one_must_have_them(model_dir):
    config = json.loads((model_dir / "config.json").read_text())
    del config[SHA256_KEY]
    (model_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(LeWorldError, match=r"config\.json: missing field weights_sha256"):
        load_model(model_dir)
    edit_json(model_dir / "config.json", format_version=1)  # written before checksums existed
    probe = json.loads((model_dir / "probe.json").read_text())
    del probe[SHA256_KEY]
    (model_dir / "probe.json").write_text(json.dumps(probe))
    for backend in BACKENDS:
        assert load(model_dir, backend).has_probe
    edit_json(model_dir / "config.json", weights_sha256="0" * 64)
    with pytest.raises(LeWorldError, match=r"probe\.json: missing field weights_sha256"):
        load_model(model_dir)


@pytest.mark.parametrize("value", ["abc", 12, "A" * 64])
def test_a_malformed_checksum_is_named(model_dir, value):
    edit_json(model_dir / "config.json", **{SHA256_KEY: value})
    with pytest.raises(LeWorldError, match=r"config\.json: field weights_sha256 must be 64 lowercase hex digits"):
        load_model(model_dir)


# ------------------------------------------------------------------ every field, bounds, finite floats
def test_a_config_missing_a_field_is_refused_naming_it(model_dir):
    cfg = preset("tiny").to_dict()
    for name in ("history", "format_version"):
        partial = {k: v for k, v in cfg.items() if k != name}
        with pytest.raises(LeWorldError, match=rf"missing field\(s\) {name}"):
            ModelConfig.from_dict(partial)
    old = {k: v for k, v in cfg.items() if k not in FORMAT_1_LATER_FIELDS}
    assert ModelConfig.from_dict({**old, "format_version": 1}) == preset("tiny")  # written before those fields
    with pytest.raises(LeWorldError, match=r"missing field\(s\) encoder, conv_width, pose_weight"):
        ModelConfig.from_dict(old)
    config = json.loads((model_dir / "config.json").read_text())
    del config["action_scale"], config["mlp_ratio"]
    (model_dir / "config.json").write_text(json.dumps(config))
    for backend in BACKENDS:
        with pytest.raises(LeWorldError, match=r"config\.json: missing field\(s\) action_scale, mlp_ratio"):
            load(model_dir, backend)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("encoder_depth", 100000, f"encoder_depth must be >= 1 and <= {MAX_DEPTH}, got 100000"),
        ("image_size", 100000, f"image_size must be >= 1 and <= {MAX_IMAGE_SIZE}, got 100000"),
        ("predictor_dim", 10**9, "predictor_dim must be >= 1 and <= 8192"),
        ("mlp_ratio", math.inf, "mlp_ratio must be a finite number, got inf"),
        ("mlp_ratio", math.nan, "mlp_ratio must be a finite number, got nan"),
        ("action_scale", -math.inf, "action_scale must be a finite number"),
        ("pose_weight", math.inf, "pose_weight must be a finite number"),
        ("mlp_ratio", 1000.0, r"mlp_ratio must be in \(0, 64\]"),
    ],
)
def test_out_of_bounds_and_non_finite_fields_are_refused_before_any_network(model_dir, field, value, message):
    with pytest.raises(LeWorldError, match=message):
        dataclasses.replace(preset("tiny"), **{field: value})
    edit_json(model_dir / "config.json", **{field: value})  # json writes inf / nan as Infinity / NaN
    for backend in BACKENDS:
        with pytest.raises(LeWorldError, match=rf"config\.json: .*{message}"):
            load(model_dir, backend)


def test_a_config_larger_than_the_file_is_refused_without_building_it(model_dir, monkeypatch):
    """Within bounds, but far more blocks than the file holds: the shapes are compared on the meta device
    (no memory), and the model is never built for real."""
    real = folder_module.LeWM
    devices = []

    def counting(cfg):
        devices.append(torch.get_default_device().type)
        return real(cfg)

    monkeypatch.setattr(folder_module, "LeWM", counting)
    edit_json(model_dir / "config.json", encoder_depth=MAX_DEPTH, predictor_depth=MAX_DEPTH)
    with pytest.raises(LeWorldError, match=r"model\.safetensors: missing tensors: encoder\.blocks\.1"):
        load_model(model_dir)
    assert devices == ["meta"]


# ------------------------------------------------------------------ probe.json
@pytest.mark.parametrize(
    ("document", "message"),
    [
        ([1], "expected a JSON object, got list"),
        ("abc", "expected a JSON object, got str"),
        ({"hidden": "abc"}, "field hidden must be a whole number from 1 to 65536 .*got 'abc'"),
        ({"hidden": -3}, "field hidden must be a whole number .*got -3"),
        ({"hidden": 0}, "field hidden must be a whole number .*got 0"),
        ({"hidden": 10**12}, "field hidden must be a whole number .*got 1000000000000"),
        ({"hidden": True}, "field hidden must be a whole number .*got True"),
        ({"hidden": 32.5}, "field hidden must be a whole number .*got 32.5"),
        ({SHA256_KEY: "xyz"}, "field weights_sha256 must be 64 lowercase hex digits"),
    ],
)
@pytest.mark.parametrize("backend", BACKENDS)
def test_malformed_probe_json_is_named(model_dir, backend, document, message):
    path = model_dir / "probe.json"
    if isinstance(document, dict):
        document = {**json.loads(path.read_text()), **document}
    path.write_text(json.dumps(document))
    with pytest.raises(LeWorldError, match=message) as err:
        load(model_dir, backend)
    assert "probe" in str(err.value)


@pytest.mark.parametrize("backend", BACKENDS)
def test_unreadable_probe_json_is_named(model_dir, backend):
    (model_dir / "probe.json").write_bytes(b"\xff{")
    with pytest.raises(LeWorldError, match=r"probe\.json: unreadable"):
        load(model_dir, backend)
    (model_dir / "probe.json").unlink()
    with pytest.raises(LeWorldError, match=r"probe\.json: missing"):
        load(model_dir, backend)


# ------------------------------------------------------------------ malformed LQ40 headers
def lq40_with_header(head: bytes) -> bytes:
    return MAGIC + struct.pack("<I", len(head)) + head


@pytest.mark.parametrize(
    ("blob", "message"),
    [
        (lq40_with_header(b"[" * 100000 + b"]" * 100000), "not UTF-8 JSON"),  # deeper than the JSON parser goes
        (lq40_with_header(b'{"n": ' + b"9" * 5000 + b"}"), "not UTF-8 JSON"),  # past Python's int digits limit
    ],
)
def test_malformed_lq40_headers_give_clean_errors(tmp_path, blob, message):
    path = tmp_path / "x.lq40"
    path.write_bytes(blob)
    with pytest.raises(LeWorldError, match=message):
        read_lq40(path)


# ------------------------------------------------------------------ the probe inside model.lq40
def probe_outputs(folder: Path, backend: str, z: np.ndarray) -> np.ndarray:
    return load(folder, backend)._probe_targets(z)


def test_refitting_the_probe_rewrites_the_one_in_model_lq40(model_dir):
    """save_folder_probe (what leworld probe writes): numba-q4 (the default backend, reading
    model.lq40) gives the new probe's outputs, as numba and torch do."""
    z = np.random.default_rng(0).standard_normal((5, SMALL.latent_dim)).astype(np.float32)
    before = probe_outputs(model_dir, "numba-q4", z)
    _, _, info = load_model(model_dir)
    new = random_probe(7)
    save_folder_probe(model_dir, new, info)
    expected = new(torch.from_numpy(z)).detach().numpy()
    assert not np.allclose(before, expected, atol=1e-3)
    for backend in ("torch", "numba", "numba-q4"):
        np.testing.assert_allclose(probe_outputs(model_dir, backend, z), expected, rtol=1e-5, atol=1e-5)


def test_a_probe_of_another_width_replaces_the_old_one_everywhere(model_dir):
    """The probe's own width wins over the old probe.json's (save_model gets the old info back)."""
    _, _, info = load_model(model_dir)
    assert info["hidden"] == 32
    new = random_probe(8, hidden=48)
    save_folder_probe(model_dir, new, info)
    assert json.loads((model_dir / "probe.json").read_text())["hidden"] == 48
    _, tensors = read_lq40(model_dir / "model.lq40")
    assert tensors["probe.net.0.weight"].shape == (48, SMALL.latent_dim)
    z = np.random.default_rng(1).standard_normal((3, SMALL.latent_dim)).astype(np.float32)
    expected = new(torch.from_numpy(z)).detach().numpy()
    for backend in ("torch", "numba", "numba-q4"):
        np.testing.assert_allclose(probe_outputs(model_dir, backend, z), expected, rtol=1e-5, atol=1e-5)


def test_leworld_probe_updates_model_lq40(model_dir, short_dataset, capsys):
    """The issue's case: after `leworld probe`, numba-q4 and numba give the same probe outputs."""
    z = np.random.default_rng(2).standard_normal((4, SMALL.latent_dim)).astype(np.float32)
    before = probe_outputs(model_dir, "numba-q4", z)
    code, err = cli(capsys, "probe", "--model", str(model_dir), "--data", str(short_dataset), "--steps", "5",
                    "--frames", "64", "--hidden", "16")  # fmt: skip
    assert code == 0, err
    after = probe_outputs(model_dir, "numba-q4", z)
    assert not np.allclose(before, after, atol=1e-3)
    np.testing.assert_allclose(after, probe_outputs(model_dir, "numba", z), rtol=1e-5, atol=1e-5)


def test_rewriting_the_same_probe_gives_the_same_lq40_file(model_dir):
    path = model_dir / "model.lq40"
    original = path.read_bytes()
    probe = {f"probe.{k}": v.numpy() for k, v in load_file(model_dir / "probe.safetensors").items()}
    replace_probe(path, probe)
    assert path.read_bytes() == original


def test_a_stale_probe_in_model_lq40_is_refused(model_dir):
    """A probe written beside model.lq40 without rewriting it (as before this check): numba-q4 refuses it
    instead of disagreeing with numba."""
    probe = random_probe(3)
    checksum = folder_module.atomic_save_tensors(probe.state_dict(), model_dir / "probe.safetensors")
    edit_json(model_dir / "probe.json", **{SHA256_KEY: checksum})
    assert load(model_dir, "numba").has_probe
    with pytest.raises(LeWorldError, match=r"model\.lq40: carries a different probe than .*probe\.safetensors"):
        load(model_dir, "numba-q4")
    shutil.copy(model_dir / "model.lq40", model_dir / "elsewhere.lq40")  # an .lq40 on its own is not checked
    assert load(model_dir / "elsewhere.lq40", "numba-q4").has_probe


def test_model_lq40_quantized_from_other_weights_is_refused(model_dir):
    save_model(model_dir, randomized_model(seed=5))  # new weights, the old model.lq40 left beside them
    assert load(model_dir, "numba").has_probe
    with pytest.raises(LeWorldError, match=r"model\.lq40: was quantized from other weights"):
        load(model_dir, "numba-q4")


def test_save_folder_probe_refuses_a_probe_that_model_lq40_cannot_carry(model_dir):
    before = {name: (model_dir / name).read_bytes() for name in ("probe.safetensors", "probe.json")}
    (model_dir / "model.lq40").write_bytes(b"LQ40 but broken")
    with pytest.raises(LeWorldError, match=r"model\.lq40"):
        save_folder_probe(model_dir, random_probe(1))
    assert {name: (model_dir / name).read_bytes() for name in before} == before


# ------------------------------------------------------------------ the CLI's outputs
def cli(capsys, *args: str) -> tuple[int, str]:
    from leworld_env.cli.main import main

    code = main(list(args))
    return code, capsys.readouterr().err


def test_quantize_out_onto_a_file_that_is_not_lq40_needs_overwrite(source, tmp_path, capsys):
    notes = tmp_path / "notes.lq40"
    notes.write_text("my own notes")
    code, err = cli(capsys, "quantize", "--model", str(source), "--out", str(notes))
    assert code == 2 and "exists and is not a previous result" in err and "--overwrite" in err
    assert notes.read_text() == "my own notes"
    assert not is_lq40(notes) and is_lq40(source / "model.lq40")  # a previous .lq40 may be replaced
    code, err = cli(capsys, "quantize", "--model", str(source), "--out", str(tmp_path))
    assert code == 2 and "is a folder" in err
    with pytest.raises(SystemExit) as exit_info:  # refused by the argument parser
        cli(capsys, "quantize", "--model", str(source), "--out", "")
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "empty path" in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_probe_into_a_read_only_folder_fails_before_fitting(model_dir, tmp_path, capsys):
    os.chmod(model_dir, 0o555)
    try:
        code, err = cli(capsys, "probe", "--model", str(model_dir), "--data", str(tmp_path / "no-data"))
    finally:
        os.chmod(model_dir, 0o755)
    assert code == 2 and "not writable" in err


def test_probe_into_a_folder_with_a_broken_model_lq40_fails_before_fitting(model_dir, tmp_path, capsys):
    (model_dir / "model.lq40").write_bytes(b"garbage")
    code, err = cli(capsys, "probe", "--model", str(model_dir), "--data", str(tmp_path / "no-data"))
    assert code == 2 and "model.lq40" in err
