"""``leworld demo``: the shipped model plans real PushT episodes, and you see what it imagined.

It loads the shipped world model (numba-q4: no torch, no download), runs LeWM's CEM
planner (300 samples x 30 iterations, horizon 5, a plan every 5 steps: LeWM's schedule;
``--replan-every 1`` plans at every step) on a few episodes of the ``lewm``
protocol on real gym-pusht physics, prints a table (success, coverage, block error,
steps, time per decision, how far the dream drifted), and writes a GIF of real vs
imagined side by side. It opens a window only where a display exists.

Episode ``i`` is the same start and goal as episode ``i`` of ``leworld eval --agent cem
--protocol lewm --seed S``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agents.evaluate import PROTOCOLS, episode_options, load_agent, wilson_interval
from leworld_env.envs.task import open_start_bank
from leworld_env.playback.play import PlayResult, PlaySettings, agent_source, has_display, play
from world_models.interface import WorldModel

DEMO_REPLAN_EVERY = 5  # LeWM's schedule: execute the whole 5-step plan, then plan again


@dataclass
class DemoSettings:
    """What ``leworld demo`` runs."""

    episodes: int = 3
    seed: int = 0
    out: Path = Path("leworld-demo.gif")
    agent: str = "cem"
    model: str = "pusht-tiny"
    backend: str | None = None
    window: bool | None = None  # None: open one where a display exists
    planner: dict[str, Any] | None = None  # overrides of the planner's settings (samples, iterations, ...)
    trust_pickle: bool = False  # let ``agent`` be an SB3 .zip (unpickled: a crafted file runs code)


def run_demo(settings: DemoSettings) -> tuple[PlayResult, WorldModel]:
    """Plan ``settings.episodes`` real episodes side by side with the dream; returns the result and the model."""
    import world_models

    protocol = PROTOCOLS["lewm"]
    wm = world_models.load(settings.model, backend=settings.backend)
    planner = {"replan_every": DEMO_REPLAN_EVERY, **(settings.planner or {})}
    agent = load_agent(settings.agent, wm, seed=settings.seed, trust_pickle=settings.trust_pickle, **planner)
    options = episode_options(protocol, settings.seed, settings.episodes, len(open_start_bank(wm)))
    window = has_display() if settings.window is None else settings.window
    play_settings = PlaySettings(
        agent_name=settings.agent,
        steps=None,
        seed=settings.seed,
        goal=protocol.goal,
        episode_steps=protocol.env_steps(wm.config.frameskip),
        terminate_on_success=protocol.terminate_on_success,
        headless=not window,
        record=settings.out,
        options=lambda i: options[i],
        max_episodes=settings.episodes,
        window_optional=settings.window is None,  # auto: a display that will not open means headless
    )
    return play(wm, agent_source(agent), play_settings), wm


def demo_table(result: PlayResult) -> str:
    """Per-episode rows and a summary line, aligned for a terminal: ``success`` is LeWM's strict test
    (agent and block), ``block only`` the block-only test."""
    header = ("episode", "success", "coverage", "block error", "steps", "s/decision", "dream off by", "block only")
    rows = [
        (
            str(e.index),
            "yes" if e.success else "no",
            f"{e.final_coverage:.2f}",
            f"{e.final_position_error:.0f} px",
            str(e.steps),
            f"{e.decision_seconds:.2f}",
            f"{e.dream_offset:.0f} px, {e.dream_turn:.0f} deg",
            "yes" if e.success_block else "no",
        )
        for e in result.episodes
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True)) for row in [header, *rows]]
    n, wins, block = len(result.episodes), result.successes, result.block_successes
    low, high = wilson_interval(wins, n)
    block_low, block_high = wilson_interval(block, n)
    lines.append(
        f"success {wins}/{n} ({low:.0%} - {high:.0%} at 95%); block only {block}/{n} "
        f"({block_low:.0%} - {block_high:.0%}); LeWM reports 96% with its 224 px model"
    )
    return "\n".join(lines)
