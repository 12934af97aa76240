"""``leworld bench data``: simulator, frame drawing and data-loader throughput.

gym-pusht's own steps and drawing are the reference for the simulator and the renderer; a plain
memory copy is the reference for the clip sampler.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np

from leworld_env.cli.bench.common import BenchRow, memcpy_gbps, rate
from world_models.config import DEFAULT_IMAGE_SIZE

TARGET = np.array([300.0, 200.0])  # where every timed step pushes the agent


def bench_data(
    dataset: Path | None,
    image_size: int = DEFAULT_IMAGE_SIZE,
    batch_size: int = 256,
    history: int = 3,
    num_preds: int = 1,
) -> list[BenchRow]:
    """Measure and return the rows of ``leworld bench data`` (collects a small dataset when none is given)."""
    rows, pixel_sps = simulator_rows(image_size)
    with tempfile.TemporaryDirectory() as tmp:
        if dataset is None:
            dataset, collect_sps = collect_small(image_size, Path(tmp) / "bench-data")
            rows.append(
                BenchRow(
                    "collect (1 worker, written to disk)",
                    collect_sps,
                    "steps/s",
                    "gym-pusht 96px step",
                    collect_sps / pixel_sps,
                )
            )
        rows += loader_rows(dataset, image_size, batch_size, history, num_preds)
    rows.append(BenchRow("threads", float(os.cpu_count() or 1), "cpus"))
    return rows


def simulator_rows(image_size: int) -> tuple[list[BenchRow], float]:
    """gym-pusht's steps and drawing next to LeWorld's simulator and renderer; also returns
    gym-pusht's pixel steps/s, the reference of the later rows."""
    from gym_pusht.envs import PushTEnv

    from leworld_env.sim.pusht_sim import PushTSim
    from numba_kernels.pusht_raster import render_pusht

    raw_state = PushTEnv(obs_type="state")
    raw_state.reset(seed=0)
    rows = [BenchRow("gym-pusht step, state obs", rate(lambda: raw_state.step(TARGET), 100), "steps/s")]
    raw_pixels = PushTEnv(obs_type="pixels", observation_width=96, observation_height=96)
    raw_pixels.reset(seed=0)
    pixel_sps = rate(lambda: raw_pixels.step(TARGET), 50)
    rows.append(BenchRow("gym-pusht step, 96px pixels", pixel_sps, "steps/s"))

    sim = PushTSim(image_size)
    sim.reset(seed=0)

    def sim_step() -> None:
        sim.physics_step(TARGET)
        sim.frame()

    ours = rate(sim_step, 50)
    rows.append(
        BenchRow(f"LeWorld sim step + {image_size}px frame", ours, "steps/s", "gym-pusht 96px step", ours / pixel_sps)
    )

    gym_draw = rate(lambda: raw_pixels._render(), 50)
    rows.append(BenchRow("gym-pusht frame drawing, 96px", gym_draw, "frames/s"))
    agent, block = sim.agent_pos[None], sim.block_pose[None]
    one = rate(lambda: render_pusht(agent, block, 96), 200)
    rows.append(BenchRow("render_pusht, 96px, one frame", one, "frames/s", "gym-pusht drawing", one / gym_draw))
    agents, blocks = np.repeat(agent, 256, 0), np.repeat(block, 256, 0)
    batched = 256 * rate(lambda: render_pusht(agents, blocks, 96), 2)
    rows.append(BenchRow("render_pusht, 96px, batch 256", batched, "frames/s", "gym-pusht drawing", batched / gym_draw))
    return rows, pixel_sps


def collect_small(image_size: int, out: Path) -> tuple[Path, float]:
    """8 weak-expert episodes of 300 steps written to ``out``; returns the dataset and physics steps/s."""
    from leworld_env.sim.collect import CollectConfig, collect

    config = CollectConfig(policy="weak-expert", episodes=8, image_size=image_size, max_steps=300, seed=0)
    start = time.perf_counter()
    dataset = collect(config, out, progress=False)
    return dataset, config.episodes * config.max_steps / (time.perf_counter() - start)


def loader_rows(dataset: Path, image_size: int, batch_size: int, history: int, num_preds: int) -> list[BenchRow]:
    """Reading a dataset into memory, and sampling clips against a memory copy."""
    from world_models.data.dataset import PushTClips

    start = time.perf_counter()
    clips = PushTClips(dataset, history=history, num_preds=num_preds, split="all")
    read_s = time.perf_counter() - start
    rows = [BenchRow("read dataset into memory", clips.info.total_episodes / read_s, "episodes/s")]
    copy = memcpy_gbps()
    rows.append(BenchRow("memory copy, 1 thread", copy, "GB/s"))
    clip_rate = batch_size * rate(lambda: clips.sample(batch_size), 5)
    clip_bytes = clips.clip_length * image_size * image_size * 3
    rows.append(
        BenchRow(
            f"sample clips (L={clips.clip_length}, {image_size}px, batch {batch_size})",
            clip_rate,
            "clips/s",
            "memory copy",
            clip_rate * clip_bytes / 1e9 / copy,
        )
    )
    torch_rate = batch_size * rate(lambda: clips.sample(batch_size).to_torch(), 5)
    rows.append(BenchRow("sample clips + torch tensors", torch_rate, "clips/s"))
    return rows
