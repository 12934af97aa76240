"""``leworld bench env``: environment steps/s against gym-pusht measured in the same run.

The reference is gym-pusht 0.1.8's own env with 96x96 pixel observations (and,
for scale, with state observations). A gym-pusht step is one physics step; a
LeWorld step is one model step (``frameskip`` = 5 physics steps held under one
action), so the ratios below understate the dream's lead in simulated time.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from leworld_env.cli.bench.common import BenchRow, rate

BACKENDS = ("numba-q4", "numba", "torch")
VECTOR_SIZES = (16, 64, 256)


def _gym_pusht_rate(obs_type: str, min_seconds: float) -> float:
    from gym_pusht.envs import PushTEnv

    env = PushTEnv(obs_type=obs_type, render_mode="rgb_array")
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    targets = rng.uniform(100, 400, (4096, 2))
    state = {"i": 0}

    def step() -> None:
        state["i"] += 1
        _, _, terminated, truncated, _ = env.step(targets[state["i"] % len(targets)])
        if terminated or truncated:
            env.reset()

    return rate(step, 20, min_seconds)


def bench_env(model: str | Path = "pusht-tiny", quick: bool = False) -> list[BenchRow]:
    """Rows of ``leworld bench env``: gym-pusht, the dream (single and vector) per CPU backend, the real twin."""
    import gymnasium as gym

    import leworld_env  # registers the ids

    min_s = 0.3 if quick else 1.0
    backends = BACKENDS[:1] if quick else BACKENDS
    sizes = VECTOR_SIZES[:2] if quick else VECTOR_SIZES
    pixels = _gym_pusht_rate("pixels", min_s)
    rows = [
        BenchRow("gym-pusht, 96x96 pixels (physics steps)", pixels, "steps/s"),
        BenchRow("gym-pusht, state observations", _gym_pusht_rate("state", min_s), "steps/s", "gym-pusht pixels"),
    ]
    rows[1].ratio = rows[1].value / pixels
    rng = np.random.default_rng(0)
    for backend in backends:
        env = gym.make(leworld_env.DREAM_ID, model=model, backend=backend)
        env.reset(seed=0)
        actions = rng.uniform(-1, 1, (64, 2)).astype(np.float32)
        counter = {"i": 0}

        def single_step(env=env, actions=actions, counter=counter) -> None:
            counter["i"] += 1
            _, _, terminated, truncated, _ = env.step(actions[counter["i"] % 64])
            if terminated or truncated:
                env.reset()

        value = rate(single_step, 10, min_s)
        rows.append(BenchRow(f"LeWorld-PushT-v0 single env, {backend}", value, "steps/s", "gym-pusht pixels"))
        rows[-1].ratio = value / pixels
        for n in sizes:
            vec = gym.make_vec(
                leworld_env.DREAM_ID, num_envs=n, vectorization_mode="vector_entry_point", model=model, backend=backend
            )
            vec.reset(seed=0)
            batch = rng.uniform(-1, 1, (n, 2)).astype(np.float32)
            calls = rate(lambda vec=vec, batch=batch: vec.step(batch), 2, min_s)
            rows.append(
                BenchRow(
                    f"LeWorld-PushT-v0 vector, {n} envs, {backend}",
                    calls * n,
                    "steps/s",
                    "gym-pusht pixels",
                    calls * n / pixels,
                )
            )
            vec.close()
        env.close()
    real = gym.make(leworld_env.REAL_ID, model=model)
    real.reset(seed=0)
    counter = {"i": 0}
    actions = rng.uniform(-1, 1, (64, 2)).astype(np.float32)

    def real_step() -> None:
        counter["i"] += 1
        _, _, terminated, truncated, _ = real.step(actions[counter["i"] % 64])
        if terminated or truncated:
            real.reset()

    value = rate(real_step, 5, min_s)
    rows.append(
        BenchRow(
            "LeWorld-PushT-Real-v0 (5 physics steps + encode)", value, "steps/s", "gym-pusht pixels", value / pixels
        )
    )
    return rows


if __name__ == "__main__":  # pragma: no cover
    from leworld_env.cli.bench.common import print_table

    start = time.perf_counter()
    print_table(bench_env())
    print(f"{time.perf_counter() - start:.1f}s")
