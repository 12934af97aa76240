"""The one runtime interface every backend implements (numpy in, numpy out; no torch here).

::

    encode(pixels uint8 [B, H, W, 3]) -> z float32 [B, D]
    predict(z_hist [B, T, D], a_hist [B, T, A]) -> z_next [B, D]
    rollout(z_hist [B, T, D], a_hist [B, T, A], a_future [B, H, A]) -> z [B, H, D]
    probe(z [B, D]) -> state [B, 5]   (agent x, y, block x, y in px; block angle in [0, 2 pi))
    config                            (a ModelConfig)

:class:`WorldModel` checks every input (dtype, shape, image size, finite
values) and raises ``ValueError`` naming the argument and what was expected;
a backend implements ``_encode``, ``_predict`` and ``_probe_targets`` on
checked float32 / uint8 arrays. ``rollout`` is the same loop for every backend.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from world_models.config import ModelConfig
from world_models.errors import ArgumentError, LeWorldError
from world_models.pose import targets_to_state


def _check_finite(name: str, x: np.ndarray) -> None:
    if not np.all(np.isfinite(x)):
        raise ArgumentError(f"{name} holds NaN or inf values")


def check_sequence(name: str, x: Any, last: int) -> np.ndarray:
    """``x`` as a contiguous float32 [B, T >= 1, last] array of finite values, or a ``ValueError`` naming it."""
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 3 or x.shape[2] != last or x.shape[1] < 1:
        raise ArgumentError(f"{name} must have shape [B, T, {last}], got {list(x.shape)}")
    _check_finite(name, x)
    return np.ascontiguousarray(x)


def check_history(
    z_hist: Any, a_hist: Any, latent_dim: int, action_dim: int, history: int
) -> tuple[np.ndarray, np.ndarray]:
    """Checked latent and action histories, cut to their last ``history`` steps."""
    z = check_sequence("z_hist", z_hist, latent_dim)
    a = check_sequence("a_hist", a_hist, action_dim)
    if z.shape[:2] != a.shape[:2]:
        raise ArgumentError(f"z_hist {list(z.shape)} and a_hist {list(a.shape)} must agree on [B, T]")
    return z[:, -history:], a[:, -history:]


class WorldModel:
    """Base class of every backend: input checks, and ``rollout`` built on ``predict``."""

    backend: str = ""
    config: ModelConfig
    has_probe: bool = True

    # ------------------------------------------------------------ backend hooks
    def _encode(self, pixels: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _predict(self, z_hist: np.ndarray, a_hist: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _probe_targets(self, z: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _rollout(self, z_hist: np.ndarray, a_hist: np.ndarray, a_future: np.ndarray) -> np.ndarray:
        """Open loop on checked arrays; a backend may override it with something faster."""
        h = self.config.history
        z, a = z_hist, a_hist
        out = np.empty((z.shape[0], a_future.shape[1], self.config.latent_dim), np.float32)
        for i in range(a_future.shape[1]):
            out[:, i] = self._predict(z, a)
            z = np.concatenate([z, out[:, i : i + 1]], axis=1)[:, -h:]
            a = np.concatenate([a, a_future[:, i : i + 1]], axis=1)[:, -h:]
        return out

    # ------------------------------------------------------------ checks
    def _pixels(self, pixels: Any) -> np.ndarray:
        pixels = np.asarray(pixels)
        size = self.config.image_size
        if pixels.dtype != np.uint8:
            raise ArgumentError(f"pixels must be uint8 RGB, got dtype {pixels.dtype}")
        if pixels.ndim != 4 or pixels.shape[1:] != (size, size, 3):
            raise ArgumentError(
                f"pixels must have shape [B, {size}, {size}, 3] for this model, got {list(pixels.shape)}"
            )
        return np.ascontiguousarray(pixels)

    def _history(self, z_hist: Any, a_hist: Any) -> tuple[np.ndarray, np.ndarray]:
        cfg = self.config
        return check_history(z_hist, a_hist, cfg.latent_dim, cfg.action_dim, cfg.history)

    # ------------------------------------------------------------ interface
    def encode(self, pixels: Any) -> np.ndarray:
        """uint8 frames [B, H, W, 3] -> latents float32 [B, D]."""
        return self._encode(self._pixels(pixels))

    def predict(self, z_hist: Any, a_hist: Any) -> np.ndarray:
        """The latent after the last of ``z_hist`` [B, T, D] under actions ``a_hist`` [B, T, A] -> [B, D].

        Only the last ``config.history`` steps are used; ``a_hist[:, -1]`` is the
        action taken at the last latent.
        """
        return self._predict(*self._history(z_hist, a_hist))

    def rollout(self, z_hist: Any, a_hist: Any, a_future: Any) -> np.ndarray:
        """Open loop: feed predictions back for ``a_future`` [B, H, A]; returns [B, H, D].

        The first prediction uses ``a_hist[:, -1]``; ``a_future[:, i]`` is applied
        at the i-th predicted latent (the last one is unused but keeps shapes aligned).
        """
        z, a = self._history(z_hist, a_hist)
        future = check_sequence("a_future", a_future, self.config.action_dim)
        if future.shape[0] != z.shape[0]:
            raise ArgumentError(f"a_future has batch {future.shape[0]}, z_hist has {z.shape[0]}")
        return self._rollout(z, a, future)

    def probe(self, z: Any) -> np.ndarray:
        """Latents [B, D] -> physical state [B, 5]: agent x, y, block x, y (px), block angle in [0, 2 pi)."""
        if not self.has_probe:
            raise LeWorldError(f"{getattr(self, 'path', 'this model')}: has no probe; run leworld probe")
        z = np.asarray(z, dtype=np.float32)
        if z.ndim != 2 or z.shape[1] != self.config.latent_dim:
            raise ArgumentError(f"z must have shape [B, {self.config.latent_dim}], got {list(z.shape)}")
        _check_finite("z", z)
        return targets_to_state(self._probe_targets(np.ascontiguousarray(z)))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(backend={self.backend!r}, path={str(getattr(self, 'path', ''))!r})"
