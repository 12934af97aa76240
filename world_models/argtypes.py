"""argparse value types shared by every ``leworld`` sub-command (one-line errors that name the value)."""

from __future__ import annotations

import argparse


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
