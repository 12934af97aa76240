"""The esp32 / fpga backends end to end: emulators on a pty and over socket://, env episodes against the
in-process references, planners, fault injection (bounded time, never twice, clear errors, recovery), and
the ``leworld device emulate`` command.

The fault-injection tests take ``impl``: they run against the Python emulator (its own faulty transport)
and against the C firmware (tests/test_firmware_device.py's ``serve``: a FaultRelay on its pty)."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

import leworld_env  # noqa: F401  (registers the env ids)
import world_models
from tests.device_helpers import device_inputs, env_trace
from tests.test_firmware_device import firmware_build, serve  # noqa: F401  (firmware_build: a fixture)
from world_models.backends.devices import client as device_client
from world_models.backends.devices.client import DeviceError, DeviceLink, DeviceTimeoutError
from world_models.backends.devices.emulator import LatencyModel, make_emulator
from world_models.backends.devices.faults import FAULTS, FaultPlan
from world_models.backends.devices.protocol import (
    LOAD_REQUEST,
    LOAD_RESPONSE,
    MAX_SEQUENCE,
    Command,
    LoadOp,
    pack_stats,
    pack_tensors,
)
from world_models.errors import LeWorldError
from world_models.interface import WorldModel
from world_models.locate import resolve_lq40

MODEL = "pusht-tiny"
LQ40 = resolve_lq40(MODEL)
# Link options for tests that never wait for a timeout: generous, so that a slow, loaded CI machine
# (a first call that loads numba's cache, a model install on COMMIT) never turns into a retry.
FAST = {"timeout": 2.0, "retries": 2}


@pytest.fixture(scope="module")
def reference() -> WorldModel:
    return world_models.load(MODEL, backend="numba-q4")


@pytest.fixture(scope="module", autouse=True)
def warm_engines(reference):
    """Compile / load every numba kernel the emulators run (the same functions, in this process) before
    any test times a call: the tests with short timeouts then measure the link, not the JIT."""
    z, a, future = device_inputs(2)
    reference.predict(z, a)
    reference.rollout(z, a, future)
    reference.encode(np.zeros((1, 64, 64, 3), np.uint8))


@pytest.fixture(params=["python", "c"])
def impl(request) -> str:
    """The device a fault test runs against: the Python emulator, or the C firmware (built once a session)."""
    if request.param == "c":
        request.getfixturevalue("firmware_build")
    return request.param


@pytest.fixture(scope="module")
def esp32_pty():
    """An ESP32 emulator on a pty that starts without a model (the first host sends it)."""
    emulator = make_emulator("esp32").start()
    yield emulator
    emulator.stop()


def _closed_episode(env: gym.Env, seed: int, steps: int) -> list[dict[str, np.ndarray]]:
    """:func:`_episode`, then close the env."""
    try:
        return env_trace(env, seed, steps)
    finally:
        env.close()


# ---------------------------------------------------------------------- ESP32: env, planners, socket://
def test_env_episode_on_the_esp32_emulator_matches_numba_q4(esp32_pty):
    env = gym.make("LeWorld-PushT-v0", backend="esp32", port=esp32_pty.path)
    wm = env.unwrapped.world_model
    try:
        assert wm.backend == "esp32" and wm.info.kind_name == "esp32"
        assert esp32_pty.device.model_size == LQ40.stat().st_size  # the host sent the model
        device_trace = env_trace(env, seed=5, steps=30)
        stats = wm.stats()
    finally:
        wm.close()
        env.close()
    local_trace = _closed_episode(gym.make("LeWorld-PushT-v0", backend="numba-q4"), seed=5, steps=30)
    assert len(device_trace) == len(local_trace) > 10
    # Both sides run the same float32 engine, whose BLAS sums follow the buffers' alignment: a few ULP
    # per call, which 30 steps fed back into the predictor grow to ~1e-5 (as on the C firmware's test).
    for ours, theirs in zip(device_trace, local_trace, strict=True):
        for key in ours:
            np.testing.assert_allclose(ours[key], theirs[key], rtol=1e-4, atol=1e-4, err_msg=key)
    assert stats["predict"] >= len(device_trace) - 1 and stats["encode"] >= 1  # it ran on the device


def test_a_second_host_finds_the_model_loaded_and_a_planner_runs_unchanged(esp32_pty, reference):
    from agents.planning import make_planner

    wm = world_models.load(MODEL, backend="esp32", port=esp32_pty.path)
    try:
        assert not wm.ensure_model()  # same size and CRC-32: nothing sent
        env = gym.make("LeWorld-PushT-v0", model=reference)
        try:
            obs, _ = env.reset(seed=1)
        finally:
            env.close()
        actions = []
        for model in (wm, reference):
            planner = make_planner("cem", model, samples=40, iterations=2, topk=4, horizon=4, seed=0)
            actions.append(planner.predict(obs)[0])
        np.testing.assert_allclose(actions[0], actions[1], atol=1e-5)
        assert wm.stats()["rollout"] >= 2
    finally:
        wm.close()


def test_socket_url_and_batches_split_across_frames(reference):
    with make_emulator("esp32", MODEL, tcp=0, max_frame=4096) as emulator:
        emulator.start()
        assert emulator.path.startswith("socket://127.0.0.1:")
        wm = world_models.load(MODEL, backend="esp32", port=emulator.path, timeout=1.0)
        try:
            z, a, future = device_inputs(40)
            np.testing.assert_allclose(wm.predict(z, a), reference.predict(z, a), rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(wm.rollout(z, a, future), reference.rollout(z, a, future), rtol=1e-5, atol=1e-5)
            pixels = np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
            np.testing.assert_allclose(wm.encode(pixels), reference.encode(pixels), rtol=1e-5, atol=1e-5)
            stats = wm.stats()
            assert stats["predict"] > 1 and stats["rows_predicted"] >= 40 + 40 * 4  # split over several frames
        finally:
            wm.close()


def test_latency_model_is_announced_by_ack_so_a_short_timeout_does_not_retry(reference):
    with make_emulator("esp32", MODEL) as emulator:
        emulator.start()
        wm = world_models.load(MODEL, backend="esp32", port=emulator.path, timeout=2.0, retries=0)
        try:
            z, a, _ = device_inputs(1)
            wm.predict(z, a)  # warm: the emulator's first predict, with a generous timeout
            # Now a device that computes for 1 s per row, and a 0.4 s timeout: only the ACK's announced
            # time (1 s) lets the call wait for its answer; the margin is the whole 0.4 s timeout.
            emulator.device.latency = LatencyModel("1 s a row", fixed_ms=1000.0)
            wm.link.timeout = 0.4
            start = time.monotonic()
            np.testing.assert_allclose(wm.predict(z, a), reference.predict(z, a), rtol=1e-5, atol=1e-5)
            assert time.monotonic() - start >= 0.95
            assert wm.link.counters["retries"] == 0
            assert emulator.device.stats()["predict"] == 2
        finally:
            wm.close()


def test_acks_extend_a_call_once_and_by_at_most_max_ack_s(monkeypatch):
    """A faulty device announcing 2**32 - 1 ms, then more ACKs every 50 ms, cannot hold a call: one
    extension per attempt, capped at max_ack_s."""
    release = threading.Event()
    with make_emulator("esp32") as emulator:

        def stalling_stats(payload: bytes, ack) -> bytes:
            ack(2**32 - 1)
            while not release.wait(0.05):
                ack(500)
            return pack_stats({})

        monkeypatch.setattr(emulator.device, "_stats", stalling_stats)
        emulator.start()
        guard = threading.Timer(15.0, release.set)  # without the cap the call would wait for this
        guard.start()
        try:
            with DeviceLink(emulator.path, timeout=0.3, retries=0, max_ack_s=0.5) as link:
                start = time.monotonic()
                with pytest.raises(DeviceTimeoutError, match="STATS"):
                    link.stats()
                elapsed = time.monotonic() - start
            assert 0.7 <= elapsed < 5.0, elapsed  # timeout + max_ack_s = 0.8 s
            assert link.counters["ignored_frames"] >= 1  # the later ACKs bought nothing
        finally:
            release.set()
            guard.cancel()
    with pytest.raises(LeWorldError, match="max_ack_s must be a positive number"):
        DeviceLink("loop://", max_ack_s=0)


# ---------------------------------------------------------------------- FPGA
class FixedPointReference(WorldModel):
    """In-process: the fixed-point predictor for predict / rollout, numba-q4 for encode and the probe."""

    backend = "fixed-point-reference"

    def __init__(self, path: Path) -> None:
        from world_models.backends.devices.fixed_point import FixedPointPredictor
        from world_models.backends.numba_engine import NumbaWorldModel

        self.fixed = FixedPointPredictor.from_lq40(path)
        self.local = NumbaWorldModel.from_lq40(path)
        self.config, self.path, self.has_probe = self.local.config, Path(path), self.local.has_probe

    def _encode(self, pixels: np.ndarray) -> np.ndarray:
        return self.local._encode(pixels)

    def _predict(self, z_hist: np.ndarray, a_hist: np.ndarray) -> np.ndarray:
        return self.fixed.predict(z_hist, a_hist)

    def _rollout(self, z_hist: np.ndarray, a_hist: np.ndarray, a_future: np.ndarray) -> np.ndarray:
        return self.fixed.rollout(z_hist, a_hist, a_future)

    def _probe_targets(self, z: np.ndarray) -> np.ndarray:
        return self.local._probe_targets(z)


def test_env_episode_on_the_fpga_emulator_is_its_fixed_point_reference_exactly(reference):
    pytest.importorskip("world_models.backends.devices.fixed_point")
    with make_emulator("fpga") as emulator:
        emulator.start()
        env = gym.make("LeWorld-PushT-v0", backend="fpga", port=emulator.path)
        wm = env.unwrapped.world_model
        try:
            assert not wm.info.capabilities & 0x04  # no ENCODE: the host encodes in-process
            device_trace = env_trace(env, seed=7, steps=30)
            z, a, future = device_inputs(5)
            device_rollout = wm.rollout(z, a, future)
            stats = wm.stats()
        finally:
            wm.close()
            env.close()
    fixed = FixedPointReference(LQ40)
    local_trace = _closed_episode(gym.make("LeWorld-PushT-v0", model=fixed), seed=7, steps=30)
    assert len(device_trace) == len(local_trace) > 10
    for i, (ours, theirs) in enumerate(zip(device_trace, local_trace, strict=True)):
        # The host encodes the goal (every step) and the start (step 0, and its probed state) in float32
        # through BLAS, reproducible to a few ULP only (its summation order follows the buffers'
        # alignment); what the device computes is fixed point and must match bit for bit.
        host = {"desired_goal"} | ({"observation", "achieved_goal", "state"} if i == 0 else set())
        for key in ours:
            if key in host:
                np.testing.assert_allclose(ours[key], theirs[key], rtol=0, atol=1e-3, err_msg=key)
            else:
                assert np.array_equal(ours[key], theirs[key]), (i, key)
    assert np.array_equal(device_rollout, fixed.rollout(z, a, future))
    assert stats["predict"] >= len(device_trace) - 1 and "encode" not in stats
    # Its error against float32 arithmetic on the same weights (reported in docs/protocol.md).
    expected = reference.predict(z, a)
    relative = np.sqrt(np.mean((fixed.predict(z, a) - expected) ** 2) / np.mean(expected**2))
    assert relative < 0.05


# ---------------------------------------------------------------------- faults
def test_a_noisy_link_gives_right_answers_in_bounded_time_and_never_runs_a_command_twice(reference, impl):
    predicts = 15
    plan = FaultPlan(drop=0.1, corrupt=0.1, duplicate=0.1, delay=0.1, delay_s=0.2, skip=1, seed=17)
    # A frame's fate depends on the seed, its direction and its number only, never on timing. At least
    # 1 + predicts frames go each way (HELLO, then each PREDICT and its answer; retries add more), so
    # the faults planned for those frames certainly happen, on any machine at any speed:
    sure = {way: [plan.fate(way, n) for n in range(1, predicts + 2)] for way in ("in", "out")}
    least = {kind: sum(kind in fate for fates in sure.values() for fate in fates) for kind in FAULTS}
    assert all(least.values()), least  # the seed exercises every kind of fault
    assert any("drop" in fate for fate in sure["in"])  # a lost request: the host must retry
    assert any("corrupt" in fate for fate in sure["in"])  # a spoilt request: the device drops it
    assert any("duplicate" in fate and "corrupt" not in fate for fate in sure["in"])  # a request seen twice
    with serve(impl, faults=plan) as device:
        wm = world_models.load(MODEL, backend="esp32", port=device.path, timeout=0.4, retries=12)
        try:
            start = time.monotonic()
            for i in range(predicts):
                z, a, _ = device_inputs(2, seed=i)
                np.testing.assert_allclose(wm.predict(z, a), reference.predict(z, a), rtol=1e-5, atol=1e-5)
            elapsed = time.monotonic() - start
        finally:
            wm.close()
        counts = device.stats()
        injected = dict(device.injected)
    assert counts["predict"] == predicts  # exactly once each, whatever was retried
    assert all(injected[kind] >= least[kind] for kind in FAULTS), (injected, least)
    assert counts["duplicates"] >= 1 and counts["frames_bad"] >= 1
    assert wm.link.counters["retries"] >= 1
    assert elapsed < predicts * 13 * 1.0  # each call within its (retries + 1) attempts, with room


def test_a_device_that_dies_mid_call_gives_a_clear_error_quickly(impl):
    plan = FaultPlan(die_after=3)  # HELLO, one PREDICT, then it dies on the second
    with serve(impl, faults=plan) as emulator:
        wm = world_models.load(MODEL, backend="esp32", port=emulator.path, **FAST)
        try:
            z, a, _ = device_inputs(1)
            wm.predict(z, a)
            start = time.monotonic()
            with pytest.raises(DeviceError, match="is gone") as caught:
                wm.predict(z, a)
            assert time.monotonic() - start < 5.0  # link down at once, 3 reopen attempts (~0.4 s here)
            assert emulator.path in str(caught.value)
        finally:
            wm.close()


def test_a_silent_device_times_out_in_bounded_time_without_running_anything(impl):
    plan = FaultPlan(drop=1.0, directions="in", skip=1)  # HELLO gets through, nothing after it
    with serve(impl, faults=plan) as emulator:
        wm = world_models.load(MODEL, backend="esp32", port=emulator.path, timeout=0.2, retries=2)
        try:
            z, a, _ = device_inputs(1)
            start = time.monotonic()
            with pytest.raises(DeviceTimeoutError, match=r"no answer .* PREDICT .* after 3 attempt"):
                wm.predict(z, a)
            assert 0.6 <= time.monotonic() - start < 4.0  # 3 attempts of 0.2 s
            assert emulator.stats().get("predict", 0) == 0
        finally:
            wm.close()
    assert isinstance(DeviceTimeoutError("x"), TimeoutError) and isinstance(DeviceTimeoutError("x"), LeWorldError)


def test_an_echoing_port_is_not_a_device():
    start = time.monotonic()
    with pytest.raises(DeviceTimeoutError, match="HELLO"):
        DeviceLink("loop://", timeout=0.1, retries=1)
    assert time.monotonic() - start < 2.0  # 2 attempts of 0.1 s


def test_recovery_after_a_dropped_connection_reconnects_and_retries_once(reference, impl):
    plan = FaultPlan(disconnect_after=3)  # the second PREDICT's request is lost with the connection
    with serve(impl, tcp=0, faults=plan) as emulator:
        wm = world_models.load(MODEL, backend="esp32", port=emulator.path, **FAST)
        try:
            for seed in range(3):
                z, a, _ = device_inputs(2, seed)
                np.testing.assert_allclose(wm.predict(z, a), reference.predict(z, a), rtol=1e-5, atol=1e-5)
            assert wm.link.counters["reconnects"] == 1
        finally:
            wm.close()
        assert emulator.stats()["predict"] == 3
        assert emulator.injected["disconnect"] == 1


def test_a_device_that_lost_its_model_gets_it_again(reference, impl):
    with serve(impl, model=None) as device:
        wm = world_models.load(MODEL, backend="esp32", port=device.path, **FAST)
        try:
            wm.link.reset(unload=True)  # as after a reboot
            z, a, _ = device_inputs(2)
            np.testing.assert_allclose(wm.predict(z, a), reference.predict(z, a), rtol=1e-5, atol=1e-5)
            assert wm.stats()["load_model"] >= 3
        finally:
            wm.close()


def test_load_model_resumes_an_interrupted_transfer(impl):
    blob = LQ40.read_bytes()
    with serve(impl, model=None) as emulator:
        with DeviceLink(emulator.path, **FAST) as link:  # a first host sends 3 chunks, then goes away
            crc = zlib.crc32(blob)
            link.call(Command.LOAD_MODEL, LOAD_REQUEST.pack(LoadOp.BEGIN, len(blob), crc))
            for offset in range(0, 3000, 1000):
                link.call(
                    Command.LOAD_MODEL, LOAD_REQUEST.pack(LoadOp.CHUNK, offset, crc) + blob[offset : offset + 1000]
                )
        wm = world_models.load(MODEL, backend="esp32", port=emulator.path, **FAST)
        try:
            stats = wm.stats()
            assert stats["load_bytes"] == len(blob)  # nothing sent twice
            assert stats["model_size"] == len(blob) and stats["model_crc32"] == crc
        finally:
            wm.close()


# ---------------------------------------------------------------------- user mistakes
def test_user_mistakes_are_clear_one_line_errors(esp32_pty, monkeypatch):
    with pytest.raises(DeviceError, match=r"cannot open port '/dev/no-such-tty'.*pyserial URL"):
        world_models.load(MODEL, backend="esp32", port="/dev/no-such-tty")
    with pytest.raises(LeWorldError, match=r"backend 'fpga' needs port="):
        world_models.load(MODEL, backend="fpga")
    with pytest.raises(LeWorldError, match=r"takes port=, timeout=, retries=, baud= and max_ack_s=, got unknown speed"):
        world_models.load(MODEL, backend="esp32", port=esp32_pty.path, speed=3)
    with pytest.raises(LeWorldError, match="timeout must be a positive number"):
        world_models.load(MODEL, backend="esp32", port=esp32_pty.path, timeout=-1)
    with pytest.raises(DeviceError, match=r"is an esp32 .*backend='esp32', not 'fpga'"):
        world_models.load(MODEL, backend="fpga", port=esp32_pty.path, **FAST)
    monkeypatch.setattr(device_client, "HOST_VERSIONS", (3, 3))  # a host newer than the device (which speaks 2)
    with pytest.raises(DeviceError, match="UNSUPPORTED_VERSION: the host speaks versions 3 to 3"):
        DeviceLink(esp32_pty.path, **FAST)
    with pytest.raises(LeWorldError, match="unknown device kind 'tpu'"):
        make_emulator("tpu")
    with pytest.raises(LeWorldError, match=r"disconnect_after.*only a TCP emulator has: pass tcp=0"):
        make_emulator("esp32", faults=FaultPlan(disconnect_after=2))


def test_an_emulator_without_a_pty_says_so(monkeypatch):
    def no_pty():
        raise OSError(24, "Too many open files")

    monkeypatch.setattr(os, "openpty", no_pty)
    with pytest.raises(LeWorldError, match=r"cannot open a pseudo-terminal .*Too many open files.*--tcp 0"):
        make_emulator("esp32")


# ---------------------------------------------------------------------- host-side regressions
def test_sequence_numbers_wrap_into_a_new_session(esp32_pty):
    """The device refuses a sequence number at or below the last one run: at 2**32 - 1 the host starts a
    new session (a new id, a HELLO) instead of wrapping to 1 inside the old one."""
    with DeviceLink(esp32_pty.path, **FAST) as link:
        session = link.session
        link._seq = MAX_SEQUENCE - 2
        counts = [link.stats()["stats"] for _ in range(4)]  # sequences 2**32 - 2, 2**32 - 1, then 1, 2
        assert counts == [counts[0] + i for i in range(4)]  # every one ran (none refused as stale)
        assert link._seq == 2 and link.session != session and link.counters["new_sessions"] == 1
        assert esp32_pty.device.session == link.session and esp32_pty.device.last_seq == 2


def test_malformed_or_stalled_load_model_answers_are_device_errors(esp32_pty, monkeypatch):
    blob = LQ40.read_bytes()
    with DeviceLink(esp32_pty.path, **FAST) as link:
        monkeypatch.setattr(link, "call", lambda command, payload=b"", answer_bytes=64: b"\x01")
        with pytest.raises(DeviceError, match="malformed LOAD_MODEL BEGIN answer: 1 bytes, expected 8"):
            link.load_model(blob)
        calls = []

        def stuck(command: int, payload: bytes = b"", answer_bytes: int = 64) -> bytes:
            calls.append(command)
            assert len(calls) < 100, "load_model kept sending chunks to a device that takes none"
            return LOAD_RESPONSE.pack(1000, zlib.crc32(blob))  # the same count after every chunk

        monkeypatch.setattr(link, "call", stuck)
        with pytest.raises(DeviceError, match="makes no progress loading the model: it holds 1000"):
            link.load_model(blob)
        monkeypatch.setattr(link, "call", lambda command, payload=b"", answer_bytes=64: LOAD_RESPONSE.pack(0, 5))
        with pytest.raises(DeviceError, match="answered LOAD_MODEL BEGIN with 0 bytes held of CRC-32 00000005"):
            link.load_model(blob)


def test_a_reconnect_that_finds_another_device_is_an_error(esp32_pty):
    pytest.importorskip("world_models.backends.devices.fixed_point")
    with make_emulator("fpga") as fpga:
        fpga.start()
        with DeviceLink(esp32_pty.path, **FAST) as link:
            link.port = fpga.path  # as if the cable were moved to another board
            link._drop_port()  # the link fails: the next call reopens the port and greets the device
            with pytest.raises(DeviceError, match=r"another device answers .*: fpga .* opened to esp32"):
                link.stats()
            assert link._serial is None  # the port was let go, nothing sent to the wrong device
        assert "stats" not in fpga.device.stats()


def test_stop_cuts_a_modelled_latency_short():
    with make_emulator("esp32", MODEL) as emulator:
        emulator.device.latency = LatencyModel("slow", fixed_ms=60_000.0)
        emulator.start()
        link = DeviceLink(emulator.path, **FAST)
        z, a, _ = device_inputs(1)
        caller = threading.Thread(target=_swallow, args=(link.call, Command.PREDICT, pack_tensors(z, a)))
        try:
            caller.start()
            deadline = time.monotonic() + 10
            while emulator.device.counters.get("predict", 0) == 0 and time.monotonic() < deadline:
                time.sleep(0.01)
            start = time.monotonic()
            assert emulator.stop()  # closed, not left open for a thread still in the command
            assert time.monotonic() - start < 5.0 and not emulator.alive
        finally:
            caller.join(10)
            link.close()


def _swallow(function, *args) -> None:
    try:
        function(*args)
    except LeWorldError:
        pass


# ---------------------------------------------------------------------- the command line
def test_device_emulate_command_serves_a_pty_until_sigterm(reference, capsys):
    from leworld_env.cli import main

    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "leworld_env.cli", "device", "emulate", "--kind", "esp32", "--pty"]
    process = subprocess.Popen([*command, "--model", MODEL], stdout=subprocess.PIPE, text=True, env=env)
    try:
        # The first line, with a deadline (a hung child must fail the test, not hang it).
        ready, _, _ = select.select([process.stdout], [], [], 60.0)
        assert ready, "the emulator printed nothing in 60 s"
        first = process.stdout.readline()
        assert first.startswith("esp32 emulator on /dev/pts/"), first
        port = first.split(" on ")[1].strip()
        wm = world_models.load(MODEL, backend="esp32", port=port, timeout=2.0)
        try:
            assert not wm.ensure_model()  # --model: it holds the shipped model already
            z, a, _ = device_inputs(3)
            np.testing.assert_allclose(wm.predict(z, a), reference.predict(z, a), rtol=1e-5, atol=1e-5)
        finally:
            wm.close()
        assert main(["device", "info", "--port", port, "--timeout", "2"]) == 0
        printed = capsys.readouterr().out
        assert "kind           esp32" in printed and "predict        1" in printed
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            out, _ = process.communicate(timeout=30)
        finally:
            if process.poll() is None:
                process.kill()
                process.communicate()
    assert process.returncode == 0 and "stopped after" in out


def test_device_cli_reports_mistakes_in_one_line(capsys):
    from leworld_env.cli import main

    assert main(["device", "info", "--port", "/dev/no-such-tty", "--timeout", "0.2"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("leworld device: error: cannot open port '/dev/no-such-tty'") and "\n" not in err
