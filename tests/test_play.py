"""``leworld play`` and ``leworld demo``: real and imagined PushT side by side, recorded to GIF or MP4."""

from __future__ import annotations

import re

import numpy as np
import pytest
from PIL import Image

import world_models
from leworld_env.envs.starts import GOAL_OFFSET
from leworld_env.playback.play import (
    GAP,
    HEADER,
    PlaySettings,
    SideBySide,
    agent_source,
    play,
    replay_options,
    replay_source,
)
from tests.conftest import run_cli
from tests.test_collect import assert_one_line_error
from world_models.data.dataset import read_episode
from world_models.errors import DatasetError, LeWorldError

SIZE = 256  # the default side of each half


@pytest.fixture(scope="module")
def wm():
    return world_models.load("pusht-tiny")


def gif_frames(path) -> list[np.ndarray]:
    with Image.open(path) as image:
        frames = []
        for i in range(image.n_frames):
            image.seek(i)
            frames.append(np.asarray(image.convert("RGB")))
    return frames


def halves(frame: np.ndarray, size: int = SIZE) -> tuple[np.ndarray, np.ndarray]:
    scene = frame[HEADER : HEADER + size]
    return scene[:, :size], scene[:, size + GAP : 2 * size + GAP]


def assert_drawn(half: np.ndarray) -> None:
    """A PushT scene: white floor, plus block, goal and agent colours each covering some pixels."""
    colours, counts = np.unique(half.reshape(-1, 3), axis=0, return_counts=True)
    share = counts / counts.sum()
    assert (share > 0.002).sum() >= 4, colours[share > 0.002]  # floor, block, goal, agent
    assert share.max() < 0.97  # not a blank floor


def test_headless_play_records_both_halves(tmp_path):
    """The issue's command (with a small planner budget): a GIF of one frame per step plus one per reset."""
    out = tmp_path / "out.gif"
    result = run_cli(
        "play", "--headless", "--agent", "cem", "--steps", "50", "--record", str(out), "--samples", "16",
        "--iterations", "2",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    found = re.search(r"(\d+) steps, (\d+) episodes, \d+ successes on real physics; (\d+) frames", result.stdout)
    assert found, result.stdout
    steps, episodes, frames = map(int, found.groups())
    assert steps == 50 and episodes >= 5 and frames == steps + episodes
    decoded = gif_frames(out)
    assert len(decoded) == frames
    assert decoded[0].shape == (HEADER + SIZE + 44, 2 * SIZE + GAP, 3)
    for frame in (decoded[0], decoded[len(decoded) // 2], decoded[-1]):
        assert_drawn(halves(frame)[0])
    assert_drawn(halves(decoded[0])[1])  # later, the imagined block may drift off the canvas
    # The dream is drawn from the model, not copied from the real half.
    assert any(not np.array_equal(*halves(frame)) for frame in decoded)


def test_play_records_mp4(tmp_path, wm):
    import cv2

    out = tmp_path / "out.mp4"
    settings = PlaySettings(agent_name="random", steps=6, record=out, render_size=128)
    from agents.planning import RandomAgent

    result = play(wm, agent_source(RandomAgent(seed=0)), settings)
    capture = cv2.VideoCapture(str(out))
    count = 0
    while capture.read()[0]:
        count += 1
    assert count == result.frames == 6 + len(result.episodes)


def test_replay_follows_the_dataset_exactly(short_dataset, wm):
    """Replaying a dataset episode drives the real twin through the recorded states."""
    episode = read_episode(short_dataset, 1)
    assert episode.state.shape == (len(episode.actions) + 1, 5) and episode.frameskip == wm.config.frameskip
    scene = SideBySide(wm, goal="dataset", episode_steps=len(episode.actions), render_size=64)
    scene.reset(0, replay_options(episode, "dataset"))
    act = replay_source(episode)
    np.testing.assert_allclose(scene.real_info["state"], episode.state[0], atol=1e-9)
    ahead = -(-GOAL_OFFSET // episode.frameskip)  # the dataset goal: 25 physics steps on
    np.testing.assert_allclose(scene.real_info["goal_state"], episode.state[ahead], atol=1e-9)
    for k in range(len(episode.actions)):
        scene.step(act(scene, k == 0))
        np.testing.assert_allclose(scene.real_info["state"][:4], episode.state[k + 1][:4], atol=1e-6)
        if scene.done:
            break
    scene.close()


def test_play_replay_cli(short_dataset, tmp_path):
    out = tmp_path / "replay.gif"
    result = run_cli(
        "play", "--headless", "--agent", "replay", "--dataset", str(short_dataset), "--episode", "2",
        "--record", str(out),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "1 episodes" in result.stdout and out.is_file()
    bad = run_cli("play", "--headless", "--agent", "replay", "--dataset", str(short_dataset), "--episode", "99",
                  "--record", str(out))  # fmt: skip
    assert_one_line_error(bad, "no episode 99", "0..9")
    missing = run_cli("play", "--headless", "--agent", "replay", "--record", str(out))
    assert_one_line_error(missing, "--dataset")


def test_read_episode_rejects_bad_input(short_dataset, tmp_path):
    with pytest.raises(DatasetError, match="no episode -1"):
        read_episode(short_dataset, -1)
    with pytest.raises(DatasetError, match="no such dataset folder"):
        read_episode(tmp_path / "nothing", 0)


@pytest.mark.parametrize(
    ("arguments", "fragments"),
    [
        (["--headless", "--steps", "2"], ["--record"]),
        (["--headless", "--agent", "keyboard", "--record", "x.gif"], ["keyboard agent needs a window"]),
        (["--headless", "--record", "x.avi"], ["x.avi", ".gif or .mp4"]),
        (["--headless", "--record", "no/such/x.gif"], ["does not exist"]),
        (["--headless", "--agent", "dqn", "--record", "x.gif"], ["unknown agent 'dqn'"]),
        (["--headless", "--fps", "0", "--record", "x.gif"], ["--fps"]),
        ([], ["no display here", "--headless"]),
    ],
)
def test_play_bad_input(arguments, fragments, tmp_path, monkeypatch):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    assert_one_line_error(run_cli("play", *arguments, cwd=tmp_path), *fragments)


def test_window_keys_pause_step_reset_and_quit(wm, monkeypatch, tmp_path):
    """Through SDL's dummy driver: space pauses, n steps once, r resets, q quits; arrows drive the agent."""
    import pygame

    import leworld_env.playback.play as play_module
    from leworld_env.envs.render import HumanWindow

    monkeypatch.setenv("SDL_VIDEODRIVER", "dummy")
    monkeypatch.setattr(play_module, "has_display", lambda: True)
    key = lambda k: pygame.event.Event(pygame.KEYDOWN, key=k)  # noqa: E731
    script = iter(
        [
            [],  # step (keyboard: no key held, action 0)
            [key(pygame.K_SPACE)],  # pause
            [],  # paused: wait
            [key(pygame.K_n)],  # one step while paused
            [key(pygame.K_r)],  # reset: a second episode
            [key(pygame.K_SPACE)],  # resume and step
            [key(pygame.K_q)],  # quit
        ]
    )
    monkeypatch.setattr(HumanWindow, "events", lambda self: next(script))
    settings = PlaySettings(agent_name="keyboard", steps=None, headless=False, record=tmp_path / "k.gif", fps=1000)
    result = play(wm, None, settings)
    assert result.steps == 3 and len(result.episodes) == 2
    assert [e.steps for e in result.episodes] == [2, 1]
    assert len(gif_frames(tmp_path / "k.gif")) == result.frames == 3 + 2


def test_demo_prints_its_table_and_writes_the_gif(tmp_path):
    """``leworld demo`` with LeWM's planner settings, as a newcomer runs it (one episode to keep CI short)."""
    out = tmp_path / "demo.gif"
    result = run_cli("demo", "--episodes", "1", "--out", str(out), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:2] == ["episode", "success"])
    row = lines[header + 1].split()
    assert row[0] == "0" and row[1] in ("yes", "no") and 0.0 <= float(row[2]) <= 1.0
    assert float(row[6]) > 0  # seconds per decision
    assert re.search(r"success [01]/1", result.stdout)
    frames = gif_frames(out)
    assert len(frames) == int(row[5]) + 1
    assert_drawn(halves(frames[-1])[0])
    assert_drawn(halves(frames[0])[1])


def test_demo_episodes_are_leworld_evals(wm, tmp_path):
    """Episode i of the demo is episode i of ``evaluate`` on the lewm protocol: same start, goal and outcome."""
    from agents.demo import DEMO_REPLAN_EVERY, DemoSettings, run_demo
    from agents.evaluate import evaluate, load_agent

    budget = {"samples": 16, "iterations": 2, "topk": 4}
    played, _ = run_demo(DemoSettings(episodes=2, out=tmp_path / "d.gif", window=False, planner=budget))
    agent = load_agent("cem", wm, seed=0, replan_every=DEMO_REPLAN_EVERY, **budget)  # the demo's schedule
    evaluated = evaluate(agent, "cem", "real", "lewm", episodes=2, seed=0, progress=False)
    for mine, theirs in zip(played.episodes, evaluated.results, strict=True):
        assert mine.success == theirs.success and mine.steps == theirs.steps
        assert mine.final_position_error == pytest.approx(theirs.final_position_error, abs=1e-9)
        assert mine.final_coverage == pytest.approx(theirs.final_coverage, abs=1e-12)


def test_play_refuses_a_headless_session_without_a_file(wm):
    with pytest.raises(LeWorldError, match="--record"):
        play(wm, agent_source(None), PlaySettings(headless=True, record=None))


def test_a_window_that_will_not_open(wm, monkeypatch, tmp_path):
    """A display that fails: a one-line error for play; the demo's optional window falls back to the file."""
    import leworld_env.playback.play as play_module

    def broken(fps):
        raise RuntimeError("x11 connection refused")

    monkeypatch.setattr(play_module, "has_display", lambda: True)
    monkeypatch.setattr(play_module, "_Window", broken)
    settings = PlaySettings(agent_name="random", steps=2, headless=False, record=tmp_path / "w.gif")
    from agents.planning import RandomAgent

    with pytest.raises(LeWorldError, match=r"cannot open a window .*x11 connection refused.*--headless"):
        play(wm, agent_source(RandomAgent(seed=0)), settings)
    settings.window_optional = True
    result = play(wm, agent_source(RandomAgent(seed=0)), settings)
    assert result.steps == 2 and (tmp_path / "w.gif").is_file()


def test_without_a_recording_only_the_newest_frame_is_kept(wm, monkeypatch):
    """A window session without --record does not grow with time."""
    import leworld_env.playback.play as play_module

    kept = []
    real_run = play_module._Session.run

    def spy(self):
        real_run(self)
        kept.append(len(self.frames))

    monkeypatch.setattr(play_module._Session, "run", spy)
    monkeypatch.setattr(play_module, "has_display", lambda: True)
    monkeypatch.setenv("SDL_VIDEODRIVER", "dummy")
    from agents.planning import RandomAgent

    settings = PlaySettings(agent_name="random", steps=5, headless=False, record=None, fps=1000)
    result = play(wm, agent_source(RandomAgent(seed=0)), settings)
    assert result.frames == 5 + len(result.episodes) and kept == [1]
