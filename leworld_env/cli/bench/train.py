"""``leworld bench train``: training throughput of a preset, next to inference encoding and the loader."""

from __future__ import annotations

from pathlib import Path

from leworld_env.cli.bench.common import BenchRow, rate


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
