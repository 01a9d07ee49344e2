"""The ids the Python client chooses for the tasks it creates (``Producer.create``)."""

from __future__ import annotations

import itertools
import threading
import time
import uuid
from uuid import UUID

from tm_client._ids import new_task_id
from tm_server.core.types import creation_time_of


def test_ids_made_in_a_burst_from_several_threads_keep_to_the_clock() -> None:
    # A producer process may create tasks from many threads at thousands a
    # second; the server reads each task's creation time off its id, so the
    # ids must not run ahead of the clock, and they must never repeat.
    made: list[list[UUID]] = [[] for _ in range(4)]

    def make(into: list[UUID]) -> None:
        into.extend(new_task_id() for _ in range(10_000))

    before = time.time()
    threads = [threading.Thread(target=make, args=(ids,)) for ids in made]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    after = time.time()
    every = [i for ids in made for i in ids]
    assert len(set(every)) == len(every) == 40_000
    assert all(a.int < b.int for ids in made for a, b in itertools.pairwise(ids))
    assert {i.version for i in every} == {7} and {i.variant for i in every} == {uuid.RFC_4122}
    times = [creation_time_of(i) for i in every]
    assert all(t is not None and before - 0.001 <= t <= after for t in times)
