"""A pygame window for ``render_mode="human"`` (pygame is imported only when one opens)."""

from __future__ import annotations

import numpy as np


class HumanWindow:
    """Shows RGB frames in a pygame window at most ``fps`` times a second.

    Without a display (no ``DISPLAY`` and SDL's dummy driver) pygame draws to a hidden
    surface, so ``render_mode="human"`` never fails on a headless machine.
    """

    def __init__(self, title: str, fps: float) -> None:
        import pygame

        self.pygame = pygame
        pygame.init()
        pygame.display.init()
        pygame.display.set_caption(title)
        self.fps = fps
        self.clock = pygame.time.Clock()
        self.screen = None

    def show(self, frame: np.ndarray) -> None:
        """Draw one (H, W, 3) uint8 frame and keep the window responsive."""
        pygame = self.pygame
        height, width = frame.shape[:2]
        if self.screen is None or self.screen.get_size() != (width, height):
            self.screen = pygame.display.set_mode((width, height))
        pygame.event.pump()
        surface = pygame.surfarray.make_surface(np.ascontiguousarray(frame.transpose(1, 0, 2)))
        self.screen.blit(surface, (0, 0))
        pygame.display.flip()
        self.clock.tick(self.fps)

    def events(self) -> list:
        """The pygame events since the last call (keys, mouse, window close)."""
        return self.pygame.event.get()

    def close(self) -> None:
        self.pygame.display.quit()
