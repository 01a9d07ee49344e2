"""The expiry queues of a shard: finished roots waiting for their TTL, on the injected clock."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from .clock import Clock, TimerHandle

#: The queue of recovered tasks (no TTL is negative).
_RESTORED = -1.0


class ExpiryQueues:
    """Finished tasks by the time they leave the registry, with one timer for the earliest.

    One FIFO queue per TTL value: tasks with one TTL expire in the order they
    finished, so a queue of ids costs a pointer per task where a heap of
    (time, id) would cost a tuple. The queues hold ids only; whoever pops them
    says when each id expires now (a task unregistered meanwhile, by a drain
    or a module stop, is skipped).
    """

    def __init__(self, clock: Clock, on_due: Callable[[], None]) -> None:
        self._clock = clock
        self._on_due = on_due
        self._queues: dict[float, deque[int]] = {}
        self._timer: TimerHandle | None = None
        self._timer_at: float | None = None

    def schedule(self, ttl: float, key: int, when: float) -> None:
        """Queues the task ``key``, which expires at ``when`` (``ttl`` after it finished)."""
        queue = self._queues.get(ttl)
        if queue is None:
            queue = self._queues[ttl] = deque()
        queue.append(key)
        self._arm(when)

    def schedule_sorted(self, keys: list[int], first: float) -> None:
        """Queues tasks already sorted by when they expire, the first at ``first`` (recovery).

        One queue of their own, whatever their TTLs: a queue needs only its
        times to be in order.
        """
        if keys:
            self._queues.setdefault(_RESTORED, deque()).extend(keys)
            self._arm(first)

    def _arm(self, when: float) -> None:
        if self._timer_at is None or when < self._timer_at:
            if self._timer is not None:
                self._timer.cancel()
            self._timer_at = when
            self._timer = self._clock.call_at(when, self._fire)

    def _fire(self) -> None:
        self._timer = None
        self._timer_at = None
        self._on_due()

    def pop_due(self, expires_at: Callable[[int], float | None]) -> list[int]:
        """Takes every queued task due by now; re-arms the timer for the next one.

        ``expires_at(key)`` is the task's expiry time now, or ``None`` if it
        left the registry already.
        """
        now = self._clock.now()
        due: list[int] = []
        earliest: float | None = None
        for ttl, queue in list(self._queues.items()):
            while queue:
                when = expires_at(queue[0])
                if when is None:
                    queue.popleft()
                    continue
                if when > now:
                    if earliest is None or when < earliest:
                        earliest = when
                    break
                due.append(queue.popleft())
            if not queue:
                del self._queues[ttl]
        if earliest is not None:
            self._arm(earliest)
        return due

    def cancel(self) -> None:
        """Stops the timer (the shard is closing)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
            self._timer_at = None
