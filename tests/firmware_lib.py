"""ctypes bindings of the firmware core's model API (firmware/include/lw_model.h), for the tests.

:func:`build_library` builds ``liblwcore.so`` with the firmware's own Makefile into a folder;
:class:`FirmwareLib` loads it and :class:`FirmwareModel` holds one loaded ``.lq40`` (the file's bytes
and the model struct live as long as the object) with numpy in, numpy out. Every call returns
``(status name, output or None, error message)``, so a test can assert on refusals as on results.
"""

from __future__ import annotations

import ctypes
import subprocess
from pathlib import Path

import numpy as np

FIRMWARE = Path(__file__).resolve().parents[1] / "firmware"
ERR_LEN = 256  # LW_ERR_LEN
STATUS = (
    "OK",
    "UNSUPPORTED_VERSION",
    "UNKNOWN_COMMAND",
    "BAD_PAYLOAD",
    "NO_MODEL",
    "BAD_INPUT",
    "UNSUPPORTED",
    "TOO_LARGE",
    "LOAD_OFFSET",
    "LOAD_CHECKSUM",
    "BAD_MODEL",
    "STALE_SEQUENCE",
    "INTERNAL",
)
OPS = ("predict", "rollout", "encode", "fixed_predict", "fixed_rollout")  # lw_op


class Info(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_uint32)
        for name in ("latent_dim", "action_dim", "history", "image_size", "has_encoder_weights", "fixed_point_ok")
    ]


class Arena(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("size", ctypes.c_size_t), ("used", ctypes.c_size_t)]


def build_library(build_dir: Path) -> Path:
    """``make -C firmware BUILD=build_dir build_dir/liblwcore.so``; returns the library's path."""
    build_dir = Path(build_dir)
    target = build_dir / "liblwcore.so"
    subprocess.run(
        ["make", "-s", "-C", str(FIRMWARE), f"BUILD={build_dir}", str(target)],
        check=True,
        capture_output=True,
        text=True,
    )
    return target


def _ptr(array: np.ndarray, ctype) -> ctypes._Pointer:
    return array.ctypes.data_as(ctypes.POINTER(ctype))


class FirmwareLib:
    """The shared library with argument types declared."""

    def __init__(self, path: Path) -> None:
        lib = self.lib = ctypes.CDLL(str(path))
        p, u32, sz = ctypes.c_void_p, ctypes.c_uint32, ctypes.c_size_t
        lib.lw_model_struct_size.restype = sz
        lib.lw_model_load.argtypes = [p, p, u32, ctypes.c_char_p]
        lib.lw_model_get_info.argtypes = [p, ctypes.POINTER(Info)]
        lib.lw_model_predict.argtypes = [p, ctypes.POINTER(Arena), p, p, u32, u32, p, ctypes.c_char_p]
        lib.lw_model_rollout.argtypes = [p, ctypes.POINTER(Arena), p, p, p, u32, u32, u32, p, ctypes.c_char_p]
        lib.lw_model_encode.argtypes = [p, ctypes.POINTER(Arena), p, u32, p, ctypes.c_char_p]
        lib.lw_fixed_quantize.argtypes = [p, sz, p, ctypes.c_char_p]
        lib.lw_fixed_predict.argtypes = lib.lw_model_predict.argtypes
        lib.lw_fixed_rollout.argtypes = lib.lw_model_rollout.argtypes
        lib.lw_model_scratch_bytes.argtypes = [p, u32, u32, u32]
        lib.lw_model_scratch_bytes.restype = sz
        lib.lw_model_op_scratch_bytes.argtypes = [p, ctypes.c_int, u32, u32, u32]
        lib.lw_model_op_scratch_bytes.restype = sz
        lib.lw_model_lq40.argtypes = [p]
        lib.lw_model_lq40.restype = p
        lib.lw_lq40_name_compares.argtypes = [p]
        lib.lw_lq40_name_compares.restype = u32
        lib.lw_crc32.argtypes = [u32, p, sz]
        lib.lw_crc32.restype = u32
        for name in ("lw_model_load", "lw_model_predict", "lw_model_rollout", "lw_model_encode", "lw_fixed_quantize",
                     "lw_fixed_predict", "lw_fixed_rollout"):  # fmt: skip
            getattr(lib, name).restype = ctypes.c_int

    def load(self, blob: bytes, arena_bytes: int | None = None) -> FirmwareModel:
        return FirmwareModel(self, blob, arena_bytes)

    def crc32(self, data: bytes) -> int:
        buf = np.frombuffer(data, np.uint8)
        return int(self.lib.lw_crc32(0, buf.ctypes.data, len(data)))

    def quantize(self, x: np.ndarray) -> tuple[str, np.ndarray | None, str]:
        x = np.ascontiguousarray(x, np.float32)
        q = np.empty(x.shape, np.int32)
        err = ctypes.create_string_buffer(ERR_LEN)
        status = STATUS[self.lib.lw_fixed_quantize(x.ctypes.data, x.size, q.ctypes.data, err)]
        return status, (q if status == "OK" else None), err.value.decode()


class FirmwareModel:
    """One ``.lq40`` checked and loaded by the core; ``status`` / ``error`` are lw_model_load's verdict."""

    def __init__(self, fw: FirmwareLib, blob: bytes, arena_bytes: int | None = None) -> None:
        self.fw, lib = fw, fw.lib
        # 64-bit words keep both the file and the struct 8-byte aligned, as the core asks.
        self._file = np.zeros(max(1, -(-len(blob) // 8)), np.uint64)
        self._file.view(np.uint8)[: len(blob)] = np.frombuffer(blob, np.uint8)
        self._struct = np.zeros(-(-lib.lw_model_struct_size() // 8), np.uint64)
        err = ctypes.create_string_buffer(ERR_LEN)
        self.status = STATUS[lib.lw_model_load(self._struct.ctypes.data, self._file.ctypes.data, len(blob), err)]
        self.error = err.value.decode()
        self.info = Info()
        if self.status == "OK":
            lib.lw_model_get_info(self._struct.ctypes.data, ctypes.byref(self.info))
            need = lib.lw_model_scratch_bytes(self._struct.ctypes.data, 8, self.info.history, 1)
            self.set_arena(arena_bytes if arena_bytes is not None else need)

    @property
    def handle(self) -> int:
        return self._struct.ctypes.data

    def set_arena(self, nbytes: int) -> None:
        """Scratch of ``nbytes`` (16-byte aligned) for the calls that follow."""
        self._arena_mem = np.zeros(max(1, -(-nbytes // 16)) * 2, np.uint64)  # 16-byte granules
        base = self._arena_mem.ctypes.data
        base += -base % 16
        self.arena = Arena(base, nbytes, 0)

    def name_compares(self) -> int:
        """How many times the load compared two tensor names' bytes (lw_lq40_name_compares)."""
        return int(self.fw.lib.lw_lq40_name_compares(self.fw.lib.lw_model_lq40(self.handle)))

    def scratch_bytes(self, rows: int, t: int = 3, h: int = 1, op: str | None = None) -> int:
        lib = self.fw.lib
        if op is None:
            return int(lib.lw_model_scratch_bytes(self.handle, rows, t, h))
        return int(lib.lw_model_op_scratch_bytes(self.handle, OPS.index(op), rows, t, h))

    def _call(self, fn, args, out: np.ndarray) -> tuple[str, np.ndarray | None, str]:
        err = ctypes.create_string_buffer(ERR_LEN)
        status = STATUS[fn(self.handle, ctypes.byref(self.arena), *args, out.ctypes.data, err)]
        assert self.arena.used == 0, "the core must hand the arena back as it came"
        return status, (out if status == "OK" else None), err.value.decode()

    def predict(self, z: np.ndarray, a: np.ndarray) -> tuple[str, np.ndarray | None, str]:
        z, a = np.ascontiguousarray(z, np.float32), np.ascontiguousarray(a, np.float32)
        b, t = z.shape[:2]
        out = np.empty((b, self.info.latent_dim), np.float32)
        return self._call(self.fw.lib.lw_model_predict, (z.ctypes.data, a.ctypes.data, b, t), out)

    def rollout(self, z: np.ndarray, a: np.ndarray, future: np.ndarray) -> tuple[str, np.ndarray | None, str]:
        z, a = np.ascontiguousarray(z, np.float32), np.ascontiguousarray(a, np.float32)
        future = np.ascontiguousarray(future, np.float32)
        (b, t), h = z.shape[:2], future.shape[1]
        out = np.empty((b, h, self.info.latent_dim), np.float32)
        args = (z.ctypes.data, a.ctypes.data, future.ctypes.data, b, t, h)
        return self._call(self.fw.lib.lw_model_rollout, args, out)

    def encode(self, pixels: np.ndarray) -> tuple[str, np.ndarray | None, str]:
        pixels = np.ascontiguousarray(pixels, np.uint8)
        out = np.empty((pixels.shape[0], self.info.latent_dim), np.float32)
        return self._call(self.fw.lib.lw_model_encode, (pixels.ctypes.data, pixels.shape[0]), out)

    def predict_fixed(self, z_q: np.ndarray, a_q: np.ndarray) -> tuple[str, np.ndarray | None, str]:
        z_q, a_q = np.ascontiguousarray(z_q, np.int32), np.ascontiguousarray(a_q, np.int32)
        b, t = z_q.shape[:2]
        out = np.empty((b, self.info.latent_dim), np.int32)
        return self._call(self.fw.lib.lw_fixed_predict, (z_q.ctypes.data, a_q.ctypes.data, b, t), out)

    def rollout_fixed(self, z_q: np.ndarray, a_q: np.ndarray, f_q: np.ndarray) -> tuple[str, np.ndarray | None, str]:
        z_q, a_q = np.ascontiguousarray(z_q, np.int32), np.ascontiguousarray(a_q, np.int32)
        f_q = np.ascontiguousarray(f_q, np.int32)
        (b, t), h = z_q.shape[:2], f_q.shape[1]
        out = np.empty((b, h, self.info.latent_dim), np.int32)
        args = (z_q.ctypes.data, a_q.ctypes.data, f_q.ctypes.data, b, t, h)
        return self._call(self.fw.lib.lw_fixed_rollout, args, out)


FNV_OFFSET, FNV_PRIME = 2166136261, 16777619


def fnv1a(name: str) -> int:
    """32-bit FNV-1a over the code points, as the core hashes a tensor name (lw_json_str_hash)."""
    h = FNV_OFFSET
    for ch in name:
        h = ((h ^ ord(ch)) * FNV_PRIME) & 0xFFFFFFFF
    return h


def fnv1a_multicollision(stages: int) -> list[str]:
    """2**stages distinct names with one 32-bit FNV-1a hash (Joux's multicollision: a colliding pair of
    6-letter blocks per stage, found by the birthday bound among 2**18 random ones; any choice of one
    block of each pair gives the same hash). Deterministic."""
    rng = np.random.default_rng(0)
    state, pairs = FNV_OFFSET, []
    while len(pairs) < stages:
        blocks = rng.integers(ord("a"), ord("z") + 1, (1 << 18, 6)).astype(np.uint64)
        h = np.full(len(blocks), state, np.uint64)
        for k in range(blocks.shape[1]):
            h = ((h ^ blocks[:, k]) * np.uint64(FNV_PRIME)) & np.uint64(0xFFFFFFFF)
        order = np.argsort(h, kind="stable")
        same = np.flatnonzero((h[order][1:] == h[order][:-1]) & np.any(blocks[order][1:] != blocks[order][:-1], 1))
        if len(same) == 0:
            continue
        a, b = (bytes(blocks[i].astype(np.uint8)).decode() for i in order[same[0] : same[0] + 2])
        pairs.append((a, b))
        state = int(h[order[same[0]]])
    names = [""]
    for a, b in pairs:
        names = [n + a for n in names] + [n + b for n in names]
    return names
