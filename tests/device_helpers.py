"""Inputs and env traces the device tests (Python emulators and C firmware alike) compare."""

from __future__ import annotations

import signal
import subprocess

import gymnasium as gym
import numpy as np


def device_inputs(batch: int, seed: int = 0, horizon: int = 4) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seeded z_hist [B, 3, 64], a_hist [B, 3, 2] and a_future [B, horizon, 2] for the shipped model's sizes."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((batch, 3, 64)).astype(np.float32)
    a = rng.uniform(-1, 1, (batch, 3, 2)).astype(np.float32)
    return z, a, rng.uniform(-1, 1, (batch, horizon, 2)).astype(np.float32)


def env_trace(env: gym.Env, seed: int, steps: int) -> list[dict[str, np.ndarray]]:
    """Observations, states and rewards of up to ``steps`` seeded random actions from ``env.reset(seed)``."""
    rng = np.random.default_rng(seed)
    obs, info = env.reset(seed=seed)
    trace = [{**obs, "state": info["state"]}]
    for _ in range(steps):
        obs, reward, terminated, truncated, info = env.step(rng.uniform(-1, 1, 2).astype(np.float32))
        trace.append({**obs, "state": info["state"], "reward": np.float64(reward)})
        if terminated or truncated:
            break
    return trace


def sigterm_and_wait(process: subprocess.Popen, timeout: float = 30.0) -> str:
    """Send SIGTERM to a device command, wait for it (killing it if it outlives ``timeout``), its stdout."""
    process.send_signal(signal.SIGTERM)
    try:
        out, _ = process.communicate(timeout=timeout)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    return out
