"""How fast a task progresses, and when it should end at that pace.

A running task's tracker samples its progress whenever it changes: a leaf's
at each report, a parent's rolled-up progress whenever it is read. The rate
is the units done over the recent past divided by the time they took, where
the past fades: what was done ``t`` seconds ago counts ``exp(-t /
RATE_HORIZON)`` as much as what was just done, both in the units and in the
time. So each interval between samples weighs as much as it lasted (a burst
of units in a few milliseconds is a few milliseconds' worth), and the rate
follows a change of pace within about ``RATE_HORIZON`` seconds. The first
interval runs from the task's start with nothing done. The estimated end is
when the rest of the total would be done at that rate, counted from the last
sample. Trackers exist only for running tasks that have progressed, beside
the shard's records (a slot on every task would cost them all).
"""

from __future__ import annotations

import math
from typing import NamedTuple

#: Seconds over which the recent rate is averaged (its time constant).
RATE_HORIZON = 10.0


class ProgressRate(NamedTuple):
    """What a status says of its task's pace."""

    #: When the task's progress last changed (epoch seconds).
    last_time: float
    #: Units per second, or ``None`` until two samples give one.
    rate: float | None
    #: When the task should end at ``rate``, or ``None`` without a rate or a total.
    estimated_end: float | None


class RateTracker:
    """The recent pace of one running task."""

    __slots__ = ("completed", "last_time", "time", "units")

    def __init__(self, now: float, completed: float) -> None:
        self.last_time = now
        self.completed = completed
        # The faded sums of the units done and of the time they took.
        self.units = 0.0
        self.time = 0.0

    def sample(self, now: float, completed: float) -> None:
        """Takes the task's progress at ``now``, if it moved."""
        if completed == self.completed:
            return
        elapsed = now - self.last_time
        if elapsed <= 0:
            # Two reports in one tick of the clock: the later one's delta is
            # measured from the earlier anchor, once time has moved.
            return
        fade = math.exp(-elapsed / RATE_HORIZON)
        self.units = self.units * fade + max(0.0, completed - self.completed)
        self.time = self.time * fade + elapsed
        self.last_time = now
        self.completed = completed

    @property
    def rate(self) -> float | None:
        """Units a second, or ``None`` before the first interval."""
        return None if self.time <= 0 else self.units / self.time

    def read(self, total: float) -> ProgressRate:
        """The pace as a status shows it, for a task whose total is ``total``."""
        rate = self.rate
        end = None
        if rate is not None and rate > 0 and total > 0:
            end = self.last_time + max(0.0, total - self.completed) / rate
        return ProgressRate(self.last_time, rate, end)
