"""``leworld play``: real PushT and the dream side by side under the same actions.

Each step sends one action to two envs that start from the same state: the real twin
(gym-pusht physics; left) and the dream (the world model alone, open loop from the
start; right). The agent sees the real env's observation, so the left half is what
the agent does and the right half is what the model imagines it does. Each half shows
its goal tee, coverage and success; the footer shows the step, the agent, and how far
the imagined block has drifted from the real one.

Action sources: the keyboard and mouse (a window only), a planner (``cem``, ``icem``,
``mppi``), ``random``, an agent folder (or, with ``--trust-pickle``, an SB3 ``.zip``), or the actions of a
dataset episode (replay).

Keys: arrows move the agent (or hold the left mouse button where it should go),
space pauses, ``n`` steps once while paused, ``r`` resets, ``q`` or Esc quits.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from leworld_env.envs.pusht import LeWorldPushTEnv, LeWorldPushTRealEnv
from leworld_env.envs.starts import GOAL_OFFSET
from leworld_env.envs.task import info_successes, model_folder
from leworld_env.sim.pusht_sim import TEE_CENTER_OF_GRAVITY, angle_difference
from numba_kernels.pusht_raster import WORLD_SIZE
from world_models.data.dataset import EpisodeSteps
from world_models.errors import LeWorldError
from world_models.interface import WorldModel

BACKGROUND = (32, 34, 40)
TEXT = (235, 235, 235)
MUTED = (150, 155, 165)
SUCCESS = (90, 200, 120)
HEADER, FOOTER, GAP = 22, 44, 6


def has_display() -> bool:
    """Whether a window can open here (not SDL's dummy or offscreen driver; X11 or Wayland on Linux)."""
    if os.environ.get("SDL_VIDEODRIVER", "") in ("dummy", "offscreen"):
        return False
    if sys.platform.startswith("linux"):
        return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    return True


def _font(size: int) -> Any:
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def block_centre(state: np.ndarray) -> np.ndarray:
    """The tee's centre of gravity (px) of a state (agent x, y, block x, y, angle)."""
    c, s = np.cos(state[4]), np.sin(state[4])
    x, y = TEE_CENTER_OF_GRAVITY
    return np.array([state[2] + c * x - s * y, state[3] + s * x + c * y])


class SideBySide:
    """The real twin and the dream, reset to the same start and stepped with the same actions.

    Args:
        world_model: one loaded model both envs use.
        goal: ``"dataset"`` (LeWM protocol: success = LeWM's strict test, the block-only test beside
            it) or ``"fixed"`` (gym-pusht's goal: coverage).
        episode_steps: env steps before an episode is cut (the real env decides success).
        render_size: side of each half in pixels.
        terminate_on_success: end an episode when the real env terminates on success (``False``:
            always run ``episode_steps``, as the ``lewm`` protocol does).
    """

    def __init__(
        self,
        world_model: WorldModel,
        goal: str = "dataset",
        episode_steps: int = 10,
        render_size: int = 256,
        terminate_on_success: bool = True,
    ) -> None:
        common = {
            "model": world_model,
            "goal": goal,
            "render_mode": "rgb_array",
            "render_size": render_size,
            "terminate_on_success": terminate_on_success,
        }
        self.real = LeWorldPushTRealEnv(**common)
        self.dream = LeWorldPushTEnv(**common)
        self.goal = goal
        self.episode_steps = episode_steps
        self.render_size = render_size
        folder = model_folder(world_model)
        self.model_name = folder.name if folder is not None else type(world_model).__name__
        self.obs: dict[str, np.ndarray] = {}
        self.real_info: dict[str, Any] = {}
        self.dream_info: dict[str, Any] = {}
        self.step_count = 0
        self.done = False
        self.success = False
        self.success_block = False
        self._fonts = (_font(14), _font(12))

    def reset(self, seed: int, options: dict[str, Any] | None = None) -> None:
        """Both envs from the same start and goal (the same seed and options)."""
        self.obs, self.real_info = self.real.reset(seed=seed, options=options)
        _, self.dream_info = self.dream.reset(seed=seed, options=options)
        self.step_count, self.done = 0, False
        self.success, self.success_block = info_successes(self.real_info, self.goal)

    def step(self, action: np.ndarray) -> None:
        """One action to both envs; the episode ends on real success (where the envs terminate on it)
        or after ``episode_steps``."""
        self.obs, _, terminated, _, self.real_info = self.real.step(action)
        _, _, _, _, self.dream_info = self.dream.step(action)
        self.step_count += 1
        strict, block = info_successes(self.real_info, self.goal)
        self.success, self.success_block = self.success or strict, self.success_block or block
        self.done = terminated or self.step_count >= self.episode_steps

    def drift(self) -> tuple[float, float]:
        """How far the imagined block is from the real one: centres of gravity (px), angles (degrees)."""
        dream, real = self.dream_info["state"], self.real_info["state"]
        offset = float(np.linalg.norm(block_centre(dream) - block_centre(real)))
        return offset, float(np.degrees(angle_difference(dream[4], real[4])))

    def frame(self, footer: str) -> np.ndarray:
        """Both halves with their labels, coverage and success, and ``footer`` below."""
        from PIL import Image, ImageDraw

        size = self.render_size
        canvas = Image.new("RGB", (2 * size + GAP, HEADER + size + FOOTER), BACKGROUND)
        draw = ImageDraw.Draw(canvas)
        big, small = self._fonts
        halves = (
            ("real: gym-pusht physics", self.real.render(), self.real_info),
            (f"dream: {self.model_name}, open loop", self.dream.render(), self.dream_info),
        )
        for i, (label, picture, info) in enumerate(halves):
            x = i * (size + GAP)
            draw.text((x + 4, 4), label, fill=TEXT, font=big)
            canvas.paste(Image.fromarray(picture), (x, HEADER))
            won, block = info_successes(info, self.goal)
            status = f"coverage {info['coverage']:.2f}   success {'yes' if won else 'no'}"
            if self.goal == "dataset":
                status += f"   block only {'yes' if block else 'no'}"
            draw.text((x + 4, HEADER + size + 4), status, fill=SUCCESS if won else TEXT, font=small)
        draw.text((4, HEADER + size + 24), footer, fill=MUTED, font=small)
        return np.asarray(canvas)

    def close(self) -> None:
        """Close both envs."""
        self.real.close()
        self.dream.close()


# ------------------------------------------------------------------ action sources
ActionSource = Callable[[SideBySide, bool], np.ndarray]


def agent_source(agent: Any) -> ActionSource:
    """Anything with SB3's ``predict`` (planners, SB3 models, ``RandomAgent``) acting on the real observation."""

    def act(play: SideBySide, episode_start: bool) -> np.ndarray:
        action, _ = agent.predict(play.obs, episode_start=np.array([episode_start]), deterministic=True)
        return np.asarray(action, dtype=np.float32).reshape(2)

    return act


def replay_source(episode: EpisodeSteps) -> ActionSource:
    """The dataset episode's held actions, one per model step (zero once they run out)."""

    def act(play: SideBySide, episode_start: bool) -> np.ndarray:
        k = play.step_count
        return episode.actions[k] if k < len(episode.actions) else np.zeros(2, np.float32)

    return act


def replay_options(episode: EpisodeSteps, goal: str) -> dict[str, Any]:
    """Reset options that start at the episode's first state (goal: its state 25 physics steps on)."""
    options: dict[str, Any] = {"start": episode.state[0]}
    if goal == "dataset":
        ahead = min(-(-GOAL_OFFSET // episode.frameskip), len(episode.state) - 1)
        options["goal_state"] = episode.state[ahead]
    return options


# ------------------------------------------------------------------ the loop
@dataclass
class EpisodeSummary:
    """One side-by-side episode, judged on the real env."""

    index: int
    success: bool  # dataset goal: LeWM's strict test at some step; fixed goal: coverage
    success_block: bool  # the block-only test at some step
    steps: int
    final_coverage: float
    final_position_error: float  # real block to goal, px
    dream_offset: float  # imagined block centre to the real one at the end, px
    dream_turn: float  # imagined block angle to the real one at the end, degrees
    decision_seconds: float  # mean time the agent took per action


@dataclass
class PlayResult:
    """What a play session did."""

    steps: int = 0
    frames: int = 0
    record: Path | None = None
    episodes: list[EpisodeSummary] = field(default_factory=list)

    @property
    def successes(self) -> int:
        """Episodes that succeeded on real physics."""
        return sum(e.success for e in self.episodes)

    @property
    def block_successes(self) -> int:
        """Episodes that met the block-only test on real physics."""
        return sum(e.success_block for e in self.episodes)


@dataclass
class PlaySettings:
    """How ``leworld play`` runs (see the CLI's help for each)."""

    agent_name: str = "cem"
    steps: int | None = 50  # env steps in all; None: until quit or max_episodes
    seed: int = 0  # episode i resets with seed + i
    goal: str = "dataset"
    episode_steps: int = 10
    terminate_on_success: bool = True  # False: every episode runs episode_steps (the lewm protocol)
    headless: bool = True
    record: Path | None = None
    fps: float = 4.0
    render_size: int = 256
    options: Callable[[int], dict[str, Any] | None] | None = None  # reset options of episode i
    max_episodes: int | None = None
    window_optional: bool = False  # a window that fails to open: go on headless (the demo) instead of an error


def play(world_model: WorldModel, source: ActionSource | None, settings: PlaySettings) -> PlayResult:
    """Run side-by-side episodes; ``source=None`` means the keyboard and mouse (needs a window)."""
    if settings.headless and source is None:
        raise LeWorldError("the keyboard agent needs a window; pick --agent cem (or another) for --headless")
    if not settings.headless and not has_display():
        raise LeWorldError("no display here; add --headless --record out.gif to draw to a file")
    if settings.headless and settings.record is None:
        raise LeWorldError("--headless draws to a file: add --record out.gif (or .mp4)")
    from leworld_env.playback.video import check_video_path, write_video

    record = check_video_path(settings.record) if settings.record is not None else None
    window = None if settings.headless else _open_window(settings)
    if window is None and source is None:
        raise LeWorldError("the keyboard agent needs a window, and none could open")
    scene = SideBySide(
        world_model, settings.goal, settings.episode_steps, settings.render_size, settings.terminate_on_success
    )
    result, frames = PlayResult(record=record), []
    try:
        _Session(scene, source, settings, window, result, frames).run()
    finally:
        scene.close()
        if window is not None:
            window.close()
    if record is not None and frames:
        write_video(record, frames, settings.fps)
    return result


def _open_window(settings: PlaySettings) -> _Window | None:
    """The pygame window, or ``None`` where it fails and ``window_optional`` allows going on without it."""
    try:
        return _Window(settings.fps)
    except Exception as err:  # pygame.error, or an SDL video driver that will not start
        if settings.window_optional and settings.record is not None:
            return None
        raise LeWorldError(f"cannot open a window ({err}); add --headless --record out.gif") from None


class _Session:
    """The loop of :func:`play`: act, step both envs, draw, keep score."""

    def __init__(
        self,
        scene: SideBySide,
        source: ActionSource | None,
        settings: PlaySettings,
        window: _Window | None,
        result: PlayResult,
        frames: list[np.ndarray],
    ) -> None:
        self.scene, self.source, self.settings, self.window = scene, source, settings, window
        self.result, self.frames = result, frames
        self.keep_all = settings.record is not None  # without a recording only the newest frame is kept
        self.index = -1
        self.seconds: list[float] = []

    def footer(self) -> str:
        paused = "   [paused: n steps, space resumes]" if self.window is not None and self.window.paused else ""
        offset, turn = self.scene.drift()
        return (
            f"episode {self.index}  step {self.scene.step_count}/{self.settings.episode_steps}  "
            f"agent {self.settings.agent_name}  imagined block off by {offset:.0f} px, {turn:.0f} deg{paused}"
        )

    def new_episode(self) -> None:
        self.index += 1
        options = self.settings.options(self.index) if self.settings.options is not None else None
        self.scene.reset(self.settings.seed + self.index, options)
        self.seconds = []
        self.draw()

    def draw(self) -> None:
        """Compose the current frame: recorded, or kept as the only one for the window."""
        frame = self.scene.frame(self.footer())
        if not self.keep_all:
            self.frames.clear()
        self.frames.append(frame)
        self.result.frames += 1

    def end_episode(self) -> None:
        scene = self.scene
        state, goal = scene.real_info["state"], scene.real_info["goal_state"]
        offset, turn = scene.drift()
        self.result.episodes.append(
            EpisodeSummary(
                index=self.index,
                success=scene.success,
                success_block=scene.success_block,
                steps=scene.step_count,
                final_coverage=float(scene.real_info["coverage"]),
                final_position_error=float(np.linalg.norm(state[2:4] - goal[2:4])),
                dream_offset=offset,
                dream_turn=turn,
                decision_seconds=float(np.mean(self.seconds)) if self.seconds else 0.0,
            )
        )

    def act(self, episode_start: bool) -> np.ndarray:
        if self.source is None:
            assert self.window is not None
            return self.window.keyboard_action(self.scene)
        began = time.perf_counter()
        action = self.source(self.scene, episode_start)
        self.seconds.append(time.perf_counter() - began)
        return action

    def run(self) -> None:
        settings, scene = self.settings, self.scene
        self.new_episode()
        episode_start = True
        while settings.steps is None or self.result.steps < settings.steps:
            command = self.window.poll(self.frames[-1]) if self.window is not None else "step"
            if command == "quit":
                break
            if command == "wait":
                continue
            if command == "reset" or scene.done:
                self.end_episode()
                if settings.max_episodes is not None and len(self.result.episodes) >= settings.max_episodes:
                    return
                self.new_episode()
                episode_start = True
                continue
            action = self.act(episode_start)
            episode_start = False
            scene.step(action)
            self.result.steps += 1
            self.draw()
        self.end_episode()


class _Window:
    """The pygame window of ``leworld play``: shows frames, reads keys and the mouse."""

    def __init__(self, fps: float) -> None:
        from leworld_env.envs.render import HumanWindow

        self.screen = HumanWindow("leworld play: real | dream", fps)
        self.paused = False
        self.fps = fps

    def poll(self, frame: np.ndarray) -> str:
        """``step``, ``wait`` (paused), ``reset`` or ``quit``, after showing ``frame``."""
        pygame = self.screen.pygame
        self.screen.show(frame)
        single = False
        for event in self.screen.events():
            key = event.key if event.type == pygame.KEYDOWN else None
            if event.type == pygame.QUIT or key in (pygame.K_q, pygame.K_ESCAPE):
                return "quit"
            if key == pygame.K_SPACE:
                self.paused = not self.paused
            elif key == pygame.K_r:
                return "reset"
            elif key == pygame.K_n:
                single = True
        if self.paused and not single:
            time.sleep(0.01)
            return "wait"
        return "step"

    def keyboard_action(self, scene: SideBySide) -> np.ndarray:
        """Arrows: a full move along each pressed axis; left mouse button: towards the pointer (left half)."""
        pygame = self.screen.pygame
        keys = pygame.key.get_pressed()
        action = np.array(
            [keys[pygame.K_RIGHT] - keys[pygame.K_LEFT], keys[pygame.K_DOWN] - keys[pygame.K_UP]], np.float32
        )
        if pygame.mouse.get_pressed()[0]:
            x, y = pygame.mouse.get_pos()
            size = scene.render_size
            if x < size and HEADER <= y < HEADER + size:
                world = np.array([x, y - HEADER]) * WORLD_SIZE / size
                scale = scene.real.world_model.config.action_scale
                action = np.clip((world - scene.real_info["state"][:2]) / scale, -1, 1).astype(np.float32)
        return action

    def close(self) -> None:
        self.screen.close()
