"""``leworld play`` and ``leworld demo``: watching real PushT and the dream side by side."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from world_models.argtypes import dataclass_from_args, output_path, positive_int
from world_models.errors import LeWorldError

if TYPE_CHECKING:
    from leworld_env.playback.play import ActionSource, PlaySettings
    from world_models.interface import WorldModel

AGENT_FILES = "an agent folder (leworld train-agent's OUT/model), an SB3 PATH.zip with --trust-pickle"
AGENT_HELP = f"keyboard (a window), cem, icem, mppi, random, {AGENT_FILES}, or replay (with --dataset)"
TRUST_PICKLE_HELP = (
    "let --agent be a stable-baselines3 .zip: the file is unpickled, and a crafted file runs code; use only "
    "files you made or trust (an agent folder needs no such flag)"
)


def add_trust_pickle(p: argparse.ArgumentParser) -> None:
    """``--trust-pickle``, the one way to let ``--agent`` be an SB3 ``.zip`` (``eval``, ``play``, ``demo``)."""
    p.add_argument("--trust-pickle", action="store_true", help=TRUST_PICKLE_HELP)


def add_planner_args(p: argparse.ArgumentParser) -> None:
    """The planner budget options ``eval``, ``play`` and ``demo`` share."""
    p.add_argument("--samples", type=positive_int, help="planner: candidate sequences per iteration (300)")
    p.add_argument("--iterations", type=positive_int, help="planner: iterations per decision (cem 30, icem/mppi 10)")
    p.add_argument("--horizon", type=positive_int, help="planner: model steps planned ahead (5)")
    p.add_argument(
        "--replan-every",
        type=positive_int,
        help="planner: env steps between plans, 1..horizon (1: replan every step; 5 = the horizon: "
        "execute the whole plan, LeWM's schedule)",
    )
    p.add_argument(
        "--refine-plans",
        type=refine_plans,
        help="distilled planner: refine only an episode's first N plans, or 'all' (default: as shipped)",
    )


def refine_plans(text: str) -> int | str:
    """``--refine-plans``: a positive integer or ``all``."""
    if text == "all":
        return text
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'all', got {text!r}")
    return value


def planner_kwargs(args: argparse.Namespace) -> dict[str, int | str]:
    """The planner options given on the command line (a small sample count gets a matching top-k;
    ``--replan-every`` above a ``--horizon`` is the planner's error)."""
    names = ("samples", "iterations", "horizon", "replan_every", "refine_plans")
    planner = {k: v for k in names if (v := getattr(args, k, None)) is not None}
    if args.samples is not None and args.samples < 30 and args.agent in ("cem", "icem"):
        planner["topk"] = max(1, args.samples // 10)
    return planner


# ------------------------------------------------------------------ play
def add_play(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "play",
        help="real PushT and the dream side by side under the same actions (pygame, or to a file)",
        description=(
            "Left: real gym-pusht physics; right: the world model alone, open loop from the same start, under "
            "the same actions. The agent acts on the real observation. Keys: arrows or the left mouse button "
            "move the agent (keyboard agent), space pauses, n steps once, r resets, q or Esc quits. "
            "--headless draws to --record without a window."
        ),
    )
    p.add_argument("--agent", default=None, help=f"{AGENT_HELP} (default: keyboard with a window, else cem)")
    p.add_argument("--headless", action="store_true", help="no window: draw to --record")
    p.add_argument("--record", type=output_path, help="write the session as out.gif or out.mp4")
    p.add_argument("--steps", type=positive_int, help="env steps in all (default: 50 headless, else until q)")
    p.add_argument("--episode-steps", type=positive_int, help="env steps before an episode resets (10 = LeWM's 50)")
    p.add_argument("--goal", choices=["dataset", "fixed"], default="dataset", help="goal: LeWM's or gym-pusht's")
    p.add_argument("--dataset", type=Path, help="replay: a leworld collect dataset")
    p.add_argument("--episode", type=int, default=0, help="replay: the dataset episode (0)")
    p.add_argument("--seed", type=int, default=0, help="episode i starts from seed + i (0)")
    p.add_argument("--model", default="pusht-tiny", help="world model: shipped name or folder (pusht-tiny)")
    p.add_argument("--backend", help="numba-q4 (default), numba or torch")
    p.add_argument("--fps", type=float, default=4.0, help="frames per second of the window and recording (4)")
    add_trust_pickle(p)
    add_planner_args(p)
    p.set_defaults(run=run_play)


def run_play(args: argparse.Namespace) -> int:
    import world_models
    from leworld_env.playback.play import PlaySettings, agent_source, has_display, play

    headless = args.headless
    if args.agent is None:
        args.agent = "keyboard" if not headless and has_display() else "cem"
    if not args.fps > 0:
        raise LeWorldError(f"--fps must be above 0, got {args.fps}")
    try:
        wm = world_models.load(args.model, backend=args.backend)
        settings = PlaySettings(
            agent_name=args.agent,
            steps=args.steps if args.steps is not None else (50 if headless else None),
            seed=args.seed,
            goal=args.goal,
            episode_steps=args.episode_steps or 10,
            headless=headless,
            record=args.record,
            fps=args.fps,
        )
        if args.agent == "keyboard":
            source = None
        elif args.agent == "replay":
            source = _replay(args, wm, settings)
        else:
            from agents.evaluate import load_agent

            agent = load_agent(args.agent, wm, seed=args.seed, trust_pickle=args.trust_pickle, **planner_kwargs(args))
            source = agent_source(agent)
        result = play(wm, source, settings)
    except ValueError as err:
        raise LeWorldError(str(err)) from None
    print(
        f"{result.steps} steps, {len(result.episodes)} episodes, {result.successes} successes on real physics; "
        f"{result.frames} frames; {result.block_successes} episodes met the block-only test"
    )
    if result.record is not None:
        print(f"recording written to {result.record}")
    return 0


def _replay(args: argparse.Namespace, wm: WorldModel, settings: PlaySettings) -> ActionSource:
    """The dataset episode's actions from its first state; one episode, as long as the data."""
    from leworld_env.playback.play import replay_options, replay_source
    from world_models.data.dataset import read_episode

    if args.dataset is None:
        raise LeWorldError("--agent replay needs --dataset DIR (a leworld collect dataset)")
    episode = read_episode(args.dataset, args.episode)
    if episode.frameskip != wm.config.frameskip:
        raise LeWorldError(
            f"{args.dataset}: frameskip {episode.frameskip}, the model steps {wm.config.frameskip} physics steps"
        )
    options = replay_options(episode, settings.goal)
    settings.options = lambda i: options
    settings.max_episodes = 1
    if args.episode_steps is None:
        settings.episode_steps = len(episode.actions)
    if args.steps is None:
        settings.steps = len(episode.actions)
    return replay_source(episode)


# ------------------------------------------------------------------ demo
def add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="plan real PushT episodes with the shipped model; print a table, write a GIF of real vs imagined",
        description=(
            "Loads the shipped model, plans a few real PushT episodes with CEM (LeWM's protocol and settings), "
            "prints success, coverage, block error and time per decision, and writes a GIF of real physics "
            "next to the model's imagination. A window opens only where a display exists."
        ),
    )
    p.add_argument("--episodes", type=positive_int, default=3, help="episodes (3)")
    p.add_argument("--seed", type=int, default=0, help="episode i is leworld eval's episode i of this seed (0)")
    p.add_argument("--out", type=output_path, default=Path("leworld-demo.gif"), help="the GIF (leworld-demo.gif)")
    p.add_argument("--agent", default="cem", help=f"cem (default), icem, mppi, random, {AGENT_FILES}")
    p.add_argument("--model", default="pusht-tiny", help="world model: shipped name or folder (pusht-tiny)")
    p.add_argument("--backend", help="numba-q4 (default), numba or torch")
    p.add_argument("--no-window", action="store_true", help="never open a window")
    add_trust_pickle(p)
    add_planner_args(p)
    p.set_defaults(run=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    from agents.demo import DemoSettings, demo_table
    from agents.demo import run_demo as demo

    settings = dataclass_from_args(
        DemoSettings, args, window=False if args.no_window else None, planner=planner_kwargs(args)
    )
    try:
        result, wm = demo(settings)
    except ValueError as err:
        raise LeWorldError(str(err)) from None
    print(f"{args.agent} on real PushT (lewm protocol, seed {args.seed}), model {args.model} on {wm.backend}")
    print(demo_table(result))
    print(f"real vs imagined written to {result.record} ({result.frames} frames)")
    return 0
