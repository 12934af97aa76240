"""``leworld bench data``: simulator, frame drawing and data-loader throughput.

Every figure is printed next to a reference measured in the same run (gym-pusht
itself, or a plain memory copy), so the ratios carry over between machines
even where the absolute numbers do not.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np


@dataclass
class BenchRow:
    name: str
    value: float
    unit: str
    reference: str = ""
    ratio: float | None = None


def rate(fn: Callable[[], object], repeats: int, min_seconds: float = 0.3) -> float:
    """Calls per second of ``fn``, over at least ``repeats`` calls and ``min_seconds``."""
    fn()  # warm up (numba compile, caches)
    calls = 0
    start = time.perf_counter()
    while True:
        for _ in range(repeats):
            fn()
        calls += repeats
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return calls / elapsed


def memcpy_gbps(nbytes: int = 64 << 20) -> float:
    src = np.ones(nbytes, np.uint8)
    dst = np.empty_like(src)
    return rate(lambda: np.copyto(dst, src), 3) * nbytes / 1e9


def bench_data(
    dataset: Path | None,
    image_size: int = 64,
    batch_size: int = 256,
    history: int = 3,
    num_preds: int = 1,
) -> list[BenchRow]:
    """Measure and return the rows of ``leworld bench data``."""
    from gym_pusht.envs import PushTEnv

    from leworld_env.sim.collect import CollectConfig, collect
    from leworld_env.sim.pusht_sim import PushTSim
    from numba_kernels.pusht_raster import render_pusht
    from world_models.data.dataset import PushTClips

    rows: list[BenchRow] = []
    target = np.array([300.0, 200.0])

    raw_state = PushTEnv(obs_type="state")
    raw_state.reset(seed=0)
    state_sps = rate(lambda: raw_state.step(target), 100)
    rows.append(BenchRow("gym-pusht step, state obs", state_sps, "steps/s"))
    raw_pixels = PushTEnv(obs_type="pixels", observation_width=96, observation_height=96)
    raw_pixels.reset(seed=0)
    pixel_sps = rate(lambda: raw_pixels.step(target), 50)
    rows.append(BenchRow("gym-pusht step, 96px pixels", pixel_sps, "steps/s"))

    sim = PushTSim(image_size)
    sim.reset(seed=0)

    def sim_step() -> None:
        sim.physics_step(target)
        sim.frame()

    rows.append(
        BenchRow(
            f"LeWorld sim step + {image_size}px frame",
            rate(sim_step, 50),
            "steps/s",
            "gym-pusht 96px step",
            None,
        )
    )
    rows[-1].ratio = rows[-1].value / pixel_sps

    gym_draw = rate(lambda: raw_pixels._render(), 50)
    rows.append(BenchRow("gym-pusht frame drawing, 96px", gym_draw, "frames/s"))
    agent, block = sim.agent_pos[None], sim.block_pose[None]
    ours = rate(lambda: render_pusht(agent, block, 96), 200)
    rows.append(BenchRow("render_pusht, 96px, one frame", ours, "frames/s", "gym-pusht drawing", ours / gym_draw))
    agents = np.repeat(agent, 256, 0)
    blocks = np.repeat(block, 256, 0)
    batched = 256 * rate(lambda: render_pusht(agents, blocks, 96), 2)
    rows.append(BenchRow("render_pusht, 96px, batch 256", batched, "frames/s", "gym-pusht drawing", batched / gym_draw))

    with tempfile.TemporaryDirectory() as tmp:
        if dataset is None:
            config = CollectConfig(policy="weak-expert", episodes=8, image_size=image_size, max_steps=300, seed=0)
            start = time.perf_counter()
            dataset = collect(config, Path(tmp) / "bench-data", progress=False)
            steps = 8 * 300
            collect_sps = steps / (time.perf_counter() - start)
            rows.append(
                BenchRow(
                    "collect (1 worker, written to disk)",
                    collect_sps,
                    "steps/s",
                    "gym-pusht 96px step",
                    collect_sps / pixel_sps,
                )
            )
        start = time.perf_counter()
        clips = PushTClips(dataset, history=history, num_preds=num_preds, split="all")
        read_s = time.perf_counter() - start
        rows.append(BenchRow("read dataset into memory", clips.info.total_episodes / read_s, "episodes/s"))

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
    rows.append(BenchRow("threads", float(os.cpu_count() or 1), "cpus"))
    return rows


def bench_train(preset_name: str = "tiny", batch_size: int = 128, dataset: Path | None = None) -> list[BenchRow]:
    """Training throughput of a preset (forward, backward, AdamW step) on this machine, next to
    inference-only encoding in the same run and, with a dataset, the clip loader."""
    import torch

    from world_models.config import preset
    from world_models.data.dataset import PushTClips
    from world_models.lewm.model import LeWM, init_weights
    from world_models.lewm.train import sigreg_generator

    cfg = preset(preset_name)
    torch.manual_seed(0)
    model = LeWM(cfg)
    init_weights(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    length = cfg.history + 1
    gen = torch.Generator().manual_seed(0)
    size = cfg.image_size
    pixels = torch.randint(0, 256, (batch_size, length, size, size, 3), dtype=torch.uint8, generator=gen)
    actions = torch.rand(batch_size, length, 2, generator=gen) * 2 - 1

    def step() -> None:
        out = model(pixels, actions, sigreg_generator(0, 0))
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()

    rows = [BenchRow("torch threads", float(torch.get_num_threads()), "threads")]
    train_rate = batch_size * rate(step, 1, min_seconds=2.0)
    rows.append(BenchRow(f"train step, {preset_name}, batch {batch_size} clips of {length}", train_rate, "clips/s"))
    model.eval()
    with torch.no_grad():
        frames = pixels[:, 0]
        encode_rate = batch_size * rate(lambda: model.encode(frames), 1, min_seconds=1.0)
    rows.append(
        BenchRow(
            "encode (no grad), frames", encode_rate, "frames/s", "train frames/s", encode_rate / (train_rate * length)
        )
    )
    if dataset is not None:
        clips = PushTClips(dataset, cfg.history, 1, split="all")
        loader = batch_size * rate(lambda: clips.sample(batch_size).to_torch(), 5)
        rows.append(BenchRow("clip loader", loader, "clips/s", "train step", loader / train_rate))
    return rows


def print_table(rows: list[BenchRow]) -> None:
    width = max(len(r.name) for r in rows)
    for r in rows:
        ratio = f"  {r.ratio:7.2f}x {r.reference}" if r.ratio is not None else ""
        print(f"{r.name:<{width}}  {r.value:12,.1f} {r.unit:<10}{ratio}")


def write_json(rows: list[BenchRow], path: Path) -> None:
    path.write_text(json.dumps([asdict(r) for r in rows], indent=2))
