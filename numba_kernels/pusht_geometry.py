"""Exact, deterministic, batched PushT coverage.

gym-pusht measures coverage (the share of the goal tee covered by the block)
with shapely; GEOS's overlay gives results that differ in the last bit between
processes for the same pose, so data collected twice would not be identical.
Both tees are unions of two rectangles with disjoint interiors, so

    area(block & goal) = sum over rectangle pairs of area(R_block & R_goal),

and each term is the intersection of two convex quadrilaterals: a
Sutherland-Hodgman clip and a shoelace area, in a fixed order of operations.
The result agrees with gym-pusht's to ~1e-12 and is bit-identical run to run.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from numba_kernels.pusht_raster import GOAL_POSE, TEE_RECTS

TEE_AREA = float(np.sum((TEE_RECTS[:, 1] - TEE_RECTS[:, 0]) * (TEE_RECTS[:, 3] - TEE_RECTS[:, 2])))


@njit(cache=True, inline="always")
def _rect_corners(rect: np.ndarray, x: float, y: float, angle: float, out: np.ndarray) -> None:
    """World corners of a body-frame rectangle [x0, x1, y0, y1], counter-clockwise in body frame."""
    c, s = math.cos(angle), math.sin(angle)
    us = (rect[0], rect[1], rect[1], rect[0])
    vs = (rect[2], rect[2], rect[3], rect[3])
    for k in range(4):
        out[k, 0] = x + c * us[k] - s * vs[k]
        out[k, 1] = y + s * us[k] + c * vs[k]


@njit(cache=True)
def _convex_intersection_area(subject: np.ndarray, clip: np.ndarray) -> float:
    """Area of the intersection of two convex quadrilaterals with the same orientation."""
    poly = np.empty((12, 2))
    nxt = np.empty((12, 2))
    n = 4
    for k in range(4):
        poly[k, 0] = subject[k, 0]
        poly[k, 1] = subject[k, 1]
    for e in range(4):
        ax, ay = clip[e, 0], clip[e, 1]
        bx, by = clip[(e + 1) % 4, 0], clip[(e + 1) % 4, 1]
        m = 0
        for k in range(n):
            px, py = poly[k, 0], poly[k, 1]
            qx, qy = poly[(k + 1) % n, 0], poly[(k + 1) % n, 1]
            side_p = (bx - ax) * (py - ay) - (by - ay) * (px - ax)
            side_q = (bx - ax) * (qy - ay) - (by - ay) * (qx - ax)
            if side_p >= 0.0:
                nxt[m, 0] = px
                nxt[m, 1] = py
                m += 1
            if (side_p >= 0.0) != (side_q >= 0.0):
                t = side_p / (side_p - side_q)
                nxt[m, 0] = px + t * (qx - px)
                nxt[m, 1] = py + t * (qy - py)
                m += 1
        n = m
        if n == 0:
            return 0.0
        for k in range(n):
            poly[k, 0] = nxt[k, 0]
            poly[k, 1] = nxt[k, 1]
    area = 0.0
    for k in range(n):
        area += poly[k, 0] * poly[(k + 1) % n, 1] - poly[(k + 1) % n, 0] * poly[k, 1]
    return abs(0.5 * area)


@njit(cache=True)
def _coverage_pairs(block_pose: np.ndarray, goal_pose: np.ndarray, rects: np.ndarray, tee_area: float, out: np.ndarray):
    # Serial on purpose: a pose costs ~1 us, and a parallel region per call (the envs call this
    # every step) leaves numba's workers spinning against the model's kernels.
    block = np.empty((4, 2))
    goal = np.empty((2, 4, 2))
    for b in range(block_pose.shape[0]):
        for j in range(2):
            _rect_corners(rects[j], goal_pose[b, 0], goal_pose[b, 1], goal_pose[b, 2], goal[j])
        covered = 0.0
        for i in range(2):
            _rect_corners(rects[i], block_pose[b, 0], block_pose[b, 1], block_pose[b, 2], block)
            for j in range(2):
                covered += _convex_intersection_area(block, goal[j])
        out[b] = covered / tee_area


def tee_coverage_pairs(block_pose: np.ndarray, goal_pose: np.ndarray) -> np.ndarray:
    """Coverage of goal tee ``goal_pose[b]`` by block ``block_pose[b]``, for (B, 3) arrays of poses."""
    blocks = np.ascontiguousarray(np.atleast_2d(block_pose), dtype=np.float64)
    goals = np.ascontiguousarray(np.atleast_2d(goal_pose), dtype=np.float64)
    if blocks.shape[1:] != (3,) or goals.shape != blocks.shape:
        raise ValueError(f"tee_coverage_pairs: expected two (B, 3) arrays of poses, got {blocks.shape}, {goals.shape}")
    out = np.empty(blocks.shape[0])
    _coverage_pairs(blocks, goals, TEE_RECTS, TEE_AREA, out)
    return out


def tee_coverage(block_pose: np.ndarray, goal_pose: np.ndarray | None = None) -> np.ndarray | float:
    """Share of the goal tee's area covered by the block, for one pose (3,) or a batch (B, 3).

    Args:
        block_pose: block body origin (x, y) and angle, as gym-pusht reports it.
        goal_pose: goal tee pose (x, y, angle); gym-pusht's fixed goal by default.
    """
    single = np.ndim(block_pose) == 1
    poses = np.ascontiguousarray(np.atleast_2d(block_pose), dtype=np.float64)
    if poses.shape[1:] != (3,):
        raise ValueError(f"tee_coverage: expected block poses (B, 3), got {poses.shape}")
    goal = GOAL_POSE if goal_pose is None else np.asarray(goal_pose, dtype=np.float64)
    out = tee_coverage_pairs(poses, np.broadcast_to(goal, poses.shape))
    return float(out[0]) if single else out
