"""Injectable clocks: the system clock for the server, a manual one for tests."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import Callable
from typing import Protocol


class TimerHandle(Protocol):
    """A scheduled callback that can be cancelled."""

    def cancel(self) -> None:
        """Cancels the callback if it has not run yet."""


class Clock(Protocol):
    """Wall-clock time and timers; injected so TTL tests never sleep."""

    def now(self) -> float:
        """Returns the current time in seconds since the Unix epoch."""

    def call_at(self, when: float, callback: Callable[[], None]) -> TimerHandle:
        """Runs ``callback`` once the clock reaches ``when`` (epoch seconds)."""


class SystemClock:
    """The real clock; timers run on the running asyncio loop."""

    def now(self) -> float:
        """Returns ``time.time()``."""
        return time.time()

    def call_at(self, when: float, callback: Callable[[], None]) -> TimerHandle:
        """Schedules ``callback`` on the running loop after ``when - now`` seconds."""
        delay = max(0.0, when - time.time())
        return asyncio.get_running_loop().call_later(delay, callback)


class _ManualTimer:
    __slots__ = ("callback", "cancelled", "when")

    def __init__(self, when: float, callback: Callable[[], None]) -> None:
        self.when = when
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class ManualClock:
    """A clock that moves only when told to: ``advance`` runs the timers that fall due."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._now = start
        self._seq = itertools.count()
        self._timers: list[tuple[float, int, _ManualTimer]] = []

    def now(self) -> float:
        """Returns the manual time."""
        return self._now

    def call_at(self, when: float, callback: Callable[[], None]) -> TimerHandle:
        """Registers ``callback`` to run when ``advance`` reaches ``when``."""
        timer = _ManualTimer(when, callback)
        heapq.heappush(self._timers, (when, next(self._seq), timer))
        return timer

    def advance(self, seconds: float) -> None:
        """Moves time forward and runs, in time order, every timer that fell due."""
        target = self._now + seconds
        while self._timers and self._timers[0][0] <= target:
            when, _, timer = heapq.heappop(self._timers)
            self._now = max(self._now, when)
            if not timer.cancelled:
                timer.callback()
        self._now = target
