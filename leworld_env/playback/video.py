"""Recordings from RGB frames: animated GIF (Pillow) or MP4 (OpenCV, which gym-pusht already
installs); no moviepy, no ffmpeg binary. Files are written atomically."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from world_models.errors import LeWorldError
from world_models.files import _commit, atomic_write_bytes
from world_models.video import check_frames, gif_bytes

VIDEO_SUFFIXES = (".gif", ".mp4")


def is_video(path: Path) -> bool:
    """True when ``path`` starts like a GIF or an MP4 file (a previous recording, safe to replace)."""
    try:
        with open(path, "rb") as f:
            head = f.read(12)
    except OSError:
        return False
    return head[:6] in (b"GIF87a", b"GIF89a") or head[4:8] == b"ftyp"


def check_video_path(path: Path, overwrite: bool = False) -> Path:
    """``path`` if it ends in .gif or .mp4 and may be written: a new file in a writable folder, or a
    previous recording (or anything, with ``overwrite``); ``LeWorldError`` otherwise."""
    from world_models.outputs import check_output_file

    path = Path(path)
    if path.suffix.lower() not in VIDEO_SUFFIXES:
        raise LeWorldError(f"{path}: a recording must end in {' or '.join(VIDEO_SUFFIXES)}")
    if not path.parent.is_dir():
        raise LeWorldError(f"{path}: folder {path.parent} does not exist")
    if not os.access(path.parent, os.W_OK):
        raise LeWorldError(f"{path}: folder {path.parent} is not writable")
    check_output_file(path, "recording", overwrite=overwrite, is_previous=is_video)
    return path


def write_gif(path: Path, frames: Sequence[np.ndarray], fps: float = 10.0) -> None:
    """Write uint8 (H, W, 3) frames as a looping GIF, atomically."""
    atomic_write_bytes(Path(path), gif_bytes(frames, fps))


def write_mp4(path: Path, frames: Sequence[np.ndarray], fps: float = 10.0) -> None:
    """Write uint8 (H, W, 3) RGB frames as an MPEG-4 video, atomically."""
    import cv2

    checked = check_frames(frames)
    height, width = checked[0].shape[:2]
    path = Path(path)
    # OpenCV picks the container from the suffix, so the temporary file keeps ".mp4".
    handle, temporary = tempfile.mkstemp(suffix=".mp4", dir=path.parent, prefix=f".{path.stem}.")
    os.close(handle)
    writer = cv2.VideoWriter(temporary, cv2.VideoWriter_fourcc(*"mp4v"), float(fps), (width, height))
    try:
        if not writer.isOpened():
            raise LeWorldError(f"{path}: OpenCV cannot write MPEG-4 here; record a .gif instead")
        for frame in checked:
            writer.write(np.ascontiguousarray(frame[..., ::-1]))  # OpenCV wants BGR
        writer.release()
        _commit(temporary, path)
    finally:
        writer.release()
        Path(temporary).unlink(missing_ok=True)


def write_video(path: Path, frames: Sequence[np.ndarray], fps: float = 10.0) -> None:
    """A .gif or .mp4 by the file's suffix."""
    path = check_video_path(path)
    try:
        if path.suffix.lower() == ".gif":
            write_gif(path, frames, fps)
        else:
            write_mp4(path, frames, fps)
    except OSError as err:
        raise LeWorldError(f"{path}: cannot write the recording ({err.strerror or err})") from None
