"""The ``leworld`` command line.

Every sub-command has ``--help``. Mistakes in the input (a bad value, a file
that exists or is corrupt) are printed as one line on stderr and exit with
code 2; Ctrl-C exits with 130 and leaves nothing half-written.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from leworld_env.cli.bench import TARGETS as BENCH_TARGETS
from leworld_env.cli.device import add_device_parser
from leworld_env.cli.play import add_demo, add_planner_args, add_play, planner_kwargs
from world_models.argtypes import dataclass_from_args, output_path, positive_int
from world_models.config import DEFAULT_IMAGE_SIZE
from world_models.errors import LeWorldError

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (``leworld collect: error: ...``), exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# ------------------------------------------------------------------ collect
def add_collect(sub: argparse._SubParsersAction) -> None:
    from leworld_env.sim.collect import MAX_EPISODES
    from leworld_env.sim.policies import POLICIES
    from world_models.config import IMAGE_SIZES

    p = sub.add_parser(
        "collect",
        help="record real PushT episodes into a Minari dataset",
        description=(
            "Drive real PushT (gym-pusht physics) with a scripted policy and write a Minari dataset: per "
            "physics step the frame, the relative action, agent position and velocity, block pose and "
            "coverage. The same seed gives the same data, whatever --workers."
        ),
    )
    p.add_argument("--policy", default="weak-expert", help=f"one of: {', '.join(sorted(POLICIES))}")
    p.add_argument(
        "--episodes", type=positive_int, default=100, help=f"number of episodes, at most {MAX_EPISODES:,} (100)"
    )
    p.add_argument(
        "--image-size",
        type=positive_int,
        choices=IMAGE_SIZES,
        default=DEFAULT_IMAGE_SIZE,
        help=f"frame side in pixels, one of {', '.join(map(str, IMAGE_SIZES))} ({DEFAULT_IMAGE_SIZE}, the default "
        "preset's; 224 for the slim presets)",
    )
    p.add_argument("--frameskip", type=positive_int, default=5, help="physics steps each action is held (5)")
    p.add_argument("--action-scale", type=float, default=100.0, help="pixels per unit of action (100)")
    p.add_argument("--max-steps", type=positive_int, default=300, help="physics steps per episode at most (300)")
    p.add_argument("--seed", type=int, default=0, help="base seed (default 0)")
    p.add_argument("--workers", type=positive_int, default=1, help="parallel processes (default 1)")
    p.add_argument("--jpeg", action="store_true", help="JPEG-encode frames (smaller, lossy)")
    p.add_argument(
        "--hidden-physics",
        action="store_true",
        help="draw each episode's damping, contact friction and block mass (recorded in infos/physics; "
        "see docs/pusht.md)",
    )
    p.add_argument(
        "--physics-draw",
        choices=("hidden", "glide", "standard"),
        default="hidden",
        help="with --hidden-physics: hidden draws all three (default); glide, the delayed-glide task's damping "
        "(0 or 0.2, docs/leworld_memory.md); standard, gym-pusht's physics every episode (the glide task's control)",
    )
    p.add_argument("--out", required=True, type=output_path, help="dataset folder to create")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace --out if it is a dataset leworld collect wrote (nothing else is ever replaced)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=run_collect)


def run_collect(args: argparse.Namespace) -> int:
    from leworld_env.sim.collect import CollectConfig, collect

    config = dataclass_from_args(CollectConfig, args)
    out = collect(config, args.out, workers=args.workers, overwrite=args.overwrite, progress=not args.quiet)
    from world_models.data.dataset import load_dataset_info

    info = load_dataset_info(out)
    print(f"wrote {info.total_episodes} episodes, {info.total_steps} physics steps to {out}")
    return 0


# -------------------------------------------------------------------- bench


def add_bench(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench",
        help="benchmarks, each against a reference measured in the same run",
        description=(
            "data: gym-pusht pixel and state steps/s next to LeWorld's simulator with frames; frame drawing "
            "against gym-pusht's; dataset reading and clip sampling against a memory copy. "
            "train: training clips/s of a preset next to inference encoding (and the loader, with --dataset). "
            "kernels: Q4_0 matvec and matmul against a memory copy and float32 BLAS; numba-q4 and numba "
            "predict and encode against the torch backend at batch 1, 16 and 256. "
            "env: gym-pusht steps/s (pixels and state) next to LeWorld-PushT-v0 single and vector (16, 64, "
            "256 envs) for each CPU backend, and the real twin. plan: seconds per CEM decision (300 x 30, horizon "
            "5) for each CPU backend, and per iCEM and MPPI decision, against LeWM's ~1 s on a GPU. "
            "device: an ESP32 emulator on a pty at common baud rates (and no link model): a small command's round "
            "trip, predict at batch 1 and 16 against in-process numba-q4; the FPGA emulator's predict and error. "
            "memory: the numba bit-memory kernels (pack/unpack bits, range reads and writes of bits and words) "
            "over 1, 64 and 256 envs of 65,536 words against numpy references, and a memory copy; the 256-env "
            "dream over an episodic memory model (--model, else an untrained one) with its per-env memories "
            "against the same env with them taken out."
        ),
    )
    p.add_argument("target", choices=BENCH_TARGETS, help="what to measure")
    p.add_argument("--dataset", type=Path, help="dataset to read (data; default: collect a small one)")
    p.add_argument(
        "--image-size",
        type=positive_int,
        default=DEFAULT_IMAGE_SIZE,
        help=f"frame side for data ({DEFAULT_IMAGE_SIZE})",
    )
    p.add_argument("--batch-size", type=positive_int, help="clips per batch (data: 256, train: 128)")
    p.add_argument("--history", type=positive_int, default=3, help="context model steps (3)")
    p.add_argument("--num-preds", type=positive_int, default=1, help="predicted model steps (1)")
    p.add_argument("--preset", default="tiny", help="model preset for train (tiny)")
    p.add_argument(
        "--model",
        default="pusht-tiny",
        help="model for kernels and env (shipped name or folder); for memory, an episodic model folder",
    )
    p.add_argument("--size", type=positive_int, default=4096, help="square matrix side for kernels (4096)")
    p.add_argument("--quick", action="store_true", help="shorter timing windows (smoke runs)")
    p.add_argument("--json", type=output_path, help="also write the results as JSON here")
    p.set_defaults(run=run_bench)


def run_bench(args: argparse.Namespace) -> int:
    from leworld_env.cli.bench import measure
    from leworld_env.cli.bench.common import check_json_path, print_table, write_json

    if args.json:
        check_json_path(args.json)
    rows = measure(args.target, args)
    print_table(rows)
    if args.json:
        write_json(rows, args.json)
    return 0


# ----------------------------------------------------------------- quantize
def add_quantize(sub: argparse._SubParsersAction) -> None:
    from world_models.backends.quantize import MODES

    p = sub.add_parser(
        "quantize",
        help="quantize a model to an .lq40 file",
        description=(
            "Quantize a model folder (or shipped model) to an .lq40 file and print its size, the compression "
            "against float32, and the cosine similarity of encode and predict against the float32 model on "
            "held-out data (the --data dataset's validation split; without --data, freshly collected "
            "weak-expert episodes). Modes: full = INT8 encoder + Q4_0 predictor; q4-pred = Q4_0 predictor; "
            "wanda20-q4 / wanda40-q4 = WANDA-pruned Q4_0 predictor (calibrated on --data); ternary = INT8 "
            "encoder + ternary predictor."
        ),
    )
    p.add_argument("--model", default="pusht-tiny", help="model folder or shipped name (pusht-tiny)")
    p.add_argument("--mode", default="full", choices=list(MODES), help="quantization mode (full)")
    p.add_argument("--out", required=True, type=output_path, help="output .lq40 file (a previous one is replaced)")
    p.add_argument("--data", type=Path, help="dataset for calibration and the held-out comparison")
    p.add_argument("--clips", type=positive_int, default=256, help="held-out clips to compare on (256)")
    p.add_argument("--overwrite", action="store_true", help="replace --out even if it is not an .lq40 file")
    p.set_defaults(run=run_quantize)


def run_quantize(args: argparse.Namespace) -> int:
    import tempfile

    import world_models
    from world_models.backends.lq40 import is_lq40
    from world_models.backends.quantize import agreement, held_out_clips, quantize_folder, report_lines
    from world_models.locate import resolve_model
    from world_models.outputs import check_output_file

    out = args.out
    check_output_file(out, "--out", overwrite=args.overwrite, is_previous=is_lq40)
    if out.suffix != ".lq40":
        raise LeWorldError(f"--out {out}: the file name must end in .lq40")
    folder = resolve_model(args.model)
    reference = world_models.load(folder, backend="torch")
    with tempfile.TemporaryDirectory() as tmp:
        data = args.data
        if data is None:
            from leworld_env.sim.collect import CollectConfig, collect

            print("no --data: collecting 6 fresh weak-expert episodes (seed 2026) to compare on")
            config = CollectConfig(
                policy="weak-expert",
                episodes=6,
                image_size=reference.config.image_size,
                frameskip=reference.config.frameskip,
                action_scale=reference.config.action_scale,
                max_steps=150,
                seed=2026,
            )
            data = collect(config, Path(tmp) / "held-out", progress=False)
        clips = held_out_clips(data, reference.config, clips=args.clips)
    result = quantize_folder(folder, args.mode, out, calibration=clips)
    scores = agreement(reference, world_models.load(result.path, backend="numba-q4"), *clips)
    print("\n".join(report_lines(result, scores)))
    return 0


# -------------------------------------------------------------------- train
def add_train(sub: argparse._SubParsersAction) -> None:
    """``leworld train``: the LeWM trainer's options, then the memory model's group, then ``--quiet``."""
    from world_models.lewm.train import add_arguments
    from world_models.memory.train import add_arguments as add_memory_arguments

    p = sub.add_parser(
        "train",
        help="train a LeWM world model on a collected dataset",
        description=(
            "Train a LeWM JEPA (ViT or conv encoder, adaLN-zero predictor, SIGReg) on a leworld collect dataset; "
            "TensorBoard logs in OUT/tb, resumable checkpoints in OUT/checkpoint.pt (Ctrl-C saves), the "
            "model with its state probe in OUT/model. Several processes: torchrun --nproc_per_node=N "
            "-m world_models.lewm.train with the same options (the LeWM model; the memory model, "
            "--world-model leworld, trains in one process)."
        ),
    )
    add_arguments(p)
    add_memory_arguments(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=run_train)


def run_train(args: argparse.Namespace) -> int:
    """Train the model ``--world-model`` names: LeWM from pixels, or the LeWorld memory model."""
    if args.world_model == "leworld":
        from world_models.memory.train import config_from_args, train_leworld

        train_leworld(config_from_args(args), resume=args.resume, progress=not args.quiet)
    else:
        from world_models.lewm.train import config_from_args, train

        train(config_from_args(args), resume=args.resume, progress=not args.quiet)
    return 0


# -------------------------------------------------------------------- probe
def add_probe(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "probe",
        help="fit the latent-to-state probe of a model and report R^2",
        description=(
            "Fit a small MLP from the model's frozen latents to the physical state (agent xy, block xy, "
            "sin/cos of the angle) on a dataset's training episodes, report R^2 per field on its held-out "
            "episodes, and store the probe in the model folder (leworld train does this at the end), and in its "
            "model.lq40 if it has one."
        ),
    )
    p.add_argument("--model", required=True, type=Path, help="model folder")
    p.add_argument("--data", required=True, type=Path, help="dataset folder from leworld collect")
    p.add_argument("--steps", type=positive_int, default=1500, help="optimizer steps (1500)")
    p.add_argument("--frames", type=positive_int, default=4000, help="frames per split at most (4000)")
    p.add_argument("--val-fraction", type=float, default=0.1, help="held-out share of episodes (0.1)")
    p.add_argument("--hidden", type=positive_int, default=256, help="probe hidden width (256)")
    p.add_argument("--dry-run", action="store_true", help="report R^2 without writing the probe")
    p.set_defaults(run=run_probe)


def run_probe(args: argparse.Namespace) -> int:
    import os

    from world_models.backends.lq40 import read_lq40, save_folder_probe
    from world_models.data.dataset import load_dataset_info
    from world_models.lewm.folder import PROBE_FILE, PROBE_META, load_model
    from world_models.lewm.probe import fit_dataset_probe
    from world_models.locate import LQ40_FILE

    if not 0.0 < args.val_fraction < 1.0:
        raise LeWorldError(f"--val-fraction must be between 0 and 1, got {args.val_fraction}")
    model, _, _ = load_model(args.model)
    if not args.dry_run:  # fail now, not after fitting
        if not os.access(args.model, os.W_OK | os.X_OK):
            raise LeWorldError(f"--model {args.model}: folder is not writable (pass --dry-run to only report R^2)")
        for name in (PROBE_FILE, PROBE_META, LQ40_FILE):
            if (args.model / name).is_dir():
                raise LeWorldError(f"--model {args.model}: {name} is a folder, not a file")
        if (args.model / LQ40_FILE).is_file():
            read_lq40(args.model / LQ40_FILE)  # the probe is written into it too: it must be readable
    data = load_dataset_info(args.data)
    if data.image_size != model.cfg.image_size:
        raise LeWorldError(
            f"{args.data}: frames are {data.image_size}px but the model {args.model} takes {model.cfg.image_size}px"
        )
    probe, r2, info = fit_dataset_probe(
        model, str(args.data), args.val_fraction, args.frames, args.steps, hidden=args.hidden
    )
    print("probe R^2 on held-out episodes: " + ", ".join(f"{k} {v:.3f}" for k, v in r2.items()))
    if not args.dry_run:
        save_folder_probe(args.model, probe, info)
        print(f"probe written to {args.model}")
    return 0


# ------------------------------------------------------------------ eval
EVAL_RESULT_KEYS = ("agent", "env", "protocol", "success_rate", "episodes")  # what marks a leworld eval --json file


def is_eval_result(path: Path) -> bool:
    """True when ``path`` is a JSON file ``leworld eval --json`` wrote (it may be replaced without --overwrite)."""
    import json

    try:
        data = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return False
    return isinstance(data, dict) and all(key in data for key in EVAL_RESULT_KEYS)


def check_output_paths(json_file: Path | None, logdir: Path | None, overwrite: bool = False) -> None:
    """Fail before a long run, not after it: ``--json`` must be a new file or a previous result (or
    ``overwrite``), never a folder; the TensorBoard folder must be a writable folder."""
    import os

    from world_models.outputs import check_creatable, check_output_file

    if json_file is not None:
        check_output_file(json_file, "--json", overwrite=overwrite, is_previous=is_eval_result)
    if logdir is None:
        return
    if not logdir.exists():
        check_creatable(logdir, "--tensorboard")  # created only when there is something to log
    elif not logdir.is_dir():
        raise LeWorldError(f"--tensorboard {logdir}: exists and is not a folder")
    elif not os.access(logdir, os.W_OK | os.X_OK):
        raise LeWorldError(f"--tensorboard {logdir}: folder is not writable")


def add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="evaluate a planner or an SB3 policy on real or dreamed PushT",
        description=(
            "Run an agent for N episodes under a protocol (docs/evaluation.md) and print the success "
            "rate with a 95% interval (and the block-only test's), coverage, steps and time per decision. "
            "lewm: held-out start with its agent velocity, goal 25 physics steps ahead, 50 physics steps "
            "run in full, success = LeWM's eval_state (agent and block within 20 px together, angle within "
            "pi/9) at any step. pusht: gym-pusht's random start and fixed goal, 300 physics steps, "
            "coverage > 0.95. --json keeps every episode's start, goal and physics-step targets, which "
            "agents.replay replays in plain gym-pusht."
        ),
    )
    from leworld_env.cli.play import AGENT_FILES, add_trust_pickle

    p.add_argument("--agent", required=True, help=f"cem, icem, mppi, random, {AGENT_FILES} (PPO or SAC)")
    add_trust_pickle(p)
    p.add_argument("--env", choices=["real", "dream"], default="real", help="real physics or the dream (real)")
    p.add_argument("--protocol", choices=["lewm", "pusht"], default="lewm", help="evaluation protocol (lewm)")
    p.add_argument("--episodes", type=positive_int, default=50, help="episodes (50)")
    p.add_argument("--seed", type=int, default=0, help="episode i starts from (seed, i) (0)")
    p.add_argument("--model", default="pusht-tiny", help="world model: shipped name or folder (pusht-tiny)")
    p.add_argument("--backend", help="numba-q4 (default), numba or torch")
    add_planner_args(p)
    p.add_argument(
        "--json",
        type=output_path,
        help="write the results here: the summary and every episode (start with velocity, goal, actions, "
        "absolute targets per physics step)",
    )
    p.add_argument(
        "--overwrite", action="store_true", help="replace --json even when it is not an earlier leworld eval result"
    )
    p.add_argument("--video", type=output_path, help="write the first episode here (.gif or .mp4)")
    p.add_argument(
        "--tensorboard", type=output_path, help="log the summary, every episode and the first one's video here"
    )
    p.set_defaults(run=run_eval)


def run_eval(args: argparse.Namespace) -> int:
    import world_models
    from agents.evaluate import evaluate, load_agent
    from leworld_env.playback.video import check_video_path, write_video
    from world_models.files import atomic_write_bytes

    planner = planner_kwargs(args)
    if args.video is not None:
        check_video_path(args.video, overwrite=args.overwrite)
    check_output_paths(args.json, args.tensorboard, overwrite=args.overwrite)
    try:
        wm = world_models.load(args.model, backend=args.backend)
        agent = load_agent(args.agent, wm, seed=args.seed, trust_pickle=args.trust_pickle, **planner)
        frames: list | None = [] if args.video or args.tensorboard else None
        result = evaluate(
            agent,
            args.agent,
            args.env,
            args.protocol,
            args.episodes,
            args.seed,
            args.model,
            args.backend,
            frames=frames,
        )
    except ValueError as err:
        raise LeWorldError(str(err)) from None
    print(result.table())
    if args.json:
        atomic_write_bytes(args.json, result.to_json().encode())
        print(f"results written to {args.json}")
    if args.video and frames:
        write_video(args.video, frames, fps=10)
        print(f"first episode written to {args.video} ({len(frames)} frames)")
    if args.tensorboard:
        from agents.evaluate import log_evaluation

        log_evaluation(result, args.tensorboard, frames or [])
        print(f"tensorboard --logdir {args.tensorboard}")
    return 0


# ------------------------------------------------------------------ train-agent
def add_train_agent(sub: argparse._SubParsersAction) -> None:
    from agents.train_agent import ALGOS

    p = sub.add_parser(
        "train-agent",
        help="train an SB3 agent in imagination, evaluated on real physics",
        description=(
            "PPO, SAC or HER-SAC on the batched dream (LeWorldSB3VecEnv) with hyperparameters from "
            "agents/hyperparams/ALGO.yml; an EvalCallback on the real twin logs eval/success_rate to "
            "TensorBoard (OUT/tb); checkpoints in OUT/checkpoints (also on Ctrl-C or SIGTERM), the best agent in "
            "OUT/best, the final one in OUT/model: agent folders (agent.json + safetensors, no pickle) that "
            "leworld eval --agent reads. --algo distill instead distils the CEM planner into a network "
            "(DAgger in the dream, agents/hyperparams/distill.yml; labels per round in OUT, reused by a rerun or "
            "--resume; the student in OUT/model, which leworld eval --agent OUT/model reads). --algo ppo-plan "
            "trains that student further with PPO in the dream, one plan an action (agents/hyperparams/ppo-plan.yml; "
            "OUT/model is again a distilled planner folder). --algo refit refits that student by the planner's cost "
            "through the model on a larger bank of real starts (agents/hyperparams/refit.yml; --eval-every counts "
            "its steps; --resume reuses OUT's training bank and fits again; OUT/model a distilled planner folder)."
        ),
    )
    p.add_argument(
        "--algo",
        choices=list(ALGOS),
        default="ppo",
        help="algorithm (ppo); distill: CEM distilled into a planner network (agents/hyperparams/distill.yml); "
        "refit: that network refit by the planner's cost through the model; "
        "ppo-plan: PPO started from that network, a whole plan an action",
    )
    p.add_argument("--timesteps", type=positive_int, help="environment steps (default: the YAML's n_timesteps)")
    p.add_argument("--envs", type=positive_int, help="dream envs in the batch (default: the YAML's n_envs)")
    p.add_argument("--out", type=output_path, default=Path("runs/agent"), help="output folder (runs/agent)")
    p.add_argument("--seed", type=int, default=0, help="seed (0)")
    p.add_argument("--model", default="pusht-tiny", help="world model: shipped name or folder (pusht-tiny)")
    p.add_argument("--backend", help="numba-q4 (default), numba or torch")
    p.add_argument("--eval-every", type=positive_int, default=10_000, help="steps between real-twin evaluations")
    p.add_argument("--eval-episodes", type=positive_int, default=10, help="episodes per evaluation (10)")
    p.add_argument("--checkpoint-every", type=positive_int, default=50_000, help="steps between checkpoints")
    p.add_argument("--hyperparams", type=Path, help="a YAML file instead of agents/hyperparams/ALGO.yml")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in OUT/checkpoints")
    p.add_argument("--overwrite", action="store_true", help="replace OUT when it is an earlier train-agent run")
    p.add_argument("--workers", type=positive_int, default=1, help="distill: processes labelling in parallel (1)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(run=run_train_agent)


def run_train_agent(args: argparse.Namespace) -> int:
    from agents.train_agent import TrainAgentConfig, train_agent

    config = dataclass_from_args(TrainAgentConfig, args, n_envs=args.envs, progress=not args.no_progress)
    final = train_agent(config)
    print(f"agent written to {final} (leworld eval --agent {final}); tensorboard --logdir {args.out / 'tb'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from leworld_env.sim.collect import package_version

    parser = OneLineParser(
        prog="leworld",
        description="LeWorld: a learned world model of PushT as Gymnasium environments.",
    )
    parser.add_argument("--version", action="version", version=f"leworld {package_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)
    sub.required = True
    add_collect(sub)
    add_train(sub)
    add_probe(sub)
    add_bench(sub)
    add_quantize(sub)
    add_eval(sub)
    add_train_agent(sub)
    add_play(sub)
    add_demo(sub)
    add_device_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except LeWorldError as err:
        print(f"leworld {args.command}: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(
            f"leworld {args.command}: interrupted; no file was left half-written (a training run's "
            "checkpoint is kept: continue it with --resume)",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
