"""The C firmware's rv32imafc build (firmware/qemu) under QEMU ``virt``: it answers HELLO as the host build
does (apart from its name's platform suffix and its scratch size) and PREDICT / ROLLOUT / ENCODE, and
its errors, with bytes identical to the host build's, for the esp32 (float) and fpga (fixed-point)
kinds, on the shipped model preloaded by QEMU; the kind comes from the boot config word; a missing or
refused preloaded model leaves it empty; the icount benchmark counts instructions deterministically.

QEMU's UART moves some 15-30 kB/s, so the model is preloaded and the batches are small.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import select
import signal
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.device_helpers import sigterm_and_wait
from tests.toolchains import require_tools
from world_models.backends.devices import protocol as wire
from world_models.backends.devices import qemu
from world_models.backends.devices.client import DeviceError, DeviceLink
from world_models.backends.devices.protocol import Capability, Command
from world_models.errors import LeWorldError
from world_models.locate import resolve_lq40

ROOT = Path(__file__).resolve().parents[1]
LQ40 = resolve_lq40("pusht-tiny")
LINK = {"timeout": 10.0, "retries": 1}  # QEMU's UART is slow and a loaded CI machine slower
D, A, HISTORY = 64, 2, 3  # pusht-tiny's latent_dim, action_dim, history


@pytest.fixture(scope="module")
def builds(tmp_path_factory) -> None:
    """The host and rv32 builds, once per module, into $LEWORLD_FIRMWARE_BUILD /
    $LEWORLD_FIRMWARE_RV32_BUILD when set, else temporary folders (which the variables then name)."""
    require_tools("riscv64-unknown-elf-gcc", "qemu-system-riscv32", "make", "cc")
    from world_models.backends.devices.firmware import BUILD_ENV, build_firmware

    base = tmp_path_factory.getbasetemp()
    os.environ.setdefault(BUILD_ENV, str(base / "firmware-build"))
    os.environ.setdefault(qemu.BUILD_ENV, str(base / "firmware-rv32"))
    build_firmware(os.environ[BUILD_ENV])
    qemu.build_rv32(os.environ[qemu.BUILD_ENV])


@dataclasses.dataclass
class Pair:
    kind: str
    qemu: DeviceLink
    host: DeviceLink

    def both(self, command: int, payload: bytes, answer: int = 4096) -> tuple[bytes, bytes]:
        return self.qemu.call(command, payload, answer), self.host.call(command, payload, answer)


@pytest.fixture(scope="module", params=["esp32", "fpga"])
def pair(request, builds) -> Iterator[Pair]:
    """The same kind twice, holding the shipped model: under QEMU and as the host build."""
    from world_models.backends.devices.firmware import start_firmware

    kind = request.param
    process, path = qemu.start_qemu(kind, LQ40)
    try:
        with start_firmware(kind, "c", LQ40) as host:
            with DeviceLink(path, **LINK) as q, DeviceLink(host.path, **LINK) as h:
                yield Pair(kind, q, h)
    finally:
        process.terminate()
        process.communicate(timeout=10)


def _inputs(batch: int, steps: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((batch, steps, D)).astype(np.float32)
    a = rng.uniform(-1.0, 1.0, (batch, steps, A)).astype(np.float32)
    return z, a


def test_hello_matches_the_host_build_but_for_the_platform_and_scratch(pair):
    q, h = pair.qemu.info, pair.host.info
    assert q.name == f"leworld-fw {pair.kind} (qemu-rv32)"
    assert h.name == f"leworld-fw {pair.kind} (host)"
    assert q.kind == (wire.DeviceKind.FPGA if pair.kind == "fpga" else wire.DeviceKind.ESP32)
    assert (q.model_size, q.model_crc) == (LQ40.stat().st_size, zlib.crc32(LQ40.read_bytes()))
    assert q.scratch_bytes > 32 << 20  # its own static scratch (the host build allocates 64 MiB)
    same = {"name": "", "scratch_bytes": 0}
    assert dataclasses.replace(q, **same) == dataclasses.replace(h, **same)


@pytest.mark.parametrize(("batch", "steps"), [(1, HISTORY), (3, 2), (2, HISTORY + 2)])
def test_predict_bytes_are_identical_to_the_host_build(pair, batch, steps):
    z, a = _inputs(batch, steps, seed=batch * 10 + steps)
    got, want = pair.both(Command.PREDICT, wire.pack_tensors(z, a))
    assert got == want
    (latent,) = wire.unpack_tensors(got, 1)
    assert latent.shape == (batch, D) and np.isfinite(latent).all()


def test_rollout_and_fixed_point_tensors_or_encode_are_identical_too(pair):
    z, a = _inputs(2, HISTORY, seed=7)
    future = np.random.default_rng(8).uniform(-1.0, 1.0, (2, 4, A)).astype(np.float32)
    got, want = pair.both(Command.ROLLOUT, wire.pack_tensors(z, a, future))
    assert got == want
    if pair.kind == "fpga":
        assert pair.qemu.info.capabilities & Capability.FIXED_POINT
        bits = pair.qemu.info.frac_bits
        zq, aq = wire.to_fixed(z, bits), wire.to_fixed(a, bits)
        got, want = pair.both(Command.PREDICT, wire.pack_tensors(zq, aq))
        assert got == want and wire.unpack_tensors(got, 1)[0].dtype == np.int32
    else:
        pixels = np.random.default_rng(9).integers(0, 256, (1, 64, 64, 3), dtype=np.uint8)
        got, want = pair.both(Command.ENCODE, wire.pack_tensors(pixels))
        assert got == want


def test_errors_are_the_host_builds_word_for_word(pair):
    z, a = _inputs(1, HISTORY, seed=3)
    messages = []
    for link in (pair.qemu, pair.host):
        with pytest.raises(DeviceError) as caught:
            link.call(Command.PREDICT, wire.pack_tensors(z[:, :, :10], a))
        messages.append((caught.value.code, str(caught.value).split(": ", 1)[1]))
    assert messages[0] == messages[1] and messages[0][0] == wire.ErrorCode.BAD_INPUT


def test_without_a_model_or_with_a_bad_one_it_starts_empty(builds, tmp_path):
    junk = tmp_path / "junk.lq40"
    junk.write_bytes(b"not a model at all")
    corrupt = tmp_path / "corrupt.lq40"
    blob = bytearray(LQ40.read_bytes())
    blob[-100] ^= 0xFF  # the data's CRC no longer matches: the core refuses it
    corrupt.write_bytes(bytes(blob))
    from world_models.backends.devices.firmware import start_firmware

    for kind, model in (("fpga", None), ("esp32", junk), ("esp32", corrupt)):
        with start_firmware(kind, "qemu", model) as device:  # firmware.py's wrapper of start_qemu
            with DeviceLink(device.path, **LINK) as link:
                assert link.info.kind_name == kind and link.info.model_size == 0, model
                with pytest.raises(DeviceError) as caught:
                    link.call(Command.PREDICT, wire.pack_tensors(*_inputs(1, HISTORY, 0)))
                assert caught.value.code == wire.ErrorCode.NO_MODEL
        assert device.stop() and not device.alive


def _with_nested_data_size(blob: bytes) -> bytes:
    """The model with ``"extra": {"data_size": 1000}`` in its config (written before the real, top-level
    data_size), the data and its CRC kept: valid, and Python loads it."""
    (length,) = struct.unpack_from("<I", blob, 4)
    start = -(-(8 + length) // 64) * 64
    header, data = json.loads(blob[8 : 8 + length]), blob[start:]
    header["model"]["extra"] = {"data_size": 1000, "note": '"data_size": 7'}
    head = json.dumps(header).encode()
    assert head.index(b'"data_size"') < head.rindex(b'"data_size"')  # the nested one comes first
    new_start = -(-(8 + len(head)) // 64) * 64
    return b"LQ40" + struct.pack("<I", len(head)) + head + bytes(new_start - 8 - len(head)) + data


def test_the_preloaded_size_is_the_top_level_data_size(builds, tmp_path):
    """A "data_size" key nested in the config does not fool the preload: the model boots with it."""
    import world_models

    path = tmp_path / "nested.lq40"
    path.write_bytes(_with_nested_data_size(LQ40.read_bytes()))
    world_models.load(path, backend="numba-q4")  # a valid file
    from world_models.backends.devices.firmware import start_firmware

    with start_firmware("esp32", "qemu", path) as device:
        with DeviceLink(device.path, **LINK) as link:
            assert link.info.model_size == path.stat().st_size
            z, a = _inputs(1, HISTORY, 0)
            (out,) = wire.unpack_tensors(link.call(Command.PREDICT, wire.pack_tensors(z, a)), 1)
            assert out.shape == (1, D)


def _running(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie nobody reaped yet counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_qemu_dies_with_its_parent_even_a_sigkilled_one(builds):
    """A host process that started QEMU and is then SIGKILLed (no cleanup runs) takes QEMU with it."""
    code = (
        "import time\n"
        "from world_models.backends.devices import qemu\n"
        "process, path = qemu.start_qemu('esp32', None)\n"
        "print(process.pid, flush=True)\n"
        "time.sleep(600)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    pid = None
    try:
        ready, _, _ = select.select([parent.stdout], [], [], 120)
        assert ready, "the parent did not start QEMU"
        pid = int(parent.stdout.readline())
        assert _running(pid)
        parent.kill()
        parent.wait(timeout=10)
        deadline = time.monotonic() + 10
        while _running(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _running(pid), "QEMU outlived the process that started it"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        if pid is not None and _running(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_icount_benchmark_counts_instructions_per_latent_deterministically(builds):
    rows = qemu.run_bench(LQ40)
    ones = {(r["path"], r["op"]): [] for r in rows}
    for r in rows:
        if r["rows"] == 1:
            ones[(r["path"], r["op"])].append(r["per_row"])
    for path in ("float", "fixed"):
        first, second = ones[(path, "predict")]
        assert first == second  # -icount: the same instructions every time
        assert 1e6 < first < 1e9
    batched = {r["path"]: r["per_row"] for r in rows if r["op"] == "predict" and r["rows"] > 1}
    assert batched["float"] <= ones[("float", "predict")][0]  # weights decoded once for the batch
    per = qemu.instructions_per_latent(LQ40)
    assert per["float"] == ones[("float", "predict")][0] and per["fixed"] == ones[("fixed", "predict")][0]


def test_the_pty_line_is_parsed_and_bad_arguments_and_missing_tools_are_named(monkeypatch, tmp_path):
    for line, path in [
        ("char device redirected to /dev/pts/7 (label serial0)\n", "/dev/pts/7"),
        (
            "qemu-system-riscv32: warning: x\nchar device redirected to /dev/pts/12 (label compat_monitor0)",
            "/dev/pts/12",
        ),
        ("char device redirected to /dev/ttys003\n", "/dev/ttys003"),
    ]:
        match = qemu.PTY_LINE.search(line)
        assert match is not None and match.group(1) == path
    with pytest.raises(LeWorldError, match="unknown device kind"):
        qemu.start_qemu("gpu", None)
    with pytest.raises(LeWorldError, match="16777216"):
        qemu.start_qemu("esp32", _sparse(tmp_path / "huge.lq40"))
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(LeWorldError, match=r"qemu-system-riscv32.*qemu-system-misc"):
        qemu.start_qemu("esp32", None)


def _sparse(path: Path) -> Path:
    with open(path, "wb") as f:
        f.truncate(qemu.PRELOAD_MAX + 1)
    return path


def test_device_emulate_impl_qemu_serves_the_fixed_point_reference_until_sigterm(builds):
    """`leworld device emulate --impl qemu` prints its pty as the Python emulator does; a host loads the
    shipped model over it, its latents are the fixed-point reference's exactly, and SIGTERM stops it."""
    import world_models
    from world_models.backends.devices.fixed_point import FixedPointPredictor

    command = [sys.executable, "-m", "leworld_env.cli", "device", "emulate", "--kind", "fpga", "--impl", "qemu"]
    process = subprocess.Popen([*command, "--model", "pusht-tiny"], stdout=subprocess.PIPE, text=True)
    try:
        ready, _, _ = select.select([process.stdout], [], [], 120.0)
        assert ready, "the command printed nothing in 120 s"
        first = process.stdout.readline()
        assert first.startswith("fpga emulator on /dev/pts/"), first
        wm = world_models.load("pusht-tiny", backend="fpga", port=first.split(" on ")[1].strip(), **LINK)
        try:
            assert not wm.ensure_model() and wm.info.name == "leworld-fw fpga (qemu-rv32)"
            rng = np.random.default_rng(3)
            z = rng.standard_normal((2, HISTORY, D)).astype(np.float32)
            a = rng.uniform(-1, 1, (2, HISTORY, A)).astype(np.float32)
            np.testing.assert_array_equal(wm.predict(z, a), FixedPointPredictor.from_lq40(LQ40).predict(z, a))
        finally:
            wm.close()
    finally:
        out = sigterm_and_wait(process)
    assert process.returncode == 0 and "stopped after" in out, out
