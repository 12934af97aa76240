"""The LQ40 file: one quantized model (and its probe) in a single checked binary.

Layout (docs/lq40.md has the byte-by-byte description)::

    offset 0   4 bytes   magic b"LQ40"
    offset 4   uint32    header length L (little-endian)
    offset 8   L bytes   header: UTF-8 JSON (format_version, model config, quantization, tensor manifest,
                         data_size, data_crc32)
    ...        zeros     padding to the next multiple of 64
    data_start           tensor data; each tensor at data_start + its offset (a multiple of 64)

The reader checks, before it touches any tensor: magic, header length,
JSON, format version, every manifest entry (name, dtype, shape, offset,
byte count, alignment, bounds, overlaps), the data size and the CRC-32 of
the data; then the values (finite float32 tensors and scales, valid ternary
codes). Every problem is a :class:`LeWorldError` naming the file and field;
every size the file declares is checked against the file's own size before
anything is allocated. :func:`read_model` then checks the tensors against the
model's layout (:mod:`world_models.backends.layout`). This module never imports torch.

The probe: an LQ40 file carries a float32 copy of its model folder's probe (the ``probe.*``
tensors). When the file is a model folder's ``model.lq40``, :func:`read_model` checks that copy
against the folder's ``probe.safetensors`` and refuses a stale one (the probe refit after
quantizing), and, where the header names ``source_sha256`` (the SHA-256 of the
``model.safetensors`` it was quantized from), checks it against the folder's ``config.json``
checksum. :func:`replace_probe` rewrites the copy; :func:`save_folder_probe` calls it whenever
it writes a folder's probe (`leworld probe`).
"""

from __future__ import annotations

import json
import math
import struct
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from numba_kernels.linear import QLinear
from numba_kernels.quant import F16_TO_F32, Q4_0_BLOCK_BYTES, Q8_0_BLOCK_BYTES, QK, ternary_codes_valid
from world_models.backends.layout import linear_shapes, other_shapes
from world_models.config import ModelConfig
from world_models.errors import LeWorldError
from world_models.files import PROBE_FILE, SHA256_KEY, atomic_write_bytes, check_finite_tensors, read_safetensors

MAGIC = b"LQ40"
FORMAT_VERSION = 1
ALIGN = 64
MAX_HEADER = 16 << 20
DTYPES = ("f32", "q4_0", "q8_0", "i8", "t2")
SCALE_SUFFIX = ".scale"  # float32 [N] per-row scales of an i8 or t2 weight
PROBE_PREFIX = "probe."  # the probe's tensors: its state dict's names under this prefix, all float32
SOURCE_SHA256 = "source_sha256"  # header field: SHA-256 of the model.safetensors the file was quantized from


def tensor_nbytes(dtype: str, shape: tuple[int, ...]) -> int:
    """Stored bytes of a tensor (logical ``shape``; quantized dtypes are [N, K] matrices)."""
    if dtype == "f32":
        return 4 * math.prod(shape)
    n, k = shape
    return {
        "q4_0": n * (k // QK) * Q4_0_BLOCK_BYTES,
        "q8_0": n * (k // QK) * Q8_0_BLOCK_BYTES,
        "i8": n * k,
        "t2": n * -(-k // 4),
    }[dtype]


@dataclass
class Tensor:
    """One stored tensor: ``data`` is float32 of ``shape`` (f32) or uint8 rows [N, row bytes] (quantized)."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    data: np.ndarray


def _align(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def encode_lq40(header: Mapping[str, Any], tensors: list[Tensor]) -> bytes:
    """The bytes of an LQ40 file: ``header`` (model, quantization, ...) plus the manifest of ``tensors``."""
    manifest, chunks, offset = [], [], 0
    for t in tensors:
        raw = np.ascontiguousarray(t.data).tobytes()
        if len(raw) != tensor_nbytes(t.dtype, t.shape):
            raise LeWorldError(
                f"tensor {t.name}: {len(raw)} bytes, {t.dtype} {list(t.shape)} needs {tensor_nbytes(t.dtype, t.shape)}"
            )
        manifest.append(
            {"name": t.name, "dtype": t.dtype, "shape": list(t.shape), "offset": offset, "nbytes": len(raw)}
        )
        chunks.append(raw + bytes(_align(len(raw)) - len(raw)))
        offset += _align(len(raw))
    data = b"".join(chunks)
    full = {
        **header,
        "format": "lq40",
        "format_version": FORMAT_VERSION,
        "alignment": ALIGN,
        "tensors": manifest,
        "data_size": len(data),
        "data_crc32": zlib.crc32(data),
    }
    head = json.dumps(full, separators=(",", ":")).encode()
    start = _align(8 + len(head))
    return MAGIC + struct.pack("<I", len(head)) + head + bytes(start - 8 - len(head)) + data


def write_lq40(path: Path, header: Mapping[str, Any], tensors: list[Tensor]) -> int:
    """Write an LQ40 file atomically; returns its size in bytes."""
    blob = encode_lq40(header, tensors)
    atomic_write_bytes(Path(path), blob)
    return len(blob)


def _field(entry: dict, key: str, kind: type, where: str) -> Any:
    value = entry.get(key)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise LeWorldError(f"{where}: field {key!r} must be {kind.__name__}, got {value!r}")
    return value


def parse_lq40(blob: bytes, source: str = "<bytes>") -> tuple[dict[str, Any], dict[str, Tensor]]:
    """Check an LQ40 file's bytes and return (header, tensors by name). Nothing is trusted before it is checked.

    In order: the header (:func:`_parse_header`), the data's size and CRC-32 (:func:`_checked_data`), then
    each manifest entry (:func:`_manifest_entry`), its place in the data (:func:`_check_place`) and its
    values (:func:`_read_tensor`).
    """
    header, start = _parse_header(blob, source)
    data = _checked_data(blob, header, start, source)
    manifest = header.get("tensors")
    if not isinstance(manifest, list):
        raise LeWorldError(f"{source}: field 'tensors' must be a list")
    tensors: dict[str, Tensor] = {}
    end = 0
    for i, entry in enumerate(manifest):
        name, dtype, shape, offset, nbytes, where = _manifest_entry(entry, f"{source}: tensors[{i}]", source)
        _check_place(offset, nbytes, end, len(data), where)
        if name in tensors:
            raise LeWorldError(f"{where}: appears twice")
        end = offset + nbytes
        tensors[name] = _read_tensor(data[offset:end], name, dtype, shape, where)
    return header, tensors


def _parse_header(blob: bytes, source: str) -> tuple[dict[str, Any], int]:
    """The checked JSON header (magic, length, UTF-8 JSON object, format version, alignment) and where the data
    starts."""
    size = len(blob)
    if size < 8 or blob[:4] != MAGIC:
        raise LeWorldError(f"{source}: not an LQ40 file (the first 4 bytes must be {MAGIC!r}, got {blob[:4]!r})")
    (head_len,) = struct.unpack_from("<I", blob, 4)
    if head_len > min(size - 8, MAX_HEADER):
        raise LeWorldError(f"{source}: header length {head_len} runs past the end of the file ({size} bytes)")
    try:
        header = json.loads(blob[8 : 8 + head_len].decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as err:  # ValueError: JSONDecodeError, huge ints
        raise LeWorldError(f"{source}: the header is not UTF-8 JSON ({err})") from None
    if not isinstance(header, dict):
        raise LeWorldError(f"{source}: the header must be a JSON object")
    if header.get("format_version") != FORMAT_VERSION:
        raise LeWorldError(
            f"{source}: format_version {header.get('format_version')!r} is not supported "
            f"(this reader reads {FORMAT_VERSION})"
        )
    if header.get("alignment") != ALIGN:
        raise LeWorldError(f"{source}: alignment must be {ALIGN}, got {header.get('alignment')!r}")
    return header, _align(8 + head_len)


def _checked_data(blob: bytes, header: dict[str, Any], start: int, source: str) -> memoryview:
    """The tensor data, once its size fits the file and its CRC-32 the header's ``data_crc32``."""
    size = len(blob)
    data_size = _field(header, "data_size", int, source)
    if start + data_size != size:
        raise LeWorldError(
            f"{source}: data_size {data_size} does not match the file: {size} bytes with data at "
            f"{start} leaves {size - start}"
        )
    data = memoryview(blob)[start:]
    if zlib.crc32(data) != header.get("data_crc32"):
        raise LeWorldError(
            f"{source}: checksum mismatch: the tensor data is corrupted (CRC-32 "
            f"{zlib.crc32(data)} != header data_crc32 {header.get('data_crc32')!r})"
        )
    return data


def _manifest_entry(entry: Any, where: str, source: str) -> tuple[str, str, list[int], int, int, str]:
    """One manifest entry's checked (name, dtype, shape, offset, nbytes, and where: the name errors use)."""
    if not isinstance(entry, dict):
        raise LeWorldError(f"{where} must be an object")
    name = _field(entry, "name", str, where)
    where = f"{source}: tensor {name!r}"
    dtype = _field(entry, "dtype", str, where)
    if dtype not in DTYPES:
        raise LeWorldError(f"{where}: unknown dtype {dtype!r}; expected one of {', '.join(DTYPES)}")
    shape = _field(entry, "shape", list, where)
    if not (1 <= len(shape) <= 4) or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in shape):
        raise LeWorldError(f"{where}: shape {shape!r} must be 1 to 4 positive integers")
    if dtype != "f32" and (len(shape) != 2 or (dtype in ("q4_0", "q8_0") and shape[1] % QK)):
        raise LeWorldError(
            f"{where}: a {dtype} tensor must be [N, K]"
            f"{' with K a multiple of 32' if dtype in ('q4_0', 'q8_0') else ''}, got {shape}"
        )
    offset = _field(entry, "offset", int, where)
    nbytes = _field(entry, "nbytes", int, where)
    if nbytes != tensor_nbytes(dtype, tuple(shape)):
        raise LeWorldError(
            f"{where}: nbytes {nbytes} does not fit {dtype} {shape} ({tensor_nbytes(dtype, tuple(shape))} bytes)"
        )
    return name, dtype, shape, offset, nbytes, where


def _check_place(offset: int, nbytes: int, end: int, data_size: int, where: str) -> None:
    """A tensor's bytes: aligned, after the previous tensor's ``end``, inside the data."""
    if offset % ALIGN or offset < end or offset + nbytes > data_size:
        raise LeWorldError(
            f"{where}: offset {offset} (+{nbytes} bytes) is misaligned, overlaps the previous "
            f"tensor or runs past the data ({data_size} bytes)"
        )


def _read_tensor(raw_bytes: memoryview, name: str, dtype: str, shape: list[int], where: str) -> Tensor:
    """A tensor from its bytes, once its values are valid (finite floats and scales, valid ternary codes)."""
    raw = np.frombuffer(raw_bytes, dtype=np.uint8).copy()
    if dtype == "f32":
        array = raw.view(np.float32).reshape(shape)
        check_finite_tensors({name: array}, where.removesuffix(f": tensor {name!r}"))
    else:
        array = raw.reshape(shape[0], -1)
        _check_codes(array, dtype, where)
    return Tensor(name, dtype, tuple(shape), array)


def _check_codes(rows: np.ndarray, dtype: str, where: str) -> None:
    if dtype in ("q4_0", "q8_0"):
        width = Q4_0_BLOCK_BYTES if dtype == "q4_0" else Q8_0_BLOCK_BYTES
        blocks = rows.reshape(-1, width)
        scales = F16_TO_F32[blocks[:, 0].astype(np.int64) | (blocks[:, 1].astype(np.int64) << 8)]
        if not np.all(np.isfinite(scales)):
            raise LeWorldError(f"{where}: a block scale is NaN or inf")
    elif dtype == "t2" and not ternary_codes_valid(rows):
        raise LeWorldError(f"{where}: holds the invalid ternary code 3")


def read_lq40(path: Path) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """Read and check an LQ40 file; see :func:`parse_lq40`."""
    path = Path(path)
    try:
        blob = path.read_bytes()
    except OSError as err:
        raise LeWorldError(f"{path}: cannot read ({err.strerror or err})") from None
    return parse_lq40(blob, str(path))


def layers_from_tensors(
    tensors: Mapping[str, Tensor], shapes: Mapping[str, tuple[int, int]], source: str
) -> dict[str, QLinear]:
    """Build a :class:`QLinear` for every linear prefix in ``shapes`` from stored tensors."""
    layers = {}
    for prefix, (n, k) in shapes.items():
        weight, bias = tensors.get(f"{prefix}.weight"), tensors.get(f"{prefix}.bias")
        if weight is None or bias is None:
            raise LeWorldError(f"{source}: missing tensor {prefix}.{'weight' if weight is None else 'bias'}")
        if weight.shape != (n, k) or bias.shape != (n,) or bias.dtype != "f32":
            raise LeWorldError(
                f"{source}: layer {prefix} is stored as {weight.dtype} {list(weight.shape)} with bias "
                f"{list(bias.shape)}; the model config needs [{n}, {k}] and [{n}] (f32)"
            )
        scale = tensors.get(prefix + ".weight" + SCALE_SUFFIX)
        if weight.dtype in ("i8", "t2") and (scale is None or scale.shape != (n,) or scale.dtype != "f32"):
            raise LeWorldError(
                f"{source}: layer {prefix} ({weight.dtype}) needs an f32 [{n}] tensor {prefix}.weight{SCALE_SUFFIX}"
            )
        try:
            if weight.dtype == "f32":
                layers[prefix] = QLinear("f32", k, n, bias.data, weight=weight.data)
            else:
                s = scale.data if scale is not None else np.zeros(0, np.float32)
                layers[prefix] = QLinear(weight.dtype, k, n, bias.data, data=weight.data, scale=s)
        except ValueError as err:
            raise LeWorldError(f"{source}: layer {prefix}: {err}") from None
    return layers


def is_lq40(path: Path) -> bool:
    """True when ``path`` is a file that starts with the LQ40 magic (a previous ``leworld quantize`` result)."""
    try:
        with open(path, "rb") as f:
            return f.read(len(MAGIC)) == MAGIC
    except OSError:
        return False


def read_model(path: Path) -> tuple[ModelConfig, dict[str, QLinear], dict[str, np.ndarray], dict[str, Any]]:
    """An LQ40 model: (config, linear layers, other float32 tensors, header). A model folder's
    ``model.lq40`` must agree with the folder (:func:`check_folder_copy`)."""
    path = Path(path)
    header, tensors = read_lq40(path)
    if not isinstance(header.get("model"), dict):
        raise LeWorldError(f"{path}: header field 'model' (the model config) must be an object")
    cfg = ModelConfig.from_dict(header["model"], source=f"{path}: header field 'model'")
    probe = tensors.get("probe.net.0.weight")
    probe_hidden = probe.shape[0] if probe is not None else None
    layers = layers_from_tensors(tensors, linear_shapes(cfg, probe_hidden), str(path))
    wanted = other_shapes(cfg, probe_hidden is not None)
    others = {}
    for name in wanted:
        t = tensors.get(name)
        if t is None or t.dtype != "f32":
            raise LeWorldError(f"{path}: missing f32 tensor {name}")
        others[name] = t.data
    check_folder_copy(path, header, tensors)
    return cfg, layers, others, header


def check_folder_copy(path: Path, header: Mapping[str, Any], tensors: Mapping[str, Tensor]) -> None:
    """Where ``path`` is a model folder's ``model.lq40``: its probe must equal the folder's
    ``probe.safetensors`` (value for value: both are float32), and its ``source_sha256`` (when the
    header has one) the folder's ``config.json`` checksum.

    Raises:
        LeWorldError: naming the file, what differs and how to rewrite it.
    """
    from world_models.locate import LQ40_FILE

    path = Path(path)
    folder = path.parent
    if path.name != LQ40_FILE or not (folder / "config.json").is_file():
        return
    mode = header.get("quantization", {}).get("mode", "full") if isinstance(header.get("quantization"), dict) else ""
    requantize = f"leworld quantize --model {folder} --mode {mode} --out {path}"
    source = header.get(SOURCE_SHA256)
    if isinstance(source, str):
        try:
            weights = json.loads((folder / "config.json").read_text()).get(SHA256_KEY)
        except (OSError, UnicodeDecodeError, ValueError, RecursionError, AttributeError):
            weights = None  # the folder's own loader names what is wrong with its config.json
        if isinstance(weights, str) and weights != source:
            raise LeWorldError(
                f"{path}: was quantized from other weights than {folder / 'model.safetensors'} (header "
                f"{SOURCE_SHA256} {source}, config.json {SHA256_KEY} {weights}): it is stale; rewrite it: {requantize}"
            )
    if not (folder / PROBE_FILE).exists():
        return
    probe = read_safetensors(folder / PROBE_FILE)
    copy = {name[len(PROBE_PREFIX) :]: t for name, t in tensors.items() if name.startswith(PROBE_PREFIX)}
    same = set(copy) == set(probe) and all(
        copy[k].dtype == "f32"
        and copy[k].shape == tuple(probe[k].shape)
        and np.array_equal(copy[k].data.reshape(probe[k].shape), probe[k])
        for k in probe
    )
    if not same:
        what = "carries no probe" if not copy else "carries a different probe"
        raise LeWorldError(
            f"{path}: {what} than {folder / PROBE_FILE} (the probe was refit after quantizing), so this backend "
            f"and the float32 ones would disagree; rewrite it: leworld probe --model {folder} ..., or {requantize}"
        )


def probe_tensors_for(header: Mapping[str, Any], probe: Mapping[str, np.ndarray], source: str) -> dict[str, np.ndarray]:
    """A probe's state dict (``z_mean``, ``z_std``, ``net.*``) as the float32 ``probe.*`` tensors of the LQ40
    file whose header is ``header``, once it fits that file's model.

    Raises:
        LeWorldError: naming ``source``, when the probe's latent size is not the model's or a tensor is missing.
    """
    model = header.get("model")
    latent = model.get("latent_dim") if isinstance(model, dict) else None
    arrays = {PROBE_PREFIX + k: np.ascontiguousarray(v, dtype=np.float32) for k, v in probe.items()}
    wanted = ("probe.z_mean", "probe.z_std", "probe.net.0.weight", "probe.net.0.bias", "probe.net.2.weight")
    missing = [k for k in wanted if k not in arrays]
    if missing:
        raise LeWorldError(f"{source}: the new probe lacks {', '.join(missing)}")
    if arrays["probe.z_mean"].shape != (latent,) or arrays["probe.net.0.weight"].shape[1:] != (latent,):
        raise LeWorldError(
            f"{source}: cannot carry the new probe: it reads latents of size {arrays['probe.z_mean'].shape[0]}, "
            f"the model in this file has latent_dim {latent!r}; rewrite the file with leworld quantize"
        )
    check_finite_tensors(arrays, source)
    return arrays


def replace_probe(path: Path, probe: Mapping[str, np.ndarray], parsed: tuple[dict, dict] | None = None) -> int:
    """Rewrite the LQ40 file ``path`` (atomically) with ``probe`` (:func:`probe_tensors_for`'s tensors) in
    place of the probe it carries: every other tensor and header field is kept byte for byte, and the
    tensors keep their order (a probe equal to the old one gives the same file). ``parsed``: the file's
    :func:`read_lq40`, when the caller has read it already. Returns the file's size."""
    header, tensors = parsed if parsed is not None else read_lq40(path)
    new = {k: Tensor(k, "f32", tuple(v.shape), v) for k, v in probe.items()}
    out = [new.get(name, t) for name, t in tensors.items() if not name.startswith(PROBE_PREFIX) or name in new]
    out += [t for name, t in new.items() if name not in tensors]
    kept = {k: v for k, v in header.items() if k not in ("format", "format_version", "alignment", "tensors")}
    kept = {k: v for k, v in kept.items() if k not in ("data_size", "data_crc32")}
    return write_lq40(path, kept, out)


def save_folder_probe(folder: Path, probe: Any, probe_info: Mapping[str, Any] | None = None) -> None:
    """Write a model folder's probe everywhere it lives: ``probe.safetensors`` and ``probe.json``
    (:func:`world_models.lewm.folder.save_probe`) and the copy inside the folder's ``model.lq40``, if
    there is one (``leworld probe`` calls this, so numba-q4 never plans with an old probe).

    Raises:
        LeWorldError: a probe tensor holds NaN or inf, or ``model.lq40`` cannot take this probe
            (unreadable, or a model of another latent size); both are found before anything is written.
    """
    from world_models.lewm.folder import save_probe
    from world_models.locate import LQ40_FILE

    lq40 = Path(folder) / LQ40_FILE
    parsed, arrays = None, None
    if lq40.is_file():
        parsed = read_lq40(lq40)
        state = {k: v.detach().cpu().numpy() for k, v in probe.state_dict().items()}
        arrays = probe_tensors_for(parsed[0], state, str(lq40))
    save_probe(folder, probe, dict(probe_info or {}))
    if parsed is not None and arrays is not None:
        replace_probe(lq40, arrays, parsed)
