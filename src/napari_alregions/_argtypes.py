"""``type=`` converters of the ``alregions`` command line: a bad number is an argparse error
naming the option (exit 2), not a ZeroDivisionError deep inside or a silent default."""

from __future__ import annotations

import argparse
import math

__all__ = ["non_negative_int", "positive_float", "positive_int", "positive_ints"]


def _int(text: str, least: int, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if value < least:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """An int >= 1 (sizes, strides, counts)."""
    return _int(text, 1, "a positive integer")


def non_negative_int(text: str) -> int:
    """An int >= 0 (seeds, levels, worker counts where 0 means none)."""
    return _int(text, 0, "an integer >= 0")


def positive_ints(text: str) -> list[int]:
    """Comma-separated ints >= 1 (``-k 2,4``)."""
    parts = [p.strip() for p in text.split(",")]
    try:
        return [_int(p, 1, "positive integers") for p in parts]
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}") from None


def positive_float(text: str) -> float:
    """A finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text!r}")
    return value
