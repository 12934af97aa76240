"""Draw PushT scenes from physical states, batched, at any square size.

gym-pusht draws every frame with pygame at 512x512 and then resizes it with
OpenCV; that is about 72% of a pixel step. This kernel rasterises the same
scene straight at the target size with supersampling (anti-aliased edges), in
parallel over a batch of states, with the colours and draw order of gym-pusht's
``pymunk_override.DrawOptions``:

1. white background,
2. the goal tee (LightGreen, no outline),
3. the four walls (LightGray segments of radius 2),
4. the agent (a RoyalBlue disc of radius 15 with a lighter disc of radius 11),
5. the block: each of its two rectangles filled with a lightened LightSlateGray
   and outlined with a 2-px-radius band in LightSlateGray.

Coordinates are gym-pusht's: a 512x512 world, x to the right, y down (row = y).
A state is ``agent_xy`` (2,) and ``block_pose`` (x, y, angle) where (x, y) is the
block body's origin, exactly what gym-pusht's ``state`` observation reports.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

WORLD_SIZE = 512.0
GOAL_POSE = np.array([256.0, 256.0, math.pi / 4.0])

# Tee geometry in block coordinates (gym-pusht ``add_tee`` with scale 30, length 4):
# the bar and the stem, each [x0, x1, y0, y1].
TEE_RECTS = np.array([[-60.0, 60.0, 0.0, 30.0], [-15.0, 15.0, 30.0, 120.0]])
TEE_REACH = math.hypot(60.0, 120.0)  # farthest tee point from the block origin
AGENT_RADIUS = 15.0
OUTLINE_RADIUS = 2.0
WALL_RADIUS = 2.0
WALL_LO, WALL_HI = 5.0, 506.0

# pygame.Color names used by gym-pusht, and its ``light_color`` (x1.2, capped at 255).
WHITE = (255, 255, 255)
GOAL_RGB = (144, 238, 144)  # LightGreen
WALL_RGB = (211, 211, 211)  # LightGray
AGENT_RGB = (65, 105, 225)  # RoyalBlue
AGENT_LIGHT_RGB = (78, 126, 255)
BLOCK_RGB = (119, 136, 153)  # LightSlateGray
BLOCK_LIGHT_RGB = (142, 163, 183)

_PALETTE = np.array(
    [WHITE, GOAL_RGB, WALL_RGB, AGENT_RGB, AGENT_LIGHT_RGB, BLOCK_RGB, BLOCK_LIGHT_RGB], dtype=np.float32
)
_BG, _GOAL, _WALL, _AGENT, _AGENT_LIGHT, _BLOCK, _BLOCK_LIGHT = range(7)


@njit(cache=True, inline="always")
def _rect_signed_distance(u: float, v: float, x0: float, x1: float, y0: float, y1: float) -> float:
    """Signed distance from (u, v) to the boundary of a rectangle: < 0 inside."""
    dx = max(x0 - u, u - x1)
    dy = max(y0 - v, v - y1)
    if dx <= 0.0 and dy <= 0.0:
        return max(dx, dy)
    dx = max(dx, 0.0)
    dy = max(dy, 0.0)
    return math.sqrt(dx * dx + dy * dy)


@njit(cache=True)
def _near(x: float, y: float, px: float, py: float, reach: float) -> bool:
    """Whether world point (x, y) is within ``reach`` of (px, py)."""
    dx, dy = x - px, y - py
    return dx * dx + dy * dy <= reach * reach


@njit(cache=True)
def _body_coordinates(x: float, y: float, px: float, py: float, cos: float, sin: float) -> tuple[float, float]:
    """World point (x, y) in the coordinates of a body at (px, py) turned by (cos, sin) (inverse rotation)."""
    dx, dy = x - px, y - py
    return cos * dx + sin * dy, -sin * dx + cos * dy


@njit(cache=True)
def _sample_color(
    x: float,
    y: float,
    agent_x: float,
    agent_y: float,
    block_x: float,
    block_y: float,
    block_cos: float,
    block_sin: float,
    goal_x: float,
    goal_y: float,
    goal_cos: float,
    goal_sin: float,
    draw_goal: bool,
    rects: np.ndarray,
    reach_pad: float,
) -> tuple[int, float]:
    """Palette index of the topmost shape under world point (x, y), and the distance
    from (x, y) to the nearest colour boundary (so a caller knows whether the pixel
    around it is uniform). Shapes farther than ``reach_pad`` beyond their extent
    are skipped: they change neither the colour nor a nearby edge."""
    reach = TEE_REACH + reach_pad
    color = _BG
    edge = 1e9
    if draw_goal:
        if _near(x, y, goal_x, goal_y, reach):
            u, v = _body_coordinates(x, y, goal_x, goal_y, goal_cos, goal_sin)
            for r in range(2):
                d = _rect_signed_distance(u, v, rects[r, 0], rects[r, 1], rects[r, 2], rects[r, 3])
                edge = min(edge, abs(d))
                if d <= 0.0:
                    color = _GOAL
    # The four walls are the edges of one axis-aligned square.
    d = abs(_rect_signed_distance(x, y, WALL_LO, WALL_HI, WALL_LO, WALL_HI))
    edge = min(edge, abs(d - WALL_RADIUS))
    if d <= WALL_RADIUS:
        color = _WALL
    dx, dy = x - agent_x, y - agent_y
    d2 = dx * dx + dy * dy
    if d2 <= (AGENT_RADIUS + reach_pad) * (AGENT_RADIUS + reach_pad):
        d = math.sqrt(d2)
        edge = min(edge, abs(d - AGENT_RADIUS), abs(d - AGENT_RADIUS + 4.0))
        if d <= AGENT_RADIUS:
            color = _AGENT_LIGHT if d <= AGENT_RADIUS - 4.0 else _AGENT
    if _near(x, y, block_x, block_y, reach):
        u, v = _body_coordinates(x, y, block_x, block_y, block_cos, block_sin)
        for r in range(2):
            d = _rect_signed_distance(u, v, rects[r, 0], rects[r, 1], rects[r, 2], rects[r, 3])
            edge = min(edge, abs(abs(d) - OUTLINE_RADIUS))
            if abs(d) <= OUTLINE_RADIUS:
                color = _BLOCK
            elif d < 0.0:
                color = _BLOCK_LIGHT
    return color, edge


@njit(cache=True)
def _draw_pixels(
    ax: float,
    ay: float,
    bx: float,
    by: float,
    block_angle: float,
    goal_pose: np.ndarray,
    draw_goal: bool,
    supersample: int,
    palette: np.ndarray,
    rects: np.ndarray,
    row0: int,
    row1: int,
    col0: int,
    col1: int,
    frame: np.ndarray,
) -> None:
    """Draw the whole scene into frame[row0:row1, col0:col1]: one sample where no colour
    boundary crosses a pixel, ``supersample``^2 samples where one does."""
    size = frame.shape[0]
    pixel = WORLD_SIZE / size
    step = pixel / supersample
    weight = 1.0 / (supersample * supersample)
    gx, gy = goal_pose[0], goal_pose[1]
    gc, gs = math.cos(goal_pose[2]), math.sin(goal_pose[2])
    bc, bs = math.cos(block_angle), math.sin(block_angle)
    half_diagonal = 0.7072 * pixel
    pad = OUTLINE_RADIUS + 2.0 * pixel
    for row in range(max(row0, 0), min(row1, size)):
        y_lo = row * pixel
        for col in range(max(col0, 0), min(col1, size)):
            x_lo = col * pixel
            c, edge = _sample_color(
                x_lo + 0.5 * pixel, y_lo + 0.5 * pixel, ax, ay, bx, by, bc, bs, gx, gy, gc, gs, draw_goal, rects, pad
            )
            if edge > half_diagonal:
                for k in range(3):
                    frame[row, col, k] = np.uint8(palette[c, k])
                continue
            r = 0.0
            g = 0.0
            bl = 0.0
            for sy in range(supersample):
                y = y_lo + (sy + 0.5) * step
                for sx in range(supersample):
                    x = x_lo + (sx + 0.5) * step
                    c, _ = _sample_color(x, y, ax, ay, bx, by, bc, bs, gx, gy, gc, gs, draw_goal, rects, pad)
                    r += palette[c, 0]
                    g += palette[c, 1]
                    bl += palette[c, 2]
            frame[row, col, 0] = np.uint8(r * weight + 0.5)
            frame[row, col, 1] = np.uint8(g * weight + 0.5)
            frame[row, col, 2] = np.uint8(bl * weight + 0.5)


@njit(cache=True, inline="always")
def _box(cx: float, cy: float, reach: float, pixel: float) -> tuple[int, int, int, int]:
    """Pixel rows and columns [row0, row1) x [col0, col1) within ``reach`` of (cx, cy)."""
    return (
        math.floor((cy - reach) / pixel),
        math.ceil((cy + reach) / pixel) + 1,
        math.floor((cx - reach) / pixel),
        math.ceil((cx + reach) / pixel) + 1,
    )


@njit(cache=True, parallel=True)
def _render_batch(
    agent_xy: np.ndarray,
    block_pose: np.ndarray,
    goal_pose: np.ndarray,
    draw_goal: bool,
    supersample: int,
    palette: np.ndarray,
    rects: np.ndarray,
    background: np.ndarray,
    out: np.ndarray,
) -> None:
    """Copy the static layer (walls, goal), then redraw only the pixels near the agent and the block."""
    size = out.shape[1]
    pixel = WORLD_SIZE / size
    block_reach = TEE_REACH + OUTLINE_RADIUS + pixel
    agent_reach = AGENT_RADIUS + pixel
    for b in prange(out.shape[0]):
        frame = out[b]
        frame[:] = background
        ax, ay = agent_xy[b, 0], agent_xy[b, 1]
        bx, by, angle = block_pose[b, 0], block_pose[b, 1], block_pose[b, 2]
        r0, r1, c0, c1 = _box(bx, by, block_reach, pixel)
        _draw_pixels(ax, ay, bx, by, angle, goal_pose, draw_goal, supersample, palette, rects, r0, r1, c0, c1, frame)
        r0, r1, c0, c1 = _box(ax, ay, agent_reach, pixel)
        _draw_pixels(ax, ay, bx, by, angle, goal_pose, draw_goal, supersample, palette, rects, r0, r1, c0, c1, frame)


_FAR_AWAY = -1.0e6  # where the agent and block stand while the static layer is drawn
_backgrounds: dict[tuple, np.ndarray] = {}


def static_layer(size: int, goal_pose: np.ndarray, draw_goal: bool, supersample: int) -> np.ndarray:
    """The walls and the goal at ``size`` px (cached: they never move within an episode)."""
    key = (size, tuple(float(v) for v in goal_pose), draw_goal, supersample)
    layer = _backgrounds.get(key)
    if layer is None:
        layer = np.empty((size, size, 3), np.uint8)
        _draw_pixels(
            _FAR_AWAY,
            _FAR_AWAY,
            _FAR_AWAY,
            _FAR_AWAY,
            0.0,
            goal_pose,
            draw_goal,
            supersample,
            _PALETTE,
            TEE_RECTS,
            0,
            size,
            0,
            size,
            layer,
        )
        if len(_backgrounds) > 64:
            _backgrounds.clear()
        _backgrounds[key] = layer
    return layer


def default_supersample(size: int) -> int:
    """Samples per pixel side so that samples lie at most ~2 world px apart."""
    return max(1, min(4, math.ceil(WORLD_SIZE / size / 2.0)))


def render_pusht(
    agent_xy: np.ndarray,
    block_pose: np.ndarray,
    size: int = 96,
    goal_pose: np.ndarray | None = None,
    draw_goal: bool = True,
    supersample: int | None = None,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Draw PushT scenes.

    Args:
        agent_xy: agent positions, shape (2,) or (B, 2), world pixels.
        block_pose: block poses (x, y, angle), shape (3,) or (B, 3).
        size: output height and width in pixels.
        goal_pose: goal tee pose (x, y, angle); gym-pusht's fixed goal by default.
        draw_goal: draw the goal tee (gym-pusht always does).
        supersample: samples per pixel side (default: :func:`default_supersample`).
        out: optional uint8 array (B, size, size, 3) to draw into.

    Returns:
        uint8 frames (size, size, 3) for a single state or (B, size, size, 3).
    """
    single = np.ndim(agent_xy) == 1
    agent = np.ascontiguousarray(np.atleast_2d(agent_xy), dtype=np.float64)
    block = np.ascontiguousarray(np.atleast_2d(block_pose), dtype=np.float64)
    if agent.shape[1:] != (2,) or block.shape[1:] != (3,) or agent.shape[0] != block.shape[0]:
        raise ValueError(
            f"render_pusht: expected agent_xy (B, 2) and block_pose (B, 3), got {agent.shape} and {block.shape}"
        )
    if size < 8:
        raise ValueError(f"render_pusht: size must be >= 8 pixels, got {size}")
    goal = GOAL_POSE if goal_pose is None else np.asarray(goal_pose, dtype=np.float64)
    if out is None:
        out = np.empty((agent.shape[0], size, size, 3), dtype=np.uint8)
    ss = default_supersample(size) if supersample is None else int(supersample)
    background = static_layer(size, goal, bool(draw_goal), ss)
    _render_batch(agent, block, goal, bool(draw_goal), ss, _PALETTE, TEE_RECTS, background, out)
    return out[0] if single else out
