"""Collect a few real PushT episodes, then sample training clips from them.

python examples/collect_and_sample.py --out data/example --episodes 4
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from leworld_env.sim.collect import CollectConfig, collect
from world_models import PushTClips


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("data/example"))
    parser.add_argument("--episodes", type=int, default=4)
    args = parser.parse_args()

    config = CollectConfig(policy="weak-expert", episodes=args.episodes, image_size=64, max_steps=100, seed=0)
    collect(config, args.out, overwrite=True)

    clips = PushTClips(args.out, history=3, num_preds=1, split="all", seed=0)
    batch = clips.sample(8)
    print(f"{len(clips)} clips of {clips.clip_length} model steps ({clips.frameskip} physics steps each)")
    print("pixels", batch.pixels.shape, batch.pixels.dtype, "actions", batch.actions.shape)
    moved = np.linalg.norm(batch.state[:, -1, 2:4] - batch.state[:, 0, 2:4], axis=1)
    print("block displacement over each clip (px):", np.round(moved, 1))


if __name__ == "__main__":
    main()
