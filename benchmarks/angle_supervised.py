"""Can a conv stem see the block's angle at 64 px at all? Supervised, with and without normalisation.

The control for ``encoder_study.py``: the study's conv stem (``ConvEncoder``: 4 x conv 3x3
stride 2, 32-64-128-128 channels, flatten, Linear, LayerNorm) with a head (Linear 256, GELU,
Linear 6) regresses the probe's six targets (``world_models.pose.state_to_targets``: agent xy,
block xy, sin/cos of the angle) straight from the frames: no JEPA, no SIGReg. The variants differ
only in the stem's normalisation (``--norm none | gn | bn``: nothing, GroupNorm(8), BatchNorm
after every conv). Same data split as the study (``PushTClips``, validation fraction 0.1, seed 0),
batch 128 frames, AdamW lr 1e-3, one torch thread; R^2 per field on every 4th validation frame,
every ``--every`` steps. Writes ``OUT/NORM.json`` and prints one line per evaluation::

    python benchmarks/angle_supervised.py --data data/ne300-64 --norm none --steps 1200 --out runs/angle
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from encoder_study import ConvEncoder
from torch import nn

from world_models.config import preset
from world_models.data.dataset import PushTClips
from world_models.files import atomic_write_bytes
from world_models.lewm.model import pose_head
from world_models.lewm.probe import r2_per_field
from world_models.pose import state_to_targets


def frames_and_targets(data: str, split: str) -> tuple[np.ndarray, torch.Tensor]:
    """Every frame of a split (uint8 N, H, W, 3) and its six probe targets."""
    clips = PushTClips(data, 1, 0, split, 0.1, seed=0)
    return clips.pixels, torch.from_numpy(state_to_targets(clips.state))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--norm", choices=["none", "gn", "bn"], default="gn")
    p.add_argument("--steps", type=int, default=1200)
    p.add_argument("--every", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    train_px, train_t = frames_and_targets(args.data, "train")
    val_px, val_t = frames_and_targets(args.data, "val")
    val_px, val_t = val_px[::4], val_t[::4]
    encoder = ConvEncoder(preset("tiny"), norm="" if args.norm == "none" else args.norm)
    encoder.projector = nn.Identity()  # regress from the stem's LayerNorm output, as a probe head would
    net = nn.Sequential(encoder, pose_head(preset("tiny").encoder_dim))
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(args.seed)
    history, tick = [], time.perf_counter()
    for step in range(1, args.steps + 1):
        idx = torch.randint(0, len(train_px), (128,), generator=gen).numpy()
        net.train()
        loss = nn.functional.mse_loss(net(torch.from_numpy(train_px[idx])), train_t[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % args.every == 0:
            net.eval()
            with torch.no_grad():
                pred = torch.cat([net(torch.from_numpy(val_px[i : i + 512])) for i in range(0, len(val_px), 512)])
            r2 = r2_per_field(pred, val_t)
            history.append({"step": step, "loss": loss.item(), "r2_val": r2, "seconds": time.perf_counter() - tick})
            print(args.norm, step, f"loss {loss.item():.4f}", {k: round(v, 3) for k, v in r2.items()}, flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    result = {"norm": args.norm, "data": args.data, "steps": args.steps, "history": history}
    atomic_write_bytes(args.out / f"{args.norm}.json", json.dumps(result, indent=2).encode())


if __name__ == "__main__":
    main()
