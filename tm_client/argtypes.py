"""Argument types shared by the ``tm`` and ``tm-server`` command lines (argparse ``type=``)."""

from __future__ import annotations

import argparse
import math


def non_negative_int(text: str) -> int:
    """An integer, 0 or more."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative: {value}")
    return value


def positive_int(text: str) -> int:
    """An integer, 1 or more."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {value}")
    return value


def non_negative_seconds(text: str) -> float:
    """A finite number of seconds, 0 or more."""
    value = float(text)
    if not (value >= 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a non-negative number of seconds: {text}")
    return value


def positive_seconds(text: str) -> float:
    """A finite number of seconds above 0."""
    value = float(text)
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds: {text}")
    return value
