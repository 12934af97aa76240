"""Error of the fixed-point (FPGA) predictor against float32 ``numba`` and ``numba-q4``, and its speed.

Held-out real latents: fresh weak-expert episodes (seed 2026, which no training data used) are rendered
at the model's size, one frame per model step, and encoded by the float32 ``numba`` encoder; every
predictor then sees the same latents and the true actions. ``predict``: the latent after each window of
``history`` steps; ``rollout``: 5 steps open loop from each window. Cosine and relative L2 are per latent
(mean and worst), max abs over every element.

    python benchmarks/fixed_point_error.py [--episodes 8] [--frac-bits 8,12,16,20]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import world_models
from leworld_env.sim.collect import CollectConfig, collect_episode
from world_models.backends.devices.fixed_point import FixedPointPredictor

HORIZON = 5


def real_clips(model, episodes: int, seed: int, max_steps: int = 300) -> tuple[np.ndarray, ...]:
    """(z_hist [N, history, D], a_hist [N, history, A], a_future [N, HORIZON, A]) from fresh episodes."""
    cfg = model.config
    config = CollectConfig(
        policy="weak-expert",
        episodes=episodes,
        image_size=cfg.image_size,
        max_steps=max_steps,
        seed=seed,
        frameskip=cfg.frameskip,
        action_scale=cfg.action_scale,
    )
    h, zs, hist, future = cfg.history, [], [], []
    for index in range(episodes):
        episode = collect_episode(config, index)
        z = model.encode(episode["observations"]["pixels"][:: cfg.frameskip])
        a = episode["actions"][:: cfg.frameskip]
        for t in range(h, min(len(z), len(a) - HORIZON + 1)):
            zs.append(z[t - h : t])
            hist.append(a[t - h : t])
            future.append(a[t : t + HORIZON])
    return np.stack(zs), np.stack(hist).astype(np.float32), np.stack(future).astype(np.float32)


def errors(x: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    """Cosine and relative L2 per latent (last axis), mean and worst; max abs error."""
    x, ref = x.reshape(-1, x.shape[-1]).astype(np.float64), ref.reshape(-1, ref.shape[-1]).astype(np.float64)
    norm = np.linalg.norm(ref, axis=1)
    cos = (x * ref).sum(1) / (np.linalg.norm(x, axis=1) * norm)
    rel = np.linalg.norm(x - ref, axis=1) / norm
    return {
        "cos": cos.mean(),
        "cos_min": cos.min(),
        "rel": rel.mean(),
        "rel_max": rel.max(),
        "max_abs": np.abs(x - ref).max(),
    }


def timing_ms(fn, *args, repeats: int = 5) -> float:
    fn(*args)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - start)
    return 1e3 * float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="pusht-tiny")
    parser.add_argument("--episodes", type=int, default=8)
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--frac-bits", default="8,12,16,20")
    args = parser.parse_args()

    f32 = world_models.load(args.model, backend="numba")
    q4 = world_models.load(args.model, backend="numba-q4")
    z, a, future = real_clips(f32, args.episodes, args.seed)
    print(f"{len(z)} clips from {args.episodes} episodes (seed {args.seed}); |z| max {np.abs(z).max():.2f}")
    refs = {name: (m.predict(z, a), m.rollout(z, a, future)) for name, m in (("numba", f32), ("numba-q4", q4))}
    pred_q4 = refs["numba-q4"]
    print("\nnumba-q4 vs numba (the Q4 weights' own error):")
    for what, x, r in (("predict", pred_q4[0], refs["numba"][0]), ("rollout", pred_q4[1], refs["numba"][1])):
        e = errors(x, r)
        print(
            f"  {what}: cos {e['cos']:.6f} (min {e['cos_min']:.6f}), rel L2 {e['rel']:.2e}, max abs {e['max_abs']:.2e}"
        )

    print("\n| frac bits | vs | op | cos mean | cos min | rel L2 mean | rel L2 max | max abs |")
    print("|---|---|---|---|---|---|---|---|")
    for frac in (int(f) for f in args.frac_bits.split(",")):
        fixed = FixedPointPredictor.from_lq40(args.model, frac_bits=frac)
        ours = fixed.predict(z, a), fixed.rollout(z, a, future)
        for name, (p_ref, r_ref) in refs.items():
            for what, x, r in (("predict", ours[0], p_ref), (f"rollout {HORIZON}", ours[1], r_ref)):
                e = errors(x, r)
                print(
                    f"| {frac} | {name} | {what} | {e['cos']:.6f} | {e['cos_min']:.6f} | {e['rel']:.2e} | "
                    f"{e['rel_max']:.2e} | {e['max_abs']:.2e} |"
                )

    fixed = FixedPointPredictor.from_lq40(args.model)
    print("\nspeed (one thread, median of 5):")
    for batch in (1, 300):
        rows = np.arange(batch) % len(z)
        args_b = z[rows], a[rows]
        print(
            f"  batch {batch}: fixed-point predict {timing_ms(fixed.predict, *args_b):.2f} ms, "
            f"numba-q4 {timing_ms(q4.predict, *args_b):.2f} ms; "
            f"rollout {HORIZON}: {timing_ms(fixed.rollout, *args_b, future[rows]):.2f} ms"
        )


if __name__ == "__main__":
    main()
