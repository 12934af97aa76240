"""The delayed-glide memory ablation (issue 17's table): does a row's extra input close the gap memory must close?

Every row is the same LeWM predictor (:mod:`world_models.memory.conditioned`) trained on the same
frozen latents of a delayed-glide dataset (``leworld collect --policy delayed-glide --hidden-physics
--physics-draw glide``); only its extra input channel and its context differ:

* ``no_memory``: zeros, context 3 (LeWM's): the reference, G = 0.
* ``oracle``: the episode's true damping bit (+1 glides, -1 stops), context 3: the ceiling, G = 1.
* ``context16``: zeros, context 16.

Evaluation windows start at each held-out episode's second release (the first model step without
contact after its second push, from ``infos/contact``), where what the block does next is the damping
alone, last seen K steps earlier. From there each row rolls out open loop with the true actions;
normalised error at horizon h is the mean latent MSE over windows / the MSE of copying the start
latent; block error is the probe's block position (the encoder model's probe) against the true one,
in px. G = (E_no_memory - E_row) / (E_no_memory - E_oracle) on the mean normalised error over the
horizons. Per seed, then mean +- std; per K too. Prints markdown, writes every number to ``--out``.

    python benchmarks/glide_memory_ablation.py --train data/glide-train --val data/glide-val \
        --seeds 0 1 2 --steps 3000 --out runs/glide-ablation.json
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import numpy as np
import torch

import world_models
from leworld_env.sim.episodes import EpisodeConfig, episode_policy
from world_models.data.dataset import load_dataset_info, read_episode
from world_models.data.latents import LatentEpisodes, load_latents, save_latents
from world_models.files import atomic_write_bytes
from world_models.memory.conditioned import rollout, train_conditioned, windows_from
from world_models.memory.episodic import EpisodicConfig
from world_models.memory.episodic_runtime import save_episodic
from world_models.memory.episodic_train import EpisodicTrainConfig, memory_extra, train_episodic
from world_models.memory.runtime import encode_dataset

HORIZONS = (1, 5, 10, 25)
ROWS = {"no_memory": 3, "oracle": 3, "context16": 16}  # row -> context
GLIDE_DAMPING = 0.1  # damping above this glides (the draw is 0 or 0.2)


def releases(contact: np.ndarray, min_gap: int = 3) -> list[int]:
    """Model steps at which a push ended: the first step without contact after a run of contact
    (runs split by fewer than ``min_gap`` steps without contact are one push)."""
    touching = np.flatnonzero(contact)
    if len(touching) == 0:
        return []
    ends = [int(a) + 1 for a, b in itertools.pairwise(touching) if b - a > min_gap]
    return [*ends, int(touching[-1]) + 1]


def cached_latents(dataset: Path, cache: Path, model: str) -> LatentEpisodes:
    """The dataset's latents under ``model``'s encoder, encoded once and kept at ``cache``."""
    if cache.is_file():
        return load_latents(cache)
    latents = encode_dataset(dataset, model, backend="numba", progress=True)
    cache.parent.mkdir(parents=True, exist_ok=True)
    save_latents(latents, cache)
    return latents


def damping_bits(latents: LatentEpisodes) -> np.ndarray:
    """float32 [E]: +1 for an episode whose block glides, -1 for one that stops dead."""
    column = latents.physics[:, list(latents.physics_names).index("damping")]
    return np.where(column > GLIDE_DAMPING, 1.0, -1.0).astype(np.float32)


def per_frame(latents: LatentEpisodes, per_episode: np.ndarray) -> np.ndarray:
    """An episode's value on every one of its frames: [E, C] -> [N, C]."""
    return np.repeat(per_episode, latents.lengths(), axis=0)


def eval_windows(dataset: Path, latents: LatentEpisodes) -> dict[str, np.ndarray]:
    """The held-out windows: each episode's second release that leaves room for the longest context
    and horizon, with its delay K, its true block positions at the horizons and its damping bit."""
    info = load_dataset_info(dataset)
    config = EpisodeConfig(policy=info.policy, frameskip=info.frameskip, action_scale=info.action_scale, seed=info.seed)
    episodes, t0s, delays, blocks = [], [], [], []
    lengths = latents.lengths()
    for e, index in enumerate(latents.episode_ids):
        steps = read_episode(dataset, int(index))
        found = releases(steps.contact)
        if len(found) < 2:
            continue
        t0 = found[1]
        if t0 - max(ROWS.values()) + 1 < 0 or t0 + max(HORIZONS) >= lengths[e]:
            continue
        episodes.append(e)
        t0s.append(t0)
        delays.append(episode_policy(config, int(index)).delay)
        blocks.append(steps.state[[t0 + h for h in HORIZONS], 2:4])
    episodes = np.asarray(episodes)
    return {
        "episode": episodes,
        "t0": np.asarray(t0s),
        "delay": np.asarray(delays),
        "block": np.asarray(blocks),
        "glides": damping_bits(latents)[episodes] > 0,
    }


def score(predictor, latents, extra, windows, history, probe_model) -> dict:
    """Per window: squared latent error and copy error at each horizon, block error (px) at each horizon."""
    z_context, inputs, z_true = windows_from(latents, extra, windows["episode"], windows["t0"], history, max(HORIZONS))
    predicted = rollout(predictor, z_context, inputs)
    at = [h - 1 for h in HORIZONS]
    mse = ((predicted[:, at] - z_true[:, at]) ** 2).mean(-1).numpy()
    copy = ((z_context[:, -1:] - z_true[:, at]) ** 2).mean(-1).numpy()
    flat = predicted[:, at].reshape(-1, predicted.shape[-1]).numpy()
    block = probe_model.probe(flat)[:, 2:4].reshape(len(mse), len(HORIZONS), 2)
    px = np.linalg.norm(block - windows["block"], axis=-1)
    return {"mse": mse, "copy": copy, "px": px}


def summarise(scores: dict, select: np.ndarray) -> dict:
    """Normalised error per horizon, its mean, and the mean block error per horizon over the selected windows."""
    norm = scores["mse"][select].mean(0) / scores["copy"][select].mean(0)
    return {"norm": norm.tolist(), "norm_mean": float(norm.mean()), "px": scores["px"][select].mean(0).tolist()}


def readable_damping(
    train_readout: np.ndarray, train_bits: np.ndarray, val_readout: np.ndarray, val_bits: np.ndarray
) -> float:
    """Held-out accuracy of a logistic regression from the readout at a window's start to its damping bit."""
    x, y = torch.from_numpy(train_readout), torch.from_numpy((train_bits > 0).astype(np.float32))
    mean, std = x.mean(0), x.std(0) + 1e-6
    linear = torch.nn.Linear(x.shape[1], 1)
    optimizer = torch.optim.Adam(linear.parameters(), lr=0.05)
    for _ in range(300):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(linear((x - mean) / std)[:, 0], y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        guess = linear((torch.from_numpy(val_readout) - mean) / std)[:, 0] > 0
    return float((guess.numpy() == (val_bits > 0)).mean())


def memory_rows(args, train, val, windows, train_windows, probe_model, groups, results: dict) -> None:
    """Per seed (each written to ``--out`` when done): train the episodic memory with a predictor
    (``--memory-steps``), freeze it, and train the rows' predictor on its hard readouts as the
    other rows (``--steps``), but held as a rollout holds them (``--hold``); score it with hard reads,
    zeroed and shuffled memories, and the fully soft read (the gap); the joint predictor with hard
    reads; how well the hard readout tells the damping."""
    rows = results["rows"]
    for name in ("memory", "memory_soft", "memory_zeroed", "memory_shuffled", "memory_joint"):
        rows[name] = []
    memory_cfg = EpisodicConfig(
        latent_dim=train.latent_dim,
        channels=args.channels,
        recon_weight=args.recon_weight,
        pooling=args.pooling,
        pool_dim=args.pool_dim,
    )
    at = lambda lat, w: lat.episode_starts[w["episode"]] + w["t0"]  # noqa: E731
    for seed in args.seeds:
        cfg = EpisodicTrainConfig(
            steps=args.memory_steps, seed=seed, hold=args.hold, privileged_weight=args.privileged_weight
        )
        torch.set_num_threads(args.threads)  # numba's OpenMP start resets torch's (they share libgomp)
        facts = damping_bits(train)[:, None]  # used only with --privileged-weight > 0
        memory, joint, last = train_episodic(train, probe_model.config, memory_cfg, cfg, True, facts)
        train_extra = memory_extra(memory, train, "hard")
        torch.set_num_threads(args.threads)
        predictor = train_conditioned(
            train,
            train_extra,
            probe_model.config,
            cfg.history,
            args.steps,
            args.batch_size,
            seed=seed,
            progress=True,
            hold=args.hold,
        )
        if args.save_model is not None and seed == args.seeds[0]:
            info = {"trained_on": str(args.train), "memory_steps": args.memory_steps, "steps": args.steps,
                    "hold": args.hold, "privileged_weight": args.privileged_weight, "seed": seed,
                    "pooling": args.pooling}  # fmt: skip
            save_episodic(args.save_model, memory, predictor, args.model, info)
        for mode in ("hard", "soft", "zeroed", "shuffled"):
            extra = memory_extra(memory, val, mode, seed=seed)
            scores = score(predictor, val, extra, windows, cfg.history, probe_model)
            result = {name: summarise(scores, sel) for name, sel in groups.items()}
            if mode == "hard":
                result["damping_accuracy"] = readable_damping(
                    train_extra[at(train, train_windows)],
                    damping_bits(train)[train_windows["episode"]],
                    extra[at(val, windows)],
                    damping_bits(val)[windows["episode"]],
                )
                result["final_losses"] = last
                joint_scores = score(joint, val, extra, windows, cfg.history, probe_model)
                rows["memory_joint"].append({name: summarise(joint_scores, sel) for name, sel in groups.items()})
            rows["memory" if mode == "hard" else f"memory_{mode}"].append(result)
        print(
            "memory", seed, rows["memory"][-1]["all"]["norm_mean"], rows["memory"][-1]["damping_accuracy"], flush=True
        )
        atomic_write_bytes(args.out, json.dumps(results, indent=1).encode())  # each seed as it is done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train", type=Path, required=True, help="delayed-glide training dataset")
    parser.add_argument("--val", type=Path, required=True, help="held-out delayed-glide dataset")
    parser.add_argument("--model", default="pusht-tiny", help="frozen encoder (and probe) model")
    parser.add_argument("--work", type=Path, default=Path("runs/glide-ablation"), help="latent caches")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--memory-steps", type=int, default=1500, help="steps training the memory itself")
    parser.add_argument(
        "--hold", type=int, default=max(HORIZONS) - 1, help="train on memory readouts up to this many frames stale"
    )
    parser.add_argument("--channels", type=int, default=4, help="memory readout channels")
    parser.add_argument(
        "--pooling", default="attention", choices=["attention", "max"], help="how a memory read pools its records"
    )
    parser.add_argument("--pool-dim", type=int, default=32, help="max pooling's projection width")
    parser.add_argument("--recon-weight", type=float, default=0.1, help="weight of the records' z_{t+1} - z_t term")
    parser.add_argument(
        "--privileged-weight",
        type=float,
        default=0.0,
        help="train the memory's first readout channel to regress the damping bit (RMA-style; 0: off)",
    )
    parser.add_argument(
        "--save-model", type=Path, help="write the first seed's memory and predictor here (an episodic model folder)"
    )
    parser.add_argument("--rows", nargs="+", default=[*ROWS, "memory"], choices=[*ROWS, "memory"])
    parser.add_argument("--out", type=Path, required=True, help="JSON with every number")
    parser.add_argument("--merge", type=Path, nargs="+", help="only merge the rows of these --out files into --out")
    args = parser.parse_args()
    args.threads = torch.get_num_threads()
    if args.merge:
        merge(args.merge, args.out)
        return

    train = cached_latents(args.train, args.work / "train-latents.safetensors", args.model)
    val = cached_latents(args.val, args.work / "val-latents.safetensors", args.model)
    probe_model = world_models.load(args.model, backend="numba")
    windows = eval_windows(args.val, val)
    zeros = (np.zeros((len(train.z), 1), np.float32), np.zeros((len(val.z), 1), np.float32))
    extras = {
        "no_memory": zeros,
        "oracle": (per_frame(train, damping_bits(train)[:, None]), per_frame(val, damping_bits(val)[:, None])),
        "context16": zeros,
    }
    groups = {"all": np.ones(len(windows["t0"]), bool), "glides": windows["glides"], "stops": ~windows["glides"]}
    groups |= {f"K={k}": windows["delay"] == k for k in sorted(set(windows["delay"].tolist()))}
    results: dict = {"windows": {g: int(sel.sum()) for g, sel in groups.items()}, "horizons": HORIZONS, "rows": {}}
    for row in args.rows:
        if row == "memory":
            train_windows = eval_windows(args.train, train)
            memory_rows(args, train, val, windows, train_windows, probe_model, groups, results)
            continue
        per_seed = []
        for seed in args.seeds:
            torch.set_num_threads(args.threads)
            predictor = train_conditioned(
                train,
                extras[row][0],
                probe_model.config,
                ROWS[row],
                args.steps,
                args.batch_size,
                seed=seed,
                progress=True,
            )
            scores = score(predictor, val, extras[row][1], windows, ROWS[row], probe_model)
            per_seed.append({g: summarise(scores, sel) for g, sel in groups.items()})
        results["rows"][row] = per_seed
        atomic_write_bytes(args.out, json.dumps(results, indent=1).encode())  # each row as it is done
        print(row, json.dumps({g: round(float(np.mean([s[g]["norm_mean"] for s in per_seed])), 4) for g in groups}))
    add_gap_closed(results["rows"], list(groups))
    atomic_write_bytes(args.out, json.dumps(results, indent=1).encode())
    print(markdown(results, list(groups)))


def merge(files: list[Path], out: Path) -> None:
    """The rows of several runs on the same windows (same --val) in one table, G recomputed; a row that
    several runs hold (other seeds of it) gets all their seeds."""
    runs = [json.loads(Path(f).read_text()) for f in files]
    results = {**runs[0], "rows": {}}
    for run in runs:
        if run["windows"] != runs[0]["windows"]:
            raise SystemExit(f"{files[runs.index(run)]}: other evaluation windows than {files[0]}")
        for name, seeds in run["rows"].items():  # a row in several runs: its seeds joined
            results["rows"][name] = results["rows"].get(name, []) + seeds
    groups = list(results["windows"])
    add_gap_closed(results["rows"], groups)
    atomic_write_bytes(out, json.dumps(results, indent=1).encode())
    print(markdown(results, groups))


def add_gap_closed(rows: dict[str, list], groups: list[str]) -> None:
    """G = (E_no_memory - E_row) / (E_no_memory - E_oracle) per seed and window group, in place."""
    if "no_memory" not in rows or "oracle" not in rows:
        return
    for per_seed in rows.values():
        for s, seed_result in enumerate(per_seed):
            for g in groups:
                ref, top = rows["no_memory"][s][g]["norm_mean"], rows["oracle"][s][g]["norm_mean"]
                seed_result[g]["G"] = (ref - seed_result[g]["norm_mean"]) / (ref - top) if ref != top else None


def markdown(results: dict, groups: list[str]) -> str:
    """The table: per row and window group, normalised error per horizon, block px, G (mean +- std over seeds)."""

    def cell(values: list[float]) -> str:
        return f"{np.mean(values):.3f} ± {np.std(values):.3f}" if values else "-"

    lines = ["| row | windows | " + " | ".join(f"norm h={h}" for h in HORIZONS) + " | block px h=10 | G |"]
    lines.append("|---" * (len(HORIZONS) + 4) + "|")
    for row, per_seed in results["rows"].items():
        for g in groups:
            norms = [cell([s[g]["norm"][i] for s in per_seed]) for i in range(len(HORIZONS))]
            px = cell([s[g]["px"][HORIZONS.index(10)] for s in per_seed])
            gs = [s[g]["G"] for s in per_seed if s[g].get("G") is not None]
            lines.append(f"| {row} | {g} ({results['windows'][g]}) | " + " | ".join(norms) + f" | {px} | {cell(gs)} |")
    accuracy = [s["damping_accuracy"] for s in results["rows"].get("memory", [])]
    if accuracy:
        lines.append(f"\nDamping read from the hard memory readout at the window start: {cell(accuracy)} (chance 0.5)")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
