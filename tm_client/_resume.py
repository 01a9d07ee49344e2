"""Resuming streams: backoff with jitter, and a task watch followed across the streams."""

from __future__ import annotations

import random
import time
from uuid import UUID

import grpc
from google.protobuf import duration_pb2

from ._errors import InternalError, TmError, UnavailableError
from ._types import TaskStatus
from .pb import task_manager_pb2 as pb

TaskId = str | UUID
#: How long ``watch()``, ``wait()`` and ``watch_tasks()`` keep trying to resume a broken stream.
DEFAULT_RESUME_SECONDS = 30.0
#: How long a client retries a read (a status, a listing) while tm is unreachable.
DEFAULT_RETRY_SECONDS = 10.0
#: How long past a wait's timeout the client waits for tm's answer (which ends the
#: stream at the timeout itself) before it takes tm for unresponsive.
WAIT_GRACE_SECONDS = 5.0


class _Backoff:
    """Exponential backoff with full jitter, until ``patience`` seconds have passed."""

    def __init__(self, patience: float) -> None:
        self._deadline = time.monotonic() + patience
        self._delay = 0.05

    def next_delay(self) -> float | None:
        """How long to wait before the next try; ``None`` once patience is spent."""
        left = self._deadline - time.monotonic()
        if left <= 0:
            return None
        delay = min(left, random.uniform(0, self._delay))
        self._delay = min(self._delay * 2, 2.0)
        return delay

    def sleep(self) -> bool:
        """Sleeps before the next try; False (without sleeping) once patience is spent."""
        delay = self.next_delay()
        if delay is None:
            return False
        time.sleep(delay)
        return True


def unreachable(error: TmError) -> bool:
    """Whether an error says tm could not be reached (or is restarting): worth a retry.

    Not the ``UNAVAILABLE`` errors tm answers itself for a dependency of its
    own (its cluster store, a peer node, its journal's disk): those it says
    at once, and a retry would only hide them.
    """
    return isinstance(error, UnavailableError) and error.reason in ("", "SHUTTING_DOWN")


def _duration(seconds: float | None) -> duration_pb2.Duration | None:
    if seconds is None:
        return None
    duration = duration_pb2.Duration()
    duration.FromNanoseconds(round(seconds * 1e9))
    return duration


class _FinalCheck:
    """Follows a watch's statuses; raises if the stream ended on a state that is not final.

    tm ends every wait that ends with OK on a final state; a stream that ends
    otherwise (a server without that guarantee) must not pass for a finished
    task: ``wait()`` would hand back a RUNNING status as the final one.
    """

    def __init__(self, task_id: TaskId) -> None:
        self.task_id = task_id
        self.last: TaskStatus | None = None

    def ended(self) -> None:
        if self.last is None or not self.last.state.is_final:
            state = "no status" if self.last is None else f"state {self.last.state.value}"
            raise InternalError(
                f"the server ended the wait for task {self.task_id} on {state}, "
                "not on a final state",
                reason="WAIT_ENDED_EARLY",
            )


class _Resume(_FinalCheck):
    """A watch across the streams it resumes: the deadline, what was seen, the backoff."""

    def __init__(self, task_id: TaskId, timeout: float | None, patience: float) -> None:
        super().__init__(task_id)
        self._ends = None if timeout is None else time.monotonic() + timeout
        self._patience = patience
        self._backoff: _Backoff | None = None

    def request(self) -> pb.WaitTaskRequest:
        """The next stream's request, with what is left of the wait's timeout."""
        left = None if self._ends is None else max(0.0, self._ends - time.monotonic())
        return pb.WaitTaskRequest(task_id=str(self.task_id), timeout=_duration(left))

    def seen(self, status: TaskStatus) -> bool:
        """Records a status; False if it is the one seen last (a resumed stream's first)."""
        self._backoff = None  # the stream is back
        if status == self.last:
            return False
        self.last = status
        return True

    def call_timeout(self) -> float | None:
        """The client's deadline for the next stream: the wait's, with a grace for tm's answer.

        tm ends a wait at its timeout itself; the client's own deadline only
        fires when tm does not answer (frozen, or the network dropping
        packets), so that a wait with a timeout never hangs.
        """
        if self._ends is None:
            return None
        return max(0.0, self._ends - time.monotonic()) + WAIT_GRACE_SECONDS

    def broken(self) -> float | None:
        """After a break: the wait before resuming, or ``None`` to give up.

        It gives up once its patience is spent, or the wait's own timeout has
        passed: a wait with a timeout returns or raises by then.
        """
        if self._backoff is None:
            self._backoff = _Backoff(self._patience)
        delay = self._backoff.next_delay()
        if delay is None or self._ends is None:
            return delay
        left = self._ends - time.monotonic()
        return None if left <= 0 else min(delay, left)

    def unanswered(self, error: TmError) -> UnavailableError:
        """The error for a wait whose stream tm did not end by the wait's timeout."""
        return UnavailableError(
            f"tm did not answer the wait for task {self.task_id} within its timeout "
            f"(and {WAIT_GRACE_SECONDS:g}s more): {error.message}",
            code=grpc.StatusCode.UNAVAILABLE,
        )

    @property
    def final_seen(self) -> bool:
        """Whether the final status arrived (a break after it leaves nothing to resume)."""
        return self.last is not None and self.last.state.is_final
