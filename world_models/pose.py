"""The pose features: how a PushT pose becomes numbers a network reads, and back. No torch here.

A block pose ``(x, y, angle)`` becomes four features ``(x / 512, y / 512, sin angle, cos angle)``:
positions scaled by the world's side (:data:`numba_kernels.pusht_raster.WORLD_SIZE`, the one
definition of the 512-px world) and the angle as a point on the unit circle, so that 0 and 2 pi
are the same. The probe's six targets are the agent's scaled position followed by the block's four
features. Every encoder and decoder of these layouts is here; the envs' goal vectors, the probe and
the planners' state cost all use them.
"""

from __future__ import annotations

import numpy as np

from numba_kernels.pusht_raster import WORLD_SIZE

POSE_FEATURES = 4  # x / 512, y / 512, sin angle, cos angle
PROBE_FIELDS = ("agent_x", "agent_y", "block_x", "block_y", "sin_angle", "cos_angle")


def pose_features(pose: np.ndarray) -> np.ndarray:
    """(..., 3) x, y (px), angle (rad) -> (..., 4) float32 x / 512, y / 512, sin, cos."""
    pose = np.asarray(pose, np.float64)
    xy = pose[..., :2] / WORLD_SIZE
    angle = pose[..., 2:3]
    return np.concatenate([xy, np.sin(angle), np.cos(angle)], axis=-1).astype(np.float32)


def features_to_pose(features: np.ndarray) -> np.ndarray:
    """(..., 4) x / 512, y / 512, sin, cos -> (..., 3) x, y (px), angle in [0, 2 pi)."""
    f = np.asarray(features, np.float64)
    angle = np.remainder(np.arctan2(f[..., 2:3], f[..., 3:4]), 2 * np.pi)
    return np.concatenate([f[..., :2] * WORLD_SIZE, angle], axis=-1)


def state_to_targets(state: np.ndarray) -> np.ndarray:
    """(..., 5) agent x, y, block x, y (px), angle -> (..., 6) float32 probe targets."""
    state = np.asarray(state, np.float64)
    agent = (state[..., :2] / WORLD_SIZE).astype(np.float32)
    return np.concatenate([agent, pose_features(state[..., 2:5])], axis=-1)


def targets_to_state(targets: np.ndarray) -> np.ndarray:
    """(..., 6) probe outputs -> (..., 5) float32 agent x, y, block x, y (px), angle in [0, 2 pi)."""
    targets = np.asarray(targets)
    agent = targets[..., :2].astype(np.float64) * WORLD_SIZE
    return np.concatenate([agent, features_to_pose(targets[..., 2:6])], axis=-1).astype(np.float32)
