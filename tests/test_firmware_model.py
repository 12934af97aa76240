"""The firmware's model core (firmware/core, through ctypes) against the Python references.

* float path (lw_model_predict / rollout / encode) against the numba-q4 backend on the same .lq40:
  relative L2 (norm of the difference over the norm, per batch) within 1e-5 for predict and encode and
  1e-4 over 5-step rollouts; the core sums in another order than numba and BLAS, nothing more;
* fixed-point path (lw_fixed_*) bit for bit against FixedPointPredictor, on real latents and on
  random int32 inputs over the whole range (where the reference saturates and wraps);
* the reader: every mutation of a valid file gets the same verdict from the core as from
  world_models.load(path, backend="numba-q4"), and a refusal is LW_BAD_MODEL naming the field;
* the checked-in fixed_tables.h is what firmware/tools/gen_tables.py writes now.

The shipped model (conv stem) and small random ViT models quantized here cover every weight format
(f32, q4_0, q8_0, i8, t2) and both attention paths of numba's encoder (scalar and batched).
"""

from __future__ import annotations

import ctypes
import json
import math
import random
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest

from tests.toolchains import require_tools

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "world_models" / "shipped" / "pusht-tiny" / "model.lq40"


def rel(x: np.ndarray, y: np.ndarray) -> float:
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    return float(np.linalg.norm(x - y) / np.linalg.norm(y))


# ---------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def fw(tmp_path_factory):
    require_tools("cc", "make")
    from tests.firmware_lib import FirmwareLib, build_library

    return FirmwareLib(build_library(tmp_path_factory.mktemp("fw-build")))


@pytest.fixture(scope="module")
def shipped_blob() -> bytes:
    return SHIPPED.read_bytes()


@pytest.fixture(scope="module")
def shipped(fw, shipped_blob):
    model = fw.load(shipped_blob)
    assert model.status == "OK", model.error
    return model


@pytest.fixture(scope="module")
def reference():
    import world_models

    return world_models.load(SHIPPED, backend="numba-q4")


@pytest.fixture(scope="module")
def clips(reference):
    """(pixels [N, 64, 64, 3], z_hist [N, 3, D], a_hist [N, 3, 2], a_future [N, 5, 2]): a fresh weak-expert
    episode (a seed no training data used), one frame per model step, encoded by numba-q4."""
    from leworld_env.sim.collect import CollectConfig, collect_episode

    cfg = reference.config
    config = CollectConfig(policy="weak-expert", episodes=1, image_size=cfg.image_size, max_steps=200, seed=2027)
    episode = collect_episode(config, 0)
    pixels = episode["observations"]["pixels"][:: cfg.frameskip]
    z = reference.encode(pixels)
    a = episode["actions"][:: cfg.frameskip].astype(np.float32)
    hist, zs, future = [], [], []
    for t in range(cfg.history, min(len(z), len(a) - 4)):
        zs.append(z[t - cfg.history : t])
        hist.append(a[t - cfg.history : t])
        future.append(a[t : t + 5])
    return pixels, np.stack(zs), np.stack(hist), np.stack(future)


def tiny_lq40(mode: str, image_size: int = 32, patch: int = 8, seed: int = 0) -> bytes:
    """A small random ViT model quantized in ``mode`` (quantize.layer_formats), as .lq40 bytes (numpy only)."""
    from numba_kernels.linear import QLinear
    from world_models.backends.layout import linear_shapes, other_shapes
    from world_models.backends.lq40 import SCALE_SUFFIX, Tensor, encode_lq40
    from world_models.backends.quantize import layer_formats
    from world_models.config import ModelConfig

    cfg = ModelConfig(
        image_size=image_size,
        patch_size=patch,
        encoder_dim=32,
        encoder_depth=2,
        encoder_heads=4,
        latent_dim=32,
        projector_hidden=64,
        predictor_dim=64,
        predictor_depth=2,
        predictor_heads=4,
        action_embed_dim=16,
    )
    rng = np.random.default_rng(seed)
    formats = layer_formats(cfg, mode)
    tensors = []
    for prefix, (n, k) in linear_shapes(cfg, probe_hidden=16).items():
        weight = (rng.standard_normal((n, k)) * 1.5 / math.sqrt(k)).astype(np.float32)
        bias = (rng.standard_normal(n) * 0.1).astype(np.float32)
        layer = QLinear.from_float(weight, bias, formats.get(prefix, "f32"))
        if layer.kind == "f32":
            tensors.append(Tensor(f"{prefix}.weight", "f32", (n, k), layer.weight))
        else:
            tensors.append(Tensor(f"{prefix}.weight", layer.kind, (n, k), layer.data))
            if layer.kind in ("i8", "t2"):
                tensors.append(Tensor(f"{prefix}.weight{SCALE_SUFFIX}", "f32", (n,), layer.scale))
        tensors.append(Tensor(f"{prefix}.bias", "f32", (n,), layer.bias))
    for name, shape in other_shapes(cfg, True).items():
        if name.endswith(("running_var", "z_std")):
            value = rng.uniform(0.5, 1.5, shape)
        elif name.endswith(("norm.weight", "norm1.weight", "norm2.weight", "projector.1.weight")):
            value = 1.0 + 0.2 * rng.standard_normal(shape)
        else:
            value = 0.3 * rng.standard_normal(shape)
        tensors.append(Tensor(name, "f32", shape, value.astype(np.float32)))
    header = {"model": cfg.to_dict(), "quantization": {"mode": mode, "layers": formats}, "source": "random"}
    return encode_lq40(header, tensors)


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny")
    files = {}
    for name, mode, size, patch in (
        ("vit-full", "full", 32, 8),  # 17 tokens: numba's batched attention
        ("vit-q4pred-p16", "q4-pred", 32, 16),  # 5 tokens: its scalar kernel; f32 encoder
        ("vit-ternary", "ternary", 32, 8),
    ):
        path = folder / f"{name}.lq40"
        path.write_bytes(tiny_lq40(mode, size, patch))
        files[name] = path
    return files


# ---------------------------------------------------------------- the float path
def test_shipped_model_loads_with_its_config(shipped, reference):
    cfg = reference.config
    assert (shipped.info.latent_dim, shipped.info.action_dim, shipped.info.history) == (
        cfg.latent_dim,
        cfg.action_dim,
        cfg.history,
    )
    assert shipped.info.image_size == cfg.image_size and shipped.info.has_encoder_weights == 1
    assert shipped.info.fixed_point_ok == 1 and shipped.error == ""


def test_float_path_matches_numba_q4_on_the_shipped_model(shipped, reference, clips):
    pixels, z, a, future = clips
    status, enc, err = shipped.encode(pixels)
    assert status == "OK", err
    e_enc = rel(enc, reference.encode(pixels))
    status, pred, err = shipped.predict(z, a)
    assert status == "OK", err
    e_pred = rel(pred, reference.predict(z, a))
    status, roll, err = shipped.rollout(z, a, future)
    assert status == "OK", err
    expected = reference.rollout(z, a, future)
    e_roll = max(rel(roll[:, k], expected[:, k]) for k in range(future.shape[1]))
    print(f"\nshipped: max relative L2 vs numba-q4: encode {e_enc:.2e}, predict {e_pred:.2e}, rollout h5 {e_roll:.2e}")
    assert e_enc < 1e-5 and e_pred < 1e-5 and e_roll < 1e-4
    # per row too: no row is worse than the batch figure lets through
    rows = np.linalg.norm(pred - reference.predict(z, a), axis=1) / np.linalg.norm(reference.predict(z, a), axis=1)
    assert rows.max() < 1e-5


@pytest.mark.parametrize("name", ["vit-full", "vit-q4pred-p16", "vit-ternary"])
def test_float_path_matches_numba_q4_on_small_vit_models(fw, tiny_files, name):
    import world_models

    path = tiny_files[name]
    model = fw.load(path.read_bytes())
    assert model.status == "OK", model.error
    ref = world_models.load(path, backend="numba-q4")
    rng = np.random.default_rng(1)
    cfg = ref.config
    pixels = rng.integers(0, 256, (6, cfg.image_size, cfg.image_size, 3), dtype=np.uint8)
    status, enc, err = model.encode(pixels)
    assert status == "OK", err
    assert rel(enc, ref.encode(pixels)) < 1e-5
    z = ref.encode(rng.integers(0, 256, (8 * 3, cfg.image_size, cfg.image_size, 3), dtype=np.uint8))
    z = z.reshape(8, 3, -1)
    a = rng.uniform(-1, 1, (8, 3, 2)).astype(np.float32)
    future = rng.uniform(-1, 1, (8, 5, 2)).astype(np.float32)
    status, pred, err = model.predict(z, a)
    assert status == "OK", err
    assert rel(pred, ref.predict(z, a)) < 1e-5
    status, roll, err = model.rollout(z, a, future)
    assert status == "OK", err
    assert rel(roll, ref.rollout(z, a, future)) < 1e-4


@pytest.mark.parametrize("steps", [1, 2, 5])
def test_histories_shorter_and_longer_than_the_window(shipped, reference, clips, steps):
    """T < history (the window grows during a rollout) and T > history (only the last steps count)."""
    _, z, a, future = clips
    z = np.concatenate([z, z], axis=1)[:, -steps:]
    a = np.concatenate([a, a], axis=1)[:, -steps:]
    status, pred, _ = shipped.predict(z, a)
    assert status == "OK" and rel(pred, reference.predict(z, a)) < 1e-5
    status, roll, _ = shipped.rollout(z, a, future)
    assert status == "OK" and rel(roll, reference.rollout(z, a, future)) < 1e-4


def test_rows_do_not_depend_on_the_batch_or_the_chunk(fw, shipped_blob, clips):
    """An arena for one row runs any batch (in chunks of one): the same bytes as one big chunk."""
    pixels, z, a, future = clips
    big = fw.load(shipped_blob)
    one = fw.load(shipped_blob)
    for op in ("predict", "rollout", "encode"):
        one.set_arena(one.scratch_bytes(1, op=op))
        args = {"predict": (z, a), "rollout": (z, a, future), "encode": (pixels,)}[op]
        s1, out1, e1 = getattr(one, op)(*args)
        s2, out2, e2 = getattr(big, op)(*args)
        assert s1 == s2 == "OK", (e1, e2)
        assert np.array_equal(out1, out2), op
    status, alone, _ = big.predict(z[3:4], a[3:4])
    assert status == "OK"
    _, batch, _ = big.predict(z, a)
    assert np.array_equal(alone[0], batch[3])


# ---------------------------------------------------------------- the fixed-point path
def _fixed(path):
    from world_models.backends.devices.fixed_point import FixedPointPredictor

    return FixedPointPredictor.from_lq40(path)


def test_fixed_point_is_bit_exact_on_the_shipped_model(shipped, fw, clips):
    fx = _fixed(SHIPPED)
    _, z, a, future = clips
    status, zq, _ = fw.quantize(z)
    assert status == "OK" and np.array_equal(zq, fx.quantize(z))
    aq, fq = fx.quantize(a), fx.quantize(future)
    status, out, err = shipped.predict_fixed(zq, aq)
    assert status == "OK", err
    assert np.array_equal(out, fx.predict_fixed(zq, aq))
    status, out, err = shipped.rollout_fixed(zq, aq, fq)
    assert status == "OK", err
    assert np.array_equal(out, fx.rollout_fixed(zq, aq, fq))
    for steps in (1, 2, 4):  # a growing window, and a history longer than it
        zs = np.concatenate([zq, zq], axis=1)[:, -steps:]
        as_ = np.concatenate([aq, aq], axis=1)[:, -steps:]
        assert np.array_equal(shipped.predict_fixed(zs, as_)[1], fx.predict_fixed(zs, as_))
        assert np.array_equal(shipped.rollout_fixed(zs, as_, fq)[1], fx.rollout_fixed(zs, as_, fq))


def test_fixed_point_is_bit_exact_over_the_whole_int32_range(shipped, fw, tiny_files):
    """Random int32 activations anywhere in the range (the attention saturates, the norms see huge
    values): still the reference's bits, on the shipped model and on a small one with other widths."""
    rng = np.random.default_rng(7)
    for model, path in ((shipped, SHIPPED), (fw.load(tiny_files["vit-full"].read_bytes()), tiny_files["vit-full"])):
        fx = _fixed(path)
        d, hist = fx.config.latent_dim, fx.config.history
        for scale in (2**17, 2**24, 2**31):
            z = rng.integers(-scale, scale, (4, hist, d), dtype=np.int64).clip(-(2**31), 2**31 - 1).astype(np.int32)
            a = rng.integers(-scale, scale, (4, hist, 2), dtype=np.int64).clip(-(2**31), 2**31 - 1).astype(np.int32)
            f = rng.integers(-scale, scale, (4, 3, 2), dtype=np.int64).clip(-(2**31), 2**31 - 1).astype(np.int32)
            assert np.array_equal(model.predict_fixed(z, a)[1], fx.predict_fixed(z, a)), scale
            assert np.array_equal(model.rollout_fixed(z, a, f)[1], fx.rollout_fixed(z, a, f)), scale


def test_fixed_point_quantize_matches_and_refuses_what_the_reference_refuses(fw):
    from world_models.backends.devices.fixed_point import FixedPointPredictor

    x = np.array([0.0, -0.0, 1.5, -2.25, 1e-5, 3.0517578125e-05 / 2, -(3.0517578125e-05 / 2), 32767.99, -32767.99])
    x = np.concatenate([x, np.random.default_rng(3).normal(0, 50, 500)]).astype(np.float32)
    status, q, _ = fw.quantize(x)
    assert status == "OK" and np.array_equal(q, FixedPointPredictor.quantize(_fixed(SHIPPED), x))
    for bad in (32768.0, -32768.0, np.inf, np.nan):
        status, _, err = fw.quantize(np.array([0.0, bad], np.float32))
        assert status == "BAD_INPUT" and "index 1" in err


def test_a_predictor_that_is_not_q4_has_no_fixed_point_path(fw, tiny_files):
    from world_models.errors import LeWorldError

    model = fw.load(tiny_files["vit-ternary"].read_bytes())
    assert model.status == "OK" and model.info.fixed_point_ok == 0
    with pytest.raises(LeWorldError, match="needs a Q4 predictor"):
        _fixed(tiny_files["vit-ternary"])
    z = np.zeros((1, 3, model.info.latent_dim), np.int32)
    status, _, err = model.predict_fixed(z, np.zeros((1, 3, 2), np.int32))
    assert status == "UNSUPPORTED" and "needs a Q4 predictor: layer predictor." in err and "is t2" in err


@pytest.mark.parametrize("scales", [(64.0, 32.0, 32.0), (64.0, 32.0, 31.984375)])
def test_the_accumulator_bound_is_checked_as_the_reference_checks_it(fw, shipped_blob, tmp_path, scales):
    """FixedLinear.from_codes refuses a layer whose worst-case accumulator reaches 2^62: for Q4_0 that is
    a row whose block scales sum to 128 or more. Row 0 of one layer at exactly 128, and just below."""
    from world_models.errors import LeWorldError

    row = b"".join(np.float16(d).tobytes() + bytes(16) for d in scales)  # 3 blocks of zero codes
    blob = _edit_data("predictor.blocks.0.mlp.0.weight", 0, row)(shipped_blob)
    path = tmp_path / "scaled.lq40"
    path.write_bytes(blob)
    try:
        _fixed(path)
        python_ok = True
    except LeWorldError as err:
        assert "block scales too large" in str(err)
        python_ok = False
    model = fw.load(blob)
    assert model.status == "OK" and model.info.fixed_point_ok == int(python_ok)
    assert python_ok == (sum(scales) < 128)
    if not python_ok:
        z = np.zeros((1, 3, 64), np.int32)
        status, _, err = model.predict_fixed(z, np.zeros((1, 3, 2), np.int32))
        assert status == "UNSUPPORTED" and "predictor.blocks.0.mlp.0: block scales too large" in err


# ---------------------------------------------------------------- bad inputs
def test_bad_inputs_give_their_status(fw, shipped_blob, clips):
    _, z, a, future = clips
    model = fw.load(shipped_blob)
    for name, args in (
        ("z_hist", (np.where(np.arange(z.size).reshape(z.shape) == 5, np.nan, z), a)),
        ("a_hist", (z, np.where(np.arange(a.size).reshape(a.shape) == 1, np.inf, a))),
    ):
        status, _, err = model.predict(*args)
        assert status == "BAD_INPUT" and name in err
        status, _, err = model.rollout(*args, future)
        assert status == "BAD_INPUT" and name in err
    status, _, err = model.rollout(z, a, np.full_like(future, np.nan))
    assert status == "BAD_INPUT" and "a_future" in err
    status, _, err = model.predict(z[:, :0], a[:, :0])
    assert status == "BAD_INPUT"
    status, _, err = model.rollout(z, a, future[:, :0])
    assert status == "BAD_INPUT"
    status, out, _ = model.predict(z[:0], a[:0])
    assert status == "OK" and out.shape == (0, model.info.latent_dim)
    # an arena too small for one row: TOO_LARGE, for every op
    zq = np.zeros(z.shape, np.int32)
    aq = np.zeros(a.shape, np.int32)
    for op, args in (
        ("predict", (z, a)),
        ("rollout", (z, a, future)),
        ("encode", (np.zeros((2, 64, 64, 3), np.uint8),)),
        ("predict_fixed", (zq, aq)),
        ("rollout_fixed", (zq, aq, np.zeros(future.shape, np.int32))),
    ):
        kind = {"predict_fixed": "fixed_predict", "rollout_fixed": "fixed_rollout"}.get(op, op)
        need = model.scratch_bytes(1, op=kind)
        model.set_arena(need - 16)
        status, _, err = getattr(model, op)(*args)
        assert status == "TOO_LARGE" and "needs" in err, (op, status, err)
        model.set_arena(need)
        status, _, err = getattr(model, op)(*args)
        assert status == "OK", (op, err)


def test_scratch_sizes_grow_with_the_rows_and_cover_every_op(shipped):
    one, eight = shipped.scratch_bytes(1), shipped.scratch_bytes(8)
    assert 0 < one < eight
    for op in ("predict", "rollout", "encode", "fixed_predict", "fixed_rollout"):
        assert shipped.scratch_bytes(1, op=op) <= one and shipped.scratch_bytes(8, op=op) <= eight


# ---------------------------------------------------------------- the reader
def _split(blob: bytes) -> tuple[dict, bytes]:
    (length,) = struct.unpack_from("<I", blob, 4)
    start = -(-(8 + length) // 64) * 64
    return json.loads(blob[8 : 8 + length]), blob[start:]


def _join_raw(head: bytes, data: bytes) -> bytes:
    start = -(-(8 + len(head)) // 64) * 64
    return b"LQ40" + struct.pack("<I", len(head)) + head + bytes(start - 8 - len(head)) + data


def _join(header: dict, data: bytes, crc: bool = False) -> bytes:
    if crc:
        header = {**header, "data_crc32": zlib.crc32(data)}
    return _join_raw(json.dumps(header).encode(), data)


def _entry(header: dict, name: str) -> dict:
    return next(e for e in header["tensors"] if e["name"] == name)


def _edit(edit):
    """A mutation of the header (the data and its CRC kept)."""

    def mutate(blob: bytes) -> bytes:
        header, data = _split(blob)
        edit(header)
        return _join(header, data)

    return mutate


def _edit_data(name: str, byte: int, value: bytes):
    """Overwrite bytes of tensor `name` at `byte`, and fix the CRC (so the value check is what fails)."""

    def mutate(blob: bytes) -> bytes:
        header, data = _split(blob)
        at = _entry(header, name)["offset"] + byte
        data = data[:at] + value + data[at + len(value) :]
        return _join(header, data, crc=True)

    return mutate


def _replace_in_header(old: bytes, new: bytes):
    def mutate(blob: bytes) -> bytes:
        header, data = _split(blob)
        head = json.dumps(header).encode()  # ", " and ": " separators, whatever the writer used
        assert old in head
        return _join_raw(head.replace(old, new, 1), data)

    return mutate


def _overflowing_shape(header: dict) -> None:
    """A tensor whose element count times 4 wraps to a small number in 32 bits (65537 * 65536 * 4 = 2^34 + 2^18)."""
    e = _entry(header, "predictor.norm.bias")
    e.update(shape=[65537, 65536], nbytes=(65537 * 65536 * 4) % 2**32)


def _overflowing_shape_exact(header: dict) -> None:
    e = _entry(header, "predictor.norm.bias")
    e.update(shape=[65537, 65536], nbytes=65537 * 65536 * 4)


def _overlap(header: dict) -> None:
    t = header["tensors"]
    t[5]["offset"] = t[4]["offset"]


def _reorder_past(header: dict) -> None:
    t = header["tensors"]
    t[3], t[4] = t[4], t[3]


def _remove(name: str):
    return _edit(lambda h: h["tensors"].remove(_entry(h, name)))


def _model(**fields):
    return _edit(lambda h: h["model"].update(fields))


def _model_drop(name: str):
    return _edit(lambda h: h["model"].pop(name))


def _format1_drop(name: str):
    """A format-1 config (written before every field was named: optional fields may be absent) without ``name``."""
    return _edit(lambda h: (h["model"].update(format_version=1), h["model"].pop(name)))


def _append_tensor(blob: bytes) -> bytes:
    """An unknown tensor after the others (readers keep what they do not need)."""
    header, data = _split(blob)
    header["tensors"].append({"name": "extra.thing", "dtype": "t2", "shape": [3, 5], "offset": len(data), "nbytes": 6})
    data += bytes(64)
    header["data_size"] = len(data)
    return _join(header, data, crc=True)


def _dup_key_tensors_first(blob: bytes) -> bytes:
    """A header naming 'tensors' twice: the last one wins (as in a dict), so an empty first one is harmless."""
    header, data = _split(blob)
    head = json.dumps(header).encode()
    return _join_raw(b'{"tensors": [], ' + head[1:], data)


def _dup_key_tensors_last(blob: bytes) -> bytes:
    header, data = _split(blob)
    head = json.dumps(header).encode()
    return _join_raw(head[:-1] + b', "tensors": []}', data)


def _escaped_name(blob: bytes) -> bytes:
    """A name spelled with JSON escapes decodes to the same name."""
    return _replace_in_header(b'"predictor.norm.bias"', b'"\\u0070redictor.norm\\u002ebias"')(blob)


def _source(value: bytes):
    """The header's ignored "source" field holding `value` (raw JSON text)."""
    return _replace_in_header(b'"source": "model"', b'"source": ' + value)


def _nested(depth: int):
    return _source(b"[" * depth + b"]" * depth)


def _with_header_suffix(suffix: bytes):
    def mutate(blob: bytes) -> bytes:
        header, data = _split(blob)
        return _join_raw(json.dumps(header).encode() + suffix, data)

    return mutate


BASE = "shipped"
CASES = {
    # (file, mutation, keyword the core's message must name; None when both accept)
    "valid": (BASE, lambda b: b, None),
    "bad magic": (BASE, lambda b: b"LQ41" + b[4:], "LQ40"),
    "empty": (BASE, lambda b: b"", "LQ40"),
    "seven bytes": (BASE, lambda b: b[:7], "LQ40"),
    "header length past the end": (BASE, lambda b: b[:4] + struct.pack("<I", len(b)) + b[8:], "header length"),
    "header length 2^32-1": (BASE, lambda b: b[:4] + b"\xff\xff\xff\xff" + b[8:], "header length"),
    "truncated": (BASE, lambda b: b[:-100], "data_size"),
    "one byte more": (BASE, lambda b: b + b"\0", "data_size"),
    "flipped data byte": (BASE, lambda b: b[:-70] + bytes([b[-70] ^ 0x10]) + b[-69:], "checksum"),
    "crc as a float": (BASE, _edit(lambda h: h.update(data_crc32=float(h["data_crc32"]))), None),
    "crc as a string": (BASE, _edit(lambda h: h.update(data_crc32=str(h["data_crc32"]))), "checksum"),
    "header not UTF-8": (BASE, lambda b: b[:8] + b"\xff" + b[9:], "UTF-8"),
    "overlong UTF-8 in a string": (BASE, _source(b'"\xc0\xae"'), "UTF-8"),
    "non-ASCII UTF-8 in a string": (BASE, _source(b'"mod\xc3\xa9l"'), None),
    "trailing garbage": (BASE, _with_header_suffix(b" x"), "extra data"),
    "trailing whitespace": (BASE, _with_header_suffix(b" \n\t"), None),
    "header not an object": (BASE, lambda b: _join_raw(b"[1, 2]", _split(b)[1]), "JSON object"),
    "control character in a string": (BASE, _source(b'"mo\x01del"'), "JSON"),
    "NaN in an ignored field": (BASE, _source(b"NaN"), None),
    "huge int in an ignored field": (BASE, _source(b"7" * 4301), "4300"),
    "4300-digit int in an ignored field": (BASE, _source(b"7" * 4300), None),
    "long float in an ignored field": (BASE, _source(b"1." + b"5" * 5000), None),
    "nested 400 deep": (BASE, _nested(400), None),
    "nested 2000 deep": (BASE, _nested(2000), "nesting"),
    "trailing comma": (BASE, _source(b"[1,]"), "JSON"),
    "future version": (BASE, _edit(lambda h: h.update(format_version=2)), "format_version"),
    "version 1.0": (BASE, _edit(lambda h: h.update(format_version=1.0)), None),
    "version true": (BASE, _edit(lambda h: h.update(format_version=True)), None),
    "version missing": (BASE, _edit(lambda h: h.pop("format_version")), "format_version"),
    "alignment 32": (BASE, _edit(lambda h: h.update(alignment=32)), "alignment"),
    "alignment 64.0": (BASE, _edit(lambda h: h.update(alignment=64.0)), None),
    "data_size a float": (BASE, _edit(lambda h: h.update(data_size=float(h["data_size"]))), "data_size"),
    "data_size negative": (BASE, _edit(lambda h: h.update(data_size=-64)), "data_size"),
    "tensors not a list": (BASE, _edit(lambda h: h.update(tensors={})), "tensors"),
    "tensors twice, the last real": (BASE, _dup_key_tensors_first, None),
    "tensors twice, the last empty": (BASE, _dup_key_tensors_last, "missing tensor"),
    "entry not an object": (BASE, _edit(lambda h: h["tensors"].insert(0, [1])), "tensors[0]"),
    "name not a string": (BASE, _edit(lambda h: h["tensors"][2].update(name=7)), "name"),
    "unknown dtype": (BASE, _edit(lambda h: _entry(h, "predictor.input.weight").update(dtype="q3_k")), "dtype"),
    "dtype not a string": (BASE, _edit(lambda h: _entry(h, "predictor.input.weight").update(dtype=1)), "dtype"),
    "shape with a zero": (BASE, _edit(lambda h: _entry(h, "predictor.norm.bias").update(shape=[0])), "shape"),
    "shape with a bool": (BASE, _edit(lambda h: _entry(h, "predictor.norm.bias").update(shape=[True])), "shape"),
    "shape of five dims": (BASE, _edit(lambda h: _entry(h, "predictor.norm.bias").update(shape=[1] * 5)), "shape"),
    "quantized shape not 2-D": (
        BASE,
        _edit(lambda h: _entry(h, "predictor.input.weight").update(shape=[96, 64, 1])),
        "[N, K]",
    ),
    "q8_0 K not a multiple of 32": (
        BASE,
        _edit(lambda h: _entry(h, "predictor.input.weight").update(shape=[192, 32 + 16])),
        "multiple of 32",
    ),
    "nbytes lie": (BASE, _edit(lambda h: _entry(h, "predictor.input.weight").update(nbytes=10)), "nbytes"),
    "dims overflow 32 bits (wrapped nbytes)": (BASE, _edit(_overflowing_shape), "nbytes"),
    "dims overflow 32 bits (exact nbytes)": (BASE, _edit(_overflowing_shape_exact), "offset"),
    "huge dim": (BASE, _edit(lambda h: _entry(h, "predictor.norm.bias").update(shape=[2**70])), "nbytes"),
    "offset a float": (
        BASE,
        _edit(lambda h: h["tensors"][1].update(offset=float(h["tensors"][1]["offset"]))),
        "offset",
    ),
    "misaligned offset": (
        BASE,
        _edit(lambda h: h["tensors"][1].update(offset=h["tensors"][1]["offset"] + 4)),
        "offset",
    ),
    "negative offset": (BASE, _edit(lambda h: h["tensors"][0].update(offset=-64)), "offset"),
    "overlapping tensors": (BASE, _edit(_overlap), "overlaps"),
    "tensors out of order": (BASE, _edit(_reorder_past), "overlaps"),
    "offset past the data": (BASE, _edit(lambda h: h["tensors"][-1].update(offset=h["data_size"])), "past the data"),
    "huge offset": (BASE, _edit(lambda h: h["tensors"][-1].update(offset=2**80)), "offset"),
    "duplicate name": (BASE, _edit(lambda h: h["tensors"][3].update(name=h["tensors"][0]["name"])), "twice"),
    "escaped name": (BASE, _escaped_name, None),
    "NaN in an f32 tensor": (BASE, _edit_data("predictor.norm.weight", 8, struct.pack("<f", math.nan)), "NaN"),
    "inf in an unused f32 tensor": (BASE, _edit_data("probe.z_std", 0, struct.pack("<f", math.inf)), "NaN"),
    "inf block scale": (BASE, _edit_data("predictor.blocks.1.mlp.0.weight", 18 * 5, b"\x00\x7c"), "block scale"),
    "NaN q8_0 block scale": (BASE, _edit_data("predictor.input.weight", 34, b"\x01\x7e"), "block scale"),
    "extra tensor sharing bytes": (
        BASE,
        _edit(lambda h: h["tensors"].append({**h["tensors"][-1], "name": "extra.thing"})),
        "overlaps",
    ),
    "extra tensor": (BASE, _append_tensor, None),
    "unknown header field": (BASE, _edit(lambda h: h.update(comment={"a": [1, 2.5, None, True]})), None),
    "missing tensor": (BASE, _remove("predictor.norm.bias"), "predictor.norm.bias"),
    "missing layer": (BASE, _remove("predictor.blocks.2.attn.proj.weight"), "predictor.blocks.2.attn.proj.weight"),
    "missing bias": (BASE, _remove("encoder.flat.bias"), "encoder.flat.bias"),
    "missing i8 scale": (BASE, _remove("encoder.flat.weight.scale"), "scale"),
    "missing probe tensor": (BASE, _remove("probe.z_mean"), "probe.z_mean"),
    "without any probe": (
        BASE,
        _edit(lambda h: h.update(tensors=[e for e in h["tensors"] if not e["name"].startswith("probe.")])),
        None,
    ),
    "other tensor misshapen": (
        BASE,
        _edit(lambda h: _entry(h, "predictor.pos_embed").update(shape=[3, 96])),
        "pos_embed",
    ),
    "bias not f32": (
        BASE,
        _edit(lambda h: _entry(h, "predictor.projector.3.bias").update(dtype="i8", shape=[64, 1], nbytes=64)),
        "predictor.projector.3",
    ),
    "model not an object": (BASE, _edit(lambda h: h.update(model=[1])), "model"),
    "model missing": (BASE, _edit(lambda h: h.pop("model")), "model"),
    "config: latent_dim doubled": (BASE, _model(latent_dim=128), "needs"),
    "config: encoder_heads 0": (BASE, _model(encoder_heads=0), "encoder_heads"),
    "config: history too large": (BASE, _model(history=4096), "history"),
    "config: unknown field": (BASE, _model(colour="blue"), "unknown field"),
    "config: missing field": (BASE, _model_drop("action_dim"), "action_dim"),
    "config: format 1 without conv_width": (BASE, _format1_drop("conv_width"), None),
    "config: format 2 with every field": (BASE, _model(format_version=2), None),
    "config: format 2 without encoder": (BASE, _model_drop("encoder"), "encoder"),
    "config: format 2 missing conv_width": (
        BASE,
        _edit(lambda h: (h["model"].update(format_version=2), h["model"].pop("conv_width"))),
        "conv_width",
    ),
    "config: format 1 without encoder (a ViT)": (BASE, _format1_drop("encoder"), "missing tensor"),
    "config: format_version 3": (BASE, _model(format_version=3), "format_version"),
    "config: encoder unknown": (BASE, _model(encoder="rnn"), "encoder"),
    "config: image_size a float": (BASE, _model(image_size=64.0), "image_size"),
    "config: image_size a bool": (BASE, _model(image_size=True), "image_size"),
    "config: image_size huge": (BASE, _model(image_size=10**30), "image_size"),
    "config: image_size not a multiple of 16": (BASE, _model(image_size=72), "image_size"),
    "config: conv_width 12": (BASE, _model(conv_width=12), "conv_width"),
    "config: mlp_ratio 65": (BASE, _model(mlp_ratio=65.0), "mlp_ratio"),
    "config: mlp_ratio an int": (BASE, _model(mlp_ratio=4), None),
    "config: mlp_ratio 4.0000000000000001": (
        BASE,
        _replace_in_header(b'"mlp_ratio": 4.0', b'"mlp_ratio": 4.0000000000000001'),
        None,
    ),
    "config: mlp_ratio 3.99": (BASE, _model(mlp_ratio=3.99), "needs"),
    "config: mlp_ratio NaN": (BASE, _replace_in_header(b'"mlp_ratio": 4.0', b'"mlp_ratio": NaN'), "mlp_ratio"),
    "config: action_scale a string": (BASE, _model(action_scale="x"), "action_scale"),
    "config: action_scale 0": (BASE, _model(action_scale=0), "action_scale"),
    "config: action_scale huge int": (BASE, _model(action_scale=10**40), None),
    "config: action_scale 1e400": (
        BASE,
        _replace_in_header(b'"action_scale": 100.0', b'"action_scale": 1e400'),
        "action_scale",
    ),
    "config: pose_weight -1": (BASE, _model(pose_weight=-1.0), "pose_weight"),
    "config: extra not a dict": (BASE, _model(extra=[]), "extra"),
    "config: predictor heads do not divide": (BASE, _model(predictor_heads=5), "predictor_heads"),
    "vit: valid": ("vit-full", lambda b: b, None),
    "vit: encoder heads do not divide": ("vit-full", _model(encoder_heads=5), "encoder_heads"),
    "vit: image not a multiple of the patch": ("vit-full", _model(patch_size=12), "patch_size"),
    "vit: cls_token misshapen": (
        "vit-full",
        _edit(lambda h: _entry(h, "encoder.cls_token").update(shape=[32])),
        "cls_token",
    ),
    "vit: missing block norm": ("vit-full", _remove("encoder.blocks.1.norm2.bias"), "norm2.bias"),
    "ternary: valid": ("vit-ternary", lambda b: b, None),
    "ternary: code 3": ("vit-ternary", _edit_data("predictor.blocks.0.mlp.0.weight", 3, b"\xc0"), "ternary code 3"),
    "ternary: missing scale": ("vit-ternary", _remove("predictor.blocks.0.mlp.0.weight.scale"), "scale"),
}


def _python_verdict(blob: bytes, folder: Path) -> str | None:
    """None when the numba-q4 backend loads the file, else its LeWorldError."""
    from world_models.backends.numba_engine import NumbaWorldModel
    from world_models.errors import LeWorldError

    path = folder / "candidate.lq40"
    path.write_bytes(blob)
    try:
        NumbaWorldModel.from_lq40(path)
    except LeWorldError as err:
        return str(err)
    return None


@pytest.mark.parametrize("case", list(CASES))
def test_the_reader_refuses_what_the_python_reader_refuses(fw, shipped_blob, tiny_files, tmp_path, case):
    source, mutate, keyword = CASES[case]
    blob = mutate(shipped_blob if source == BASE else tiny_files[source].read_bytes())
    python = _python_verdict(blob, tmp_path)
    model = fw.load(blob)
    assert (model.status == "OK") == (python is None), f"core: {model.status} {model.error!r}; python: {python!r}"
    if python is None:
        assert keyword is None and model.error == ""
    else:
        assert model.status == "BAD_MODEL", model.error
        assert keyword is not None and keyword in model.error, f"core: {model.error!r}; python: {python!r}"


def test_random_byte_corruption_gets_the_python_verdict(fw, tmp_path):
    """Flipped bytes anywhere in a small file's header: the core and Python agree on every one."""
    blob = tiny_lq40("full", 32, 16)
    (length,) = struct.unpack_from("<I", blob, 4)
    rng = np.random.default_rng(11)
    agree = 0
    for _ in range(150):
        at = int(rng.integers(0, 8 + length))
        mutated = bytearray(blob)
        mutated[at] = int(rng.integers(0, 256))
        mutated = bytes(mutated)
        python = _python_verdict(mutated, tmp_path)
        model = fw.load(mutated)
        assert (model.status == "OK") == (python is None), (at, model.error, python)
        agree += 1
    assert agree == 150


def _many_tensors(names: list[str], escape_last: bool = False) -> bytes:
    """A file of one f32 [1] tensor per name (no model config: a refusal after the manifest). With
    escape_last, the last entry's name is spelled with a JSON escape for its first letter."""
    tensors = [{"name": n, "dtype": "f32", "shape": [1], "offset": 64 * k, "nbytes": 4} for k, n in enumerate(names)]
    data = bytes(64 * len(names))
    header = {"format_version": 1, "alignment": 64, "tensors": tensors, "data_size": len(data)}
    head = json.dumps({**header, "data_crc32": zlib.crc32(data)}).encode()
    if escape_last:
        last = json.dumps(names[-1]).encode()
        at = head.rindex(last)
        head = head[:at] + b'"\\u%04x' % ord(names[-1][0]) + last[2:] + head[at + len(last) :]
    return _join_raw(head, data)


def test_colliding_tensor_names_cost_n_log_n_comparisons(fw, tmp_path):
    """4096 names with one 32-bit FNV-1a hash: the index (sorted, then searched) compares names
    O(n log n) times, where a pairwise duplicate check would compare n(n-1)/2 = 8.4 million pairs."""
    from tests.firmware_lib import fnv1a, fnv1a_multicollision

    names = fnv1a_multicollision(12)
    assert len(set(names)) == 4096 and len({fnv1a(n) for n in names}) == 1
    bound = 3 * len(names) * math.log2(len(names))
    start = time.perf_counter()
    model = fw.load(_many_tensors(names))
    elapsed = time.perf_counter() - start
    assert model.status == "BAD_MODEL" and "'model'" in model.error, model.error
    assert model.name_compares() <= bound, (model.name_compares(), bound)
    assert elapsed < 5, elapsed  # generous: about 0.02 s here; the pairwise check took seconds
    # Duplicates among them are still found, in Python's order, however the second one is spelled.
    for case, (listed, escape) in {
        "plain": ([*names[:300], names[123]], False),
        "escaped": ([*names[:300], names[123]], True),
        "past the device's limit": ([*names, names[4000]], False),
    }.items():
        blob = _many_tensors(listed, escape)
        python, model = _python_verdict(blob, tmp_path), fw.load(blob)
        assert python is not None and "appears twice" in python, (case, python)
        assert model.status == "BAD_MODEL", (case, model.error)
        assert model.error == f"tensor '{listed[-1]}': appears twice", (case, model.error)
    model = fw.load(_many_tensors([*names, "one.more"]))
    assert model.error == "more than 4096 tensors (this device's limit)"


def test_a_misaligned_buffer_is_refused_as_internal(fw, shipped_blob):
    from tests.firmware_lib import ERR_LEN

    buf = np.zeros(len(shipped_blob) // 8 + 2, np.uint64)
    raw = buf.view(np.uint8)
    raw[1 : 1 + len(shipped_blob)] = np.frombuffer(shipped_blob, np.uint8)
    struct_mem = np.zeros(fw.lib.lw_model_struct_size() // 8 + 1, np.uint64)
    err = ctypes.create_string_buffer(ERR_LEN)
    status = fw.lib.lw_model_load(struct_mem.ctypes.data, raw.ctypes.data + 1, len(shipped_blob), err)
    assert status == 12 and b"aligned" in err.value  # LW_INTERNAL


def test_crc32_is_zlibs(fw):
    rng = np.random.default_rng(5)
    for n in (0, 1, 9, 1000, 4097):
        data = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        assert fw.crc32(data) == zlib.crc32(data)
    assert fw.crc32(b"123456789") == 0xCBF43926


# ---------------------------------------------------------------- the JSON reader
class _Json(ctypes.Structure):
    _fields_ = [("s", ctypes.c_char_p), ("n", ctypes.c_uint32)]


class _Num(ctypes.Structure):
    _fields_ = [("kind", ctypes.c_int), ("i", ctypes.c_int64), ("f", ctypes.c_double), ("too_precise", ctypes.c_int)]


def _json_accepts(fw, text: bytes) -> bool:
    lib = fw.lib
    lib.lw_json_check.argtypes = [ctypes.c_char_p, ctypes.c_uint32, ctypes.c_char_p]
    return lib.lw_json_check(text, len(text), ctypes.create_string_buffer(256)) == 0


def _json_number(fw, token: str) -> _Num:
    lib = fw.lib
    lib.lw_json_number.argtypes = [ctypes.POINTER(_Json), ctypes.c_uint32, ctypes.POINTER(_Num)]
    raw = token.encode()
    assert _json_accepts(fw, raw), token
    out = _Num()
    lib.lw_json_number(ctypes.byref(_Json(raw, len(raw))), 0, ctypes.byref(out))
    return out


def _significant_digits(token: str) -> int:
    mantissa = token.lower().split("e")[0].lstrip("-").replace(".", "")
    return len(mantissa.strip("0"))


def _same_double(x: float, y: float) -> bool:
    return struct.pack("<d", x) == struct.pack("<d", y)


def test_json_floats_round_as_pythons_float(fw):
    """Float tokens of up to 19 significant digits: bit for bit Python's float() (correctly rounded),
    with no strtod; longer ones are flagged too_precise (the reader refuses them where it reads them)."""
    rng = random.Random(0)
    tokens = ["4.0", "4.0000000000000001", "0.1", "1e400", "-1e-400", "2.2250738585072011e-308", "-0.0", "0.000e5"]
    tokens += ["4.9406564584124654e-324", "2.4703282292062328e-324", "1.7976931348623158e308", "1" + "0" * 30 + ".0"]
    # The edges at 19 digits: just below / above half the largest double's ulp past it, half the
    # smallest subnormal, and the smallest normal.
    tokens += ["1.797693134862315807e308", "1.797693134862315808e308", "2.470328229206232720e-324"]
    tokens += ["2.470328229206232721e-324", "7.410984687618698162e-324", "2.225073858507201136e-308"]
    tokens += ["9999999999999999999e288", "9999999999999999999e-343", "1e-342", "1.0000000000000000000000"]
    for _ in range(3000):
        whole = "".join(rng.choice("0123456789") for _ in range(rng.randint(1, 12))).lstrip("0") or "0"
        frac = "".join(rng.choice("0123456789") for _ in range(rng.randint(1, 12)))
        exp = f"e{rng.randint(-345, 312)}" if rng.random() < 0.5 else ""
        digits = str(rng.randint(1, 9)) + "".join(rng.choice("0123456789") for _ in range(rng.randint(15, 18)))
        bits = struct.unpack("<d", struct.pack("<Q", rng.getrandbits(64)))[0]
        tokens += [
            f"{'-' if rng.random() < 0.3 else ''}{whole}.{frac}{exp}",
            repr(rng.random() * 10 ** rng.randint(-300, 300)),
            f"{digits[0]}.{digits[1:]}e{rng.randint(-345, 312)}",  # 16 to 19 digits, any exponent
            repr(bits) if math.isfinite(bits) else "1.5",  # any double's repr, subnormals included
        ]
        # ties: the midpoint of two doubles above 2^53 is an integer, of up to 19 digits below 10^19
        k = rng.randint(54, 63)
        ulp = 2 ** (k - 53)
        mid = int(float(rng.randint(2 ** (k - 1), 2**k - 1))) // ulp * ulp + ulp // 2
        if mid < 10**19:
            tokens += [f"{mid}.0", f"{mid - 1}e0", f"{mid + 1}.0"]
    # the closest tokens to ties below 2^53: a double's midpoint cut to 16 to 19 digits, up and down
    from decimal import ROUND_DOWN, ROUND_UP, Decimal, localcontext

    with localcontext() as ctx:
        ctx.prec = 800
        for _ in range(500):
            x = abs(struct.unpack("<d", struct.pack("<Q", rng.getrandbits(64)))[0])
            if not math.isfinite(x) or x == 0:
                continue
            mid = (Decimal(x) + Decimal(math.nextafter(x, math.inf))) / 2
            for digits in (16, 17, 18, 19):
                for mode in (ROUND_DOWN, ROUND_UP):
                    cut = mid.scaleb(-mid.adjusted()).quantize(Decimal(1).scaleb(1 - digits), rounding=mode)
                    tokens.append(f"{cut}e{mid.adjusted()}")
    exact = refused = 0
    for token in tokens:
        got = _json_number(fw, token)
        if _significant_digits(token) > 19:
            assert got.too_precise and math.isnan(got.f), token
            refused += 1
        else:
            assert not got.too_precise and _same_double(got.f, json.loads(token)), (token, got.f, json.loads(token))
            exact += 1
    assert exact > 20000 and refused > 200
    for token in ("1" + "0" * 30 + ".5", "0.10000000000000000001", "1." + "5" * 5000):
        assert _json_number(fw, token).too_precise, token
    for token, kind, value in (("9223372036854775807", 0, 2**63 - 1), ("-9223372036854775808", 0, -(2**63))):
        got = _json_number(fw, token)
        assert (got.kind, got.i) == (kind, value)
    assert _json_number(fw, "9223372036854775808").kind == 1  # huge: only its sign is kept
    assert _json_number(fw, "-1" + "0" * 30).i == -1


def test_the_core_calls_no_strtod_and_no_allocator(fw):
    """The float reader is the core's own: picolibc's strtod (rv32) is not correctly rounded past about
    19 digits and newlib's (ESP-IDF) may allocate; the core allocates nothing anywhere."""
    require_tools("nm")
    listing = subprocess.run(["nm", "-D", "--undefined-only", fw.lib._name], capture_output=True, text=True, check=True)
    called = {line.split()[-1].split("@")[0] for line in listing.stdout.splitlines() if line.strip()}
    assert "memcpy" in called  # the listing is the library's imports
    assert not called & {"strtod", "strtof", "strtold", "sscanf", "atof", "malloc", "calloc", "realloc", "free"}


@pytest.mark.parametrize(
    ("old", "new", "field"),
    [
        (b'"mlp_ratio": 4.0', b'"mlp_ratio": 4.0000000000000000000001', "field mlp_ratio"),
        (b'"action_scale": 100.0', b'"action_scale": 100.00000000000000000001', "field action_scale"),
        (b'"format_version": 1, "a', b'"format_version": 1.00000000000000000001, "a', "'format_version'"),
    ],
)
def test_a_float_of_more_than_19_digits_is_refused_naming_its_field(fw, shipped_blob, tmp_path, old, new, field):
    """The one place a device refuses what Python reads (Python rounds these to 4.0, 100.0, 1): a
    number no writer of this package produces (repr writes at most 17 significant digits)."""
    blob = _replace_in_header(old, new)(shipped_blob)
    assert _python_verdict(blob, tmp_path) is None
    model = fw.load(blob)
    assert model.status == "BAD_MODEL" and field in model.error, model.error
    assert "more than 19 significant digits: a device reads numbers as Python's json writer writes them" in model.error
    # 19 digits are read (exactly, as Python reads them): 4.000000000000000001 is 4.0
    nineteen = _replace_in_header(b'"mlp_ratio": 4.0', b'"mlp_ratio": 4.000000000000000001')(shipped_blob)
    assert fw.load(nineteen).status == "OK" and _python_verdict(nineteen, tmp_path) is None


def test_json_grammar_agrees_with_pythons_json(fw):
    """Random short texts over JSON's alphabet: accepted exactly when json.loads(text.decode()) accepts."""
    rng = random.Random(1)
    pieces = ["{", "}", "[", "]", ",", ":", " ", "\t", "\n", '"', '"a"', '"\\u00e9"', '"\\ud83d\\ude00"', '"\\x"']
    pieces += ['"\\', "1", "-", "0", ".5", "e3", "E+", "true", "false", "null", "NaN", "Infinity", "-Infinity"]
    pieces += ["\x01", "\xc3\xa9", "\xc3", "\xef\xbb\xbf"]  # a control byte, UTF-8 e-acute, a cut one, a BOM
    checked = 0
    for _ in range(4000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(1, 8))).encode("latin-1")
        try:
            json.loads(text.decode("utf-8"))
            python = True
        except (UnicodeDecodeError, ValueError, RecursionError):
            python = False
        assert _json_accepts(fw, text) == python, text
        checked += python
    assert checked > 100  # enough valid documents among the random ones


# ---------------------------------------------------------------- generated tables, timing
def test_fixed_tables_header_is_what_the_generator_writes_now():
    sys.path.insert(0, str(ROOT / "firmware" / "tools"))
    try:
        import gen_tables
    finally:
        sys.path.pop(0)
    header = ROOT / "firmware" / "core" / "fixed_tables.h"
    assert header.read_text() == gen_tables.render(), "stale: run python firmware/tools/gen_tables.py"
    from numba_kernels import fixed_point as fx

    for name, crc in fx.ROM_CRC32.items():
        assert f"LW_FX_{name}_CRC32 {crc}u" in header.read_text()


def test_report_predict_time_per_latent(shipped, reference, clips):
    """Informative: C predict per latent on one core against numba-q4 (printed, never asserted)."""
    _, z, a, _ = clips
    for batch in (1, 32):
        zb, ab = np.resize(z, (batch, *z.shape[1:])), np.resize(a, (batch, *a.shape[1:]))
        shipped.set_arena(shipped.scratch_bytes(batch))
        reference.predict(zb, ab)  # compile
        timings = {}
        for name, fn in (("C", shipped.predict), ("numba-q4", reference.predict)):
            start, runs = time.perf_counter(), 0
            while time.perf_counter() - start < 0.5:
                fn(zb, ab)
                runs += 1
            timings[name] = (time.perf_counter() - start) / runs / batch * 1e6
        print(f"\npredict B={batch}: C {timings['C']:.0f} us/latent, numba-q4 {timings['numba-q4']:.0f} us/latent")
