"""The LQ40 reader: round trips, and every kind of broken file gives a clean LeWorldError."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import world_models
from tests.test_numba_backend import inputs, model_dir  # noqa: F401  (fixture)
from world_models.backends.lq40 import ALIGN, MAGIC, Tensor, encode_lq40, parse_lq40, read_model
from world_models.backends.quantize import quantize_folder
from world_models.errors import LeWorldError


@pytest.fixture(scope="module")
def lq40_blob(model_dir, tmp_path_factory):  # noqa: F811
    path = tmp_path_factory.mktemp("lq40") / "m.lq40"
    quantize_folder(model_dir, "full", path)
    return path.read_bytes()


def split(blob: bytes) -> tuple[dict, bytes]:
    (length,) = struct.unpack_from("<I", blob, 4)
    start = -(-(8 + length) // ALIGN) * ALIGN
    return json.loads(blob[8 : 8 + length]), blob[start:]


def join(header: dict, data: bytes) -> bytes:
    head = json.dumps(header).encode()
    start = -(-(8 + len(head)) // ALIGN) * ALIGN
    return MAGIC + struct.pack("<I", len(head)) + head + bytes(start - 8 - len(head)) + data


def load_blob(blob: bytes, tmp_path) -> object:
    path = tmp_path / "x.lq40"
    path.write_bytes(blob)
    return world_models.load(path, backend="numba-q4")


def test_round_trip_keeps_every_tensor_bit_for_bit():
    rng = np.random.default_rng(0)
    tensors = [
        Tensor("a", "f32", (3, 5), rng.standard_normal((3, 5)).astype(np.float32)),
        Tensor("b", "q4_0", (2, 64), rng.integers(0, 256, (2, 36), dtype=np.uint8)),
        Tensor("c", "t2", (2, 5), np.zeros((2, 2), np.uint8)),
    ]
    blob = encode_lq40({"note": "x"}, tensors)
    header, back = parse_lq40(blob)
    assert header["note"] == "x" and header["format_version"] == 1
    for t in tensors:
        np.testing.assert_array_equal(back[t.name].data.reshape(t.data.shape), t.data)
        assert back[t.name].dtype == t.dtype and back[t.name].shape == t.shape
    offsets = [e["offset"] for e in header["tensors"]]
    assert all(o % ALIGN == 0 for o in offsets) and offsets == sorted(offsets)


def test_a_written_model_loads_and_runs(lq40_blob, tmp_path):
    wm = load_blob(lq40_blob, tmp_path)
    pixels, z, a = inputs(2)
    assert wm.encode(pixels).shape == (2, wm.config.latent_dim)
    assert np.all(np.isfinite(wm.predict(z, a)))


def corrupt_header(blob: bytes, edit) -> bytes:
    header, data = split(blob)
    edit(header)
    return join(header, data)


def entry(header: dict, suffix: str) -> dict:
    return next(e for e in header["tensors"] if e["name"].endswith(suffix))


def shift_second_offset(header: dict) -> None:
    header["tensors"][1]["offset"] += 4


CASES = {
    "bad magic": (lambda b: b"LQ41" + b[4:], "not an LQ40 file"),
    "header length past the end": (lambda b: b[:4] + struct.pack("<I", len(b)) + b[8:], "runs past the end"),
    "truncated": (lambda b: b[: len(b) - 100], "data_size"),
    "empty": (lambda b: b"", "not an LQ40 file"),
    "flipped data byte": (lambda b: b[:-70] + bytes([b[-70] ^ 0x10]) + b[-69:], "checksum mismatch"),
    "header not JSON": (lambda b: b[:8] + b"\xff" + b[9:], "not UTF-8 JSON"),
    "future version": (lambda b: corrupt_header(b, lambda h: h.update(format_version=2)), "format_version 2"),
    "unknown dtype": (
        lambda b: corrupt_header(b, lambda h: entry(h, "qkv.weight").update(dtype="q3_k")),
        "unknown dtype 'q3_k'",
    ),
    "offset out of range": (
        lambda b: corrupt_header(b, lambda h: h["tensors"][-1].update(offset=h["data_size"])),
        "runs past the data",
    ),
    "misaligned offset": (lambda b: corrupt_header(b, shift_second_offset), "misaligned"),
    "nbytes lie": (lambda b: corrupt_header(b, lambda h: entry(h, "qkv.weight").update(nbytes=10)), "does not fit"),
    "shape that the config does not need": (
        lambda b: corrupt_header(b, lambda h: h["model"].update(latent_dim=h["model"]["latent_dim"] * 2)),
        "the model config needs",
    ),
    "missing tensor": (
        lambda b: corrupt_header(b, lambda h: h["tensors"].remove(entry(h, "predictor.norm.bias"))),
        "missing f32 tensor predictor.norm.bias",
    ),
    "bad config": (lambda b: corrupt_header(b, lambda h: h["model"].update(encoder_heads=0)), "encoder_heads must be"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_broken_files_give_clean_errors(lq40_blob, tmp_path, case):
    breaker, message = CASES[case]
    with pytest.raises(LeWorldError, match=message):
        load_blob(breaker(lq40_blob), tmp_path)


def test_non_finite_weights_are_refused(lq40_blob, tmp_path):
    header, data = split(lq40_blob)
    bias = entry(header, "predictor.norm.bias")
    data = bytearray(data)
    data[bias["offset"] : bias["offset"] + 4] = np.array([np.nan], np.float32).tobytes()
    import zlib

    header["data_crc32"] = zlib.crc32(bytes(data))
    with pytest.raises(LeWorldError, match=r"predictor\.norm\.bias.*NaN or inf"):
        load_blob(join(header, bytes(data)), tmp_path)
    header, data = split(lq40_blob)
    data = bytearray(data)
    q4 = entry(header, "predictor.blocks.0.mlp.0.weight")
    data[q4["offset"] : q4["offset"] + 2] = np.array([np.inf], np.float16).tobytes()  # a Q4_0 block scale
    header["data_crc32"] = zlib.crc32(bytes(data))
    with pytest.raises(LeWorldError, match="block scale is NaN or inf"):
        load_blob(join(header, bytes(data)), tmp_path)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(LeWorldError, match=r"nope\.lq40"):
        read_model(tmp_path / "nope.lq40")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzzed_files_load_or_fail_cleanly(lq40_blob, tmp_path, data):
    """Random byte edits (mostly in the header, where a checksum does not guard) and truncations."""
    blob = bytearray(lq40_blob)
    (length,) = struct.unpack_from("<I", blob, 4)
    for _ in range(data.draw(st.integers(1, 4))):
        where = data.draw(st.one_of(st.integers(0, 8 + length - 1), st.integers(0, len(blob) - 1)))
        blob[where] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        blob = blob[: data.draw(st.integers(0, len(blob)))]
    try:
        wm = load_blob(bytes(blob), tmp_path)
    except LeWorldError:
        return
    # a harmless edit: the model must still run
    wm.encode(np.zeros((1, wm.config.image_size, wm.config.image_size, 3), np.uint8))


def with_header(head: dict) -> bytes:
    raw = json.dumps({"format_version": 1, "alignment": ALIGN, **head}).encode()
    return MAGIC + struct.pack("<I", len(raw)) + raw


@pytest.mark.parametrize(
    ("blob", "message"),
    [
        (with_header({"data_size": 2**62}), "data_size"),  # a declared size far past the file
        (with_header({}), "field 'data_size' must be int"),
        (MAGIC + struct.pack("<I", 2**32 - 1), "runs past the end"),
        (MAGIC + b"\x01", "not an LQ40 file"),
    ],
)
def test_declared_sizes_are_checked_against_the_file_before_anything_is_allocated(tmp_path, blob, message):
    path = tmp_path / "x.lq40"
    path.write_bytes(blob)
    with pytest.raises(LeWorldError, match=message):
        read_model(path)


def test_a_manifest_that_declares_more_than_the_file_holds(lq40_blob, tmp_path):
    header, data = split(lq40_blob)
    header["tensors"][0]["shape"] = [2**40, 2**20]  # terabytes, in a file of one megabyte
    with pytest.raises(LeWorldError, match=r"does not fit|runs past the data"):
        load_blob(join(header, data), tmp_path)
