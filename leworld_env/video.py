"""Animated GIFs from RGB frames (Pillow; no ffmpeg, no moviepy)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from world_models.files import atomic_write_bytes


def write_gif(path: Path, frames: Sequence[np.ndarray], fps: int = 10) -> None:
    """Write uint8 (H, W, 3) frames as a looping GIF, atomically."""
    import io

    from PIL import Image

    if not frames:
        raise ValueError("write_gif: no frames")
    images = [Image.fromarray(np.asarray(frame, dtype=np.uint8)) for frame in frames]
    buffer = io.BytesIO()
    images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)
    atomic_write_bytes(Path(path), buffer.getvalue())
