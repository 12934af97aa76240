"""GIF, MP4 and TensorBoard video summaries with the pinned dependencies (no moviepy)."""

from __future__ import annotations

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from leworld_env.playback.video import write_video
from world_models.errors import LeWorldError
from world_models.video import add_video, check_frames, gif_bytes, gif_frame_count


def moving_square(n: int, size: int = 32) -> list[np.ndarray]:
    frames = []
    for i in range(n):
        frame = np.full((size, size + 8, 3), 255, np.uint8)
        frame[i : i + 6, i : i + 6] = (200, 30, 30)
        frames.append(frame)
    return frames


def test_gif_keeps_every_distinct_frame_and_its_pixels(tmp_path):
    from PIL import Image

    frames = moving_square(7)
    path = tmp_path / "a.gif"
    write_video(path, frames, fps=5)
    assert gif_frame_count(path.read_bytes()) == 7
    with Image.open(path) as image:
        image.seek(3)
        decoded = np.asarray(image.convert("RGB"))
        assert image.info["duration"] == 200
    np.testing.assert_array_equal(decoded, frames[3])  # few colours: the palette is exact


def test_mp4_holds_every_frame(tmp_path):
    import cv2

    path = tmp_path / "a.mp4"
    write_video(path, moving_square(9), fps=10)
    capture = cv2.VideoCapture(str(path))
    count = 0
    while capture.read()[0]:
        count += 1
    assert count == 9
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left behind


def test_tensorboard_video_summary_reads_back(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(tmp_path))
    add_video(writer, "clip", moving_square(4), step=3, fps=4)
    writer.close()
    events = next(tmp_path.glob("events.out.tfevents.*"))
    acc = EventAccumulator(str(events), size_guidance={"images": 0})
    acc.Reload()
    (video,) = acc.Images("clip")
    assert video.step == 3 and (video.width, video.height) == (40, 32)
    assert video.encoded_image_string[:6] == b"GIF89a"
    assert gif_frame_count(video.encoded_image_string) == 4


@pytest.mark.parametrize(
    ("frames", "message"),
    [
        ([], "no frames"),
        ([np.zeros((4, 4, 3), np.float32)], "frame 0 must be uint8"),
        ([np.zeros((4, 4), np.uint8)], "frame 0 must be uint8"),
        ([np.zeros((4, 4, 3), np.uint8), np.zeros((4, 5, 3), np.uint8)], "frame 1 has shape"),
    ],
)
def test_bad_frames_are_named(frames, message):
    with pytest.raises(ValueError, match=message):
        check_frames(frames)
    with pytest.raises(ValueError, match=message):
        gif_bytes(frames)


def test_bad_recording_paths(tmp_path):
    with pytest.raises(LeWorldError, match=r"\.gif or \.mp4"):
        write_video(tmp_path / "a.webm", moving_square(2))
    with pytest.raises(LeWorldError, match="does not exist"):
        write_video(tmp_path / "missing" / "a.gif", moving_square(2))
