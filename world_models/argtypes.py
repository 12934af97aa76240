"""argparse value types shared by every ``leworld`` sub-command (one-line errors that name the value)."""

from __future__ import annotations

import argparse
import dataclasses
import math
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def whole_number(text: str, minimum: int) -> int:
    """A whole number >= ``minimum``.

    Raises:
        argparse.ArgumentTypeError: not a whole number, or below ``minimum``.
    """
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
    return value


def positive_int(text: str) -> int:
    """A whole number >= 1."""
    return whole_number(text, 1)


def non_negative_int(text: str) -> int:
    """A whole number >= 0."""
    return whole_number(text, 0)


def real_number(text: str, *, minimum: float | None = None, above: float | None = None) -> float:
    """A finite number, at least ``minimum`` or strictly above ``above`` (when given).

    Raises:
        argparse.ArgumentTypeError: not a number, not finite (``nan``, ``inf``) or out of range.
    """
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    if minimum is not None and value < minimum:
        raise argparse.ArgumentTypeError(f"must be at least {minimum:g}, got {text}")
    if above is not None and not value > above:
        raise argparse.ArgumentTypeError(f"must be above {above:g}, got {text}")
    return value


def positive_float(text: str) -> float:
    """A finite number > 0 (a learning rate, a scale)."""
    return real_number(text, above=0.0)


def non_negative_float(text: str) -> float:
    """A finite number >= 0 (a loss weight, a weight decay)."""
    return real_number(text, minimum=0.0)


def output_path(text: str) -> Path:
    """A path to write (a file or a folder), not empty: ``Path("")`` is the current directory, which no
    command may take for an output by accident."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty path; name the file or folder to write")
    return Path(text)


def dataclass_from_args(cls: type[T], args: argparse.Namespace, **given: Any) -> T:
    """Build the settings dataclass ``cls`` from parsed command-line arguments.

    Each field takes its value from ``given`` if named there, else from the argument of the same
    name, else keeps its default: a sub-command spells out only the fields whose option has another
    name or meaning (``progress=not args.quiet``).
    """
    values = {}
    for field in dataclasses.fields(cls):  # type: ignore[arg-type]
        if field.name in given:
            values[field.name] = given[field.name]
        elif hasattr(args, field.name):
            values[field.name] = getattr(args, field.name)
    return cls(**values)
