"""``leworld collect`` never deletes what it did not write, streams its jobs, and leaves no orphans.

Also the neighbours of those rules: one allowed set of frame sides, actions that must be real
numbers in every env, and device errors that are connection errors.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from leworld_env.sim import collect as collect_module
from leworld_env.sim.collect import OWNER_FILE, CollectConfig, collect, iterate_episodes
from tests.conftest import run_cli, signal_when
from world_models.config import IMAGE_SIZES
from world_models.data.dataset import is_leworld_dataset, load_dataset_info
from world_models.errors import ArgumentError, LeWorldError
from world_models.outputs import MARKER, marker_kind, write_marker

SHORT = ("--episodes", "1", "--max-steps", "10", "--quiet")


def assert_one_line_error(result, *fragments):
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def user_folder(path: Path) -> Path:
    """A folder of the user's: a file in it and a subfolder."""
    path.mkdir(parents=True)
    (path / "sentinel.txt").write_text("mine")
    (path / "sub").mkdir()
    (path / "sub" / "notes.md").write_text("also mine")
    return path


def assert_untouched(path: Path) -> None:
    assert (path / "sentinel.txt").read_text() == "mine"
    assert (path / "sub" / "notes.md").read_text() == "also mine"


# ------------------------------------------------------------------ --overwrite replaces only datasets
@pytest.mark.parametrize("out", [".", "", "./"])
def test_overwrite_of_the_working_directory_is_refused(tmp_path, out):
    cwd = user_folder(tmp_path / "work")
    result = run_cli("collect", *SHORT, "--out", out, "--overwrite", cwd=cwd)
    assert_one_line_error(result, "--out")
    assert_untouched(cwd)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["work"]  # no partial or .old folder left beside it


def test_empty_out_is_a_clear_error(tmp_path):
    result = run_cli("collect", *SHORT, "--out", "", cwd=tmp_path)
    assert_one_line_error(result, "--out", "empty path")


def test_an_empty_working_directory_or_a_parent_of_it_is_not_replaced(tmp_path):
    cwd = tmp_path / "empty"
    cwd.mkdir()
    assert_one_line_error(run_cli("collect", *SHORT, "--out", ".", cwd=cwd), "current directory")
    assert_one_line_error(run_cli("collect", *SHORT, "--out", "..", "--overwrite", cwd=cwd), "current directory")
    assert cwd.is_dir() and list(cwd.iterdir()) == []


def test_a_model_folder_is_not_replaced(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text('{"format_version": 1}')
    (model / "model.safetensors").write_bytes(b"weights")
    result = run_cli("collect", *SHORT, "--out", str(model), "--overwrite")
    assert_one_line_error(result, str(model), "refusing to replace it")
    assert (model / "model.safetensors").read_bytes() == b"weights"
    # A folder LeWorld wrote as something else (a training run) is not a dataset either.
    write_marker(model, "train-run")
    assert_one_line_error(run_cli("collect", *SHORT, "--out", str(model), "--overwrite"), "train-run")
    assert (model / "config.json").exists()


def test_a_users_folder_is_not_replaced(tmp_path):
    folder = user_folder(tmp_path / "photos")
    assert_one_line_error(run_cli("collect", *SHORT, "--out", str(folder)), "--overwrite")
    assert_one_line_error(run_cli("collect", *SHORT, "--out", str(folder), "--overwrite"), "refusing")
    assert_untouched(folder)


def test_a_symbolic_link_is_not_replaced(tmp_path):
    target = tmp_path / "real"
    collect(CollectConfig(episodes=1, max_steps=10), target, progress=False)
    link = tmp_path / "link"
    link.symlink_to(target)
    assert_one_line_error(run_cli("collect", *SHORT, "--out", str(link), "--overwrite"), "symbolic link")
    assert link.is_symlink() and is_leworld_dataset(target)


def test_a_dataset_carries_the_marker_and_is_replaced(tmp_path):
    out = tmp_path / "ds"
    collect(CollectConfig(episodes=1, max_steps=10, seed=1), out, progress=False)
    assert marker_kind(out) == "dataset" and is_leworld_dataset(out)
    assert not (out / OWNER_FILE).exists()
    result = run_cli("collect", *SHORT, "--seed", "7", "--out", str(out), "--overwrite")
    assert result.returncode == 0, result.stderr
    assert load_dataset_info(out).seed == 7 and marker_kind(out) == "dataset"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


def test_a_dataset_written_before_markers_is_replaced(tmp_path):
    out = tmp_path / "legacy"
    collect(CollectConfig(episodes=1, max_steps=10, seed=1), out, progress=False)
    (out / MARKER).unlink()  # as leworld collect wrote it before markers
    assert is_leworld_dataset(out)
    result = run_cli("collect", *SHORT, "--seed", "8", "--out", str(out), "--overwrite")
    assert result.returncode == 0, result.stderr
    assert load_dataset_info(out).seed == 8


def test_a_legacy_dataset_holding_other_files_is_not_replaced(tmp_path):
    out = tmp_path / "legacy"
    collect(CollectConfig(episodes=1, max_steps=10, seed=1), out, progress=False)
    (out / MARKER).unlink()
    (out / "my-analysis.ipynb").write_text("{}")
    assert not is_leworld_dataset(out)
    assert_one_line_error(run_cli("collect", *SHORT, "--out", str(out), "--overwrite"), "refusing")
    assert (out / "my-analysis.ipynb").exists() and load_dataset_info(out).seed == 1


def test_minari_metadata_without_leworlds_section_is_not_a_dataset(tmp_path):
    folder = tmp_path / "other"
    (folder / "data").mkdir(parents=True)
    (folder / "data" / "metadata.json").write_text(json.dumps({"total_episodes": 3}))
    assert not is_leworld_dataset(folder)
    (folder / "data" / "metadata.json").write_text("[1, 2]")
    assert not is_leworld_dataset(folder)


def test_a_folder_that_changed_while_collecting_is_left_alone(tmp_path, monkeypatch):
    out = tmp_path / "ds"
    collect(CollectConfig(episodes=1, max_steps=10), out, progress=False)
    real = collect_module.write_episodes

    def meanwhile(*args, **kwargs):
        real(*args, **kwargs)
        (out / MARKER).unlink()
        (out / "theirs.txt").write_text("written during the collection")

    monkeypatch.setattr(collect_module, "write_episodes", meanwhile)
    with pytest.raises(LeWorldError, match="changed while collecting"):
        collect(CollectConfig(episodes=1, max_steps=10, seed=4), out, overwrite=True, progress=False)
    assert (out / "theirs.txt").exists()
    kept = [p for p in tmp_path.iterdir() if p.name.startswith("ds.new-")]
    assert len(kept) == 1 and load_dataset_info(kept[0]).seed == 4


# ------------------------------------------------------------------ streamed jobs
def test_jobs_are_streamed_with_a_bounded_number_in_flight(monkeypatch):
    pools = []

    class CountingPool(concurrent.futures.Executor):
        """Runs each job at once, in this process, and counts them."""

        def __init__(self, *args, **kwargs):
            self.submitted = 0
            pools.append(self)

        def submit(self, fn, /, *args, **kwargs):
            self.submitted += 1
            future = concurrent.futures.Future()
            future.set_result(fn(*args, **kwargs))
            return future

        def shutdown(self, wait=True, *, cancel_futures=False):
            pass

    monkeypatch.setattr(collect_module, "ProcessPoolExecutor", CountingPool)
    monkeypatch.setattr(collect_module, "collect_episode", lambda config, index: {"id": index})
    episodes = iterate_episodes(CollectConfig(episodes=100_000), workers=2)
    first = [next(episodes)["id"] for _ in range(5)]
    assert first == [0, 1, 2, 3, 4]  # index order
    assert pools[0].submitted <= 5 + collect_module.IN_FLIGHT_PER_WORKER * 2
    episodes.close()
    # Huge counts cost nothing up front.
    start = time.monotonic()
    assert next(iterate_episodes(CollectConfig(episodes=10**9), workers=2))["id"] == 0
    assert time.monotonic() - start < 5.0


def test_one_worker_builds_no_job_list(monkeypatch):
    monkeypatch.setattr(collect_module, "collect_episode", lambda config, index: {"id": index})
    tracemalloc.start()
    try:
        episodes = iterate_episodes(CollectConfig(episodes=1_000_000), workers=1)
        assert next(episodes)["id"] == 0
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 5_000_000, f"{peak} bytes traced for the first of 1,000,000 episodes"


def test_episodes_above_the_maximum_are_refused(tmp_path):
    too_many = str(collect_module.MAX_EPISODES + 1)
    assert_one_line_error(run_cli("collect", "--episodes", too_many, "--out", str(tmp_path / "x")), too_many)
    assert not (tmp_path / "x").exists()


# ------------------------------------------------------------------ workers and partial folders
def _stat(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (from /proc, as psutil would)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _stat(int(entry))
            if stat is not None and int(stat[1]) == pid:
                found.append(int(entry))
    return found


def _alive(pid: int) -> bool:
    stat = _stat(pid)
    return stat is not None and stat[0] != "Z"


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds child processes in /proc (Linux)")
def test_workers_die_with_a_killed_parent_and_the_next_run_removes_its_partial(tmp_path):
    out = tmp_path / "ds"
    command = [sys.executable, "-m", "leworld_env.cli", "collect", "--workers", "2", "--episodes", "100000"]
    parent = subprocess.Popen(
        [*command, "--max-steps", "300", "--quiet", "--out", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    workers: list[int] = []
    try:

        def running() -> bool:
            workers[:] = [pid for pid in _children(parent.pid) if "spawn_main" in _cmdline(pid)]
            partials = list(tmp_path.glob(".ds.partial-*/data/main_data.hdf5"))
            # A first chunk written: both workers have started and computed episodes.
            return len(workers) == 2 and bool(partials) and partials[0].stat().st_size > 1_000_000

        _wait_for(running, 180, "two workers writing episodes")
        everyone = [*_children(parent.pid)]  # the workers and multiprocessing's resource tracker
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=30)
        _wait_for(lambda: not any(_alive(pid) for pid in everyone), 20, f"processes {everyone} to exit")
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        for pid in workers:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
    stale = list(tmp_path.glob(".ds.partial-*"))
    assert len(stale) == 1 and not out.exists()
    result = run_cli("collect", *SHORT, "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert f"removed {stale[0]}" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


@pytest.mark.skipif(not hasattr(signal, "SIGTERM") or os.name != "posix", reason="POSIX signals")
def test_sigterm_removes_the_partial_dataset_like_ctrl_c(tmp_path):
    out = tmp_path / "ds"
    parent = subprocess.Popen(
        [sys.executable, "-m", "leworld_env.cli", "collect", "--episodes", "100000", "--quiet", "--out", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )

    def partial() -> bool:
        return bool(list(tmp_path.glob(".ds.partial-*/data/main_data.hdf5")))

    _, stderr = signal_when(parent, partial, signal.SIGTERM, "a partial dataset")
    assert parent.returncode == 130, stderr
    assert "interrupted" in stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("platform", ["linux", "darwin"])
def test_a_worker_whose_parent_is_gone_exits(platform):
    """The worker initializer's check, with prctl (Linux) and with the watching thread (elsewhere):
    a worker that finds its parent already gone exits; one whose parent lives stays."""
    code = (
        "import os, sys, time\n"
        "from world_models import signals\n"
        f"signals.sys.platform = {platform!r}\n"
        "signals.die_with_parent(int(sys.argv[1]))\n"
        "time.sleep(3 * signals.PARENT_POLL_S)\n"
        "print('still here')\n"
    )
    lives = subprocess.run([sys.executable, "-c", code, str(os.getpid())], capture_output=True, text=True, timeout=120)
    assert lives.returncode == 0 and "still here" in lives.stdout, lives.stderr
    orphan = subprocess.run([sys.executable, "-c", code, "999999999"], capture_output=True, text=True, timeout=120)
    assert orphan.returncode == 1 and "still here" not in orphan.stdout, orphan.stderr


def _partial(beside: Path, name: str, owner: dict | None, marked: bool = True) -> Path:
    folder = beside.parent / f".{beside.name}.partial-{name}"
    (folder / "data").mkdir(parents=True)
    if marked:
        write_marker(folder, "dataset")
    if owner is not None:
        (folder / OWNER_FILE).write_text(json.dumps(owner))
    return folder


def test_stale_partials_of_dead_processes_are_removed_and_others_reported(tmp_path):
    out = tmp_path / "ds"
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()
    host = socket.gethostname()
    dead = _partial(out, "dead0000", {"pid": finished.pid, "host": host, "started": None})
    live = _partial(out, "live0000", {"pid": os.getpid(), "host": host, "started": None})
    elsewhere = _partial(out, "away0000", {"pid": finished.pid, "host": host + "-other", "started": None})
    unowned = _partial(out, "anon0000", None)
    unmarked = _partial(out, "user0000", {"pid": finished.pid, "host": host, "started": None}, marked=False)
    notes: list[str] = []
    collect(CollectConfig(episodes=1, max_steps=10), out, progress=False, report=notes.append)
    assert not dead.exists()
    for kept in (live, elsewhere, unowned, unmarked):
        assert kept.exists()
    assert any(str(dead) in note and "removed" in note for note in notes)
    assert any(str(unowned) in note for note in notes)
    assert not any(str(live) in note for note in notes)


# ------------------------------------------------------------------ image sizes
def test_image_size_outside_the_allowed_set_is_refused(tmp_path):
    result = run_cli("collect", *SHORT, "--image-size", "65", "--out", str(tmp_path / "x"))
    assert_one_line_error(result, "--image-size", "65", *map(str, IMAGE_SIZES))
    assert not (tmp_path / "x").exists()


def test_help_lists_the_allowed_image_sizes():
    result = run_cli("collect", "--help")
    assert result.returncode == 0
    assert ", ".join(map(str, IMAGE_SIZES)) in " ".join(result.stdout.split())


# ------------------------------------------------------------------ actions are real numbers
BAD_ACTIONS = [
    np.array([0.5 + 0j, 0.1]),  # complex, even with no imaginary part
    np.array([0.5 + 2j, 0.1]),
    ["0.5", "0.1"],  # text numpy would parse
    np.array([0.5, None], dtype=object),
    np.array([0.5, 0.1], dtype=object),
    [[0.1], [0.2, 0.3]],  # ragged
    [0.1, float("nan")],
    [float("inf"), 0.1],
]


def _bad_ids():
    return ["complex0", "complex", "text", "object-none", "object", "ragged", "nan", "inf"]


@pytest.fixture(scope="module")
def envs():
    from leworld_env.envs.pusht import LeWorldPushTEnv, LeWorldPushTRealEnv
    from leworld_env.envs.vector import LeWorldPushTVectorEnv

    made = {"dream": LeWorldPushTEnv(), "real": LeWorldPushTRealEnv(), "vector": LeWorldPushTVectorEnv(num_envs=2)}
    for env in made.values():
        env.reset(seed=0)
    return made


@pytest.mark.parametrize("kind", ["dream", "real", "vector"])
@pytest.mark.parametrize("action", BAD_ACTIONS, ids=_bad_ids())
def test_actions_must_be_finite_real_numbers(envs, kind, action):
    if kind == "vector":  # the same action for both envs
        action = np.stack([action, action]) if isinstance(action, np.ndarray) else [action, action]
    with pytest.raises(ArgumentError, match="action") as caught:
        envs[kind].step(action)
    assert "finite" in str(caught.value) or "real" in str(caught.value)


def test_sb3_vec_env_refuses_complex_actions():
    from leworld_env.envs.sb3 import LeWorldSB3VecEnv

    venv = LeWorldSB3VecEnv(2)
    venv.reset()
    with pytest.raises(ArgumentError, match="complex"):
        venv.step(np.full((2, 2), 0.5 + 0j))


def test_real_actions_still_work(envs):
    obs, *_ = envs["dream"].step(np.array([1, 0]))  # integers are real numbers
    assert np.all(np.isfinite(obs["observation"]))


# ------------------------------------------------------------------ device errors
def test_device_errors_are_connection_errors():
    from world_models.backends.devices.client import DeviceError, DeviceTimeoutError

    err = DeviceError("the device is gone", code=3)
    assert isinstance(err, ConnectionError) and isinstance(err, OSError) and isinstance(err, LeWorldError)
    assert err.code == 3 and str(err) == "the device is gone"
    late = DeviceTimeoutError("no answer")
    assert isinstance(late, TimeoutError) and isinstance(late, DeviceError) and isinstance(late, ConnectionError)
    assert late.code is None and str(late) == "no answer"
    try:
        raise late
    except ConnectionError as caught:  # a handler written for pyserial's errors
        assert caught is late


def test_collect_cleans_nothing_it_did_not_write(tmp_path):
    """A ``.NAME.partial-*`` folder that is not a LeWorld partial dataset stays, whatever its name."""
    out = tmp_path / "ds"
    lookalike = user_folder(tmp_path / ".ds.partial-12345678")
    collect(CollectConfig(episodes=1, max_steps=10), out, progress=False, report=lambda _: None)
    assert_untouched(lookalike)
    shutil.rmtree(lookalike)


def test_a_failed_collection_leaves_no_parent_folders_it_created(tmp_path, monkeypatch):
    def failing(config, index):
        raise KeyboardInterrupt

    monkeypatch.setattr(collect_module, "collect_episode", failing)
    with pytest.raises(KeyboardInterrupt):
        collect(CollectConfig(episodes=2, max_steps=10), tmp_path / "new" / "nested" / "ds", progress=False)
    assert list(tmp_path.iterdir()) == []
