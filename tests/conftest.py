"""Shared fixtures. Tests run headless: pygame gets SDL's dummy drivers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
os.environ.setdefault("SDL_AUDIODRIVER", "dummy")


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run ``leworld ARGS`` in a fresh interpreter, as a user would."""
    return subprocess.run(
        [sys.executable, "-m", "leworld_env.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=600,
    )


def signal_when(
    proc: subprocess.Popen, ready, signum: int, what: str, timeout: float = 180.0
) -> tuple[str | None, str | None]:
    """Send ``signum`` to ``proc`` once ``ready()`` holds (``what`` names it when it never does), and
    return its (stdout, stderr); the process is killed whatever happens."""
    import time

    try:
        deadline = time.monotonic() + timeout
        while not ready():
            assert proc.poll() is None, (f"exited before {what}", proc.communicate())
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(0.05)
        proc.send_signal(signum)
        return proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="session")
def weak_expert_dataset(tmp_path_factory) -> Path:
    """The issue's command: 4 weak-expert episodes at 64 px, seed 0."""
    from leworld_env.sim.collect import CollectConfig, collect

    out = tmp_path_factory.mktemp("data") / "weak"
    config = CollectConfig(policy="weak-expert", episodes=4, image_size=64, seed=0)
    return collect(config, out, progress=False)


@pytest.fixture(scope="session")
def short_dataset(tmp_path_factory) -> Path:
    """Ten short episodes, enough for a train/validation split."""
    from leworld_env.sim.collect import CollectConfig, collect

    out = tmp_path_factory.mktemp("data") / "short"
    config = CollectConfig(policy="weak-expert", episodes=10, image_size=64, max_steps=60, seed=1)
    return collect(config, out, progress=False)
