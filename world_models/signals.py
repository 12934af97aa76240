"""SIGTERM handled as Ctrl-C, and blocks a signal does not cut in two. No torch here.

Job schedulers, ``kill`` and container runtimes stop a process with SIGTERM; Python's default
ends it on the spot, and a training run or a collection loses what it had. Inside
:func:`sigterm_as_ctrl_c` SIGTERM raises :class:`Terminated`, a ``KeyboardInterrupt``, so every
command's Ctrl-C path (save a checkpoint, remove a partial folder) runs for both. The one owner
of this rule: the trainers, ``leworld train-agent`` and ``leworld collect`` use it.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, a job scheduler), handled as Ctrl-C: the trainers save a checkpoint and stop."""


class _Signals:
    """The state :func:`sigterm_as_ctrl_c` and :func:`uninterrupted` share (the main thread's only)."""

    depth = 0  # nesting of uninterrupted() blocks
    pending: int | None = None  # a signal that came inside one


def _interrupt(signum: int) -> KeyboardInterrupt:
    if signum == signal.SIGTERM:
        return Terminated(f"terminated by signal {signum} (SIGTERM)")
    return KeyboardInterrupt()


def _on_signal(signum: int, frame: Any) -> None:
    if _Signals.depth:
        _Signals.pending = signum
        return
    raise _interrupt(signum)


@contextlib.contextmanager
def sigterm_as_ctrl_c() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`Terminated` (a ``KeyboardInterrupt``) as Ctrl-C raises
    ``KeyboardInterrupt``, so the trainers' Ctrl-C path saves a checkpoint; both wait for the end of an
    :func:`uninterrupted` block. The previous handlers come back afterwards. Only in the main thread
    (Python runs signal handlers there); a signal the process ignores stays ignored."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        if signal.getsignal(signum) is not signal.SIG_IGN:
            previous[signum] = signal.signal(signum, _on_signal)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        _Signals.pending = None


@contextlib.contextmanager
def uninterrupted() -> Iterator[None]:
    """A block that Ctrl-C or SIGTERM (under :func:`sigterm_as_ctrl_c`) does not cut in two: a signal
    that comes inside it raises at its end (the optimizer step and the step count stay together, so
    a checkpoint never holds half a step)."""
    _Signals.depth += 1
    try:
        yield
    finally:
        _Signals.depth -= 1
    if _Signals.depth == 0 and _Signals.pending is not None:
        signum, _Signals.pending = _Signals.pending, None
        raise _interrupt(signum)
