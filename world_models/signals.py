"""SIGTERM handled as Ctrl-C, blocks a signal does not cut in two, and child processes that die with
their parent. No torch here.

Job schedulers, ``kill`` and container runtimes stop a process with SIGTERM; Python's default
ends it on the spot, and a training run or a collection loses what it had. Inside
:func:`sigterm_as_ctrl_c` SIGTERM raises :class:`Terminated`, a ``KeyboardInterrupt``, so every
command's Ctrl-C path (save a checkpoint, remove a partial folder) runs for both. The one owner
of this rule: the trainers, ``leworld train-agent`` and ``leworld collect`` use it.

A parent killed with SIGKILL runs no cleanup at all, so its children must notice by themselves:
:func:`die_with_parent` (a Python child: ``leworld collect``'s workers) and
:func:`die_with_parent_preexec` (any program, as ``subprocess.Popen(preexec_fn=...)``: QEMU under
:mod:`world_models.backends.devices.qemu`) are the one place that knows how.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

PARENT_POLL_S = 1.0  # how often a child without PR_SET_PDEATHSIG checks that its parent lives
PR_SET_PDEATHSIG = 1  # linux/prctl.h


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, a job scheduler), handled as Ctrl-C: the trainers save a checkpoint and stop."""


class _Signals:
    """The state :func:`sigterm_as_ctrl_c` and :func:`uninterrupted` share (the main thread's only)."""

    depth = 0  # nesting of uninterrupted() blocks
    pending: int | None = None  # a signal that came inside one
    raised: int | None = None  # a signal whose exception was raised (and may have been swallowed)


def _interrupt(signum: int) -> KeyboardInterrupt:
    if signum == signal.SIGTERM:
        return Terminated(f"terminated by signal {signum} (SIGTERM)")
    return KeyboardInterrupt()


def _on_signal(signum: int, frame: Any) -> None:
    if _Signals.depth:
        _Signals.pending = signum
        return
    _Signals.raised = signum
    raise _interrupt(signum)


def check_interrupt() -> None:
    """Raise again a signal whose exception was lost. Python runs a handler in whatever frame is current;
    when that is a ctypes callback (numba's compiler calls back into Python while it compiles), a
    ``__del__`` or a weakref callback, the exception is printed as "Exception ignored" and the program
    goes on as if no signal had come. The long loops call this at their safe points (after each episode
    collected), so such a signal still stops them."""
    if _Signals.raised is not None:
        raise _interrupt(_Signals.raised)


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
        _Signals.pending = _Signals.raised = None


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


def _prctl() -> Callable[..., int] | None:
    """libc's ``prctl`` (Linux), or None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


def _set_death_signal(prctl: Callable[..., int], parent_pid: int) -> bool:
    """PR_SET_PDEATHSIG: SIGKILL this process when its parent dies (the setting survives exec). True when
    set; exits at once when the parent died before the call (no signal would come)."""
    if prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) != 0:
        return False
    if os.getppid() != parent_pid:
        os._exit(1)
    return True


def die_with_parent(parent_pid: int) -> None:
    """End this process when ``parent_pid`` (the process that started it) dies, however it dies: on Linux
    the kernel's PR_SET_PDEATHSIG, elsewhere a daemon thread polling ``os.getppid()`` every
    :data:`PARENT_POLL_S`. Call it first thing in the child."""
    prctl = _prctl()
    if prctl is not None and _set_death_signal(prctl, parent_pid):
        return

    def watch() -> None:
        while True:
            if os.getppid() != parent_pid:
                os._exit(1)
            threading.Event().wait(PARENT_POLL_S)

    threading.Thread(target=watch, name="leworld-parent-watch", daemon=True).start()


def die_with_parent_preexec() -> Callable[[], None] | None:
    """A ``preexec_fn`` for :class:`subprocess.Popen` that makes the started program (not only Python)
    die with this process, even by SIGKILL: PR_SET_PDEATHSIG, set between fork and exec. None where
    there is none (not Linux): the caller then relies on stopping the child itself.

    The kernel sends the signal when the *thread* that started the child ends, so start such a child
    from a thread that lives as long as the child should (the main thread, or a long-lived one).
    ``prctl`` is looked up here, in the parent, so the forked child only makes the call."""
    prctl = _prctl()
    if prctl is None:
        return None
    parent = os.getpid()

    def preexec() -> None:
        _set_death_signal(prctl, parent)

    return preexec
