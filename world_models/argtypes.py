"""argparse value types shared by every ``leworld`` sub-command (one-line errors that name the value)."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any, TypeVar

T = TypeVar("T")


def whole_number(text: str, minimum: int) -> int:
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
