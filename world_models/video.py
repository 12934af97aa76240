"""Animated GIFs and TensorBoard video summaries from RGB frames, with Pillow only.

torch's ``SummaryWriter.add_video`` needs moviepy 1 (it imports ``moviepy.editor``,
which moviepy 2 removed). TensorBoard itself needs no video codec: a video summary
is an image summary whose encoded bytes are an animated GIF, which the Images
dashboard plays. :func:`add_video` writes exactly that, so video logging works with
the pinned dependencies and no moviepy or ffmpeg.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np

from world_models.errors import ArgumentError


def check_frames(frames: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Frames as a list of uint8 (H, W, 3) arrays of one size; ``ValueError`` otherwise."""
    if len(frames) == 0:
        raise ArgumentError("no frames to write")
    checked = [np.asarray(frame) for frame in frames]
    shape = checked[0].shape
    for i, frame in enumerate(checked):
        if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
            raise ArgumentError(f"frame {i} must be uint8 (H, W, 3), got {frame.dtype} {list(frame.shape)}")
        if frame.shape != shape:
            raise ArgumentError(f"frame {i} has shape {list(frame.shape)}, frame 0 has {list(shape)}")
    return checked


def gif_bytes(frames: Sequence[np.ndarray], fps: float = 10.0) -> bytes:
    """A looping animated GIF of uint8 (H, W, 3) frames.

    Pillow merges a frame equal to the one before into it (the delay adds up, so the
    timing stays right); a GIF of N frames that all differ decodes to N frames.
    """
    from PIL import Image

    images = [Image.fromarray(frame) for frame in check_frames(frames)]
    buffer = io.BytesIO()
    duration = max(20, round(1000 / fps))  # browsers play GIF delays under 20 ms at 100 ms
    images[0].save(
        buffer,
        format="GIF",
        save_all=True,
        append_images=images[1:],
        duration=duration,
        loop=0,
        optimize=False,
    )
    return buffer.getvalue()


def gif_frame_count(data: bytes) -> int:
    """How many frames a GIF holds."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        return getattr(image, "n_frames", 1)


def add_video(writer: Any, tag: str, frames: Sequence[np.ndarray], step: int, fps: float = 10.0) -> None:
    """Log ``frames`` to a ``torch.utils.tensorboard.SummaryWriter`` as an animated image summary."""
    from tensorboard.compat.proto.summary_pb2 import Summary

    checked = check_frames(frames)
    height, width = checked[0].shape[:2]
    image = Summary.Image(height=height, width=width, colorspace=3, encoded_image_string=gif_bytes(checked, fps))
    writer._get_file_writer().add_summary(Summary(value=[Summary.Value(tag=tag, image=image)]), step)
